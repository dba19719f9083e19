"""Benchmark: hook calls without prefetch against a loopback sekmet-fhir server, the service fetching every key.

    python bench/fetch.py                          # this checkout
    python bench/fetch.py --compare ../other-tree  # this checkout and another one, turn about, on the same server
    python bench/fetch.py --smoke                  # 5 Synthea patients, one round: checks the harness works

The server (sekmet-fhir, as the tests run it: ``SEKMET_BIN`` or ``.venv-sekmet``) is loaded with the 100 Synthea
patients of ``tests/data/synthea-r4.tar.xz`` and the benchmark's synthetic 1000-Observation chart
(``bench/run.py``'s, every ALP of 20 years low; and the
same with every ALP normal). Each round calls patient-view for every patient, one call at a time,
in a process of its own per checkout, through ``run_hook`` with a FHIR time budget of 120 s (so that nothing is cut
off and the fetching is measured whole); the Synthea patients at two clocks, as ``tests/test_synthea.py`` does:
2021-03-01 and the day after the patient's last ALP. It reports per checkout, as the median over the rounds: the
fetch time (``HookRun.prefetch_seconds``: all keys, pages and all) summed over the patients, its median, p95 and
largest per call, the bytes read from the server and the related-lab entries fetched; and whether both checkouts gave
the same cards to every patient.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXED_NOW = datetime(2021, 3, 1, 12, tzinfo=UTC)  # tests/test_synthea.py's clock
ALP_CODES = {"6768-6", "77141-0", "1783-0"}
# bench/run.py's synthetic 1000-Observation chart (20 years, a fifth of it ALP), by patient id: as it is (every ALP
# low: the whole chart is the current run of lows, so the rules read the labs of every year), and with every ALP a
# normal 80 U/L (the rules read the labs of the recent window only).
SYNTHETIC = {"bench-fetch": None, "bench-fetch-normal": 80}


def start_server(workdir: Path, smoke: bool = False) -> tuple[subprocess.Popen, str]:
    """sekmet-fhir on loopback, loaded with the Synthea patients and the synthetic chart (and its SQLite analysed,
    as the tests do: without statistics its ``_sort=-date`` searches take seconds). ``smoke``: 5 patients only."""
    sys.path.insert(0, str(ROOT))
    from bench.run import free_port, synthetic_bundle, wait_http
    from service import loader

    binary = os.environ.get("SEKMET_BIN") or shutil.which("sekmet") or str(ROOT / ".venv-sekmet" / "bin" / "sekmet")
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (workdir / "sekmet.yaml").write_text(
        f"host: 127.0.0.1\nport: {port}\nbase_url: {base}\ndata_dir: {workdir}/d\n"
        "simulator:\n  enabled: false\nlog_inbound: false\n"
    )
    process = subprocess.Popen(
        [str(Path(binary).resolve()), "serve"],
        cwd=workdir,
        env={**os.environ, "SEKMET_CONFIG": str(workdir / "sekmet.yaml")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port, "/fhir/metadata", 60)
    with tarfile.open(ROOT / "tests" / "data" / "synthea-r4.tar.xz") as archive:
        archive.extractall(workdir / "synthea", filter="data")
    for path in sorted((workdir / "synthea" / "synthea-r4").glob("*.json"))[5:] if smoke else ():
        path.unlink()
    for name, alp in {} if smoke else SYNTHETIC.items():
        chart = synthetic_bundle(name, 1000)
        for entry in chart["entry"]:
            if alp is not None and entry["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "6768-6":
                entry["resource"]["valueQuantity"]["value"] = alp
        transaction = [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in (e["resource"] for e in chart["entry"])
        ]
        (workdir / "synthea" / "synthea-r4" / f"{name}.json").write_text(
            json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": transaction})
        )
    loader.load_fixtures(base, None, str(workdir / "synthea" / "synthea-r4"))
    with sqlite3.connect(workdir / "d" / "sekmet.db") as connection:
        connection.execute("ANALYZE")
    return process, base


def calls(folder: Path) -> list[tuple[str, str, str]]:
    """(label, patient id, clock as ISO text) of every call of a round."""
    found = []
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text())
        if path.stem in SYNTHETIC:
            label = "synthetic 1000 Obs, " + ("ALP normal" if SYNTHETIC[path.stem] else "ALP low for 20 years")
            found.append((label, path.stem, datetime.now(UTC).isoformat()))
            continue
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        alp_days = [
            e["resource"].get("effectiveDateTime", "")[:10]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Observation"
            and {c.get("code") for c in e["resource"].get("code", {}).get("coding", [])} & ALP_CODES
        ]
        found.append(("synthea, 2021-03-01", patient["id"], FIXED_NOW.isoformat()))
        if alp_days:
            after = datetime.fromisoformat(max(alp_days)).replace(hour=12, tzinfo=UTC) + timedelta(days=1)
            found.append(("synthea, after the last ALP", patient["id"], after.isoformat()))
    return found


def measure(base: str, plan: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """One round in this process, with the code of the checkout first on sys.path."""
    from service.fhir.client import CallBudget, FhirClient
    from service.hook_requests import hook_request
    from service.hooks import low_alp_workup
    from service.hooks.run import run_hook
    from service.settings import load_settings

    rows = []
    for label, patient_id, clock in plan:
        now = datetime.fromisoformat(clock)
        settings = load_settings({"NOW": lambda now=now: now, "AUTH": "off", "FHIR_TIME_BUDGET": 120}, environ={})
        body = hook_request(low_alp_workup.SERVICE.id, {"entry": []}, patient_id, with_prefetch=False, fhir_server=base)
        budget = CallBudget(settings.FHIR_TIME_BUDGET, settings.FHIR_MAX_CALL_BYTES)
        ran = run_hook(low_alp_workup.SERVICE, body, settings, lambda budget=budget: FhirClient(base, budget=budget))
        labs = ran.call.data.get("labs") or {}
        rows.append(
            {
                "label": label,
                "patient": patient_id,
                "seconds": ran.prefetch_seconds,
                "bytes": budget._read,
                "labs": len(labs.get("entry") or ()),
                "unavailable": sorted(ran.call.unavailable),
                "cards": [(kind, card["summary"]) for kind, card in ran.cards],
            }
        )
    return rows


def summary(rounds: list[list[dict[str, Any]]], label: str) -> dict[str, float]:
    def per_round(rows: list[dict[str, Any]]) -> dict[str, float]:
        chosen = [r for r in rows if r["label"] == label]
        seconds = sorted(r["seconds"] for r in chosen)
        return {
            "calls": len(chosen),
            "total_s": sum(seconds),
            "median_ms": statistics.median(seconds) * 1000,
            "p95_ms": seconds[max(0, round(0.95 * len(seconds)) - 1)] * 1000,
            "max_ms": seconds[-1] * 1000,
            "kib": sum(r["bytes"] for r in chosen) / 1024,
            "labs": sum(r["labs"] for r in chosen),
            "unavailable": sum(bool(r["unavailable"]) for r in chosen),
        }

    figures = [per_round(rows) for rows in rounds]
    return {key: statistics.median(f[key] for f in figures) for key in figures[0]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", action="append", default=[], help="another checkout, measured turn about")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--measure", nargs=2, metavar=("FHIR_BASE", "PLAN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # a child: sys.path[0] is the checkout to measure (PYTHONPATH)
        base, plan = args.measure
        json.dump(measure(base, json.loads(Path(plan).read_text())), sys.stdout)
        return 0

    checkouts = [ROOT, *(Path(c).resolve() for c in args.compare)]
    workdir = Path(tempfile.mkdtemp(prefix="alp-fetch-bench-"))
    process = None
    try:
        process, base = start_server(workdir, args.smoke)
        plan = calls(workdir / "synthea" / "synthea-r4")
        (workdir / "plan.json").write_text(json.dumps(plan))
        results: dict[Path, list[list[dict[str, Any]]]] = {c: [] for c in checkouts}
        for repeat in range(1 if args.smoke else args.rounds):
            for checkout in checkouts if repeat % 2 == 0 else checkouts[::-1]:
                child = subprocess.run(
                    [sys.executable, str(ROOT / "bench" / "fetch.py"), "--measure", base, str(workdir / "plan.json")],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=checkout,
                    env={**os.environ, "PYTHONPATH": str(checkout)},
                )
                results[checkout].append(json.loads(child.stdout))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    rounds = 1 if args.smoke else args.rounds
    print(f"{len(plan)} calls a round, {rounds} round(s), one call at a time; medians over the rounds")
    print("| checkout | calls | fetch s (sum) | median ms | p95 ms | max ms | KiB read | lab entries | keys not had |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in dict.fromkeys(row["label"] for row in results[ROOT][0]):
        for checkout, rounds in results.items():
            f = summary(rounds, label)
            print(
                f"| {label}: {checkout.name} | {f['calls']:.0f} | {f['total_s']:.1f} | {f['median_ms']:.0f} "
                f"| {f['p95_ms']:.0f} | {f['max_ms']:.0f} | {f['kib']:.0f} | {f['labs']:.0f} | {f['unavailable']:.0f} |"
            )
    first = [r["cards"] for r in results[ROOT][0]]
    for checkout in checkouts[1:]:
        same = sum(a == r["cards"] for a, r in zip(first, results[checkout][0], strict=True))
        print(f"same cards as {checkout.name}: {same} of {len(first)} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the service under gunicorn against a bare Flask baseline under the same gunicorn settings.

    python bench/run.py                 # the full run (about two minutes)
    python bench/run.py --smoke         # tiny sizes, a few requests: checks the harness works (CI)

A separate driver process sends requests on loopback (a few threads, one connection per request, as gunicorn's sync
workers close each connection) and records every latency. Each figure is reported as a ratio to the baseline
measured in the same run. Memory is the resident set size of each gunicorn worker after the run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.fixtures import hook_request  # noqa: E402

PV, OS = "low-alp-workup", "antiresorptive-low-alp"
ANALYTES = [  # (LOINC, unit, reference range) for synthetic labs; a fifth of them total ALP
    ("6768-6", "U/L", (35, 120)),
    ("2823-3", "mmol/L", (3.4, 5.4)),
    ("17861-6", "mg/dL", (8.4, 10.4)),
    ("1975-2", "mg/dL", (0.3, 1.4)),
    ("5763-8", "ug/dL", (60, 120)),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def synthetic_bundle(patient_id: str, observations: int) -> dict[str, Any]:
    entries = [
        {"resource": {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1960-03-01"}}
    ]
    for i in range(observations):
        code, unit, (low, high) = ANALYTES[i % len(ANALYTES)]
        value = low + (high - low) * ((i * 37) % 100) / 100
        if code == "6768-6":
            value = 28.0 + i % 5  # persistently low ALP, so the rules and cards do their full work
        day = 1 + (i * 7) % 28
        month = 1 + (i // 28) % 12
        year = 2026 - (i // 336) % 20
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"{patient_id}-o{i}",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "effectiveDateTime": f"{year:04d}-{month:02d}-{day:02d}T08:00:00Z",
                    "valueQuantity": {
                        "value": round(value, 2),
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                    "referenceRange": [{"low": {"value": low, "unit": unit}}],
                }
            }
        )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def order_select_request() -> dict[str, Any]:
    return json.loads((ROOT / "fixtures" / "requests" / "order-low-alp-in.json").read_text())


# ---------------------------------------------------------------------------------------------- servers


class Gunicorn:
    def __init__(self, target: str, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        self.process = subprocess.Popen(
            [gunicorn, "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--log-level", "warning", target],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_http(self.port, "/cds-services", 30)

    def worker_rss_mib(self) -> list[float]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        sizes = []
        for pid in children:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


def wait_http(port: int, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port}")


# ---------------------------------------------------------------------------------------------- the driver


def _drive(port: int, method: str, path: str, body: bytes | None, requests: int, threads: int, out) -> None:
    """Runs in its own process: send `requests` requests from `threads` threads, return latencies and time."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    headers = {"Content-Type": "application/json"} if body else {}

    def worker() -> None:
        for _ in iter(lambda: next(counter, None), None):
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            connection.close()
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    errors.append(response.status)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put({"latencies": latencies, "seconds": time.perf_counter() - started, "errors": errors})


def drive(port: int, method: str, path: str, body: dict | None, requests: int, threads: int) -> dict[str, float]:
    payload = json.dumps(body).encode() if body is not None else None
    queue: multiprocessing.Queue = multiprocessing.Queue()
    warm = multiprocessing.Process(target=_drive, args=(port, method, path, payload, max(4, requests // 20), 2, queue))
    warm.start()
    queue.get()
    warm.join()
    process = multiprocessing.Process(target=_drive, args=(port, method, path, payload, requests, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    if result["errors"]:
        raise RuntimeError(f"{path}: {len(result['errors'])} answers were not 200: {sorted(set(result['errors']))}")
    lat = sorted(result["latencies"])

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] * 1000

    return {
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "rps": len(lat) / result["seconds"],
        "mean": statistics.mean(lat) * 1000,
        "n": len(lat),
        "body_kib": len(payload or b"") / 1024,
    }


# ---------------------------------------------------------------------------------------------- the run


def start_fhir_server(workdir: Path, bundle: dict[str, Any]) -> tuple[subprocess.Popen, str] | None:
    binary = os.environ.get("SEKMET_BIN") or shutil.which("sekmet") or str(ROOT / ".venv-sekmet" / "bin" / "sekmet")
    if not Path(binary).exists():
        return None
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (workdir / "sekmet.yaml").write_text(
        f"host: 127.0.0.1\nport: {port}\nbase_url: {base}\ndata_dir: {workdir}/d\n"
        "simulator:\n  enabled: false\nlog_inbound: false\n"
    )
    process = subprocess.Popen(
        [binary, "serve"],
        cwd=workdir,
        env={**os.environ, "SEKMET_CONFIG": str(workdir / "sekmet.yaml")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port, "/fhir/metadata", 60)
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": e["resource"],
                "request": {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"},
            }
            for e in bundle["entry"]
        ],
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/fhir", body=json.dumps(transaction), headers={"Content-Type": "application/fhir+json"})
    status = connection.getresponse().status
    if status not in (200, 201):
        raise RuntimeError(f"loading the FHIR server failed: {status}")
    return process, base


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few requests (no timing value)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    sizes = [10, 100] if args.smoke else [10, 100, 1000, 10000]
    requests = 20 if args.smoke else 600
    threads = 2

    workdir = Path(tempfile.mkdtemp(prefix="alp-bench-"))
    env = {
        "CDS_AUTH": "off",
        "CDS_LOG_LEVEL": "WARNING",
        "CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir}/fb.db",
        "CDS_MAX_BODY_BYTES": str(64 * 1024 * 1024),
    }
    rows: list[tuple[str, dict[str, float]]] = []
    baseline = Gunicorn("bench.baseline:create_app()", env)
    service = Gunicorn("service.app:create_app()", env)
    fhir = None
    try:
        rows.append(
            (
                "baseline: bare Flask POST",
                drive(baseline.port, "POST", f"/cds-services/{PV}", {"x": 1}, requests, threads),
            )
        )
        rows.append(("discovery", drive(service.port, "GET", "/cds-services", None, requests, threads)))
        for size in sizes:
            body = hook_request(PV, synthetic_bundle(f"bench-{size}", size), f"bench-{size}")
            count = requests if size < 10000 else max(10, requests // 10)
            rows.append(
                (
                    f"patient-view, prefetch {size} Observations",
                    drive(service.port, "POST", f"/cds-services/{PV}", body, count, threads),
                )
            )
        rows.append(
            (
                "order-select",
                drive(service.port, "POST", f"/cds-services/{OS}", order_select_request(), requests, threads),
            )
        )
        fhir = start_fhir_server(workdir, synthetic_bundle("bench-fetch", 100))
        if fhir:
            body = hook_request(PV, {}, "bench-fetch", with_prefetch=False, fhir_server=fhir[1])
            rows.append(
                (
                    "patient-view, no prefetch (FHIR server, 100 Obs)",
                    drive(service.port, "POST", f"/cds-services/{PV}", body, max(10, requests // 4), threads),
                )
            )
        memory = {"baseline": baseline.worker_rss_mib(), "service": service.worker_rss_mib()}
    finally:
        baseline.stop()
        service.stop()
        if fhir:
            fhir[0].terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    floor = rows[0][1]["p50"]
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, gunicorn 2 sync workers, "
        f"driver {threads} threads in a separate process{' (SMOKE: no timing value)' if args.smoke else ''}"
    )
    print("| scenario | request KiB | p50 ms | p95 ms | p99 ms | req/s | p50 / baseline p50 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['body_kib']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} "
            f"| {r['p50'] / floor:.2f}x |"
        )
    print(
        f"\nworker RSS (MiB): baseline {', '.join(f'{m:.0f}' for m in memory['baseline'])}; "
        f"service {', '.join(f'{m:.0f}' for m in memory['service'])}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "memory": memory}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

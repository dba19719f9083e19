"""The benchmark harness runs end to end (tiny sizes; no timing assertions: timings belong to bench/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    """``bench/<script>.py`` run as a user runs it, from the checkout; it must succeed."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_bench_smoke_run_prints_the_table():
    result = bench("run", "--smoke")
    out = result.stdout
    assert "| scenario | threads | request KiB | p50 ms | p95 ms | p99 ms | req/s | floor p50 ms |" in out
    for row in (
        "discovery",
        "patient-view, prefetch 10 Observations",
        "patient-view, prefetch 100 Observations",
        "order-select",
    ):
        assert f"| {row} | 2 |" in out, row
    if os.environ.get("SEKMET_BIN"):
        assert "| patient-view, no prefetch (FHIR server, 100 Obs) | 2 |" in out
        assert "no prefetch (100 Obs, 2 threads): mean call" in out and "the service's own time" in out
    assert "worker RSS (MiB) floor: after the run" in out and "worker RSS (MiB) service: after the run" in out


def test_replay_load_smoke_run_counts_every_status():
    result = bench("replay_load", "--smoke")
    assert "JWT checks on, SQLite replay store" in result.stdout and "statuses: 200: " in result.stdout


def test_fetch_bench_smoke_run_prints_the_table():
    """bench/fetch.py (issue 30: fetching without prefetch from sekmet-fhir) runs end to end on five patients."""
    if not (os.environ.get("SEKMET_BIN") or (ROOT / ".venv-sekmet" / "bin" / "sekmet").exists()):
        if os.environ.get("CI"):
            raise AssertionError("sekmet-fhir is not installed: .ci/run must install it (SEKMET_BIN)")
        import pytest

        pytest.skip("sekmet-fhir is not installed (SEKMET_BIN or .venv-sekmet)")
    result = bench("fetch", "--smoke")
    assert "| checkout | calls | fetch s (sum) | median ms |" in result.stdout
    assert "| synthea, 2021-03-01: " in result.stdout


def test_alert_burden_smoke_run_counts_add_up():
    """bench/alert_burden.py (issue 24 point 5) on three Synthea patients: every run's figures are consistent."""
    result = bench(
        "alert_burden", "--data", str(ROOT / "tests" / "data" / "synthea-r4.tar.xz"), "--patients", "3", "--json"
    )
    figures = json.loads(result.stdout)
    data = figures["data"]
    assert data["patients"] == 3 and data["undated"] == 0
    assert data["chart opens"] == data["visit days"] - data.get("visit days after death", 0) > 0
    runs = {(run["service"], run["overrides"]): run for run in figures["runs"]}
    assert set(runs) == {(s, o) for s in ("low-alp-workup", "antiresorptive-low-alp") for o in (None, "first", "every")}
    for (service, overrides), run in runs.items():
        assert run["calls"] == (
            data["chart opens"] if service == "low-alp-workup" else data["order-select calls (aged 50 or more)"]
        )
        cards = sum(sum(by_indicator.values()) for by_indicator in run["cards"].values())
        assert set().union(*run["cards"].values()) <= {"critical", "warning", "info"}
        assert run["calls with an interruptive card"] <= run["calls with a card"] <= run["calls"]
        assert run["patients given an interruptive card"] <= min(3, run["calls with an interruptive card"])
        assert run["calls with a card"] + run["calls with two cards or more"] <= cards
        # the memory changes indicators, never which cards are given
        assert cards == sum(sum(c.values()) for c in runs[(service, None)]["cards"].values())
        assert run["audit rows dropped"] == 0
        readings = run["memory readings"]
        assert readings["timeout"] == readings["error"] == readings["busy"] == 0
        if overrides is None:
            assert run["overrides posted"] == 0 and sum(readings.values()) == 0
    assert figures["seconds"]["whole"] > 0

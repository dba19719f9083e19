"""The benchmark harness runs end to end (tiny sizes; no timing assertions: timings belong to bench/)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_smoke_run_prints_the_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
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
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "replay_load.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "JWT checks on, SQLite replay store" in result.stdout and "statuses: 200: " in result.stdout


def test_fetch_bench_smoke_run_prints_the_table():
    """bench/fetch.py (issue 30: fetching without prefetch from sekmet-fhir) runs end to end on five patients."""
    if not (os.environ.get("SEKMET_BIN") or (ROOT / ".venv-sekmet" / "bin" / "sekmet").exists()):
        if os.environ.get("CI"):
            raise AssertionError("sekmet-fhir is not installed: .ci/run must install it (SEKMET_BIN)")
        import pytest

        pytest.skip("sekmet-fhir is not installed (SEKMET_BIN or .venv-sekmet)")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fetch.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| checkout | calls | fetch s (sum) | median ms |" in result.stdout
    assert "| synthea, 2021-03-01: " in result.stdout

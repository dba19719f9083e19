"""Benchmark: the service against the framework floor, both served exactly as ``alp-cds serve`` serves.

    python bench/run.py                 # the full run (about five minutes)
    python bench/run.py --smoke         # tiny sizes, a few requests: checks the harness works (CI)

The service runs as ``alp-cds serve`` (2 workers, the gthread worker and hooks of ``service/gunicorn_conf.py``, a
socket per worker); the floor (``bench/baseline.py``: read the body, answer a small JSON document) runs with the same
gunicorn command line (``service.cli.gunicorn_argv``). A separate driver process sends each scenario's requests on
loopback from 2 and from 16 threads (a new connection per request) and records every latency. Each scenario is sent
to the floor with the same body, and the two servers take turns, scenario by scenario, in every one of the repeats
(3 by default; the order of the two alternates): each ratio is service p50 / floor p50 of the same repeat, reported
as the median and the spread (lowest-highest) over the repeats. Memory: each worker's resident set after the run
(VmRSS) and its peak during the run (VmHWM).
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.cli import gunicorn_argv  # noqa: E402
from service.hook_requests import hook_request  # noqa: E402

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


class Server:
    """A gunicorn master and its workers: the service by its own command, the floor by the same command line."""

    def __init__(self, name: str, env: dict[str, str], workers: int = 2) -> None:
        self.name = name
        self.port = free_port()
        bind = f"127.0.0.1:{self.port}"
        if name == "service":
            command = [str(Path(sys.executable).parent / "alp-cds"), "serve", "--bind", bind, "--workers", str(workers)]
        else:
            argv = gunicorn_argv(bind, workers, None, app="bench.baseline:create_app()")
            command = [sys.executable, "-m", "gunicorn", *argv[1:]]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop): the access log, written as deployed
        environment = {**os.environ, **env}
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=self.log, stderr=self.log)
        wait_http(self.port, "/cds-services", 30)

    def worker_memory_mib(self) -> list[tuple[float, float]]:
        """(resident now, peak resident) of each worker."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        sizes = []
        for pid in children:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            sizes.append((int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024))
        return sizes

    def metric_pair(self, histogram: str) -> tuple[float, float]:
        """(sum, count) of a histogram on /metrics, summed over the workers (PROMETHEUS_MULTIPROC_DIR is set)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", "/metrics")
        found = {}
        for line in connection.getresponse().read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in (f"{histogram}_sum", f"{histogram}_count"):
                found[name] = float(value)
        return found.get(f"{histogram}_sum", 0.0), found.get(f"{histogram}_count", 0.0)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.log.close()


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
    errors: list[int | str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    headers = {"Content-Type": "application/json"} if body else {}

    def worker() -> None:
        for _ in iter(lambda: next(counter, None), None):
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status: int | str = response.status
            except OSError as exc:  # a reset or a timeout is a failed request, never a silently missing one
                status = type(exc).__name__
            finally:
                connection.close()
            elapsed = time.perf_counter() - started
            with lock:
                if status == 200:
                    latencies.append(elapsed)  # the timings are of answers: a quick 503 would flatter them
                else:
                    errors.append(status)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put({"latencies": latencies, "seconds": time.perf_counter() - started, "errors": errors})


def drive(port: int, scenario: Scenario, threads: int) -> dict[str, float]:
    method, path, requests = scenario.method, scenario.path, scenario.requests
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=_drive, args=(port, method, path, scenario.payload, requests, threads, queue)
    )
    process.start()
    result = queue.get()
    process.join()
    busy = result["errors"].count(503)  # the large-body bulkhead's "retry" (service/bulkhead.py): counted, shown
    failed = [e for e in result["errors"] if e != 503]
    if failed or len(result["latencies"]) + busy != requests or busy == requests:
        raise RuntimeError(
            f"{path}: {len(result['errors'])} of {requests} requests failed: {sorted(set(map(str, failed)))}"
        )
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
        "busy": busy,
    }


# ---------------------------------------------------------------------------------------------- the run


def start_fhir_server(workdir: Path, bundle: dict[str, Any]) -> tuple[subprocess.Popen, str] | None:
    binary = os.environ.get("SEKMET_BIN") or shutil.which("sekmet") or str(ROOT / ".venv-sekmet" / "bin" / "sekmet")
    if not Path(binary).exists():
        return None
    binary = str(Path(binary).resolve())
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


NO_PREFETCH = "patient-view, no prefetch (FHIR server, {} Obs)"


@dataclass
class Scenario:
    name: str
    method: str
    path: str
    payload: bytes | None
    requests: int


def scenarios(sizes: list[int], requests: int, fhir_base: str | None, fetched: int) -> list[Scenario]:
    pv, os_ = f"/cds-services/{PV}", f"/cds-services/{OS}"
    found = [Scenario("discovery", "GET", "/cds-services", None, requests)]
    for size in sizes:
        body = hook_request(PV, synthetic_bundle(f"bench-{size}", size), f"bench-{size}")
        count = requests if size <= 100 else max(5, requests // (3 if size <= 1000 else 15))
        found.append(Scenario(f"patient-view, prefetch {size} Observations", "POST", pv, encode(body), count))
    found.append(Scenario("order-select", "POST", os_, encode(order_select_request()), requests))
    if fhir_base:
        body = hook_request(PV, {}, "bench-fetch", with_prefetch=False, fhir_server=fhir_base)
        found.append(Scenario(NO_PREFETCH.format(fetched), "POST", pv, encode(body), max(5, requests // 30)))
    return found


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def in_process(sizes: list[int], calls: int) -> dict[int, float]:
    """Median wall time of a patient-view call made in this process through Flask's test client (no HTTP, no
    driver), with the collector settings of the workers."""
    import gc

    from service.app import create_app

    app = create_app({"AUTH": "off", "LOG_LEVEL": "WARNING", "FEEDBACK_DB_URL": "sqlite://", "MAX_BODY_BYTES": 1 << 26})
    client = app.test_client()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    found = {}
    for size in sizes:
        body = encode(hook_request(PV, synthetic_bundle(f"bench-{size}", size), f"bench-{size}"))
        times = []
        for _ in range(calls + 2):
            started = time.perf_counter()
            response = client.post(f"/cds-services/{PV}", data=body, content_type="application/json")
            times.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"in-process call answered {response.status_code}")
        found[size] = statistics.median(times[2:]) * 1000
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few requests (no timing value)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    sizes = [10, 100] if args.smoke else [10, 100, 1000, 10000]
    requests = 10 if args.smoke else 300
    repeats = 1 if args.smoke else args.repeats
    concurrencies = (2,) if args.smoke else (2, 16)
    fetched = 100 if args.smoke else 1000

    workdir = Path(tempfile.mkdtemp(prefix="alp-bench-"))
    (workdir / "metrics").mkdir()
    env = {  # as deployed (Dockerfile): INFO log with an access line per request, metrics summed over workers
        "CDS_AUTH": "off",
        "CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir}/fb.db",
        "CDS_REPLAY_STORE_URL": f"sqlite:///{workdir}/replay.db",
        "CDS_MAX_BODY_BYTES": str(64 * 1024 * 1024),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
    }
    servers: dict[str, Server] = {}
    fhir = None
    results: dict[tuple[str, int], list[tuple[dict[str, float], dict[str, float]]]] = {}
    fetching: list[float] = []  # per repeat: mean ms a no-prefetch call spent fetching (all workers, metric deltas)
    mean_call: list[float] = []  # per repeat: mean ms of a no-prefetch call at the driver
    try:
        servers.update((name, Server(name, env)) for name in ("floor", "service"))
        fhir = start_fhir_server(workdir, synthetic_bundle("bench-fetch", fetched))
        plan = scenarios(sizes, requests, fhir[1] if fhir else None, fetched)
        for threads in concurrencies:
            for scenario in plan:  # warm-up: both servers, every scenario
                if scenario.name == NO_PREFETCH.format(fetched) and threads > 2:
                    continue
                for server in servers.values():
                    drive(server.port, replace(scenario, requests=4), threads)
            for repeat in range(repeats):
                for scenario in plan:
                    no_prefetch = scenario.name == NO_PREFETCH.format(fetched)
                    if no_prefetch and threads > 2:
                        continue  # the loopback FHIR server takes seconds per chart: 16 at once exceed the budget
                    order = ("floor", "service") if repeat % 2 == 0 else ("service", "floor")
                    before = servers["service"].metric_pair("cds_prefetch_fetch_seconds")
                    run = {name: drive(servers[name].port, scenario, threads) for name in order}
                    results.setdefault((scenario.name, threads), []).append((run["service"], run["floor"]))
                    if no_prefetch:
                        after = servers["service"].metric_pair("cds_prefetch_fetch_seconds")
                        fetching.append((after[0] - before[0]) / max(1.0, after[1] - before[1]) * 1000)
                        mean_call.append(run["service"]["mean"])
        memory = {name: server.worker_memory_mib() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        if fhir:
            fhir[0].terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; both servers as alp-cds serve runs them "
        f"(2 workers); {repeats} interleaved repeat(s){' (SMOKE: no timing value)' if args.smoke else ''}"
    )
    print(
        "| scenario | threads | request KiB | p50 ms | p95 ms | p99 ms | req/s | floor p50 ms "
        "| p50 / floor p50 (median) | spread | 503 (retry) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sizes_kib = {s.name: len(s.payload or b"") / 1024 for s in plan}
    table = []
    for (name, threads), runs in results.items():
        ratios = [service["p50"] / floor["p50"] for service, floor in runs]
        row = {
            "scenario": name,
            "threads": threads,
            "kib": sizes_kib[name],
            **{k: statistics.median(service[k] for service, _ in runs) for k in ("p50", "p95", "p99", "rps")},
            "floor_p50": statistics.median(floor["p50"] for _, floor in runs),
            "ratio": statistics.median(ratios),
            "ratio_low": min(ratios),
            "ratio_high": max(ratios),
            "busy": sum(service["busy"] for service, _ in runs),
            "sent": sum(service["n"] + service["busy"] for service, _ in runs),
        }
        table.append(row)
        print(
            f"| {name} | {threads} | {row['kib']:.0f} | {row['p50']:.2f} | {row['p95']:.2f} | {row['p99']:.2f} "
            f"| {row['rps']:.0f} | {row['floor_p50']:.2f} | {row['ratio']:.2f}x "
            f"| {row['ratio_low']:.2f}-{row['ratio_high']:.2f}x | {row['busy']} of {row['sent']} |"
        )
    for name, sizes_mib in memory.items():
        print(
            f"worker RSS (MiB) {name}: after the run {', '.join(f'{now:.0f}' for now, _ in sizes_mib)}; "
            f"peak {', '.join(f'{peak:.0f}' for _, peak in sizes_mib)}"
        )
    if fetching:
        service_ms = [call - fetch for call, fetch in zip(mean_call, fetching, strict=True)]
        print(
            f"no prefetch ({fetched} Obs, 2 threads): mean call {statistics.median(mean_call):.1f} ms, of it fetching "
            f"from the FHIR server {statistics.median(fetching):.1f} ms (metric deltas over every worker): the "
            f"service's own time {statistics.median(service_ms):.1f} ms (median of {len(service_ms)} repeats; "
            "FHIR time budget 8 s)"
        )
    timings = in_process(sizes, 3 if args.smoke else 15)
    print("in-process patient-view (median ms): " + ", ".join(f"{k} Obs {v:.1f}" for k, v in timings.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": table, "memory": memory, "in_process": timings}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

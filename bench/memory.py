"""Memory of one pod's shape under bursts of large charts: ``alp-cds serve`` (2 workers x 16 threads, as the
Kubernetes Deployment runs it), the PSS of the master and its workers summed (what a container's memory counts,
shared pages split), sampled every 50 ms.

    python bench/memory.py                              # 10000-Observation charts, bursts of 8 and 32 at once
    python bench/memory.py --env CDS_LARGE_CALLS_PER_WORKER=16   # the large-call bulkhead effectively off

Prints the PSS idle, the peak during each burst, and after it (glibc keeps what the workers' threads allocated).
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PV, encode, free_port, synthetic_bundle, wait_http  # noqa: E402
from service.hook_requests import hook_request  # noqa: E402


def pss_mib(pid: int) -> float:
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def burst(port: int, body: bytes, calls: int) -> list[int]:
    statuses: list[int] = []

    def one() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", f"/cds-services/{PV}", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)

    threads = [threading.Thread(target=one) for _ in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, default=10000)
    parser.add_argument("--bursts", default="8,32,32")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    args = parser.parse_args()
    body = encode(hook_request(PV, synthetic_bundle("mem", args.observations), "mem"))
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="alp-mem-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(CDS_AUTH="off", CDS_FEEDBACK_DB_URL=f"sqlite:///{workdir}/f.db", CDS_LOG_LEVEL="WARNING")
    env.update(dict(item.split("=", 1) for item in args.env))
    command = [str(Path(sys.executable).parent / "alp-cds"), "serve", "--bind", f"127.0.0.1:{port}"]
    server = subprocess.Popen([*command, "--workers", "2", "--threads", "16"], cwd=workdir, env=env)
    try:
        wait_http(port, "/healthz", 30)
        burst(port, body, 2)  # every worker has served one (imports, caches)
        time.sleep(1)
        print(f"body {len(body) / 1e6:.1f} MB; {' '.join(args.env) or 'defaults'}")
        print(f"idle PSS {pss_mib(server.pid):.0f} MiB")
        for size in (int(n) for n in args.bursts.split(",")):
            peak, done = [0.0], threading.Event()

            def sample(done: threading.Event = done, peak: list[float] = peak) -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], pss_mib(server.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            statuses = burst(port, body, size)
            done.set()
            sampler.join()
            seconds = time.monotonic() - started
            time.sleep(1)
            counts = {s: statuses.count(s) for s in sorted(set(statuses))}
            print(
                f"burst of {size}: peak PSS {peak[0]:.0f} MiB, after {pss_mib(server.pid):.0f} MiB, "
                f"{seconds:.1f} s, statuses {counts}"
            )
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Authenticated hook calls under load against the default (SQLite) token replay store: does any valid call get a
503? (issue 27, point 3: 16 clients for 60 s once got 21 x 503 in 15,256 calls, with no Retry-After.)

    python bench/replay_load.py                       # 16 clients for 60 s, 2 workers, as `alp-cds serve` runs
    python bench/replay_load.py --clients 32 --seconds 30 --discovery
    python bench/replay_load.py --smoke               # a few seconds: checks the harness works (CI)

The service runs as ``alp-cds serve`` with JWT checks on (an ES384 issuer whose key is in the trust file, nothing
fetched) and the replay store at its default kind, a SQLite file (``CDS_REPLAY_STORE_URL``). Driver processes (4
threads each, a new connection per call) sign a fresh token for each call (its own ``jti``) and post a patient-view
request with its prefetch (``fixtures/requests/single-low-in.json``), or, with ``--discovery``, ``GET
/cds-services`` with ``CDS_DISCOVERY_AUTH=on`` (the cheapest authenticated call: the most replay-store writes per
second). It prints every status seen, the 503s with and without ``Retry-After``, the calls per second and the
latency percentiles of the answered calls.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import Server  # noqa: E402

ISSUER = "https://bench.example/ehr"
KID = "bench-1"
THREADS_PER_PROCESS = 4


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": KID, "alg": "ES384", "use": "sig"}


def _drive(port: int, base: str, path: str, body: bytes | None, pem: bytes, until: float, threads: int, out) -> None:
    """One driver process: ``threads`` clients calling until ``until`` (wall clock), each with a fresh token."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=None)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    method = "POST" if body else "GET"

    def client() -> None:
        while time.time() < until:
            now = int(time.time())
            claims = {"iss": ISSUER, "aud": base + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
            headers = {"Authorization": "Bearer " + jwt.encode(claims, key, "ES384", headers={"kid": KID})}
            if body:
                headers["Content-Type"] = "application/json"
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
                if response.status == 503:
                    status += " with Retry-After" if response.getheader("Retry-After") else " without Retry-After"
            except OSError as exc:  # a reset or a timeout is a failed call, never a silently missing one
                status = type(exc).__name__
            finally:
                connection.close()
            elapsed = time.perf_counter() - started
            with lock:
                statuses[status] += 1
                if status == "200":
                    latencies.append(elapsed)

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put({"statuses": dict(statuses), "latencies": latencies})


def run(clients: int, seconds: float, workers: int, discovery: bool, store: str | None) -> dict:
    from cryptography.hazmat.primitives import serialization

    workdir = Path(tempfile.mkdtemp(prefix="alp-replay-bench-"))
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    trust = workdir / "issuers.json"
    trust.write_text(json.dumps({ISSUER: {"jwks": {"keys": [_public_jwk(key)]}}}))
    server = None
    try:
        port_env = {
            "CDS_TRUSTED_ISSUERS_FILE": str(trust),
            "CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir}/fb.db",
            "CDS_REPLAY_STORE_URL": store or f"sqlite:///{workdir}/replay.db",
            "CDS_DISCOVERY_AUTH": "on" if discovery else "off",
            "CDS_LOG_LEVEL": "WARNING",
        }
        server = Server("service", port_env, workers=workers)  # alp-cds serve --bind 127.0.0.1:<port>
        base = f"http://127.0.0.1:{server.port}"
        if discovery:
            path, body = "/cds-services", None
        else:
            path = "/cds-services/low-alp-workup"
            body = (ROOT / "fixtures" / "requests" / "single-low-in.json").read_bytes()
        queue: multiprocessing.Queue = multiprocessing.Queue()
        until = time.time() + seconds
        sizes = [THREADS_PER_PROCESS] * (clients // THREADS_PER_PROCESS)
        if clients % THREADS_PER_PROCESS:
            sizes.append(clients % THREADS_PER_PROCESS)
        processes = [
            multiprocessing.Process(target=_drive, args=(server.port, base, path, body, pem, until, n, queue))
            for n in sizes
        ]
        started = time.perf_counter()
        for process in processes:
            process.start()
        results = [queue.get() for _ in processes]
        elapsed = time.perf_counter() - started
        for process in processes:
            process.join()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    for result in results:
        statuses.update(result["statuses"])
        latencies.extend(result["latencies"])
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))] * 1000 if latencies else 0.0

    return {
        "calls": sum(statuses.values()),
        "statuses": dict(statuses),
        "seconds": elapsed,
        "per_second": sum(statuses.values()) / elapsed,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": pct(100),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--discovery", action="store_true", help="GET /cds-services with CDS_DISCOVERY_AUTH=on")
    parser.add_argument("--store", help="CDS_REPLAY_STORE_URL (default: a fresh SQLite file)")
    parser.add_argument("--smoke", action="store_true", help="4 clients for 3 s (no value as a measurement)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    clients, seconds = (4, 3.0) if args.smoke else (args.clients, args.seconds)
    result = run(clients, seconds, args.workers, args.discovery, args.store)
    what = "GET /cds-services (CDS_DISCOVERY_AUTH=on)" if args.discovery else "patient-view with prefetch"
    print(
        f"machine: {os.cpu_count()} cores; alp-cds serve, {args.workers} workers, JWT checks on, SQLite replay store; "
        f"{clients} clients for {seconds:g} s, {what}{' (SMOKE)' if args.smoke else ''}"
    )
    print(
        f"{result['calls']} calls in {result['seconds']:.1f} s ({result['per_second']:.0f}/s); statuses: "
        + ", ".join(f"{status}: {count}" for status, count in sorted(result["statuses"].items()))
    )
    print(
        f"answered calls: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    failed = {s: n for s, n in result["statuses"].items() if s != "200"}
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How many slow clients ``alp-cds serve`` survives.

N connections each send one byte of a request every INTERVAL seconds (under the idle timeout, so they are never
dropped for silence) and open a new connection whenever the server drops theirs, as an attacker would. Meanwhile
``/healthz`` is asked every half second on a new connection with a 2 s timeout. For each N the share of health
checks answered is printed; the service "survives" N when all of them are.

    python bench/slow_peers.py                          # the default configuration (2 workers x 8 threads)
    python bench/slow_peers.py --threads 16 --counts 8,16,24,32
    python bench/slow_peers.py --mode body              # complete headers, then a body that trickles

Timings depend on the machine only a little: what runs out is threads, not CPU. Results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz", headers={"Connection": "close"})
        return connection.getresponse().status == 200
    except OSError:
        return False


class SlowPeer(threading.Thread):
    def __init__(self, port: int, mode: str, interval: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.mode, self.interval, self.stop = port, mode, interval, stop
        self.connections = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.connections += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    if self.mode == "body":
                        sock.sendall(
                            b"POST /cds-services/low-alp-workup HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 4000000\r\n\r\n"
                        )
                    else:
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
                    while not self.stop.wait(self.interval):
                        sock.sendall(b"a")
            except OSError:  # dropped by the server: come back at once
                continue


def run(threads: int | None, workers: int, counts: list[int], mode: str, interval: float) -> list[tuple[int, int]]:
    workdir = Path(tempfile.mkdtemp(prefix="slow-peers-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(
        CDS_FEEDBACK_DB_URL=f"sqlite:///{workdir}/feedback.db",
        CDS_REPLAY_STORE_URL=f"sqlite:///{workdir}/replay.db",
        CDS_TRUSTED_ISSUERS_FILE=str(workdir / "issuers.json"),
    )
    (workdir / "issuers.json").write_text(json.dumps({}))
    command = [str(Path(sys.executable).parent / "alp-cds"), "serve", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), *(["--threads", str(threads)] if threads else [])]
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    results = []
    try:
        deadline = time.monotonic() + 30
        while not healthy(port):
            if time.monotonic() > deadline:
                raise SystemExit(f"alp-cds serve did not start: {(workdir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        for count in counts:
            stop = threading.Event()
            peers = [SlowPeer(port, mode, interval, stop) for _ in range(count)]
            for peer in peers:
                peer.start()
            time.sleep(3)  # every peer has sent its first bytes and holds whatever it holds
            answered = 0
            for _ in range(10):
                started = time.monotonic()
                answered += healthy(port)
                time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
            stop.set()
            for peer in peers:
                peer.join()
            results.append((count, answered))
            print(f"{count:3d} slow peers ({mode}, 1 byte / {interval:g} s): /healthz {answered}/10", flush=True)
            time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="alp-cds serve --threads (default: the service's default)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--counts", default="4,8,12,16,20,24,32,48")
    parser.add_argument("--mode", choices=["headers", "body"], default="headers")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between two bytes of a peer")
    args = parser.parse_args()
    results = run(args.threads, args.workers, [int(c) for c in args.counts.split(",")], args.mode, args.interval)
    survived = [count for count, answered in results if answered == 10]
    print(f"all health checks answered with up to {max(survived, default=0)} slow peers")


if __name__ == "__main__":
    main()

"""Peer benchmark (issue 28): the service against HealthChain and the Flask floor, in one run, over HTTP and in-process.

    python bench/peer.py                          # about ten minutes on 2 cores
    python bench/peer.py --before ../main-copy     # and a second checkout of the service beside this one (before/after)
    python bench/peer.py --sync                    # and this checkout under plain sync gunicorn workers (point 4)
    python bench/peer.py --smoke                   # tiny run: checks the harness (no timing value)

Servers, all on loopback with 2 workers:

- ``service``: this checkout exactly as ``alp-cds serve`` runs it (``service/gunicorn_conf.py``: gthread workers of
  16 threads with the request deadline, a listening socket per worker, INFO access log, Prometheus multiprocess);
- ``before`` (``--before DIR``): the same, from another checkout (its own ``service`` package);
- ``sync`` (``--sync``): this checkout under ``gunicorn --worker-class sync --threads 1`` (one shared socket), the rest
  of ``gunicorn_conf.py`` as deployed;
- ``shared`` (``--shared``): this checkout with the deployed gthread workers but one shared listening socket (no
  ``--reuse-port``);
- ``NAME`` (``--variant NAME=ARGS``, repeatable): this checkout's ``alp-cds serve`` with ``ARGS`` added (a later
  ``--workers`` or ``--threads`` wins);
- ``floor``: ``bench/baseline.py`` (a bare Flask app that reads the body) with ``alp-cds serve``'s gunicorn command;
- ``healthchain``: ``bench/peer_healthchain.py`` (the low-ALP rule as a HealthChain user writes it) with the same
  gunicorn options (2 workers, a socket per worker) and the ASGI worker FastAPI needs (``uvicorn.workers.
  UvicornWorker``), in a virtualenv of its own that this script makes under ``~/.cache/alp-cds/peer`` (HealthChain
  is never a dependency of the project);
- ``healthchain-typed``: the same app with ``PEER_TYPED=1``: the prefetch turned into ``fhir.resources`` models by
  HealthChain's own ``convert_prefetch_to_fhir_objects`` first, the way its documentation leads (``--no-typed-peer``
  leaves it out).

The bodies are ``bench/run.py``'s synthetic patient-view charts (a fifth of the Observations ALP, all low; the rest
potassium, calcium, bilirubin and zinc), at 10, 100, 1000 and 10000 Observations. For each client thread count and
each of the repeats, every size is sent to every server in turn, the order of the servers rotated from one size and
repeat to the next; the ratios (service req/s / HealthChain req/s, service p50 / floor p50, ...) are taken within
one repeat and reported as the median and the spread (lowest-highest) of the repeats. The load average is printed at
the start of each repeat: the machine may be shared.

In-process at 10000 Observations (for each checkout, in a process of its own): one patient-view call through
Flask's test client against ``orjson.loads`` of the same body, both with the garbage collector paused (collected
before each), alternated; the ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PV, Scenario, Server, drive, encode, free_port, synthetic_bundle, wait_http  # noqa: E402
from service.cli import gunicorn_argv  # noqa: E402
from service.hook_requests import hook_request  # noqa: E402

HEALTHCHAIN = os.environ.get("PEER_HEALTHCHAIN_VERSION", "0.16.1")  # the version issue 28 measured
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alp-cds" / "peer"
# HealthChain's routes sit under /cds; the others' as the service's
PATHS = {"healthchain": f"/cds/cds-services/{PV}", "healthchain-typed": f"/cds/cds-services/{PV}"}


def healthchain_venv() -> Path:
    """The peer's virtualenv (made once, kept in the cache): HealthChain and gunicorn, nothing of this project."""
    venv = CACHE / f"healthchain-{HEALTHCHAIN}"
    if not (venv / "bin" / "gunicorn").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, f"healthchain=={HEALTHCHAIN}", "gunicorn"], check=True)
    return venv


class Peer(Server):
    """A gunicorn master and its workers started from a given command line (``Server`` does the rest)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.name = name
        self.port = free_port()
        bind = f"127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        command = [part.replace("{bind}", bind) for part in command]
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=self.log, stderr=self.log)
        wait_http(self.port, "/cds/cds-discovery" if name.startswith("healthchain") else "/cds-services", 60)


def service_command(workers: int) -> list[str]:
    """``alp-cds serve`` of the checkout the process starts in (its cwd comes first on sys.path)."""
    return [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
            "serve", "--bind", "{bind}", "--workers", str(workers)]  # fmt: skip


def start_servers(args: argparse.Namespace, workdir: Path) -> dict[str, Server]:
    def env(name: str) -> dict[str, str]:
        (workdir / name).mkdir()
        return {
            "CDS_AUTH": "off",
            "CDS_FEEDBACK_DB_URL": f"sqlite:///{workdir}/{name}/fb.db",
            "CDS_REPLAY_STORE_URL": f"sqlite:///{workdir}/{name}/replay.db",
            "CDS_MAX_BODY_BYTES": str(64 * 1024 * 1024),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / name / "metrics"),
            "PYTHONPATH": "",
        }

    workers = args.workers
    floor = gunicorn_argv("{bind}", workers, None, app="bench.baseline:create_app()")
    sync = gunicorn_argv("{bind}", workers, 1)
    sync.remove("--reuse-port")  # plain sync workers: one shared listening socket
    servers: dict[str, Server] = {}
    servers["service"] = Peer("service", service_command(workers), env("service"))
    if args.before:
        servers["before"] = Peer("before", service_command(workers), env("before"), cwd=Path(args.before).resolve())
    if args.sync:
        command = [sys.executable, "-m", "gunicorn", *sync[1:-1], "--worker-class", "sync", sync[-1]]
        servers["sync"] = Peer("sync", command, env("sync"))
    if args.shared:
        shared = gunicorn_argv("{bind}", workers, None)
        shared.remove("--reuse-port")  # the deployed gthread workers, one listening socket shared by both
        servers["shared"] = Peer("shared", [sys.executable, "-m", "gunicorn", *shared[1:]], env("shared"))
    for variant in args.variant:  # NAME=ARGS: alp-cds serve of this checkout with other options
        name, _, extra = variant.partition("=")
        servers[name] = Peer(name, [*service_command(workers), *extra.split()], env(name))
    servers["floor"] = Peer("floor", [sys.executable, "-m", "gunicorn", *floor[1:]], env("floor"))
    if not args.no_healthchain:
        venv = healthchain_venv()
        command = [str(venv / "bin" / "gunicorn"), "--bind", "{bind}", "--workers", str(workers), "--reuse-port",
                   "--worker-class", "uvicorn.workers.UvicornWorker", "bench.peer_healthchain:app"]  # fmt: skip
        servers["healthchain"] = Peer("healthchain", command, {"PYTHONPATH": ""})
        if not args.no_typed_peer:
            servers["healthchain-typed"] = Peer("healthchain-typed", command, {"PYTHONPATH": "", "PEER_TYPED": "1"})
    return servers


IN_PROCESS = textwrap.dedent(
    """
    import gc, json, statistics, sys, time
    import orjson
    from service.app import create_app
    body = open(sys.argv[1], "rb").read()
    app = create_app({"AUTH": "off", "LOG_LEVEL": "WARNING", "FEEDBACK_DB_URL": "sqlite://", "MAX_BODY_BYTES": 1 << 26})
    client = app.test_client()
    gc.freeze()
    def call():
        answer = client.post("/cds-services/low-alp-workup", data=body, content_type="application/json")
        assert answer.status_code == 200
    def decode():
        orjson.loads(body)
    for _ in range(2):
        call(); decode()
    pairs = []
    for _ in range(int(sys.argv[2])):
        timed = []
        for f in (call, decode):
            gc.collect(); gc.disable()
            started = time.perf_counter(); f(); timed.append(time.perf_counter() - started)
            gc.enable()
        pairs.append(timed)
    print(json.dumps({"call": statistics.median(p[0] for p in pairs) * 1000,
                      "orjson": statistics.median(p[1] for p in pairs) * 1000,
                      "ratio": statistics.median(p[0] / p[1] for p in pairs)}))
    """
)


def in_process(checkouts: dict[str, Path], body: bytes, calls: int) -> dict[str, dict[str, float]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(body)
        file.flush()
        found = {}
        for name, checkout in checkouts.items():
            result = subprocess.run(
                [sys.executable, "-c", IN_PROCESS, file.name, str(calls)],
                cwd=checkout, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True, check=True,
            )  # fmt: skip
            found[name] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def summary(runs: list[dict[str, dict[str, float]]], a: str, b: str, key: str) -> str:
    ratios = [run[a][key] / run[b][key] for run in runs if a in run and b in run]
    if not ratios:
        return ""
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="2,1", help="client thread counts, comma-separated")
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", help="another checkout of the service to run beside this one")
    parser.add_argument("--sync", action="store_true", help="also this checkout under plain sync gunicorn workers")
    parser.add_argument("--shared", action="store_true", help="also the deployed workers on one shared socket")
    parser.add_argument("--variant", action="append", default=[], help="NAME=ARGS: also alp-cds serve ARGS")
    parser.add_argument("--no-healthchain", action="store_true")
    parser.add_argument("--no-typed-peer", action="store_true", help="leave out HealthChain with FHIR models")
    parser.add_argument("--json", help="also write every measurement here")
    args = parser.parse_args()
    sizes = [10, 100] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.smoke else args.repeats
    thread_counts = [int(t) for t in args.threads.split(",")]

    bodies = {s: encode(hook_request(PV, synthetic_bundle(f"bench-{s}", s), f"bench-{s}")) for s in sizes}
    workdir = Path(tempfile.mkdtemp(prefix="alp-peer-"))
    servers: dict[str, Server] = {}
    results: dict[tuple[int, int], list[dict[str, dict[str, float]]]] = {}
    loads: list[str] = []
    try:
        servers = start_servers(args, workdir)
        names = list(servers)
        for threads in thread_counts:
            for size in sizes:  # warm-up
                for name in names:
                    drive(servers[name].port, scenario(size, bodies[size], 4, name), threads)
            for repeat in range(repeats):
                loads.append(f"threads {threads}, repeat {repeat + 1}: " + Path("/proc/loadavg").read_text().strip())
                print(loads[-1], flush=True)
                for index, size in enumerate(sizes):
                    shift = (repeat * len(sizes) + index) % len(names)
                    run = {}
                    for name in names[shift:] + names[:shift]:
                        count = 4 if args.smoke else requests_for(size)
                        run[name] = drive(servers[name].port, scenario(size, bodies[size], count, name), threads)
                    results.setdefault((threads, size), []).append(run)
        memory = {name: server.worker_memory_mib() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; HealthChain {HEALTHCHAIN}; "
          f"{repeats} rotated repeat(s){' (SMOKE: no timing value)' if args.smoke else ''}")  # fmt: skip
    others = [n for n in names if n not in ("service", "floor")]
    header = ["threads", "Obs", *(f"{n} req/s" for n in names), *(f"{n} p50 ms" for n in names)]
    header += ["service/healthchain req/s", "service/floor p50"]
    header += [f"service/{n} req/s" for n in others if n != "healthchain"]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for (threads, size), runs in results.items():
        cells = [str(threads), str(size)]
        cells += [f"{statistics.median(r[n]['rps'] for r in runs):.1f}" for n in names]
        cells += [f"{statistics.median(r[n]['p50'] for r in runs):.2f}" for n in names]
        cells += [summary(runs, "service", "healthchain", "rps"), summary(runs, "service", "floor", "p50")]
        cells += [summary(runs, "service", n, "rps") for n in others if n != "healthchain"]
        print("| " + " | ".join(cells) + " |")
    for name, sizes_mib in memory.items():
        print(f"worker RSS (MiB) {name}: after the run {', '.join(f'{now:.0f}' for now, _ in sizes_mib)}; "
              f"peak {', '.join(f'{peak:.0f}' for _, peak in sizes_mib)}")  # fmt: skip

    big = max(sizes)
    checkouts = {"service": ROOT, **({"before": Path(args.before).resolve()} if args.before else {})}
    print(f"in-process, {big} Observations, load {Path('/proc/loadavg').read_text().strip()}")
    timings = in_process(checkouts, bodies[big], 3 if args.smoke else 15)
    for name, found in timings.items():
        print(f"  {name}: one call {found['call']:.1f} ms, orjson.loads {found['orjson']:.1f} ms (GC paused for both): "
              f"ratio {found['ratio']:.2f} (median of per-pair ratios)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({
            "loads": loads, "memory": memory, "in_process": timings,
            "runs": [{"threads": t, "size": s, "repeats": runs} for (t, s), runs in results.items()],
        }, indent=1))  # fmt: skip
    return 0


def requests_for(size: int) -> int:
    return {10: 300, 100: 300, 1000: 60}.get(size, 12)


def scenario(size: int, body: bytes, count: int, server: str) -> Scenario:
    path = PATHS.get(server, f"/cds-services/{PV}")
    return replace(Scenario(f"patient-view, prefetch {size} Observations", "POST", path, body, count))


if __name__ == "__main__":
    raise SystemExit(main())

"""HAPI FHIR R4 JPA server for the integration tests (and for trying the service without Docker).

The hapiproject/hapi image runs hapi-fhir-jpaserver-starter, which is not published to Maven Central; so
``tests/hapi-server`` is a small Java module of our own on the HAPI JPA modules that are (the version below, the same
as docker-compose.yml's image), configured as that image runs by default, with an in-memory H2 database. It is built
once with Maven into a cache directory outside the checkout (``$ALPCDS_CACHE``, else ``~/.cache/alp-cds``; the
jars Maven downloads stay in ``~/.m2``) and rebuilt only when its sources change.

    python3 tests/hapi_server.py --port 8090            # build if needed, then serve http://127.0.0.1:8090/fhir
    python3 tests/hapi_server.py --build                # only build (.ci/run); prints the jar's path

It needs Java 17 or later and Maven (Debian: ``apt-get install openjdk-17-jdk-headless maven``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

HAPI_VERSION = "8.8.0"  # docker-compose.yml runs hapiproject/hapi:v8.8.0-1, the starter built on this version
MODULE = Path(__file__).resolve().parent / "hapi-server"
INSTALL_HINT = "Java 17+ and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
# HAPI starts in 20-60 s on 2 free cores; on a machine shared with other work it may take several times that.
START_SECONDS = 600.0
HEAP = "-Xmx1g"


class Unavailable(Exception):
    """HAPI cannot be built or run here; the message says what to install."""


def missing_tools() -> str | None:
    """None when Java 17+ and Maven are installed, else the one line saying what to install."""
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if not java or not mvn:
        return f"{'java' if not java else 'mvn'} is not installed: install {INSTALL_HINT}"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return f"java -version failed ({type(exc).__name__}): install {INSTALL_HINT}"
    found = re.search(r'version "(\d+)', out)
    if not found or int(found.group(1)) < 17:
        seen = out.splitlines()[0] if out else "nothing"
        return f"Java 17 or later is needed (found: {seen}): install {INSTALL_HINT}"
    return None


def _source_digest(module: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in module.rglob("*") if p.is_file() and "target" not in p.parts):
        digest.update(str(path.relative_to(module)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_module(module: Path, name: str, what: str, directory_property: str, log=None) -> Path:
    """The jar ``<name>.jar`` of a Maven module of the tests, built into the cache (``$ALPCDS_CACHE``, else
    ``~/.cache/alp-cds``) when this version of its sources has not been built yet. The module's pom takes the build
    directory as ``-D<directory_property>``; ``what`` names it in messages."""
    cache = Path(os.environ.get("ALPCDS_CACHE") or Path.home() / ".cache" / "alp-cds")
    target = cache / f"{name}-{HAPI_VERSION}-{_source_digest(module)}"
    jar = target / f"{name}.jar"
    if jar.exists():
        if not shutil.which("java"):  # built here before, but Java is gone
            raise Unavailable(f"java is not installed: install {INSTALL_HINT}")
        return jar
    problem = missing_tools()
    if problem:
        raise Unavailable(problem)
    if log is not None:
        print(f"building {what} into {target} (first run: a few minutes)", file=log)
    command = ["mvn", "-B", "-q", "-f", str(module / "pom.xml"), f"-D{directory_property}={target}.partial", "package"]
    shutil.rmtree(f"{target}.partial", ignore_errors=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"building {what} failed: {exc}") from None
    if done.returncode != 0:
        raise Unavailable(f"building {what} failed: {(done.stdout + done.stderr)[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(f"{target}.partial", target)
    return jar


def ensure_built(log=sys.stderr) -> Path:
    """The server's jar, built with Maven when this version of the sources has not been built yet."""
    return build_module(MODULE, "hapi-test-server", f"the HAPI FHIR {HAPI_VERSION} test server", "hapi.build.dir", log)


class HapiServer:
    """A started HAPI server: ``base`` is its FHIR base URL."""

    def __init__(self, process: subprocess.Popen, base: str, log: Path) -> None:
        self.process, self.base, self.log = process, base, log

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def start(
    port: int, log: Path, token: str | None = None, bind: str = "127.0.0.1", seconds: float = START_SECONDS
) -> HapiServer:
    """Start the server and wait until ``/metadata`` answers (HAPI is slow to start: a generous wait)."""
    jar = ensure_built()
    command = ["java", HEAP, "-XX:+UseSerialGC", "-jar", str(jar)]
    command += ["--port", str(port), "--bind", bind] + (["--token", token] if token else [])
    out = log.open("w")
    try:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise Unavailable(f"java could not be started ({exc.strerror}): install {INSTALL_HINT}") from None
    host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    server = HapiServer(process, f"http://{host}:{port}/fhir", log)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise Unavailable(f"HAPI exited with status {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{server.base}/metadata", headers=headers, timeout=10).status_code == 200:
                return server
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise Unavailable(f"HAPI did not answer /metadata within {seconds:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="store_true", help="only build the server (cached) and print its jar")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--token", help="require this bearer token (default: an open server, as the image)")
    args = parser.parse_args(argv)
    try:
        jar = ensure_built()
        if args.build:
            print(jar)
            return 0
        log = ensure_built().parent / f"server-{args.port}.log"
        started = time.monotonic()
        server = start(args.port, log, args.token, args.bind)
    except Unavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    took = time.monotonic() - started
    print(f"HAPI FHIR {HAPI_VERSION} is serving {server.base} (started in {took:.0f} s; log {log})", flush=True)

    stopping: list[int] = []

    def stop(number: int, _frame: object) -> None:  # Java stops with it; the wait below then returns
        stopping.append(number)
        server.process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.process.wait()
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())

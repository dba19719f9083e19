"""Shared test helpers: an app with a fixed clock, and a client whose every 200 is checked against the schemas."""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.hook_requests import NOW
from service.validation import first_error

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PV = "low-alp-workup"
OS = "antiresorptive-low-alp"
SIGN = "antiresorptive-low-alp-sign"
SERVICE_OF_HOOK = {"patient-view": PV, "order-select": OS, "order-sign": SIGN}


def pytest_collection_modifyitems(config, items) -> None:
    """Under mutation testing (mutmut sets MUTANT_UNDER_TEST) the fast table-driven boundary tests run first, so
    that a run stopped by the first failure (-x) rarely starts an app; otherwise the order is untouched."""
    if "MUTANT_UNDER_TEST" in os.environ:
        items.sort(
            key=lambda item: 0 if item.nodeid.split("::")[0].rsplit("/", 1)[-1].startswith("test_boundaries_") else 1
        )


def load_request(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "requests" / f"{name}.json").read_text())


def load_bundle(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "fhir" / f"{name}.json").read_text())


class CheckedClient:
    """Posts hook calls; every 200 answer must be valid against the project's response schema."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()

    def hook(self, service_id: str, body: Any, **kwargs):
        response = self.client.post(f"/cds-services/{service_id}", json=body, **kwargs)
        if response.status_code == 200:
            problem = first_error("cds-response", response.get_json())
            assert problem is None, problem
        return response

    def cards(self, service_id: str, body: Any) -> list[dict[str, Any]]:
        response = self.hook(service_id, body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["cards"]


@pytest.fixture
def app(tmp_path):
    return create_app(
        {
            "NOW": lambda: NOW,
            "LOG_LEVEL": "WARNING",
            "AUTH": "off",
            "FEEDBACK_DB_URL": f"sqlite:///{tmp_path}/feedback.db",
        }
    )


@pytest.fixture
def client(app) -> CheckedClient:
    return CheckedClient(app)


def make_app(**overrides: Any):
    defaults = {"NOW": lambda: NOW, "LOG_LEVEL": "WARNING", "AUTH": "off", "FEEDBACK_DB_URL": "sqlite://"}
    return CheckedClient(create_app({**defaults, **overrides}))


# ---------------------------------------------------------------------------------------- a real FHIR server

FHIR_TOKEN = "integration-token"


CHROMIUM = "/usr/bin/chromium"  # Debian's (.ci/run installs it); Playwright downloads no browser


def launch_chromium(playwright: Any) -> Any:
    """Headless Debian Chromium as the browser tests drive it: no sandbox (root), and none of the background
    connections a closed network refuses."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SEKMET = "sekmet-fhir==0.1.1"


def _install_sekmet() -> str | None:
    """The FHIR server in a virtualenv of its own beside the checkout (its dependencies never mix with ours), so the
    README's test command needs nothing prepared by hand; None when it cannot be installed (no network)."""
    if os.environ.get("CI"):
        return None  # .ci/run installs it
    venv = ROOT / ".venv-sekmet"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", SEKMET], check=True, capture_output=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return _sekmet_bin()


def _sekmet_bin() -> str | None:
    for candidate in (os.environ.get("SEKMET_BIN"), str(ROOT / ".venv-sekmet" / "bin" / "sekmet")):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("sekmet")


class FhirServer:
    def __init__(self, name: str, base: str, database: Path | None = None) -> None:
        self.name = name
        self.base = base
        self.database = database

    def analyze(self) -> None:
        """Refresh SQLite's statistics after a bulk load; without them sekmet's ``_sort=-date`` searches take
        seconds. (HAPI's H2 needs nothing.)"""
        import sqlite3

        if self.database is None:
            return
        with sqlite3.connect(self.database) as connection:
            connection.execute("ANALYZE")


FHIR_SERVERS = ("sekmet", "hapi")


@pytest.fixture(scope="session")
def fhir_base(fhir_server: FhirServer) -> str:
    return fhir_server.base


@pytest.fixture(scope="session", params=FHIR_SERVERS)
def fhir_server(request, tmp_path_factory):
    """Every integration test that talks to a FHIR server runs against both: sekmet-fhir and HAPI FHIR, each
    started once per test session on a free loopback port, with bearer auth (``FHIR_TOKEN``)."""
    if request.param == "sekmet":
        yield from _sekmet_server(tmp_path_factory)
    else:
        yield from _hapi_server(tmp_path_factory)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (.ci/run must install it)")
    pytest.skip(message)


def _sekmet_server(tmp_path_factory):
    """sekmet-fhir on loopback (its own virtualenv): a free port, a temporary data dir, no simulator, bearer auth.
    ``.ci/run`` installs it and sets ``SEKMET_BIN``; in CI a server that cannot start fails these tests."""
    from service import loader

    binary = _sekmet_bin() or _install_sekmet()
    if binary is None:
        _unavailable(
            "sekmet-fhir could not be installed: python3 -m venv .venv-sekmet && "
            f".venv-sekmet/bin/pip install {SEKMET} (or set SEKMET_BIN)"
        )
    workdir = tmp_path_factory.mktemp("sekmet")
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (workdir / "settings.yaml").write_text(
        f"host: 127.0.0.1\nport: {port}\nbase_url: {base}\ndata_dir: {workdir / 'data'}\n"
        "simulator:\n  enabled: false\nlog_inbound: false\n"
        f"server_auth:\n  types: [bearer]\n  tokens: [{FHIR_TOKEN}]\n"
    )
    log = (workdir / "server.log").open("w")
    env = {**os.environ, "SEKMET_CONFIG": str(workdir / "settings.yaml")}
    process = subprocess.Popen([binary, "serve"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        loader.wait_for_server(base, 60, FHIR_TOKEN)
    except loader.ToolError as exc:
        process.terminate()
        pytest.fail(f"{exc}; server log: {(workdir / 'server.log').read_text()[-2000:]}")
    yield FhirServer("sekmet", base, workdir / "data" / "sekmet.db")
    process.terminate()
    process.wait(timeout=10)


def _hapi_server(tmp_path_factory):
    """HAPI FHIR (tests/hapi_server.py: our module on the HAPI JPA jars, as docker-compose.yml's image runs it),
    built once into a cache (``.ci/run`` builds it first) and started once per session; it takes a while."""
    from tests import hapi_server

    try:
        hapi_server.ensure_built()
    except hapi_server.Unavailable as exc:
        _unavailable(f"HAPI FHIR tests: {exc}")
    workdir = tmp_path_factory.mktemp("hapi")
    started = time.monotonic()
    try:
        server = hapi_server.start(free_port(), workdir / "server.log", FHIR_TOKEN)
    except hapi_server.Unavailable as exc:
        pytest.fail(str(exc))
    print(f"HAPI FHIR {hapi_server.HAPI_VERSION} started in {time.monotonic() - started:.0f} s", file=sys.stderr)
    yield FhirServer("hapi", server.base)
    server.stop()


# ---------------------------------------------------------------------------------------- a real PostgreSQL

_POSTGRES: dict[str, str] = {}


def postgres_url() -> str:
    """``FEEDBACK_PG_URL`` (``.ci/run`` sets it), else a private PostgreSQL cluster started for this test run from
    the installed server binaries; skipped (failed in CI) when PostgreSQL is not installed."""
    url = os.environ.get("FEEDBACK_PG_URL") or _POSTGRES.get("url")
    if url:
        return url
    if "why" not in _POSTGRES:
        try:
            _POSTGRES["url"] = _start_postgres()
            return _POSTGRES["url"]
        except (OSError, subprocess.SubprocessError) as exc:
            _POSTGRES["why"] = f"could not start PostgreSQL: {exc}"
        except LookupError as exc:
            _POSTGRES["why"] = str(exc)
    if os.environ.get("CI"):
        pytest.fail(_POSTGRES["why"])
    pytest.skip(_POSTGRES["why"])


def _start_postgres() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or (
        [shutil.which("initdb")] if shutil.which("initdb") else []
    )
    if not found:
        raise LookupError("PostgreSQL is not installed (Debian: apt-get install postgresql), or set FEEDBACK_PG_URL")
    bin_dir = Path(found[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="alpcds-pg-"))
    data, sockets, port = home / "data", home / "run", free_port()
    sockets.mkdir()
    as_user: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # initdb refuses to run as root: run it as postgres
        shutil.chown(home, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
    atexit.register(_stop_postgres, [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], home)
    run(
        str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE alpcds_test"
    )
    print(f"started PostgreSQL for the tests on port {port}", file=sys.stderr)
    return f"postgresql://postgres@127.0.0.1:{port}/alpcds_test"


def _stop_postgres(command: list[str], home: Path) -> None:
    subprocess.run(command, capture_output=True, timeout=60, check=False)
    shutil.rmtree(home, ignore_errors=True)


def referencing_medication(patient_id: str, reference: str) -> dict:
    """A searchset with one active MedicationRequest that names its drug only by a ``Medication/<id>`` reference."""
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "authoredOn": "2026-05-11",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationReference": {"reference": reference},
    }
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": request}]}

"""Shared test helpers: an app with a fixed clock, and a client whose every 200 is checked against the schemas."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.fixtures import NOW
from service.validation import first_error

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PV = "low-alp-workup"
OS = "antiresorptive-low-alp"


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sekmet_bin() -> str | None:
    for candidate in (os.environ.get("SEKMET_BIN"), str(ROOT / ".venv-sekmet" / "bin" / "sekmet")):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("sekmet")


class FhirServer:
    def __init__(self, base: str, database: Path) -> None:
        self.base = base
        self.database = database

    def analyze(self) -> None:
        """Refresh SQLite's statistics after a bulk load; without them ``_sort=-date`` searches take seconds."""
        import sqlite3

        with sqlite3.connect(self.database) as connection:
            connection.execute("ANALYZE")


@pytest.fixture(scope="session")
def fhir_base(fhir_server: FhirServer) -> str:
    return fhir_server.base


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory):
    """sekmet-fhir on loopback (its own virtualenv): a free port, a temporary data dir, no simulator, bearer auth.
    ``.ci/run`` installs it and sets ``SEKMET_BIN``; in CI a server that cannot start fails these tests."""
    from service import tools

    binary = _sekmet_bin()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("sekmet-fhir is not installed: .ci/run must install it (SEKMET_BIN)")
        pytest.skip("sekmet-fhir not installed; run bash .ci/run (or set SEKMET_BIN)")
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
        tools.wait_for_server(base, 60, FHIR_TOKEN)
    except tools.ToolError as exc:
        process.terminate()
        pytest.fail(f"{exc}; server log: {(workdir / 'server.log').read_text()[-2000:]}")
    yield FhirServer(base, workdir / "data" / "sekmet.db")
    process.terminate()
    process.wait(timeout=10)

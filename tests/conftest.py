"""Shared test helpers: an app with a fixed clock, and a client whose every 200 is checked against the schemas."""

from __future__ import annotations

import json
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

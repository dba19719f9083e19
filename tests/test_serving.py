"""The service as ``alp-cds serve`` runs it: the command's start-up checks, and gunicorn on loopback."""

from __future__ import annotations

import sys

import pytest

from service import cli


@pytest.fixture
def serve_env(monkeypatch):
    """A clean environment for ``alp-cds serve``; gunicorn itself is replaced by a recorder."""
    for name in ("CDS_PUBLIC_BASE_URL", "CDS_AUTH"):
        monkeypatch.setenv(name, "")  # recorded, so that what the command sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    started: dict = {}
    monkeypatch.setattr("gunicorn.app.wsgiapp.run", lambda: started.update(argv=list(sys.argv)))
    return started


def test_serve_sets_the_public_url_from_a_specific_bind(serve_env):
    import os

    assert cli.main(["serve", "--bind", "127.0.0.1:18080"]) == 0
    assert os.environ["CDS_PUBLIC_BASE_URL"] == "http://127.0.0.1:18080"
    assert "service.app:create_app()" in serve_env["argv"]


def test_serve_refuses_to_start_without_a_public_url_when_auth_is_on(serve_env, capsys):
    assert cli.main(["serve", "--bind", "0.0.0.0:8080"]) == 2
    assert "CDS_PUBLIC_BASE_URL" in capsys.readouterr().err
    assert serve_env == {}  # gunicorn was not started
    assert cli.main(["serve", "--bind", "0.0.0.0:8080", "--public-url", "https://cds.example.org"]) == 0


def test_serve_with_auth_off_needs_no_public_url(serve_env, monkeypatch):
    monkeypatch.setenv("CDS_AUTH", "off")
    assert cli.main(["serve", "--bind", "0.0.0.0:8080"]) == 0

"""A programmable HTTP peer on loopback (a FHIR server or a JWKS endpoint that misbehaves as a test chooses).

Test modules use it through a fixture of their own: ``peer = peer_fixture()``."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Peer:
    """An HTTP server on loopback whose answers a test chooses: ``routes`` maps a path prefix to a function that
    writes the whole answer (``handler`` is a BaseHTTPRequestHandler). Every request's path is kept in ``hits``."""

    def __init__(self, routes: dict[str, Any] | None = None) -> None:
        self.routes: dict[str, Any] = dict(routes or {})
        self.hits: list[str] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                peer.hits.append(self.path)
                for prefix in sorted(peer.routes, key=len, reverse=True):
                    if self.path.startswith(prefix):
                        with contextlib.suppress(OSError):  # the client hung up
                            peer.routes[prefix](self)
                        return
                send_json(self, {"resourceType": "OperationOutcome", "issue": []}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(handler, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def send_redirect(handler, location: str, status: int = 302) -> None:
    handler.send_response(status)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def peer_fixture():
    """A fixture giving a fresh :class:`Peer`, closed after the test."""

    @pytest.fixture
    def peer():
        server = Peer()
        yield server
        server.close()

    return peer

"""Launches in progress: what the callback needs (the EHR, its token endpoint, the PKCE verifier), kept on the
server under the ``state`` sent through the browser, for at most ``SMART_LAUNCH_SECONDS`` and used once.

A SQLite file (WAL) shared by every worker that opens it, as the replay store is, since the launch and the callback
may reach different workers. Keys are SHA-256 digests of the state; nothing here is a token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from service.settings import SettingsError
from service.sqlite import pragmas

BUSY_SECONDS = 1.0


class LaunchStore:
    def __init__(self, url: str, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            raise SettingsError(f"CDS_SMART_STATE_STORE_URL: only sqlite stores exist, not {url.split(':')[0]!r}")
        self._lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        if parsed.database in (None, "", ":memory:"):
            self.engine = create_engine(parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
            self._lock = threading.Lock()
        else:
            with contextlib.suppress(OSError):  # then every launch fails, with the reason in the log
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(parsed, pool_size=4, max_overflow=8, pool_timeout=BUSY_SECONDS)
            event.listen(self.engine, "connect", pragmas("NORMAL", busy_seconds=BUSY_SECONDS))
        self._ready = False

    @staticmethod
    def _key(state: str) -> str:
        return hashlib.sha256(state.encode()).hexdigest()

    def _begin(self, connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        if not self._ready:
            connection.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS smart_launches (key TEXT PRIMARY KEY, payload TEXT NOT NULL, "
                "expires_at REAL NOT NULL)"
            )
            connection.exec_driver_sql(
                "CREATE INDEX IF NOT EXISTS smart_launches_expiry ON smart_launches (expires_at)"
            )
            self._ready = True
        connection.execute(text("DELETE FROM smart_launches WHERE expires_at < :now"), {"now": time.time()})

    def put(self, state: str, payload: dict[str, Any], seconds: float) -> None:
        """Keep a launch; past ``max_pending`` launches in progress the oldest are forgotten first (anyone can start
        a launch, so the store must not grow without bound)."""
        with self._lock, self.engine.begin() as connection:
            self._begin(connection)
            pending = connection.execute(text("SELECT count(*) FROM smart_launches")).scalar_one()
            if pending >= self.max_pending:
                connection.execute(
                    text(
                        "DELETE FROM smart_launches WHERE key IN (SELECT key FROM smart_launches "
                        "ORDER BY expires_at LIMIT :over)"
                    ),
                    {"over": pending - self.max_pending + 1},
                )
            connection.execute(
                text("INSERT INTO smart_launches (key, payload, expires_at) VALUES (:key, :payload, :expires)"),
                {"key": self._key(state), "payload": json.dumps(payload), "expires": time.time() + seconds},
            )

    def take(self, state: str) -> dict[str, Any] | None:
        """The launch saved under ``state``, removed in the same transaction (a second callback finds nothing);
        None when it is unknown, used or expired."""
        with self._lock, self.engine.begin() as connection:
            self._begin(connection)
            row = connection.execute(
                text("DELETE FROM smart_launches WHERE key = :key RETURNING payload"), {"key": self._key(state)}
            ).first()
        return json.loads(row[0]) if row else None

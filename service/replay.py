"""JWT ids already seen, shared by every worker and replica that opens the same store: a token is accepted once.

A store has one operation, :meth:`ReplayStore.first_use`, an atomic insert-or-fail, so that a store shared by many
machines (Redis ``SET key 1 NX EXAT expires``) can be added beside the SQLite one, which needs no server: one file
in WAL mode that all workers on a machine open. Entries expire with their token (whose lifetime is capped by
``JWT_MAX_LIFETIME``), so the store stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from service.settings import SettingsError
from service.sqlite import pragmas

log = logging.getLogger("service.replay")
BUSY_SECONDS = 1.0  # how long a call waits for another process's lock on the store before its 503


class ReplayStore(Protocol):
    def first_use(self, key: str, expires_at: float) -> bool:
        """Remember ``key`` until ``expires_at`` (Unix time); False if it is already remembered. Raises when the
        store cannot answer (the caller refuses the token: it fails closed)."""
        ...


class SqliteReplayStore:
    """``sqlite:///path`` (shared by the processes that open the file) or ``sqlite://`` (this process only).

    Each call writes in a transaction of its own, on a connection of its own, and SQLite orders the writers of every
    process: no Python lock is held while SQLite waits, so calls wait side by side, each at most BUSY_SECONDS when
    another process holds the store (then 503), never one after another."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        if parsed.database in (None, "", ":memory:"):
            self.engine = create_engine(parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
            self._lock = threading.Lock()  # one connection for every thread: one transaction at a time
        else:
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # every token is then refused with a 503 until the location is fixed
                log.error(json.dumps({"event": "replay_store_dir_unavailable", "error": type(exc).__name__}))
            self.engine = create_engine(parsed, pool_size=8, max_overflow=24, pool_timeout=BUSY_SECONDS)
            # A crash of the machine (not of the service) may forget the last tokens seen; they expire in minutes.
            event.listen(self.engine, "connect", pragmas("NORMAL", busy_seconds=BUSY_SECONDS))
        self._ready = False

    def first_use(self, key: str, expires_at: float) -> bool:
        digest = hashlib.sha256(key.encode()).hexdigest()  # a fixed-size key, whatever the token's jti
        with self._lock, self.engine.begin() as connection:
            # The write lock first, waited for on the busy timeout: a transaction that read first and then wanted
            # to write could fail at once when another connection wrote meanwhile.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            if not self._ready:
                connection.exec_driver_sql(
                    "CREATE TABLE IF NOT EXISTS seen_tokens (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
                )
                connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS seen_tokens_expiry ON seen_tokens (expires_at)")
                self._ready = True
            connection.execute(text("DELETE FROM seen_tokens WHERE expires_at < :now"), {"now": time.time()})
            inserted = connection.execute(
                text("INSERT INTO seen_tokens (key, expires_at) VALUES (:key, :expires) ON CONFLICT DO NOTHING"),
                {"key": digest, "expires": expires_at},
            )
            return inserted.rowcount == 1

    def size(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM seen_tokens")).scalar_one()


def open_replay_store(url: str) -> ReplayStore:
    if make_url(url).get_backend_name() == "sqlite":
        return SqliteReplayStore(url)
    raise SettingsError(f"CDS_REPLAY_STORE_URL: only sqlite:///path stores exist for now, not {url.split(':')[0]!r}")

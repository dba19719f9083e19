"""Launches in progress: what the callback needs (the EHR, its token endpoint, the PKCE verifier), kept on the
server under the ``state`` sent through the browser, for at most ``SMART_LAUNCH_SECONDS`` and used once.

A SQLite file (WAL) shared by every worker that opens it, as the replay store is, since the launch and the callback
may reach different workers. Keys are SHA-256 digests of the state; nothing here is a token.

Anyone can start a launch, so what one client can hold is bounded: each launch is kept with a digest of the address
it came from (:func:`client_of`: an IPv6 address by its /64, which one host can fill), one client holds at most
:data:`CLIENT_SHARE` of ``max_pending`` (past it, its own oldest launch is forgotten), and when the store is full the
oldest launch of the client holding the most is forgotten. A flood from one address (or a few) then forgets only its
own launches, never another client's.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
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
CLIENT_SHARE = 0.1  # of max_pending, the most launches in progress one client address may hold


def client_of(address: str | None) -> str:
    """The client a launch is counted against: a digest (no address is kept) of its IPv4 address, or of the /64 of
    its IPv6 address (one host or home is usually given a whole /64)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ipaddress.ip_network(f"{ip}/64", strict=False).network_address
    return hashlib.sha256(str(ip).encode()).hexdigest()[:32]


class LaunchStore:
    def __init__(self, url: str, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self.per_client = max(1, int(max_pending * CLIENT_SHARE))
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
                "expires_at REAL NOT NULL, client TEXT NOT NULL DEFAULT '')"
            )
            columns = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(smart_launches)")}
            if "client" not in columns:  # a store made before launches were counted per client
                connection.exec_driver_sql("ALTER TABLE smart_launches ADD COLUMN client TEXT NOT NULL DEFAULT ''")
            connection.exec_driver_sql(
                "CREATE INDEX IF NOT EXISTS smart_launches_expiry ON smart_launches (expires_at)"
            )
            connection.exec_driver_sql(
                "CREATE INDEX IF NOT EXISTS smart_launches_client ON smart_launches (client, expires_at)"
            )
            self._ready = True
        connection.execute(text("DELETE FROM smart_launches WHERE expires_at < :now"), {"now": time.time()})

    def put(self, state: str, payload: dict[str, Any], seconds: float, client: str = "") -> None:
        """Keep a launch of ``client`` (:func:`client_of`). Anyone can start a launch, so the store must not grow
        without bound, nor one client push out the launches of others: past its share (:data:`CLIENT_SHARE` of
        ``max_pending``) the client's own oldest launch is forgotten, and past ``max_pending`` in all the oldest of
        the client holding the most."""
        with self._lock, self.engine.begin() as connection:
            self._begin(connection)
            held = connection.execute(
                text("SELECT count(*) FROM smart_launches WHERE client = :client"), {"client": client}
            ).scalar_one()
            if held >= self.per_client:
                self._forget_oldest(connection, client, held - self.per_client + 1)
            pending = connection.execute(text("SELECT count(*) FROM smart_launches")).scalar_one()
            while pending >= self.max_pending:
                heaviest = connection.execute(
                    text(
                        "SELECT client FROM smart_launches GROUP BY client "
                        "ORDER BY count(*) DESC, min(expires_at) LIMIT 1"
                    )
                ).scalar_one()
                pending -= self._forget_oldest(connection, heaviest, pending - self.max_pending + 1)
            connection.execute(
                text(
                    "INSERT INTO smart_launches (key, payload, expires_at, client) "
                    "VALUES (:key, :payload, :expires, :client)"
                ),
                {
                    "key": self._key(state),
                    "payload": json.dumps(payload),
                    "expires": time.time() + seconds,
                    "client": client,
                },
            )

    @staticmethod
    def _forget_oldest(connection: Any, client: str, count: int) -> int:
        return connection.execute(
            text(
                "DELETE FROM smart_launches WHERE key IN (SELECT key FROM smart_launches WHERE client = :client "
                "ORDER BY expires_at LIMIT :count)"
            ),
            {"client": client, "count": count},
        ).rowcount

    def take(self, state: str) -> dict[str, Any] | None:
        """The launch saved under ``state``, removed in the same transaction (a second callback finds nothing);
        None when it is unknown, used or expired."""
        with self._lock, self.engine.begin() as connection:
            self._begin(connection)
            row = connection.execute(
                text("DELETE FROM smart_launches WHERE key = :key RETURNING payload"), {"key": self._key(state)}
            ).first()
        return json.loads(row[0]) if row else None

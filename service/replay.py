"""JWT ids already seen, shared by every worker and replica that opens the same store: a token is accepted once.

A store has one operation, :meth:`ReplayStore.first_use`, an atomic insert-or-fail. Two stores exist: SQLite, which
needs no server (one file in WAL mode that all workers on a machine open), and Redis (``SET key 1 NX PX ttl``), which
every replica on every machine shares (``CDS_REDIS_URL``). Entries expire with their token (whose lifetime is capped
by ``JWT_MAX_LIFETIME``), so either store stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from service.logs import log_event
from service.settings import SettingsError
from service.sqlite import pragmas

log = logging.getLogger("service.replay")
BUSY_SECONDS = 1.0  # how long a call waits for another process's lock on the store before its 503
CLOCK_MARGIN = 5.0  # seconds more that a Redis entry lives, past the leeway, for replicas whose clocks differ
# Seconds a SQLite entry is kept past its token's expiry: a call whose token passed the expiry check just before it
# expired (its thread may then wait for the interpreter lock) must still find the entry, never a forgotten one.
KEPT_PAST_EXPIRY = 5.0


class ReplayStoreDown(Exception):
    """The store did not answer (down, unreachable, too slow): the token cannot be checked."""


class ReplayStore(Protocol):
    def first_use(self, key: str, expires_at: float) -> bool:
        """Remember ``key`` until ``expires_at`` (Unix time); False if it is already remembered. Raises when the
        store cannot answer (the caller refuses the token: it fails closed)."""
        ...


class SqliteReplayStore:
    """``sqlite:///path`` (shared by the processes that open the file) or ``sqlite://`` (this process only).

    Each call is two statements in autocommit mode, each its own transaction: the deletion of expired entries, and
    an insert that does nothing when the key is still remembered (an expired entry of the same key is overwritten).
    An entry is kept KEPT_PAST_EXPIRY seconds past its expiry.
    SQLite's write lock is then held only while one statement runs inside SQLite, never while a thread waits for
    Python's interpreter lock between the statements of a transaction (16 threads of a busy worker once held it so
    long that calls of the other worker waited past their second: 503s under ordinary load). No Python lock is held
    while SQLite waits, so calls wait side by side, each at most BUSY_SECONDS when another process holds the store
    (then 503), never one after another."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        if parsed.database in (None, "", ":memory:"):
            self.engine = create_engine(
                parsed,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
                isolation_level="AUTOCOMMIT",
            )
            self._lock = threading.Lock()  # one connection for every thread: one statement at a time
        else:
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # every token is then refused with a 503 until the location is fixed
                log_event(log, logging.ERROR, "replay_store_dir_unavailable", error=type(exc).__name__)
            self.engine = create_engine(
                parsed, pool_size=8, max_overflow=24, pool_timeout=BUSY_SECONDS, isolation_level="AUTOCOMMIT"
            )
            # A crash of the machine (not of the service) may forget the last tokens seen; they expire in minutes.
            event.listen(self.engine, "connect", pragmas("NORMAL", busy_seconds=BUSY_SECONDS))
        self._ready = False

    def first_use(self, key: str, expires_at: float) -> bool:
        digest = hashlib.sha256(key.encode()).hexdigest()  # a fixed-size key, whatever the token's jti
        forgotten = time.time() - KEPT_PAST_EXPIRY  # entries that expired before this are gone
        with self._lock, self.engine.connect() as connection:
            if not self._ready:
                connection.exec_driver_sql(
                    "CREATE TABLE IF NOT EXISTS seen_tokens (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
                )
                connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS seen_tokens_expiry ON seen_tokens (expires_at)")
                self._ready = True
            connection.execute(text("DELETE FROM seen_tokens WHERE expires_at < :forgotten"), {"forgotten": forgotten})
            inserted = connection.execute(
                text(
                    "INSERT INTO seen_tokens (key, expires_at) VALUES (:key, :expires) ON CONFLICT (key) DO UPDATE "
                    "SET expires_at = excluded.expires_at WHERE seen_tokens.expires_at < :forgotten"
                ),
                {"key": digest, "expires": expires_at, "forgotten": forgotten},
            )
            return inserted.rowcount == 1

    def size(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM seen_tokens")).scalar_one()


class RedisReplayStore:
    """Redis, shared by every replica: ``SET alp-cds:jti:<sha256> 1 NX PX <ms until the token expires>``, one atomic
    command. The time to live is reckoned on the clock of the replica that stores it, and another replica, whose
    clock is behind, still accepts the token for as long as it differs: so the entry lives ``clock_skew`` seconds
    more (the JWT leeway, which the replicas' clocks must keep to, and CLOCK_MARGIN). Redis must not evict these keys
    (``maxmemory-policy noeviction``): a full Redis then refuses the write, an OOM error, which is a 503 here.
    Connecting and each answer are bounded by ``timeout``, with no retry (a retry would only make the 503
    later); a failure raises :class:`ReplayStoreDown`. The connection pool is per process (redis-py opens new
    connections after a fork), and nothing is sent before the first token, so the service starts while Redis is
    down."""

    PREFIX = "alp-cds:jti:"

    def __init__(self, url: str, timeout: float = 1.0, clock_skew: float = CLOCK_MARGIN) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors = (redis.RedisError, OSError)  # OutOfMemoryError (a full Redis refusing writes) included
        self.clock_skew = clock_skew
        try:
            self.client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
            )
        except ValueError:  # the message would repeat the URL, which may hold a password
            raise SettingsError("CDS_REDIS_URL: not a Redis URL that can be used") from None

    def first_use(self, key: str, expires_at: float) -> bool:
        digest = hashlib.sha256(key.encode()).hexdigest()  # a fixed-size key, whatever the token's jti
        ttl_ms = max(1000, math.ceil((expires_at - time.time() + self.clock_skew) * 1000))
        try:
            return bool(self.client.set(self.PREFIX + digest, 1, nx=True, px=ttl_ms))
        except self._errors as exc:
            raise ReplayStoreDown(type(exc).__name__) from None


def open_replay_store(url: str, redis_url: str = "", redis_timeout: float = 1.0, leeway: float = 0.0) -> ReplayStore:
    """Redis when ``redis_url`` is set (every replica; its entries live ``leeway`` + CLOCK_MARGIN seconds past the
    token's expiry), else the SQLite store of ``url`` (this machine: one clock)."""
    if redis_url:
        return RedisReplayStore(redis_url, redis_timeout, leeway + CLOCK_MARGIN)
    if make_url(url).get_backend_name() == "sqlite":
        return SqliteReplayStore(url)
    raise SettingsError(
        f"CDS_REPLAY_STORE_URL: only sqlite:///path stores exist (CDS_REDIS_URL for Redis), not {url.split(':')[0]!r}"
    )

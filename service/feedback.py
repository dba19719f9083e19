"""Durable store of issued cards and clinicians' feedback (CDS Hooks 2.0 "Feedback").

SQLite by default (embedded), PostgreSQL when ``FEEDBACK_DB_URL`` says so. Issued cards keep what is needed to report
per card kind (uuid, service, kind, indicator, time, what each suggestion proposed) and, with the override memory on,
a keyed hash of the patient (service/memory.py): no patient data in clear. A feedback 200 means committed.

A store that is down, locked or partitioned must give a quick 503, never a call that hangs: every operation ends
about ``FEEDBACK_DB_TIMEOUT`` seconds after it began. PostgreSQL gets a connect timeout, a statement and a lock
timeout (per transaction, so that a pooler in front does not matter), and a watchdog that shuts the connection's
socket down when nothing comes back at all (a partition: no server-side timeout can help then). At most
STORE_SLOTS calls per process wait on the store at once; the others get their 503 at once, so that a hung store
holds few threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from service import migrations
from service.logs import log_event
from service.migrations import SchemaTooNew
from service.migrations.schema import feedback, issued_cards
from service.sqlite import pragmas
from service.watchdog import Watchdog
from service.watchdog import current as current_watchdog

log = logging.getLogger("service.feedback")
SCHEMA_LOCK = 0x616C70636473  # any number, the same in every process: "alpcds"
STORE_SLOTS = 2  # feedback and readiness calls of one process waiting on the store at once
SLOT_WAIT = 0.5  # seconds a call waits for a slot before its 503
# The indicators of the cards whose override the memory remembers: a clinician who dismissed an information card
# has not dismissed the warning the same kind may become later (known HPP, then a bisphosphonate on the chart).
INTERRUPTIVE = ("warning", "critical")
# The feedback comes from the caller its card was issued to (a card written before revision 0003 has no caller:
# any caller's counts, as before). What the memory and the committee's overrides in force count.
SAME_CALLER = or_(issued_cards.c.caller_hash.is_(None), feedback.c.caller_hash == issued_cards.c.caller_hash)
ANSWER_MARGIN = 2.0  # seconds past the server-side timeouts before the watchdog cuts the connection


class StoreBusy(SQLAlchemyError):
    """Every slot is taken: the store is slow or hung, and more waiting would only hold more threads."""


class StoreTimedOut(SQLAlchemyError):
    """The store did not answer within its time."""


def suggestions_record(card: Mapping[str, Any]) -> str | None:
    """What each suggestion of a card proposed, as stored with its audit row (JSON, uuid -> label and code): the
    LOINC code of a test proposed, ``delete`` for a draft order to remove. No resource, and so no patient id."""
    record = {}
    for suggestion in card.get("suggestions") or ():
        actions = suggestion.get("actions") or [{}]
        code = "delete" if actions[0].get("type") == "delete" else None
        for coding in ((actions[0].get("resource") or {}).get("code") or {}).get("coding") or ():
            code = code or coding.get("code")
        record[suggestion["uuid"]] = {"label": suggestion.get("label", ""), "code": code}
    return json.dumps(record) if record else None


def _instant(text: str) -> datetime:
    """An outcomeTimestamp as a time to order by (validated as an RFC 3339 date-time on the way in; RFC 3339 allows
    a lower-case ``t`` and ``z``, which Python's parser does not)."""
    try:
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _instant_or_error(text: str) -> datetime:
    """The instant, in UTC (ValueError or OverflowError when it is none that can be stored)."""
    return datetime.fromisoformat(text.upper()).astimezone(UTC)


def storable_problem(items: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a schema-valid feedback list cannot be stored, or None. Checked before storing, so that what no store can
    hold is a 400 (permanent) and never looks like an outage (503, "retry"): PostgreSQL refuses NUL characters in
    text, and a timestamp must be an instant that both stores, and Python, can hold."""
    for i, item in enumerate(items):
        for path, value in _strings(item, f"feedback[{i}]"):
            if "\x00" in value:
                return f"{path}: contains a NUL character"
        try:
            _instant_or_error(item["outcomeTimestamp"])
        except (ValueError, OverflowError):
            return f"feedback[{i}].outcomeTimestamp: not a time that can be stored"
    return None


def _strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _strings(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{path}[{index}]")


class FeedbackStore:
    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        migrate: bool = True,
        connect: bool = True,
        connect_timeout: float | None = None,
    ) -> None:
        """``migrate``: bring the schema to this code's version when it is behind (else it must be done by
        ``alp-cds migrate`` first); ``connect``: check (and migrate) at once, a schema newer than this code's
        refusing the start (SchemaTooNew), a store that is down not. ``connect_timeout`` (PostgreSQL): seconds to
        connect, ``timeout`` by default (``alp-cds migrate`` gives the statements a longer one)."""
        self.timeout = timeout
        self.migrate = migrate
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # reported by /readyz and by 503s on feedback, not a crash at start-up
                log_event(log, logging.ERROR, "feedback_dir_unavailable", error=type(exc).__name__)
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
        # An in-memory SQLite database lives in one connection: every thread (the audit writer included) must
        # share it, or the writer finds no tables.
        options: dict[str, Any] = {}
        if in_memory:
            options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif parsed.get_backend_name() == "postgresql":
            seconds = timeout if connect_timeout is None else connect_timeout
            options = {"connect_args": {"connect_timeout": max(2, math.ceil(seconds))}}  # libpq's least is 2
        self.engine: Engine = create_engine(parsed, **options)
        if parsed.get_backend_name() == "sqlite":
            # A 200 means the feedback is on disk; a file locked by another process is waited for ``timeout``.
            event.listen(self.engine, "connect", pragmas("FULL", busy_seconds=timeout))
        elif parsed.get_backend_name() == "postgresql":
            event.listen(self.engine, "checkout", self._watch_and_ping)
            event.listen(self.engine, "begin", self._limit_waits)
        self._slots = threading.BoundedSemaphore(STORE_SLOTS)
        self.last_state = "unknown"  # "ok" or the error of the last bounded operation: /readyz/hooks shows it
        self._schema_ready = False
        self._queue: queue.Queue = queue.Queue(maxsize=10_000)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        if not connect:
            return
        try:
            with self._bounded():
                self._ensure_schema()
        except SchemaTooNew:
            raise
        except SQLAlchemyError as exc:  # the service still answers hooks; /readyz reports the store as down
            log_event(log, logging.ERROR, "feedback_store_unavailable", error=type(exc).__name__)

    # ------------------------------------------------------------------------------------------ bounded waits

    @contextlib.contextmanager
    def _bounded(self, slot: bool = False, seconds: float | None = None):
        """One store operation, ended by the watchdog if the store has not answered in time (``seconds``, the
        store's timeout by default, plus ANSWER_MARGIN); with ``slot``, only when one of the STORE_SLOTS is free
        within SLOT_WAIT (else StoreBusy)."""
        if slot and not self._slots.acquire(timeout=SLOT_WAIT):
            raise StoreBusy("the feedback store is busy: every slot waits for it")
        try:
            with Watchdog((self.timeout if seconds is None else seconds) + ANSWER_MARGIN) as watchdog:
                try:
                    yield
                except SQLAlchemyError as exc:
                    self.last_state = "StoreTimedOut" if watchdog.fired else type(exc).__name__
                    if watchdog.fired:
                        raise StoreTimedOut("the feedback store did not answer in time") from exc
                    raise
                self.last_state = "ok"
        finally:
            if slot:
                self._slots.release()

    def _watch_and_ping(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        """On checkout from the pool (PostgreSQL): hand the connection's socket to the operation's watchdog, then
        check that the connection still works (SQLAlchemy's pre-ping, which runs before any event, could not be
        watched). A broken connection is replaced by a new one."""
        watchdog = current_watchdog()
        if watchdog is not None:
            watchdog.watch_descriptor(dbapi_connection.fileno())
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()
        except (self.engine.dialect.loaded_dbapi.Error, OSError) as exc:  # the driver's errors: the connection is bad
            if watchdog is not None and watchdog.fired:
                raise StoreTimedOut("the feedback store did not answer in time") from exc
            raise DisconnectionError("the pooled connection no longer works") from exc

    def _limit_waits(self, connection: Any) -> None:
        """Every transaction (PostgreSQL) ends its statements and its waits for locks after ``timeout``."""
        limit = str(max(1, round(self.timeout * 1000)))
        connection.exec_driver_sql(
            "SELECT set_config('statement_timeout', %(ms)s, true), set_config('lock_timeout', %(ms)s, true)",
            {"ms": limit},
        )

    def _ensure_schema(self, upgrade: bool | None = None) -> tuple[str | None, str]:
        """Check the schema's version and migrate it once, whoever comes first: workers and replicas start at the
        same time, and each would otherwise find it behind and migrate it (the others then fail). The check and the
        migration run under the database's write lock (SQLite) or an advisory lock (PostgreSQL), so the others wait
        and find it done. A schema newer than this code's raises SchemaTooNew; one behind, with migrating off,
        SchemaNotMigrated (both give 503s, and /readyz says which)."""
        if self._schema_ready:
            return migrations.head(), migrations.head()
        with self.engine.begin() as connection:
            if self.engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif self.engine.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            found, now = migrations.ensure(connection, self.migrate if upgrade is None else upgrade)
        if found != now:
            log_event(log, logging.INFO, "feedback_schema_migrated", **{"from": found, "to": now})
        self._schema_ready = True
        return found, now

    def migrate_schema(self) -> tuple[str | None, str]:
        """``alp-cds migrate``: the schema's revision before and after bringing it to this code's version."""
        with self._bounded():
            return self._ensure_schema(upgrade=True)

    def record_cards_later(
        self,
        service_id: str,
        cards: Iterable[tuple[str, Mapping[str, Any]]],
        patient_hash: str | None = None,
        caller_hash: str | None = None,
    ) -> bool:
        """Queue the audit rows for a background writer, off the hook call's path. False when the queue is full
        (the rows are dropped and the caller counts it); feedback itself is never queued. ``patient_hash``: the
        keyed hash of the override memory (None: off)."""
        rows = [
            {
                "uuid": card["uuid"],
                "service_id": service_id,
                "kind": kind,
                "indicator": card["indicator"],
                "patient_hash": patient_hash,
                "caller_hash": caller_hash,
                "suggestions": suggestions_record(card),
            }
            for kind, card in cards
        ]
        if not rows:
            return True
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_forever, name="issued-cards", daemon=True)
                self._writer.start()
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            return False
        return True

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued audit row is written (tests, reports, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def _write_forever(self) -> None:
        while True:
            batch = self._queue.get()
            taken = 1
            while True:  # whatever else is waiting goes in the same transaction
                try:
                    batch += self._queue.get_nowait()
                    taken += 1
                except queue.Empty:
                    break
            try:
                with self._bounded():
                    self._insert_cards(batch)
            except SQLAlchemyError as exc:
                log_event(log, logging.ERROR, "record_cards_failed", error=type(exc).__name__)
            finally:
                for _ in range(taken):
                    self._queue.task_done()

    def _insert_cards(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            now = datetime.now(UTC)
            self._ensure_schema()
            with self.engine.begin() as connection:
                # An audit row, not a clinician's words: it may wait for the next sync (it survives a crash of
                # the service, not of the machine), which keeps an fsync off every chart open.
                self._relaxed_durability(connection)
                connection.execute(insert(issued_cards), [{**row, "issued_at": now} for row in rows])

    def add_feedback(self, service_id: str, items: Iterable[Mapping[str, Any]], caller_hash: str | None = None) -> int:
        """Store every item in one transaction; returns how many were stored once it has committed. ``caller_hash``:
        the keyed hash of the caller that sent it (None: the memory is off)."""
        now = datetime.now(UTC)
        rows = []
        for item in items:
            reason = (item.get("overrideReason") or {}).get("reason") or {}
            accepted = item.get("acceptedSuggestions")
            rows.append(
                {
                    "service_id": service_id,
                    "card_uuid": item["card"],
                    "outcome": item["outcome"],
                    "accepted_suggestions": json.dumps([s["id"] for s in accepted]) if accepted else None,
                    "override_system": reason.get("system"),
                    "override_code": reason.get("code"),
                    "override_display": reason.get("display"),
                    "user_comment": (item.get("overrideReason") or {}).get("userComment"),
                    "outcome_timestamp": item["outcomeTimestamp"],
                    "received_at": now,
                    "caller_hash": caller_hash,
                }
            )
        with self._bounded(slot=True):
            self._ensure_schema()
            with self.engine.begin() as connection:
                self._full_durability(connection)
                connection.execute(insert(feedback), rows)
        return len(rows)

    def overrides_of(self, patient_hash: str, since: datetime, seconds: float) -> list[dict[str, Any]]:
        """The overrides with a reason of the warning and critical cards issued to the patient of ``patient_hash``
        whose feedback was received since ``since`` (an information card dismissed quiets nothing): kind, service,
        when (the outcomeTimestamp, never later than the feedback was received: a client's clock cannot make an
        override last longer) and the reason. Read from the feedback as
        stored, joined to the cards' audit rows: nothing is written for it, so a feedback that came before its
        card's audit row was written counts as soon as the row is there. The statements end after ``seconds``
        (PostgreSQL), the connection ``ANSWER_MARGIN`` later; a schema behind this code's is not migrated here."""
        query = (
            select(
                issued_cards.c.kind,
                issued_cards.c.service_id,
                feedback.c.outcome_timestamp,
                feedback.c.received_at,
                feedback.c.override_system,
                feedback.c.override_code,
                feedback.c.override_display,
            )
            .select_from(issued_cards.join(feedback, feedback.c.card_uuid == issued_cards.c.uuid))
            .where(
                # the feedback of the caller the card was issued to, through the service that issued it
                feedback.c.service_id == issued_cards.c.service_id,
                SAME_CALLER,
                issued_cards.c.patient_hash == patient_hash,
                issued_cards.c.indicator.in_(INTERRUPTIVE),
                feedback.c.outcome == "overridden",
                feedback.c.override_code.is_not(None),
                feedback.c.received_at >= since,
            )
        )
        with self._bounded(seconds=seconds):
            self._ensure_schema(upgrade=False)
            with self.engine.begin() as connection:
                if self.engine.dialect.name == "postgresql":
                    limit = str(max(1, round(seconds * 1000)))
                    connection.exec_driver_sql("SELECT set_config('statement_timeout', %(ms)s, true)", {"ms": limit})
                rows = connection.execute(query).all()
        found = []
        for row in rows:
            received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
            when = min(_instant(row.outcome_timestamp), received)
            if when >= since:
                found.append({**row._mapping, "at": when})
        return found

    def _relaxed_durability(self, connection) -> None:
        if self.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        elif self.engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL synchronous_commit = off")

    def _full_durability(self, connection) -> None:
        if self.engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA synchronous=FULL")

    def ping(self) -> None:
        with self._bounded(slot=True):
            self._ensure_schema()
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

    def feedback_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(select(feedback).order_by(feedback.c.id))]

    def report_rows(self) -> tuple[list[Any], list[Any]]:
        """What the committee's report reads (service/committee.py): the cards issued, counted by service, kind and
        month of issue (UTC, ``YYYY-MM``); and every feedback item with its card's audit row (kind, service, month
        of issue, patient hash, suggestions: None where no row was written). No comments."""
        self.flush()
        if self.engine.dialect.name == "postgresql":
            month = func.to_char(func.timezone("UTC", issued_cards.c.issued_at), "YYYY-MM")
        else:  # SQLite keeps the UTC time as text, "YYYY-MM-DD HH:MM:SS..."
            month = func.substr(issued_cards.c.issued_at, 1, 7)
        with self.engine.connect() as connection:
            issued = connection.execute(
                select(issued_cards.c.service_id, issued_cards.c.kind, month.label("month"), func.count())
                .group_by(issued_cards.c.service_id, issued_cards.c.kind, month)
                .order_by(month)
            ).all()
            items = connection.execute(
                select(
                    feedback.c.id,
                    feedback.c.card_uuid,
                    feedback.c.service_id.label("feedback_service_id"),
                    feedback.c.outcome,
                    feedback.c.outcome_timestamp,
                    feedback.c.received_at,
                    feedback.c.accepted_suggestions,
                    feedback.c.override_system,
                    feedback.c.override_code,
                    feedback.c.override_display,
                    issued_cards.c.service_id,
                    issued_cards.c.kind,
                    issued_cards.c.indicator,
                    month.label("month"),
                    issued_cards.c.patient_hash,
                    issued_cards.c.suggestions,
                    SAME_CALLER.label("same_caller"),
                )
                .select_from(feedback.outerjoin(issued_cards, feedback.c.card_uuid == issued_cards.c.uuid))
                .order_by(feedback.c.id)
            ).all()
        return issued, items

    def report(self, reason_displays: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """Per card kind: cards issued, how many cards got any feedback, each card counted once by its last outcome
        (an EHR may keep a card after a suggestion is accepted, so one card can be accepted and then overridden),
        the override reasons of the cards last overridden, and beside them the feedback events as received.
        ``reason_displays`` names the service's own override reason codes when a client sent only the code. No
        comments and no patient data."""
        self.flush()
        with self.engine.connect() as connection:
            issued = Counter(
                dict(
                    connection.execute(
                        select(issued_cards.c.kind, text("count(*)")).group_by(issued_cards.c.kind)
                    ).all()
                )
            )
            joined = connection.execute(
                select(
                    feedback.c.id,
                    feedback.c.card_uuid,
                    issued_cards.c.kind,
                    feedback.c.outcome,
                    feedback.c.outcome_timestamp,
                    feedback.c.override_code,
                    feedback.c.override_display,
                ).select_from(feedback.outerjoin(issued_cards, feedback.c.card_uuid == issued_cards.c.uuid))
            ).all()
        report: dict[str, dict[str, Any]] = defaultdict(
            lambda: {
                "issued": 0,
                "cards_with_feedback": 0,
                "last_outcome": Counter(),
                "override_reasons": Counter(),
                "events": Counter(),
            }
        )
        for kind, count in issued.items():
            report[kind]["issued"] = count
        last: dict[str, Any] = {}
        for row in joined:
            report[row.kind or "unknown card"]["events"][row.outcome] += 1
            order = (_instant(row.outcome_timestamp), row.id)
            if row.card_uuid not in last or order >= last[row.card_uuid][0]:
                last[row.card_uuid] = (order, row)
        for _, row in last.values():
            entry = report[row.kind or "unknown card"]
            entry["cards_with_feedback"] += 1
            entry["last_outcome"][row.outcome] += 1
            if row.outcome == "overridden":
                names = reason_displays or {}
                reason = row.override_display or names.get(row.override_code or "") or row.override_code
                entry["override_reasons"][reason or "no reason given"] += 1
        return {
            kind: {key: dict(value) if isinstance(value, Counter) else value for key, value in entry.items()}
            for kind, entry in sorted(report.items())
        }

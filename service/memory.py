"""The override memory: what clinicians decided about a card for a patient, read again at the patient's next call.

A clinician who overrides a card with a reason (CDS Hooks 2.0 feedback, ``overridden`` with ``overrideReason``)
has made a decision about this patient. For ``OVERRIDE_DAYS`` the next warnings of that card kind for that patient
are shown as information, with the override's date and reason, unless something new happened since (:class:`Memory`,
applied by the issuing step, service/hooks/patient_chart.py, to every card kind alike).

What is kept: each issued card's audit row carries a keyed hash of the patient (:func:`patient_key`: HMAC-SHA256
under ``OVERRIDE_KEY`` of the calling EHR's issuer and tenant and the patient's id; never the id), and the
overrides are the feedback rows of those cards, joined when read (:meth:`FeedbackStore.overrides_of`). Without the
key nothing is hashed, nothing is remembered, and the start-up log says so.

Reading never holds a hook call up: it starts in a thread of its own as soon as the call is validated, beside the
call's FHIR fetching, and the call takes its answer only when it has cards to show and only if the answer came
within ``OVERRIDE_LOOKUP_TIMEOUT`` of the start (at most half of ``FHIR_TIME_BUDGET``). A store that is slow, down
or busy means "nothing remembered": the cards are shown as they would be without the memory. At most LOOKUP_SLOTS
readings of a process wait on the store at once (a hung store holds that many threads, each for the reading's time
plus the watchdog's margin); a call that finds none free is answered without the memory at once. Each reading taken
is counted (``cds_override_lookups_total`` by outcome); a failing memory is logged when it starts failing (then at
most once a minute while it does) and when it works again, never with patient data.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from service import metrics
from service.card_render import OverrideNote, template
from service.clinical.rules import Finding
from service.logs import log_event

log = logging.getLogger("service.memory")
LOOKUP_SLOTS = 4  # readings of one process waiting on the store at once
LOG_EVERY = 60.0  # seconds between two log lines while the memory keeps failing


@dataclass(frozen=True)
class Override:
    """A clinician's override of a card kind for this patient: the latest within the period."""

    kind: str
    service_id: str
    at: datetime  # when (the outcomeTimestamp in the client's offset, never later than the service received it)
    reason: str  # the reason's display (the service's own for its own codes), else its code


def patient_key(secret: str, patient_id: str, issuer: str = "", tenant: str = "") -> str:
    """The keyed hash the store knows a patient by. The issuer (and tenant) of the calling EHR are part of it: two
    EHRs may give different patients the same id, and one hospital's override must never quiet another's card."""
    message = "\x1f".join((issuer, tenant, patient_id)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def reason_text(row: Mapping[str, Any], displays: Mapping[str, str], own_system: str) -> str:
    """What the card says the override's reason was: the service's own display for its own codes (what the card
    offered), else the display the client sent, else its code."""
    code = row.get("override_code") or ""
    if row.get("override_system") in (None, own_system) and code in displays:
        return displays[code]
    return row.get("override_display") or code


@dataclass(frozen=True)
class Memory:
    """The patient's overrides at this call, with what happened on the chart that an override may not have
    known (service/hooks/patient_chart.py ``remembered``): how it changes the cards (:meth:`apply`)."""

    recall: Callable[[], Mapping[str, Override] | None]  # the latest override per card kind within OVERRIDE_DAYS
    now: datetime
    days: int  # OVERRIDE_DAYS; a card kind may remember for less (its template's ``remember_days``)
    events: tuple[tuple[datetime, str], ...]  # (when it came to be known, what) for each low and treatment start
    always_new: str | None = None  # why every card of this call counts as new (an order is checked), or None

    def apply(self, findings: list[Finding]) -> tuple[list[Finding], Callable[[str], OverrideNote | None]]:
        """The findings, a warning whose kind was overridden with nothing new since made information; and the note
        a card of each kind carries (when, why, and until when it stays information, or why it is shown as
        before; None for a kind not overridden). A critical card is never made information."""
        overrides = self.recall() if findings else None  # a call without cards does not wait for the reading
        if not overrides:
            return findings, lambda _kind: None
        kept: list[Finding] = []
        notes: dict[str, OverrideNote] = {}
        for finding in findings:
            override = overrides.get(finding.kind)
            days = min(self.days, template(finding.kind).get("remember_days", self.days))
            if override is None or override.at + timedelta(days=days) < self.now:
                kept.append(finding)
                continue
            indicator = finding.indicator or template(finding.kind)["indicator"]
            newer = [(when, what) for when, what in self.events if when > override.at]
            until, why = None, None
            if indicator == "critical":
                why = "a critical card is always shown as critical"
            elif indicator == "warning":
                if self.always_new:
                    why = self.always_new
                elif newer:
                    why = max(newer)[1] + ", after the override"
                else:
                    until = (override.at + timedelta(days=days)).date()
                    finding = replace(finding, indicator="info")
                    metrics.OVERRIDE_DOWNGRADES.labels(finding.kind).inc()
            notes[finding.kind] = OverrideNote(at=override.at, reason=override.reason, until=until, why_shown=why)
            kept.append(finding)
        return kept, notes.get


class Recall:
    """A reading of a patient's overrides under way: :meth:`result` gives them (latest per card kind) if they came
    by the call's deadline, else None ("nothing remembered"); it never waits past the deadline."""

    def __init__(self, future: Future | None, deadline: float, memory: OverrideMemory) -> None:
        self._future = future
        self._deadline = deadline
        self._memory = memory
        self._taken: dict[str, Override] | None = None
        self._done = False

    def result(self) -> dict[str, Override] | None:
        if self._done:
            return self._taken
        self._done = True
        if self._future is None:  # no slot was free
            self._memory.failed("busy")
            return None
        try:
            self._taken = self._future.result(timeout=max(0.0, self._deadline - time.monotonic()))
        except FutureTimeout:
            self._memory.failed("timeout")
        except Exception as exc:  # whatever the store did (a driver error too), the call goes on without the memory
            self._memory.failed("error", type(exc).__name__)
        else:
            self._memory.worked("found" if self._taken else "none")
        return self._taken


class OverrideMemory:
    """Reads a patient's overrides from the feedback store, bounded by the call's deadline (see the module)."""

    def __init__(
        self,
        store: Any,
        secret: str,
        days: int,
        timeout: float,
        reason_displays: Mapping[str, str],
        own_system: str,
    ) -> None:
        self.store = store
        self.secret = secret
        self.days = days
        self.timeout = timeout
        self.reason_displays = dict(reason_displays)
        self.own_system = own_system
        self._slots = threading.BoundedSemaphore(LOOKUP_SLOTS)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._failures = 0
        self._logged_at = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def key(self, patient_id: str, claims: Mapping[str, Any] | None) -> str | None:
        """The patient's hash for this caller (None when the memory is off)."""
        if not self.enabled:
            return None
        claims = claims or {}
        issuer, tenant = (claims.get(name) for name in ("iss", "tenant"))
        return patient_key(
            self.secret,
            patient_id,
            issuer if isinstance(issuer, str) else "",
            tenant if isinstance(tenant, str) else "",
        )

    def caller(self, claims: Mapping[str, Any] | None) -> str | None:
        """The caller's hash (its issuer and tenant, keyed; None when the memory is off): a feedback counts only for
        a card issued to the caller that sends it."""
        return self.key("\x1ecaller", claims)

    def recall(self, patient_hash: str, now: datetime) -> Recall:
        """Start reading the overrides of ``patient_hash`` received within ``days`` before ``now``; the call has
        ``timeout`` seconds from now to take them."""
        deadline = time.monotonic() + self.timeout
        if not self._slots.acquire(blocking=False):
            return Recall(None, deadline, self)
        try:
            future = self._pool().submit(self._read, patient_hash, now - timedelta(days=self.days))
        except RuntimeError:  # the interpreter is shutting down
            self._slots.release()
            return Recall(None, deadline, self)
        future.add_done_callback(lambda _: self._slots.release())
        return Recall(future, deadline, self)

    def _pool(self) -> ThreadPoolExecutor:
        # Made on first use, in the worker process (gunicorn forks workers from a master that has no threads).
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(LOOKUP_SLOTS, thread_name_prefix="override-memory")
            return self._executor

    def _read(self, patient_hash: str, since: datetime) -> dict[str, Override]:
        latest: dict[str, Override] = {}
        for row in self.store.overrides_of(patient_hash, since, self.timeout):
            override = Override(
                kind=row["kind"],
                service_id=row["service_id"],
                at=row["at"],
                reason=reason_text(row, self.reason_displays, self.own_system),
            )
            if override.kind not in latest or override.at > latest[override.kind].at:
                latest[override.kind] = override
        return latest

    def failed(self, outcome: str, error: str | None = None) -> None:
        metrics.OVERRIDE_LOOKUPS.labels(outcome).inc()
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            starting = self._failing_since is None
            if starting:
                self._failing_since = now
            if not starting and now - self._logged_at < LOG_EVERY:
                return
            self._logged_at = now
            failures = self._failures
        log_event(
            log,
            logging.WARNING,
            "override_memory_unavailable",
            outcome=outcome,
            error=error,
            failures=failures,
            message="cards are shown as if nothing had been overridden",
        )

    def worked(self, outcome: str) -> None:
        metrics.OVERRIDE_LOOKUPS.labels(outcome).inc()
        with self._lock:
            if self._failing_since is None:
                return
            seconds = round(time.monotonic() - self._failing_since, 1)
            failures, self._failures, self._failing_since = self._failures, 0, None
        log_event(log, logging.INFO, "override_memory_available", failures=failures, seconds_unavailable=seconds)

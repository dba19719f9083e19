"""Run a hook, without HTTP: resolve the service's prefetch (from the request, else from the FHIR server), build
the :class:`HookCall` and call the handler. The hook endpoint, the integrator page's gallery and the SMART app's
chart page all run hooks through :func:`run_hook`, so the data a card is given is resolved one way only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service import metrics
from service.fhir.client import FhirClient, FhirError
from service.fhir.prefetch import fetched_keys, resolve_prefetch
from service.hooks import CdsService, HookCall
from service.logs import log_event
from service.settings import Settings

log = logging.getLogger("service.prefetch")

MakeClient = Callable[[], FhirClient | None]


@dataclass(frozen=True)
class HookRun:
    cards: list[tuple[str, dict[str, Any]]]  # (card kind, card), in the order the handler gave them
    call: HookCall  # what the handler was given (the SMART page draws its chart from the same data)
    prefetch_seconds: float | None  # time spent fetching prefetch data; None when nothing was fetched


def run_hook(
    service: CdsService,
    request: Mapping[str, Any],
    settings: Settings,
    make_client: MakeClient | None = None,
    now: datetime | None = None,
    narrow: bool = True,
    remembered: Callable[[], Mapping[str, Any] | None] | None = None,
) -> HookRun:
    """One hook call of ``service`` on a validated ``request``. ``make_client`` gives a client for the request's
    FHIR server (None: there is none, and data the request lacks cannot be had); ``now`` defaults to the settings'
    clock. Raises the :class:`service.errors.CdsError` of a call that cannot be answered (412 when a required
    prefetch key cannot be had); an optional key that cannot be had is counted, logged by name and given to the
    handler as ``call.unavailable``, a key of which only the first pages could be read as ``call.incomplete``.
    ``narrow``: the optional keys fetched from the FHIR server ask only for what the handler reads
    (:attr:`CdsService.narrow`); off for a caller that shows more of the chart than the cards use. ``remembered``:
    the patient's overrides (:attr:`HookCall.remembered`; only hook calls from an EHR have them)."""
    started = time.perf_counter()
    now = now or settings.NOW()
    fetched = fetched_keys(service.prefetch, request)

    def so_far(data: Mapping[str, Any]) -> HookCall:
        return HookCall(request=request, data=data, settings=settings, now=now, fetched=fetched)

    def narrowing(data: Mapping[str, Any]) -> Mapping[str, str]:
        if service.narrow is None:
            return {}
        extra = service.narrow(so_far(data))  # raises for a call the handler would refuse: nothing more is fetched
        return extra if narrow else {}

    resolved = resolve_prefetch(
        service.prefetch,
        request,
        make_client or no_client,
        settings.FHIR_FETCH_WORKERS,
        optional=service.optional_prefetch,
        optional_share=settings.FHIR_OPTIONAL_SHARE,
        narrow=narrowing,
        reads=service.reads(so_far({})) if service.reads else (),
    )
    prefetch_seconds = time.perf_counter() - started if fetched else None
    for key, reason in resolved.unavailable.items():  # key names and FhirError causes: no patient data
        metrics.PREFETCH_UNAVAILABLE.labels(key).inc()
        log_event(log, logging.WARNING, "prefetch_unavailable", service=service.id, key=key, reason=reason)
    for key, reason in resolved.incomplete.items():
        metrics.PREFETCH_INCOMPLETE.labels(key).inc()
        log_event(log, logging.WARNING, "prefetch_incomplete", service=service.id, key=key, reason=reason)
    call = HookCall(
        request=request,
        data=resolved.data,
        settings=settings,
        now=now,
        fetch=fetcher(make_client, resolved.read) if make_client else None,
        fetched=fetched,
        unavailable=frozenset(resolved.unavailable),
        incomplete=frozenset(resolved.incomplete),
        remembered=remembered,
    )
    return HookRun(cards=service.handler(call), call=call, prefetch_seconds=prefetch_seconds)


def no_client() -> None:
    return None


def fetcher(make_client: MakeClient, read: Mapping[str, dict[str, Any] | FhirError]) -> Callable[[str], dict[str, Any]]:
    """A lazy one-off reader for handlers that need a resource the prefetch did not hold; what was ``read`` already
    (:attr:`service.fhir.prefetch.Resolved.read`) is not asked for again."""

    def fetch(relative: str) -> dict[str, Any]:
        if relative in read:
            found = read[relative]
            if isinstance(found, FhirError):
                raise found
            return found
        client = make_client()
        if client is None:
            raise LookupError("no fhirServer in the request")
        with client:
            return client.fetch(relative)

    return fetch

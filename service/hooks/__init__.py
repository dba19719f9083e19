"""CDS services: each module declares one service (its discovery entry) beside its handler.

Discovery, routing and prefetch resolution are generated from these declarations; nothing is written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.settings import Settings


@dataclass(frozen=True)
class HookCall:
    """What a handler gets: the validated request, the resolved prefetch data, settings and the clock."""

    request: Mapping[str, Any]
    data: Mapping[str, dict[str, Any] | None]
    settings: Settings
    now: datetime
    fetch: Callable[[str], dict[str, Any]] | None = None
    fetched: frozenset[str] = frozenset()  # prefetch keys whose data came from the FHIR server, not the client
    unavailable: frozenset[str] = frozenset()  # optional prefetch keys whose data could not be had (not: empty)
    incomplete: frozenset[str] = frozenset()  # prefetch keys of which only the first pages could be read
    # The patient's overrides (service/memory.py), latest per card kind, when the memory is on and could be read
    # in time; None: nothing remembered. Called once the chart is read (it may wait for the reading until its
    # deadline).
    remembered: Callable[[], Mapping[str, Any] | None] | None = None

    @property
    def context(self) -> Mapping[str, Any]:
        return self.request["context"]


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    handler: Callable[[HookCall], list[tuple[str, dict[str, Any]]]]  # (card kind, card)
    # Prefetch keys the service can answer without: when one cannot be had, the call goes on and the cards say what
    # was not checked. Every other key is required: without it the call is a 412 (no safe answer can be given).
    optional_prefetch: frozenset[str] = frozenset()
    # Given a call holding the required keys' data, before any optional key is fetched: search parameters to add to
    # an optional key's search when it is fetched from the FHIR server (``{"labs": "date=ge2026-01-01"}``: the server
    # sends only what the rules read). It raises the CdsError of a call the handler would refuse (a patient that is
    # not the context's): the server is then spared the optional searches.
    narrow: Callable[[HookCall], Mapping[str, str]] | None = None
    # Given the call before anything is fetched: the resources (``Medication/<id>``) the handler must read from the
    # FHIR server beside the prefetch to answer at all. They are read with the required keys, before the optional ones.
    reads: Callable[[HookCall], list[str]] | None = None
    usage_requirements: str | None = None
    context_schema: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_schema", f"context-{self.hook}")
        unknown = self.optional_prefetch - set(self.prefetch)
        if unknown:
            raise ValueError(f"{self.id}: optional prefetch keys without a template: {sorted(unknown)}")

    def discovery(self) -> dict[str, Any]:
        entry = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
        }
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry


def value_sets_note(hook: str) -> str:
    """The sentence of a service's description that names the value sets it reads (served as FHIR ValueSets)."""
    from service.clinical.value_sets import for_hook

    ids = for_hook(hook)
    return (
        f" The codes it reads are {len(ids)} value sets, served as FHIR R4 ValueSet resources at GET "
        f"/fhir/ValueSet/{{id}} (GET /fhir/ValueSet lists them): {', '.join(ids)}."
    )


def all_services() -> tuple[CdsService, ...]:
    from service.hooks import antiresorptive_order_check, low_alp_workup

    return (low_alp_workup.SERVICE, antiresorptive_order_check.SERVICE, antiresorptive_order_check.SIGN_SERVICE)

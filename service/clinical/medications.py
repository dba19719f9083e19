"""Match a medication (codings and text) against the value sets in ``data/medications.csv``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from service.clinical.codes import MedicationEntry, medication_entries

TIER_ORDER = {"strong": 0, "plp-confounder": 1, "informational": 2}


@dataclass(frozen=True)
class Match:
    groups: frozenset[str]
    tier: str | None
    matched_by: str  # code | text
    display: str | None  # display of the first matching entry
    ingredient: str | None  # the first named ingredient among the matches


NO_MATCH = Match(frozenset(), None, "code", None, None)


def match_medication(codings: Iterable[tuple[str | None, str | None]], texts: Iterable[str]) -> Match:
    """The value-set groups the codings and free texts belong to.

    Codes win over text: text matching is a fallback for products whose codes are not listed.
    """
    entries = medication_entries()
    hits: list[MedicationEntry] = []
    matched_by = "code"
    codings = list(codings)
    for entry in entries:
        for system, code in codings:
            if not code or system != entry.system:
                continue
            if (entry.match == "code" and code == entry.code) or (
                entry.match == "atc-prefix" and code.upper().startswith(entry.code)
            ):
                hits.append(entry)
    if not hits:
        lowered = " ".join(t.lower() for t in texts if t)
        hits = [e for e in entries if e.match == "text" and e.code in lowered]
        matched_by = "text"
    if not hits:
        return NO_MATCH
    tier = min((e.tier for e in hits), key=lambda t: TIER_ORDER.get(t, 9))
    ingredient = next((e.ingredient for e in hits if e.ingredient), None)
    return Match(frozenset(e.group for e in hits), tier, matched_by, hits[0].display, ingredient)

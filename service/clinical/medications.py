"""Match a medication (codings and text) against the value sets in ``data/medications.csv``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from service.clinical.codes import ATC as ATC_SYSTEM
from service.clinical.codes import MedicationEntry, medication_entries
from service.clinical.facts import Medication

TIER_ORDER = {"strong": 0, "plp-confounder": 1, "informational": 2, "alp-lowering": 3, "anabolic": 4}
# The drugs that suppress bone resorption, and so lower ALP: what the order check and the "on an antiresorptive"
# readings are about. The SERMs (group ``raloxifene``: raloxifene, bazedoxifene) and calcitonin are weak ones.
# Romosozumab is not among them: a sclerostin antibody, mainly bone-forming (ATC M05BX06; addendum 11), it is
# recognised (its own value set, group ``romosozumab``) but neither checked at order time nor read as a drug that
# explains a low ALP (issue 26).
ANTIRESORPTIVE_GROUPS = ("bisphosphonate", "denosumab", "raloxifene", "calcitonin")


def is_antiresorptive(medication: Medication) -> bool:
    return any(g in medication.groups for g in ANTIRESORPTIVE_GROUPS)


@dataclass(frozen=True)
class Match:
    groups: frozenset[str]
    tier: str | None
    matched_by: str  # code | text
    display: str | None  # display of the first matching entry
    ingredient: str | None  # the first named ingredient among the matches


NO_MATCH = Match(frozenset(), None, "code", None, None)


@cache
def _index() -> tuple[dict[tuple[str, str], list[MedicationEntry]], list[MedicationEntry], list[MedicationEntry]]:
    """(system, code) -> entries; ATC prefix entries; text entries."""
    by_code: dict[tuple[str, str], list[MedicationEntry]] = {}
    prefixes: list[MedicationEntry] = []
    texts: list[MedicationEntry] = []
    for entry in medication_entries():
        if entry.match == "code":
            by_code.setdefault((entry.system, entry.code), []).append(entry)
        elif entry.match == "atc-prefix":
            prefixes.append(entry)
        else:
            texts.append(entry)
    return by_code, prefixes, texts


def match_medication(codings: Iterable[tuple[str | None, str | None]], texts: Iterable[str]) -> Match:
    """The value-set groups the codings and free texts belong to.

    Codes win over text: text matching is a fallback for products whose codes are not listed. An exact code names
    the ingredient; an ATC group prefix (M05BA...) only the class.
    """
    by_code, prefixes, text_entries = _index()
    hits: list[MedicationEntry] = []
    matched_by = "code"
    for system, code in codings:
        if not code or not system:
            continue
        if system == ATC_SYSTEM:
            code = code.strip().upper()  # WHO ATC codes are capitals; some EHRs write them in lower case
        hits.extend(by_code.get((system, code), ()))
        hits.extend(e for e in prefixes if system == e.system and code.upper().startswith(e.code))
    if not hits:
        lowered = " ".join(t.lower() for t in texts if t)
        hits = [e for e in text_entries if e.code in lowered]
        matched_by = "text"
    if not hits:
        return NO_MATCH
    tier = min((e.tier for e in hits), key=lambda t: TIER_ORDER.get(t, 9))
    ingredient = next((e.ingredient for e in hits if e.ingredient), None)
    return Match(frozenset(e.group for e in hits), tier, matched_by, hits[0].display, ingredient)

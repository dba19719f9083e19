"""The chart around the labs: diagnoses (``Condition``) and pregnancy Observations, read into facts.

Part of the trust boundary (:mod:`service.fhir.readers`): a resource counts only when it names the patient of the
call; any JSON shape is read without error (a malformed element is skipped). What a Condition says of itself is
honoured: ``verificationStatus`` refuted or entered-in-error drops it; provisional, differential or unconfirmed makes
it suspected, not documented; ``clinicalStatus`` inactive, remission or resolved (or an abatement already passed)
makes it inactive. A text is read only as a fallback for a Condition no code places, and never when it negates or
doubts what it names ("ruled out", "family history of", "no", "?").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Any

from service.clinical.codes import (
    ConditionEntry,
    canonical_system,
    condition_code,
    condition_entries,
    context_observations,
    pregnancy_answers,
)
from service.clinical.facts import Diagnosis, PregnancyEvidence
from service.fhir.readers import (
    DATE_TOLERANCE,
    Scope,
    _as_list,
    _dict,
    entries,
    observation_time,
    parse_datetime,
    resources,
)

VOID_VERIFICATION = {"refuted", "entered-in-error"}
SUSPECTED_VERIFICATION = {"provisional", "differential", "unconfirmed"}
INACTIVE_CLINICAL = {"inactive", "remission", "resolved"}

# A text names a condition; the words just before or after it may take it back (NegEx-like windows): a negation,
# another person, another disorder ("pseudo-"), or doubt.
BEFORE = 48  # characters before the name that are read (about six words, within the same sentence)
AFTER = 32
NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|non|without|negative for|neg for|free of|denies|excluded|family history of|family hx of|family "
    r"history|fh of|fhx|fh|mother|father|sibling|sister|brother|parent|son|daughter|pseudo)\b[^.;]*$|pseudo-?$"
)
NEGATION_AFTER = re.compile(
    r"^[^.;]{0,24}?\b(?:ruled out|excluded|negative|not confirmed|not present|unlikely|absent|in (?:the )?"
    r"(?:mother|father|sibling|sister|brother|family|parent))\b"
)
DOUBT_BEFORE = re.compile(
    r"(?:\?\s*$|\b(?:suspected|suspect|suspicion of|possible|possibly|probable|probably|likely|query|queried|r/o|"
    r"rule[ -]?out|differential|consider|evaluat\w* for|work[ -]?up for|presumed|borderline)\b[^.;]*$)"
)
DOUBT_AFTER = re.compile(
    r"^\s*\?|^[^.;]{0,24}?\b(?:suspected|possible|vs|versus|query|unconfirmed|not yet confirmed)\b"
)
HPP_NAME = re.compile(r"hypophosphatasia|\bhpp\b|\balpl\b[^.;]{0,30}?\b(?:variants?|mutations?|pathogenic)\b")


def _words(text: str) -> str:
    """Lower case, one space between words, no zero-width spaces (Synthea writes "Mass/\u200bvolume")."""
    return " ".join(text.replace("\u200b", "").lower().split())


def _reading(words: str, start: int, end: int) -> str | None:
    """How the text around ``words[start:end]`` (a condition's name) speaks of it: ``documented``, ``suspected``,
    or None when it is negated (or another disorder, or another person's)."""
    before, after = words[max(0, start - BEFORE) : start], words[end : end + AFTER]
    if NEGATION_BEFORE.search(before) or NEGATION_AFTER.search(after):
        return None
    return "suspected" if DOUBT_BEFORE.search(before) or DOUBT_AFTER.search(after) else "documented"


def hpp_text(text: str) -> str | None:
    """How a free text speaks of hypophosphatasia: ``documented`` ("Hypophosphatasia, adult form", "HPP (ALPL variant
    confirmed)"), ``suspected`` ("?HPP", "possible hypophosphatasia"), or None (not named, or negated: "ruled out",
    "family history of", "pseudohypophosphatasia")."""
    words = _words(text)
    readings = [_reading(words, m.start(), m.end()) for m in HPP_NAME.finditer(words)]
    if not readings or None in readings:
        return None
    return "suspected" if "suspected" in readings else "documented"


@cache
def _index() -> tuple[dict[tuple[str, str], ConditionEntry], list[ConditionEntry], list[ConditionEntry]]:
    codes: dict[tuple[str, str], ConditionEntry] = {}
    prefixes: list[ConditionEntry] = []
    texts: list[ConditionEntry] = []
    for entry in condition_entries():
        if entry.match == "code":
            codes.setdefault((entry.system, entry.code), entry)
        elif entry.match == "prefix":
            prefixes.append(entry)
        else:
            texts.append(entry)
    prefixes.sort(key=lambda e: -len(e.code))  # the most specific prefix first
    return codes, prefixes, texts


def _coded(concept: dict[str, Any]) -> ConditionEntry | None:
    codes, prefixes, _ = _index()
    for coding in _as_list(concept.get("coding")):
        coding = _dict(coding)
        system, code = canonical_system(coding.get("system")), coding.get("code")
        if system is None or not isinstance(code, str) or not code.strip():
            continue
        code = condition_code(system, code)
        if (system, code) in codes:
            return codes[(system, code)]
        for entry in prefixes:
            if entry.system == system and code.startswith(entry.code):
                return entry
    return None


def _texts(concept: dict[str, Any]) -> list[str]:
    candidates = [concept.get("text"), *(_dict(c).get("display") for c in _as_list(concept.get("coding")))]
    return [t for t in candidates if isinstance(t, str) and t.strip()]


def _by_text(texts: Iterable[str]) -> tuple[ConditionEntry | None, bool]:
    """The first table entry a text names (not negated), and whether the text doubts it."""
    _, _, entries = _index()
    for text in texts:
        reading = hpp_text(text)
        if reading is not None:
            return HPP_BY_TEXT, reading == "suspected"
        words = _words(text)
        for entry in entries:
            at = words.find(entry.code)
            if at < 0:
                continue
            reading = _reading(words, at, at + len(entry.code))
            if reading is not None:
                return entry, reading == "suspected"
    return None, False


HPP_BY_TEXT = ConditionEntry("hpp", "hpp", "text", "", "hypophosphatasia", "hypophosphatasia")


def _text_doubts(texts: Iterable[str]) -> bool:
    """A coded Condition whose own text negates or doubts the name (``"Hypophosphatasia ruled out"`` under an HPP
    code): the code is kept, but the diagnosis is not taken as established."""
    for text in texts:
        words = _words(text)
        for match in HPP_NAME.finditer(words):
            if _reading(words, match.start(), match.end()) != "documented":
                return True
    return False


def _codes_of(element: Any) -> set[str]:
    return {c for c in (_dict(x).get("code") for x in _as_list(_dict(element).get("coding"))) if isinstance(c, str)}


def _onset(condition: dict[str, Any]) -> datetime | None:
    period = _dict(condition.get("onsetPeriod"))
    return parse_datetime(condition.get("onsetDateTime")) or parse_datetime(period.get("start"))


def _abatement(condition: dict[str, Any]) -> datetime | None:
    period = _dict(condition.get("abatementPeriod"))
    return (
        parse_datetime(condition.get("abatementDateTime"))
        or parse_datetime(period.get("end"))
        or parse_datetime(period.get("start"))
    )


def read_diagnoses(*values: Any, scope: Scope | None = None) -> list[Diagnosis]:
    """The patient's Conditions that belong to a group the rules read, each with its status and dates. A Condition
    refuted or entered in error is not read; one whose onset lies in the future is a data error and is not read.
    Without ``scope`` (tests) every Condition is read as the patient's."""
    found: list[Diagnosis] = []
    for value in values:
        for condition in resources(value, "Condition"):
            if scope is not None and not scope.owns(condition):
                continue
            verification = _codes_of(condition.get("verificationStatus"))
            if verification & VOID_VERIFICATION:
                continue
            concept = _dict(condition.get("code"))
            texts = _texts(concept)
            entry = _coded(concept)
            doubted = entry is not None and entry.group == "hpp" and _text_doubts(texts)
            matched_by = "code"
            if entry is None:
                entry, doubted = _by_text(texts)
                matched_by = "text"
            if entry is None:
                continue
            onset, abatement = _onset(condition), _abatement(condition)
            now = scope.now if scope is not None else None
            if onset is not None and now is not None and onset > now + DATE_TOLERANCE:
                continue
            clinical = _codes_of(condition.get("clinicalStatus"))
            active = not (clinical & INACTIVE_CLINICAL) and not (
                not clinical and abatement is not None and (now is None or abatement <= now)
            )
            found.append(
                Diagnosis(
                    group=entry.group,
                    kind=entry.kind,
                    name=" ".join((texts[0] if texts else entry.display).split())[:80],
                    active=active,
                    confirmed=not (verification & SUSPECTED_VERIFICATION) and not doubted,
                    onset=onset,
                    abatement=abatement,
                    recorded=parse_datetime(condition.get("recordedDate")),
                    matched_by=matched_by,
                )
            )
    return found


def _loinc_kind(concept: Any) -> str | None:
    known = context_observations()
    for coding in _as_list(_dict(concept).get("coding")):
        coding = _dict(coding)
        code = coding.get("code")
        if canonical_system(coding.get("system")) == "http://loinc.org" and isinstance(code, str) and code in known:
            return known[code].kind
    return None


def _pregnant(concept: Any) -> bool | None:
    answers = pregnancy_answers()
    for coding in _as_list(_dict(concept).get("coding")):
        coding = _dict(coding)
        code = coding.get("code")
        if isinstance(code, str) and (canonical_system(coding.get("system")), code) in answers:
            return answers[(canonical_system(coding.get("system")), code)]
    return None


def read_pregnancy_evidence(*values: Any, scope: Scope) -> list[PregnancyEvidence]:
    """Pregnancy Observations of the patient (final, amended or corrected): a status (pregnant or not, coded), an
    estimated due date, the date of a delivery. Anything else, or a value that cannot be read, is skipped."""
    found: list[PregnancyEvidence] = []

    def keep(observation: Any) -> bool:  # a cheap test on the code before a lazily decoded resource is decoded
        return _loinc_kind(observation.get("code")) is not None

    for value in values:
        for _, observation in entries(value, "Observation", keep):
            kind = _loinc_kind(observation.get("code"))
            if kind is None or observation.get("status") not in ("final", "amended", "corrected"):
                continue
            if not scope.owns(observation):
                continue
            when = observation_time(observation)
            if when is None or when > scope.now + DATE_TOLERANCE:
                continue
            if kind == "status":
                pregnant = _pregnant(observation.get("valueCodeableConcept"))
                if pregnant is not None:
                    found.append(PregnancyEvidence("status", when, pregnant=pregnant))
                continue
            date = parse_datetime(observation.get("valueDateTime"))
            if date is not None:
                found.append(PregnancyEvidence(kind, when, date=date))
    return found


def has_hpp_diagnosis(*values: Any, scope: Scope | None = None) -> bool:
    """A Condition of the patient that documents hypophosphatasia: coded as HPP (SNOMED CT, Orphanet, OMIM), or named
    so in its text ("Hypophosphatasia, adult form", "HPP (ALPL variant confirmed)"); a text that negates it ("ruled
    out", "family history of", "pseudohypophosphatasia") does not, nor a provisional, differential, unconfirmed or
    doubted ("?HPP") diagnosis, nor a refuted one."""
    return any(d.group == "hpp" and d.confirmed for d in read_diagnoses(*values, scope=scope))

"""The chart around the labs: diagnoses (``Condition``) and pregnancy Observations, read into facts.

Part of the trust boundary (:mod:`service.fhir.readers`): a resource counts only when it names the patient of the
call; any JSON shape is read without error (a malformed element is skipped). What a Condition says of itself is
honoured: ``verificationStatus`` entered-in-error drops it, refuted drops it too except for hypophosphatasia, where
it is read as a decision (HPP excluded), as are words such as "HPP ruled out"; provisional, differential or
unconfirmed makes it suspected, not documented; ``clinicalStatus`` inactive, remission or resolved (or an abatement
already passed) makes it inactive. A text is read only as a fallback for a Condition no code places, and never when
it negates or doubts what it names ("ruled out", "family history of", "no", "?").
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
    procedure_entries,
)
from service.clinical.facts import Diagnosis, PregnancyEvidence
from service.fhir.elements import obj, objects, string
from service.fhir.readers import DATE_TOLERANCE, Scope, entries, observation_time, plausible_datetime, resources

SUSPECTED_VERIFICATION = {"provisional", "differential", "unconfirmed"}
INACTIVE_CLINICAL = {"inactive", "remission", "resolved"}

# A text names a condition; the words just before or after it may take it back (NegEx-like windows): a negation,
# another person, another disorder ("pseudo-"), or doubt.
BEFORE = 48  # characters before the name that are read (within the same sentence)
AFTER = 32
# The words must govern the name: a negation right before it ("no HPP", "no evidence of hypophosphatasia") or right
# after it ("HPP excluded", "hypophosphatasia: ruled out"), not anywhere near it ("Hypophosphatasia - absent
# fractures so far", "Osteoporosis without fracture / hypophosphatasia" name HPP as the patient's).
ANOTHER_BEFORE = re.compile(  # another person's, or another disorder
    r"(?:\b(?:family history of|family history|family hx of|family hx|fh of|fhx|fh|mother|father|sibling|sister|"
    r"brother|parent|son|daughter)\b(?:\s+(?:with|has|had|of|:))?\s*[:\-]?\s*|pseudo-?\s*)$"
)
ANOTHER_AFTER = re.compile(
    r"^\s*[-:,(]?\s*in (?:the |a |his |her )?(?:mother|father|sibling|sister|brother|family|parent)\b"
)
EXCLUDED_BEFORE = re.compile(
    r"\b(?:no|not|non|without|negative for|neg for|free of|denies|excluded|ruled out)"
    r"(?:\s+(?:evidence|signs?|features|history|suspicion)\s+(?:of|for))?\s*[:\-]?\s*$"
)
EXCLUDED_AFTER = re.compile(
    r"^\s*[-:,]?\s*(?:(?:was|is|has been|now)\s+)?(?:ruled out|excluded|negative|not confirmed|not present|"
    r"unlikely|absent)\s*(?:[.;,(:]|$)"
)
DOUBT_BEFORE = re.compile(
    r"(?:\?|\b(?:suspected|suspect|suspicion of|possible|possibly|probable|probably|likely|query|queried|r/o|"
    r"rule[ -]?out|differential|consider|evaluat\w* for|work[ -]?up for|presumed|borderline))\s*[:\-]?\s*$"
)
DOUBT_AFTER = re.compile(
    r"^\s*(?:\?|[-:,(]?\s*(?:suspected|possible|query|unconfirmed|not yet confirmed|vs\.?|versus)\b)"
)
HPP_NAME = re.compile(r"hypophosphatasia|\bhpp\b|\balpl\b[^.;]{0,30}?\b(?:variants?|mutations?|pathogenic)\b")


def _words(text: str) -> str:
    """Lower case, one space between words, no zero-width spaces (Synthea writes "Mass/\u200bvolume")."""
    return " ".join(text.replace("\u200b", "").lower().split())


def _reading(words: str, start: int, end: int) -> str | None:
    """How the text around ``words[start:end]`` (a condition's name) speaks of it: ``documented``, ``suspected``,
    ``excluded`` ("ruled out", "no ..."), or None (another disorder, or another person's)."""
    before, after = words[max(0, start - BEFORE) : start], words[end : end + AFTER]
    if ANOTHER_BEFORE.search(before) or ANOTHER_AFTER.search(after):
        return None
    if EXCLUDED_BEFORE.search(before) or EXCLUDED_AFTER.search(after):
        return "excluded"
    return "suspected" if DOUBT_BEFORE.search(before) or DOUBT_AFTER.search(after) else "documented"


def hpp_text(text: str) -> str | None:
    """How a free text speaks of hypophosphatasia: ``documented`` ("Hypophosphatasia, adult form", "HPP (ALPL variant
    confirmed)"), ``suspected`` ("?HPP", "possible hypophosphatasia"), ``excluded`` ("HPP ruled out", "no evidence
    of hypophosphatasia"), or None (not named, or not the patient's: "family history of", "pseudohypophosphatasia")."""
    words = _words(text)
    readings = [_reading(words, m.start(), m.end()) for m in HPP_NAME.finditer(words)]
    if not readings or None in readings:
        return None
    for reading in ("excluded", "suspected"):
        if reading in readings:
            return reading
    return "documented"


@cache
def _index(
    table: str = "conditions",
) -> tuple[dict[tuple[str, str], ConditionEntry], list[ConditionEntry], list[ConditionEntry]]:
    codes: dict[tuple[str, str], ConditionEntry] = {}
    prefixes: list[ConditionEntry] = []
    texts: list[ConditionEntry] = []
    for entry in condition_entries() if table == "conditions" else procedure_entries():
        if entry.match == "code":
            codes.setdefault((entry.system, entry.code), entry)
        elif entry.match == "prefix":
            prefixes.append(entry)
        else:
            texts.append(entry)
    prefixes.sort(key=lambda e: -len(e.code))  # the most specific prefix first
    return codes, prefixes, texts


def _coded(concept: dict[str, Any], table: str = "conditions") -> ConditionEntry | None:
    codes, prefixes, _ = _index(table)
    for coding in objects(concept, "coding"):
        system, code = canonical_system(string(coding, "system")), string(coding, "code")
        if system is None or code is None or not code.strip():
            continue
        code = condition_code(system, code)
        if (system, code) in codes:
            return codes[(system, code)]
        for entry in prefixes:
            if entry.system == system and code.startswith(entry.code):
                return entry
    return None


def _texts(concept: dict[str, Any]) -> list[str]:
    candidates = [string(concept, "text"), *(string(c, "display") for c in objects(concept, "coding"))]
    return [t for t in candidates if t is not None and t.strip()]


def _named(text: str, entries: Iterable[ConditionEntry]) -> tuple[ConditionEntry | None, bool]:
    """The first table entry a text names (not negated), and whether the text doubts it."""
    words = _words(text)
    for entry in entries:
        at = words.find(entry.code)
        if at < 0:
            continue
        reading = _reading(words, at, at + len(entry.code))
        if reading in ("documented", "suspected"):
            return entry, reading == "suspected"
    return None, False


def _by_text(texts: Iterable[str]) -> tuple[ConditionEntry | None, bool]:
    """The first condition a text names (hypophosphatasia read first, with its negations and doubts)."""
    _, _, entries = _index()
    for text in texts:
        reading = hpp_text(text)
        if reading == "excluded":
            return HPP_EXCLUDED, False
        if reading is not None:
            return HPP_BY_TEXT, reading == "suspected"
        entry, doubted = _named(text, entries)
        if entry is not None:
            return entry, doubted
    return None, False


HPP_BY_TEXT = ConditionEntry("hpp", "hpp", "text", "", "hypophosphatasia", "hypophosphatasia")
# "Hypophosphatasia ruled out (normal PLP and urine PEA, 2024)": a decision on the problem list, read as such.
HPP_EXCLUDED = ConditionEntry("hpp_excluded", "hpp_excluded", "text", "", "hypophosphatasia excluded", "")


def _text_reading(texts: Iterable[str]) -> str:
    """How a coded HPP Condition's own texts speak of it: ``excluded`` when one says so, ``suspected`` when one
    doubts it, else ``documented``."""
    readings = {hpp_text(t) for t in texts} - {None}
    return next((r for r in ("excluded", "suspected") if r in readings), "documented")


def _codes_of(condition: Any, name: str) -> set[str]:
    """The codes of a status element (``clinicalStatus``, ``verificationStatus``)."""
    return {c for c in (string(x, "code") for x in objects(obj(condition, name), "coding")) if c is not None}


def _onset(condition: dict[str, Any]) -> datetime | None:
    period = obj(condition, "onsetPeriod")
    return plausible_datetime(string(condition, "onsetDateTime")) or plausible_datetime(string(period, "start"))


def _abatement(condition: dict[str, Any]) -> datetime | None:
    period = obj(condition, "abatementPeriod")
    return (
        plausible_datetime(string(condition, "abatementDateTime"))
        or plausible_datetime(string(period, "end"))
        or plausible_datetime(string(period, "start"))
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
            verification = _codes_of(condition, "verificationStatus")
            if "entered-in-error" in verification:
                continue
            concept = obj(condition, "code")
            texts = _texts(concept)
            entry = _coded(concept)
            if "refuted" in verification:
                # A refuted HPP is a decision on the problem list (HPP excluded); any other refuted entry is nothing.
                if entry is None or entry.group != "hpp":
                    continue
                entry = HPP_EXCLUDED
            doubted = False
            if entry is not None and entry.group == "hpp" and not verification:
                # A coded HPP with a verificationStatus is what its statuses say, whatever its text; without one, its
                # own text may take it back ("Hypophosphatasia ruled out", "?HPP" under an HPP code).
                reading = _text_reading(texts)
                entry = HPP_EXCLUDED if reading == "excluded" else entry
                doubted = reading == "suspected"
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
            clinical = _codes_of(condition, "clinicalStatus")
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
                    recorded=plausible_datetime(string(condition, "recordedDate")),
                    matched_by=matched_by,
                )
            )
    return found


# Procedure statuses that say it took place (FHIR R4 event-status): in progress, done, or begun and stopped.
PERFORMED = {"in-progress", "completed", "stopped"}
SURGICAL_CATEGORY = ("http://snomed.info/sct", "387713003")  # Procedure.category "Surgical procedure" (FHIR R4)


def read_procedures(*values: Any, scope: Scope) -> list[Diagnosis]:
    """The surgery, transfusion and apheresis the patient has had (group ``acute_event``, ``data/procedures.csv``,
    or any procedure whose category is "Surgical procedure"), each dated by the end of its performance (or its
    start, or its single date). A procedure not performed (preparation, not done, on hold, entered in error), with
    no date, or dated after today is not read."""
    found: list[Diagnosis] = []
    for value in values:
        for procedure in resources(value, "Procedure"):
            if not scope.owns(procedure) or string(procedure, "status") not in PERFORMED:
                continue
            period = obj(procedure, "performedPeriod")
            when = (
                plausible_datetime(string(procedure, "performedDateTime"))
                or plausible_datetime(string(period, "end"))
                or plausible_datetime(string(period, "start"))
            )
            if when is None or when > scope.now + DATE_TOLERANCE:
                continue
            concept = obj(procedure, "code")
            texts = _texts(concept)
            entry = _coded(concept, "procedures")
            if entry is None:
                _, _, words = _index("procedures")
                entry = next((e for t in texts if (e := _named(t, words)[0]) is not None), None)
            surgical = any(
                (canonical_system(string(c, "system")), string(c, "code")) == SURGICAL_CATEGORY
                for c in objects(obj(procedure, "category"), "coding")
            )
            if entry is None and not surgical:
                continue
            kind = entry.kind if entry is not None else "surgery"
            name = texts[0] if texts else (entry.display if entry is not None else "surgical procedure")
            found.append(
                Diagnosis(
                    group="acute_event",
                    kind=kind,
                    name=" ".join(name.split())[:80],
                    active=False,
                    confirmed=True,
                    onset=when,
                    abatement=when,
                    matched_by="code" if entry is not None and entry.match == "code" else "text",
                )
            )
    return found


def _loinc_kind(concept: Any) -> str | None:
    known = context_observations()
    for coding in objects(concept, "coding"):
        code = (string(coding, "code") or "").strip()
        if canonical_system(string(coding, "system")) == "http://loinc.org" and code in known:
            return known[code].kind
    return None


def _pregnant(concept: Any) -> bool | None:
    answers = pregnancy_answers()
    for coding in objects(concept, "coding"):
        key = (canonical_system(string(coding, "system")), (string(coding, "code") or "").strip())
        if key in answers:
            return answers[key]
    return None


def read_pregnancy_evidence(*values: Any, scope: Scope) -> list[PregnancyEvidence]:
    """Pregnancy Observations of the patient (final, amended or corrected): a status (pregnant or not, coded), an
    estimated due date, the date of a delivery (the ``pregnancy`` prefetch key). Anything else, or a value that
    cannot be read, is skipped."""
    found: list[PregnancyEvidence] = []

    def keep(observation: Any) -> bool:  # a cheap test on the code before a lazily decoded resource is decoded
        return _loinc_kind(obj(observation, "code")) is not None

    for value in values:
        for _, observation in entries(value, "Observation", keep):
            kind = _loinc_kind(obj(observation, "code"))
            if kind is None or string(observation, "status") not in ("final", "amended", "corrected"):
                continue
            if not scope.owns(observation):
                continue
            when = observation_time(observation)
            if when is None or when > scope.now + DATE_TOLERANCE or plausible_datetime(when.isoformat()) is None:
                continue
            if kind == "status":
                pregnant = _pregnant(obj(observation, "valueCodeableConcept"))
                if pregnant is not None:
                    found.append(PregnancyEvidence("status", when, pregnant=pregnant))
                continue
            date = plausible_datetime(string(observation, "valueDateTime"))
            if date is not None:
                found.append(PregnancyEvidence(kind, when, date=date))
    return found


def has_hpp_diagnosis(*values: Any, scope: Scope | None = None) -> bool:
    """A Condition of the patient that documents hypophosphatasia: coded as HPP (SNOMED CT, Orphanet, OMIM), or named
    so in its text ("Hypophosphatasia, adult form", "HPP (ALPL variant confirmed)"); a text that negates it ("ruled
    out", "family history of", "pseudohypophosphatasia") does not, nor a provisional, differential, unconfirmed or
    doubted ("?HPP") diagnosis, nor a refuted one."""
    return any(d.group == "hpp" and d.confirmed for d in read_diagnoses(*values, scope=scope))

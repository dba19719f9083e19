"""Turn FHIR R4 JSON into typed facts. Tolerant: a malformed element is skipped, never an exception.

Validation is deliberately cheap (plain dict reads) because a chart may hold thousands of Observations;
only Observations with a known LOINC code are looked at closely.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any

from service.clinical.codes import LOINC, analytes, convert
from service.clinical.facts import LabResult, Medication, Patient
from service.clinical.medications import match_medication

COUNTED = {"final", "amended", "corrected"}
PRELIMINARY = {"preliminary"}
LOW_FLAGS = {"L", "LL", "LU", "<"}
HIGH_FLAGS = {"H", "HH", "HU", ">"}
MED_STATUS = {
    # MedicationRequest
    "active": "current",
    "on-hold": "current",
    "draft": "draft",
    "completed": "history",
    "stopped": "history",
    # MedicationStatement
    "intended": "current",
}


def _dict(value: Any) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one: malformed FHIR is skipped, never an exception."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def resources(value: Any, resource_type: str | None = None) -> Iterator[dict[str, Any]]:
    """The resources in a prefetch value: a single resource, or the entries of a Bundle (outcomes skipped)."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        for entry in _list(value.get("entry")):
            if not isinstance(entry, dict):
                continue
            if _dict(entry.get("search")).get("mode") == "outcome":
                continue
            resource = entry.get("resource")
            if isinstance(resource, dict) and (resource_type is None or resource.get("resourceType") == resource_type):
                yield resource
    elif resource_type is None or value.get("resourceType") == resource_type:
        yield value


def parse_datetime(text: Any) -> datetime | None:
    """FHIR date/dateTime/instant (partial dates allowed) as an aware datetime; naive times are taken as UTC."""
    if not isinstance(text, str) or not text:
        return None
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(text)  # Python 3.11 reads "Z" and offsets
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_date(text: Any) -> date | None:
    parsed = parse_datetime(text)
    return parsed.date() if parsed else None


def read_patient(value: Any, patient_id: str) -> Patient:
    for resource in resources(value, "Patient"):
        gender = resource.get("gender")
        return Patient(
            id=patient_id,
            birth_date=parse_date(resource.get("birthDate")),
            gender=gender if gender in ("male", "female", "other", "unknown") else None,
        )
    return Patient(id=patient_id)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) < 1e9 else None


def _unit(quantity: dict[str, Any]) -> str | None:
    for key in ("code", "unit"):
        unit = quantity.get(key)
        if isinstance(unit, str) and unit.strip():
            return unit
    return None


def _flag(observation: dict[str, Any]) -> str | None:
    for concept in _list(observation.get("interpretation")):
        for coding in _list(_dict(concept).get("coding")):
            code = _dict(coding).get("code")
            if code in LOW_FLAGS:
                return "low"
            if code in HIGH_FLAGS:
                return "high"
            if code == "N":
                return "normal"
    return None


def observation_time(observation: dict[str, Any]) -> datetime | None:
    when = parse_datetime(observation.get("effectiveDateTime"))
    if when is not None:
        return when
    period = _dict(observation.get("effectivePeriod"))
    return (
        parse_datetime(observation.get("effectiveInstant"))
        or parse_datetime(period.get("start"))
        or parse_datetime(period.get("end"))
        or parse_datetime(observation.get("issued"))
    )


def read_observation(observation: dict[str, Any]) -> LabResult | None:
    status = observation.get("status")
    if status not in COUNTED and status not in PRELIMINARY:
        return None
    known = analytes()
    analyte = None
    for coding in _list(_dict(observation.get("code")).get("coding")):
        if (
            isinstance(coding, dict)
            and coding.get("system") == LOINC
            and isinstance(coding.get("code"), str)
            and coding["code"] in known
        ):
            analyte = known[coding["code"]]
            break
    if analyte is None:
        return None
    quantity = observation.get("valueQuantity")
    if not isinstance(quantity, dict):
        return None
    raw_value = _number(quantity.get("value"))
    if raw_value is None:
        return None
    raw_unit = _unit(quantity)
    converted = convert(raw_value, raw_unit, analyte.unit_group)
    low = high = None
    ranges = observation.get("referenceRange")
    if converted and ranges and isinstance(ranges, list):
        first = _dict(ranges[0])
        low = _range_bound(first.get("low"), raw_unit, analyte.unit_group)
        high = _range_bound(first.get("high"), raw_unit, analyte.unit_group)
    return LabResult(
        analyte=analyte.analyte,
        loinc=analyte.loinc,
        display=analyte.display,
        when=observation_time(observation),
        value=converted[0] if converted else None,
        unit=converted[1] if converted else (raw_unit or "no unit"),
        raw_value=raw_value,
        raw_unit=raw_unit,
        low=low,
        high=high,
        flag=_flag(observation),
        preliminary=status in PRELIMINARY,
        resource_id=observation.get("id") if isinstance(observation.get("id"), str) else None,
    )


def _range_bound(bound: Any, value_unit: str | None, unit_group: str) -> float | None:
    if not isinstance(bound, dict):
        return None
    number = _number(bound.get("value"))
    if number is None:
        return None
    converted = convert(number, _unit(bound) or value_unit, unit_group)
    return converted[0] if converted else None


def read_lab_results(*values: Any, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[LabResult]:
    """Every usable lab result in the given prefetch values, oldest first, de-duplicated by resource id.

    ``keep`` is a cheap test run before an Observation is parsed: what it rejects is never parsed at all.
    """
    seen: set[str] = set()
    results: list[LabResult] = []
    for value in values:
        for observation in resources(value, "Observation"):
            if keep is not None and not keep(observation):
                continue
            ident = observation.get("id")
            if isinstance(ident, str):
                if ident in seen:
                    continue
                seen.add(ident)
            result = read_observation(observation)
            if result is not None:
                results.append(result)
    results.sort(key=lambda r: r.when or datetime.min.replace(tzinfo=UTC))
    return results


def _concept_parts(concept: Any) -> tuple[list[tuple[str | None, str | None]], list[str]]:
    if not isinstance(concept, dict):
        return [], []
    codings = [c for c in _list(concept.get("coding")) if isinstance(c, dict)]
    texts = [t for t in [concept.get("text"), *(c.get("display") for c in codings)] if isinstance(t, str)]
    pairs = [(c.get("system"), c.get("code")) for c in codings]
    return [(system, code) for system, code in pairs if isinstance(code, str) and isinstance(system, str | None)], texts


def read_medications(
    values: Iterable[Any],
    resolve: Callable[[str], dict[str, Any] | None] | None = None,
) -> list[Medication]:
    """MedicationStatement and MedicationRequest resources that match a value set, with status meaning."""
    found: list[Medication] = []
    pool = [r for value in values for r in resources(value)]
    medications = {
        f"Medication/{r.get('id')}": r
        for r in pool
        if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)
    }
    for resource in pool:
        kind = resource.get("resourceType")
        if kind not in ("MedicationStatement", "MedicationRequest"):
            continue
        status = resource.get("status")
        meaning = MED_STATUS.get(status) if isinstance(status, str) else None
        if meaning is None:
            continue
        concept = resource.get("medicationCodeableConcept")
        if concept is None:
            concept = _referenced_code(resource, medications, resolve)
        codings, texts = _concept_parts(concept)
        groups, tier, matched_by, display = match_medication(codings, texts)
        if not groups:
            continue
        if kind == "MedicationStatement":
            period = _dict(resource.get("effectivePeriod"))
            start = (
                parse_datetime(period.get("start"))
                or parse_datetime(resource.get("effectiveDateTime"))
                or parse_datetime(resource.get("dateAsserted"))
            )
        else:
            start = parse_datetime(resource.get("authoredOn"))
        found.append(
            Medication(
                groups=groups,
                tier=tier,
                name=texts[0] if texts else display or "unnamed medication",
                status=meaning,
                start=start,
                reference=f"{kind}/{resource['id']}" if isinstance(resource.get("id"), str) else None,
                matched_by=matched_by,
            )
        )
    return found


def _referenced_code(
    resource: dict[str, Any],
    medications: dict[str, dict[str, Any]],
    resolve: Callable[[str], dict[str, Any] | None] | None,
) -> Any:
    reference = _dict(resource.get("medicationReference")).get("reference")
    if not isinstance(reference, str):
        return None
    if reference.startswith("#"):
        for contained in _list(resource.get("contained")):
            if isinstance(contained, dict) and contained.get("id") == reference[1:]:
                return contained.get("code")
        return None
    if reference in medications:
        return medications[reference].get("code")
    if resolve is not None and reference.startswith("Medication/"):
        target = resolve(reference)
        if isinstance(target, dict) and target.get("resourceType") == "Medication":
            return target.get("code")
    return None


def has_hpp_diagnosis(*values: Any) -> bool:
    """A Condition documenting hypophosphatasia (not refuted or entered in error)."""
    from service.clinical.codes import hpp_condition_codes

    codes, texts = hpp_condition_codes()
    for value in values:
        for condition in resources(value, "Condition"):
            status = (_list(_dict(condition.get("verificationStatus")).get("coding")) or [{}])[0]
            if _dict(status).get("code") in ("refuted", "entered-in-error"):
                continue
            codings, words = _concept_parts(condition.get("code"))
            if any(pair in codes for pair in codings) or any(t in w.lower() for w in words for t in texts):
                return True
    return False

"""The trust boundary: FHIR R4 JSON in, facts out. Everything read here comes from outside and is checked here.

- Identity: a resource is used only when its subject/patient reference names the patient of the hook call; other
  patients' resources are dropped and counted (``Scope.dropped``), never shown.
- Shape: any JSON may arrive. A malformed element is skipped (or, for a lab result, kept with a ``problem`` so the
  card can name it); reading never raises on bad data.
- Results: value from ``valueQuantity`` (with its comparator), ``valueString`` ("<20", "< 5 U/L") or
  ``valueInteger``, at Observation level or in a ``component``; converted to the analyte's canonical unit; checked
  against the possible range and the patient's lifetime; judged against the lab's range, else the lab's flag, else
  the sourced fallback interval for age and sex (``service.clinical.limits``).
- Medications: status meaning, the record's own start and end, never current after death.

Reading is cheap (plain dict reads) because a chart may hold thousands of Observations; only Observations with a
known LOINC code are looked at closely.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from fhir.resources.R4B import get_fhir_model_class

from service.clinical.codes import LOINC, Analyte, analytes, canonical_system, convert, plausible_ranges, thresholds
from service.clinical.facts import LAB_FLAG, LAB_RANGE, LabResult, Medication, Patient
from service.clinical.limits import TOTAL_ALP, fallback_limits
from service.clinical.medications import match_medication
from service.fhir.elements import array, as_object, nonempty, obj, objects, string, untyped
from service.fhir.lazy import LazyBundle
from service.settings import ClinicalSettings

COUNTED = {"final", "amended", "corrected"}
PRELIMINARY = {"preliminary"}
LOW_FLAGS = {"L", "LL", "LU", "<"}
HIGH_FLAGS = {"H", "HH", "HU", ">"}
COMPARATORS = {"<", "<=", ">", ">="}
MED_STATUS = {
    # MedicationRequest and MedicationStatement
    "active": "current",
    "on-hold": "current",
    "intended": "current",
    "draft": "draft",
    "completed": "history",
    "stopped": "history",
    # MedicationDispense: the drug was handed over (evidence of exposure, not of current use)
    "in-progress": "history",
}
MEDICATION_RECORDS = ("MedicationStatement", "MedicationRequest", "MedicationDispense", "MedicationAdministration")
# "<20", "< 5 U/L", ">= 1000 IU/L", "35": a comparator, a number with a decimal point (a comma is ambiguous
# between a decimal and a thousands separator, so it is not read), and an optional unit.
VALUE_TEXT = re.compile(r"^\s*+(<=|>=|<|>|≤|≥)?+\s*+([+-]?+(?:\d++\.?+\d*+|\.\d++))\s*+([^\d\s,][^,]*+)?+$")
VALUE_TEXT_MAX = 40  # a result written as text is short ("< 5 U/L"); longer text is not a number and is not parsed
UNICODE_COMPARATORS = {"≤": "<=", "≥": ">="}
DATE_TOLERANCE = timedelta(days=1)  # time zones and partial dates: a result a day outside life is still believed


class PatientMismatch(ValueError):
    """The Patient resource given is not the patient of the hook call (or not one Patient at all, or one whose death
    cannot be read)."""


@cache
def is_resource_type(name: str) -> bool:
    if not name[:1].isupper() or not name.isalpha():
        return False
    try:
        get_fhir_model_class(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return False
    return True


def entries(
    value: Any, resource_type: str | None = None, keep: Callable[[Any], bool] | None = None
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(fullUrl, resource) for the resources in a prefetch value: a single resource (no fullUrl), or the entries of a
    Bundle (search outcomes skipped). ``keep`` is a cheap test on the resource's code and date, run before a lazily
    decoded resource is decoded (:mod:`service.fhir.lazy`): what it rejects is never decoded."""
    if isinstance(value, LazyBundle):
        yield from value.resources(resource_type, keep)
        return
    if not isinstance(value, dict):
        return
    if string(value, "resourceType") == "Bundle":
        for entry in objects(value, "entry"):
            if string(obj(entry, "search"), "mode") == "outcome":
                continue
            resource = untyped(entry, "resource")
            if (
                isinstance(resource, dict)
                and (resource_type is None or string(resource, "resourceType") == resource_type)
                and (keep is None or keep(resource))
            ):
                yield untyped(entry, "fullUrl"), resource
    elif (resource_type is None or string(value, "resourceType") == resource_type) and (keep is None or keep(value)):
        yield None, value


def resources(value: Any, resource_type: str | None = None) -> Iterator[dict[str, Any]]:
    """The resources in a prefetch value (see :func:`entries`)."""
    return (resource for _, resource in entries(value, resource_type))


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
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        # The lab's own offset is kept (a card shows the date the lab wrote), once the time is known to exist in UTC
        # too, so that comparing any two times can never overflow (0001-01-01T00:00:00+14:00 cannot be held).
        parsed.astimezone(UTC)
        return parsed
    except (ValueError, OverflowError):
        return None


EARLIEST_YEAR, LATEST_YEAR = 1000, 8999  # outside, a date is a feed error, and reckoning from it could overflow


def plausible_datetime(text: Any) -> datetime | None:
    """:func:`parse_datetime` for the dates the rules reckon from (a medication's start and end, a diagnosis's onset,
    a due date): one outside the years ``EARLIEST_YEAR`` to ``LATEST_YEAR`` cannot be read (None), since no record of
    a living patient holds one and months or years added to it cannot be held (year 1 minus a year). A lab result's
    date is read as written, so that a placeholder date is named on the card ("dated before the patient's birth")."""
    parsed = parse_datetime(text)
    return parsed if parsed is not None and EARLIEST_YEAR <= parsed.year <= LATEST_YEAR else None


def parse_date(text: Any) -> date | None:
    parsed = parse_datetime(text)
    return parsed.date() if parsed else None


PATIENT_REFERENCE = re.compile(
    r"^(?:(?P<base>https?://[^/?#]+(?:/[^?#]*)?)/)?Patient/(?P<id>[^/?#]+)(?:/_history/[^/?#]+)?$"
)


def patient_in_reference(reference: Any, server: str | None = None) -> str | None:
    """The patient id a reference names: ``Patient/x`` or ``<base>/Patient/x``, either with ``/_history/n``; None for
    anything else (contained, urn:uuid, identifier-only, ``../``, another resource type, a path through another
    resource such as ``Group/g/Patient/x``). With ``server`` (the request's ``fhirServer``) an absolute reference
    must be on that server: ``Patient/x`` on another server is another patient."""
    if not isinstance(reference, str):
        return None
    match = PATIENT_REFERENCE.match(reference)
    if match is None:
        return None
    base = match.group("base")
    if base is not None:
        if server is not None and _base(base) != _base(server):
            return None
        if _through_a_resource(base):
            return None
    return match.group("id")


def _base(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port if parts.port not in (None, {"http": 80, "https": 443}.get(parts.scheme.lower())) else None
    host = (parts.hostname or "") + (f":{port}" if port else "")
    return f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"


def _through_a_resource(base: str) -> bool:
    """``https://x/fhir/Group/g`` ends in a resource type and an id: a reference through it is not a patient's."""
    segments = urlsplit(base).path.strip("/").split("/")
    return len(segments) >= 2 and is_resource_type(segments[-2])


@dataclass
class Scope:
    """Whose chart is being read, and when. Every resource is checked against it."""

    patient: Patient
    now: datetime
    settings: ClinicalSettings = field(default_factory=ClinicalSettings)
    server: str | None = None  # the request's fhirServer: absolute references must point there
    aliases: frozenset[str] = frozenset()  # Bundle fullUrls of this patient's Patient entry (e.g. urn:uuid:...)
    dropped: Counter[str] = field(default_factory=Counter)  # resource type -> other patients' resources dropped
    unresolved: list[str] = field(default_factory=list)  # medication records whose Medication could not be read
    # fallback limits by (analyte, day): they depend on the patient's age on that day only (read once per day, not
    # once per result)
    fallbacks: dict[tuple[str, date], Any] = field(default_factory=dict, compare=False, repr=False)

    def owns(self, resource: dict[str, Any], *, unnamed_ok: bool = False) -> bool:
        """The resource names this patient as its ``subject`` (``patient`` only when there is no subject);
        ``unnamed_ok`` accepts a resource that names no patient (a draft order in the hook context is about the
        context patient): no subject, one of the wrong JSON type, or one whose reference is no Patient reference
        (empty, a display or an identifier only, a ``urn:uuid:``). Only a Patient reference to someone else (another
        id, or a server other than ``fhirServer``) makes such a resource another patient's."""
        key = "subject" if "subject" in resource else "patient"
        reference = string(obj(resource, key), "reference")
        if (reference is not None and reference in self.aliases) or patient_in_reference(
            reference, self.server
        ) == self.patient.id:
            return True
        if unnamed_ok and (reference is None or PATIENT_REFERENCE.match(reference) is None):
            return True
        kind = string(resource, "resourceType")
        self.dropped[kind if kind is not None and kind.isalpha() and len(kind) < 40 else "unknown"] += 1
        return False


def read_patient(value: Any, patient_id: str, now: datetime | None = None) -> Patient:
    """The Patient of the hook call: exactly one Patient resource, whose id is ``context.patientId`` (alone, or the
    one Patient of a Bundle), else :class:`PatientMismatch` (another id, several Patients, another resource type, no
    Patient at all: whether the patient has died is then unknown, and no advice can be given)."""
    if string(value, "resourceType") not in ("Patient", "Bundle"):
        raise PatientMismatch("the patient data given is not a Patient resource")
    found = list(resources(value, "Patient"))
    if not found:
        raise PatientMismatch("the patient data given holds no Patient")
    if len(found) > 1:
        raise PatientMismatch("the patient data given holds more than one Patient")
    resource = found[0]
    if string(resource, "id") != patient_id:
        raise PatientMismatch("the Patient resource given is not context.patientId")
    gender = string(resource, "gender")
    # Whether the patient has died decides whether any advice is given: a value of the wrong type ("true" as a
    # string, a date as a number) is refused rather than guessed either way.
    if not isinstance(untyped(resource, "deceasedBoolean"), bool | None):
        raise PatientMismatch(
            "Patient.deceasedBoolean must be true or false (JSON), so whether the patient has died is unknown"
        )
    if not isinstance(untyped(resource, "deceasedDateTime"), str | None):
        raise PatientMismatch(
            "Patient.deceasedDateTime must be a date text, so whether the patient has died is unknown"
        )
    death_text = string(resource, "deceasedDateTime")
    deceased_at = parse_datetime(death_text)
    deceased = untyped(resource, "deceasedBoolean") is True or deceased_at is not None
    if death_text is not None and death_text.strip() and deceased_at is None:
        deceased = True  # a death date that cannot be read is still a death
    if deceased_at is not None and now is not None and deceased_at > now + DATE_TOLERANCE:
        deceased, deceased_at = False, None  # a death in the future is a data error, not a death
    return Patient(
        id=patient_id,
        birth_date=parse_date(string(resource, "birthDate"))
        if plausible_datetime(string(resource, "birthDate"))
        else None,
        gender=gender if gender in ("male", "female", "other", "unknown") else None,
        deceased=deceased,
        deceased_at=deceased_at,
        name=patient_name(untyped(resource, "name")),
    )


def patient_name(names: Any) -> str | None:
    """The patient's name as a person reads it (``Patient.name``: the official one, else the usual one, else the
    first): its ``text``, or the given names and the family name; None when there is none."""
    if not isinstance(names, list):
        return None
    usable = [n for n in names if isinstance(n, dict)]
    usable.sort(key=lambda n: {"official": 0, "usual": 1}.get(string(n, "use"), 2))
    for name in usable:
        text = string(name, "text")
        if not (text is not None and text.strip()):
            parts = [g for g in array(name, "given") if isinstance(g, str)] + [string(name, "family")]
            text = " ".join(p.strip() for p in parts if p is not None and p.strip())
        text = " ".join(text.split())
        if text:
            return text[:200]
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of any length can arrive
        return None
    return number if math.isfinite(number) and abs(number) < 1e9 else None


def _unit(quantity: dict[str, Any]) -> str | None:
    for key in ("code", "unit"):
        unit = string(quantity, key)
        if unit is not None and unit.strip():
            return unit
    return None


def _units_disagree(quantity: dict[str, Any], unit_group: str) -> bool:
    """The UCUM code and the display unit are both known and mean different things (e.g. code U/L, unit ukat/L)."""
    code, unit = string(quantity, "code"), string(quantity, "unit")
    if code is None or unit is None:
        return False
    return _unit_texts_disagree(code, unit, unit_group)


@cache
def _unit_texts_disagree(code: str, unit: str, unit_group: str) -> bool:
    """Worked out once per (code, unit, group): a chart holds thousands of results in a handful of units."""
    by_code, by_unit = convert(1.0, code, unit_group), convert(1.0, unit, unit_group)
    return by_code is not None and by_unit is not None and by_code != by_unit


def _flag(element: dict[str, Any]) -> str | None:
    for concept in array(element, "interpretation"):
        for coding in array(concept, "coding"):
            code = string(coding, "code")
            if code is None:
                continue
            if code in LOW_FLAGS:
                return "low"
            if code in HIGH_FLAGS:
                return "high"
            if code == "N":
                return "normal"
    return None


def observation_time(observation: dict[str, Any]) -> datetime | None:
    period = obj(observation, "effectivePeriod")
    return (
        parse_datetime(string(observation, "effectiveDateTime"))
        or parse_datetime(string(observation, "effectiveInstant"))
        or parse_datetime(string(period, "start"))
        or parse_datetime(string(period, "end"))
        or parse_datetime(string(observation, "issued"))
    )


def _analyte(concept: Any, known: Mapping[str, Analyte]) -> Analyte | None:
    for coding in objects(concept, "coding"):
        code = string(coding, "code")
        # " 6768-6": a careless EHR's blank is no other code; the system canonicalised only for a known code
        if code is not None and code.strip() in known and canonical_system(string(coding, "system")) == LOINC:
            return known[code.strip()]
    return None


@dataclass(frozen=True)
class _Raw:
    """A value as the lab sent it, before conversion."""

    number: float | None
    unit: str | None
    comparator: str | None
    text: str | None  # shown when the value cannot be used
    problem: str | None


def _raw_value(element: dict[str, Any], range_unit: str | None) -> _Raw:
    quantity = untyped(element, "valueQuantity")
    if isinstance(quantity, dict):
        number = _number(untyped(quantity, "value"))
        comparator = untyped(quantity, "comparator")
        unit = _unit(quantity)
        if number is None:
            return _Raw(None, unit, None, None, "the value is not a number")
        if comparator is not None and (not isinstance(comparator, str) or comparator not in COMPARATORS):
            return _Raw(number, unit, None, None, "the comparator is not one FHIR allows")
        return _Raw(number, unit, comparator, None, None)
    text = string(element, "valueString")
    if text is not None:
        shown = text.strip()[:VALUE_TEXT_MAX]
        match = VALUE_TEXT.match(text) if len(text) <= VALUE_TEXT_MAX else None
        if not match:
            return _Raw(None, None, None, shown, "the value is text that does not read as a number")
        comparator = UNICODE_COMPARATORS.get(match.group(1), match.group(1))
        return _Raw(float(match.group(2)), (match.group(3) or "").strip() or range_unit, comparator, shown, None)
    integer = untyped(element, "valueInteger")
    if isinstance(integer, int) and not isinstance(integer, bool):
        number = _number(integer)  # None from a billion on: named, as for valueQuantity, not silently dropped
        return _Raw(number, range_unit, None, None, None if number is not None else "the value is not a number")
    absent = obj(element, "dataAbsentReason")
    reason = nonempty(absent, "text") or next(
        (nonempty(c, "display") or nonempty(c, "code") for c in array(absent, "coding")), None
    )
    return _Raw(None, None, None, reason[:40] if reason else None, "no value")


def _range_unit(reference_range: dict[str, Any]) -> str | None:
    for key in ("low", "high"):
        unit = _unit(obj(reference_range, key))
        if unit:
            return unit
    return None


def _range_bound(bound: Any, value_unit: str | None, unit_group: str) -> float | None:
    number = _number(untyped(bound, "value"))
    if number is None:
        return None
    converted = convert(number, _unit(bound) or value_unit, unit_group)
    return converted[0] if converted else None


def _read_result(
    analyte: Analyte,
    element: dict[str, Any],
    *,
    when: datetime | None,
    preliminary: bool,
    resource_id: str | None,
    scope: Scope | None,
    problem: str | None = None,
    issued: datetime | None = None,
    corrected: bool = False,
) -> LabResult:
    reference_range = as_object(next(iter(array(element, "referenceRange")), None))
    raw = _raw_value(element, _range_unit(reference_range))
    problem = problem or raw.problem
    converted = None
    if problem is None and raw.number is not None:
        converted = convert(raw.number, raw.unit, analyte.unit_group)
        if converted is None:
            problem = "unit not recognised" if raw.unit else "no unit"
    quantity = untyped(element, "valueQuantity")
    if converted is not None and isinstance(quantity, dict) and _units_disagree(quantity, analyte.unit_group):
        problem = "the unit code and the unit text disagree"
    if converted is not None and problem is None:
        problem = _implausible(analyte.analyte, converted[0])
    if problem is None:
        problem = _misdated(when, scope)
    value = unit = low = high = low_source = high_source = age_low = age_low_source = age_band_low = None
    flag = _flag(element)
    if problem is None and converted is not None:
        value, unit = converted
        low = _range_bound(untyped(reference_range, "low"), raw.unit, analyte.unit_group)
        high = _range_bound(untyped(reference_range, "high"), raw.unit, analyte.unit_group)
        low_source = LAB_RANGE if low is not None else None
        high_source = LAB_RANGE if high is not None else None
        if flag is not None:  # the lab judged it: its flag stands for a bound it did not send
            low_source, high_source = low_source or LAB_FLAG, high_source or LAB_FLAG
        elif (low is None or high is None) and scope is not None and when is not None:
            key = (analyte.analyte, when.date())
            if key in scope.fallbacks:
                fallback = scope.fallbacks[key]
            else:
                fallback = scope.fallbacks[key] = fallback_limits(analyte.analyte, scope.patient, when, scope.settings)
            if fallback is not None:
                if low is None and fallback.low is not None:
                    low, low_source = fallback.low, fallback.source
                if high is None and fallback.high is not None:
                    high, high_source = fallback.high, fallback.source
        if low_source in (LAB_RANGE, LAB_FLAG) and analyte.analyte == TOTAL_ALP and scope is not None and when:
            age_low, age_low_source, age_band_low = _child_limit(low if low_source == LAB_RANGE else None, scope, when)
    return _lab_result(
        analyte=analyte.analyte,
        loinc=analyte.loinc,
        display=analyte.display,
        when=when,
        value=value,
        unit=unit or raw.unit or "no unit",
        raw_value=raw.number,
        raw_unit=raw.unit,
        raw_text=raw.text,
        comparator=raw.comparator,
        flag=flag,
        preliminary=preliminary,
        resource_id=resource_id,
        problem=problem,
        low=low,
        high=high,
        low_source=low_source,
        high_source=high_source,
        issued=issued,
        corrected=corrected,
        age_low=age_low,
        age_low_source=age_low_source,
        age_band_low=age_band_low,
    )


_LAB_FIELDS = len(dataclass_fields(LabResult))


def _lab_result(**values: Any) -> LabResult:
    """A :class:`LabResult` built without the frozen dataclass's ``__init__``, which sets each of its 23 fields through
    ``object.__setattr__`` (a chart of 10000 Observations builds 8000 of them: a tenth of the reading). Equal to the
    dataclass's own (same fields, same equality and hash); any field left out goes through the constructor, for its
    default."""
    if len(values) != _LAB_FIELDS:
        return LabResult(**values)
    result = object.__new__(LabResult)
    result.__dict__.update(values)
    return result


def _child_limit(lab_low: float | None, scope: Scope, when: datetime) -> tuple[float | None, str | None, float | None]:
    """For a child (under ``ADULT_AGE``) judged by the lab: (the limit to judge against as well, its source, the
    CALIPER lower limit for age and sex). The CALIPER limit applies too when the lab's lower limit is far below it
    (under ``child_adult_range_fraction`` of it: the lab's range looks like an adult one) or when the lab sent only a
    flag, which cannot be checked against any limit for age: labs leave children's age-specific lows unflagged
    (addendum 6 A70: none of 226 was flagged)."""
    age = scope.patient.age_years(when)
    if age is None or age >= scope.settings.ADULT_AGE:
        return None, None, None
    band = fallback_limits(TOTAL_ALP, scope.patient, when, scope.settings)
    if band is None or band.low is None:
        return None, None, None
    if lab_low is not None and lab_low >= band.low * thresholds()["child_adult_range_fraction"]:
        return None, None, band.low
    return band.low, band.source, band.low


def _implausible(analyte: str, value: float) -> str | None:
    lowest, highest, unit = plausible_ranges().get(analyte, (None, None, ""))
    if (lowest is not None and value < lowest) or (highest is not None and value > highest):
        span = f"{_plain(lowest) if lowest is not None else ''}-{_plain(highest) if highest is not None else ''}"
        return f"outside the possible range: {span} {unit}"
    return None


def _plain(number: float) -> str:
    return f"{number:g}"


def _misdated(when: datetime | None, scope: Scope | None) -> str | None:
    if when is None:
        return "no date"
    if when.year < EARLIEST_YEAR:
        return "dated before the patient's birth"  # whoever the patient is (and reckoning from it could overflow)
    if scope is None:
        return None
    if scope.patient.birth_date is not None and (scope.patient.birth_date - when.date()) > DATE_TOLERANCE:
        return "dated before the patient's birth"
    if when > scope.now + DATE_TOLERANCE:
        return "dated in the future"
    return None


def read_observation(observation: dict[str, Any], scope: Scope | None = None) -> list[LabResult]:
    """The known lab results in one Observation: its own value and those of its components (a panel)."""
    known = analytes()
    parts: list[tuple[Analyte, dict[str, Any], str | None]] = []
    ident = string(observation, "id")
    top = _analyte(untyped(observation, "code"), known)
    if top is not None:
        parts.append((top, observation, ident))
    for index, component in enumerate(array(observation, "component")):
        found = _analyte(untyped(component, "code"), known)
        if found is not None:
            parts.append((found, component, f"{ident}#component{index}" if ident else None))
    if not parts:
        return []
    status = string(observation, "status")
    problem = None
    if status is None:
        problem = "the status cannot be read"
    elif status not in COUNTED and status not in PRELIMINARY:
        return []  # registered, cancelled, entered-in-error...: not a result
    when = observation_time(observation)
    issued = parse_datetime(string(observation, "issued"))
    corrected = status in ("amended", "corrected")
    return [
        _read_result(
            analyte,
            element,
            when=when,
            preliminary=problem is None and status in PRELIMINARY,
            resource_id=part_id,
            scope=scope,
            problem=problem,
            issued=issued,
            corrected=corrected,
        )
        for analyte, element, part_id in parts
    ]


def _same_value(a: LabResult, b: LabResult) -> bool:
    return (a.value, a.comparator, a.unit, a.raw_text) == (b.value, b.comparator, b.unit, b.raw_text)


def settle_versions(results: Iterable[LabResult]) -> list[LabResult]:
    """One result per measurement, oldest first. Results of one analyte at the same time are one specimen: an amended
    or corrected version replaces the earlier ones (the version issued last, a correction before an original issued
    at the same moment); without a correction, copies with the same value (one result sent by two sources) count
    once. Different values, none corrected, with different ``issued`` times: the one issued last is a re-issue and
    replaces the other; with no ``issued`` to tell them apart they stay apart (which is right cannot be told)."""
    groups: dict[tuple[str, datetime], list[LabResult]] = {}
    settled: list[LabResult] = []
    for result in results:
        if result.when is None:
            settled.append(result)
        else:
            groups.setdefault((result.analyte, result.when), []).append(result)
    floor = datetime.min.replace(tzinfo=UTC)
    for group in groups.values():
        if len(group) == 1:
            settled.append(group[0])
        elif any(r.corrected for r in group):
            # an amended or corrected version wins, even one that gives no issued time; among them the latest
            settled.append(max(group, key=lambda r: (r.corrected, r.issued or floor)))
        elif len({r.issued for r in group}) == len(group) and all(r.issued for r in group):
            settled.append(max(group, key=lambda r: r.issued))  # re-issued as a new final: the later one
        else:
            kept: list[LabResult] = []
            for result in group:
                if not any(_same_value(result, k) for k in kept):
                    kept.append(result)
            settled.extend(kept)
    settled.sort(key=lambda r: r.when or floor)
    return settled


def read_lab_results(
    *values: Any, scope: Scope | None = None, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[LabResult]:
    """Every lab result of the scope's patient in the given prefetch values, oldest first, de-duplicated by
    resource id. ``keep`` is a cheap test run before an Observation is parsed: what it rejects is never parsed."""
    seen: set[str] = set()
    results: list[LabResult] = []
    for value in values:
        for _, observation in entries(value, "Observation", keep):
            if scope is not None and not scope.owns(observation):
                continue  # before de-duplication: another patient's resource must not hide one of this patient's
            ident = string(observation, "id")
            if ident is not None:
                if ident in seen:
                    continue
                seen.add(ident)
            results.extend(read_observation(observation, scope))
    results.sort(key=lambda r: r.when or datetime.min.replace(tzinfo=UTC))
    return results


def _concept_parts(concept: Any) -> tuple[list[tuple[str | None, str]], list[str]]:
    if not isinstance(concept, dict):
        return [], []
    codings = objects(concept, "coding")
    texts = [t for t in [string(concept, "text"), *(string(c, "display") for c in codings)] if t is not None]
    pairs = [(canonical_system(string(c, "system")), string(c, "code")) for c in codings]
    # A code with blanks around it (" 904399 ", which FHIR's code type does not allow) is read as the code.
    return [(system, code.strip()) for system, code in pairs if code is not None], texts


def _record_dates(resource: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """(start, end) this record gives for the drug: a statement's effective period, a request's authoring date (and
    the end of its validity period), a dispense's hand-over. ``dateAsserted`` is when a statement was written down,
    not when the drug started."""
    kind = string(resource, "resourceType")
    if kind == "MedicationStatement":
        period = obj(resource, "effectivePeriod")
        start = plausible_datetime(string(period, "start")) or plausible_datetime(string(resource, "effectiveDateTime"))
        return start, plausible_datetime(string(period, "end"))
    if kind == "MedicationRequest":
        validity = obj(obj(resource, "dispenseRequest"), "validityPeriod")
        return plausible_datetime(string(resource, "authoredOn")), plausible_datetime(string(validity, "end"))
    if kind == "MedicationAdministration":
        period = obj(resource, "effectivePeriod")
        return plausible_datetime(string(resource, "effectiveDateTime")) or plausible_datetime(
            string(period, "start")
        ), None
    handed_over = plausible_datetime(string(resource, "whenHandedOver"))
    return handed_over or plausible_datetime(string(resource, "whenPrepared")), None


NOT_AN_ORDER = {"proposal", "plan", "option"}  # MedicationRequest intents that order nothing
VOID = {"entered-in-error", "cancelled", "revoked"}


def _meaning(resource: dict[str, Any], drafts: bool) -> str | None:
    """current | history | draft, or None when the record says nothing about taking the drug."""
    status = string(resource, "status")
    if untyped(resource, "doNotPerform") is True:
        return None  # an instruction not to give the drug
    if drafts:  # the hook context's draft orders are being ordered now, whatever status the EHR sent
        return None if status in VOID else "draft"
    kind = string(resource, "resourceType")
    if kind == "MedicationRequest" and string(resource, "intent") in NOT_AN_ORDER:
        return None
    if kind in ("MedicationDispense", "MedicationAdministration") and status not in ("completed", "in-progress"):
        return None  # a dose handed over or given (as evidence of exposure); not-done, stopped... are not
    return MED_STATUS.get(status) if status else None


def medication_index(values: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Medication resources by every reference that can name them: ``Medication/id``, the Bundle entry's
    ``fullUrl`` (``urn:uuid:...`` for unsaved drafts, or an absolute URL)."""
    index: dict[str, dict[str, Any]] = {}
    for value in values:
        for full_url, resource in entries(value, "Medication"):
            if (ident := string(resource, "id")) is not None:
                index[f"Medication/{ident}"] = resource
            if isinstance(full_url, str):
                index[full_url] = resource
    return index


def read_medications(
    values: Iterable[Any],
    scope: Scope | None = None,
    resolve: Callable[[str], dict[str, Any] | None] | None = None,
    *,
    drafts: bool = False,
) -> list[Medication]:
    """Medication records (statements, requests, dispenses) of the scope's patient that match a value set.

    ``drafts`` reads the hook context's draft orders: they are the context patient's unless they name another
    patient (:meth:`Scope.owns`), and count as drafts whatever their status. Otherwise a record is current only
    while it is active, its effective or validity period has not ended, it did not start in the future, and the
    patient is alive. A request that is only a proposal or plan, or says not to give the drug, is not a record of
    taking it. A record whose Medication cannot be read is noted in ``scope.unresolved``.
    """
    values = list(values)
    found: list[Medication] = []
    pool = [r for value in values for r in resources(value)]
    medications = medication_index(values)
    for resource in pool:
        kind = string(resource, "resourceType")
        if kind not in MEDICATION_RECORDS:
            continue
        meaning = _meaning(resource, drafts)
        if meaning is None:
            continue
        if scope is not None and not scope.owns(resource, unnamed_ok=drafts):
            continue
        ident = string(resource, "id")
        reference = f"{kind}/{ident}" if ident is not None else None
        concept = untyped(resource, "medicationCodeableConcept")
        if concept is None:
            concept = _referenced_code(resource, medications, resolve)
            if concept is None and scope is not None and "medicationReference" in resource:
                scope.unresolved.append(reference or kind)
        codings, texts = _concept_parts(concept)
        match = match_medication(codings, texts)
        if not match.groups:
            continue
        start, end = _record_dates(resource)
        if scope is not None and meaning != "draft":
            if start is not None and start > scope.now + DATE_TOLERANCE:
                continue  # planned, not taken: neither current nor evidence of exposure
            if meaning == "current" and (scope.patient.deceased or (end is not None and end < scope.now)):
                meaning = "history"
        found.append(
            Medication(
                groups=match.groups,
                tier=match.tier,
                name=" ".join((texts[0] if texts else match.display or "unnamed medication").split())[:80],
                status=meaning,
                start=start,
                end=end,
                reference=reference,
                matched_by=match.matched_by,
                ingredient=match.ingredient,
                record=kind,
                oncology="denosumab_oncology" in match.groups,
                asserted=plausible_datetime(string(resource, "dateAsserted")),
            )
        )
    return found


def _referenced_code(
    resource: dict[str, Any],
    medications: dict[str, dict[str, Any]],
    resolve: Callable[[str], dict[str, Any] | None] | None,
) -> Any:
    """The drug a ``medicationReference`` names: the Medication's code (or, without one, its first ingredient's
    concept), from the contained resources, the request's Medications or the FHIR server; failing all of them the
    reference's own ``display`` ("Prolia 60 mg/mL syringe"), read as text. None when nothing names the drug."""
    element = obj(resource, "medicationReference")
    reference = string(element, "reference")
    display = nonempty(element, "display")
    target = None
    if reference is not None and reference.startswith("#"):
        target = next((c for c in objects(resource, "contained") if string(c, "id") == reference[1:]), None)
    elif reference is not None and reference in medications:
        target = medications[reference]
    elif reference is not None and resolve is not None and reference.startswith("Medication/"):
        target = resolve(reference)
        target = target if string(target, "resourceType") == "Medication" else None
    concept = _medication_concept(target) if target is not None else None
    if concept is None and display is not None:
        return {"text": display}
    return concept


def _medication_concept(medication: Any) -> Any:
    """A Medication's code, or, when it has none, the concept of its first ingredient (``itemCodeableConcept``)."""
    code = untyped(medication, "code")
    if isinstance(code, dict) and code:
        return code
    for ingredient in objects(medication, "ingredient"):
        item = obj(ingredient, "itemCodeableConcept")
        if item:
            return item
    return code

"""Reading total ALP the way a careful clinician would: which lower limit applies, and which results are low."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.clinical.codes import alp_reference_bands
from service.clinical.facts import LabResult, Patient

TOTAL_ALP = "alp_total"


@dataclass(frozen=True)
class AlpReading:
    """A total ALP result judged against the limit that applies to it."""

    result: LabResult
    low_limit: float | None
    limit_source: str
    low: bool | None  # None: could not be judged (unknown unit, no time, no limit)

    @property
    def value(self) -> float | None:
        return self.result.value


def table_limit(patient: Patient, result: LabResult) -> tuple[float, str] | None:
    """Lower limit from the built-in CALIPER-based table for the patient's age and sex at the time of the test."""
    bands = alp_reference_bands()
    age_days = patient.age_days(result.when) if result.when else None
    if age_days is None:
        adult = [b for b in bands if b.to_days == float("inf")]
        return min(b.low for b in adult), "adult lower limit (birth date unknown), CALIPER"
    if age_days < 0:
        return None
    matching = [b for b in bands if b.from_days <= age_days < b.to_days and b.sex in ("any", patient.gender)]
    if not matching:  # sex unknown or other in a sex-specific band: the lower limit is the less alarming one
        matching = [b for b in bands if b.from_days <= age_days < b.to_days]
    band = min(matching, key=lambda b: b.low)
    return band.low, "age- and sex-specific reference interval (CALIPER)"


def lower_limit(patient: Patient, result: LabResult, settings: Mapping[str, Any]) -> tuple[float | None, str]:
    """The lab's own range first, then the site's adult limit, then the built-in table."""
    if result.low is not None:
        return result.low, "the lab's reference range"
    site: Mapping[str, float] = settings.get("ALP_SITE_LOW_LIMITS") or {}
    age = patient.age_years(result.when) if result.when else None
    if site and age is not None and age >= settings["ADULT_AGE"]:
        value = site.get(patient.gender or "") or min(site.values())
        return value, "the site's lower limit"
    from_table = table_limit(patient, result)
    if from_table is None:
        return None, "no limit applies"
    return from_table


def judge(patient: Patient, result: LabResult, settings: Mapping[str, Any]) -> AlpReading:
    limit, source = lower_limit(patient, result, settings)
    if result.value is None or result.when is None:
        return AlpReading(result, limit, source, None)
    if result.low is None and result.flag in ("low", "normal", "high"):
        # The lab flagged it without sending a range: its judgement is the lab's reference range.
        return AlpReading(result, limit, "the lab's flag", result.flag == "low")
    return AlpReading(result, limit, source, None if limit is None else result.value < limit)


def total_alp_readings(patient: Patient, results: Sequence[LabResult], settings: Mapping[str, Any]) -> list[AlpReading]:
    """Total ALP results only (bone and liver isoenzymes are never compared with total-ALP limits), oldest first."""
    return [judge(patient, r, settings) for r in results if r.analyte == TOTAL_ALP]


def low_run(readings: Sequence[AlpReading]) -> list[AlpReading]:
    """The low results since the last normal one; empty when the latest judged result is normal."""
    judged = [r for r in readings if r.low is not None]
    run: list[AlpReading] = []
    for reading in reversed(judged):
        if not reading.low:
            break
        run.append(reading)
    run.reverse()
    return run

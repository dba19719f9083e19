"""Typed, normalised facts the rules work on. Built by ``service.fhir.readers`` from FHIR JSON."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Patient:
    id: str
    birth_date: date | None = None
    gender: str | None = None  # FHIR administrative gender: male | female | other | unknown

    def age_years(self, when: datetime | date) -> float | None:
        if self.birth_date is None:
            return None
        day = when.date() if isinstance(when, datetime) else when
        return (day - self.birth_date).days / 365.25

    def age_days(self, when: datetime | date) -> int | None:
        if self.birth_date is None:
            return None
        day = when.date() if isinstance(when, datetime) else when
        return (day - self.birth_date).days


@dataclass(frozen=True)
class LabResult:
    """One quantitative lab result in the analyte's canonical unit (``value`` is None when the unit is unknown)."""

    analyte: str
    loinc: str
    display: str
    when: datetime | None
    value: float | None
    unit: str  # canonical unit of the analyte, or the raw unit when it could not be converted
    raw_value: float | None = None
    raw_unit: str | None = None
    low: float | None = None  # the lab's referenceRange.low, converted to the canonical unit
    high: float | None = None
    flag: str | None = None  # "low" | "high" | "normal" from Observation.interpretation
    preliminary: bool = False
    resource_id: str | None = None

    @property
    def unit_unknown(self) -> bool:
        return self.value is None and self.raw_value is not None

    def is_low(self, fallback_low: float | None = None) -> bool | None:
        """Low against the lab's range or flag, else ``fallback_low``; None when it cannot be judged."""
        if self.value is None:
            return None
        if self.low is not None:
            return self.value < self.low
        if self.flag is not None:
            return self.flag == "low"
        if fallback_low is not None:
            return self.value < fallback_low
        return None

    def is_high(self, fallback_high: float | None = None) -> bool | None:
        if self.value is None:
            return None
        if self.high is not None:
            return self.value > self.high
        if self.flag is not None:
            return self.flag == "high"
        if fallback_high is not None:
            return self.value >= fallback_high
        return None


@dataclass(frozen=True)
class Medication:
    """A medication the patient takes, took, or is being ordered, matched against the value sets."""

    groups: frozenset[str]  # value-set groups it belongs to, e.g. {"bisphosphonate"}
    tier: str | None  # strongest tier among its groups, e.g. "strong"
    name: str
    status: str  # current | history | draft
    start: datetime | None = None
    reference: str | None = None  # e.g. "MedicationRequest/abc"
    matched_by: str = "code"  # code | atc | text

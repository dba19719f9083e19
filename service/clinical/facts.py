"""Typed, normalised facts the rules work on. Built by ``service.fhir.readers`` from FHIR JSON.

A fact that reaches the rules is already this patient's, dated, plausible, in the analyte's canonical unit, and
carries the limits it is judged against with where they came from. A result that fails one of those checks is kept
with ``value=None`` and a ``problem`` so that a card can name it instead of ignoring it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Patient:
    id: str
    birth_date: date | None = None
    gender: str | None = None  # FHIR administrative gender: male | female | other | unknown
    deceased: bool = False
    deceased_at: datetime | None = None  # None when deceased without a date (deceasedBoolean)
    name: str | None = None  # as the record writes it (Patient.name: the official one, else the first)

    def age_years(self, when: datetime | date) -> int | None:
        """Completed years on that day, as a birthday counts them."""
        return self.age_in("y", when)

    def age_in(self, unit: str, when: datetime | date) -> int | None:
        """Completed days (``d``), months (``m``) or years (``y``) of age on the day of ``when`` (calendar age: a
        band "from 18 years" starts on the 18th birthday)."""
        if self.birth_date is None:
            return None
        day = when.date() if isinstance(when, datetime) else when
        birth = self.birth_date
        if unit == "d":
            return (day - birth).days
        months = (day.year - birth.year) * 12 + day.month - birth.month - (1 if day.day < birth.day else 0)
        return months if unit == "m" else months // 12 if months >= 0 else -((-months + 11) // 12)


# Where a limit came from (the card names it).
LAB_RANGE = "the lab's reference range"
LAB_FLAG = "the lab's flag"


def _below(value: float, comparator: str | None, limit: float) -> bool | None:
    """Is the true value below ``limit``? A result reported as "<20" is below 20; None when it cannot be told."""
    if comparator is None:
        return value < limit
    if comparator == "<":
        return True if value <= limit else None
    if comparator == "<=":
        return True if value < limit else None
    return False if value >= limit else None  # ">" or ">=": the true value is at least ``value``


def _above(value: float, comparator: str | None, limit: float) -> bool | None:
    if comparator is None:
        return value > limit
    if comparator == ">":
        return True if value >= limit else None
    if comparator == ">=":
        return True if value > limit else None
    return False if value <= limit else None  # "<" or "<=": the true value is at most ``value``


@dataclass(frozen=True)
class LabResult:
    """One lab result in the analyte's canonical unit, with the limits that apply to it.

    ``value`` is None when the result cannot be used; ``problem`` then says why (unit not recognised, no number,
    outside the possible range, no date...). ``low``/``high`` are the lab's own range, or, when the lab sent neither
    a range nor a flag, the fallback reference interval for the patient's age and sex (``low_source``/``high_source``
    say which).
    """

    analyte: str
    loinc: str
    display: str
    when: datetime | None
    value: float | None
    unit: str  # canonical unit of the analyte, or the raw unit when it could not be converted
    raw_value: float | None = None
    raw_unit: str | None = None
    raw_text: str | None = None  # the value as the lab wrote it, e.g. "<20" or "see report"
    comparator: str | None = None  # "<", "<=", ">", ">=" (the true value is beyond ``value``)
    low: float | None = None
    high: float | None = None
    low_source: str | None = None
    high_source: str | None = None
    flag: str | None = None  # "low" | "high" | "normal" from Observation.interpretation
    preliminary: bool = False
    resource_id: str | None = None
    problem: str | None = None
    issued: datetime | None = None  # when the lab released this version (Observation.issued)
    corrected: bool = False  # status amended or corrected: a later version of an earlier result
    # For a child's total ALP judged by the lab's own range: the age- and sex-specific lower limit (CALIPER), when
    # the lab's limit is far below it (an adult range applied to a child; ``age_low_source`` names it).
    age_low: float | None = None
    age_low_source: str | None = None
    age_band_low: float | None = None  # a child's CALIPER lower limit for age and sex, whether or not it judges

    @property
    def usable(self) -> bool:
        return self.value is not None and self.when is not None

    @property
    def shown_value(self) -> str:
        """The value as a clinician should read it: with its comparator, or the lab's own text."""
        if self.value is None:
            if self.raw_text is not None:
                return self.raw_text
            return "no value" if self.raw_value is None else number_text(self.raw_value)
        return f"{self.comparator or ''}{number_text(self.value)}"

    def is_low(self) -> bool | None:
        """Below the lower limit (the lab's, else the lab's flag, else the fallback); None when it cannot be judged.
        A child's ALP judged by a lab range that looks adult is also low when it is below the limit for age and sex
        (``age_low``)."""
        if self.value is None:
            return None
        if self.age_low is not None and _below(self.value, self.comparator, self.age_low):
            return True
        if self.low is not None:
            return _below(self.value, self.comparator, self.low)
        if self.flag is not None:
            return self.flag == "low"
        return None

    @property
    def low_for_age_only(self) -> bool:
        """Low only against the limit for age and sex, not against the lab's own (adult-looking) range."""
        if self.age_low is None or self.value is None or not _below(self.value, self.comparator, self.age_low):
            return False
        if self.low is not None and self.low_source == LAB_RANGE:
            lab = _below(self.value, self.comparator, self.low)
        else:
            lab = self.flag == "low"
        return not lab

    def is_high(self) -> bool | None:
        if self.value is None:
            return None
        if self.high is not None:
            return _above(self.value, self.comparator, self.high)
        if self.flag is not None:
            return self.flag == "high"
        return None

    def at_least(self, threshold: float) -> bool:
        """The true value is certainly at or above ``threshold`` (a sourced decision limit, not a reference limit)."""
        if self.value is None or self.comparator in ("<", "<="):
            return False
        return self.value >= threshold


def number_text(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


@dataclass(frozen=True)
class Medication:
    """A medication the patient takes, took, or is being ordered, matched against the value sets."""

    groups: frozenset[str]  # value-set groups it belongs to, e.g. {"bisphosphonate"}
    tier: str | None  # strongest tier among its groups, e.g. "strong"
    name: str  # as the record names it
    status: str  # current | history | draft
    start: datetime | None = None  # when this record says the drug was started, ordered, given or handed over
    end: datetime | None = None  # when this record says the course ended (a statement's period, a request's validity)
    reference: str | None = None  # e.g. "MedicationRequest/abc"
    matched_by: str = "code"  # code | atc | text
    ingredient: str | None = None  # e.g. "alendronate"
    record: str = "MedicationStatement"  # the resource type: a dose given (administration) or handed over (dispense)
    # is evidence of a dose on ``start``; a request or statement is evidence of a course
    oncology: bool = False  # a product for bone metastases (denosumab 120 mg, Xgeva): another dosing schedule
    asserted: datetime | None = None  # when a statement was written down (dateAsserted), which may be after ``start``

    @property
    def known(self) -> datetime | None:
        """When the chart came to show this record: its start, or when it was written down if that was later (a
        medication list reconciled today can record a drug started months ago)."""
        dates = [d for d in (self.start, self.asserted) if d is not None]
        return max(dates) if dates else None

    @property
    def dose(self) -> bool:
        """The record is a dose given or handed over (not a prescription or a statement of use)."""
        return self.record in ("MedicationAdministration", "MedicationDispense")

    @property
    def last_recorded(self) -> datetime | None:
        """The latest date this record gives for the drug: the end of its course when it has one, else its start."""
        dates = [d for d in (self.start, self.end) if d is not None]
        return max(dates) if dates else None


@dataclass(frozen=True)
class Diagnosis:
    """A Condition of the patient that belongs to a group the rules read (``data/conditions.csv``), or a Procedure
    the patient had that lowers ALP for a while (group ``acute_event``, ``data/procedures.csv``: onset is its date)."""

    group: str  # hpp | pregnancy | postpartum | fracture | ckd_severe | alp_raising | acute_event
    kind: str  # within the group, e.g. "paget", "bone_metastases", "cholestasis", "stress", "atypical_femoral"
    name: str  # as the record names it (text, else the display)
    active: bool  # clinicalStatus active, recurrence or relapse, or none given; False: inactive, remission, resolved
    confirmed: bool  # verificationStatus confirmed or none given; False: provisional, differential, unconfirmed
    onset: datetime | None = None
    abatement: datetime | None = None
    recorded: datetime | None = None
    matched_by: str = "code"  # code | text


@dataclass(frozen=True)
class PregnancyEvidence:
    """An Observation about a pregnancy: the status on a day (pregnant or not), an estimated due date, or the date of
    a delivery (``data/context_observations.csv``)."""

    kind: str  # status | due_date | delivery_date
    when: datetime  # when it was observed
    pregnant: bool | None = None  # for a status
    date: datetime | None = None  # the due date or the delivery date

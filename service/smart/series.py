"""The ALP history as chart series: facts in, series out. Pure (no I/O, no Flask, no HTTP), like the rules.

Everything here is drawn from what the service already decides: the ALP results the reading step judged
(``service.fhir.readers``, ``service.clinical.alp``), the limit each was judged against (``views.display_row``), the
fallback lower limit for age and sex (``service.clinical.limits``, evaluated at every band boundary of
``data/reference_intervals.csv``) and the antiresorptive records (``service.clinical.medications``).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import Any

from service.clinical.alp import TOTAL_ALP, is_current, total_alp, unusable
from service.clinical.chart import Chart
from service.clinical.codes import reference_bands
from service.clinical.facts import LAB_RANGE, LabResult, Medication, Patient
from service.clinical.limits import fallback_limits
from service.clinical.medications import is_antiresorptive
from service.clinical.samples import Contamination
from service.clinical.views import display_row
from service.settings import ClinicalSettings

# The related labs of the workup the page tabulates (issue 18): secondary causes, HPP substrates, Wilson's bilirubin.
WORKUP_ANALYTES = ("zinc", "magnesium", "tsh", "plp", "pea_urine", "bilirubin_total")
WORKUP_SHOWN = 3  # latest results per analyte in the table
ADJACENT = timedelta(days=1)  # a record starting within a day of the last one's end continues the course


@dataclass(frozen=True)
class AlpPoint:
    when: datetime
    value: float  # canonical U/L; for "<20" the 20
    shown: str  # as a clinician reads it: "<20", "35"
    low: bool
    high: bool  # above the upper limit it was judged against (``LabResult.is_high``, as the rules judge it)
    limit: float | None  # the lower limit it was judged against
    limits: str  # that limit in words, with its source
    lab_low: float | None  # the lab's own referenceRange, where it sent one
    lab_high: float | None
    age: str | None  # age at the test, "12 y" / "7 mo"
    preliminary: bool
    history: bool  # older than ALP_CURRENT_DAYS: shown, never a reason for advice today
    by_flag: bool = False  # judged by the lab's flag alone (no range): may sit on either side of the drawn line
    set_aside: str | None = None  # why the rules do not count it (a possibly contaminated sample), in words

    @property
    def status(self) -> str:
        """low | high | normal: the judgement the chart colours and the table states."""
        return "low" if self.low else "high" if self.high else "normal"


@dataclass(frozen=True)
class LimitStep:
    """The fallback lower limit for the patient's age and sex over [start, end)."""

    start: date
    end: date
    low: float
    label: str


@dataclass(frozen=True)
class DrugPeriod:
    name: str  # ingredient (or the record's name)
    start: datetime
    end: datetime  # now, while it is current
    ongoing: bool
    records: tuple[datetime, ...]  # every dated record (start, renewals): the markers


@dataclass(frozen=True)
class Unplotted:
    date: str
    value: str
    reason: str


@dataclass(frozen=True)
class WorkupRow:
    display: str
    date: str
    value: str
    unit: str
    limits: str
    judgement: str  # low | high | normal | not judged | not used: <reason>
    suspect: bool = False  # drawn with an ALP the rules set aside as a possibly contaminated sample


@dataclass(frozen=True)
class AlpSeries:
    points: tuple[AlpPoint, ...]
    steps: tuple[LimitStep, ...]
    periods: tuple[DrugPeriod, ...]
    undated_drugs: tuple[str, ...]  # antiresorptives on record without a date: listed, not drawn
    unplotted: tuple[Unplotted, ...]  # ALP results that could not be used or judged, with the reason
    workup: tuple[WorkupRow, ...]
    start: date
    end: date


def build_series(
    patient: Patient,
    labs: Sequence[LabResult],
    medications: Sequence[Medication],
    now: datetime,
    settings: ClinicalSettings,
) -> AlpSeries:
    judged = total_alp(labs)
    judged_ids = {id(r) for r in judged}  # a set of ids: a list membership test made this quadratic
    # The rules' own view of this chart: which samples they set aside (possible EDTA contamination), never a copy.
    rules = Chart(patient=patient, labs=labs, medications=medications, now=now, settings=settings)
    contamination = rules.contamination
    points = tuple(_point(patient, r, now, settings, contamination.get(id(r))) for r in judged)
    periods, undated = drug_periods(medications, now)
    dates = [p.when.date() for p in points] + [p.start.date() for p in periods]
    end = now.date()
    start = min(dates) if dates else end - timedelta(days=365)
    start = min(start, end - timedelta(days=30)) - timedelta(days=max((end - start).days // 40, 7))
    if patient.birth_date is not None:
        start = max(start, patient.birth_date)
    unplotted = tuple(
        Unplotted(display_row(r)["date"], r.shown_value, unusable(r) or "not judged")
        for r in labs
        if r.analyte == TOTAL_ALP and id(r) not in judged_ids
    )
    return AlpSeries(
        points=points,
        steps=tuple(limit_steps(patient, start, end, settings)),
        periods=tuple(periods),
        undated_drugs=tuple(undated),
        unplotted=unplotted,
        workup=tuple(workup_rows(labs, rules.suspect)),
        start=start,
        end=end,
    )


def set_aside_text(found: Contamination) -> str:
    """Why the rules set a result aside, in the words of the card that says so (``sample-contamination``)."""
    potassium, calcium = found.potassium, found.calcium
    return (
        f"set aside: possible EDTA contamination (potassium {potassium.shown_value} {potassium.unit} and a low "
        f"calcium, {calcium.shown_value} {calcium.unit}, on the same draw); recollect. Not counted by the advice."
    )


def _point(
    patient: Patient, result: LabResult, now: datetime, settings: ClinicalSettings, found: Contamination | None = None
) -> AlpPoint:
    return AlpPoint(
        when=result.when,
        value=result.value,
        shown=result.shown_value,
        low=bool(result.is_low()),
        high=bool(result.is_high()) and not result.is_low(),
        limit=result.low,
        limits=display_row(result)["limits"],
        lab_low=result.low if result.low_source == LAB_RANGE else None,
        lab_high=result.high if result.high_source == LAB_RANGE else None,
        age=age_text(patient, result.when),
        preliminary=result.preliminary,
        history=not is_current(result, now, settings),
        by_flag=judged_by_flag(result),
        set_aside=set_aside_text(found) if found is not None else None,
    )


def judged_by_flag(result: LabResult) -> bool:
    """The judgement came from the lab's flag (``LabResult.is_low``/``is_high`` fall back to it when the lab sent no
    limit on that side): no line on the chart is what it was judged against."""
    if result.flag is None:
        return False
    return result.low is None or (bool(result.is_high()) and not result.is_low() and result.high is None)


def age_text(patient: Patient, when: datetime | date) -> str | None:
    years = patient.age_years(when)
    if years is None or years < 0:
        return None
    if years >= 2:
        return f"{years} y"
    return f"{patient.age_in('m', when)} mo"


def _add_months(day: date, months: int) -> date:
    """The first day on which ``months`` calendar months have passed since ``day`` (as ``Patient.age_in`` counts
    them: a birthday on the 31st reaches the next month on the 1st of the month after)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    if day.day <= calendar.monthrange(year, month)[1]:
        return date(year, month, day.day)
    year, month = divmod(index + 1, 12)
    return date(year, month + 1, 1)


def _age_date(birth: date, age: tuple[int, str]) -> date:
    amount, unit = age
    if unit == "d":
        return birth + timedelta(days=amount)
    return _add_months(birth, amount * (12 if unit == "y" else 1))


def limit_steps(patient: Patient, start: date, end: date, settings: ClinicalSettings) -> list[LimitStep]:
    """The fallback lower limit of total ALP for this patient from ``start`` to ``end``: one step per age band (and
    the site's adult limit from ``ADULT_AGE``, when set), each asked of ``fallback_limits`` itself."""
    changes = {start}
    if patient.birth_date is not None:
        ages = [b.age_from for b in reference_bands().get(TOTAL_ALP, ())]
        ages += [b.age_to for b in reference_bands().get(TOTAL_ALP, ()) if b.age_to is not None]
        ages.append((int(settings.ADULT_AGE), "y"))
        changes |= {d for d in (_age_date(patient.birth_date, a) for a in ages) if start < d < end}
    days = sorted(changes)
    steps: list[LimitStep] = []
    for i, day in enumerate(days):
        stop = days[i + 1] if i + 1 < len(days) else end
        limits = fallback_limits(TOTAL_ALP, patient, datetime.combine(day, clock(12), tzinfo=UTC), settings)
        if limits is None or limits.low is None:
            continue
        if steps and steps[-1].low == limits.low and steps[-1].label == limits.source and steps[-1].end == day:
            steps[-1] = LimitStep(steps[-1].start, stop, limits.low, limits.source)
        else:
            steps.append(LimitStep(day, stop, limits.low, limits.source))
    return steps


def drug_periods(medications: Sequence[Medication], now: datetime) -> tuple[list[DrugPeriod], list[str]]:
    """The courses of each antiresorptive (by ingredient): a record covers its start to its end (to now while it is
    current, its start alone when it has no end); records that overlap or touch (the next starts at most a day after
    one ends, as a renewal does) are one course, and a gap is a drug holiday: a new period. Every dated record is a
    marker. Draft orders are not periods."""
    groups: dict[str, list[Medication]] = {}
    for medication in medications:
        if medication.status != "draft" and is_antiresorptive(medication):
            groups.setdefault(medication.ingredient or medication.name, []).append(medication)
    periods, undated = [], []
    for name, records in sorted(groups.items()):
        spans = sorted(
            (m.start, now if m.status == "current" else max(min(m.end or m.start, now), m.start), m.status == "current")
            for m in records
            if m.start is not None
        )
        if not spans:
            undated.append(name)
            continue
        courses: list[list[Any]] = []
        for start, end, current in spans:
            if courses and start <= courses[-1][1] + ADJACENT:
                course = courses[-1]
                course[1], course[2] = max(course[1], end), course[2] or current
                course[3].add(start)
            else:
                courses.append([start, end, current, {start}])
        for start, end, current, starts in courses:
            periods.append(DrugPeriod(name, start, end, current, tuple(sorted(starts))))
    return periods, undated


def workup_rows(labs: Sequence[LabResult], suspect: frozenset[int] = frozenset()) -> list[WorkupRow]:
    """The latest results of the workup analytes, each with the limit it was judged against; ``suspect`` holds the
    ``id`` of results from a draw the rules set aside (``Chart.suspect``)."""
    rows = []
    for analyte in WORKUP_ANALYTES:
        results = [r for r in labs if r.analyte == analyte and r.when is not None]
        for result in sorted(results, key=lambda r: r.when, reverse=True)[:WORKUP_SHOWN]:
            shown = display_row(result)
            rows.append(
                WorkupRow(
                    display=result.display,
                    date=shown["date"],
                    value=shown["value"],
                    unit=result.unit if result.value is not None else (result.raw_unit or ""),
                    limits=shown["limits"],
                    judgement=_judgement(result),
                    suspect=id(result) in suspect,
                )
            )
    return rows


def _judgement(result: LabResult) -> str:
    problem = unusable(result)
    if problem is not None:
        return f"not used: {problem}"
    if result.is_low():
        return "low"
    if result.is_high():
        return "high"
    if result.is_low() is False or result.is_high() is False:
        return "normal"
    return "not judged"

"""Treatment as courses: the medication records of one drug put on a timeline (start, last record, doses, breaks).
No I/O, no Flask.

A record's own dates say little alone: a statement gives a start (and perhaps an end), a request the day it was
written, a dispense or an administration the day of a dose. "Last recorded" is therefore the latest date any record
gives (the end of a course, the last dose), never the first start; a break of ``HOLIDAY`` or more between records is
shown as a break (a drug holiday), not as one continuous course.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.clinical.facts import Medication
from service.clinical.medications import is_antiresorptive

ONGOING = datetime.max.replace(tzinfo=UTC)
HOLIDAY = timedelta(days=365)  # a year or more between records is a break in treatment (design choice)
COURSE_GROUPS = ("teriparatide",)  # besides the antiresorptives: drugs whose timing the rules read


@dataclass(frozen=True)
class Course:
    """One drug (by ingredient) over time."""

    drug: str  # the ingredient, or the record's own name
    groups: frozenset[str]
    start: datetime | None  # the earliest date of any record; None when a record gives no date
    last: datetime | None  # the latest date any record gives (an end, a dose, a prescription)
    current: bool  # a record is current (active, not ended)
    breaks: tuple[tuple[datetime, datetime], ...]  # spans of HOLIDAY or more with no record
    last_dose: datetime | None  # the latest dose given, handed over or prescribed (not a statement's start)
    last_dose_record: str | None  # which kind of record gives it: administration | dispense | prescription
    oncology: bool  # an oncology product (denosumab 120 mg): another dosing schedule

    def covers(self, when: datetime) -> bool:
        """``when`` falls within the course (from its start to its last record, or today while it is current), and
        not in a break."""
        if self.start is None or when < self.start:
            return False
        if not self.current and self.last is not None and when > self.last:
            return False
        return not any(a < when < b for a, b in self.breaks)


RECORD_KIND = {
    "MedicationAdministration": "administration",
    "MedicationDispense": "dispense",
    "MedicationRequest": "prescription",
}


def _dose_date(medication: Medication) -> datetime | None:
    """When this record shows a dose: an administration or dispense on its date, a prescription on the day it was
    written, a statement only when it gives a single date (no period)."""
    if medication.record in RECORD_KIND:
        return medication.start
    if medication.end is None and medication.start is not None and medication.status != "current":
        return medication.start
    return None


def courses(medications: Iterable[Medication]) -> list[Course]:
    """The courses of the antiresorptives (and teriparatide) on the chart, by drug; drafts are not part of any."""
    by_drug: dict[str, list[Medication]] = {}
    for medication in medications:
        if medication.status == "draft":
            continue
        if not (is_antiresorptive(medication) or any(g in medication.groups for g in COURSE_GROUPS)):
            continue
        by_drug.setdefault(medication.ingredient or medication.name, []).append(medication)
    return [_course(drug, records) for drug, records in sorted(by_drug.items())]


def _course(drug: str, records: Sequence[Medication]) -> Course:
    dated = sorted((r for r in records if r.start is not None), key=lambda r: r.start)
    lasts = [r.last_recorded for r in records if r.last_recorded is not None]
    breaks = []
    reach = None
    for record in dated:
        if reach is not None and record.start - reach >= HOLIDAY:
            breaks.append((reach, record.start))
        last = ONGOING if record.status == "current" else record.last_recorded  # a current record runs until today
        reach = last if reach is None or last > reach else reach
    doses = [(d, r) for r in records if (d := _dose_date(r)) is not None]
    last_dose, last_record = max(doses, key=lambda pair: pair[0]) if doses else (None, None)
    return Course(
        drug=drug,
        groups=frozenset().union(*(r.groups for r in records)),
        start=dated[0].start if dated else None,
        last=max(lasts) if lasts else None,
        current=any(r.status == "current" for r in records),
        breaks=tuple(breaks),
        last_dose=last_dose,
        last_dose_record=RECORD_KIND.get(last_record.record, "record") if last_record else None,
        oncology=any(r.oncology for r in records),
    )


def add_months(when: datetime, months: int) -> datetime:
    """The same day ``months`` calendar months later (the last day of a shorter month)."""
    month = when.month - 1 + months
    year, month = when.year + month // 12, month % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31,
            30, 31]  # fmt: skip
    return when.replace(year=year, month=month, day=min(when.day, days[month - 1]))

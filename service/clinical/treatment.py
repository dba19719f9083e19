"""Treatment as courses: the medication records of one drug put on a timeline (start, last record, doses, breaks).
No I/O, no Flask.

A record's own dates say little alone: a statement gives a start (and perhaps an end), a request the day it was
written, a dispense or an administration the day of a dose. "Last recorded" is therefore the latest date any record
gives (the end of a course, the last dose), never the first start; a gap of more than ``HOLIDAY`` between records is
shown as a break (a drug holiday), not as one continuous course.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.clinical.facts import Medication
from service.clinical.medications import is_antiresorptive

ONGOING = datetime.max.replace(tzinfo=UTC)
# More than this between records is a break in treatment (design choice): a year's prescription (one order with
# refills, renewed yearly) followed by at least six months without one.
HOLIDAY = timedelta(days=548)
# How long after its last record a dose still acts, for the drugs given rarely: a yearly zoledronic acid infusion
# (Reclast label: once a year) and a 6-monthly denosumab injection (Prolia label). A low ALP in that time is a low on
# treatment. Others: their last record.
EFFECT = {"zoledronic acid": timedelta(days=365), "denosumab": timedelta(days=183)}
COURSE_GROUPS = ("teriparatide",)  # besides the antiresorptives: drugs whose timing the rules read


@dataclass(frozen=True)
class Course:
    """One drug (by ingredient) over time."""

    drug: str  # the ingredient, or the record's own name
    groups: frozenset[str]
    start: datetime | None  # the earliest date of any record; None when a record gives no date
    last: datetime | None  # the latest date any record gives (an end, a dose, a prescription)
    current: bool  # a record is current (active, not ended)
    breaks: tuple[tuple[datetime, datetime], ...]  # spans of more than HOLIDAY with no record
    last_dose: datetime | None  # the latest dose given, handed over or prescribed (not a statement's start)
    last_dose_record: str | None  # which kind of record gives it: administration | dispense | prescription
    oncology: bool  # an oncology product (denosumab 120 mg): another dosing schedule
    known: datetime | None = None  # when the chart first showed the course (a record's start, or its writing down)

    def covers(self, when: datetime) -> bool:
        """``when`` falls within the course (from its start to its last record, or today while it is current), and
        not in a break."""
        if self.start is None or when < self.start:
            return False
        if not self.current and self.last is not None and when > self.last + EFFECT.get(self.drug, timedelta(0)):
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


def breaks(records: Iterable[Medication]) -> list[tuple[datetime, datetime]]:
    """The spans of more than ``HOLIDAY`` with no record in effect (drug holidays), each from the end of the last
    record before it to the next record's start. A current record runs until today; a yearly infusion or 6-monthly
    injection acts until its next is due (``EFFECT``). Records without a date are left out."""
    found = []
    reach = None
    for record in sorted((r for r in records if r.start is not None), key=lambda r: r.start):
        if reach is not None and record.start - reach > HOLIDAY:
            found.append((reach, record.start))
        acting = EFFECT.get(record.ingredient or record.name, timedelta(0))
        last = ONGOING if record.status == "current" else record.last_recorded + acting
        reach = last if reach is None or last > reach else reach
    return found


def _course(drug: str, records: Sequence[Medication]) -> Course:
    dated = sorted((r for r in records if r.start is not None), key=lambda r: r.start)
    lasts = [r.last_recorded for r in records if r.last_recorded is not None]
    doses = [(d, r) for r in records if (d := _dose_date(r)) is not None]
    # Doses given or handed over, when any are on record, date the last dose: a prescription written since may
    # never have been given (it is a dose only where nothing else records them).
    given = [(d, r) for d, r in doses if r.dose]
    doses = given or doses
    last_dose, last_record = max(doses, key=lambda pair: pair[0]) if doses else (None, None)
    return Course(
        drug=drug,
        groups=frozenset().union(*(r.groups for r in records)),
        start=dated[0].start if dated else None,
        last=max(lasts) if lasts else None,
        current=any(r.status == "current" for r in records),
        breaks=tuple(breaks(records)),
        last_dose=last_dose,
        last_dose_record=RECORD_KIND.get(last_record.record, "record") if last_record else None,
        oncology=any(r.oncology for r in records),
        known=min((k for r in records if (k := r.known) is not None), default=None),
    )


def add_months(when: datetime, months: int) -> datetime:
    """The same day ``months`` calendar months later (the last day of a shorter month)."""
    month = when.month - 1 + months
    year, month = when.year + month // 12, month % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31,
            30, 31]  # fmt: skip
    return when.replace(year=year, month=month, day=min(when.day, days[month - 1]))

"""Antiresorptives and low ALP: pure rules. In HPP, bisphosphonates and denosumab can do harm (atypical femoral
fractures); they also lower ALP themselves, so the order of events matters (reference section 2e; S37, S38, S41).
Denosumab differs from a bisphosphonate when it is stopped: bone loss rebounds and multiple vertebral fractures
follow (addendum 5; Cummings 2018, ECTS 2021), so an established course is never simply cancelled."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from service.clinical.alp import TOTAL_ALP, is_current
from service.clinical.chart import Chart
from service.clinical.codes import workup_tests
from service.clinical.facts import LabResult, Medication
from service.clinical.medications import is_antiresorptive
from service.clinical.rules import Finding, OrderSuggestion, workup
from service.clinical.views import alp_rows, describe_alp, not_interpreted_rows


def _indicator(medications: Sequence[Medication], strong: str, weak: str) -> str:
    return strong if any(m.tier == "strong" for m in medications) else weak


def drug_names(medications: Sequence[Medication]) -> list[str]:
    """Ingredient names (short, and what a clinician says), the record's own name where no ingredient is known."""
    return sorted({m.ingredient or m.name for m in medications})


def first_exposure(medications: Sequence[Medication]) -> datetime | None:
    """When antiresorptive treatment began: the earliest evidence of any antiresorptive (statement start, request,
    dispense), not the latest renewal. Any antiresorptive counts, because each lowers ALP (S41), so an ALP measured
    after any of them is no longer a pre-treatment value. None when a record has no date, since the start then
    cannot be known."""
    starts = [m.start for m in medications if is_antiresorptive(m) and m.status != "draft"]
    if not starts or any(s is None for s in starts):
        return None
    return min(starts)


def treatment_start(chart: Chart) -> datetime | None:
    """``first_exposure`` of the chart's medications, when they could all be read: with a medication search or
    record unread, an earlier start may be missing, and "the ALP was low before treatment" could be false."""
    return first_exposure(chart.medications) if chart.medications_complete else None


def alp_before(chart: Chart, start: datetime | None) -> LabResult | None:
    """The last judged ALP before treatment began, when that start is known: at least a day before the recorded
    start (a start written as a date may be any time that day, in any time zone) and within ``ALP_CURRENT_DAYS``
    of it (an ALP from decades before says little about the patient when treatment began)."""
    if start is None:
        return None
    window = timedelta(days=chart.settings.ALP_CURRENT_DAYS)
    before = [r for r in chart.alp if start - window <= r.when <= start - timedelta(days=1)]
    return before[-1] if before else None


COURSE_RECENT = timedelta(days=365)  # a course ended more than a year ago is not being continued (design choice)


def ongoing_course(chart: Chart, drugs: Sequence[Medication]) -> datetime | None:
    """When the patient's current course of the ordered ingredient(s) began: the earliest record of a course that
    is current, or whose last record is within a year (a denosumab dose is due every 6 months, so a late dose still
    continues the course). None for a first dose, or a restart after a course that ended long ago."""
    ingredients = {m.ingredient for m in drugs if m.ingredient}
    records = [
        m for m in chart.medications if m.status != "draft" and m.ingredient in ingredients and is_antiresorptive(m)
    ]
    since = chart.now - COURSE_RECENT
    recent = [m for m in records if m.status == "current" or ((m.end or m.start) or since) > since]
    if not recent:
        return None
    dated = [m.start for m in records if m.start is not None]
    return min(dated) if dated else chart.now


def order_workup(chart: Chart) -> tuple[list[OrderSuggestion], list[dict]]:
    """The same tier as the low-ALP card would give: a persistent low gets the HPP substrates (recommended) and
    genetics after them; a single low a repeat ALP first, the substrates optional (they are worth having before the
    drug lowers the ALP)."""
    if chart.persistent:
        return workup(chart, ["hpp", "genetic"])
    orders, resulted = workup(chart, ["repeat", "hpp"])
    return [OrderSuggestion(o.test, o.test.group == "repeat") for o in orders], resulted


def review_current(chart: Chart) -> list[Finding]:
    """When (patient-view): the chart has a current run of lows (the latest judged ALP is low and current) while an
    antiresorptive (bisphosphonate, denosumab, romosozumab, raloxifene, calcitonin) is current.
    Then: "antiresorptive-current-low-alp" (warning for a bisphosphonate or denosumab, info for the others):
    exclude HPP; say plainly whether the ALP was already low before treatment began (``alp_before``); for
    denosumab, warn against stopping it without a plan. No tests: the low-ALP card, which always comes with this
    one, carries the workup.
    Not when: no current antiresorptive (an earlier one is named on the low-ALP card as a drug that lowers ALP);
    no current run of lows."""
    drugs = [m for m in chart.medications if m.status == "current" and is_antiresorptive(m)]
    run = chart.current_run
    if not drugs or not run:
        return []
    start = treatment_start(chart)
    before = alp_before(chart, start)
    # The workup is on the low-ALP card, which always comes with this one: this card is about the drug.
    return [
        Finding(
            "antiresorptive-current-low-alp",
            {
                "drugs": drug_names(drugs),
                "denosumab": any("denosumab" in m.groups for m in drugs),
                "start": start.date().isoformat() if start else None,
                "readings": alp_rows(chart, run),
                "latest": describe_alp(chart, run[-1]),
                "before": describe_alp(chart, before) if before else None,
                "low_before": bool(before and before.is_low()),
                "records_incomplete": not chart.medications_complete,
                "persistent": chart.persistent,
            },
            indicator=_indicator(drugs, "warning", "info"),
        )
    ]


def review_order(
    chart: Chart, selected: Sequence[Medication], hpp_documented: bool, unread: Sequence[str] = ()
) -> list[Finding]:
    """When (order-select): a selected order is an antiresorptive.
    Then, the first that applies:
    - HPP documented on the chart (``hpp_documented``) -> "antiresorptive-order-hpp" (critical for a bisphosphonate
      or denosumab, warning for another antiresorptive);
    - no judged ALP, or the latest is older than ``ALP_CURRENT_DAYS`` -> "antiresorptive-order-no-alp": measure a
      current ALP before the drug lowers it (repeat ALP suggested); warning when the last ALP was low and the drug
      is a bisphosphonate or denosumab, info otherwise;
    - a current low ALP -> exclude HPP first: "antiresorptive-order-low-alp", or
      "antiresorptive-order-denosumab-course" when the order continues a denosumab course (warning for a
      bisphosphonate or denosumab, info for the others), with the low-ALP card's tier of tests (``order_workup``).
    The HPP and low-ALP cards offer the antiresorptive orders for removal, except a denosumab order that continues
    an established course (``ongoing_course``): stopping denosumab causes rebound fractures. When the chart's
    medications were not all read (``course_unknown``), no order is called a start or a first dose, and a denosumab
    order (``course_unchecked``) is not offered for removal and is not to be delayed for the workup.
    ``unread``: the selected draft orders whose drug could not be read (an unresolvable ``medicationReference``):
    each card names them as not checked, since any of them may be a bisphosphonate or denosumab.
    Not when: no selected order is an antiresorptive; HPP is not documented and the latest judged ALP is current
    and normal."""
    drugs = [m for m in selected if is_antiresorptive(m)]
    if not drugs:
        return []
    names = drug_names(drugs)
    denosumab = any("denosumab" in m.groups for m in drugs)
    course = ongoing_course(chart, drugs)
    # Without the chart's medications (all of them) any order may continue a course no record shows: the card says
    # "giving", never "starting" or "first dose". For denosumab that dose must not be delayed or removed.
    course_unknown = course is None and not chart.medications_complete
    course_unchecked = denosumab and course_unknown
    # Cancelling the next dose of an established denosumab course is stopping it: not offered as a simple removal.
    deletes = () if (course or course_unchecked) and denosumab else tuple(m.reference for m in drugs if m.reference)
    start = treatment_start(chart)
    before = alp_before(chart, start) if course else None
    common = {
        "drugs": names,
        "strong": any(m.tier == "strong" for m in drugs),
        "denosumab": denosumab,
        "course_start": course.date().isoformat() if course else None,
        "denosumab_course": bool(course and denosumab),
        "course_unknown": course_unknown,
        "course_unchecked": course_unchecked,
        "low_before": bool(before and before.is_low()),
        "before": describe_alp(chart, before) if before else None,
        "unread_orders": list(unread),
    }
    judged = chart.alp
    if hpp_documented:
        return [
            Finding(
                "antiresorptive-order-hpp",
                {**common, "readings": alp_rows(chart, judged, 3)},
                deletes=deletes,
                indicator=_indicator(drugs, "critical", "warning"),
            )
        ]
    if not judged or not is_current(judged[-1], chart.now, chart.settings):
        # No ALP that can drive advice today: ask for a current one before the drug lowers it.
        last = judged[-1] if judged else None
        last_low = bool(last and last.is_low())
        unreadable = chart.not_interpreted(all_alp=True)  # every one, however many the card lists
        return [
            Finding(
                "antiresorptive-order-no-alp",
                {
                    **common,
                    "last": describe_alp(chart, last) if last else None,
                    "last_low": last_low,
                    "current_days": chart.settings.ALP_CURRENT_DAYS,
                    "not_interpreted": not_interpreted_rows(unreadable),
                    "unreadable_alp": any(r.analyte == TOTAL_ALP for r, _ in unreadable),
                },
                (OrderSuggestion(workup_tests()["repeat_alp"]),),
                indicator=_indicator(drugs, "warning", "info") if last_low else "info",
            )
        ]
    run = chart.current_run
    if not run:
        return []
    orders, resulted = order_workup(chart)
    return [
        Finding(
            "antiresorptive-order-denosumab-course" if course and denosumab else "antiresorptive-order-low-alp",
            {
                **common,
                "readings": alp_rows(chart, run),
                "latest": describe_alp(chart, run[-1]),
                "persistent": chart.persistent,
                "latest_suspect": id(run[-1]) in chart.contamination,
                "resulted": resulted,
                "not_interpreted": not_interpreted_rows(chart.not_interpreted()),
            },
            tuple(orders),
            deletes=deletes,
            indicator=_indicator(drugs, "warning", "info"),
        )
    ]

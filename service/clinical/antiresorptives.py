"""Antiresorptives and low ALP: pure rules. In HPP, bisphosphonates and denosumab can do harm (atypical femoral
fractures); they also lower ALP themselves, so the order of events matters (reference section 2e; S37, S38, S41).
Denosumab differs from a bisphosphonate when it is stopped: bone loss rebounds and multiple vertebral fractures
follow (addendum 5; Cummings 2018, ECTS 2021), so an established course is never simply cancelled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from service.clinical.alp import TOTAL_ALP, is_current
from service.clinical.chart import Chart
from service.clinical.codes import thresholds, workup_tests
from service.clinical.facts import Medication
from service.clinical.medications import is_antiresorptive
from service.clinical.rules import (
    Finding,
    OrderSuggestion,
    acute_drop,
    alp_before,
    context_links,
    treatment_start,
    workup,
)
from service.clinical.treatment import add_months
from service.clinical.views import alp_rows, chart_context, describe_alp, not_interpreted_rows, span_text


def _indicator(medications: Sequence[Medication], strong: str, weak: str) -> str:
    return strong if any(m.tier == "strong" for m in medications) else weak


def drug_names(medications: Sequence[Medication]) -> list[str]:
    """Ingredient names (short, and what a clinician says), the record's own name where no ingredient is known."""
    return sorted({m.ingredient or m.name for m in medications})


COURSE_RECENT = timedelta(days=365)  # a course ended more than a year ago is not being continued (design choice)
DENOSUMAB_COURSE = timedelta(days=730)  # a denosumab record this recent: an order is the next dose of a course


def ongoing_course(chart: Chart, drugs: Sequence[Medication]) -> datetime | None:
    """When the patient's current course of the ordered ingredient(s) began: the earliest record of a course that
    is current, or whose last record is within a year (a denosumab dose is due every 6 months, so a late dose still
    continues the course). None for a first dose, or a restart after a course that ended long ago."""
    ingredients = {m.ingredient for m in drugs if m.ingredient}
    records = [
        m for m in chart.medications if m.status != "draft" and m.ingredient in ingredients and is_antiresorptive(m)
    ]
    # A denosumab dose may come late: any record within DENOSUMAB_COURSE still makes an order the course's next dose
    # (never a first start, never offered for removal: stopping it is what causes rebound fractures).
    window = DENOSUMAB_COURSE if any("denosumab" in m.groups for m in drugs) else COURSE_RECENT
    since = chart.now - window
    recent = [m for m in records if m.status == "current" or ((m.last_recorded) or since) > since]
    if not recent:
        return None
    dated = [m.start for m in records if m.start is not None]
    return min(dated) if dated else chart.now


def order_workup(chart: Chart) -> tuple[list[OrderSuggestion], list[dict]]:
    """The same tier as the low-ALP card would give: a persistent low gets the HPP substrates (recommended) and
    genetics after them; a single low a repeat ALP first, the substrates optional (they are worth having before the
    drug lowers the ALP)."""
    if chart.persistent:
        orders, resulted = workup(chart, ["hpp", "genetic"])
    else:
        orders, resulted = workup(chart, ["repeat", "hpp"])
        orders = [OrderSuggestion(o.test, o.test.group == "repeat") for o in orders]
    if chart.kidney.severe:  # PLP and urine PEA cannot be read with confidence in CKD 4-5: offered, not recommended
        orders = [OrderSuggestion(o.test, o.recommended and o.test.group == "repeat") for o in orders]
    return orders, resulted


def review_current(chart: Chart, workup: Finding | None = None) -> list[Finding]:
    """When (patient-view): the chart has a current run of lows (the latest judged ALP is low and current) while an
    antiresorptive (bisphosphonate, denosumab, raloxifene, bazedoxifene, calcitonin) is current.
    Then: "antiresorptive-current-low-alp", one card for the one problem: the drug and the low ALP together, with
    the low-ALP card's workup (``workup``, the "alp-low-single" or "alp-low-persistent" finding it replaces: its
    facts, tests and sources). It says plainly whether the ALP was already low before treatment began
    (``alp_before``); for denosumab, never to stop or delay it without a plan. A warning for a bisphosphonate or
    denosumab when the low is persistent or was there before treatment; information when every low came after a
    normal ALP before treatment (most likely the drug), for a single low on treatment, and for the weaker agents.
    Not when: no current antiresorptive (an earlier one is named on the low-ALP card as a drug that lowers ALP);
    no current run of lows; HPP documented (the known-HPP card names the drug)."""
    drugs = [m for m in chart.medications if m.status == "current" and is_antiresorptive(m)]
    run = chart.current_run
    if not drugs or not run or chart.hpp_known:
        return []
    start = treatment_start(chart)
    before = alp_before(chart, start)
    low_before = bool(before and before.is_low())
    # Lows only since treatment, after a normal ALP before it: most likely the drug (info, not a warning each visit).
    drug_likely = before is not None and not low_before and all(r.when > start for r in run)
    strong = any(m.tier == "strong" for m in drugs)
    warning = strong and not drug_likely and (chart.persistent or low_before)
    denosumab = any("denosumab" in m.groups for m in drugs)
    # Without a workup card beside it (a Wilson, infantile or known-HPP card instead), the card is about the drug.
    base = (
        dict(workup.facts)
        if workup is not None
        else {"context": chart_context(chart, run, parts=("ckd",)), "repeat_from": None}
    )
    return [
        Finding(
            "antiresorptive-current-low-alp",
            {
                **base,
                "workup": workup is not None,
                "drugs": drug_names(drugs),
                "denosumab": denosumab,
                "oncology": any(m.oncology for m in drugs),
                "start": start.date().isoformat() if start else None,
                "readings": alp_rows(chart, run),
                "latest": describe_alp(chart, run[-1]),
                "before": describe_alp(chart, before) if before else None,
                "low_before": low_before,
                "drug_likely": drug_likely,
                "records_incomplete": not chart.medications_complete,
                "persistent": chart.persistent,
                "overdue": overdue_denosumab(chart) is not None,
                "last_dose_unknown": any("denosumab" in c.groups and c.last_dose is None for c in chart.courses),
                "bisphosphonate": any("bisphosphonate" in m.groups for m in drugs),
            },
            # most likely the drug: only a repeat ALP is offered, not recommended (the GP's reading, issue 24: ten
            # workup buttons on a card that says "no workup" contradict it); the low-ALP card's tier otherwise
            tuple(replace(o, recommended=False) for o in workup.orders if o.test.group == "repeat")
            if drug_likely and workup
            else (workup.orders if workup is not None else ()),
            links=(*(workup.links if workup is not None else ()), *drug_links(drugs)),
            indicator="warning" if warning else "info",
        )
    ]


def drug_class(drugs: Sequence[Medication]) -> str:
    """What the ordered drugs are, in words: raloxifene and bazedoxifene are oestrogen receptor modulators."""
    groups = set().union(*(m.groups for m in drugs)) if drugs else set()
    if groups <= {"raloxifene"}:
        return "a selective oestrogen receptor modulator, which slows bone resorption"
    return "an antiresorptive"


def drug_links(drugs: Sequence[Medication]) -> tuple[str, ...]:
    """Sources about the drugs a card names: denosumab's discontinuation papers only for denosumab (not on an
    alendronate card), the label's atypical femoral fracture warning for a bisphosphonate."""
    keys = []
    if any("denosumab" in m.groups and not m.oncology for m in drugs):
        keys += ["A57", "A58"]
    if any("bisphosphonate" in m.groups for m in drugs):
        keys.append("AL1")
    return tuple(keys)


def one_card_per_problem(chart: Chart, findings: Sequence[Finding]) -> list[Finding]:
    """The low-ALP workup card and the current antiresorptive are one problem: the workup card is replaced by the
    antiresorptive card that carries its workup (``review_current``); with no workup card (the Wilson, infantile or
    known-HPP card instead), the drug gets its own card beside them."""
    workup = next((f for f in findings if f.kind in ("alp-low-single", "alp-low-persistent")), None)
    merged = review_current(chart, workup)
    if not merged:
        return list(findings)
    if workup is None:
        return [*findings, *merged]
    return [merged[0] if f is workup else f for f in findings]


# Creatinine clearance (mL/min) below which the label advises against the drug: Fosamax and Actonel (addendum 11),
# Reclast (contraindicated below 35 mL/min: FDA safety communication 2011, seen in issue 23's attack).
RENAL_LIMITS = {"alendronate": 35, "risedronate": 30, "zoledronic acid": 35}


def _ckd_concern(chart: Chart, drugs: Sequence[Medication]) -> dict | None:
    """With CKD stage 4-5, what the label says of the ordered drug: a bisphosphonate's renal limit (alendronate 35,
    risedronate 30 mL/min creatinine clearance: Fosamax and Actonel labels, addendum 11), or denosumab's boxed warning
    of severe hypocalcaemia (FDA 2024); None without severe CKD or for another drug."""
    if not chart.kidney.severe:
        return None
    egfr = chart.kidney.egfr
    shown = {"egfr": egfr.shown_value if egfr is not None else None, "diagnosis": chart.kidney.diagnosis.name if
             chart.kidney.diagnosis else None}  # fmt: skip
    for drug in drugs:
        if drug.ingredient in RENAL_LIMITS:
            return {**shown, "drug": drug.ingredient, "limit": RENAL_LIMITS[drug.ingredient]}
        if "denosumab" in drug.groups:
            return {**shown, "drug": "denosumab", "limit": None}
        if "bisphosphonate" in drug.groups:
            return {**shown, "drug": drug.ingredient or drug.name, "limit": None}
    return None


def overdue_denosumab(chart: Chart) -> dict | None:
    """The denosumab course whose next dose is overdue: its last dose (an administration, a dispense, or the last
    prescription; ``Course.last_dose``) more than ``denosumab_interval_months`` (6) ago, while the course is
    current or its last dose is within two years, no bisphosphonate given since, and not an oncology product
    (120 mg every 4 weeks). None otherwise, or when no dose is dated."""
    interval = int(thresholds()["denosumab_interval_months"])
    for course in chart.courses:
        if "denosumab" not in course.groups or course.oncology or course.last_dose is None:
            continue
        due = add_months(course.last_dose, interval)
        if due >= chart.now:
            continue
        if not course.current and chart.now - course.last_dose > timedelta(days=730):
            continue
        follow_on = [
            c
            for c in chart.courses
            if "bisphosphonate" in c.groups and c.last is not None and c.last > course.last_dose
        ]
        if follow_on:
            continue  # a bisphosphonate after the last injection: the transition ECTS 2021 advises
        return {
            "last_dose": course.last_dose.date().isoformat(),
            "record": course.last_dose_record,
            "due": due.date().isoformat(),
            "since": span_text((chart.now - course.last_dose).days),
            "late": span_text((chart.now - due).days),
            "late_weeks": (chart.now - due).days // 7,
            "current": course.current,
        }
    return None


def review_denosumab_timing(chart: Chart) -> list[Finding]:
    """When (patient-view): a denosumab course whose next dose is overdue (``overdue_denosumab``), whatever the ALP
    (addendum 5: rebound after an omitted dose).
    Then: "denosumab-overdue": give the dose now (or, if denosumab is to stop, start the follow-on treatment now);
    with a current low ALP, run the HPP workup alongside, never instead of the dose; with HPP documented, decide
    today with a metabolic bone specialist (a follow-on bisphosphonate carries the same concern in HPP). Info while
    the dose is less than ``DENOSUMAB_GRACE`` late (a study counted a dose within 4 weeks of the 6-month date as on
    time: Lyu 2020), a warning from then; from ``DENOSUMAB_LONG_DELAY`` late (vertebral fractures rose most after a
    delay of over 16 weeks, the same study) the card asks about new back pain and spine imaging.
    Not when: no denosumab on the chart, the dose is not yet due, an oncology product, a bisphosphonate given since
    the last injection, or no dated dose."""
    overdue = overdue_denosumab(chart)
    if overdue is None:
        return []
    run = chart.current_run
    late = overdue["late_weeks"]
    return [
        Finding(
            "denosumab-overdue",
            {
                **overdue,
                "low": bool(run),
                "latest": describe_alp(chart, run[-1]) if run else None,
                "persistent": chart.persistent if run else False,
                "hpp_known": chart.hpp_known,
                "long_delay": late >= DENOSUMAB_LONG_DELAY,
            },
            indicator="info" if late < DENOSUMAB_GRACE else None,
        )
    ]


DENOSUMAB_GRACE = 4  # weeks after the 6-month date still counted "on time" (Lyu et al., Ann Intern Med 2020)
DENOSUMAB_LONG_DELAY = 16  # weeks late: the "long delay" of the same study (vertebral fracture HR 3.9)


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
    # For bone metastases (the 120 mg denosumab product, or metastases on the problem list) the drug is oncology
    # care: the low ALP is named for the oncology team, removal is never offered, and the card is information.
    oncology_context = any(m.oncology for m in drugs) or any(
        d.kind == "bone_metastases" and d.active for d in chart.diagnoses
    )
    deletes = (
        ()
        if ((course or course_unchecked) and denosumab) or oncology_context
        else tuple(m.reference for m in drugs if m.reference)
    )
    start = treatment_start(chart)
    before = alp_before(chart, start) if course else None
    overdue = overdue_denosumab(chart) if denosumab else None
    # Hypophosphatasia on the problem list in any words (``Chart.hpp``: documented, suspected, or marked inactive),
    # or as the hook read it: the order card is the HPP one.
    hpp = chart.hpp[0] if chart.hpp else None
    common = {
        "drugs": names,
        "strong": any(m.tier == "strong" for m in drugs),
        "denosumab": denosumab,
        "oncology": any(m.oncology for m in drugs),
        "drug_class": drug_class(drugs),
        "oncology_context": oncology_context,
        "delete_names": {m.reference: m.ingredient or m.name for m in drugs if m.reference},
        "course_start": course.date().isoformat() if course else None,
        "denosumab_course": bool(course and denosumab),
        "course_unknown": course_unknown,
        "course_unchecked": course_unchecked,
        "low_before": bool(before and before.is_low()),
        "before": describe_alp(chart, before) if before else None,
        "unread_orders": list(unread),
        "overdue": overdue,
        "context": chart_context(chart, chart.current_run),
        # Severe CKD: the labels' own limits come first on a bisphosphonate or denosumab order.
        "ckd_drug": _ckd_concern(chart, drugs),
    }
    links = (*context_links(common["context"]), *drug_links(drugs))
    judged = chart.alp
    if hpp_documented or hpp is not None:
        status = (
            "documented" if hpp_documented or chart.hpp_known else ("suspected" if not hpp.confirmed else "inactive")
        )
        return [
            Finding(
                "antiresorptive-order-hpp",
                {
                    **common,
                    "readings": alp_rows(chart, judged, 3),
                    "hpp_status": status,
                    "hpp_name": hpp.name if hpp else None,
                },
                # suspected HPP: the substrates now, genetics after them (the workup that confirms or excludes it)
                tuple(workup(chart, ["hpp", "genetic"])[0]) if status == "suspected" else (),
                deletes=deletes,
                links=links,
                # suspected HPP: a warning; documented (or marked inactive, which HPP cannot be): critical
                indicator=_indicator(drugs, "warning", "info")
                if status == "suspected"
                else _indicator(drugs, "critical", "warning"),
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
                links=links,
                indicator=_indicator(drugs, "warning", "info") if last_low else "info",
            )
        ]
    run = chart.current_run
    if not run:
        return []
    orders, resulted = order_workup(chart)
    # A single low soon after surgery, a transfusion or a fracture, with a normal ALP before it: most likely
    # temporary. Repeat the ALP before the dose and defer the order, never remove it (after a hip fracture, the
    # zoledronate infusion is proven secondary prevention). Not for what may be the next dose of a denosumab course.
    acute = None if (course and denosumab) or course_unchecked else acute_drop(chart)
    shown = [acute["before"], *run] if acute else run
    return [
        Finding(
            "antiresorptive-order-denosumab-course" if course and denosumab else "antiresorptive-order-low-alp",
            {
                **common,
                "acute": {**acute, "before": describe_alp(chart, acute["before"])} if acute else None,
                "dose": _dose_word(drugs, bool(course)),
                "readings": alp_rows(chart, shown),
                "latest": describe_alp(chart, run[-1]),
                "persistent": chart.persistent,
                "latest_suspect": id(run[-1]) in chart.contamination,
                "resulted": resulted,
                "not_interpreted": not_interpreted_rows(chart.not_interpreted()),
            },
            tuple(orders),
            deletes=() if acute else deletes,
            links=(*links, "S47") if acute else links,
            indicator="info" if oncology_context or acute else _indicator(drugs, "warning", "info"),
        )
    ]


INFUSED = ("zoledronic acid", "pamidronate")  # given only as infusions


def _dose_word(drugs: Sequence[Medication], continuing: bool) -> str:
    """What the order gives, in words: the infusion (zoledronic acid, pamidronate), the injection (denosumab), or
    the first or next dose."""
    if any(m.ingredient in INFUSED for m in drugs):
        return "the infusion"
    if any("denosumab" in m.groups for m in drugs):
        return "the injection"
    return "the next dose" if continuing else "the first dose"

"""Low-ALP rules: pure functions from the chart (``service.clinical.chart``) to findings. No I/O, no Flask, no JSON.

A finding names a card kind (a file in ``cards/``), the facts its template shows, and the tests it suggests. Each
rule opens with when it fires, what it gives, and when it does not; the rows a card shows are shaped, and limited,
in ``service.clinical.views``, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.clinical.alp import unusable
from service.clinical.codes import WorkupTest, thresholds, workup_tests
from service.clinical.context import acute_event_before
from service.clinical.facts import LabResult, Medication
from service.clinical.medications import is_antiresorptive
from service.clinical.samples import Contamination, possible_contamination
from service.clinical.treatment import breaks
from service.clinical.views import (
    alp_rows,
    chart_context,
    describe_alp,
    display_row,
    earlier,
    not_interpreted_rows,
    span_text,
    unreadable_row,
)

if TYPE_CHECKING:
    from service.clinical.chart import Chart


@dataclass(frozen=True)
class OrderSuggestion:
    test: WorkupTest
    recommended: bool = True


@dataclass(frozen=True)
class Finding:
    kind: str
    facts: Mapping[str, Any]
    orders: tuple[OrderSuggestion, ...] = ()
    deletes: tuple[str, ...] = ()  # references of draft orders the card suggests removing
    indicator: str | None = None  # overrides the template's indicator (graded value sets)
    links: tuple[str, ...] = ()  # sources (cards/sources.toml keys) for what this card says beyond its template's


def context_links(context: Mapping[str, Any]) -> tuple[str, ...]:
    """The sources of the chart-context lines a card shows (``views.chart_context``): pregnancy, a recent fracture,
    severe CKD."""
    keys = []
    if context.get("pregnant_now") or "pregnancy" in context.get("passed_over_reasons", ()):
        keys.append("PG9")
    if context.get("fractures"):
        keys.append("HZ7")
    if context.get("ckd"):
        keys += ["KD17", "AL1", "FDA24"]
    return tuple(keys)


def abnormal(test: WorkupTest, result: LabResult) -> bool | None:
    if test.abnormal_when == "low":
        return result.is_low()
    if test.abnormal_when == "high":
        return result.is_high()
    return None


def b6_intake(chart: Chart, when: datetime | None = None) -> str:
    """Whether vitamin B6 was taken (in any product: pyridoxine, B-complex, prenatal and multivitamins): ``taken``
    (a B6 product is current, or a record of one covers ``when``), ``unknown`` (not every medication record could be
    read), or ``none``."""
    for medication in chart.medications:
        if "pyridoxine" not in medication.groups or medication.status == "draft":
            continue
        if medication.status == "current":
            return "taken"
        start, last = medication.start, medication.last_recorded
        if (
            when is not None
            and start is not None
            and last is not None
            and start - DRAW_MARGIN <= when <= last + DRAW_MARGIN
        ):
            return "taken"
    return "none" if chart.medications_complete else "unknown"


DRAW_MARGIN = timedelta(days=7)  # a B6 product taken within a week of a PLP draw still raises it (design choice)


def explains(chart: Chart, test: WorkupTest, result: LabResult) -> bool:
    """The result counts as an explanation (a secondary cause) or as support for HPP. A PLP supports HPP from the
    sourced cut-off of 180 nmol/L (S51), not from the upper reference limit, and only when no vitamin B6 was taken
    in any product (it raises PLP; S15b, addendum 11): not when B6 was taken, nor when B6 intake is unknown (the
    card asks)."""
    if test.key == "plp":
        return result.at_least(thresholds()["plp_high"]) and b6_intake(chart, result.when) == "none"
    return bool(abnormal(test, result))


def workup(
    chart: Chart, suggest: Sequence[str], show: Sequence[str] = ()
) -> tuple[list[OrderSuggestion], list[dict[str, Any]]]:
    """Tests of the ``suggest`` groups to order, and the recent results of the ``suggest`` and ``show`` groups (shown
    with their judgement; a test resulted within ``RECENT_RESULT_DAYS`` is not suggested again)."""
    recent_days = chart.settings.RECENT_RESULT_DAYS
    orders: list[OrderSuggestion] = []
    resulted: list[dict[str, Any]] = []
    for test in workup_tests().values():
        if test.group not in suggest and test.group not in show:
            continue
        # A repeat is asked for because of the recent result, so it is never "already resulted".
        result = chart.latest(test.analyte, recent_days) if test.analyte and test.group != "repeat" else None
        if result is None:
            if test.group in suggest:
                orders.append(OrderSuggestion(test, recommended=test.recommended))
            continue
        row = {
            **display_row(result),
            "key": test.key,
            "group": test.group,
            "abnormal": abnormal(test, result),
            "abnormal_when": test.abnormal_when,
            "explanation": test.explanation if explains(chart, test, result) else None,
        }
        if test.key == "plp" and result.at_least(thresholds()["plp_high"]):
            row["b6"] = b6_intake(chart, result.when)  # a high PLP: whether B6 taken explains it
        resulted.append(row)
    return orders, resulted


def first_exposure(medications: Sequence[Medication]) -> datetime | None:
    """When the current antiresorptive treatment began: the earliest evidence of any antiresorptive (statement start,
    request, dispense, dose) since the last drug holiday (``treatment.breaks``: a course restarted after one begins
    again), not the latest renewal. Any antiresorptive counts, because each lowers ALP (S41), so an ALP measured
    after any of them is no longer a pre-treatment value. None when a record has no date, since the start then
    cannot be known."""
    records = [m for m in medications if is_antiresorptive(m) and m.status != "draft"]
    if not records or any(m.start is None for m in records):
        return None
    holidays = breaks(records)
    return holidays[-1][1] if holidays else min(m.start for m in records)


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
    # a normal result that cannot be read as normal (pregnancy, a disease that raises ALP) is no evidence either way
    before = [r for r in chart.interpretable_alp if start - window <= r.when <= start - timedelta(days=1)]
    return before[-1] if before else None


INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}


# Within an indicator: the sample card before the advice it qualifies ("recollect before the workup"), then by kind.
FIRST_KINDS = ("sample-contamination",)


def by_importance(findings: Sequence[Finding], indicator_of: Callable[[str], str]) -> list[Finding]:
    """Critical cards first, then warnings, then information; within an indicator, the sample card first, then by
    card kind (stable). ``indicator_of`` gives a kind's own indicator where a finding does not override it."""
    return sorted(
        findings,
        key=lambda f: (INDICATOR_ORDER[f.indicator or indicator_of(f.kind)], f.kind not in FIRST_KINDS, f.kind),
    )


# --------------------------------------------------------------------------------------------- rules


def sample_contamination(chart: Chart, alp: LabResult) -> Finding | None:
    """When: a low ALP of the current run (``Chart.contamination`` asks about every one of them, not only those a
    card lists) was drawn (within ``same_draw_hours``, 24 h) with a potassium certainly at or above
    ``potassium_edta`` (6.0 mmol/L) and a low calcium, in a patient from ``edta_min_age_years`` (1 year).
    Then: "sample-contamination" (warning): possible EDTA contamination of that sample; recollect, and repeat the
    potassium, before any workup (a repeat ALP is suggested). The low-ALP card stays (its advice is for after a
    clean repeat), but this low, and the potassium, calcium, zinc and magnesium drawn with it, no longer count as
    evidence (``Chart.reliable``, ``Chart.suspect``).
    Not when: under 1 year at the draw (age unknown: checked); no potassium or no calcium from that draw; a
    calcium that cannot be judged; a zinc or a magnesium from that draw that is normal or high (one that cannot be
    judged does not speak against EDTA).

    Cornes 2008 screened samples with K >= 6.0 and found EDTA in about a quarter; only a zinc below its interval was
    100 % sensitive, and gross contamination shows as high K with low Ca, Mg and Zn (S26, A45, A48). A normal zinc or
    magnesium on the same draw therefore speaks against EDTA. Under one year the potassium interval reaches 6.0-6.1.
    """
    found = possible_contamination(chart.patient, alp, chart.drawn_with)
    return _contamination_card(chart, alp, found) if found is not None else None


def _contamination_card(chart: Chart, alp: LabResult, found: Contamination) -> Finding:
    return Finding(
        "sample-contamination",
        {
            "alp": describe_alp(chart, alp),
            "potassium": display_row(found.potassium),
            "potassium_limit": thresholds()["potassium_edta"],
            "calcium": display_row(found.calcium),
            "supporting": [display_row(r) for r in found.supporting],
            "readings": [],  # the ALP table, when this card is the problem's only one (one_card_per_sample_problem)
        },
        orders=(OrderSuggestion(workup_tests()["repeat_alp"]),),
    )


def unreadable_alp(chart: Chart) -> Finding | None:
    """When (asked by ``low_alp`` when there is no current run of lows): the most recent dated total ALP is current
    (``ALP_CURRENT_DAYS``), newer than every judged ALP, and could not be used (unknown unit, not a number,
    impossible value, no limit to judge it by, or a value such as "<50" that may lie either side of the limit).
    Then: "alp-unreadable" (info): say so, with the other results not interpreted, and offer a repeat ALP (not
    recommended): a low ALP may be hiding behind it, and this service's advice did not run on it.
    Not when: a judged ALP is as recent or more recent; the unusable ALP is older than ``ALP_CURRENT_DAYS``, or
    undated."""
    latest = chart.latest_alp_unreadable()
    if latest is None:
        return None
    return Finding(
        "alp-unreadable",
        {
            "result": unreadable_row(latest),
            "problem": unusable(latest),
            "as_ukat": _as_ukat(latest),
            "not_interpreted": not_interpreted_rows(chart.not_interpreted()),
        },
        (OrderSuggestion(workup_tests()["repeat_alp"], recommended=False),),
    )


def _as_ukat(result: LabResult) -> int | None:
    """A total ALP below 2 "U/L" is impossible; written in µkat/L it would be this many U/L (x 60: the addendum's
    plausibility table, section 2), which the card names so that a very low value is not lost to a unit slip."""
    unit = (result.raw_unit or "").strip().lower()
    if result.raw_value is None or not 0 < result.raw_value < 2 or unit not in ("u/l", "iu/l", "[iu]/l"):
        return None
    return round(result.raw_value * 60)


def low_alp(chart: Chart) -> list[Finding]:
    """When: the latest judged total ALP is low and current (``ALP_CURRENT_DAYS``): the chart has a current run of
    lows (every low since the last normal result; a normal result in pregnancy, while a disease that raises ALP is
    active, or while a fracture heals after persistent lows, is passed over: ``Chart.current_run``).
    Then, the first that applies:
    - the Wilson pattern for the latest low (``wilson_disease``): the Wilson card alone (with the sample card when
      the latest sample may be contaminated): no routine repeat-the-ALP or child-HPP card beside it;
    - hypophosphatasia documented and active on the problem list (``Chart.hpp_known``): "alp-known-hpp" (info):
      the low ALP is expected; avoid bisphosphonates and denosumab; no workup again;
    - a child under ``young_child_years`` (5) with an ALP certainly below ``infant_alp_far_below`` (half) of the
      lower limit for age, or with a high calcium or phosphate or a low PTH (``infant_picture``): "alp-low-infant"
      (warning): PLP and urine PEA now, paediatric metabolic bone referral;
    - otherwise first a "sample-contamination" card when ``sample_contamination`` finds the latest low possibly
      contaminated (only the latest sample can usefully be recollected; every possibly contaminated low of the run
      is not counted towards persistence and is marked in the card's table; the low-ALP card stays); then
      - persistently low (``is_persistent``) -> "alp-low-persistent" (warning; info when every low was measured on
        an antiresorptive and the last ALP before treatment was normal: ``drug_explains``): the HPP substrates (PLP,
        urine PEA) and the common secondary causes, ALPL genetics after them (recommended once PLP or urine PEA
        supports HPP and no secondary cause is found: ``_tiers``); "very low" is said for an adult (from
        ``ADULT_AGE``) with a reliable low certainly below ``alp_very_low`` (25 U/L), no secondary cause found;
      - otherwise (one low, or lows too close together) -> "alp-low-single" (info): repeat the ALP when the patient
        is well, ``PERSISTENT_MIN_DAYS`` after the first low; recent secondary-cause results are shown.
    Each low-ALP card names the chart around the labs (``views.chart_context``): pregnancy, a recent fracture,
    severe kidney disease with the PTH, diseases that raise ALP, HPP suspected or inactive on the problem list, a
    child's ALP against a lab range that looks adult. A test resulted within ``RECENT_RESULT_DAYS`` is shown, not
    suggested again.
    Not when: no judged ALP, the latest judged one is normal (and not passed over), or the latest low is older than
    ``ALP_CURRENT_DAYS`` (time in pregnancy not counted; then only ``unreadable_alp`` may give a card). The
    patient-view hook does not ask for a deceased patient."""
    run = list(chart.current_run)
    if not run:
        unreadable = unreadable_alp(chart)
        return [unreadable] if unreadable else []
    latest = run[-1]
    # Only the latest sample can usefully be recollected: earlier contaminated lows are set aside (not counted, and
    # marked in the table) without a card of their own; whether the workup stands without it is said on its card.
    findings = []
    if id(latest) in chart.contamination and not chart.hpp_known:
        contaminated = _contamination_card(chart, latest, chart.contamination[id(latest)])
        findings.append(replace(contaminated, facts={**contaminated.facts, "workup_stands": chart.persistent}))
    wilson = wilson_disease(chart, latest)
    if wilson is not None:
        return [*findings, wilson]
    if chart.hpp_known:
        return [known_hpp(chart, run)]
    infant = infant_picture(chart, run)
    if infant is not None:
        return [*findings, infant]
    return [*findings, _workup_card(chart, run)]


def one_card_per_sample_problem(findings: list[Finding]) -> list[Finding]:
    """When the only low is the possibly contaminated sample's (none of the run counts) and its single-low card has
    nothing else to say (no chart context, results, drugs or unreadable results), that card only repeated
    "recollect": its ALP table goes on the sample card, which is then the one card of the problem (issue 24, the
    GP's reading)."""
    if len(findings) != 2 or findings[0].kind != "sample-contamination" or findings[1].kind != "alp-low-single":
        return findings
    sample, single = findings
    facts = single.facts
    quiet = not any(
        facts.get(key) for key in ("resulted", "alp_lowering_drugs", "antiresorptives", "not_interpreted", "earlier")
    )
    if facts.get("count") != 0 or not quiet or any(facts["context"].values()):
        return findings
    return [replace(sample, facts={**sample.facts, "readings": facts["readings"]})]


def _workup_card(chart: Chart, run: Sequence[LabResult]) -> Finding:
    settings = chart.settings
    latest = run[-1]
    reliable = chart.reliable(run)
    persistent = chart.persistent
    age = chart.patient.age_years(latest.when)
    child = age is not None and age < settings.ADULT_AGE
    if persistent:
        orders, resulted = workup(chart, ["hpp", "genetic", "secondary"])
    else:
        orders, resulted = workup(chart, ["repeat"], show=["secondary"])
    secondary_found = [r for r in resulted if r["group"] == "secondary" and r["explanation"]]
    substrates_high = [r for r in resulted if r["group"] == "hpp" and r["explanation"]]
    orders = _tiers(orders, resulted, secondary_found, substrates_high)
    very_low_limit = thresholds()["alp_very_low"]
    # The ALPL-variant figure (S50) holds for adults with persistently low values, secondary causes excluded.
    very_low = (
        persistent
        and not child
        and age is not None
        and not secondary_found
        and in_variant_cohort(chart, reliable)
        and any(_certainly_below(r, very_low_limit) for r in reliable)
    )
    before = _alp_before_run(chart, run)
    span = (run[-1].when - run[0].when).days
    by_drug = drug_explains(chart, reliable)
    span_days = (reliable[-1].when - reliable[0].when).days if reliable else span
    facts = {
        "readings": alp_rows(chart, run),
        "earlier": earlier(run, chart),
        "latest": describe_alp(chart, latest),
        "count": len(reliable),
        "set_aside": len(run) - len(reliable),  # lows of the run not counted (possible EDTA contamination)
        "span_days": span_days,
        "span": span_text(span_days),
        "latest_suspect": id(latest) in chart.contamination,
        "very_low": very_low,
        "very_low_limit": very_low_limit,
        "age": None if age is None else int(age),
        "child": child,
        "infant": age is not None and age < 1,
        "resulted": resulted,
        "explanations": [r["explanation"] for r in resulted if r["explanation"]],
        "secondary_found": secondary_causes(secondary_found),
        "repeat_months": int(thresholds()["secondary_repeat_months"]),
        "substrates_high": [r["explanation"] for r in substrates_high],
        "substrates_high_names": [
            {"plp": "PLP", "pea_urine": "urine PEA"}.get(r["key"], r["key"]) for r in substrates_high
        ],
        "plp_b6": next((r["b6"] for r in resulted if r["key"] == "plp" and "b6" in r), None),
        # counted from the first low that counts; None when none does (every one possibly contaminated)
        "repeat_from": (
            (reliable[0].when + timedelta(days=settings.PERSISTENT_MIN_DAYS)).date().isoformat() if reliable else None
        ),
        "previous_normal": display_row(before) if before is not None and before.is_low() is False else None,
        "not_interpreted": not_interpreted_rows(chart.not_interpreted()),
        "b6_supplements": sorted({m.name for m in chart.current("pyridoxine")}),
        "alp_lowering_drugs": alp_lowering_drugs(chart),
        "antiresorptives": sorted(
            {m.ingredient or m.name for m in chart.medications if m.status == "current" and is_antiresorptive(m)}
        ),
        "on_treatment": by_drug,
        "teriparatide": on_teriparatide(chart, reliable),
        "wilson": False,
        "persistent_min_days": settings.PERSISTENT_MIN_DAYS,
        "current_days": settings.ALP_CURRENT_DAYS,
        "plp_note": workup_tests()["plp"].note,
        "context": chart_context(chart, run),
    }
    kind = "alp-low-persistent" if persistent else "alp-low-single"
    # Lows measured on an antiresorptive after a normal ALP before it: most likely the drug (info, not a warning at
    # every visit); a persistent low on teriparatide, which raises ALP, is the opposite (the card says so).
    indicator = "info" if by_drug and by_drug["normal_before"] and not facts["teriparatide"] else None
    excluded = chart.hpp_excluded
    facts["hpp_excluded"] = excluded.name if excluded is not None else None
    # In pregnancy the workup waits until after delivery (PLP, zinc, albumin and TSH all shift in pregnancy, and
    # prenatal vitamins carry B6); HPP already excluded on the problem list: offered again, not recommended. Severe
    # CKD: PLP and urine PEA cannot be read with confidence, so they are offered, not recommended.
    deferred = next(
        (why for why, holds in (("pregnancy", chart.pregnant_now), ("excluded", excluded), ("ckd", chart.kidney.severe))
         if holds),
        None,
    )  # fmt: skip
    facts["deferred"] = deferred
    if deferred is None and indicator == "info":
        deferred = "drug"  # most likely the antiresorptive: the workup is offered, not recommended
    if deferred is not None:
        # the card says "no repeat workup" (HPP excluded) or "most likely the drug: no workup": only a repeat ALP
        # stays recommended (the GP's reading, issue 24); in CKD the secondary causes still are; in pregnancy nothing
        kept = {"pregnancy": (), "ckd": ("repeat", "secondary")}.get(deferred, ("repeat",))
        orders = [o if o.test.group in kept else replace(o, recommended=False) for o in orders]
    if deferred == "pregnancy" or (deferred == "excluded" and not facts["antiresorptives"]):
        indicator = "info"
    if any(d.kind == "cholestasis" for d in chart.alp_raising):  # liver ALP raised: the bone isoenzyme tells apart
        orders = [*orders, *workup(chart, ["bone"])[0]]
    return Finding(kind, facts, tuple(orders), indicator=indicator, links=context_links(facts["context"]))


def drug_explains(chart: Chart, lows: Sequence[LabResult]) -> dict[str, Any] | None:
    """When every low was measured on an antiresorptive course (``Chart.taking``): the drugs, and whether the last
    ALP before treatment began was normal (then the drug most likely explains the lows); None otherwise."""
    if not lows or not all(chart.taking(r.when) for r in lows):
        return None
    start = treatment_start(chart)
    before = alp_before(chart, start)
    return {
        "drugs": sorted({c.drug for r in lows for c in chart.taking(r.when)}),
        "normal_before": bool(before is not None and before.is_low() is False),
        "before": display_row(before) if before is not None else None,
    }


TERIPARATIDE_EFFECT = timedelta(days=90)  # bone ALP rises within months of starting teriparatide (addendum 11)


def on_teriparatide(chart: Chart, lows: Sequence[LabResult]) -> bool:
    """A low measured on teriparatide, at least ``TERIPARATIDE_EFFECT`` after it began: unexpected, since it raises
    bone ALP (addendum 11), so it strengthens the suspicion of HPP."""
    return any(
        c.start is not None and c.covers(r.when) and r.when - c.start >= TERIPARATIDE_EFFECT
        for c in chart.courses
        if "teriparatide" in c.groups
        for r in lows
    )


def known_hpp(chart: Chart, run: Sequence[LabResult]) -> Finding:
    """When (asked by ``low_alp``): a current low ALP in a patient with hypophosphatasia documented and active on the
    problem list. Then: "alp-known-hpp" (info): the low ALP is expected in HPP; bisphosphonates and denosumab are to
    be avoided (named when one is current, which makes it a warning); no workup again (no PLP, urine PEA or
    genetics suggested). Not when: the HPP entry is refuted, entered in error, provisional or inactive (then the
    workup card says how it stands)."""
    current = [m for m in chart.medications if m.status == "current" and is_antiresorptive(m)]
    strong = [m for m in current if m.tier == "strong"]
    diagnosis = next(d for d in chart.hpp if d.confirmed)
    return Finding(
        "alp-known-hpp",
        {
            "diagnosis": diagnosis.name,
            "inactive": not diagnosis.active,
            "readings": alp_rows(chart, run, 3),
            "latest": describe_alp(chart, run[-1]),
            "antiresorptives": sorted({m.ingredient or m.name for m in current}),
            "denosumab": any("denosumab" in m.groups for m in current),
            "oncology": any(m.oncology for m in current),
            "context": chart_context(chart, run),
        },
        indicator="warning" if strong else None,
    )


def infant_picture(chart: Chart, run: Sequence[LabResult]) -> Finding | None:
    """When (asked by ``low_alp``): a child under ``young_child_years`` (5 years) whose latest low ALP is certainly
    below ``infant_alp_far_below`` (half) of the lower limit for age, or comes with a high calcium or a high
    phosphate or a low PTH (drawn with it, else within ``RECENT_RESULT_DAYS``).
    Then: "alp-low-infant" (warning; critical under one year with a high calcium or an ALP below half the limit):
    the picture of infantile or severe childhood HPP (often lethal untreated in infancy, treatable with asfotase
    alfa): PLP and urine PEA now (recommended; in an infant ALPL genetics too), paediatric metabolic bone referral
    today; never "repeat when well". A high phosphate or a low PTH counts only with an ALP certainly below
    ``infant_sign_alp_fraction`` (three quarters) of the limit.
    Not when: age unknown or from 5 years; a moderately low ALP with normal (or unmeasured) calcium, phosphate and
    PTH (the single or persistent card then applies: repeat, or work up).

    Whyte 2016 (addendum 11): infants with HPP have hypercalcaemia with a suppressed PTH; the fraction and the age
    are the service's design choices."""
    latest = run[-1]
    limits = thresholds()
    age = chart.patient.age_years(latest.when)
    if age is None or age >= limits["young_child_years"]:
        return None
    # Judged against the limit for age whenever it is higher than the lab's (a lab range or flag for adults would
    # hide how far below its age an infant's ALP is).
    limit = max((x for x in (latest.low, latest.age_low, latest.age_band_low) if x is not None), default=None)
    far_below = limit is not None and _certainly_below(latest, limit * limits["infant_alp_far_below"])
    recent = chart.settings.RECENT_RESULT_DAYS

    def near(analyte: str) -> LabResult | None:
        return chart.drawn_with(latest, analyte) or chart.latest(analyte, recent)

    calcium, phosphate, pth = near("calcium"), near("phosphate"), near("pth")
    # A high phosphate or a low PTH counts only with a clearly low ALP: a marginal low with a phosphate judged
    # against an adult range is not the picture (specialist review); a high calcium counts with any low.
    clearly_low = limit is not None and _certainly_below(latest, limit * limits["infant_sign_alp_fraction"])
    signs = {
        "calcium": calcium if calcium is not None and calcium.is_high() else None,
        "phosphate": phosphate if clearly_low and phosphate is not None and phosphate.is_high() else None,
        "pth": pth if clearly_low and pth is not None and pth.is_low() else None,
    }
    if not far_below and not any(signs.values()):
        return None
    infant = age < 1
    orders, resulted = workup(chart, ["hpp", "genetic"], show=["secondary"])
    # PLP and urine PEA now; in an infant, rapid ALPL genetics too (the treatment decision cannot wait for it).
    orders = [OrderSuggestion(o.test, o.test.group == "hpp" or (infant and o.test.group == "genetic")) for o in orders]
    return Finding(
        "alp-low-infant",
        {
            "age_months": chart.patient.age_in("m", latest.when),
            "infant": age < 1,
            "readings": alp_rows(chart, run),
            "latest": describe_alp(chart, latest),
            "far_below": far_below,
            "limit": limit,
            "calcium": display_row(calcium) if calcium is not None else None,
            "calcium_high": signs["calcium"] is not None,
            "phosphate": display_row(phosphate) if phosphate is not None else None,
            "phosphate_high": signs["phosphate"] is not None,
            "pth": display_row(pth) if pth is not None else None,
            "pth_low": signs["pth"] is not None,
            "resulted": resulted,
            "context": chart_context(chart, run),
        },
        tuple(orders),
        # Under one year with a high calcium or an ALP below half the limit: the lethal form is possible: critical.
        indicator="critical" if infant and (far_below or signs["calcium"] is not None) else None,
    )


def _alp_before_run(chart: Chart, run: Sequence[LabResult]) -> LabResult | None:
    """The judged ALP just before the run of lows began (within ``ALP_CURRENT_DAYS`` of it): a normal one there means
    the ALP fell, which points to an acute cause rather than HPP (S47). A normal value that cannot be read as normal
    (pregnancy, a disease that raises ALP) is passed over."""
    earlier = [r for r in chart.interpretable_alp if r.when < run[0].when]
    if not earlier or earlier[-1].when < run[0].when - timedelta(days=chart.settings.ALP_CURRENT_DAYS):
        return None
    return earlier[-1]


ACUTE_KINDS = {"surgery": "surgery", "transfusion": "a transfusion", "apheresis": "apheresis", "fracture": "a fracture"}


def single_low_after_normal(chart: Chart) -> LabResult | None:
    """The normal ALP before the current run, when that run is a single low (not persistent): the shape of a fall
    with an acute cause."""
    run = chart.current_run
    if len(run) != 1 or chart.persistent:
        return None
    before = _alp_before_run(chart, run)
    return None if before is None or before.is_low() else before


def acute_drop(chart: Chart) -> dict[str, Any] | None:
    """When: the current run is a single low, the judged ALP just before it was normal (``_alp_before_run``), and
    surgery, a transfusion, apheresis or a fracture came within ``acute_event_days`` before the low
    (``context.acute_event_before``). Then the low is most likely the temporary fall those cause (S47): the event,
    how long before the low, and the normal before it. Not when: the lows persist, or no normal came before."""
    before = single_low_after_normal(chart)
    if before is None:
        return None
    run = chart.current_run
    event = acute_event_before(chart.diagnoses, run[0].when)
    if event is None:
        return None
    at = event.onset or event.recorded
    return {
        "name": event.name,
        "what": ACUTE_KINDS[event.kind if event.group == "acute_event" else "fracture"],
        "date": at.date().isoformat(),
        "days": max((run[0].when.date() - at.date()).days, 0),
        "before": before,
    }


def _tiers(
    orders: list[OrderSuggestion],
    resulted: list[dict[str, Any]],
    secondary_found: list[dict[str, Any]],
    substrates_high: list[dict[str, Any]],
) -> list[OrderSuggestion]:
    """Which suggestions are recommended: ALPL genetics once PLP or urine PEA supports HPP, and not while a
    secondary cause on the chart is still to be addressed (then a repeat ALP, for after it, is offered); free T4
    when the TSH is raised (to confirm hypothyroidism)."""
    tsh_high = any(r["key"] == "tsh" and r["abnormal"] for r in resulted)
    free_t4_done = any(r["key"] == "free_t4" for r in resulted)
    tiered = []
    for order in orders:
        recommended = order.recommended
        if order.test.group == "genetic":
            recommended = bool(substrates_high) and not secondary_found
        if order.test.group == "hpp" and secondary_found:
            recommended = False  # offered, not recommended, while a secondary cause is being corrected
        if order.test.key == "free_t4" and tsh_high:
            recommended = True
        tiered.append(OrderSuggestion(order.test, recommended))
    keys = {o.test.key for o in tiered}
    if tsh_high and not free_t4_done and "free_t4" not in keys:
        tiered.append(OrderSuggestion(workup_tests()["free_t4"], True))
    if secondary_found and "repeat_alp" not in keys:
        tiered.append(OrderSuggestion(workup_tests()["repeat_alp"], True))
    return tiered


CAUSE_NAMES = {
    "zinc": "the low zinc",
    "magnesium": "the low magnesium",
    "albumin": "the low albumin (malnutrition or acute illness)",
    "total_protein": "the malnutrition (low total protein)",
    "b12": "the vitamin B12 deficiency",
}


def secondary_causes(found: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The secondary causes the chart's results show, named as a clinician says them: hypothyroidism when the free
    T4 is low (with or without the TSH), a raised TSH still to be confirmed when no free T4 is on record."""
    keys = {r["key"]: r for r in found}
    causes = []
    if "free_t4" in keys:
        causes.append({"name": "the hypothyroidism", "key": "free_t4"})
    elif "tsh" in keys:
        causes.append({"name": "the raised TSH (confirm hypothyroidism with a free T4)", "key": "tsh"})
    causes += [{"name": name, "key": key} for key, name in CAUSE_NAMES.items() if key in keys]
    return causes


def in_variant_cohort(chart: Chart, reliable: Sequence[LabResult]) -> bool:
    """The patient is like those of the cohort the ALPL-variant figure comes from (S50): at least two ALP values
    certainly at or below ``alp_cohort_low`` (35 U/L), none of the chart's judged ALP results above
    ``alp_cohort_high`` (45 U/L), and secondary causes excluded, which here means: the other labs and every medication
    record were read, no antiresorptive is current and no drug on the chart lowers ALP."""
    limits = thresholds()
    at_most_low = [r for r in reliable if r.comparator not in (">", ">=") and r.value <= limits["alp_cohort_low"]]
    return (
        len(at_most_low) >= 2
        and not any(r.value > limits["alp_cohort_high"] for r in chart.alp)
        and "labs" not in chart.not_read
        and chart.medications_complete
        and not any(m.status == "current" and is_antiresorptive(m) for m in chart.medications)
        and not alp_lowering_drugs(chart)
    )


def _certainly_below(result: LabResult, limit: float) -> bool:
    """The true value is below ``limit``: "<25" is below 25, "<=25" and ">20" may not be."""
    if result.comparator in (">", ">="):
        return False
    return result.value < limit or (result.comparator == "<" and result.value <= limit)


ALP_LOWERING = {"estrogen": "oestrogen", "glucocorticoid": "glucocorticoid", "clofibrate": "clofibrate"}


def alp_lowering_drugs(chart: Chart) -> list[dict[str, str]]:
    """Drugs on the chart that lower ALP: current oestrogens and combined oral contraceptives, glucocorticoids and
    clofibrate (addendum 8), and earlier antiresorptives, which lower ALP too (S41; current ones have their own
    card). An earlier course is named with its last record (its end, its last dose: not its start) and how long ago
    that was, so a drug holiday reads as one."""
    found: dict[str, str] = {}
    for medication in chart.medications:
        if medication.status == "current":
            for group, label in ALP_LOWERING.items():
                if group in medication.groups:
                    found[medication.ingredient or medication.name] = label
    for course in chart.courses:
        if course.current or course.last is None or "teriparatide" in course.groups:
            continue
        ago = span_text((chart.now - course.last).days)
        found[course.drug] = f"earlier antiresorptive, last recorded {course.last.date().isoformat()}, {ago} ago"
    return [{"name": name, "kind": kind} for name, kind in sorted(found.items())]


def wilson_disease(chart: Chart, alp: LabResult) -> Finding | None:
    """When (asked by ``low_alp`` about the latest low of the current run): a patient from ``WILSON_MIN_AGE`` (3
    years) has a low ALP with a raised total bilirubin and liver injury (AST or ALT raised) in the same draw.
    Then: under ``WILSON_MAX_AGE`` (55), screen for Wilson disease: "wilson-screen" (warning); at any age from 3,
    both Korman ratios (ALP/bilirubin < 4, AST/ALT > 2.2: the Wilson pattern among patients in liver failure), an
    INR certainly at or above ``wilson_inr_alf`` (1.5: severe acute liver injury), or haemolysis (a low haptoglobin
    with a low haemoglobin) near the draw: "wilson-alf-pattern" (critical: contact hepatology today; at any age,
    since acute liver failure is not left to an age limit). Either suggests the Wilson tests, and the INR, not
    resulted within ``RECENT_RESULT_DAYS``.
    Not when: age unknown or under 3; no total bilirubin from the draw, or it is not raised; neither AST nor ALT
    from the draw is raised; from 55 with none of the signs of liver failure. A ratio needs exact numbers: a value
    with a comparator ("<20") gives no ratio, so no Korman pattern.

    Wilson disease presents with liver disease from about 3 years and into the 8th decade (EASL 2012); AASLD advises
    considering it from 3 to 55 years and not excluding it on age alone (A34, A35). Bilirubin alone (newborn
    jaundice, Gilbert syndrome) is not liver injury (addendum 3). In children the ratios are specific but
    insensitive, so a negative ratio does not remove the screen (S62).
    """
    age = chart.patient.age_years(alp.when)
    settings = chart.settings
    if age is None or age < settings.WILSON_MIN_AGE:
        return None
    bilirubin = chart.drawn_with(alp, "bilirubin_total")
    if not bilirubin or not bilirubin.is_high():
        return None
    ast, alt = chart.drawn_with(alp, "ast"), chart.drawn_with(alp, "alt")
    if not ((ast and ast.is_high()) or (alt and alt.is_high())):
        return None
    limits = thresholds()
    # Ratios need exact numbers: "<20" over a bilirubin says nothing about where the ratio lies.
    alp_bili = _ratio(alp, bilirubin)
    ast_alt = _ratio(ast, alt) if ast and alt else None
    alf_pattern = (
        alp_bili is not None
        and ast_alt is not None
        and alp_bili < limits["wilson_alp_bilirubin_ratio"]
        and ast_alt > limits["wilson_ast_alt_ratio"]
    )
    inr = near_draw(chart, alp, "inr")
    inr_high = inr is not None and inr.at_least(limits["wilson_inr_alf"])
    haemolysis = _haemolysis(chart, alp)
    haemoglobin = near_draw(chart, alp, "haemoglobin")
    if not (alf_pattern or inr_high or haemolysis) and age >= settings.WILSON_MAX_AGE:
        return None
    orders, resulted = workup(chart, ["wilson"])
    return Finding(
        "wilson-alf-pattern" if alf_pattern or inr_high or haemolysis else "wilson-screen",
        {
            "ratios_met": alf_pattern,
            "alp_bilirubin_met": alp_bili is not None and alp_bili < limits["wilson_alp_bilirubin_ratio"],
            "ast_alt_met": ast_alt is not None and ast_alt > limits["wilson_ast_alt_ratio"],
            "older": age >= settings.WILSON_MAX_AGE,
            "inr": display_row(inr) if inr is not None else None,
            "inr_high": inr_high,
            "inr_limit": limits["wilson_inr_alf"],
            "haemolysis": [display_row(r) for r in haemolysis],
            "haemoglobin": display_row(haemoglobin) if haemoglobin is not None else None,
            "haemoglobin_low": bool(haemoglobin is not None and haemoglobin.is_low()),
            "age": int(age),
            "child": age < 18,
            "alp": describe_alp(chart, alp),
            "bilirubin": display_row(bilirubin),
            "ast": display_row(ast) if ast else None,
            "alt": display_row(alt) if alt else None,
            "alp_bilirubin_ratio": None if alp_bili is None else round(alp_bili, 2),
            "ast_alt_ratio": None if ast_alt is None else round(ast_alt, 2),
            "ratio_limits": {
                "alp_bilirubin": limits["wilson_alp_bilirubin_ratio"],
                "ast_alt": limits["wilson_ast_alt_ratio"],
            },
            "resulted": resulted,
            "min_age": settings.WILSON_MIN_AGE,
            "max_age": settings.WILSON_MAX_AGE,
        },
        tuple(orders),
    )


NEAR_DRAW = timedelta(days=3)  # an INR or haemolysis marker this close to the ALP belongs to the same episode


def near_draw(chart: Chart, alp: LabResult, analyte: str) -> LabResult | None:
    """The result of ``analyte`` drawn with the ALP, else the latest within ``NEAR_DRAW`` of it."""
    drawn = chart.drawn_with(alp, analyte)
    if drawn is not None:
        return drawn
    latest = chart.latest(analyte)
    return latest if latest is not None and abs(latest.when - alp.when) <= NEAR_DRAW else None


def _haemolysis(chart: Chart, alp: LabResult) -> list[LabResult]:
    """Haemolysis near the ALP: a low haptoglobin with a low haemoglobin (Coombs-negative haemolysis with liver injury
    is a sign of Wilson disease in liver failure: S20, A34). An LDH is not read: it rises with liver injury itself;
    a low haemoglobin alone is named on the card with the tests that would tell."""
    haptoglobin, haemoglobin = near_draw(chart, alp, "haptoglobin"), near_draw(chart, alp, "haemoglobin")
    if haptoglobin is not None and haemoglobin is not None and haptoglobin.is_low() and haemoglobin.is_low():
        return [haptoglobin, haemoglobin]
    return []


def _ratio(numerator: LabResult, denominator: LabResult) -> float | None:
    if numerator.comparator or denominator.comparator or not denominator.value:
        return None
    return numerator.value / denominator.value

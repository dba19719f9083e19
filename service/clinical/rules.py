"""Low-ALP rules: pure functions from the chart (``service.clinical.chart``) to findings. No I/O, no Flask, no JSON.

A finding names a card kind (a file in ``cards/``), the facts its template shows, and the tests it suggests. Each
rule opens with when it fires, what it gives, and when it does not; the rows a card shows are shaped, and limited,
in ``service.clinical.views``, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from service.clinical.alp import is_current, unusable
from service.clinical.codes import WorkupTest, thresholds, workup_tests
from service.clinical.facts import LabResult
from service.clinical.medications import is_antiresorptive
from service.clinical.views import (
    alp_rows,
    describe_alp,
    display_row,
    earlier,
    not_interpreted_rows,
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


def abnormal(test: WorkupTest, result: LabResult) -> bool | None:
    if test.abnormal_when == "low":
        return result.is_low()
    if test.abnormal_when == "high":
        return result.is_high()
    return None


def explains(chart: Chart, test: WorkupTest, result: LabResult) -> bool:
    """The result counts as an explanation (a secondary cause) or as support for HPP. A PLP supports HPP from the
    sourced cut-off of 180 nmol/L (S51), not from the upper reference limit, and not while a vitamin B6 product is
    active (it raises PLP; S15b)."""
    if test.key == "plp":
        return result.at_least(thresholds()["plp_high"]) and not chart.current("pyridoxine")
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
        resulted.append(
            {
                **display_row(result),
                "key": test.key,
                "group": test.group,
                "abnormal": abnormal(test, result),
                "explanation": test.explanation if explains(chart, test, result) else None,
            }
        )
    return orders, resulted


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


# The results of an ALP's draw that the contamination check reads (and sets aside when the ALP is suspect).
EDTA_ANALYTES = ("potassium", "calcium", "zinc", "magnesium")


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
    age = chart.patient.age_years(alp.when)
    limits = thresholds()
    if age is not None and age < limits["edta_min_age_years"]:
        return None
    potassium = chart.drawn_with(alp, "potassium")
    calcium = chart.drawn_with(alp, "calcium")
    if not potassium or not calcium:
        return None
    if not potassium.at_least(limits["potassium_edta"]) or not calcium.is_low():
        return None
    chelated = [r for a in ("zinc", "magnesium") if (r := chart.drawn_with(alp, a)) is not None]
    if any(r.is_low() is False for r in chelated):
        return None
    return Finding(
        "sample-contamination",
        {
            "alp": describe_alp(chart, alp),
            "potassium": display_row(potassium),
            "potassium_limit": limits["potassium_edta"],
            "calcium": display_row(calcium),
            "supporting": [display_row(r) for r in chelated if r.is_low()],
        },
        orders=(OrderSuggestion(workup_tests()["repeat_alp"]),),
    )


def is_persistent(chart: Chart, lows: Sequence[LabResult]) -> bool:
    """When: ``lows`` (the current run without the lows suspected of contamination: none normal in between) holds
    at least two results, the latest of them current (``ALP_CURRENT_DAYS``), the first and the last at least
    ``PERSISTENT_MIN_DAYS`` (28) whole days apart.
    Then: persistently low (the "alp-low-persistent" card and its HPP workup; the antiresorptive cards say so).
    Not when: a single reliable low; lows closer together than ``PERSISTENT_MIN_DAYS``; the latest reliable low is
    history, so that history lows do not become "persistent" when today's sample is the suspect one.

    S47, S50, addendum 6: the sources count two or more lows with no normal value; the spacing, a design choice,
    keeps a fall after surgery or acute illness, which can last weeks, from counting."""
    return (
        len(lows) >= 2
        and is_current(lows[-1], chart.now, chart.settings)
        and (lows[-1].when - lows[0].when).days >= chart.settings.PERSISTENT_MIN_DAYS
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
            "not_interpreted": not_interpreted_rows(chart.not_interpreted()),
        },
        (OrderSuggestion(workup_tests()["repeat_alp"], recommended=False),),
    )


def low_alp(chart: Chart) -> list[Finding]:
    """When: the latest judged total ALP is low and current (``ALP_CURRENT_DAYS``): the chart has a current run of
    lows (every low since the last normal result).
    Then: first a "sample-contamination" card when ``sample_contamination`` finds the latest low possibly
    contaminated (only the latest sample can usefully be recollected; every possibly contaminated low of the run is
    not counted towards persistence and is marked in the card's table; the low-ALP card stays); then
    - persistently low (``is_persistent``) -> "alp-low-persistent" (warning): the HPP substrates (PLP, urine PEA)
      and the common secondary causes, ALPL genetics after them (recommended once PLP or urine PEA supports HPP and
      no secondary cause is found: ``_tiers``); "very low" is said for an adult (from ``ADULT_AGE``) with a reliable
      low certainly below ``alp_very_low`` (25 U/L), no secondary cause found and no Wilson card;
    - otherwise (one low, or lows too close together) -> "alp-low-single" (info): repeat the ALP when the patient is
      well, ``PERSISTENT_MIN_DAYS`` after the first low; recent secondary-cause results are shown;
    - and the Wilson card when ``wilson_disease`` fires for the latest low.
    A test resulted within ``RECENT_RESULT_DAYS`` is shown, not suggested again.
    Not when: no judged ALP, the latest judged one is normal, or the latest low is older than ``ALP_CURRENT_DAYS``
    (then only ``unreadable_alp`` may give a card). The patient-view hook does not ask for a deceased patient."""
    run = list(chart.current_run)
    if not run:
        unreadable = unreadable_alp(chart)
        return [unreadable] if unreadable else []
    settings = chart.settings
    latest = run[-1]
    reliable = chart.reliable(run)
    persistent = chart.persistent
    # Only the latest sample can usefully be recollected: earlier contaminated lows are set aside (not counted, and
    # marked in the table) without a card of their own; whether the workup stands without it is said on its card.
    findings = []
    if id(latest) in chart.contamination:
        contaminated = chart.contamination[id(latest)]
        findings.append(replace(contaminated, facts={**contaminated.facts, "workup_stands": persistent}))
    age = chart.patient.age_years(latest.when)
    child = age is not None and age < settings.ADULT_AGE
    if persistent:
        orders, resulted = workup(chart, ["hpp", "genetic", "secondary"])
    else:
        orders, resulted = workup(chart, ["repeat"], show=["secondary"])
    secondary_found = [r for r in resulted if r["group"] == "secondary" and r["explanation"]]
    substrates_high = [r for r in resulted if r["group"] == "hpp" and r["explanation"]]
    orders = _tiers(orders, resulted, secondary_found, substrates_high)
    wilson = wilson_disease(chart, latest)
    very_low_limit = thresholds()["alp_very_low"]
    # The ALPL-variant figure (S50) holds for adults with persistently low values, secondary causes excluded.
    very_low = (
        persistent
        and not child
        and age is not None
        and wilson is None
        and not secondary_found
        and in_variant_cohort(chart, reliable)
        and any(_certainly_below(r, very_low_limit) for r in reliable)
    )
    before = _alp_before_run(chart, run)
    span = (run[-1].when - run[0].when).days
    facts = {
        "readings": alp_rows(chart, run),
        "earlier": earlier(run, chart),
        "latest": describe_alp(chart, latest),
        "count": len(reliable),
        "set_aside": len(run) - len(reliable),  # lows of the run not counted (possible EDTA contamination)
        "span_days": (reliable[-1].when - reliable[0].when).days if reliable else span,
        "latest_suspect": id(latest) in chart.contamination,
        "very_low": very_low,
        "very_low_limit": very_low_limit,
        "age": None if age is None else int(age),
        "child": child,
        "infant": age is not None and age < 1,
        "resulted": resulted,
        "explanations": [r["explanation"] for r in resulted if r["explanation"]],
        "secondary_found": [r["explanation"] for r in secondary_found],
        "substrates_high": [r["explanation"] for r in substrates_high],
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
        "wilson": wilson is not None,
        "persistent_min_days": settings.PERSISTENT_MIN_DAYS,
        "current_days": settings.ALP_CURRENT_DAYS,
        "plp_note": workup_tests()["plp"].note,
    }
    kind = "alp-low-persistent" if persistent else "alp-low-single"
    findings.append(Finding(kind, facts, tuple(orders)))
    if wilson:
        findings.append(wilson)
    return findings


def _alp_before_run(chart: Chart, run: Sequence[LabResult]) -> LabResult | None:
    """The judged ALP just before the run of lows began (within ``ALP_CURRENT_DAYS`` of it): a normal one there means
    the ALP fell, which points to an acute cause rather than HPP (S47)."""
    earlier = [r for r in chart.alp if r.when < run[0].when]
    if not earlier or earlier[-1].when < run[0].when - timedelta(days=chart.settings.ALP_CURRENT_DAYS):
        return None
    return earlier[-1]


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
        if order.test.key == "free_t4" and tsh_high:
            recommended = True
        tiered.append(OrderSuggestion(order.test, recommended))
    keys = {o.test.key for o in tiered}
    if tsh_high and not free_t4_done and "free_t4" not in keys:
        tiered.append(OrderSuggestion(workup_tests()["free_t4"], True))
    if secondary_found and "repeat_alp" not in keys:
        tiered.append(OrderSuggestion(workup_tests()["repeat_alp"], True))
    return tiered


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
    card)."""
    found: dict[str, str] = {}
    taking = {m.ingredient or m.name for m in chart.medications if m.status == "current" and is_antiresorptive(m)}
    for medication in chart.medications:
        name = medication.ingredient or medication.name
        if medication.status == "current":
            for group, label in ALP_LOWERING.items():
                if group in medication.groups:
                    found[name] = label
        elif (
            medication.status == "history" and is_antiresorptive(medication) and medication.start and name not in taking
        ):
            last = medication.start.date().isoformat()
            found[name] = max(found.get(name, ""), f"earlier antiresorptive, last recorded {last}")
    return [{"name": name, "kind": kind} for name, kind in sorted(found.items())]


def wilson_disease(chart: Chart, alp: LabResult) -> Finding | None:
    """When (asked by ``low_alp`` about the latest low of the current run): a patient from ``WILSON_MIN_AGE`` (3
    years) has a low ALP with a raised total bilirubin and liver injury (AST or ALT raised) in the same draw.
    Then: under ``WILSON_MAX_AGE`` (55), screen for Wilson disease: "wilson-screen" (warning); at any age from 3,
    both Korman ratios (ALP/bilirubin < 4, AST/ALT > 2.2) are the acute-liver-failure pattern: "wilson-alf-pattern"
    (critical). Either suggests the Wilson tests not resulted within ``RECENT_RESULT_DAYS``.
    Not when: age unknown or under 3; no total bilirubin from the draw, or it is not raised; neither AST nor ALT
    from the draw is raised; from 55 without the acute-liver-failure pattern. A ratio needs exact numbers: a value
    with a comparator ("<20") gives no ratio, so no acute-liver-failure pattern.

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
    if not alf_pattern and age >= settings.WILSON_MAX_AGE:
        return None
    orders, resulted = workup(chart, ["wilson"])
    return Finding(
        "wilson-alf-pattern" if alf_pattern else "wilson-screen",
        {
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


def _ratio(numerator: LabResult, denominator: LabResult) -> float | None:
    if numerator.comparator or denominator.comparator or not denominator.value:
        return None
    return numerator.value / denominator.value

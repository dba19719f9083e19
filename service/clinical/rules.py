"""Low-ALP rules: pure functions from facts to findings. No I/O, no Flask, no JSON.

A finding names a card kind (a file in ``cards/``), the facts its template shows, and the tests it suggests.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from service.clinical.alp import TOTAL_ALP, current_since, is_current, low_run, total_alp
from service.clinical.codes import WorkupTest, thresholds, workup_tests
from service.clinical.facts import LabResult, Medication, Patient, number_text
from service.clinical.medications import is_antiresorptive
from service.settings import ClinicalSettings


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


@dataclass(frozen=True)
class Chart:
    """Everything the rules know about one patient at one moment (facts already checked by the reading step)."""

    patient: Patient
    labs: Sequence[LabResult]
    medications: Sequence[Medication]
    now: datetime
    settings: ClinicalSettings
    # What of the chart could not be read ("labs", "medications", "some_medications", "conditions"): not "none".
    not_read: frozenset[str] = frozenset()

    @property
    def medications_complete(self) -> bool:
        return not self.not_read & {"medications", "some_medications"}

    @cached_property
    def _by_analyte(self) -> dict[str, tuple[list[float], list[LabResult]]]:
        """Usable results per analyte, oldest first, with their timestamps for bisection."""
        index: dict[str, list[LabResult]] = {}
        for result in self.labs:
            if result.usable:
                index.setdefault(result.analyte, []).append(result)
        return {a: ([r.when.timestamp() for r in rs], rs) for a, rs in index.items()}

    @cached_property
    def alp(self) -> tuple[LabResult, ...]:
        """Judged total ALP results, oldest first."""
        return tuple(total_alp(self.labs))

    @cached_property
    def current_run(self) -> tuple[LabResult, ...]:
        """The low results since the last normal one, when the latest of them is current (``ALP_CURRENT_DAYS``);
        empty otherwise: a run whose latest low is older is history and gives no advice."""
        run = low_run(self.alp)
        return tuple(run) if run and is_current(run[-1], self.now, self.settings) else ()

    @cached_property
    def contamination(self) -> dict[int, Finding]:
        """Possible EDTA contamination, by ``id`` of the low result it concerns (the latest lows of the run)."""
        checked = self.current_run[-CONTAMINATION_CHECKED:]
        found = {id(r): sample_contamination(self, r) for r in checked}
        return {key: finding for key, finding in found.items() if finding is not None}

    def reliable(self, results: Sequence[LabResult]) -> list[LabResult]:
        """The results not suspected of sample contamination."""
        return [r for r in results if id(r) not in self.contamination]

    @cached_property
    def suspect(self) -> frozenset[int]:
        """``id`` of every result drawn with a possibly contaminated ALP: EDTA binds zinc, magnesium and calcium, so
        a low zinc from that draw is no evidence of zinc deficiency."""
        suspects = set()
        for alp in self.current_run:
            if id(alp) in self.contamination:
                for analyte in ("potassium", "calcium", "zinc", "magnesium"):
                    if (result := self.drawn_with(alp, analyte)) is not None:
                        suspects.add(id(result))
        return frozenset(suspects)

    @cached_property
    def persistent(self) -> bool:
        return is_persistent(self, self.reliable(self.current_run))

    def latest(self, analyte: str, within_days: int | None = None) -> LabResult | None:
        """The latest usable result of ``analyte`` (not from a draw suspected of contamination)."""
        _, results = self._by_analyte.get(analyte, ((), ()))
        result = next((r for r in reversed(results) if id(r) not in self.suspect), None)
        if result is None:
            return None
        if within_days and result.when < self.now - timedelta(days=within_days):
            return None
        return result

    def drawn_with(self, alp: LabResult, analyte: str) -> LabResult | None:
        """The result of ``analyte`` closest in time to the ALP result, within the same-draw window."""
        when = alp.when
        if when is None or analyte not in self._by_analyte:
            return None
        times, results = self._by_analyte[analyte]
        at = when.timestamp()
        window = thresholds()["same_draw_hours"] * 3600
        i = bisect_left(times, at)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(times) and abs(times[j] - at) <= window]
        return results[min(candidates, key=lambda j: abs(times[j] - at))] if candidates else None

    def current(self, group: str) -> list[Medication]:
        return [m for m in self.medications if group in m.groups and m.status == "current"]

    def describe_alp(self, result: LabResult) -> dict[str, Any]:
        return {**display_row(result), "history": not is_current(result, self.now, self.settings)}

    def not_interpreted(self, all_alp: bool = False) -> list[dict[str, Any]]:
        """Results that could not be used, that a card about the current ALP should name: ALP results within
        ``ALP_CURRENT_DAYS`` (any date with ``all_alp``) and workup results within ``RECENT_RESULT_DAYS``, newest
        first. An ALP that was read but cannot be judged ("<50" against a limit of 35) is named too."""
        alp_since = None if all_alp else current_since(self.now, self.settings)
        recent_since = self.now - timedelta(days=self.settings.RECENT_RESULT_DAYS)
        named = []
        for result in self.labs:
            problem = unusable(result)
            if problem is None:
                continue
            since = alp_since if result.analyte == TOTAL_ALP else recent_since
            if since is None or result.when is None or result.when >= since:
                named.append((result, problem))
        named.sort(key=lambda pair: pair[0].when or self.now, reverse=True)
        return [
            {**display_row(r), "unit": r.raw_unit or "" if r.value is None else r.unit, "problem": problem}
            for r, problem in named[:SHOWN_READINGS]
        ]

    def latest_alp_unreadable(self) -> LabResult | None:
        """The most recent total ALP, when it is current, newer than every judged one, and could not be used."""
        candidates = [r for r in self.labs if r.analyte == TOTAL_ALP and r.when is not None]
        if not candidates:
            return None
        latest = max(candidates, key=lambda r: r.when)
        if unusable(latest) is None or not is_current(latest, self.now, self.settings):
            return None
        if self.alp and self.alp[-1].when >= latest.when:
            return None
        return latest


# --------------------------------------------------------------------------------------------- presentation data

SHOWN_READINGS = 12  # a card lists at most this many results; older ones are counted, not listed
# The latest lows of a run that are checked for sample contamination: bounded so that the check stays linear on a
# chart with thousands of results (older lows matter less and are rarely drawn with potassium and calcium).
CONTAMINATION_CHECKED = 12


def contamination_checked(alp: Sequence[LabResult], now: datetime, settings: ClinicalSettings) -> list[LabResult]:
    """The low results checked for sample contamination: the latest of the run, when the run is current."""
    run = low_run(alp)
    if not run or not is_current(run[-1], now, settings):
        return []
    return run[-CONTAMINATION_CHECKED:]


def unusable(result: LabResult) -> str | None:
    """Why a result cannot be used: the reading step's problem, or, for total ALP, that it cannot be judged."""
    if result.problem is not None:
        return result.problem
    if result.analyte == TOTAL_ALP and result.usable and result.is_low() is None:
        if result.comparator:
            return "cannot be judged: the true value may be above or below the lower limit"
        return "no lower limit applies"
    return None


def lab_days_needed(
    alp_results: Sequence[LabResult], now: datetime, settings: ClinicalSettings
) -> tuple[date, set[date]]:
    """Which other lab results the rules can use: those since the recency cut-off, and those drawn on the days
    (plus or minus one) of the low ALP results that are checked for contamination. Lets a reader skip the rest of a
    large chart without parsing it."""
    checked = contamination_checked(total_alp(alp_results), now, settings)
    days = {r.when.date() + timedelta(days=d) for r in checked for d in (-1, 0, 1)}
    since = (now - timedelta(days=settings.RECENT_RESULT_DAYS + 1)).date()
    return since, days


def _limit_text(result: LabResult) -> str:
    """What the result was judged against, in words a clinician can check."""
    low, high = result.low, result.high
    if low is None and high is None:
        return "the lab's flag" if result.flag else "no limit available"
    if low is not None and high is not None:
        bounds = f"{number_text(low)}-{number_text(high)} {result.unit}"
    elif low is not None:
        bounds = f"lower limit {number_text(low)} {result.unit}"
    else:
        bounds = f"upper limit {number_text(high)} {result.unit}"
    sources = [s for s in dict.fromkeys((result.low_source, result.high_source)) if s]
    return f"{bounds} ({'; '.join(sources)})" if sources else bounds


def display_row(result: LabResult) -> dict[str, Any]:
    return {
        "analyte": result.analyte,
        "display": result.display,
        "value": result.shown_value,
        "unit": result.unit,
        "date": result.when.date().isoformat() if result.when else "date unknown",
        "preliminary": result.preliminary,
        "limit": result.low,
        "limit_source": result.low_source or ("the lab's flag" if result.flag else "no limit available"),
        "limits": _limit_text(result),
    }


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


def by_importance(findings: Sequence[Finding], indicator_of: Callable[[str], str]) -> list[Finding]:
    """Critical cards first, then warnings, then information; within an indicator, by card kind (stable).
    ``indicator_of`` gives a kind's own indicator where a finding does not override it."""
    return sorted(findings, key=lambda f: (INDICATOR_ORDER[f.indicator or indicator_of(f.kind)], f.kind))


# --------------------------------------------------------------------------------------------- rules


def sample_contamination(chart: Chart, alp: LabResult) -> Finding | None:
    """When: a low ALP was drawn with potassium >= 6.0 mmol/L and a low calcium (patients from 1 year of age), and
    neither a zinc nor a magnesium from that draw is normal or high.
    Then: possible EDTA contamination of that sample; recollect, and repeat the potassium, before any workup (which
    is kept for after).

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
            "alp": chart.describe_alp(alp),
            "potassium": display_row(potassium),
            "potassium_limit": limits["potassium_edta"],
            "calcium": display_row(calcium),
            "supporting": [display_row(r) for r in chelated if r.is_low()],
        },
        orders=(OrderSuggestion(workup_tests()["repeat_alp"]),),
    )


def is_persistent(chart: Chart, lows: Sequence[LabResult]) -> bool:
    """Persistently low: at least two low results (not suspected of contamination), none normal in between, the
    first and last at least ``PERSISTENT_MIN_DAYS`` apart and the latest of them current, so that history lows do
    not become "persistent" when today's sample is the suspect one (S47, S50, addendum 6: the sources count two or
    more lows with no normal value; the spacing, a design choice, keeps a fall after surgery or acute illness, which
    can last weeks, from counting)."""
    return (
        len(lows) >= 2
        and is_current(lows[-1], chart.now, chart.settings)
        and (lows[-1].when - lows[0].when).days >= chart.settings.PERSISTENT_MIN_DAYS
    )


def unreadable_alp(chart: Chart) -> Finding | None:
    """When: the latest ALP is current but could not be used (unknown unit, not a number, impossible value, no
    limit to judge it by).
    Then: say so (info): a low ALP may be hiding behind it, and this service's advice did not run on it."""
    latest = chart.latest_alp_unreadable()
    if latest is None:
        return None
    return Finding(
        "alp-unreadable",
        {
            "result": {**display_row(latest), "unit": latest.raw_unit or "" if latest.value is None else latest.unit},
            "problem": unusable(latest),
            "not_interpreted": chart.not_interpreted(),
        },
        (OrderSuggestion(workup_tests()["repeat_alp"], recommended=False),),
    )


def low_alp(chart: Chart) -> list[Finding]:
    """When: the latest total ALP is low and current.
    Then: one low (or lows too close together) -> repeat the ALP when the patient is well (info); persistently low
    -> the HPP substrates (PLP, urine PEA) and the common secondary causes, ALPL genetics after them (warning).
    A possibly contaminated sample gets its own card and is not counted towards persistence."""
    run = list(chart.current_run)
    if not run:
        unreadable = unreadable_alp(chart)
        return [unreadable] if unreadable else []
    findings = [chart.contamination[id(r)] for r in run if id(r) in chart.contamination]
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
    wilson = wilson_disease(chart, latest)
    very_low_limit = thresholds()["alp_very_low"]
    # The ALPL-variant figure (S50) holds for adults with persistently low values, secondary causes excluded.
    very_low = (
        persistent
        and not child
        and age is not None
        and wilson is None
        and not secondary_found
        and any(_certainly_below(r, very_low_limit) for r in reliable)
    )
    before = _alp_before_run(chart, run)
    span = (run[-1].when - run[0].when).days
    facts = {
        "readings": [chart.describe_alp(r) for r in run[-SHOWN_READINGS:]],
        "earlier": {"count": len(run) - SHOWN_READINGS, "since": display_row(run[0])["date"]}
        if len(run) > SHOWN_READINGS
        else None,
        "latest": chart.describe_alp(latest),
        "count": len(reliable),
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
        "repeat_from": (run[0].when + timedelta(days=settings.PERSISTENT_MIN_DAYS)).date().isoformat(),
        "previous_normal": display_row(before) if before is not None and before.is_low() is False else None,
        "not_interpreted": chart.not_interpreted(),
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
    """When: a patient from ``WILSON_MIN_AGE`` (3 years) has a low ALP with a raised total bilirubin and liver injury
    (AST or ALT raised) in the same draw.
    Then: under ``WILSON_MAX_AGE`` (55), screen for Wilson disease (warning); at any age from 3, both Korman ratios
    (ALP/bilirubin < 4, AST/ALT > 2.2) are the acute-liver-failure pattern (critical).

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
            "alp": chart.describe_alp(alp),
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

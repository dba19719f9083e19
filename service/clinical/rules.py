"""Low-ALP rules: pure functions from facts to findings. No I/O, no Flask, no JSON.

A finding names a card kind (a file in ``cards/``), the facts its template shows, and the tests it suggests.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from service.clinical.alp import TOTAL_ALP, current_since, is_current, low_run, total_alp
from service.clinical.codes import WorkupTest, thresholds, workup_tests
from service.clinical.facts import LabResult, Medication, Patient, number_text


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
    settings: Mapping[str, Any]

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
    def low_run_split(self) -> tuple[tuple[LabResult, ...], tuple[Finding, ...]]:
        """The current run of low ALP results without possibly contaminated ones, and the contamination findings.

        A run whose latest low is older than ``ALP_CURRENT_DAYS`` is history and gives no advice.
        """
        checked = contamination_checked(self.alp, self.now, self.settings)
        if not checked:
            return (), ()
        checked_ids = {id(r) for r in checked}
        clean: list[LabResult] = []
        contaminated: list[Finding] = []
        for result in low_run(self.alp):
            finding = sample_contamination(self, result) if id(result) in checked_ids else None
            if finding:
                contaminated.append(finding)
            else:
                clean.append(result)
        return tuple(clean), tuple(contaminated)

    def latest(self, analyte: str, within_days: int | None = None) -> LabResult | None:
        _, results = self._by_analyte.get(analyte, ((), ()))
        if not results:
            return None
        result = results[-1]
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
        return {**describe(result), "history": not is_current(result, self.now, self.settings)}

    def not_interpreted(self) -> list[dict[str, Any]]:
        """Results the reading step could not use, that a card about the current ALP should name: ALP results
        within ``ALP_CURRENT_DAYS`` and workup results within ``RECENT_RESULT_DAYS`` (newest first)."""
        alp_since = current_since(self.now, self.settings)
        recent_since = self.now - timedelta(days=self.settings["RECENT_RESULT_DAYS"])
        named = [
            r
            for r in self.labs
            if r.problem is not None
            and (r.when is None or r.when >= (alp_since if r.analyte == TOTAL_ALP else recent_since))
        ]
        return [
            {**describe(r), "unit": r.raw_unit or "", "problem": r.problem}
            for r in sorted(named, key=lambda r: r.when or self.now, reverse=True)[:SHOWN_READINGS]
        ]


# --------------------------------------------------------------------------------------------- presentation data

SHOWN_READINGS = 12  # a card lists at most this many results; older ones are counted, not listed
CONTAMINATION_CHECKED = SHOWN_READINGS


def contamination_checked(alp: Sequence[LabResult], now: datetime, settings: Mapping[str, Any]) -> list[LabResult]:
    """The low results checked for sample contamination: the latest of the run, when the run is current."""
    run = low_run(alp)
    if not run or not is_current(run[-1], now, settings):
        return []
    return run[-CONTAMINATION_CHECKED:]


def lab_days_needed(
    alp_results: Sequence[LabResult], now: datetime, settings: Mapping[str, Any]
) -> tuple[date, set[date]]:
    """Which other lab results the rules can use: those since the recency cut-off, and those drawn on the days
    (plus or minus one) of the low ALP results that are checked for contamination. Lets a reader skip the rest of a
    large chart without parsing it."""
    checked = contamination_checked(total_alp(alp_results), now, settings)
    days = {r.when.date() + timedelta(days=d) for r in checked for d in (-1, 0, 1)}
    since = (now - timedelta(days=settings["RECENT_RESULT_DAYS"] + 1)).date()
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


def describe(result: LabResult) -> dict[str, Any]:
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


def workup(chart: Chart, groups: Sequence[str]) -> tuple[list[OrderSuggestion], list[dict[str, Any]]]:
    """Tests of the groups to suggest, and those already resulted recently (shown with their judgement)."""
    recent_days = chart.settings["RECENT_RESULT_DAYS"]
    orders: list[OrderSuggestion] = []
    resulted: list[dict[str, Any]] = []
    for test in workup_tests().values():
        if test.group not in groups:
            continue
        # A repeat is asked for because of the recent result, so it is never "already resulted".
        result = chart.latest(test.analyte, recent_days) if test.analyte and test.group != "repeat" else None
        if result is None:
            orders.append(OrderSuggestion(test, recommended=test.recommended))
            continue
        flag = abnormal(test, result)
        resulted.append({**describe(result), "abnormal": flag, "explanation": test.explanation if flag else None})
    return orders, resulted


# --------------------------------------------------------------------------------------------- rules


def sample_contamination(chart: Chart, alp: LabResult) -> Finding | None:
    """Low ALP with potassium >= 6.0 mmol/L and a low calcium in the same draw: possible EDTA contamination
    (Cornes 2008 screened samples with K >= 6.0)."""
    potassium = chart.drawn_with(alp, "potassium")
    calcium = chart.drawn_with(alp, "calcium")
    if not potassium or not calcium:
        return None
    if not potassium.at_least(thresholds()["potassium_edta"]) or not calcium.is_low():
        return None
    supporting = [r for a in ("zinc", "magnesium") if (r := chart.drawn_with(alp, a)) and r.is_low()]
    return Finding(
        "sample-contamination",
        {
            "alp": chart.describe_alp(alp),
            "potassium": describe(potassium),
            "calcium": describe(calcium),
            "supporting": [describe(r) for r in supporting],
        },
        orders=(OrderSuggestion(workup_tests()["repeat_alp"]),),
    )


def low_alp(chart: Chart) -> list[Finding]:
    """Single low -> repeat (info); persistent low -> HPP-oriented workup (warning); contamination replaces both.
    Only a run whose latest low is current (``ALP_CURRENT_DAYS``) gives advice."""
    clean_run, contaminated = chart.low_run_split
    findings = list(contaminated)
    clean = list(clean_run)
    if not clean:
        return findings

    settings = chart.settings
    latest = clean[-1]
    span = (clean[-1].when - clean[0].when).days
    persistent = len(clean) >= 2 and span >= settings["PERSISTENT_MIN_DAYS"]
    age = chart.patient.age_years(latest.when)
    very_low_limit = thresholds()["alp_very_low"]
    adult = age is not None and age >= settings["ADULT_AGE"]
    very_low = adult and any(r.value < very_low_limit and r.comparator not in (">", ">=") for r in clean)
    groups = ["hpp", "genetic", "secondary"] if persistent else ["repeat", "secondary"]
    orders, resulted = workup(chart, groups)
    if persistent and any(r["abnormal"] and "PLP" in r["display"] for r in resulted):
        orders = [OrderSuggestion(o.test, True) if o.test.group == "genetic" else o for o in orders]
    facts = {
        "readings": [chart.describe_alp(r) for r in clean[-SHOWN_READINGS:]],
        "earlier": {"count": len(clean) - SHOWN_READINGS, "since": describe(clean[0])["date"]}
        if len(clean) > SHOWN_READINGS
        else None,
        "latest": chart.describe_alp(latest),
        "count": len(clean),
        "span_days": span,
        "very_low": very_low,
        "very_low_limit": very_low_limit,
        "age": None if age is None else int(age),
        "resulted": resulted,
        "explanations": [r["explanation"] for r in resulted if r["explanation"]],
        "not_interpreted": chart.not_interpreted(),
        "b6_supplements": sorted({m.name for m in chart.current("pyridoxine")}),
        "persistent_min_days": settings["PERSISTENT_MIN_DAYS"],
        "current_days": settings["ALP_CURRENT_DAYS"],
        "plp_note": workup_tests()["plp"].note,
    }
    kind = "alp-low-persistent" if persistent else "alp-low-single"
    findings.append(Finding(kind, facts, tuple(orders)))
    wilson = wilson_disease(chart, latest)
    if wilson:
        findings.append(wilson)
    return findings


def wilson_disease(chart: Chart, alp: LabResult) -> Finding | None:
    """Young patient, low ALP, raised bilirubin -> Wilson screen; with Korman's two ratios -> critical."""
    age = chart.patient.age_years(alp.when)
    if age is None or age >= chart.settings["WILSON_MAX_AGE"]:
        return None
    bilirubin = chart.drawn_with(alp, "bilirubin_total")
    if not bilirubin or not bilirubin.is_high():
        return None
    limits = thresholds()
    ast, alt = chart.drawn_with(alp, "ast"), chart.drawn_with(alp, "alt")
    # Ratios need exact numbers: "<20" over a bilirubin says nothing about where the ratio lies.
    alp_bili = _ratio(alp, bilirubin)
    ast_alt = _ratio(ast, alt) if ast and alt else None
    alf_pattern = (
        alp_bili is not None
        and ast_alt is not None
        and alp_bili < limits["wilson_alp_bilirubin_ratio"]
        and ast_alt > limits["wilson_ast_alt_ratio"]
    )
    orders, resulted = workup(chart, ["wilson"])
    return Finding(
        "wilson-alf-pattern" if alf_pattern else "wilson-screen",
        {
            "age": int(age),
            "alp": chart.describe_alp(alp),
            "bilirubin": describe(bilirubin),
            "ast": describe(ast) if ast else None,
            "alt": describe(alt) if alt else None,
            "alp_bilirubin_ratio": None if alp_bili is None else round(alp_bili, 2),
            "ast_alt_ratio": None if ast_alt is None else round(ast_alt, 2),
            "ratio_limits": {
                "alp_bilirubin": limits["wilson_alp_bilirubin_ratio"],
                "ast_alt": limits["wilson_ast_alt_ratio"],
            },
            "resulted": resulted,
            "max_age": chart.settings["WILSON_MAX_AGE"],
        },
        tuple(orders),
    )


def _ratio(numerator: LabResult, denominator: LabResult) -> float | None:
    if numerator.comparator or denominator.comparator or not denominator.value:
        return None
    return numerator.value / denominator.value

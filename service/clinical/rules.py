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

from service.clinical.alp import AlpReading, low_run, total_alp_readings
from service.clinical.codes import WorkupTest, thresholds, workup_tests
from service.clinical.facts import LabResult, Medication, Patient


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
    """Everything the rules know about one patient at one moment."""

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
            if result.value is not None and result.when is not None:
                index.setdefault(result.analyte, []).append(result)
        return {a: ([r.when.timestamp() for r in rs], rs) for a, rs in index.items()}

    @cached_property
    def _alp_readings(self) -> tuple[AlpReading, ...]:
        return tuple(total_alp_readings(self.patient, self.labs, self.settings))

    def alp_readings(self) -> list[AlpReading]:
        return list(self._alp_readings)

    @cached_property
    def low_run_split(self) -> tuple[tuple[AlpReading, ...], tuple[Finding, ...]]:
        """The current run of low ALP results without possibly contaminated ones, and the contamination findings.

        Only the most recent results of a run are checked for contamination: they are the ones a card shows.
        """
        run = low_run(self.alp_readings())
        checked = {id(r) for r in run[-CONTAMINATION_CHECKED:]}
        clean: list[AlpReading] = []
        contaminated: list[Finding] = []
        for reading in run:
            finding = sample_contamination(self, reading) if id(reading) in checked else None
            if finding:
                contaminated.append(finding)
            else:
                clean.append(reading)
        return tuple(clean), tuple(contaminated)

    def latest(self, analyte: str, within_days: int | None = None) -> LabResult | None:
        _, results = self._by_analyte.get(analyte, ((), ()))
        if not results:
            return None
        result = results[-1]
        if within_days and result.when < self.now - timedelta(days=within_days):
            return None
        return result

    def drawn_with(self, reading: AlpReading, analyte: str) -> LabResult | None:
        """The result of ``analyte`` closest in time to the ALP result, within the same-draw window."""
        when = reading.result.when
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


# --------------------------------------------------------------------------------------------- presentation data

SHOWN_READINGS = 12  # a card lists at most this many results; older ones are counted, not listed
CONTAMINATION_CHECKED = SHOWN_READINGS


def lab_days_needed(
    patient: Patient, alp_results: Sequence[LabResult], now: datetime, settings: Mapping[str, Any]
) -> tuple[date, set[date]]:
    """Which other lab results the rules can use: those since the recency cut-off, and those drawn on the days
    (plus or minus one) of the low ALP results that are checked for contamination. Lets a reader skip the rest of a
    large chart without parsing it."""
    run = low_run(total_alp_readings(patient, alp_results, settings))[-CONTAMINATION_CHECKED:]
    days = {r.result.when.date() + timedelta(days=d) for r in run for d in (-1, 0, 1)}
    since = (now - timedelta(days=settings["RECENT_RESULT_DAYS"] + 1)).date()
    return since, days


def describe(result: LabResult) -> dict[str, Any]:
    return {
        "display": result.display,
        "value": result.value if result.value is not None else result.raw_value,
        "unit": result.unit,
        "date": result.when.date().isoformat() if result.when else "date unknown",
        "preliminary": result.preliminary,
    }


def describe_reading(reading: AlpReading) -> dict[str, Any]:
    return {**describe(reading.result), "limit": reading.low_limit, "limit_source": reading.limit_source}


def abnormal(test: WorkupTest, result: LabResult) -> bool | None:
    sourced = {"plp": "plp_high", "pea_urine": "pea_high", "vitamin_d": "vitamin_d_excess"}.get(test.analyte)
    fallback = thresholds()[sourced] if sourced else None
    if test.abnormal_when == "low":
        return result.is_low()
    if test.abnormal_when == "high":
        return result.is_high(fallback)
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


def sample_contamination(chart: Chart, reading: AlpReading) -> Finding | None:
    """Low ALP with high potassium and low calcium in the same draw: possible EDTA contamination (Cornes 2008)."""
    potassium = chart.drawn_with(reading, "potassium")
    calcium = chart.drawn_with(reading, "calcium")
    if not potassium or not calcium:
        return None
    if not potassium.is_high(thresholds()["potassium_edta"]) or not calcium.is_low():
        return None
    supporting = [r for a in ("zinc", "magnesium") if (r := chart.drawn_with(reading, a)) and r.is_low()]
    return Finding(
        "sample-contamination",
        {
            "alp": describe_reading(reading),
            "potassium": describe(potassium),
            "calcium": describe(calcium),
            "supporting": [describe(r) for r in supporting],
        },
        orders=(OrderSuggestion(workup_tests()["repeat_alp"]),),
    )


def low_alp(chart: Chart) -> list[Finding]:
    """Single low -> repeat (info); persistent low -> HPP-oriented workup (warning); contamination replaces both."""
    clean_run, contaminated = chart.low_run_split
    findings = list(contaminated)
    clean = list(clean_run)
    if not clean:
        return findings

    settings = chart.settings
    latest = clean[-1]
    span = (clean[-1].result.when - clean[0].result.when).days
    persistent = len(clean) >= 2 and span >= settings["PERSISTENT_MIN_DAYS"]
    age = chart.patient.age_years(latest.result.when)
    very_low_limit = thresholds()["alp_very_low"]
    adult = age is not None and age >= settings["ADULT_AGE"]
    very_low = adult and any(r.value < very_low_limit for r in clean)
    groups = ["hpp", "genetic", "secondary"] if persistent else ["repeat", "secondary"]
    orders, resulted = workup(chart, groups)
    if persistent and any(r["abnormal"] and "PLP" in r["display"] for r in resulted):
        orders = [OrderSuggestion(o.test, True) if o.test.group == "genetic" else o for o in orders]
    unknown = [
        r
        for r in chart.labs
        if r.analyte == "alp_total" and r.unit_unknown and r.when and r.when >= clean[0].result.when
    ]
    facts = {
        "readings": [describe_reading(r) for r in clean[-SHOWN_READINGS:]],
        "earlier": {"count": len(clean) - SHOWN_READINGS, "since": describe_reading(clean[0])["date"]}
        if len(clean) > SHOWN_READINGS
        else None,
        "latest": describe_reading(latest),
        "count": len(clean),
        "span_days": span,
        "very_low": very_low,
        "very_low_limit": very_low_limit,
        "age": None if age is None else int(age),
        "resulted": resulted,
        "explanations": [r["explanation"] for r in resulted if r["explanation"]],
        "unknown_unit": [
            {"value": r.raw_value, "unit": r.raw_unit or "no unit", "date": r.when.date().isoformat()} for r in unknown
        ],
        "b6_supplements": sorted({m.name for m in chart.current("pyridoxine")}),
        "persistent_min_days": settings["PERSISTENT_MIN_DAYS"],
        "plp_note": workup_tests()["plp"].note,
    }
    kind = "alp-low-persistent" if persistent else "alp-low-single"
    findings.append(Finding(kind, facts, tuple(orders)))
    wilson = wilson_disease(chart, latest)
    if wilson:
        findings.append(wilson)
    return findings


def wilson_disease(chart: Chart, reading: AlpReading) -> Finding | None:
    """Young patient, low ALP, raised bilirubin -> Wilson screen; with Korman's two ratios -> critical."""
    age = chart.patient.age_years(reading.result.when)
    if age is None or age >= chart.settings["WILSON_MAX_AGE"]:
        return None
    bilirubin = chart.drawn_with(reading, "bilirubin_total")
    if not bilirubin or not bilirubin.is_high():
        return None
    limits = thresholds()
    ast, alt = chart.drawn_with(reading, "ast"), chart.drawn_with(reading, "alt")
    alp_bili = reading.value / bilirubin.value if bilirubin.value else None
    ast_alt = ast.value / alt.value if ast and alt and alt.value else None
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
            "alp": describe_reading(reading),
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

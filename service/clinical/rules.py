"""Low-ALP rules: pure functions from facts to findings. No I/O, no Flask, no JSON.

A finding names a card kind (a file in ``cards/``), the facts its template shows, and the tests it suggests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    evidence: tuple[LabResult, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Chart:
    """Everything the rules know about one patient at one moment."""

    patient: Patient
    labs: Sequence[LabResult]
    medications: Sequence[Medication]
    now: datetime
    settings: Mapping[str, Any]

    def alp_readings(self) -> list[AlpReading]:
        return total_alp_readings(self.patient, self.labs, self.settings)

    def latest(self, analyte: str, within_days: int | None = None) -> LabResult | None:
        since = self.now - timedelta(days=within_days) if within_days else None
        for result in reversed(self.labs):
            if result.analyte == analyte and result.value is not None:
                if since and (result.when is None or result.when < since):
                    return None
                return result
        return None

    def drawn_with(self, reading: AlpReading, analyte: str) -> LabResult | None:
        """The result of ``analyte`` closest in time to the ALP result, within the same-draw window."""
        when = reading.result.when
        if when is None:
            return None
        window = timedelta(hours=thresholds()["same_draw_hours"])
        candidates = [
            r
            for r in self.labs
            if r.analyte == analyte and r.value is not None and r.when and abs(r.when - when) <= window
        ]
        return min(candidates, key=lambda r: abs(r.when - when), default=None)

    def current(self, group: str) -> list[Medication]:
        return [m for m in self.medications if group in m.groups and m.status == "current"]


# --------------------------------------------------------------------------------------------- presentation data


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
    readings = chart.alp_readings()
    run = low_run(readings)
    if not run:
        return []
    findings: list[Finding] = []
    clean: list[AlpReading] = []
    for reading in run:
        contaminated = sample_contamination(chart, reading)
        if contaminated:
            findings.append(contaminated)
        else:
            clean.append(reading)
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
        "readings": [describe_reading(r) for r in clean],
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
    findings.append(Finding(kind, facts, tuple(orders), evidence=tuple(r.result for r in clean)))
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

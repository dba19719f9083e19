"""Antiresorptives and low ALP: pure rules. In HPP, bisphosphonates and denosumab can do harm (atypical femoral
fractures); they also lower ALP themselves, so the order of events matters (reference section 2e; S37, S38, S41)."""

from __future__ import annotations

from collections.abc import Sequence

from service.clinical.alp import AlpReading
from service.clinical.codes import workup_tests
from service.clinical.facts import Medication
from service.clinical.rules import SHOWN_READINGS, Chart, Finding, OrderSuggestion, describe_reading, workup

ANTIRESORPTIVE_GROUPS = ("bisphosphonate", "denosumab", "romosozumab", "raloxifene", "calcitonin")


def is_antiresorptive(medication: Medication) -> bool:
    return any(g in medication.groups for g in ANTIRESORPTIVE_GROUPS)


def _indicator(medications: Sequence[Medication], strong: str, weak: str) -> str:
    return strong if any(m.tier == "strong" for m in medications) else weak


def _clean_low_run(chart: Chart) -> list[AlpReading]:
    return list(chart.low_run_split[0])


def review_current(chart: Chart) -> list[Finding]:
    """patient-view: low ALP while an antiresorptive is current."""
    drugs = [m for m in chart.medications if m.status == "current" and is_antiresorptive(m)]
    run = _clean_low_run(chart)
    if not drugs or not run:
        return []
    starts = [m.start for m in drugs if m.start]
    first_start = min(starts) if starts else None
    readings = chart.alp_readings()
    low_before = [r for r in readings if r.low and first_start and r.result.when and r.result.when < first_start]
    orders, resulted = workup(chart, ["hpp", "genetic"])
    return [
        Finding(
            "antiresorptive-current-low-alp",
            {
                "drugs": sorted({m.name for m in drugs}),
                "start": first_start.date().isoformat() if first_start else None,
                "readings": [describe_reading(r) for r in run[-SHOWN_READINGS:]],
                "latest": describe_reading(run[-1]),
                "low_before": [describe_reading(r) for r in low_before],
                "resulted": resulted,
            },
            tuple(orders),
            indicator=_indicator(drugs, "warning", "info"),
        )
    ]


def review_order(chart: Chart, selected: Sequence[Medication], hpp_documented: bool) -> list[Finding]:
    """order-select: the selected antiresorptive orders against the ALP history."""
    drugs = [m for m in selected if is_antiresorptive(m)]
    if not drugs:
        return []
    deletes = tuple(m.reference for m in drugs if m.reference)
    names = sorted({m.name for m in drugs})
    readings = [r for r in chart.alp_readings() if r.low is not None]
    if hpp_documented:
        return [
            Finding(
                "antiresorptive-order-hpp",
                {"drugs": names, "readings": [describe_reading(r) for r in readings[-3:]]},
                deletes=deletes,
            )
        ]
    if not readings:
        return [
            Finding("antiresorptive-order-no-alp", {"drugs": names}, (OrderSuggestion(workup_tests()["repeat_alp"]),))
        ]
    run = _clean_low_run(chart)
    if not run:
        return []
    orders, resulted = workup(chart, ["hpp", "genetic"])
    return [
        Finding(
            "antiresorptive-order-low-alp",
            {
                "drugs": names,
                "readings": [describe_reading(r) for r in run[-SHOWN_READINGS:]],
                "latest": describe_reading(run[-1]),
                "resulted": resulted,
            },
            tuple(orders),
            deletes=deletes,
            indicator=_indicator(drugs, "warning", "info"),
        )
    ]

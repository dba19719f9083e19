"""What a card shows: lab results as the rows its template lists, and how many rows it lists. No I/O, no Flask.

Nothing here decides advice: the rules decide on every result their criteria name, and a limit below only shortens
the list a card shows (``SHOWN_READINGS``), counting what it leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from service.clinical.alp import is_current
from service.clinical.codes import normalise_unit
from service.clinical.facts import LabResult, number_text

if TYPE_CHECKING:
    from service.clinical.chart import Chart

SHOWN_READINGS = 12  # a card lists at most this many results; older ones are counted, not listed


def _limit_text(result: LabResult) -> str:
    """What the result was judged against, in words a clinician can check."""
    low, high = result.low, result.high
    if low is None and high is None:
        return "the lab's flag" if result.flag else "no limit available"
    unit = unit_text(result.unit)
    if low is not None and high is not None:
        bounds = f"{number_text(low)}-{number_text(high)} {unit}".rstrip()
    elif low is not None:
        bounds = f"lower limit {number_text(low)} {unit}".rstrip()
    else:
        bounds = f"upper limit {number_text(high)} {unit}".rstrip()
    sources = [s for s in dict.fromkeys((result.low_source, result.high_source)) if s]
    return f"{bounds} ({'; '.join(sources)})" if sources else bounds


def display_row(result: LabResult) -> dict[str, Any]:
    return {
        "analyte": result.analyte,
        "display": result.display,
        "value": result.shown_value,
        "unit": unit_text(result.unit),
        "date": result.when.date().isoformat() if result.when else "date unknown",
        "preliminary": result.preliminary,
        "limit": result.low,
        "limit_source": result.low_source or ("the lab's flag" if result.flag else "no limit available"),
        "limits": _limit_text(result),
        "reported": reported(result),
        "converted": converted(result),
    }


def converted(result: LabResult) -> str | None:
    """The value as the lab reported it when the service converted it to another unit (e.g. "87 umol/L"), else None:
    a card shows the lab's value first and the conversion in brackets, never a precision the lab did not give."""
    if result.value is None or result.raw_value is None or not result.raw_unit:
        return None
    if normalise_unit(result.raw_unit) == normalise_unit(result.unit):
        return None
    return f"{result.comparator or ''}{number_text(result.raw_value)} {unit_text(result.raw_unit)}"


def reported(result: LabResult) -> str:
    """The value with its unit as the lab reported it, the conversion to the card's unit in brackets, to as many
    significant figures as the lab gave (two at least, three at most: 87 µmol/L is 5.1 mg/dL, not 5.09)."""
    original = converted(result)
    if original is None:
        return f"{result.shown_value} {unit_text(result.unit)}".rstrip()
    given = len(number_text(result.raw_value).lstrip("-").replace(".", "").lstrip("0"))  # the lab's figures
    digits = min(3, max(2, given))
    converted_text = (
        f"{result.comparator or ''}{float(f'{result.value:.{digits}g}'):g} {unit_text(result.unit)}".rstrip()
    )
    return f"{original} ({converted_text})"


_MICRO = re.compile(r"(?<![A-Za-z])u(?=(?:kat|g|mol|L|IU|\[IU\])\b|(?:kat|g|mol)/)")
_ANNOTATION = re.compile(r"\{[^{}]*\}")


def unit_text(unit: str | None) -> str:
    """A UCUM unit as a clinician reads it: micro as µ (umol/L -> µmol/L, ukat/L -> µkat/L, ug/dL -> µg/dL), no
    brackets around IU (m[IU]/L -> mIU/L), no annotations ({INR} -> nothing: the INR is a plain ratio)."""
    if not unit:
        return ""
    text = _MICRO.sub("µ", unit).replace("{1.73_m2}", "1.73 m²").replace("[IU]", "IU")
    text = _ANNOTATION.sub("", text).strip()
    return "" if text in ("1", "/") else text


def describe_alp(chart: Chart, result: LabResult) -> dict[str, Any]:
    """An ALP row, marked ``history`` when it is older than ``ALP_CURRENT_DAYS``, with the antiresorptives it was
    measured on (``on``), whether it is a corrected version, and, for a child judged by a lab range that looks
    adult, the limit for age it is low against (``age_limit``)."""
    window = chart.window_of(result)
    row = display_row(result)
    if result.low_for_age_only:  # low only for age: the limit it is low against is the one for age and sex
        row = {**row, "limit": result.age_low, "limit_source": result.age_low_source, "lab_limit": result.low}
    return {
        **row,
        "history": not is_current(result, chart.now, chart.settings),
        "on": sorted({c.drug for c in chart.taking(result.when)}) if result.when else [],
        "corrected": result.corrected,
        "age_limit": result.age_low if result.low_for_age_only else None,
        "age_limit_source": result.age_low_source if result.low_for_age_only else None,
        "passed_over": window.reason if window is not None else None,
    }


def alp_rows(chart: Chart, results: Sequence[LabResult], shown: int | None = None) -> list[dict[str, Any]]:
    """The latest ``shown`` (``SHOWN_READINGS`` unless given) of the ALP results, oldest first, as rows; a row the
    rules set aside (possible EDTA contamination, ``Chart.contamination``) says so. The normal results the run
    passes over (pregnancy, a disease that raises ALP, a healing fracture: ``Chart.passed_over``) are listed among
    them, marked, so that the table shows every result since the first low."""
    listed = sorted([*results, *(r for r, _ in chart.passed_over if results and r.when > results[0].when)], key=_when)
    return [
        {**describe_alp(chart, r), "set_aside": id(r) in chart.contamination}
        for r in listed[-(shown or SHOWN_READINGS) :]
    ]


def _when(result: LabResult):
    return result.when


def span_text(days: int) -> str:
    """A span as a clinician says it: days under 8 weeks, weeks under 3 months, months under 2 years, else whole
    years (no false precision: "6 years", not "5.9 years")."""
    if days < 56:
        return f"{days} day{'s' if days != 1 else ''}"
    if days < 91:
        return f"{round(days / 7)} weeks"
    if days < 730:
        return f"{round(days / 30.44)} months"
    return f"{round(days / 365.25)} years"


def chart_context(chart: Chart, run: Sequence[LabResult] = (), parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """What of the chart around the labs a low-ALP or antiresorptive card names (cards/partials.j2 chart_context):
    pregnancy, a recent fracture, severe kidney disease with the PTH, diseases that raise ALP, hypophosphatasia on
    the problem list as suspected or inactive, and a child's lows against a range that looks adult."""
    windows = [w for w in chart.pregnancy_windows if w.holds(chart.now)]
    # The date to repeat from: 8 weeks after a delivery or due date on record (the latest), else not given.
    repeat_from = max((w.end for w in windows if w.ends_known), default=None)
    fractures = chart.recent_fractures
    kidney = chart.kidney
    pth = chart.latest("pth", chart.settings.RECENT_RESULT_DAYS)
    in_pregnancy = [r for r in run if any(w.holds(r.when) for w in chart.pregnancy_windows)]
    hpp = chart.hpp[0] if chart.hpp and not chart.hpp_known else None
    adult_range = [r for r in run if r.low_for_age_only]
    context = {
        "pregnant_now": bool(windows),
        "pregnancy_repeat_from": repeat_from.date().isoformat() if repeat_from else None,
        "low_in_pregnancy": [display_row(r) for r in in_pregnancy],
        "passed_over_reasons": sorted({w.reason for _, w in chart.passed_over}),
        "passed_over_labels": sorted({w.label for _, w in chart.passed_over if w.reason != "pregnancy"}),
        "fractures": [
            {
                "name": d.name,
                "date": (d.onset or d.recorded).date().isoformat(),
                "kind": d.kind,
                "ago": span_text((chart.now - (d.onset or d.recorded)).days),
                # the hip-fracture trial's window: zoledronate begun within 90 days of the repair (HZ7); counted
                # from the fracture's date, the repair's being rarely on the chart
                "window_end": ((d.onset or d.recorded) + timedelta(days=90)).date().isoformat(),
            }
            for d in fractures
        ],
        "ckd": (
            {
                "egfr": display_row(kidney.egfr) if kidney.egfr else None,
                "diagnosis": kidney.diagnosis.name if kidney.diagnosis else None,
                "pth": display_row(pth) if pth else None,
                "pth_low": bool(pth and pth.is_low()),
            }
            if kidney.severe
            else None
        ),
        "alp_raising": sorted({d.name for d in chart.alp_raising}),
        # a liver disease raises the liver isoenzyme, which a bone ALP sets apart; Paget disease and bone
        # metastases raise the bone isoenzyme itself
        "alp_raising_liver": any(d.kind == "cholestasis" for d in chart.alp_raising),
        "hpp": (
            {"name": hpp.name, "status": "suspected" if not hpp.confirmed else "inactive"} if hpp is not None else None
        ),
        "adult_range": (
            {
                "lab_limit": adult_range[-1].low,
                "age_limit": adult_range[-1].age_low,
                "source": adult_range[-1].age_low_source,
            }
            if adult_range
            else None
        ),
    }
    if parts is not None:  # a card about something else names only these parts
        return {k: (v if k in parts else type(v)()) if v is not None else None for k, v in context.items()}
    return context


def earlier(results: Sequence[LabResult], chart: Chart | None = None) -> dict[str, Any] | None:
    """How many of the results ``alp_rows`` leaves out, the date of the first, and (given the chart) how many of them
    the rules set aside (possible EDTA contamination); None when it lists them all."""
    if len(results) <= SHOWN_READINGS:
        return None
    left_out = results[: len(results) - SHOWN_READINGS]
    set_aside = sum(id(r) in chart.contamination for r in left_out) if chart is not None else 0
    return {"count": len(left_out), "since": display_row(results[0])["date"], "set_aside": set_aside}


def unreadable_row(result: LabResult) -> dict[str, Any]:
    """A result that could not be used, with the unit it came in (none when it has no value to read)."""
    return {**display_row(result), "unit": result.raw_unit or "" if result.value is None else result.unit}


def not_interpreted_rows(named: Sequence[tuple[LabResult, str]]) -> list[dict[str, Any]]:
    """The first ``SHOWN_READINGS`` of ``Chart.not_interpreted`` (newest first), as rows with the problem."""
    return [{**unreadable_row(r), "problem": problem} for r, problem in named[:SHOWN_READINGS]]

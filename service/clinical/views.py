"""What a card shows: lab results as the rows its template lists, and how many rows it lists. No I/O, no Flask.

Nothing here decides advice: the rules decide on every result their criteria name, and a limit below only shortens
the list a card shows (``SHOWN_READINGS``), counting what it leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from service.clinical.alp import is_current
from service.clinical.facts import LabResult, number_text

if TYPE_CHECKING:
    from service.clinical.chart import Chart

SHOWN_READINGS = 12  # a card lists at most this many results; older ones are counted, not listed


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


def describe_alp(chart: Chart, result: LabResult) -> dict[str, Any]:
    """An ALP row, marked ``history`` when it is older than ``ALP_CURRENT_DAYS``."""
    return {**display_row(result), "history": not is_current(result, chart.now, chart.settings)}


def alp_rows(chart: Chart, results: Sequence[LabResult], shown: int | None = None) -> list[dict[str, Any]]:
    """The latest ``shown`` (``SHOWN_READINGS`` unless given) of the ALP results, oldest first, as rows; a row the
    rules set aside (possible EDTA contamination, ``Chart.contamination``) says so."""
    return [
        {**describe_alp(chart, r), "set_aside": id(r) in chart.contamination}
        for r in results[-(shown or SHOWN_READINGS) :]
    ]


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

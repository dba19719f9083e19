"""Total ALP over time: which results count, which are low, and which are recent enough to act on.

Each result arrives judged (``LabResult.is_low``: the lab's range, else its flag, else the site limit or the CALIPER
interval for age and sex; see ``service.clinical.limits``). Bone and liver isoenzymes are never total ALP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from service.clinical.facts import LabResult
from service.settings import ClinicalSettings

TOTAL_ALP = "alp_total"


def total_alp(results: Sequence[LabResult]) -> list[LabResult]:
    """Usable total ALP results that could be judged, oldest first."""
    return [r for r in results if r.analyte == TOTAL_ALP and r.usable and r.is_low() is not None]


def low_run(results: Sequence[LabResult], passed_over: Callable[[LabResult], bool] | None = None) -> list[LabResult]:
    """The low results since the last normal one; empty when the latest judged result is normal. A result that is not
    low but ``passed_over`` (a normal value that cannot be read as normal, in pregnancy for example) neither ends the
    run nor belongs to it."""
    run: list[LabResult] = []
    for result in reversed(results):
        if not result.is_low():
            if passed_over is not None and passed_over(result):
                continue
            break
        run.append(result)
    run.reverse()
    return run


def unusable(result: LabResult) -> str | None:
    """Why a result cannot be used: the reading step's problem, or, for total ALP, that it cannot be judged."""
    if result.problem is not None:
        return result.problem
    if result.analyte == TOTAL_ALP and result.usable and result.is_low() is None:
        if result.comparator:
            return "cannot be judged: the true value may be above or below the lower limit"
        return "no lower limit applies"
    return None


def current_since(now: datetime, settings: ClinicalSettings) -> datetime:
    """Results before this moment are history: shown as such, never a reason to act today.

    ``ALP_CURRENT_DAYS`` is a setting, not a sourced number (no source gives one): a low ALP from long ago says
    little about the patient now (age band, drugs and illness change), so advice needs a result this recent.
    """
    return now - timedelta(days=settings.ALP_CURRENT_DAYS)


def is_current(result: LabResult, now: datetime, settings: ClinicalSettings) -> bool:
    return result.when is not None and result.when >= current_since(now, settings)


def current_low_run(
    results: Sequence[LabResult],
    now: datetime,
    settings: ClinicalSettings,
    passed_over: Callable[[LabResult], bool] | None = None,
    paused: Callable[[datetime], timedelta] | None = None,
) -> list[LabResult]:
    """The low results since the last normal one (``low_run``), when the latest of them is current
    (``ALP_CURRENT_DAYS``); empty otherwise: a run whose latest low is older is history and gives no advice.
    ``paused(since)`` is the time since then in which no normal result could be had (pregnancy): it does not age
    the run."""
    run = low_run(results, passed_over)
    if not run:
        return []
    later = now - paused(run[-1].when) if paused is not None else now
    return run if is_current(run[-1], later, settings) else []

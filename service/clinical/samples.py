"""Facts about results that the chart and the rules both need, below both: whether a low ALP's sample may hold EDTA
(``possible_contamination``) and whether a run of lows is persistent (``is_persistent``). No I/O, no Flask.

They read the results they are given, never the chart: ``service.clinical.chart`` keeps their answers once per
request, ``service.clinical.rules`` turns them into cards (``rules.sample_contamination``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.clinical.alp import is_current
from service.clinical.codes import thresholds
from service.clinical.facts import LabResult, Patient
from service.settings import ClinicalSettings

# The results of an ALP's draw that the contamination check reads (and sets aside when the ALP is suspect).
EDTA_ANALYTES = ("potassium", "calcium", "zinc", "magnesium")


@dataclass(frozen=True)
class Contamination:
    """Why a low ALP's sample may hold EDTA: the potassium and the low calcium drawn with it, and the low zinc and
    magnesium of that draw that support it."""

    potassium: LabResult
    calcium: LabResult
    supporting: tuple[LabResult, ...]


def possible_contamination(
    patient: Patient, alp: LabResult, drawn_with: Callable[[LabResult, str], LabResult | None]
) -> Contamination | None:
    """The evidence that ``alp`` (a low ALP) was drawn into EDTA, or None; when it is, and why, is said by the rule
    that gives its card, ``rules.sample_contamination``. ``drawn_with(alp, analyte)`` is ``Chart.drawn_with``."""
    age = patient.age_years(alp.when)
    limits = thresholds()
    if age is not None and age < limits["edta_min_age_years"]:
        return None
    potassium = drawn_with(alp, "potassium")
    calcium = drawn_with(alp, "calcium")
    if not potassium or not calcium:
        return None
    if not potassium.at_least(limits["potassium_edta"]) or not calcium.is_low():
        return None
    chelated = [r for a in ("zinc", "magnesium") if (r := drawn_with(alp, a)) is not None]
    if any(r.is_low() is False for r in chelated):
        return None
    return Contamination(potassium, calcium, tuple(r for r in chelated if r.is_low()))


def is_persistent(
    lows: Sequence[LabResult], now: datetime, paused: Callable[[datetime], timedelta], settings: ClinicalSettings
) -> bool:
    """When: ``lows`` (the current run without the lows suspected of contamination: none normal in between) holds
    at least two results, the latest of them current (``ALP_CURRENT_DAYS``), the first and the last at least
    ``PERSISTENT_MIN_DAYS`` (28) whole days apart.
    Then: persistently low (the "alp-low-persistent" card and its HPP workup; the antiresorptive cards say so).
    Not when: a single reliable low; lows closer together than ``PERSISTENT_MIN_DAYS``; the latest reliable low is
    history, so that history lows do not become "persistent" when today's sample is the suspect one.
    ``paused(since)`` is the time since then spent in pregnancy (``Chart.paused``): it does not age a run.

    S47, S50, addendum 6: the sources count two or more lows with no normal value; the spacing, a design choice,
    keeps a fall after surgery or acute illness, which can last weeks, from counting."""
    return (
        len(lows) >= 2
        and is_current(lows[-1], now - paused(lows[-1].when), settings)
        and (lows[-1].when - lows[0].when).days >= settings.PERSISTENT_MIN_DAYS
    )

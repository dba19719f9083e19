"""Which reference limits apply to a result when the laboratory sent neither a range nor a flag.

Many feeds (Synthea among them) send bare numbers: without a fallback, a bilirubin of 14 mg/dL is "not high" and
the Wilson and EDTA rules never fire. The fallback is the sourced interval in ``data/reference_intervals.csv`` for
the patient's age and sex on the day of the test; for total ALP in adults, the site's own lower limit
(``ALP_SITE_LOW_LIMITS``) comes first, for the sexes it gives. The card always says which limit was used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from service.clinical.codes import ReferenceBand, reference_bands
from service.clinical.facts import Patient
from service.settings import ClinicalSettings

TOTAL_ALP = "alp_total"
SITE_LIMIT = "the site's lower limit"


@dataclass(frozen=True)
class Limits:
    low: float | None
    high: float | None
    source: str


def _in_band(age: Mapping[str, int], band: ReferenceBand) -> bool:
    amount, unit = band.age_from
    if age[unit] < amount:
        return False
    if band.age_to is None:
        return True
    amount, unit = band.age_to
    return age[unit] < amount


def fallback_limits(analyte: str, patient: Patient, when: datetime, settings: ClinicalSettings) -> Limits | None:
    """The fallback interval for the analyte at the patient's age and sex on ``when``; None when none applies."""
    bands = reference_bands().get(analyte, ())
    if not bands:
        return None
    age = {unit: patient.age_in(unit, when) for unit in "dmy"}
    if age["d"] is None:
        if analyte != TOTAL_ALP:
            return None  # no age, no band: judging a child by adult limits could call a normal value abnormal
        # ALP without a birth date: the lowest adult lower limit never calls a normal adult value low.
        adult = [b for b in bands if b.age_to is None]
        return Limits(min(b.low for b in adult), None, "adult lower limit, CALIPER (birth date unknown)")
    if age["d"] < 0:
        return None
    if analyte == TOTAL_ALP:
        site = settings.ALP_SITE_LOW_LIMITS
        if site and age["y"] >= settings.ADULT_AGE:
            # The site's limit for the patient's sex; sex unknown or "other": the lower of both, when both are set.
            # A sex the site left out gets the built-in table below, never the other sex's limit.
            if patient.gender in site:
                return Limits(site[patient.gender], None, SITE_LIMIT)
            if patient.gender not in ("male", "female") and {"male", "female"} <= site.keys():
                return Limits(min(site["male"], site["female"]), None, SITE_LIMIT)
    if age["y"] >= settled_age(analyte):  # most patients: no band boundary lies ahead (same answer, cached)
        return _combined(analyte, patient.gender, tuple(b for b in bands if b.age_to is None))
    return _combined(analyte, patient.gender, tuple(b for b in bands if _in_band(age, b)))


@cache
def settled_age(analyte: str) -> int:
    """The age in whole years from which every band's boundaries lie behind: only the open-ended bands apply, all of
    them. A bound in days or months is rounded up to whole years (a year has at least 12 months and 365 days)."""
    per_year = {"d": 365, "m": 12, "y": 1}
    bounds = [bound for b in reference_bands().get(analyte, ()) for bound in (b.age_from, b.age_to) if bound]
    return max((-(-amount // per_year[unit]) for amount, unit in bounds), default=0)


@cache
def _combined(analyte: str, gender: str | None, bands: tuple[ReferenceBand, ...]) -> Limits | None:
    """The limits of the bands that apply, for the patient's sex. Sex unknown or "other": both sexes' bands are
    combined into the widest limits, which call nothing abnormal that would be normal for either sex."""
    if gender in ("male", "female"):
        bands = tuple(b for b in bands if b.sex in ("any", gender))
    if not bands:
        return None
    lows = [b.low for b in bands if b.low is not None]
    highs = [b.high for b in bands if b.high is not None]
    labels = sorted({b.label for b in bands})
    return Limits(min(lows) if lows else None, max(highs) if highs else None, "; ".join(labels))

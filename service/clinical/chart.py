"""The chart: everything the rules know about one patient at one moment, indexed for them. No I/O, no Flask.

The facts are already checked by the reading step (``service.fhir.readers``). The chart finds results (the latest of
an analyte, the one drawn with an ALP, the current run of lows) and keeps, once per request, what two rules decide
about it that rules and the SMART page ask again: which lows are possibly contaminated
(``samples.possible_contamination``) and whether the run is persistent (``samples.is_persistent``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property

from service.clinical.alp import TOTAL_ALP, current_low_run, current_since, is_current, total_alp, unusable
from service.clinical.codes import thresholds
from service.clinical.context import (
    KidneyFunction,
    Window,
    egfr_ckd_epi_2021,
    fracture_windows,
    fragility_fractures,
    kidney_function,
    masked_span,
    pregnancy_windows,
    raising_windows,
    recent_fractures,
)
from service.clinical.facts import Diagnosis, LabResult, Medication, Patient, PregnancyEvidence
from service.clinical.samples import EDTA_ANALYTES, Contamination, is_persistent, possible_contamination
from service.clinical.treatment import Course, courses
from service.settings import ClinicalSettings


@dataclass(frozen=True)
class Chart:
    """Everything the rules know about one patient at one moment (facts already checked by the reading step)."""

    patient: Patient
    labs: Sequence[LabResult]
    medications: Sequence[Medication]
    now: datetime
    settings: ClinicalSettings
    # What of the chart could not be (completely) read ("labs", "medications", "some_medications", "conditions",
    # "alp_history"): not "none" (service.hooks.patient_chart.not_read).
    not_read: frozenset[str] = frozenset()
    diagnoses: Sequence[Diagnosis] = ()
    pregnancy: Sequence[PregnancyEvidence] = ()

    # ------------------------------------------------------------------------------ the chart around the labs

    @cached_property
    def pregnancy_windows(self) -> tuple[Window, ...]:
        return tuple(pregnancy_windows(self.diagnoses, self.pregnancy, self.now))

    @cached_property
    def windows(self) -> tuple[Window, ...]:
        """Every span in which a normal total ALP is not read as normal (``service.clinical.context``)."""
        return (*self.pregnancy_windows, *raising_windows(self.diagnoses), *fracture_windows(self.fractures))

    @cached_property
    def fractures(self) -> tuple[Diagnosis, ...]:
        """Fragility fractures on the chart (``context.fragility_fractures``)."""
        return tuple(fragility_fractures(self.diagnoses, self.patient, self.settings.ADULT_AGE))

    def window_of(self, result: LabResult, reasons: tuple[str, ...] = ("pregnancy", "alp_raising", "fracture")):
        """The window in which a result that is not low cannot be read as normal (None for a low one)."""
        if result.when is None or result.is_low():
            return None
        return next((w for w in self.windows if w.reason in reasons and w.holds(result.when)), None)

    def paused(self, since: datetime) -> timedelta:
        """The time since ``since`` spent in pregnancy windows: it does not age a run of lows."""
        return masked_span(since, self.now, self.pregnancy_windows)

    @cached_property
    def hpp(self) -> tuple[Diagnosis, ...]:
        """Hypophosphatasia on the problem list (documented or suspected, active or not), documented first."""
        found = [d for d in self.diagnoses if d.group == "hpp"]
        return tuple(sorted(found, key=lambda d: (not d.confirmed, not d.active)))

    @cached_property
    def hpp_excluded(self) -> Diagnosis | None:
        """Hypophosphatasia recorded as excluded on the problem list (refuted, or "HPP ruled out"), when no entry says
        it is documented or suspected."""
        if self.hpp:
            return None
        return next((d for d in self.diagnoses if d.group == "hpp_excluded"), None)

    @property
    def hpp_known(self) -> bool:
        """Hypophosphatasia documented (confirmed or unqualified) on the problem list, active or not: a lifelong
        genetic disorder marked resolved or inactive is still HPP (the card says to keep it active)."""
        return any(d.confirmed for d in self.hpp)

    @cached_property
    def kidney(self) -> KidneyFunction:
        return kidney_function(self.diagnoses, self.latest_egfr)

    @cached_property
    def latest_egfr(self) -> LabResult | None:
        """The latest recent eGFR, reported, or else calculated from a recent serum creatinine (CKD-EPI 2021)."""
        days = self.settings.RECENT_RESULT_DAYS
        reported = self.latest("egfr", days)
        creatinine = self.latest("creatinine", days)
        if creatinine is None or (reported is not None and reported.when >= creatinine.when):
            return reported
        if creatinine.comparator is not None:
            return reported
        egfr = egfr_ckd_epi_2021(creatinine.value, self.patient, creatinine.when)
        if egfr is None:
            return reported
        return LabResult(
            "egfr",
            creatinine.loinc,
            f"eGFR calculated from creatinine {creatinine.shown_value} {creatinine.unit} (CKD-EPI 2021)",
            creatinine.when,
            round(egfr),
            "mL/min/{1.73_m2}",
            resource_id=creatinine.resource_id,
        )

    @cached_property
    def recent_fractures(self) -> tuple[Diagnosis, ...]:
        return tuple(recent_fractures(self.fractures, self.now))

    @cached_property
    def alp_raising(self) -> tuple[Diagnosis, ...]:
        """Active diseases that raise total ALP (Paget disease of bone, bone metastases, cholestatic liver disease)."""
        return tuple(d for d in self.diagnoses if d.group == "alp_raising" and d.active)

    @cached_property
    def courses(self) -> tuple[Course, ...]:
        """The antiresorptives (and teriparatide) on the chart as courses (``service.clinical.treatment``)."""
        return tuple(courses(self.medications))

    def taking(self, when: datetime) -> list[Course]:
        """The antiresorptive courses that cover ``when`` (a result measured on treatment)."""
        return [c for c in self.courses if c.covers(when) and "teriparatide" not in c.groups]

    @cached_property
    def pregnant_now(self) -> bool:
        """Pregnant or within ``postpartum_weeks`` of a delivery now (a window holds today)."""
        return any(w.holds(self.now) for w in self.pregnancy_windows)

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
        empty otherwise: a run whose latest low is older is history and gives no advice.

        A normal result in pregnancy or within 8 weeks of delivery, or while a disease that raises total ALP is
        active, neither ends the run nor counts as normal (``window_of``), and time in pregnancy does not age the
        run. One while a fracture heals is passed over only when the lows before the fracture were already
        persistent (the warning stays at the moment an antiresorptive is started)."""
        steady = ("pregnancy", "alp_raising")
        run = current_low_run(
            self.alp, self.now, self.settings, lambda r: self.window_of(r, steady) is not None, self.paused
        )
        if not any(w.reason == "fracture" for w in self.windows):
            return tuple(run)
        healing = current_low_run(
            self.alp, self.now, self.settings, lambda r: self.window_of(r) is not None, self.paused
        )
        if len(healing) > len(run) and self._persistent_before_fracture(healing):
            return tuple(healing)
        return tuple(run)

    def _persistent_before_fracture(self, run: Sequence[LabResult]) -> bool:
        """Two lows at least ``PERSISTENT_MIN_DAYS`` apart before the fracture whose healing the run passes over."""
        for window in (w for w in self.windows if w.reason == "fracture"):
            before = [r for r in run if r.when < window.start]
            after = [r for r in self.alp if window.holds(r.when) and not r.is_low()]
            if (
                after
                and len(before) >= 2
                and (before[-1].when - before[0].when).days >= self.settings.PERSISTENT_MIN_DAYS
            ):
                return True
        return False

    @cached_property
    def passed_over(self) -> tuple[tuple[LabResult, Window], ...]:
        """The normal results since the first low of the current run that were not read as normal, with why."""
        run = self.current_run
        if not run:
            return ()
        found = []
        for result in self.alp:
            if result.when > run[0].when and not result.is_low():
                window = self.window_of(result)
                if window is not None:
                    found.append((result, window))
        return tuple(found)

    @cached_property
    def interpretable_alp(self) -> tuple[LabResult, ...]:
        """The judged ALP results, without the normal ones that cannot be read as normal (``window_of``): what a card
        may call "normal"."""
        return tuple(r for r in self.alp if self.window_of(r) is None)

    @cached_property
    def contamination(self) -> dict[int, Contamination]:
        """Possible EDTA contamination, by ``id`` of the low result it concerns. Every low of the current run is
        checked, however many of them a card lists: each one counts towards the advice (its count, its span,
        persistence), so none may count unchecked."""
        found = {id(r): possible_contamination(self.patient, r, self.drawn_with) for r in self.current_run}
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
                for analyte in EDTA_ANALYTES:
                    if (result := self.drawn_with(alp, analyte)) is not None:
                        suspects.add(id(result))
        return frozenset(suspects)

    @cached_property
    def persistent(self) -> bool:
        return is_persistent(self.reliable(self.current_run), self.now, self.paused, self.settings)

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

    def not_interpreted(self, all_alp: bool = False) -> list[tuple[LabResult, str]]:
        """Results that could not be used, with why, that a card about the current ALP should name: ALP results
        within ``ALP_CURRENT_DAYS`` (any date with ``all_alp``) and workup results within ``RECENT_RESULT_DAYS``,
        newest first, all of them (a card lists the newest: ``views.not_interpreted_rows``). An ALP that was read
        but cannot be judged ("<50" against a limit of 35) is named too."""
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
        return named

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


@dataclass(frozen=True)
class LabsNeeded:
    """Which other lab results the rules can use, so that a reader may skip the rest of a large chart unparsed:
    every result from ``since`` (the recency cut-off, ``RECENT_RESULT_DAYS``); every result of ``days``, those
    around the latest low (the Wilson check reads bilirubin, AST and ALT from its draw); and of ``draw_days``, those
    around every other low of the current run, only the ``EDTA_ANALYTES`` that the contamination check reads
    (``Chart.contamination`` checks every low of the run). A day is taken with its neighbours (a draw near midnight,
    a date in another time zone)."""

    since: date
    days: frozenset[date]
    draw_days: frozenset[date]
    draw_analytes: tuple[str, ...] = EDTA_ANALYTES


def lab_days_needed(
    alp_results: Sequence[LabResult],
    now: datetime,
    settings: ClinicalSettings,
    run: Sequence[LabResult] | None = None,
) -> LabsNeeded:
    """``run``: the chart's current run of lows when it is known (``Chart.current_run``, which weighs pregnancy and
    the diseases that raise ALP); else it is found from the ALP results alone."""
    if run is None:
        run = current_low_run(total_alp(alp_results), now, settings)

    def around(results: Sequence[LabResult]) -> frozenset[date]:
        return frozenset(r.when.date() + timedelta(days=d) for r in results for d in (-1, 0, 1))

    since = (now - timedelta(days=settings.RECENT_RESULT_DAYS + 1)).date()
    return LabsNeeded(since, around(run[-1:]), around(run[:-1]))

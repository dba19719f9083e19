"""The chart around the labs, as facts the rules weigh: when a total ALP cannot be read as normal (pregnancy and the
weeks after it, a healing fracture, a disease that raises ALP), and which diagnoses change the advice (known HPP,
severe chronic kidney disease). No I/O, no Flask.

A window is a span of time in which a *normal* total ALP says little: placental ALP from the second trimester until
about 8 weeks after delivery (addendum 8, Pregnancy: A32, A77, A78), bone formation while a fracture heals, a liver or
bone disease that raises total ALP. A normal result there neither ends a run of lows nor counts as a normal result; a
low result there still counts (a low ALP despite the rise is more telling, not less).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.clinical.codes import thresholds
from service.clinical.facts import Diagnosis, LabResult, Patient, PregnancyEvidence

FAR_PAST = datetime(1, 1, 2, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 30, tzinfo=UTC)


def weeks(name: str) -> timedelta:
    return timedelta(weeks=thresholds()[name])


@dataclass(frozen=True)
class Window:
    """A span in which a normal total ALP is not read as normal."""

    start: datetime
    end: datetime  # exclusive
    reason: str  # pregnancy | fracture | alp_raising
    label: str  # what the card names, e.g. "pregnancy", "Paget disease of bone"
    ends_known: bool = True  # for a pregnancy: the end comes from a delivery, a due date or a resolved condition

    def holds(self, when: datetime) -> bool:
        return self.start <= when < self.end


def pregnancy_windows(
    diagnoses: Sequence[Diagnosis], evidence: Sequence[PregnancyEvidence], now: datetime
) -> list[Window]:
    """When placental ALP may raise the total ALP: from the second trimester (``pregnancy_placental_weeks`` after the
    last period) until ``postpartum_weeks`` after delivery. Dates are rarely all known, so each source gives the
    widest span it allows:

    - a due date (``due_date`` Observation): from 27 weeks before it to 8 weeks after it (or after a delivery recorded
      later);
    - a delivery date: from 27 weeks before it to 8 weeks after it;
    - a pregnancy Condition: from its onset (a diagnosis date, usually some weeks into the pregnancy; the first
      trimester is included, which errs towards not reading a normal value as normal) to 8 weeks after its abatement,
      or, with none, to 50 weeks after the onset (term plus 8 weeks); one that ended within 12 weeks of its onset
      ended in the first trimester, before placental ALP, and gives none;
    - a status "pregnant" on a day, with nothing else: the pregnancy may be at any stage, so from 27 weeks before to
      48 weeks after (ended earlier by a later "not pregnant" status, plus 8 weeks).
    """
    placental = weeks("pregnancy_placental_weeks")
    term = timedelta(weeks=40)
    postpartum = weeks("postpartum_weeks")
    from_due = term - placental  # 27 weeks before the due date
    deliveries = sorted(e.date for e in evidence if e.kind == "delivery_date" and e.date is not None)
    windows: list[Window] = []

    def delivered_after(start: datetime) -> datetime | None:
        return next((d for d in deliveries if d >= start), None)

    for item in evidence:
        if item.kind == "due_date" and item.date is not None:
            start = item.date - from_due
            delivered = delivered_after(start)
            end = (delivered or item.date) + postpartum
            windows.append(Window(start, end, "pregnancy", "pregnancy"))
        elif item.kind == "delivery_date" and item.date is not None:
            windows.append(Window(item.date - from_due, item.date + postpartum, "pregnancy", "pregnancy"))
        elif item.kind == "status" and item.pregnant:
            later = [e.when for e in evidence if e.kind == "status" and e.pregnant is False and e.when > item.when]
            end = min([item.when + term + postpartum, *(w + postpartum for w in later)])
            delivered = delivered_after(item.when)
            if delivered is not None:
                end = min(end, delivered + postpartum)
            windows.append(Window(item.when - from_due, end, "pregnancy", "pregnancy", ends_known=bool(later)))
    for diagnosis in diagnoses:
        if diagnosis.group == "postpartum" and (when := diagnosis.onset or diagnosis.recorded) is not None:
            windows.append(Window(when - from_due, when + postpartum, "pregnancy", "pregnancy"))  # delivered lately
            continue
        if diagnosis.group != "pregnancy":
            continue
        onset = diagnosis.onset or diagnosis.recorded
        if onset is None:
            if diagnosis.active:  # pregnant now, at an unknown stage
                windows.append(Window(now - from_due, now + term + postpartum, "pregnancy", "pregnancy", False))
            continue
        if diagnosis.abatement is not None:
            if diagnosis.abatement - onset < weeks("pregnancy_first_trimester_weeks"):
                continue  # ended in the first trimester: no placental ALP
            windows.append(Window(onset, diagnosis.abatement + postpartum, "pregnancy", "pregnancy"))
        else:
            delivered = delivered_after(onset)
            end = (delivered or onset + term) + postpartum
            windows.append(Window(onset, end, "pregnancy", "pregnancy", ends_known=delivered is not None))
    return windows


FRAGILITY_KINDS = ("osteoporotic", "stress", "atypical_femoral")  # fragility by definition, whatever the site


def fragility_fractures(diagnoses: Sequence[Diagnosis], patient: Patient, adult_age: int) -> list[Diagnosis]:
    """The fractures that count as fragility fractures: coded osteoporotic, stress (insufficiency) or atypical
    femoral from ``adult_age``; coded by a typical site alone (hip, vertebra, wrist, forearm) from
    ``fragility_site_min_age`` (50), when a fall from standing is their usual cause. Other sites (ankle, clavicle,
    a single rib), a fracture with no date, or an age that cannot be told do not count."""
    found = []
    for d in diagnoses:
        when = d.onset or d.recorded
        if d.group != "fracture" or when is None:
            continue
        age = patient.age_years(when)
        least = adult_age if d.kind in FRAGILITY_KINDS else thresholds()["fragility_site_min_age"]
        if age is not None and age >= least:
            found.append(d)
    return found


def acute_event_before(diagnoses: Sequence[Diagnosis], when: datetime) -> Diagnosis | None:
    """The latest surgery, transfusion or apheresis (group ``acute_event``) or fracture (trauma: any fracture on the
    chart, fragility or not) dated within ``acute_event_days`` before ``when``: each can lower ALP for a while
    (acute hypophosphatasaemia: McKiernan 2014, S47)."""
    span = timedelta(days=thresholds()["acute_event_days"])
    events = [d for d in diagnoses if d.group in ("acute_event", "fracture")]
    dated = [(at, d) for d in events if (at := d.onset or d.recorded) is not None and when - span <= at <= when]
    return max(dated, key=lambda pair: pair[0])[1] if dated else None


def fracture_windows(fractures: Sequence[Diagnosis]) -> list[Window]:
    """While a fracture heals, bone formation raises the ALP (``fracture_healing_weeks`` from its onset)."""
    healing = weeks("fracture_healing_weeks")
    return [Window(onset, onset + healing, "fracture", d.name) for d in fractures if (onset := d.onset or d.recorded)]


def raising_windows(diagnoses: Sequence[Diagnosis]) -> list[Window]:
    """A disease that raises total ALP (Paget disease of bone, bone metastases, cholestatic liver disease), from its
    onset (or always, when none is given) while it is active, or until its abatement."""
    windows = []
    for d in diagnoses:
        if d.group != "alp_raising":
            continue
        if d.active:
            windows.append(Window(d.onset or FAR_PAST, FAR_FUTURE, "alp_raising", d.name))
        elif d.abatement is not None:
            windows.append(Window(d.onset or FAR_PAST, d.abatement, "alp_raising", d.name))
    return windows


def masked_span(start: datetime, end: datetime, windows: Iterable[Window]) -> timedelta:
    """How much of ``[start, end)`` the windows cover (overlaps counted once)."""
    spans = sorted((max(w.start, start), min(w.end, end)) for w in windows if w.start < end and w.end > start)
    total, reach = timedelta(0), start
    for a, b in spans:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


def recent_fractures(fractures: Sequence[Diagnosis], now: datetime) -> list[Diagnosis]:
    """The fractures whose onset lies within ``fracture_recent_weeks`` (the time in which treatment after a fracture
    is decided), newest first."""
    since = now - weeks("fracture_recent_weeks")
    found = [d for d in fractures if (d.onset or d.recorded) >= since]
    return sorted(found, key=lambda d: d.onset or d.recorded, reverse=True)


@dataclass(frozen=True)
class KidneyFunction:
    """Severe chronic kidney disease (KDIGO G4-G5: eGFR below 30), and from what it is known."""

    severe: bool
    egfr: LabResult | None = None  # the eGFR that shows it
    diagnosis: Diagnosis | None = None


def kidney_function(diagnoses: Sequence[Diagnosis], egfr: LabResult | None) -> KidneyFunction:
    """Stage 4-5 (or kidney failure, dialysis) coded and active, or the latest recent eGFR below ``ckd_egfr_severe``.
    A coded stage is believed over a single eGFR (an acute fall is not CKD, a recovered value may not last)."""
    coded = next((d for d in diagnoses if d.group == "ckd_severe" and d.active), None)
    low = egfr is not None and egfr.value is not None and egfr.comparator not in (">", ">=")
    low = low and egfr.value < thresholds()["ckd_egfr_severe"]
    return KidneyFunction(bool(coded) or low, egfr if low else None, coded)


def egfr_ckd_epi_2021(creatinine_mg_dl: float, patient: Patient, when: datetime) -> float | None:
    """eGFR (mL/min/1.73 m2) from serum creatinine by the race-free CKD-EPI 2021 equation (Inker et al., N Engl J Med
    2021;385:1737), for adults of known sex and age; None otherwise."""
    age = patient.age_years(when)
    if age is None or age < 18 or patient.gender not in ("female", "male") or creatinine_mg_dl <= 0:
        return None
    female = patient.gender == "female"
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / kappa
    egfr = 142 * min(ratio, 1) ** alpha * max(ratio, 1) ** -1.200 * 0.9938**age
    return egfr * 1.012 if female else egfr

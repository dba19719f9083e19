"""What both services share: the prefetch templates for a patient's labs and medications, and building the chart."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from service import metrics
from service.card_render import render_card, template
from service.clinical.chart import Chart, LabsNeeded, lab_days_needed
from service.clinical.codes import LOINC, analytes, context_observations, loinc_codes
from service.clinical.facts import LabResult
from service.clinical.rules import Finding, OrderSuggestion, by_importance, single_low_after_normal
from service.errors import BadRequest, DataUnavailable
from service.fhir.client import FhirError
from service.fhir.context import read_diagnoses, read_pregnancy_evidence, read_procedures
from service.fhir.elements import array, objects, string, untyped
from service.fhir.lazy import LazyBundle
from service.fhir.readers import (
    PatientMismatch,
    Scope,
    entries,
    read_lab_results,
    read_medications,
    read_patient,
    settle_versions,
)
from service.hooks import HookCall
from service.memory import Memory
from service.settings import Settings, smart_launch_url

PATIENT = "{{context.patientId}}"
ALP_ANALYTES = ("alp_total", "alp_bone", "alp_bone_mass")


def _loinc_search(codes: list[str]) -> str:
    return ",".join(f"{LOINC}|{c}" for c in codes)


def chart_prefetch() -> dict[str, str]:
    """Generated from the analyte and pregnancy-record tables, so the templates always ask for exactly the codes the
    rules read."""
    related = [code for code, a in analytes().items() if a.analyte not in (*ALP_ANALYTES, "alp_liver")]
    return {
        "patient": f"Patient/{PATIENT}",
        "alp": f"Observation?patient={PATIENT}&code={_loinc_search(loinc_codes(*ALP_ANALYTES))}&_sort=-date&_count=100",
        "labs": f"Observation?patient={PATIENT}&code={_loinc_search(related)}&_sort=-date&_count=200",
        "medicationStatements": f"MedicationStatement?patient={PATIENT}&_count=100",
        "medicationRequests": f"MedicationRequest?patient={PATIENT}&_count=100",
        "medicationAdministrations": f"MedicationAdministration?patient={PATIENT}&_count=100",
        "medicationDispenses": f"MedicationDispense?patient={PATIENT}&_count=100",
        "conditions": f"Condition?patient={PATIENT}&_count=100",
        # Pregnancy status, due and delivery dates: a key of their own, never bounded by the labs' dates (a due date
        # written down at booking is read months later).
        "pregnancy": f"Observation?patient={PATIENT}&code={_loinc_search(list(context_observations()))}&_count=50",
    }


# Which prefetch keys a call can do without (docs/integrating.md). The patient (age and sex for the reference
# interval, alive or not) and the ALP results are what every card is about: without them no safe answer can be
# given, and the call is a 412. Without the other labs, a low ALP is still low: the card is given, but it cannot say
# which workup tests were already done (it offers them, none recommended), nor check EDTA contamination or the
# Wilson pattern. Without the medications, it cannot say whether an antiresorptive is current; an order is still
# checked (the draft is in the hook's context), but a denosumab order may continue a course, so its removal is not
# offered. Each card names what could not be checked (cards/partials.j2 not_checked_note). Of the ALP results, the
# pages read are enough to answer (the search asks for -date, so they should hold the newest); the cards then say
# that not all were returned, so the history and possibly the latest result may be incomplete (not_read:
# alp_history), and plainly that the latest may be missing when those read are not newest first (alp_unsorted: the
# server ignored the sort).
OPTIONAL_PREFETCH = frozenset(
    {
        "labs",
        "medicationStatements",
        "medicationRequests",
        "medicationAdministrations",
        "medicationDispenses",
        "conditions",
        "pregnancy",
    }
)
MEDICATION_KEYS = ("medicationStatements", "medicationRequests")
DOSE_KEYS = ("medicationAdministrations", "medicationDispenses")  # doses given or handed over: the last denosumab dose


def resolver(call: HookCall):
    """Resolve ``Medication/<id>`` references the prefetch did not include, from the FHIR server if one is given."""
    if call.fetch is None or not call.request.get("fhirServer"):
        return None

    def resolve(reference: str) -> dict[str, Any] | None:
        try:
            return call.fetch(reference)
        except (FhirError, LookupError):  # named as unreadable; a refused server (403) is not swallowed
            return None

    return resolve


def issue(
    findings: list[Finding],
    patient_id: str,
    not_checked: frozenset[str] = frozenset(),
    memory: Memory | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Findings -> cards: the most important first (critical, warning, info), each test suggested once, on the
    first card that asks for it. ``not_checked`` names the data that could not be read (:func:`not_read`): the
    cards say so, and without the other labs no workup test is recommended (whether it was done is not known).
    ``memory``: the patient's overrides (:func:`remembered`); a card of a kind overridden within the period says
    so, and a warning with nothing new since is shown as information (:meth:`service.memory.Memory.apply`)."""
    note_of = no_note
    if memory is not None:
        findings, note_of = memory.apply(findings)
    ordered = without_repeats(by_importance(findings, lambda kind: template(kind)["indicator"]))
    if "labs" in not_checked:
        ordered = [replace(f, orders=tuple(unrecommended(o) for o in f.orders)) for f in ordered]
    return [(f.kind, render_card(f, patient_id, sorted(not_checked), note_of(f.kind))) for f in ordered]


def no_note(_kind: str) -> None:
    return None


ORDER_HOOKS = ("order-select", "order-sign")
# What the chart could not all be read of that would show something new since an override: without it, nothing is
# taken as unchanged.
EVIDENCE_UNREAD = frozenset({"medications", "some_medications", "alp_history"})


def remembered(call: HookCall, chart: Chart) -> Memory | None:
    """The patient's overrides (:attr:`HookCall.remembered`, read beside the call and taken only if in time), with
    what the chart shows that is new to an override: each low of the current run (when the lab released it, if
    later than the draw), each start or restart after a break of a course of an antiresorptive or teriparatide.
    On an order hook an order is being checked: that is new. When the ALP history or the medications could not
    all be read, nothing is taken as unchanged."""
    if call.remembered is None:
        return None
    # A result released by the lab after it was drawn came to be known then (a release time ahead of the clock is
    # not believed: the draw counts).
    events = [
        (max(r.when, r.issued if r.issued and r.issued <= call.now else r.when), f"a new low ALP on {r.when.date()}")
        for r in chart.current_run
    ]
    for course in chart.courses:
        if course.start is not None:  # new to an override written before the chart showed it (outside attack A6)
            known = max(course.start, course.known or course.start)
            what = f"{course.drug} started on {course.start.date()}"
            events.append((known, what if known == course.start else f"{what}, recorded on {known.date()}"))
        events += [(end, f"{course.drug} restarted on {end.date()}") for _, end in course.breaks]
    always_new = None
    if call.request["hook"] in ORDER_HOOKS:
        always_new = "a new order is being checked"
    elif chart.not_read & EVIDENCE_UNREAD:
        always_new = "not every record could be read, so whether anything new happened is not known"
    return Memory(
        recall=call.remembered,
        now=call.now,
        days=call.settings.OVERRIDE_DAYS,
        events=tuple((when, what) for when, what in events if when <= call.now),
        always_new=always_new,
    )


def unrecommended(order: OrderSuggestion) -> OrderSuggestion:
    """A workup test offered, not recommended: the lab results that would say whether it is due were not read. A
    repeat ALP is asked for because of the ALP results themselves, which were read."""
    return order if order.test.group == "repeat" else replace(order, recommended=False)


def not_read(call: HookCall, scope: Scope) -> frozenset[str]:
    """What of the chart could not be (completely) read, by the names the cards use: ``labs`` (not read, or only
    their first pages); ``medications`` (no medication record could be read) or ``some_medications`` (one of the
    two medication searches failed or was read only in part, or a record's Medication could not be read);
    ``conditions`` (not read, or only in part); ``alp_history`` (only some of the ALP results), with
    ``alp_unsorted`` when those read are not newest first (the server ignored ``_sort=-date``: the unread ones may
    be newer). Data that could not be had is never taken for "none", nor pages
    read for the whole list."""
    missing = set()
    lost = call.unavailable | call.incomplete
    if "labs" in lost:
        missing.add("labs")
    failed = [k for k in MEDICATION_KEYS if k in call.unavailable]
    if len(failed) == len(MEDICATION_KEYS):
        missing.add("medications")
    elif failed or scope.unresolved or any(k in call.incomplete for k in MEDICATION_KEYS):
        missing.add("some_medications")
    if "conditions" in lost:
        missing.add("conditions")
    if "procedures" in lost:
        missing.add("procedures")
    if lost & set(DOSE_KEYS):
        missing.add("administrations")
    if "pregnancy" in lost and could_be_pregnant(scope.patient, call.now):
        missing.add("pregnancy")
    if "alp" in call.incomplete:
        missing.add("alp_history")
        if not newest_first(call.data.get("alp")):
            missing.add("alp_unsorted")
    return frozenset(missing)


def could_be_pregnant(patient: Any, now: Any) -> bool:
    """Whether pregnancy records could matter: a patient not recorded as male, aged 10 to 60 (or of unknown age)."""
    age = patient.age_years(now)
    return patient.gender != "male" and (age is None or 10 <= age <= 60)


def newest_first(bundle: Any) -> bool:
    """Whether the dated entries of a Bundle, in the order given, go from the newest to the oldest (by day; entries
    with no readable date are passed over)."""
    if isinstance(bundle, LazyBundle):
        dates = [string(h, "effectiveDateTime") for h in bundle.heads()]
    else:
        dates = [string(untyped(e, "resource"), "effectiveDateTime") for e in objects(bundle, "entry")]
    days = [d[:10] for d in dates if d is not None and len(d) >= 4]
    return all(a >= b for a, b in pairwise(days))


APP_LINK_LABEL = "View ALP history"
APP_LINK_NOTE = (
    " Where the service's SMART companion app is enabled, each card links to it (View ALP history: every ALP result "
    "over time against the limit for age and sex, antiresorptive periods and the workup labs)."
)


def with_app_link(issued: list[tuple[str, dict[str, Any]]], settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    """When the SMART companion app is on (``SMART_ISSUERS``), each card links to it (``type: smart``: the EHR
    launches it with its ``iss`` and a launch id); ``appContext`` names the card kind the page is to highlight."""
    url = smart_launch_url(settings)
    if not url:
        return issued
    for kind, card in issued:
        link = {"label": APP_LINK_LABEL, "url": url, "type": "smart", "appContext": json.dumps({"highlight": kind})}
        card["links"] = [*card.get("links", []), link]
    return issued


def without_repeats(findings: list[Finding]) -> list[Finding]:
    """A test suggested on an earlier card is not suggested again on a later one."""
    seen: set[str] = set()
    kept = []
    for finding in findings:
        orders = tuple(o for o in finding.orders if o.test.key not in seen)
        seen.update(o.test.key for o in orders)
        kept.append(replace(finding, orders=orders))
    return kept


def lab_filter(needed: LabsNeeded):
    """A cheap pre-parse test (:class:`LabsNeeded`) on an Observation's date text (ISO dates compare as strings)
    and, on the days of earlier lows, its codes; undated Observations and those carrying an ALP code (also as a panel
    component) are always kept and read in full."""
    since_text = needed.since.isoformat()
    day_texts = {d.isoformat() for d in needed.days}
    draw_texts = {d.isoformat() for d in needed.draw_days}
    alp_codes = frozenset(loinc_codes(*ALP_ANALYTES))
    draw_codes = frozenset(loinc_codes(*needed.draw_analytes))

    def coded(concept: Any, codes: frozenset[str]) -> bool:
        """Any coding with one of ``codes``, whatever its system says (the reader accepts LOINC's OID too: keeping a
        resource that is then not read costs little, skipping one the reader would read loses a result)."""
        for coding in array(concept, "coding"):
            code = string(coding, "code")
            if code is not None and code.strip() in codes:
                return True
        return False

    def carries(observation: dict[str, Any], codes: frozenset[str]) -> bool:
        """The Observation's code, or one of its components' (a panel), is one of ``codes``."""
        return coded(untyped(observation, "code"), codes) or any(
            coded(untyped(c, "code"), codes) for c in array(observation, "component")
        )

    def keep(observation: dict[str, Any]) -> bool:
        text = string(observation, "effectiveDateTime")
        if text is None or len(text) < 10:
            return True
        day = text[:10]
        if day >= since_text or day in day_texts:
            return True
        return carries(observation, alp_codes) or (day in draw_texts and carries(observation, draw_codes))

    return keep


def labs_window(call: HookCall) -> dict[str, str]:
    """The related-labs search, when fetched from the FHIR server, bounded to the dates :func:`lab_filter` keeps:
    from the earliest of ``since`` and the days around the current run's lows (:func:`lab_days_needed`, from the
    ALP results read first), a day earlier still for a result dated in a time zone ahead of the server's. The server
    then sends the recent labs and those of the run, not a lifetime of them. A patient the handler would refuse
    (:func:`read_scope`: another id, no Patient, a death that cannot be read) is refused here, before the optional
    keys are fetched: the FHIR server is spared them."""
    scope = read_scope(call)
    needed = lab_days_needed(read_lab_results(call.data.get("alp"), scope=scope), call.now, call.settings.clinical)
    earliest = min([needed.since, *needed.days, *needed.draw_days]) - timedelta(days=1)
    return {"labs": f"date=ge{earliest.isoformat()}"}


def read_scope(call: HookCall) -> Scope:
    """The patient of the call, checked: anything but exactly one Patient with the context's id (another id, no
    Patient, an empty Bundle) is refused, 400 when the client sent it, 412 when the FHIR server did (a client's
    ``null`` was fetched from the server: :func:`service.fhir.prefetch.client_lacks`). Without it, whether the patient
    has died is unknown: no advice is given."""
    patient_id = call.context["patientId"]
    try:
        patient = read_patient(call.data.get("patient"), patient_id, call.now)
    except PatientMismatch as exc:
        if "patient" in call.fetched:
            raise DataUnavailable(f"the FHIR server's answer for the patient: {exc}") from None
        raise BadRequest(f"prefetch.patient: {exc}") from None
    return Scope(
        patient=patient,
        now=call.now,
        settings=call.settings.clinical,
        server=call.request.get("fhirServer") or None,
        aliases=patient_aliases(call.data.values(), patient_id),
    )


def patient_aliases(values: Any, patient_id: str) -> frozenset[str]:
    """The fullUrls under which a Bundle in the request holds this patient's Patient resource (``urn:uuid:...``),
    so that references to them count as references to the patient (a resource outside a Bundle has no fullUrl)."""
    return frozenset(
        full_url
        for value in values
        for full_url, resource in entries(value, "Patient")
        if string(resource, "id") == patient_id and isinstance(full_url, str)
    )


def build_chart(call: HookCall, scope: Scope | None = None) -> Chart:
    """The chart of the call: the patient, the diagnoses and pregnancy records around the labs, the ALP results (one
    per measurement: corrections replace originals), the other labs the rules can use, and the medications."""
    data = call.data
    scope = scope or read_scope(call)
    clinical = call.settings.clinical
    diagnoses = [
        *read_diagnoses(data.get("conditions"), scope=scope),
        *read_procedures(data.get("procedures"), scope=scope),
    ]
    pregnancy = read_pregnancy_evidence(data.get("pregnancy"), scope=scope)
    alp = settle_versions(read_lab_results(data.get("alp"), scope=scope))
    # The run of lows decides which other labs are needed; pregnancy and the diseases that raise ALP shape it.
    context = Chart(
        patient=scope.patient, labs=alp, medications=(), now=call.now, settings=clinical, diagnoses=diagnoses,
        pregnancy=pregnancy,
    )  # fmt: skip
    run = context.current_run
    needed = lab_days_needed(alp, call.now, clinical, run)
    labs = settle_versions(
        _unique_sorted([*alp, *read_lab_results(data.get("labs"), scope=scope, keep=lab_filter(needed))])
    )
    medications = read_medications([data.get(k) for k in (*MEDICATION_KEYS, *DOSE_KEYS)], scope, resolver(call))
    report(scope, labs)
    missing = not_read(call, scope)
    if not any("denosumab" in m.groups for m in medications):
        missing -= {"administrations"}  # read only for the date of the last denosumab injection
    if single_low_after_normal(context) is None:
        missing -= {"procedures"}  # read only to tell a fall after surgery or a transfusion
    return Chart(
        patient=scope.patient,
        labs=labs,
        medications=medications,
        now=call.now,
        settings=clinical,
        not_read=missing,
        diagnoses=diagnoses,
        pregnancy=pregnancy,
    )


def report(scope: Scope, labs: list[LabResult]) -> None:
    """Count what the reading step refused (no patient data: resource types and reasons only)."""
    for kind, count in scope.dropped.items():
        metrics.FOREIGN_DROPPED.labels(kind).inc(count)
    scope.dropped.clear()
    for result in labs:
        if result.problem is not None:
            metrics.UNREADABLE_RESULTS.labels(result.problem.split(":", 1)[0]).inc()


def _unique_sorted(results: list[LabResult]) -> list[LabResult]:
    """Oldest first, results of the same time by their id; an Observation that came under two prefetch keys counts
    once. The id breaks ties so that the cards never depend on the order in which a server returns results of one
    draw (HAPI FHIR's ``_sort=-date`` leaves ties in an order of its own, unlike the prefetch and sekmet-fhir)."""
    unique = {r.resource_id or str(id(r)): r for r in results}
    return sorted(unique.values(), key=lambda r: (r.when or datetime.min.replace(tzinfo=UTC), r.resource_id or ""))

"""order-select and order-sign: an antiresorptive (bisphosphonate, denosumab, ...) ordered for a patient with a low
ALP. order-select checks the orders the clinician selected; order-sign checks every draft order about to be signed.
Both run the same rule (``antiresorptives.review_order``)."""

from __future__ import annotations

import logging
from typing import Any

from service.clinical import antiresorptives
from service.clinical.facts import Patient
from service.errors import BadRequest, DataUnavailable
from service.fhir.elements import objects, string, untyped
from service.fhir.readers import MEDICATION_RECORDS, Scope, read_medications
from service.hooks import CdsService, HookCall, value_sets_note
from service.hooks.patient_chart import (
    APP_LINK_NOTE,
    OPTIONAL_PREFETCH,
    PATIENT,
    build_chart,
    chart_prefetch,
    issue,
    labs_window,
    read_scope,
    remembered,
    report,
    resolver,
    with_app_link,
)
from service.logs import log_event

log = logging.getLogger(__name__)


def selections(call: HookCall) -> set[str] | None:
    """The draft orders to check: those selected at order-select, every one (None) at order-sign."""
    return set(call.context["selections"]) if call.request["hook"] == "order-select" else None


def check_orders(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    """The checked draft orders (:func:`selections`) against the patient's ALP history.

    A well-formed checked draft whose drug cannot be read (a ``medicationReference`` neither in the context nor to
    be had from ``fhirServer``) is named on the cards issued for the other orders, or, when there is none, makes the
    call a 412: an unreadable bisphosphonate beside a weaker agent is never silently passed."""
    selected = checked_drafts(call)
    scope = read_scope(call)
    chart = build_chart(call, scope)
    if chart.patient.deceased:
        return []  # no advice on the chart of a patient who has died
    drafts = Scope(patient=scope.patient, now=scope.now, settings=scope.settings, server=scope.server)
    ordered = read_medications([selected], drafts, resolver(call), drafts=True)
    unread = list(dict.fromkeys(drafts.unresolved))
    if drafts.dropped:  # a draft order naming another patient is not checked: said so, without ids
        log_event(
            log,
            logging.WARNING,
            "draft_order_of_another_patient",
            hook=call.request["hook"],
            drafts=drafts.dropped.total(),
        )
    report(drafts, [])
    # Hypophosphatasia on the problem list (documented, suspected or marked inactive) is read with the chart.
    findings = antiresorptives.review_order(chart, ordered, False, unread=unread)
    if unread and not findings:
        # Nothing to show beside it: the unreadable order alone cannot be passed as checked.
        raise DataUnavailable(
            f"the Medication of the draft order ({', '.join(unread[:3])}) could not be read, "
            "so the order cannot be checked"
        )
    memory = remembered(call, chart)
    return with_app_link(issue(findings, chart.patient.id, chart.not_read, memory), call.settings)


def checked_drafts(call: HookCall) -> dict[str, Any]:
    """The checked draft orders, with every Medication of the context (by id and by fullUrl, to resolve references),
    as a Bundle.

    A selection that names no draft order, or a checked draft medication order that names its drug in a way that is
    not FHIR R4, is a 400 (:func:`drug_naming_error`): the client's request is wrong, and the order was not checked.
    A checked draft that names no drug yet (:func:`names_no_drug_yet`: the EHR's order form before a drug is chosen,
    as the CDS Hooks Sandbox sends it) is unfinished, not wrong: there is nothing to check in it, so it is left out
    (no card)."""
    checking = selections(call)
    given = [
        (entry, resource)
        for entry in objects(call.context["draftOrders"], "entry")
        if isinstance(resource := untyped(entry, "resource"), dict)
    ]

    def is_checked(resource: dict[str, Any]) -> bool:
        return checking is None or f"{untyped(resource, 'resourceType')}/{untyped(resource, 'id')}" in checking

    if checking is not None:
        named = {draft_name(r) for _, r in given if string(r, "id") is not None}
        missing = sorted(checking - named)
        if missing:
            raise BadRequest(
                f"context.selections names {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, which is "
                "not in context.draftOrders (selections must be references to its entries)"
            )
    unfinished: list[int] = []
    for _, resource in given:
        checked = is_checked(resource) and string(resource, "resourceType") in MEDICATION_RECORDS
        if checked and (why := drug_naming_error(resource)):
            raise BadRequest(
                f"the draft order {draft_name(resource)} in context.draftOrders {why}, so it cannot be checked"
            )
        if checked and names_no_drug_yet(resource):
            unfinished.append(id(resource))
    return {
        "resourceType": "Bundle",
        "entry": [
            entry
            for entry, r in given
            if (is_checked(r) and id(r) not in unfinished) or string(r, "resourceType") == "Medication"
        ],
    }


def drug_references(call: HookCall) -> list[str]:
    """The ``Medication/<id>`` the checked drafts name and the request does not hold (neither contained nor in
    ``draftOrders``): the order cannot be checked without them, so they are read from ``fhirServer`` with the
    required prefetch keys, before the optional searches, which a slow labs search would make them wait behind.
    Exactly the references the handler will resolve: found by reading the drafts as it does (a draft of another
    patient is not checked, so its Medication is not read)."""
    wanted: list[str] = []
    scope = Scope(
        patient=Patient(id=call.context["patientId"]), now=call.now, server=call.request.get("fhirServer") or None
    )
    read_medications([checked_drafts(call)], scope, lambda reference: wanted.append(reference), drafts=True)
    return list(dict.fromkeys(wanted))


def draft_name(resource: dict[str, Any]) -> str:
    kind, ident = untyped(resource, "resourceType"), string(resource, "id")
    return f"{kind}/{ident}" if ident is not None else f"{kind} (no id)"


def _bad_strings(value: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    for key in keys:
        if untyped(value, key) is not None and string(value, key) is None:
            return f"has a {where}.{key} that is not a string"
    return None


def drug_naming_error(resource: dict[str, Any]) -> str | None:
    """Why a draft medication order does not name its drug as FHIR R4 does (``medication[x]``: at most one of a
    CodeableConcept or a Reference, JSON objects, ``coding`` a list of Codings, the texts strings), or None. A JSON
    ``null`` counts as absent. A draft that names no drug at all is not wrong but unfinished
    (:func:`names_no_drug_yet`). Such a draft was not read at all before (its drug was taken for none)."""
    concept, reference = untyped(resource, "medicationCodeableConcept"), untyped(resource, "medicationReference")
    if concept is not None and reference is not None:
        return "has both medicationCodeableConcept and medicationReference (medication[x] is one or the other)"
    if reference is not None:
        if not isinstance(reference, dict):
            return "has a medicationReference that is not a Reference (a JSON object)"
        return _bad_strings(reference, ("reference", "display"), "medicationReference")
    if concept is None:
        return None
    if not isinstance(concept, dict):
        return "has a medicationCodeableConcept that is not a CodeableConcept (a JSON object)"
    if why := _bad_strings(concept, ("text",), "medicationCodeableConcept"):
        return why
    codings = untyped(concept, "coding")
    if codings is not None and not isinstance(codings, list):
        return "has a medicationCodeableConcept.coding that is not a list of Codings"
    for i, coding in enumerate(codings or ()):
        if not isinstance(coding, dict):
            return f"has a medicationCodeableConcept.coding[{i}] that is not a Coding (a JSON object)"
        if why := _bad_strings(coding, ("system", "code", "display"), f"medicationCodeableConcept.coding[{i}]"):
            return why
    return None


def names_no_drug_yet(resource: dict[str, Any]) -> bool:
    """Whether a draft medication order (one :func:`drug_naming_error` passed) names no drug yet: neither
    ``medicationCodeableConcept`` nor ``medicationReference``, a concept with no code, display or text, or a
    reference with no reference, identifier or display. EHR order forms fire order-select before a drug is chosen:
    the CDS Hooks Sandbox's Rx View sends such a draft when it opens and after "Remove the draft order"."""
    concept, reference = untyped(resource, "medicationCodeableConcept"), untyped(resource, "medicationReference")
    if reference is not None:
        return not any(untyped(reference, key) for key in ("reference", "identifier", "display"))
    if concept is None:
        return True
    codings = objects(concept, "coding")
    return not string(concept, "text") and not any(string(c, "code") or string(c, "display") for c in codings)


DESCRIPTION = (
    "checks the patient's ALP history against each bisphosphonate or denosumab order (and, with less weight, "
    "raloxifene, bazedoxifene or calcitonin; romosozumab, mainly bone-forming, is not checked). A low ALP may mean "
    "hypophosphatasia, in which these drugs "
    "can cause atypical femoral fractures: the card shows the ALP values, offers to remove a first-dose draft order "
    "and to order the HPP workup; the next dose of a denosumab course is never offered for removal (stopping it "
    "causes rebound fractures). A documented hypophosphatasia diagnosis gives a critical card; no current ALP gives "
    "a suggestion to measure one before the first dose."
) + APP_LINK_NOTE
# Surgery, transfusions and apheresis, newest first: a single low soon after them is most likely temporary (an order
# card then says to repeat the ALP before the dose, not to remove the order).
PREFETCH = {**chart_prefetch(), "procedures": f"Procedure?patient={PATIENT}&_sort=-date&_count=50"}
OPTIONAL = OPTIONAL_PREFETCH | {"procedures"}

SERVICE = CdsService(
    id="antiresorptive-low-alp",
    hook="order-select",
    title="Antiresorptive order with low alkaline phosphatase",
    description="When an order is selected, " + DESCRIPTION + value_sets_note("order-select"),
    prefetch=PREFETCH,
    optional_prefetch=OPTIONAL,
    narrow=labs_window,
    reads=drug_references,
    handler=check_orders,
)

SIGN_SERVICE = CdsService(
    id="antiresorptive-low-alp-sign",
    hook="order-sign",
    title="Antiresorptive order with low alkaline phosphatase (at signing)",
    description="When orders are about to be signed, "
    + DESCRIPTION
    + " All draft orders are checked."
    + value_sets_note("order-sign"),
    prefetch=PREFETCH,
    optional_prefetch=OPTIONAL,
    narrow=labs_window,
    reads=drug_references,
    handler=check_orders,
)

"""order-select and order-sign: an antiresorptive (bisphosphonate, denosumab, ...) ordered for a patient with a low
ALP. order-select checks the orders the clinician selected; order-sign checks every draft order about to be signed.
Both run the same rule (``antiresorptives.review_order``)."""

from __future__ import annotations

from typing import Any

from service.clinical import antiresorptives
from service.errors import DataUnavailable
from service.fhir.readers import Scope, has_hpp_diagnosis, read_medications
from service.hooks import CdsService, HookCall
from service.hooks.patient_chart import (
    APP_LINK_NOTE,
    OPTIONAL_PREFETCH,
    PATIENT,
    build_chart,
    chart_prefetch,
    issue,
    read_scope,
    report,
    resolver,
    with_app_link,
)


def handle_select(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    return check_orders(call, set(call.context["selections"]))


def handle_sign(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    return check_orders(call, None)


def check_orders(call: HookCall, selections: set[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The draft orders named in ``selections`` (all of them when None) against the patient's ALP history."""
    entries = call.context["draftOrders"].get("entry")
    # The orders to check, with every Medication of the context (by id and by fullUrl) to resolve references.
    selected = {
        "resourceType": "Bundle",
        "entry": [
            entry
            for entry in (entries if isinstance(entries, list) else ())
            if isinstance(entry, dict)
            and isinstance(resource := entry.get("resource"), dict)
            and (
                selections is None
                or f"{resource.get('resourceType')}/{resource.get('id')}" in selections
                or resource.get("resourceType") == "Medication"
            )
        ],
    }
    scope = read_scope(call)
    chart = build_chart(call, scope)
    if chart.patient.deceased:
        return []  # no advice on the chart of a patient who has died
    drafts = Scope(patient=scope.patient, now=scope.now, settings=scope.settings, server=scope.server)
    ordered = read_medications([selected], drafts, resolver(call), drafts=True)
    if drafts.unresolved and not ordered:
        raise DataUnavailable(
            f"the Medication of the draft order ({', '.join(drafts.unresolved[:3])}) could not be read, "
            "so the order cannot be checked"
        )
    hpp = has_hpp_diagnosis(call.data.get("conditions"), scope=scope)
    report(scope, [])
    findings = antiresorptives.review_order(chart, ordered, hpp)
    return with_app_link(issue(findings, chart.patient.id, chart.not_read), call.settings)


DESCRIPTION = (
    "checks the patient's ALP history against each bisphosphonate or denosumab order (and, with less weight, "
    "romosozumab, raloxifene, bazedoxifene or calcitonin). A low ALP may mean hypophosphatasia, in which these drugs "
    "can cause atypical femoral fractures: the card shows the ALP values, offers to remove a first-dose draft order "
    "and to order the HPP workup; the next dose of a denosumab course is never offered for removal (stopping it "
    "causes rebound fractures). A documented hypophosphatasia diagnosis gives a critical card; no current ALP gives "
    "a suggestion to measure one before the first dose."
) + APP_LINK_NOTE
PREFETCH = {**chart_prefetch(), "conditions": f"Condition?patient={PATIENT}&_count=100"}
# Without the conditions an order is still checked against the ALP, but a recorded HPP diagnosis is not seen: the
# card says so.
OPTIONAL = OPTIONAL_PREFETCH | {"conditions"}

SERVICE = CdsService(
    id="antiresorptive-low-alp",
    hook="order-select",
    title="Antiresorptive order with low alkaline phosphatase",
    description="When an order is selected, " + DESCRIPTION,
    prefetch=PREFETCH,
    optional_prefetch=OPTIONAL,
    handler=handle_select,
)

SIGN_SERVICE = CdsService(
    id="antiresorptive-low-alp-sign",
    hook="order-sign",
    title="Antiresorptive order with low alkaline phosphatase (at signing)",
    description="When orders are about to be signed, " + DESCRIPTION + " All draft orders are checked.",
    prefetch=PREFETCH,
    optional_prefetch=OPTIONAL,
    handler=handle_sign,
)

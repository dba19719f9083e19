"""order-select: an antiresorptive (bisphosphonate, denosumab, ...) selected for a patient with a low ALP."""

from __future__ import annotations

from typing import Any

from service.clinical import antiresorptives
from service.errors import DataUnavailable
from service.fhir.readers import Scope, has_hpp_diagnosis, read_medications
from service.hooks import CdsService, HookCall
from service.hooks.common import PATIENT, build_chart, chart_prefetch, issue, read_scope, report, resolver


def handle(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    selections = set(call.context["selections"])
    entries = call.context["draftOrders"].get("entry")
    # The selected orders, with every Medication of the context (by id and by fullUrl) to resolve references.
    selected = {
        "resourceType": "Bundle",
        "entry": [
            entry
            for entry in (entries if isinstance(entries, list) else ())
            if isinstance(entry, dict)
            and isinstance(resource := entry.get("resource"), dict)
            and (
                f"{resource.get('resourceType')}/{resource.get('id')}" in selections
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
            f"the Medication of the selected order ({', '.join(drafts.unresolved[:3])}) could not be read, "
            "so the order cannot be checked"
        )
    hpp = has_hpp_diagnosis(call.data.get("conditions"), scope=scope)
    report(scope, [])
    return issue(antiresorptives.review_order(chart, ordered, hpp), chart.patient.id)


SERVICE = CdsService(
    id="antiresorptive-low-alp",
    hook="order-select",
    title="Antiresorptive order with low alkaline phosphatase",
    description=(
        "When a bisphosphonate or denosumab (or, with less weight, romosozumab, raloxifene or calcitonin) is "
        "selected, checks the patient's ALP history. A low ALP may mean hypophosphatasia, in which these drugs can "
        "cause atypical femoral fractures: the card shows the ALP values, offers to remove the draft order and to "
        "order the HPP workup. A documented hypophosphatasia diagnosis gives a critical card; no ALP on record "
        "gives a suggestion to measure a baseline."
    ),
    prefetch={**chart_prefetch(), "conditions": f"Condition?patient={PATIENT}&_count=100"},
    handler=handle,
)

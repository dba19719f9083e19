"""order-select: an antiresorptive (bisphosphonate, denosumab, ...) selected for a patient with a low ALP."""

from __future__ import annotations

from typing import Any

from service.clinical import antiresorptives
from service.fhir.readers import has_hpp_diagnosis, read_medications, resources
from service.hooks import CdsService, HookCall
from service.hooks.common import PATIENT, build_chart, chart_prefetch, issue, read_scope, report, resolver


def handle(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    selections = set(call.context["selections"])
    draft_orders = call.context["draftOrders"]
    selected = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": r}
            for r in resources(draft_orders)
            if f"{r.get('resourceType')}/{r.get('id')}" in selections or r.get("resourceType") == "Medication"
        ],
    }
    scope = read_scope(call)
    chart = build_chart(call, scope)
    ordered = read_medications([selected], scope, resolver(call), drafts=True)
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

"""patient-view: low serum ALP -> workup for hypophosphatasia and the other causes; antiresorptive review."""

from __future__ import annotations

from typing import Any

from service.clinical import antiresorptives, rules
from service.hooks import CdsService, HookCall, value_sets_note
from service.hooks.patient_chart import (
    APP_LINK_NOTE,
    OPTIONAL_PREFETCH,
    build_chart,
    chart_prefetch,
    issue,
    labs_window,
    remembered,
    with_app_link,
)


def handle(call: HookCall) -> list[tuple[str, dict[str, Any]]]:
    chart = build_chart(call)
    if chart.patient.deceased:
        return []  # no workup advice on the chart of a patient who has died
    # One card per problem: a current antiresorptive and the low ALP are one card (the drug's, with the workup).
    findings = antiresorptives.one_card_per_problem(chart, rules.low_alp(chart))
    # and a possibly contaminated sample with no low that counts is one card, the sample's, with the ALP table
    findings = rules.one_card_per_sample_problem(findings)
    findings += antiresorptives.review_denosumab_timing(chart)
    issued = issue(findings, chart.patient.id, chart.not_read, remembered(call, chart))
    return with_app_link(issued, call.settings)


SERVICE = CdsService(
    id="low-alp-workup",
    hook="patient-view",
    title="Low alkaline phosphatase: workup advice",
    description=(
        "When the chart opens, reads the patient's total ALP results (LOINC 6768-6, 77141-0) against the lab's "
        "range or an age- and sex-specific reference interval. A low ALP gets advice: repeat a single low value; "
        "for a persistently low one, a hypophosphatasia workup (PLP, urine phosphoethanolamine, ALPL genetics) and "
        "checks for secondary causes (zinc, magnesium, thyroid, protein, vitamin B12). It also flags possible EDTA "
        "sample contamination, the Wilson disease pattern in young patients, and a current bisphosphonate or "
        "denosumab alongside a low ALP."
    )
    + APP_LINK_NOTE
    + value_sets_note("patient-view"),
    prefetch=chart_prefetch(),
    optional_prefetch=OPTIONAL_PREFETCH,
    narrow=labs_window,
    handler=handle,
)

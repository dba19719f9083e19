"""What both services share: the prefetch templates for a patient's labs and medications, and building the chart."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from service.clinical.codes import LOINC, analytes, loinc_codes
from service.clinical.rules import Chart, Finding
from service.fhir.readers import read_lab_results, read_medications, read_patient
from service.hooks import HookCall

PATIENT = "{{context.patientId}}"
ALP_ANALYTES = ("alp_total", "alp_bone", "alp_bone_mass")


def _codes(codes: list[str]) -> str:
    return ",".join(f"{LOINC}|{c}" for c in codes)


def chart_prefetch() -> dict[str, str]:
    """Generated from the analyte table, so the templates always ask for exactly the codes the rules read."""
    related = [code for code, a in analytes().items() if a.analyte not in (*ALP_ANALYTES, "alp_liver")]
    return {
        "patient": f"Patient/{PATIENT}",
        "alp": f"Observation?patient={PATIENT}&code={_codes(loinc_codes(*ALP_ANALYTES))}&_sort=-date&_count=100",
        "labs": f"Observation?patient={PATIENT}&code={_codes(related)}&_sort=-date&_count=200",
        "medicationStatements": f"MedicationStatement?patient={PATIENT}&_count=100",
        "medicationRequests": f"MedicationRequest?patient={PATIENT}&_count=100",
    }


def resolver(call: HookCall):
    """Resolve ``Medication/<id>`` references the prefetch did not include, from the FHIR server if one is given."""
    if call.fetch is None or not call.request.get("fhirServer"):
        return None

    def resolve(reference: str) -> dict[str, Any] | None:
        try:
            return call.fetch(reference)
        except Exception:
            return None

    return resolve


def without_repeats(findings: list[Finding]) -> list[Finding]:
    """A test suggested on an earlier card is not suggested again on a later one."""
    seen: set[str] = set()
    kept = []
    for finding in findings:
        orders = tuple(o for o in finding.orders if o.test.key not in seen)
        seen.update(o.test.key for o in orders)
        kept.append(replace(finding, orders=orders))
    return kept


def build_chart(call: HookCall, *extra_medications: Any) -> Chart:
    data = call.data
    return Chart(
        patient=read_patient(data.get("patient"), call.context["patientId"]),
        labs=read_lab_results(data.get("alp"), data.get("labs")),
        medications=read_medications(
            [data.get("medicationStatements"), data.get("medicationRequests"), *extra_medications], resolver(call)
        ),
        now=call.now,
        settings=call.settings,
    )

"""What both services share: the prefetch templates for a patient's labs and medications, and building the chart."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from service.clinical.codes import LOINC, analytes, loinc_codes
from service.clinical.facts import LabResult
from service.clinical.rules import Chart, Finding, lab_days_needed
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


def lab_filter(since: date, days: set[date]):
    """A cheap pre-parse test on an Observation's date text (ISO dates compare as strings); undated or ALP-coded
    Observations are always kept and read in full."""
    since_text = since.isoformat()
    day_texts = {d.isoformat() for d in days}
    alp_codes = {f"{LOINC}|{c}" for c in loinc_codes(*ALP_ANALYTES)}

    def keep(observation: dict[str, Any]) -> bool:
        text = observation.get("effectiveDateTime")
        if not isinstance(text, str) or len(text) < 10:
            return True
        day = text[:10]
        if day >= since_text or day in day_texts:
            return True
        codings = (observation.get("code") or {}).get("coding") if isinstance(observation.get("code"), dict) else None
        return any(isinstance(c, dict) and f"{c.get('system')}|{c.get('code')}" in alp_codes for c in codings or ())

    return keep


def build_chart(call: HookCall) -> Chart:
    data = call.data
    patient = read_patient(data.get("patient"), call.context["patientId"])
    alp = read_lab_results(data.get("alp"))
    since, days = lab_days_needed(patient, alp, call.now, call.settings)
    return Chart(
        patient=patient,
        labs=_unique_sorted([*alp, *read_lab_results(data.get("labs"), keep=lab_filter(since, days))]),
        medications=read_medications(
            [data.get("medicationStatements"), data.get("medicationRequests")], resolver(call)
        ),
        now=call.now,
        settings=call.settings,
    )


def _unique_sorted(results: list[LabResult]) -> list[LabResult]:
    """Oldest first; an Observation that came under two prefetch keys counts once."""
    unique = {r.resource_id or str(id(r)): r for r in results}
    return sorted(unique.values(), key=lambda r: r.when or datetime.min.replace(tzinfo=UTC))

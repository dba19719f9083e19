from __future__ import annotations

import re

from service.hooks import all_services
from service.validation import first_error

ALLOWED_TOKENS = re.compile(
    r"\{\{(context\.[A-Za-z]+|userPractitionerId|userPractitionerRoleId|userPatientId|userRelatedPersonId)\}\}"
)


def test_discovery_lists_the_three_services_with_required_fields(client):
    response = client.client.get("/cds-services")
    assert response.status_code == 200
    body = response.get_json()
    assert first_error("discovery", body) is None
    by_hook = {s["hook"]: s for s in body["services"]}
    assert set(by_hook) == {"patient-view", "order-select", "order-sign"}
    assert by_hook["patient-view"]["id"] == "low-alp-workup"
    assert by_hook["order-select"]["id"] == "antiresorptive-low-alp"
    assert by_hook["order-sign"]["id"] == "antiresorptive-low-alp-sign"
    for service in body["services"]:
        assert service["title"] and len(service["description"]) > 80
        assert service["prefetch"]


def test_discovery_is_generated_from_the_declarations(client):
    body = client.client.get("/cds-services").get_json()
    assert body["services"] == [s.discovery() for s in all_services()]


def test_prefetch_templates_use_only_cds_hooks_2_tokens():
    for service in all_services():
        for template in service.prefetch.values():
            tokens = re.findall(r"\{\{[^}]*\}\}", template)
            assert tokens, template
            assert all(ALLOWED_TOKENS.fullmatch(t) for t in tokens), template


def test_prefetch_asks_for_what_the_rules_need():
    pv = next(s for s in all_services() if s.hook == "patient-view").prefetch
    assert pv["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|6768-6" in pv["alp"] and "http://loinc.org|77141-0" in pv["alp"]
    assert "_sort=-date" in pv["alp"]
    for code in ("2823-3", "17861-6", "1975-2", "1920-8", "1742-6", "5763-8", "19123-9", "3016-3", "62236-5"):
        assert f"http://loinc.org|{code}" in pv["labs"], code
    assert pv["medicationStatements"].startswith("MedicationStatement?patient={{context.patientId}}")
    assert pv["medicationRequests"].startswith("MedicationRequest?patient={{context.patientId}}")
    # ALP codes are not asked twice, and the liver isoenzyme is not asked at all
    assert "6768-6" not in pv["labs"] and "1779-8" not in pv["alp"] + pv["labs"]


def test_discovery_schema_rejects_nested_prefetch_tokens():
    bad = {
        "services": [
            {
                "id": "x",
                "hook": "patient-view",
                "description": "d",
                "prefetch": {"k": "Medication/{{context.medication.id}}"},
            }
        ]
    }
    assert first_error("discovery", bad) is not None

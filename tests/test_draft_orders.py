"""The draft orders of order-select and order-sign as the client sent them: a selection that names no draft order,
a selected draft whose drug is not named as FHIR R4 names it, and a selected draft whose drug cannot be read, are
never passed as "checked, nothing to say" (outside attack, review 3, finding 6)."""

from __future__ import annotations

import json

import pytest

from service import metrics
from tests.conftest import OS, load_request

SIGN = "antiresorptive-low-alp-sign"
ATC_DENOSUMAB = {"system": "http://www.whocc.no/atc", "code": "M05BX04", "display": "denosumab"}


def with_draft_concept(concept, fixture="order-low-alp-in"):
    body = load_request(fixture)
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = concept
    return body


def signing(body):
    body["hook"] = "order-sign"
    body["context"].pop("selections")
    return body


def unreadable_draft(patient="order-low-alp-in", ident="draft-unknown"):
    return {
        "resource": {
            "resourceType": "MedicationRequest",
            "id": ident,
            "status": "draft",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "medicationReference": {"reference": "Medication/local-7"},  # not in the context, no fhirServer
        }
    }


def diagnostics(response) -> str:
    return response.get_json()["issue"][0]["diagnostics"]


# --- a selected draft whose drug is not named as FHIR names it: 400 --------------------------------------------------


def test_well_formed_denosumab_draft_gets_the_warning(client):
    """The control for the malformed drafts below: the same drug, written correctly, is warned about."""
    response = client.hook(OS, with_draft_concept({"coding": [ATC_DENOSUMAB]}))
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "warning"


@pytest.mark.parametrize(
    ("concept", "said"),
    [
        ({"coding": ATC_DENOSUMAB}, "medicationCodeableConcept.coding that is not a list"),  # seen: 200, no cards
        ("Denosumab 60 mg", "medicationCodeableConcept that is not a CodeableConcept"),  # seen: 200, no cards
        ({"coding": ["M05BX04"]}, "coding[0] that is not a Coding"),
        ({"coding": [{**ATC_DENOSUMAB, "code": 5}]}, "coding[0].code that is not a string"),
        ({"text": ["Prolia"]}, "medicationCodeableConcept.text that is not a string"),
        ({"coding": [{"system": 5}]}, "coding[0].system that is not a string"),
    ],
)
def test_selected_draft_naming_its_drug_invalidly_is_a_400(client, concept, said):
    response = client.hook(OS, with_draft_concept(concept))
    assert response.status_code == 400, response.get_json()
    assert "MedicationRequest/draft-denosumab" in diagnostics(response) and said in diagnostics(response)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"medicationReference": {"reference": "Medication/x"}}, "both medicationCodeableConcept and"),
        ({"medicationReference": {}}, "both medicationCodeableConcept and"),
        ({"medicationCodeableConcept": None, "medicationReference": "Medication/x"}, "not a Reference"),
        ({"medicationCodeableConcept": None, "medicationReference": {"reference": 7}}, "reference that is not a"),
    ],
)
def test_selected_draft_without_one_valid_medication_is_a_400(client, change, said):
    body = load_request("order-low-alp-in")
    resource = body["context"]["draftOrders"]["entry"][0]["resource"]
    resource.update(change)
    for key in [k for k, v in change.items() if v is None]:
        del resource[key]
    response = client.hook(OS, body)
    assert response.status_code == 400 and said in diagnostics(response), response.get_json()


# --- a selected draft that names no drug yet: unfinished, 200 and no card for it ------------------------------------


def sandbox_rx_view(patient: str, hook: str = "order-select", drug: tuple[str, str] | None = None) -> dict:
    """The request the CDS Hooks Sandbox's Rx View sends when it opens, and again after "Remove the draft order"
    (cds-hooks/sandbox: rx-view.jsx generateContext, medication-reducers.js createFhirResource with no prescribable
    chosen): a Bundle with no ``type``, one draft MedicationRequest with no ``intent`` and no drug; Rx Sign
    (order-sign) sends the same draft without ``selections``. With ``drug`` (RxNorm code, name), the draft once a
    drug is chosen: the concept, an intent, a dosage, a dispense request and a ``category`` that is one object
    (R4 has a list). The prefetch is the fixture's."""
    body = load_request(patient)
    draft = {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": "2026-06-01",
    }
    if drug:
        code, name = drug
        rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
        draft["medicationCodeableConcept"] = {
            "text": name,
            "coding": [{"display": name, "system": rxnorm, "code": code}],
        }
        draft["dosageInstruction"] = [
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": "{pill}"}}
                ],
            }
        ]
        draft["dispenseRequest"] = {
            "expectedSupplyDuration": {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
        }
        draft["intent"] = "order"
        category = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
        draft["category"] = {"coding": [{"system": category, "code": "community"}]}
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": draft}]}
    if hook == "order-select":
        body["context"]["selections"] = ["MedicationRequest/request-123"]
    else:
        signing(body)
    return body


@pytest.mark.parametrize(("hook", "service"), [("order-select", OS), ("order-sign", SIGN)])
def test_the_sandbox_rx_view_draft_with_no_drug_yet_is_a_200_with_no_card(client, hook, service):
    """Seen in the Sandbox: 400 "names no drug", shown as "Could not get a response". The patient's ALP is low, so
    any antiresorptive would be warned about (test_well_formed_denosumab_draft_gets_the_warning)."""
    response = client.hook(service, sandbox_rx_view("order-low-alp-in", hook))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["cards"] == []


@pytest.mark.parametrize(("hook", "service"), [("order-select", OS), ("order-sign", SIGN)])
def test_the_sandbox_rx_view_draft_once_a_bisphosphonate_is_chosen_gets_the_warning(client, hook, service):
    """The control: the same draft with risedronate 150 mg chosen (the Sandbox's prescribedMedication=905028)."""
    body = sandbox_rx_view("order-low-alp-in", hook, drug=("905028", "risedronate sodium 150 MG Oral Tablet"))
    cards = client.cards(service, body)
    assert [c["indicator"] for c in cards] == ["warning"], cards
    assert "risedronate" in cards[0]["summary"] and "ALP low" in cards[0]["summary"]


@pytest.mark.parametrize(
    "change",
    [
        {"medicationCodeableConcept": {}},
        {"medicationCodeableConcept": {"coding": []}},
        {"medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm"}]}},
        {"medicationCodeableConcept": {"text": "", "coding": [{"code": "", "display": ""}]}},
        {"medicationCodeableConcept": None},
        {"medicationReference": {}},
        {"medicationReference": {"reference": "", "display": ""}},
    ],
)
def test_a_selected_draft_whose_drug_element_is_empty_is_unfinished(client, change):
    body = load_request("order-low-alp-in")
    resource = body["context"]["draftOrders"]["entry"][0]["resource"]
    del resource["medicationCodeableConcept"]
    resource.update({k: v for k, v in change.items() if v is not None})
    response = client.hook(OS, body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["cards"] == []


def test_an_unfinished_draft_beside_a_selected_antiresorptive_leaves_its_card(client):
    body = load_request("order-low-alp-in")
    body["context"]["draftOrders"]["entry"].append(
        sandbox_rx_view("order-low-alp-in")["context"]["draftOrders"]["entry"][0]
    )
    body["context"]["selections"].append("MedicationRequest/request-123")
    response = client.hook(OS, body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert [c["indicator"] for c in cards] == ["warning"] and "denosumab" in cards[0]["summary"]
    assert "request-123" not in cards[0]["detail"]  # nothing to say about a draft that names no drug


def test_order_sign_checks_every_draft_so_any_malformed_one_is_a_400(client):
    body = signing(load_request("order-low-alp-in"))
    body["context"]["draftOrders"]["entry"][1]["resource"]["medicationCodeableConcept"] = "atorvastatin"
    response = client.hook(SIGN, body)
    assert response.status_code == 400 and "MedicationRequest/draft-statin" in diagnostics(response)


def test_order_select_does_not_judge_a_draft_that_was_not_selected(client):
    body = load_request("order-low-alp-in")
    body["context"]["draftOrders"]["entry"][1]["resource"]["medicationCodeableConcept"] = "atorvastatin"
    response = client.hook(OS, body)
    assert response.status_code == 200 and response.get_json()["cards"]


# --- a selected draft whose drug cannot be read, beside one that can -------------------------------------------------


def test_unresolvable_draft_beside_a_readable_antiresorptive_is_named_on_its_card(client):
    body = load_request("order-low-alp-in")
    entries = body["context"]["draftOrders"]["entry"]
    entries.append(unreadable_draft())
    body["context"]["selections"] = [f"MedicationRequest/{e['resource']['id']}" for e in entries]
    response = client.hook(OS, body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    # seen: one card about denosumab only; the unreadable selected order was mentioned nowhere
    assert cards and all("MedicationRequest/draft-unknown" in c["detail"] for c in cards)
    assert "could not be read" in cards[0]["detail"]
    assert cards[0]["summary"].endswith("; 1 selected order not read")
    removable = [
        a["resourceId"] for c in cards for s in c.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"
    ]
    assert "MedicationRequest/draft-unknown" not in removable  # not known to be an antiresorptive


def test_unresolvable_draft_beside_a_weaker_agent_is_named(client):
    """An unreadable order (which may be a bisphosphonate) beside raloxifene: the raloxifene card names it."""
    body = with_draft_concept({"text": "raloxifene 60 mg tablet"})
    body["context"]["draftOrders"]["entry"].append(unreadable_draft())
    body["context"]["selections"].append("MedicationRequest/draft-unknown")
    response = client.hook(OS, body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert cards and "MedicationRequest/draft-unknown" in cards[0]["detail"]


def test_order_sign_names_an_unresolvable_draft_too(client):
    body = signing(load_request("order-low-alp-in"))
    body["context"]["draftOrders"]["entry"].append(unreadable_draft())
    response = client.hook(SIGN, body)
    assert response.status_code == 200
    assert "MedicationRequest/draft-unknown" in response.get_json()["cards"][0]["detail"]


def test_unresolvable_draft_with_no_card_for_the_others_is_a_412(client):
    """With a current normal ALP the denosumab draft gets no card; the unreadable one beside it was not checked:
    a 412 naming it, as when it is selected alone (no silent 200 with no cards)."""
    body = load_request("order-normal-alp-out")
    patient = body["context"]["patientId"]
    body["context"]["draftOrders"]["entry"].append(unreadable_draft(patient))
    body["context"]["selections"].append("MedicationRequest/draft-unknown")
    assert client.hook(OS, load_request("order-normal-alp-out")).get_json()["cards"] == []
    response = client.hook(OS, body)
    assert response.status_code == 412 and "MedicationRequest/draft-unknown" in diagnostics(response)


# --- the subject of a draft order ----------------------------------------------------------------------------------
# A draft in the hook's own context is being ordered for the context patient: only a subject that clearly names
# another patient (a Patient reference with another id, or on another server) drops it. Before, a subject of the
# wrong JSON type or one that names nobody dropped it too, silently: 200, no card, no log, no metric (issue 27).

PATIENT = "order-low-alp-in"


def with_draft_subject(subject, hook="order-select"):
    body = load_request(PATIENT)
    body["fhirServer"] = "https://ehr.example.org/fhir"  # the prefetch is complete: nothing is fetched
    body["context"]["draftOrders"]["entry"][0]["resource"]["subject"] = subject
    return body if hook == "order-select" else signing(body)


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize(
    "subject",
    [
        None,
        {},
        [],
        "",
        f"Patient/{PATIENT}",  # a string, not a Reference
        [{"reference": f"Patient/{PATIENT}"}],
        {"reference": ""},
        {"reference": None},
        {"reference": 5},
        {"display": "Jane Doe"},
        {"identifier": {"system": "urn:mrn", "value": "123"}},
        {"reference": "urn:uuid:8f1b2a7e-0000-4000-8000-000000000001"},  # an unsaved resource, not this Patient
        {"reference": f"https://ehr.example.org/fhir/Patient/{PATIENT}/_history/2", "display": "Jane"},
    ],
)
def test_a_draft_whose_subject_names_no_other_patient_is_checked(client, hook, subject):
    cards = client.cards(OS if hook == "order-select" else SIGN, with_draft_subject(subject, hook))
    assert [c["indicator"] for c in cards] == ["warning"] and "denosumab" in cards[0]["summary"], cards


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize(
    "reference",
    [
        "Patient/someone-else",
        "Patient/someone-else/_history/1",
        "https://ehr.example.org/fhir/Patient/someone-else",
        f"https://other.example.org/fhir/Patient/{PATIENT}",  # the same id on another server: another patient
    ],
)
def test_a_draft_naming_another_patient_is_not_checked_and_is_counted_and_logged(client, caplog, hook, reference):
    before = metrics.FOREIGN_DROPPED.labels("MedicationRequest")._value.get()
    with caplog.at_level("WARNING", logger="service.hooks"):
        cards = client.cards(OS if hook == "order-select" else SIGN, with_draft_subject({"reference": reference}, hook))
    assert cards == []
    assert metrics.FOREIGN_DROPPED.labels("MedicationRequest")._value.get() - before == 1
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name.startswith("service.hooks")]
    assert events == [{"event": "draft_order_of_another_patient", "hook": hook, "drafts": 1}]
    assert "someone-else" not in caplog.text and PATIENT not in caplog.text


# --- selections must name draft orders ---------------------------------------------------------------------------


def test_selection_that_names_no_draft_order_is_a_400(client):
    body = load_request("order-low-alp-in")
    body["context"]["selections"] = ["MedicationRequest/not-in-draftOrders"]
    response = client.hook(OS, body)  # seen: 200 {"cards": []}
    assert response.status_code == 400
    assert "MedicationRequest/not-in-draftOrders" in diagnostics(response) and "draftOrders" in diagnostics(response)


def test_one_selection_naming_no_draft_beside_a_good_one_is_a_400(client):
    body = load_request("order-low-alp-in")
    body["context"]["selections"].append("ServiceRequest/draft-denosumab")  # the id is there, the type is not
    response = client.hook(OS, body)
    assert response.status_code == 400 and "ServiceRequest/draft-denosumab" in diagnostics(response)

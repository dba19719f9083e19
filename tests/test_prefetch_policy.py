"""Prefetch failure policy per key (issue 17, point 6): a required key (patient, alp) that cannot be had fails the
call with 412; an optional one (labs, medications, conditions) is left out, never taken for "none", and the card
says in one line what could not be checked."""

from __future__ import annotations

import json
import logging
import re

import pytest
import requests
import responses

from service.hooks import all_services
from tests.conftest import OS, PV, load_request, referencing_medication

BASE = "https://ehr.example.org/fhir"
ANY = re.compile(BASE + "/.*")
FAILURES = {
    "500": dict(status=500, json={"resourceType": "OperationOutcome", "issue": []}),
    "timeout": dict(body=requests.exceptions.ReadTimeout("slow")),
}
LABS_LINE = "Other lab results could not be read from the EHR"
MEDICATIONS_LINE = "Medications could not be read from the EHR"
SOME_MEDICATIONS_LINE = "Some medication records could not be read from the EHR"
CONDITIONS_LINE = "Diagnoses could not be read from the EHR"


def without(name: str, *keys: str, server: bool = True) -> dict:
    """The scenario's request with ``keys`` left out of its prefetch (so they are fetched from BASE)."""
    body = load_request(name)
    for key in keys:
        body["prefetch"].pop(key)
    if server:
        body["fhirServer"] = BASE
    return body


def failing(rsps: responses.RequestsMock, failure: str) -> None:
    rsps.add(responses.GET, ANY, **FAILURES[failure])


def details(cards: list[dict]) -> str:
    return "\n".join(c.get("detail", "") for c in cards)


def recommended(cards: list[dict]) -> list[str]:
    return [s["label"] for c in cards for s in c.get("suggestions", []) if s.get("isRecommended")]


def test_the_services_declare_patient_and_alp_required_and_the_rest_optional():
    for service in all_services():
        required = set(service.prefetch) - service.optional_prefetch
        assert required == {"patient", "alp"}, service.id


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("key", ["patient", "alp"])
@pytest.mark.parametrize(("service", "scenario"), [(PV, "persistent-low-in"), (OS, "order-low-alp-in")])
def test_a_required_key_that_cannot_be_fetched_is_still_a_412(client, service, scenario, key, failure):
    with responses.RequestsMock() as rsps:
        failing(rsps, failure)
        response = client.hook(service, without(scenario, key))
    assert response.status_code == 412
    assert f"(prefetch key {key})" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("failure", FAILURES)
def test_failing_labs_give_the_low_alp_card_saying_what_was_not_checked(client, failure):
    expected = client.cards(PV, load_request("persistent-low-in"))
    with responses.RequestsMock() as rsps:
        failing(rsps, failure)
        cards = client.cards(PV, without("persistent-low-in", "labs"))
    assert [c["summary"] for c in cards] == [c["summary"] for c in expected]
    assert LABS_LINE in cards[0]["detail"]
    assert "EDTA contamination of the sample and the Wilson disease pattern were not checked" in cards[0]["detail"]
    # Whether a workup test was done is not known: offered, none recommended (not "none done", not "all done").
    offered = [s["label"] for s in cards[0]["suggestions"]]
    assert len(offered) >= len(expected[0]["suggestions"]) and recommended(cards) == []
    assert recommended(expected)  # with the labs, some are recommended


def test_failing_labs_do_not_hide_a_result_already_known_to_explain_nothing_else(client):
    """A secondary cause found in the labs cannot be found without them: the card does not claim one, and says
    the labs were not read (rather than saying that the workup is clean)."""
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, without("secondary-in", "labs"))
    assert "Results already on the chart that may explain it" not in details(cards)
    assert LABS_LINE in details(cards)


def test_failing_labs_cannot_check_edta_contamination_and_say_so(client):
    assert any(c["summary"].startswith("Recollect") for c in client.cards(PV, load_request("edta-in")))
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, without("edta-in", "labs"))
    assert not any(c["summary"].startswith("Recollect") for c in cards)
    assert "EDTA contamination of the sample" in cards[0]["detail"] and LABS_LINE in cards[0]["detail"]


@pytest.mark.parametrize("failure", FAILURES)
def test_failing_medications_never_read_as_no_antiresorptive(client, failure):
    with_drug = client.cards(PV, load_request("antiresorptive-current-in"))
    assert any("antiresorptive" in c.get("detail", "").lower() for c in with_drug[1:])
    with responses.RequestsMock() as rsps:
        failing(rsps, failure)
        cards = client.cards(PV, without("antiresorptive-current-in", "medicationStatements", "medicationRequests"))
    low = [c for c in cards if MEDICATIONS_LINE in c.get("detail", "")]
    assert low, [c["summary"] for c in cards]
    assert "so current antiresorptive treatment and drugs that lower ALP were not checked" in low[0]["detail"]


@pytest.mark.parametrize("key", ["medicationStatements", "medicationRequests"])
def test_one_failing_medication_search_is_said_as_some_records(client, key):
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, without("single-low-in", key))
    assert len(cards) == 1 and cards[0]["summary"].startswith("Repeat the ALP")
    assert SOME_MEDICATIONS_LINE in cards[0]["detail"] and MEDICATIONS_LINE not in cards[0]["detail"]
    assert recommended(cards) == recommended(client.cards(PV, load_request("single-low-in")))  # labs were read


def test_an_operation_outcome_for_an_optional_key_without_a_server_is_the_same_as_a_failed_fetch(client):
    body = load_request("single-low-in")
    body["prefetch"]["labs"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    cards = client.cards(PV, body)
    assert LABS_LINE in cards[0]["detail"]
    missing = load_request("single-low-in")
    missing["prefetch"].pop("labs")
    assert client.cards(PV, missing)[0]["detail"] == cards[0]["detail"]


def test_an_operation_outcome_for_a_required_key_without_a_server_is_a_412(client):
    body = load_request("single-low-in")
    body["prefetch"]["alp"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    assert client.hook(PV, body).status_code == 412


def test_an_unreadable_medication_reference_on_the_chart_is_said_as_some_records(client):
    body = load_request("single-low-in")
    body["fhirServer"] = BASE
    body["prefetch"]["medicationRequests"] = referencing_medication("single-low-in", "Medication/gone")
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{BASE}/Medication/gone", status=404, json={"resourceType": "OperationOutcome"})
        cards = client.cards(PV, body)
    assert SOME_MEDICATIONS_LINE in cards[0]["detail"]


def test_complete_data_gives_no_not_checked_line(client):
    for name in ("persistent-low-in", "antiresorptive-current-in", "edta-in"):
        text = details(client.cards(PV, load_request(name)))
        assert "could not be read from the EHR" not in text, name


# ------------------------------------------------------------------------------------------------ order-select


@pytest.mark.parametrize("failure", FAILURES)
def test_order_select_with_failing_medications_still_warns_about_the_order(client, failure):
    """The draft order is in the hook's context: the warning needs no medication list (the chart's course does)."""
    expected = client.cards(OS, load_request("order-long-name-in"))
    with responses.RequestsMock() as rsps:
        failing(rsps, failure)
        cards = client.cards(OS, without("order-long-name-in", "medicationStatements", "medicationRequests"))
    assert [c["summary"] for c in cards] == [c["summary"] for c in expected]
    assert cards[0]["indicator"] == "warning" and MEDICATIONS_LINE in cards[0]["detail"]


def test_a_first_dose_denosumab_order_without_the_medications_is_not_called_a_first_dose(client):
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(OS, without("order-low-alp-in", "medicationStatements", "medicationRequests"))
    assert cards[0]["summary"] == "Exclude hypophosphatasia before giving denosumab: ALP low (23 U/L on 2026-04-05)"
    assert cards[0]["indicator"] == "warning"


def test_a_denosumab_order_is_not_offered_for_removal_when_the_course_cannot_be_checked(client):
    """The next dose of a denosumab course must never be offered as a simple removal (rebound fractures): when the
    medications that would show the course cannot be read, the order might be that dose."""
    known = client.cards(OS, load_request("order-denosumab-course-in"))
    assert "denosumab course" in known[0]["summary"]
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(OS, without("order-denosumab-course-in", "medicationStatements", "medicationRequests"))
    assert cards and all(
        a["type"] != "delete" for c in cards for s in c.get("suggestions", []) for a in s["actions"]
    ), cards
    assert "Whether this dose continues a denosumab course could not be checked" in cards[0]["detail"]
    assert MEDICATIONS_LINE in cards[0]["detail"]
    assert "before the first dose" not in cards[0]["detail"]


@pytest.mark.parametrize(("scenario", "removable"), [("order-long-name-in", True), ("order-low-alp-in", False)])
def test_without_the_medications_only_a_denosumab_order_loses_its_removal(client, scenario, removable):
    """A bisphosphonate order is still offered for removal (stopping one causes no rebound); a denosumab one is
    not, even when no course shows: the course could not be read."""
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(OS, without(scenario, "medicationStatements", "medicationRequests"))
    deletes = [a for c in cards for s in c.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]
    assert bool(deletes) == removable


def test_order_select_with_failing_conditions_says_the_diagnosis_was_not_checked(client):
    assert client.cards(OS, load_request("order-hpp-in"))[0]["indicator"] == "critical"
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(OS, without("order-hpp-in", "conditions"))
    assert cards and CONDITIONS_LINE in cards[0]["detail"]
    assert "a recorded diagnosis of hypophosphatasia was not checked" in cards[0]["detail"]


# ------------------------------------------------------------------------------------------ metrics and logs


def test_an_unavailable_key_is_counted_and_logged_by_name_only(client, caplog):
    caplog.set_level(logging.WARNING, logger="service.prefetch")
    before = _count(client, "labs")
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        client.cards(PV, without("persistent-low-in", "labs"))
    assert _count(client, "labs") == before + 1
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.prefetch"]
    assert line == {
        "event": "prefetch_unavailable",
        "service": PV,
        "key": "labs",
        "reason": "the FHIR server answered 500 (prefetch key labs)",
    }
    assert "persistent-low-in" not in caplog.text


def _count(client, key: str) -> float:
    text = client.client.get("/metrics").get_data(as_text=True)
    match = re.search(rf'^cds_prefetch_unavailable_total{{key="{key}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_with_a_medication_search_unread_the_card_never_says_the_drug_does_not_explain_the_low_alp(client):
    """The start of treatment is the earliest record of any antiresorptive: with a search unread, an earlier one may
    be missing, and "the ALP was already low before treatment began, so the drug does not explain it" could be
    false. Here the unread requests hold an alendronate order from before the low ALP (found by an outside review)."""
    statement = load_request("antiresorptive-current-in")["prefetch"]["medicationStatements"]["entry"][0]["resource"]
    earlier = {
        "resourceType": "MedicationRequest",
        "id": "mr-early",
        "status": "completed",
        "intent": "order",
        "authoredOn": "2024-06-01",
        "subject": {"reference": "Patient/antiresorptive-current-in"},
        "medicationCodeableConcept": statement["medicationCodeableConcept"],
    }
    full = load_request("antiresorptive-current-in")
    full["prefetch"]["medicationRequests"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": earlier}],
    }
    assert not any("ALP was low before treatment" in c["summary"] for c in client.cards(PV, full))
    assert any(
        "ALP was low before treatment" in c["summary"]
        for c in client.cards(PV, load_request("antiresorptive-current-in"))
    )
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, without("antiresorptive-current-in", "medicationRequests"))
    drug_card = next(c for c in cards if "on alendronate" in c["summary"])
    detail = " ".join(drug_card["detail"].split())
    assert "the drug does not explain it" not in detail and "ALP was low before treatment" not in drug_card["summary"]
    assert "not every medication record could be read from the EHR, so when treatment began is not known" in detail

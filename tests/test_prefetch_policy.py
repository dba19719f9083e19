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

from service.card_render import SUMMARY_MAX
from service.hooks import all_services
from tests.conftest import OS, PV, SIGN, load_request, make_app, referencing_medication

BASE = "https://ehr.example.org/fhir"
ANY = re.compile(BASE + "/.*")
FAILURES = {
    "500": dict(status=500, json={"resourceType": "OperationOutcome", "issue": []}),
    "timeout": dict(body=requests.exceptions.ReadTimeout("slow")),
}
NOT_CHECKED = "**Not checked, because the EHR did not return them:**"
LABS_LINE = "- **Other lab results**: tests already done"
MEDICATIONS_LINE = "- **Medications**: "
SOME_MEDICATIONS_LINE = "- **Some medication records**: "
CONDITIONS_LINE = "- **Diagnoses**: check the problem list for hypophosphatasia before giving"
ALP_HISTORY_LINE = (
    "- **ALP results**: not all were returned, so the history, and possibly the latest result, may be incomplete."
)
NEXT_PAGE = f"{BASE}/X?page=2"


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
    assert "tests already done, EDTA contamination of the sample and the Wilson disease pattern." in cards[0]["detail"]
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
    assert any("possible EDTA" in c["summary"] for c in client.cards(PV, load_request("edta-in")))
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, without("edta-in", "labs"))
    assert not any("EDTA" in c["summary"] or c["summary"].startswith("Recollect") for c in cards)
    assert "EDTA contamination of the sample" in cards[0]["detail"] and LABS_LINE in cards[0]["detail"]


@pytest.mark.parametrize("failure", FAILURES)
def test_failing_medications_never_read_as_no_antiresorptive(client, failure):
    with_drug = client.cards(PV, load_request("antiresorptive-current-in"))
    assert any("alendronate" in c["summary"] for c in with_drug)  # the drug and the low ALP, one card
    with responses.RequestsMock() as rsps:
        failing(rsps, failure)
        cards = client.cards(PV, without("antiresorptive-current-in", "medicationStatements", "medicationRequests"))
    low = [c for c in cards if MEDICATIONS_LINE in c.get("detail", "")]
    assert low, [c["summary"] for c in cards]
    assert "Check whether the patient takes a bisphosphonate or denosumab" in low[0]["detail"]


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
        assert NOT_CHECKED not in text, name


# ------------------------------------------------------------------------------------------------ order-select


@pytest.mark.parametrize("failure", FAILURES)
def test_order_select_with_failing_medications_still_warns_about_the_order(client, failure):
    """The draft order is in the hook's context: the warning needs no medication list (the chart's course does)."""
    expected = client.cards(OS, load_request("order-long-name-in"))
    with responses.RequestsMock() as rsps:
        failing(rsps, failure)
        cards = client.cards(OS, without("order-long-name-in", "medicationStatements", "medicationRequests"))
    # Whether the order starts treatment is not known: "giving", never "starting" (finding 3).
    assert "before starting" in expected[0]["summary"]
    assert [c["summary"] for c in cards] == [c["summary"].replace("before starting", "before giving") for c in expected]
    assert cards[0]["indicator"] == "warning" and MEDICATIONS_LINE in cards[0]["detail"]


def test_a_first_dose_denosumab_order_without_the_medications_is_not_called_a_first_dose(client):
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(OS, without("order-low-alp-in", "medicationStatements", "medicationRequests"))
    assert cards[0]["summary"] == (
        "Exclude hypophosphatasia, but do not delay a due denosumab dose: ALP low (23 U/L on 2026-04-05)"
    )
    assert cards[0]["indicator"] == "warning"


def test_a_denosumab_order_is_not_offered_for_removal_when_the_course_cannot_be_checked(client):
    """The next dose of a denosumab course must never be offered as a simple removal (rebound fractures): when the
    medications that would show the course cannot be read, the order might be that dose."""
    known = client.cards(OS, load_request("order-denosumab-course-in"))
    assert known[0]["summary"].startswith("Give this denosumab dose on time")
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
    assert f"{CONDITIONS_LINE} alendronate." in cards[0]["detail"]
    assert cards[0]["summary"].endswith("; diagnoses not read")


# ------------------------------------------------- review 18: pages given but the rest unreadable (finding 1)


def paged(bundle: dict | None = None, url: str = NEXT_PAGE) -> dict:
    """``bundle`` (an empty searchset by default) with a next link to a page that cannot be read."""
    bundle = dict(bundle or {"resourceType": "Bundle", "type": "searchset", "entry": []})
    bundle["link"] = [{"relation": "next", "url": url}]
    return bundle


def deletes(cards: list[dict]) -> list[dict]:
    return [a for c in cards for s in c.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]


def test_an_empty_first_page_of_medications_with_no_server_is_not_the_whole_list(client):
    """The reviewer's case: the statement that shows the denosumab course is on a page that cannot be read. The
    order must not be offered for removal, nor called a start."""
    body = load_request("order-denosumab-course-in")
    body["prefetch"]["medicationStatements"] = paged()
    body.pop("fhirServer", None)
    cards = client.cards(OS, body)
    assert cards and not deletes(cards)
    assert SOME_MEDICATIONS_LINE in cards[0]["detail"]
    assert "starting" not in cards[0]["summary"] and "before starting" not in cards[0]["detail"]
    assert "do not delay a due denosumab dose" in cards[0]["summary"]


def test_medication_pages_given_are_used_and_the_rest_named_as_not_read(client):
    """Pages given are real evidence (the course is found on them) but not the whole list."""
    body = load_request("order-denosumab-course-in")
    body["prefetch"]["medicationStatements"] = paged(body["prefetch"]["medicationStatements"])
    body.pop("fhirServer", None)
    cards = client.cards(OS, body)
    assert cards[0]["summary"].startswith("Give this denosumab dose on time") and not deletes(cards)
    assert SOME_MEDICATIONS_LINE in cards[0]["detail"]


def test_medication_pages_whose_next_link_fails_are_some_records_not_none(client):
    """Both medication searches were read in part: "some records", not "medications could not be read"."""
    body = load_request("antiresorptive-current-in")
    body["fhirServer"] = BASE
    for key in ("medicationStatements", "medicationRequests"):
        body["prefetch"][key] = paged(body["prefetch"][key], f"{BASE}/{key}?page=2")
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, body)
    assert any("alendronate" in c["summary"] for c in cards)  # the drug on page 1
    assert SOME_MEDICATIONS_LINE in details(cards) and MEDICATIONS_LINE not in details(cards)


def test_a_search_whose_second_page_fails_keeps_the_first(client):
    """Fetched from the server: page 1 read, page 2 failed. Page 1 is kept (the current antiresorptive is on it)."""
    body = without("antiresorptive-current-in", "medicationStatements", "medicationRequests")
    first = paged(load_request("antiresorptive-current-in")["prefetch"]["medicationStatements"])
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, re.compile(BASE + "/MedicationStatement.*"), json=first)
        failing(rsps, "500")  # page 2 and the MedicationRequest search
        cards = client.cards(PV, body)
    assert any("alendronate" in c["summary"] for c in cards)
    assert SOME_MEDICATIONS_LINE in details(cards)


def test_lab_pages_with_no_server_give_the_labs_line(client):
    body = load_request("persistent-low-in")
    body["prefetch"]["labs"] = paged(body["prefetch"]["labs"])
    body.pop("fhirServer", None)
    cards = client.cards(PV, body)
    assert LABS_LINE in cards[0]["detail"] and recommended(cards) == []


def test_alp_pages_with_no_server_are_used_and_the_card_says_earlier_results_were_not_all_read(client):
    """The required ALP key: a 412 would silence every warning, and the search sorts by -date, so the pages given
    hold the newest results. They are used, and the card says the history may be incomplete."""
    body = load_request("persistent-low-in")
    body["prefetch"]["alp"] = paged(body["prefetch"]["alp"])
    body.pop("fhirServer", None)
    cards = client.cards(PV, body)
    assert cards[0]["summary"].startswith("Persistently low ALP")
    assert NOT_CHECKED in cards[0]["detail"] and ALP_HISTORY_LINE in cards[0]["detail"]


def test_alp_pages_whose_next_link_fails_are_used_not_a_412(client, caplog):
    caplog.set_level(logging.WARNING, logger="service.prefetch")
    body = load_request("persistent-low-in")
    body["fhirServer"] = BASE
    body["prefetch"]["alp"] = paged(body["prefetch"]["alp"])
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, body)
    assert ALP_HISTORY_LINE in cards[0]["detail"]
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.prefetch"]
    assert line["event"] == "prefetch_incomplete" and line["key"] == "alp"
    assert _count(client, "alp", "incomplete") >= 1


@pytest.mark.parametrize("service", [PV, OS])
def test_alp_pages_that_hold_nothing_and_cannot_be_completed_are_a_412(client, service):
    """No ALP result at all was read: that is not "no ALP on record" but the required key not had."""
    body = load_request("persistent-low-in" if service == PV else "order-low-alp-in")
    body["prefetch"]["alp"] = paged()
    body.pop("fhirServer", None)
    response = client.hook(service, body)
    assert response.status_code == 412
    assert "(prefetch key alp)" in response.get_json()["issue"][0]["diagnostics"]


def test_alp_pages_on_an_order_card_say_the_history_may_be_incomplete(client):
    body = load_request("order-low-alp-in")
    body["prefetch"]["alp"] = paged(body["prefetch"]["alp"])
    cards = client.cards(OS, body)
    assert ALP_HISTORY_LINE in cards[0]["detail"]


# ------------------------------------------- review 18: a denosumab dose whose course is unknown (finding 2)

DO_NOT_DELAY = (
    "If it continues a course, do not delay it for the workup: draw PLP and urine phosphoethanolamine with it and "
    "plan the next steps with a metabolic bone specialist."
)
STOPPING = "**Do not stop or delay denosumab without a plan.**"


def no_medications(body: dict) -> dict:
    for key in ("medicationStatements", "medicationRequests"):
        body["prefetch"][key] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    return body


def as_sign(body: dict) -> dict:
    body["hook"] = "order-sign"
    body["context"].pop("selections")
    return body


def with_draft_of(name: str, donor: str) -> dict:
    """Scenario ``name`` with the antiresorptive draft order of scenario ``donor`` (its drug)."""
    body = load_request(name)
    drug = load_request(donor)["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"]
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = drug
    return body


def hpp_condition(patient_id: str) -> dict:
    condition = load_request("order-hpp-in")["prefetch"]["conditions"]
    text = json.dumps(condition).replace("Patient/order-hpp-in", f"Patient/{patient_id}")
    return json.loads(text)


@pytest.mark.parametrize("hook", [OS, SIGN])
def test_a_denosumab_dose_whose_course_is_unknown_is_not_held_back_for_the_workup(client, hook):
    body = no_medications(load_request("order-low-alp-in"))
    cards = client.cards(hook, as_sign(body) if hook == SIGN else body)
    detail = cards[0]["detail"]
    assert DO_NOT_DELAY in detail and STOPPING in detail
    assert "before giving it" not in detail and "before giving denosumab" not in cards[0]["summary"]
    assert cards[0]["summary"].startswith("Exclude hypophosphatasia, but do not delay a due denosumab dose")
    assert not deletes(cards)


def test_documented_hpp_and_a_denosumab_dose_whose_course_is_unknown(client):
    body = no_medications(load_request("order-low-alp-in"))
    body["prefetch"]["conditions"] = hpp_condition("order-low-alp-in")
    cards = client.cards(OS, body)
    assert cards[0]["indicator"] == "critical" and not deletes(cards)
    assert "If it continues a course, do not simply withhold it" in cards[0]["detail"]
    assert STOPPING in cards[0]["detail"]


def test_no_alp_and_a_denosumab_dose_whose_course_is_unknown(client):
    body = no_medications(with_draft_of("order-no-alp-in", "order-low-alp-in"))
    cards = client.cards(OS, body)
    assert cards[0]["summary"] == "Measure ALP without delaying a due denosumab dose: none on record"
    assert "If it continues a course, do not delay it: draw the ALP with it." in cards[0]["detail"]
    assert STOPPING in cards[0]["detail"] and not deletes(cards)


# ----------------------------------------------------- review 18: "starting" and "first dose" (finding 3)


def test_a_bisphosphonate_order_without_the_medications_is_not_called_a_first_dose(client):
    cards = client.cards(OS, no_medications(load_request("order-long-name-in")))
    assert "starting" not in cards[0]["summary"] and "before the first dose" not in cards[0]["detail"]
    cards = client.cards(OS, no_medications(load_request("order-no-alp-in")))
    assert cards[0]["summary"].startswith("Measure ALP before giving ")
    assert "before the first dose" not in cards[0]["detail"] and "before starting" not in cards[0]["detail"]
    assert "Whether this order starts or continues treatment could not be checked" in cards[0]["detail"]


def test_the_old_low_order_without_the_medications_says_giving(client):
    cards = client.cards(OS, no_medications(load_request("order-old-low-in")))
    assert "Measure a current ALP before giving it" in cards[0]["detail"]
    assert "before starting" not in cards[0]["detail"] + cards[0]["summary"]


@pytest.mark.parametrize("key", ["medications", "some_medications"])
def test_at_chart_open_without_the_medications_the_card_asks_to_check_for_an_antiresorptive(client, key):
    body = load_request("persistent-low-in")
    body["prefetch"]["medicationStatements"] = {"resourceType": "OperationOutcome", "issue": []}
    if key == "medications":
        body["prefetch"]["medicationRequests"] = {"resourceType": "OperationOutcome", "issue": []}
    detail = client.cards(PV, body)[0]["detail"]
    assert (
        "Check whether the patient takes a bisphosphonate or denosumab: they lower the ALP themselves and need "
        "review if HPP is possible; do not stop denosumab without a plan."
    ) in detail


# ------------------------------------------------------- review 18: diagnoses not read (finding 4)


@pytest.mark.parametrize("scenario", ["order-low-alp-in", "order-long-name-in", "order-no-alp-in"])
def test_diagnoses_not_read_are_in_the_order_summary(client, scenario):
    body = load_request(scenario)
    body["prefetch"]["conditions"] = {"resourceType": "OperationOutcome", "issue": []}
    card = client.cards(OS, body)[0]
    assert card["summary"].endswith("; diagnoses not read") and len(card["summary"]) <= SUMMARY_MAX
    assert CONDITIONS_LINE in card["detail"]


def test_the_summary_note_stays_whole_when_the_summary_is_cut():
    from service.card_render import summary_text

    text = summary_text("Exclude hypophosphatasia before giving " + "x" * 200, "; diagnoses not read")
    assert len(text) == SUMMARY_MAX and text.endswith("…; diagnoses not read")
    assert summary_text("short", "") == "short"


# ------------------------------------------------------ review 18: one block, by relevance (finding 5)


def test_what_was_not_read_is_one_block_ordered_by_relevance(client):
    body = no_medications(load_request("order-long-name-in"))
    for key in ("conditions", "labs"):
        body["prefetch"][key] = {"resourceType": "OperationOutcome", "issue": []}
    detail = client.cards(OS, body)[0]["detail"]
    # the action line first, then what was not checked (issue 24: a card opens with its action), then the rest
    action, block = detail.split("\n\n")[:2]
    assert action.startswith("**Repeat the ALP before giving it") and block == NOT_CHECKED
    assert detail.count("Not checked") == 1 and "<<" not in detail
    assert detail.index(MEDICATIONS_LINE) < detail.index(CONDITIONS_LINE) < detail.index(LABS_LINE)
    assert "could not be read from the EHR" not in detail


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


def _count(client, key: str, what: str = "unavailable") -> float:
    text = client.client.get("/metrics").get_data(as_text=True)
    match = re.search(rf'^cds_prefetch_{what}_total{{key="{key}"}} (\S+)$', text, re.M)
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
    assert not any("ALP low before alendronate" in c["summary"] for c in client.cards(PV, full))
    assert any(
        "ALP low before alendronate" in c["summary"]
        for c in client.cards(PV, load_request("antiresorptive-current-in"))
    )
    with responses.RequestsMock() as rsps:
        failing(rsps, "500")
        cards = client.cards(PV, without("antiresorptive-current-in", "medicationRequests"))
    drug_card = next(c for c in cards if "on alendronate" in c["summary"])
    detail = " ".join(drug_card["detail"].split())
    assert "the drug does not explain it" not in detail and "ALP low before alendronate" not in drug_card["summary"]
    assert "not every medication record could be read from the EHR, so when treatment began is not known" in detail


def test_the_persistent_card_does_not_assume_no_antiresorptive_when_medications_were_not_read(client):
    body = load_request("persistent-low-in")
    read = " ".join(client.cards(PV, body)[0]["detail"].split())
    assert "choose the drug with a metabolic bone specialist (in HPP these drugs have been followed by" in read
    assert "review one already taken" not in read
    body["prefetch"]["medicationStatements"] = {"resourceType": "OperationOutcome", "issue": []}
    detail = " ".join(client.cards(PV, body)[0]["detail"].split())
    assert "review one already taken (never stop denosumab without a plan)" in detail
    assert "Before a bisphosphonate or denosumab, have the PLP and urine PEA results" in detail


def test_a_card_asking_to_check_the_latest_alp_by_hand_names_what_was_not_returned(client):
    """Issue 30, point 4: the ALP results were not all returned, so the "latest" ALP the card asks to check by hand
    may not be the latest; the card said nothing of it (its template had no not-checked block)."""
    body = load_request("unit-unknown-in")
    body["prefetch"]["alp"]["total"] = 3  # more matches than the Bundle holds: not the whole list
    body["prefetch"]["labs"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    cards = client.cards(PV, body)
    assert [c["summary"].split(":")[0] for c in cards] == ["Ask the lab to check the latest ALP"]
    assert cards[0]["detail"].split("\n\n")[1] == NOT_CHECKED  # after the card's first paragraph
    assert ALP_HISTORY_LINE in cards[0]["detail"] and LABS_LINE in cards[0]["detail"]
    complete = client.cards(PV, load_request("unit-unknown-in"))
    assert NOT_CHECKED not in complete[0]["detail"]


def test_procedures_unread_are_named_only_where_they_could_change_the_card(client):
    """Without the procedures a single low after a normal cannot be told from the fall surgery or a transfusion
    causes: the card is the usual one and says so. For any other ALP history they change nothing: not named."""
    unread = client.cards(OS, without("order-after-surgery-out", "procedures", server=False))
    assert unread[0]["indicator"] == "warning" and "**Procedures**" in unread[0]["detail"]
    # the hip fracture of the "in" chart is trauma enough: still most likely temporary
    fracture = client.cards(OS, without("order-after-surgery-in", "procedures", server=False))
    assert "most likely temporary" in fracture[0]["summary"]
    other = client.cards(OS, without("order-low-alp-in", "procedures", server=False))
    assert "Procedures" not in other[0]["detail"]


def test_the_not_checked_block_follows_the_action_line_and_its_marks_never_show():
    from service.card_render import after_action_line

    block = "<<not-checked>>\n**Not checked, because the EHR did not return them:**\n\n- **Labs**\n\n<</not-checked>>"
    assert after_action_line(f"{block}\n**Do this.**\n\nEvidence.\n\nMore.") == (
        "**Do this.**\n\n**Not checked, because the EHR did not return them:**\n\n- **Labs**\n\nEvidence.\n\nMore."
    )
    assert after_action_line("<<not-checked>>\n\n<</not-checked>>\n**Do this.**\n\nEvidence.") == (
        "**Do this.**\n\nEvidence."
    )
    assert after_action_line("**Do this.**") == "**Do this.**"
    assert after_action_line(block) == "**Not checked, because the EHR did not return them:**\n\n- **Labs**"
    for name in ("persistent-low-in", "order-low-alp-in", "unit-unknown-in"):
        body = load_request(name)
        body["prefetch"]["labs"] = {"resourceType": "OperationOutcome", "issue": []}
        service = OS if name.startswith("order") else PV
        for card in make_app().cards(service, body):
            assert "<<" not in card["detail"] and ">>" not in card["detail"], name
            assert card["detail"].split("\n\n")[1] == NOT_CHECKED, name

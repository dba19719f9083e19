"""Answers that are not the data they claim to be, and budgets an optional key could spend for a required one (an
outside review's findings on the prefetch failure policy). A search answered 200 with an error OperationOutcome
inside its Bundle, or with no Bundle at all, failed: never "none" (412 for a required key, not checked for an
optional one). Paging cut short is never the whole list. The patient must be one Patient. The optional keys spend at
most a share of the call's time and bytes (CDS_FHIR_OPTIONAL_SHARE)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import responses

from service.fhir.answers import answer_problem, error_in_bundle, outcome_failed
from service.fhir.client import CallBudget, FhirClient, FhirError
from service.fhir.lazy import decode_hook_request
from service.hooks import low_alp_workup
from service.hooks.patient_chart import build_chart
from service.hooks.run import run_hook
from service.settings import load_settings
from tests.conftest import NOW, OS, PV, load_request, make_app

BASE = "https://ehr.example.org/fhir"
ANY = re.compile(BASE + "/.*")
NOT_READ = "**Not checked, because the EHR did not return them:**"
LABS_LINE = "- **Other lab results**: tests already done"


def outcome(severity: str) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": "exception"}]}


def bundle(*entries: dict, **fields) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": list(entries), **fields}


# What a FHIR server sends when a search fails but it still answers with a searchset: the outcome as an entry.
OUTCOME_BUNDLE = bundle({"resource": outcome("error"), "search": {"mode": "outcome"}})
# Not every server marks it: an error outcome is a failure wherever it is in the Bundle.
FATAL_UNMARKED = bundle({"resource": outcome("fatal")})
NOT_A_BUNDLE = {"resourceType": "Patient", "id": "x"}
FAILED_ANSWERS = {"outcome": OUTCOME_BUNDLE, "fatal-unmarked": FATAL_UNMARKED, "patient": NOT_A_BUNDLE}


def without(name: str, *keys: str) -> dict:
    body = load_request(name)
    for key in keys:
        body["prefetch"].pop(key)
    body["fhirServer"] = BASE
    return body


def deletes(cards: list[dict]) -> list[dict]:
    return [a for c in cards for s in c.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]


def same(value):
    """The cards without their uuids (new ones every call, on cards and suggestions)."""
    if isinstance(value, dict):
        return {k: same(v) for k, v in value.items() if k != "uuid"}
    return [same(v) for v in value] if isinstance(value, list) else value


def diagnostics(response) -> str:
    return response.get_json()["issue"][0]["diagnostics"]


# ------------------------------------------------------------------------------------- what counts as failed


def test_error_and_fatal_outcomes_fail_a_search_warnings_and_information_do_not():
    assert outcome_failed(outcome("error")) and outcome_failed(outcome("fatal"))
    assert not outcome_failed(outcome("warning")) and not outcome_failed(outcome("information"))
    mixed = {"resourceType": "OperationOutcome", "issue": [outcome("warning")["issue"][0], {"severity": "error"}]}
    assert outcome_failed(mixed)
    for unreadable in ({"resourceType": "OperationOutcome"}, {"resourceType": "OperationOutcome", "issue": []}):
        assert outcome_failed(unreadable)  # an outcome that says nothing readable is not taken as harmless
    results = bundle({"resource": {"resourceType": "Observation", "id": "o"}})
    assert answer_problem(results, search=True) is None
    assert answer_problem(bundle(), search=True) is None  # an empty searchset is "none"
    noted = bundle(*results["entry"], {"resource": outcome("warning"), "search": {"mode": "outcome"}})
    assert answer_problem(noted, search=True) is None
    assert "search failed" in answer_problem(bundle(*results["entry"], *OUTCOME_BUNDLE["entry"]), search=True)
    assert "not a Bundle" in answer_problem(NOT_A_BUNDLE, search=True)
    assert "not a Bundle" in answer_problem(outcome("information"), search=True)
    assert answer_problem(NOT_A_BUNDLE, search=False) is None  # a read


def test_an_error_outcome_is_found_in_a_lazily_decoded_prefetch_bundle():
    body = {"prefetch": {"ok": bundle(), "failed": OUTCOME_BUNDLE, "noted": bundle({"resource": outcome("warning")})}}
    prefetch = decode_hook_request(json.dumps(body).encode())["prefetch"]
    assert type(prefetch["failed"]).__name__ == "LazyBundle"
    assert error_in_bundle(prefetch["failed"])
    assert not error_in_bundle(prefetch["ok"]) and not error_in_bundle(prefetch["noted"])


# ------------------------------------------------------------------ finding 1: an optional search that failed


@pytest.mark.parametrize("answer", FAILED_ANSWERS.values(), ids=FAILED_ANSWERS)
def test_a_denosumab_course_is_never_offered_for_removal_when_the_statements_search_failed_inside_a_bundle(answer):
    """The statements search answered 200 with a Bundle holding only an error OperationOutcome (or with a resource
    that is no search answer): read as "no medication", the next dose of an established denosumab course would be
    called "starting" and offered for removal."""
    client = make_app()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, ANY, json=answer)
        cards = client.cards(OS, without("order-denosumab-course-in", "medicationStatements"))
    assert not deletes(cards), [c["summary"] for c in cards]
    assert NOT_READ in cards[0]["detail"]


def test_a_search_answer_with_a_warning_outcome_beside_its_results_is_used():
    client = make_app()
    course = load_request("order-denosumab-course-in")
    expected = client.cards(OS, course)
    noted = bundle(
        *course["prefetch"]["medicationStatements"]["entry"],
        {"resource": outcome("warning"), "search": {"mode": "outcome"}},
    )
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, ANY, json=noted)
        assert same(client.cards(OS, without("order-denosumab-course-in", "medicationStatements"))) == same(expected)


def test_a_prefetch_bundle_carrying_an_error_outcome_is_a_key_the_client_could_not_satisfy():
    """From the client, such a Bundle is treated as an OperationOutcome in its place: fetched from the FHIR server;
    with no server to ask, the key is not read (never "none")."""
    client = make_app()
    course = load_request("order-denosumab-course-in")
    expected = client.cards(OS, course)
    failed = json.loads(json.dumps(course))
    failed["prefetch"]["medicationStatements"] = OUTCOME_BUNDLE
    cards = client.cards(OS, failed)  # no fhirServer
    assert not deletes(cards) and NOT_READ in cards[0]["detail"]
    failed["fhirServer"] = BASE
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, ANY, json=course["prefetch"]["medicationStatements"])
        assert same(client.cards(OS, failed)) == same(expected)
        assert "MedicationStatement?" in rsps.calls[0].request.url


def test_a_prefetch_search_key_holding_no_bundle_is_a_400():
    body = load_request("order-denosumab-course-in")
    body["prefetch"]["medicationStatements"] = NOT_A_BUNDLE
    response = make_app().hook(OS, body)
    assert response.status_code == 400
    assert "prefetch.medicationStatements: a search was answered with a Patient, not a Bundle" in diagnostics(response)


# ----------------------------------------------------------------------- finding 3: the required ALP search


@pytest.mark.parametrize("answer", FAILED_ANSWERS.values(), ids=FAILED_ANSWERS)
@pytest.mark.parametrize(("service", "scenario"), [(PV, "persistent-low-in"), (OS, "order-low-alp-in")])
def test_an_alp_search_answered_with_an_error_is_a_412_not_none_on_record(service, scenario, answer):
    """Else patient-view gives no card at all and order-select says "none on record"."""
    client = make_app()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, ANY, json=answer)
        response = client.hook(service, without(scenario, "alp"))
    assert response.status_code == 412, response.get_json()
    assert "prefetch key alp" in diagnostics(response)


def test_a_client_alp_prefetch_carrying_an_error_outcome_without_a_server_is_a_412():
    body = load_request("order-low-alp-in")
    body["prefetch"]["alp"] = OUTCOME_BUNDLE
    response = make_app().hook(OS, body)
    assert response.status_code == 412
    assert "alp" in diagnostics(response) and "no fhirServer" in diagnostics(response)


def test_an_error_outcome_on_a_later_page_fails_the_search():
    client = make_app()
    statements = load_request("order-denosumab-course-in")["prefetch"]["medicationStatements"]
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, BASE + "/p2", json=OUTCOME_BUNDLE)
        rsps.add(responses.GET, ANY, json={**statements, "link": [{"relation": "next", "url": BASE + "/p2"}]})
        cards = client.cards(OS, without("order-denosumab-course-in", "medicationStatements"))
    assert NOT_READ in cards[0]["detail"]


# ------------------------------------------------------------------------------- finding 2: paging cut short


def _pages(rsps, search: str, entries: list, pages: int = 3) -> None:
    """A search whose results are on its last page, after ``pages - 1`` empty ones."""
    for i in range(2, pages + 1):
        nxt = {"link": [{"relation": "next", "url": f"{BASE}/{search}-p{i + 1}"}]} if i < pages else {}
        rsps.add(responses.GET, f"{BASE}/{search}-p{i}", json=bundle(*(entries if i == pages else []), **nxt))
    rsps.add(
        responses.GET,
        re.compile(BASE + rf"/{search}\?.*"),
        json=bundle(link=[{"relation": "next", "url": f"{BASE}/{search}-p2"}]),
    )


def test_medications_cut_at_fhir_max_pages_are_not_taken_as_complete(caplog):
    """Paging that stopped at CDS_FHIR_MAX_PAGES was only logged: a course on the next page was missed and the dose
    offered for removal."""
    client = make_app(FHIR_MAX_PAGES=2)
    course = load_request("order-denosumab-course-in")["prefetch"]["medicationStatements"]["entry"]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, caplog.at_level(logging.WARNING):
        _pages(rsps, "MedicationStatement", course)
        cards = client.cards(OS, without("order-denosumab-course-in", "medicationStatements"))
    assert not deletes(cards)
    assert NOT_READ in cards[0]["detail"]
    unavailable = [json.loads(r.getMessage()) for r in caplog.records if "prefetch_unavailable" in r.getMessage()]
    assert [(u["key"], "CDS_FHIR_MAX_PAGES" in u["reason"]) for u in unavailable] == [("medicationStatements", True)]


def test_an_alp_search_cut_short_keeps_its_pages_and_is_named_not_a_412(caplog):
    """The ALP results are required, but a 412 would silence every warning: the pages read (the newest: the search
    sorts by -date) are used, and the key is named as not completely read (logged, and on the cards)."""
    client = make_app(FHIR_MAX_ENTRIES=1)
    alp = load_request("persistent-low-in")["prefetch"]["alp"]
    assert len(alp["entry"]) > 1
    with responses.RequestsMock() as rsps, caplog.at_level(logging.WARNING):
        rsps.add(responses.GET, ANY, json=alp)
        cards = client.cards(PV, without("persistent-low-in", "alp"))
    assert cards  # advice from the newest result, not silence
    assert "not all were returned" in cards[0]["detail"]
    incomplete = [json.loads(r.getMessage()) for r in caplog.records if "prefetch_incomplete" in r.getMessage()]
    assert [(u["key"], "CDS_FHIR_MAX_ENTRIES" in u["reason"]) for u in incomplete] == [("alp", True)]


@pytest.mark.parametrize("cap", ["max_pages", "max_entries", "loop"])
def test_the_cut_alp_key_reaches_the_handler_as_not_completely_read(cap):
    body = without("persistent-low-in", "alp")
    alp = load_request("persistent-low-in")["prefetch"]["alp"]
    first, *rest = alp["entry"]
    settings = load_settings({"NOW": lambda: NOW, "AUTH": "off"}, environ={})
    limits = {"max_pages": {"max_pages": 1}, "max_entries": {"max_entries": 1}, "loop": {}}[cap]
    looping = {"link": [{"relation": "next", "url": BASE + "/p2"}]}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, BASE + "/p2", json=bundle(*rest, **looping))  # leads back to itself
        rsps.add(responses.GET, ANY, json=bundle(first, **looping) if cap != "max_entries" else alp)
        ran = run_hook(low_alp_workup.SERVICE, body, settings, lambda: FhirClient(BASE, **limits))
    assert ran.call.incomplete == {"alp"} and not ran.call.unavailable
    assert 1 <= len(ran.call.data["alp"]["entry"]) <= len(alp["entry"])
    assert "alp_history" in build_chart(ran.call).not_read


# ------------------------------------------------------------------------------------- finding 4: the patient


def test_no_advice_when_the_required_patient_could_not_be_read():
    """A null patient, or a Bundle in its place (from the client or the FHIR server), gave the full workup on the
    chart of a patient who has died."""
    client = make_app()
    body = load_request("deceased-out")
    assert client.cards(PV, body) == []
    patient = body["prefetch"]["patient"]

    body["prefetch"]["patient"] = None  # the client has no Patient: fetched, and with no server, a 412
    response = client.hook(PV, body)
    assert response.status_code == 412 and "patient" in diagnostics(response)

    body["fhirServer"] = BASE
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, BASE + "/Patient/deceased-out", json=patient)
        assert client.cards(PV, body) == []  # fetched: the death is read
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, BASE + "/Patient/deceased-out", json=bundle())
        response = client.hook(PV, body)  # the server answers with a Bundle holding no Patient
    assert response.status_code == 412
    assert "the FHIR server's answer for the patient: the patient data given holds no Patient" in diagnostics(response)

    body.pop("fhirServer")
    body["prefetch"]["patient"] = bundle()  # the client sends an empty Bundle
    response = client.hook(PV, body)
    assert response.status_code == 400
    assert "prefetch.patient: the patient data given holds no Patient" in diagnostics(response)


def test_a_bundle_holding_the_one_patient_is_read_with_its_death():
    client = make_app()
    body = load_request("deceased-out")
    body["prefetch"]["patient"] = bundle({"resource": body["prefetch"]["patient"], "search": {"mode": "match"}})
    assert client.cards(PV, body) == []
    body["prefetch"]["patient"] = bundle(
        {"resource": {**body["prefetch"]["patient"]["entry"][0]["resource"], "id": "x"}}
    )
    assert client.hook(PV, body).status_code == 400


def test_a_patient_read_answered_with_an_error_outcome_in_a_bundle_is_a_412():
    client = make_app()
    body = without("deceased-out", "patient")
    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            ANY,
            json=bundle({"resource": body_patient(), "search": {"mode": "match"}}, *OUTCOME_BUNDLE["entry"]),
        )
        response = client.hook(PV, body)
    assert response.status_code == 412 and "search failed" in diagnostics(response)


def body_patient() -> dict:
    return load_request("deceased-out")["prefetch"]["patient"]


# ------------------------------------------------------------------ finding 5: the optional keys' share of budgets


def test_the_optional_share_of_a_budget_leaves_the_rest_to_the_whole():
    whole = CallBudget(8, 1000)
    part = whole.share(0.75)
    assert part.deadline == pytest.approx(whole.started + 6) and part.max_bytes == 750
    part.count(700)
    with pytest.raises(FhirError, match="share of the optional prefetch keys"):
        part.count(100)  # over the share: refused, and not counted in the whole
    whole.count(300)  # the reserve is still there for the required keys
    whole.count(1)  # and past it, the share yields what it read to the required keys
    assert part.revoked
    with pytest.raises(FhirError, match="required prefetch keys needed the bytes"):
        part.count(1)
    whole.count(699)
    with pytest.raises(FhirError, match="CDS_FHIR_MAX_CALL_BYTES"):
        whole.count(1)  # with nothing left to yield, the whole is the limit


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_port}/fhir"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, value: dict) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_slow_optional_labs_do_not_turn_the_order_check_into_a_412():
    """The optional labs search took the whole CDS_FHIR_TIME_BUDGET; the draft order's Medication read then found
    the budget spent and the call was a 412 blaming the Medication: the low-ALP warning on a denosumab order was
    silenced by an optional key."""

    class Handler(_Quiet):
        def do_GET(self):
            if self.path.startswith("/fhir/Observation"):
                self.send_response(200)
                self.end_headers()
                for _ in range(40):  # trickles for 4 s, past the whole budget
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
            atc = {"system": "http://www.whocc.no/atc", "code": "M05BX04"}
            self.send_json({"resourceType": "Medication", "id": "deno", "code": {"coding": [atc]}})

    server = _Server(Handler)
    try:
        client = make_app(FHIR_TIME_BUDGET=2)
        body = load_request("order-low-alp-in")
        draft = body["context"]["draftOrders"]["entry"][0]["resource"]
        draft.pop("medicationCodeableConcept")
        draft["medicationReference"] = {"reference": "Medication/deno"}
        body["fhirServer"] = server.base
        expected = client.cards(OS, body)  # labs in the prefetch
        body["prefetch"].pop("labs")
        started = time.monotonic()
        cards = client.cards(OS, body)
        assert time.monotonic() - started < 2 + 1
        assert [c["summary"] for c in cards] == [c["summary"] for c in expected]
        assert LABS_LINE in cards[0]["detail"]
    finally:
        server.close()


def test_a_large_optional_labs_answer_does_not_make_the_required_alp_fetch_fail():
    """CDS_FHIR_MAX_CALL_BYTES was shared: an optional labs answer that used it up made the required ALP fetch
    fail, and the call was a 412."""
    alp = load_request("persistent-low-in")["prefetch"]["alp"]
    padded = bundle(meta={"tag": [{"code": "x" * 89000}]})

    class Handler(_Quiet):
        def do_GET(self):
            if "6768-6" in self.path:
                time.sleep(0.5)  # the labs answer is read first
                self.send_json(alp)
            else:
                self.send_json(padded)

    server = _Server(Handler)
    try:
        client = make_app(FHIR_MAX_CALL_BYTES=90000, FHIR_MAX_RESPONSE_BYTES=95000)
        body = load_request("persistent-low-in")
        body["prefetch"].pop("alp")
        body["prefetch"].pop("labs")
        body["fhirServer"] = server.base
        cards = client.cards(PV, body)
        assert cards and LABS_LINE in cards[0]["detail"]
    finally:
        server.close()


def test_a_required_key_still_has_the_whole_budget():
    """The share limits the optional keys only: a large ALP answer may use more than the optional share."""
    alp = load_request("persistent-low-in")["prefetch"]["alp"]
    big_alp = {**alp, "meta": {"tag": [{"code": "x" * 80000}]}}

    class Handler(_Quiet):
        def do_GET(self):
            self.send_json(big_alp)

    server = _Server(Handler)
    try:
        client = make_app(FHIR_MAX_CALL_BYTES=100000, FHIR_MAX_RESPONSE_BYTES=100000)
        body = load_request("persistent-low-in")
        body["prefetch"].pop("alp")
        body["fhirServer"] = server.base
        assert client.cards(PV, body)
    finally:
        server.close()


# --- an optional key's bytes never make a required key fail (outside attack, round 2) -------------------------


def test_optional_labs_size_does_not_make_the_required_alp_a_412():
    """140 KB of labs read first, then 70 KB of ALP, within a 200 KB call: the labs yield their bytes to the ALP,
    and the card is given with the labs named as not checked (never a 412 for the sake of an optional key)."""
    client = make_app(FHIR_MAX_CALL_BYTES=200_000)
    body = load_request("persistent-low-in")
    alp_body = json.loads(json.dumps(body["prefetch"]["alp"]))
    alp_body["meta"] = {"tag": [{"display": "x" * 70_000}]}
    labs_body = bundle(meta={"tag": [{"display": "x" * 140_000}]})
    body["fhirServer"] = BASE
    del body["prefetch"]["alp"], body["prefetch"]["labs"]

    def alp_answer(_request):
        time.sleep(0.3)  # the optional labs answer first
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(alp_body)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.GET, re.compile(BASE + r"/Observation\?.*6768-6.*"), callback=alp_answer)
        rsps.add(responses.GET, re.compile(BASE + r"/Observation\?.*"), json=labs_body)
        response = client.hook(PV, body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    assert cards and NOT_READ in cards[0]["detail"] and LABS_LINE in cards[0]["detail"]


def test_a_revoked_share_fails_its_fetches_and_the_whole_is_still_the_limit():
    whole = CallBudget(8, 1000)
    part = whole.share(0.75)
    part.count(600)
    whole.count(900)  # 1500 > 1000, but 900 without the share's 600: the share yields
    assert part.revoked
    with pytest.raises(FhirError):
        part.count(1)
    with pytest.raises(FhirError, match="CDS_FHIR_MAX_CALL_BYTES"):
        whole.count(101)


# --- a search answer that is visibly not the whole list is never the whole (empty) list ----------------------


def order_with_meds(statements: dict) -> dict:
    body = load_request("order-denosumab-course-in")
    body["prefetch"]["medicationStatements"] = statements
    return body


TRUNCATED = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "incomplete"}]}
NOT_WHOLE = {
    "total-above-entries": bundle(total=1),
    "unreadable-entries": bundle("x", 1, None, {"fullUrl": "MedicationStatement/1"}),
    "next-link-without-url": bundle(link=[{"relation": "next", "url": 5}]),
    "warning-incomplete": bundle({"resource": TRUNCATED, "search": {"mode": "outcome"}}),
    "warning-too-costly": bundle({"resource": {**TRUNCATED, "issue": [{"severity": "warning", "code": "too-costly"}]}}),
    "batch-response": {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"response": {"status": "500 Internal Server Error"}}],
    },
}


@pytest.mark.parametrize("answer", NOT_WHOLE.values(), ids=NOT_WHOLE.keys())
def test_a_medication_bundle_that_is_not_the_whole_list_is_not_read_as_no_course(answer):
    client = make_app()
    cards = client.cards(OS, order_with_meds(answer))
    assert not deletes(cards), [c["summary"] for c in cards]
    assert any("Some medication records" in c.get("detail", "") for c in cards)


@pytest.mark.parametrize("answer", NOT_WHOLE.values(), ids=NOT_WHOLE.keys())
def test_a_fetched_medication_answer_that_is_not_the_whole_list_is_not_read_as_no_course(answer):
    client = make_app()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, ANY, json=answer)
        cards = client.cards(OS, without("order-denosumab-course-in", "medicationStatements"))
    assert not deletes(cards), [c["summary"] for c in cards]


def test_medications_read_beside_a_total_above_them_are_kept_and_marked_incomplete():
    course = load_request("order-denosumab-course-in")
    statements = course["prefetch"]["medicationStatements"]
    body = order_with_meds({**statements, "total": len(statements["entry"]) + 5})
    cards = make_app().cards(OS, body)
    assert not deletes(cards)
    assert "denosumab course" in cards[0]["detail"] and "Some medication records" in cards[0]["detail"]


def test_the_completeness_checks_name_what_is_not_whole_and_pass_a_whole_list():
    from service.fhir.answers import incompleteness

    for name, answer in NOT_WHOLE.items():
        assert incompleteness(answer), name
    whole = bundle({"resource": {"resourceType": "Observation"}, "search": {"mode": "match"}}, total=1)
    assert incompleteness(whole) is None
    assert incompleteness(bundle({"resource": outcome("warning")}, total=0)) is None  # a note, not a cut
    included = bundle({"resource": {"resourceType": "Medication"}, "search": {"mode": "include"}}, total=1)
    assert incompleteness(included) == "the Bundle's total is more than the results it holds"
    lazily = decode_hook_request(json.dumps({"prefetch": {"k": bundle({"resource": 5}, total=1)}}).encode())
    assert incompleteness(lazily["prefetch"]["k"])


def test_an_alp_bundle_whose_total_exceeds_its_entries_is_not_no_alp():
    client = make_app()
    body = load_request("persistent-low-in")
    body["prefetch"]["alp"] = bundle(total=5)
    response = client.hook(PV, body)
    assert response.status_code == 412, response.get_json()


def test_alp_results_beside_a_total_above_them_are_used_and_said_incomplete():
    client = make_app()
    body = load_request("persistent-low-in")
    body["prefetch"]["alp"]["total"] = len(body["prefetch"]["alp"]["entry"]) + 3
    cards = client.cards(PV, body)
    assert cards and "- **ALP results**: not all were returned" in cards[0]["detail"]


# --- pages read of the ALP results are not assumed to be the newest -----------------------------------------


def test_unsorted_partial_alp_page_is_not_called_the_latest_with_earlier_ones_missing():
    client = make_app()
    body = load_request("persistent-low-in")
    alp = body["prefetch"]["alp"]
    alp["entry"].sort(key=lambda e: e["resource"]["effectiveDateTime"])  # oldest first: _sort was ignored
    alp["link"] = [{"relation": "next", "url": BASE + "/Observation?page=2"}]
    cards = client.cards(PV, body)
    text = "\n".join(c["summary"] + c.get("detail", "") for c in cards)
    assert "Earlier ALP results" not in text
    assert "those returned were not newest first, so the latest result may be missing" in text


def test_a_newest_first_partial_alp_page_says_the_history_may_be_incomplete():
    client = make_app()
    body = load_request("persistent-low-in")
    alp = body["prefetch"]["alp"]
    alp["entry"].sort(key=lambda e: e["resource"]["effectiveDateTime"], reverse=True)
    alp["link"] = [{"relation": "next", "url": BASE + "/Observation?page=2"}]
    text = "\n".join(c.get("detail", "") for c in client.cards(PV, body))
    assert "not all were returned, so the history, and possibly the latest result, may be incomplete" in text
    assert "not newest first" not in text

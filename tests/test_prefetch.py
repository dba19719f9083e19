"""Prefetch resolution and the FHIR fallback, against `responses` (no network)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from service.fhir.client import FhirClient, FhirError, PagingStopped
from service.hook_requests import bundle_resources, fhir_authorization, hook_request, search
from service.hooks.patient_chart import chart_prefetch
from tests.conftest import PV, load_bundle, make_app, referencing_medication

BASE = "https://ehr.example.org/fhir"
TOKEN = "opaque-token-123"

ALL_BUT_ALP = tuple(key for key in chart_prefetch() if key != "alp")


def request_without_prefetch(name: str, keep: tuple[str, ...] = ()) -> dict:
    bundle = load_bundle(name)
    body = hook_request(PV, bundle, name, fhir_server=BASE)
    body["prefetch"] = {k: v for k, v in body.pop("prefetch").items() if k in keep}
    if not body["prefetch"]:
        body.pop("prefetch")
    body["fhirAuthorization"] = fhir_authorization(TOKEN, "user/Observation.read")
    return body


def serve_bundle(rsps: responses.RequestsMock, name: str) -> None:
    """Answer any GET under BASE from the scenario's resources, the way a FHIR server would."""
    resources = bundle_resources(load_bundle(name))

    def answer(request):
        relative = request.url[len(BASE) + 1 :]
        result = search(resources, relative)
        if result is None:
            return 404, {}, json.dumps({"resourceType": "OperationOutcome", "issue": []})
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(result)

    rsps.add_callback(responses.GET, __import__("re").compile(BASE + "/.*"), callback=answer)


@responses.activate
def test_missing_prefetch_is_fetched_with_the_bearer_token_and_gives_the_same_cards(client):
    serve_bundle(responses, "persistent-low-in")
    fetched = client.cards(PV, request_without_prefetch("persistent-low-in"))
    prefetched = client.cards(PV, hook_request(PV, load_bundle("persistent-low-in"), "persistent-low-in"))
    assert [(c["summary"], c["indicator"]) for c in fetched] == [(c["summary"], c["indicator"]) for c in prefetched]
    assert fetched[0]["indicator"] == "warning"
    assert len(responses.calls) == 9  # patient, alp, labs, four medication searches, conditions, pregnancy
    for call in responses.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    paths = sorted(urlsplit(c.request.url).path.rsplit("/", 1)[-1] for c in responses.calls)
    assert paths == [
        "Condition",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Observation",
        "Observation",
        "persistent-low-in",
    ]


@responses.activate
def test_only_missing_keys_are_fetched(client):
    serve_bundle(responses, "single-low-in")
    body = request_without_prefetch("single-low-in", keep=ALL_BUT_ALP)
    cards = client.cards(PV, body)
    assert len(responses.calls) == 1
    query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert "http://loinc.org|6768-6" in query["code"][0]
    assert cards[0]["summary"].startswith("Repeat the ALP when the patient is well: low at 31 U/L")


@responses.activate
def test_null_prefetch_means_no_data_and_nothing_is_fetched(client):
    body = hook_request(PV, load_bundle("single-low-in"), "single-low-in", fhir_server=BASE)
    body["prefetch"]["medicationStatements"] = None
    body["prefetch"]["medicationRequests"] = None
    cards = client.cards(PV, body)
    assert len(responses.calls) == 0
    assert cards[0]["indicator"] == "info"


@responses.activate
def test_operation_outcome_in_prefetch_is_fetched_again(client):
    serve_bundle(responses, "single-low-in")
    body = hook_request(PV, load_bundle("single-low-in"), "single-low-in", fhir_server=BASE)
    body["prefetch"]["alp"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    cards = client.cards(PV, body)
    assert len(responses.calls) == 1
    assert cards and cards[0]["summary"].startswith("Repeat the ALP when the patient is well: low at 31 U/L")


def _alp(ident: str, value: float, when: str) -> dict:
    return {
        "fullUrl": f"{BASE}/Observation/{ident}",
        "resource": {
            "resourceType": "Observation",
            "id": ident,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "U/L", "system": "http://unitsofmeasure.org", "code": "U/L"},
        },
    }


@responses.activate
def test_next_links_are_followed_exactly_as_given(client):
    page2 = f"{BASE}?_getpages=4f1c2a&_getpagesoffset=1&_count=1&_pretty=true&_bundletype=searchset"
    first = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": page2}],
        "entry": [_alp("a2", 30, "2026-04-20")],
    }
    second = {"resourceType": "Bundle", "type": "searchset", "entry": [_alp("a1", 29, "2026-01-02")]}
    responses.add(responses.GET, f"{BASE}/Observation", json=first)
    responses.add(
        responses.GET,
        page2,
        json=second,
        match=[
            responses.matchers.query_string_matcher(
                "_getpages=4f1c2a&_getpagesoffset=1&_count=1&_pretty=true&_bundletype=searchset"
            )
        ],
    )
    body = hook_request(
        PV,
        {"entry": [{"resource": {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1970-01-01"}}]},
        "p1",
        fhir_server=BASE,
    )
    body["prefetch"].pop("alp")
    cards = client.cards(PV, body)
    assert [c.request.url for c in responses.calls] == [responses.calls[0].request.url, page2]
    assert cards[0]["indicator"] == "warning"  # both pages were read: two lows 108 days apart
    assert "2026-01-02" in cards[0]["detail"] and "2026-04-20" in cards[0]["detail"]


@responses.activate
def test_paginated_prefetch_is_completed_from_the_server(client):
    page2 = f"{BASE}?_getpages=abc&_getpagesoffset=1"
    responses.add(
        responses.GET,
        page2,
        json={"resourceType": "Bundle", "type": "searchset", "entry": [_alp("a1", 29, "2026-01-02")]},
    )
    body = hook_request(
        PV,
        {"entry": [{"resource": {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1970-01-01"}}]},
        "p1",
        fhir_server=BASE,
    )
    body["prefetch"]["alp"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": page2}],
        "entry": [_alp("a2", 30, "2026-04-20")],
    }
    cards = client.cards(PV, body)
    assert len(responses.calls) == 1
    assert cards[0]["indicator"] == "warning"


def test_paging_is_bounded_and_stops_on_a_loop():
    with responses.RequestsMock() as rsps:
        loop = f"{BASE}/Observation?page=2"
        rsps.add(
            responses.GET,
            f"{BASE}/Observation",
            json={
                "resourceType": "Bundle",
                "link": [{"relation": "next", "url": loop}],
                "entry": [_alp("x", 1, "2026")],
            },
        )
        rsps.add(
            responses.GET,
            loop,
            json={
                "resourceType": "Bundle",
                "link": [{"relation": "next", "url": loop}],
                "entry": [_alp("y", 1, "2026")],
            },
        )
        with pytest.raises(PagingStopped, match="a next link led back") as stopped:  # never taken as complete
            FhirClient(BASE, max_pages=50).fetch("Observation")
        assert len(stopped.value.pages["entry"]) == 2 and len(rsps.calls) == 2
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for i in range(10):
            rsps.add(
                responses.GET,
                f"{BASE}/page{i}",
                json={
                    "resourceType": "Bundle",
                    "link": [{"relation": "next", "url": f"{BASE}/page{i + 1}"}],
                    "entry": [],
                },
            )
        with pytest.raises(PagingStopped, match="CDS_FHIR_MAX_PAGES"):
            FhirClient(BASE, max_pages=3).fetch("page0")
        assert len(rsps.calls) == 3


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (dict(status=401, json={"resourceType": "OperationOutcome"}), "refused access (401)"),
        (dict(status=403, json={}), "refused access (403)"),
        (dict(status=404, json={}), "answered 404"),
        (dict(status=503, body="busy"), "answered 503"),
        (dict(status=200, body="<html>login</html>"), "not JSON"),
        (dict(status=200, json={"hello": "world"}), "not a FHIR resource"),
        (dict(body=requests.exceptions.ReadTimeout("slow")), "did not answer in time"),
        (dict(body=requests.exceptions.ConnectionError("down")), "could not be reached"),
    ],
)
def test_fhir_failures_give_412_with_a_reason_and_no_patient_data(client, setup, reason):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, __import__("re").compile(BASE + "/.*"), **setup)
        response = client.hook(PV, request_without_prefetch("persistent-low-in"))
    assert response.status_code == 412
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    message = body["issue"][0]["diagnostics"]
    assert reason in message
    assert "persistent-low-in" not in json.dumps(body) and "Traceback" not in json.dumps(body)


def test_missing_prefetch_without_fhir_server_is_412(client):
    body = hook_request(PV, load_bundle("single-low-in"), "single-low-in")
    body["prefetch"].pop("alp")
    response = client.hook(PV, body)
    assert response.status_code == 412
    assert "alp" in response.get_json()["issue"][0]["diagnostics"]


def test_next_link_to_another_host_is_not_followed():
    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            f"{BASE}/Observation",
            json={"resourceType": "Bundle", "link": [{"relation": "next", "url": "https://evil.example.com/steal"}]},
        )
        with pytest.raises(FhirError, match="another host"):
            FhirClient(BASE, "secret").fetch("Observation")
        assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    "address",
    [
        "Medication/../../../steal",
        "Medication/%2e%2e/%2E%2E/steal",
        "Medication/..%2F..%2Fsteal",
        "https://ehr.example.org/steal",
        "https://ehr.example.org/fhir-other/Observation",
        "/steal",
        "Medication/.\\..\\steal",
    ],
)
def test_the_token_is_sent_under_the_fhir_base_only(address):
    """Not only the origin: a reference or next link that leaves the base URL's path is never requested."""
    with responses.RequestsMock() as rsps:
        with pytest.raises(FhirError, match="outside the FHIR base URL"):
            FhirClient(BASE, "secret").get(address)
        rsps.add(
            responses.GET,
            f"{BASE}/Observation",
            json={"resourceType": "Bundle", "link": [{"relation": "next", "url": address}]},
        )
        with pytest.raises(FhirError, match="outside the FHIR base URL"):
            FhirClient(BASE, "secret").fetch("Observation")
        assert len(rsps.calls) == 1
    with responses.RequestsMock() as rsps:  # under the base: still read
        rsps.add(responses.GET, f"{BASE}/Medication/m1", json={"resourceType": "Medication", "id": "m1"})
        assert FhirClient(BASE, "secret").get("Medication/m1")["id"] == "m1"


@pytest.mark.parametrize("target", ["https://ehr.example.org/steal", "https://ehr.example.org/fhir/../steal"])
def test_hook_call_next_link_or_redirect_outside_the_base_is_412(client, target):
    keep = ALL_BUT_ALP  # only the ALP search is fetched
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(
            responses.GET,
            f"{BASE}/Observation",
            json={"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": target}]},
        )
        rsps.add(responses.GET, "https://ehr.example.org/steal", json={"resourceType": "Bundle", "entry": []})
        response = client.hook(PV, request_without_prefetch("single-low-in", keep=keep))
        assert len(rsps.calls) == 1
    assert response.status_code == 412
    assert "outside the FHIR base URL" in response.get_json()["issue"][0]["diagnostics"]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _redirect_then_bundle(rsps, target)
        response = client.hook(PV, request_without_prefetch("single-low-in", keep=keep))
        assert len(rsps.calls) == 1
    assert response.status_code == 412
    assert "redirected to a path outside the FHIR base URL" in response.get_json()["issue"][0]["diagnostics"]


@responses.activate
def test_timeouts_are_passed_to_requests():
    seen = {}

    def answer(request):
        return 200, {}, json.dumps({"resourceType": "Patient", "id": "p"})

    responses.add_callback(responses.GET, f"{BASE}/Patient/p", callback=answer)
    client = FhirClient(BASE, connect_timeout=1.5, read_timeout=4.0)
    original = client.session.get

    def spy(url, **kwargs):
        seen.update(kwargs)
        return original(url, **kwargs)

    client.session.get = spy
    client.fetch("Patient/p")
    assert seen["timeout"] == (1.5, 4.0)


def test_settings_reach_the_client():
    app = make_app(FHIR_CONNECT_TIMEOUT=0.5, FHIR_READ_TIMEOUT=2, FHIR_MAX_PAGES=7)
    from service.endpoints.hooks import client_for

    fhir = client_for({"fhirServer": BASE}, app.app.config["CDS"])
    assert (fhir.connect_timeout, fhir.read_timeout, fhir.max_pages) == (0.5, 2.0, 7)


def test_missing_keys_are_fetched_concurrently_the_required_ones_first(client):
    """Seven missing keys: the two required ones (patient, alp) are asked for together, and the five optional ones
    together once both required answers are in (issue 30: a server that answers one request at a time must not make
    the required keys wait behind a slow optional search). Each answer waits for the rest of its group to be in
    flight, which a serial fetch never is."""
    import re
    import threading

    groups = {True: threading.Barrier(2, timeout=5), False: threading.Barrier(len(chart_prefetch()) - 2, timeout=5)}
    answered: list[str] = []  # required answers given
    seen: list[tuple[str, int]] = []  # (optional request, required answers given when it was sent)
    resources = bundle_resources(load_bundle("single-low-in"))

    def answer(request):
        query = request.url[len(BASE) + 1 :]
        required = query.startswith("Patient/") or "6768-6" in query  # the ALP search asks for its LOINC code
        if not required:
            seen.append((query, len(answered)))
        groups[required].wait()  # raises BrokenBarrierError (-> 500) if the group's requests come one by one
        if required:
            answered.append(query)
        return 200, {}, json.dumps(search(resources, query))

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, re.compile(BASE + "/.*"), callback=answer)
        cards = client.cards(PV, request_without_prefetch("single-low-in"))
        assert len(rsps.calls) == len(chart_prefetch())
    optional = len(chart_prefetch()) - 2
    assert len(answered) == 2 and [n for _, n in seen] == [2] * optional, seen
    assert cards[0]["summary"].startswith("Repeat the ALP when the patient is well: low at 31 U/L")


def test_medication_reference_is_read_from_the_fhir_server(client):
    body = hook_request(PV, load_bundle("persistent-low-out"), "persistent-low-out", fhir_server=BASE)
    body["prefetch"]["medicationRequests"] = referencing_medication("persistent-low-out", "Medication/prolia")
    with responses.RequestsMock() as rsps:
        rsps.add(
            responses.GET,
            f"{BASE}/Medication/prolia",
            json={
                "resourceType": "Medication",
                "id": "prolia",
                "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "993452"}]},
            },
        )
        cards = client.cards(PV, body)
        assert len(rsps.calls) == 1
    antiresorptive = [c for c in cards if c["summary"].startswith("Exclude hypophosphatasia")]
    assert antiresorptive and antiresorptive[0]["indicator"] == "warning"
    assert "denosumab" in antiresorptive[0]["summary"]  # named from the code of the Medication fetched


# ------------------------------------------------------------------------------------------------ redirects


def _redirect_then_bundle(rsps: responses.RequestsMock, target: str) -> None:
    rsps.add(responses.GET, f"{BASE}/Observation", status=302, headers={"Location": target})
    rsps.add(
        responses.GET, target, json={"resourceType": "Bundle", "type": "searchset", "entry": [_alp("x", 5, "2026")]}
    )


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example.com/fhir/Observation",  # another host
        "https://ehr.example.org:8443/fhir/Observation",  # another port
        "http://ehr.example.org/fhir/Observation",  # another scheme (a downgrade)
    ],
)
def test_redirect_to_another_origin_is_refused_with_412(client, target):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _redirect_then_bundle(rsps, target)
        keep = ALL_BUT_ALP  # only the ALP search is fetched
        response = client.hook(PV, request_without_prefetch("single-low-in", keep=keep))
        assert len(rsps.calls) == 1  # the redirect target was never asked
    assert response.status_code == 412
    assert "redirected to another origin" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "target",
    [
        "https://user@ehr.example.org/fhir/Observation",  # the same host, with credentials of the caller's choosing
        "https://ehr.example.org:443@evil.example.com/fhir/Observation",
    ],
)
def test_redirect_with_user_information_is_refused_with_412(client, target):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _redirect_then_bundle(rsps, target)
        keep = ALL_BUT_ALP
        response = client.hook(PV, request_without_prefetch("single-low-in", keep=keep))
        assert len(rsps.calls) == 1
    assert response.status_code == 412


@pytest.mark.parametrize(
    ("base", "target"),
    [
        ("https://ehr.example.org/fhir", "https://ehr.example.org:443/fhir/Observation?moved=1"),
        ("https://ehr.example.org:443/fhir", "https://ehr.example.org/fhir/Observation?moved=1"),
        ("http://ehr.example.org/fhir", "http://ehr.example.org:80/fhir/Observation?moved=1"),
        ("http://ehr.example.org:80/fhir", "http://EHR.example.org/fhir/Observation?moved=1"),
    ],
)
def test_the_default_port_written_or_not_is_the_same_origin(base, target):
    """http://h and http://h:80 (https://h and https://h:443) are one origin, for redirects and for next links."""
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{base}/Observation", status=302, headers={"Location": target})
        rsps.add(responses.GET, target, json={"resourceType": "Bundle", "type": "searchset", "entry": []})
        assert FhirClient(base).fetch("Observation")["resourceType"] == "Bundle"
        assert len(rsps.calls) == 2
    first = {"resourceType": "Bundle", "type": "searchset", "entry": [], "link": [{"relation": "next", "url": target}]}
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{base}/Observation", json=first)
        rsps.add(responses.GET, target, json={"resourceType": "Bundle", "type": "searchset", "entry": []})
        FhirClient(base).fetch("Observation")
        assert len(rsps.calls) == 2


def test_same_origin_redirect_is_followed_within_the_page_budget():
    target = f"{BASE}/Observation?moved=1"
    with responses.RequestsMock() as rsps:
        _redirect_then_bundle(rsps, target)
        merged = FhirClient(BASE, max_pages=2).fetch("Observation")
        assert len(merged["entry"]) == 1 and len(rsps.calls) == 2
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        _redirect_then_bundle(rsps, target)
        with pytest.raises(FhirError, match="CDS_FHIR_MAX_PAGES"):
            FhirClient(BASE, max_pages=1).fetch("Observation")
        assert len(rsps.calls) == 1


def test_fhir_answers_of_one_hook_call_are_capped_in_total():
    """Each answer is under the per-answer limit; together they are over the per-call one. The cap leaves room for
    one answer: whichever keys fetch first, a required one (patient or alp) is cut off, so the call is a 412 (an
    optional key cut off alone would be answered without it: test_prefetch_policy.py)."""
    resources = bundle_resources(load_bundle("persistent-low-in"))

    def answer(request):
        result = search(resources, request.url[len(BASE) + 1 :])
        return 200, {}, json.dumps({**result, "text": {"status": "generated", "div": "x" * 60_000}})

    client = make_app(FHIR_MAX_RESPONSE_BYTES=100_000, FHIR_MAX_CALL_BYTES=100_000)
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, __import__("re").compile(BASE + "/.*"), callback=answer)
        response = client.hook(PV, request_without_prefetch("persistent-low-in"))
    assert response.status_code == 412
    assert "CDS_FHIR_MAX_CALL_BYTES" in response.get_json()["issue"][0]["diagnostics"]
    roomy = make_app(FHIR_MAX_RESPONSE_BYTES=100_000, FHIR_MAX_CALL_BYTES=1_000_000)
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, __import__("re").compile(BASE + "/.*"), callback=answer)
        assert roomy.hook(PV, request_without_prefetch("persistent-low-in")).status_code == 200

"""Transport: request validation, status codes and JSON error bodies."""

from __future__ import annotations

import copy

import pytest

from service.hook_requests import fhir_authorization
from tests.conftest import OS, PV, load_request


def outcome_message(response) -> str:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def test_malformed_json_is_400(client):
    response = client.client.post(f"/cds-services/{PV}", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON" in outcome_message(response)


def test_wrong_content_type_is_400(client):
    response = client.client.post(f"/cds-services/{PV}", data="hook=patient-view", content_type="text/plain")
    assert response.status_code == 400
    assert "application/json" in outcome_message(response)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b.pop("hookInstance"), "'hookInstance' is a required property"),
        (lambda b: b.pop("context"), "'context' is a required property"),
        (lambda b: b["context"].pop("patientId"), "'patientId' is a required property"),
        (lambda b: b["context"].update(userId="nobody"), "invalid patient-view context: userId"),
        (lambda b: b.update(fhirAuthorization=fhir_authorization("t")), "fhirServer"),
        (lambda b: b.update(fhirServer="ftp://example.org"), "fhirServer"),
        (lambda b: b.update(prefetch={"alp": "text"}), "prefetch.alp"),
        (lambda b: b.update(prefetch=[]), "prefetch"),
    ],
)
def test_schema_violations_are_400_with_a_specific_message(client, mutate, expected):
    body = load_request("single-low-in")
    mutate(body)
    response = client.hook(PV, body)
    assert response.status_code == 400
    assert expected in outcome_message(response)


def test_prefetch_value_without_resource_type_is_400(client):
    body = load_request("single-low-in")
    body["prefetch"]["alp"] = {"entry": []}
    response = client.hook(PV, body)
    assert response.status_code == 400
    assert "prefetch.alp" in outcome_message(response)


def test_hook_that_does_not_match_the_service_is_400(client):
    body = load_request("single-low-in")
    response = client.hook(OS, body)
    assert response.status_code == 400
    assert "does not match service" in outcome_message(response)


def test_order_select_context_needs_selections_and_draft_orders(client):
    body = load_request("order-low-alp-in")
    broken = copy.deepcopy(body)
    broken["context"].pop("draftOrders")
    assert client.hook(OS, broken).status_code == 400
    broken = copy.deepcopy(body)
    broken["context"]["selections"] = []
    response = client.hook(OS, broken)
    assert response.status_code == 400
    assert "selections" in outcome_message(response)


def test_unknown_service_is_404(client):
    response = client.hook("no-such-service", load_request("single-low-in"))
    assert response.status_code == 404
    assert "no-such-service" in outcome_message(response)


def test_wrong_method_is_405_with_json(client):
    response = client.client.get(f"/cds-services/{PV}")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert client.client.delete("/cds-services").status_code == 405


def test_body_over_the_limit_is_413():
    from tests.conftest import make_app

    small = make_app(MAX_BODY_BYTES=1000)
    body = load_request("persistent-low-in")
    response = small.hook(PV, body)
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert "CDS_MAX_BODY_BYTES" in outcome_message(response)


def test_no_cards_is_an_empty_list(client):
    response = client.hook(PV, load_request("normal-alp-out"))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_access_log_has_no_patient_data(client, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="service.access")
    body = load_request("persistent-low-in")
    client.hook(PV, body)
    text = caplog.text
    assert body["hookInstance"] in text
    assert "persistent-low-in" not in text and "1981-07-30" not in text and "U/L" not in text


def _post_chunked(url: str, body: bytes) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked (no Content-Length), as a streaming client sends it."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
    connection.request("POST", parts.path, body=chunks, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_chunked_body_over_the_limit_is_413_not_cut_and_parsed():
    """A valid request padded with whitespace past the limit: cut at the limit it would still parse."""
    import json
    import threading

    from werkzeug.serving import make_server

    from tests.conftest import make_app

    request = json.dumps(load_request("single-low-in")).encode()
    limit = len(request) + 100
    server = make_server("127.0.0.1", 0, make_app(MAX_BODY_BYTES=limit).app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/cds-services/{PV}"
    try:
        status, body = _post_chunked(url, request + b" " * 100_000)
        assert status == 413, body
        assert "CDS_MAX_BODY_BYTES" in body["issue"][0]["diagnostics"]
        status, body = _post_chunked(url, request + b" " * 100)  # exactly at the limit: accepted
        assert status == 200 and body["cards"]
    finally:
        server.shutdown()

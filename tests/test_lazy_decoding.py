"""Lazy decoding of prefetch Bundles (service/fhir/lazy.py): the same answers as decoding everything, less work.

The regression guard for performance is here, and it counts work instead of timing it: a resource the rules do not
read is never decoded into dicts.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.run import synthetic_bundle
from service.errors import CdsError
from service.fhir import lazy
from service.fhir.lazy import LazyBundle, decode_hook_request
from service.hook_requests import hook_request
from service.hooks.run import run_hook
from tests.conftest import OS, PV, load_request, make_app
from tests.test_faults_and_fuzz import FUZZ, json_values, observations

ROOT = Path(__file__).resolve().parent.parent
CLIENT = make_app()
APP = CLIENT.app
REQUESTS = sorted((ROOT / "fixtures" / "requests").glob("*.json"))


def cards(service_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The cards the service's handler gives for a decoded body (no HTTP: the two decodings are compared alone)."""
    with APP.app_context():
        service = APP.extensions["cds_services"][service_id]
        config = APP.config["CDS"]
        issued = run_hook(service, body, config).cards
    return json.loads(re.sub(r'"uuid": "[^"]*"', '"uuid": ""', json.dumps([card for _, card in issued])))


def both_ways(service_id: str, raw: bytes) -> tuple[Any, Any]:
    def outcome(body: dict[str, Any]) -> Any:
        try:
            return cards(service_id, body)
        except CdsError as exc:  # the same refusal (400/412) both ways
            return type(exc).__name__, str(exc)

    return outcome(orjson.loads(raw)), outcome(decode_hook_request(raw))


def service_of(path: Path) -> str:
    hook = json.loads(path.read_text())["hook"]
    return {"patient-view": PV, "order-select": OS, "order-sign": "antiresorptive-low-alp-sign"}[hook]


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_every_scenario_gives_the_same_cards_decoded_lazily_or_in_full(path):
    eager, lazy = both_ways(service_of(path), path.read_bytes())
    assert lazy == eager
    expected = json.loads((ROOT / "fixtures" / "responses" / path.name).read_text())
    assert [c["summary"] for c in lazy] == [c["summary"] for c in expected["cards"]]


def test_prefetch_bundles_are_lazy_and_everything_else_is_plain_json():
    body = decode_hook_request(json.dumps(load_request("persistent-low-in")).encode())
    assert isinstance(body["prefetch"]["alp"], LazyBundle)
    assert "entry" not in body["prefetch"]["alp"]  # entries are read through readers.entries, never as dicts
    assert type(body["prefetch"]["patient"]) is dict and type(body["context"]) is dict


@pytest.mark.parametrize(
    "value",
    [
        {"resourceType": "Bundle", "entry": {"resource": {}}},  # entry not a list
        {"resourceType": "Bundle", "entry": [1, "x"]},  # entries not objects
        {"resourceType": "Bundle", "link": [{"relation": "next", "url": "x"}], "entry": []},  # a page to fetch
        {"resourceType": "Patient", "id": "x"},
        [],
    ],
)
def test_what_the_lazy_decoder_does_not_model_is_decoded_in_full(value):
    raw = json.dumps({"hook": "patient-view", "prefetch": {"alp": value}}).encode()
    assert decode_hook_request(raw)["prefetch"]["alp"] == value
    assert not isinstance(decode_hook_request(raw)["prefetch"]["alp"], LazyBundle)


def guard_chart(unrelated: int) -> bytes:
    """5 recent ALP results and ``unrelated`` potassium results from ten years ago, none on an ALP day."""
    bundle = synthetic_bundle("guard", 0)
    for i in range(5):
        bundle["entry"].append(observation(f"alp{i}", "6768-6", f"2026-0{i + 1}-10T08:00:00Z", 25, "U/L"))
    for i in range(unrelated):
        bundle["entry"].append(observation(f"k{i}", "2823-3", f"2016-03-{1 + i % 28:02d}T08:00:00Z", 4.1, "mmol/L"))
    return json.dumps(hook_request(PV, bundle, "guard")).encode()


class CountingDecoder:
    """Stands in for the lazy module's whole-resource decoder and counts what it decodes."""

    def __init__(self, decoder: Any) -> None:
        self.decoder, self.count = decoder, 0

    def decode(self, raw: Any) -> Any:
        self.count += 1
        return self.decoder.decode(raw)


def test_a_chart_of_old_unrelated_labs_decodes_only_the_alp_results(monkeypatch):
    """The regression guard, in work instead of time: 1000 old potassium results that no rule reads add no
    whole-resource decoding, and the memory they add while the call runs is a fraction of what decoding them into
    dicts takes."""
    counting = CountingDecoder(lazy._any)
    monkeypatch.setattr(lazy, "_any", counting)
    body = decode_hook_request(guard_chart(1000))
    counting.count = 0  # what follows is reading: every whole resource decoded is counted
    issued = cards(PV, body)
    assert issued and "persistently low" in json.dumps(issued).lower()
    assert counting.count == 5  # the five ALP results, nothing of the 1000

    def peak(work) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, big = guard_chart(0), guard_chart(1000)
    extra_lazy = peak(lambda: cards(PV, decode_hook_request(big))) - peak(lambda: cards(PV, decode_hook_request(small)))
    in_full = peak(lambda: msgspec.json.decode(big)) - peak(lambda: msgspec.json.decode(small))
    assert extra_lazy < in_full / 2, (extra_lazy, in_full)


def observation(ident: str, code: str, when: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Observation",
            "id": ident,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/guard"},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        }
    }


def test_a_resource_nested_deeper_than_the_decoder_allows_is_a_400():
    body = load_request("single-low-in")
    raw = json.dumps(body).replace('"status"', '"extension": ' + "[" * 5000 + "]" * 5000 + ', "status"', 1)
    client = CLIENT.client
    response = client.post(f"/cds-services/{PV}", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert "nested" in response.get_json()["issue"][0]["diagnostics"]


def test_a_resource_nested_a_few_hundred_levels_in_an_unread_element_is_read():
    body = load_request("single-low-in")
    raw = json.dumps(body).replace('"status"', '"extension": ' + "[" * 300 + "]" * 300 + ', "status"', 1)
    response = CLIENT.client.post(f"/cds-services/{PV}", data=raw, content_type="application/json")
    assert response.status_code == 200
    assert response.get_json()["cards"]


entries = st.lists(
    st.one_of(json_values, st.builds(lambda o: {"resource": o}, observations()), st.just({"search": {"mode": 7}})),
    max_size=6,
)


@FUZZ
@given(
    alp=entries, labs=entries, bundle_fields=st.dictionaries(st.sampled_from(["type", "link", "total"]), json_values)
)
def test_fuzzed_bundles_give_the_same_answer_decoded_lazily_or_in_full(alp, labs, bundle_fields):
    body = load_request("single-low-in")
    body["prefetch"]["alp"] = {**bundle_fields, "resourceType": "Bundle", "entry": alp}
    body["prefetch"]["labs"] = {"resourceType": "Bundle", "entry": labs}
    eager, lazy = both_ways(PV, json.dumps(body).encode())
    assert lazy == eager


@pytest.mark.parametrize("system", ["http://loinc.org", "urn:oid:2.16.840.1.113883.6.1", None])
def test_the_date_filter_keeps_an_old_alp_result_however_its_code_system_is_written(system):
    """The readers take LOINC's OID as LOINC: the cheap filter must not skip what they would read."""
    from datetime import date

    from service.clinical.chart import LabsNeeded
    from service.hooks.patient_chart import lab_filter

    def peek(resource: dict[str, Any]) -> lazy.Peek:
        head = lazy.Head(effectiveDateTime=resource.get("effectiveDateTime"))
        return lazy.Peek(head, msgspec.Raw(json.dumps(resource).encode()))

    keep = lab_filter(LabsNeeded(date(2026, 1, 1), frozenset({date(2025, 6, 1)}), frozenset()))
    old_alp = {"effectiveDateTime": "2016-03-01", "code": {"coding": [{"system": system, "code": "6768-6"}]}}
    old_k = {"effectiveDateTime": "2016-03-01", "code": {"coding": [{"system": system, "code": "2823-3"}]}}
    panel = {"effectiveDateTime": "2016-03-01", "component": [{"code": {"coding": [{"code": "6768-6"}]}}]}
    for resource in (old_alp, panel):
        assert keep(resource) and keep(peek(resource))
    assert not keep(old_k) and not keep(peek(old_k))
    assert keep({"effectiveDateTime": "2025-06-01T10:00:00Z"}) and keep({"effectiveDateTime": "2026-02-01"})
    assert keep({"code": {"coding": [{"code": ["6768-6"]}]}})  # undated: always read
    assert not keep({"effectiveDateTime": "2016-03-01", "code": {"coding": [{"code": ["6768-6"]}, 7]}})


BIG = "9" * 5000


@pytest.mark.parametrize(
    "where",
    ['"note": [{"text": "\xe9"}], "status"', '"code": {"text": "\xc0\xaf"}, "status"', '"x": "\xed\xa0\x80", "status"'],
)
def test_bytes_that_are_not_utf8_anywhere_are_a_400(where):
    raw = json.dumps(load_request("single-low-in")).encode().replace(b'"status"', where.encode("latin-1"), 1)
    response = CLIENT.client.post(f"/cds-services/{PV}", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert "UTF-8" in response.get_json()["issue"][0]["diagnostics"]


def test_a_number_out_of_range_in_a_head_field_is_a_400_not_a_skipped_result():
    raw = json.dumps(load_request("single-low-in")).replace('"code": {', '"component": 1e400, "code": {', 1)
    response = CLIENT.client.post(f"/cds-services/{PV}", data=raw, content_type="application/json")
    assert response.status_code == 400


def test_a_patient_bundle_with_an_undecodable_number_cannot_bypass_the_identity_check():
    body = load_request("persistent-low-in")
    other = {"resourceType": "Patient", "id": "someone-else", "multipleBirthInteger": 0}
    body["prefetch"]["patient"] = {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1", "resource": other}]}
    raw = json.dumps(body).replace('"multipleBirthInteger": 0', f'"multipleBirthInteger": {BIG}')
    response = CLIENT.client.post(f"/cds-services/{PV}", data=raw, content_type="application/json")
    assert response.status_code == 400
    body["prefetch"]["patient"]["entry"][0]["resource"].pop("multipleBirthInteger")
    assert CLIENT.hook(PV, body).status_code == 400  # and without the number: not context.patientId


def test_a_deceased_patient_in_a_bundle_with_an_undecodable_number_gets_no_cards():
    body = load_request("deceased-out")
    patient = body["prefetch"]["patient"]
    patient["extension"] = [{"url": "x", "valueInteger": 0}]
    body["prefetch"]["patient"] = {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:p", "resource": patient}]}
    raw = json.dumps(body).replace('"valueInteger": 0', f'"valueInteger": {BIG}')
    response = CLIENT.client.post(f"/cds-services/{PV}", data=raw, content_type="application/json")
    assert response.status_code == 400  # never cards
    body["prefetch"]["patient"]["entry"][0]["resource"].pop("extension")
    assert CLIENT.hook(PV, body).get_json()["cards"] == []


def test_a_medication_with_an_undecodable_number_is_a_400_not_a_lost_card():
    body = load_request("antiresorptive-current-in")
    statements = body["prefetch"]["medicationStatements"]
    statements["entry"][0]["resource"]["extension"] = [{"url": "x", "valueInteger": 0}]
    raw = json.dumps(body).replace('"valueInteger": 0', f'"valueInteger": {BIG}')
    assert CLIENT.client.post(f"/cds-services/{PV}", data=raw, content_type="application/json").status_code == 400

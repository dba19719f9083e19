"""Lazy decoding of prefetch Bundles (service/fhir/lazy.py): the same answers as decoding everything, less work.

The regression guard for performance is here, and it counts work instead of timing it: a resource the rules do not
read is never decoded into dicts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.run import synthetic_bundle
from service.errors import CdsError
from service.fhir.lazy import DECODED, LazyBundle, decode_hook_request
from service.fhir.prefetch import resolve_prefetch
from service.fixtures import hook_request
from service.hooks import HookCall
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
        data = resolve_prefetch(service.prefetch, body, lambda: None)
        call = HookCall(request=body, data=data, settings=config, now=config["NOW"]())
        issued = service.handler(call)
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


def test_a_chart_of_old_unrelated_labs_decodes_only_the_alp_results():
    """The regression guard: 1000 potassium results from ten years ago, none on an ALP day, and 5 recent ALP
    results. Only the 5 ALP results (and nothing of the 1000) are decoded into dicts."""
    bundle = synthetic_bundle("guard", 0)
    for i in range(5):
        bundle["entry"].append(observation(f"alp{i}", "6768-6", f"2026-0{i + 1}-10T08:00:00Z", 25, "U/L"))
    for i in range(1000):
        bundle["entry"].append(observation(f"k{i}", "2823-3", f"2016-03-{1 + i % 28:02d}T08:00:00Z", 4.1, "mmol/L"))
    raw = json.dumps(hook_request(PV, bundle, "guard")).encode()
    before = DECODED.count
    issued = cards(PV, decode_hook_request(raw))
    assert DECODED.count - before == 5
    assert issued and "persistently low" in json.dumps(issued).lower()


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

    from service.fhir.lazy import Head
    from service.hooks.common import lab_filter

    keep = lab_filter(date(2026, 1, 1), {date(2025, 6, 1)})
    old_alp = {"effectiveDateTime": "2016-03-01", "code": {"coding": [{"system": system, "code": "6768-6"}]}}
    old_k = {"effectiveDateTime": "2016-03-01", "code": {"coding": [{"system": system, "code": "2823-3"}]}}
    panel = {"effectiveDateTime": "2016-03-01", "component": [{"code": {"coding": [{"code": "6768-6"}]}}]}
    for resource in (old_alp, panel):
        assert keep(resource) and keep(Head(**resource))
    assert not keep(old_k) and not keep(Head(**old_k))
    assert keep({"effectiveDateTime": "2025-06-01T10:00:00Z"}) and keep({"effectiveDateTime": "2026-02-01"})
    assert keep({"code": {"coding": [{"code": ["6768-6"]}]}})  # undated: always read
    assert not keep({"effectiveDateTime": "2016-03-01", "code": {"coding": [{"code": ["6768-6"]}, 7]}})

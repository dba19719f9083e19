"""Input of the wrong shape, from the client or from its FHIR server, gets a clear 4xx: never a 500.

Each case here once gave a 500 (review 13): Bundles whose ``link`` or ``entry`` is not a list, URLs that
urllib.parse cannot split, an access token that cannot be sent as a header, JSON nested 1000 levels deep."""

from __future__ import annotations

import json

import pytest

from service.hook_requests import fhir_authorization
from tests.conftest import OS, PV, load_request, make_app
from tests.peer import peer_fixture, send_json, send_redirect

peer = peer_fixture()


def diagnostics(response) -> str:
    return response.get_json()["issue"][0]["diagnostics"]


def searchset(entry=None, next_url: str | None = None, **extra) -> dict:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [] if entry is None else entry, **extra}
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def without_alp(server: str) -> dict:
    """single-low-in with its ALP prefetch missing: the service fetches it from ``server``."""
    body = load_request("single-low-in")
    del body["prefetch"]["alp"]
    body["fhirServer"] = server
    return body


# ------------------------------------------------------------------------------------------- Bundle shapes


@pytest.mark.parametrize("link", [5, True, "next", {"relation": "next", "url": "http://x/fhir/p2"}])
def test_a_prefetch_bundle_whose_link_is_not_a_list_is_a_400(link):
    body = load_request("single-low-in")
    body["prefetch"]["alp"] = searchset(link=link)
    response = make_app().hook(PV, body)
    assert response.status_code == 400, response.get_json()
    assert "prefetch.alp" in diagnostics(response) and "link" in diagnostics(response)


@pytest.mark.parametrize("entry", [7, "abc", {"resource": {}}, True])
def test_a_paginated_prefetch_bundle_whose_entry_is_not_a_list_is_a_400(peer, entry):
    peer.routes["/fhir/page2"] = lambda h: send_json(h, searchset())
    body = load_request("single-low-in")
    body["fhirServer"] = peer.base + "/fhir"
    body["prefetch"]["alp"] = searchset(entry=entry, next_url=peer.base + "/fhir/page2")
    response = make_app().hook(PV, body)
    assert response.status_code == 400, response.get_json()
    assert "prefetch.alp" in diagnostics(response) and "entry" in diagnostics(response)


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        ({"resourceType": "Bundle", "entry": 5}, "entry"),
        ({"resourceType": "Bundle", "entry": "abc"}, "entry"),
        ({"resourceType": "Bundle", "link": 3}, "link"),
        ({"resourceType": "Bundle", "link": True}, "link"),
        ({"resourceType": "Bundle", "link": {"relation": "next"}, "entry": []}, "link"),
    ],
)
@pytest.mark.parametrize("where", ["first page", "second page"])
def test_a_fhir_page_whose_link_or_entry_is_not_a_list_is_a_412(peer, page, reason, where):
    if where == "first page":
        peer.routes["/fhir/Observation"] = lambda h: send_json(h, page)
    else:
        peer.routes["/fhir/Observation"] = lambda h: send_json(h, searchset(next_url=peer.base + "/fhir/p2"))
        peer.routes["/fhir/p2"] = lambda h: send_json(h, page)
    response = make_app().hook(PV, without_alp(peer.base + "/fhir"))
    assert response.status_code == 412, response.get_json()
    assert "not a valid Bundle" in diagnostics(response) and reason in diagnostics(response)


# ------------------------------------------------------------------------------------------- URLs


BAD_URLS = ["http://[oops", "http://[oops/fhir/page2", "http://[::1/fhir/x", "http://127.0.0.1:99999/fhir/x"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_unparsable_next_link_in_the_prefetch_is_a_412(peer, url):
    body = load_request("single-low-in")
    body["fhirServer"] = peer.base + "/fhir"
    body["prefetch"]["alp"] = searchset(next_url=url)
    response = make_app().hook(PV, body)
    assert response.status_code == 412, response.get_json()
    assert "not a valid URL" in diagnostics(response)
    assert peer.hits == []


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_unparsable_next_link_from_the_fhir_server_is_a_412(peer, url):
    peer.routes["/fhir/Observation"] = lambda h: send_json(h, searchset(next_url=url))
    response = make_app().hook(PV, without_alp(peer.base + "/fhir"))
    assert response.status_code == 412, response.get_json()
    assert "not a valid URL" in diagnostics(response)


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_unparsable_redirect_location_is_a_412(peer, url):
    peer.routes["/fhir/Observation"] = lambda h: send_redirect(h, url)
    response = make_app().hook(PV, without_alp(peer.base + "/fhir"))
    assert response.status_code == 412, response.get_json()
    assert "not a valid URL" in diagnostics(response)
    assert peer.hits == ["/fhir/Observation?" + peer.hits[0].split("?", 1)[1]]  # the redirect was not followed


@pytest.mark.parametrize("server", ["http://[::1", "http://[oops/fhir", "http://127.0.0.1:99999/fhir"])
def test_an_unparsable_fhir_server_is_a_400(server):
    response = make_app().hook(PV, without_alp(server))
    assert response.status_code == 400, response.get_json()
    assert "fhirServer" in diagnostics(response)


# ------------------------------------------------------------------------------------------- the access token


@pytest.mark.parametrize("token", ["abc€def", "abcédef", "abc\r\nX-Injected: 1", "a b", "tab\there", "\x00"])
def test_an_access_token_that_cannot_be_sent_as_a_header_is_a_400_and_nothing_is_sent(peer, token):
    peer.routes["/fhir"] = lambda h: send_json(h, searchset())
    body = without_alp(peer.base + "/fhir")
    body["fhirAuthorization"] = fhir_authorization(token)
    response = make_app().hook(PV, body)
    assert response.status_code == 400, response.get_json()
    assert "fhirAuthorization.access_token" in diagnostics(response)
    assert peer.hits == []


def test_an_ordinary_access_token_is_sent(peer):
    peer.routes["/fhir"] = lambda h: send_json(h, searchset())
    body = without_alp(peer.base + "/fhir")
    body["fhirAuthorization"] = fhir_authorization("eyJhbGciOi.J-_~+/9=")
    assert make_app().hook(PV, body).status_code == 200
    assert len(peer.hits) == 1


# ------------------------------------------------------------------------------------------- deep nesting

DEPTH_LIMIT = 100  # api.MAX_JSON_DEPTH


def nested(levels: int) -> str:
    return "[" * (levels - 1) + "{}" + "]" * (levels - 1)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:2]):
            yield from _paths(inner, (*prefix, index))


def _placed(document: dict, path: tuple, sibling: bool, levels: int) -> str:
    """``document`` as JSON text with a structure nested ``levels`` deep (counted from the body's top) at ``path``
    (or beside it), built as text: json.dumps cannot nest that deep."""
    copy = json.loads(json.dumps(document))
    target = copy
    for part in path[:-1]:
        target = target[part]
    if sibling:
        if not isinstance(target, dict):
            return ""
        target["zz"] = "@@NEST@@"
    else:
        target[path[-1]] = "@@NEST@@"
    return json.dumps(copy).replace('"@@NEST@@"', nested(levels - len(path)))


@pytest.mark.parametrize(("service", "fixture"), [(PV, "persistent-low-in"), (OS, "order-low-alp-in")])
def test_json_nested_past_the_limit_is_a_clear_400_wherever_it_is(service, fixture):
    client = make_app()
    document = load_request(fixture)
    for path in [p for p in _paths(document) if p and len(p) <= 6]:
        for sibling in (False, True):
            text = _placed(document, path, sibling, 1000)
            if not text:
                continue
            response = client.client.post(f"/cds-services/{service}", data=text, content_type="application/json")
            assert response.status_code == 400, (path, sibling, response.get_json())
            assert f"nested more than {DEPTH_LIMIT} levels deep" in diagnostics(response)


@pytest.mark.parametrize(("service", "fixture"), [(PV, "persistent-low-in"), (OS, "order-low-alp-in")])
def test_json_nested_up_to_the_limit_never_gives_a_500(service, fixture):
    client = make_app()
    document = load_request(fixture)
    for path in [p for p in _paths(document) if p and len(p) <= 6]:
        for sibling in (False, True):
            text = _placed(document, path, sibling, DEPTH_LIMIT)
            if not text:
                continue
            response = client.client.post(f"/cds-services/{service}", data=text, content_type="application/json")
            assert response.status_code in (200, 400, 412), (path, sibling, response.get_json())


FEEDBACK_ITEM = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}


@pytest.mark.parametrize("levels", [900, 1000])
def test_deeply_nested_feedback_is_a_clear_400(levels):
    client = make_app()
    item = {**FEEDBACK_ITEM, "extra": "@@NEST@@"}
    text = json.dumps({"feedback": [item]}).replace('"@@NEST@@"', nested(levels))
    response = client.client.post(f"/cds-services/{PV}/feedback", data=text, content_type="application/json")
    assert response.status_code == 400, response.get_json()
    assert f"nested more than {DEPTH_LIMIT} levels deep" in diagnostics(response)
    accepted = {**FEEDBACK_ITEM, "outcome": "accepted", "acceptedSuggestions": [{"id": "a", "x": "@@NEST@@"}]}
    text = json.dumps({"feedback": [accepted]}).replace('"@@NEST@@"', nested(levels))
    response = client.client.post(f"/cds-services/{PV}/feedback", data=text, content_type="application/json")
    assert response.status_code == 400, response.get_json()


def test_feedback_nested_up_to_the_limit_is_stored():
    client = make_app()
    item = {**FEEDBACK_ITEM, "extra": "@@NEST@@"}
    text = json.dumps({"feedback": [item]}).replace('"@@NEST@@"', nested(DEPTH_LIMIT - 3))
    response = client.client.post(f"/cds-services/{PV}/feedback", data=text, content_type="application/json")
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("element", ["search", "fullUrl", "response", "request", "unknown"])
@pytest.mark.parametrize("levels", [DEPTH_LIMIT + 1, 150, 900])
def test_the_nesting_limit_holds_in_the_entries_of_prefetch_bundles_outside_their_resources(element, levels):
    """Only a prefetch Bundle's resources are exempt from the 100 levels (docs/integrating.md): an entry's other
    elements are not (issue 27, point 5). 101 to 900 levels deep under the ALP Bundle's first entry is a 400."""
    document = load_request("persistent-low-in")
    text = _placed(document, ("prefetch", "alp", "entry", 0, element), False, levels)
    response = make_app().client.post(f"/cds-services/{PV}", data=text, content_type="application/json")
    assert response.status_code == 400, response.get_json()
    assert f"nested more than {DEPTH_LIMIT} levels deep" in diagnostics(response)


def test_an_entry_nested_within_the_limit_outside_its_resource_is_read():
    document = load_request("persistent-low-in")
    text = _placed(document, ("prefetch", "alp", "entry", 0, "search"), False, DEPTH_LIMIT)
    response = make_app().client.post(f"/cds-services/{PV}", data=text, content_type="application/json")
    assert response.status_code == 200 and response.get_json()["cards"]

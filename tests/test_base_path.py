"""The FHIR access token stays under the FHIR base path (issue 27, point 2), on every route that fetches.

Tomcat and Jetty (HAPI FHIR's servlet containers) cut path parameters off each segment before they resolve dot
segments, so ``/fhir/Medication/..;/..;/admin`` is served as ``/admin``; percent-encoding, decoded once more by a
proxy, or look-alike dots do the same. A real server on loopback records every request line it receives: none of the
addresses below may reach it, whether it comes as a redirect, a next link of the server's, a next link in the
client's prefetch, a ``medicationReference`` in the prefetch or one in a draft order.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from service.fhir.client import FhirClient, FhirError, outside_base
from service.hook_requests import fhir_authorization
from tests.conftest import OS, PV, load_request, make_app

# Each reaches /admin (or /fhir-admin) on a servlet container, from under /fhir/.
ESCAPES = [
    "..;/admin",
    "Medication/..;/..;/admin",
    "..;jsessionid=0/admin",
    ".;/..;/admin",
    "%2e%2e;/admin",
    "..%3b/admin",
    "%252e%252e/admin",
    "%25252e%25252e/admin",
    "%EF%BC%8E%EF%BC%8E/admin",
    "..%00/admin",
    "Medication/%2e%2e/%2E%2E/admin",
    "..%2fadmin",
    "..%5cadmin",
    "%252e%252e%252fadmin",
    "%C0%AE%C0%AE/admin",
    "%u002e%u002e/admin",
]


class Recorder(BaseHTTPRequestHandler):
    """A FHIR server that answers the ALP search with whatever the test asks (a redirect or a next link to
    ``server.escape``), every other search with an empty Bundle, and records every path it is asked for."""

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        server = self.server
        server.paths.append(self.path)
        path = urlsplit(self.path).path
        base = f"http://127.0.0.1:{server.server_port}/fhir/"
        empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        if path.startswith("/fhir/Patient/"):
            self._json(200, {"resourceType": "Patient", "id": path.rsplit("/", 1)[1], "gender": "female"})
        elif path == "/fhir/Observation" and "6768-6" in self.path and server.mode == "redirect":
            self._json(302, {}, {"Location": base + server.escape})
        elif path == "/fhir/Observation" and "6768-6" in self.path and server.mode == "next":
            self._json(200, {**empty, "link": [{"relation": "next", "url": base + server.escape}]})
        else:
            self._json(200, empty)


@pytest.fixture(scope="module")
def fhir():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.paths, server.mode, server.escape = [], None, ""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def recorder(fhir):
    fhir.paths.clear()
    fhir.mode = None
    return fhir


def base_of(server) -> str:
    return f"http://127.0.0.1:{server.server_port}/fhir"


def escaped(server) -> list[str]:
    """The paths the server received that are not under /fhir/ once read as a servlet container reads them."""
    return [p for p in server.paths if "admin" in p]


def with_server(body: dict, server, keep: tuple[str, ...] | None = None) -> dict:
    body["fhirServer"] = base_of(server)
    body["fhirAuthorization"] = fhir_authorization("secret-token")
    if keep is not None:
        body["prefetch"] = {k: v for k, v in body["prefetch"].items() if k in keep}
    return body


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_redirect_out_of_the_base_is_not_followed(recorder, escape):
    recorder.mode, recorder.escape = "redirect", escape
    body = with_server(load_request("single-low-in"), recorder, keep=("patient",))
    response = make_app().hook(PV, body)
    assert escaped(recorder) == []
    assert response.status_code == 412
    assert "outside the FHIR base URL" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_next_link_of_the_server_out_of_the_base_is_not_followed(recorder, escape):
    recorder.mode, recorder.escape = "next", escape
    body = with_server(load_request("single-low-in"), recorder, keep=("patient",))
    response = make_app().hook(PV, body)
    assert escaped(recorder) == []
    assert response.status_code == 412
    assert "outside the FHIR base URL" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_next_link_in_the_prefetch_out_of_the_base_is_not_followed(recorder, escape):
    body = with_server(load_request("single-low-in"), recorder)
    body["prefetch"]["alp"]["link"] = [{"relation": "next", "url": f"{base_of(recorder)}/{escape}"}]
    response = make_app().hook(PV, body)
    assert recorder.paths == []  # nothing else was to be fetched, and the next link was refused before sending
    assert response.status_code == 200  # the first page is read; the rest is named as not read


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_medication_reference_in_the_prefetch_out_of_the_base_is_not_read(recorder, escape):
    body = with_server(load_request("persistent-low-in"), recorder)
    patient = body["context"]["patientId"]
    body["prefetch"]["medicationRequests"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "mr1",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient}"},
                    "medicationReference": {"reference": f"Medication/{escape}"},
                }
            }
        ],
    }
    response = make_app().hook(PV, body)
    assert recorder.paths == []
    assert response.status_code == 200  # the record's drug is named as not read


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_medication_reference_of_a_draft_order_out_of_the_base_is_not_read(recorder, escape):
    body = with_server(load_request("order-low-alp-in"), recorder)
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    del draft["medicationCodeableConcept"]
    draft["medicationReference"] = {"reference": f"Medication/{escape}"}
    response = make_app().hook(OS, body)
    assert recorder.paths == []
    assert response.status_code == 412
    assert "could not be read" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("control", ["\r\nX-Injected: 1", "\t", "\x00", "\x7f"])
def test_an_address_with_a_control_character_is_never_requested(recorder, control):
    """``urlsplit`` drops tabs and line breaks before the path is checked, requests would send them encoded: an
    address holding a control character is not a URL the service follows."""
    with pytest.raises(FhirError, match="not a valid URL"):
        FhirClient(base_of(recorder), "secret-token").get(f"Observation{control}/..;/admin")
    assert recorder.paths == []


@pytest.mark.parametrize(
    "address", ["Patient/.", "Patient/..", "Medication/./m1", "Medication/../Patient/p1", "./Observation", "../fhir/x"]
)
def test_an_address_with_a_dot_segment_is_judged_as_written(recorder, address):
    """Made absolute, ``Patient/..`` is the base itself and ``Medication/../Patient/p1`` lies under it: the dot
    segments were gone before the path was checked, and ``GET /fhir/`` was sent with the token (outside attack 27,
    F6: a patientId of ``.`` or ``..``)."""
    with pytest.raises(FhirError, match="outside the FHIR base URL"):
        FhirClient(base_of(recorder), "secret-token").get(address)
    assert recorder.paths == []


@pytest.mark.parametrize("patient", [".", ".."])
def test_a_patient_id_of_dots_is_never_read(recorder, patient):
    """Refused as ``...`` is: a 412 naming the patient key; only the ALP search went out (``patient=..`` is a value
    of its query, not a path), and nothing optional after the 412."""
    body = with_server(load_request("single-low-in"), recorder, keep=())
    body["context"]["patientId"] = patient
    response = make_app().hook(PV, body)
    assert response.status_code == 412
    said = response.get_json()["issue"][0]["diagnostics"]
    assert "outside the FHIR base URL" in said and said.endswith("(prefetch key patient)")
    assert [p for p in recorder.paths if not p.startswith("/fhir/Observation?")] == [], recorder.paths


def test_a_fhir_server_with_an_upper_case_scheme_is_read(recorder):
    """Schemes are case-insensitive: ``HTTP://`` was a 400 "does not match '^https?://'" (outside attack 27, F6). It
    is read as ``http://``, so the allow-list (which names it in lower case) still decides."""
    body = with_server(load_request("single-low-in"), recorder, keep=("patient",))
    body["fhirServer"] = body["fhirServer"].replace("http://", "HTTP://")
    allowed = make_app(FHIR_SERVERS=[base_of(recorder)]).hook(PV, body)
    assert allowed.status_code == 200, allowed.get_json()
    assert [p.split("?")[0] for p in recorder.paths if "6768-6" in p] == ["/fhir/Observation"]
    recorder.paths.clear()
    other = make_app(FHIR_SERVERS=[base_of(recorder).replace("/fhir", "/other")]).hook(PV, body)
    assert other.status_code == 403 and recorder.paths == []


def test_addresses_under_the_base_are_still_read(recorder):
    """What a FHIR server's own links look like stays allowed: ids with dots, history, HAPI's paging query."""
    client = FhirClient(base_of(recorder), "secret-token")
    for address in ("Medication/a.b-1", "Patient/p/_history/2", "?_getpages=abc&_getpagesoffset=20", "Observation"):
        client.get(address)
    assert len(recorder.paths) == 4


@pytest.mark.parametrize("escape", ESCAPES)
def test_the_check_itself(escape):
    from service.fhir.client import steps_out

    base = "https://ehr.example.org/fhir/"
    assert steps_out(urlsplit(base + escape).path)
    assert outside_base(base, base + escape) == "a path outside the FHIR base URL"
    with pytest.raises(FhirError, match="outside the FHIR base URL"):
        FhirClient(base, "secret").get(escape)

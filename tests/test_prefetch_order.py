"""Issue 30: the required prefetch keys are fetched first, the optional ones after them, and the related-labs search
asks the FHIR server only for the dates the rules read.

A FHIR server that answers one request at a time (sekmet-fhir does; many EHR endpoints queue or rate-limit a
client's requests) made the quick Patient read and ALP search queue behind a slow labs search when all were sent
at once: a 412 where docs/integrating.md promises "not checked"."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import responses

from service import loader
from service.fhir.client import CallBudget, FhirClient
from service.hook_requests import NOW, bundle_resources, hook_request, search, without_uuids
from service.hooks import low_alp_workup
from service.hooks.run import run_hook
from service.settings import load_settings
from tests.conftest import FHIR_TOKEN, OS, PV, load_bundle, load_request, make_app

LABS_LINE = "- **Other lab results**: tests already done"
BUDGET = 3.0  # seconds: CDS_FHIR_TIME_BUDGET in these tests
QUIET = 0.3  # seconds the queueing server waits for further requests before it picks the next one


def is_required(query: str) -> bool:
    """The Patient read or the ALP search (its LOINC code), as the services' templates write them."""
    return query.startswith("Patient/") or "6768-6" in query


def is_labs(query: str) -> bool:
    """The related-labs search (not the ALP one, nor the pregnancy records' search, which ask for other codes)."""
    return query.startswith("Observation?") and not is_required(query) and "82810-3" not in query


class OneAtATime:
    """A FHIR server that answers one request at a time from a queue. Before it takes the next request it waits
    until none has arrived for QUIET seconds (so that requests sent together are all waiting), and of those waiting
    it takes the labs search first: the worst order a queueing server may choose, and one it may well choose (the
    order of a queue is not the client's to set). It holds the labs search for longer than the whole budget."""

    def __init__(self, resources: list[dict]) -> None:
        self.resources = resources
        self.cond = threading.Condition()
        self.waiting: list[tuple[object, str]] = []
        self.busy = False
        self.closed = False
        self.last = time.monotonic()
        self.taken: list[str] = []  # the queries, in the order the server took them up
        queue = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = self.path.removeprefix("/fhir/")
                with queue.turn(query):
                    if is_labs(query):
                        queue.hold(BUDGET + 1)
                    body = json.dumps(search(queue.resources, query)).encode()
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/fhir+json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    except OSError:  # the service gave up on it
                        pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_port}/fhir"

    def _next(self) -> object:
        labs = [ticket for ticket, query in self.waiting if is_labs(query)]
        return (labs or [self.waiting[0][0]])[0]

    @contextmanager
    def turn(self, query: str):
        ticket = object()
        with self.cond:
            self.waiting.append((ticket, query))
            self.last = time.monotonic()
            self.cond.notify_all()
            while not self.closed and (self.busy or time.monotonic() - self.last < QUIET or self._next() is not ticket):
                self.cond.wait(0.02)
            self.waiting = [w for w in self.waiting if w[0] is not ticket]
            self.busy = True
            self.taken.append(query)
        try:
            yield
        finally:
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def hold(self, seconds: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.closed, timeout=seconds)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(("service", "scenario"), [(PV, "persistent-low-in"), (OS, "order-low-alp-in")])
def test_a_server_answering_one_request_at_a_time_and_a_labs_search_slower_than_the_budget(service, scenario):
    """200, the low-ALP card and the labs named as not checked, every time (three calls, a new server each); before
    issue 30, every call was a 412: "the FHIR server did not answer in time (prefetch key patient)"."""
    client = make_app(FHIR_TIME_BUDGET=BUDGET)
    with_prefetch = load_request(scenario)
    expected = client.cards(service, with_prefetch)
    assert expected and LABS_LINE not in expected[0]["detail"]
    for _ in range(3):
        server = OneAtATime(bundle_resources(load_bundle(scenario)))
        try:
            body = copy.deepcopy(with_prefetch)
            del body["prefetch"]
            body["fhirServer"] = server.base
            response = client.hook(service, body)
            assert response.status_code == 200, response.get_json()
            cards = response.get_json()["cards"]
            # The same cards about the same ALP (the medications, and at order-select the diagnoses, queued behind
            # the labs and were not read either: the summaries say so where it changes the advice).
            assert len(cards) == len(expected) and [c["indicator"] for c in cards] == [c["indicator"] for c in expected]
            assert expected[0]["summary"].split(": ", 1)[1] in cards[0]["summary"]
            assert LABS_LINE in cards[0]["detail"]
            required = [q for q in server.taken if is_required(q)]
            assert len(required) == 2 and server.taken[:2] == required, server.taken  # asked for, and had, first
        finally:
            server.close()


PERSON = {"resourceType": "Patient", "id": "persistent-low-in", "gender": "female", "birthDate": "1980-01-01"}


@pytest.mark.parametrize(
    ("status", "patient", "said"),
    [
        (404, {"resourceType": "OperationOutcome"}, "(prefetch key patient)"),
        # Answered 200, yet not the patient of the call (outside attack 27, F4: the optional searches were still sent,
        # with the token, and the 412 came only after them)
        (200, {**PERSON, "id": "someone-else"}, "not context.patientId"),
        (200, {"resourceType": "Bundle", "type": "searchset", "entry": []}, "holds no Patient"),
        (200, {**PERSON, "deceasedBoolean": "true"}, "whether the patient has died is unknown"),
    ],
)
def test_the_optional_keys_are_not_asked_for_when_a_required_key_cannot_be_had(status, patient, said):
    """The optional searches start once the required keys are had: a call that is a 412 anyway costs the server
    nothing more."""
    body = load_request("persistent-low-in")
    del body["prefetch"]
    body["fhirServer"] = "https://ehr.example.org/fhir"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, re.compile(r".*/Patient/.*"), status=status, json=patient)
        rsps.add(responses.GET, re.compile(r".*/Observation\?.*"), json={"resourceType": "Bundle", "type": "searchset"})
        response = make_app().hook(PV, body)
        queries = [c.request.url for c in rsps.calls]
    assert response.status_code == 412 and said in response.get_json()["issue"][0]["diagnostics"], response.get_json()
    assert len(queries) == 2 and all("6768-6" in q or "/Patient/" in q for q in queries), queries  # nothing optional


def test_the_optional_share_is_a_setting():
    """CDS_FHIR_OPTIONAL_SHARE is the part of the call's budget the optional keys are fetched within."""
    shares: list[float] = []

    class Recording(FhirClient):
        def sharing(self, fraction: float) -> FhirClient:
            shares.append(fraction)
            return super().sharing(fraction)

    base = "https://ehr.example.org/fhir"
    resources = bundle_resources(load_bundle("persistent-low-in"))
    for configured, expected in (({}, 0.75), ({"FHIR_OPTIONAL_SHARE": "0.5"}, 0.5)):
        settings = load_settings({"NOW": lambda: NOW, "AUTH": "off", **configured}, environ={})
        body = hook_request(PV, load_bundle("persistent-low-in"), "persistent-low-in", with_prefetch=False)
        body["fhirServer"] = base
        budget = CallBudget(settings.FHIR_TIME_BUDGET, settings.FHIR_MAX_CALL_BYTES)
        with responses.RequestsMock() as rsps:
            rsps.add_callback(
                responses.GET,
                re.compile(base + "/.*"),
                callback=lambda r: (200, {}, json.dumps(search(resources, r.url.split("/fhir/", 1)[1]))),
            )
            run_hook(low_alp_workup.SERVICE, body, settings, lambda budget=budget: Recording(base, budget=budget))
        assert shares.pop() == expected and not shares
        assert budget._shares[0].deadline == pytest.approx(budget.started + settings.FHIR_TIME_BUDGET * expected)


SIGN = "antiresorptive-low-alp-sign"
PROLIA = {
    "resourceType": "Medication",
    "id": "prolia",
    "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "M05BX04", "display": "denosumab"}]},
}


@pytest.mark.parametrize("service", [OS, SIGN])
def test_the_draft_orders_medication_is_read_with_the_required_keys(service):
    """A draft whose drug is a ``Medication/<id>`` the request does not hold cannot be checked without it: it is
    read with the Patient and the ALP results, before the optional searches. Outside attack 27, F1: read after them,
    it queued behind the labs search on a server that answers one request at a time, and the call was a 412 "the
    Medication of the draft order could not be read" at the end of the budget."""
    client = make_app(FHIR_TIME_BUDGET=BUDGET)
    body = load_request("order-low-alp-in")
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    del draft["medicationCodeableConcept"]
    draft["medicationReference"] = {"reference": "Medication/prolia"}
    if service == SIGN:
        body["hook"] = "order-sign"
        del body["context"]["selections"]
    del body["prefetch"]
    server = OneAtATime([*bundle_resources(load_bundle("order-low-alp-in")), PROLIA])
    try:
        body["fhirServer"] = server.base
        response = client.hook(service, body)
        assert response.status_code == 200, response.get_json()
        cards = response.get_json()["cards"]
        assert [c["indicator"] for c in cards] == ["warning"] and "denosumab" in cards[0]["summary"], cards
        assert LABS_LINE in cards[0]["detail"]
        first = server.taken[:3]
        assert "Medication/prolia" in first and len([q for q in first if is_required(q)]) == 2, server.taken
    finally:
        server.close()


def test_a_draft_order_that_cannot_be_checked_is_a_400_before_anything_is_fetched():
    """The drafts are read first (to know which Medication to read): a wrong one costs the server nothing."""
    body = load_request("order-low-alp-in")
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = "denosumab"
    del body["prefetch"]
    body["fhirServer"] = "https://ehr.example.org/fhir"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, re.compile(r".*"), json={"resourceType": "Bundle", "type": "searchset"})
        response = make_app().hook(OS, body)
        assert response.status_code == 400 and "cannot be checked" in response.get_json()["issue"][0]["diagnostics"]
        assert len(rsps.calls) == 0


# ------------------------------------------------------------------------- the labs search, bounded by date


def _observation(ident: str, code: str, days_ago: int, value: float, unit: str, low=None, high=None) -> dict:
    when = (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT08:00:00Z")
    resource = {
        "resourceType": "Observation",
        "id": f"window-{ident}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/window-in"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    if low is not None or high is not None:
        limits = {"low": {"value": low, "unit": unit}} if low is not None else {}
        resource["referenceRange"] = [{**limits, **({"high": {"value": high, "unit": unit}} if high else {})}]
    return resource


# A man with a run of low ALPs since a normal one 400 days ago. The first low of the run (250 days ago) was drawn
# with a high potassium and a low calcium: possibly EDTA contamination, so it is not counted, which only the labs
# of that old day can show. A TSH 20 days ago is recent; a zinc 3 years ago and a potassium 600 days ago are not read
# by any rule.
WINDOW_CHART = [
    {"resourceType": "Patient", "id": "window-in", "gender": "male", "birthDate": "1972-08-08"},
    _observation("alp-400", "6768-6", 400, 60, "U/L", low=40, high=130),
    _observation("alp-250", "6768-6", 250, 28, "U/L", low=40, high=130),
    _observation("k-250", "2823-3", 250, 7.4, "mmol/L", low=3.5, high=5.1),
    _observation("ca-250", "17861-6", 250, 6.1, "mg/dL", low=8.6, high=10.3),
    _observation("alp-120", "6768-6", 120, 27, "U/L", low=40, high=130),
    _observation("tsh-20", "3016-3", 20, 2.1, "m[IU]/L", low=0.4, high=4.0),
    _observation("alp-10", "6768-6", 10, 26, "U/L", low=40, high=130),
    _observation("zinc-1100", "5763-8", 1100, 80, "ug/dL", low=60, high=120),
    _observation("k-600", "2823-3", 600, 4.2, "mmol/L", low=3.5, high=5.1),
]
CHART_BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in WINDOW_CHART]}


def test_the_labs_search_asks_for_the_dates_the_rules_read():
    """From the earliest of the recent window (CDS_RECENT_RESULT_DAYS + 1) and the days around the current run's
    lows, a day earlier still for time zones; computed from the ALP results, which are therefore fetched first."""
    settings = load_settings({"NOW": lambda: NOW, "AUTH": "off"}, environ={})
    resources = WINDOW_CHART
    body = hook_request(PV, CHART_BUNDLE, "window-in", with_prefetch=False, fhir_server="https://ehr.example.org/fhir")
    with responses.RequestsMock() as rsps:
        rsps.add_callback(
            responses.GET,
            re.compile(r"https://ehr\.example\.org/fhir/.*"),
            callback=lambda r: (200, {}, json.dumps(search(resources, r.url.split("/fhir/", 1)[1]))),
        )
        run_hook(low_alp_workup.SERVICE, body, settings, lambda: FhirClient("https://ehr.example.org/fhir"))
        labs = [c.request.url for c in rsps.calls if is_labs(c.request.url.split("/fhir/", 1)[1])]
    earliest = (NOW - timedelta(days=250 + 1 + 1)).date().isoformat()
    assert len(labs) == 1 and labs[0].endswith(f"&date=ge{earliest}"), labs

    normal = [r for r in resources if r["id"] not in ("window-alp-250", "window-alp-120", "window-alp-10")]
    with responses.RequestsMock() as rsps:  # no current low: the recent window only
        rsps.add_callback(
            responses.GET,
            re.compile(r"https://ehr\.example\.org/fhir/.*"),
            callback=lambda r: (200, {}, json.dumps(search(normal, r.url.split("/fhir/", 1)[1]))),
        )
        run_hook(low_alp_workup.SERVICE, body, settings, lambda: FhirClient("https://ehr.example.org/fhir"))
        labs = [c.request.url for c in rsps.calls if is_labs(c.request.url.split("/fhir/", 1)[1])]
    since = (NOW - timedelta(days=settings.RECENT_RESULT_DAYS + 1 + 1)).date().isoformat()
    assert labs[0].endswith(f"&date=ge{since}"), labs


@pytest.fixture(scope="module")
def window_server(fhir_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("window")
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in WINDOW_CHART
        ],
    }
    (folder / "window-in.json").write_text(json.dumps(transaction))
    loader.load_fixtures(fhir_base, FHIR_TOKEN, str(folder))
    return fhir_base


def test_a_real_server_sends_only_the_labs_of_those_dates_and_the_cards_are_those_of_the_whole_chart(window_server):
    settings = load_settings({"NOW": lambda: NOW, "AUTH": "off"}, environ={})
    whole = run_hook(low_alp_workup.SERVICE, hook_request(PV, CHART_BUNDLE, "window-in"), settings)
    body = hook_request(PV, CHART_BUNDLE, "window-in", with_prefetch=False, fhir_server=window_server)
    fetched = run_hook(low_alp_workup.SERVICE, body, settings, lambda: FhirClient(window_server, FHIR_TOKEN))
    assert not fetched.call.unavailable and not fetched.call.incomplete
    labs = {e["resource"]["id"] for e in fetched.call.data["labs"]["entry"]}
    assert labs == {"window-k-250", "window-ca-250", "window-tsh-20"}  # not the zinc or the potassium of long ago
    kinds = [kind for kind, _ in fetched.cards]
    assert kinds == [kind for kind, _ in whole.cards] and "alp-low-persistent" in kinds
    assert "not counted: possible EDTA contamination" in fetched.cards[kinds.index("alp-low-persistent")][1]["detail"]
    assert without_uuids([c for _, c in fetched.cards]) == without_uuids([c for _, c in whole.cards])


def test_the_smart_page_still_reads_the_related_labs_of_every_date(window_server):
    """The companion app tabulates the latest workup labs whatever their date: its search is not narrowed."""
    from service.smart.views import chart_page

    settings = load_settings({"NOW": lambda: NOW, "AUTH": "off"}, environ={})
    page = chart_page(window_server, FHIR_TOKEN, "window-in", settings)
    zinc_day = (NOW - timedelta(days=1100)).date().isoformat()
    assert [row.date for row in page["series"].workup if row.display.startswith("Zinc")] == [zinc_day]

"""Feedback (validated, durable across restarts, reported per card kind; SQLite and PostgreSQL) and operations."""

from __future__ import annotations

import json
import multiprocessing
import uuid

import pytest
from sqlalchemy import create_engine, text

from service.app import create_app
from service.feedback import FeedbackStore
from service.hook_requests import NOW
from tests.conftest import PV, CheckedClient, load_request, postgres_url


def app_on(url: str) -> CheckedClient:
    return CheckedClient(
        create_app({"NOW": lambda: NOW, "AUTH": "off", "LOG_LEVEL": "WARNING", "FEEDBACK_DB_URL": url})
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/feedback.db"
    url = postgres_url()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:  # a clean slate for each test
        connection.execute(text("DROP TABLE IF EXISTS feedback, issued_cards, alembic_version"))
    engine.dispose()
    return url


def post_feedback(client: CheckedClient, body, service=PV):
    return client.client.post(f"/cds-services/{service}/feedback", json=body)


def test_feedback_is_stored_reported_and_survives_a_restart(store_url):
    first = app_on(store_url)
    cards = first.cards(PV, load_request("persistent-low-in"))
    card = cards[0]
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "outcomeTimestamp": "2026-06-01T10:05:31Z",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
    }
    overridden = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-06-01T10:06:00Z",
        "overrideReason": {"reason": card["overrideReasons"][1], "userComment": "Coeliac disease known"},
    }
    response = post_feedback(first, {"feedback": [accepted, overridden]})
    assert response.status_code == 200 and response.get_json() == {"stored": 2}
    first.app.extensions["cds_feedback"].flush()  # the audit rows are written off the hook call's path
    del first  # "restart": a new app, a new engine, the same database

    second = app_on(store_url)
    store: FeedbackStore = second.app.extensions["cds_feedback"]
    rows = store.feedback_rows()
    assert [(r["card_uuid"], r["outcome"]) for r in rows] == [(card["uuid"], "accepted"), (card["uuid"], "overridden")]
    assert rows[1]["override_code"] == "known-cause" and rows[1]["user_comment"] == "Coeliac disease known"
    report = store.report()
    assert report["alp-low-persistent"] == {
        "issued": 1,
        "cards_with_feedback": 1,
        "last_outcome": {"overridden": 1},  # accepted, then overridden: one card, its last outcome
        "override_reasons": {"Another known cause explains the low ALP": 1},
        "events": {"accepted": 1, "overridden": 1},
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}, "'card' is a required property"),
        ({"card": "c", "outcome": "liked", "outcomeTimestamp": "2026-06-01T10:00:00Z"}, "outcome"),
        ({"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-06-01T10:00:00Z"}, "acceptedSuggestions"),
        ({"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}, "date-time"),
        ({"card": "c", "outcome": "overridden"}, "outcomeTimestamp"),
    ],
)
def test_bad_feedback_is_400_and_nothing_is_stored(tmp_path, item, message):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    response = post_feedback(client, {"feedback": [item]})
    assert response.status_code == 400
    assert message in response.get_json()["issue"][0]["diagnostics"]
    assert client.app.extensions["cds_feedback"].feedback_rows() == []


GOOD = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**GOOD, "outcomeTimestamp": "2026-06-01T10:00:00." + "1" * 60 + "Z"}, "outcomeTimestamp"),
        ({**GOOD, "outcomeTimestamp": "9999-12-31T23:59:59-01:00"}, "outcomeTimestamp"),  # after year 9999 in UTC
        ({**GOOD, "card": "c\x00"}, "feedback[1].card: contains a NUL character"),
        ({**GOOD, "overrideReason": {"userComment": "no\x00"}}, "overrideReason.userComment: contains a NUL"),
        ({**GOOD, "overrideReason": {"reason": {"code": "x\x00y"}}}, "overrideReason.reason.code: contains a NUL"),
    ],
)
def test_feedback_no_store_can_hold_is_400_on_both_stores_and_nothing_is_stored(store_url, item, message):
    """A permanent problem must not be a 503 ("retry"): the client would retry the batch for ever."""
    client = app_on(store_url)
    response = post_feedback(client, {"feedback": [GOOD, item]})
    assert response.status_code == 400, response.get_json()
    assert message in response.get_json()["issue"][0]["diagnostics"]
    store = client.app.extensions["cds_feedback"]
    assert store.feedback_rows() == []  # the batch is refused whole
    assert post_feedback(client, {"feedback": [GOOD]}).status_code == 200  # and the store is fine
    assert len(store.feedback_rows()) == 1


def test_feedback_with_a_lone_surrogate_is_stored_with_the_replacement_character(store_url):
    """A comment cut in the middle of an emoji ("\ud83d" alone: valid JSON, as JSON.stringify writes it) was a 400
    "unexpected end of hex escape", and the clinician's feedback was lost."""
    client = app_on(store_url)
    item = {**GOOD, "overrideReason": {"userComment": "known cause \ud83d"}}
    text = json.dumps({"feedback": [item]})
    response = client.client.post(f"/cds-services/{PV}/feedback", data=text, content_type="application/json")
    assert response.status_code == 200, response.get_json()
    assert client.app.extensions["cds_feedback"].feedback_rows()[0]["user_comment"] == "known cause \ufffd"


def test_store_refusing_data_is_400_not_503(tmp_path, monkeypatch):
    """Whatever else a store refuses as data (not an outage) is permanent too."""
    from sqlalchemy.exc import DataError

    client = app_on(f"sqlite:///{tmp_path}/f.db")
    store = client.app.extensions["cds_feedback"]

    def refuse(*args, **kwargs):
        raise DataError("INSERT ...", {}, ValueError("value too long"))

    monkeypatch.setattr(store, "add_feedback", refuse)
    response = post_feedback(client, {"feedback": [GOOD]})
    assert response.status_code == 400
    assert "nothing was stored" in response.get_json()["issue"][0]["diagnostics"]


def test_feedback_for_unknown_service_is_404_and_empty_list_is_400(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    assert post_feedback(client, {"feedback": [item]}, service="nope").status_code == 404
    assert post_feedback(client, {"feedback": []}).status_code == 400
    assert (
        client.client.post(f"/cds-services/{PV}/feedback", data="{", content_type="application/json").status_code == 400
    )


def test_feedback_for_a_card_not_on_record_is_kept(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    assert post_feedback(client, {"feedback": [item]}).status_code == 200
    assert client.app.extensions["cds_feedback"].report()["unknown card"]["last_outcome"] == {"overridden": 1}


def test_store_down_gives_503_for_feedback_but_hooks_still_answer():
    client = app_on("postgresql+psycopg://nobody:x@127.0.0.1:9/none?connect_timeout=1")
    assert client.hook(PV, load_request("single-low-in")).status_code == 200
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    response = post_feedback(client, {"feedback": [item]})
    assert response.status_code == 503
    assert "nothing was stored" in response.get_json()["issue"][0]["diagnostics"]
    ready = client.client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["status"] == "unavailable"


def test_a_feedback_store_outage_leaves_the_pods_ready_for_hook_calls():
    """The readiness probe of the manifests asks for what hook calls need: with PostgreSQL unreachable it stays 200
    (Kubernetes keeps every pod in the Service), hook calls answer, feedback gets its 503 "retry", and the store's
    state is in the probe's body and in /readyz for monitoring."""
    from tests.test_deploy_scale import base_resources

    deployment = next(r for r in base_resources() if r["kind"] == "Deployment")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    client = app_on("postgresql+psycopg://nobody:x@127.0.0.1:9/none?connect_timeout=1")
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}
    assert post_feedback(client, {"feedback": [item]}).status_code == 503
    ready = client.client.get(probe)
    assert ready.status_code == 200 and ready.get_json() == {"status": "ready", "feedback_store": "OperationalError"}
    assert client.hook(PV, load_request("single-low-in")).status_code == 200
    assert client.client.get("/readyz").status_code == 503


def test_health_and_readiness(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    assert client.client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["feedback_store"] == "ok"
    assert client.client.get("/readyz/hooks").get_json() == {"status": "ready", "feedback_store": "ok"}


def test_metrics_count_requests_cards_and_fhir_fetches(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    client.hook(PV, load_request("wilson-critical-in"))
    client.hook("nope", load_request("wilson-critical-in"))
    answer = client.client.get("/metrics")
    assert answer.headers["Content-Type"].count("charset") == 1  # Prometheus's type names its charset itself
    text_body = answer.get_data(as_text=True)
    assert (
        'cds_requests_total{endpoint="/cds-services/<service_id>",service="low-alp-workup",status="200"}' in text_body
    )
    assert (
        'cds_request_seconds_bucket{endpoint="/cds-services/<service_id>",le="0.5",service="low-alp-workup"'
        ',status="200"}' in text_body
    )
    # an unknown id is not a label value (callers cannot grow the metric without bound)
    assert 'cds_requests_total{endpoint="/cds-services/<service_id>",service="",status="404"}' in text_body
    assert 'service="nope"' not in text_body
    assert 'cds_cards_total{indicator="critical",kind="wilson-alf-pattern"}' in text_body
    assert "cds_fhir_fetches_total" in text_body and "cds_fhir_fetch_seconds_bucket" in text_body


def test_one_structured_log_line_per_request_without_patient_data(tmp_path, caplog):
    import json
    import logging

    caplog.set_level(logging.INFO, logger="service.access")
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    body = load_request("wilson-critical-in")
    client.hook(PV, body)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 1
    assert lines[0]["hookInstance"] == body["hookInstance"] and lines[0]["status"] == 200 and lines[0]["cards"] == 1
    assert "wilson-critical-in" not in caplog.text and "2004-05-05" not in caplog.text


def test_a_log_line_stays_one_json_object_whatever_its_values_hold(caplog):
    """log_event encodes every field: a quote or a newline in a value (an error's text) cannot break the line."""
    import json
    import logging

    from service.logs import log_event

    log = logging.getLogger("service.test")
    with caplog.at_level(logging.INFO, logger="service.test"):
        log_event(log, logging.INFO, "x", error='a "quoted"\nline', count=2, skipped=None)
        log_event(log, logging.DEBUG, "not_logged")
    assert [json.loads(r.getMessage()) for r in caplog.records] == [
        {"event": "x", "error": 'a "quoted"\nline', "count": 2}
    ]


def test_a_fhir_client_closes_its_session_when_its_block_ends(monkeypatch):
    from service.fhir.client import FhirClient

    closed = []
    client = FhirClient("https://fhir.example.org/r4")
    monkeypatch.setattr(client.session, "close", lambda: closed.append(True))
    with pytest.raises(RuntimeError), client:
        raise RuntimeError("whatever happened inside")
    assert closed == [True]


def test_unwritable_sqlite_location_does_not_stop_the_service(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    client = app_on(f"sqlite:///{blocker}/sub/feedback.db")
    assert client.hook(PV, load_request("single-low-in")).status_code == 200
    assert client.client.get("/readyz").status_code == 503


def _open_at_once(urls: list[str], barrier, results) -> None:
    """One worker process: opens each (fresh) store at the same moment as the others and stores one feedback item."""
    import logging

    from sqlalchemy import func, select, text

    from service.feedback import FeedbackStore, feedback

    problems: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            problems.append(record.getMessage())

    logging.getLogger("service").addHandler(Keep())
    rows = []
    for url in urls:
        barrier.wait(timeout=60)
        store = FeedbackStore(url)
        try:
            store.add_feedback(PV, [GOOD])
        except Exception as exc:
            problems.append(f"add_feedback: {type(exc).__name__}")
        if barrier.wait(timeout=60) == 0:  # one of them counts, and empties PostgreSQL for the next round
            with store.engine.begin() as connection:
                rows.append(connection.execute(select(func.count()).select_from(feedback)).scalar_one())
                if url.startswith("postgresql"):
                    connection.execute(text("DROP TABLE feedback, issued_cards, alembic_version"))
        store.engine.dispose()
        barrier.wait(timeout=60)
    results.put((problems, rows))


def test_workers_opening_a_fresh_store_at_once_create_it_cleanly(store_url):
    """Four processes (as gunicorn workers, or replicas) open a store that has no tables yet, at the same moment."""
    workers, rounds = 4, 5
    urls = [store_url.replace("feedback.db", f"fresh-{i}.db") for i in range(rounds)]  # PostgreSQL: dropped between
    context = multiprocessing.get_context("spawn")  # no fork of the test process and its threads
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_open_at_once, args=(urls, barrier, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    reports = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [problem for problems, _ in reports for problem in problems] == []
    assert [count for _, rows in reports for count in rows] == [workers] * rounds  # every item of every round stored


# ------------------------------------------------------------------------------------------- a store that hangs


def within(seconds: float, action):
    """Run ``action`` in a thread; its result and how long it took, or a test failure if it takes longer than
    ``seconds`` (a call that hangs must fail the test, not hang it)."""
    import threading
    import time

    done: dict = {}

    def run() -> None:
        try:
            done["result"] = action()
        except BaseException as exc:  # reported below
            done["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds} s")
    if "error" in done:
        raise done["error"]
    return done["result"], time.monotonic() - started


class BlackHole:
    """A TCP port that accepts connections and never says anything (a partitioned or stuck server). In relay mode
    it forwards to ``target`` until ``hole`` is set: then it keeps the connections and forwards nothing more."""

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        import socket
        import threading

        self.target = target
        self.hole = target is None
        self.accepted = 0
        self.held: list = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(client)
            if self.hole:
                continue
            upstream = socket.create_connection(self.target)
            self.held.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source, sink) -> None:
        import time

        try:
            while data := source.recv(65536):
                while self.hole:
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for sock in self.held:
            sock.close()


def clean_postgres() -> str:
    """The test PostgreSQL's URL, its feedback store dropped (tables and schema revision)."""
    url = postgres_url()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS feedback, issued_cards, alembic_version"))
    engine.dispose()
    return url


@pytest.fixture
def pg_clean():
    return clean_postgres()


def app_with(url: str, **settings) -> CheckedClient:
    return CheckedClient(
        create_app({"NOW": lambda: NOW, "AUTH": "off", "LOG_LEVEL": "WARNING", "FEEDBACK_DB_URL": url, **settings})
    )


def test_a_locked_feedback_table_gives_503_within_the_store_timeout(pg_clean):
    import psycopg

    client = app_with(pg_clean, FEEDBACK_DB_TIMEOUT=1)
    assert post_feedback(client, {"feedback": [GOOD]}).status_code == 200
    with psycopg.connect(pg_clean) as locker:  # a migration, a VACUUM FULL, a backup...
        locker.execute("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE")
        response, seconds = within(12, lambda: post_feedback(client, {"feedback": [GOOD]}))
        assert response.status_code == 503 and seconds < 1 + 3
        assert "nothing was stored" in response.get_json()["issue"][0]["diagnostics"]
        ready, seconds = within(12, lambda: client.client.get("/readyz"))
        assert ready.status_code == 200 and seconds < 3  # the database answers; the table is busy
        locker.rollback()
    assert post_feedback(client, {"feedback": [GOOD]}).status_code == 200
    assert len(client.app.extensions["cds_feedback"].feedback_rows()) == 2


def test_a_store_that_accepts_and_never_answers_does_not_stop_the_start():
    hole = BlackHole()
    try:
        url = f"postgresql://alpcds:alpcds@127.0.0.1:{hole.port}/alpcds_test"
        client, seconds = within(12, lambda: app_with(url, FEEDBACK_DB_TIMEOUT=1))
        assert seconds < 2 + 3  # connecting is given up after 2 s (PostgreSQL's shortest connect_timeout)
        ready, seconds = within(12, lambda: client.client.get("/readyz"))
        assert ready.status_code == 503 and seconds < 2 + 3
        response, seconds = within(12, lambda: post_feedback(client, {"feedback": [GOOD]}))
        assert response.status_code == 503 and seconds < 2 + 3
        assert client.hook(PV, load_request("single-low-in")).status_code == 200
    finally:
        hole.close()


def test_a_store_partitioned_after_connecting_gives_503_within_the_store_timeout(pg_clean):
    """The pooled connection stays open but nothing comes back (a network partition, a stuck server): no server-side
    timeout can help, the client gives up by itself."""
    from sqlalchemy.engine import make_url

    target = make_url(pg_clean)
    relay = BlackHole((target.host, target.port or 5432))
    try:
        url = pg_clean.replace(f"{target.host}:{target.port}", f"127.0.0.1:{relay.port}")
        client = app_with(url, FEEDBACK_DB_TIMEOUT=1)
        assert post_feedback(client, {"feedback": [GOOD]}).status_code == 200
        relay.hole = True
        response, seconds = within(12, lambda: post_feedback(client, {"feedback": [GOOD]}))
        assert response.status_code == 503 and seconds < 1 + 2 + 2
        relay.hole = False
        assert post_feedback(client, {"feedback": [GOOD]}).status_code == 200
    finally:
        relay.close()


def test_a_hung_store_holds_few_threads():
    """Feedback calls to a store that does not answer: two at a time wait for it, the others get a 503 at once, so
    that a hung store cannot take every thread of a worker."""
    from concurrent.futures import ThreadPoolExecutor

    hole = BlackHole()
    try:
        client = app_with(f"postgresql://alpcds:alpcds@127.0.0.1:{hole.port}/alpcds_test", FEEDBACK_DB_TIMEOUT=1)
        hole.accepted = 0

        def one(_):
            return within(12, lambda: post_feedback(CheckedClient(client.app), {"feedback": [GOOD]}))

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert [response.status_code for response, _ in results] == [503] * 8
        quick = [seconds for _, seconds in results if seconds < 1.5]
        assert len(quick) >= 6
        assert hole.accepted <= 2
    finally:
        hole.close()


def test_no_patient_id_or_token_in_the_logs_even_at_debug(caplog):
    """urllib3 logs each request line (patient id in the query) at DEBUG: the service keeps it at WARNING whatever
    CDS_LOG_LEVEL says."""
    import logging

    from service.hook_requests import fhir_authorization
    from tests.peer import Peer, send_json

    peer = Peer({"/fhir": lambda h: send_json(h, {"resourceType": "Bundle", "type": "searchset", "entry": []})})
    try:
        caplog.set_level(logging.DEBUG)
        client = app_with("sqlite://", LOG_LEVEL="DEBUG")
        body = load_request("single-low-in")
        del body["prefetch"]["alp"]
        body["fhirServer"] = peer.base + "/fhir"
        body["fhirAuthorization"] = fhir_authorization("SECRET-ACCESS-TOKEN")
        assert client.hook(PV, body).status_code == 200
    finally:
        peer.close()
    assert peer.hits and "single-low-in" in peer.hits[0]  # the id was in the request...
    assert "single-low-in" not in caplog.text and "SECRET-ACCESS-TOKEN" not in caplog.text  # ...not in the logs


def test_report_counts_cards_by_their_last_outcome_and_names_reasons_given_by_code(tmp_path):
    from service.card_render import override_reason_displays

    client = app_on(f"sqlite:///{tmp_path}/fb.db")
    first, second = (client.cards(PV, load_request(name))[0] for name in ("persistent-low-in", "single-low-in"))

    def item(card, outcome, at, **extra):
        return {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": at, **extra}

    code_only = {"reason": {"system": "urn:alp-cds:override-reason", "code": "transient-illness"}}
    batch = [
        # sent out of order: the later timestamp decides, not the order of arrival
        item(first, "overridden", "2026-06-01T10:09:00Z", overrideReason=code_only),
        item(first, "accepted", "2026-06-01T10:05:00Z", acceptedSuggestions=[{"id": first["suggestions"][0]["uuid"]}]),
        item(
            second,
            "accepted",
            "2026-06-01T11:00:00+02:00",
            acceptedSuggestions=[{"id": second["suggestions"][0]["uuid"]}],
        ),
    ]
    assert post_feedback(client, {"feedback": batch}).status_code == 200
    report = client.app.extensions["cds_feedback"].report(override_reason_displays())
    assert report["alp-low-persistent"]["last_outcome"] == {"overridden": 1}
    assert report["alp-low-persistent"]["override_reasons"] == {"Recent acute illness or surgery; will repeat later": 1}
    assert report["alp-low-persistent"]["events"] == {"overridden": 1, "accepted": 1}
    assert report["alp-low-single"] == {
        "issued": 1,
        "cards_with_feedback": 1,
        "last_outcome": {"accepted": 1},
        "override_reasons": {},
        "events": {"accepted": 1},
    }


def test_large_hook_calls_beyond_the_bulkhead_get_a_quick_503_with_retry_after(tmp_path):
    """Memory: at most LARGE_CALLS_PER_WORKER calls with a body over LARGE_BODY_BYTES are parsed at once (bench/
    memory.py measures what that bounds); another waits LARGE_CALL_WAIT, then gets a 503 "retry". Smaller calls pass."""
    import time

    def app(**extra) -> CheckedClient:
        return CheckedClient(
            create_app(
                {
                    "NOW": lambda: NOW,
                    "AUTH": "off",
                    "LOG_LEVEL": "WARNING",
                    "FEEDBACK_DB_URL": f"sqlite:///{tmp_path}/f.db",
                }
                | extra
            )
        )

    client = app(LARGE_BODY_BYTES=1000, LARGE_CALLS_PER_WORKER=1, LARGE_CALL_WAIT=0.2)
    large = client.app.extensions["cds_bulkheads"]["large"]
    assert large.acquire()  # another call holds the only slot
    started = time.monotonic()
    refused = client.hook(PV, load_request("single-low-in"))
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "large requests" in refused.get_json()["issue"][0]["diagnostics"]
    assert 0.2 <= time.monotonic() - started < 1.5
    large.release()
    assert client.hook(PV, load_request("single-low-in")).status_code == 200
    assert large.acquire()  # the call gave its slot back
    large.release()
    assert "cds_overloaded_total" in client.client.get("/metrics").get_data(as_text=True)


def test_the_bulkheads_default_to_leaving_four_threads_of_a_worker_free():
    from service.bulkhead import bulkheads, fhir_calls_limit
    from service.settings import load_settings

    assert fhir_calls_limit(0, 16) == 12 and fhir_calls_limit(0, 4) == 1 and fhir_calls_limit(0, None) is None
    assert fhir_calls_limit(6, 16) == 6
    made = bulkheads(load_settings(environ={}), threads=16)
    assert made["fhir"].limit == 12 and made["large"].limit == 4 and made["large"].max_waiting == 8

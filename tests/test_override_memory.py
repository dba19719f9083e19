"""The override memory (issue 24, point 1): a card overridden with a reason is, for the same patient and card kind,
shown as information for CDS_OVERRIDE_DAYS unless something new happened, and says when and why it was overridden;
the patient is stored only as a keyed hash; a store that is slow or down changes nothing but the memory."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import re
import time
import uuid

import pytest
from sqlalchemy import inspect, select, text

from service.app import create_app
from service.feedback import issued_cards
from service.hook_requests import NOW
from service.memory import patient_key
from tests.conftest import OS, PV, SIGN, CheckedClient, load_request
from tests.test_feedback_and_ops import BlackHole, clean_postgres, within

KEY = "a-test-key-of-the-override-memory-0123456789"
HPP_EXCLUDED = {"system": "urn:alp-cds:override-reason", "code": "hpp-already-assessed"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/feedback.db"
    return clean_postgres()


def app_on(url: str, **settings) -> CheckedClient:
    # The reading gets 4 s (half the FHIR budget, its most), not the default 0.5 s: a loaded test machine (the
    # first reading also checks the schema) must not turn a remembered override into a warning; the tests of the
    # timeout set their own.
    overrides = {
        "NOW": lambda: NOW,
        "AUTH": "off",
        "LOG_LEVEL": "WARNING",
        "FEEDBACK_DB_URL": url,
        "OVERRIDE_LOOKUP_TIMEOUT": 4,
    }
    return CheckedClient(create_app({**overrides, "OVERRIDE_KEY": KEY, **settings}))


def override(client: CheckedClient, card: dict, at: str = "2026-05-20T10:00:00Z", reason=HPP_EXCLUDED, service=PV):
    """The clinician dismisses ``card`` with a reason (after its audit row is written, as it is in practice)."""
    client.app.extensions["cds_feedback"].flush()
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": at}
    if reason is not None:
        item["overrideReason"] = {"reason": reason, "userComment": "seen by the bone clinic"}
    response = client.client.post(f"/cds-services/{service}/feedback", json={"feedback": [item]})
    assert response.status_code == 200, response.get_json()


def one_card(client: CheckedClient, service: str, request: dict) -> dict:
    cards = client.cards(service, request)
    assert len(cards) == 1, [c["summary"] for c in cards]
    return cards[0]


def with_alp(request: dict, day: str, value: float = 23, issued: str | None = None) -> dict:
    """``request`` with one more total ALP result, low against the lab's range 35-104."""
    request = copy.deepcopy(request)
    patient = request["context"]["patientId"]
    observation = {
        "resourceType": "Observation",
        "id": f"new-{uuid.uuid4()}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": "U/L", "system": "http://unitsofmeasure.org", "code": "U/L"},
        "referenceRange": [{"low": {"value": 35, "unit": "U/L"}, "high": {"value": 104, "unit": "U/L"}}],
    }
    if issued:
        observation["issued"] = issued
    bundle = request["prefetch"]["alp"]
    bundle["entry"].insert(0, {"fullUrl": f"Observation/{observation['id']}", "resource": observation})
    bundle["total"] = len(bundle["entry"])
    return request


ALENDRONATE = ("904420", "Alendronic acid 10 MG [Fosamax]")
PROLIA = ("993456", "1 ML denosumab 60 MG/ML Prefilled Syringe [Prolia]")


def with_alendronate(
    request: dict, start: str, drug: tuple[str, str] = ALENDRONATE, asserted: str | None = None
) -> dict:
    request = copy.deepcopy(request)
    patient = request["context"]["patientId"]
    statement = {
        "resourceType": "MedicationStatement",
        "id": f"drug-{uuid.uuid4()}",
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": drug[0],
                    "display": drug[1],
                }
            ]
        },
        "subject": {"reference": f"Patient/{patient}"},
        "effectivePeriod": {"start": start},
        **({"dateAsserted": asserted} if asserted else {}),
    }
    bundle = request["prefetch"]["medicationStatements"]
    bundle["entry"].append({"fullUrl": f"MedicationStatement/{statement['id']}", "resource": statement})
    bundle["total"] = len(bundle["entry"])
    return request


def note(card: dict) -> str:
    return card.get("detail", "").split("\n\n", 1)[0]


# ------------------------------------------------------------------------------------------------ the memory


def test_an_override_with_a_reason_quiets_the_next_warning_and_says_when_and_why(store_url):
    client = app_on(store_url)
    first = one_card(client, PV, load_request("persistent-low-in"))
    assert first["indicator"] == "warning" and "overridden" not in first["summary"]
    override(client, first)

    again = one_card(client, PV, load_request("persistent-low-in"))
    assert again["indicator"] == "info"
    assert again["summary"].endswith("; overridden 2026-05-20") and len(again["summary"]) <= 140
    assert note(again) == (
        "**Overridden on 2026-05-20** (HPP already diagnosed or excluded): shown as information instead of a warning "
        "until 2027-05-20, unless a new low ALP or a new antiresorptive is recorded."
    )
    assert again["detail"].split("\n\n", 1)[1] == first["detail"]  # the card itself is unchanged
    assert again["suggestions"] and again["overrideReasons"] == first["overrideReasons"]
    # Another patient's card is not touched.
    other = one_card(client, PV, load_request("single-low-in"))
    assert "overridden" not in other["summary"]
    metrics = client.client.get("/metrics").get_data(as_text=True)
    assert lookups(client).get("found", 0) >= 1
    assert 'cds_override_downgrades_total{kind="alp-low-persistent"}' in metrics


def test_a_second_service_instance_on_the_same_store_remembers_it(store_url):
    """Replicas share nothing but the store: a new app (a restart, another replica) reads the same overrides."""
    first_instance = app_on(store_url)
    card = one_card(first_instance, PV, load_request("persistent-low-in"))
    override(first_instance, card)
    second_instance = app_on(store_url)
    assert one_card(second_instance, PV, load_request("persistent-low-in"))["indicator"] == "info"
    # A different key is a different memory (the hashes do not match): nothing is remembered.
    other_key = app_on(store_url, OVERRIDE_KEY="another-key-of-at-least-32-characters-xxxxxxx")
    assert one_card(other_key, PV, load_request("persistent-low-in"))["indicator"] == "warning"


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [("overridden", None), ("accepted", None)],
    ids=["overridden without a reason", "accepted"],
)
def test_only_an_override_with_a_reason_is_remembered(tmp_path, outcome, reason):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    card = one_card(client, PV, load_request("persistent-low-in"))
    client.app.extensions["cds_feedback"].flush()
    item = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": "2026-05-20T10:00:00Z"}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    assert client.client.post(f"/cds-services/{PV}/feedback", json={"feedback": [item]}).status_code == 200
    again = one_card(client, PV, load_request("persistent-low-in"))
    assert again["indicator"] == "warning" and "overridden" not in again["summary"]


def test_the_period_is_a_setting_and_a_kind_may_remember_for_less(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db", OVERRIDE_DAYS=30)
    card = one_card(client, PV, load_request("persistent-low-in"))
    override(client, card, at="2026-04-20T10:00:00Z")  # 42 days before NOW: past the period
    assert one_card(client, PV, load_request("persistent-low-in"))["indicator"] == "warning"
    override(client, card, at="2026-05-20T10:00:00Z")  # 12 days before
    again = one_card(client, PV, load_request("persistent-low-in"))
    assert again["indicator"] == "info" and "until 2026-06-19" in note(again)

    # An override of an overdue denosumab dose ("given, not recorded here") covers one dose: 26 weeks at most.
    client = app_on(f"sqlite:///{tmp_path}/g.db")
    card = one_card(client, PV, load_request("denosumab-overdue-in"))
    assert card["indicator"] == "warning"
    dose_given = {"system": "urn:alp-cds:override-reason", "code": "dose-given"}
    override(client, card, at="2025-11-01T10:00:00Z", reason=dose_given)  # 212 days before NOW
    assert one_card(client, PV, load_request("denosumab-overdue-in"))["indicator"] == "warning"
    override(client, card, at="2026-02-01T10:00:00Z", reason=dose_given)
    again = one_card(client, PV, load_request("denosumab-overdue-in"))
    assert again["indicator"] == "info"
    assert note(again).startswith("**Overridden on 2026-02-01** (Dose given (not recorded here)): shown as")
    assert "until 2026-08-02" in note(again)


def test_a_new_low_after_the_override_shows_the_warning_again_with_the_override(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    request = load_request("persistent-low-in")  # lows on 2026-01-10 and 2026-03-15
    override(client, one_card(client, PV, request), at="2026-04-01T09:00:00+02:00")
    assert one_card(client, PV, request)["indicator"] == "info"

    newer = one_card(client, PV, with_alp(request, "2026-05-25"))
    assert newer["indicator"] == "warning" and newer["summary"].endswith("; overridden 2026-04-01")
    assert note(newer) == (
        "**Overridden on 2026-04-01** (HPP already diagnosed or excluded); shown as before: a new low ALP on "
        "2026-05-25, after the override."
    )
    # A low drawn before the override that the lab released after it was not known to the clinician: new too.
    late = one_card(client, PV, with_alp(request, "2026-03-30", issued="2026-04-03T08:00:00Z"))
    assert late["indicator"] == "warning" and "a new low ALP on 2026-03-30, after the override" in note(late)
    # A release time ahead of the service's clock is not believed: the draw's date counts, before the override or after.
    assert one_card(client, PV, with_alp(request, "2026-03-30", issued="2026-09-01T08:00:00Z"))["indicator"] == "info"
    ahead = one_card(client, PV, with_alp(request, "2026-05-25", issued="2026-09-01T08:00:00Z"))
    assert ahead["indicator"] == "warning" and "a new low ALP on 2026-05-25, after the override" in note(ahead)
    # One drawn and released before it was known: not new.
    assert one_card(client, PV, with_alp(request, "2026-03-30", issued="2026-03-31T08:00:00Z"))["indicator"] == "info"


def test_a_new_antiresorptive_after_the_override_shows_the_warning_again(tmp_path):
    """The low ALP on alendronate is one card (the drug's, with the workup); overridden, it stays information while
    the course goes on, and a new drug started after the override brings the warning back."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    request = with_alendronate(load_request("persistent-low-in"), "2026-02-02")  # lows 2026-01-10 and 2026-03-15
    card = one_card(client, PV, request)
    assert card["indicator"] == "warning" and "alendronate" in card["summary"]
    override(client, card, at="2026-04-01T10:00:00Z")
    assert one_card(client, PV, request)["indicator"] == "info"  # a course started before the override: not new
    cards = client.cards(PV, with_alendronate(request, "2026-05-02", PROLIA))
    drug_card = next(c for c in cards if "alendronate, denosumab" in c["summary"])
    assert drug_card["indicator"] == "warning"
    assert "shown as before: denosumab started on 2026-05-02, after the override." in note(drug_card)


def test_a_drug_written_down_after_the_override_is_new_though_started_before_it(tmp_path):
    """Outside attack A6: a medication list reconciled after the override adds denosumab started a month before
    it. The clinician overrode a card that did not know the drug: the warning comes back, and says when it was
    recorded. A statement written down before the override (or with no dateAsserted) is not new."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    request = with_alendronate(load_request("persistent-low-in"), "2026-02-02")
    override(client, one_card(client, PV, request), at="2026-04-01T10:00:00Z")
    before = with_alendronate(request, "2026-03-01", PROLIA, asserted="2026-03-02")
    known = next(c for c in client.cards(PV, before) if "alendronate, denosumab" in c["summary"])
    assert known["indicator"] == "info"
    later = with_alendronate(request, "2026-03-01", PROLIA, asserted="2026-04-20")
    drug_card = next(c for c in client.cards(PV, later) if "alendronate, denosumab" in c["summary"])
    assert drug_card["indicator"] == "warning"
    assert "denosumab started on 2026-03-01, recorded on 2026-04-20, after the override." in note(drug_card)


def test_without_every_record_read_nothing_is_taken_as_unchanged(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    request = load_request("persistent-low-in")
    override(client, one_card(client, PV, request))
    unread = copy.deepcopy(request)
    del unread["prefetch"]["medicationStatements"]  # not sent, and no FHIR server to fetch them from
    del unread["prefetch"]["medicationRequests"]
    card = next(c for c in client.cards(PV, unread) if c["summary"].startswith("Persistently low ALP"))
    assert card["indicator"] == "warning"
    assert "whether anything new happened is not known" in note(card)


def test_order_hooks_always_show_the_warning_and_say_it_was_overridden(tmp_path):
    """An order being checked is something new: the order cards stay warnings, with the override said (the kind's
    memory is the same at order-select and at order-sign)."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    select_request = load_request("order-low-alp-in")
    card = one_card(client, OS, select_request)
    assert card["indicator"] == "warning"
    workup_planned = {"system": "urn:alp-cds:override-reason", "code": "workup-planned"}
    override(client, card, reason=workup_planned, service=OS)

    again = one_card(client, OS, select_request)
    assert again["indicator"] == "warning" and again["summary"].endswith("; overridden 2026-05-20")
    assert note(again) == (
        "**Overridden on 2026-05-20** (Workup will be done); shown as before: a new order is being checked."
    )
    sign_request = copy.deepcopy(select_request)
    sign_request["hook"] = "order-sign"
    del sign_request["context"]["selections"]
    signed = one_card(client, SIGN, sign_request)
    assert signed["indicator"] == "warning" and "Overridden on 2026-05-20" in note(signed)


def test_a_critical_card_is_never_made_information(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    card = one_card(client, PV, load_request("wilson-critical-in"))
    override(client, card, reason={"code": "hepatology-involved"})
    again = one_card(client, PV, load_request("wilson-critical-in"))
    assert again["indicator"] == "critical"
    assert note(again) == (
        "**Overridden on 2026-05-20** (Hepatology already involved); shown as before: a critical card is always "
        "shown as critical."
    )


def test_the_reason_is_shown_as_sent_and_cannot_become_markdown(tmp_path):
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    card = one_card(client, PV, load_request("persistent-low-in"))
    reason = {"system": "urn:ehr:reasons", "code": "x1", "display": "See [here](https://evil.example) ![i](x)"}
    override(client, card, reason=reason)
    again = one_card(client, PV, load_request("persistent-low-in"))
    assert "https://" not in note(again) and "(See \\[here\\](https: //evil.example) \\!\\[i\\](x))" in note(again)
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").render(note(again))
    assert "<a " not in rendered and "<img" not in rendered
    # A client's code with no display is shown as its code.
    override(client, card, at="2026-05-21T10:00:00Z", reason={"system": "urn:ehr:reasons", "code": "R-17"})
    assert note(one_card(client, PV, load_request("persistent-low-in"))).startswith(
        "**Overridden on 2026-05-21** (R-17)"
    )


def test_a_client_clock_cannot_make_an_override_last_longer(tmp_path):
    """The override's time is its outcomeTimestamp, never later than the feedback was received."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    card = one_card(client, PV, load_request("persistent-low-in"))
    override(client, card, at="9999-01-01T00:00:00Z")
    again = one_card(client, PV, load_request("persistent-low-in"))
    until = re.search(r"until (\d{4})-", note(again))
    assert again["indicator"] == "info" and until and int(until.group(1)) <= time.gmtime().tm_year + 1


def test_a_feedback_received_before_its_cards_audit_row_counts_once_the_row_is_written(tmp_path):
    """The overrides are the stored feedback joined to the audit rows when read: the background writer may write a
    card's row after the clinician's feedback came, and nothing is lost."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    store = client.app.extensions["cds_feedback"]
    card = one_card(client, PV, load_request("persistent-low-in"))
    store.flush()
    with store.engine.begin() as connection:  # as if the writer had not got to it yet
        row = dict(connection.execute(select(issued_cards)).mappings().one())
        connection.execute(issued_cards.delete())
    override(client, card)
    assert one_card(client, PV, load_request("persistent-low-in"))["indicator"] == "warning"
    store.flush()
    with store.engine.begin() as connection:
        connection.execute(issued_cards.delete())
        connection.execute(issued_cards.insert(), [row])
    assert one_card(client, PV, load_request("persistent-low-in"))["indicator"] == "info"


# --------------------------------------------------------------------------------------- what is kept, and where


def test_the_patient_is_kept_only_as_a_keyed_hash_never_in_the_database_or_the_logs(store_url, caplog):
    patient = "persistent-low-in"
    caplog.set_level(logging.DEBUG)
    client = app_on(store_url, LOG_LEVEL="DEBUG")
    card = one_card(client, PV, load_request(patient))
    override(client, card)
    assert one_card(client, PV, load_request(patient))["indicator"] == "info"
    store = client.app.extensions["cds_feedback"]
    store.flush()

    expected = hmac.new(KEY.encode(), f"\x1f\x1f{patient}".encode(), hashlib.sha256).hexdigest()
    assert patient_key(KEY, patient) == expected
    everything = []
    with store.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            everything += [json.dumps(list(r), default=str) for r in connection.execute(text(f"SELECT * FROM {table}"))]
        hashes = set(connection.execute(select(issued_cards.c.patient_hash)).scalars())
    assert hashes == {expected}
    dump = "\n".join(everything)
    assert patient not in dump and "Patient/" not in dump
    assert patient not in caplog.text and expected not in caplog.text
    assert "override_memory_off" not in caplog.text


def test_each_issuer_has_a_memory_of_its_own():
    """Two EHRs may give two patients the same id: one's override must never quiet the other's card."""
    assert patient_key(KEY, "123", "https://ehr-a.example") != patient_key(KEY, "123", "https://ehr-b.example")
    assert patient_key(KEY, "123", "https://ehr-a.example", "t1") != patient_key(KEY, "123", "https://ehr-a.example")
    assert patient_key(KEY, "12", "3") != patient_key(KEY, "123", "")  # the parts cannot run into each other


def test_without_the_key_nothing_is_hashed_or_remembered_and_the_start_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="service")
    client = app_on(f"sqlite:///{tmp_path}/f.db", OVERRIDE_KEY="")
    assert [json.loads(r.getMessage())["event"] for r in caplog.records].count("override_memory_off") == 1
    card = one_card(client, PV, load_request("persistent-low-in"))
    override(client, card)
    assert one_card(client, PV, load_request("persistent-low-in"))["indicator"] == "warning"
    store = client.app.extensions["cds_feedback"]
    store.flush()
    with store.engine.connect() as connection:
        assert set(connection.execute(select(issued_cards.c.patient_hash)).scalars()) == {None}


def test_a_short_key_is_refused_at_start_without_repeating_it():
    from service.settings import SettingsError

    with pytest.raises(SettingsError, match="at least 32 characters") as refused:
        app_on("sqlite://", OVERRIDE_KEY="short-secret")
    assert "short-secret" not in str(refused.value)


# ------------------------------------------------------------------------------------- a store slow or down


def lookups(client: CheckedClient, before: dict[str, float] | None = None) -> dict[str, float]:
    """The override readings counted by outcome (since ``before``: the counters are the process's)."""
    found = re.findall(
        r'cds_override_lookups_total\{outcome="(\w+)"\} (\S+)', client.client.get("/metrics").get_data(as_text=True)
    )
    return {outcome: float(count) - (before or {}).get(outcome, 0) for outcome, count in found}


def test_a_store_that_never_answers_changes_nothing_but_the_memory(caplog):
    """PostgreSQL accepts connections and says nothing (a partition): every hook call answers 200 within the
    lookup's time, with the cards it gives without the memory, and the failure is counted and logged (once, without
    patient data)."""
    caplog.set_level(logging.INFO)
    hole = BlackHole()
    try:
        url = f"postgresql://alpcds:alpcds@127.0.0.1:{hole.port}/alpcds_test"
        client, _ = within(12, lambda: app_on(url, FEEDBACK_DB_TIMEOUT=1, OVERRIDE_LOOKUP_TIMEOUT=0.3))
        caplog.clear()
        before = lookups(client)
        for _ in range(8):
            response, seconds = within(10, lambda: client.hook(PV, load_request("persistent-low-in")))
            assert response.status_code == 200 and seconds < 0.3 + 1.0
            assert [c["indicator"] for c in response.get_json()["cards"]] == ["warning"]
        counted = lookups(client, before)
        assert counted.get("timeout", 0) + counted.get("busy", 0) == 8 and counted.get("timeout", 0) >= 1
        events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.memory"]
        assert [e["event"] for e in events] == ["override_memory_unavailable"]
        assert "persistent-low-in" not in caplog.text
    finally:
        hole.close()


def test_a_call_without_cards_does_not_wait_for_the_reading():
    hole = BlackHole()
    try:
        url = f"postgresql://alpcds:alpcds@127.0.0.1:{hole.port}/alpcds_test"
        client, _ = within(12, lambda: app_on(url, FEEDBACK_DB_TIMEOUT=1, OVERRIDE_LOOKUP_TIMEOUT=3))
        slow, seconds = within(10, lambda: client.hook(PV, load_request("persistent-low-in")))
        # A card: the call waits for the reading (here until connecting fails, after libpq's least 2 s), no longer.
        assert slow.status_code == 200 and 1.5 <= seconds < 3 + 1
        quick, seconds = within(10, lambda: client.hook(PV, load_request("normal-alp-out")))
        assert quick.status_code == 200 and quick.get_json()["cards"] == [] and seconds < 1
    finally:
        hole.close()


def test_a_store_that_is_down_changes_nothing_but_the_memory():
    client = app_on("postgresql+psycopg://nobody:x@127.0.0.1:9/none?connect_timeout=1")
    before = lookups(client)
    response, seconds = within(10, lambda: client.hook(PV, load_request("persistent-low-in")))
    assert response.status_code == 200 and seconds < 2
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["warning"]
    counted = lookups(client, before)
    assert counted.get("error", 0) + counted.get("timeout", 0) == 1


def test_a_locked_store_times_the_lookup_out_and_the_memory_comes_back_with_it(caplog):
    """A table locked for minutes (a migration, VACUUM FULL): the reading times out, the warning is shown as before
    and the call is not held; once the lock is gone the memory works again, and the log says so."""
    import psycopg

    url = clean_postgres()
    client = app_on(url, OVERRIDE_LOOKUP_TIMEOUT=0.3)
    card = one_card(client, PV, load_request("persistent-low-in"))
    override(client, card)
    assert one_card(client, PV, load_request("persistent-low-in"))["indicator"] == "info"
    caplog.set_level(logging.INFO, logger="service.memory")
    before = lookups(client)
    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE")
        response, seconds = within(10, lambda: client.hook(PV, load_request("persistent-low-in")))
        assert response.status_code == 200 and seconds < 0.3 + 1.0
        assert [c["indicator"] for c in response.get_json()["cards"]] == ["warning"]
        locker.rollback()
    time.sleep(0.5)  # the timed-out reading ends (its statement timeout) and gives its slot back
    assert one_card(client, PV, load_request("persistent-low-in"))["indicator"] == "info"
    events = [json.loads(r.getMessage())["event"] for r in caplog.records if r.name == "service.memory"]
    assert events == ["override_memory_unavailable", "override_memory_available"]
    assert lookups(client, before).get("timeout") == 1


def test_the_lookup_time_is_at_most_half_the_fhir_budget():
    from service.settings import load_settings

    assert load_settings({}, environ={}).OVERRIDE_LOOKUP_TIMEOUT == 0.5  # the default (app_on gives the tests 4 s)
    assert app_on("sqlite://", OVERRIDE_LOOKUP_TIMEOUT=0.5).app.extensions["cds_memory"].timeout == 0.5
    assert app_on("sqlite://", FHIR_TIME_BUDGET=0.4).app.extensions["cds_memory"].timeout == 0.2
    assert app_on("sqlite://", FHIR_TIME_BUDGET=20).app.extensions["cds_memory"].timeout == 4

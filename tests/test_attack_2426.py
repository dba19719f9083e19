"""The outside attack on issues 24 (the override memory) and 26 (value sets served as FHIR, recognition by code):
each test is a finding, failing before its fix."""

from __future__ import annotations

from service.clinical.codes import RXNORM
from tests.conftest import OS, PV, load_request
from tests.test_override_memory import app_on, note, one_card, override, with_alendronate


def test_an_override_of_an_information_card_never_quiets_a_later_warning(tmp_path):
    """A1. The clinician dismissed the information card "known HPP: low ALP expected; avoid bisphosphonates" with a
    reason. Later an alendronate course is reconciled onto the chart (started before that dismissal): the card is now
    the warning "review alendronate: the patient has HPP". The clinician never saw, let alone overrode, that warning:
    it must be shown as a warning, not as information "overridden"."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    request = load_request("known-hpp-in")
    card = one_card(client, PV, request)
    assert card["indicator"] == "info"
    override(client, card, reason={"system": "urn:alp-cds:override-reason", "code": "specialist-managed"})

    on_alendronate = one_card(client, PV, with_alendronate(request, "2026-01-01"))
    assert "alendronate" in on_alendronate["summary"]
    assert on_alendronate["indicator"] == "warning", note(on_alendronate)


def order_select(client, coding: dict) -> list[dict]:
    """The order-select fixture with a low ALP, its selected draft naming its drug by this one coding alone."""
    request = load_request("order-low-alp-in")
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    draft["medicationCodeableConcept"] = {"coding": [coding]}
    return client.cards(OS, request)


def test_a_code_sent_with_blanks_around_it_is_still_recognised(tmp_path):
    """A2. A careless EHR pads its codes (" 904399 ", "6768-6\\t"): the Fosamax 35 mg order by RxNorm code alone got
    no card at all, and an ALP result under a padded LOINC code was not read (no low-ALP card). Conditions and ATC
    codes were already read trimmed."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    for code in (" 904399 ", "904399\t", "\u00a0904399"):
        cards = order_select(client, {"system": RXNORM, "code": code})
        assert [c["indicator"] for c in cards] == ["warning"], code
        assert "alendronate" in cards[0]["summary"]

    request = load_request("persistent-low-in")
    for entry in request["prefetch"]["alp"]["entry"]:
        for coding in entry["resource"]["code"]["coding"]:
            coding["code"] = f" {coding['code']}\t"
    card = one_card(client, PV, request)
    assert card["indicator"] == "warning" and "Persistently low ALP" in card["summary"]


def test_a_code_system_written_with_capitals_in_its_scheme_or_host_is_recognised(tmp_path):
    """A3. The scheme and host of a URI are case-insensitive (RFC 3986), and an OID URN's prefix too: an order for
    Fosamax 35 mg by RxNorm code alone under ``HTTP://WWW.NLM.NIH.GOV/research/umls/rxnorm`` or
    ``URN:OID:2.16.840.1.113883.6.88`` got no card (``https://`` and a trailing slash were already read)."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    for system in (
        "HTTP://www.nlm.nih.gov/research/umls/rxnorm",
        "http://WWW.NLM.NIH.GOV/research/umls/rxnorm",
        "Https://www.nlm.nih.gov/research/umls/rxnorm/",
        "URN:OID:2.16.840.1.113883.6.88",
        "urn:oid:2.16.840.1.113883.6.88",
    ):
        cards = order_select(client, {"system": system, "code": "904399"})
        assert [c["indicator"] for c in cards] == ["warning"], system
    # The path stays case-sensitive: another path is another system.
    assert order_select(client, {"system": "http://www.nlm.nih.gov/research/umls/RXNORM", "code": "904399"}) == []


def test_an_outcome_timestamp_in_lower_case_is_stored_and_remembered(tmp_path):
    """A4. RFC 3339 (5.6) allows ``t`` and ``z`` in lower case and the schema's date-time check takes them; the store
    refused it as "not a time that can be stored" (a 400: the clinician's override was lost)."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    card = one_card(client, PV, load_request("persistent-low-in"))
    override(client, card, at="2026-05-20t10:00:00z")
    again = one_card(client, PV, load_request("persistent-low-in"))
    assert again["indicator"] == "info" and note(again).startswith("**Overridden on 2026-05-20**")


def test_value_set_search_parameters_are_read_as_fhir_defines_them(tmp_path):
    """A5. ``_id=alendronate,risedronate`` (a comma: either, FHIR search) found nothing; ``url=<url>|<version>`` (a
    canonical with its version) found nothing; ``name=AlpCdsAlendr`` (a string parameter: starts with, in any case)
    found nothing."""
    client = app_on(f"sqlite:///{tmp_path}/f.db").client

    def ids(query: str) -> list[str]:
        response = client.get(f"/fhir/ValueSet?{query}")
        assert response.status_code == 200, response.get_json()
        return sorted(e["resource"]["id"] for e in response.get_json()["entry"])

    assert ids("_id=alendronate,risedronate") == ["alendronate", "risedronate"]
    assert ids("_id=alendronate&_id=risedronate") == ["alendronate", "risedronate"]
    one = client.get("/fhir/ValueSet/alendronate").get_json()
    assert ids(f"url={one['url']}|{one['version']}") == ["alendronate"]
    assert ids(f"url={one['url']}|1999-01-01.0") == []
    assert ids(f"url={one['url']}") == ["alendronate"]
    assert ids("name=alpcdsalendr") == ["alendronate"]
    assert ids("name=AlpCdsAlendronate") == ["alendronate"]
    assert ids("_id=nothing-of-ours") == []


def test_a_format_the_value_sets_are_not_served_in_is_a_406(tmp_path):
    """A8. ``_format=xml`` or ``Accept: application/fhir+xml`` got 200 JSON; FHIR's REST rules answer 406 when the
    server cannot supply the format. JSON asked in any of its names, or nothing asked, is served."""
    client = app_on(f"sqlite:///{tmp_path}/f.db").client
    for path in ("/fhir/ValueSet", "/fhir/ValueSet/alendronate"):
        for query in ("_format=xml", "_format=application/fhir%2Bxml", "_format=json&_format=xml"):
            response = client.get(f"{path}?{query}")
            assert response.status_code == 406 and response.get_json()["resourceType"] == "OperationOutcome"
        refused = client.get(path, headers={"Accept": "application/fhir+xml"})
        assert refused.status_code == 406 and refused.mimetype == "application/fhir+json"
        for query in ("", "?_format=json", "?_format=application/fhir%2Bjson"):
            assert client.get(f"{path}{query}").status_code == 200
        for accept in ("application/fhir+json", "application/json", "*/*", "text/html, */*;q=0.8"):
            assert client.get(path, headers={"Accept": accept}).status_code == 200, accept


def test_a_feedback_counts_only_from_the_caller_the_card_was_issued_to(tmp_path):
    """A7. Any trusted issuer that knew a card's uuid could override it (another hospital's card): the feedback is
    stored, but the memory counts it only for a card issued to the same caller (a keyed hash of its issuer and
    tenant on both rows), through the same service. The committee's overrides in force read the same rows."""
    from service.app import create_app
    from service.hook_requests import NOW
    from tests.conftest import CheckedClient
    from tests.test_override_memory import HPP_EXCLUDED, KEY
    from tests.test_security import BASE, FHIR, ISS, JWKS, token

    other = "https://other-hospital.example.org"
    conf = {"jwks": JWKS, "fhir_servers": [FHIR]}

    client = CheckedClient(
        create_app(
            {
                "NOW": lambda: NOW,
                "LOG_LEVEL": "WARNING",
                "FEEDBACK_DB_URL": f"sqlite:///{tmp_path}/f.db",
                "TRUSTED_ISSUERS": {ISS: conf, other: conf},
                "PUBLIC_BASE_URL": BASE,
                "REPLAY_STORE_URL": "sqlite://",
                "OVERRIDE_KEY": KEY,
                "OVERRIDE_LOOKUP_TIMEOUT": 4,
            }
        )
    )

    def bearer(issuer: str, path: str) -> dict:
        return {"Authorization": f"Bearer {token(iss=issuer, aud=BASE + path)}"}

    def warning_card() -> dict:
        path = f"/cds-services/{PV}"
        response = client.client.post(path, json=load_request("persistent-low-in"), headers=bearer(ISS, path))
        assert response.status_code == 200, response.get_json()
        (card,) = response.get_json()["cards"]
        return card

    def dismiss(card: dict, issuer: str, service: str = PV) -> None:
        client.app.extensions["cds_feedback"].flush()
        item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-05-20T10:00:00Z"}
        item["overrideReason"] = {"reason": HPP_EXCLUDED}
        path = f"/cds-services/{service}/feedback"
        response = client.client.post(path, json={"feedback": [item]}, headers=bearer(issuer, path))
        assert response.status_code == 200, response.get_json()

    card = warning_card()
    assert card["indicator"] == "warning"
    dismiss(card, other)  # another hospital's client, with the uuid
    dismiss(card, ISS, OS)  # the right caller, through another service's feedback endpoint
    assert warning_card()["indicator"] == "warning"
    report = client.app.extensions["cds_feedback"].report_rows()[1]
    assert [r.same_caller for r in report] == [False, True]
    dismiss(card, ISS)
    assert warning_card()["indicator"] == "info"

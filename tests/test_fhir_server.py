"""Integration against a real FHIR R4 server on loopback (sekmet-fhir, started by the ``fhir_base`` fixture)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from service import cli, loader
from service.hook_requests import fhir_authorization, hook_request, without_uuids
from tests.conftest import FHIR_TOKEN as TOKEN
from tests.conftest import FIXTURES, OS, PV, ROOT, SERVICE_OF_HOOK, free_port, load_bundle, load_request, make_app


@pytest.fixture(scope="module")
def loaded(fhir_base):
    first = loader.load_fixtures(fhir_base, TOKEN)
    second = loader.load_fixtures(fhir_base, TOKEN)  # idempotent: the same report, no duplicates
    assert first == second
    return first


def test_loader_loads_every_fixture_once(fhir_base, loaded):
    assert set(loaded) == {p.name for p in (FIXTURES / "fhir").glob("*.json")}
    answer = requests.get(
        f"{fhir_base}/Observation",
        params={"patient": "persistent-low-in"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()
    assert answer["total"] == loaded["persistent-low-in.json"]["Observation"] == 3


@pytest.mark.parametrize("name", sorted(p.stem for p in (FIXTURES / "requests").glob("*.json")))
def test_fetch_path_gives_the_same_cards_as_the_prefetch_path(fhir_base, loaded, name):
    client = make_app()
    with_prefetch = load_request(name)
    service = SERVICE_OF_HOOK[with_prefetch["hook"]]
    without = json.loads(json.dumps(with_prefetch))
    without.pop("prefetch")
    without["fhirServer"] = fhir_base
    without["fhirAuthorization"] = fhir_authorization(TOKEN)
    fetched = client.cards(service, without)
    assert without_uuids(fetched) == without_uuids(client.cards(service, with_prefetch))


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_the_sandbox_rx_view_draft_with_no_drug_yet_without_prefetch(fhir_base, loaded, hook):
    """The Sandbox's Rx View as it opens (a draft with no drug yet), the service fetching the chart itself: 200, no
    card."""
    from tests.test_draft_orders import sandbox_rx_view

    body = sandbox_rx_view("order-low-alp-in", hook)
    body.pop("prefetch")
    body["fhirServer"] = fhir_base
    body["fhirAuthorization"] = fhir_authorization(TOKEN)
    assert make_app().cards(SERVICE_OF_HOOK[hook], body) == []


def test_a_patient_the_server_does_not_hold_gives_412(fhir_base, loaded):
    """HAPI answers the read with a 404 OperationOutcome (HAPI-2001), sekmet with its own 404: the patient is a
    required key either way."""
    body = hook_request(PV, {}, "no-such-patient", with_prefetch=False, fhir_server=fhir_base)
    body["fhirAuthorization"] = fhir_authorization(TOKEN)
    response = make_app().hook(PV, body)
    assert response.status_code == 412, response.get_json()
    assert "patient" in response.get_json()["issue"][0]["diagnostics"]


def test_wrong_token_gives_412(fhir_base, loaded):
    body = hook_request(PV, load_bundle("single-low-in"), "single-low-in", with_prefetch=False, fhir_server=fhir_base)
    body["fhirAuthorization"] = fhir_authorization("wrong")
    response = make_app().hook(PV, body)
    assert response.status_code == 412
    assert "refused access (401)" in response.get_json()["issue"][0]["diagnostics"]


def test_paging_through_a_real_server(fhir_base, loaded):
    """One result per page: the older ALP is only reachable through the server's own next link."""
    from service.fhir.client import FhirClient

    first_page = requests.get(
        f"{fhir_base}/Observation",
        params={"patient": "persistent-low-in", "code": "http://loinc.org|6768-6", "_sort": "-date", "_count": "1"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()
    assert len(first_page["entry"]) == 1 and any(link["relation"] == "next" for link in first_page["link"])
    merged = FhirClient(fhir_base, TOKEN).fetch(
        "Observation?patient=persistent-low-in&code=http://loinc.org|6768-6&_sort=-date&_count=1"
    )
    dates = [e["resource"]["effectiveDateTime"] for e in merged["entry"]]
    assert dates == ["2026-03-15", "2026-01-10"]


def test_cli_load_and_call_against_a_running_service(fhir_base, loaded, capsys, tmp_path):
    assert cli.main(["load-fixtures", "--fhir-base", fhir_base, "--token", TOKEN]) == 0
    assert f"Loaded {len(loaded)} bundles" in capsys.readouterr().out
    server = make_server("127.0.0.1", 0, make_app().app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"

        def call(service: str, patient: str, *extra: str) -> int:
            return cli.main(
                [
                    "call",
                    service,
                    "--patient",
                    patient,
                    "--fhir-base",
                    fhir_base,
                    "--token",
                    TOKEN,
                    "--service-url",
                    url,
                    *extra,
                ]
            )

        assert call(PV, "persistent-low-in") == 0
        out = capsys.readouterr().out
        assert "[1] WARNING: Persistently low ALP (2 results over 9 weeks, latest 24 U/L)" in out
        assert "* Order Pyridoxal 5'-phosphate (vitamin B6), plasma" in out
        drafts = tmp_path / "drafts.json"
        drafts.write_text(json.dumps(load_request("order-low-alp-in")["context"]["draftOrders"]))
        request = str(FIXTURES / "requests" / "order-low-alp-in.json")  # the README's: a request's draftOrders
        for given in (str(drafts), request):
            assert (
                call(OS, "order-low-alp-in", "--draft-orders", given, "--select", "MedicationRequest/draft-denosumab")
                == 0
            )
            assert "WARNING: Send PLP and urine PEA before starting denosumab: ALP low" in capsys.readouterr().out
        (tmp_path / "not-drafts.json").write_text('{"resourceType": "Patient"}')
        assert call(OS, "order-low-alp-in", "--draft-orders", str(tmp_path / "not-drafts.json")) == 2
        assert "holds neither a Bundle of draft orders nor a hook request" in capsys.readouterr().err
    finally:
        server.shutdown()


def test_cli_call_signs_its_token_for_a_service_with_jwt_checks_on(fhir_base, loaded, capsys):
    """The README's auth-on step: ``alp-cds call`` with no key gets a 401 it explains; with the published test key,
    which deploy/sandbox-issuers.yaml trusts as it is, the cards."""
    import yaml

    from service.loader import TEST_ISSUER

    trusted = yaml.safe_load((ROOT / "deploy" / "sandbox-issuers.yaml").read_text())[TEST_ISSUER]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = make_app(
        AUTH="on",
        PUBLIC_BASE_URL=url,
        REPLAY_STORE_URL="sqlite://",
        TRUSTED_ISSUERS={TEST_ISSUER: {**trusted, "fhir_servers": [fhir_base]}},  # the test server's random port
    ).app
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = ["call", PV, "--patient", "persistent-low-in", "--fhir-base", fhir_base, "--token", TOKEN]
        assert cli.main([*argv, "--service-url", url]) == 2
        assert "HTTP 401: JWT checks are on: sign the call with --sign-key" in capsys.readouterr().err
        key = str(ROOT / "deploy" / "test-cli-key.pem")
        assert cli.main([*argv, "--service-url", url, "--sign-key", key]) == 0
        assert "[1] WARNING: Persistently low ALP" in capsys.readouterr().out
        assert cli.main([*argv, "--service-url", url, "--sign-key", key, "--issuer", "urn:someone-else"]) == 2
        assert "the token was refused: the service's auth_failed log line says why" in capsys.readouterr().err
        # reached at another address than its public URL (docker compose: http://alp-cds:8080 for localhost:8080)
        other = f"http://localhost:{port}"
        assert cli.main([*argv, "--service-url", other, "--sign-key", key]) == 2  # aud: the other address
        assert cli.main([*argv, "--service-url", other, "--public-url", url, "--sign-key", key]) == 0
    finally:
        server.shutdown()


def test_cli_call_refuses_a_key_it_cannot_sign_with(tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "p256.pem").write_bytes(p256)
    (tmp_path / "not-a-key.pem").write_text("hello")
    argv = [
        "call",
        PV,
        "--patient",
        "p",
        "--fhir-base",
        "http://127.0.0.1:9/fhir",
        "--service-url",
        "http://127.0.0.1:9",
    ]
    for name, said in (
        ("p256.pem", "ES384 (an EC P-384 key) or RS384 (an RSA key) only"),
        ("not-a-key.pem", "is not an unencrypted PEM private key"),
        ("missing.pem", "cannot read the signing key"),
    ):
        assert cli.main([*argv, "--sign-key", str(tmp_path / name)]) == 2
        assert said in capsys.readouterr().err


def test_cli_reports_an_unreachable_server(capsys):
    port = free_port()
    assert cli.main(["load-fixtures", "--fhir-base", f"http://127.0.0.1:{port}/fhir"]) == 2
    assert "cannot reach the FHIR server" in capsys.readouterr().err
    started = time.monotonic()
    assert cli.main(["load-fixtures", "--fhir-base", f"http://127.0.0.1:{port}/fhir", "--wait", "2"]) == 2
    assert time.monotonic() - started < 10
    assert "did not answer /metadata" in capsys.readouterr().err


def test_cli_reports_a_rejected_bundle(fhir_base, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": {"resourceType": "Observation", "id": "bad", "status": "not-a-status"},
                        "request": {"method": "PUT", "url": "Observation/bad"},
                    }
                ],
            }
        )
    )
    code = cli.main(["load-fixtures", "--fhir-base", fhir_base, "--token", TOKEN, "--dir", str(tmp_path)])
    assert code == 2
    assert "rejected bad.json: HTTP 4" in capsys.readouterr().err


UCUM = "http://unitsofmeasure.org"


def _long_history(patient: str, count: int) -> dict:
    """A transaction Bundle: one woman, ``count`` low total ALP results two weeks apart up to the fixtures' clock,
    dated with every precision FHIR allows (a day, UTC, an offset, a fraction of a second)."""
    from datetime import timedelta

    from service.hook_requests import NOW

    def observation(number: int) -> dict:
        when = NOW - timedelta(days=14 * number, hours=number % 7)
        dated = (
            when.date().isoformat(),
            when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            (when - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%S-05:00"),
            when.strftime("%Y-%m-%dT%H:%M:%S.123+00:00"),
        )[number % 4]
        return {
            "resourceType": "Observation",
            "id": f"{patient}-{number}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": dated,
            "valueQuantity": {"value": 20 + number % 10, "unit": "U/L", "system": UCUM, "code": "U/L"},
        }

    resources = [
        {"resourceType": "Patient", "id": patient, "gender": "female", "birthDate": "1970-02-01"},
        *(observation(n) for n in range(count)),
    ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }


def test_a_history_longer_than_a_page_is_read_through_the_servers_next_links(fhir_base, tmp_path):
    """230 ALP results: three pages of the alp search (``_count=100``), through each server's own next links (HAPI:
    ``<base>?_getpages=...``, with no ``total`` on the pages of a search this large), newest first as asked
    (``_sort=-date`` over mixed date precision). Read whole, so the cards are those of the complete prefetch: no
    "not all were returned"."""
    patient = "long-history"
    bundle = _long_history(patient, 230)
    (tmp_path / f"{patient}.json").write_text(json.dumps(bundle))
    loader.load_fixtures(fhir_base, TOKEN, str(tmp_path))
    first = requests.get(
        f"{fhir_base}/Observation",
        params={"patient": patient, "code": "http://loinc.org|6768-6", "_sort": "-date", "_count": "100"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ).json()
    assert len(first["entry"]) == 100 and any(link["relation"] == "next" for link in first["link"])
    client = make_app()
    with_prefetch = hook_request(PV, bundle, patient)
    without = hook_request(PV, bundle, patient, with_prefetch=False, fhir_server=fhir_base)
    without["fhirAuthorization"] = fhir_authorization(TOKEN)
    fetched = client.cards(PV, without)
    assert without_uuids(fetched) == without_uuids(client.cards(PV, with_prefetch))
    (card,) = [c for c in fetched if c["summary"].startswith("Persistently low ALP")]
    assert "latest 20 U/L" in card["summary"], card["summary"]
    assert "not all were returned" not in json.dumps(fetched)

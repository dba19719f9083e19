"""JWT verification, SSRF guard and CORS: each test fails if its protection is removed."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service import security
from service.app import create_app
from service.hook_requests import NOW, fhir_authorization
from service.settings import SettingsError
from tests.conftest import PV, CheckedClient, load_request
from tests.peer import peer_fixture

peer = peer_fixture()

ISS = "https://ehr.example.org"
BASE = "http://localhost"
URL = f"{BASE}/cds-services/{PV}"
FHIR = "https://ehr.example.org/fhir"

EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())


def jwk(key, kid: str, alg: str) -> dict:
    algorithm = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [jwk(EC_KEY, "ec-1", "ES384"), jwk(RSA_KEY, "rsa-1", "RS384")]}


def token(key=EC_KEY, alg="ES384", kid="ec-1", headers=None, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISS, "aud": URL, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})} if kid else headers)


def secured(issuer: dict | None = None, **settings) -> CheckedClient:
    conf = {"jwks": JWKS, "fhir_servers": [FHIR], **(issuer or {})}
    return CheckedClient(
        create_app(
            {
                "NOW": lambda: NOW,
                "LOG_LEVEL": "WARNING",
                "FEEDBACK_DB_URL": "sqlite://",
                "TRUSTED_ISSUERS": {ISS: conf},
                "PUBLIC_BASE_URL": BASE,
                "REPLAY_STORE_URL": "sqlite://",
                **settings,
            }
        )
    )


def call(client: CheckedClient, bearer: str | None, body=None, path=PV):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.hook(path, body or load_request("single-low-in"), headers=headers)


def assert_401(response) -> None:
    assert response.status_code == 401
    assert response.get_json()["issue"][0]["diagnostics"] == "authentication failed"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_auth_is_on_by_default():
    client = CheckedClient(
        create_app({"FEEDBACK_DB_URL": "sqlite://", "LOG_LEVEL": "WARNING", "PUBLIC_BASE_URL": BASE})
    )
    assert_401(call(client, None))


def test_auth_off_logs_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    create_app({"AUTH": "off", "FEEDBACK_DB_URL": "sqlite://"})
    assert "JWT verification is OFF" in caplog.text


@pytest.mark.parametrize(("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1")])
def test_valid_tokens_are_accepted(key, alg, kid):
    response = call(secured(), token(key, alg, kid))
    assert response.status_code == 200 and response.get_json()["cards"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_authorization_scheme_is_case_insensitive(scheme):
    """RFC 7235 section 2.1: the scheme is a case-insensitive token."""
    client = secured()
    response = client.hook(PV, load_request("single-low-in"), headers={"Authorization": f"{scheme} {token()}"})
    assert response.status_code == 200


def test_the_logged_reason_of_a_refusal_is_short_and_printable(caplog):
    """The reason names what the caller sent (an algorithm, say), which the caller chooses: at most ~100 printable
    characters of it reach the log."""
    import base64

    caplog.set_level(logging.INFO, logger="service.access")
    alg = "SECRET-" + "x" * 5000 + "\\n\\u2028\\u0000"  # JSON escapes: a newline, a line separator, a NUL
    header = base64.urlsafe_b64encode(f'{{"alg":"{alg}","kid":"k"}}'.encode()).rstrip(b"=").decode()
    assert_401(call(secured(), f"{header}.e30.AAAA"))
    [line] = [json.loads(r.getMessage()) for r in caplog.records if "auth_failed" in r.getMessage()]
    assert "algorithm" in line["reason"] and len(line["reason"]) <= 120
    assert line["reason"].isprintable() and line["reason"].isascii()


def test_missing_or_non_bearer_token():
    client = secured()
    assert_401(call(client, None))
    response = client.hook(PV, load_request("single-low-in"), headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_401(response)


def test_alg_none_hmac_and_other_curves_are_rejected():
    client = secured()
    unsigned = jwt.encode(
        {"iss": ISS, "aud": URL, "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "x"},
        None,
        algorithm="none",
        headers={"kid": "ec-1"},
    )
    assert_401(call(client, unsigned))
    public_pem = jwk(RSA_KEY, "rsa-1", "RS384")["n"].encode()
    assert_401(call(client, token(public_pem, "HS384", "rsa-1")))
    assert_401(call(client, token(ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1")))


def test_kid_is_required_and_must_be_known():
    client = secured()
    assert_401(call(client, token(kid=None)))
    assert_401(call(client, token(kid="nope")))
    assert_401(call(client, token(key=OTHER_EC_KEY)))  # right kid, wrong key: bad signature


def test_untrusted_issuer():
    assert_401(call(secured(), token(iss="https://stranger.example.org")))


def test_audience_must_be_the_url_called():
    client = secured()
    assert_401(call(client, token(aud="https://other.example.org/cds-services/low-alp-workup")))
    assert_401(call(client, token(aud=f"{BASE}/cds-services")))
    behind_proxy = secured(PUBLIC_BASE_URL="https://cds.example.org/")
    assert call(behind_proxy, token(aud=f"https://cds.example.org/cds-services/{PV}")).status_code == 200
    assert_401(call(behind_proxy, token()))


def test_host_header_does_not_choose_the_audience():
    """A token minted for another service must not be accepted by sending that service's Host header."""
    forged = token(aud=f"https://other-service.example.org/cds-services/{PV}")
    response = secured().client.post(
        f"/cds-services/{PV}",
        json=load_request("single-low-in"),
        headers={"Authorization": f"Bearer {forged}", "X-Forwarded-Proto": "https"},
        base_url="https://other-service.example.org",  # what the server makes of Host and X-Forwarded-Proto
    )
    assert_401(response)


def test_auth_on_refuses_to_start_without_a_public_base_url():
    conf = {"FEEDBACK_DB_URL": "sqlite://", "TRUSTED_ISSUERS": {ISS: {"jwks": JWKS}}}
    with pytest.raises(SettingsError, match="CDS_PUBLIC_BASE_URL"):
        create_app(conf)
    assert create_app({**conf, "AUTH": "off"})  # local development needs no URL


def test_expiry_and_issued_at_with_leeway():
    client = secured()
    now = int(time.time())
    assert_401(call(client, token(iat=now - 400, exp=now - 120)))
    assert call(client, token(iat=now - 300, exp=now - 30)).status_code == 200  # within the 60 s leeway
    assert call(client, token(iat=now + 1)).status_code == 200  # the sandbox rounds iat to the second
    assert call(client, token(iat=now + 30, exp=now + 330)).status_code == 200  # a client clock 30 s fast
    assert_401(call(client, token(iat=now + 120, exp=now + 420)))
    assert_401(call(client, token(exp=None)))


def test_a_token_is_remembered_as_long_as_the_leeway_lets_it_be_accepted():
    """The replay window stays closed with the wider leeway: a token is accepted until exp plus the leeway, and its
    jti is kept until then, so it is never accepted twice."""
    client = secured()
    now = int(time.time())
    used = token(iat=now - 300, exp=now - 50)  # expired 50 s ago: accepted within the 60 s leeway
    assert call(client, used).status_code == 200
    assert_401(call(client, used))  # replayed
    store = client.app.extensions["cds_authenticator"].replays
    with store.engine.connect() as connection:
        (kept_until,) = connection.exec_driver_sql("SELECT expires_at FROM seen_tokens").one()
    assert kept_until == now - 50 + 60


def test_tenant_checked_when_configured():
    client = secured({"tenant": "hospital-a"})
    assert call(client, token(tenant="hospital-a")).status_code == 200
    assert_401(call(client, token(tenant="hospital-b")))
    assert_401(call(client, token()))


def test_replayed_jti_is_rejected():
    client = secured()
    reused = token()
    assert call(client, reused).status_code == 200
    assert_401(call(client, reused))
    assert_401(call(client, token(jti=None)))


def test_a_token_is_accepted_once_by_all_instances_sharing_the_replay_store(tmp_path):
    """Two app instances (as two gunicorn workers or two replicas on one machine) share one replay store."""
    store = f"sqlite:///{tmp_path}/replay.db"
    first, second = secured(REPLAY_STORE_URL=store), secured(REPLAY_STORE_URL=store)
    reused = token()
    assert call(first, reused).status_code == 200
    assert_401(call(second, reused))
    assert_401(call(first, reused))


def test_concurrent_replays_across_instances_are_accepted_once_in_total(tmp_path):
    store = f"sqlite:///{tmp_path}/replay.db"
    apps = [secured(REPLAY_STORE_URL=store) for _ in range(2)]
    reused = token()
    barrier = threading.Barrier(8)

    def attempt(i: int) -> int:
        barrier.wait()
        return call(apps[i % 2], reused).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(attempt, range(8)))
    assert sorted(statuses) == [200] + [401] * 7


def test_token_lifetime_is_capped():
    client = secured(JWT_MAX_LIFETIME=600)
    now = int(time.time())
    assert call(client, token(iat=now, exp=now + 600)).status_code == 200
    assert_401(call(client, token(iat=now, exp=now + 601)))
    assert_401(call(client, token(iat=now - 86_400 * 365, exp=now + 86_400 * 365)))


def test_replay_store_forgets_expired_tokens(tmp_path):
    from service.replay import open_replay_store

    store = open_replay_store(f"sqlite:///{tmp_path}/replay.db")
    now = time.time()
    assert store.first_use("iss|old", now - 60)
    assert store.first_use("iss|new", now + 60)
    assert not store.first_use("iss|new", now + 60)
    assert store.size() == 1  # the expired entry was removed: the store stays bounded by the token lifetime


def test_replay_store_down_fails_closed_with_503(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    client = secured(REPLAY_STORE_URL=f"sqlite:///{blocker}/replay.db")
    response = call(client, token())
    assert response.status_code == 503
    assert "replay" in response.get_json()["issue"][0]["diagnostics"]


def test_jku_outside_the_allow_list_is_rejected_and_never_fetched():
    client = secured({"jku": ["https://ehr.example.org/jwks.json"]})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, "https://evil.example.com/jwks.json", json=JWKS)
        assert_401(call(client, token(headers={"jku": "https://evil.example.com/jwks.json"})))
        assert len(rsps.calls) == 0


def test_allow_listed_jku_is_fetched():
    client = secured({"jwks": None, "jku": ["https://ehr.example.org/jwks.json"]})
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "https://ehr.example.org/jwks.json", json=JWKS)
        assert call(client, token(headers={"jku": "https://ehr.example.org/jwks.json"})).status_code == 200


def test_jwks_url_is_cached_and_refreshed_on_unknown_kid(monkeypatch):
    from service import security

    client = secured({"jwks": None, "jwks_url": "https://ehr.example.org/.well-known/jwks.json"})
    rotated = {"keys": [*JWKS["keys"], jwk(OTHER_EC_KEY, "ec-2", "ES384")]}
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "https://ehr.example.org/.well-known/jwks.json", json=JWKS)
        rsps.add(responses.GET, "https://ehr.example.org/.well-known/jwks.json", json=rotated)
        assert call(client, token()).status_code == 200
        assert call(client, token()).status_code == 200
        assert len(rsps.calls) == 1  # cached
        monkeypatch.setattr(security, "JWKS_REFRESH_SECONDS", 0)
        assert call(client, token(key=OTHER_EC_KEY, kid="ec-2")).status_code == 200
        assert len(rsps.calls) == 2  # refreshed for the new kid


def test_jwks_url_redirect_is_not_followed():
    """An attacker who can make the issuer's JWKS URL redirect must not get its own keys trusted."""
    client = secured({"jwks": None, "jwks_url": "https://ehr.example.org/.well-known/jwks.json"})
    attacker = {"keys": [jwk(OTHER_EC_KEY, "evil-1", "ES384")]}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(
            responses.GET,
            "https://ehr.example.org/.well-known/jwks.json",
            status=302,
            headers={"Location": "https://evil.example.com/jwks.json"},
        )
        rsps.add(responses.GET, "https://evil.example.com/jwks.json", json=attacker)
        assert_401(call(client, token(key=OTHER_EC_KEY, kid="evil-1")))
        assert [c.request.url for c in rsps.calls] == ["https://ehr.example.org/.well-known/jwks.json"]


def test_discovery_open_by_default_and_closable():
    assert secured().client.get("/cds-services").status_code == 200
    closed = secured(DISCOVERY_AUTH=True)
    assert_401(closed.client.get("/cds-services"))
    ok = closed.client.get("/cds-services", headers={"Authorization": f"Bearer {token(aud=f'{BASE}/cds-services')}"})
    assert ok.status_code == 200


def test_feedback_needs_a_token():
    client = secured()
    body = {
        "feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-06-01T10:00:00Z"}]
    }
    assert_401(client.client.post(f"/cds-services/{PV}/feedback", json=body))
    good = client.client.post(
        f"/cds-services/{PV}/feedback", json=body, headers={"Authorization": f"Bearer {token(aud=f'{URL}/feedback')}"}
    )
    assert good.status_code == 200


# ------------------------------------------------------------------------------------------------ SSRF guard


def _with_server(server: str) -> dict:
    body = load_request("single-low-in")
    body["prefetch"].pop("alp")
    body["fhirServer"] = server
    body["fhirAuthorization"] = fhir_authorization("secret-ehr-token")
    return body


def test_fhir_server_outside_the_issuers_allow_list_gets_403_and_no_request():
    client = secured()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, "http://169.254.169.254/latest/Observation", json={})
        response = call(client, token(), _with_server("http://169.254.169.254/latest"))
        assert response.status_code == 403 and len(rsps.calls) == 0


def test_a_complete_prefetch_is_answered_whatever_fhir_server_it_names():
    """Nothing is fetched, so the access token goes nowhere: the CDS Hooks Sandbox always sends a fhirServer."""
    client = secured()
    full = load_request("single-low-in")
    full["fhirServer"] = "http://internal.example:8080/fhir"
    full["fhirAuthorization"] = fhir_authorization("secret-ehr-token")
    with responses.RequestsMock() as rsps:  # any request would fail this test
        response = call(client, token(), full)
        assert response.status_code == 200 and len(rsps.calls) == 0
    assert response.get_json()["cards"]
    missing = load_request("single-low-in")
    missing["fhirServer"] = "http://internal.example:8080/fhir"
    del missing["prefetch"]["labs"]  # now a fetch would go there: refused before it is sent
    with responses.RequestsMock() as rsps:
        assert call(client, token(), missing).status_code == 403 and len(rsps.calls) == 0


def test_allow_listed_fhir_server_is_used():
    client = secured()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{FHIR}/Observation", json={"resourceType": "Bundle", "type": "searchset"})
        response = call(client, token(), _with_server(FHIR + "/"))
        assert response.status_code == 200
        assert rsps.calls[0].request.headers["Authorization"] == "Bearer secret-ehr-token"


def test_fhir_servers_setting_applies_when_auth_is_off():
    client = CheckedClient(
        create_app(
            {
                "NOW": lambda: NOW,
                "AUTH": "off",
                "FEEDBACK_DB_URL": "sqlite://",
                "FHIR_SERVERS": "https://ehr.example.org/fhir",
            }
        )
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        assert call(client, None, _with_server("http://127.0.0.1:9/fhir")).status_code == 403
        assert len(rsps.calls) == 0


# ------------------------------------------------------------------------------------------------ CORS


@pytest.mark.parametrize("path", ["/cds-services", f"/cds-services/{PV}", f"/cds-services/{PV}/feedback"])
def test_cors_preflight_on_every_cds_endpoint(path):
    client = secured(CORS_ORIGINS="https://sandbox.cds-hooks.org")
    response = client.client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_refuses_other_origins_and_is_off_by_default():
    client = secured(CORS_ORIGINS=["https://sandbox.cds-hooks.org"])
    response = client.client.options("/cds-services", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers
    default = secured()
    response = default.client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_refused_origin_is_logged_once_and_the_log_cannot_be_flooded(caplog, monkeypatch):
    from service.endpoints import access

    monkeypatch.setattr(access, "_refused_logged", set())
    client = secured(CORS_ORIGINS=["https://sandbox.cds-hooks.org"])
    with caplog.at_level("WARNING", logger="service.access"):
        for _ in range(3):
            client.client.options("/cds-services", headers={"Origin": "http://127.0.0.1:3000"})
        client.client.options("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
        for n in range(access.REFUSED_ORIGINS_LOGGED + 50):
            client.client.get("/cds-services", headers={"Origin": f"https://x{n}.example"})
    refused = [r.getMessage() for r in caplog.records if "cors_origin_refused" in r.getMessage()]
    assert sum('"origin": "http://127.0.0.1:3000"' in line for line in refused) == 1
    assert not [line for line in refused if "sandbox.cds-hooks.org" in line]
    assert len(refused) == access.REFUSED_ORIGINS_LOGGED


def test_cors_headers_on_actual_responses():
    client = secured(CORS_ORIGINS="*")
    response = call(client, token())
    assert response.status_code == 200
    response = client.client.get("/cds-services", headers={"Origin": "https://x.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# ------------------------------------------------------------------------------------------ odd but signed


def signed_raw(payload: str, header: str | None = None) -> str:
    """A token signed over this exact JSON text (json.dumps cannot write a lone surrogate escape or Infinity)."""
    import base64

    def b64(text: str) -> bytes:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=")

    signing_input = b64(header or '{"alg":"ES384","kid":"ec-1","typ":"JWT"}') + b"." + b64(payload)
    signature = jwt.get_algorithm_by_name("ES384").sign(signing_input, EC_KEY)
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def _claims(**replaced: str) -> str:
    now = int(time.time())
    claims = {
        "iss": json.dumps(ISS),
        "aud": json.dumps(URL),
        "iat": str(now),
        "exp": str(now + 300),
        "jti": json.dumps(str(uuid.uuid4())),
        **replaced,
    }
    return "{" + ",".join(f'"{k}":{v}' for k, v in claims.items()) + "}"


def test_signed_raw_makes_tokens_that_are_accepted():
    assert call(secured(), signed_raw(_claims())).status_code == 200


ODD_CLAIMS = {  # NOW is replaced by the time of the call
    "iat as a numeric string": {"iat": '"NOW"'},
    "exp as a numeric string": {"exp": '"NOW"'},
    "nbf as a numeric string": {"nbf": '"NOW"'},
    "iat as text": {"iat": '"yesterday"'},
    "iat true": {"iat": "true"},
    "exp a list": {"exp": "[1]"},
    "exp an object": {"exp": "{}"},
    "exp Infinity": {"exp": "Infinity"},
    "iat -Infinity": {"iat": "-Infinity"},
    "nbf Infinity": {"nbf": "Infinity"},
    "iat NaN": {"iat": "NaN"},
    "exp 1e308": {"exp": "1e308"},
    "iat -1e308": {"iat": "-1e308"},
    "exp 400 digits": {"exp": "1" + "0" * 400},
    "jti a lone surrogate": {"jti": '"\\ud800"'},
    "jti a number": {"jti": "5"},
    "jti a list": {"jti": '["a"]'},
    "jti empty": {"jti": '""'},
    "jti an object": {"jti": '{"a":1}'},
    "aud a number": {"aud": "5"},
    "aud a list of numbers": {"aud": "[5]"},
    "iss with a lone surrogate": {"iss": '"\\ud800"'},
}


@pytest.mark.parametrize("case", list(ODD_CLAIMS))
def test_oddly_typed_claims_in_validly_signed_tokens_are_refused_with_401(case):
    now = str(int(time.time()))
    odd = {name: value.replace("NOW", now) for name, value in ODD_CLAIMS[case].items()}
    assert_401(call(secured(), signed_raw(_claims(**odd))))


@pytest.mark.parametrize(
    "header",
    [
        '{"alg":"ES384","kid":"\\ud800"}',
        '{"alg":"ES384","kid":5}',
        '{"alg":"ES384","kid":"ec-1","jku":5}',
        '{"alg":"ES384","kid":"ec-1","jku":"\\ud800"}',
        '{"alg":["ES384"],"kid":"ec-1"}',
    ],
)
def test_oddly_typed_headers_are_refused_with_401(header):
    client = secured({"jku": ["https://ehr.example.org/jwks.json"]})
    assert_401(call(client, signed_raw(_claims(), header)))


def test_an_inline_key_set_of_the_wrong_shape_stops_the_start():
    with pytest.raises(SettingsError, match="JWK Set"):
        secured({"jwks": {"keys": 5}})


def test_tenant_of_another_type_is_refused():
    client = secured({"tenant": "hospital-a"})
    for tenant in ('["hospital-a"]', "5", '"\\ud800"'):
        assert_401(call(client, signed_raw(_claims(tenant=tenant))))


# ------------------------------------------------------------------------------------------ JWKS answers

JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"


@pytest.mark.parametrize(
    "answer",
    [
        b"5",
        b"null",
        b'"ab"',
        b"[]",
        b'{"keys": 5}',
        b'{"keys": [5]}',
        b'{"keys": [{"kty": 5}]}',
        b'{"keys": []}',
        b'{"keys": [{"kty":"EC","crv":"P-384","x":"!","y":"!","kid":"ec-1"}]}',
        b'{"keys": [{"kty":"RSA","n":5,"e":"AQAB","kid":"ec-1"}]}',
        b"[" * 1000 + b"]" * 1000,
        b"[" * 2000 + b"]" * 2000,
        b"\xff\xfe not json",
    ],
)
def test_a_malformed_key_set_refuses_the_token_never_a_500(answer):
    client = secured({"jwks": None, "jwks_url": JWKS_URL})
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, body=answer, content_type="application/json")
        assert_401(call(client, token()))


def test_a_key_set_with_one_bad_key_still_gives_the_good_ones():
    client = secured({"jwks": None, "jwks_url": JWKS_URL})
    mixed = {"keys": [{"kty": "EC", "crv": "P-384", "x": "!", "y": "!", "kid": "bad"}, 5, *JWKS["keys"]]}
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, json=mixed)
        assert call(client, token()).status_code == 200


# ------------------------------------------------------------------------------------------ JWKS refetching

OTHER_ISS = "https://other-ehr.example.org"


def forged(aud: str = URL) -> str:
    """The right iss and a kid, signed with the attacker's own key: costs the attacker nothing."""
    return token(key=OTHER_EC_KEY, kid="attacker-kid", aud=aud)


def test_a_failing_jwks_url_is_not_fetched_again_for_every_forged_token():
    client = secured({"jwks": None, "jwks_url": JWKS_URL})
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, JWKS_URL, status=500)
        for _ in range(20):
            assert_401(call(client, forged()))
        assert len(rsps.calls) == 1  # the refetch floor (30 s) applies after a failure too


def test_a_hanging_jwks_url_holds_one_fetch_and_few_callers_and_never_other_issuers(peer):
    """While the issuer's key endpoint hangs, forged tokens naming that issuer do not each start a fetch and wait
    its 5 s: one call fetches, a few wait for it, the others are refused at once, and calls of another issuer are
    answered as usual."""
    release = threading.Event()
    peer.routes["/jwks"] = lambda h: release.wait(8)
    app = create_app(
        {
            "NOW": lambda: NOW,
            "LOG_LEVEL": "WARNING",
            "FEEDBACK_DB_URL": "sqlite://",
            "PUBLIC_BASE_URL": BASE,
            "REPLAY_STORE_URL": "sqlite://",
            "TRUSTED_ISSUERS": {ISS: {"jwks_url": peer.base + "/jwks"}, OTHER_ISS: {"jwks": JWKS}},
        }
    )
    client = CheckedClient(app)

    def timed(bearer: str) -> tuple[int, float]:
        started = time.monotonic()
        status = call(CheckedClient(app), bearer).status_code
        return status, time.monotonic() - started

    try:
        with ThreadPoolExecutor(12) as pool:
            attacks = [pool.submit(timed, forged()) for _ in range(12)]
            time.sleep(0.5)
            others = [timed(token(iss=OTHER_ISS)) for _ in range(3)]
            results = [a.result() for a in attacks]
        assert [status for status, _ in others] == [200, 200, 200]
        assert all(seconds < 2 for _, seconds in others)
        assert all(status == 401 for status, _ in results)
        slow = [seconds for _, seconds in results if seconds > 2]
        assert 1 <= len(slow) <= 1 + security.JWKS_MAX_WAITERS  # the fetch (5 s) and those waiting for it
        assert len(peer.hits) == 1
        started = time.monotonic()
        assert_401(call(client, forged()))  # after the failure: refused at once, nothing fetched
        assert time.monotonic() - started < 1 and len(peer.hits) == 1
    finally:
        release.set()


# ------------------------------------------------------------------------------------------ a locked replay store


def test_a_locked_replay_store_answers_503_quickly_and_does_not_serialise_the_calls(tmp_path):
    """Another process holds the replay store's write lock (a backup, a stuck worker): every call that needs it gets
    a 503 after a short wait, side by side, not one after another."""
    import sqlite3

    client = secured(REPLAY_STORE_URL=f"sqlite:///{tmp_path}/replay.db")
    assert call(client, token()).status_code == 200  # the file and its table exist
    holder = sqlite3.connect(tmp_path / "replay.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()

        def one(_):
            response = call(CheckedClient(client.app), token())
            return response.status_code, time.monotonic() - started

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        assert [status for status, _ in results] == [503] * 6
        assert max(seconds for _, seconds in results) < 3
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert call(client, token()).status_code == 200


def test_many_calls_at_once_share_the_replay_store_without_spurious_refusals(tmp_path):
    apps = [secured(REPLAY_STORE_URL=f"sqlite:///{tmp_path}/replay.db") for _ in range(2)]
    barrier = threading.Barrier(16)

    def attempt(i: int) -> int:
        bearer = token()
        barrier.wait()
        return call(CheckedClient(apps[i % 2].app), bearer).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(attempt, range(16))) == [200] * 16


# ------------------------------------------------------------------ the clients hospitals use (issue: real clients)

SANDBOX = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


def shipped_sandbox_issuers() -> Mapping[str, Mapping[str, Any]]:
    from service.settings import load_settings
    from tests.conftest import ROOT

    return load_settings({"TRUSTED_ISSUERS": str(ROOT / "deploy" / "sandbox-issuers.yaml")}, environ={}).TRUSTED_ISSUERS


def sandbox_token(key, audience: str) -> str:
    """As the CDS Hooks Sandbox signs (its src/retrieve-data-helpers/jwt-generator.js): ES384, its kid and jku,
    aud = the URL called, iat and exp rounded seconds, exp 300 s on, a uuid jti, no sub."""
    now = time.time()
    payload = {"iss": SANDBOX, "aud": audience, "exp": round(now + 300), "iat": round(now), "jti": str(uuid.uuid4())}
    return jwt.encode(payload, key, algorithm="ES384", headers={"typ": "JWT", "kid": SANDBOX_KID, "jku": SANDBOX_JKU})


def test_the_shipped_sandbox_file_trusts_a_sandbox_token_offline():
    """The shipped file, with the Sandbox's key pair replaced by a test pair (the Sandbox's private key is not kept
    here; the real one was checked by hand): a Sandbox-shaped token passes, and nothing is fetched."""
    issuers = shipped_sandbox_issuers()
    sandbox = issuers[SANDBOX]
    assert sandbox["jku"] == (SANDBOX_JKU,)
    (published,) = sandbox["jwks"]["keys"]
    assert (published["kid"], published["crv"], published["alg"]) == (SANDBOX_KID, "P-384", "ES384")
    jwt.PyJWK(dict(published))  # a usable public key (read-only in the settings: KeyStore copies it so too)
    test_key = ec.generate_private_key(ec.SECP384R1())
    sandbox = {**sandbox, "jwks": {"keys": [jwk(test_key, SANDBOX_KID, "ES384")]}}
    client = CheckedClient(
        create_app(
            {
                "NOW": lambda: NOW,
                "LOG_LEVEL": "WARNING",
                "FEEDBACK_DB_URL": "sqlite://",
                "TRUSTED_ISSUERS": {SANDBOX: sandbox},
                "PUBLIC_BASE_URL": BASE,
                "REPLAY_STORE_URL": "sqlite://",
            }
        )
    )
    body = load_request("single-low-in")
    body["fhirServer"] = "https://launch.smarthealthit.org/v/r4/fhir"  # the Sandbox always sends one
    with responses.RequestsMock() as rsps:  # no JWKS fetch, no FHIR request
        response = call(client, sandbox_token(test_key, URL), body)
        assert response.status_code == 200 and len(rsps.calls) == 0
    assert_401(call(client, sandbox_token(OTHER_EC_KEY, URL), body))  # someone else's key with the Sandbox's kid


def test_inline_keys_are_used_before_an_allow_listed_jku_is_fetched():
    client = secured({"jku": ["https://ehr.example.org/jwks.json"]})  # inline JWKS holds ec-1
    with responses.RequestsMock() as rsps:  # the jku URL is never asked: no network needed
        response = call(client, token(headers={"jku": "https://ehr.example.org/jwks.json"}))
        assert response.status_code == 200 and len(rsps.calls) == 0


def test_an_unknown_kid_is_fetched_from_the_allow_listed_jku():
    rotated_key = ec.generate_private_key(ec.SECP384R1())
    client = secured({"jku": ["https://ehr.example.org/jwks.json"]})
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "https://ehr.example.org/jwks.json", json={"keys": [jwk(rotated_key, "ec-2", "ES384")]})
        response = call(client, token(rotated_key, kid="ec-2", headers={"jku": "https://ehr.example.org/jwks.json"}))
        assert response.status_code == 200 and len(rsps.calls) == 1


EPIC_ISS = "https://fhir.hospital.example/interconnect-fhir-oauth/api/FHIR/R4"
EPIC_JKU = "https://fhir.hospital.example/interconnect-fhir-oauth/api/epic/2019/Security/Open/PublicKeys/jwks"


def epic_token(nbf_offset: int = -300, **claims) -> str:
    """Epic-style: RS384, a jku under the issuer's own base, sub = the client id, nbf 5 minutes before iat."""
    now = int(time.time())
    payload = {
        "iss": EPIC_ISS,
        "sub": "d45049c3-3441-40ef-ab4d-b9cd86a17225",
        "aud": URL,
        "iat": now,
        "nbf": now + nbf_offset,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return jwt.encode(payload, RSA_KEY, algorithm="RS384", headers={"kid": "rsa-1", "jku": EPIC_JKU})


def epic_client() -> CheckedClient:
    return CheckedClient(
        create_app(
            {
                "NOW": lambda: NOW,
                "LOG_LEVEL": "WARNING",
                "FEEDBACK_DB_URL": "sqlite://",
                "TRUSTED_ISSUERS": {EPIC_ISS: {"jku": [EPIC_JKU], "jwks": JWKS, "fhir_servers": [EPIC_ISS]}},
                "PUBLIC_BASE_URL": BASE,
                "REPLAY_STORE_URL": "sqlite://",
            }
        )
    )


def test_an_epic_style_token_is_accepted():
    client = epic_client()
    with responses.RequestsMock() as rsps:
        assert call(client, epic_token()).status_code == 200 and len(rsps.calls) == 0


def test_an_epic_style_token_not_yet_valid_is_refused():
    assert_401(call(epic_client(), epic_token(nbf_offset=120)))  # nbf beyond the leeway
    assert call(epic_client(), epic_token(nbf_offset=3)).status_code == 200  # within CDS_JWT_LEEWAY


def test_a_discovery_url_with_a_trailing_slash_is_answered_with_its_service_urls():
    """The Sandbox given ``.../cds-services/`` sent its preflight there (a 404, which the browser reported as a CORS
    error), then calls each service at that URL + "/" + id and signs the token for that URL."""
    origin = "https://sandbox.cds-hooks.org"
    client = secured(CORS_ORIGINS=[origin])
    preflight = client.client.options(
        "/cds-services/",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == origin
    assert client.client.get("/cds-services/").get_json() == client.client.get("/cds-services").get_json()
    doubled = f"/cds-services//{PV}"
    body = load_request("single-low-in")
    response = client.client.post(doubled, json=body, headers={"Authorization": f"Bearer {token(aud=BASE + doubled)}"})
    assert response.status_code == 200 and response.get_json()["cards"]
    assert_401(client.client.post(doubled, json=body, headers={"Authorization": f"Bearer {token()}"}))  # aud: URL


def test_the_audience_refusal_logs_what_was_expected(caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    assert_401(call(secured(), token(aud="http://127.0.0.1:8080/cds-services/" + PV)))
    [line] = [json.loads(r.getMessage()) for r in caplog.records if "auth_failed" in r.getMessage()]
    assert line["reason"] == "invalid token: InvalidAudienceError"
    assert line["expected_aud"] == URL and line["token_aud"] == "http://127.0.0.1:8080/cds-services/" + PV

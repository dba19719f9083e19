"""Token checks at their edges (service/security.py), called directly (no HTTP): which check refuses a token, the
leeway on iat/exp, the lifetime, the replay window, the algorithms, issuers' key caches and the JWKS refetch
limit. The service's own clock is replaced where an edge is tested (PyJWT keeps the real one)."""

from __future__ import annotations

import json
import threading
import time
import types
import uuid
from dataclasses import replace

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service import outbound, security
from service.errors import BadRequest
from service.security import (
    JWKS_MAX_WAITERS,
    JWKS_REFRESH_SECONDS,
    Authenticator,
    Forbidden,
    KeyStore,
    Unauthorized,
    check_fhir_server,
    check_fhir_server_url,
    claim_type_problem,
    loggable,
)
from service.settings import Settings

ISS = "https://ehr.example.org"
OTHER_ISS = "https://other.example.org"
BASE = "https://cds.example.org"
AUD = BASE + "/cds-services/low-alp-workup"
LEEWAY = 5
LIFETIME = 600

EC_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())
P256_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key, kid: str, alg: str) -> dict:
    algorithm = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [jwk(EC_KEY, "ec-1", "ES384"), jwk(RSA_KEY, "rsa-1", "RS384"), jwk(P256_KEY, "p256", "ES256")]}


def issuer(**conf) -> dict:
    return {"jwks": JWKS, "jwks_url": None, "jku": [], "fhir_servers": [], "tenant": None, **conf}


def authenticator(issuers=None, fail_open=False) -> Authenticator:
    return Authenticator(
        Settings(
            TRUSTED_ISSUERS=issuers if issuers is not None else {ISS: issuer()},
            JWT_LEEWAY=LEEWAY,
            JWT_MAX_LIFETIME=LIFETIME,
            PUBLIC_BASE_URL=BASE,
            REPLAY_STORE_URL="sqlite://",
            REDIS_URL="",
            REDIS_TIMEOUT=1.0,
            REPLAY_FAIL_OPEN=fail_open,
        )
    )


def token(key=EC_KEY, alg="ES384", kid="ec-1", headers=None, now=None, **claims) -> str:
    now = int(time.time()) if now is None else now
    body = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
    body = {k: v for k, v in body.items() if v is not None}
    head = {**({"kid": kid} if kid else {}), **(headers or {})}
    return jwt.encode(body, key, algorithm=alg, headers=head)


def reason(auth: Authenticator, bearer: str | None, audience: str = AUD) -> str | None:
    """Why the token is refused (the logged reason), or None when it is accepted."""
    try:
        auth.verify(bearer, audience)
    except Unauthorized as exc:
        return exc.reason
    return None


# ----------------------------------------------------------------------------------------------- which check


def _unsigned(header: dict, claims: dict) -> str:
    def part(data):
        return jwt.utils.base64url_encode(json.dumps(data).encode()).decode()

    return f"{part(header)}.{part(claims)}.AAAA"


@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (None, "no bearer token"),
        ("", "no bearer token"),
        ("Basic abc", "no bearer token"),
        ("Bearer", "no bearer token"),
        ("Bearer    ", "no bearer token"),
        ("Bearer not-a-jwt", "malformed token"),
    ],
)
def test_which_check_no_bearer_token_or_a_malformed_one(authorization, why):
    assert reason(authenticator(), authorization) == why


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"iat": "1700000000"}, "iat is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"nbf": None}, "nbf is not a number"),
        ({"jti": ""}, "jti is not a non-empty string"),
        ({"jti": 5}, "jti is not a non-empty string"),
    ],
)
def test_which_check_claims_of_the_wrong_type(claims, why):
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": "j", **claims}
    assert reason(authenticator(), "Bearer " + _unsigned({"alg": "ES384", "kid": "ec-1"}, body)) == why


def test_claim_types_finite_numbers_and_an_encodable_jti():
    assert claim_type_problem({"iat": 1.5, "exp": 2, "nbf": 0, "jti": "x"}) is None
    assert claim_type_problem({}) is None
    assert claim_type_problem({"iat": float("inf")}) == "iat is not a finite number"
    assert claim_type_problem({"exp": float("nan")}) == "exp is not a finite number"
    assert claim_type_problem({"nbf": float("-inf")}) == "nbf is not a finite number"
    assert claim_type_problem({"jti": "\ud800"}) == "jti is not a non-empty string"
    assert claim_type_problem({"jti": None}) == "jti is not a non-empty string"
    assert claim_type_problem({"iat": 1, "exp": "2"}) == "exp is not a number"


@pytest.mark.parametrize(
    ("key", "alg", "kid", "why"),
    [
        (EC_KEY, "ES384", "ec-1", None),
        (RSA_KEY, "RS384", "rsa-1", None),
        (P256_KEY, "ES256", "p256", "algorithm 'ES256' not allowed"),
        (RSA_KEY, "RS256", "rsa-1", "algorithm 'RS256' not allowed"),
        ("a-shared-secret-of-enough-length-for-hs384-48-bytes!!", "HS384", "ec-1", "algorithm 'HS384' not allowed"),
    ],
)
def test_which_check_only_es384_and_rs384_are_accepted(key, alg, kid, why):
    assert reason(authenticator(), "Bearer " + token(key, alg, kid)) == why


def test_which_check_none_algorithm_and_a_missing_kid():
    now = int(time.time())
    body = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": "j"}
    assert reason(authenticator(), "Bearer " + _unsigned({"alg": "none", "kid": "ec-1"}, body)) == (
        "algorithm 'none' not allowed"
    )
    assert reason(authenticator(), "Bearer " + token(kid=None)) == "no kid"
    assert reason(authenticator(), "Bearer " + token(headers={"kid": ""})) == "no kid"
    assert reason(authenticator(), "Bearer " + _unsigned({"alg": "ES384", "kid": 7}, body)) == "malformed token"


@pytest.mark.parametrize("iss", [123, ["https://ehr.example.org"], {"a": 1}, None, "https://unknown.example"])
def test_which_check_an_issuer_that_is_not_a_trusted_string_is_untrusted_not_an_error(iss):
    now = int(time.time())
    body = {"iss": iss, "aud": AUD, "iat": now, "exp": now + 300, "jti": "j"}
    assert reason(authenticator(), "Bearer " + _unsigned({"alg": "ES384", "kid": "ec-1"}, body)) == "untrusted issuer"


def test_which_check_unknown_key_wrong_signature_audience_and_expiry():
    auth = authenticator()
    assert reason(auth, "Bearer " + token(kid="nope")) == "unknown key"
    assert reason(auth, "Bearer " + token(key=OTHER_EC_KEY)) == "invalid token: InvalidSignatureError"
    assert reason(auth, "Bearer " + token(aud=BASE + "/other")) == "invalid token: InvalidAudienceError"
    assert reason(auth, "Bearer " + token(), audience=BASE + "/other") == "invalid token: InvalidAudienceError"
    assert reason(auth, "Bearer " + token(jti=None)) == "invalid token: MissingRequiredClaimError"
    assert reason(auth, "  bearer   " + token() + "  ") is None


def test_audience_is_the_public_base_plus_the_path():
    assert authenticator().audience("/cds-services/x") == BASE + "/cds-services/x"


# ----------------------------------------------------------------------------------------------- time


class Clock:
    """The service's clock (``security.time``), set apart from the real one that PyJWT reads."""

    def __init__(self, now: float, monotonic: float = 1000.0) -> None:
        self.now, self.mono = now, monotonic

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock(float(int(time.time()) - 100))  # a whole second, as token times are
    monkeypatch.setattr(security, "time", types.SimpleNamespace(time=fake.time, monotonic=fake.monotonic))
    return fake


@pytest.mark.parametrize(("ahead", "why"), [(LEEWAY, None), (LEEWAY + 1, "issued in the future")])
def test_iat_may_be_at_most_the_leeway_ahead_of_the_services_clock(clock, ahead, why):
    iat = int(clock.now) + ahead
    assert reason(authenticator(), "Bearer " + token(now=iat)) == why


@pytest.mark.parametrize(
    ("exp_after_now", "why"),
    [(-(LEEWAY - 2), None), (-(LEEWAY + 2), "invalid token: ExpiredSignatureError")],
)
def test_exp_is_checked_with_the_leeway(exp_after_now, why):
    now = int(time.time())
    assert reason(authenticator(), "Bearer " + token(now=now - 60, exp=now + exp_after_now)) == why


@pytest.mark.parametrize(
    ("lifetime", "why"), [(LIFETIME, None), (LIFETIME + 1, "token lifetime longer than JWT_MAX_LIFETIME")]
)
def test_lifetime_exp_minus_iat_at_most_jwt_max_lifetime(lifetime, why):
    now = int(time.time())
    assert reason(authenticator(), "Bearer " + token(now=now, exp=now + lifetime)) == why


@pytest.mark.parametrize(
    ("tenant", "claim", "why"),
    [("a", "a", None), ("a", "b", "wrong tenant"), ("a", None, "wrong tenant"), (None, "b", None), ("", "b", None)],
)
def test_tenant_checked_only_when_the_issuer_has_one(tenant, claim, why):
    auth = authenticator({ISS: issuer(tenant=tenant)})
    assert reason(auth, "Bearer " + token(tenant=claim)) == why


# ----------------------------------------------------------------------------------------------- replay window


class Remembering:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.seen: set[str] = set()

    def first_use(self, key: str, expires_at: float) -> bool:
        self.calls.append((key, expires_at))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def test_replay_a_jti_is_remembered_per_issuer_until_exp_plus_the_leeway():
    auth = authenticator({ISS: issuer(), OTHER_ISS: issuer()})
    auth.replays = Remembering()
    now = int(time.time())
    first = token(now=now, jti="same")
    assert reason(auth, "Bearer " + first) is None
    assert reason(auth, "Bearer " + first) == "replayed jti"
    assert reason(auth, "Bearer " + token(now=now, jti="same", iss=OTHER_ISS)) is None  # another issuer's jti
    assert auth.replays.calls == [
        (f"{ISS}|same", now + 300 + LEEWAY),
        (f"{ISS}|same", now + 300 + LEEWAY),
        (f"{OTHER_ISS}|same", now + 300 + LEEWAY),
    ]


def test_replay_a_token_is_accepted_once_by_the_real_store():
    auth = authenticator()
    bearer = "Bearer " + token()
    assert reason(auth, bearer) is None and reason(auth, bearer) == "replayed jti"


def test_replay_store_down_is_a_503_never_an_acceptance(caplog):
    from sqlalchemy.exc import OperationalError

    from service.errors import StoreUnavailable

    class Down:
        def first_use(self, key, expires_at):
            raise OperationalError("x", {}, Exception("down"))

    auth = authenticator()
    auth.replays = Down()
    with caplog.at_level("ERROR", logger="service.security"), pytest.raises(StoreUnavailable) as down:
        auth.verify("Bearer " + token(), AUD)
    assert str(down.value) == "the token replay store is unavailable; please retry"
    assert [json.loads(r.getMessage()) for r in caplog.records] == [
        {"event": "replay_store_unavailable", "error": "OperationalError"}
    ]


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        ("sqlalchemy", "OperationalError"),
        ("oserror", "ConnectionRefusedError"),
        ("redis", "the Redis replay store did not answer"),
    ],
)
def test_replay_store_down_with_fail_open_accepts_and_logs_the_issuer_only(caplog, error, logged):
    """REPLAY_FAIL_OPEN: a token is accepted without the replay check while the store is down, every time (nothing
    is recorded), and the warning names the error and the issuer, never the token or its jti."""
    from sqlalchemy.exc import OperationalError

    from service.replay import ReplayStoreDown

    class Down:
        def first_use(self, key, expires_at):
            if error == "sqlalchemy":
                raise OperationalError("x", {}, Exception("down"))
            if error == "oserror":
                raise ConnectionRefusedError("down")
            raise ReplayStoreDown("the Redis replay store did not answer")

    auth = authenticator(fail_open=True)
    auth.replays = Down()
    bearer = "Bearer " + token()
    with caplog.at_level("WARNING", logger="service.security"):
        assert auth.verify(bearer, AUD)["iss"] == ISS
        assert auth.verify(bearer, AUD)["iss"] == ISS  # again: nothing was recorded
    messages = [r.getMessage() for r in caplog.records]
    expected = {"event": "replay_store_unavailable_fail_open", "error": logged, "issuer": ISS}
    assert [json.loads(m) for m in messages] == [expected, expected]
    assert bearer.split()[1] not in "".join(messages)


def test_the_authenticator_takes_its_replay_store_and_fail_open_from_the_settings(tmp_path):
    from service.replay import SqliteReplayStore

    auth = authenticator()
    assert auth.fail_open is False and auth.leeway == LEEWAY and auth.max_lifetime == LIFETIME
    assert isinstance(auth.replays, SqliteReplayStore)


# ----------------------------------------------------------------------------------------------- keys


def test_keys_two_issuers_with_inline_keys_under_the_same_kid_each_use_their_own():
    other_jwks = {"keys": [jwk(OTHER_EC_KEY, "ec-1", "ES384")]}
    auth = authenticator({ISS: issuer(), OTHER_ISS: issuer(jwks=other_jwks)})
    assert reason(auth, "Bearer " + token()) is None
    assert reason(auth, "Bearer " + token(key=OTHER_EC_KEY, iss=OTHER_ISS)) is None
    assert reason(auth, "Bearer " + token(key=EC_KEY, iss=OTHER_ISS)) == "invalid token: InvalidSignatureError"


class Fetches:
    """Stands in for the network: the key sets each URL serves, and the URLs asked."""

    def __init__(self, served: dict[str, dict] | None = None) -> None:
        self.served = served or {}
        self.asked: list[str] = []

    def __call__(self, url: str):
        self.asked.append(url)
        if url not in self.served:
            raise outbound.OutboundError("down")
        return KeyStore._parse(self.served[url])


JKU = "https://ehr.example.org/jwks"
URL = "https://ehr.example.org/.well-known/jwks.json"


@pytest.mark.parametrize(
    ("conf", "header", "kid", "asked", "found"),
    [
        ({"jku": [JKU]}, {"jku": JKU}, "ec-1", [], True),  # inline keys first: no fetch
        ({"jku": [JKU]}, {"jku": JKU}, "fetched", [JKU], True),  # else the token's jku
        ({"jwks_url": URL}, {}, "fetched", [URL], True),  # else the issuer's jwks_url
        ({"jku": [JKU], "jwks_url": URL}, {}, "fetched", [URL], True),
        ({}, {}, "fetched", [], False),  # inline only: nothing fetched
        ({"jwks": None, "jwks_url": URL}, {}, "ec-1", [URL], False),
        ({"jwks": None, "jku": [JKU]}, {}, "fetched", [], False),  # no jku header, no jwks_url: no source
    ],
)
def test_keys_inline_then_the_jku_then_the_jwks_url(monkeypatch, conf, header, kid, asked, found):
    fetches = Fetches(
        {JKU: {"keys": [jwk(OTHER_EC_KEY, "fetched", "ES384")]}, URL: {"keys": [jwk(OTHER_EC_KEY, "fetched", "ES384")]}}
    )
    auth = authenticator({ISS: issuer(**conf)})
    monkeypatch.setattr(auth.keys, "_fetch", fetches)
    try:
        key = auth._key(auth.issuers[ISS], header, kid)
    except security.Unauthorized as refused:  # a fetched key set without the kid
        assert refused.reason == "unknown key" and refused.details["key_set"] == asked[-1]
        key = None
    assert (key is not None) is found and fetches.asked == asked


def test_keys_a_jku_not_on_the_list_is_refused_and_never_fetched(monkeypatch):
    fetches = Fetches()
    auth = authenticator({ISS: issuer(jku=[JKU])})
    monkeypatch.setattr(auth.keys, "_fetch", fetches)
    bearer = "Bearer " + token(headers={"jku": JKU + "/other"})
    assert reason(auth, bearer) == "jku not allow-listed" and fetches.asked == []


def test_jwks_refetch_at_most_once_per_30_seconds_per_url_whether_it_failed_or_not(monkeypatch, clock):
    store = KeyStore()
    fetches = Fetches()
    monkeypatch.setattr(store, "_fetch", fetches)
    assert store.key(URL, "k") is None and fetches.asked == [URL]  # failed
    clock.mono += JWKS_REFRESH_SECONDS - 0.01
    assert store.key(URL, "k") is None and fetches.asked == [URL]  # not asked again yet
    assert store.key("https://elsewhere.example/jwks", "k") is None and len(fetches.asked) == 2  # another URL is
    fetches.served[URL] = {"keys": [jwk(EC_KEY, "k", "ES384")]}
    clock.mono += 0.01
    assert store.key(URL, "k") is not None and fetches.asked[-1] == URL and len(fetches.asked) == 3
    assert store.key(URL, "k") is not None and len(fetches.asked) == 3  # a known kid: no fetch
    assert store.key(URL, "unknown") is None and len(fetches.asked) == 3  # within 30 s of the last fetch
    clock.mono += JWKS_REFRESH_SECONDS
    fetches.served.pop(URL)
    assert store.key(URL, "unknown") is None and len(fetches.asked) == 4
    assert store.key(URL, "k") is not None  # a failed refetch keeps the keys known


def test_jwks_inline_keys_are_parsed_once_and_never_fetched(monkeypatch):
    store = KeyStore()
    fetches = Fetches()
    monkeypatch.setattr(store, "_fetch", fetches)
    assert store.key("inline:1", "ec-1", JWKS) is not None
    assert store.key("inline:1", "other", JWKS) is None and fetches.asked == []
    assert store.key("inline:1", "ec-1", {"keys": []}) is not None  # the first parse stands


def test_jwks_parse_skips_members_that_are_not_usable_keys_and_refuses_what_is_not_a_key_set():
    keys = KeyStore._parse({"keys": ["x", {"kid": 5}, {"kid": "bad", "kty": "nope"}, jwk(EC_KEY, "good", "ES384")]})
    assert list(keys) == ["good"]
    for not_a_set in ([], {"keys": {}}, {"nokeys": []}, None):
        with pytest.raises(ValueError, match=r"^not a JWK Set$"):
            KeyStore._parse(not_a_set)


def test_jwks_waiters_at_most_four_wait_for_a_fetch_in_progress_the_rest_are_refused_at_once(monkeypatch):
    store = KeyStore(timeout=2)
    source = store._sources.setdefault(URL, security._Source())
    source.fetching = threading.Event()
    source.waiting = JWKS_MAX_WAITERS
    started = time.monotonic()
    assert store.key(URL, "k") is None and time.monotonic() - started < 0.5 and source.waiting == JWKS_MAX_WAITERS
    source.waiting = JWKS_MAX_WAITERS - 1
    found = []
    waiter = threading.Thread(target=lambda: found.append(store.key(URL, "k")))
    waiter.start()
    for _ in range(200):
        if source.waiting == JWKS_MAX_WAITERS:
            break
        time.sleep(0.005)
    assert source.waiting == JWKS_MAX_WAITERS  # it waits
    source.keys = KeyStore._parse({"keys": [jwk(EC_KEY, "k", "ES384")]})
    source.fetching.set()
    waiter.join(2)
    assert found and found[0] is not None and source.waiting == JWKS_MAX_WAITERS - 1


def test_jwks_a_fetch_ends_its_in_progress_mark_and_wakes_the_waiters(monkeypatch):
    store = KeyStore()
    seen = {}

    def fetch(url):
        seen["during"] = store._sources[url].fetching
        return KeyStore._parse({"keys": [jwk(EC_KEY, "k", "ES384")]})

    monkeypatch.setattr(store, "_fetch", fetch)
    assert store.key(URL, "k") is not None
    assert seen["during"] is not None and seen["during"].is_set() and store._sources[URL].fetching is None


def test_jwks_fetch_needs_a_200(monkeypatch):
    store = KeyStore()
    answers = iter([outbound.Answer(404, {}, b""), outbound.Answer(200, {}, json.dumps(JWKS).encode())])
    asked = []

    def get(session, url, **kwargs):
        asked.append((session, url, kwargs))
        return next(answers)

    monkeypatch.setattr(outbound, "get", get)
    with pytest.raises(outbound.OutboundError, match="JWKS answer 404"):
        store._fetch(URL)
    assert set(store._fetch(URL)) == {"ec-1", "rsa-1", "p256"}
    session, url, kwargs = asked[0]
    assert session is store.session and url == URL
    assert kwargs["headers"] == {"Accept": "application/json"} and kwargs["max_bytes"] == 1_000_000
    assert kwargs["connect_timeout"] == kwargs["read_timeout"] == 5.0
    assert 4.5 < kwargs["deadline"] - time.monotonic() <= 5.0


# ----------------------------------------------------------------------------------------------- logs and FHIR servers


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("x" * 100, "x" * 100),
        ("x" * 101, "x" * 100 + "..."),
        ("a\nb\x7f~ c\u2028", "a?b?~ c?"),
        ("", ""),
    ],
)
def test_loggable_reasons_are_printable_ascii_of_at_most_100_characters(text, logged):
    assert loggable(text) == logged
    assert Unauthorized(text).reason == logged and str(Unauthorized(text)) == "authentication failed"


def test_loggable_limit_is_a_parameter():
    assert loggable("abcdef", limit=3) == "abc..." and loggable("abc", limit=3) == "abc"


@pytest.mark.parametrize("url", ["https://ehr.example:99999/fhir", "http://[::1"])
def test_fhir_server_that_is_not_a_url_is_a_400(url):
    with pytest.raises(BadRequest, match=r"^fhirServer is not a valid URL$"):
        check_fhir_server_url(url)
    assert check_fhir_server_url(None) is None and check_fhir_server_url("") == ""
    assert check_fhir_server_url("HTTPS://EHR.example/Fhir") == "https://EHR.example/Fhir"


SETTINGS = Settings(TRUSTED_ISSUERS={ISS: issuer(fhir_servers=["https://ehr.example.org/fhir"])}, FHIR_SERVERS=())


@pytest.mark.parametrize(
    ("server", "claims", "settings", "allowed"),
    [
        ("https://ehr.example.org/fhir", {"iss": ISS}, SETTINGS, True),
        ("https://ehr.example.org/fhir/", {"iss": ISS}, SETTINGS, True),
        ("https://ehr.example.org/other", {"iss": ISS}, SETTINGS, False),
        ("https://ehr.example.org/other", None, SETTINGS, True),  # AUTH off and no list: local development
        ("https://a.example/fhir", None, replace(SETTINGS, FHIR_SERVERS=["https://a.example/fhir/"]), True),
        ("https://b.example/fhir", None, replace(SETTINGS, FHIR_SERVERS=["https://a.example/fhir"]), False),
        ("https://ehr.example.org/fhirX", {"iss": ISS}, SETTINGS, False),
        ("https://a.example/fhir", None, replace(SETTINGS, FHIR_SERVERS=["https://a.example/fhirX"]), False),
        (None, {"iss": ISS}, SETTINGS, True),
        ("HTTPS://ehr.example.org/fhir", {"iss": ISS}, SETTINGS, True),  # a scheme is case-insensitive
        ("Https://ehr.example.org/fhir/", {"iss": ISS}, SETTINGS, True),
        ("HTTP://ehr.example.org/fhir", {"iss": ISS}, SETTINGS, False),  # http is not https
        ("HTTPS://ehr.example.org/FHIR", {"iss": ISS}, SETTINGS, False),  # a path is not
    ],
)
def test_fhir_server_allow_list(server, claims, settings, allowed):
    if allowed:
        check_fhir_server(server, claims, settings)
    else:
        with pytest.raises(Forbidden) as refused:
            check_fhir_server(server, claims, settings)
        assert str(refused.value) == ("fhirServer is not on the allow-list for this client; no request was sent to it")


def test_fhir_server_not_a_url_is_a_400_before_the_allow_list():
    with pytest.raises(BadRequest):
        check_fhir_server("https://ehr.example.org:99999/fhir", {"iss": ISS}, SETTINGS)


def test_jwks_a_waiter_gives_up_one_second_after_the_fetch_timeout():
    store = KeyStore(timeout=0.0)
    source = store._sources.setdefault(URL, security._Source())
    source.fetching = threading.Event()  # a fetch that never ends
    started = time.monotonic()
    assert store.key(URL, "k") is None
    assert 0.9 < time.monotonic() - started < 1.9 and source.waiting == 0


def test_jwks_a_failed_fetch_is_logged_with_its_url_and_cause(monkeypatch, caplog):
    store = KeyStore()
    monkeypatch.setattr(store, "_fetch", Fetches())
    with caplog.at_level("WARNING", logger="service.security"):
        assert store.key(URL, "k") is None
    assert [json.loads(r.getMessage()) for r in caplog.records] == [
        {"event": "jwks_fetch_failed", "error": "OutboundError", "url": URL, "cause": "down"}
    ]
    assert store.failure(URL) == "down"


def test_jwks_the_cause_of_a_failed_fetch_names_the_network_error_under_it():
    from tests.conftest import free_port

    store = KeyStore(timeout=2)
    closed = f"http://127.0.0.1:{free_port()}/jwks.json"  # nothing listens there
    assert store.key(closed, "k") is None
    assert (
        store.failure(closed)
        == "the peer could not be reached (ConnectionRefusedError: [Errno 111] Connection refused)"
    )


def test_the_refusal_of_an_unknown_key_names_the_key_set_and_why_its_fetch_failed(monkeypatch):
    auth = authenticator({ISS: issuer(jwks=None, jwks_url=URL)})
    monkeypatch.setattr(auth.keys, "_fetch", Fetches())
    with pytest.raises(security.Unauthorized) as refused:
        auth.verify("Bearer " + token(), AUD)
    assert refused.value.reason == "unknown key"
    assert refused.value.details == {"key_set": URL, "key_set_fetch_failed": "down"}


def test_the_refusal_of_a_wrong_audience_says_which_was_expected():
    with pytest.raises(security.Unauthorized) as refused:
        authenticator().verify("Bearer " + token(aud="http://127.0.0.1:8080/cds-services/x"), AUD)
    assert refused.value.reason == "invalid token: InvalidAudienceError"
    assert refused.value.details == {"expected_aud": AUD, "token_aud": "http://127.0.0.1:8080/cds-services/x"}


def test_jwks_an_unexpected_error_in_a_fetch_keeps_the_known_keys_and_ends_the_fetch(monkeypatch, clock):
    store = KeyStore()
    fetches = Fetches({URL: {"keys": [jwk(EC_KEY, "k", "ES384")]}})
    monkeypatch.setattr(store, "_fetch", fetches)
    assert store.key(URL, "k") is not None
    clock.mono += JWKS_REFRESH_SECONDS

    def broken(url):
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "_fetch", broken)
    with pytest.raises(RuntimeError):
        store.key(URL, "unknown")
    assert store._sources[URL].fetching is None
    assert store.key(URL, "k") is not None


def _without_alg(key, kid: str, alg: str) -> dict:
    return {k: v for k, v in jwk(key, kid, alg).items() if k != "alg"}


@pytest.mark.parametrize(
    ("member", "key", "alg", "why"),
    [
        (_without_alg(RSA_KEY, "r", "RS384"), RSA_KEY, "RS384", None),  # "alg" is optional in a JWK
        ({**_without_alg(RSA_KEY, "r", "RS384"), "alg": ""}, RSA_KEY, "RS384", None),
        (jwk(RSA_KEY, "r", "RS256"), RSA_KEY, "RS384", "invalid token: InvalidAlgorithmError"),  # the key's own alg
        (_without_alg(EC_KEY, "r", "ES384"), EC_KEY, "ES384", None),  # P-384 is ES384
        (_without_alg(P256_KEY, "r", "ES256"), P256_KEY, "ES256", "algorithm 'ES256' not allowed"),
    ],
)
def test_keys_a_jwk_without_alg_is_used_with_the_accepted_algorithm_of_its_type(member, key, alg, why):
    auth = authenticator({ISS: issuer(jwks={"keys": [member]})})
    assert reason(auth, "Bearer " + token(key, alg, "r")) == why

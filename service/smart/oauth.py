"""SMART App Launch 2.x, EHR launch, for a public client with PKCE S256: discovery of the EHR's endpoints, the
authorization URL and the code exchange. The OAuth parts are authlib's (``OAuth2Session``); what goes over the
network is bounded as the FHIR fetching is (one deadline for the whole exchange, no redirect followed).

Errors are :class:`LaunchError` with the HTTP status the page gets and a message that names the cause, never a
token, a code or patient data.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from service import outbound
from service.fhir.elements import array, string, untyped
from service.jsontext import loads
from service.settings import Settings
from service.watchdog import Watchdog

logging.getLogger("authlib").setLevel(logging.WARNING)  # nothing of a token exchange is ever logged

SCOPE_RESOURCES = ("Observation", "MedicationRequest", "MedicationStatement", "Condition", "Patient")
SCOPES_V2 = "launch openid fhirUser " + " ".join(f"patient/{r}.rs" for r in SCOPE_RESOURCES)
SCOPES_V1 = "launch openid fhirUser " + " ".join(f"patient/{r}.read" for r in SCOPE_RESOURCES)
DISCOVERY_MAX_BYTES = 1_000_000
TOKEN_MAX_BYTES = 1 << 20  # a token answer is a few kB; reading stops past 1 MiB
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
ERROR_CODE = re.compile(r"[a-z_]{1,40}")


class LaunchError(Exception):
    """The launch cannot go on; ``status`` is the page's HTTP status, ``message`` is shown on it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SmartConfiguration:
    authorization_endpoint: str
    token_endpoint: str
    scopes: str  # the v2 scopes, or the v1 ones when the EHR advertises only v1


ENDPOINT_MAX = 2048
# Parameters the app puts into the authorization request: an endpoint whose own query holds one is refused.
OAUTH_PARAMS = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "code", "code_challenge",
     "code_challenge_method", "code_verifier", "aud", "launch", "error", "access_token", "id_token", "nonce"}
)  # fmt: skip


def _endpoint(config: Mapping[str, Any], name: str, iss: str) -> str:
    """An endpoint of the EHR's SMART configuration, checked before the browser or a code is sent to it: https
    (http only to a loopback host, and only when the ``iss`` itself is http), no user information, no link-local or
    metadata host, at most 2 KB, printable ASCII only, no fragment, and no query that holds OAuth parameters."""
    value = string(config, name)
    if not value:
        raise LaunchError(502, f"the EHR's SMART configuration has no usable {name}")
    problem = outbound.url_problem(value, https_only=urlsplit(iss).scheme.lower() != "http")
    if problem is None and len(value) > ENDPOINT_MAX:
        problem = f"it is longer than {ENDPOINT_MAX} characters"
    if problem is None and not re.fullmatch(r"[\x21-\x7e]+", value):
        problem = "it holds spaces or characters a URL cannot hold"
    if problem is None and urlsplit(value).fragment:
        problem = "it has a fragment"
    if problem is None and any(k.lower() in OAUTH_PARAMS for k, _ in parse_qsl(urlsplit(value).query, True)):
        problem = "its query holds OAuth parameters"
    if problem is not None:
        raise LaunchError(502, f"the EHR's SMART configuration has no usable {name}: {problem}")
    return value


DISCOVERY_SECONDS = 300.0  # a configuration read is kept this long per iss (per worker)
DISCOVERY_FAILED_SECONDS = 30.0  # and a failure this long: a launch costs the EHR at most one request per period
_discovered: dict[str, tuple[float, SmartConfiguration | LaunchError]] = {}
_discovered_lock = threading.Lock()


def forget_discovery() -> None:
    with _discovered_lock:
        _discovered.clear()


def discover(iss: str, settings: Settings) -> SmartConfiguration:
    """The EHR's SMART configuration, cached per ``iss`` (``/smart/launch`` needs no authentication, so each call
    must not cost the EHR a request): read again after ``DISCOVERY_SECONDS``, or ``DISCOVERY_FAILED_SECONDS`` after
    a failure."""
    now = time.monotonic()
    with _discovered_lock:
        cached = _discovered.get(iss)
    if cached is not None and cached[0] > now:
        if isinstance(cached[1], LaunchError):
            raise LaunchError(cached[1].status, cached[1].message)
        return cached[1]
    try:
        config = _discover(iss, settings)
    except LaunchError as exc:
        with _discovered_lock:
            _discovered[iss] = (time.monotonic() + DISCOVERY_FAILED_SECONDS, exc)
        raise
    with _discovered_lock:
        _discovered[iss] = (time.monotonic() + DISCOVERY_SECONDS, config)
    return config


def _discover(iss: str, settings: Settings) -> SmartConfiguration:
    """``{iss}/.well-known/smart-configuration``: its endpoints, PKCE S256 support and scope version."""
    url = iss.rstrip("/") + "/.well-known/smart-configuration"
    try:
        answer = outbound.get(
            outbound.session(),
            url,
            deadline=time.monotonic() + settings.FHIR_TIME_BUDGET,
            connect_timeout=settings.FHIR_CONNECT_TIMEOUT,
            read_timeout=settings.FHIR_READ_TIMEOUT,
            max_bytes=DISCOVERY_MAX_BYTES,
            headers={"Accept": "application/json"},
        )
    except outbound.OutboundError as exc:
        raise LaunchError(502, f"the EHR's SMART configuration could not be read: {exc}") from None
    if answer.status != 200:
        raise LaunchError(502, f"the EHR's SMART configuration could not be read: it answered {answer.status}")
    try:
        config = loads(answer.body)
    except orjson.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        raise LaunchError(502, "the EHR's SMART configuration is not a JSON object")
    if "S256" not in array(config, "code_challenge_methods_supported"):
        raise LaunchError(502, "the EHR does not offer PKCE with S256 (code_challenge_methods_supported)")
    capabilities = array(config, "capabilities")
    scopes = array(config, "scopes_supported")
    v2 = "permission-v2" in capabilities or any(isinstance(s, str) and s.endswith(".rs") for s in scopes)
    v1_only = not v2 and (
        "permission-v1" in capabilities or any(isinstance(s, str) and s.endswith(".read") for s in scopes)
    )
    return SmartConfiguration(
        _endpoint(config, "authorization_endpoint", iss),
        _endpoint(config, "token_endpoint", iss),
        SCOPES_V1 if v1_only else SCOPES_V2,
    )


def new_state() -> str:
    return generate_token(43)


def new_verifier() -> str:
    """A PKCE code verifier: 64 characters from the unreserved set (RFC 7636 asks for 43 to 128)."""
    return generate_token(64)


def authorization_url(
    config: SmartConfiguration, client_id: str, redirect_uri: str, iss: str, launch: str, state: str, verifier: str
) -> str:
    """The authorization request (RFC 6749 4.1.1 with PKCE S256 and SMART's ``aud`` and ``launch``), every value
    form-encoded into the endpoint's query (kept, and checked by ``_endpoint`` to hold no OAuth parameter)."""
    endpoint = urlsplit(config.authorization_endpoint)
    params = [
        *parse_qsl(endpoint.query, keep_blank_values=True),
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", config.scopes),
        ("state", state),
        ("code_challenge", create_s256_code_challenge(verifier)),
        ("code_challenge_method", "S256"),
        ("aud", iss),
        ("launch", launch),
    ]
    return urlunsplit((endpoint.scheme, endpoint.netloc, endpoint.path, urlencode(params), ""))


def exchange_code(pending: Mapping[str, Any], code: str, settings: Settings) -> dict[str, Any]:
    """The token response for ``code`` (with the launch's PKCE verifier), checked: a bearer access token and the
    launch's patient. The token is returned to the caller only, never stored or logged."""
    session = OAuth2Session(
        settings.SMART_CLIENT_ID,
        redirect_uri=pending["redirect_uri"],
        token_endpoint_auth_method="none",  # a public client: PKCE instead of a secret
        code_challenge_method="S256",
    )
    for prefix, adapter in outbound.session().adapters.items():
        session.mount(prefix, adapter)  # connecting bounded by the deadline below, as every outbound exchange is
    session.stream = True  # the answer is read by _capped, up to TOKEN_MAX_BYTES, before authlib parses it
    session.register_compliance_hook("access_token_response", _capped)
    seconds = settings.FHIR_TIME_BUDGET
    watchdog = Watchdog(seconds)
    try:
        with watchdog:
            token = session.fetch_token(
                pending["token_endpoint"],
                code=code,
                code_verifier=pending["verifier"],
                timeout=(settings.FHIR_CONNECT_TIMEOUT, min(settings.FHIR_READ_TIMEOUT, seconds)),
                allow_redirects=False,
            )
    except OAuthError as exc:
        error = exc.error if isinstance(exc.error, str) and ERROR_CODE.fullmatch(exc.error) else "error"
        raise LaunchError(400, f"the EHR refused to give an access token ({error}); launch the app again") from None
    except outbound.TooLarge:
        raise LaunchError(502, f"the EHR's token endpoint answered more than {TOKEN_MAX_BYTES} bytes") from None
    except (TypeError, OverflowError, AttributeError):  # authlib reading fields of the wrong type (expires_in: [1])
        raise LaunchError(502, "the EHR's token answer is not valid (a field of the wrong type or size)") from None
    except (requests.RequestException, ValueError):
        if watchdog.fired:
            raise LaunchError(502, "the EHR's token endpoint did not answer in time") from None
        raise LaunchError(502, "the EHR's token endpoint could not be reached or gave no usable answer") from None
    finally:
        session.close()
    if watchdog.fired or not isinstance(token, dict):
        raise LaunchError(502, "the EHR's token endpoint did not answer in time")
    access = string(token, "access_token")
    if not access or not re.fullmatch(r"[\x21-\x7e]+", access):
        raise LaunchError(502, "the EHR's token response holds no usable access token")
    if (string(token, "token_type") or "").lower() != "bearer":
        raise LaunchError(502, "the EHR's token is not a bearer token")
    patient = string(token, "patient")
    if patient is None or not FHIR_ID.fullmatch(patient):
        raise LaunchError(502, "the EHR gave no patient with the token (the app must be launched from a chart)")
    return {"access_token": access, "patient": patient, "highlight": highlight(untyped(token, "appContext"))}


def _capped(response: requests.Response) -> requests.Response:
    """The token answer read whole before authlib parses it, but never past ``TOKEN_MAX_BYTES``."""
    try:
        body = outbound.read_body(response, TOKEN_MAX_BYTES)
    finally:
        response.close()
    response._content = body  # what response.json() then reads
    response._content_consumed = True
    return response


def highlight(app_context: Any) -> str | None:
    """The card kind a card's ``appContext`` asks the page to highlight (``{"highlight": "<kind>"}``, passed on by
    the EHR with the token); None for anything else."""
    if not isinstance(app_context, str) or len(app_context) > 500:
        return None
    try:
        value = orjson.loads(app_context)
    except orjson.JSONDecodeError:
        return None
    kind = string(value, "highlight")
    return kind if kind is not None and re.fullmatch(r"[a-z][a-z-]{0,60}", kind) else None

"""Trusting CDS clients (CDS Hooks 2.0): JWT bearer tokens signed with ES384 or RS384 by a configured issuer,
and the fhirServer allow-list that keeps the FHIR access token from going anywhere else (SSRF guard)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK
from sqlalchemy.exc import SQLAlchemyError

from service import outbound
from service.errors import BadRequest, CdsError, StoreUnavailable
from service.jsontext import loads
from service.logs import log_event
from service.replay import ReplayStoreDown, open_replay_store
from service.settings import Settings

log = logging.getLogger("service.security")
ALGORITHMS = ("ES384", "RS384")
JWKS_REFRESH_SECONDS = 30  # at most one refetch per issuer in this time, whatever kids attackers send
JWKS_MAX_BYTES = 1_000_000  # a key set is a few kilobytes
JWKS_MAX_WAITERS = 4  # calls that wait for a key fetch in progress (each holds a thread); more are refused


class Unauthorized(CdsError):
    status = 401
    code = "login"

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__("authentication failed")  # the caller learns nothing more
        self.reason = loggable(reason)  # logged, never returned
        # logged beside the reason, each cut as the reason is: what the service expected (its own settings) and
        # what it found, so that an integrator can fix the client or the settings from the log line alone
        self.details = {key: loggable(str(value), 200) for key, value in details.items() if value is not None}


def loggable(text: str, limit: int = 100) -> str:
    """``text`` fit for a log line although parts of it come from the caller: printable ASCII, at most ``limit``
    characters (and an ellipsis)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "..."


class Forbidden(CdsError):
    status = 403
    code = "forbidden"


@dataclass
class _Source:
    """What is known of one key source: its keys, when it was last asked, and the fetch in progress."""

    keys: dict[str, PyJWK] = field(default_factory=dict)
    asked_at: float = -math.inf
    failure: str | None = None  # why the last fetch failed (None: it succeeded, or none was made)
    fetching: threading.Event | None = None
    waiting: int = 0


class KeyStore:
    """JWKS per source (inline, jwks_url or an allow-listed jku), cached and refreshed on an unknown kid.

    Anyone can send a token naming a trusted issuer and an unknown kid, so a source is asked at most once per
    JWKS_REFRESH_SECONDS, whether that fetch succeeded or failed, and while a fetch is in progress the calls that
    need it wait for that one (at most JWKS_MAX_WAITERS of them; the others are refused at once). No lock is held
    while fetching: the calls of other issuers never wait for it."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()
        self.timeout = timeout  # seconds for a whole JWKS fetch
        self.session = outbound.session()

    @staticmethod
    def _parse(jwks: Any) -> dict[str, PyJWK]:
        """The keys of a JWK Set by kid; a member that is not a usable key is skipped. ValueError when ``jwks`` is
        not a key set at all."""
        if not isinstance(jwks, Mapping) or not isinstance(
            jwks.get("keys"), list | tuple
        ):  # tuple: read-only, from settings
            raise ValueError("not a JWK Set")
        keys: dict[str, PyJWK] = {}
        for data in jwks["keys"]:
            if not isinstance(data, Mapping) or not isinstance(data.get("kid"), str):
                continue
            # "alg" is optional in a JWK (RFC 7517); without it PyJWT takes an RSA key for RS256, which no token may
            # use here, so an RSA key without "alg" is read as RS384, the one RSA algorithm accepted.
            algorithm = "RS384" if data.get("kty") == "RSA" and not data.get("alg") else None
            try:
                keys[data["kid"]] = PyJWK(dict(data), algorithm)
            except (jwt.PyJWTError, TypeError, ValueError):  # what PyJWT raises on members of the wrong shape
                continue
        return keys

    def _fetch(self, url: str) -> dict[str, PyJWK]:
        # Never redirected (the keys must come from the configured URL), bounded in time and size as a whole.
        answer = outbound.get(
            self.session,
            url,
            deadline=time.monotonic() + self.timeout,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            max_bytes=JWKS_MAX_BYTES,
            headers={"Accept": "application/json"},
        )
        if answer.status != 200:
            raise outbound.OutboundError(f"JWKS answer {answer.status}")
        return self._parse(loads(answer.body))  # orjson: a 1000-deep answer is no RecursionError

    def key(self, source: str, kid: str, inline: Mapping[str, Any] | None = None) -> PyJWK | None:
        with self._lock:
            known = self._sources.setdefault(source, _Source())
            if inline is not None and not known.keys:
                known.keys = self._parse(inline)
            if kid in known.keys or inline is not None:
                return known.keys.get(kid)
            in_progress = known.fetching
            if in_progress is None:
                if time.monotonic() - known.asked_at < JWKS_REFRESH_SECONDS:
                    return None
                known.asked_at = time.monotonic()
                known.fetching = threading.Event()
            elif known.waiting >= JWKS_MAX_WAITERS:
                return None
            else:
                known.waiting += 1
        if in_progress is not None:  # another call is fetching this source: use what it finds
            in_progress.wait(self.timeout + 1)
            with self._lock:
                known.waiting -= 1
                return known.keys.get(kid)
        keys = failure = None
        try:
            keys = self._fetch(source)
        except (outbound.OutboundError, ValueError, jwt.PyJWTError) as exc:
            failure = fetch_failure(exc)
            log_event(log, logging.WARNING, "jwks_fetch_failed", error=type(exc).__name__, url=source, cause=failure)
            keys = None
        finally:
            with self._lock:
                event, known.fetching = known.fetching, None
                known.failure = failure
                if keys is not None:
                    known.keys = keys
            event.set()
        return keys.get(kid) if keys is not None else None

    def failure(self, source: str) -> str | None:
        """Why the last fetch of ``source`` failed, or None."""
        with self._lock:
            known = self._sources.get(source)
            return known.failure if known is not None else None


def fetch_failure(exc: BaseException) -> str:
    """What made a key set fetch fail, in one line for the log: the service's own message and, under it, the
    innermost network error (a refused connection, a certificate that does not verify, a name that does not
    resolve...)."""
    inner: BaseException | None = None
    under = exc.__context__
    for _ in range(8):  # requests: ConnectionError(MaxRetryError(reason=NewConnectionError(...)))
        if under is None:
            break
        inner = under
        nested = getattr(under, "reason", None)
        if not isinstance(nested, BaseException):
            nested = next((a for a in under.args if isinstance(a, BaseException)), None) or under.__context__
        under = nested
    said = str(exc) or type(exc).__name__
    return loggable(f"{said} ({type(inner).__name__}: {inner})" if inner is not None else said, 300)


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.issuers: Mapping[str, Mapping[str, Any]] = settings.TRUSTED_ISSUERS
        self.leeway = settings.JWT_LEEWAY
        self.max_lifetime = settings.JWT_MAX_LIFETIME
        self.public_base = settings.PUBLIC_BASE_URL  # required with AUTH on (settings.check_startup)
        self.keys = KeyStore()
        self.replays = open_replay_store(
            settings.REPLAY_STORE_URL, settings.REDIS_URL, settings.REDIS_TIMEOUT, self.leeway
        )
        self.fail_open = settings.REPLAY_FAIL_OPEN

    def audience(self, path: str) -> str:
        """The ``aud`` a token for ``path`` must carry: never built from the Host header, which the caller sets."""
        return self.public_base + path

    def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        """Claims of a valid token; :class:`Unauthorized` (with a logged reason) otherwise."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # RFC 7235: the scheme is case-insensitive
            raise Unauthorized("no bearer token")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        problem = claim_type_problem(unverified)
        if problem:
            raise Unauthorized(problem)
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized(f"algorithm {header.get('alg')!r} not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("no kid")
        issuer = self.issuers.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if issuer is None:
            raise Unauthorized("untrusted issuer")
        key = self._key(issuer, header, kid)
        if key is None:
            raise Unauthorized("unknown key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=audience,
                issuer=unverified["iss"],
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidAudienceError:
            raise Unauthorized(
                "invalid token: InvalidAudienceError",
                expected_aud=audience,  # CDS_PUBLIC_BASE_URL + the path called
                token_aud=unverified.get("aud"),
            ) from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
        if claims["iat"] > time.time() + self.leeway:
            raise Unauthorized("issued in the future")
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise Unauthorized("token lifetime longer than JWT_MAX_LIFETIME")
        if issuer.get("tenant") and claims.get("tenant") != issuer["tenant"]:
            raise Unauthorized("wrong tenant")
        try:
            first = self.replays.first_use(f"{claims['iss']}|{claims['jti']}", float(claims["exp"]) + self.leeway)
        except (SQLAlchemyError, OSError, ReplayStoreDown) as exc:
            error = str(exc) if isinstance(exc, ReplayStoreDown) else type(exc).__name__
            if not self.fail_open:
                log_event(log, logging.ERROR, "replay_store_unavailable", error=error)
                raise StoreUnavailable("the token replay store is unavailable; please retry") from None
            # REPLAY_FAIL_OPEN: accepted without the replay check, and said so (the issuer only: no token, no jti).
            log_event(
                log, logging.WARNING, "replay_store_unavailable_fail_open", error=error, issuer=loggable(claims["iss"])
            )
            first = True
        if not first:
            raise Unauthorized("replayed jti")
        return claims

    def _key(self, issuer: Mapping[str, Any], header: Mapping[str, Any], kid: str) -> PyJWK | None:
        """The key for ``kid``: from the issuer's inline keys when they hold it (no network: a hospital that blocks
        outbound calls can trust a client it configured by hand), else from the allow-listed ``jku`` the token
        names, else from the issuer's ``jwks_url``. A ``jku`` that is not allow-listed is refused and never
        fetched, even when the inline keys would do."""
        jku = header.get("jku")
        if jku is not None and jku not in issuer["jku"]:
            raise Unauthorized("jku not allow-listed")  # and never fetched
        if issuer.get("jwks"):
            inline = self.keys.key(f"inline:{id(issuer)}", kid, issuer["jwks"])
            if inline is not None or (jku is None and not issuer.get("jwks_url")):
                return inline
        source = jku if jku is not None else issuer.get("jwks_url")
        if not source:
            return None
        key = self.keys.key(source, kid)
        if key is None:
            raise Unauthorized("unknown key", key_set=source, key_set_fetch_failed=self.keys.failure(source))
        return key


def claim_type_problem(claims: Mapping[str, Any]) -> str | None:
    """Claims whose type PyJWT lets through (it reads ``"1700000000"`` as a time) but no valid token has: times must
    be finite JSON numbers, and the jti a non-empty string of Unicode characters (no lone surrogate)."""
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if name in claims and not (isinstance(value, int | float) and not isinstance(value, bool)):
            return f"{name} is not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} is not a finite number"
    jti = claims.get("jti")
    if "jti" in claims and not (isinstance(jti, str) and jti and _encodable(jti)):
        return "jti is not a non-empty string"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_fhir_server_url(fhir_server: str | None) -> str | None:
    """A fhirServer that is not a URL is a 400, whether or not anything is fetched from it. Returns it with its scheme
    in lower case (schemes are case-insensitive: ``HTTPS://h/fhir`` is ``https://h/fhir``), the form the allow-lists
    are compared with."""
    if not fhir_server:
        return fhir_server
    try:
        outbound.origin(fhir_server)
    except ValueError:
        raise BadRequest("fhirServer is not a valid URL") from None
    scheme, colon, rest = fhir_server.partition(":")
    return scheme.lower() + colon + rest


def check_fhir_server(fhir_server: str | None, claims: Mapping[str, Any] | None, settings: Settings) -> None:
    """Only allow-listed FHIR servers get our requests (and the bearer token); otherwise 403, nothing sent. Called
    when a request is about to go there: a client whose prefetch is complete is answered from it, whatever
    fhirServer it names (the CDS Hooks Sandbox always sends one)."""
    if not fhir_server:
        return
    server = check_fhir_server_url(fhir_server).rstrip("/")
    if claims is not None:
        allowed = settings.TRUSTED_ISSUERS[claims["iss"]]["fhir_servers"]
    else:
        allowed = [u.rstrip("/") for u in settings.FHIR_SERVERS]
        if not allowed:
            return  # AUTH off and no list: local development
    if server not in allowed:
        raise Forbidden("fhirServer is not on the allow-list for this client; no request was sent to it")

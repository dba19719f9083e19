"""Settings: built-in defaults, then environment variables (``CDS_<NAME>``), then an override mapping.

Each setting is declared once below, as a field of the frozen :class:`Settings` with its type, default, parser and
documentation; the settings table of docs/configuration.md is checked against these fields by a test, so the two
cannot drift apart.
The clinical rules get a narrow view of them, :class:`ClinicalSettings`.

Why not pydantic-settings (issue 29, point 3: tried with pydantic 2.14 and pydantic-settings 2.16, and left): it
would replace the number parsers (about 90 lines) but not the rest, and adds code of its own for what it does not do.
Under ``env_prefix`` it ignores a ``CDS_`` variable that is no field (``CDS_WILSON_MAX_AEG=40`` loads silently), so
``check_names`` with its closest-name hint and the Kubernetes service-link pattern stay as they are; an unknown
keyword is refused but with no hint. It takes ``True`` for 1 in an int or float field (lax mode; strict mode then
refuses the environment's strings), so every number still needs a validator; it reads a tuple from the environment as
JSON (a comma list needs ``NoDecode`` and a splitter per field); a ``Mapping`` field comes back a mutable ``dict``
and a read-only default cannot be copied (``MappingProxyType`` cannot be pickled), so the freezing stays; frozen
stops assignment only. It reads ``os.environ`` only (``load_settings(environ=...)``, which the tests use throughout,
needs a subclass of its private ``_load_env_vars``), would read a ``CDS_NOW`` into the injected clock, and its
``ValidationError`` names the field, not the variable, and quotes the input (an override key, a Redis password), so
every error needs translating. The trust file, URL, origin and site-limit parsers are domain rules either way.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting has a value that cannot be used; raised at start-up, never during a request."""


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"expected on/off, got {raw!r}")


DAY = 86_400  # seconds: the most any timeout, budget or wait may be (a larger one breaks timers, or is no bound)
LARGEST_WHOLE = 2**53  # any count or size: still exact as a float, and fits a C ssize_t or an SQL integer
LONGEST_AGE = 150  # years: no patient is older
LONGEST_DAYS = 36_500  # 100 years: more reaches before the dates a chart can hold (timedelta overflows)
# ALP site lower limits (U/L): within the plausible range of total ALP (service/clinical/data/plausibility.csv: from
# 2, below which a value labelled U/L is really ukat/L) and no higher than 200: the adult lower limits of every
# method lie far below it (CALIPER 35-40; older methods such as DGKC about 70), and the highest CALIPER lower limit
# at any age is 142. A "lower limit" above that would call normal adults low.
ALP_SITE_LIMIT_RANGE = (2.0, 200.0)


def _finite(raw: Any) -> float:
    """A finite number: infinity and NaN are no setting's value; nor is a boolean (True is not 1 second)."""
    if isinstance(raw, bool):
        raise SettingsError(f"expected a number, got {raw!r}")
    try:
        value = float(raw)
    except OverflowError:  # an int beyond a double's range
        value = math.inf
    if not math.isfinite(value):
        raise SettingsError(f"expected a finite number, got {raw!r}")
    return value


def _positive_float(raw: Any) -> float:
    value = _finite(raw)
    if not value > 0:
        raise SettingsError(f"expected a positive number, got {raw!r}")
    return value


def _seconds(raw: Any) -> float:
    """A timeout, budget or wait: more than 0 seconds, at most a day (1e300 overflows the timers that enforce it)."""
    value = _positive_float(raw)
    if value > DAY:
        raise SettingsError(f"expected at most {DAY} seconds (a day), got {raw!r}")
    return value


def _integer(raw: Any) -> int:
    """A whole number: an int, a float without fraction, or its digits; never a boolean, never 2.9 cut to 2."""
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise SettingsError(f"expected a whole number, got {raw!r}")
    if isinstance(raw, int | float):
        value = int(raw)
    else:
        text = str(raw).strip()
        if not re.fullmatch(r"[+-]?[0-9]+(?:_[0-9]+)*", text):
            raise SettingsError(f"expected a whole number, got {raw!r}")
        value = int(text)
    if abs(value) > LARGEST_WHOLE:
        raise SettingsError(f"expected a whole number of at most {LARGEST_WHOLE}, got {raw!r}")
    return value


def _fraction(raw: Any) -> float:
    """A part of a whole: more than 0 and less than 1 (the optional keys' share of a call's budgets: 0 would fetch
    none of them, 1 would leave the required reads after them nothing)."""
    value = _finite(raw)
    if not 0 < value < 1:
        raise SettingsError(f"expected a fraction between 0 and 1 (such as 0.75), got {raw!r}")
    return value


def _positive_int(raw: Any) -> int:
    value = _integer(raw)
    if value < 1:
        raise SettingsError(f"expected a positive whole number, got {raw!r}")
    return value


def _whole_number(raw: Any) -> int:
    value = _integer(raw)
    if value < 0:
        raise SettingsError(f"expected 0 or a positive whole number, got {raw!r}")
    return value


def _at_most(high: int, unit: str) -> Callable[[Any], int]:
    """A positive whole number of ``unit`` up to ``high``, beyond which the value breaks date or timer arithmetic."""

    def parse(raw: Any) -> int:
        value = _positive_int(raw)
        if value > high:
            raise SettingsError(f"expected at most {high} {unit}, got {raw!r}")
        return value

    parse.__name__ = f"_at_most_{high}_{unit.split()[0]}"
    return parse


_age = _at_most(LONGEST_AGE, "years")
_days = _at_most(LONGEST_DAYS, "days (100 years)")
_whole_seconds = _at_most(DAY, "seconds (a day)")


def _comma_list(raw: Any) -> tuple[str, ...]:
    """A list from overrides, or a comma-separated string from the environment."""
    if raw in (None, ""):
        return ()
    if isinstance(raw, Mapping | set | frozenset | bytes | bytearray):
        raise SettingsError(f"expected a list or comma-separated text, got a {type(raw).__name__}")
    if isinstance(raw, list | tuple):
        return tuple(str(x).strip() for x in raw if str(x).strip())
    return tuple(part.strip() for part in str(raw).split(",") if part.strip())


def _log_level(raw: Any) -> str:
    """A Python log level by name (any case): DEBUG, INFO, WARNING, ERROR, CRITICAL."""
    text = str(raw).strip().upper()
    if isinstance(raw, bool) or text not in logging.getLevelNamesMapping():
        raise SettingsError(f"expected a log level such as INFO or WARNING, got {raw!r}")
    return text


def _frozen(value: Any) -> Any:
    """A read-only deep copy of JSON-like data: mappings become read-only mappings, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value


def _issuers(raw: Any) -> Mapping[str, Mapping[str, Any]]:
    """Trusted issuers: a mapping from overrides, or (from the environment) a JSON or YAML file's path."""
    if raw in (None, ""):
        return MappingProxyType({})
    if isinstance(raw, Mapping):
        data: Any = raw
    else:
        data = _read_trust_file(Path(str(raw)))
    if not isinstance(data, Mapping):
        raise SettingsError("trusted issuers must map each iss to its settings")
    issuers: dict[str, Mapping[str, Any]] = {}
    for iss, conf in data.items():
        if not isinstance(conf, Mapping) or not (conf.get("jwks") or conf.get("jwks_url") or conf.get("jku")):
            raise SettingsError(f"issuer {iss!r} needs jwks, jwks_url or a jku allow-list")
        jwks = conf.get("jwks")
        if jwks and not (isinstance(jwks, Mapping) and isinstance(jwks.get("keys"), list | tuple)):
            raise SettingsError(f"issuer {iss!r}: jwks must be a JWK Set, {{keys: [...]}}")
        issuers[str(iss)] = MappingProxyType(
            {
                "jwks": _frozen(jwks),  # a copy: the caller's dict changing later changes no trusted key
                "jwks_url": conf.get("jwks_url"),
                "jku": _comma_list(conf.get("jku")),
                "fhir_servers": tuple(u.rstrip("/") for u in _comma_list(conf.get("fhir_servers"))),
                "tenant": _frozen(conf.get("tenant")),
            }
        )
    return MappingProxyType(issuers)


def _read_trust_file(path: Path) -> Any:
    """The trust file's content: YAML for a .yaml or .yml file, JSON otherwise; a SettingsError naming the file (and
    the line, when the parser knows it) for a file that cannot be read as such."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read trusted issuers file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"trusted issuers file {path} is not text (UTF-8): neither JSON nor YAML") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise SettingsError(f"trusted issuers file {path} is not valid YAML{where}: {problem}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "" if path.suffix.lower() == ".json" else " (a .yaml or .yml file is read as YAML)"
        raise SettingsError(
            f"trusted issuers file {path} is not valid JSON{hint} (line {exc.lineno}): {exc.msg}"
        ) from None


def _base_url(raw: Any) -> str:
    text = str(raw).strip().rstrip("/")
    parts = urlsplit(text)
    if text and (parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment):
        raise SettingsError(f"expected a base URL such as https://cds.example.org, got {raw!r}")
    return text


def _smart_issuers(raw: Any) -> tuple[str, ...]:
    """The EHRs' FHIR base URLs: https with a host, no user information, query or fragment (plain http only to a
    loopback host, for tests), and no link-local or metadata host."""
    from service.outbound import url_problem  # here: the settings module is imported before everything else

    issuers = []
    for value in _comma_list(raw):
        parts = urlsplit(value)
        problem = url_problem(value, https_only=False)
        if problem is None and (parts.query or parts.fragment or value.endswith("?") or "#" in value):
            problem = "it has a query or a fragment"
        if problem is not None:
            raise SettingsError(
                f"expected FHIR base URLs such as https://ehr.example.org/fhir, got {value!r}: {problem}"
            )
        issuers.append(value)
    return tuple(issuers)


def _frame_ancestors(raw: Any) -> tuple[str, ...]:
    """CSP ``frame-ancestors`` sources: ``'self'``, ``'none'`` (alone) or origins (``https://ehr.example.org``)."""
    values = _comma_list(raw)
    out = []
    for value in values:
        if value.strip("'").lower() in ("self", "none"):
            out.append(f"'{value.strip(chr(39)).lower()}'")
            continue
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or not re.fullmatch(r"[A-Za-z0-9.:\[\]*-]+", parts.netloc)
        ):
            raise SettingsError(f"expected 'self', 'none' or origins such as https://ehr.example.org, got {value!r}")
        out.append(f"{parts.scheme}://{parts.netloc.lower()}")
    if "'none'" in out and len(out) > 1:
        raise SettingsError("'none' cannot be combined with other frame ancestors")
    return tuple(out)


def _redis_url(raw: Any) -> str:
    """A Redis URL; the message never repeats it, since it may hold a password."""
    text = str(raw).strip()
    if text and urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise SettingsError("expected a redis://, rediss:// or unix:// URL")
    return text


OVERRIDE_KEY_MIN = 32  # characters: a short key could be guessed, and every patient's hash computed with it


def _override_key(raw: Any) -> str:
    """A secret: never repeated in a message. Empty (off), or at least OVERRIDE_KEY_MIN characters."""
    text = str(raw).strip()
    if text and len(text) < OVERRIDE_KEY_MIN:
        raise SettingsError(
            f"expected a secret of at least {OVERRIDE_KEY_MIN} characters (e.g. the output of openssl rand -hex 32)"
        )
    return text


def _on_off(raw: Any) -> bool:
    """Secure by default: anything but an explicit off is on."""
    return not (isinstance(raw, str) and raw.strip().lower() in {"off", "0", "false", "no"}) and raw is not False


def _alp_limit(raw: Any) -> float:
    """An adult ALP lower limit in U/L, within ALP_SITE_LIMIT_RANGE."""
    value = _finite(raw)
    low, high = ALP_SITE_LIMIT_RANGE
    if not low <= value <= high:
        raise SettingsError(f"expected an adult ALP lower limit from {low:g} to {high:g} U/L, got {raw!r}")
    return value


def _site_limits(raw: Any) -> Mapping[str, float]:
    """``"40"`` (both sexes) or ``"female=35,male=40"``; a mapping is accepted from overrides. A sex left out gets
    the built-in table's limit (service/clinical/limits.py), never the other sex's."""
    if raw in (None, ""):
        return MappingProxyType({})
    if isinstance(raw, Mapping):
        items = {str(k).lower(): _alp_limit(v) for k, v in raw.items()}
    elif isinstance(raw, int | float) or "=" not in str(raw):
        value = _alp_limit(raw)
        items = {"male": value, "female": value}
    else:
        items = {}
        for part in str(raw).split(","):
            key, _, value = part.partition("=")
            items[key.strip().lower()] = _alp_limit(value)
    unknown = set(items) - {"male", "female"}
    if unknown:
        raise SettingsError(f"site limits know only male and female, not {sorted(unknown)}")
    return MappingProxyType(items)


def setting(parse: Callable[[Any], Any], default: Any, doc: str, secret: bool = False) -> Any:
    """One row of the settings table, as a field of :class:`Settings`: its default, the parser of a value from the
    environment or an override, and its documentation. A mapping default is a fresh read-only copy per load. A
    ``secret`` is left out of the settings' repr."""
    metadata = {"parse": parse, "doc": doc}
    if isinstance(default, Mapping):
        return field(default_factory=lambda: MappingProxyType(dict(default)), metadata=metadata)
    return field(default=default, metadata=metadata, repr=not secret)


EMPTY: Mapping[str, Any] = MappingProxyType({})  # the default of a mapping setting (each load its own copy)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's settings, one field per setting (docs/configuration.md's table is checked against these
    fields), read-only once loaded (:func:`load_settings`). ``NOW``, the clock, is no setting: tests and tools may
    inject one."""

    FHIR_CONNECT_TIMEOUT: float = setting(_seconds, 3.05, "Seconds to wait for a FHIR server connection.")
    FHIR_READ_TIMEOUT: float = setting(_seconds, 10.0, "Seconds to wait for a FHIR server's answer.")
    FHIR_MAX_PAGES: int = setting(_positive_int, 20, "Most Bundle pages followed (next links) per prefetch key.")
    FHIR_FETCH_WORKERS: int = setting(_positive_int, 8, "Missing prefetch keys fetched at once.")
    MAX_BODY_BYTES: int = setting(_positive_int, 5_000_000, "Largest hook request body accepted (413 beyond).")
    CLIENT_TIMEOUT: float = setting(
        _seconds,
        10.0,
        "Seconds a client may send nothing while sending its request, or take nothing of its answer, before it is "
        "disconnected (alp-cds serve).",
    )
    CLIENT_REQUEST_DEADLINE: float = setting(
        _seconds,
        30.0,
        "Seconds a client has to send a whole request, headers and body, once a thread has taken it up; then the "
        "connection is closed (alp-cds serve).",
    )
    ALP_SITE_LOW_LIMITS: Mapping[str, float] = setting(
        _site_limits,
        EMPTY,
        "Adult ALP lower limits (U/L) of your lab, used when a result carries no referenceRange: "
        "`40` for both sexes or `female=35,male=40`, from 2 to 200; a sex not given gets the built-in limit. "
        "Empty: the built-in CALIPER table.",
    )
    ADULT_AGE: int = setting(_age, 19, "Age (years) from which ALP_SITE_LOW_LIMITS apply.")
    WILSON_MIN_AGE: int = setting(
        _age,
        3,
        "Youngest age (years) for the Wilson disease check: liver disease from Wilson disease is not seen before "
        "about 3 years (EASL 2012), and a newborn's jaundice is not it. Below WILSON_MAX_AGE.",
    )
    WILSON_MAX_AGE: int = setting(
        _age,
        55,
        "Patients younger than this get the Wilson disease check (AASLD: consider it from 3 to 55 years in "
        "unexplained liver disease).",
    )
    RECENT_RESULT_DAYS: int = setting(
        _days,
        90,
        "A workup test resulted within this many days is not re-suggested.",
    )
    ALP_CURRENT_DAYS: int = setting(
        _days,
        365,
        "An ALP result older than this many days is history: shown, never the reason for advice today "
        "(a setting, not a sourced number: see docs/clinical-logic.md on the age of results).",
    )
    PERSISTENT_MIN_DAYS: int = setting(
        _days,
        28,
        "Two low ALP results at least this many days apart (no normal between, the latest current) count as "
        "persistent: a fall after surgery or acute illness can last weeks (addendum 6: 4 weeks, a design choice).",
    )
    AUTH: bool = setting(
        _on_off,
        True,
        "JWT verification of hook and feedback calls: on unless `off` (local use only).",
    )
    DISCOVERY_AUTH: bool = setting(_bool, False, "Also require a JWT for GET /cds-services.")
    TRUSTED_ISSUERS: Mapping[str, Mapping[str, Any]] = setting(
        _issuers,
        EMPTY,
        "Trusted CDS clients (env: `CDS_TRUSTED_ISSUERS_FILE`, a JSON or YAML file): each `iss` maps to `jwks` or "
        "`jwks_url`, optional `jku` allow-list, `fhir_servers` allow-list and `tenant`.",
    )
    PUBLIC_BASE_URL: str = setting(
        _base_url,
        "",
        "The URL clients call the service at, e.g. `https://cds.example.org`: a JWT's `aud` must be it plus the path "
        "called. Required when AUTH is on (never taken from the Host header).",
    )
    # 60 s, as Spring Security's resource servers allow by default (Microsoft's token handlers allow 300, panva's
    # openid-client 30): a client machine's clock a few seconds or a minute off is common, and every call of such a
    # client was refused with 5 s. A token stays in the replay store until exp plus this leeway, so it is never
    # accepted again while it is accepted at all.
    JWT_LEEWAY: int = setting(_whole_seconds, 60, "Seconds of clock skew allowed on `exp`, `iat` and `nbf`.")
    JWT_MAX_LIFETIME: int = setting(
        _whole_seconds,
        600,
        "Longest lifetime (`exp` - `iat`, seconds) of a token accepted; the spec recommends 5 minutes.",
    )
    REPLAY_STORE_URL: str = setting(
        str,
        "sqlite:///var/replay.db",
        "Where the `jti`s of accepted tokens are kept until they expire, shared by all workers that open it.",
    )
    REDIS_URL: str = setting(
        _redis_url,
        "",
        "Redis for the `jti`s of accepted tokens, shared by every replica (`redis://host:6379/0`, `rediss://` for "
        "TLS); empty: REPLAY_STORE_URL.",
    )
    REDIS_TIMEOUT: float = setting(
        _seconds,
        1.0,
        "Seconds to connect to Redis and to get its answer; then the replay store counts as down.",
    )
    REPLAY_FAIL_OPEN: bool = setting(
        _bool,
        False,
        "When the replay store is down: off refuses the token (503); on accepts it without the replay check and "
        "logs `replay_store_unavailable_fail_open`.",
    )
    FHIR_SERVERS: tuple[str, ...] = setting(
        _comma_list,
        (),
        "With AUTH off, the only fhirServer values accepted (comma-separated).",
    )
    CORS_ORIGINS: tuple[str, ...] = setting(
        _comma_list,
        (),
        "Browser origins allowed to call the service (comma-separated; `*` for any).",
    )
    FEEDBACK_DB_URL: str = setting(str, "sqlite:///var/feedback.db", "SQLAlchemy URL of the feedback store.")
    FEEDBACK_DB_TIMEOUT: float = setting(
        _seconds,
        5.0,
        "Seconds a feedback-store operation may take (connecting, waiting for a lock, a statement); then 503.",
    )
    FEEDBACK_DB_MIGRATE: bool = setting(
        _bool,
        True,
        "on: the service brings the feedback schema to its own version at start (under a lock: once for all "
        "replicas); off: it only checks, and a schema behind is a 503 until `alp-cds migrate` has run. A schema "
        "newer than the service's refuses the start either way.",
    )
    MIGRATE_TIMEOUT: float = setting(
        _seconds,
        600.0,
        "Seconds `alp-cds migrate` gives the migration (statements, waits for locks); connecting is bounded by "
        "FEEDBACK_DB_TIMEOUT.",
    )
    FHIR_TIME_BUDGET: float = setting(_seconds, 8.0, "Seconds all FHIR fetching of one hook call may take.")
    OVERRIDE_KEY: str = setting(
        _override_key,
        "",
        "Secret key (at least 32 characters) of the override memory: the store knows a patient only by an "
        "HMAC-SHA256 of the caller's issuer and the patient's id under this key. Empty: nothing is remembered.",
        secret=True,
    )
    OVERRIDE_DAYS: int = setting(
        _days,
        365,
        "Days a clinician's override of a card (with a reason) is remembered: a warning of that kind for that "
        "patient is shown as information meanwhile, unless something new happened since.",
    )
    OVERRIDE_LOOKUP_TIMEOUT: float = setting(
        _seconds,
        0.5,
        "Seconds from the start of a hook call within which the patient's overrides must have been read (the "
        "reading runs beside the call's FHIR fetching), and at most half of FHIR_TIME_BUDGET; later, or with the "
        "store down, the cards are shown as if nothing had been overridden.",
    )
    FHIR_OPTIONAL_SHARE: float = setting(
        _fraction,
        0.75,
        "The part of FHIR_TIME_BUDGET and FHIR_MAX_CALL_BYTES (counted from the start of the call) within which the "
        "optional prefetch keys are fetched, after the required ones; the rest is kept for the reads that follow.",
    )
    FHIR_CALLS_PER_WORKER: int = setting(
        _whole_number,
        0,
        "Most hook calls of one worker process fetching from FHIR servers at once; a call that must fetch beyond it "
        "gets a 503 with Retry-After. 0: the worker's threads minus 4 under `alp-cds serve`, no limit elsewhere.",
    )
    LARGE_BODY_BYTES: int = setting(
        _positive_int,
        1_000_000,
        "A hook call whose body is larger than this (or chunked) counts as large (LARGE_CALLS_PER_WORKER).",
    )
    LARGE_CALLS_PER_WORKER: int = setting(
        _positive_int,
        4,
        "Most large hook calls one worker process parses and answers at once (memory); another waits for a slot.",
    )
    LARGE_CALL_WAIT: float = setting(
        _seconds,
        5.0,
        "Seconds a large hook call waits for a slot (its body not yet read) before a 503 with Retry-After.",
    )
    FHIR_MAX_ENTRIES: int = setting(_positive_int, 20000, "Most Bundle entries read per prefetch key.")
    FHIR_MAX_RESPONSE_BYTES: int = setting(
        _positive_int,
        10_000_000,
        "Most bytes read from one FHIR answer (a resource or a page); reading stops there and the call gets 412.",
    )
    FHIR_MAX_CALL_BYTES: int = setting(
        _positive_int,
        20_000_000,
        "Most bytes read from FHIR servers for one hook call, all answers together; then 412.",
    )
    LOG_LEVEL: str = setting(_log_level, "INFO", "Python log level (DEBUG, INFO, WARNING, ERROR, CRITICAL).")
    SMART_ISSUERS: tuple[str, ...] = setting(
        _smart_issuers,
        (),
        "FHIR base URLs (`iss`) the SMART companion app may be launched from (comma-separated). Empty: every "
        "launch is refused. Only launches from these are served: their discovery documents and FHIR servers are "
        "read, and the authorization and token endpoints their discovery names are used (https; see "
        "docs/smart-app.md).",
    )
    SMART_CLIENT_ID: str = setting(str, "alp-cds", "The client id the SMART app is registered under with the EHRs.")
    SMART_REDIRECT_URL: str = setting(
        _base_url,
        "",
        "The SMART app's redirect URL as registered with the EHRs. Empty: `CDS_PUBLIC_BASE_URL` + `/smart/callback`.",
    )
    SMART_LAUNCH_SECONDS: int = setting(
        _whole_seconds,
        600,
        "Seconds a SMART launch may take from `/smart/launch` to `/smart/callback` (the state is then forgotten).",
    )
    SMART_FRAME_ANCESTORS: tuple[str, ...] = setting(
        _frame_ancestors,
        (),
        "Who may show the SMART app in a frame (CSP `frame-ancestors`): origins, `'self'` or `'none'` "
        "(comma-separated). Empty: the origins of `CDS_SMART_ISSUERS` (EHRs embed apps).",
    )
    SMART_MAX_PENDING: int = setting(
        _positive_int,
        10_000,
        "Most SMART launches in progress kept at once; one client address holds at most a tenth of them (its own "
        "oldest are forgotten past that); past the whole number the oldest of the client holding the most go first.",
    )
    SMART_STATE_STORE_URL: str = setting(
        str,
        "sqlite:///var/smart-launch.db",
        "Where SMART launches in progress (state, PKCE verifier) are kept until used or expired, shared by workers.",
    )

    NOW: Callable[[], datetime] = field(default=_utc_now, repr=False, compare=False)

    @property
    def clinical(self) -> ClinicalSettings:
        """The narrow view the clinical rules get."""
        return ClinicalSettings(**{f.name: getattr(self, f.name) for f in fields(ClinicalSettings)})


def _as_in_settings(name: str) -> Any:
    """A field with the default of the setting of that name (declared once, in :class:`Settings`)."""
    declared = Settings.__dataclass_fields__[name]
    if declared.default_factory is not MISSING:
        return field(default_factory=declared.default_factory)
    return field(default=declared.default)


@dataclass(frozen=True, slots=True)
class ClinicalSettings:
    """The settings the clinical rules (``service/clinical``) read, and no other: the hooks and the SMART app hand
    them this view (:attr:`Settings.clinical`). Types and defaults are those of :class:`Settings`."""

    ALP_SITE_LOW_LIMITS: Mapping[str, float] = _as_in_settings("ALP_SITE_LOW_LIMITS")
    ADULT_AGE: int = _as_in_settings("ADULT_AGE")
    WILSON_MIN_AGE: int = _as_in_settings("WILSON_MIN_AGE")
    WILSON_MAX_AGE: int = _as_in_settings("WILSON_MAX_AGE")
    RECENT_RESULT_DAYS: int = _as_in_settings("RECENT_RESULT_DAYS")
    ALP_CURRENT_DAYS: int = _as_in_settings("ALP_CURRENT_DAYS")
    PERSISTENT_MIN_DAYS: int = _as_in_settings("PERSISTENT_MIN_DAYS")


ENV_PREFIX = "CDS_"


@dataclass(frozen=True)
class Setting:
    """A row of the settings table."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name + ("_FILE" if self.name == "TRUSTED_ISSUERS" else "")


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(
        f.name,
        f.metadata["parse"],
        f.default if f.default_factory is MISSING else f.default_factory(),
        f.metadata["doc"],
    )
    for f in fields(Settings)
    if "parse" in f.metadata
)


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults <- environment <- overrides. A name that is no setting, as an override or as a ``CDS_`` variable
    of the environment, is a :class:`SettingsError` naming the closest setting (a typo such as
    ``CDS_WILSON_MAX_AEG`` would otherwise change nothing, silently); ``NOW`` (the clock) may be injected."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    check_names(overrides, environ)
    values: dict[str, Any] = {name: overrides[name] for name in INJECTABLE if name in overrides}
    for setting in SETTINGS:
        if setting.name in overrides:
            raw = overrides[setting.name]
        elif setting.env_name in environ:
            raw = environ[setting.env_name]
        else:
            continue  # the default
        try:
            values[setting.name] = setting.parse(raw)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"setting {setting.name} ({setting.env_name}): {exc}") from None
    settings = Settings(**values)
    check_combinations(settings)
    return settings


def check_combinations(values: Settings) -> None:
    """Settings each valid alone that together would silently switch a rule off."""
    if values.WILSON_MIN_AGE >= values.WILSON_MAX_AGE:
        raise SettingsError(
            f"setting WILSON_MIN_AGE (CDS_WILSON_MIN_AGE), {values.WILSON_MIN_AGE}, must be below WILSON_MAX_AGE "
            f"(CDS_WILSON_MAX_AGE), {values.WILSON_MAX_AGE}: otherwise no patient gets the Wilson disease check"
        )


INJECTABLE = frozenset({"NOW"})  # what tests and tools may pass besides the settings: the clock


# The variables Kubernetes gives a pod for every Service of its namespace (enableServiceLinks): a Service named
# "cds-redis" gives CDS_REDIS_SERVICE_HOST, CDS_REDIS_SERVICE_PORT(_<port name>), CDS_REDIS_PORT and
# CDS_REDIS_PORT_6379_TCP(_PROTO, _PORT, _ADDR). Not settings, and no reason to refuse the start.
SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+?_(?:PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)?|SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?)"
)


def check_names(overrides: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """A name that is no setting is refused, with the closest setting: the override's name, or for a variable of
    the environment that setting's variable (:attr:`Setting.env_name`). Kubernetes service-link variables that are
    no setting are let be (:data:`SERVICE_LINK`)."""
    names = set(setting_names())
    by_env_name = {setting.env_name: setting for setting in SETTINGS}
    unknown = [k for k in overrides if k not in names | INJECTABLE]
    unknown += [
        k for k in environ if k.startswith(ENV_PREFIX) and k not in by_env_name and not SERVICE_LINK.fullmatch(k)
    ]
    if unknown:
        given = unknown[0]
        if given in overrides:
            close = difflib.get_close_matches(given, sorted(names), n=1)
        else:  # matched without the prefix, against the settings' names and their variables' (TRUSTED_ISSUERS_FILE)
            candidates = {name.removeprefix(ENV_PREFIX): name for name in by_env_name}
            candidates |= {setting.name: setting.env_name for setting in SETTINGS}
            match = difflib.get_close_matches(given.removeprefix(ENV_PREFIX), sorted(candidates), n=1)
            close = [candidates[match[0]]] if match else []
        hint = f"; did you mean {close[0]}?" if close else ""
        raise SettingsError(f"{given} is not a setting of this service{hint} (docs/configuration.md)")


def check_startup(values: Settings) -> None:
    """Combinations of settings the service must not start with (:class:`SettingsError` says what to set)."""
    if values.AUTH and not values.PUBLIC_BASE_URL:
        raise SettingsError(
            "CDS_PUBLIC_BASE_URL must be set when CDS_AUTH is on: a JWT's aud is checked against the URL clients "
            "call, which the Host header cannot be trusted to give. Set it (e.g. https://cds.example.org), "
            "or use CDS_AUTH=off for local development."
        )
    if values.SMART_ISSUERS and not smart_redirect_url(values):
        raise SettingsError(
            "CDS_SMART_ISSUERS is set but the SMART app has no redirect URL: set CDS_SMART_REDIRECT_URL (as registered "
            "with the EHR) or CDS_PUBLIC_BASE_URL."
        )


def smart_redirect_url(values: Settings) -> str:
    """The SMART app's redirect URL: set, or derived from the public base URL; empty when neither is known."""
    if values.SMART_REDIRECT_URL:
        return values.SMART_REDIRECT_URL
    return values.PUBLIC_BASE_URL + "/smart/callback" if values.PUBLIC_BASE_URL else ""


def smart_frame_ancestors(values: Settings) -> list[str]:
    """The CSP ``frame-ancestors`` sources of the SMART app: as set, else the allow-listed EHRs' origins."""
    if values.SMART_FRAME_ANCESTORS:
        return list(values.SMART_FRAME_ANCESTORS)
    origins = []
    for issuer in values.SMART_ISSUERS:
        parts = urlsplit(issuer)
        origin = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        if origin not in origins:
            origins.append(origin)
    return origins or ["'none'"]


def smart_launch_url(values: Settings) -> str:
    """Where an EHR launches the SMART app from a card link; empty when the app is off or its address unknown."""
    if not values.SMART_ISSUERS:
        return ""
    if values.PUBLIC_BASE_URL:
        return values.PUBLIC_BASE_URL + "/smart/launch"
    redirect = values.SMART_REDIRECT_URL
    return redirect.removesuffix("/callback") + "/launch" if redirect.endswith("/smart/callback") else ""


def setting_names() -> list[str]:
    return [setting.name for setting in SETTINGS]

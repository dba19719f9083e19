"""HTTP for the SMART companion app: ``/smart/launch`` (EHR launch), ``/smart/callback`` (code exchange, then the
page). Transport only: the patient's data is read and judged by the same code as a hook call (``service.fhir``,
``service.hooks.patient_chart``, ``service.clinical``), the chart is drawn by ``service.smart.chart``.

The access token lives in the callback's request only: it reads the chart, the page is rendered, and it is gone.
It is never stored, logged, put in a URL or sent to the browser. Every answer is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, render_template, request
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from service.clinical.facts import number_text
from service.errors import CdsError
from service.fhir.client import CallBudget, FhirClient
from service.fhir.readers import read_lab_results, read_medications
from service.gallery import markdown
from service.hooks.low_alp_workup import SERVICE as PATIENT_VIEW
from service.hooks.patient_chart import not_read, read_scope, resolver
from service.hooks.run import run_hook
from service.logs import log_event
from service.settings import Settings, smart_frame_ancestors, smart_launch_url, smart_redirect_url
from service.smart import oauth
from service.smart.chart import render_svg
from service.smart.oauth import LaunchError
from service.smart.series import age_text, build_series
from service.smart.store import LaunchStore, client_of

log = logging.getLogger("service.smart")
bp = Blueprint("smart", __name__, url_prefix="/smart")
MAX_PARAM = 2048
PRINTABLE = re.compile(r"[\x21-\x7e]+")
COOKIE_PREFIX = "alp_smart_launch_"  # + a digest of the state: several launches in one browser do not collide


def _cookie_name(state: str) -> str:
    return COOKIE_PREFIX + hashlib.sha256(state.encode()).hexdigest()[:16]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def settings() -> Settings:
    return current_app.config["CDS"]


def store() -> LaunchStore:
    return current_app.extensions["smart_launches"]


def _param(name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise LaunchError(400, f"the request has no {name}: start the app from the EHR")
    if len(value) > MAX_PARAM or not PRINTABLE.fullmatch(value):
        raise LaunchError(400, f"{name} is not a value the EHR would send")
    return value


STORE_RETRY_SECONDS = 60  # the 503 of a launch store that cannot be used says "try again in a minute"


@contextmanager
def store_errors() -> Iterator[None]:
    """The launch store cannot be read or written (disk full, locked past its busy timeout): a 503, retry later."""
    try:
        yield
    except SQLAlchemyError as exc:
        log_event(log, logging.ERROR, "smart_store_unavailable", error=type(exc).__name__)
        raise LaunchError(503, "the app cannot keep track of launches right now; try again in a minute") from None


def _event(name: str, **fields: Any) -> None:
    """One JSON log line: the step and its outcome, never a token, a code, a state or patient data."""
    log_event(log, logging.INFO, name, **fields)


@bp.errorhandler(LaunchError)
def launch_error(error: LaunchError) -> tuple[str, int, dict[str, str]]:
    _event("smart_refused", status=error.status)
    page = render_template("smart_error.html", status=error.status, message=error.message)
    return page, error.status, {"Retry-After": str(STORE_RETRY_SECONDS)} if error.status == 503 else {}


@bp.errorhandler(CdsError)
def data_error(error: CdsError) -> tuple[str, int]:
    """Reading the chart failed (the FHIR server refused, timed out, answered with another patient...): the
    EHR's fault, not the browser's."""
    status = 403 if error.status == 403 else 502
    _event("smart_refused", status=status)
    message = f"the patient's data could not be read from the EHR's FHIR server: {error.message}"
    return render_template("smart_error.html", status=status, message=message), status


@bp.app_context_processor
def smart_app_address() -> dict[str, str]:
    """The integrator page names the app's launch and redirect URLs when it is on."""
    return {
        "smart_launch_url": smart_launch_url(settings()),
        "smart_redirect_url": smart_redirect_url(settings()),
        "smart_scopes": oauth.SCOPES_V2,
    }


@bp.after_request
def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Nothing on the page loads from anywhere: inline styles and the inline SVG only.
    # Framed only by the EHRs allowed to (CDS_SMART_FRAME_ANCESTORS; by default the allow-listed EHRs' origins).
    ancestors = smart_frame_ancestors(settings())
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors {' '.join(ancestors)}"
    )
    if ancestors in (["'none'"], ["'self'"]):  # X-Frame-Options cannot name other origins: CSP does it then
        response.headers["X-Frame-Options"] = "DENY" if ancestors == ["'none'"] else "SAMEORIGIN"
    name = g.get("smart_clear_cookie")
    if name:  # the callback used (or refused) the launch: its browser binding is gone
        response.delete_cookie(name, path="/smart", secure=_secure(), httponly=True, samesite="Lax")
    return response


def _secure() -> bool:
    return smart_redirect_url(settings()).lower().startswith("https:")


@bp.get("/launch")
def launch() -> Response:
    config = settings()
    iss = _param("iss").rstrip("/")
    launch_id = _param("launch")
    allowed = [u.rstrip("/") for u in config.SMART_ISSUERS]
    if iss not in allowed:
        raise LaunchError(
            403, "this EHR (iss) is not on the app's allow-list (CDS_SMART_ISSUERS); nothing was sent to it"
        )
    smart = oauth.discover(iss, config)
    state, verifier = oauth.new_state(), oauth.new_verifier()
    browser = secrets.token_urlsafe(32)  # binds the launch to this browser: the callback needs it back
    redirect_uri = smart_redirect_url(config)
    url = oauth.authorization_url(smart, config.SMART_CLIENT_ID, redirect_uri, iss, launch_id, state, verifier)
    with store_errors():
        store().put(
            state,
            {
                "iss": iss,
                "token_endpoint": smart.token_endpoint,
                "verifier": verifier,
                "redirect_uri": redirect_uri,
                "browser": _digest(browser),
            },
            config.SMART_LAUNCH_SECONDS,
            client_of(request.remote_addr),
        )
    _event("smart_launch", scopes="v2" if smart.scopes == oauth.SCOPES_V2 else "v1")
    response = redirect(url, 302)
    response.set_cookie(
        _cookie_name(state),
        browser,
        max_age=config.SMART_LAUNCH_SECONDS,
        path="/smart",
        secure=_secure(),
        httponly=True,
        samesite="Lax",
    )
    return response


NOT_THIS_BROWSER = (
    "this sign-in was not started in this browser (or the browser did not keep the app's launch cookie): "
    "launch the app again from the EHR in this browser"
)


@bp.get("/callback")
def callback() -> str:
    config = settings()
    state = _param("state")
    g.smart_clear_cookie = _cookie_name(state)
    browser = request.cookies.get(g.smart_clear_cookie)
    if not browser:
        raise LaunchError(400, NOT_THIS_BROWSER)
    with store_errors():
        pending = store().take(state)
    if pending is None:
        raise LaunchError(400, "this sign-in is unknown, expired or already used: launch the app again from the EHR")
    if not hmac.compare_digest(str(pending.get("browser", "")), _digest(browser)):
        raise LaunchError(400, NOT_THIS_BROWSER)  # the launch is used up: a stolen answer cannot be tried again
    error = request.args.get("error")
    if error is not None:
        code = error if oauth.ERROR_CODE.fullmatch(error) else "error"
        raise LaunchError(403, f"the EHR did not authorise the app ({code})")
    token = oauth.exchange_code(pending, _param("code"), config)
    page = chart_page(pending["iss"], token["access_token"], token["patient"], config)
    page["highlight"] = token["highlight"]
    _event("smart_page", cards=len(page["cards"]), points=len(page["series"].points))
    return render_template("smart_app.html", **page)


def chart_page(iss: str, access_token: str, patient_id: str, config: Settings) -> dict[str, Any]:
    """Everything the page shows, read with the token as a hook call reads the chart (the same prefetch templates,
    limits, readers and rules), and the cards the patient-view service would give now."""
    body = {"hook": PATIENT_VIEW.hook, "context": {"patientId": patient_id}, "fhirServer": iss}
    budget = CallBudget(config.FHIR_TIME_BUDGET, config.FHIR_MAX_CALL_BYTES)

    def make_client() -> FhirClient:
        return FhirClient.configured(iss, access_token, config, budget)

    # No prefetch in the body: every key is fetched, the related labs of every date (the page tabulates them all).
    ran = run_hook(PATIENT_VIEW, body, config, make_client, narrow=False)
    call, cards, data = ran.call, ran.cards, ran.call.data
    scope = read_scope(call)
    labs = read_lab_results(data.get("alp"), data.get("labs"), scope=scope)
    medications = read_medications(
        [data.get("medicationStatements"), data.get("medicationRequests")], scope, resolver(call)
    )
    series = build_series(scope.patient, labs, medications, call.now, config.clinical)
    missing = not_read(call, scope)  # data that could not be read is said so, never shown as "none on record"
    patient = scope.patient
    return {
        "series": series,
        "svg": Markup(render_svg(series)) if series.points or series.periods else None,
        "cards": [
            {**card, "kind": kind, "detail_html": Markup(markdown(card.get("detail", "")))} for kind, card in cards
        ],
        "patient": {
            "name": patient.name or "name not on record",
            "id": patient.id,
            "sex": patient.gender or "sex unknown",
            "age": age_text(patient, call.now) or "age unknown",
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else "unknown",
            "deceased": patient.deceased,
        },
        "not_read": missing,
        "today": call.now.date().isoformat(),
        "num": number_text,
        "steps_text": [
            (s.start.isoformat(), s.end.isoformat(), age_text(patient, s.start) or "", number_text(s.low), s.label)
            for s in series.steps
        ],
    }

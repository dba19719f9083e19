"""Every response of the app: CORS headers on the CDS endpoints (``CDS_CORS_ORIGINS``), request metrics and one
access log line (no patient data: the route, never the URL; the service, hookInstance, issuer, status, time and
card count)."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, g, request

from service import metrics
from service.endpoints.incoming import settings
from service.logs import log_event

log = logging.getLogger("service.access")
bp = Blueprint("access", __name__)
CDS_PATHS = ("/cds-services",)


@bp.before_app_request
def start_timer() -> None:
    g.started = time.perf_counter()


@bp.after_app_request
def cors_and_access_log(response: Response) -> Response:
    add_cors_headers(response)
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    service = g.get("service_id") or ""
    metrics.REQUESTS.labels(endpoint, service, str(response.status_code)).inc()
    metrics.REQUEST_SECONDS.labels(endpoint, service, str(response.status_code)).observe(elapsed)
    log_event(
        log,
        logging.INFO,
        "request",
        method=request.method,
        path=endpoint,
        service=g.get("service_id"),
        hookInstance=g.get("hook_instance"),
        issuer=g.get("issuer"),
        status=response.status_code,
        ms=round(elapsed * 1000, 1),
        cards=g.get("card_count"),
    )
    return response


REFUSED_ORIGINS_LOGGED = 100  # distinct refused origins logged per process: a client cannot flood the log
_refused_logged: set[str] = set()


def add_cors_headers(response: Response) -> None:
    origin = request.headers.get("Origin")
    allowed = settings().CORS_ORIGINS
    if not origin or not request.path.startswith(CDS_PATHS):
        return
    if not ("*" in allowed or origin in allowed):
        _log_refused(origin[:200])
        return
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    response.headers["Vary"] = "Origin"
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"


def _log_refused(origin: str) -> None:
    """Once per origin: a browser page from an origin not in ``CDS_CORS_ORIGINS`` gets no CORS headers, and the
    browser then blocks the answer with nothing on the service's side to say why (a self-hosted Sandbox, a
    127.0.0.1 for a localhost)."""
    if origin in _refused_logged or len(_refused_logged) >= REFUSED_ORIGINS_LOGGED:
        return
    _refused_logged.add(origin)
    log_event(
        log,
        logging.WARNING,
        "cors_origin_refused",
        origin=origin,
        message="this browser origin is not in CDS_CORS_ORIGINS: the browser will block the answer",
    )

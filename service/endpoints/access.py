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


def add_cors_headers(response: Response) -> None:
    origin = request.headers.get("Origin")
    allowed = settings().CORS_ORIGINS
    if not origin or not request.path.startswith(CDS_PATHS) or not ("*" in allowed or origin in allowed):
        return
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    response.headers["Vary"] = "Origin"
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"

"""HTTP transport for CDS Hooks 2.0: discovery and hook calls. Parses, validates, maps errors to status codes;
knows nothing about ALP."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from service.errors import BadRequest, CdsError, NotFound, operation_outcome
from service.fhir.client import FhirClient
from service.fhir.prefetch import resolve_prefetch
from service.hooks import CdsService, HookCall
from service.validation import first_error

log = logging.getLogger("service.access")
bp = Blueprint("cds", __name__)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def error_response(error: CdsError) -> Response:
    return json_response(operation_outcome(error.message, error.code), error.status)


def services() -> dict[str, CdsService]:
    return current_app.extensions["cds_services"]


@bp.get("/cds-services")
def discovery() -> Response:
    return json_response({"services": [s.discovery() for s in services().values()]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    service = services().get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id {service_id!r}; see GET /cds-services")
    g.service_id = service_id
    body = parse_json_body()
    problem = first_error("hook-request", body)
    if problem:
        raise BadRequest(f"invalid hook request: {problem}")
    g.hook_instance = body["hookInstance"]
    if body["hook"] != service.hook:
        raise BadRequest(f"hook {body['hook']!r} does not match service {service_id!r}, which answers {service.hook!r}")
    problem = first_error(service.context_schema, body["context"])
    if problem:
        raise BadRequest(f"invalid {service.hook} context: {problem}")

    settings = current_app.config["CDS"]
    make_client = lambda: client_for(body, settings)  # noqa: E731
    data = resolve_prefetch(service.prefetch, body, make_client, settings["FHIR_FETCH_WORKERS"])
    call = HookCall(request=body, data=data, settings=settings, now=settings["NOW"](), fetch=fetcher(make_client))
    cards = service.handler(call)
    g.card_count = len(cards)
    return json_response({"cards": cards})


def client_for(body: dict[str, Any], settings: dict[str, Any]) -> FhirClient | None:
    server = body.get("fhirServer")
    if not server:
        return None
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    return FhirClient(
        server,
        token,
        connect_timeout=settings["FHIR_CONNECT_TIMEOUT"],
        read_timeout=settings["FHIR_READ_TIMEOUT"],
        max_pages=settings["FHIR_MAX_PAGES"],
    )


def fetcher(make_client):
    """A lazy one-off reader for handlers that need a resource the prefetch did not hold."""

    def fetch(relative: str) -> dict[str, Any]:
        client = make_client()
        if client is None:
            raise LookupError("no fhirServer in the request")
        try:
            return client.fetch(relative)
        finally:
            client.session.close()

    return fetch


def parse_json_body() -> Any:
    if not request.mimetype or request.mimetype not in ("application/json", "application/fhir+json"):
        raise BadRequest("Content-Type must be application/json")
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


@bp.before_app_request
def start_timer() -> None:
    g.started = time.perf_counter()


@bp.after_app_request
def access_log(response: Response) -> Response:
    entry = {
        "event": "request",
        "method": request.method,
        "path": request.url_rule.rule if request.url_rule else "unmatched",
        "service": g.get("service_id"),
        "hookInstance": g.get("hook_instance"),
        "status": response.status_code,
        "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1),
        "cards": g.get("card_count"),
    }
    log.info(json.dumps({k: v for k, v in entry.items() if v is not None}))
    return response

"""HTTP transport for CDS Hooks 2.0: discovery, hook calls, feedback, CORS and operations endpoints.
Parses, authenticates, validates and maps errors to status codes; knows nothing about ALP."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from flask import Blueprint, Response, current_app, g, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DataError, SQLAlchemyError

from service import metrics
from service.bulkhead import Held
from service.errors import BadRequest, CdsError, NotFound, Overloaded, StoreUnavailable, TooLarge, operation_outcome
from service.feedback import storable_problem
from service.fhir.client import CallBudget, FhirClient
from service.fhir.lazy import UndecodableResource, decode_hook_request
from service.fhir.prefetch import fetched_keys, resolve_prefetch
from service.hooks import CdsService, HookCall
from service.security import Unauthorized, check_fhir_server, check_fhir_server_url
from service.settings import Settings
from service.validation import first_error

log = logging.getLogger("service.access")
bp = Blueprint("cds", __name__)
CDS_PATHS = ("/cds-services",)
MAX_JSON_DEPTH = 100  # FHIR resources nest about 15 levels; 1000 exhausts Python's stack in validation messages
HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an Authorization header can carry as a token


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(error: CdsError) -> Response:
    response = json_response(operation_outcome(error.message, error.code), error.status)
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
        log.info(json.dumps({"event": "auth_failed", "reason": error.reason, "path": request.path}))
    return response


def services() -> dict[str, CdsService]:
    return current_app.extensions["cds_services"]


def settings() -> Settings:
    return current_app.config["CDS"]


def authenticate() -> dict[str, Any] | None:
    """Claims of the caller's JWT, or None when AUTH is off (local development)."""
    if not settings().AUTH:
        return None
    authenticator = current_app.extensions["cds_authenticator"]
    claims = authenticator.verify(request.headers.get("Authorization"), authenticator.audience(request.path))
    g.issuer = claims["iss"]
    return claims


def find_service(service_id: str) -> CdsService:
    service = services().get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id {service_id!r}; see GET /cds-services")
    g.service_id = service_id
    return service


@bp.get("/cds-services")
def discovery() -> Response:
    if settings().DISCOVERY_AUTH:
        authenticate()
    return json_response({"services": [s.discovery() for s in services().values()]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    service = find_service(service_id)
    claims = authenticate()
    config = settings()
    g.slots = held = Held()  # given back by release_slots, whatever happens
    if request.content_length is None or request.content_length > config.LARGE_BODY_BYTES:
        try:
            held.take(current_app.extensions["cds_bulkheads"]["large"])  # memory: see service/bulkhead.py
        except Overloaded:
            drain_body(config.MAX_BODY_BYTES)
            raise
    body = parse_json_body(lazy=True)
    problem = first_error("hook-request", body)
    if problem:
        raise BadRequest(f"invalid hook request: {problem}")
    g.hook_instance = body["hookInstance"]
    if body["hook"] != service.hook:
        raise BadRequest(f"hook {body['hook']!r} does not match service {service_id!r}, which answers {service.hook!r}")
    problem = first_error(service.context_schema, body["context"])
    if problem:
        raise BadRequest(f"invalid {service.hook} context: {problem}")
    check_fhir_server_url(body.get("fhirServer"))
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    if token is not None and not HEADER_TOKEN.fullmatch(token):
        raise BadRequest(
            "fhirAuthorization.access_token: only visible ASCII characters (no spaces) can be sent as a bearer token"
        )

    budget = CallBudget(config.FHIR_TIME_BUDGET, config.FHIR_MAX_CALL_BYTES)
    make_client = lambda: with_fhir_slot(held, client_for(body, config, budget, claims))  # noqa: E731
    fetching = time.perf_counter()
    data = resolve_prefetch(service.prefetch, body, make_client, config.FHIR_FETCH_WORKERS)
    fetched = fetched_keys(service.prefetch, body)
    if fetched:
        metrics.PREFETCH_SECONDS.observe(time.perf_counter() - fetching)
    call = HookCall(
        request=body,
        data=data,
        settings=config,
        now=config.NOW(),
        fetch=fetcher(make_client),
        fetched=fetched,
    )
    try:
        issued = service.handler(call)
    except UndecodableResource as exc:  # found when the resource was read (service/fhir/lazy.py)
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    for kind, card in issued:
        metrics.CARDS.labels(kind, card["indicator"]).inc()
    if not current_app.extensions["cds_feedback"].record_cards_later(service_id, issued):
        metrics.AUDIT_DROPPED.inc(len(issued))
    g.card_count = len(issued)
    return json_response({"cards": [card for _, card in issued]})


@bp.post("/cds-services/<service_id>/feedback")
def post_feedback(service_id: str) -> Response:
    find_service(service_id)
    authenticate()
    body = parse_json_body()
    problem = first_error("feedback", body) or storable_problem(body["feedback"])
    if problem:
        raise BadRequest(f"invalid feedback: {problem}")
    try:
        stored = current_app.extensions["cds_feedback"].add_feedback(service_id, body["feedback"])
    except DataError as exc:  # the store refuses this data: retrying would not help
        logging.getLogger("service").error(json.dumps({"event": "feedback_refused", "error": type(exc).__name__}))
        raise BadRequest("the feedback store cannot hold this feedback; nothing was stored") from None
    except SQLAlchemyError as exc:
        logging.getLogger("service").error(json.dumps({"event": "feedback_not_stored", "error": type(exc).__name__}))
        raise StoreUnavailable("the feedback store is unavailable; nothing was stored, please retry") from None
    for item in body["feedback"]:
        metrics.FEEDBACK.labels(item["outcome"]).inc()
    return json_response({"stored": stored})


@bp.get("/")
def integrator_page() -> str:
    """Services, example exchanges and the card gallery, rendered on the server (no JavaScript)."""
    from service import gallery

    content = current_app.extensions.get("cds_gallery")
    if content is None:
        content = gallery.build(services(), settings())
        for exchange in content["exchanges"].values():
            exchange["request_json"] = json.dumps(exchange["request"], indent=2)
            exchange["response_json"] = json.dumps(exchange["response"], indent=2)
        current_app.extensions["cds_gallery"] = content
    return render_template(
        "index.html", services=[s.discovery() for s in services().values()], base=request.url_root, **content
    )


@bp.get("/openapi.json")
def openapi() -> Response:
    from service.openapi import openapi_document

    return json_response(openapi_document())


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz/hooks")
def readyz_hooks() -> Response:
    """Readiness for hook calls, the product (the Kubernetes readiness probe): they need no store, so a feedback
    store outage must not take every pod out of the Service. Answered without any I/O; the body gives the feedback
    store's state as last seen by this worker, for monitoring (``/readyz`` checks it)."""
    return json_response({"status": "ready", "feedback_store": current_app.extensions["cds_feedback"].last_state})


@bp.get("/readyz")
def readyz() -> Response:
    """The feedback store too (503 while it is down or its schema is not current): for monitoring."""
    try:
        current_app.extensions["cds_feedback"].ping()
    except Exception as exc:  # any failure means "not ready"
        return json_response({"status": "unavailable", "feedback_store": type(exc).__name__}, 503)
    return json_response({"status": "ready", "feedback_store": "ok"})


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)


def client_for(
    body: dict[str, Any],
    config: Settings,
    budget: CallBudget | None = None,
    claims: dict[str, Any] | None = None,
) -> FhirClient | None:
    """A client for the request's fhirServer, made only when something is to be fetched: a server that is not on
    the caller's allow-list is a 403 then (and nothing is sent)."""
    server = body.get("fhirServer")
    if not server:
        return None
    check_fhir_server(server, claims, config)
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    return FhirClient.configured(server, token, config, budget)


def with_fhir_slot(held: Held, client: FhirClient | None) -> FhirClient | None:
    """A call that is about to fetch takes a slot of the FHIR bulkhead first (503 at once when none is free)."""
    if client is not None:
        try:
            held.take(current_app.extensions["cds_bulkheads"]["fhir"])
        except Overloaded:
            client.session.close()
            raise
    return client


def drain_body(limit: int) -> None:
    """Read a body that will not be used and drop it, chunk by chunk (no memory kept), so that the client, which is
    still sending it, gets the answer rather than a reset connection."""
    left = limit + 1
    while left > 0:
        chunk = request.stream.read(min(65536, left))
        if not chunk:
            return
        left -= len(chunk)


@bp.teardown_request
def release_slots(_error: BaseException | None) -> None:
    slots = g.pop("slots", None)
    if slots is not None:
        slots.release_all()


def fetcher(make_client: Callable[[], FhirClient | None]) -> Callable[[str], dict[str, Any]]:
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


def parse_json_body(*, lazy: bool = False) -> Any:
    """The request's JSON; ``lazy`` (hook calls) keeps the resources of prefetch Bundles undecoded until a reader
    wants them (:mod:`service.fhir.lazy`), which is most of the work on a big chart."""
    if not request.mimetype or request.mimetype not in ("application/json", "application/fhir+json"):
        raise BadRequest("Content-Type must be application/json")
    raw = request.get_data(cache=False)
    # Werkzeug stops a chunked body at MAX_CONTENT_LENGTH without an error; it is set one byte higher (app.py)
    # so that a longer body shows here, as it does for a Content-Length body.
    limit = settings().MAX_BODY_BYTES
    if len(raw) > limit:
        raise TooLarge(f"request body is larger than {limit} bytes (CDS_MAX_BODY_BYTES)")
    try:
        body = decode_hook_request(raw) if lazy else orjson.loads(raw)
    except (orjson.JSONDecodeError, msgspec.DecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid JSON: it is not UTF-8") from None
    except RecursionError:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    # The resources of a lazy Bundle are not walked: the decoder refused what it could not nest, and a resource is
    # only ever read along fixed paths, never recursively (a schema message or a log line never holds one). Their
    # bytes were checked to be UTF-8 and JSON; a number in them that cannot be decoded is a 400 when it is read.
    if nested_deeper_than(body, MAX_JSON_DEPTH):
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return body


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest more than ``limit`` levels deep: checked level by level, without
    recursion, before anything recursive (schema validation and its messages, the feedback checks) sees the body."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return False


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
    entry = {
        "event": "request",
        "method": request.method,
        "path": endpoint,
        "service": g.get("service_id"),
        "hookInstance": g.get("hook_instance"),
        "issuer": g.get("issuer"),
        "status": response.status_code,
        "ms": round(elapsed * 1000, 1),
        "cards": g.get("card_count"),
    }
    log.info(json.dumps({k: v for k, v in entry.items() if v is not None}))
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

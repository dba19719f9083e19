"""CDS Hooks 2.0 transport: discovery (``GET /cds-services``) and hook calls (``POST /cds-services/<id>``).
Parses, authenticates, validates, takes the bulkhead slots and builds the call's FHIR client; the hook itself runs
in :func:`service.hooks.run.run_hook`, which knows nothing of HTTP. Knows nothing about ALP."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from service import metrics
from service.bulkhead import Held
from service.endpoints.incoming import authenticate, find_service, parse_json_body, services, settings
from service.endpoints.responses import json_response
from service.errors import BadRequest, Overloaded
from service.fhir.client import CallBudget, FhirClient
from service.fhir.lazy import UndecodableResource
from service.hooks.run import run_hook
from service.security import check_fhir_server, check_fhir_server_url
from service.settings import Settings
from service.validation import first_error

bp = Blueprint("cds", __name__)
HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an Authorization header can carry as a token


# A discovery URL written with a trailing slash (``/cds-services/``) is answered too: the CDS Hooks Sandbox then
# calls each service at that URL + "/" + id, so ``/cds-services//<id>`` is a hook call as well (not merged into one
# slash with a redirect, which a browser's preflight cannot follow; the JWT's aud is that URL as called).
@bp.get("/cds-services")
@bp.get("/cds-services/")
def discovery() -> Response:
    if settings().DISCOVERY_AUTH:
        authenticate()
    return json_response({"services": [s.discovery() for s in services().values()]})


@bp.post("/cds-services/<service_id>")
@bp.post("/cds-services//<service_id>", merge_slashes=False)
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
    if body.get("fhirServer"):
        body["fhirServer"] = check_fhir_server_url(body["fhirServer"])
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    if token is not None and not HEADER_TOKEN.fullmatch(token):
        raise BadRequest(
            "fhirAuthorization.access_token: only visible ASCII characters (no spaces) can be sent as a bearer token"
        )

    # The override memory is read beside the FHIR fetching, and taken only if it came in time (service/memory.py).
    memory = current_app.extensions["cds_memory"]
    patient_hash = memory.key(body["context"]["patientId"], claims)
    remembered = memory.recall(patient_hash, config.NOW()).result if patient_hash else None
    budget = CallBudget(config.FHIR_TIME_BUDGET, config.FHIR_MAX_CALL_BYTES)
    make_client = lambda: with_fhir_slot(held, client_for(body, config, budget, claims))  # noqa: E731
    try:
        ran = run_hook(service, body, config, make_client, remembered=remembered)
    except UndecodableResource as exc:  # found when the resource was read (service/fhir/lazy.py)
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if ran.prefetch_seconds is not None:
        metrics.PREFETCH_SECONDS.observe(ran.prefetch_seconds)
    issued = ran.cards
    for kind, card in issued:
        metrics.CARDS.labels(kind, card["indicator"]).inc()
    caller = memory.caller(claims)
    if not current_app.extensions["cds_feedback"].record_cards_later(service_id, issued, patient_hash, caller):
        metrics.AUDIT_DROPPED.inc(len(issued))
    g.card_count = len(issued)
    return json_response({"cards": [card for _, card in issued]})


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
            client.close()
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

"""What the CDS endpoints share on the way in: the app's services and settings, the caller's JWT, the service
named in the URL, and the request's JSON body (size, encoding and nesting checked before anything reads it)."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from flask import current_app, g, request

from service.errors import BadRequest, NotFound, TooLarge
from service.fhir.lazy import decode_hook_request
from service.hooks import CdsService
from service.jsontext import loads
from service.settings import Settings

MAX_JSON_DEPTH = 100  # FHIR resources nest about 15 levels; 1000 exhausts Python's stack in validation messages


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
        body = decode_hook_request(raw) if lazy else loads(raw)
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

"""The value sets the rules read, served as FHIR R4 ValueSet resources (read-only, public terminology, no patient
data): ``GET /fhir/ValueSet`` (a searchset Bundle; ``_id``, ``url``, ``name``, ``_summary``) and
``GET /fhir/ValueSet/{id}``. Content is built by ``service.clinical.value_sets`` from the data files."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, request

from service.clinical import value_sets
from service.endpoints.incoming import settings
from service.endpoints.responses import json_response
from service.errors import operation_outcome

bp = Blueprint("terminology", __name__)
FHIR_JSON = "application/fhir+json"
SEARCH_PARAMETERS = {"_id", "url", "name", "_summary", "_format"}
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}


@bp.before_request
def only_json() -> Response | None:
    """The value sets are served as JSON only: a client that asks for another format (``_format=xml``, an
    ``Accept`` that takes neither FHIR JSON nor JSON) gets a 406, as FHIR's REST rules say, not a body it did not
    ask for."""
    formats = request.args.getlist("_format")
    if any(f.split(";")[0].strip().lower() not in JSON_FORMATS for f in formats):
        return _fhir(operation_outcome("only _format=json is served", "not-supported"), 406)
    if (
        not formats
        and request.accept_mimetypes
        and not request.accept_mimetypes.best_match([FHIR_JSON, "application/json"])
    ):
        return _fhir(operation_outcome("only application/fhir+json is served", "not-supported"), 406)
    return None


def _base() -> str:
    """Where the value sets are served: ``CDS_PUBLIC_BASE_URL`` when set (their canonical URLs then stay the same
    whatever name a client used), else the address this request came to."""
    return (settings().PUBLIC_BASE_URL or request.url_root).rstrip("/")


def _fhir(body: dict[str, Any], status: int = 200) -> Response:
    response = json_response(body, status)
    response.mimetype = FHIR_JSON
    return response


def _summary() -> bool | Response:
    value = request.args.get("_summary", "false")
    if value not in ("true", "false"):
        return _fhir(operation_outcome("_summary must be true or false", "not-supported"), 400)
    return value == "true"


def _any_of(parameter: str) -> list[str] | None:
    """The values a search parameter accepts, as FHIR reads them: repeated parameters and comma-separated values
    are alternatives (``_id=alendronate,risedronate``); None when the parameter is not given."""
    if parameter not in request.args:
        return None
    return [value for given in request.args.getlist(parameter) for value in given.split(",")]


def _canonical_matches(resource: dict[str, Any], value: str) -> bool:
    """A canonical search value: the url, or ``url|version`` (FHIR's canonical references)."""
    url, bar, version = value.partition("|")
    return url == resource["url"] and (not bar or version == resource["version"])


@bp.get("/fhir/ValueSet")
def search() -> Response:
    unknown = sorted(set(request.args) - SEARCH_PARAMETERS)
    if unknown:
        names = ", ".join(u[:40] for u in unknown[:5])
        message = f"unsupported search parameter(s): {names}; supported: _id, url, name, _summary"
        return _fhir(operation_outcome(message, "not-supported"), 400)
    summary = _summary()
    if isinstance(summary, Response):
        return summary
    base = _base()
    ids, urls, names = (_any_of(parameter) for parameter in ("_id", "url", "name"))
    entries = []
    for definition in value_sets.definitions():
        resource = value_sets.value_set(definition, base, summary)
        if ids is not None and definition.id not in ids:
            continue
        if urls is not None and not any(_canonical_matches(resource, url) for url in urls):
            continue
        if names is not None and not any(resource["name"].lower().startswith(n.lower()) for n in names):
            continue
        entries.append({"fullUrl": resource["url"], "resource": resource, "search": {"mode": "match"}})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": request.url}],
        "entry": entries,
    }
    return _fhir(bundle)


@bp.get("/fhir/ValueSet/<path:value_set_id>")
def read(value_set_id: str) -> Response:
    definition = value_sets.by_id().get(value_set_id) if FHIR_ID.fullmatch(value_set_id) else None
    if definition is None:
        shown = value_set_id if FHIR_ID.fullmatch(value_set_id) else "(not a FHIR id)"
        return _fhir(
            operation_outcome(f"ValueSet/{shown} is not known: GET /fhir/ValueSet lists them", "not-found"), 404
        )
    summary = _summary()
    if isinstance(summary, Response):
        return summary
    return _fhir(value_sets.value_set(definition, _base(), summary))

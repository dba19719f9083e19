"""Build hook requests from FHIR Bundles by evaluating a service's prefetch templates in memory.

Used by ``fixtures/scenarios.py`` (ready requests), the tests (a fake FHIR server) and the benchmark. It understands
the subset of FHIR search the templates use: a read (``Patient/{id}``) and a type search with ``patient``,
``code`` (``system|code`` lists), ``_sort=-date`` and ``_count``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from service.fhir.prefetch import fill_template
from service.fhir.readers import observation_time

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # the fixtures' "today"
USER = "Practitioner/example-clinician"


def _date_key(resource: Mapping[str, Any]) -> str:
    if resource.get("resourceType") == "Observation":
        when = observation_time(dict(resource))
        return when.isoformat() if when else ""
    return str(
        resource.get("authoredOn")
        or resource.get("performedDateTime")
        or (resource.get("effectivePeriod") or resource.get("performedPeriod") or {}).get("start")
        or ""
    )


def _resource_codes(resource: Mapping[str, Any]) -> set[str]:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return {f"{c.get('system')}|{c.get('code')}" for c in concept.get("coding") or ()}


def search(resources: Iterable[Mapping[str, Any]], query: str) -> dict[str, Any] | None:
    """Evaluate a rendered prefetch query (read or search) against resources; a search gives a searchset Bundle."""
    parts = urlsplit(query)
    path = parts.path.strip("/")
    if "/" in path:
        kind, ident = path.split("/", 1)
        return next((dict(r) for r in resources if r.get("resourceType") == kind and r.get("id") == ident), None)
    params = dict(parse_qsl(parts.query))
    matches = [r for r in resources if r.get("resourceType") == path]
    if "patient" in params:
        ref = f"Patient/{unquote(params['patient'])}"
        matches = [r for r in matches if (r.get("subject") or r.get("patient") or {}).get("reference") == ref]
    if "code" in params:
        wanted = set(params["code"].split(","))
        matches = [r for r in matches if _resource_codes(r) & wanted]
    if params.get("_sort") == "-date":
        matches.sort(key=_date_key, reverse=True)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": dict(r), "search": {"mode": "match"}}
            for r in matches
        ],
    }


def without_uuids(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cards with their random uuids (card and suggestion) blanked, to compare or store them."""
    cards = json.loads(json.dumps(cards))
    for card in cards:
        card["uuid"] = "(random)"
        for suggestion in card.get("suggestions", []):
            suggestion["uuid"] = "(random)"
    return cards


def fhir_authorization(access_token: str, scope: str = "user/*.read") -> dict[str, Any]:
    """A CDS Hooks 2.0 ``fhirAuthorization`` object for a bearer token."""
    return {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": scope,
        "subject": "alp-cds",
    }


def bundle_resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry") or () if isinstance(e.get("resource"), dict)]


def hook_request(
    service_id: str,
    bundle: Mapping[str, Any],
    patient_id: str,
    *,
    draft_orders: Mapping[str, Any] | None = None,
    selections: list[str] | None = None,
    with_prefetch: bool = True,
    fhir_server: str | None = None,
) -> dict[str, Any]:
    from service.hooks import all_services

    service = next(s for s in all_services() if s.id == service_id)
    context: dict[str, Any] = {"userId": USER, "patientId": patient_id}
    if service.hook in ("order-select", "order-sign"):
        context["draftOrders"] = draft_orders or {"resourceType": "Bundle", "type": "collection", "entry": []}
    if service.hook == "order-select":
        context["selections"] = selections or []
    request: dict[str, Any] = {
        "hook": service.hook,
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{service_id}/{patient_id}")),
        "context": context,
    }
    if fhir_server:
        request["fhirServer"] = fhir_server
    if with_prefetch:
        resources = bundle_resources(bundle)
        request["prefetch"] = {
            key: search(resources, fill_template(template, context)) for key, template in service.prefetch.items()
        }
    return request

"""Prefetch resolution (CDS Hooks 2.0 "Providing FHIR Resources to a CDS Service").

For each template key of a service:
- present with data -> used as given (a paginated Bundle is completed from the FHIR server when one is given);
- present with ``null`` -> the client has no data: nothing is fetched;
- missing, or an OperationOutcome -> fetched from ``fhirServer`` (concurrently, all missing keys at once).
When data is needed and cannot be had, :class:`DataUnavailable` (412) explains why, without patient data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from service.errors import BadRequest, DataUnavailable
from service.fhir.client import FhirClient, FhirError, bundle_problem, next_link

TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def fill_template(template: str, context: Mapping[str, Any]) -> str:
    """Replace the CDS Hooks 2.0 prefetch tokens; a token without a value makes the key unfetchable."""

    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            found = context.get(token.removeprefix("context."))
        elif token in USER_TOKENS:
            kind, _, ident = str(context.get("userId", "")).partition("/")
            found = ident if kind == USER_TOKENS[token] else None
        else:
            found = None
        if not isinstance(found, str | int) or isinstance(found, bool) or found == "":
            raise DataUnavailable(f"prefetch token {token} has no value in this hook's context")
        return quote(str(found), safe="")

    return TOKEN.sub(value, template)


def is_operation_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def fetched_keys(templates: Mapping[str, str], request: Mapping[str, Any]) -> frozenset[str]:
    """The keys whose data comes from the FHIR server rather than from the client's prefetch."""
    provided = request.get("prefetch") or {}
    return frozenset(k for k in templates if k not in provided or is_operation_outcome(provided[k]))


def resolve_prefetch(
    templates: Mapping[str, str],
    request: Mapping[str, Any],
    make_client: Callable[[], FhirClient | None],
    workers: int = 6,
) -> dict[str, dict[str, Any] | None]:
    provided = request.get("prefetch") or {}
    context = request.get("context") or {}
    resolved: dict[str, dict[str, Any] | None] = {}
    to_fetch: dict[str, str] = {}
    to_complete: dict[str, dict[str, Any]] = {}
    for key, template in templates.items():
        if key in provided and not is_operation_outcome(provided[key]):
            value = provided[key]
            if value is not None and not isinstance(value.get("resourceType"), str):
                raise BadRequest(f"prefetch.{key}: not a FHIR resource (no resourceType)")
            if value is not None and value["resourceType"] == "Bundle":
                problem = bundle_problem(value)
                if problem:
                    raise BadRequest(f"prefetch.{key}: {problem}")
                if next_link(value):
                    to_complete[key] = value
            resolved[key] = value
        else:
            to_fetch[key] = fill_template(template, context)

    if not to_fetch and not to_complete:
        return resolved
    client = make_client()
    if client is None:
        if to_fetch:
            raise DataUnavailable(
                f"prefetch data missing for {', '.join(sorted(to_fetch))} and the request has no fhirServer"
            )
        return resolved  # a paginated prefetch with no server to finish it: use the pages given

    def named(key: str, job: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            try:
                return job()
            except FhirError as exc:
                raise FhirError(f"{exc} (prefetch key {key})") from None

        return run

    jobs = {k: named(k, lambda u=u: client.fetch(u)) for k, u in to_fetch.items()}
    jobs.update({k: named(k, lambda b=b: client.follow_pages(b)) for k, b in to_complete.items()})
    try:
        with client:
            if len(jobs) == 1:
                ((key, job),) = jobs.items()
                resolved[key] = job()
            else:
                with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                    futures = {key: pool.submit(job) for key, job in jobs.items()}
                    for key, future in futures.items():
                        resolved[key] = future.result()
    except FhirError as exc:
        raise DataUnavailable(f"could not fetch the data the service needs: {exc}") from None
    return resolved

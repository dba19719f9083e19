"""Prefetch resolution (CDS Hooks 2.0 "Providing FHIR Resources to a CDS Service").

For each template key of a service:
- present with data -> used as given (a paginated Bundle is completed from the FHIR server when one is given);
- present with ``null`` -> the client has no data: nothing is fetched;
- missing, or an OperationOutcome -> fetched from ``fhirServer``: the required keys first (all at once), then the
  optional ones (all at once).
When a required key's data cannot be had, :class:`DataUnavailable` (412) explains why, without patient data; an
optional key's is recorded as unavailable and the call goes on without it (each service declares which are which).
A search whose first pages were read but whose further pages cannot be (a next link and no ``fhirServer``, a later
page that fails, the page or entry cap) keeps the pages read, which are real evidence, and is recorded as
incomplete, for a required key too: the cards say what was not completely read. Pages read that hold no entry at all
are no evidence: the key counts as not had.

What is not the data (:mod:`service.fhir.answers`): a search answered with something other than a Bundle, or a
Bundle carrying an OperationOutcome that reports an error, is a search that failed, never an empty list; from the
client, a Bundle carrying such an outcome is a key it could not satisfy (fetched, as an OperationOutcome is), and
``null`` for a read (``Patient/{{context.patientId}}``) is a resource it does not have (fetched too: the patient
of the context cannot be "none").

Order and budgets (docs/integrating.md, fallback): the required keys are asked for first, on their own, so
that a server that answers one request at a time, or queues a client's requests, never makes them wait behind a slow
optional search; once they are had, the optional keys are fetched within a share (``CDS_FHIR_OPTIONAL_SHARE``) of
the call's time and bytes (``CDS_FHIR_TIME_BUDGET``, ``CDS_FHIR_MAX_CALL_BYTES``, the time counted from the start of
the call). The rest is kept for the reads the handler makes afterwards (the ``Medication/<id>`` of a medication
record): a slow or huge optional answer makes that key unavailable, never the call a 412. What the service cannot
answer without (a draft order's ``Medication/<id>``) is read with the required keys. Knowing the required data, a
service may narrow an optional key's search to what it will read (the related labs to the dates the rules read), or
refuse the call before the optional keys are fetched (a Patient that is not the context's).

A search answer that is visibly not the whole list (:func:`service.fhir.answers.incompleteness`: a total above its
matches, unreadable entries, a next link without a URL, a warning that results were left out, a batch response) is
incomplete as a cut paging is, whether the FHIR server or the client gave it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from service.errors import BadRequest, DataUnavailable
from service.fhir.answers import answer_problem, error_in_bundle, incompleteness, is_search, matches
from service.fhir.client import FhirClient, FhirError, bundle_problem, next_link
from service.fhir.elements import string

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
    return string(value, "resourceType") == "OperationOutcome"


def client_lacks(template: str, value: Any) -> bool:
    """The client's prefetch value for a key says it could not give the data: an OperationOutcome, a Bundle that
    carries one reporting an error, or ``null`` for a read (CDS Hooks: the client has no such resource; the patient
    of the context is then read from the FHIR server, or the call is a 412)."""
    return is_operation_outcome(value) or error_in_bundle(value) or (value is None and not is_search(template))


def fetched_keys(templates: Mapping[str, str], request: Mapping[str, Any]) -> frozenset[str]:
    """The keys whose data comes from the FHIR server rather than from the client's prefetch."""
    provided = request.get("prefetch") or {}
    return frozenset(k for k, t in templates.items() if k not in provided or client_lacks(t, provided[k]))


@dataclass(frozen=True)
class Resolved:
    data: dict[str, dict[str, Any] | None]  # by prefetch key; None: the client has no data, or it could not be had
    unavailable: dict[str, str]  # optional keys whose data could not be had -> why (no patient data)
    # keys (required or optional) of which only the first pages could be read: their data is those pages -> why not
    # the rest (no patient data)
    incomplete: dict[str, str] = field(default_factory=dict)
    # the resources read beside the prefetch (``reads``), by reference: the resource, or why it could not be read
    read: dict[str, dict[str, Any] | FhirError] = field(default_factory=dict)


def resolve_prefetch(
    templates: Mapping[str, str],
    request: Mapping[str, Any],
    make_client: Callable[[], FhirClient | None],
    workers: int = 8,
    optional: frozenset[str] = frozenset(),
    *,
    optional_share: float,
    narrow: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None,
    reads: Collection[str] = (),
) -> Resolved:
    """The data of every key in ``templates``. A key that cannot be had (the FHIR server failed or refused it, or
    there is no server to ask) fails the call with :class:`DataUnavailable` (412) unless it is ``optional``: then it
    is named in :attr:`Resolved.unavailable`, its data is None, and the service says what it could not check. A
    search of which some pages were read and the rest cannot be keeps the pages read and is named in
    :attr:`Resolved.incomplete` (required or optional: never used silently as the whole list). An OperationOutcome
    in the client's prefetch is a key the client could not satisfy: fetched as if it were missing, and unavailable
    the same way; so is a Bundle carrying an error OperationOutcome, or ``null`` for a read (:func:`client_lacks`).
    A search answered with no Bundle, or with an error OperationOutcome in it, failed (:func:`answer_problem`).

    The required keys are fetched first, on their own: a server that answers one request at a time (or queues a
    client's requests) never makes them wait behind a slow optional search. The optional keys are fetched once the
    required ones are had, within ``optional_share`` of the call's budget (counted from its start); ``narrow``, given
    the data had so far, returns search parameters to add to an optional key's search (``{"labs": "date=ge..."}``:
    only what the service will read), or raises the error of a call that will be refused anyway, and then nothing
    more is fetched. ``reads`` (``Medication/<id>``: what the service cannot answer without) are read with the
    required keys, each failure kept in :attr:`Resolved.read` for the service to name."""
    provided = request.get("prefetch") or {}
    context = request.get("context") or {}
    resolved: dict[str, dict[str, Any] | None] = {}
    unavailable: dict[str, str] = {}
    to_fetch: dict[str, str] = {}
    to_complete: dict[str, dict[str, Any]] = {}
    incomplete: dict[str, str] = {}
    failed: dict[str, str] = {}  # key -> why its data could not be had at all

    def give(key: str, value: dict[str, Any] | None, short: str | None = None) -> None:
        """The data of ``key``; ``short``: why it is not the whole list (the pages read are kept only when they hold
        a readable match: pages that hold nothing are no evidence, and the key was not had)."""
        if short is None:
            resolved[key] = value
        elif matches(value) > 0:
            resolved[key], incomplete[key] = value, short
        else:
            failed[key] = f"{short}; the pages read hold no entry"

    def take(results: Mapping[str, tuple[dict[str, Any], str | None] | FhirError]) -> None:
        for key, result in results.items():
            if isinstance(result, FhirError):
                failed[key] = str(result)
                continue
            value, problem = result
            search = is_search(templates[key])
            wrong = answer_problem(value, search)
            short = incompleteness(value) if search and not wrong and not problem else None
            if wrong:  # answered 200, yet not the data (pages read or not)
                failed[key] = f"{wrong} (prefetch key {key})"
            else:  # a cut paging, or visibly not the whole list
                give(key, value, problem or (f"{short} (prefetch key {key})" if short else None))

    def check_required() -> None:
        for key in templates:  # the first required key that failed, in the service's order, fails the call
            if key in failed and key not in optional:
                raise DataUnavailable(f"could not fetch the data the service needs: {failed[key]}")

    for key, template in templates.items():
        if key in provided and not client_lacks(template, provided[key]):
            value = provided[key]
            if value is not None and string(value, "resourceType") is None:
                raise BadRequest(f"prefetch.{key}: not a FHIR resource (no resourceType)")
            problem = answer_problem(value, is_search(template))
            if problem:
                raise BadRequest(f"prefetch.{key}: {problem}")
            if string(value, "resourceType") == "Bundle":
                problem = bundle_problem(value)
                if problem:
                    raise BadRequest(f"prefetch.{key}: {problem}")
                if next_link(value):
                    to_complete[key] = value
                    continue
                if is_search(template) and (short := incompleteness(value)):
                    give(key, value, f"{short} (prefetch key {key})")
                    continue
            resolved[key] = value
            continue
        try:
            to_fetch[key] = fill_template(template, context)
        except DataUnavailable as exc:
            if key not in optional:
                raise
            resolved[key], unavailable[key] = None, exc.message

    read: dict[str, dict[str, Any] | FhirError] = {}
    if to_fetch or to_complete or reads:
        client = make_client()
        if client is None:
            if set(to_fetch) - optional:
                raise DataUnavailable(
                    f"prefetch data missing for {', '.join(sorted(to_fetch))} and the request has no fhirServer"
                )
            for key in to_fetch:
                failed[key] = "prefetch data missing and the request has no fhirServer"
            for key, bundle in to_complete.items():  # a paginated prefetch with no server to finish it: the pages
                give(
                    key,
                    bundle,
                    f"the prefetch Bundle has further pages and the request has no fhirServer (prefetch key {key})",
                )
        else:
            with client:
                required = {k: u for k, u in to_fetch.items() if k not in optional}
                first = _fetch(
                    client,
                    {**required, **{r: r for r in reads}},  # a reference has a "/", a prefetch key never
                    {k: b for k, b in to_complete.items() if k not in optional},
                    workers,
                )
                read = {r: got if isinstance(got := first.pop(r), FhirError) else got[0] for r in reads}
                take(first)
                check_required()  # a required key missing: the optional ones are not asked for
                later = {k: u for k, u in to_fetch.items() if k in optional}
                rest = {k: b for k, b in to_complete.items() if k in optional}
                if (later or rest) and narrow is not None:
                    extra = narrow(resolved)
                    later = {k: f"{u}&{extra[k]}" if extra.get(k) else u for k, u in later.items()}
                if later or rest:
                    take(_fetch(client.sharing(optional_share), later, rest, workers))
    check_required()
    for key, why in failed.items():
        resolved[key], unavailable[key] = None, why
    return Resolved(resolved, unavailable, incomplete, read)


def _fetch(
    client: FhirClient, to_fetch: Mapping[str, str], to_complete: Mapping[str, dict[str, Any]], workers: int
) -> dict[str, tuple[dict[str, Any], str | None] | FhirError]:
    """Fetch ``to_fetch`` and complete ``to_complete`` from the FHIR server, all at once (one fetch needs no
    thread): by key, (the data, why not all of it or None) or the :class:`FhirError` that stopped it."""

    def named(key: str, job: Callable[[], tuple[dict[str, Any], str | None]]) -> Callable[[], Any]:
        def run() -> tuple[dict[str, Any], str | None] | FhirError:
            try:
                value, problem = job()
            except FhirError as exc:
                return FhirError(f"{exc} (prefetch key {key})")
            return value, f"{problem} (prefetch key {key})" if problem else None

        return run

    jobs = {k: named(k, lambda u=u: client.search(u)) for k, u in to_fetch.items()}
    jobs.update({k: named(k, lambda b=b: client.read_pages(b)) for k, b in to_complete.items()})
    if len(jobs) <= 1:
        return {key: job() for key, job in jobs.items()}
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
    return {key: future.result() for key, future in futures.items()}

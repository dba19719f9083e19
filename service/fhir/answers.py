"""Is an answer the data it claims to be? A FHIR server (or a CDS client filling a prefetch key) can answer a
search with HTTP 200 and still not give its results: a Bundle whose entries include an OperationOutcome saying the
search failed (``search.mode`` ``outcome``, or any OperationOutcome entry), or something that is not a Bundle at all
(a Patient, an OperationOutcome). Read as a list, either would be an empty one: "no medication", "no ALP on record".
So such an answer is a search that failed, never "none".

An OperationOutcome entry counts as a failure when any of its issues is ``error`` or ``fatal``, or when its issues
cannot be read (no list, an issue without a known severity): only ``warning``, ``information`` (and R5's
``success``) issues are harmless notes beside the results.

A Bundle can also be visibly not the whole list while reporting no error (:func:`incompleteness`): its ``total``
is more than the matches it holds, some of its entries cannot be read, a ``next`` link that cannot be followed, a
warning whose issue type says results were left out (FHIR IssueType ``incomplete``, ``too-costly``, ``throttled``,
``timeout``, ``too-long``, ``suppressed``), or it is a batch or transaction response (its entries are the answers to
requests, not the matches of one search). Its entries are then what was read, never the whole list.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.fhir.client import unfollowable_next
from service.fhir.elements import array, objects, string, untyped
from service.fhir.lazy import LazyBundle

HARMLESS = frozenset({"warning", "information", "success"})
# FHIR IssueType codes (http://hl7.org/fhir/issue-type) that, even as a warning, say results were left out:
# incomplete (not all sources answered in time: the results may be partial), too-costly (stopped to protect the
# server), too-long, timeout, throttled, suppressed (withheld by business, consent or access rules). Generic codes
# (exception, transient, processing, informational) do not say so and are not taken to.
TRUNCATING = frozenset({"incomplete", "too-costly", "too-long", "timeout", "throttled", "suppressed"})
RESPONSES = frozenset({"batch-response", "transaction-response"})
_decode = msgspec.json.Decoder()


def is_search(template: str) -> bool:
    """A prefetch template that is a search (``Observation?patient=...``), not a read (``Patient/{{...}}``)."""
    return "?" in template


def outcome_failed(outcome: Any) -> bool:
    """An OperationOutcome that reports an error (or whose issues cannot be read: taken as one)."""
    issues = array(outcome, "issue")
    return not issues or any(not isinstance(i, dict) or string(i, "severity") not in HARMLESS for i in issues)


def _outcomes(bundle: dict[str, Any]) -> list[Any]:
    """The OperationOutcome entries of a Bundle (decoded, for a lazily decoded one: only these are decoded)."""
    if isinstance(bundle, LazyBundle):  # its entries never change: worked out once (asked several times a call)
        if bundle.outcomes is None:
            found = []
            for entry, head in zip(bundle.entries, bundle.heads(), strict=True):
                if string(head, "resourceType") == "OperationOutcome":
                    try:
                        found.append(_decode.decode(entry.resource))
                    except msgspec.DecodeError:  # an outcome that cannot be read: taken as an error
                        found.append(None)
            bundle.outcomes = found
        return bundle.outcomes
    resources = (untyped(e, "resource") for e in objects(bundle, "entry"))
    return [r for r in resources if string(r, "resourceType") == "OperationOutcome"]


def error_in_bundle(value: Any) -> bool:
    """A Bundle that carries an OperationOutcome entry reporting an error: its search failed, whatever else it holds."""
    return string(value, "resourceType") == "Bundle" and any(outcome_failed(o) for o in _outcomes(value))


def answer_problem(value: Any, search: bool) -> str | None:
    """Why ``value`` (a FHIR server's answer, or a prefetch value) is not the data of its key, or None. No patient
    data in the text: resource types and severities only."""
    if not isinstance(value, dict):
        return None
    kind = string(value, "resourceType")
    if search and kind != "Bundle":
        shown = kind if kind is not None and kind.isalpha() and len(kind) < 40 else "resource"
        return f"a search was answered with a {shown}, not a Bundle"
    if error_in_bundle(value):
        return "the answer holds an OperationOutcome reporting an error: the search failed"
    return None


def _outcome_truncates(outcome: Any) -> bool:
    return any(string(i, "code") in TRUNCATING for i in array(outcome, "issue"))


def _entry_parts(bundle: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """(search, response, resource type or None when the entry holds no readable resource) of every entry."""
    if isinstance(bundle, LazyBundle):
        if bundle.parts is None:
            bundle.parts = [
                (untyped(e, "search"), untyped(e, "response"), string(h, "resourceType"))
                for e, h in zip(bundle.entries, bundle.heads(), strict=True)
            ]
        return bundle.parts
    return [
        (untyped(e, "search"), untyped(e, "response"), string(untyped(e, "resource"), "resourceType"))
        for e in array(bundle, "entry")
    ]


def _is_match(search: Any, kind: Any) -> bool:
    mode = string(search, "mode")
    return kind is not None and kind != "OperationOutcome" and mode not in ("outcome", "include")


def matches(bundle: Any) -> int:
    """How many readable resources a Bundle holds as search matches (not outcomes, not included resources)."""
    if string(bundle, "resourceType") != "Bundle":
        return 0
    return sum(_is_match(search, kind) for search, _, kind in _entry_parts(bundle))


def incompleteness(bundle: Any) -> str | None:
    """Why a search's Bundle (a FHIR server's answer, its pages merged, or a client's prefetch value) is visibly
    not the whole list, or None. No patient data in the text."""
    if string(bundle, "resourceType") != "Bundle":
        return None
    if string(bundle, "type") in RESPONSES:
        return "the answer is a batch or transaction response, not the results of a search"
    if unfollowable_next(bundle):
        return "the Bundle's next link has no URL: its further pages cannot be read"
    parts = _entry_parts(bundle)
    if any(kind is None for _, _, kind in parts):
        return "some of the Bundle's entries hold no readable resource"
    for _, response, _ in parts:
        status = string(response, "status")
        if response is not None and not (status is not None and status.strip()[:1] == "2"):
            return "an entry of the Bundle reports a request that did not succeed"
    if any(_outcome_truncates(o) for o in _outcomes(bundle)):
        return "the answer holds an OperationOutcome saying that not all results were returned"
    total = untyped(bundle, "total")
    if (
        untyped(bundle, "type") in (None, "searchset")  # compared with ==: any JSON value
        and isinstance(total, int)
        and not isinstance(total, bool)
        and total > sum(_is_match(s, k) for s, _, k in parts)
    ):
        return "the Bundle's total is more than the results it holds"
    return None

"""Is an answer the data it claims to be? A FHIR server (or a CDS client filling a prefetch key) can answer a
search with HTTP 200 and still not give its results: a Bundle whose entries include an OperationOutcome saying the
search failed (``search.mode`` ``outcome``, or any OperationOutcome entry), or something that is not a Bundle at all
(a Patient, an OperationOutcome). Read as a list, either would be an empty one: "no medication", "no ALP on record".
So such an answer is a search that failed, never "none".

An OperationOutcome entry counts as a failure when any of its issues is ``error`` or ``fatal``, or when its issues
cannot be read (no list, an issue without a known severity): only ``warning``, ``information`` (and R5's
``success``) issues are harmless notes beside the results.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.fhir.lazy import LazyBundle

HARMLESS = frozenset({"warning", "information", "success"})
_decode = msgspec.json.Decoder()


def is_search(template: str) -> bool:
    """A prefetch template that is a search (``Observation?patient=...``), not a read (``Patient/{{...}}``)."""
    return "?" in template


def outcome_failed(outcome: Any) -> bool:
    """An OperationOutcome that reports an error (or whose issues cannot be read: taken as one)."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if not isinstance(issues, list) or not issues:
        return True
    return any(not isinstance(i, dict) or i.get("severity") not in HARMLESS for i in issues)


def _outcomes(bundle: dict[str, Any]) -> list[Any]:
    """The OperationOutcome entries of a Bundle (decoded, for a lazily decoded one: only these are decoded)."""
    if isinstance(bundle, LazyBundle):
        found = []
        for entry, head in zip(bundle.entries, bundle.heads(), strict=True):
            if head is not None and head.resourceType == "OperationOutcome":
                try:
                    found.append(_decode.decode(entry.resource))
                except msgspec.DecodeError:  # an outcome that cannot be read: taken as an error
                    found.append(None)
        return found
    entries = bundle.get("entry")
    return [
        e["resource"]
        for e in (entries if isinstance(entries, list) else ())
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "OperationOutcome"
    ]


def error_in_bundle(value: Any) -> bool:
    """A Bundle that carries an OperationOutcome entry reporting an error: its search failed, whatever else it holds."""
    return (
        isinstance(value, dict)
        and value.get("resourceType") == "Bundle"
        and any(outcome_failed(o) for o in _outcomes(value))
    )


def answer_problem(value: Any, search: bool) -> str | None:
    """Why ``value`` (a FHIR server's answer, or a prefetch value) is not the data of its key, or None. No patient
    data in the text: resource types and severities only."""
    if not isinstance(value, dict):
        return None
    kind = value.get("resourceType")
    if search and kind != "Bundle":
        shown = kind if isinstance(kind, str) and kind.isalpha() and len(kind) < 40 else "resource"
        return f"a search was answered with a {shown}, not a Bundle"
    if error_in_bundle(value):
        return "the answer holds an OperationOutcome reporting an error: the search failed"
    return None

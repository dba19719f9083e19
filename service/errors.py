"""Errors a client can cause, each with its HTTP status, rendered as an OperationOutcome-shaped JSON body."""

from __future__ import annotations

from typing import Any


class CdsError(Exception):
    """An error with a status code and a message that is safe to show the caller (no patient data)."""

    status = 400
    code = "invalid"
    retry_after: int | None = None  # seconds, sent as Retry-After: the call may succeed when retried then

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CdsError):
    status = 400
    code = "invalid"


class NotFound(CdsError):
    status = 404
    code = "not-found"


class TooLarge(CdsError):
    status = 413
    code = "too-costly"


class DataUnavailable(CdsError):
    """The FHIR data the rules need cannot be had: 412 Precondition Failed (CDS Hooks 2.0)."""

    status = 412
    code = "incomplete"


class StoreUnavailable(CdsError):
    """A store (the token replay store, the feedback store) cannot answer now: retry shortly."""

    status = 503
    code = "transient"
    retry_after = 1


class Overloaded(CdsError):
    """Too many calls of this process do the same costly work at once (service/bulkhead.py): retry shortly."""

    status = 503
    code = "transient"
    retry_after = 1


def operation_outcome(message: str, code: str = "invalid", severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }

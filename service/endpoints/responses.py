"""JSON answers and the OperationOutcome-shaped error answers every endpoint gives (see ``service/errors.py``)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Response, request

from service.errors import CdsError, operation_outcome
from service.logs import log_event
from service.security import Unauthorized

log = logging.getLogger("service.access")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def error_response(error: CdsError) -> Response:
    response = json_response(operation_outcome(error.message, error.code), error.status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
        log_event(log, logging.INFO, "auth_failed", reason=error.reason, path=request.path, **error.details)
    return response

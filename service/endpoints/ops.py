"""Operations: liveness (``/healthz``), readiness (``/readyz/hooks`` for the probe, ``/readyz`` with the feedback
store), Prometheus metrics (``/metrics``) and the OpenAPI document (``/openapi.json``)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST

from service import metrics
from service.endpoints.responses import json_response

bp = Blueprint("ops", __name__)


@bp.get("/openapi.json")
def openapi() -> Response:
    from service.openapi import openapi_document

    return json_response(openapi_document())


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz/hooks")
def readyz_hooks() -> Response:
    """Readiness for hook calls, the product (the Kubernetes readiness probe): they need no store, so a feedback
    store outage must not take every pod out of the Service. Answered without any I/O; the body gives the feedback
    store's state as last seen by this worker, for monitoring (``/readyz`` checks it)."""
    return json_response({"status": "ready", "feedback_store": current_app.extensions["cds_feedback"].last_state})


@bp.get("/readyz")
def readyz() -> Response:
    """The feedback store too (503 while it is down or its schema is not current): for monitoring."""
    try:
        current_app.extensions["cds_feedback"].ping()
    except Exception as exc:
        # Deliberately broad: this endpoint's one job is to say "not ready", with the failure's type, whatever the
        # store did. Our own failures are SQLAlchemyError subclasses (StoreBusy, StoreTimedOut, SchemaTooNew,
        # SchemaNotMigrated), but a ping can also end in a driver error SQLAlchemy does not wrap, an Alembic error
        # while it migrates or an OSError; as a 500 those would hide which part of the store is down.
        response = json_response({"status": "unavailable", "feedback_store": type(exc).__name__}, 503)
        response.headers["Retry-After"] = "1"
        return response
    return json_response({"status": "ready", "feedback_store": "ok"})


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)  # it names its charset already

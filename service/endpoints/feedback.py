"""CDS Hooks 2.0 feedback: ``POST /cds-services/<id>/feedback``, stored by :class:`service.feedback.FeedbackStore`."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app
from sqlalchemy.exc import DataError, SQLAlchemyError

from service import metrics
from service.endpoints.incoming import authenticate, find_service, parse_json_body
from service.endpoints.responses import json_response
from service.errors import BadRequest, StoreUnavailable
from service.feedback import storable_problem
from service.logs import log_event
from service.validation import first_error

bp = Blueprint("feedback", __name__)
log = logging.getLogger("service")


@bp.post("/cds-services/<service_id>/feedback")
@bp.post("/cds-services//<service_id>/feedback", merge_slashes=False)  # a discovery URL with a trailing slash
def post_feedback(service_id: str) -> Response:
    find_service(service_id)
    claims = authenticate()
    body = parse_json_body()
    problem = first_error("feedback", body) or storable_problem(body["feedback"])
    if problem:
        raise BadRequest(f"invalid feedback: {problem}")
    try:
        caller = current_app.extensions["cds_memory"].caller(claims)
        stored = current_app.extensions["cds_feedback"].add_feedback(service_id, body["feedback"], caller)
    except DataError as exc:  # the store refuses this data: retrying would not help
        log_event(log, logging.ERROR, "feedback_refused", error=type(exc).__name__)
        raise BadRequest("the feedback store cannot hold this feedback; nothing was stored") from None
    except SQLAlchemyError as exc:
        log_event(log, logging.ERROR, "feedback_not_stored", error=type(exc).__name__)
        raise StoreUnavailable("the feedback store is unavailable; nothing was stored, please retry") from None
    for item in body["feedback"]:
        metrics.FEEDBACK.labels(item["outcome"]).inc()
    return json_response({"stored": stored})

"""Application factory: ``create_app(overrides)``, the ``flask --app service.app`` convention."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from service import endpoints
from service.bulkhead import bulkheads
from service.card_render import OVERRIDE_SYSTEM, override_reason_displays
from service.endpoints.responses import error_response, json_response
from service.errors import CdsError, operation_outcome
from service.feedback import FeedbackStore
from service.hooks import all_services
from service.logs import log_event
from service.memory import OverrideMemory
from service.security import Authenticator
from service.settings import Settings, SettingsError, check_startup, load_settings


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    settings = load_settings(overrides)
    check_startup(settings)
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(message)s")
    # urllib3 writes every request line, the patient's id in its query, at DEBUG: never let it through.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    app = Flask(__name__)
    app.config["CDS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_BODY_BYTES + 1  # one more: see incoming.parse_json_body
    app.json.sort_keys = False
    app.extensions["cds_services"] = {s.id: s for s in all_services()}
    app.extensions["cds_bulkheads"] = bulkheads(settings)
    app.extensions["cds_authenticator"] = Authenticator(settings) if settings.AUTH else None
    app.extensions["cds_feedback"] = FeedbackStore(
        settings.FEEDBACK_DB_URL, settings.FEEDBACK_DB_TIMEOUT, settings.FEEDBACK_DB_MIGRATE
    )
    app.extensions["cds_memory"] = OverrideMemory(
        app.extensions["cds_feedback"],
        settings.OVERRIDE_KEY,
        settings.OVERRIDE_DAYS,
        min(settings.OVERRIDE_LOOKUP_TIMEOUT, settings.FHIR_TIME_BUDGET / 2),  # well inside the call's budget
        override_reason_displays(),
        OVERRIDE_SYSTEM,
    )
    if not settings.OVERRIDE_KEY:
        log_event(
            logging.getLogger("service"),
            logging.WARNING,
            "override_memory_off",
            message="CDS_OVERRIDE_KEY is not set: clinicians' overrides are not remembered (docs/feedback.md)",
        )
    if not settings.AUTH:
        log_event(
            logging.getLogger("service"),
            logging.WARNING,
            "auth_off",
            message="JWT verification is OFF: for local development only",
        )
    elif not settings.TRUSTED_ISSUERS:
        log_event(
            logging.getLogger("service"),
            logging.WARNING,
            "no_trusted_issuers",
            message="AUTH is on but no issuer is trusted: every hook call gets 401",
        )
    endpoints.register(app)
    if settings.SMART_ISSUERS:
        register_smart_app(app, settings)
    warm_up()

    @app.errorhandler(CdsError)
    def cds_error(error: CdsError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(error.code or 500, "invalid")
        message = error.description or error.name
        if error.code == 413:
            message = f"request body is larger than {settings.MAX_BODY_BYTES} bytes (CDS_MAX_BODY_BYTES)"
        response = json_response(operation_outcome(message, code), error.code or 500)
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        # Type and place only: an exception's message may quote request data.
        frames = [f for f in traceback.extract_tb(error.__traceback__) if "site-packages" not in f.filename]
        frame = frames[-1] if frames else None
        where = f"{frame.filename}:{frame.lineno}" if frame else "?"
        log_event(logging.getLogger("service"), logging.ERROR, "error", type=type(error).__name__, at=where)
        return json_response(operation_outcome("internal error", "exception", "fatal"), 500)

    return app


def register_smart_app(app: Flask, settings: Settings) -> None:
    """The SMART companion app (``/smart/...``), served only when EHRs are allow-listed for it."""
    try:
        from service.smart import views
        from service.smart.store import LaunchStore
    except ImportError as exc:
        raise SettingsError(
            f"CDS_SMART_ISSUERS is set but the SMART app's libraries are missing ({exc.name}): "
            "pip install 'alp-cds[smart]'"
        ) from None
    app.extensions["smart_launches"] = LaunchStore(settings.SMART_STATE_STORE_URL, settings.SMART_MAX_PENDING)
    app.register_blueprint(views.bp)


def warm_up() -> None:
    """Compile schemas and card templates at start-up, not on the first clinician's chart open."""
    from service.card_render import card_kinds, template
    from service.validation import validator

    for name in (
        "hook-request",
        "context-patient-view",
        "context-order-select",
        "context-order-sign",
        "cds-response",
        "discovery",
        "feedback",
    ):
        validator(name)
    for kind in card_kinds():
        template(kind)

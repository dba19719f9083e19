"""One JSON object per log line, built in one place: ``log_event(log, logging.INFO, "request", status=200)``.

Fields are JSON-encoded here (a value is never pasted into a hand-written JSON string, where a quote in it would
break the line). Callers log kinds, counts and states only: never a token, a patient's data or an identifier.
"""

from __future__ import annotations

import json
import logging
from typing import Any


def log_event(logger: logging.Logger, level: int, event: str, /, **fields: Any) -> None:
    """Log ``{"event": event, **fields}`` at ``level``; fields that are None are left out."""
    if logger.isEnabledFor(level):
        entry = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        logger.log(level, json.dumps(entry))

"""JSON Schema validation of what clients send and what the service answers.

The schemas live in ``service/schemas`` (written from CDS Hooks 2.0); each is compiled once.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError


@cache
def validator(name: str) -> Draft202012Validator:
    text = resources.files("service.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def first_error(name: str, document: Any) -> str | None:
    """A readable description of the most relevant violation, or None when the document is valid."""
    if validator(name).is_valid(document):
        return None
    errors = sorted(validator(name).iter_errors(document), key=lambda e: (len(e.absolute_path), e.message))
    if not errors:
        return None
    return explain(errors[0])


def explain(error: ValidationError) -> str:
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{where or 'request body'}: {message}"

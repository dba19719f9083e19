"""OpenAPI 3.1 description of the HTTP API, generated from the JSON Schemas the service validates with."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from service.hooks import all_services

SCHEMAS = {
    "HookRequest": "hook-request",
    "PatientViewContext": "context-patient-view",
    "OrderSelectContext": "context-order-select",
    "OrderSignContext": "context-order-sign",
    "CdsResponse": "cds-response",
    "Discovery": "discovery",
    "Feedback": "feedback",
}
CONTEXTS = {
    "patient-view": "PatientViewContext",
    "order-select": "OrderSelectContext",
    "order-sign": "OrderSignContext",
}


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("service.schemas").joinpath(f"{name}.schema.json").read_text(encoding="utf-8"))


def _rewrite(node: Any, prefix: str) -> Any:
    """Point ``#/$defs/x`` references at the hoisted component ``<prefix>_x``."""
    if isinstance(node, dict):
        return {
            k: (
                f"#/components/schemas/{prefix}_{v.removeprefix('#/$defs/')}"
                if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/")
                else _rewrite(v, prefix)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, prefix) for v in node]
    return node


def _components() -> dict[str, Any]:
    components: dict[str, Any] = {}
    for name, file in SCHEMAS.items():
        schema = _load(file)
        schema.pop("$schema", None)
        schema.pop("$id", None)  # an $id would move the base of every $ref inside it
        for key, sub in schema.pop("$defs", {}).items():
            components[f"{name}_{key}"] = _rewrite(sub, name)
        components[name] = _rewrite(schema, name)
    components["OperationOutcome"] = {
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "severity": {"type": "string"},
                        "code": {"type": "string"},
                        "diagnostics": {"type": "string"},
                    },
                },
            },
        },
    }
    return components


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed JSON, a request that breaks the schema, or a hook that is not the service's",
        401: "Missing or invalid JWT",
        403: "fhirServer not allowed for this client",
        404: "Unknown service",
        412: "FHIR data needed and not obtainable",
        413: "Body too large",
        503: "Feedback store unavailable; nothing stored",
    }
    return {
        str(c): {
            "description": meaning[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
        }
        for c in codes
    }


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/cds-services": {
            "get": {
                "summary": "CDS Hooks discovery",
                "operationId": "discovery",
                "security": [],
                "responses": {"200": {"description": "The services", "content": _json("Discovery")}},
            }
        },
        "/cds-services/{service_id}/feedback": {
            "post": {
                "summary": "Feedback on a card (CDS Hooks 2.0)",
                "operationId": "feedback",
                "parameters": [{"name": "service_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": _json("Feedback")},
                "responses": {
                    "200": {
                        "description": "Stored (committed)",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"stored": {"type": "integer"}}}
                            }
                        },
                    },
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "security": [],
                "responses": {"200": {"description": "Alive"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness (feedback store included)",
                "operationId": "readyz",
                "security": [],
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
            }
        },
        "/readyz/hooks": {
            "get": {
                "summary": "Readiness for hook calls (no store needed; the feedback store's last seen state)",
                "operationId": "readyzHooks",
                "security": [],
                "responses": {"200": {"description": "Ready"}},
            }
        },
        "/fhir/ValueSet": {
            "get": {
                "summary": "The value sets the rules read: a FHIR R4 searchset Bundle of ValueSet resources",
                "operationId": "valueSetSearch",
                "security": [],
                "parameters": [
                    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                    for name in ("_id", "url", "name", "_summary")
                ],
                "responses": {
                    "200": {
                        "description": "Bundle",
                        "content": {"application/fhir+json": {"schema": {"type": "object"}}},
                    },
                    "400": {"description": "Unsupported search parameter (OperationOutcome)"},
                },
            }
        },
        "/fhir/ValueSet/{id}": {
            "get": {
                "summary": "One value set as a FHIR R4 ValueSet (compose with each code's sources, and an expansion)",
                "operationId": "valueSetRead",
                "security": [],
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "ValueSet",
                        "content": {"application/fhir+json": {"schema": {"type": "object"}}},
                    },
                    "404": {"description": "Unknown value set (OperationOutcome)"},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
    }
    for service in all_services():
        body = {
            "allOf": [
                {"$ref": "#/components/schemas/HookRequest"},
                {
                    "type": "object",
                    "properties": {
                        "hook": {"const": service.hook},
                        "context": {"$ref": f"#/components/schemas/{CONTEXTS[service.hook]}"},
                    },
                },
            ]
        }
        paths[f"/cds-services/{service.id}"] = {
            "post": {
                "summary": service.title,
                "description": service.description,
                "operationId": service.id,
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {
                    "200": {"description": "Cards", "content": _json("CdsResponse")},
                    **_errors(400, 401, 403, 404, 412, 413),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "alp-cds: low alkaline phosphatase CDS Hooks service",
            "version": "0.1.0",
            "description": "CDS Hooks 2.0 services. Schemas are the ones the service validates with.",
        },
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "cdsHooksJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (ES384 or RS384)"}
            },
        },
        "security": [{"cdsHooksJwt": []}],
    }

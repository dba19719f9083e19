"""The HTTP endpoints, one blueprint per concern:

- ``hooks``: CDS Hooks discovery and hook calls (transport only; the hook runs in ``service.hooks.run``);
- ``feedback``: CDS Hooks feedback;
- ``ops``: health, readiness, metrics and the OpenAPI document;
- ``integrator``: the integrator page;
- ``terminology``: the value sets the rules read, as FHIR ValueSets;
- ``access``: CORS headers, request metrics and the access log, on every response;

with what they share in ``incoming`` (services, settings, authentication, the JSON body) and ``responses`` (JSON
and error answers). The SMART companion app has its own blueprint (``service.smart.views``).
"""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from service.endpoints import access, feedback, hooks, integrator, ops, terminology

    for module in (access, hooks, feedback, ops, integrator, terminology):
        app.register_blueprint(module.bp)

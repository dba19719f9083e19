"""The framework floor: a bare Flask endpoint returning a small JSON document, served like the service."""

from flask import Flask, jsonify


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/cds-services/<service_id>")
    @app.get("/cds-services")
    def small(service_id: str | None = None):
        return jsonify({"cards": [], "service": service_id})

    return app

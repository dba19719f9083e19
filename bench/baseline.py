"""The framework floor: a bare Flask app that reads the request body and returns a small JSON document, served with
the same gunicorn command line, configuration and worker model as the service (``alp-cds serve``)."""

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = None  # the service accepts big prefetch bodies: so does the floor

    @app.post("/cds-services/<service_id>")
    @app.get("/cds-services")
    def small(service_id: str | None = None):
        body = request.get_data(cache=False)  # the same bytes the service reads: the floor pays for them too
        return jsonify({"cards": [], "service": service_id, "bytes": len(body)})

    return app

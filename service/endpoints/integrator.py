"""The integrator page (``GET /``): the services, an example exchange each and the card gallery, rendered on the
server (no JavaScript)."""

from __future__ import annotations

import json

from flask import Blueprint, current_app, render_template, request

from service.endpoints.incoming import services, settings

bp = Blueprint("integrator", __name__)


@bp.get("/")
def integrator_page() -> str:
    from service import gallery

    content = current_app.extensions.get("cds_gallery")
    if content is None:
        content = gallery.build(services(), settings())
        for exchange in content["exchanges"].values():
            exchange["request_json"] = json.dumps(exchange["request"], indent=2)
            exchange["response_json"] = json.dumps(exchange["response"], indent=2)
        current_app.extensions["cds_gallery"] = content
    from service.clinical import value_sets

    terminology = [
        {"id": d.id, "title": d.title, "codes": len({(m.system, m.code) for m in d.members if m.match == "code"})}
        for d in value_sets.definitions()
    ]
    return render_template(
        "index.html",
        services=[s.discovery() for s in services().values()],
        base=request.url_root,
        value_sets=terminology,
        **content,
    )

"""The integrator page (GET /) and the OpenAPI document; a headless Chromium test of the card gallery."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from werkzeug.serving import make_server

from service.card_render import card_kinds
from service.openapi import openapi_document
from tests.conftest import CHROMIUM, ROOT, launch_chromium, make_app

ARTIFACTS = ROOT / "artifacts"


def test_page_lists_services_examples_and_every_card_kind(client):
    response = client.client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for service in client.client.get("/cds-services").get_json()["services"]:
        assert f'id="service-{service["id"]}"' in html and service["hook"] in html
        for key in service["prefetch"]:
            assert f"<code>{key}</code>" in html
    kinds = dict(re.findall(r'data-kind="([^"]+)" data-indicator="([^"]+)"', html))
    assert set(kinds) == set(card_kinds())
    assert kinds["wilson-alf-pattern"] == "critical" and kinds["alp-low-single"] == "info"
    assert "<table>" in html and re.search(r"<td>2026-\d\d-\d\d</td>", html)  # markdown tables, with the evidence
    assert "Not shown" not in html
    assert "Example exchanges" in html and "fixtures/requests/" in html


def test_gallery_cards_come_from_the_rule_code(client, monkeypatch):
    """Change a template's wording: the page changes with it (nothing on the page is a hand-written copy)."""
    from service import card_render as render

    spec = render.template("alp-low-single")
    monkeypatch.setitem(
        spec, "_summary", render._summary_env.from_string("RENDERED BY THE RULES {{ latest.value|num }}")
    )
    html = make_app().client.get("/").get_data(as_text=True)
    assert re.search(r"RENDERED BY THE RULES \d+", html)


def test_openapi_document_is_valid_and_uses_the_service_schemas(client):
    document = client.client.get("/openapi.json").get_json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    assert schemas["CdsResponse_card"]["properties"]["summary"]["maxLength"] == 140
    assert set(document["paths"]) >= {
        "/cds-services",
        "/cds-services/low-alp-workup",
        "/cds-services/antiresorptive-low-alp",
        "/cds-services/{service_id}/feedback",
    }
    assert document == openapi_document()


def _chromium_available() -> bool:
    if Path(CHROMIUM).exists():
        return True
    if os.environ.get("CI"):
        pytest.fail("Debian's chromium is not installed: .ci/run must install it")
    pytest.skip(
        "Chromium is not installed: apt-get install chromium (Debian), the browser test drives /usr/bin/chromium"
    )
    return False


def test_gallery_in_a_real_browser():
    _chromium_available()
    from playwright.sync_api import sync_playwright

    server = make_server("127.0.0.1", 0, make_app().app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            cards = page.locator("article.card")
            assert cards.count() == len(card_kinds())
            for kind in card_kinds():
                card = page.locator(f'article[data-kind="{kind}"]')
                assert card.is_visible(), kind
                indicator = card.get_attribute("data-indicator")
                assert card.locator(".badge").inner_text().lower() == indicator
                colour = card.evaluate("e => getComputedStyle(e).borderLeftColor")
                expected = {"info": "rgb(31, 111, 235)", "warning": "rgb(194, 106, 0)", "critical": "rgb(198, 40, 40)"}[
                    indicator
                ]
                assert colour == expected, (kind, colour)
            wilson = page.locator('article[data-kind="wilson-alf-pattern"]')
            assert wilson.locator("table").count() >= 1 and "Both Korman ratios are met" in wilson.inner_text()
            page.screenshot(path=str(ARTIFACTS / "integrator-page.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
    assert (ARTIFACTS / "integrator-page.png").stat().st_size > 10_000

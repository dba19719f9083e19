"""The CDS committee's report (issue 24, point 6): ``alp-cds feedback-report --html``, per card kind and hook by
month, one self-contained HTML file with charts drawn on the server; read in a real browser."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from service import cli
from service.feedback import issued_cards
from tests.conftest import OS, PV, ROOT, SIGN, CheckedClient, launch_chromium, load_request
from tests.test_integrator_page import _chromium_available
from tests.test_override_memory import app_on

ARTIFACTS = ROOT / "artifacts"
PLP = "Order Pyridoxal 5'-phosphate (vitamin B6), plasma"


def post(client: CheckedClient, service: str, *items: dict) -> None:
    response = client.client.post(f"/cds-services/{service}/feedback", json={"feedback": list(items)})
    assert response.status_code == 200, response.get_json()


def reason(code: str) -> dict:
    return {"reason": {"system": "urn:alp-cds:override-reason", "code": code}}


@pytest.fixture
def store_with_feedback(tmp_path) -> str:
    """Cards of three hooks over two months: accepted (a PLP order), overridden with reasons, and ignored."""
    url = f"sqlite:///{tmp_path}/feedback.db"
    client = app_on(url)
    store = client.app.extensions["cds_feedback"]
    persistent = [client.cards(PV, load_request("persistent-low-in"))[0] for _ in range(2)]
    single = client.cards(PV, load_request("single-low-in"))[0]
    selected = client.cards(OS, load_request("order-low-alp-in"))[0]
    sign_request = copy.deepcopy(load_request("order-low-alp-in"))
    sign_request["hook"] = "order-sign"
    del sign_request["context"]["selections"]
    signed = [client.cards(SIGN, sign_request)[0] for _ in range(3)]
    store.flush()
    with store.engine.begin() as connection:  # the first persistent-low card and one at signing were issued in May
        connection.execute(
            update(issued_cards)
            .where(issued_cards.c.uuid.in_([persistent[0]["uuid"], signed[0]["uuid"]]))
            .values(issued_at=datetime(2026, 5, 14, 9, tzinfo=UTC))
        )
    plp = next(s for s in persistent[0]["suggestions"] if s["label"] == PLP)
    post(
        client,
        PV,
        {
            "card": persistent[0]["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": plp["uuid"]}],
            "outcomeTimestamp": "2026-05-14T09:03:00Z",
        },
        {
            "card": single["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "not-a-suggestion-of-ours"}],
            "outcomeTimestamp": "2026-05-20T09:03:00Z",
        },
        {
            "card": persistent[1]["uuid"],
            "outcome": "overridden",
            "overrideReason": reason("hpp-already-assessed"),
            "outcomeTimestamp": "2026-05-20T10:00:00Z",
        },
    )
    post(
        client,
        OS,
        {
            "card": selected["uuid"],
            "outcome": "overridden",
            "overrideReason": reason("workup-planned"),
            "outcomeTimestamp": "2026-05-20T10:00:00Z",
        },
    )
    post(
        client,
        SIGN,
        {
            "card": signed[0]["uuid"],
            "outcome": "overridden",
            "overrideReason": reason("benefit-outweighs-risk"),
            "outcomeTimestamp": "2026-05-14T09:05:00Z",
        },
        {
            "card": signed[1]["uuid"],
            "outcome": "overridden",
            "overrideReason": {"userComment": "no coded reason"},
            "outcomeTimestamp": "2026-05-20T10:00:00Z",
        },
    )
    return url


def groups_of(url: str, now: datetime) -> dict:
    from service import committee
    from service.card_render import OVERRIDE_SYSTEM, override_reason_displays
    from service.feedback import FeedbackStore
    from service.hooks import all_services

    issued, items = FeedbackStore(url).report_rows()
    built = committee.build(
        issued,
        items,
        now=now,
        days=365,
        days_of=lambda kind: 365,
        hooks={s.id: s.hook for s in all_services()},
        reason_displays=override_reason_displays(),
        own_system=OVERRIDE_SYSTEM,
    )
    return {(g.hook, g.kind): g for g in built}


def test_the_report_counts_each_kind_and_hook_by_month_with_suggestions_reasons_and_overrides_in_force(
    store_with_feedback,
):
    this_month = datetime.now(UTC).strftime("%Y-%m")
    groups = groups_of(store_with_feedback, datetime(2026, 6, 1, tzinfo=UTC))
    assert list(groups) == [
        ("patient-view", "alp-low-persistent"),
        ("patient-view", "alp-low-single"),
        ("order-select", "antiresorptive-order-low-alp"),
        ("order-sign", "antiresorptive-order-low-alp"),  # order-select and order-sign apart
    ]
    persistent = groups[("patient-view", "alp-low-persistent")]
    assert dict(persistent.months["2026-05"]) == {"issued": 1, "accepted": 1, "ignored": 0}
    assert dict(persistent.months[this_month]) == {"issued": 1, "overridden": 1, "ignored": 0}
    assert persistent.acceptance == 0.5
    assert dict(persistent.suggestions) == {PLP: 1}  # which suggestion, by what it proposed
    assert dict(persistent.reasons) == {"HPP already diagnosed or excluded": 1}
    assert dict(persistent.in_force) == {"HPP already diagnosed or excluded": 1}
    assert dict(groups[("patient-view", "alp-low-single")].suggestions) == {"a suggestion not on record": 1}

    signing = groups[("order-sign", "antiresorptive-order-low-alp")]
    assert dict(signing.months["2026-05"]) == {"issued": 1, "overridden": 1, "ignored": 0}
    assert dict(signing.months[this_month]) == {"issued": 2, "overridden": 1, "ignored": 1}
    assert dict(signing.reasons) == {"Benefit outweighs the risk for this patient": 1, "no reason given": 1}
    # The one patient's latest override of the order card kind, made at order-select, is the one in force.
    assert dict(signing.in_force) == {}
    selecting = groups[("order-select", "antiresorptive-order-low-alp")]
    assert dict(selecting.in_force) == {"Workup will be done": 1} and selecting.acceptance == 0

    later = groups_of(store_with_feedback, datetime(2027, 5, 25, tzinfo=UTC))  # past the period: none in force
    assert all(not g.in_force for g in later.values())


def test_the_report_is_one_self_contained_page_read_in_a_real_browser(store_with_feedback, tmp_path):
    _chromium_available()
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "committee.html"
    assert cli.main(["feedback-report", "--db", store_with_feedback, "--html", str(page_file)]) == 0
    html = page_file.read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r"""(?:src|href)=["'](?:https?:)?//""", html)
    ARTIFACTS.mkdir(exist_ok=True)
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requested.append(r.url))
        page.goto(page_file.as_uri())
        assert requested == [page_file.as_uri()]  # nothing else is fetched: fonts, scripts, styles, images

        rows = page.locator("#summary-table tbody tr")
        assert rows.count() == 4
        persistent = page.locator('#summary-table tr[data-kind="alp-low-persistent"]')
        assert persistent.locator("td").all_inner_texts() == [
            "alp-low-persistent", "patient-view", "2", "1", "50 %", "1", "0", "1",
        ]  # fmt: skip
        hooks = page.locator('#summary-table tr[data-kind="antiresorptive-order-low-alp"] td:nth-child(2)')
        assert hooks.all_inner_texts() == ["order-select", "order-sign"]

        section = page.locator('section[data-service="low-alp-workup"][data-kind="alp-low-persistent"]')
        assert section.is_visible()
        assert section.locator("table.suggestions td").first.inner_text() == PLP
        assert section.locator("table.in-force td").first.inner_text() == "HPP already diagnosed or excluded"
        assert section.locator("table.months tbody tr").count() == 2
        # The charts are drawn: an SVG per kind and hook, its bars coloured by outcome, and the overview.
        assert page.locator("section.kind .chart svg").count() == 4
        bars = section.locator(".chart svg .mark-rect path")
        fills = {bars.nth(i).get_attribute("fill") for i in range(bars.count())}
        assert {"#2e7d32", "#c26a00"} <= fills  # accepted and overridden
        assert page.locator("#overview svg .mark-rect path").count() >= 4
        box = page.locator("#overview svg").bounding_box()
        assert box and box["width"] > 300 and box["height"] > 60
        page.screenshot(path=str(ARTIFACTS / "committee-report.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "committee-report.png").stat().st_size > 10_000


def test_an_empty_store_gives_a_page_that_says_so(tmp_path):
    page_file = tmp_path / "empty.html"
    assert cli.main(["feedback-report", "--db", f"sqlite:///{tmp_path}/f.db", "--html", str(page_file)]) == 0
    assert 'id="empty"' in page_file.read_text(encoding="utf-8")


def test_an_unwritable_report_path_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["feedback-report", "--db", f"sqlite:///{tmp_path}/f.db", "--html", f"{blocker}/r.html"]) == 2
    assert "cannot write" in capsys.readouterr().err

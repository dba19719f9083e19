"""Fixtures are current and valid FHIR R4; the docs document every setting and every card kind, and every relative
link of the README and docs/ leads somewhere."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from fhir.resources.R4B import get_fhir_model_class

from service.card_render import card_kinds, render_card
from service.settings import SETTINGS
from tests.conftest import FIXTURES, ROOT


def test_fixture_files_are_current():
    scenarios = importlib.import_module("fixtures.scenarios")
    built = scenarios.build()
    for path, text in built.items():
        assert path.exists(), f"missing {path}; run python fixtures/scenarios.py"
        assert path.read_text() == text, f"{path} is stale; run python fixtures/scenarios.py"
    for folder in ("fhir", "requests", "responses"):
        for path in (FIXTURES / folder).glob("*.json"):
            assert path in built, f"{path} belongs to no scenario any more: delete it"


@pytest.mark.parametrize("path", sorted((FIXTURES / "fhir").glob("*.json")), ids=lambda p: p.stem)
def test_fixture_bundles_are_valid_idempotent_transactions(path):
    bundle = json.loads(path.read_text())
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}


def test_every_scenario_has_in_and_out_cases():
    names = {p.stem for p in (FIXTURES / "fhir").glob("*.json")}
    assert len(names) >= 20
    assert {
        "normal-alp-out",
        "single-low-in",
        "single-low-out",
        "persistent-low-in",
        "persistent-low-out",
        "wilson-in",
        "wilson-out",
        "edta-in",
        "edta-out",
        "order-low-alp-in",
        "order-normal-alp-out",
    } <= names


def test_the_docs_document_every_setting_and_card_kind():
    table = [line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines() if line.startswith("| `")]
    for setting in SETTINGS:
        assert any(line.startswith(f"| `{setting.env_name}` |") for line in table), setting.name
    cards = (ROOT / "docs" / "clinical-logic.md").read_text()
    for kind in card_kinds():
        assert f"| `{kind}` |" in cards, kind


def test_readme_opens_with_the_run_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", readme, re.S)
    assert "alp-cds" in blocks[0] and "pytest" in blocks[1]
    assert "pytest" in (ROOT / ".ci" / "run").read_text()


def test_every_card_template_renders_only_known_sources():
    from service.card_render import sources, template

    for kind in card_kinds():
        spec = template(kind)
        assert spec["indicator"] in ("info", "warning", "critical")
        for key in [spec["source"], *spec.get("links", [])]:
            assert sources()[key]["url"].startswith("https://"), key
    assert callable(render_card)


def test_serve_help_gives_the_thread_count_that_is_used(capsys):
    """It said 8 while gunicorn_conf, the README and the start-up log said 16."""
    from service import cli, gunicorn_conf

    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"requests each worker serves at once (default {gunicorn_conf.threads})" in help_text
    assert f"{gunicorn_conf.threads} threads each" in (ROOT / "docs" / "operations.md").read_text()


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces as hyphens); code blocks
    are no headings."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def markdown_links(markdown: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_relative_link_of_the_readme_and_docs_leads_to_a_file_and_heading():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for link in markdown_links(page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            assert target.is_file() and ROOT in target.parents, (page.name, link)
            if anchor and target.suffix == ".md":
                assert anchor in github_anchors(target.read_text()), (page.name, link)
            checked += 1
    assert checked > 30


def test_every_docs_page_is_reachable_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {link.partition("#")[0] for link in markdown_links(readme)}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in linked, page.name


def test_the_link_checker_sees_a_broken_link_and_anchor():
    assert "running-the-tests" in github_anchors("# Testing\n\n## Running the tests\n")
    assert "the-committees-report" in github_anchors("### The committee's report\n")
    assert markdown_links("[a](docs/x.md#y) `[b](c.md)` [c](https://e.org)") == ["docs/x.md#y", "https://e.org"]

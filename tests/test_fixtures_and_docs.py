"""Fixtures are current and valid FHIR R4; the README documents every setting and every card kind."""

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


def test_readme_documents_every_setting_and_card_kind():
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env_name}`" in readme, setting.name
    for kind in card_kinds():
        assert f"`{kind}`" in readme, kind


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
    assert f"{gunicorn_conf.threads} threads each" in (ROOT / "README.md").read_text()

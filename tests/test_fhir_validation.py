"""The value sets the service serves, and the ServiceRequests its cards carry in suggestions, validated as FHIR R4
by HAPI FHIR's validation module (tests/fhir_validator.py: org.hl7.fhir.validation on the R4 core definitions,
offline). Java 17+ and Maven: skipped with one line when missing here, a failure in CI (.ci/run builds it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def validator():
    from tests import fhir_validator

    try:
        fhir_validator.ensure_built()
    except fhir_validator.Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"FHIR validator: {exc} (.ci/run must install it)")
        pytest.skip(f"FHIR validator: {exc}")
    return fhir_validator


def service_requests() -> list[dict]:
    """Every ServiceRequest of every card suggestion in the fixtures' expected responses (every card kind)."""
    found = []
    for path in sorted((FIXTURES / "responses").glob("*.json")):
        for card in json.loads(path.read_text()).get("cards", []):
            for suggestion in card.get("suggestions", []):
                for action in suggestion.get("actions", []):
                    resource = action.get("resource")
                    if isinstance(resource, dict) and resource.get("resourceType") == "ServiceRequest":
                        found.append(resource)
    return found


def test_served_value_sets_and_card_service_requests_are_valid_fhir_r4(validator, app, tmp_path: Path):
    client = app.test_client()
    bundle = client.get("/fhir/ValueSet").get_json()
    files = []
    for entry in bundle["entry"]:
        path = tmp_path / f"ValueSet-{entry['resource']['id']}.json"
        path.write_text(json.dumps(entry["resource"]))
        files.append(path)
    (tmp_path / "Bundle-searchset.json").write_text(json.dumps(bundle))
    files.append(tmp_path / "Bundle-searchset.json")
    requests = {json.dumps(r, sort_keys=True) for r in service_requests()}
    assert len(requests) >= 10  # every test kind a card suggests
    for i, text in enumerate(sorted(requests)):
        path = tmp_path / f"ServiceRequest-{i}.json"
        path.write_text(text)
        files.append(path)
    # A control the validator must reject, so a validator that accepts anything fails this test.
    broken = {"resourceType": "ValueSet", "status": "bogus", "compose": {"include": [{"concept": [{"code": "x"}]}]}}
    (tmp_path / "control-broken.json").write_text(json.dumps(broken))
    files.append(tmp_path / "control-broken.json")

    checked, issues = validator.validate([tmp_path])
    assert checked == len(files)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    assert any(i.file.endswith("control-broken.json") for i in errors)
    errors = [i for i in errors if not i.file.endswith("control-broken.json")]
    assert not errors, "\n".join(f"{Path(i.file).name} {i.location}: {i.message}" for i in errors[:20])

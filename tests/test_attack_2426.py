"""The outside attack on issues 24 (the override memory) and 26 (value sets served as FHIR, recognition by code):
each test is a finding, failing before its fix."""

from __future__ import annotations

from tests.conftest import PV, load_request
from tests.test_override_memory import app_on, note, one_card, override, with_alendronate


def test_an_override_of_an_information_card_never_quiets_a_later_warning(tmp_path):
    """A1. The clinician dismissed the information card "known HPP: low ALP expected; avoid bisphosphonates" with a
    reason. Later an alendronate course is reconciled onto the chart (started before that dismissal): the card is now
    the warning "review alendronate: the patient has HPP". The clinician never saw, let alone overrode, that warning:
    it must be shown as a warning, not as information "overridden"."""
    client = app_on(f"sqlite:///{tmp_path}/f.db")
    request = load_request("known-hpp-in")
    card = one_card(client, PV, request)
    assert card["indicator"] == "info"
    override(client, card, reason={"system": "urn:alp-cds:override-reason", "code": "specialist-managed"})

    on_alendronate = one_card(client, PV, with_alendronate(request, "2026-01-01"))
    assert "alendronate" in on_alendronate["summary"]
    assert on_alendronate["indicator"] == "warning", note(on_alendronate)

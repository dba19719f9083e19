"""patient-view cards from the fixture scenarios: presence, indicator, wording, evidence and suggestions."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from tests.conftest import PV, load_request, make_app


def cards_for(client, name):
    return client.cards(PV, load_request(name))


def by_summary(cards, text):
    found = [c for c in cards if text in c["summary"]]
    assert found, [c["summary"] for c in cards]
    return found[0]


def ordered_codes(card):
    return [
        a["resource"]["code"]["coding"][0]["code"]
        for s in card.get("suggestions", [])
        for a in s["actions"]
        if a["type"] == "create"
    ]


def test_normal_alp_gets_no_cards_at_all(client):
    assert cards_for(client, "normal-alp-out") == []


def test_single_low_gives_info_card_advising_repeat(client):
    (card,) = cards_for(client, "single-low-in")
    assert card["indicator"] == "info"
    assert card["summary"] == "Repeat the ALP when the patient is well: low at 31 U/L on 2026-05-20 (lower limit 40)"
    assert "| 2026-05-20 | 31 | 40 |" in card["detail"]
    assert card["detail"].startswith("**Repeat the ALP when the patient is well, on or after 2026-06-17.**")
    assert "acute illness, surgery, transfusion or major trauma" in card["detail"]
    # a first low: repeat the ALP, nothing else yet (the workup starts if it stays low)
    assert ordered_codes(card) == ["6768-6"]
    assert card["selectionBehavior"] == "any"
    assert card["source"]["url"].startswith("https://") and card["links"]


def test_single_low_followed_by_normal_gives_nothing(client):
    assert cards_for(client, "single-low-out") == []


def test_persistent_low_gives_hpp_warning(client):
    (card,) = cards_for(client, "persistent-low-in")
    assert card["indicator"] == "warning"
    assert card["summary"] == (
        "Persistently low ALP (2 results over 9 weeks, latest 24 U/L): send PLP and urine PEA for hypophosphatasia"
    )
    assert card["detail"].startswith("**Send plasma PLP and urine phosphoethanolamine**")
    assert "| 2026-01-10 | 22 | 35 |" in card["detail"] and "| 2026-03-15 | 24 | 35 |" in card["detail"]
    detail = " ".join(card["detail"].split())
    assert "about half carried an ALPL variant, and more than 9 in 10 of those with values below 25 U/L" in detail
    assert "have the PLP and urine PEA results: if either is high" in detail
    assert "temporary ones: acute illness, cardiac surgery, transfusion" in detail
    codes = ordered_codes(card)
    assert codes[:3] == ["62236-5", "28604-7", "69548-6"]
    assert "5763-8" not in codes  # zinc resulted 78 days ago: shown instead
    assert "| Zinc | 88 µg/dL | 60-120 µg/dL (the lab's reference range) | 2026-03-15 |" in card["detail"]
    genetic = next(s for s in card["suggestions"] if "ALPL" in s["label"])
    assert "isRecommended" not in genetic  # genetics after the biochemistry
    assert {r["code"] for r in card["overrideReasons"]} >= {"hpp-already-assessed", "known-cause"}


def test_pyridoxine_is_named_as_plp_confounder(client):
    (card,) = cards_for(client, "persistent-low-in")
    assert "no vitamin B6 or multivitamin supplements in the 24 hours before the draw" in card["detail"]
    assert "Hold the B6 product (pyridoxine) before the draw" in " ".join(card["detail"].split())
    plp = next(
        a["resource"]
        for s in card["suggestions"]
        for a in s["actions"]
        if a["resource"]["code"]["coding"][0]["code"] == "62236-5"
    )
    assert "24 hours" in plp["note"][0]["text"]


def test_lows_too_close_together_are_not_persistent(client):
    (card,) = cards_for(client, "persistent-low-out")
    assert card["indicator"] == "info" and "Persistently" not in card["summary"]


def test_child_is_judged_against_the_paediatric_limit(client):
    (card,) = cards_for(client, "child-low-in")
    assert "95 U/L" in card["summary"] and "lower limit 142" in card["summary"]
    assert "CALIPER" in card["detail"]
    assert cards_for(client, "child-low-out") == []


def test_units_are_converted_and_unknown_units_are_reported(client):
    (card,) = cards_for(client, "units-in")
    assert "low at 24 U/L" in card["summary"]
    assert (
        "**Not interpreted:** Alkaline phosphatase, serum/plasma 7 mg/dL on 2026-05-21 (unit not recognised)"
        in card["detail"]
    )
    (unknown,) = cards_for(client, "unit-unknown-in")  # the only ALP is in mg/dL: no advice, a request to check it
    assert unknown["summary"] == "Ask the lab to check the latest ALP: 7 mg/dL on 2026-05-21 could not be interpreted"


def test_preliminary_counts_but_is_marked_and_entered_in_error_is_ignored(client):
    (card,) = cards_for(client, "status-in")
    assert "2026-05-20 (preliminary)" in card["detail"]
    assert cards_for(client, "status-out") == []  # includes low bone ALP results, never compared


def test_abnormal_secondary_results_are_named_as_explanations(client):
    (card,) = cards_for(client, "secondary-in")
    detail = " ".join(card["detail"].split())
    assert detail.startswith(
        "**Check a free T4 and treat hypothyroidism if it is confirmed; treat the low zinc; then repeat the ALP in "
        "about 3 months**. PLP and urine phosphoethanolamine can wait (offered, not recommended): if the ALP is still "
        "low once the cause is corrected, they come next, for hypophosphatasia."
    )
    assert card["summary"].endswith("check a free T4, treat hypothyroidism if confirmed, repeat the ALP in 3 months")
    # the cause is named: the generic list of secondary causes and the PLP preparation are not repeated (GP review)
    assert "Secondary causes: low zinc or magnesium" not in detail and "PLP preparation" not in detail
    assert "Order Alkaline phosphatase, serum" in [s["label"] for s in card["suggestions"]]  # for after it
    recommended = {s["label"] for s in card["suggestions"] if s.get("isRecommended")}
    assert not any("Pyridoxal" in label or "Phosphoethanolamine" in label for label in recommended)
    codes = ordered_codes(card)
    assert "5763-8" not in codes and "3016-3" not in codes and "19123-9" not in codes
    free_t4 = next(s for s in card["suggestions"] if s["label"] == "Order Free T4")
    assert free_t4["isRecommended"] is True  # the raised TSH is to be confirmed
    genetic = next(s for s in card["suggestions"] if "ALPL" in s["label"])
    assert "isRecommended" not in genetic  # a secondary cause comes first
    # normal: shown, not named
    assert "| Magnesium | 2 mg/dL | 1.7-2.4 mg/dL (the lab's reference range) | 2026-05-01 |" in card["detail"]


def test_old_results_are_suggested_again(client):
    (card,) = cards_for(client, "secondary-out")
    assert "may explain" not in card["detail"]
    assert "5763-8" in ordered_codes(card)  # zinc from a year ago is not recent


def test_wilson_screen_for_young_patient_with_raised_bilirubin(client):
    cards = cards_for(client, "wilson-in")
    card = by_summary(cards, "Wilson")
    assert card["indicator"] == "warning"
    assert card["summary"] == (
        "Check the INR today and send copper studies for Wilson disease; refer to hepatology (age 22, low ALP 30 U/L, "
        "raised bilirubin)"
    )
    assert card["detail"].startswith("**Check the INR today and send ceruloplasmin, serum copper and 24-hour urine")
    assert (
        "| AST | 90 U/L (8-48 U/L (Mayo Clinic Laboratories interval, 14 years and over)) | 2026-05-20 |"
        in (card["detail"])
    )
    assert ordered_codes(card) == ["2064-4", "5631-7", "5633-3", "6301-6"]  # and the INR (issue 23)
    # outside liver failure the Korman ratios are not shown: a "no" would read as "not Wilson" (GP review)
    assert "5.88" not in card["detail"] and "cannot rule Wilson disease out" in card["detail"]


def test_wilson_critical_when_both_korman_ratios_are_met_with_si_bilirubin(client):
    card = by_summary(cards_for(client, "wilson-critical-in"), "Wilson")
    assert card["indicator"] == "critical"
    # 87.2 umol/L = 5.1 mg/dL; 20 / 5.1 = 3.92 < 4; AST/ALT = 200/60 = 3.33 > 2.2
    assert "ALP/bilirubin 3.9, AST/ALT 3.3" in card["summary"]  # one decimal: no false precision
    assert "fulminant" not in card["summary"]  # no INR on the chart: liver failure is not shown yet (GP review)
    assert "do not wait for the copper results" in " ".join(card["detail"].split())
    assert card["detail"].startswith("**Contact hepatology today**")
    assert card["overrideReasons"]


def test_no_wilson_card_above_the_age_cut_off(client):
    cards = cards_for(client, "wilson-out")
    assert not [c for c in cards if "Wilson" in c["summary"]]
    assert len(cards) == 1


def test_wilson_age_cut_off_is_a_setting():
    older = make_app(WILSON_MAX_AGE=70)
    assert [c for c in older.cards(PV, load_request("wilson-out")) if "Wilson" in c["summary"]]


def test_edta_pattern_asks_to_recollect_first_and_keeps_the_low_alp_advice(client):
    (card,) = cards_for(client, "edta-in")  # one problem, one card (issue 24): the only low does not count
    assert card["indicator"] == "warning"
    assert card["summary"].startswith(
        "Repeat the potassium and calcium now, treat them as real until repeated; recollect the ALP"
    )
    assert card["detail"].startswith("**Repeat the potassium and calcium now and treat them as real")
    detail = " ".join(card["detail"].split())
    assert "**potassium of 7.4 mmol/L** (at or above 6.0 mmol/L)" in detail
    assert "**low calcium** (6.1 mg/dL; 8.6-10.2 mg/dL (the lab's reference range))" in detail
    assert "low zinc (12 µg/dL)" in detail
    assert "Laboratories reject EDTA plasma" not in detail
    assert ordered_codes(card) == ["6768-6"]
    # the ALP table of the single-low card it replaces, with the low marked as not counted
    assert "| 2026-05-20 (not counted: possible EDTA contamination) | 28 | 40 |" in card["detail"]


def test_no_edta_card_with_normal_potassium(client):
    (card,) = cards_for(client, "edta-out")
    assert "EDTA" not in card["summary"] and card["indicator"] == "info"


def test_every_suggested_resource_is_a_valid_draft_service_request(client):
    for name in ("single-low-in", "persistent-low-in", "wilson-in", "edta-in"):
        body = load_request(name)
        for card in client.cards(PV, body):
            for suggestion in card.get("suggestions", []):
                assert suggestion["uuid"]
                for action in suggestion["actions"]:
                    resource = action["resource"]
                    ServiceRequest.model_validate(resource)
                    assert resource["status"] == "draft" and resource["intent"] == "proposal"
                    assert resource["subject"] == {"reference": f"Patient/{body['context']['patientId']}"}
                    assert resource["code"]["coding"][0]["system"] == "http://loinc.org"


def test_recency_window_is_a_setting():
    short = make_app(RECENT_RESULT_DAYS=30)
    (card,) = short.cards(PV, load_request("persistent-low-in"))
    assert "5763-8" in ordered_codes(card)


@pytest.mark.parametrize("name", ["single-low-in", "persistent-low-in", "wilson-critical-in", "edta-in"])
def test_card_uuids_are_unique(client, name):
    cards = cards_for(client, name)
    ids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", [])]
    assert len(ids) == len(set(ids))

"""The clinical review's findings, each shown by a fixture patient (fixtures/fhir, fixtures/requests) and its expected
cards (fixtures/responses): card order, who the Wilson check applies to, EDTA, denosumab courses, persistence,
workup tiers, wording, and the further causes of a low ALP."""

from __future__ import annotations

import json

import pytest

from service.hook_requests import without_uuids
from tests.conftest import FIXTURES, SERVICE_OF_HOOK, load_request, make_app

SCENARIOS = sorted(p.stem for p in (FIXTURES / "requests").glob("*.json"))


def cards(name: str) -> list[dict]:
    request = load_request(name)
    return make_app().cards(SERVICE_OF_HOOK[request["hook"]], request)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_gives_its_expected_response(name):
    """What each fixture patient gets over HTTP is what fixtures/responses/<name>.json says (uuids aside): a
    reviewer reads the in/out behaviour there, and any change to it shows up as a diff of that file."""
    expected = json.loads((FIXTURES / "responses" / f"{name}.json").read_text())
    assert {"cards": without_uuids(cards(name))} == expected


# Every "-out" scenario and the rule it shows not firing: None means no card at all, else a text no card may hold.
OUT = {
    "normal-alp-out": None,
    "single-low-out": None,
    "child-low-out": None,
    "status-out": None,
    "antiresorptive-current-out": None,
    "order-normal-alp-out": None,
    "deceased-out": None,
    "old-low-out": None,
    "persistent-old-out": None,
    "persistent-low-out": "Persistently low",
    "persistent-after-surgery-out": "Persistently low",
    "secondary-out": "A secondary cause is on the chart",
    "wilson-out": "Wilson",
    "wilson-newborn-out": "Wilson",
    "wilson-gilbert-out": "Wilson",
    "edta-out": "EDTA",
    "edta-ckd-out": "EDTA",
    "edta-infant-out": "EDTA",
    "sign-normal-alp-out": None,
    # issue 23: the chart around the labs
    "known-hpp-out": "Known hypophosphatasia",  # a negated HPP text: the workup stands
    "pregnancy-out": None,  # a normal ALP more than 8 weeks after delivery ends the run
    "fracture-out": None,  # a single low before a fracture: the healing normal ends it
    "infant-hpp-out": "Refer today",  # a modest low with a normal calcium: repeat when well (with the red flags)
    "denosumab-overdue-out": "overdue",  # the last injection 3 months ago
    "amended-out": None,  # a low corrected to a normal, and one normal sent twice
    # issue 24: a low 45 days after a transfusion is no longer read as its temporary fall
    "order-after-surgery-out": "most likely temporary",
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_names_say_whether_their_rule_fires(name):
    found = cards(name)
    if not name.endswith("-out"):
        assert found, f"{name} is an 'in' case and gets no card"
        return
    assert name in OUT, f"{name}: say in OUT which rule it shows not firing"
    if OUT[name] is None:
        assert found == [], [c["summary"] for c in found]
    else:
        assert not [c for c in found if OUT[name] in c["summary"] + c.get("detail", "")]


def summaries(name: str) -> list[str]:
    return [c["summary"] for c in cards(name)]


def test_1_a_critical_card_comes_first():
    found = cards("wilson-critical-in")
    assert [c["indicator"] for c in found] == ["critical"]  # no routine repeat-the-ALP card beside it (issue 23)
    # the Wilson tests are suggested on the critical card, where the clinician starts
    assert any("Ceruloplasmin" in s["label"] for s in found[0]["suggestions"])


def test_2_wilson_not_for_newborn_jaundice_nor_an_isolated_bilirubin_rise():
    assert not [s for s in summaries("wilson-newborn-out") if "Wilson" in s]
    assert not [s for s in summaries("wilson-gilbert-out") if "Wilson" in s]
    screen = "Check the INR today and send copper studies for Wilson disease"
    assert [s for s in summaries("wilson-in") if s.startswith(screen)]
    # bilirubin in umol/L with no range reaches the critical pattern through the fallback limit
    assert [c["indicator"] for c in cards("no-ranges-in") if "Wilson" in c["summary"]] == ["critical"]


def test_3_edta_needs_the_sourced_potassium_and_keeps_the_alp_advice():
    assert not [s for s in summaries("edta-ckd-out") if "EDTA" in s]  # K 5.6 with a low calcium
    assert not [s for s in summaries("edta-infant-out") if "EDTA" in s]  # K 6.1 at 4 months is normal
    (edta,) = cards("edta-in")  # the only low is the suspect sample's: its card is the problem's one card
    assert "EDTA" in edta["summary"] and "(not counted: possible EDTA contamination)" in edta["detail"]
    detail = " ".join(edta["detail"].split())
    assert "Laboratories reject EDTA plasma" not in detail
    assert "carry out the low-ALP advice if the clean repeat is still low" in detail


def test_4_denosumab_course_is_not_offered_for_removal():
    (card,) = cards("order-denosumab-course-in")
    # the GP's reading (issue 24): the summary says to give the dose, never reads as "hold it for the specialist"
    assert card["summary"].startswith("Give this denosumab dose on time; send PLP and urine PEA with it")
    assert card["detail"].startswith("**Give this dose on time, and send PLP and urine phosphoethanolamine with it")
    assert not [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    detail = " ".join(card["detail"].split())
    assert "Do not stop or delay denosumab without a plan." in detail
    assert "a follow-on antiresorptive is started about 6 months after the last injection" in detail
    assert "starting" not in card["summary"]
    # a first dose keeps the removal, and says that denosumab cannot simply be stopped once started
    (first,) = cards("order-low-alp-in")
    assert first["suggestions"][0]["actions"][0]["type"] == "delete"
    assert "Once started, denosumab cannot simply be stopped" in " ".join(first["detail"].split())
    on_it = next(c for c in cards("denosumab-current-in") if "on denosumab" in c["summary"])
    assert "Do not stop or delay denosumab without a plan." in " ".join(on_it["detail"].split())
    assert "review with the patient whether the drug should continue" not in on_it["detail"]


def test_5_persistence_needs_spacing_and_a_current_latest_low():
    assert summaries("persistent-after-surgery-out")[0].startswith("Repeat the ALP")  # 15 days apart
    assert summaries("persistent-old-out") == []  # two lows in 2019, nothing since
    (card,) = cards("persistent-low-in")
    assert "Two or more low results at least 28 days apart, none normal in between" in " ".join(card["detail"].split())


def codes_ordered(card: dict) -> dict[str, bool]:
    return {
        a["resource"]["code"]["coding"][0]["code"]: s.get("isRecommended", False)
        for s in card.get("suggestions", [])
        for a in s["actions"]
        if a["type"] == "create"
    }


def test_6_workup_tiers():
    (single,) = cards("single-low-in")
    assert codes_ordered(single) == {"6768-6": True}  # a first low: repeat it, nothing else yet
    (persistent,) = cards("persistent-low-in")
    ordered = codes_ordered(persistent)
    assert ordered["62236-5"] and ordered["28604-7"]  # the HPP substrates are recommended
    assert ordered["69548-6"] is False  # genetics after them
    assert "62292-8" not in ordered  # no vitamin D: a deficiency raises ALP
    (plp_high,) = cards("plp-high-in")
    assert codes_ordered(plp_high)["69548-6"] is True  # a high PLP makes genetics the next step
    (secondary,) = cards("secondary-in")
    assert codes_ordered(secondary)["69548-6"] is False  # a secondary cause is corrected first
    assert codes_ordered(secondary)["3024-7"] is True  # free T4 confirms the raised TSH
    assert secondary["detail"].startswith("**Check a free T4 and treat hypothyroidism if it is confirmed; treat the")
    assert "check a free T4, treat hypothyroidism if confirmed, repeat the ALP in 3 months" in secondary["summary"]
    assert codes_ordered(secondary)["62236-5"] is False  # PLP can wait while the cause is corrected


def test_7_wording():
    (long_name,) = cards("order-long-name-in")
    assert (
        long_name["summary"]
        == "Repeat the ALP before starting alendronate: one low (23 U/L on 2026-04-05), often temporary"
    )
    persistent = " ".join(cards("persistent-low-in")[0]["detail"].split())
    assert "about half carried an ALPL variant, and more than 9 in 10 of those with values below 25 U/L" in persistent
    assert "until HPP is excluded" not in persistent  # a GP cannot tell when "excluded" is reached (issue 24)
    assert "metatarsal stress or atypical femoral fractures" in persistent
    assert "refer to a metabolic bone specialist" in persistent
    # one card for one problem: the drug and the low ALP together, with the workup (issue 24)
    (on_drug,) = cards("antiresorptive-current-in")
    assert on_drug["summary"].startswith("Exclude hypophosphatasia: ALP low before alendronate")
    assert "do not start" not in on_drug["detail"].lower()  # already on one
    assert codes_ordered(on_drug)["62236-5"] is True
    (child,) = cards("child-low-in")
    detail = " ".join(child["detail"].split())
    assert "early loss of primary teeth (root intact), rickets, poor growth or craniosynostosis" in detail
    assert "cardiac surgery" not in detail


def test_8_further_causes():
    (card,) = cards("drugs-lower-alp-in")
    assert "ethinyl estradiol (oestrogen), prednisone (glucocorticoid)" in card["detail"]
    persistent = " ".join(cards("persistent-low-in")[0]["detail"].split())
    assert "malnutrition or malabsorption" in persistent and "severe anaemia" in persistent
    # no pregnancy note without a pregnancy on the chart (the service reads none yet: see docs/clinical-logic.md)
    assert "pregnan" not in persistent


# ------------------------------------------------------------------ the second clinical review's findings

from tests.conftest import OS, PV  # noqa: E402
from tests.test_chart_reading import alendronate, alp, lab, os_request, patient, pv_request  # noqa: E402

DRAW = "2026-05-20T08:00:00Z"


def _summaries(service: str, request: dict) -> list[str]:
    return [c["summary"] for c in make_app().cards(service, request)]


@pytest.mark.parametrize("normal", [lab("5763-8", 85, "ug/dL", DRAW), lab("19123-9", 2.7, "mg/dL", DRAW)])
def test_edta_not_called_when_zinc_or_magnesium_of_the_draw_is_normal(normal):
    """Dialysis: K 6.3 with a low calcium is real when the zinc (or magnesium) of the same draw is normal (S26)."""
    request = pv_request(
        patient(birth="1950-01-01"),
        alp(30, DRAW),
        lab("2823-3", 6.3, "mmol/L", DRAW),
        lab("17861-6", 8.0, "mg/dL", DRAW),
        normal,
    )
    assert not [s for s in _summaries(PV, request) if "EDTA" in s]


def test_a_zinc_from_a_suspect_draw_is_not_a_secondary_cause():
    # had the suspect zinc been read as a secondary cause, the low-ALP card would name it and stay beside the
    # sample card; it is the one card, with no zinc row and nothing said to explain the low ALP
    (card,) = make_app().cards(PV, load_request("edta-in"))
    assert "may explain it" not in card["detail"]
    assert "| Zinc |" not in card["detail"]


def test_wilson_alf_pattern_at_58():
    request = pv_request(
        patient(birth="1968-01-01", gender="female"),
        alp(15, DRAW),
        lab("1975-2", 8, "mg/dL", DRAW),
        lab("1920-8", 400, "U/L", DRAW),
        lab("1742-6", 100, "U/L", DRAW),
    )
    found = make_app().cards(PV, request)
    assert found[0]["indicator"] == "critical" and "Wilson" in found[0]["summary"]
    assert "specific for an ALPL variant" not in " ".join(c.get("detail", "") for c in found)


def test_a_plp_raised_by_vitamin_b6_does_not_make_genetics_the_next_step():
    b6 = {
        "resourceType": "MedicationStatement",
        "id": "ms-b6",
        "status": "active",
        "medicationCodeableConcept": {"text": "pyridoxine 50 mg"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2025-01-01"},
    }
    request = pv_request(
        patient(), alp(21, "2026-01-10"), alp(20, "2026-04-20"), lab("62236-5", 250, "nmol/L", "2026-04-20"), b6
    )
    (card,) = make_app().cards(PV, request)
    genetics = next(s for s in card["suggestions"] if "ALPL" in s["label"])
    assert "isRecommended" not in genetics
    assert "ALPL genetic testing is the next step" not in card["detail"]


def test_a_plp_between_the_upper_limit_and_180_does_not_support_hpp():
    request = pv_request(
        patient(), alp(21, "2026-01-10"), alp(20, "2026-04-20"), lab("62236-5", 150, "nmol/L", "2026-04-20")
    )
    (card,) = make_app().cards(PV, request)
    assert "ALPL genetic testing is the next step" not in card["detail"]


def test_a_renewal_is_continuing_not_starting():
    request = os_request(patient(), alp(30, "2021-01-01"), alp(28, "2026-05-01"), alendronate(authoredOn="2022-03-01"))
    (summary,) = _summaries(OS, request)
    assert summary.startswith("Send PLP and urine PEA before continuing alendronate")


def test_a_denosumab_restart_years_after_a_course_is_a_first_dose():
    old = {
        "resourceType": "MedicationStatement",
        "id": "ms-prolia",
        "status": "completed",
        "medicationCodeableConcept": {"text": "Prolia 60 mg"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2017-01-10", "end": "2019-01-10"},
    }
    draft = {**alendronate("draft"), "medicationCodeableConcept": {"text": "Prolia 60 mg"}}
    (card,) = make_app().cards(OS, os_request(patient(), alp(28, "2026-05-01"), old, order=draft))
    assert card["summary"].startswith("Repeat the ALP before starting denosumab: one low")
    assert card["suggestions"][0]["actions"][0]["type"] == "delete"


def test_a_fall_from_a_normal_value_is_named():
    request = pv_request(patient(), alp(80, "2026-05-10"), alp(22, "2026-05-20"))
    (card,) = make_app().cards(PV, request)
    assert "Before this the ALP was normal (80 U/L on 2026-05-10)" in card["detail"]
    assert "specific for an ALPL variant" not in card["detail"]


def test_a_single_low_says_when_to_repeat():
    (card,) = make_app().cards(PV, load_request("persistent-after-surgery-out"))
    assert card["detail"].startswith("**Repeat the ALP when the patient is well, on or after 2026-06-02.**")


def test_a_single_low_on_an_order_gets_a_repeat_first():
    (card,) = make_app().cards(OS, load_request("order-long-name-in"))
    recommended = [s["label"] for s in card["suggestions"] if s.get("isRecommended")]
    assert recommended == ["Order Alkaline phosphatase, serum"]


def test_a_card_that_says_no_workup_recommends_none():
    """The GP's reading (issue 24): "HPP recorded as excluded: no repeat workup" and "most likely the drug: no
    workup" recommended zinc, magnesium, TSH and albumin, and the drug card offered ten workup buttons."""
    (excluded,) = cards("known-hpp-out")
    assert "no repeat workup" in excluded["summary"]
    assert codes_ordered(excluded) and not any(codes_ordered(excluded).values())
    (drug,) = cards("on-treatment-in")
    assert "most likely the drug" in drug["summary"] and not codes_ordered(drug)
    assert "PLP preparation" not in drug["detail"]


@pytest.mark.parametrize(
    ("drug", "summary", "first_line"),
    [
        (
            "ALENDRONATE",
            "Hold alendronate, ask a metabolic bone specialist before the next dose",
            "**Hold alendronate and ask a metabolic bone specialist before the next dose.**",
        ),
        (
            "PROLIA",
            "Plan denosumab with a metabolic bone specialist before the next dose, do not just stop it",
            "**Decide the next denosumab dose with a metabolic bone specialist before it is due; do not stop it",
        ),
    ],
)
def test_known_hpp_on_an_antiresorptive_says_what_to_do_with_the_drug(drug, summary, first_line):
    """The GP's reading (issue 24): "Review alendronate" said nothing a GP could do. A bisphosphonate is held
    until the specialist has seen it (it acts for years); denosumab is never simply stopped (rebound fractures)."""
    from tests import test_override_memory as memory

    request = memory.with_alendronate(load_request("known-hpp-in"), "2026-01-02", getattr(memory, drug))
    (card,) = make_app().cards(PV, request)
    assert card["indicator"] == "warning" and card["summary"].startswith(summary), card["summary"]
    assert first_line in " ".join(card["detail"].split())


def test_a_hip_fracture_card_gives_the_end_of_the_90_day_window():
    (card,) = cards("fracture-in")
    assert card["summary"].startswith("Hip fracture 11 weeks ago, persistently low ALP")
    assert "send PLP and urine PEA today, agree bone treatment this week" in card["summary"]
    assert "repair reduced new fractures and deaths: here until about 2026-06-13)" in " ".join(card["detail"].split())


def test_the_cholestasis_card_summary_and_first_line_ask_for_the_same_tests():
    """The GP's reading (issue 24): the summary said "check a bone ALP", the detail opened with "Send plasma PLP"."""
    (card,) = cards("cholestasis-in")
    assert card["summary"].endswith("(latest low 31 U/L): check a bone ALP, send PLP and urine PEA")
    assert card["detail"].startswith("**Check a bone-specific ALP, and send plasma PLP and urine phosphoethanolamine**")


def test_a_suspect_sample_with_a_low_that_counts_keeps_both_cards():
    """The fold is only for a sample card whose single-low card repeats it: with an earlier low that counts, or
    chart context to say, the low-ALP card stays beside the sample card."""
    from service.clinical import rules

    sample = rules.Finding("sample-contamination", {"readings": []}, ())
    quiet = {"count": 0, "readings": ["row"], "context": {"fractures": []}, "earlier": None}
    single = rules.Finding("alp-low-single", quiet, ())
    (folded,) = rules.one_card_per_sample_problem([sample, single])
    assert folded.kind == "sample-contamination" and folded.facts["readings"] == ["row"]
    counted = rules.Finding("alp-low-single", {**quiet, "count": 1}, ())
    assert [f.kind for f in rules.one_card_per_sample_problem([sample, counted])] == [
        "sample-contamination",
        "alp-low-single",
    ]
    context = rules.Finding("alp-low-single", {**quiet, "context": {"fractures": [{"name": "hip"}]}}, ())
    assert len(rules.one_card_per_sample_problem([sample, context])) == 2

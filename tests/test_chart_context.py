"""The chart around the labs (issue 23): diagnoses and their status, pregnancy, fractures, kidney function, diseases
that raise ALP, escalation, treatment timing, vitamin B6 and corrected results. Each test names the rule and the
edge; reading is tested from FHIR JSON, rules from facts built directly (the clock is fixed)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from service.clinical.antiresorptives import overdue_denosumab, review_current, review_order
from service.clinical.chart import Chart
from service.clinical.context import egfr_ckd_epi_2021, pregnancy_windows
from service.clinical.facts import Diagnosis, LabResult, Medication, Patient, PregnancyEvidence
from service.clinical.rules import b6_intake, low_alp, wilson_disease
from service.clinical.treatment import add_months, courses
from service.fhir.context import hpp_text, read_diagnoses, read_pregnancy_evidence
from service.fhir.readers import Scope, read_lab_results, settle_versions
from service.settings import ClinicalSettings
from tests.test_boundaries_rules import ADULT, NOW, ago, alp, kinds, lab, med

SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
WOMAN = Patient("p", date(1990, 1, 1), "female")


def chart(labs=(), patient=ADULT, medications=(), diagnoses=(), pregnancy=(), not_read=frozenset()) -> Chart:
    ordered = sorted(labs, key=lambda r: r.when)
    return Chart(
        patient, ordered, list(medications), NOW, ClinicalSettings(), not_read=not_read, diagnoses=diagnoses,
        pregnancy=pregnancy,
    )  # fmt: skip


def dx(group, kind=None, name="x", active=True, confirmed=True, onset=None, abatement=None) -> Diagnosis:
    return Diagnosis(group, kind or group, name, active, confirmed, onset, abatement)


def scope(patient=ADULT) -> Scope:
    return Scope(patient=patient, now=NOW)


def condition(code=None, text=None, clinical=None, verification=None, subject="Patient/p", **extra) -> dict:
    concept = {**({"coding": [code]} if code else {}), **({"text": text} if text else {})}
    resource = {"resourceType": "Condition", "id": "c", "subject": {"reference": subject}, "code": concept, **extra}
    if clinical is not None:
        resource["clinicalStatus"] = {"coding": [{"code": clinical}]}
    if verification is not None:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    return resource


# ----------------------------------------------------------------------------------------------- HPP in words


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        ("Hypophosphatasia, adult form", "documented"),
        ("HPP (ALPL variant confirmed)", "documented"),
        ("Adult hypophosphatasia", "documented"),
        ("Odontohypophosphatasia", "documented"),
        ("ALPL pathogenic variant, heterozygous", "documented"),
        ("History of hypophosphatasia", "documented"),
        ("?HPP", "suspected"),
        ("Possible hypophosphatasia", "suspected"),
        ("R/O hypophosphatasia", "suspected"),
        ("Hypophosphatasia ruled out", "excluded"),
        ("HPP excluded", "excluded"),
        ("No evidence of hypophosphatasia", "excluded"),
        ("Family history of hypophosphatasia", None),
        ("hypophosphatasia in mother", None),
        ("Pseudohypophosphatasia", None),
        ("pseudo-hypophosphatasia", None),
        ("Hypophosphatemia", None),  # low phosphate, another disorder
        ("Hyperphosphatasia", None),
        # words near the name that do not govern it (outside clinical review): still the patient's HPP
        ("Hypophosphatasia, ALPL heterozygous, negative for second variant", "documented"),
        ("Hypophosphatasia (childhood-onset), unlikely to need asfotase alfa", "documented"),
        ("Odontohypophosphatasia - no fractures", "documented"),
        ("Adult HPP, no longer on Strensiq", "documented"),
        ("Osteoporosis without fracture / hypophosphatasia (ALPL c.1250A>G)", "documented"),
        ("HPP (hypophosphatasia) - absent dentition since age 3", "documented"),
        ("Hypophosphatasia: ruled out", "excluded"),
        ("Hypophosphatasia was excluded", "excluded"),
        ("Hypophosphatasia?", "suspected"),
        ("Hypophosphatasia vs. osteomalacia", "suspected"),
    ],
)
def test_hpp_text_is_read_with_its_negations_and_doubts(text, reading):
    assert hpp_text(text) == reading


# ----------------------------------------------------------------------------------------------- diagnoses read


@pytest.mark.parametrize(
    ("coding", "group", "kind"),
    [
        ({"system": "https://www.orpha.net", "code": "ORPHA:247676"}, "hpp", "adult"),
        ({"system": "http://www.orpha.net", "code": "Orphanet_436"}, "hpp", "hpp"),
        ({"system": "https://omim.org", "code": "146300"}, "hpp", "adult"),
        ({"system": "https://www.omim.org", "code": "OMIM:241500"}, "hpp", "infantile"),
        ({"system": SNOMED, "code": "72892002"}, "pregnancy", "pregnancy"),
        ({"system": ICD, "code": "Z33.1"}, "pregnancy", "pregnancy"),
        ({"system": ICD, "code": "O09.513"}, "pregnancy", "pregnancy"),
        ({"system": ICD, "code": "Z39.2"}, "postpartum", "postpartum"),
        ({"system": ICD, "code": "N18.4"}, "ckd_severe", "ckd_severe"),
        ({"system": "urn:oid:2.16.840.1.113883.6.90", "code": "N18.6"}, "ckd_severe", "ckd_severe"),
        ({"system": ICD, "code": "M84.750A"}, "fracture", "atypical_femoral"),
        ({"system": ICD, "code": "M84.374A"}, "fracture", "stress"),
        ({"system": SNOMED, "code": "2089002"}, "alp_raising", "paget"),
        ({"system": ICD, "code": "C79.51"}, "alp_raising", "bone_metastases"),
        ({"system": ICD, "code": "K74.3"}, "alp_raising", "cholestasis"),
    ],
)
def test_diagnoses_are_read_from_the_published_codes_however_the_system_and_code_are_written(coding, group, kind):
    (found,) = read_diagnoses(condition(coding), scope=scope())
    assert (found.group, found.kind, found.matched_by) == (group, kind, "code")


@pytest.mark.parametrize(
    "coding",
    [
        {"system": ICD, "code": "E83.39"},  # other disorders of phosphorus metabolism: not HPP on its own
        {"system": SNOMED, "code": "360792001"},  # deficiency of alkaline phosphatase: broader than HPP
        {"system": SNOMED, "code": "16114001"},  # fracture of ankle: not a fragility fracture
        {"system": SNOMED, "code": "714153000"},  # CKD stage 5 with a transplant: kidney function may be good
        {"system": ICD, "code": "Z32.02"},  # a negative pregnancy test
    ],
)
def test_codes_that_do_not_mean_the_group_are_not_read(coding):
    assert read_diagnoses(condition(coding), scope=scope()) == []


def test_e83_39_counts_as_hpp_only_with_words_that_say_so():
    coded = {"system": ICD, "code": "E83.39", "display": "Hypophosphatasia"}
    (found,) = read_diagnoses(condition(coded), scope=scope())
    assert (found.group, found.matched_by, found.confirmed) == ("hpp", "text", True)


@pytest.mark.parametrize(
    ("clinical", "verification", "read", "active", "confirmed"),
    [
        (None, None, True, True, True),
        ("active", "confirmed", True, True, True),
        ("recurrence", None, True, True, True),
        ("inactive", None, True, False, True),
        ("resolved", None, True, False, True),
        ("remission", None, True, False, True),
        (None, "provisional", True, True, False),
        (None, "differential", True, True, False),
        (None, "unconfirmed", True, True, False),
        (None, "entered-in-error", False, None, None),
    ],
)
def test_a_conditions_status_is_honoured(clinical, verification, read, active, confirmed):
    found = read_diagnoses(
        condition({"system": SNOMED, "code": "190859005"}, None, clinical, verification), scope=scope()
    )
    assert bool(found) is read
    if read:
        assert (found[0].active, found[0].confirmed) == (active, confirmed)


def test_an_abatement_passed_without_a_clinical_status_is_not_active():
    passed = condition({"system": SNOMED, "code": "72892002"}, abatementDateTime="2026-01-01")
    future = condition({"system": SNOMED, "code": "72892002"}, abatementDateTime="2026-12-01")
    assert read_diagnoses(passed, scope=scope())[0].active is False
    assert read_diagnoses(future, scope=scope())[0].active is True


def test_a_coded_hpp_whose_own_text_takes_it_back_is_not_established():
    (found,) = read_diagnoses(
        condition({"system": SNOMED, "code": "190859005"}, "Hypophosphatasia ruled out"), scope=scope()
    )
    assert found.group == "hpp_excluded"
    (found,) = read_diagnoses(condition({"system": SNOMED, "code": "190859005"}, "?HPP"), scope=scope())
    assert (found.group, found.confirmed) == ("hpp", False)


def test_a_coded_confirmed_hpp_is_documented_whatever_words_sit_near_its_name():
    """Outside clinical review P41, P03: words near the name that do not govern it ("absent fractures", "without
    secondary cause") never take a documented HPP back; a verificationStatus outranks the text."""
    coded = condition({"system": SNOMED, "code": "20756002"}, "Adult hypophosphatasia - absent fractures so far")
    coded["verificationStatus"] = {"coding": [{"code": "confirmed"}]}
    (found,) = read_diagnoses(coded, scope=scope())
    assert (found.group, found.confirmed) == ("hpp", True)
    coded["code"]["text"] = "Hypophosphatasia ruled out"  # a confirmed status outranks its text
    assert read_diagnoses(coded, scope=scope())[0].group == "hpp"
    text_only = condition(
        None, "Persistently low ALP without secondary cause - hypophosphatasia, ALPL variant confirmed"
    )
    (found,) = read_diagnoses(text_only, scope=scope())
    assert (found.group, found.confirmed) == ("hpp", True)


def test_hpp_recorded_as_excluded_is_not_worked_up_again_as_new():
    excluded = [dx("hpp_excluded", name="HPP ruled out 2024")]
    (found,) = low_alp(chart([alp(20, ago(90)), alp(19, ago(1))], diagnoses=excluded))
    assert found.kind == "alp-low-persistent" and found.indicator == "info" and found.facts["deferred"] == "excluded"
    recommended = {o.test.key for o in found.orders if o.recommended}
    assert not recommended & {"plp", "pea_urine", "alpl_gene"}


def test_texts_are_read_only_for_conditions_no_code_places_and_never_when_negated():
    assert read_diagnoses(condition(None, "Paget\u200b disease of bone"), scope=scope())[0].kind == "paget"
    assert read_diagnoses(condition(None, "No bone metastases on staging"), scope=scope()) == []
    assert read_diagnoses(condition(None, "Not pregnant"), scope=scope()) == []
    assert read_diagnoses(condition(None, "Family history of Paget disease of bone"), scope=scope()) == []


def test_another_patients_condition_is_dropped_and_counted_and_a_future_onset_is_not_read():
    s = scope()
    assert read_diagnoses(condition({"system": SNOMED, "code": "190859005"}, subject="Patient/q"), scope=s) == []
    assert s.dropped["Condition"] == 1
    assert read_diagnoses(condition({"system": SNOMED, "code": "72892002"}, onsetDateTime="2027-01-01"), scope=s) == []


def test_pregnancy_observations_are_read_and_anything_else_skipped():
    def obs(code, **value):
        return {
            "resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": "2026-02-01",
            **value,
        }  # fmt: skip

    pregnant = {"coding": [{"system": SNOMED, "code": "77386006"}]}
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": obs("82810-3", valueCodeableConcept=pregnant)},
            {"resource": obs("11778-8", valueDateTime="2026-08-01")},
            {"resource": obs("93857-1", valueDateTime="2026-03-01")},
            {"resource": obs("11778-8", valueDateTime=["2026-08-01"])},  # the wrong JSON type: skipped
            {"resource": {**obs("82810-3", valueCodeableConcept=pregnant), "status": "preliminary"}},
            {"resource": obs("82810-3", valueCodeableConcept={"coding": [{"system": SNOMED, "code": "146799005"}]})},
        ],
    }
    found = read_pregnancy_evidence(bundle, scope=scope())
    assert [(e.kind, e.pregnant, e.date and e.date.date().isoformat()) for e in found] == [
        ("status", True, None),
        ("due_date", None, "2026-08-01"),
        ("delivery_date", None, "2026-03-01"),
    ]


# ----------------------------------------------------------------------------------------------- pregnancy


def lows_then(normal_when: datetime, *, first=400, second=300) -> list[LabResult]:
    return [alp(26, ago(first), low=35), alp(28, ago(second), low=35), alp(74, normal_when, low=35)]


def test_a_normal_alp_in_pregnancy_neither_ends_the_run_nor_counts_as_normal():
    due = PregnancyEvidence("due_date", ago(200), date=NOW + timedelta(days=40))  # 2nd/3rd trimester now
    pregnant = chart(lows_then(ago(30)), patient=WOMAN, pregnancy=[due])
    assert kinds(low_alp(pregnant)) == ["alp-low-persistent"]
    assert [w.reason for _, w in pregnant.passed_over] == ["pregnancy"]
    assert low_alp(chart(lows_then(ago(30)), patient=WOMAN)) == []  # without the pregnancy the normal value ends it


def test_time_in_pregnancy_does_not_age_the_lows_before_it():
    # The lows are 15 and 13 months old: history without the pregnancy, current with 9 months of it in between.
    lows = [alp(26, ago(450), low=35), alp(28, ago(390), low=35)]
    pregnancy = [dx("pregnancy", onset=ago(370), abatement=ago(100), active=False)]
    assert kinds(low_alp(chart(lows, patient=WOMAN, diagnoses=pregnancy))) == ["alp-low-persistent"]
    assert low_alp(chart(lows, patient=WOMAN)) == []


def test_a_normal_alp_8_weeks_after_delivery_ends_the_run_again():
    delivered = [dx("pregnancy", onset=ago(400), abatement=ago(120), active=False)]
    inside, after = ago(120 - 7 * 8 + 1), ago(120 - 7 * 8 - 1)  # a day before and after the 8 weeks end
    assert kinds(low_alp(chart(lows_then(inside, first=500, second=450), WOMAN, diagnoses=delivered))) != []
    assert low_alp(chart(lows_then(after, first=500, second=450), WOMAN, diagnoses=delivered)) == []


def test_a_pregnancy_that_ended_in_the_first_trimester_gives_no_window_and_a_low_in_pregnancy_counts():
    loss = dx("pregnancy", onset=ago(100), abatement=ago(100 - 7 * 11), active=False)
    assert pregnancy_windows([loss], [], NOW) == []
    current = [dx("pregnancy", onset=ago(150))]
    found = low_alp(chart([alp(25, ago(10), low=35)], patient=WOMAN, diagnoses=current))
    assert found[0].facts["context"]["low_in_pregnancy"] and found[0].facts["context"]["pregnant_now"]


def test_a_pregnancy_status_with_no_dates_masks_the_widest_span_it_allows_and_a_later_not_pregnant_ends_it():
    seen = PregnancyEvidence("status", ago(100), pregnant=True)
    (window,) = pregnancy_windows([], [seen], NOW)
    assert window.start == ago(100) - timedelta(weeks=27) and window.end == ago(100) + timedelta(weeks=48)
    ended = PregnancyEvidence("status", ago(50), pregnant=False)
    (window,) = pregnancy_windows([], [seen, ended], NOW)
    assert window.end == ago(50) + timedelta(weeks=8)


# ----------------------------------------------------------------------------------------------- fractures


HIP = dx("fracture", "hip", "Closed fracture of hip", onset=ago(60))
OLD = Patient("p", date(1950, 1, 1), "female")


def test_a_healing_normal_after_a_fracture_keeps_an_earlier_persistent_low():
    labs = [alp(31, ago(270), low=35), alp(29, ago(180), low=35), alp(52, ago(40), low=35)]
    found = low_alp(chart(labs, patient=OLD, diagnoses=[HIP]))
    assert kinds(found) == ["alp-low-persistent"]
    assert found[0].facts["context"]["fractures"][0]["name"] == "Closed fracture of hip"


def test_a_healing_normal_ends_a_single_low_as_any_normal_would():
    labs = [alp(29, ago(180), low=35), alp(52, ago(40), low=35)]
    assert low_alp(chart(labs, patient=OLD, diagnoses=[HIP])) == []


@pytest.mark.parametrize(("kind", "bone_alp"), [("cholestasis", True), ("paget", False), ("bone_metastases", False)])
def test_a_disease_that_raises_alp_keeps_the_lows_and_offers_a_bone_alp_only_for_the_liver(kind, bone_alp):
    """A liver disease raises the liver isoenzyme, which a bone ALP sets apart; Paget disease and bone metastases
    raise bone ALP itself, so a bone ALP cannot tell (outside clinical review, P13/P14)."""
    raising = dx("alp_raising", kind, "x", onset=ago(100))
    labs = [alp(31, ago(270), low=35), alp(29, ago(180), low=35), alp(140, ago(40), low=35)]
    (found,) = low_alp(chart(labs, patient=OLD, diagnoses=[raising]))
    assert found.kind == "alp-low-persistent" and "alp_raising" in found.facts["context"]["passed_over_reasons"]
    assert found.facts["context"]["alp_raising_liver"] is bone_alp
    assert any(o.test.group == "bone" for o in found.orders) is bone_alp


@pytest.mark.parametrize(
    ("kind", "born", "counts"),
    [
        ("hip", date(1950, 1, 1), True),
        ("hip", date(1990, 1, 1), False),  # a hip fracture at 36: not taken for a fragility fracture
        ("stress", date(1990, 1, 1), True),
        ("atypical_femoral", date(1990, 1, 1), True),
        ("stress", date(2012, 1, 1), False),  # a child
    ],
)
def test_which_fractures_count_as_fragility_fractures(kind, born, counts):
    fracture = dx("fracture", kind, "f", onset=ago(60))
    found = chart([alp(29, ago(1), low=35)], patient=Patient("p", born, "female"), diagnoses=[fracture])
    assert bool(found.recent_fractures) is counts


# ----------------------------------------------------------------------------------------------- kidney function


def egfr(value, when=None):
    return lab("egfr", value, when or ago(10))


@pytest.mark.parametrize(("value", "severe"), [(29.9, True), (30, False), (45, False)])
def test_ckd_stage_4_5_from_an_egfr_below_30(value, severe):
    assert chart([egfr(value)]).kidney.severe is severe


def test_ckd_from_a_code_and_from_a_creatinine_by_ckd_epi_2021():
    assert chart(diagnoses=[dx("ckd_severe")]).kidney.severe
    assert not chart(diagnoses=[dx("ckd_severe", active=False)]).kidney.severe
    # CKD-EPI 2021: a woman of 76 with creatinine 2.0 mg/dL has an eGFR of about 25
    assert round(egfr_ckd_epi_2021(2.0, Patient("p", date(1950, 1, 1), "female"), ago(0))) == 25
    creatinine = lab("creatinine", 2.0, ago(5))
    assert chart([creatinine], patient=Patient("p", date(1950, 1, 1), "female")).kidney.severe
    assert egfr_ckd_epi_2021(0.6, Patient("p", date(2015, 1, 1), "female"), ago(0)) is None  # not for a child


def test_the_low_alp_card_names_ckd_with_the_pth():
    pth = lab("pth", 11, ago(10), low=15, high=65)
    found = low_alp(chart([alp(30, ago(70)), alp(29, ago(10)), egfr(22), pth]))
    assert found[0].facts["context"]["ckd"]["pth_low"] is True


# ----------------------------------------------------------------------------------------------- known HPP


def test_known_hpp_is_not_worked_up_again():
    (found,) = low_alp(chart([alp(20, ago(90)), alp(19, ago(1))], diagnoses=[dx("hpp", name="Hypophosphatasia")]))
    assert found.kind == "alp-known-hpp" and found.orders == () and found.indicator is None


def test_known_hpp_with_a_current_bisphosphonate_is_a_warning_and_only_one_card():
    drug = med("alendronate", {"bisphosphonate"}, start=ago(300), ingredient="alendronate")
    c = chart([alp(20, ago(90)), alp(19, ago(1))], medications=[drug], diagnoses=[dx("hpp")])
    (found,) = low_alp(c)
    assert found.kind == "alp-known-hpp" and found.indicator == "warning"
    assert review_current(c) == []


def test_hpp_suspected_keeps_the_workup_and_says_how_it_stands():
    hpp = dx("hpp", active=True, confirmed=False)
    (found,) = low_alp(chart([alp(20, ago(90)), alp(19, ago(1))], diagnoses=[hpp]))
    assert found.kind == "alp-low-persistent" and found.facts["context"]["hpp"]["status"] == "suspected"


def test_a_confirmed_hpp_marked_inactive_is_still_known_hpp():
    """A genetic disease does not resolve: an HPP marked inactive or resolved (often "not currently treated") is
    still documented, and the card says how the problem list has it (outside clinical review)."""
    hpp = dx("hpp", active=False, confirmed=True)
    (found,) = low_alp(chart([alp(20, ago(90)), alp(19, ago(1))], diagnoses=[hpp]))
    assert found.kind == "alp-known-hpp" and found.facts["inactive"] is True


@pytest.mark.parametrize(("active", "confirmed", "indicator"), [(True, True, "critical"), (True, False, "warning")])
def test_order_hooks_hpp_stays_critical_suspected_hpp_a_warning(active, confirmed, indicator):
    order = Medication(frozenset({"bisphosphonate"}), "strong", "alendronate", "draft", ingredient="alendronate")
    c = chart([alp(80, ago(10))], diagnoses=[dx("hpp", active=active, confirmed=confirmed)])
    (found,) = review_order(c, [order], False)
    assert found.kind == "antiresorptive-order-hpp" and found.indicator == indicator


# ----------------------------------------------------------------------------------------------- escalation

INFANT = Patient("p", date(2026, 1, 1), "male")


@pytest.mark.parametrize(
    ("labs", "kind"),
    [
        ([alp(60, ago(2), low=122)], "alp-low-infant"),  # less than half the lower limit
        ([alp(61.5, ago(2), low=122)], "alp-low-single"),  # not certainly below half
        ([alp(110, ago(2), low=122), lab("calcium", 11.8, ago(2), low=8.7, high=11.0)], "alp-low-infant"),
        ([alp(90, ago(2), low=122), lab("pth", 4, ago(2), low=8, high=61)], "alp-low-infant"),
        ([alp(90, ago(2), low=122), lab("phosphate", 9.0, ago(2), low=4.5, high=8.0)], "alp-low-infant"),
        # a high phosphate or a low PTH needs a clearly low ALP (below three quarters of the limit: 91.5)
        ([alp(92, ago(2), low=122), lab("pth", 4, ago(2), low=8, high=61)], "alp-low-single"),
        ([alp(110, ago(2), low=122), lab("phosphate", 9.0, ago(2), low=4.5, high=8.0)], "alp-low-single"),
        ([alp(110, ago(2), low=122), lab("calcium", 10.0, ago(2), low=8.7, high=11.0)], "alp-low-single"),
    ],
)
def test_infant_hpp_picture(labs, kind):
    found = low_alp(chart(labs, patient=INFANT))
    assert kinds(found) == [kind]
    if kind == "alp-low-infant":  # in an infant, rapid genetics too
        assert {o.test.key: o.recommended for o in found[0].orders} == {
            "plp": True,
            "pea_urine": True,
            "alpl_gene": True,
        }


@pytest.mark.parametrize(
    ("labs", "indicator"),
    [
        ([alp(60, ago(2), low=122)], "critical"),
        ([alp(110, ago(2), low=122), lab("calcium", 11.8, ago(2), low=8.7, high=11.0)], "critical"),
        ([alp(90, ago(2), low=122), lab("pth", 4, ago(2), low=8, high=61)], None),  # the template's: a warning
    ],
)
def test_the_infant_picture_is_critical_under_one_year_with_a_high_calcium_or_a_very_low_alp(labs, indicator):
    (found,) = low_alp(chart(labs, patient=INFANT))
    assert found.indicator == indicator


def test_the_infant_picture_ends_at_5_years():
    child = Patient("p", date(2021, 5, 1), "male")  # 5 years and a month
    assert kinds(low_alp(chart([alp(50, ago(2), low=142)], patient=child))) == ["alp-low-single"]


def wilson_draw(*extra, born=date(2008, 1, 1)):
    return chart(
        [
            alp(30, ago(1)),
            lab("bilirubin_total", 4.0, ago(1), high=1.0),
            lab("ast", 90, ago(1), high=40),
            lab("alt", 100, ago(1), high=40),
            *extra,
        ],
        patient=Patient("p", born, "female"),
    )


@pytest.mark.parametrize(("inr", "kind"), [(1.5, "wilson-alf-pattern"), (1.49, "wilson-screen")])
def test_wilson_with_an_inr_of_1_5_is_liver_failure(inr, kind):
    c = wilson_draw(lab("inr", inr, ago(1)))
    assert wilson_disease(c, c.current_run[-1]).kind == kind
    assert kinds(low_alp(c)) == [kind]  # alone: no routine low-ALP card beside it


def test_wilson_with_haemolysis_is_liver_failure():
    haptoglobin, haemoglobin = lab("haptoglobin", 5, ago(1), low=30, high=200), lab("haemoglobin", 8, ago(1), low=12)
    c = wilson_draw(haptoglobin, haemoglobin)
    assert wilson_disease(c, c.current_run[-1]).kind == "wilson-alf-pattern"
    # a raised LDH rises with liver injury itself; a low haptoglobin or a low haemoglobin alone is not haemolysis
    for alone in ([haemoglobin, lab("ldh", 900, ago(1), high=250)], [haptoglobin], [haemoglobin]):
        c = wilson_draw(*alone)
        assert wilson_disease(c, c.current_run[-1]).kind == "wilson-screen"


def test_acute_liver_failure_is_critical_at_any_age_and_the_screen_stops_at_55():
    inr = lab("inr", 2.0, ago(1))
    old = wilson_draw(inr, born=date(1960, 1, 1))
    assert wilson_disease(old, old.current_run[-1]).kind == "wilson-alf-pattern"
    assert kinds(low_alp(old)) == ["wilson-alf-pattern"]  # never "repeat when well" beside it
    plain = wilson_draw(born=date(1960, 1, 1))
    assert wilson_disease(plain, plain.current_run[-1]) is None


def test_a_childs_alp_against_an_adult_range_is_judged_for_age_too():
    def observation(low):
        return {
            "resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}]},
            "effectiveDateTime": "2026-05-01", "valueQuantity": {"value": 104, "unit": "U/L", "code": "U/L"},
            "referenceRange": [{"low": {"value": low, "unit": "U/L"}}],
        }  # fmt: skip

    child = Patient("p", date(2018, 1, 1), "male")  # 8: CALIPER lower limit 142
    (result,) = read_lab_results(observation(40), scope=scope(child))
    assert result.is_low() and result.low_for_age_only and result.age_low == 142
    (result,) = read_lab_results(observation(100), scope=scope(child))  # 100 is not far below 142
    assert result.age_low is None and not result.is_low()
    (result,) = read_lab_results(observation(40), scope=scope(ADULT))
    assert result.age_low is None and not result.is_low()


# ----------------------------------------------------------------------------------------------- treatment timing


def prolia(record="MedicationAdministration", when=None, status="history", **extra) -> Medication:
    return Medication(
        frozenset({"denosumab"}), "strong", "Prolia", status, start=when, ingredient="denosumab", record=record, **extra
    )


@pytest.mark.parametrize(("months", "overdue"), [(7, True), (6, True), (5, False)])
def test_denosumab_is_overdue_more_than_6_months_after_the_last_dose(months, overdue):
    last = add_months(NOW, -months) - timedelta(days=1)
    c = chart(medications=[prolia("MedicationStatement", ago(1500), "current"), prolia(when=last)])
    assert (overdue_denosumab(c) is not None) is overdue


def test_denosumab_not_overdue_after_a_follow_on_bisphosphonate_for_oncology_or_long_stopped():
    last = ago(250)
    follow_on = med(
        "zoledronic acid", {"bisphosphonate"}, status="history", start=ago(60), ingredient="zoledronic acid"
    )
    assert overdue_denosumab(chart(medications=[prolia(when=last), follow_on])) is None
    assert overdue_denosumab(chart(medications=[prolia(when=last, oncology=True)])) is None
    assert overdue_denosumab(chart(medications=[prolia(when=ago(800))])) is None  # stopped over two years ago
    assert overdue_denosumab(chart(medications=[prolia(when=last)]))["record"] == "administration"
    # a current statement alone gives no dose date: nothing is claimed
    assert overdue_denosumab(chart(medications=[prolia("MedicationStatement", ago(900), "current")])) is None


def test_a_courses_last_record_is_its_end_and_a_year_without_records_is_a_break():
    records = [
        med("Fosamax", {"bisphosphonate"}, "history", start=ago(3000), ingredient="alendronate"),
        Medication(
            frozenset({"bisphosphonate"}),
            "strong",
            "Fosamax",
            "history",
            start=ago(2900),
            end=ago(1500),
            ingredient="alendronate",
        ),
        med("Fosamax", {"bisphosphonate"}, "current", start=ago(200), ingredient="alendronate"),
    ]
    (course,) = courses(records)
    assert course.start == ago(3000) and course.current and course.breaks == ((ago(1500), ago(200)),)
    assert course.covers(ago(2000)) and not course.covers(ago(800)) and course.covers(ago(100))


def test_lows_on_treatment_after_a_normal_alp_before_it_are_information():
    drug = med("alendronate", {"bisphosphonate"}, start=ago(400), ingredient="alendronate")
    labs = [alp(71, ago(450), low=35), alp(33, ago(200), low=35), alp(32, ago(10), low=35)]
    (found,) = low_alp(chart(labs, medications=[drug]))
    assert found.kind == "alp-low-persistent" and found.indicator == "info"
    on_treatment = found.facts["on_treatment"]
    assert on_treatment["drugs"] == ["alendronate"] and on_treatment["normal_before"] is True
    assert on_treatment["before"]["value"] == "71"
    (current,) = review_current(chart(labs, medications=[drug]))
    assert current.indicator == "info" and current.facts["drug_likely"]
    # without the normal ALP before treatment, the persistent low stays a warning
    (found,) = low_alp(chart(labs[1:], medications=[drug]))
    assert found.indicator is None


def test_a_persistent_low_on_teriparatide_is_named_and_stays_a_warning():
    teriparatide = med("Forteo", {"teriparatide"}, start=ago(300), tier="anabolic", ingredient="teriparatide")
    (found,) = low_alp(chart([alp(30, ago(150)), alp(28, ago(10))], medications=[teriparatide]))
    assert found.facts["teriparatide"] is True and found.indicator is None
    early = med("Forteo", {"teriparatide"}, start=ago(20), tier="anabolic", ingredient="teriparatide")
    (found,) = low_alp(chart([alp(30, ago(150)), alp(28, ago(10))], medications=[early]))
    assert found.facts["teriparatide"] is False  # not yet three months on it


# ----------------------------------------------------------------------------------------------- vitamin B6


def persistent_with_plp(medications=(), not_read=frozenset()):
    labs = [alp(21, ago(100)), alp(20, ago(10)), lab("plp", 260, ago(10), high=125)]
    (found,) = low_alp(chart(labs, medications=medications, not_read=not_read))
    return found


def test_a_high_plp_supports_hpp_only_without_vitamin_b6():
    found = persistent_with_plp()
    assert found.facts["substrates_high"] and {o.test.key: o.recommended for o in found.orders}["alpl_gene"]
    b_complex = med("Vitamin B Complex", {"pyridoxine"}, start=ago(300), tier="plp-confounder")
    found = persistent_with_plp([b_complex])
    assert not found.facts["substrates_high"] and found.facts["plp_b6"] == "taken"
    assert not {o.test.key: o.recommended for o in found.orders}["alpl_gene"]
    found = persistent_with_plp(not_read=frozenset({"medications"}))
    assert not found.facts["substrates_high"] and found.facts["plp_b6"] == "unknown"


def test_b6_taken_around_the_plp_draw_counts_even_when_stopped_since():
    stopped = Medication(frozenset({"pyridoxine"}), "plp-confounder", "B6", "history", start=ago(60), end=ago(8))
    c = chart(medications=[stopped])
    assert b6_intake(c, ago(10)) == "taken" and b6_intake(c, ago(100)) == "none"


# ----------------------------------------------------------------------------------------------- corrections


def version(value, status="final", issued=None, ident="o1"):
    return {
        "resourceType": "Observation", "id": ident, "status": status, "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}]},
        "effectiveDateTime": "2026-05-19T08:00:00Z", "valueQuantity": {"value": value, "unit": "U/L", "code": "U/L"},
        "referenceRange": [{"low": {"value": 40, "unit": "U/L"}}], **({"issued": issued} if issued else {}),
    }  # fmt: skip


def settled(*observations):
    return [r.value for r in settle_versions(read_lab_results({"resourceType": "Bundle", "entry": [
        {"resource": o} for o in observations]}, scope=scope()))]  # fmt: skip


def test_an_amended_result_replaces_the_original_and_a_copy_counts_once():
    original = version(30, issued="2026-05-19T12:00:00Z")
    assert settled(original, version(70, "amended", "2026-05-21T09:00:00Z", "o2")) == [70]
    assert settled(version(70, "corrected", "2026-05-21T09:00:00Z", "o2"), original) == [70]  # in any order
    assert settled(original, version(30, ident="o2")) == [30]  # one measurement sent by two sources
    assert settled(original, version(35, ident="o2")) == [30, 35]  # two values, none corrected: both stay


@pytest.mark.parametrize(
    ("original_issued", "correction_issued"),
    [
        ("2026-05-19T12:00:00Z", None),  # issued is optional in FHIR: a correction need not carry it
        ("2027-01-01", "2026-05-21T09:00:00Z"),  # an original "issued" ahead of the clock is not believed
        ("9999-12-31", None),
        (None, "9999-12-31"),
    ],
)
def test_a_correction_wins_whatever_its_or_the_originals_issued_says(original_issued, correction_issued):
    """Outside attack on issues 25/27/30 (F5): the low-ALP card disappeared when the amended result had no issued,
    or when the original's issued lay in the future."""
    original = version(70, issued=original_issued)
    assert settled(original, version(30, "amended", correction_issued, "o2")) == [30]
    assert settled(version(30, "corrected", correction_issued, "o2"), original) == [30]

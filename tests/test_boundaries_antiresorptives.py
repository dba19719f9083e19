"""Antiresorptives and a low ALP at their edges (service/clinical/antiresorptives.py): when treatment began, the ALP
before it, an ongoing course, and which card (and indicator) an order gets. Facts are built directly."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.clinical.antiresorptives import (
    COURSE_RECENT,
    alp_before,
    drug_names,
    ongoing_course,
    order_workup,
    review_current,
    review_order,
)
from service.clinical.facts import Medication
from service.clinical.rules import first_exposure
from tests.test_boundaries_rules import NOW, ago, alp, chart, lab


def drug(
    status="current",
    start=None,
    end=None,
    groups=("bisphosphonate",),
    tier="strong",
    ingredient="alendronate",
    name="Fosamax 70 mg",
    reference=None,
) -> Medication:
    return Medication(
        groups=frozenset(groups),
        tier=tier,
        name=name,
        status=status,
        start=start,
        end=end,
        reference=reference,
        ingredient=ingredient,
    )


def denosumab(status="current", start=None, end=None, reference=None) -> Medication:
    return drug(status, start, end, ("denosumab",), ingredient="denosumab", name="Prolia", reference=reference)


B6 = drug(groups=("pyridoxine",), tier=None, ingredient=None, name="Vitamin B6")


# ----------------------------------------------------------------------------------------------- treatment start


def test_first_exposure_is_the_earliest_record_of_any_antiresorptive_drafts_and_other_drugs_aside():
    meds = [
        drug(start=ago(100)),
        denosumab("history", start=ago(300)),
        drug("draft", start=ago(900)),
        drug(groups=("pyridoxine",), tier=None, start=ago(2000)),
    ]
    assert first_exposure(meds) == ago(300)


def test_first_exposure_unknown_when_any_antiresorptive_record_has_no_date():
    assert first_exposure([drug(start=ago(100)), drug("history", start=None)]) is None
    assert first_exposure([drug(start=ago(100)), drug("draft", start=None)]) == ago(100)
    assert first_exposure([]) is None


@pytest.mark.parametrize(
    ("alp_age", "found"),
    [
        (timedelta(days=1), True),  # at least a day before the recorded start
        (timedelta(hours=23), False),
        (timedelta(days=365), True),  # within ALP_CURRENT_DAYS of the start
        (timedelta(days=365, seconds=1), False),
        (timedelta(days=-1), False),  # after the start
    ],
)
def test_alp_before_is_from_one_to_alp_current_days_before_the_start(alp_age, found):
    start = ago(50)
    c = chart([alp(30, start - alp_age)])
    assert (alp_before(c, start) is not None) is found


def test_alp_before_is_the_latest_such_alp_and_none_without_a_start():
    start = ago(50)
    c = chart([alp(30, start - timedelta(days=100)), alp(80, start - timedelta(days=10)), alp(30, ago(1))])
    assert alp_before(c, start).value == 80
    assert alp_before(c, None) is None


# ----------------------------------------------------------------------------------------------- ongoing course


@pytest.mark.parametrize(
    ("record", "course"),
    [
        (drug("current", start=ago(2000)), ago(2000)),
        (drug("history", start=ago(1000), end=ago(364)), ago(1000)),  # ended within a year: continued
        (drug("history", start=ago(1000), end=ago(366)), None),  # ended more than a year ago: a restart
        (drug("history", start=ago(364)), ago(364)),  # no end: the last record's start counts
        (drug("history", start=ago(366)), None),
        (drug("history"), None),  # no date at all: not known to be recent
        (drug("draft", start=ago(10)), None),  # the order itself is no course
        (drug("current", start=ago(10), ingredient="risedronate"), None),  # another ingredient
        (drug("current", groups=("pyridoxine",), tier=None, start=ago(10)), None),
    ],
)
def test_ongoing_course_is_current_or_last_recorded_within_a_year(record, course):
    assert ongoing_course(chart([], medications=[record]), [drug("draft")]) == course


def test_ongoing_course_starts_at_the_earliest_dated_record_or_now_when_none_is_dated():
    records = [drug("current"), drug("history", start=ago(800), end=ago(700)), drug("history", start=ago(500))]
    assert ongoing_course(chart([], medications=records), [drug("draft")]) == ago(800)
    assert ongoing_course(chart([], medications=[drug("current")]), [drug("draft")]) == NOW
    assert timedelta(days=365) == COURSE_RECENT


def test_ongoing_course_of_an_order_without_an_ingredient_is_none():
    records = [drug("current", start=ago(100), ingredient=None)]
    assert ongoing_course(chart([], medications=records), [drug("draft", ingredient=None)]) is None


# ----------------------------------------------------------------------------------------------- workup on an order


def test_order_workup_a_single_low_recommends_the_repeat_and_offers_the_substrates():
    orders, _ = order_workup(chart([alp(30, ago(1))]))
    assert [(o.test.key, o.recommended) for o in orders] == [
        ("repeat_alp", True),
        ("plp", False),
        ("pea_urine", False),
    ]


def test_order_workup_a_persistent_low_recommends_the_substrates_genetics_after_them():
    orders, _ = order_workup(chart([alp(30, ago(60)), alp(30, ago(1))]))
    assert [(o.test.key, o.recommended) for o in orders] == [
        ("plp", True),
        ("pea_urine", True),
        ("alpl_gene", False),
    ]


# ----------------------------------------------------------------------------------------------- patient-view


def test_review_current_needs_a_current_antiresorptive_and_a_current_low_run():
    assert review_current(chart([alp(30, ago(1))], medications=[drug("history", start=ago(100))])) == []
    assert review_current(chart([alp(80, ago(1))], medications=[drug(start=ago(100))])) == []
    assert review_current(chart([alp(30, ago(400))], medications=[drug(start=ago(1000))])) == []
    (finding,) = review_current(chart([alp(30, ago(1))], medications=[drug(start=ago(100)), B6]))
    assert finding.kind == "antiresorptive-current-low-alp" and finding.facts["drugs"] == ["alendronate"]


@pytest.mark.parametrize(
    ("meds", "indicator", "is_denosumab"),
    [
        ([drug(start=ago(100))], "warning", False),
        ([drug(start=ago(100), tier="informational", ingredient="raloxifene")], "info", False),
        ([denosumab(start=ago(100)), drug(start=ago(100), tier="informational")], "warning", True),
    ],
)
def test_review_current_indicator_is_a_warning_for_a_strong_drug_and_a_persistent_low(meds, indicator, is_denosumab):
    (finding,) = review_current(chart([alp(30, ago(61)), alp(30, ago(1))], medications=meds))
    assert finding.indicator == indicator and finding.facts["denosumab"] is is_denosumab
    # one low on treatment: one card, information (most often the drug or an acute illness)
    (single,) = review_current(chart([alp(30, ago(1))], medications=meds))
    assert single.indicator == "info"


@pytest.mark.parametrize(("before_value", "low_before"), [(30, True), (80, False), (None, False)])
def test_review_current_says_whether_the_alp_was_already_low_before_treatment(before_value, low_before):
    labs = [alp(30, ago(1))] + ([alp(before_value, ago(120))] if before_value else [])
    (finding,) = review_current(chart(labs, medications=[drug(start=ago(100))]))
    assert finding.facts["low_before"] is low_before
    assert (finding.facts["before"] is None) is (before_value is None)
    assert finding.facts["start"] == ago(100).date().isoformat()


def test_review_current_shows_the_latest_twelve_lows_and_persistence():
    lows = [alp(30, ago(5 * i + 1)) for i in range(14)]
    (finding,) = review_current(chart(lows, medications=[drug(start=None)]))
    assert len(finding.facts["readings"]) == 12 and finding.facts["persistent"] is True
    assert finding.facts["latest"]["date"] == ago(1).date().isoformat() and finding.facts["start"] is None


# ----------------------------------------------------------------------------------------------- order-select


def order(c, selected, hpp=False):
    return review_order(c, selected, hpp)


def test_review_order_ignores_orders_that_are_not_antiresorptives():
    assert order(chart([alp(30, ago(1))]), [B6]) == []


@pytest.mark.parametrize(("tier", "indicator"), [("strong", "critical"), ("informational", "warning")])
def test_review_order_documented_hpp_is_critical_for_a_strong_drug(tier, indicator):
    labs = [alp(30, ago(i * 10 + 1)) for i in range(5)]
    (finding,) = order(chart(labs), [drug("draft", tier=tier, reference="MedicationRequest/r")], hpp=True)
    assert finding.kind == "antiresorptive-order-hpp" and finding.indicator == indicator
    assert len(finding.facts["readings"]) == 3 and finding.deletes == ("MedicationRequest/r",)
    assert finding.facts["strong"] is (tier == "strong")


@pytest.mark.parametrize(
    ("labs", "last_low", "indicator"),
    [
        ([], False, "info"),
        ([alp(30, ago(366))], True, "warning"),  # the last ALP was low, but it is history
        ([alp(80, ago(366))], False, "info"),
    ],
)
def test_review_order_without_a_current_alp_asks_for_one_first(labs, last_low, indicator):
    (finding,) = order(chart(labs), [drug("draft")])
    assert finding.kind == "antiresorptive-order-no-alp" and finding.indicator == indicator
    assert finding.facts["last_low"] is last_low and (finding.facts["last"] is None) is (not labs)
    assert [o.test.key for o in finding.orders] == ["repeat_alp"]
    assert finding.facts["current_days"] == 365


def test_review_order_without_a_current_alp_informational_drug_stays_info():
    (finding,) = order(chart([alp(30, ago(366))]), [drug("draft", tier="informational")])
    assert finding.indicator == "info"


def test_review_order_names_an_unreadable_alp_of_any_date_when_none_is_current():
    unreadable = lab("alp_total", None, ago(3000), problem="unit not recognised", raw_unit="mg/dL")
    (finding,) = order(chart([unreadable]), [drug("draft")])
    assert finding.facts["unreadable_alp"] is True and len(finding.facts["not_interpreted"]) == 1
    (finding,) = order(chart([lab("zinc", None, ago(1), problem="no value")]), [drug("draft")])
    assert finding.facts["unreadable_alp"] is False and len(finding.facts["not_interpreted"]) == 1


def test_review_order_an_unreadable_alp_is_named_in_the_summary_however_many_newer_results_are_not_interpreted():
    """Twelve unusable workup results newer than the unreadable ALP fill the card's list; the summary still says the
    ALP on record could not be interpreted, not that there is none. Until issue 17 the summary was read from the
    list, and so said "none on record"."""
    unreadable = lab("alp_total", None, ago(3000), problem="unit not recognised", raw_unit="mg/dL")
    workup = [lab("zinc", None, ago(i + 1), problem="no value") for i in range(12)]
    (finding,) = order(chart([unreadable, *workup]), [drug("draft")])
    assert finding.facts["unreadable_alp"] is True and len(finding.facts["not_interpreted"]) == 12
    assert {n["analyte"] for n in finding.facts["not_interpreted"]} == {"zinc"}


def test_review_order_a_current_normal_alp_gives_no_card():
    assert order(chart([alp(30, ago(100)), alp(80, ago(1))]), [drug("draft")]) == []


def test_review_order_a_current_low_alp_warns_and_offers_removal():
    (finding,) = order(chart([alp(30, ago(1))]), [drug("draft", reference="MedicationRequest/r"), drug("draft")])
    assert finding.kind == "antiresorptive-order-low-alp" and finding.indicator == "warning"
    assert finding.deletes == ("MedicationRequest/r",)
    assert finding.facts["persistent"] is False and finding.facts["latest_suspect"] is False
    assert finding.facts["course_start"] is None and finding.facts["denosumab_course"] is False
    assert [o.test.key for o in finding.orders] == ["repeat_alp", "plp", "pea_urine"]


def test_review_order_informational_drug_with_a_low_alp_is_info():
    (finding,) = order(chart([alp(30, ago(1))]), [drug("draft", tier="informational", ingredient="raloxifene")])
    assert finding.indicator == "info" and finding.facts["strong"] is False


def test_review_order_a_denosumab_course_is_never_offered_for_simple_removal():
    c = chart([alp(30, ago(1)), alp(30, ago(200))], medications=[denosumab("current", start=ago(400))])
    (finding,) = order(c, [denosumab("draft", reference="MedicationRequest/d")])
    assert finding.kind == "antiresorptive-order-denosumab-course" and finding.deletes == ()
    assert finding.facts["denosumab_course"] is True and finding.facts["course_start"] == ago(400).date().isoformat()
    assert finding.facts["low_before"] is False and finding.facts["before"] is None


def test_review_order_a_first_denosumab_dose_keeps_the_removal():
    (finding,) = order(chart([alp(30, ago(1))]), [denosumab("draft", reference="MedicationRequest/d")])
    assert finding.kind == "antiresorptive-order-low-alp" and finding.deletes == ("MedicationRequest/d",)
    assert finding.facts["denosumab"] is True and finding.facts["denosumab_course"] is False


def test_review_order_a_bisphosphonate_course_keeps_the_removal_and_says_the_alp_was_low_before():
    labs = [alp(30, ago(500)), alp(30, ago(1))]
    c = chart(labs, medications=[drug("current", start=ago(400))])
    (finding,) = order(c, [drug("draft", reference="MedicationRequest/r")])
    assert finding.kind == "antiresorptive-order-low-alp" and finding.deletes == ("MedicationRequest/r",)
    assert finding.facts["low_before"] is True and finding.facts["before"]["date"] == ago(500).date().isoformat()
    assert finding.facts["course_start"] == ago(400).date().isoformat()


def test_drug_names_are_ingredients_else_the_records_name_sorted_and_unique():
    meds = [drug(ingredient="zoledronic acid"), drug(), drug(), drug(ingredient=None, name="Bone pill")]
    assert drug_names(meds) == ["Bone pill", "alendronate", "zoledronic acid"]


def test_review_order_a_first_dose_after_a_course_that_ended_long_ago_gets_no_alp_before():
    """Without an ongoing course the order is a (re)start: the ALP before an old course is not shown."""
    old_course = drug("history", start=ago(1000), end=ago(900))
    c = chart([alp(30, ago(1010)), alp(30, ago(1))], medications=[old_course])
    (finding,) = order(c, [drug("draft")])
    assert finding.facts["course_start"] is None
    assert finding.facts["before"] is None and finding.facts["low_before"] is False


def test_review_order_says_when_the_latest_low_is_a_suspect_sample():
    draw = [
        alp(30, ago(1)),
        lab("potassium", 6.5, ago(1), low=3.5, high=5.1),
        lab("calcium", 7.0, ago(1), low=8.6, high=10.3),
    ]
    (finding,) = order(chart(draw), [drug("draft")])
    assert finding.facts["latest_suspect"] is True


# --------------------------------------------------------------------------- medications not (all) read


def unread_medications(c):
    from dataclasses import replace

    return replace(c, not_read=frozenset({"some_medications"}))


def test_the_treatment_start_is_unknown_when_a_medication_record_was_not_read():
    """With a record unread, an earlier start may be missing: "the ALP was low before treatment" could be false."""
    from service.clinical.antiresorptives import treatment_start

    meds = [drug(start=ago(100))]
    read = chart([alp(30, ago(200)), alp(30, ago(1))], medications=meds)
    assert treatment_start(read) == ago(100)
    assert treatment_start(unread_medications(read)) is None


@pytest.mark.parametrize("complete", [True, False])
def test_an_order_whose_course_cannot_be_checked_is_never_a_first_dose(complete):
    """A first dose when every record was read; unknown (never "starting", never removed for denosumab) when not;
    a known course is a course whether or not everything was read."""
    c = chart([alp(30, ago(1))])
    c = c if complete else unread_medications(c)
    (bisphosphonate,) = order(c, [drug(status="draft", reference="MedicationRequest/b")])
    assert bisphosphonate.facts["course_unknown"] is (not complete)
    assert bisphosphonate.facts["course_unchecked"] is False  # only denosumab's course is unchecked
    (dose,) = order(c, [denosumab(status="draft", reference="MedicationRequest/d")])
    assert dose.facts["course_unchecked"] is (not complete) and dose.facts["course_unknown"] is (not complete)
    assert dose.deletes == (("MedicationRequest/d",) if complete else ())  # the next dose of a course: not removed
    assert bisphosphonate.deletes == ("MedicationRequest/b",)  # a bisphosphonate keeps its removal
    course = chart([alp(30, ago(1))], medications=[denosumab(start=ago(200))])
    course = course if complete else unread_medications(course)
    (continuing,) = order(course, [denosumab(status="draft", reference="MedicationRequest/d")])
    assert continuing.facts["course_unknown"] is False and continuing.facts["course_unchecked"] is False

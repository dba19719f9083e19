"""The reading step at its edges (service/fhir/readers.py): FHIR JSON in, facts out. Units, dates, flags, ranges,
status and identity, each at the value where the reading changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from service.clinical.facts import LAB_FLAG, LAB_RANGE, Patient
from service.fhir import readers
from service.fhir.context import has_hpp_diagnosis
from service.fhir.readers import (
    PatientMismatch,
    Scope,
    observation_time,
    parse_date,
    parse_datetime,
    patient_in_reference,
    read_lab_results,
    read_medications,
    read_observation,
    read_patient,
    resources,
)
from service.settings import ClinicalSettings

SETTINGS = ClinicalSettings()
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ADULT = Patient("p", date(1980, 1, 1), "male")
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"


def scope(patient=ADULT, **kwargs) -> Scope:
    return Scope(patient, NOW, SETTINGS, **kwargs)


def observation(code="6768-6", value=None, status="final", when="2026-05-01", **extra) -> dict:
    resource = {
        "resourceType": "Observation",
        "id": "o",
        "status": status,
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        **({"effectiveDateTime": when} if when else {}),
        **extra,
    }
    if value is not None:
        resource["valueQuantity"] = value
    return resource


def quantity(value, unit="U/L", code=None) -> dict:
    q = {"value": value}
    if unit is not None:
        q["unit"] = unit
    if code is not None:
        q["code"] = code
    return q


def one(resource, patient=ADULT):
    (result,) = read_observation(resource, scope(patient))
    return result


# ----------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("q", "value", "problem"),
    [
        (quantity(30, unit="U/L", code="U/L"), 30, None),
        (quantity(30, unit="IU/L", code="U/L"), 30, None),  # two spellings of the same unit
        (quantity(0.5, unit="U/L", code="ukat/L"), None, "the unit code and the unit text disagree"),
        (quantity(30, unit="ukat/L", code="U/L"), None, "the unit code and the unit text disagree"),
        (quantity(30, unit="U/L", code="mystery"), None, "unit not recognised"),  # the code is read first
        (quantity(30, unit="mystery", code="U/L"), 30, None),  # an unknown display unit is no disagreement
        (quantity(30, unit=None, code="U/L"), 30, None),
        ({"value": 30, "code": "U/L", "unit": 5}, 30, None),  # a unit text that is not a string is ignored
        ({"value": 30, "code": 5, "unit": "U/L"}, 30, None),
        (quantity(30, unit=" ", code=None), None, "no unit"),
        (quantity(30, unit=None, code=None), None, "no unit"),
    ],
)
def test_units_ucum_code_and_unit_text_must_agree(q, value, problem):
    result = one(observation(value=q))
    assert result.value == value and result.problem == problem
    if problem == "no unit":
        assert result.unit == "no unit" and result.raw_unit is None


def test_units_a_problem_found_before_the_unit_is_kept_even_when_the_units_disagree():
    resource = observation(value={"value": 30, "code": "U/L", "unit": "ukat/L"}, status=None)
    assert one(resource).problem == "the status cannot be read"


def test_units_a_comparator_fhir_does_not_allow_is_a_problem_not_a_guess():
    result = one(observation(value={**quantity(30), "comparator": "~"}))
    assert result.problem == "the comparator is not one FHIR allows" and result.value is None
    assert (result.raw_value, result.raw_unit, result.shown_value) == (30, "U/L", "30")
    assert one(observation(value={**quantity(30), "comparator": 5})).problem == "the comparator is not one FHIR allows"
    assert one(observation(value={**quantity(30), "comparator": "<="})).comparator == "<="


@pytest.mark.parametrize("number", [True, "30", float("inf"), float("nan"), 1e9, -1e9, None])
def test_units_a_value_that_is_not_a_finite_number_below_a_billion_is_not_a_number(number):
    result = one(observation(value=quantity(number)))
    assert result.problem == "the value is not a number" and result.value is None
    assert result.raw_unit == "U/L" and result.unit == "U/L"  # the unit the lab wrote is still shown
    # not a number wins over a unit code and text that disagree
    disagreeing = one(observation(value={"value": number, "code": "U/L", "unit": "ukat/L"}))
    assert disagreeing.problem == "the value is not a number"


def test_units_a_value_just_below_a_billion_is_a_number_but_not_a_possible_alp():
    result = one(observation(value=quantity(999_999_999)))
    assert result.problem == "outside the possible range: 2-5000 U/L" and result.raw_value == 999_999_999


@pytest.mark.parametrize(
    ("value", "problem"),
    [(2, None), (1.99, "outside the possible range: 2-5000 U/L"), (5000, None), (5000.1, "outside the possible range")],
)
def test_units_possible_range_of_alp_is_2_to_5000_inclusive(value, problem):
    result = one(observation(value=quantity(value)))
    if problem is None:
        assert result.problem is None and result.value == value
    else:
        assert result.problem.startswith(problem) and result.value is None


def test_units_a_possible_range_open_at_the_top_is_written_with_an_empty_bound():
    result = one(observation(code="2823-3", value=quantity(0.5, "mmol/L")))
    assert result.problem == "outside the possible range: 1- mmol/L"
    assert one(observation(code="2823-3", value=quantity(50, "mmol/L"))).problem is None


@pytest.mark.parametrize(
    ("range_", "value_unit", "low"),
    [
        ({"low": {"value": 0.5}}, "ukat/L", 30),  # a bound without a unit is in the value's unit
        ({"low": {"value": 0.5, "unit": "ukat/L"}}, "U/L", 30),
        ({"low": {"value": 40, "unit": "U/L"}}, "U/L", 40),
        ({"low": {"value": 40, "unit": "mystery"}}, "U/L", None),  # a bound that cannot be converted is dropped
        ({"low": {"value": "40"}}, "U/L", None),
        ({"low": "40"}, "U/L", None),
    ],
)
def test_ranges_a_bound_without_a_unit_is_in_the_units_of_the_value(range_, value_unit, low):
    value = quantity(0.4 if value_unit == "ukat/L" else 24, value_unit)
    result = one(observation(value=value, referenceRange=[range_]))
    if low is not None:
        assert result.low == pytest.approx(low) and result.low_source == LAB_RANGE
    else:  # the lab's bound is unusable: the fallback applies, as with no range at all (reference_intervals.csv)
        assert (result.low, result.low_source) == (40, "CALIPER interval for age and sex")


def test_ranges_only_the_first_reference_range_is_used():
    ranges = [{"low": {"value": 40, "unit": "U/L"}}, {"low": {"value": 100, "unit": "U/L"}}]
    assert one(observation(value=quantity(50), referenceRange=ranges)).low == 40


def test_ranges_a_text_value_takes_the_unit_of_the_range():
    result = one(observation(valueString="<20", referenceRange=[{"high": {"value": 2.2, "unit": "ukat/L"}}]))
    assert result.value == pytest.approx(1200) and result.comparator == "<" and result.unit == "U/L"
    result = one(observation(valueString="<20", referenceRange=[{"low": {"value": 40}, "high": {"value": 130}}]))
    assert result.problem == "no unit"


@pytest.mark.parametrize(
    ("text", "value", "comparator", "unit"),
    [
        ("<20", 20, "<", None),
        ("< 5 U/L", 5, "<", "U/L"),
        (">= 1000 IU/L", 1000, ">=", "IU/L"),
        ("≤ 5", 5, "<=", None),
        ("≥5", 5, ">=", None),
        ("35", 35, None, None),
        (" .5 ukat/L ", 0.5, None, "ukat/L"),
        ("+40", 40, None, None),
    ],
)
def test_value_text_comparator_number_and_unit(text, value, comparator, unit):
    result = one(observation(valueString=text, referenceRange=[{"low": {"value": 1, "unit": "U/L"}}]))
    assert result.raw_value == value and result.comparator == comparator
    assert result.raw_unit == (unit or "U/L") and result.raw_text == text.strip()


@pytest.mark.parametrize("text", ["1,000", "see report", "", "<", "12 34", "x" * 41, "1" * 39 + " U/L"])
def test_value_text_that_does_not_read_as_a_number_is_named_not_guessed(text):
    result = one(observation(valueString=text))
    assert result.problem == "the value is text that does not read as a number" and result.value is None
    assert result.raw_text == text.strip()[:40]


def test_value_text_of_exactly_forty_characters_is_read():
    text = "1" + " " * 35 + " U/L"
    assert len(text) == 40
    assert one(observation(valueString=text)).raw_value == 1


def test_value_integer_takes_the_unit_of_the_range_and_a_boolean_is_no_integer():
    result = one(observation(valueInteger=30, referenceRange=[{"low": {"value": 40, "unit": "U/L"}}]))
    assert result.value == 30 and result.is_low() is True and result.loinc == "6768-6"
    huge = one(observation(valueInteger=10**9, referenceRange=[{"low": {"value": 40, "unit": "U/L"}}]))
    assert huge.problem == "the value is not a number" and huge.value is None
    assert one(observation(valueInteger=True)).problem == "no value"


@pytest.mark.parametrize(
    ("absent", "shown"),
    [
        ({"text": "Specimen haemolysed"}, "Specimen haemolysed"),
        ({"coding": [{"code": "error", "display": "Error"}]}, "Error"),
        ({"coding": [{"code": "not-performed"}]}, "not-performed"),
        ({"coding": ["x", {"display": "Second"}]}, None),  # only the first coding is read
        ({"text": "y" * 50}, "y" * 40),
        ({}, None),
        ({"text": 5, "coding": [{"code": "error"}]}, "error"),  # a text that is not a string is skipped
        ({"text": "", "coding": [{"display": "", "code": "error"}]}, "error"),
    ],
)
def test_no_value_says_why_from_data_absent_reason(absent, shown):
    result = one(observation(dataAbsentReason=absent))
    assert result.problem == "no value" and result.raw_text == shown and result.shown_value == (shown or "no value")


# ----------------------------------------------------------------------------------------------- flags and limits


@pytest.mark.parametrize(
    ("codes", "flag"),
    [
        (["L"], "low"),
        (["LL"], "low"),
        (["LU"], "low"),
        (["<"], "low"),
        (["H"], "high"),
        (["HH"], "high"),
        (["HU"], "high"),
        ([">"], "high"),
        (["N"], "normal"),
        (["A"], None),  # abnormal, without a direction
        (["AA"], None),
        ([5, "L"], "low"),  # a code that is not a string is skipped, not the end of the search
        (["A", "H"], "high"),
        (["N", "L"], "normal"),  # the first meaningful code wins
    ],
)
def test_flags_other_than_l_h_n(codes, flag):
    interpretation = [{"coding": [{"code": c} for c in codes]}]
    result = one(observation(value=quantity(30), interpretation=interpretation))
    assert result.flag == flag


def test_flags_in_a_second_interpretation_concept_are_read():
    interpretation = [{"coding": [{"code": "A"}]}, {"coding": [{"code": "L"}]}]
    assert one(observation(value=quantity(30), interpretation=interpretation)).flag == "low"


def test_flags_the_labs_flag_stands_for_a_bound_it_did_not_send_no_fallback():
    result = one(observation(value=quantity(30), interpretation=[{"coding": [{"code": "L"}]}]))
    assert result.low is None and result.high is None
    assert result.low_source == LAB_FLAG and result.high_source == LAB_FLAG and result.is_low() is True
    half = one(
        observation(
            value=quantity(30),
            interpretation=[{"coding": [{"code": "L"}]}],
            referenceRange=[{"low": {"value": 40, "unit": "U/L"}}],
        )
    )
    assert (half.low, half.high, half.low_source, half.high_source) == (40, None, LAB_RANGE, LAB_FLAG)


@pytest.mark.parametrize(
    ("code", "unit", "value", "low", "high", "source"),
    [
        ("62236-5", "nmol/L", 15, 20, 125, "ARUP interval"),  # PLP
        ("28604-7", "umol/g{creat}", 40, None, 30, "decision limit for HPP (OJRD 2022)"),  # urine PEA: no lower bound
        (
            "62292-8",
            "ng/mL",
            15,
            20,
            80,
            "decision limits: deficiency below 20, toxicity possible above 80 (Mayo)",
        ),  # 25-OH vitamin D
    ],
)
def test_fallback_the_built_in_plp_pea_and_vitamin_d_limits_when_the_lab_sends_no_range(
    code, unit, value, low, high, source
):
    result = one(observation(code=code, value=quantity(value, unit)))
    assert (result.low, result.high) == (low, high)
    assert (result.low_source, result.high_source) == (None if low is None else source, source)


def test_fallback_fills_only_the_bound_the_lab_did_not_send():
    result = one(observation(code="62236-5", value=quantity(150, "nmol/L"), referenceRange=[{"low": {"value": 30}}]))
    assert (result.low, result.high, result.low_source) == (30, 125, LAB_RANGE)
    assert result.high_source not in (LAB_RANGE, LAB_FLAG, None)
    result = one(observation(code="62236-5", value=quantity(150, "nmol/L"), referenceRange=[{"high": {"value": 200}}]))
    assert (result.low, result.high, result.high_source) == (20, 200, LAB_RANGE)


def test_fallback_needs_a_scope_and_a_date():
    (result,) = read_observation(observation(code="62236-5", value=quantity(15, "nmol/L")))
    assert (result.low, result.high) == (None, None)


def test_fallback_for_alp_by_age_and_sex():
    child = Patient("p", date(2020, 1, 1), "female")
    result = one(observation(value=quantity(100)), patient=child)
    assert result.low == 142 and result.is_low() is True


# ----------------------------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-03", datetime(2024, 3, 1, tzinfo=UTC)),
        ("2024-03-05", datetime(2024, 3, 5, tzinfo=UTC)),
        ("2024-03-05T10:20:30", datetime(2024, 3, 5, 10, 20, 30, tzinfo=UTC)),  # naive: taken as UTC
        ("2024-03-05T10:20:30Z", datetime(2024, 3, 5, 10, 20, 30, tzinfo=UTC)),
        ("2024-03-05T10:20:30+02:00", datetime(2024, 3, 5, 8, 20, 30, tzinfo=UTC)),
        ("0001-01-01T00:00:00+14:00", None),  # cannot be held in UTC
        ("2024-13", None),
        ("20x4", None),
        ("", None),
        (20240305, None),
        (None, None),
    ],
)
def test_dates_partial_naive_and_offset(text, expected):
    parsed = parse_datetime(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


def test_dates_the_labs_own_offset_is_kept():
    parsed = parse_datetime("2024-03-05T23:30:00-05:00")
    assert parsed.utcoffset() == timedelta(hours=-5) and parsed.date() == date(2024, 3, 5)
    assert parse_datetime("2024-03-05T10:00:00").tzinfo == UTC
    assert parse_date("2024-03") == date(2024, 3, 1) and parse_date("x") is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"effectiveDateTime": "2026-01-01", "effectiveInstant": "2026-02-01T00:00:00Z"}, "2026-01-01"),
        ({"effectiveInstant": "2026-02-01T00:00:00Z", "effectivePeriod": {"start": "2026-03-01"}}, "2026-02-01"),
        ({"effectivePeriod": {"start": "2026-03-01", "end": "2026-03-02"}}, "2026-03-01"),
        ({"effectivePeriod": {"end": "2026-03-02"}, "issued": "2026-03-05T00:00:00Z"}, "2026-03-02"),
        ({"issued": "2026-03-05T00:00:00Z"}, "2026-03-05"),
        ({"effectiveDateTime": "garbage", "issued": "2026-03-05T00:00:00Z"}, "2026-03-05"),
        ({"effectivePeriod": "2026-03-01"}, None),
        ({}, None),
    ],
)
def test_dates_effective_instant_and_period_end_and_issued(fields, expected):
    when = observation_time(fields)
    assert (when.date().isoformat() if when else None) == expected


def born(day: date) -> Patient:
    return Patient("p", day, "male")


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("2000-01-09", None),  # the day before the birth date is believed (time zones, partial dates)
        ("2000-01-08", "dated before the patient's birth"),
        ("2026-06-02T12:00:00Z", None),  # a day ahead of now is believed
        ("2026-06-02T12:00:01Z", "dated in the future"),
    ],
)
def test_dates_a_result_a_day_outside_the_patients_life_is_still_believed(when, problem):
    result = one(observation(value=quantity(300), when=when), patient=born(date(2000, 1, 10)))
    assert result.problem == problem


def test_dates_a_result_without_a_date_is_kept_with_a_problem():
    result = one(observation(value=quantity(30), when=None))
    assert result.problem == "no date" and result.when is None and not result.usable
    (unscoped,) = read_observation(observation(value=quantity(30), when=None))
    assert unscoped.problem == "no date"
    (far,) = read_observation(observation(value=quantity(30), when="2999-01-01"))
    assert far.problem is None  # without a scope there is no "now" nor birth date to check against


def test_dates_unknown_birth_date_does_not_make_a_result_misdated():
    assert one(observation(value=quantity(30), when="1900-01-01"), patient=Patient("p")).problem is None


# ----------------------------------------------------------------------------------------------- observations


@pytest.mark.parametrize(
    ("status", "kept", "preliminary", "problem"),
    [
        ("final", True, False, None),
        ("amended", True, False, None),
        ("corrected", True, False, None),
        ("preliminary", True, True, None),
        ("registered", False, False, None),
        ("entered-in-error", False, False, None),
        (None, True, False, "the status cannot be read"),
        (7, True, False, "the status cannot be read"),
    ],
)
def test_observation_status(status, kept, preliminary, problem):
    results = read_observation(observation(value=quantity(30), status=status), scope())
    assert bool(results) is kept
    if kept:
        assert results[0].preliminary is preliminary and results[0].problem == problem


def test_observation_components_of_a_panel_are_read_with_their_own_ids():
    panel = observation(
        code="24323-8",
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "6768-6"}]}, "valueQuantity": quantity(30)},
            "junk",
            {"code": {"coding": [{"system": LOINC, "code": "9999-9"}]}, "valueQuantity": quantity(1)},
            {"code": {"coding": [{"system": LOINC, "code": "2823-3"}]}, "valueQuantity": quantity(4, "mmol/L")},
        ],
    )
    results = read_observation(panel, scope())
    assert [(r.analyte, r.resource_id) for r in results] == [
        ("alp_total", "o#component0"),
        ("potassium", "o#component3"),
    ]
    del panel["id"]
    assert [r.resource_id for r in read_observation(panel, scope())] == [None, None]


def test_observation_code_systems_are_matched_canonically_and_only_loinc_counts():
    obs = observation(value=quantity(30))
    obs["code"]["coding"] = [
        "x",
        {"system": "http://snomed.info/sct", "code": "6768-6"},
        {"system": "https://loinc.org/", "code": "6768-6"},
    ]
    assert one(obs).analyte == "alp_total"
    obs["code"]["coding"] = [{"system": LOINC, "code": 6768}]
    assert read_observation(obs, scope()) == []


def test_read_lab_results_oldest_first_deduplicated_and_only_this_patients():
    def o(ident, when, subject="Patient/p"):
        return {**observation(value=quantity(30), when=when), "id": ident, "subject": {"reference": subject}}

    other = o("a", "2026-01-01", "Patient/q")
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": other},  # another patient's "a" must not hide this patient's "a"
            {"resource": o("b", "2026-03-01")},
            {"resource": o("a", "2026-02-01")},
            {"resource": o("b", "2026-04-01")},
            {"resource": {**observation(value=quantity(30), when=None), "id": 5}},
            {"resource": {**observation(value=quantity(30), when="2026-01-15"), "id": 6}},
        ],
    }
    s = scope()
    results = read_lab_results(bundle, scope=s)
    assert [r.when.date().isoformat() if r.when else None for r in results] == [
        None,
        "2026-01-15",
        "2026-02-01",
        "2026-03-01",
    ]
    assert s.dropped == {"Observation": 1}


def test_read_lab_results_keep_skips_an_observation_before_it_is_read():
    first = {**observation(value=quantity(30), when="2026-01-01"), "id": "x"}
    second = {**observation(value=quantity(31), when="2026-01-02"), "id": "y"}
    results = read_lab_results({"resourceType": "Bundle", "entry": [{"resource": first}, {"resource": second}]},
                               scope=scope(), keep=lambda o: o["id"] == "y")  # fmt: skip
    assert [r.value for r in results] == [31]
    assert [r.value for r in read_lab_results(first, second)] == [30, 31]


# ----------------------------------------------------------------------------------------------- bundles and identity


def test_resources_skips_outcomes_and_malformed_entries_and_goes_on():
    patient = {"resourceType": "Patient", "id": "p"}
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            "junk",
            {"search": {"mode": "outcome"}, "resource": {"resourceType": "OperationOutcome"}},
            {"resource": "junk"},
            {"resource": {"resourceType": "Observation", "id": "o"}},
            {"resource": patient},
        ],
    }
    assert list(resources(bundle, "Patient")) == [patient]
    assert [r["resourceType"] for r in resources(bundle)] == ["Observation", "Patient"]
    assert list(resources(patient, "Patient")) == [patient] and list(resources(patient, "Observation")) == []
    assert list(resources(patient)) == [patient] and list(resources(["x"])) == []
    assert list(resources({"resourceType": "Bundle", "entry": "x"})) == []


@pytest.mark.parametrize(
    ("reference", "server", "expected"),
    [
        ("Patient/p", None, "p"),
        ("Patient/p/_history/3", None, "p"),
        ("https://ehr.example/fhir/Patient/p", None, "p"),
        ("https://ehr.example/fhir/Patient/p", "https://ehr.example/fhir", "p"),
        ("https://ehr.example/fhir/Patient/p", "https://ehr.example/fhir/", "p"),
        ("https://ehr.example:443/fhir/Patient/p", "HTTPS://ehr.example/fhir", "p"),  # the default port
        ("http://ehr.example:80/fhir/Patient/p", "http://ehr.example/fhir", "p"),
        ("https://ehr.example:8443/fhir/Patient/p", "https://ehr.example/fhir", None),
        ("https://other.example/fhir/Patient/p", "https://ehr.example/fhir", None),
        ("https://ehr.example/other/Patient/p", "https://ehr.example/fhir", None),
        ("https://ehr.example/fhir/Group/g/Patient/p", None, None),  # through another resource
        ("https://ehr.example/fhir/group/g/Patient/p", None, "p"),  # "group" is no resource type
        ("https://ehr.example/Patient/p", None, "p"),
        ("https://ehr.example/fhirX/Patient/p", "https://ehr.example/fhir", None),
        ("https://ehr.example/Group/g/Patient/p", None, None),  # through a resource right under the host
        ("https://ehr.example/fhir/Group/g//Patient/p", None, None),
        ("https://ehr.example/XGroup/g/Patient/p", None, "p"),
        ("Group/g", None, None),
        ("#p", None, None),
        ("urn:uuid:1234", None, None),
        (None, None, None),
        (7, None, None),
    ],
)
def test_identity_patient_references(reference, server, expected):
    assert patient_in_reference(reference, server) == expected


def test_identity_a_resource_type_is_capitalised_alphabetic_and_known():
    assert readers.is_resource_type("Group") and readers.is_resource_type("Patient")
    assert not readers.is_resource_type("group") and not readers.is_resource_type("Gr0up")
    assert not readers.is_resource_type("Nonsense") and not readers.is_resource_type("")


def test_identity_subject_first_then_patient_then_aliases_and_drafts_that_name_nobody():
    s = scope(aliases=frozenset({"urn:uuid:abc"}))
    assert s.owns({"subject": {"reference": "Patient/p"}, "patient": {"reference": "Patient/q"}})
    assert not s.owns({"subject": {"reference": "Patient/q"}, "patient": {"reference": "Patient/p"}})
    assert s.owns({"patient": {"reference": "Patient/p"}})
    assert s.owns({"subject": {"reference": "urn:uuid:abc"}})
    assert not s.owns({"resourceType": "MedicationRequest"})
    assert s.owns({"resourceType": "MedicationRequest"}, unnamed_ok=True)
    assert s.owns({"resourceType": "MedicationRequest", "subject": {}}, unnamed_ok=True)  # names no patient
    assert s.owns({"resourceType": "MedicationRequest", "subject": {"reference": "urn:uuid:x"}}, unnamed_ok=True)
    assert not s.owns({"resourceType": "MedicationRequest", "subject": {"reference": "Patient/q"}}, unnamed_ok=True)
    assert not s.owns({"resourceType": 5, "subject": {"reference": "Patient/q"}})
    assert not s.owns({"resourceType": "X" * 40, "subject": {"reference": "Patient/q"}})
    assert not s.owns({"resourceType": "X" * 39, "subject": {"reference": "Patient/q"}})
    assert not s.owns({"resourceType": "Obs-1", "subject": {"reference": "Patient/q"}})
    assert dict(s.dropped) == {"MedicationRequest": 2, "unknown": 4, "X" * 39: 1}


def test_identity_a_reference_on_another_server_is_another_patient():
    s = scope(server="https://ehr.example/fhir")
    assert s.owns({"subject": {"reference": "https://ehr.example/fhir/Patient/p"}})
    assert not s.owns({"subject": {"reference": "https://elsewhere.example/fhir/Patient/p"}})
    assert not s.owns({"subject": {"reference": "https://elsewhere.example/fhir/Patient/p"}}, unnamed_ok=True)


# ----------------------------------------------------------------------------------------------- the patient


def test_patient_must_be_the_one_patient_of_the_hook_call():
    with pytest.raises(PatientMismatch, match=r"^the patient data given is not a Patient resource$"):
        read_patient({"resourceType": "Observation"}, "p")
    with pytest.raises(PatientMismatch, match=r"^the Patient resource given is not context.patientId$"):
        read_patient({"resourceType": "Patient", "id": "q"}, "p")
    two = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}] * 2}
    with pytest.raises(PatientMismatch, match=r"^the patient data given holds more than one Patient$"):
        read_patient(two, "p")
    mixed = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "o"}},
            {"resource": {"resourceType": "Patient", "id": "p", "gender": "male"}},
        ],
    }
    assert read_patient(mixed, "p").gender == "male"  # other resources in the Bundle are not Patients
    only_other = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "o"}}]}
    # No Patient at all is no patient, not one without a death date: whether they have died is unknown
    for nothing in (only_other, {"resourceType": "Bundle", "entry": []}, {"resourceType": "Bundle"}):
        with pytest.raises(PatientMismatch, match=r"^the patient data given holds no Patient$"):
            read_patient(nothing, "p")
    with pytest.raises(PatientMismatch, match=r"^the patient data given is not a Patient resource$"):
        read_patient(None, "p")


@pytest.mark.parametrize(
    ("field", "value"),
    [("deceasedBoolean", "true"), ("deceasedBoolean", "false"), ("deceasedBoolean", 1), ("deceasedDateTime", 20240101)],
)
def test_a_death_written_with_the_wrong_type_is_refused_not_guessed(field, value):
    """Whether the patient has died decides whether any advice is given: neither "alive" nor "dead" is guessed
    from a value of the wrong JSON type (an outside attack found "true" as a string read as alive)."""
    with pytest.raises(PatientMismatch, match=rf"^Patient\.{field} must be"):
        read_patient({"resourceType": "Patient", "id": "p", field: value}, "p")
    assert read_patient({"resourceType": "Patient", "id": "p", "deceasedBoolean": True}, "p").deceased is True
    assert read_patient({"resourceType": "Patient", "id": "p", "deceasedBoolean": False}, "p").deceased is False


def test_a_death_written_with_the_wrong_type_is_a_400_from_the_client():
    from tests.conftest import PV, load_request, make_app

    body = load_request("persistent-low-in")
    body["prefetch"]["patient"]["deceasedBoolean"] = "true"
    response = make_app().hook(PV, body)
    assert response.status_code == 400
    assert "deceasedBoolean must be true or false" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("fields", "deceased", "deceased_at"),
    [
        ({}, False, None),
        ({"deceasedBoolean": True}, True, None),
        ({"deceasedDateTime": "2026-05-01"}, True, datetime(2026, 5, 1, tzinfo=UTC)),
        ({"deceasedDateTime": "not a date"}, True, None),  # a death date that cannot be read is still a death
        ({"deceasedDateTime": "  "}, False, None),
        ({"deceasedDateTime": "2026-06-02T12:00:00Z"}, True, datetime(2026, 6, 2, 12, tzinfo=UTC)),  # a day ahead
        ({"deceasedDateTime": "2026-06-02T12:00:01Z"}, False, None),  # a death in the future is a data error
    ],
)
def test_patient_deceased(fields, deceased, deceased_at):
    patient = read_patient({"resourceType": "Patient", "id": "p", **fields}, "p", NOW)
    assert patient.deceased is deceased and patient.deceased_at == deceased_at


@pytest.mark.parametrize("gender", ["male", "female", "other", "unknown"])
def test_patient_each_fhir_administrative_gender_is_kept(gender):
    assert read_patient({"resourceType": "Patient", "id": "p", "gender": gender}, "p").gender == gender


def test_patient_birth_date_and_gender():
    patient = read_patient({"resourceType": "Patient", "id": "p", "birthDate": "1990-02", "gender": "female"}, "p")
    assert patient.birth_date == date(1990, 2, 1) and patient.gender == "female"
    assert read_patient({"resourceType": "Patient", "id": "p", "gender": "f"}, "p").gender is None
    future_death = read_patient({"resourceType": "Patient", "id": "p", "deceasedDateTime": "2999-01-01"}, "p")
    assert future_death.deceased is True  # without "now" the date cannot be judged


# ----------------------------------------------------------------------------------------------- medications


def statement(status="active", text="alendronate 70 mg", ident="m", **extra) -> dict:
    return {
        "resourceType": "MedicationStatement",
        "id": ident,
        "status": status,
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"text": text},
        **extra,
    }


def request(status="active", text="alendronate 70 mg", ident="r", **extra) -> dict:
    return {**statement(status, text, ident, **extra), "resourceType": "MedicationRequest", "intent": "order"}


@pytest.mark.parametrize(
    "first",
    [
        statement(text="atorvastatin 10 mg", ident="a"),  # matches no value set
        statement(status="entered-in-error", ident="a"),  # means nothing
        {**statement(ident="a"), "subject": {"reference": "Patient/q"}},  # another patient's
        statement(ident="a", effectivePeriod={"start": "2027-01-01"}),  # planned
        {"resourceType": "Patient", "id": "p"},  # not a medication record
    ],
)
def test_medications_a_record_that_does_not_count_before_an_antiresorptive_does_not_hide_it(first):
    meds = read_medications([{"resourceType": "Bundle", "entry": [{"resource": first}, {"resource": statement()}]}],
                            scope())  # fmt: skip
    assert [(m.reference, m.status) for m in meds] == [("MedicationStatement/m", "current")]


def test_medications_a_draft_order_in_the_chart_is_a_draft_not_current():
    (med,) = read_medications([request(status="draft")], scope())
    assert med.status == "draft"


@pytest.mark.parametrize(
    ("status", "drafts", "meaning"),
    [
        ("active", True, "draft"),
        ("completed", True, "draft"),
        ("unknown", True, "draft"),
        ("entered-in-error", True, None),
        ("cancelled", True, None),
        ("revoked", True, None),
        ("on-hold", False, "current"),
        ("intended", False, "current"),
        ("stopped", False, "history"),
        ("unknown", False, None),
        ("", False, None),
    ],
)
def test_medications_status_meaning_and_drafts_of_the_hook_context(status, drafts, meaning):
    found = read_medications([request(status=status)], scope(), drafts=drafts)
    assert [m.status for m in found] == ([meaning] if meaning else [])


def test_medications_do_not_perform_and_orders_that_order_nothing():
    assert read_medications([request(doNotPerform=True)], scope()) == []
    assert read_medications([request(doNotPerform=True)], scope(), drafts=True) == []
    assert read_medications([request(doNotPerform="true")], scope()) != []
    for intent in ("proposal", "plan", "option"):
        assert read_medications([{**request(), "intent": intent}], scope()) == []
    assert read_medications([{**request(), "intent": "original-order"}], scope()) != []
    assert read_medications([{**request(), "intent": "plan"}], scope(), drafts=True) != []


@pytest.mark.parametrize(
    ("status", "meaning"),
    [("completed", "history"), ("in-progress", "history"), ("preparation", None), ("on-hold", None), ("x", None)],
)
def test_medications_a_dispense_is_evidence_of_exposure_only_once_handed_over(status, meaning):
    dispense = {**statement(status=status), "resourceType": "MedicationDispense", "whenHandedOver": "2025-01-02"}
    found = read_medications([dispense], scope())
    assert [m.status for m in found] == ([meaning] if meaning else [])
    if meaning:
        assert found[0].start == datetime(2025, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("extra", "start", "end"),
    [
        ({"effectivePeriod": {"start": "2025-01-01", "end": "2025-06-01"}}, "2025-01-01", "2025-06-01"),
        ({"effectiveDateTime": "2025-02-01"}, "2025-02-01", None),
        ({"effectivePeriod": {"end": "2025-06-01"}, "effectiveDateTime": "2025-02-01"}, "2025-02-01", "2025-06-01"),
        ({"dateAsserted": "2025-03-01"}, None, None),  # when it was written down, not when it began
    ],
)
def test_medications_statement_dates(extra, start, end):
    (med,) = read_medications([statement(**extra)], scope())
    assert (med.start.date().isoformat() if med.start else None) == start
    assert (med.end.date().isoformat() if med.end else None) == end


def test_medications_request_dates_authored_on_and_validity_end():
    req = request(authoredOn="2025-01-01", dispenseRequest={"validityPeriod": {"end": "2025-12-31"}})
    (med,) = read_medications([req], scope())
    assert med.start.date() == date(2025, 1, 1) and med.end.date() == date(2025, 12, 31) and med.status == "history"
    dispense = {**statement(status="completed"), "resourceType": "MedicationDispense", "whenPrepared": "2025-01-03"}
    assert read_medications([dispense], scope())[0].start.date() == date(2025, 1, 3)


@pytest.mark.parametrize(
    ("end", "status"),
    [("2026-06-01T11:59:59Z", "history"), ("2026-06-01T12:00:00Z", "current"), ("2026-07-01", "current")],
)
def test_medications_current_until_the_period_ends(end, status):
    (med,) = read_medications([statement(effectivePeriod={"start": "2025-01-01", "end": end})], scope())
    assert med.status == status


@pytest.mark.parametrize(
    ("start", "kept"),
    [("2026-06-02T12:00:00Z", True), ("2026-06-02T12:00:01Z", False)],
)
def test_medications_a_record_starting_more_than_a_day_ahead_is_planned_not_taken(start, kept):
    assert bool(read_medications([statement(effectivePeriod={"start": start})], scope())) is kept


def test_medications_never_current_after_death_and_drafts_stay_drafts():
    dead = Scope(Patient("p", date(1950, 1, 1), "male", deceased=True), NOW, SETTINGS)
    assert [m.status for m in read_medications([statement()], dead)] == ["history"]
    future_draft = request(authoredOn="2027-01-01")
    assert [m.status for m in read_medications([future_draft], scope(), drafts=True)] == ["draft"]
    assert [m.status for m in read_medications([statement(effectivePeriod={"start": "2030-01-01"})])] == ["current"]


def test_medications_names_are_the_records_text_whitespace_folded_and_cut_to_80():
    (med,) = read_medications([statement(text="  alendronate\n  70   mg " + "x" * 100)], scope())
    assert med.name.startswith("alendronate 70 mg x") and len(med.name) == 80
    coded = statement()
    coded["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "46041"}]}
    (med,) = read_medications([coded], scope())
    assert med.name != "unnamed medication" and med.matched_by == "code" and med.ingredient == "alendronate"
    assert med.reference == "MedicationStatement/m"
    (unnamed,) = read_medications([{**statement(), "id": 3}], scope())
    assert unnamed.reference is None


def med_resource(ident="x", code="46041"):
    return {"resourceType": "Medication", "id": ident, "code": {"coding": [{"system": RXNORM, "code": code}]}}


def by_reference(reference, **extra):
    record = statement(**extra)
    del record["medicationCodeableConcept"]
    record["medicationReference"] = {"reference": reference}
    return record


def test_medications_referenced_by_id_by_full_url_or_contained():
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": by_reference("urn:uuid:1", ident="a")},
            {"fullUrl": "urn:uuid:1", "resource": med_resource("y")},
            {"resource": by_reference("Medication/z", ident="b")},
            {"resource": med_resource("z", "993449")},
        ],
    }
    meds = read_medications([bundle], scope())
    assert [(m.reference, m.ingredient) for m in meds] == [
        ("MedicationStatement/a", "alendronate"),
        ("MedicationStatement/b", "denosumab"),
    ]
    contained = by_reference("#c", contained=["junk", {"id": "d"}, {**med_resource(), "id": "c"}])
    assert read_medications([contained], scope())[0].ingredient == "alendronate"
    assert read_medications([med_resource(), by_reference("Medication/x")], scope())[0].ingredient == "alendronate"


def test_medications_named_by_an_ingredient_a_reference_display_or_a_lower_case_atc_code():
    """Outside review M3: a Medication that carries only its ingredients (a compounded or some EHRs' product), a
    reference with only a display, and an ATC code written in lower case are all read as the drug they name."""
    ingredient_only = {
        "resourceType": "Medication",
        "id": "c",
        "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "993449"}]}}],
    }
    (med,) = read_medications([by_reference("#c", contained=[ingredient_only])], scope())
    assert med.ingredient == "denosumab"
    display_only = statement()
    del display_only["medicationCodeableConcept"]
    display_only["medicationReference"] = {"display": "Prolia 60 mg/mL syringe"}
    (med,) = read_medications([display_only], scope())
    assert (med.ingredient, med.matched_by) == ("denosumab", "text")
    atc = statement()
    atc["medicationCodeableConcept"] = {"coding": [{"system": "http://www.whocc.no/atc", "code": "m05bx04"}]}
    (med,) = read_medications([atc], scope())
    assert med.ingredient == "denosumab"


def test_medications_resolved_from_the_server_only_for_a_medication_reference():
    asked = []

    def resolve(reference):
        asked.append(reference)
        return med_resource() if reference == "Medication/x" else {"resourceType": "Patient"}

    s = scope()
    assert read_medications([by_reference("Medication/x")], s, resolve)[0].ingredient == "alendronate"
    assert read_medications([by_reference("Medication/y")], s, resolve) == []
    assert read_medications([by_reference("Patient/x")], s, resolve) == []
    assert read_medications([by_reference("#missing")], s, resolve) == []
    assert asked == ["Medication/x", "Medication/y"]
    assert s.unresolved == ["MedicationStatement/m", "MedicationStatement/m", "MedicationStatement/m"]


def test_medications_an_unresolvable_reference_is_noted_by_kind_when_the_record_has_no_id():
    s = scope()
    record = by_reference("Medication/x")
    del record["id"]
    read_medications([record], s)
    assert s.unresolved == ["MedicationStatement"]
    other = scope()
    read_medications([{**statement(), "medicationCodeableConcept": None}], other)
    assert other.unresolved == []


# ----------------------------------------------------------------------------------------------- HPP diagnosis


def condition(verification=None, text="Hypophosphatasia", coding=None, subject="Patient/p") -> dict:
    resource = {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": subject},
        "code": {"text": text, **({"coding": coding} if coding else {})},
    }
    if verification is not None:
        resource["verificationStatus"] = {"coding": [{"code": v} for v in verification]}
    return resource


@pytest.mark.parametrize(
    ("verification", "documented"),
    [
        (None, True),  # absent: many EHRs omit it
        (["confirmed"], True),
        (["refuted"], False),
        (["entered-in-error"], False),
        (["unconfirmed"], False),
        (["provisional"], False),
        (["differential"], False),
        (["confirmed", "refuted"], False),
    ],
)
def test_hpp_status_a_refuted_or_entered_in_error_condition_is_not_documented_hpp(verification, documented):
    assert has_hpp_diagnosis(condition(verification), scope=scope()) is documented


def test_hpp_status_a_refuted_condition_does_not_hide_a_confirmed_one():
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": condition(["refuted"])}, {"resource": condition(["confirmed"], text="x",
                  coding=[{"system": SNOMED, "code": "190859005"}])}],
    }  # fmt: skip
    assert has_hpp_diagnosis(bundle, scope=scope()) is True


@pytest.mark.parametrize(
    ("text", "documented"),
    [
        ("Hypophosphatasia", True),
        ("Adult hypophosphatasia", True),
        ("Childhood-onset hypophosphatasia", True),
        ("Odontohypophosphatasia", True),
        ("Hypophosphatasia (disorder)", True),
        ("  HYPOPHOSPHATASIA  ", True),
        ("Pseudohypophosphatasia", False),
        ("Hypophosphatasia ruled out", False),
        ("Family history of hypophosphatasia", False),
    ],
)
def test_hpp_text_names_hpp_exactly(text, documented):
    assert has_hpp_diagnosis(condition(text=text)) is documented


def test_hpp_coded_and_of_this_patient_only():
    coded = condition(text="x", coding=[{"system": SNOMED, "code": "190859005"}])
    assert has_hpp_diagnosis(coded) is True
    assert has_hpp_diagnosis(condition(text="x", coding=[{"system": SNOMED, "code": "1"}])) is False
    s = scope()
    assert has_hpp_diagnosis(condition(subject="Patient/q"), scope=s) is False and s.dropped["Condition"] == 1
    assert has_hpp_diagnosis(condition(subject="Patient/q"), condition()) is True
    assert has_hpp_diagnosis({"resourceType": "Observation", "code": {"text": "Hypophosphatasia"}}) is False


def test_timezone_aware_results_compare_with_now():
    result = one(observation(value=quantity(30), when="2026-05-01T10:00:00+05:00"))
    assert result.when.utcoffset() == timedelta(hours=5) and result.when < NOW
    assert result.when.astimezone(UTC).hour == 5


def test_medications_a_status_that_is_not_a_string_means_nothing():
    assert read_medications([request(status=["active"])], scope()) == []
    assert [m.status for m in read_medications([request(status=["active"])], scope(), drafts=True)] == ["draft"]
    assert read_medications([request(status=5)], scope()) == []


@pytest.mark.parametrize("code", ["", 5, None])
def test_hpp_status_a_verification_code_that_is_empty_or_not_a_string_counts_as_absent(code):
    resource = condition()
    resource["verificationStatus"] = {"coding": [{"code": code}]}
    assert has_hpp_diagnosis(resource, scope=scope()) is True


def test_hpp_another_patients_condition_before_this_patients_does_not_hide_it():
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": condition(subject="Patient/q")}, {"resource": condition()}],
    }
    assert has_hpp_diagnosis(bundle, scope=scope()) is True


def test_identity_a_draft_that_names_another_patient_in_patient_is_not_unnamed():
    s = scope()
    assert not s.owns({"resourceType": "MedicationRequest", "patient": {"reference": "Patient/q"}}, unnamed_ok=True)


def test_read_lab_results_reads_observations_only():
    report = {**observation(value=quantity(30)), "resourceType": "DiagnosticReport", "id": "d"}
    bundle = {"resourceType": "Bundle", "entry": [{"resource": report}]}
    assert read_lab_results(bundle, report, scope=scope()) == []


def test_medications_a_prefetch_value_that_is_empty_or_not_a_bundle_is_skipped():
    meds = read_medications([None, [], statement(), {"resourceType": "Medication", "entry": "x"}], scope())
    assert [m.reference for m in meds] == ["MedicationStatement/m"]


def test_medications_matched_by_text_is_recorded():
    (med,) = read_medications([statement(text="Fosamax 70 mg")], scope())
    assert med.matched_by == "text"


def test_observation_an_id_that_is_not_a_string_gives_no_resource_id():
    panel = observation(value=quantity(30), id=5)
    panel["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "2823-3"}]}, "valueQuantity": quantity(4, "mmol/L")}
    ]
    assert [r.resource_id for r in read_observation(panel, scope())] == [None, None]


# ------------------------------------------------------------------------------- entries, lazy and plain


def _lazy(bundle: dict) -> object:
    import json

    from service.fhir.lazy import decode_hook_request

    return decode_hook_request(json.dumps({"prefetch": {"k": bundle}}).encode())["prefetch"]["k"]


@pytest.mark.parametrize("lazy", [False, True], ids=["plain", "lazy"])
def test_entries_filter_by_type_and_cheap_test_whether_the_bundle_is_lazy_or_plain(lazy):
    from service.fhir.lazy import LazyBundle
    from service.fhir.readers import entries

    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Observation", "id": "a", "effectiveDateTime": "x"}},
            {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Patient", "id": "p"}},
            {"search": {"mode": "outcome"}, "resource": {"resourceType": "Observation", "id": "o"}},
            {"resource": {"resourceType": "Observation", "id": "b", "effectiveDateTime": "keep me"}},
            {"resource": "not an object"},
        ],
    }
    value = _lazy(bundle) if lazy else bundle
    assert isinstance(value, LazyBundle) is lazy
    assert [(u, r["id"]) for u, r in entries(value, "Observation")] == [("urn:uuid:1", "a"), (None, "b")]
    assert [(u, r["id"]) for u, r in entries(value, "Patient")] == [("urn:uuid:2", "p")]
    assert [r["id"] for _, r in entries(value)] == ["a", "p", "b"]
    kept = entries(value, "Observation", lambda head: head.get("effectiveDateTime") == "keep me")
    assert [r["id"] for _, r in kept] == ["b"]


def test_entries_of_a_single_resource_pass_it_to_the_cheap_test():
    from service.fhir.readers import entries

    resource = {"resourceType": "Observation", "id": "a", "effectiveDateTime": "2026-01-01"}
    seen = []
    assert list(entries(resource, "Observation", lambda r: seen.append(r) or True)) == [(None, resource)]
    assert seen == [resource]
    assert list(entries(resource, "Observation", lambda r: False)) == []
    assert list(entries(resource, "Patient")) == [] and list(entries([resource])) == []


# ----------------------------------------------------------------------------------------- patient name


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        (None, None),
        ("Ann Lee", None),  # not a list
        ([], None),
        ([{"text": "Ann  Lee "}], "Ann Lee"),  # text first, spaces tidied
        ([{"given": ["Ann", "Marie"], "family": "Lee"}], "Ann Marie Lee"),
        ([{"given": ["Ann", 7, " "], "family": 9}], "Ann"),  # parts that are not text are left out
        ([{"text": "  ", "given": ["Ann"], "family": "Lee"}], "Ann Lee"),  # blank text: the parts
        ([{"given": "Ann", "family": "Lee"}], "Lee"),  # given must be a list
        ([{"use": "nickname", "text": "Annie"}, {"use": "official", "text": "Ann Lee"}], "Ann Lee"),
        ([{"use": "nickname", "text": "Annie"}, {"use": "usual", "text": "Ann"}], "Ann"),
        ([{"use": "usual", "text": "Ann"}, {"use": "official", "text": "Ann Lee"}], "Ann Lee"),
        ([{"use": "old", "text": "A"}, {"use": "maiden", "text": "B"}], "A"),  # neither: the first
        ([{"use": "official"}, {"text": "Ann"}], "Ann"),  # an official name with nothing in it is skipped
        ([7, {"text": "Ann"}], "Ann"),
        ([{"text": "x" * 300}], "x" * 200),  # capped
    ],
)
def test_patient_name_official_then_usual_then_first_text_or_parts(names, shown):
    from service.fhir.readers import patient_name

    assert patient_name(names) == shown


def test_a_medication_reference_resolves_only_to_a_medication_resource():
    """``Medication/x`` names a Medication: a MedicationRequest (or anything else) with id x in the same Bundle is
    not it, and the record stays unresolved rather than taking that resource's code."""
    from service.fhir.readers import medication_index

    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:r", "resource": {"resourceType": "MedicationRequest", "id": "x"}},
            {"fullUrl": "urn:uuid:m", "resource": {"resourceType": "Medication", "id": "m"}},
        ],
    }
    index = medication_index([bundle])
    assert set(index) == {"Medication/m", "urn:uuid:m"}


@pytest.mark.parametrize(("value", "number"), [(10**9 - 1, 10**9 - 1), (-(10**9) + 1, -(10**9) + 1), (-5, -5.0)])
def test_number_integers_below_a_billion_either_side_are_numbers(value, number):
    from service.fhir.readers import _number

    assert _number(value) == number


@pytest.mark.parametrize("value", [10**9, -(10**9), 10**400, -(10**400), float("inf"), True, "5"])
def test_number_a_billion_or_more_either_side_and_non_numbers_are_not_numbers(value):
    from service.fhir.readers import _number

    assert _number(value) is None


def test_read_patient_carries_the_name_for_the_page_banner():
    from service.fhir.readers import read_patient

    resource = {"resourceType": "Patient", "id": "p", "name": [{"given": ["Ann"], "family": "Lee"}]}
    assert read_patient(resource, "p").name == "Ann Lee"
    assert read_patient({"resourceType": "Patient", "id": "p"}, "p").name is None

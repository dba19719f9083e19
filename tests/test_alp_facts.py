"""ALP facts: codes, status, units, time and the lower limit (unit tests on the clinical core)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from service.clinical.alp import total_alp
from service.clinical.codes import convert
from service.clinical.facts import Patient
from service.fhir.readers import Scope, read_observation
from service.settings import ClinicalSettings, load_settings

SETTINGS = ClinicalSettings()
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ADULT_MAN = Patient("p", date(1980, 1, 1), "male")


def read(observation, patient=ADULT_MAN, settings=SETTINGS):
    """The one result in an Observation, read (and judged) for the patient."""
    results = read_observation(observation, Scope(patient, NOW, settings))
    assert len(results) <= 1
    return results[0] if results else None


def obs(value, unit="U/L", code="6768-6", status="final", when="2026-05-01", **extra):
    return {
        "resourceType": "Observation",
        "id": "o",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "code": unit},
        **extra,
    }


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("U/L", 50, 50),
        ("[IU]/L", 50, 50),
        ("IU/L", 50, 50),
        ("ukat/L", 0.5, 30),
        ("µkat/L", 0.5, 30),
        ("nkat/L", 500, 30),
        ("units/L", 41, 41),
    ],
)
def test_alp_units_are_normalised(unit, value, expected):
    result = read(obs(value, unit))
    assert result.value == pytest.approx(expected) and result.unit == "U/L"


def test_unknown_unit_is_never_guessed():
    result = read(obs(30, "mg/dL"))
    assert result.value is None and result.problem == "unit not recognised" and result.raw_unit == "mg/dL"
    assert result.is_low() is None and total_alp([result]) == []


def test_bilirubin_umol_is_converted_to_mg_dl():
    assert convert(171, "umol/L", "bilirubin")[0] == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize(
    ("status", "kept", "preliminary"),
    [
        ("final", True, False),
        ("amended", True, False),
        ("corrected", True, False),
        ("preliminary", True, True),
        ("entered-in-error", False, False),
        ("cancelled", False, False),
        ("registered", False, False),
    ],
)
def test_observation_status(status, kept, preliminary):
    result = read(obs(30, status=status))
    assert (result is not None) == kept
    if kept:
        assert result.preliminary == preliminary


def test_time_from_effective_period_or_issued():
    period = obs(30, when=None, effectivePeriod={"start": "2026-02-03T10:00:00+02:00"})
    period.pop("effectiveDateTime")
    assert read(period).when == datetime(2026, 2, 3, 8, 0, tzinfo=UTC)
    issued = obs(30)
    issued.pop("effectiveDateTime")
    issued["issued"] = "2026-03-04T05:06:07Z"
    assert read(issued).when == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def test_isoenzymes_are_never_compared_with_total_alp_limits():
    results = [read(obs(5, code="1777-2")), read(obs(4, "ug/L", code="17838-4")), read(obs(3, code="1779-8"))]
    assert [r.analyte for r in results] == ["alp_bone", "alp_bone_mass", "alp_liver"]
    assert total_alp(results) == []


@pytest.mark.parametrize("code", ["6768-6", "77141-0", "1783-0"])
def test_total_alp_codes(code):
    assert read(obs(30, code=code)).analyte == "alp_total"


def test_lab_reference_range_comes_first_and_is_converted():
    result = read(obs(0.5, "ukat/L", referenceRange=[{"low": {"value": 0.6, "unit": "ukat/L"}}]))
    assert result.low == pytest.approx(36) and result.is_low() and result.low_source == "the lab's reference range"


def test_site_limit_before_the_table_for_adults_only():
    settings = load_settings({"ALP_SITE_LOW_LIMITS": "female=45,male=50"}, environ={}).clinical
    adult = read(obs(45), settings=settings)
    assert (adult.low, adult.low_source, adult.is_low()) == (50, "the site's lower limit", True)
    child = read(obs(45), Patient("c", date(2020, 1, 1), "male"), settings)
    assert child.low == 142 and "CALIPER" in child.low_source


def test_site_limits_from_the_environment():
    assert load_settings({}, environ={"CDS_ALP_SITE_LOW_LIMITS": "38"}).ALP_SITE_LOW_LIMITS == {
        "male": 38.0,
        "female": 38.0,
    }


@pytest.mark.parametrize(
    ("birth", "gender", "value", "limit", "low"),
    [
        ("2020-01-01", "male", 95, 142, True),  # a 6-year-old with 95 U/L is low
        ("1986-01-01", "male", 95, 40, False),  # a 40-year-old with 95 U/L is not
        ("2026-04-25", "female", 80, 83, True),  # 6 days old
        ("2012-01-01", "female", 60, 57, False),  # 14-year-old girl: 57
        ("2012-01-01", "male", 60, 116, True),  # 14-year-old boy: 116
        ("1990-01-01", "female", 37, 35, False),
        ("1990-01-01", "male", 37, 40, True),
        ("1990-01-01", None, 37, 35, False),  # sex unknown: the less alarming adult limit
    ],
)
def test_caliper_table_by_age_and_sex_at_the_time_of_the_test(birth, gender, value, limit, low):
    result = read(obs(value), Patient("p", date.fromisoformat(birth), gender))
    assert (result.low, result.is_low()) == (limit, low)


def test_lab_flag_without_range_is_the_labs_judgement():
    result = read(obs(45, interpretation=[{"coding": [{"code": "L"}]}]))
    assert result.is_low() and result.low is None and result.low_source == "the lab's flag"


@pytest.mark.parametrize("value", [True, "12", None, float("nan"), 1e300, [1]])
def test_malformed_values_are_kept_unusable_and_named(value):
    result = read(obs(value))
    assert result.value is None and result.problem == "the value is not a number" and result.is_low() is None

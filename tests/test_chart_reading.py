"""Reading the chart (issue: read only this patient's current, plausible data, in every form EHRs send it).

Each test builds the chart a careless EHR, a hostile client or a broken server would send, and checks the cards.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any

import pytest
import responses

from service import metrics
from service.clinical.facts import Patient
from service.fhir.readers import Scope, patient_in_reference, read_medications, read_observation
from service.hook_requests import NOW, hook_request
from service.settings import ClinicalSettings
from tests.conftest import OS, PV, make_app

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PID = "p1"


def patient(pid: str = PID, birth: str = "1970-01-01", gender: str = "female", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender, **extra}


_counter = iter(range(10**6))


def lab(code: str, value: Any, unit: str | None, when: str, pid: str = PID, **extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{next(_counter)}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
    }
    if value is not None:
        obs["valueQuantity"] = {"value": value, **({"unit": unit, "code": unit} if unit else {})}
    obs.update(extra)
    return obs


def alp(value: Any, when: str, pid: str = PID, **extra: Any) -> dict[str, Any]:
    return lab("6768-6", value, "U/L", when, pid, **extra)


def alendronate(status: str = "active", pid: str = PID, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"mr-{next(_counter)}",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "904419"}], "text": "alendronate 10 mg"},
        "subject": {"reference": f"Patient/{pid}"},
        **extra,
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def pv_request(*resources: dict[str, Any], pid: str = PID) -> dict[str, Any]:
    return hook_request(PV, bundle(*resources), pid)


def os_request(*resources: dict[str, Any], pid: str = PID, order: dict[str, Any] | None = None) -> dict[str, Any]:
    order = order or alendronate("draft", pid=pid, id="draft-1", authoredOn="2026-06-01")
    order = {**order, "id": "draft-1"}
    return hook_request(
        OS,
        bundle(*resources),
        pid,
        draft_orders=bundle(order),
        selections=["MedicationRequest/draft-1"],
    )


def summaries(cards: list[dict[str, Any]]) -> list[str]:
    return [c["summary"] for c in cards]


def add_to_prefetch(request: dict[str, Any], key: str, *resources: dict[str, Any]) -> dict[str, Any]:
    request = copy.deepcopy(request)
    request["prefetch"][key]["entry"].extend({"resource": r} for r in resources)
    return request


# ------------------------------------------------------------------------------------------------ 1. identity


@pytest.mark.parametrize(
    ("reference", "named"),
    [
        ("Patient/p1", "p1"),
        ("https://ehr.example.org/fhir/Patient/p1", "p1"),
        ("Patient/p1/_history/3", "p1"),
        ("https://ehr.example.org/fhir/Patient/p1/_history/3", "p1"),
        ("Patient/p10", "p10"),
        ("RelatedPerson/p1", None),
        ("XPatient/p1", None),
        ("urn:uuid:1234", None),
        ("#p1", None),
        ("Patient/", None),
        (None, None),
        (["Patient/p1"], None),
    ],
)
def test_which_patient_a_reference_names(reference, named):
    assert patient_in_reference(reference) == named


def test_another_patients_low_alp_in_the_prefetch_is_dropped_and_counted():
    client = make_app()
    own = pv_request(patient(), alp(80, "2026-05-01"))
    assert client.cards(PV, own) == []
    before = metrics.FOREIGN_DROPPED.labels("Observation")._value.get()
    hostile = add_to_prefetch(own, "alp", alp(12, "2026-05-20", pid="p2"), alp(13, "2026-05-21", pid="p1x"))
    hostile = add_to_prefetch(hostile, "labs", lab("2823-3", 7.5, "mmol/L", "2026-05-20", pid="p2"))
    assert client.cards(PV, hostile) == []
    assert metrics.FOREIGN_DROPPED.labels("Observation")._value.get() - before == 3
    scrape = client.client.get("/metrics").get_data(as_text=True)
    assert 'cds_foreign_resources_dropped_total{resource_type="Observation"}' in scrape


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "https://ehr.example.org/fhir/Patient/p1"},
        {"reference": "Patient/p1/_history/2"},
    ],
)
def test_absolute_and_versioned_references_to_the_patient_are_used(subject):
    request = add_to_prefetch(pv_request(patient()), "alp", alp(22, "2026-05-20", subject=subject))
    (card,) = make_app().cards(PV, request)
    assert card["summary"].startswith("Repeat the ALP when the patient is well: low at 22 U/L on 2026-05-20")


@pytest.mark.parametrize("subject", [None, {"reference": "urn:uuid:abc"}, {"identifier": {"value": "p1"}}])
def test_results_that_name_no_patient_are_not_used(subject):
    observation = alp(22, "2026-05-20")
    observation.pop("subject")
    if subject is not None:
        observation["subject"] = subject
    request = pv_request(patient(), alp(80, "2026-01-20"))
    request = add_to_prefetch(request, "alp", observation)
    assert make_app().cards(PV, request) == []


def test_another_patients_alendronate_and_hpp_diagnosis_are_ignored():
    request = os_request(patient(), alp(80, "2026-05-01"))
    hpp = {
        "resourceType": "Condition",
        "id": "c-other",
        "code": {"text": "Hypophosphatasia"},
        "subject": {"reference": "Patient/p2"},
    }
    request = add_to_prefetch(request, "conditions", hpp)
    assert make_app().cards(OS, request) == []  # ALP normal and no HPP of this patient: quiet
    pv = add_to_prefetch(pv_request(patient(), alp(25, "2026-05-01")), "medicationRequests", alendronate(pid="p2"))
    assert [s for s in summaries(make_app().cards(PV, pv)) if "alendronate" in s] == []


def test_a_draft_order_for_another_patient_is_not_checked():
    request = os_request(patient(), alp(22, "2026-05-01"), order=alendronate("draft", pid="p2"))
    assert make_app().cards(OS, request) == []
    unnamed = alendronate("draft")
    unnamed.pop("subject")
    (card,) = make_app().cards(OS, os_request(patient(), alp(22, "2026-05-01"), order=unnamed))
    assert card["summary"].startswith("Repeat the ALP before starting alendronate: one low")


def test_a_prefetched_patient_with_another_id_is_a_400():
    request = pv_request(patient(), alp(22, "2026-05-01"))
    request["prefetch"]["patient"]["id"] = "p2"
    response = make_app().hook(PV, request)
    assert response.status_code == 400
    assert "context.patientId" in response.get_json()["issue"][0]["diagnostics"]


@responses.activate
def test_a_fhir_server_answering_with_another_patient_is_a_412():
    base = "https://fhir.example.org/r4"
    responses.get(f"{base}/Patient/p1", json=patient("p2"))
    request = pv_request(patient(), alp(22, "2026-05-01"))
    request["fhirServer"] = base
    del request["prefetch"]["patient"]
    response = make_app().hook(PV, request)
    assert response.status_code == 412
    assert "context.patientId" in response.get_json()["issue"][0]["diagnostics"]


@responses.activate
def test_a_fhir_search_answer_holding_other_patients_is_filtered():
    base = "https://fhir.example.org/r4"
    request = pv_request(patient(), alp(80, "2026-05-01"))
    request["fhirServer"] = base
    del request["prefetch"]["alp"]
    responses.get(f"{base}/Observation", json=bundle(alp(80, "2026-05-01"), alp(15, "2026-05-25", pid="p9")))
    assert make_app().cards(PV, request) == []


# ------------------------------------------------------------------------------------------------ 2. deceased


@pytest.mark.parametrize("death", [{"deceasedBoolean": True}, {"deceasedDateTime": "2026-05-28"}])
def test_no_workup_for_a_deceased_patient(death):
    request = pv_request(patient(**death), alp(22, "2026-01-10"), alp(24, "2026-05-20"), alendronate())
    assert make_app().cards(PV, request) == []


def test_deceased_false_is_alive():
    request = pv_request(patient(deceasedBoolean=False), alp(22, "2026-05-20"))
    assert len(make_app().cards(PV, request)) == 1


def test_medications_are_never_current_after_death():
    scope = Scope(Patient(PID, date(1950, 1, 1), "female", deceased=True), NOW)
    (med,) = read_medications([alendronate()], scope)
    assert med.status == "history"


# ------------------------------------------------------------------------------------------------ 3. age of results


def test_a_low_alp_from_1978_gives_no_advice_today():
    assert make_app().cards(PV, pv_request(patient(birth="1950-01-01"), alp(20, "1978-01-09"))) == []


def test_old_lows_are_not_persistent():
    request = pv_request(patient(), alp(20, "2018-01-09"), alp(21, "2019-03-01"))
    assert make_app().cards(PV, request) == []


def test_a_current_low_shows_older_lows_as_history():
    request = pv_request(patient(), alp(20, "2019-03-01"), alp(21, "2026-05-01"))
    (card,) = make_app().cards(PV, request)
    assert "| 2019-03-01 (history) | 20 | 35 |" in card["detail"]
    assert "| 2026-05-01 | 21 | 35 |" in card["detail"]


def test_order_select_with_only_an_old_low_asks_for_a_current_alp():
    request = os_request(patient(birth="1950-01-01"), alp(20, "1978-01-09"))
    (card,) = make_app().cards(OS, request)
    assert card["summary"] == (
        "Measure ALP before starting alendronate: none in the last 12 months (last one low, 20 U/L on 1978-01-09)"
    )
    assert "Exclude" not in card["summary"]
    assert card["indicator"] == "warning"
    (suggestion,) = card["suggestions"]
    assert suggestion["actions"][0]["resource"]["code"]["coding"][0]["code"] == "6768-6"


def test_order_select_with_an_old_normal_alp_is_informational():
    (card,) = make_app().cards(OS, os_request(patient(), alp(80, "2019-01-09")))
    assert card["indicator"] == "info"
    assert card["summary"] == "Measure ALP before starting alendronate: none in the last 12 months"


def test_the_window_is_a_setting():
    request = pv_request(patient(birth="1950-01-01"), alp(20, "1978-01-09"))
    (card,) = make_app(ALP_CURRENT_DAYS=20000).cards(PV, request)
    assert "1978-01-09" in card["summary"]


# ---------------------------------------------------------------------------------------------- 4. medication timeline


def _antiresorptive_card(cards):
    found = [c for c in cards if "alendronate" in c["summary"]]
    return found[0] if found else None


def test_therapy_start_is_the_earliest_record_not_the_renewal():
    first = alendronate("completed", authoredOn="2020-01-10")
    renewals = [alendronate("completed", authoredOn=f"{year}-12-01") for year in range(2020, 2025)]  # yearly
    renewal = alendronate("active", authoredOn="2025-12-01")
    labs = (alp(70, "2019-06-01"), alp(30, "2023-05-01"), alp(28, "2026-05-01"))
    request = pv_request(patient(), *labs, first, *renewals, renewal)
    card = _antiresorptive_card(make_app().cards(PV, request))
    assert "before treatment" not in card["summary"]  # the 2023 low came after the drug was first recorded
    detail = " ".join(card["detail"].split())
    assert "(first recorded 2020-01-10)" in detail
    assert "The last ALP before it was normal (70 U/L on 2019-06-01)" in detail


def test_a_course_restarted_after_a_drug_holiday_starts_again():
    """Alendronate 2014-2019, a holiday, restarted 2025-11: a low ALP in 2025 was measured off treatment, five years
    after the last tablet, so the lows are not simply the drug's (outside clinical review, P25)."""
    stopped = alendronate("completed", authoredOn="2014-03-01")
    stopped["dispenseRequest"] = {"validityPeriod": {"start": "2014-03-01", "end": "2019-06-30"}}
    restarted = alendronate("active", authoredOn="2025-11-15")
    request = pv_request(patient(), alp(30, "2025-01-10"), alp(29, "2026-03-10"), stopped, restarted)
    card = _antiresorptive_card(make_app().cards(PV, request))
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Exclude hypophosphatasia: ALP low before alendronate")
    assert "(first recorded 2025-11-15)" in " ".join(card["detail"].split())


def test_low_before_treatment_needs_the_last_alp_before_the_start_to_be_low():
    request = pv_request(
        patient(), alp(30, "2018-01-01"), alp(70, "2019-06-01"), alp(28, "2026-05-01"),
        alendronate(authoredOn="2020-01-10"),
    )  # fmt: skip
    card = _antiresorptive_card(make_app().cards(PV, request))
    assert "before treatment" not in card["summary"]
    low_first = pv_request(
        patient(), alp(30, "2019-06-01"), alp(28, "2026-05-01"), alendronate(authoredOn="2020-01-10")
    )
    card = _antiresorptive_card(make_app().cards(PV, low_first))
    assert "ALP low before alendronate and still low" in card["summary"]


def test_unknown_start_leaves_the_claim_out():
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms-undated",
        "status": "active",
        "medicationCodeableConcept": {"text": "alendronate 70 mg weekly"},
        "subject": {"reference": "Patient/p1"},
        "dateAsserted": "2025-01-01",  # when it was written down, not when it started
    }
    request = pv_request(patient(), alp(30, "2019-06-01"), alp(28, "2026-05-01"), statement)
    card = _antiresorptive_card(make_app().cards(PV, request))
    assert "before treatment" not in card["summary"]
    assert "when treatment began is not recorded" in " ".join(card["detail"].split())


def test_a_dispense_is_evidence_of_an_earlier_start():
    dispense = {
        "resourceType": "MedicationDispense",
        "id": "md1",
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "904419"}]},
        "subject": {"reference": "Patient/p1"},
        "whenHandedOver": "2017-03-01",
    }
    scope = Scope(Patient(PID, date(1950, 1, 1), "female"), NOW)
    meds = read_medications([bundle(dispense, alendronate(authoredOn="2025-01-01"))], scope)
    assert sorted((m.status, m.start.date().isoformat()) for m in meds) == [
        ("current", "2025-01-01"),
        ("history", "2017-03-01"),
    ]


def test_a_statement_whose_period_has_ended_is_not_current():
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "status": "active",
        "medicationCodeableConcept": {"text": "alendronate 70 mg weekly"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2019-01-01", "end": "2024-01-01"},
    }
    request = pv_request(patient(), alp(28, "2026-05-01"), statement)
    assert _antiresorptive_card(make_app().cards(PV, request)) is None


# ------------------------------------------------------------------------------------------------ 5. forms labs send


def read_one(observation: dict[str, Any], birth: str = "1970-01-01", gender: str = "female"):
    scope = Scope(Patient(PID, date.fromisoformat(birth), gender), NOW, ClinicalSettings())
    (result,) = read_observation(observation, scope)
    return result


@pytest.mark.parametrize(
    ("text", "value", "comparator", "low"),
    [
        ("<20", 20, "<", True),  # the range below gives U/L
        ("< 5 U/L", 5, "<", True),
        ("<=34 U/L", 34, "<=", True),
        ("<35 U/L", 35, "<", True),
        ("<50 U/L", 50, "<", None),  # below 50 may or may not be below 35
        (">= 1000 IU/L", 1000, ">=", False),
        ("≤ 20 U/L", 20, "<=", True),
        ("30", 30, None, True),
    ],
)
def test_value_strings_are_read(text, value, comparator, low):
    observation = alp(None, "2026-05-01", valueString=text, referenceRange=[{"low": {"value": 35, "unit": "U/L"}}])
    result = read_one(observation)
    assert (result.value, result.comparator, result.is_low()) == (value, comparator, low)


@pytest.mark.parametrize("text", ["see report", "1,200 U/L", "pending", ""])
def test_unreadable_value_strings_are_named_not_guessed(text):
    result = read_one(alp(None, "2026-05-01", valueString=text))
    assert result.value is None and result.problem == "the value is text that does not read as a number"


def test_a_value_string_without_any_unit_is_not_guessed():
    result = read_one(alp(None, "2026-05-01", valueString="<20"))
    assert result.value is None and result.problem == "no unit"


@pytest.mark.parametrize(
    ("comparator", "value", "low"), [("<", 20, True), ("<", 50, None), (">", 10, None), (">", 40, False)]
)
def test_value_quantity_comparator(comparator, value, low):
    observation = alp(value, "2026-05-01")
    observation["valueQuantity"]["comparator"] = comparator
    assert read_one(observation).is_low() is low


def test_a_low_alp_written_as_less_than_gets_a_card():
    observation = alp(None, "2026-05-20", valueString="<20 U/L")
    (card,) = make_app().cards(PV, pv_request(patient(), observation))
    assert card["summary"].endswith("low at <20 U/L on 2026-05-20 (lower limit 35)")


def test_alp_as_a_component_of_a_panel():
    panel = {
        "resourceType": "Observation",
        "id": "panel-1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "24325-3", "display": "Hepatic function panel"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-05-20",
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "6768-6"}]}, "valueQuantity": {"value": 21, "unit": "U/L"}},
            {"code": {"coding": [{"system": LOINC, "code": "1742-6"}]}, "valueQuantity": {"value": 30, "unit": "U/L"}},
        ],
    }
    request = pv_request(patient())
    request["prefetch"]["alp"]["entry"].append({"resource": panel})
    (card,) = make_app().cards(PV, request)
    assert card["summary"].endswith("low at 21 U/L on 2026-05-20 (lower limit 35)")


@pytest.mark.parametrize(
    ("code", "value", "unit", "analyte", "expected"),
    [
        ("5763-8", 9.2, "umol/L", "zinc", 60.15),
        ("5631-7", 11.0, "umol/L", "copper_serum", 69.9),
        ("49765-1", 9.1, "mg/dL", "calcium", 9.1),
    ],
)
def test_more_units_and_codes(code, value, unit, analyte, expected):
    result = read_one(lab(code, value, unit, "2026-05-01"))
    assert result.analyte == analyte and result.value == pytest.approx(expected, rel=1e-3)


def test_order_select_names_an_alp_in_an_unknown_unit_instead_of_saying_none_exists():
    (card,) = make_app().cards(OS, os_request(patient(), lab("6768-6", 0.4, "mmol/L", "2026-05-01")))
    assert card["summary"] == "Measure ALP before starting alendronate: the ALP on record could not be interpreted"
    assert "no total ALP result on record" not in card["detail"]
    assert "(unit not recognised)" in card["detail"]


# ------------------------------------------------------------------------------------------------ 6. plausibility


def test_total_protein_in_g_per_l_labelled_g_per_dl_is_implausible_and_not_already_done():
    request = pv_request(
        patient(), alp(25, "2026-03-01"), alp(24, "2026-05-20"), lab("2885-2", 71, "g/dL", "2026-05-20")
    )
    (card,) = make_app().cards(PV, request)
    detail = " ".join(card["detail"].split())
    assert "Total protein 71 g/dL on 2026-05-20 (outside the possible range: 2-15 g/dL)" in detail
    assert "| Total protein |" not in card["detail"]  # not shown as a resulted test
    ordered = [s["label"] for s in card["suggestions"]]
    assert "Order Total protein, serum" in ordered


@pytest.mark.parametrize(("value", "unit"), [(0.5, "U/L"), (9000, "U/L"), (-3, "U/L")])
def test_impossible_alp_is_never_evidence(value, unit):
    request = pv_request(patient(), lab("6768-6", value, unit, "2026-05-20"))
    (card,) = make_app().cards(PV, request)  # no low-ALP advice: only a request to read the value by hand
    assert card["summary"].startswith("Ask the lab to check the latest ALP:") and card["indicator"] == "info"
    assert "outside the possible range: 2-5000 U/L" in card["detail"]
    result = read_one(lab("6768-6", value, unit, "2026-05-20"))
    assert result.value is None and result.problem.startswith("outside the possible range")


@pytest.mark.parametrize(
    ("when", "problem"),
    [("0001-01-01", "dated before the patient's birth"), ("9999-12-31T23:59:59Z", "dated in the future")],
)
def test_placeholder_dates_are_named_not_used(when, problem):
    result = read_one(alp(20, when))
    assert result.value is None and result.problem == problem
    request = pv_request(patient(), alp(20, when))
    summaries_ = summaries(make_app().cards(PV, request))
    assert not [s for s in summaries_ if "low at" in s or "Persistently" in s]  # never advice from it


# ------------------------------------------------------------------------------------------------ 7. fallback limits


def test_bilirubin_without_a_range_is_judged_against_the_sourced_adult_limit():
    result = read_one(lab("1975-2", 14, "mg/dL", "2026-05-20"))
    assert result.high == 1.2 and result.is_high() and result.high_source == "Mayo Clinic Laboratories adult interval"


def test_wilson_fires_without_lab_ranges_and_names_the_limit_used():
    request = pv_request(
        patient(birth="2001-01-01", gender="male"),
        alp(20, "2026-05-20"),
        lab("14631-6", 87, "umol/L", "2026-05-20"),
        lab("1920-8", 200, "U/L", "2026-05-20"),
        lab("1742-6", 60, "U/L", "2026-05-20"),
    )
    cards = make_app().cards(PV, request)
    (wilson,) = [c for c in cards if "Wilson" in c["summary"]]
    assert wilson["indicator"] == "critical"
    assert "(raised: upper limit 1.2 mg/dL (Mayo Clinic Laboratories adult interval))" in wilson["detail"]


def test_neonatal_bilirubin_has_no_fallback_limit():
    result = read_one(lab("1975-2", 10, "mg/dL", "2026-05-20"), birth="2026-05-17")
    assert result.high is None and result.is_high() is None


def test_edta_pattern_fires_without_lab_ranges():
    request = pv_request(
        patient(birth="1972-08-08", gender="male"),
        alp(28, "2026-05-20T08:00:00Z"),
        lab("2823-3", 7.4, "mmol/L", "2026-05-20T08:00:00Z"),
        lab("17861-6", 6.1, "mg/dL", "2026-05-20T08:00:00Z"),
    )
    (card,) = [c for c in make_app().cards(PV, request) if "EDTA" in c["summary"]]
    assert "6.1 mg/dL; 8.6-10 mg/dL (Mayo Clinic Laboratories interval, 18-59 years)" in card["detail"]


def test_the_card_says_which_fallback_limit_it_used():
    request = pv_request(patient(), alp(25, "2026-05-20"), lab("5763-8", 50, "ug/dL", "2026-05-20"))
    (card,) = make_app().cards(PV, request)
    assert (
        "| Zinc | 50 µg/dL (low) | 60-106 µg/dL (Mayo Clinic Laboratories adult interval) | 2026-05-20 |"
        in (card["detail"])
    )


@pytest.mark.parametrize(
    ("analyte_code", "unit", "birth", "gender", "low", "high"),
    [
        ("2823-3", "mmol/L", "2026-05-25", "male", 3.2, 5.5),  # potassium, 0-7 days
        ("2823-3", "mmol/L", "2026-05-15", "male", 3.4, 6.0),  # 8 days-1 month
        ("2823-3", "mmol/L", "1990-01-01", "male", 3.3, 5.0),
        ("1742-6", "U/L", "1990-01-01", "female", 7, 45),
        ("1742-6", "U/L", "1990-01-01", "male", 7, 55),
        ("1742-6", "U/L", "1990-01-01", "other", 7, 55),  # sex unknown: the widest limits
        ("17861-6", "mg/dL", "1950-01-01", "female", 8.8, 10.2),
        ("19123-9", "mg/dL", "1990-01-01", "female", 1.703, 2.676),  # from mmol/L
    ],
)
def test_fallback_limits_by_age_and_sex(analyte_code, unit, birth, gender, low, high):
    result = read_one(lab(analyte_code, 4, unit, "2026-06-01"), birth=birth, gender=gender)
    assert result.low == pytest.approx(low, rel=1e-3) and result.high == pytest.approx(high, rel=1e-3)


def test_the_labs_own_range_wins_over_the_fallback():
    result = read_one(lab("5763-8", 50, "ug/dL", "2026-05-20", referenceRange=[{"low": {"value": 45}}]))
    assert result.low == 45 and result.low_source == "the lab's reference range" and result.is_low() is False
    assert result.high == 106  # the lab gave no upper limit


def test_a_lab_flag_without_range_is_not_overridden_by_the_fallback():
    flagged = lab("5763-8", 50, "ug/dL", "2026-05-20", interpretation=[{"coding": [{"code": "N"}]}])
    result = read_one(flagged)
    assert result.low is None and result.is_low() is False


def test_naive_and_partial_dates():
    assert read_one(alp(30, "2026-05")).when == datetime(2026, 5, 1, tzinfo=UTC)
    assert read_one(alp(30, "2026-05-02T10:00:00")).when == datetime(2026, 5, 2, 10, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------ the fixture patients


@pytest.mark.parametrize(
    ("name", "service", "expected"),
    [
        ("deceased-out", PV, []),
        ("old-low-out", PV, []),
        (
            "implausible-in",
            PV,
            [
                "Ask the lab to check the latest ALP: 0.3 U/L on 2026-05-18 could not be interpreted (as µkat/L, "
                "about 18 U/L: very low)"
            ],
        ),
        (
            "text-value-in",
            PV,
            ["Repeat the ALP when the patient is well: low at <20 U/L on 2026-05-18 (lower limit 35)"],
        ),
        (
            "order-old-low-in",
            OS,
            [
                "Measure ALP before starting alendronate: none in the last 12 months (last one low, 26 U/L on "
                "2016-09-12)"
            ],
        ),
    ],
)
def test_fixture_patients_for_reading_the_chart(name, service, expected):
    from tests.conftest import load_request

    assert summaries(make_app().cards(service, load_request(name))) == expected


def test_fixture_without_ranges_reaches_the_wilson_pattern():
    from tests.conftest import load_request

    cards = make_app().cards(PV, load_request("no-ranges-in"))
    assert [c["indicator"] for c in cards if "Wilson" in c["summary"]] == ["critical"]


def test_chart_text_cannot_inject_markdown_into_a_card():
    """A medication name (patient-entered, say) holding an image, a link and a heading: shown as inert text."""
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms-hostile",
        "status": "active",
        "medicationCodeableConcept": {
            "text": "alendronate ![](https://tracker.example/p.png) [click](https://evil.example)\n\n# HPP EXCLUDED"
        },
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2025-01-01"},
    }
    pyridoxine = {**statement, "id": "ms-b6", "medicationCodeableConcept": {"text": "pyridoxine [x](http://e.example)"}}
    request = pv_request(patient(), alp(30, "2026-01-01"), alp(28, "2026-05-01"), statement, pyridoxine)
    from service.gallery import markdown

    for card in make_app().cards(PV, request):
        html = markdown(card.get("detail", ""))
        assert "<img" not in html and "<a " not in html and "<h1" not in html, card["detail"]
        assert "\n# " not in card.get("detail", "")
    detail = " ".join(c.get("detail", "") for c in make_app().cards(PV, request))
    assert "pyridoxine \\[x\\](http: //e.example)" in detail  # still readable, no longer a link


@pytest.mark.parametrize(
    ("birth", "band_low"),
    [("2008-06-01", 8.6), ("2008-06-02", 9.3)],  # 18 on the day of the test, or 18 the day after
)
def test_age_bands_switch_on_the_birthday(birth, band_low):
    result = read_one(lab("17861-6", 9.0, "mg/dL", "2026-06-01"), birth=birth)
    assert result.low == band_low


def test_history_lows_are_not_persistent_when_the_current_sample_is_suspect():
    request = pv_request(
        patient(birth="1970-01-01", gender="male"),
        alp(22, "2024-01-01"),
        alp(20, "2024-03-01"),
        alp(12, "2026-05-20T08:00:00Z"),
        lab("2823-3", 9.8, "mmol/L", "2026-05-20T08:00:00Z"),
        lab("17861-6", 3.0, "mg/dL", "2026-05-20T08:00:00Z"),  # gross EDTA: calcium far below 4 mg/dL
    )
    found = summaries(make_app().cards(PV, request))
    assert found[0].startswith(
        "Repeat the potassium and calcium now, treat them as real until repeated; recollect the ALP"
    )
    assert not [s for s in found if s.startswith("Persistently")]


def test_a_readable_but_unjudgeable_alp_is_named_not_dropped():
    observation = alp(None, "2026-05-20", valueString="<50 U/L")
    (card,) = make_app().cards(PV, pv_request(patient(), observation))
    assert card["summary"] == "Ask the lab to check the latest ALP: <50 U/L on 2026-05-20 could not be interpreted"
    assert "cannot be judged" in card["detail"]
    (order,) = make_app().cards(OS, os_request(patient(), observation))
    assert order["summary"] == "Measure ALP before starting alendronate: the ALP on record could not be interpreted"


@pytest.mark.parametrize(
    ("text", "documented"),
    [
        ("Hypophosphatasia", True),
        ("Adult hypophosphatasia", True),
        ("Hypophosphatasia ruled out", False),
        ("Family history of hypophosphatasia", False),
        ("Pseudohypophosphatasia", False),
    ],
)
def test_hpp_by_text_only_when_the_text_names_the_diagnosis(text, documented):
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"text": text},
        "subject": {"reference": "Patient/p1"},
    }
    request = add_to_prefetch(os_request(patient(), alp(80, "2026-05-01")), "conditions", condition)
    cards = make_app().cards(OS, request)
    assert bool(cards and cards[0]["indicator"] == "critical") == documented


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_hpp_that_is_refuted_or_entered_in_error_is_not_read(verification):
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "190859005"}]},
        "verificationStatus": {"coding": [{"code": verification}]},
        "subject": {"reference": "Patient/p1"},
    }
    request = add_to_prefetch(os_request(patient(), alp(80, "2026-05-01")), "conditions", condition)
    assert make_app().cards(OS, request) == []


@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_hpp_that_is_suspected_gives_a_warning_that_says_so(verification):
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "190859005"}]},
        "verificationStatus": {"coding": [{"code": verification}]},
        "subject": {"reference": "Patient/p1"},
    }
    request = add_to_prefetch(os_request(patient(), alp(80, "2026-05-01")), "conditions", condition)
    (card,) = make_app().cards(OS, request)
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Specialist review before alendronate: suspected hypophosphatasia")


def test_hpp_with_a_weaker_agent_is_a_warning_not_a_fracture_claim():
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"text": "Hypophosphatasia"},
        "subject": {"reference": "Patient/p1"},
    }
    raloxifene = {**alendronate("draft"), "medicationCodeableConcept": {"text": "raloxifene 60 mg"}}
    request = add_to_prefetch(os_request(patient(), alp(80, "2026-05-01"), order=raloxifene), "conditions", condition)
    (card,) = make_app().cards(OS, request)
    assert card["indicator"] == "warning" and "atypical fractures" not in card["summary"]


@pytest.mark.parametrize(
    "reference",
    [
        "https://other-hospital.example/fhir/Patient/p1",  # p1 of another server
        "https://fhir.example.org/r4/Group/g/Patient/p1",
        "Observation/x/Patient/p1",
        "../Patient/p1",
        "Patient/p1/_history/2/extra",
    ],
)
def test_references_that_do_not_name_this_patient_on_this_server(reference):
    assert patient_in_reference(reference, "https://fhir.example.org/r4") is None


def test_a_reference_on_the_requests_own_server_names_the_patient():
    assert patient_in_reference("https://FHIR.example.org:443/r4/Patient/p1", "https://fhir.example.org/r4/") == "p1"


def test_subject_wins_over_patient():
    observation = alp(
        12, "2026-05-20", subject={"identifier": {"value": "someone-else"}}, patient={"reference": "Patient/p1"}
    )
    request = add_to_prefetch(pv_request(patient()), "alp", observation)
    assert make_app().cards(PV, request) == []


def test_another_patients_resource_with_the_same_id_does_not_hide_this_patients():
    own = alp(20, "2026-05-20")
    foreign = {**own, "subject": {"reference": "Patient/p2"}, "valueQuantity": {"value": 90, "unit": "U/L"}}
    request = pv_request(patient(), alp(22, "2026-03-01"))
    request["prefetch"]["alp"]["entry"][:0] = [{"resource": foreign}, {"resource": own}]
    (card,) = make_app().cards(PV, request)
    assert card["summary"].startswith("Persistently low ALP (2 results")


@pytest.mark.parametrize(
    "patient_value",
    [
        bundle(patient("p2"), patient()),
        bundle(patient(), patient(deceasedBoolean=True)),
        {"resourceType": "Practitioner", "id": "p1"},
    ],
)
def test_patient_prefetch_must_be_exactly_this_patient(patient_value):
    request = pv_request(patient(), alp(22, "2026-05-20"))
    request["prefetch"]["patient"] = patient_value
    assert make_app().hook(PV, request).status_code == 400


def test_a_death_date_in_the_future_is_not_a_death():
    request = pv_request(patient(deceasedDateTime="2099-01-01"), alp(22, "2026-05-20"))
    assert len(make_app().cards(PV, request)) == 1


@pytest.mark.parametrize(
    "extra",
    [{"doNotPerform": True}, {"intent": "proposal"}, {"intent": "plan"}],
)
def test_requests_that_order_nothing_are_not_taking_the_drug(extra):
    request = pv_request(patient(), alp(22, "2026-05-20"), alendronate(authoredOn="2025-01-01", **extra))
    assert not [s for s in summaries(make_app().cards(PV, request)) if "on alendronate" in s]


def test_a_statement_starting_in_the_future_is_a_plan_not_a_drug_taken():
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms-future",
        "status": "active",
        "medicationCodeableConcept": {"text": "alendronate 70 mg"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2027-01-01"},
    }
    request = pv_request(patient(), alp(22, "2026-05-20"), statement)
    assert not [s for s in summaries(make_app().cards(PV, request)) if "on alendronate" in s]


def test_a_request_whose_validity_period_ended_is_not_current():
    old = alendronate(authoredOn="2018-01-01", dispenseRequest={"validityPeriod": {"end": "2019-01-01"}})
    request = pv_request(patient(), alp(22, "2026-05-20"), old)
    assert not [s for s in summaries(make_app().cards(PV, request)) if "on alendronate" in s]


@pytest.mark.parametrize("status", [None, "unknown", "active"])
def test_a_selected_draft_is_checked_whatever_status_the_ehr_sent(status):
    order = alendronate("draft")
    if status is None:
        order.pop("status")
    else:
        order["status"] = status
    (card,) = make_app().cards(OS, os_request(patient(), alp(22, "2026-05-01"), order=order))
    assert card["summary"].startswith("Repeat the ALP before starting alendronate")


def test_a_draft_referring_to_its_medication_by_urn_uuid():
    order = {**alendronate("draft"), "medicationReference": {"reference": "urn:uuid:med-1"}}
    order.pop("medicationCodeableConcept")
    request = os_request(patient(), alp(22, "2026-05-01"), order=order)
    request["context"]["draftOrders"]["entry"].append(
        {"fullUrl": "urn:uuid:med-1", "resource": {"resourceType": "Medication", "code": {"text": "Prolia 60 mg"}}}
    )
    (card,) = make_app().cards(OS, request)
    assert "denosumab" in card["summary"]


@pytest.mark.parametrize("system", ["urn:oid:2.16.840.1.113883.6.88", "http://www.nlm.nih.gov/research/umls/rxnorm/"])
def test_rxnorm_written_as_its_oid_or_with_a_trailing_slash(system):
    order = {**alendronate("draft"), "medicationCodeableConcept": {"coding": [{"system": system, "code": "904431"}]}}
    (card,) = make_app().cards(OS, os_request(patient(), alp(22, "2026-05-01"), order=order))
    assert card["summary"].startswith("Repeat the ALP before starting alendronate")


@responses.activate
def test_an_unreadable_medication_of_the_selected_order_is_a_412():
    base = "https://fhir.example.org/r4"
    order = {**alendronate("draft"), "medicationReference": {"reference": "Medication/m1"}}
    order.pop("medicationCodeableConcept")
    request = os_request(patient(), alp(22, "2026-05-01"), order=order)
    request["fhirServer"] = base
    responses.get(f"{base}/Medication/m1", status=503)
    response = make_app().hook(OS, request)
    assert response.status_code == 412
    assert "could not be read" in response.get_json()["issue"][0]["diagnostics"]


def test_ucum_annotations_are_not_part_of_the_unit():
    assert read_one(lab("6768-6", 30, "U/L{37Cel}", "2026-05-01")).value == 30


def test_a_unit_code_and_unit_text_that_disagree_are_named():
    observation = alp(30, "2026-05-01")
    observation["valueQuantity"] = {"value": 30, "code": "U/L", "unit": "ukat/L"}
    assert read_one(observation).problem == "the unit code and the unit text disagree"


def test_alp_below_2_labelled_u_per_l_is_the_ukat_signature():
    assert read_one(alp(1.4, "2026-05-01")).problem.startswith("outside the possible range")


def test_the_date_shown_is_the_labs_own_date():
    result = read_one(alp(30, "2026-05-20T20:30:00-07:00"))
    assert result.when.date().isoformat() == "2026-05-20"


def test_the_last_alp_before_treatment_must_be_from_the_year_before_it():
    request = pv_request(patient(), alp(20, "1998-01-01"), alp(28, "2026-05-01"), alendronate(authoredOn="2020-01-10"))
    card = _antiresorptive_card(make_app().cards(PV, request))
    assert "before treatment" not in card["summary"]
    assert "no ALP from the year before 2020-01-10 is on record" in " ".join(card["detail"].split())


def test_an_earlier_antiresorptive_is_named_among_the_drugs_that_lower_alp():
    request = pv_request(patient(), alp(28, "2026-05-01"), alendronate("completed", authoredOn="2021-03-01"))
    (card,) = make_app().cards(PV, request)
    assert "alendronate (earlier antiresorptive, last recorded 2021-03-01, 5 years ago)" in card["detail"]


def test_order_select_gives_nothing_for_a_deceased_patient():
    request = os_request(patient(deceasedBoolean=True), alp(22, "2026-05-01"))
    assert make_app().cards(OS, request) == []


def test_a_huge_value_string_is_not_parsed():
    """40,000 digits and a comma once made the value pattern backtrack for minutes (a worker killed per call)."""
    result = read_one(alp(None, "2026-05-01", valueString="1" * 40_000 + ","))
    assert result.value is None and result.problem == "the value is text that does not read as a number"
    assert len(result.raw_text) <= 40


@pytest.mark.parametrize(
    ("code", "unit", "birth", "low", "high"),
    [
        ("3016-3", "m[IU]/L", "2014-01-01", 0.5, 4.3),  # TSH, 12 years (Mayo STSH)
        ("3016-3", "m[IU]/L", "2022-01-01", 0.7, 6.0),  # TSH, 4 years
        ("3024-7", "ng/dL", "2014-01-01", 1.0, 1.6),  # free T4, 12 years (Mayo FRT4)
        ("2064-4", "mg/dL", "2021-01-01", 21.7, 43.3),  # ceruloplasmin, 5 years (Mayo CERS, 12 months-7 years)
        ("2064-4", "mg/dL", "2018-01-01", 20.5, 40.2),  # ceruloplasmin, 8 years (8-13 years)
    ],
)
def test_paediatric_fallback_limits(code, unit, birth, low, high):
    result = read_one(lab(code, 1.0, unit, "2026-06-01"), birth=birth)
    assert (result.low, result.high) == (low, high)

"""Antiresorptives with low ALP: the value set, patient-view review and the order-select check."""

from __future__ import annotations

import copy
import csv
from importlib import resources

import pytest

from service.clinical.medications import match_medication
from service.fhir.readers import read_medications
from tests.conftest import OS, PV, load_request

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"


@pytest.mark.parametrize("code", ["904419", "904420", "1114085", "1737449", "993452", "46041", "77655", "993449"])
def test_synthea_and_ingredient_rxnorm_codes_are_strong(code):
    match = match_medication([(RXNORM, code)], [])
    assert match.tier == "strong" and match.groups & {"bisphosphonate", "denosumab"} and match.matched_by == "code"


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("M05BA04", "bisphosphonate"),
        ("M05BA08", "bisphosphonate"),
        ("M05BB03", "bisphosphonate"),
        ("M05BX04", "denosumab"),
    ],
)
def test_atc_prefixes(code, group):
    assert group in match_medication([(ATC, code)], []).groups


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        ("Actonel 35 mg weekly", "strong"),
        ("Prolia injection", "strong"),
        ("ZOLEDRONIC ACID 5 mg", "strong"),
        ("Evenity", "informational"),
        ("raloxifene 60 mg", "informational"),
        ("Calcitonin nasal spray", "informational"),
    ],
)
def test_text_fallback(text, tier):
    match = match_medication([(RXNORM, "999999999")], [text])
    assert match.tier == tier and match.matched_by == "text"


@pytest.mark.parametrize("text", ["teriparatide 20 mcg", "abaloparatide", "atorvastatin 10 mg"])
def test_anabolics_and_other_drugs_are_not_antiresorptive(text):
    groups = match_medication([], [text]).groups
    assert not groups & {"bisphosphonate", "denosumab", "romosozumab", "raloxifene", "calcitonin"}


def _statement(status, **extra):
    return {"resourceType": "MedicationStatement", "id": "m", "status": status, **extra}


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        ("active", "current"),
        ("intended", "current"),
        ("on-hold", "current"),
        ("stopped", "history"),
        ("completed", "history"),
        ("entered-in-error", None),
        ("cancelled", None),
    ],
)
def test_medication_status_meaning(status, meaning):
    resource = _statement(
        status, medicationCodeableConcept={"text": "alendronate 70 mg"}, effectivePeriod={"start": "2025-01-01"}
    )
    meds = read_medications([resource])
    assert [m.status for m in meds] == ([meaning] if meaning else [])


def test_medication_reference_resolved_from_contained_prefetch_or_server():
    contained = _statement(
        "active",
        medicationReference={"reference": "#med"},
        contained=[
            {"resourceType": "Medication", "id": "med", "code": {"coding": [{"system": RXNORM, "code": "993452"}]}}
        ],
    )
    assert read_medications([contained])[0].groups == {"denosumab"}
    request = {
        "resourceType": "MedicationRequest",
        "id": "r",
        "status": "active",
        "authoredOn": "2026-01-02",
        "medicationReference": {"reference": "Medication/x"},
    }
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": request},
            {
                "resource": {
                    "resourceType": "Medication",
                    "id": "x",
                    "code": {"coding": [{"system": ATC, "code": "M05BA04"}]},
                }
            },
        ],
    }
    med = read_medications([bundle])[0]
    assert med.groups == {"bisphosphonate"} and med.start.date().isoformat() == "2026-01-02"
    fetched = read_medications(
        [request], resolve=lambda ref: {"resourceType": "Medication", "code": {"text": "Fosamax 70 mg"}}
    )
    assert fetched[0].groups == {"bisphosphonate"}


def test_patient_view_low_alp_on_alendronate_says_low_before_the_drug(client):
    cards = client.cards(PV, load_request("antiresorptive-current-in"))
    card = next(c for c in cards if "alendronate" in c["summary"])
    assert card["indicator"] == "warning"
    assert "ALP low before alendronate and still low" in card["summary"]
    assert (
        "the ALP was already low before treatment** (27 U/L on 2025-01-15), so the drug does not explain it"
        in " ".join(card["detail"].split())
    )
    assert "(first recorded 2025-06-01)" in " ".join(card["detail"].split())
    assert {r["code"] for r in card["overrideReasons"]} == {"hpp-excluded", "benefit-outweighs-risk", "workup-planned"}
    # the HPP workup is suggested once, on the low-ALP card, not repeated on this one
    all_codes = [
        a["resource"]["code"]["coding"][0]["code"]
        for c in cards
        for s in c.get("suggestions", [])
        for a in s["actions"]
    ]
    assert all_codes.count("62236-5") == 1


def test_patient_view_drug_explains_low_alp_when_no_earlier_low(client):
    body = load_request("antiresorptive-current-in")
    entries = body["prefetch"]["alp"]["entry"]
    body["prefetch"]["alp"]["entry"] = [e for e in entries if e["resource"]["effectiveDateTime"] > "2025-06-01"]
    card = next(c for c in client.cards(PV, body) if "alendronate" in c["summary"])
    assert "a single low on alendronate is most often the drug itself" in " ".join(card["detail"].split())
    assert "before" not in card["summary"] and card["indicator"] == "info"


def test_patient_view_normal_alp_on_alendronate_is_quiet(client):
    assert client.cards(PV, load_request("antiresorptive-current-out")) == []


def test_order_select_low_alp_warns_with_delete_and_workup(client):
    body = load_request("order-low-alp-in")
    (card,) = client.cards(OS, body)
    assert card["indicator"] == "warning"
    assert card["summary"] == ("Send PLP and urine PEA before starting denosumab: ALP low (23 U/L on 2026-04-05)")
    assert "| 2026-01-05 | 24 | 35 |" in card["detail"]
    delete = card["suggestions"][0]["actions"][0]
    assert delete == {
        "type": "delete",
        "description": "Remove the draft antiresorptive order",
        "resourceId": "MedicationRequest/draft-denosumab",
    }
    creates = [a["resource"]["code"]["coding"][0]["code"] for s in card["suggestions"][1:] for a in s["actions"]]
    assert creates == ["62236-5", "28604-7", "69548-6"]
    assert card["selectionBehavior"] == "any"
    assert {r["display"] for r in card["overrideReasons"]} >= {"HPP already excluded", "Workup will be done"}


def test_order_select_only_selected_orders_count(client):
    body = load_request("order-low-alp-in")
    body["context"]["selections"] = ["MedicationRequest/draft-statin"]
    assert client.cards(OS, body) == []


def test_order_select_text_only_order_and_weak_tier(client):
    body = load_request("order-low-alp-in")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationCodeableConcept"] = {"text": "Evista 60 mg daily"}
    (card,) = client.cards(OS, body)
    assert card["indicator"] == "info" and "raloxifene" in card["summary"]


def test_order_select_normal_alp_is_quiet(client):
    assert client.cards(OS, load_request("order-normal-alp-out")) == []


def test_order_select_documented_hpp_is_critical(client):
    (card,) = client.cards(OS, load_request("order-hpp-in"))
    assert card["indicator"] == "critical"
    assert "documented hypophosphatasia" in card["summary"]
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/draft-alendronate"


def test_order_select_without_any_alp_suggests_a_baseline(client):
    (card,) = client.cards(OS, load_request("order-no-alp-in"))
    assert card["indicator"] == "info"
    assert card["summary"] == "Measure ALP before starting risedronate: none on record"
    (suggestion,) = card["suggestions"]
    assert suggestion["actions"][0]["resource"]["code"]["coding"][0]["code"] == "6768-6"


def test_order_select_sandbox_shape(client):
    """The CDS Hooks Sandbox sends a MedicationRequest in draftOrders and selections ["MedicationRequest/<id>"]."""
    body = load_request("order-low-alp-in")
    assert body["context"]["selections"] == ["MedicationRequest/draft-denosumab"]
    assert body["context"]["draftOrders"]["resourceType"] == "Bundle"
    body = copy.deepcopy(body)
    body["context"]["draftOrders"]["entry"].reverse()
    assert len(client.cards(OS, body)) == 1


# ------------------------------------------------------------------ products by code alone (published RxNorm lists)


def _product_table():
    import csv
    from importlib import resources

    text = resources.files("service.clinical").joinpath("data", "rxnorm_antiresorptives.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


STRONG = {"alendronate", "risedronate", "ibandronate", "zoledronic acid", "pamidronate", "etidronate", "clodronate"}
STRONG |= {"tiludronate", "denosumab"}
WEAKER = {"romosozumab", "raloxifene", "bazedoxifene", "calcitonin"}


@pytest.mark.parametrize(
    ("code", "ingredient", "tier"),
    [
        ("904431", "alendronate", "strong"),  # alendronic acid 70 MG Oral Tablet (SCD)
        ("904433", "alendronate", "strong"),  # alendronic acid 70 MG Oral Tablet [Fosamax] (SBD)
        ("904495", "alendronate", "strong"),  # ... cholecalciferol 2800 UNT Oral Tablet [Fosamax Plus D]
        ("114265", "alendronate", "strong"),  # Fosamax (BN)
        ("993456", "denosumab", "strong"),  # 1 ML denosumab 60 MG/ML Prefilled Syringe [Prolia]
        ("1046402", "denosumab", "strong"),  # Xgeva
        ("1490065", "raloxifene", "informational"),
        ("2123190", "romosozumab", "informational"),  # Evenity
        ("1441392", "bazedoxifene", "informational"),  # Duavee's generic
        ("42682", "etidronate", "strong"),
        ("73056", "risedronate", "strong"),
        ("115264", "ibandronate", "strong"),
        ("11473", "pamidronate", "strong"),
    ],
)
def test_products_match_by_code_alone(code, ingredient, tier):
    match = match_medication([(RXNORM, code)], [])
    assert (match.ingredient, match.tier, match.matched_by) == (ingredient, tier, "code")


def test_a_sample_of_every_ingredients_codes_matches_by_code_alone():
    """Every ingredient of the table, up to five of its codes spread over the list (ingredients, products, packs,
    brands), recognised with no text at all and named by ingredient."""
    by_ingredient: dict[str, list[dict[str, str]]] = {}
    for row in _product_table():
        by_ingredient.setdefault(row["ingredient"], []).append(row)
    assert set(by_ingredient) == STRONG | WEAKER
    for ingredient, rows in by_ingredient.items():
        sample = rows[:: max(1, len(rows) // 5)][:5]
        for row in sample:
            match = match_medication([(RXNORM, row["rxcui"])], [])
            assert match.ingredient == ingredient, row
            assert match.tier == ("strong" if ingredient in STRONG else "informational"), row
    assert sum(len(rows) for rows in by_ingredient.values()) >= 200


def test_every_product_code_names_its_sources():
    text = resources.files("service.clinical").joinpath("data", "sources.csv").read_text()
    known = {r["key"] for r in csv.DictReader(text.splitlines())}  # data/sources.csv, each with its version
    assert {"VSAC-PIM", "PHIN-BrandNames", "OHDSI-ODTP", "EMA-RxNorm-map", "CDS-Sandbox"} <= known
    for row in _product_table():
        assert row["sources"] and set(row["sources"].split(";")) <= known, row


@pytest.mark.parametrize("code", ["32915", "1164244", "1921069", "1921073", "2418", "1649574", "1151126"])
def test_anabolics_vitamin_d_and_bare_dose_forms_are_not_antiresorptives(code):
    groups = match_medication([(RXNORM, code)], []).groups
    assert not groups & {"bisphosphonate", "denosumab", "romosozumab", "raloxifene", "calcitonin"}
    assert groups <= {"teriparatide"}  # teriparatide is read, as an anabolic (it raises ALP), never an antiresorptive


@pytest.mark.parametrize(
    ("code", "ingredient"),
    [
        ("M05BA04", "alendronate"),
        ("M05BB03", "alendronate"),
        ("M05BA08", "zoledronic acid"),
        ("M05BX06", "romosozumab"),
    ],
)
def test_exact_atc_codes_name_the_ingredient(code, ingredient):
    assert match_medication([(ATC, code)], []).ingredient == ingredient


def test_an_order_coded_only_as_alendronic_acid_70_mg_gets_the_card(client):
    body = load_request("order-low-alp-in")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "904431"}]}  # no display, no text
    (card,) = client.cards(OS, body)
    assert card["indicator"] == "warning" and card["summary"].startswith(
        "Send PLP and urine PEA before starting alendronate"
    )


SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.mark.parametrize(
    ("coding", "documented"),
    [
        ({"system": SNOMED, "code": "190859005"}, True),
        ({"system": SNOMED, "code": "20756002"}, True),
        ({"system": SNOMED, "code": "30174008"}, True),
        ({"system": SNOMED, "code": "55236002"}, True),
        ({"system": SNOMED, "code": "708672004"}, True),
        ({"system": SNOMED, "code": "360792001"}, False),  # deficiency of ALP: broader than HPP
        ({"system": ICD10CM, "code": "E83.39"}, False),  # other disorders of phosphorus metabolism
        ({"system": ICD10CM, "code": "E83.39", "display": "Hypophosphatasia"}, True),
    ],
)
def test_documented_hpp_by_code(client, coding, documented):
    body = load_request("order-hpp-in")
    condition = body["prefetch"]["conditions"]["entry"][0]["resource"]
    condition["code"] = {"coding": [coding]}
    (card,) = client.cards(OS, body)
    assert (card["indicator"] == "critical") == documented


# ------------------------------------------------------------------ order-sign: every draft about to be signed


def test_order_sign_checks_every_draft_without_selections(client):
    from tests.conftest import SIGN

    body = load_request("sign-low-alp-in")
    assert "selections" not in body["context"]
    (card,) = client.cards(SIGN, body)
    assert card["summary"] == "Send PLP and urine PEA before starting alendronate: ALP low (23 U/L on 2026-04-05)"
    assert card["suggestions"][0]["actions"][0] == {
        "type": "delete",
        "description": "Remove the draft antiresorptive order",
        "resourceId": "MedicationRequest/draft-alendronate",
    }
    assert client.cards(SIGN, load_request("sign-normal-alp-out")) == []


def test_order_sign_and_order_select_give_the_same_card_for_the_same_order(client):
    from tests.conftest import SIGN

    select = load_request("order-low-alp-in")
    sign = copy.deepcopy(select)
    sign["hook"] = "order-sign"
    del sign["context"]["selections"]
    sign["context"]["draftOrders"]["entry"] = [
        e for e in sign["context"]["draftOrders"]["entry"] if e["resource"]["id"] == "draft-denosumab"
    ]
    (by_select,) = client.cards(OS, select)
    (by_sign,) = client.cards(SIGN, sign)
    assert by_sign["summary"] == by_select["summary"] and by_sign["detail"] == by_select["detail"]


def test_order_sign_with_two_antiresorptives_names_both(client):
    from tests.conftest import SIGN

    body = load_request("sign-low-alp-in")
    second = copy.deepcopy(body["context"]["draftOrders"]["entry"][0])
    second["resource"]["id"] = "draft-prolia"
    second["resource"]["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "993456"}]}
    body["context"]["draftOrders"]["entry"].append(second)
    (card,) = client.cards(SIGN, body)
    assert "alendronate, denosumab" in card["summary"]
    deletes = [a["resourceId"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert deletes == ["MedicationRequest/draft-alendronate", "MedicationRequest/draft-prolia"]


def test_order_sign_context_is_validated(client):
    from tests.conftest import SIGN

    body = load_request("sign-low-alp-in")
    del body["context"]["draftOrders"]
    response = client.hook(SIGN, body)
    assert response.status_code == 400 and "draftOrders" in response.get_json()["issue"][0]["diagnostics"]

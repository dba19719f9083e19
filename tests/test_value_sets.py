"""Issue 26: the value sets built from published expansions, the Sandbox's own medication list recognised by code
alone, every code a rule reads traced to a value set with a versioned source, and the FHIR ValueSet endpoints."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from service.app import create_app
from service.clinical import value_sets
from service.clinical.codes import (
    RXNORM,
    analytes,
    condition_entries,
    context_observations,
    medication_entries,
    pregnancy_answers,
)
from service.clinical.medications import ANTIRESORPTIVE_GROUPS, match_medication
from tests.conftest import NOW, OS, PV, load_request

DATA = Path(__file__).resolve().parent.parent / "service" / "clinical" / "data"
SANDBOX = Path(__file__).resolve().parent / "data" / "sandbox_medications.csv"
SERMS = {"raloxifene", "bazedoxifene"}
STRONG = {"alendronate", "risedronate", "ibandronate", "zoledronic acid", "pamidronate", "etidronate"}
STRONG |= {"clodronate", "tiludronate", "denosumab"}


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


def sandbox_products() -> list[dict[str, str]]:
    """The products the CDS Hooks Sandbox's Rx View offers (prescribable), cut to the antiresorptive, romosozumab and
    SERM ingredients by scripts/build_value_sets.py from cds-hooks/sandbox@3b7e2554 src/assets/medication-list.js."""
    return [r for r in _rows(SANDBOX) if r["prescribable"] == "yes"]


def test_the_sandbox_list_is_the_one_counted_in_the_issue():
    products = sandbox_products()
    assert len(products) == 38  # issue 26: "28 of the 38 antiresorptive-like products the Sandbox offers"
    assert {r["ingredient"] for r in products} == STRONG - {"zoledronic acid", "pamidronate", "denosumab"} | SERMS


@pytest.mark.parametrize("product", sandbox_products(), ids=lambda r: r["rxcui"])
def test_every_sandbox_product_is_recognised_by_code_alone(product):
    match = match_medication([(RXNORM, product["rxcui"])], [])
    assert match.matched_by == "code" and match.ingredient == product["ingredient"], product
    assert match.groups & set(ANTIRESORPTIVE_GROUPS)
    assert match.tier == ("informational" if product["ingredient"] in SERMS else "strong")


@pytest.mark.parametrize("product", sandbox_products(), ids=lambda r: r["rxcui"])
def test_every_sandbox_product_ordered_as_the_sandbox_sends_it_gets_its_card(client, product):
    """The Sandbox's draft MedicationRequest names its drug by code, display and text; here by code alone (no
    display, no text), so the card can come only from the code. A SERM gets its information card, the others the
    warning."""
    body = load_request("order-low-alp-in")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": product["rxcui"]}]}
    body["context"]["selections"] = [f"MedicationRequest/{order['id']}"]
    cards = client.cards(OS, body)
    assert len(cards) == 1, product
    assert cards[0]["indicator"] == ("info" if product["ingredient"] in SERMS else "warning"), product
    assert product["ingredient"] in cards[0]["summary"]


def test_the_products_the_issue_found_missed_are_now_recognised():
    # branded Fosamax 35 and 5 mg, Actonel 75 mg, ibandronate 2.5 mg, Didronel, clodronate, tiludronate, Duavee
    for code in ["904399", "904427", "905086", "904936", "904549", "199711", "199712", "905008", "905011", "1441740"]:
        assert match_medication([(RXNORM, code)], []).matched_by == "code", code
        assert match_medication([(RXNORM, code)], []).groups, code


# ------------------------------------------------------------------------------- denosumab biosimilars, romosozumab

PROLIA_TYPE = ["Jubbonti", "Ospomyv", "Obodence", "Stoboclo", "Conexxence", "Bildyos", "Bosaya", "Enoby"]
PROLIA_TYPE += ["Osvyrti", "Boncresa", "Izamby"]
XGEVA_TYPE = ["Wyost", "Xbryk", "Osenvelt", "Bomyntra", "Bilprevda", "Aukelso", "Xtrenbo", "Jubereq", "Oziltus"]
XGEVA_TYPE += ["Denbrayce"]


@pytest.mark.parametrize("brand", PROLIA_TYPE)
def test_prolia_type_biosimilars_are_denosumab_by_name(brand):
    match = match_medication([(RXNORM, "999999999")], [f"{brand} 60 mg/mL prefilled syringe"])
    assert match.groups == {"denosumab"} and match.matched_by == "text" and match.tier == "strong"


@pytest.mark.parametrize("brand", XGEVA_TYPE)
def test_xgeva_type_biosimilars_are_the_oncology_product_like_xgeva(brand):
    match = match_medication([], [f"{brand} 120 mg/1.7 mL"])
    assert match.groups == {"denosumab", "denosumab_oncology"} == match_medication([], ["Xgeva"]).groups


def test_xgeva_codes_are_oncology_and_prolia_codes_are_not():
    for code in ["1046398", "1046399", "1046402"]:
        assert "denosumab_oncology" in match_medication([(RXNORM, code)], []).groups
    for code in ["993452", "993456", "993453", "993449"]:
        groups = match_medication([(RXNORM, code)], []).groups
        assert "denosumab" in groups and "denosumab_oncology" not in groups


def test_romosozumab_is_recognised_but_not_an_antiresorptive(client):
    for coding, text in [((RXNORM, "2123190"), []), ((RXNORM, "999999999"), ["Evenity 105 mg"])]:
        match = match_medication([coding], text)
        assert match.groups == {"romosozumab"} and not match.groups & set(ANTIRESORPTIVE_GROUPS)
    body = load_request("order-low-alp-in")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": "2123190"}]}
    body["context"]["selections"] = [f"MedicationRequest/{order['id']}"]
    assert client.cards(OS, body) == []  # mainly bone-forming: no antiresorptive card (issue 26)


# ------------------------------------------------- every code a rule reads: in a served value set, with a source


def _served() -> set[tuple[str, str, str]]:
    return {(m.system, m.code.lower(), m.match) for d in value_sets.definitions() for m in d.members}


def _read_by_rules() -> list[tuple[str, str, str]]:
    read = [(e.system, e.code.lower(), e.match) for e in medication_entries()]
    read += [(e.system, e.code.lower(), e.match) for e in condition_entries()]
    read += [("http://loinc.org", code.lower(), "code") for code in analytes()]
    read += [("http://loinc.org", code.lower(), "code") for code in context_observations()]
    read += [(system, code.lower(), "code") for system, code in pregnancy_answers()]
    return read


def test_every_code_a_rule_reads_is_in_a_served_value_set():
    served = _served()
    # condition codes are read normalised (ICD-10-CM without its dot): compare on the table's own form
    served |= {(s, c.replace(".", "").lower(), m) for s, c, m in served}
    missing = [r for r in _read_by_rules() if r not in served]
    assert not missing, missing[:10]
    assert len(_read_by_rules()) > 600


def test_every_code_names_a_source_with_a_version():
    registry = {r["key"]: r for r in _rows(DATA / "sources.csv")}
    assert all(r["version"].strip() and r["location"].strip() for r in registry.values())
    provenance = {(r["system"], r["code"]): r for r in _rows(DATA / "provenance.csv")}
    for row in _rows(DATA / "provenance.csv"):
        assert row["source"] in registry, row
    for system, code, match in _read_by_rules():
        if match != "code":
            continue
        found = [k for k in provenance if k[0] == system and k[1].lower() == code]
        assert found, (system, code)
    for row in _rows(DATA / "rxnorm_antiresorptives.csv"):
        assert row["sources"] and set(row["sources"].split(";")) <= set(registry), row


def test_text_matches_name_their_sources():
    """A text fragment is no code, but the rows that match by text still cite where the name comes from; the
    biosimilars cite the FDA or press pages of sources.csv."""
    registry = {r["key"] for r in _rows(DATA / "sources.csv")}
    for row in _rows(DATA / "medications.csv"):
        assert row["source"].strip(), row
        if "biosimilar" in row["display"]:
            cited = set(re.findall(r"[A-Za-z][A-Za-z0-9-]+", row["source"]))
            assert cited & registry, row


def test_the_fragments_of_the_biosimilars_match_no_other_drug_of_the_sandbox_list():
    names = [r["name"].lower() for r in _rows(SANDBOX)]
    for brand in PROLIA_TYPE + XGEVA_TYPE:
        assert not [n for n in names if brand.lower() in n], brand


# ------------------------------------------------------------------------------------------- served as FHIR


@pytest.fixture
def public_app(tmp_path):
    return create_app(
        {
            "NOW": lambda: NOW,
            "LOG_LEVEL": "WARNING",
            "AUTH": "off",
            "PUBLIC_BASE_URL": "https://cds.example.org",
            "FEEDBACK_DB_URL": f"sqlite:///{tmp_path}/feedback.db",
        }
    )


def test_value_set_bundle_and_reads(public_app):
    client = public_app.test_client()
    bundle = client.get("/fhir/ValueSet")
    assert bundle.status_code == 200 and bundle.mimetype == "application/fhir+json"
    body = bundle.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    assert body["total"] == len(body["entry"]) == len(value_sets.definitions())
    for entry in body["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == resource["url"] == f"https://cds.example.org/fhir/ValueSet/{resource['id']}"
        for key in ("url", "version", "name", "title", "status", "compose", "expansion"):
            assert resource[key], (resource["id"], key)
        concepts = [c for i in resource["compose"]["include"] for c in i.get("concept", [])]
        assert resource["expansion"]["total"] == len(resource["expansion"].get("contains", [])) == len(concepts)
        assert all(c["extension"][0]["valueString"] for c in concepts), resource["id"]
        read = client.get(f"/fhir/ValueSet/{resource['id']}")
        assert read.status_code == 200 and read.get_json() == resource


def test_value_set_alendronate_holds_the_sandbox_codes_with_their_source(public_app):
    resource = public_app.test_client().get("/fhir/ValueSet/alendronate").get_json()
    concepts = {c["code"]: c for i in resource["compose"]["include"] for c in i.get("concept", [])}
    assert "CDS-Sandbox" in concepts["904399"]["extension"][0]["valueString"]
    assert "VSAC 2.16.840.1.113762.1.4.1078.783" in concepts["904431"]["extension"][0]["valueString"]
    assert "'fosamax'" in resource["description"]


def test_value_set_search_parameters(public_app):
    client = public_app.test_client()
    assert client.get("/fhir/ValueSet?_id=denosumab").get_json()["total"] == 1
    url = "https://cds.example.org/fhir/ValueSet/romosozumab"
    assert client.get(f"/fhir/ValueSet?url={url}").get_json()["entry"][0]["resource"]["id"] == "romosozumab"
    summary = client.get("/fhir/ValueSet?_summary=true").get_json()
    assert all("compose" not in e["resource"] for e in summary["entry"])


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fhir/ValueSet/no-such-set", 404),
        ("/fhir/ValueSet/..%2f..%2fetc", 404),
        ("/fhir/ValueSet/" + "a" * 200, 404),
        ("/fhir/ValueSet?color=blue", 400),
        ("/fhir/ValueSet?_summary=maybe", 400),
        ("/fhir/ValueSet/alendronate?_summary=count", 400),
    ],
)
def test_bad_value_set_requests_are_clear_4xx(public_app, path, status):
    response = public_app.test_client().get(path)
    assert response.status_code == status
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]


def test_value_sets_are_read_only(public_app):
    assert public_app.test_client().post("/fhir/ValueSet", json={}).status_code == 405
    assert public_app.test_client().delete("/fhir/ValueSet/alendronate").status_code == 405


def test_discovery_names_the_value_sets_each_service_reads(client):
    services = {s["id"]: s for s in client.client.get("/cds-services").get_json()["services"]}
    for service_id in (PV, OS, "antiresorptive-low-alp-sign"):
        description = services[service_id]["description"]
        assert "/fhir/ValueSet/{id}" in description
        for value_set_id in value_sets.for_hook(services[service_id]["hook"]):
            assert value_set_id in description
    assert "romosozumab" not in value_sets.for_hook("order-select")


def test_the_integrator_page_links_every_value_set(client):
    page = client.client.get("/").get_data(as_text=True)
    assert 'href="fhir/ValueSet"' in page
    for definition in value_sets.definitions():
        assert f'href="fhir/ValueSet/{definition.id}"' in page

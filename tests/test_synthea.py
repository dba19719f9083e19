"""100 Synthea R4 patients the project did not write, through the real FHIR server, checked against what the data says.

The data: ``tests/data/synthea-r4.tar.xz``, a copy of ``shared/data/synthea-r4`` (smart-on-fhir/generated-sample-data,
Apache 2.0; README and LICENSE inside the archive). Every Bundle is loaded into sekmet-fhir; each patient is then
called without prefetch (the service searches the server) and with a prefetch built from the Bundle, at a fixed
clock and at a clock just after the patient's last ALP, and the cards are compared with expectations derived here
from the raw JSON by a deliberately separate, simple reading of the data:

- a deceased patient gets no card at all, on either hook;
- a low-ALP card comes exactly when the latest ALP is below the adult CALIPER limit (40 U/L men, 35 women; every
  Synthea ALP is from an adult) and no older than 365 days; it is "persistent" when two or more trailing lows span
  at least 28 days; its summary names the latest value;
- an active alendronate order of a living patient with such a low gives the antiresorptive card;
- order-select with a draft alendronate (living patients): no ALP -> "measure ALP ... none on record"; latest older
  than 365 days -> "none in the last 12 months" (saying it was low when it was); current and low -> the low-ALP
  warning; current and normal -> quiet;
- another patient's resources mixed into a prefetch change nothing.
"""

from __future__ import annotations

import copy
import json
import re
import tarfile
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from service import loader
from service.hook_requests import fhir_authorization, hook_request, without_uuids
from tests.conftest import FHIR_TOKEN, OS, PV, ROOT, make_app

ARCHIVE = ROOT / "tests" / "data" / "synthea-r4.tar.xz"
SHARED = ROOT.parent / "shared" / "data" / "synthea-r4"
FIXED_NOW = datetime(2021, 3, 1, 12, tzinfo=UTC)
WINDOW = timedelta(days=365)
ALENDRONATE_CODES = {"904419", "904420"}
DRAFT = {
    "resourceType": "MedicationRequest",
    "id": "draft-alendronate",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "904419"}],
        "text": "Alendronic acid 10 MG Oral Tablet",
    },
}


@pytest.fixture(scope="module")
def synthea_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("synthea")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(target, filter="data")
    return target / "synthea-r4"


@cache
def _bundles(directory: str) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))}


@pytest.fixture(scope="module")
def bundles(synthea_dir) -> dict[str, dict[str, Any]]:
    return _bundles(str(synthea_dir))


def without_dangling_references(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle without the top-level references to resources it does not hold: the archive keeps Synthea's
    ``encounter`` and ``requester`` references, but not the Encounters and Practitioners (no rule reads them), and
    HAPI, as its image runs by default, refuses a reference to a resource it does not have (HAPI-1094,
    ``enforce_referential_integrity_on_write``). Loading stays a plain transaction of the rest, unchanged."""
    held = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    bundle = copy.deepcopy(bundle)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        for name, value in list(resource.items()):
            if isinstance(value, dict) and isinstance(value.get("reference"), str) and value["reference"] not in held:
                del resource[name]
    return bundle


@pytest.fixture(scope="module")
def synthea_server(fhir_server, bundles, tmp_path_factory):
    loadable = tmp_path_factory.mktemp("synthea-loadable")
    for pid, bundle in bundles.items():
        (loadable / f"{pid}.json").write_text(json.dumps(without_dangling_references(bundle)))
    report = loader.load_fixtures(fhir_server.base, FHIR_TOKEN, str(loadable))
    assert len(report) == 100
    fhir_server.analyze()
    return fhir_server.base


# ------------------------------------------------------------------------------------------ the separate reading


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _alp_series(bundle: dict[str, Any]) -> list[tuple[datetime, float]]:
    return sorted(
        (datetime.fromisoformat(o["effectiveDateTime"]), o["valueQuantity"]["value"])
        for o in _resources(bundle, "Observation")
        if any(c["code"] == "6768-6" for c in o["code"]["coding"])
    )


def expected(bundle: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What the data says at ``now`` (results dated after ``now`` do not exist yet)."""
    (person,) = _resources(bundle, "Patient")
    limit = 35 if person["gender"] == "female" else 40
    series = [(when, value) for when, value in _alp_series(bundle) if when <= now]
    trailing: list[tuple[datetime, float]] = []
    for when, value in reversed(series):
        if value >= limit:
            break
        trailing.insert(0, (when, value))
    current_low = bool(trailing) and trailing[-1][0] >= now - WINDOW
    latest = series[-1] if series else None
    orders = [
        r
        for r in _resources(bundle, "MedicationRequest")
        if {c["code"] for c in r["medicationCodeableConcept"]["coding"]} & ALENDRONATE_CODES
        and datetime.fromisoformat(r["authoredOn"]) <= now + timedelta(days=1)  # a later order is not yet written
    ]
    alendronate = any(r["status"] == "active" for r in orders)
    # an order of the same drug that is active, or written within the last year, makes a new one a continuation
    course = any(r["status"] == "active" or datetime.fromisoformat(r["authoredOn"]) >= now - WINDOW for r in orders)
    death = person.get("deceasedDateTime")
    # A death dated after "now" has not happened yet at that clock (and a real chart cannot hold one).
    deceased = person.get("deceasedBoolean") is True or (
        death is not None and datetime.fromisoformat(death) <= now + timedelta(days=1)
    )
    return {
        "deceased": deceased,
        "ckd": _severe_ckd(bundle, person, now),
        "fracture": _recent_fracture(bundle, person, now),
        "latest": latest,
        "latest_current": bool(latest) and latest[0] >= now - WINDOW,
        "latest_low": bool(latest) and latest[1] < limit,
        "low_card": current_low and not deceased,
        "persistent": current_low and len(trailing) >= 2 and (trailing[-1][0] - trailing[0][0]).days >= 28,
        "antiresorptive_card": current_low and alendronate and not deceased,
        "verb": "continuing" if course and not deceased else "starting",
    }


# Fragility fractures in this data: osteoporotic at any adult age; hip, wrist and forearm from 50 (the service's
# reading of fragility-fracture definitions); clavicle, rib and ankle never.
FRAGILITY = {"443165006": 19, "359817006": 50, "263102004": 50, "65966004": 50}


def _age(person: dict[str, Any], when: datetime) -> int:
    born = datetime.fromisoformat(person["birthDate"]).date()
    day = when.date()
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _recent_fracture(bundle: dict[str, Any], person: dict[str, Any], now: datetime) -> bool:
    """A fragility fracture with an onset in the 52 weeks up to ``now``."""
    for condition in _resources(bundle, "Condition"):
        least = FRAGILITY.get(condition["code"]["coding"][0]["code"])
        onset = datetime.fromisoformat(condition["onsetDateTime"])
        if least is not None and now - timedelta(weeks=52) <= onset <= now and _age(person, onset) >= least:
            return True
    return False


def _severe_ckd(bundle: dict[str, Any], person: dict[str, Any], now: datetime) -> bool:
    """eGFR below 30 from the latest eGFR or serum creatinine of the last 90 days (whichever is later; a creatinine
    alone by the CKD-EPI 2021 equation, Inker 2021), as the service reads kidney function."""
    recent = [
        (datetime.fromisoformat(o["effectiveDateTime"]), o["code"]["coding"][0]["code"], o["valueQuantity"]["value"])
        for o in _resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] in ("33914-3", "38483-4", "2160-0") and "valueQuantity" in o
    ]
    recent = [r for r in recent if now - timedelta(days=90) <= r[0] <= now + timedelta(days=1)]
    egfrs = sorted(r for r in recent if r[1] == "33914-3")
    creatinines = sorted(r for r in recent if r[1] != "33914-3")
    if creatinines and (not egfrs or creatinines[-1][0] > egfrs[-1][0]):
        when, _, value = creatinines[-1]
        age, female = _age(person, when), person["gender"] == "female"
        kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
        egfr = 142 * min(value / kappa, 1) ** alpha * max(value / kappa, 1) ** -1.2 * 0.9938**age
        return egfr * (1.012 if female else 1) < 30
    return bool(egfrs) and egfrs[-1][2] < 30


def _value_text(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def check_patient_view(cards: list[dict[str, Any]], want: dict[str, Any]) -> None:
    summaries = [c["summary"] for c in cards]
    if want["deceased"]:
        assert cards == []
        return
    # One card per problem: with alendronate current, the low ALP and the drug are one card (the drug's).
    on_drug = [s for s in summaries if "alendronate" in s]
    assert bool(on_drug) == want["antiresorptive_card"], summaries
    low = [s for s in summaries if re.match(r"(Repeat the ALP when the patient is well|Persistently low ALP)", s)]
    assert bool(low) == (want["low_card"] and not want["antiresorptive_card"]), summaries
    if low:
        (summary,) = low
        assert summary.startswith("Persistently low ALP" if want["persistent"] else "Repeat the ALP")
        assert f"{_value_text(want['latest'][1])} U/L" in summary
    if want["low_card"]:
        (card,) = [c for c in cards if c["summary"] in low + on_drug]
        assert f"{_value_text(want['latest'][1])} U/L" in card["summary"]
        if not want["antiresorptive_card"]:  # the drug's card carries the kidney line, not the fracture line
            assert ("**Recent fracture:**" in card["detail"]) == want["fracture"], card["detail"]
        assert ("**Kidney function:**" in card["detail"]) == want["ckd"], card["detail"]
    assert not [s for s in summaries if "EDTA" in s or "Wilson" in s], summaries  # no such pattern in this data


def check_order_select(cards: list[dict[str, Any]], want: dict[str, Any]) -> None:
    summaries = [c["summary"] for c in cards]
    if want["deceased"]:
        assert cards == []
    elif want["latest"] is None:
        assert summaries == [f"Measure ALP before {want['verb']} alendronate: none on record"]
    elif not want["latest_current"]:
        (summary,) = summaries
        assert summary.startswith(f"Measure ALP before {want['verb']} alendronate: none in the last 12 months")
        assert ("(last one low," in summary) == want["latest_low"]
    elif want["latest_low"]:
        (summary,) = summaries
        if want["ckd"]:  # the label's renal limit comes first
            assert summary.startswith("Alendronate not recommended: CKD 4-5"), summary
        else:
            # a persistent low (or one before treatment) asks for the substrates first, a single low for a repeat
            assert summary.startswith(
                (
                    f"Send PLP and urine PEA before {want['verb']} alendronate: ALP low",
                    f"Repeat the ALP before {want['verb']} alendronate: one low",
                )
            ), summary
        assert ("**Kidney function:**" in cards[0]["detail"]) == want["ckd"], cards[0]["detail"]
    else:
        assert summaries == []


def order_request(bundle: dict[str, Any], pid: str) -> dict[str, Any]:
    draft = {**DRAFT, "subject": {"reference": f"Patient/{pid}"}}
    drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
    return hook_request(OS, bundle, pid, draft_orders=drafts, selections=["MedicationRequest/draft-alendronate"])


def without_prefetch(request: dict[str, Any], server: str) -> dict[str, Any]:
    request = copy.deepcopy(request)
    request.pop("prefetch")
    request["fhirServer"] = server
    request["fhirAuthorization"] = fhir_authorization(FHIR_TOKEN)
    return request


# ------------------------------------------------------------------------------------------ the tests


def test_the_archive_is_the_shared_data(bundles):
    if not SHARED.is_dir():
        pytest.skip("shared/data/synthea-r4 is not beside this checkout")
    assert bundles == _bundles(str(SHARED))


def test_the_data_has_what_the_rules_meet(bundles):
    wants = [expected(b, FIXED_NOW) for b in bundles.values()]
    assert sum(w["deceased"] for w in wants) == 40
    assert sum(w["latest"] is not None for w in wants) == 66
    assert sum(w["low_card"] for w in wants) >= 1  # the fixed clock still reaches a few current lows
    potassium = [
        o["valueQuantity"]["value"]
        for b in bundles.values()
        for o in _resources(b, "Observation")
        if o["code"]["coding"][0]["code"] in ("6298-4", "2823-3")
    ]
    assert potassium and max(potassium) < 6.0  # so no EDTA pattern is expected anywhere


def test_every_patient_through_the_fhir_server_and_the_prefetch_at_a_fixed_clock(bundles, synthea_server):
    client = make_app(NOW=lambda: FIXED_NOW)
    seen = {"low": 0, "history": 0, "deceased": 0}
    for pid, bundle in bundles.items():
        want = expected(bundle, FIXED_NOW)
        for service, request, check in (
            (PV, hook_request(PV, bundle, pid), check_patient_view),
            (OS, order_request(bundle, pid), check_order_select),
        ):
            with_prefetch = client.cards(service, request)
            check(with_prefetch, want)
            fetched = client.cards(service, without_prefetch(request, synthea_server))
            assert without_uuids(fetched) == without_uuids(with_prefetch), pid
        seen["low"] += want["low_card"]
        seen["history"] += bool(want["latest"]) and not want["latest_current"]
        seen["deceased"] += want["deceased"]
    assert seen["low"] and seen["history"] and seen["deceased"]


def test_the_order_a_server_gives_the_results_of_one_draw_in_changes_no_card(bundles):
    """HAPI FHIR returns results of the same time (one draw) in an order of its own (the cards once listed the
    results not interpreted in that order, unlike the prefetch's): every search's entries reversed, ties included,
    give the same cards."""
    client = make_app(NOW=lambda: FIXED_NOW)
    for pid, bundle in bundles.items():
        for service, request in ((PV, hook_request(PV, bundle, pid)), (OS, order_request(bundle, pid))):
            reordered = copy.deepcopy(request)
            for value in reordered["prefetch"].values():
                if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                    value["entry"].reverse()
            assert without_uuids(client.cards(service, reordered)) == without_uuids(client.cards(service, request)), pid


def _after_last(bundle: dict[str, Any]) -> datetime:
    series = _alp_series(bundle)
    return series[-1][0] + timedelta(days=30) if series else FIXED_NOW


def test_every_patient_at_the_time_of_each_alp(bundles):
    """Clocks a day after each ALP of a living patient (the last one of a deceased patient) make each of those
    results the current one, so the rules meet every pattern the data holds (later results are then dated in the
    future and set aside)."""
    counted = {"low_card": 0, "persistent": 0, "antiresorptive_card": 0, "deceased": 0, "ckd_low": 0, "fracture_low": 0}
    for pid, bundle in bundles.items():
        series = _alp_series(bundle)
        if expected(bundle, FIXED_NOW)["deceased"]:
            series = series[-1:]
        clocks = [when + timedelta(days=1) for when, _ in series] or [FIXED_NOW]
        for now in clocks:
            client = make_app(NOW=lambda now=now: now)
            want = expected(bundle, now)
            check_patient_view(client.cards(PV, hook_request(PV, bundle, pid)), want)
            check_order_select(client.cards(OS, order_request(bundle, pid)), want)
            for key in ("low_card", "persistent", "antiresorptive_card", "deceased"):
                counted[key] += want[key]
            counted["ckd_low"] += want["low_card"] and want["ckd"]
            counted["fracture_low"] += want["low_card"] and want["fracture"]
    # (most of the 40 deaths come after the last ALP, so at that clock the patient is still alive)
    assert counted["low_card"] >= 5 and counted["persistent"] >= 1 and counted["deceased"] >= 20
    # the chart around the labs, as this data holds it: severe CKD and recent fragility fractures beside a low ALP
    assert counted["ckd_low"] >= 1 and counted["fracture_low"] >= 1, counted


def test_another_patients_resources_in_the_prefetch_change_nothing(bundles):
    """Mix every resource of another patient whose latest ALP is low into each patient's prefetch, at a clock that
    makes that low current: had it been read, it would have given a card."""
    intruders = [pid for pid, b in bundles.items() if _alp_series(b) and expected(b, _after_last(b))["low_card"]]
    assert len(intruders) >= 3
    pids = list(bundles)
    for number, pid in enumerate(pids):
        other = intruders[number % len(intruders)]
        if other == pid:
            continue
        now = _after_last(bundles[other])
        client = make_app(NOW=lambda now=now: now)
        clean = hook_request(PV, bundles[pid], pid)
        mixed = copy.deepcopy(clean)
        intruder = hook_request(PV, bundles[other], other)
        for key in ("alp", "labs", "medicationRequests"):
            mixed["prefetch"][key]["entry"].extend(intruder["prefetch"][key]["entry"])
        assert without_uuids(client.cards(PV, mixed)) == without_uuids(client.cards(PV, clean)), (pid, other)

"""No shape of FHIR data switches the cards off (issue 27, point 1).

Every value of every ready request in ``fixtures/requests/``, of requests built from the Synthea patients
(``tests/data/synthea-r4.tar.xz``, with ``service.hook_requests``) and of requests that carry every element the
readers read (:func:`rich_requests`: outcomes in search Bundles, contained and included Medications, components,
text values, names, Conditions, draft orders naming their drug by reference...) is replaced, one at a time, with
each JSON type: a string, a number, a boolean, null, a list and an object. No hook call may answer 500 (a malformed
element is skipped, or the request refused with a 4xx), and the SMART page reads the same data (its readers, the
chart's series and the chart's specification) without an error.

Cost: each value path is swept once per type (the fixtures' paths are deduplicated per hook across fixtures; the
Synthea patients' paths with list positions ignored, each taken from the smallest request that holds it).
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import sys
import tarfile
from collections.abc import Iterator
from functools import cache
from typing import Any

import orjson
import pytest

from service import outbound
from service.errors import CdsError
from service.fhir.client import FhirClient
from service.fhir.prefetch import fill_template
from service.hook_requests import hook_request
from service.hooks.low_alp_workup import SERVICE as PATIENT_VIEW
from service.smart import views
from tests.conftest import FIXTURES, PV, ROOT, SERVICE_OF_HOOK, SIGN, make_app

ARCHIVE = ROOT / "tests" / "data" / "synthea-r4.tar.xz"
TYPES: dict[str, Any] = {
    "string": "x",
    "number": 1,
    "boolean": True,
    "null": None,
    "list": ["x"],
    "object": {"x": "x"},
}
Path = tuple[str | int, ...]


def value_paths(document: Any, path: Path = ()) -> Iterator[Path]:
    """The path of every value in a JSON document, containers included (the root excepted)."""
    if path:
        yield path
    if isinstance(document, dict):
        for key, value in document.items():
            yield from value_paths(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from value_paths(value, (*path, index))


def generalised(path: Path) -> Path:
    return tuple("*" if isinstance(step, int) else step for step in path)


def replaced(document: Any, path: Path, value: Any) -> bytes:
    """``document`` as JSON bytes with the value at ``path`` replaced (the document itself is left as it was)."""
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    old = parent[path[-1]]
    parent[path[-1]] = value
    try:
        return orjson.dumps(document)
    finally:
        parent[path[-1]] = old


# ------------------------------------------------------------------------------------------------------ the seeds


def fixture_requests() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted((FIXTURES / "requests").glob("*.json"))]


def _entry(resource: dict[str, Any], mode: str = "match", full_url: str | None = None) -> dict[str, Any]:
    kind, ident = resource["resourceType"], resource["id"]
    return {"fullUrl": full_url or f"{kind}/{ident}", "resource": resource, "search": {"mode": mode}}


def rich_requests() -> list[tuple[str, dict[str, Any]]]:
    """Requests that carry every element the readers read, in the shapes a FHIR server sends them."""
    low = json.loads((FIXTURES / "requests" / "persistent-low-in.json").read_text())
    patient_id = low["context"]["patientId"]
    subject = {"reference": f"Patient/{patient_id}"}
    prefetch = low["prefetch"]
    prefetch["patient"].update(
        {
            "name": [
                {"use": "usual", "given": ["Pat"], "family": "Usual"},
                {"use": "official", "text": "Pat Official", "given": ["Pat"], "family": "Official"},
            ],
            "deceasedBoolean": False,
        }
    )
    alp = prefetch["alp"]
    first = alp["entry"][0]["resource"]
    first["interpretation"] = [{"coding": [{"system": "x", "code": "L"}]}]
    alp["entry"] += [
        _entry(
            {
                "resourceType": "Observation",
                "id": "rich-text",
                "status": "preliminary",
                "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}], "text": "ALP"},
                "subject": {"reference": "urn:uuid:rich-patient"},
                "effectivePeriod": {"start": "2026-05-01T08:00:00+02:00", "end": "2026-05-01"},
                "issued": "2026-05-02T10:00:00Z",
                "valueString": "<20 U/L",
                "referenceRange": [{"low": {"value": 35, "unit": "U/L"}, "high": {"value": 104, "code": "U/L"}}],
            }
        ),
        _entry(
            {
                "resourceType": "Observation",
                "id": "rich-absent",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "6768-6"}]},
                "subject": {"reference": f"https://ehr.example/fhir/Patient/{patient_id}/_history/2"},
                "effectiveInstant": "2026-04-20T10:00:00Z",
                "dataAbsentReason": {"text": "lost", "coding": [{"code": "error", "display": "Error"}]},
            }
        ),
        _entry({"resourceType": "Patient", "id": patient_id}, "include", "urn:uuid:rich-patient"),
        _entry(
            {
                "resourceType": "OperationOutcome",
                "id": "rich-outcome",
                "issue": [{"severity": "warning", "code": "informational", "diagnostics": "note"}],
            },
            "outcome",
        ),
    ]
    alp["entry"][-1]["response"] = {"status": "200 OK"}
    alp["link"] = [{"relation": "self", "url": "https://ehr.example/fhir/Observation?patient=x"}]
    labs = prefetch["labs"]
    labs["entry"].append(
        _entry(
            {
                "resourceType": "Observation",
                "id": "rich-panel",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
                "subject": subject,
                "effectiveDateTime": "2026-03-15",
                "component": [
                    {
                        "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.1", "code": "2823-3"}]},
                        "valueQuantity": {"value": 5.9, "unit": "mmol/L", "code": "mmol/L", "comparator": ">"},
                        "interpretation": [{"coding": [{"code": "H"}]}],
                    },
                    {
                        "code": {"coding": [{"system": "http://loinc.org", "code": "17861-6"}]},
                        "valueInteger": 2,
                        "referenceRange": [{"low": {"value": 2.1, "unit": "mmol/L"}}],
                    },
                ],
            }
        )
    )
    labs["total"] = len(labs["entry"])
    medication = {
        "resourceType": "Medication",
        "id": "rich-alendronate",
        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "904419"}]},
    }
    prefetch["medicationRequests"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "entry": [
            _entry(
                {
                    "resourceType": "MedicationRequest",
                    "id": "rich-contained",
                    "status": "active",
                    "intent": "order",
                    "doNotPerform": False,
                    "subject": subject,
                    "authoredOn": "2025-06-01",
                    "dispenseRequest": {"validityPeriod": {"start": "2025-06-01", "end": "2027-06-01"}},
                    "contained": [{"resourceType": "Medication", "id": "m", "code": {"text": "denosumab"}}],
                    "medicationReference": {"reference": "#m"},
                }
            ),
            _entry(
                {
                    "resourceType": "MedicationRequest",
                    "id": "rich-referenced",
                    "status": "completed",
                    "intent": "plan",
                    "subject": subject,
                    "authoredOn": "2024-01-01",
                    "medicationReference": {"reference": "Medication/rich-alendronate", "display": "alendronate"},
                }
            ),
            _entry(medication, "include"),
        ],
    }
    prefetch["medicationStatements"]["entry"] += [
        _entry(
            {
                "resourceType": "MedicationStatement",
                "id": "rich-statement",
                "status": "active",
                "subject": subject,
                "effectivePeriod": {"start": "2025-01-01", "end": "2026-12-31"},
                "effectiveDateTime": "2025-01-01",
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.whocc.no/atc", "code": "M05BA04", "display": "alendronic acid"}],
                    "text": "Alendronate 70 mg",
                },
            }
        ),
        _entry(
            {
                "resourceType": "MedicationDispense",
                "id": "rich-dispense",
                "status": "completed",
                "subject": subject,
                "whenHandedOver": "2025-02-01",
                "whenPrepared": "2025-01-30",
                "medicationCodeableConcept": {"text": "zoledronic acid"},
            }
        ),
    ]
    prefetch["medicationStatements"]["total"] = len(prefetch["medicationStatements"]["entry"])

    order = json.loads((FIXTURES / "requests" / "order-hpp-in.json").read_text())
    order_id = order["context"]["patientId"]
    order["prefetch"]["patient"]["name"] = [{"use": "official", "family": "Order", "given": ["Pat"]}]
    drafts = order["context"]["draftOrders"]
    drafts["entry"] += [
        {
            "fullUrl": "urn:uuid:rich-draft",
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "rich-draft",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{order_id}"},
                "medicationReference": {"reference": "urn:uuid:rich-med", "display": "ibandronate"},
            },
        },
        {
            "fullUrl": "urn:uuid:rich-med",
            "resource": {
                "resourceType": "Medication",
                "id": "rich-med",
                "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "M05BA06"}], "text": "ibandronate"},
            },
        },
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "rich-draft-contained",
                "status": "draft",
                "intent": "order",
                "contained": [{"resourceType": "Medication", "id": "c", "code": {"text": "risedronate"}}],
                "medicationReference": {"reference": "#c"},
            },
        },
    ]
    order["context"]["selections"] += ["MedicationRequest/rich-draft", "MedicationRequest/rich-draft-contained"]
    order["prefetch"]["conditions"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [
            _entry(
                {
                    "resourceType": "Condition",
                    "id": "rich-condition",
                    "subject": {"reference": f"Patient/{order_id}"},
                    "verificationStatus": {"coding": [{"code": "confirmed"}]},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35722009"}], "text": "HPP"},
                }
            ),
            _entry(
                {
                    "resourceType": "OperationOutcome",
                    "id": "rich-outcome",
                    "issue": [{"severity": "information", "code": "incomplete"}],
                },
                "outcome",
            ),
        ],
    }
    sign = copy.deepcopy(order)
    sign["hook"] = "order-sign"
    del sign["context"]["selections"]
    return [("rich-patient-view", low), ("rich-order-select", order), ("rich-order-sign", sign)]


@cache
def synthea_requests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """For each Synthea patient, a patient-view request and an order-sign request with a draft alendronate."""
    found = []
    with tarfile.open(ARCHIVE) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if not member.name.endswith(".json") or not member.isfile():
                continue
            bundle = json.load(archive.extractfile(member))
            patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
            found.append((f"synthea-{patient}-pv", hook_request(PV, bundle, patient)))
            draft = {
                "resourceType": "MedicationRequest",
                "id": "draft-alendronate",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{patient}"},
                "medicationCodeableConcept": {
                    "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "904419"}]
                },
            }
            drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
            found.append((f"synthea-{patient}-sign", hook_request(SIGN, bundle, patient, draft_orders=drafts)))
    return tuple(found)


def sweep_plan() -> list[tuple[str, dict[str, Any], Path]]:
    """(seed name, request, path): each path of the fixtures and rich requests once per hook, each Synthea path
    (list positions ignored) once per hook, from the smallest request that holds it."""
    plan: list[tuple[str, dict[str, Any], Path]] = []
    seen: set[Path] = set()
    for name, request in [*fixture_requests(), *rich_requests()]:
        for path in value_paths(request):
            if (request["hook"], *path) not in seen:
                seen.add((request["hook"], *path))
                plan.append((name, request, path))
    smallest: dict[Path, tuple[int, str, dict[str, Any], Path]] = {}
    for name, request in synthea_requests():
        size = len(orjson.dumps(request))
        for path in value_paths(request):
            key = (request["hook"], *generalised(path))
            if key in seen:
                continue
            if key not in smallest or size < smallest[key][0]:
                smallest[key] = (size, name, request, path)
    plan.extend((name, request, path) for _, name, request, path in smallest.values())
    return plan


# ------------------------------------------------------------------------------------------------------ the sweep


@pytest.fixture(scope="module")
def quiet():
    logging.disable(logging.WARNING)  # thousands of refused calls: their log lines are not the test
    yield
    logging.disable(logging.NOTSET)


def test_no_json_type_anywhere_in_a_request_gives_a_500(quiet):
    client = make_app().client
    plan = sweep_plan()
    assert len(plan) > 1000  # the fixtures alone hold about 700 distinct paths
    failures = []
    statuses: dict[int, int] = {}
    for name, request, path in plan:
        service = SERVICE_OF_HOOK[request["hook"]]
        for type_name, value in TYPES.items():
            body = replaced(request, path, value)
            response = client.post(f"/cds-services/{service}", data=body, content_type="application/json")
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{name} {'.'.join(map(str, path))} = {type_name}: {response.status_code}")
    assert not failures, f"{len(failures)} calls answered 5xx, e.g.:\n" + "\n".join(failures[:20])
    assert statuses.get(200, 0) > len(plan)  # most mutations leave a request the service answers


EXTREME_DATES = ("0001-01-01", "0001-01-01T00:00:00+14:00", "9999-12-31", "9999-12-31T23:59:59-12:00")
DATE_TEXT = __import__("re").compile(r"^\d{4}(-\d\d(-\d\d(T.*)?)?)?$")


def test_no_date_at_the_ends_of_the_calendar_gives_a_500(quiet):
    """Every date of the sweep's requests (a birth, a result, a medication's start or end, a diagnosis's onset, a due
    date...) at year 1 or year 9999: the rules reckon months and years from dates, and year 1 minus a year cannot be
    held. A date that cannot be reckoned with is read as no date, never a 500."""
    client = make_app().client
    failures, dates = [], 0
    for name, request, path in sweep_plan():
        parent = request
        for step in path:
            parent = parent[step]
        if not (isinstance(parent, str) and DATE_TEXT.match(parent)):
            continue
        dates += 1
        service = SERVICE_OF_HOOK[request["hook"]]
        for value in EXTREME_DATES:
            response = client.post(
                f"/cds-services/{service}", data=replaced(request, path, value), content_type="application/json"
            )
            if response.status_code >= 500:
                failures.append(f"{name} {'.'.join(map(str, path))} = {value}: {response.status_code}")
    assert dates > 50
    assert not failures, f"{len(failures)} calls answered 5xx, e.g.:\n" + "\n".join(failures[:20])


def test_the_smart_page_reads_any_json_type_anywhere(quiet, monkeypatch):
    """The SMART page reads the chart from the EHR's FHIR server with the hooks' client and readers, then builds its
    series: with the server answering each search with the patient-view prefetch of a fixture or rich request, each
    value replaced with each type, the page's data is read without an error (a :class:`CdsError` is the page's
    502, an answer; anything else would be a 500). The SVG is not drawn: it is made from the series, not the data."""
    config = make_app().app.config["CDS"]
    base = "https://ehr.example/fhir/"
    answers: dict[str, bytes] = {}

    def send(client: FhirClient, url: str) -> outbound.Answer:
        body = answers.get(url)
        return outbound.Answer(200 if body is not None else 404, {}, body or b"{}")

    monkeypatch.setattr(FhirClient, "_send", send)
    monkeypatch.setattr(views, "render_svg", lambda series: "")
    failures = []
    seen: set[Path] = set()
    for name, request in [*fixture_requests(), *rich_requests()]:
        if request["hook"] != "patient-view":
            continue
        context = request["context"]
        urls = {key: base + fill_template(t, context) for key, t in PATIENT_VIEW.prefetch.items()}
        for path in value_paths(request["prefetch"]):
            if path in seen:
                continue
            seen.add(path)
            for type_name, value in TYPES.items():
                prefetch = orjson.loads(replaced(request["prefetch"], path, value))
                answers.clear()
                answers.update({url: orjson.dumps(prefetch.get(key)) for key, url in urls.items()})
                try:
                    views.chart_page(base, "token", context["patientId"], config)
                except CdsError:
                    pass
                except Exception as exc:  # any other exception is the page's 500
                    failures.append(f"{name} prefetch.{'.'.join(map(str, path))} = {type_name}: {exc!r}")
    assert len(seen) > 300
    assert not failures, f"{len(failures)} readings failed, e.g.:\n" + "\n".join(failures[:20])


def test_the_sweep_reaches_the_elements_the_issue_names():
    """The three causes found by the outside attack are among the paths swept."""
    paths = {(r["hook"], *generalised(p)) for _, r, p in sweep_plan()}
    assert ("patient-view", "prefetch", "patient", "name", "*", "use") in paths
    assert ("patient-view", "prefetch", "medicationRequests", "entry", "*", "resource", "intent") in paths
    assert ("patient-view", "prefetch", "alp", "entry", "*", "resource", "issue", "*", "severity") in paths
    assert ("order-select", "context", "draftOrders", "entry", "*", "resource", "intent") in paths
    assert {hook for hook, *_ in paths} == {"patient-view", "order-select", "order-sign"}


# ----------------------------------------------------------------------------------------- the one typed path

READING_MODULES = (
    "service/fhir/readers.py",
    "service/fhir/context.py",
    "service/fhir/lazy.py",
    "service/fhir/prefetch.py",
    "service/fhir/answers.py",
    "service/fhir/client.py",
    "service/hooks/patient_chart.py",
    "service/hooks/antiresorptive_order_check.py",
    "service/smart/oauth.py",
    "service/smart/views.py",
)
# What these modules may index by name: the service's own values (the validated hook request, the prefetch keys,
# its cards and settings, a launch it stored, HTTP headers), never FHIR JSON or an EHR's answer.
OWN_VALUES = {
    "call.request", "call.data", "call.context", "data", "request", "context", "request.args", "request.cookies",
    "self.session.headers", "answer.headers", "card", "parts", "body", "merged", "pending", "token", "page",
    "current_app.config", "current_app.extensions", "g", "bp", "self", "outbound", "_discovered",
    "template(kind)", "plausible_ranges()", "thresholds()", "MED_STATUS", "UNICODE_COMPARATORS",
    '{"http": 80, "https": 443}', '{"official": 0, "usual": 1}', "extra",
}  # fmt: skip


def raw_reads(path: str) -> list[str]:
    """``x.get(...)`` calls and ``x["name"]`` reads in a module whose receiver is not one of the service's own
    values."""
    source = (ROOT / path).read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            receiver = node.func.value
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            receiver = node.value
        else:
            continue
        if ast.get_source_segment(source, receiver) not in OWN_VALUES:
            found.append(f"{path}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_fhir_json_is_read_only_through_the_typed_accessors():
    """Every element of FHIR data (and of an EHR's SMART answers) is read with :mod:`service.fhir.elements`, which
    cannot raise on a wrong JSON type: a plain ``resource.get("status") in STATUSES`` would fail on a list."""
    found = [line for path in READING_MODULES for line in raw_reads(path)]
    assert not found, "read these through service.fhir.elements:\n" + "\n".join(found)


def test_the_raw_read_finder_finds_raw_reads(tmp_path, monkeypatch):
    sample = tmp_path / "sample.py"
    sample.write_text('def f(resource, call):\n    return resource.get("intent"), resource["id"], call.data.get("x")\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert raw_reads("sample.py") == [
        'sample.py:2: resource.get("intent")',
        'sample.py:2: resource["id"]',
    ]

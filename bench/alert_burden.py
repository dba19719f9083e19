"""Alert burden (issue 24, point 5): the cards the Synthea patients would get at every visit, chart as it stood.

    python bench/alert_burden.py                       # this checkout's service code
    python bench/alert_burden.py --code ../other-tree  # another checkout's service code (before/after)
    python bench/alert_burden.py --patients 3 --json   # a few patients, the figures as JSON (the smoke test)

By hand, not in CI. Self-contained: it reads only the service package of ``--code`` (put first on ``sys.path``),
its ``create_app`` and ``hook_request``, so it runs against older checkouts too.

The patients: the 100 Synthea R4 Bundles of ``../shared/data/synthea-r4`` (or the byte copy in
``tests/data/synthea-r4.tar.xz``). The archive kept no Encounter resources, only the ``encounter`` references of
the Observations, Conditions and MedicationRequests, so a visit is an Encounter those resources name, and it
starts at the earliest date of its resources; the chart is opened once per visit day (two visits of one day are
one chart open), at the day's last second (UTC, the data's only offset), with the chart as it stood then:

- Observations once both drawn and released (``effective[x]`` and ``issued``), so the day's own results are in;
- medication records by their own date (``authoredOn``; a statement's ``dateAsserted`` or effective start; an
  administration's effective start; a dispense's ``whenHandedOver`` or ``whenPrepared``); their status as exported
  (the data has no stop dates);
- Conditions once recorded (``recordedDate``, else the onset); one abated after that day was still active then
  (its abatement taken off, ``clinicalStatus`` active); Procedures once performed (the data has none);
- a death after that day has not happened yet (``deceasedDateTime`` taken off); visit days after the death are
  not chart opens;
- a resource with no date of its own is on the chart at every open (counted: the Synthea data has none).

Each open is a patient-view call through the Flask test client, the prefetch built from those resources by
``hook_request`` (as the fixtures are), the service's clock (``NOW``) at that second. The card kind is read from the
service itself: the hook endpoint's ``run_hook`` is wrapped for the run, and gives (kind, card). Unless
``--no-order-select``, patients aged 50 or more at the visit also get an order-select call for a draft alendronate
at each visit (another app, so neither hook's figures depend on the other's).

Runs: without the override memory, and, when the code has one (``CDS_OVERRIDE_KEY``, issue 24 point 1), with it on
and a clinician who overrides a warning with the reason "workup planned": ``first``, the first time a card kind is
shown to the patient as a warning (never again), and ``every``, each time it is shown as a warning. The reason is the
card's own ``workup-planned`` when it offers one, else the EHR's own coding; posted as CDS Hooks feedback
(``overridden``, ``overrideReason``, ``outcomeTimestamp`` at the open) as a client would. The memory's reading gets
4 s (``CDS_OVERRIDE_LOOKUP_TIMEOUT``) and each call waits for the readings of the calls before it (``settle``), so
that neither a slow machine nor the replay's pace hides it; every reading that did not answer is counted and printed.

Figures per run: cards per 1,000 calls by card kind and indicator, the calls with two cards or more, the share of
calls with an interruptive card (warning or critical), the patients who get the same interruptive card kind more
than 3 times within 365 days, and the wall time. No patient id is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from bisect import bisect_right
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "synthea-r4"
ARCHIVE = ROOT / "tests" / "data" / "synthea-r4.tar.xz"
PV, OS = "low-alp-workup", "antiresorptive-low-alp"
ALP_LOINC = {"6768-6", "77141-0", "1783-0"}  # total, bone (as bench/fetch.py reads them)
INDICATORS = ("critical", "warning", "info")
INTERRUPTIVE = {"critical", "warning"}
REPEATS, WINDOW = 3, timedelta(days=365)  # "more than 3 times in any 12-month window"
POLICIES = {
    None: "no override memory",
    "first": 'override memory on, each warning overridden ("workup planned") the first time its kind is shown',
    "every": 'override memory on, each warning overridden ("workup planned") every time it is shown',
}
WORKUP_PLANNED = "workup-planned"
EHR_REASON = {"system": "urn:example:ehr-override-reason", "code": WORKUP_PLANNED, "display": "Workup planned"}
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


# ------------------------------------------------------------------------------------------------ the chart by date


def instant(text: Any) -> datetime | None:
    """A FHIR date or dateTime as an aware instant (a date, or a partial one, at its first second); None if none."""
    if not isinstance(text, str) or not text:
        return None
    try:
        if len(text) <= 10:
            parts = [int(p) for p in text.split("-")]
            return datetime(parts[0], *[*parts[1:], 1, 1][:2], tzinfo=UTC)
        found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _start(resource: dict[str, Any], *names: str) -> datetime | None:
    for name in names:
        value = resource.get(name)
        found = instant(value.get("start") if isinstance(value, dict) else value)
        if found:
            return found
    return None


def on_chart_since(resource: dict[str, Any]) -> datetime | None:
    """When the resource came onto the chart (see the module), or None when it has no date of its own."""
    kind = resource.get("resourceType")
    if kind == "Observation":
        drawn = _start(resource, "effectiveDateTime", "effectiveInstant", "effectivePeriod")
        dates = [d for d in (drawn, instant(resource.get("issued"))) if d]
        return max(dates) if dates else None
    names = {
        "Condition": ("recordedDate", "onsetDateTime", "onsetPeriod"),
        "MedicationRequest": ("authoredOn",),
        "MedicationStatement": ("dateAsserted", "effectiveDateTime", "effectivePeriod"),
        "MedicationAdministration": ("effectiveDateTime", "effectivePeriod"),
        "MedicationDispense": ("whenHandedOver", "whenPrepared"),
        "Procedure": ("performedDateTime", "performedPeriod"),
    }.get(kind, ())
    return _start(resource, *names)


def chart_at(resources: list[dict[str, Any]], clock: datetime) -> list[dict[str, Any]]:
    """The resources as they stood at ``clock`` (see the module)."""
    chart = []
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            death = instant(resource.get("deceasedDateTime"))
            if death and death > clock:
                resource = {k: v for k, v in resource.items() if k != "deceasedDateTime"}
        elif (since := on_chart_since(resource)) is not None and since > clock:
            continue
        elif resource.get("resourceType") == "Condition":
            abated = instant(resource.get("abatementDateTime"))
            if abated and abated > clock:
                resource = {k: v for k, v in resource.items() if k != "abatementDateTime"}
                resource["clinicalStatus"] = {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                }
        chart.append(resource)
    return chart


def visit_days(resources: list[dict[str, Any]]) -> list[date]:
    """The days on which a visit (an Encounter the resources name) started."""
    starts: dict[str, datetime] = {}
    for resource in resources:
        reference = (resource.get("encounter") or {}).get("reference")
        since = on_chart_since(resource)
        if reference and since and (reference not in starts or since < starts[reference]):
            starts[reference] = since
    return sorted({start.date() for start in starts.values()})


def age_on(birth: str, day: date) -> int:
    born = date.fromisoformat(birth[:10])
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def load_patients(source: Path, limit: int | None) -> list[list[dict[str, Any]]]:
    """Every patient's resources (the first ``limit`` Bundles by file name)."""
    if source.is_dir():
        paths = sorted(source.glob("*.json"))[:limit]
        return [[e["resource"] for e in json.loads(p.read_text())["entry"]] for p in paths]
    with tarfile.open(source) as archive:
        members = sorted((m for m in archive.getmembers() if m.name.endswith(".json")), key=lambda m: m.name)
        return [[e["resource"] for e in json.load(archive.extractfile(m))["entry"]] for m in members[:limit]]


# ------------------------------------------------------------------------------------------------ the calls


def plan(patients: list[list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every chart open: (patient, clock, chart, age); and what the data is like."""
    opens: list[dict[str, Any]] = []
    data = Counter()
    for resources in patients:
        (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
        death = instant(patient.get("deceasedDateTime"))
        data["undated"] += sum(on_chart_since(r) is None for r in resources if r["resourceType"] != "Patient")
        days = visit_days(resources)
        data["visit days"] += len(days)
        for day in days:
            if death and day > death.date():
                data["visit days after death"] += 1
                continue
            clock = datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC)
            chart = chart_at(resources, clock)
            alp = [
                on_chart_since(r)
                for r in chart
                if r["resourceType"] == "Observation"
                and {c.get("code") for c in r.get("code", {}).get("coding", [])} & ALP_LOINC
            ]
            data["opens with an ALP on the chart"] += bool(alp)
            data["opens with an ALP in the last 365 days"] += any(a and a >= clock - WINDOW for a in alp)
            opens.append(
                {"patient": patient["id"], "clock": clock, "chart": chart, "age": age_on(patient["birthDate"], day)}
            )
        data["patients"] += 1
        data["patients with a chart open"] += bool(opens) and opens[-1]["patient"] == patient["id"]
    data["chart opens"] = len(opens)
    data["order-select calls (aged 50 or more)"] = sum(o["age"] >= 50 for o in opens)
    return opens, dict(data)


class Replay:
    """One app of the checked-out service, its clock set per call; the cards with their kinds (from run_hook)."""

    def __init__(self, memory: bool, workdir: Path) -> None:
        from service.app import create_app

        self.now = datetime.now(UTC)
        settings: dict[str, Any] = {
            "NOW": lambda: self.now,
            "AUTH": "off",
            "LOG_LEVEL": "WARNING",
            "FEEDBACK_DB_URL": f"sqlite:///{workdir}/feedback-{uuid.uuid4().hex}.db",
        }
        if memory:
            settings.update(OVERRIDE_KEY="alert-burden-bench-" + uuid.uuid4().hex, OVERRIDE_LOOKUP_TIMEOUT=4.0)
        self.app = create_app(settings)
        self.client = self.app.test_client()

    def call(self, service_id: str, request: dict[str, Any], clock: datetime) -> list[tuple[str, dict[str, Any]]]:
        import service.endpoints.hooks as endpoint

        self.settle()
        self.now = clock
        seen = []
        plain = endpoint.run_hook

        def kept(*args: Any, **kwargs: Any) -> Any:
            ran = plain(*args, **kwargs)
            seen.append(ran.cards)
            return ran

        endpoint.run_hook = kept
        try:
            response = self.client.post(f"/cds-services/{service_id}", json=request)
        finally:
            endpoint.run_hook = plain
        if response.status_code != 200:
            raise RuntimeError(f"{service_id}: HTTP {response.status_code} {response.get_data(as_text=True)[:300]}")
        (issued,) = seen
        if [card["uuid"] for _, card in issued] != [card["uuid"] for card in response.get_json()["cards"]]:
            raise RuntimeError("the cards answered are not the cards run_hook gave")
        return issued

    def settle(self) -> None:
        """Wait until the override memory's readings of earlier calls have ended. A call without cards does not wait
        for its reading, and a call that finds every reading slot taken is answered without the memory: a replay
        thousands of times faster than a clinician would otherwise measure that, not the memory."""
        memory = self.app.extensions.get("cds_memory")
        if memory is None or not memory.enabled:
            return
        from service.memory import LOOKUP_SLOTS

        for _ in range(LOOKUP_SLOTS):
            memory._slots.acquire()
        for _ in range(LOOKUP_SLOTS):
            memory._slots.release()

    def override(self, service_id: str, card: dict[str, Any], clock: datetime) -> None:
        """The clinician dismisses the card with "workup planned", as an EHR posts it."""
        self.app.extensions["cds_feedback"].flush()  # its audit row written first, as it is in practice
        offered = [r for r in card.get("overrideReasons") or () if r.get("code") == WORKUP_PLANNED]
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": offered[0] if offered else EHR_REASON},
            "outcomeTimestamp": clock.isoformat(),
        }
        response = self.client.post(f"/cds-services/{service_id}/feedback", json={"feedback": [item]})
        if response.status_code != 200:
            raise RuntimeError(f"feedback: HTTP {response.status_code} {response.get_data(as_text=True)[:300]}")


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    """A counter of the service's registry, summed over the labels not given."""
    from service.metrics import REGISTRY

    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
    )


def replay(service_id: str, opens: list[dict[str, Any]], overrides: str | None, workdir: Path) -> dict[str, Any]:
    """Every call of ``opens``; ``overrides``: None (no memory), "first" or "every" (see the module)."""
    from service.hook_requests import hook_request

    started = time.perf_counter()
    lookups = {
        o: metric("cds_override_lookups_total", {"outcome": o}) for o in ("found", "none", "timeout", "error", "busy")
    }
    dropped = metric("cds_issued_cards_dropped_total")
    downgrades = metric("cds_override_downgrades_total")
    app = Replay(overrides is not None, workdir)
    cards: dict[str, Counter] = defaultdict(Counter)
    with_card = several = interruptive = posted = calls = 0
    shown: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    overridden: set[tuple[str, str]] = set()
    for visit in opens:
        patient = visit["patient"]
        bundle = {"entry": [{"resource": r} for r in visit["chart"]]}
        if service_id == PV:
            request = hook_request(PV, bundle, patient)
        else:
            draft = {**DRAFT, "subject": {"reference": f"Patient/{patient}"}}
            drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
            request = hook_request(
                OS, bundle, patient, draft_orders=drafts, selections=[f"MedicationRequest/{DRAFT['id']}"]
            )
        request["hookInstance"] = str(uuid.uuid4())  # one per call, as an EHR sends it
        issued = app.call(service_id, request, visit["clock"])
        calls += 1
        with_card += bool(issued)
        several += len(issued) > 1
        interruptive += any(card["indicator"] in INTERRUPTIVE for _, card in issued)
        for kind, card in issued:
            cards[kind][card["indicator"]] += 1
            if card["indicator"] in INTERRUPTIVE:
                shown[(patient, kind)].append(visit["clock"])
            first = (patient, kind) not in overridden
            if overrides and card["indicator"] == "warning" and (overrides == "every" or first):
                app.override(service_id, card, visit["clock"])
                overridden.add((patient, kind))
                posted += 1
    repeated = {pair for pair, times in shown.items() if more_than(times, REPEATS, WINDOW)}
    return {
        "service": service_id,
        "overrides": overrides,
        "calls": calls,
        "cards": {kind: dict(counts) for kind, counts in sorted(cards.items())},
        "calls with a card": with_card,
        "calls with two cards or more": several,
        "calls with an interruptive card": interruptive,
        "patients given an interruptive card": len({p for p, _ in shown}),
        "patients with the same interruptive kind more than 3 times in 365 days": len({p for p, _ in repeated}),
        "(patient, kind) pairs doing so": len(repeated),
        "overrides posted": posted,
        "warnings shown as information (override memory)": round(metric("cds_override_downgrades_total") - downgrades),
        "memory readings": {
            o: round(metric("cds_override_lookups_total", {"outcome": o}) - before) for o, before in lookups.items()
        },
        "audit rows dropped": round(metric("cds_issued_cards_dropped_total") - dropped),
        "seconds": round(time.perf_counter() - started, 1),
    }


def more_than(times: list[datetime], count: int, window: timedelta) -> bool:
    """More than ``count`` of ``times`` within one ``window`` (a span shorter than it)."""
    times = sorted(times)
    return any(
        bisect_right(times, start + window - timedelta(microseconds=1)) - i > count for i, start in enumerate(times)
    )


# ------------------------------------------------------------------------------------------------ the report


def per_thousand(count: float, calls: int) -> str:
    return f"{1000 * count / calls:.1f}" if calls else "-"


def table(run: dict[str, Any]) -> list[str]:
    calls = run["calls"]
    lines = [
        "| card kind | critical | warning | info | all |",
        "|---|---|---|---|---|",
    ]
    totals: Counter = Counter()
    for kind, counts in run["cards"].items():
        totals.update(counts)
        cells = [per_thousand(counts.get(i, 0), calls) for i in INDICATORS]
        lines.append(f"| {kind} | {' | '.join(cells)} | {per_thousand(sum(counts.values()), calls)} |")
    cells = [per_thousand(totals.get(i, 0), calls) for i in INDICATORS]
    lines.append(f"| **all kinds** | {' | '.join(cells)} | {per_thousand(sum(totals.values()), calls)} |")
    share = 100 * run["calls with an interruptive card"] / calls if calls else 0.0
    lines += [
        "",
        f"- calls: {calls}; with a card: {run['calls with a card']}; with two cards or more: "
        f"{run['calls with two cards or more']}; with an interruptive card (warning or "
        f"critical): {run['calls with an interruptive card']} (**{share:.2f} %**)",
        f"- patients given an interruptive card: {run['patients given an interruptive card']}; who get the same "
        "interruptive card kind more than 3 times within 365 days: "
        f"**{run['patients with the same interruptive kind more than 3 times in 365 days']}** "
        f"({run['(patient, kind) pairs doing so']} patient and kind pairs)",
    ]
    if run["overrides"]:
        readings = ", ".join(f"{o} {n}" for o, n in run["memory readings"].items())
        lines.append(
            f"- overrides posted: {run['overrides posted']}; warnings shown as information: "
            f"{run['warnings shown as information (override memory)']}; memory readings: {readings}; "
            f"audit rows dropped: {run['audit rows dropped']}"
        )
    lines.append(f"- wall time of this run: {run['seconds']} s")
    return lines


def commit_of(code: Path) -> str:
    try:
        found = subprocess.run(
            ["git", "-C", str(code), "log", "-1", "--format=%h %cs %s"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(code), "status", "--porcelain", "--", "service", "cards"], capture_output=True, text=True
    )
    return found.stdout.strip()[:100] + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose service code is measured")
    parser.add_argument("--data", type=Path, help="a folder of Synthea Bundles or the tests' archive")
    parser.add_argument("--patients", type=int, help="only the first N patients (by file name)")
    parser.add_argument("--no-order-select", action="store_true", help="patient-view only")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    code = args.code.resolve()
    sys.path.insert(0, str(code))
    import service

    if not Path(service.__file__).resolve().is_relative_to(code):
        print(f"service imported from {service.__file__}, not from {code}", file=sys.stderr)
        return 2
    from service.settings import Settings

    has_memory = "OVERRIDE_KEY" in Settings.__dataclass_fields__
    source = args.data or (SHARED if SHARED.is_dir() else ARCHIVE)

    started = time.perf_counter()
    opens, data = plan(load_patients(source, args.patients))
    planned = time.perf_counter() - started
    runs = []
    with tempfile.TemporaryDirectory(prefix="alp-burden-") as workdir:
        for service_id in (PV,) if args.no_order_select else (PV, OS):
            calls = opens if service_id == PV else [o for o in opens if o["age"] >= 50]
            for overrides in (None, "first", "every") if has_memory else (None,):
                runs.append(replay(service_id, calls, overrides, Path(workdir)))
    result = {
        "code": {"path": str(code), "commit": commit_of(code), "override memory": has_memory},
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data": {"source": str(source), **data},
        "runs": runs,
        "seconds": {"building the charts": round(planned, 1), "whole": round(time.perf_counter() - started, 1)},
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"code: {result['code']['commit']} ({code})")
    print(f"machine: {result['machine']}; run {result['date']}")
    print("data: " + "; ".join(f"{k}: {v}" for k, v in result["data"].items()))
    if not has_memory:
        print("this code has no override memory (no CDS_OVERRIDE_KEY setting): the run with it is left out")
    for run in runs:
        hook = "patient-view chart opens" if run["service"] == PV else "order-select, draft alendronate, aged 50+"
        memory = POLICIES[run["overrides"]]
        print(f"\n### {hook}: {memory}\n\ncards per 1,000 calls\n")
        print("\n".join(table(run)))
    seconds = result["seconds"]
    print(f"\nwhole replay: {seconds['whole']} s (building the charts {seconds['building the charts']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

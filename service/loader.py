"""Developer commands: load the fixture Bundles into a FHIR server, and call a running service for a loaded patient."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from service.hook_requests import fhir_authorization, hook_request

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ToolError(Exception):
    """A failure to explain to the user in one line (no traceback)."""


def fixtures_dir(given: str | None = None) -> Path:
    candidates = [Path(given)] if given else [Path.cwd() / "fixtures" / "fhir", PACKAGE_ROOT / "fixtures" / "fhir"]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    raise ToolError(f"no fixture Bundles found in {', '.join(str(c) for c in candidates)}")


def _session(token: str | None) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"})
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def wait_for_server(fhir_base: str, seconds: float, token: str | None = None) -> None:
    """Poll ``{fhir_base}/metadata`` until it answers 200 or the time is up."""
    deadline = time.monotonic() + seconds
    session = _session(token)
    while True:
        try:
            if session.get(f"{fhir_base.rstrip('/')}/metadata", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            raise ToolError(f"FHIR server at {fhir_base} did not answer /metadata within {seconds:.0f} s")
        time.sleep(1)


def _diagnostics(response: requests.Response) -> str:
    try:
        body = response.json()
        issues = body.get("issue") or []
        text = "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code")) for i in issues)
        return text or response.text[:300]
    except ValueError:
        return response.text[:300]


def load_fixtures(fhir_base: str, token: str | None = None, directory: str | None = None) -> dict[str, Counter]:
    """POST every transaction Bundle (PUT entries with fixed ids: loading twice changes nothing).

    Returns, per file, how many resources of each type were loaded.
    """
    base = fhir_base.rstrip("/")
    session = _session(token)
    report: dict[str, Counter] = {}
    for path in sorted(fixtures_dir(directory).glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        try:
            response = session.post(base, data=json.dumps(bundle), timeout=60)
        except requests.RequestException as exc:
            raise ToolError(f"cannot reach the FHIR server at {base}: {type(exc).__name__}") from None
        if response.status_code not in (200, 201):
            raise ToolError(f"{base} rejected {path.name}: HTTP {response.status_code}: {_diagnostics(response)}")
        report[path.name] = Counter(e["resource"]["resourceType"] for e in bundle.get("entry", []))
    return report


def call_service(
    service_url: str,
    service_id: str,
    patient_id: str,
    fhir_base: str,
    token: str | None = None,
    draft_orders: dict[str, Any] | None = None,
    selections: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Send a hook request without prefetch, so the service fetches the patient's data from the FHIR server."""
    body = hook_request(
        service_id,
        {},
        patient_id,
        draft_orders=draft_orders,
        selections=selections,
        with_prefetch=False,
        fhir_server=fhir_base.rstrip("/"),
    )
    body["hookInstance"] = str(uuid.uuid4())
    if token:
        body["fhirAuthorization"] = fhir_authorization(token)
    url = f"{service_url.rstrip('/')}/cds-services/{service_id}"
    try:
        response = requests.post(url, json=body, timeout=60)
    except requests.RequestException as exc:
        raise ToolError(f"cannot reach the service at {service_url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ToolError(f"the service answered HTTP {response.status_code}: {_diagnostics(response)}")
    return response.json()["cards"]


def format_cards(cards: list[dict[str, Any]]) -> str:
    if not cards:
        return "No cards."
    lines: list[str] = []
    for number, card in enumerate(cards, 1):
        lines.append(f"[{number}] {card['indicator'].upper()}: {card['summary']}")
        lines.append(f"    source: {card['source']['label']}")
        for suggestion in card.get("suggestions", []):
            mark = "*" if suggestion.get("isRecommended") else "-"
            lines.append(f"    {mark} {suggestion['label']}")
        for reason in card.get("overrideReasons", []):
            lines.append(f"    override: {reason['display']}")
        lines.append("")
    return "\n".join(lines).rstrip()

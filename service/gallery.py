"""The integrator page's content: every card kind, produced from the fixture requests by the real rule code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from service.card_render import card_kinds
from service.hook_requests import NOW
from service.hooks import CdsService
from service.hooks.run import run_hook
from service.settings import Settings

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def requests_dir() -> Path | None:
    for candidate in (Path.cwd() / "fixtures" / "requests", PACKAGE_ROOT / "fixtures" / "requests"):
        if candidate.is_dir():
            return candidate
    return None


def markdown(text: str) -> str:
    """GitHub-flavoured enough for the cards (paragraphs, emphasis, tables); raw HTML in the text is escaped."""
    return _markdown.render(text)


def run(service: CdsService, request: Mapping[str, Any], settings: Settings) -> list[tuple[str, dict]]:
    """One hook call through the real handler, without HTTP and without any FHIR server."""
    return run_hook(service, request, settings, now=NOW).cards


def build(services: Mapping[str, CdsService], settings: Settings) -> dict[str, Any]:
    """Card examples by kind (with the fixture each came from) and one example exchange per service."""
    folder = requests_dir()
    gallery: dict[str, dict[str, Any]] = {}
    exchanges: dict[str, dict[str, Any]] = {}
    if folder is None:
        return {"gallery": [], "exchanges": {}, "missing": card_kinds(), "fixtures_found": False}
    by_hook = {s.hook: s for s in services.values()}
    for path in sorted(folder.glob("*.json")):
        request = json.loads(path.read_text(encoding="utf-8"))
        service = by_hook.get(request.get("hook"))
        if service is None:
            continue
        issued = run(service, request, settings)
        for kind, card in issued:
            entry = gallery.setdefault(kind, {"kind": kind, "card": card, "scenarios": [], "service": service.id})
            entry["scenarios"].append(path.stem)
        if issued and service.id not in exchanges:
            exchanges[service.id] = {
                "scenario": path.stem,
                "request": request,
                "response": {"cards": [card for _, card in issued]},
            }
    ordered = [gallery[k] for k in card_kinds() if k in gallery]
    for entry in ordered:
        entry["detail_html"] = markdown(entry["card"].get("detail", ""))
    return {
        "gallery": ordered,
        "exchanges": exchanges,
        "missing": [k for k in card_kinds() if k not in gallery],
        "fixtures_found": True,
    }

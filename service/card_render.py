"""Findings -> CDS Hooks 2.0 cards, from the templates in the `cards` package (data only)."""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib import resources
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest
from jinja2 import Environment, FunctionLoader, StrictUndefined, meta
from markupsafe import Markup

from service.clinical.codes import LOINC, WorkupTest
from service.clinical.facts import number_text
from service.clinical.rules import Finding
from service.clinical.views import span_text

SUMMARY_MAX = 140
OVERRIDE_SYSTEM = "urn:alp-cds:override-reason"


def _num(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return number_text(value)
    return str(value)


MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]<>!#|~])")


def markdown_text(value: Any) -> Any:
    """Every value printed into a card's markdown detail, made inert: chart text (a medication name, a value the
    lab wrote as text, a unit) can hold markdown, and must not become an image, a link, a heading or a table cell
    there. One line; markdown punctuation escaped (it still reads the same); web addresses not made links.
    Pieces of card markdown built by the templates themselves (the shared macros) are marked safe and pass."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    text = MARKDOWN_ACTIVE.sub(r"\\\1", " ".join(value.split()))
    return text.replace("://", ": //").replace("www.", "www .")


def _environment(finalize=None) -> Environment:
    environment = Environment(
        loader=FunctionLoader(lambda name: resources.files("cards").joinpath(name).read_text(encoding="utf-8")),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        finalize=finalize,
    )
    environment.filters["num"] = _num
    environment.filters["span"] = span_text
    return environment


_summary_env = _environment()  # the summary is plain text: nothing in it is ever rendered as markup
_detail_env = _environment(markdown_text)


def _read(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("cards").joinpath(name).read_text(encoding="utf-8"))


@cache
def sources() -> dict[str, dict[str, str]]:
    return _read("sources.toml")


@cache
def template(kind: str) -> dict[str, Any]:
    data = _read(f"{kind}.toml")
    data["_summary"] = _summary_env.from_string(data["summary"])
    data["_detail"] = _detail_env.from_string(data["detail"])
    data["_summary_note"] = _summary_env.from_string(data.get("summary_note", ""))
    for environment in (_summary_env, _detail_env):  # imported pieces load when first rendered: load them now
        for field in ("summary", "detail", "summary_note"):
            for name in meta.find_referenced_templates(environment.parse(data.get(field, ""))):
                environment.get_template(name)
    return data


def override_reason_displays() -> dict[str, str]:
    """The service's own override reason codes (``urn:alp-cds:override-reason``) and their displays."""
    return {r["code"]: r["display"] for kind in card_kinds() for r in template(kind).get("override_reasons", [])}


def card_kinds() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("cards").iterdir()
        if p.name.endswith(".toml") and p.name != "sources.toml"
    )


@cache
def _service_request(test: WorkupTest) -> dict[str, Any]:
    """A validated R4 ServiceRequest for the test, without subject (filled per patient)."""
    body: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"coding": [{"system": LOINC, "code": test.loinc, "display": test.display}], "text": test.display},
        "subject": {"reference": "Patient/placeholder"},
    }
    if test.note:
        body["note"] = [{"text": test.note}]
    return ServiceRequest.model_validate(body).model_dump(mode="json", exclude_none=True)


def service_request(test: WorkupTest, patient_id: str) -> dict[str, Any]:
    """A shallow copy: the nested parts are shared between responses, which only ever serialise them."""
    return {**_service_request(test), "subject": {"reference": f"Patient/{patient_id}"}}


def summary_text(summary: str, note: str = "") -> str:
    """One line of at most ``SUMMARY_MAX`` characters. ``note`` (a template's ``summary_note``, such as "; diagnoses
    not read", written with its own separator) always stays whole at the end: the summary before it is shortened to
    make room."""
    summary, note = " ".join(summary.split()), " ".join(note.split())
    room = SUMMARY_MAX - len(note)
    if len(summary) > room:
        summary = summary[: room - 1].rstrip() + "…"
    return summary + note


@dataclass(frozen=True)
class OverrideNote:
    """What a card of a kind the clinician overrode for this patient says (service/hooks/patient_chart.py): when and
    why it was overridden, and until when it is shown as information, or why it is shown as before."""

    at: datetime  # when it was overridden (the date is read in the offset the EHR gave)
    reason: str  # as the EHR or the service's own list names it
    until: date | None = None  # a warning shown as information until then
    why_shown: str | None = None  # why it is shown as before ("a new low ALP on 2026-07-01, after the override")

    def summary(self) -> str:
        return f"; overridden {self.at.date().isoformat()}"

    def detail(self) -> str:
        """The first lines of the detail (markdown; the reason, which the EHR sent, made inert)."""
        head = f"**Overridden on {self.at.date().isoformat()}** ({markdown_text(self.reason)})"
        if self.until is not None:
            return (
                f"{head}: shown as information instead of a warning until {self.until.isoformat()}, unless a new low "
                "ALP or a new antiresorptive is recorded."
            )
        if self.why_shown is not None:
            return f"{head}; shown as before: {self.why_shown}."
        return f"{head}."


NOT_CHECKED = re.compile(r"<<not-checked>>(.*?)<</not-checked>>", re.S)


def after_action_line(detail: str) -> str:
    """The block of what was not checked (partials.j2 ``not_checked_note``, marked) moved after the detail's first
    paragraph, so that the card opens with its action line (issue 24) and says next what it could not check."""
    found = NOT_CHECKED.search(detail)
    if found is None:
        return detail
    block = found.group(1).strip()
    rest = (detail[: found.start()] + detail[found.end() :]).strip()
    if not block:
        return rest
    first, _, tail = rest.partition("\n\n")
    return f"{first}\n\n{block}\n\n{tail}" if first else block


def render_card(
    finding: Finding, patient_id: str, not_checked: Sequence[str] = (), override: OverrideNote | None = None
) -> dict[str, Any]:
    """``not_checked``: what of the chart could not be (completely) read (``labs``, ``medications``,
    ``some_medications``, ``conditions``, ``alp_history``); the templates say so with the ``not_checked_note``
    macro of partials.j2, and a template's ``summary_note`` can say it in the summary. ``override``: the card's kind
    was overridden for this patient; the detail opens with it and the summary ends with its date, whatever the
    template (:class:`OverrideNote`)."""
    spec = template(finding.kind)
    facts = {**finding.facts, "not_checked": list(not_checked)}
    note = spec["_summary_note"].render(**facts) + (override.summary() if override else "")
    summary = summary_text(spec["_summary"].render(**facts), note)
    # Optional blocks leave empty lines behind; in markdown one empty line separates paragraphs, more mean nothing.
    detail = re.sub(r"\n{3,}", "\n\n", after_action_line(spec["_detail"].render(**facts)).strip())
    if override is not None:
        detail = f"{override.detail()}\n\n{detail}".strip()
    primary = sources()[spec["source"]]
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": finding.indicator or spec["indicator"],
        "source": {"label": primary["label"], "url": primary["url"]},
    }
    if detail:
        card["detail"] = detail
    names = finding.facts.get("delete_names") or {}
    suggestions = [
        {
            "label": f"Remove the draft {names[reference]} order"
            if names.get(reference)
            else f"Remove the draft order ({reference.split('/', 1)[0]})",
            "uuid": str(uuid.uuid4()),
            "actions": [
                {
                    "type": "delete",
                    "description": spec.get("delete_description", "Remove this draft order"),
                    "resourceId": reference,
                }
            ],
        }
        for reference in finding.deletes
    ]
    for order in finding.orders:
        suggestion = {
            "label": f"Order {order.test.display}",
            "uuid": str(uuid.uuid4()),
            "actions": [
                {
                    "type": "create",
                    "description": f"Propose a draft order: {order.test.display}",
                    "resource": service_request(order.test, patient_id),
                }
            ],
        }
        if order.recommended:
            suggestion["isRecommended"] = True
        suggestions.append(suggestion)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "any"
    reasons = spec.get("override_reasons") or []
    if reasons:
        card["overrideReasons"] = [
            {"system": OVERRIDE_SYSTEM, "code": r["code"], "display": r["display"]} for r in reasons
        ]
    links = [
        {"label": sources()[key]["label"], "url": sources()[key]["url"], "type": "absolute"}
        for key in dict.fromkeys([*spec.get("links", []), *finding.links])
    ]
    if links:
        card["links"] = links
    return card

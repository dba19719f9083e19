"""The CDS committee's report: ``alp-cds feedback-report --html FILE``.

Per card kind and hook (order-select and order-sign apart: they are two services), by month of issue: how many cards
were issued, how many were accepted (and which suggestion), overridden (and why) or ignored (no feedback came), the
acceptance rate, and the overrides that now quiet a card (the override memory: service/memory.py). One
self-contained HTML file: the charts are drawn here, as SVG (Vega-Lite through altair, rendered by vl-convert, as the
SMART page's chart); no script, no style sheet and nothing else is fetched when it is opened. No patient data: the
store holds none in clear, and the report shows counts only.

A card is counted once, by its last outcome (an EHR may keep a card after a suggestion is accepted, so one card can
be accepted and later overridden); "ignored" is a card for which no feedback came, which is what EHRs send for a card
left alone, when they send feedback at all.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from jinja2 import Environment, select_autoescape

from service.feedback import INTERRUPTIVE, _instant
from service.memory import reason_text

OUTCOMES = ("accepted", "overridden", "ignored")
COLOURS = ("#2e7d32", "#c26a00", "#9aa7b8")
HOOK_ORDER = ("patient-view", "order-select", "order-sign")
UNKNOWN_KIND = "unknown card"  # feedback for a card the store has no audit row of


@dataclass
class Group:
    """One card kind of one service (so one hook)."""

    service_id: str
    hook: str
    kind: str
    months: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    suggestions: Counter = field(default_factory=Counter)  # label -> times accepted
    reasons: Counter = field(default_factory=Counter)  # reason -> cards whose last outcome is overridden
    in_force: Counter = field(default_factory=Counter)  # reason -> overrides that quiet this kind now

    @property
    def total(self) -> Counter:
        total: Counter = Counter()
        for counts in self.months.values():
            total.update(counts)
        return total

    @property
    def acceptance(self) -> float | None:
        """Cards accepted (last outcome) per card issued."""
        issued = self.total["issued"]
        return self.total["accepted"] / issued if issued else None

    @property
    def anchor(self) -> str:
        return f"{self.service_id}--{self.kind}".replace(" ", "-")


def build(
    issued: Iterable[Any],
    items: Iterable[Any],
    *,
    now: datetime,
    days: int,
    days_of: Callable[[str], int],
    hooks: Mapping[str, str],
    reason_displays: Mapping[str, str],
    own_system: str,
) -> list[Group]:
    """The report's groups from the store's rows (:meth:`FeedbackStore.report_rows`). ``days``: the memory's period
    (OVERRIDE_DAYS); ``days_of(kind)``: the days a kind is remembered (its template may say less)."""
    groups: dict[tuple[str, str], Group] = {}

    def group(service_id: str, kind: str) -> Group:
        key = (service_id, kind)
        if key not in groups:
            groups[key] = Group(service_id, hooks.get(service_id, "?"), kind)
        return groups[key]

    for service_id, kind, month, count in issued:
        group(service_id, kind).months[month]["issued"] += count

    items = list(items)
    last: dict[str, Any] = {}
    for row in items:
        order = (_instant(row.outcome_timestamp), row.id)
        if row.card_uuid not in last or order >= last[row.card_uuid][0]:
            last[row.card_uuid] = (order, row)
        if row.outcome == "accepted":
            proposed = json.loads(row.suggestions) if row.suggestions else {}
            entry = group(row.service_id or row.feedback_service_id, row.kind or UNKNOWN_KIND)
            for suggestion in json.loads(row.accepted_suggestions or "[]"):
                label = (proposed.get(suggestion) or {}).get("label") or "a suggestion not on record"
                entry.suggestions[label] += 1
    for _, row in last.values():
        entry = group(row.service_id or row.feedback_service_id, row.kind or UNKNOWN_KIND)
        month = row.month or _month(row.received_at)
        entry.months[month][row.outcome] += 1
        entry.months[month]["with_feedback"] += 1
        if row.outcome == "overridden":
            entry.reasons[_reason(row, reason_displays, own_system) or "no reason given"] += 1

    # The overrides in force: the latest override with a reason of a warning or critical card per patient and kind,
    # within the kind's period (what the memory reads: FeedbackStore.overrides_of).
    latest: dict[tuple[str, str], tuple[datetime, Any]] = {}
    for row in items:
        if row.outcome != "overridden" or not row.override_code or row.patient_hash is None:
            continue
        if row.indicator not in INTERRUPTIVE or not row.same_caller or row.feedback_service_id != row.service_id:
            continue
        received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
        at = min(_instant(row.outcome_timestamp), received)
        key = (row.patient_hash, row.kind)
        if key not in latest or at > latest[key][0]:
            latest[key] = (at, row)
    for (_, kind), (at, row) in latest.items():
        if at + timedelta(days=min(days, days_of(kind))) >= now and at >= now - timedelta(days=days):
            group(row.service_id, kind).in_force[_reason(row, reason_displays, own_system)] += 1

    for entry in groups.values():
        for counts in entry.months.values():
            counts["ignored"] = max(0, counts["issued"] - counts.pop("with_feedback", 0))
    return sorted(
        groups.values(),
        key=lambda g: (HOOK_ORDER.index(g.hook) if g.hook in HOOK_ORDER else 9, g.kind == UNKNOWN_KIND, g.kind),
    )


def _reason(row: Any, displays: Mapping[str, str], own_system: str) -> str:
    return reason_text(row._mapping, displays, own_system)


def _month(when: datetime) -> str:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m")


def _outcome_bars(name: str, values: list[dict[str, Any]], x: Any, y: Any, width: int, height: int) -> dict[str, Any]:
    """Stacked bars of cards by outcome, in the report's colours and order (``x``, ``y``: the Altair encodings)."""
    import altair as alt

    return (
        alt.Chart(alt.Data(values=values), name=name)
        .mark_bar()
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "outcome:N",
                scale=alt.Scale(domain=list(OUTCOMES), range=list(COLOURS)),
                legend=alt.Legend(orient="top", title=None, labelFontSize=12),
            ),
            order=alt.Order("order:Q"),
        )
        .transform_calculate(order=f"indexof({json.dumps(list(OUTCOMES))}, datum.outcome)")
        .properties(width=width, height=height)
        .configure_view(stroke="#d0d7de")
        .configure(font="sans-serif")
        .to_dict()
    )


def month_chart(entry: Group) -> dict[str, Any]:
    """Cards issued per month of issue, by outcome (stacked bars)."""
    import altair as alt

    values = [
        {"month": month, "outcome": outcome, "cards": counts[outcome]}
        for month, counts in sorted(entry.months.items())
        for outcome in OUTCOMES
    ]
    return _outcome_bars(
        "months",
        values,
        x=alt.X("month:O", title=None, axis=alt.Axis(labelAngle=0, labelFontSize=11)),
        y=alt.Y("cards:Q", title="Cards", stack="zero", axis=alt.Axis(tickMinStep=1, format="d")),
        width=max(160, 60 * len(entry.months)),
        height=170,
    )


def overview_chart(groups: list[Group]) -> dict[str, Any]:
    """Every card kind and hook: its cards by outcome (horizontal stacked bars)."""
    import altair as alt

    values = [
        {"card": f"{g.kind} ({g.hook})", "outcome": outcome, "cards": g.total[outcome]}
        for g in groups
        for outcome in OUTCOMES
    ]
    return _outcome_bars(
        "overview",
        values,
        x=alt.X("cards:Q", title="Cards", stack="zero", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("card:N", title=None, sort=None, axis=alt.Axis(labelLimit=360, labelFontSize=12)),
        width=560,
        height=max(60, 24 * len(groups)),
    )


def render_html(groups: list[Group], *, now: datetime, days: int) -> str:
    """The report as one HTML file (the charts inline as SVG)."""
    import vl_convert

    environment = Environment(autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
    page = environment.from_string(
        resources.files("service").joinpath("templates/committee_report.html").read_text(encoding="utf-8")
    )
    charts = {g.anchor: vl_convert.vegalite_to_svg(month_chart(g)) for g in groups if g.months}
    return page.render(
        groups=groups,
        now=now,
        days=days,
        overview=vl_convert.vegalite_to_svg(overview_chart(groups)) if groups else "",
        charts=charts,
        outcomes=OUTCOMES,
    )

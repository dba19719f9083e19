"""The ALP chart as an SVG, drawn on the server (Vega-Lite via altair, rendered by vl-convert: no JavaScript in the
browser, no CDN, nothing about the patient sent anywhere). Series in, SVG text out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import altair as alt
import vl_convert

from service.clinical.facts import number_text
from service.smart.series import AlpSeries

LOW, NORMAL, HIGH = "#c62828", "#1f6feb", "#e08a00"
LIMIT = "#333333"
LAB_RANGE = "#8d8d8d"
DRUGS = ["#7b1fa2", "#2e7d32", "#6d4c41", "#00838f", "#827717"]  # none is a judgement's colour
WIDTH, HEIGHT = 860, 320
# Mark names, so that the SVG groups can be found (and counted) as ``<name>_marks``.
# Point shapes: how the result stands with the rules.
JUDGED, BY_FLAG, SET_ASIDE = "judged", "judged by the lab's flag", "set aside by the rules"
SHAPES = {JUDGED: "circle", BY_FLAG: "diamond", SET_ASIDE: "cross"}
POINTS, STEPS, LAB_RANGES, PERIODS, MARKERS = "alp_points", "limit_steps", "lab_ranges", "drug_periods", "drug_records"


def _day(value: Any) -> str:
    return value.date().isoformat() if hasattr(value, "date") else value.isoformat()


def time_axis(days: int) -> alt.Axis:
    """Date ticks that suit the span drawn: years over long spans, months (every 1, 2 or 3) under three years,
    weeks under three months, so that a chart of results within one year still has dates on its axis."""
    if days > 3 * 365:
        fmt, ticks = "%Y", alt.TimeIntervalStep(interval="year", step=max(1, days // (365 * 20) + 1))
    elif days > 90:
        fmt, ticks = "%b %Y", alt.TimeIntervalStep(interval="month", step=1 if days <= 370 else 2 if days <= 730 else 3)
    else:
        fmt, ticks = "%d %b %Y", alt.TimeIntervalStep(interval="week", step=1 if days <= 45 else 2)
    return alt.Axis(format=fmt, labelFontSize=12, tickCount=ticks, labelOverlap=True)


def chart_spec(series: AlpSeries) -> dict[str, Any]:
    """The Vega-Lite specification (a dict): drug periods shaded, the lab's ranges as grey bars, the fallback lower
    limit as steps, the ALP results as points coloured low or normal."""
    top = max(
        [p.value for p in series.points]
        + [p.lab_high or 0 for p in series.points]
        + [s.low for s in series.steps]
        + [10.0]
    )
    top = top * 1.15
    pad = timedelta(days=max((series.end - series.start).days // 60, 5))
    x_scale = alt.Scale(type="utc", domain=[series.start.isoformat(), (series.end + pad).isoformat()])
    x = alt.X("start:T", scale=x_scale, title=None, axis=time_axis((series.end + pad - series.start).days))
    y_scale = alt.Scale(domain=[0, top], nice=False)
    layers = []

    if series.periods:
        periods = [
            {
                "drug": p.name,
                "start": _day(p.start),
                "end": _day(p.end),
                "what": f"{p.name}: {_day(p.start)} to {'now (current)' if p.ongoing else _day(p.end)}",
            }
            for p in series.periods
        ]
        names = [p.name for p in series.periods]
        drug_scale = alt.Scale(domain=names, range=[DRUGS[i % len(DRUGS)] for i in range(len(names))])
        drug_colour = alt.Color(
            "drug:N",
            scale=drug_scale,
            legend=alt.Legend(title="Antiresorptive", orient="top", labelFontSize=12, titleFontSize=12),
        )
        layers.append(
            alt.Chart(alt.Data(values=periods), name=PERIODS)
            .mark_rect(opacity=0.16)
            .encode(x=x, x2="end:T", color=drug_colour, description="what:N")
        )
        records = [
            {"drug": p.name, "start": _day(when), "kind": "start" if i == 0 else "renewal"}
            for p in series.periods
            for i, when in enumerate(p.records)
        ]
        records += [{"drug": p.name, "start": _day(p.end), "kind": "stopped"} for p in series.periods if not p.ongoing]
        layers.append(
            alt.Chart(alt.Data(values=records), name=MARKERS)
            .mark_point(shape="triangle-down", filled=True, size=90, opacity=0.9)
            .encode(
                x=x,
                y=alt.datum(top * 0.97, scale=y_scale),
                color=alt.Color("drug:N", scale=drug_scale, legend=None),
                description="kind:N",
            )
        )

    ranges = [
        {"start": _day(p.when), "low": p.lab_low, "high": p.lab_high if p.lab_high is not None else p.lab_low}
        for p in series.points
        if p.lab_low is not None
    ]
    if ranges:
        layers.append(
            alt.Chart(alt.Data(values=ranges), name=LAB_RANGES)
            .mark_rule(color=LAB_RANGE, strokeWidth=9, opacity=0.35, strokeCap="round")
            .encode(x=x, y=alt.Y("low:Q", scale=y_scale), y2="high:Q", description=alt.value("the lab's range"))
        )

    if series.steps:
        steps = [
            {
                "start": s.start.isoformat(),
                "end": s.end.isoformat(),
                "low": s.low,
                "label": f"{number_text(s.low)}",
                "what": f"lower limit {number_text(s.low)} U/L from {s.start.isoformat()} ({s.label})",
            }
            for s in series.steps
        ]
        steps_chart = alt.Chart(alt.Data(values=steps), name=STEPS)
        layers.append(
            steps_chart.mark_rule(color=LIMIT, strokeWidth=2, strokeDash=[6, 3]).encode(
                x=x, x2="end:T", y=alt.Y("low:Q", scale=y_scale), description="what:N"
            )
        )
        layers.append(
            alt.Chart(alt.Data(values=steps), name="limit_labels")
            .mark_text(align="left", dx=3, dy=-7, fontSize=11, color=LIMIT)
            .encode(x=x, y=alt.Y("low:Q", scale=y_scale), text="label:N")
        )

    points = [
        {
            "start": _day(p.when),
            "value": p.value,
            "shown": p.shown,
            "status": p.status.capitalize(),
            "basis": SET_ASIDE if p.set_aside else BY_FLAG if p.by_flag else JUDGED,
            "what": f"{_day(p.when)}: ALP {p.shown} U/L, {p.status} "
            + ("by the lab's flag (not by the line drawn)" if p.by_flag else f"against {p.limits}")
            + (f"; {p.set_aside}" if p.set_aside else ""),
        }
        for p in series.points
    ]
    if points:
        layers.append(
            alt.Chart(alt.Data(values=points), name="alp_line")
            .mark_line(color="#9aa7b8", strokeWidth=1.2)
            .encode(x=x, y=alt.Y("value:Q", scale=y_scale))
        )
        status_scale = alt.Scale(domain=["Low", "Normal", "High"], range=[LOW, NORMAL, HIGH])
        status = alt.Color("status:N", scale=status_scale, legend=None)  # the page's key names the colours
        layers.append(
            alt.Chart(alt.Data(values=points), name=POINTS)
            .mark_point(filled=True, size=80, opacity=1, stroke="white", strokeWidth=1)
            .encode(
                x=x,
                y=alt.Y("value:Q", scale=y_scale, title="ALP (U/L)", axis=alt.Axis(titleFontSize=13, labelFontSize=12)),
                color=status,
                shape=alt.Shape(
                    "basis:N", scale=alt.Scale(domain=list(SHAPES), range=list(SHAPES.values())), legend=None
                ),
                description="what:N",
            )
        )
        if len(points) <= 30:
            layers.append(
                alt.Chart(alt.Data(values=points), name="alp_values")
                .mark_text(dy=-11, fontSize=11, fontWeight="bold")
                .encode(
                    x=x,
                    y=alt.Y("value:Q", scale=y_scale),
                    text="shown:N",
                    color=alt.Color("status:N", scale=status_scale, legend=None),
                )
            )
    if not layers:
        layers.append(alt.Chart(alt.Data(values=[{"start": series.end.isoformat()}])).mark_point(opacity=0).encode(x=x))
    chart = (
        alt.layer(*layers)
        .resolve_scale(color="independent")
        .properties(width=WIDTH, height=HEIGHT)
        .configure_view(stroke="#d0d7de")
        .configure_axis(gridColor="#eef1f4")
        .configure(font="sans-serif")
    )
    return chart.to_dict()


def render_svg(series: AlpSeries) -> str:
    """The chart as SVG text (vl-convert renders Vega-Lite with its own engine: nothing is fetched)."""
    return vl_convert.vegalite_to_svg(chart_spec(series))

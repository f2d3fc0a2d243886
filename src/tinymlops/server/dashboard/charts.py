"""Server-rendered SVG for the dashboard: pure functions from numbers to markup, no I/O, no scripts.

The page's Content-Security-Policy forbids scripts and inline styles, so charts are inline ``<svg>``
whose geometry is in attributes (``x``, ``width``, …) and whose colours come from classes styled
in ``static/dashboard.css``. Every text goes through :func:`svg_text` (escaped, and stripped of
the characters XML cannot carry), every coordinate through :func:`_coord` (finite, rounded), so the
output is well-formed XML for any input: zeros, ``None`` (no data), huge values, non-finite ones
(drawn as no data).

* :func:`nice_ticks` — axis ticks at 1/2/2.5/5 × 10^k from 0 up to at least the largest value;
* :func:`stage_bar` — one rollout stage's devices as a horizontal stacked bar (installed, failed,
  published and waiting for a report, not yet published);
* :func:`grouped_bar_chart` — horizontal bars grouped by a label (device profile), one row per
  bar (variant ref), one bar per series (p50, p95), with an axis, ticks, value labels, a legend,
  and ``<title>``/``<desc>`` naming every number for assistive technology.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

#: characters XML 1.0 cannot hold even escaped (C0 controls but tab/newline/CR, lone surrogates, U+FFFE/F)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def svg_text(value: object, limit: int | None = None) -> str:
    """``value`` as escaped text for SVG/XML (and HTML): markup inert, XML-invalid characters
    replaced; cut to ``limit`` characters with an ellipsis when longer."""
    text = _NOT_XML.sub("\ufffd", str(value))
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return escape(text, quote=True)


def _finite(value: float | None) -> float | None:
    """A drawable value: finite and >= 0, else None (no data)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        v = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _coord(value: float) -> str:
    """A coordinate for an attribute: always a finite decimal."""
    return f"{value:.2f}" if math.isfinite(value) else "0"


def fmt_value(value: float | None) -> str:
    """A number as charts and tables show it: 4 significant digits; ``–`` for no data."""
    v = _finite(value)
    if v is None:
        return "–"
    if v == int(v) and v < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def nice_ticks(top: float | None, target: int = 5) -> list[float]:
    """Ticks from 0 to a round number >= ``top`` (about ``target`` steps of 1, 2, 2.5 or 5 × 10^k).
    No data or zero gives the ticks of [0, 1]; the last tick is always finite and > 0."""
    target = max(1, int(target))
    t = _finite(top)
    if t is None or t <= 0:
        t = 1.0
    raw = t / target
    step = 0.0
    if raw > 0 and math.isfinite(raw):
        mag = 10.0 ** math.floor(math.log10(raw))
        step = next((m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw), 10.0 * mag)
    if step > 0 and math.isfinite(step):
        n = max(1, math.ceil(t / step - 1e-9))
        ticks = [i * step for i in range(n + 1)]
        if math.isfinite(ticks[-1]) and ticks[-1] >= t:
            return ticks
    # extreme magnitudes (near the float limits): plain fractions of top, strictly increasing
    below = {v for v in (t / target * i for i in range(target)) if v < t}
    return [*sorted(below | {0.0}), t]


# --- one rollout stage ----------------------------------------------------------------------------
def stage_bar(devices: int, published: int, installed: int, failed: int, *, label: str = "") -> str:
    """A stage's devices as one stacked bar, 0–100% of the stage: installed, failed, published but
    not reported yet, not published yet (in that order; counts clamped to be consistent)."""
    total = max(int(devices), 0)
    ok = max(int(installed), 0)
    bad = max(int(failed), 0)
    out = max(int(published), ok + bad)
    total = max(total, out)
    parts = [("installed", ok), ("failed", bad), ("pending", out - ok - bad), ("waiting", total - out)]
    title = f"{label}: " if label else ""
    title += f"{ok} installed, {bad} failed, {out - ok - bad} published without a report, {total - out} not published"
    rects = []
    x = 0.0
    for name, count in parts:
        if count <= 0 or total == 0:
            continue
        width = 100.0 * count / total
        rects.append(
            f'<rect class="bar-{name}" x="{_coord(x)}" y="0" width="{_coord(width)}" height="10">'
            f"<title>{count} {name}</title></rect>"
        )
        x += width
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" class="stage-bar" viewBox="0 0 100 10" '
        f'preserveAspectRatio="none" role="img" aria-label="{svg_text(title)}">'
        f"<title>{svg_text(title)}</title>"
        '<rect class="bar-track" x="0" y="0" width="100" height="10"/>' + "".join(rects) + "</svg>"
    )


# --- grouped bars ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    """One row of a group: a label and one value per series (None = no data)."""

    label: str
    values: tuple[float | None, ...]


@dataclass(frozen=True)
class Group:
    label: str
    bars: tuple[Bar, ...]


WIDTH = 820
LABEL_W = 230  # the row labels' column
VALUE_W = 90  # room right of the plot for the longest bar's value label
TOP = 34  # legend
AXIS_H = 34
GROUP_HEAD = 20
BAR_H = 11
BAR_GAP = 3
ROW_GAP = 8
GROUP_GAP = 10
LABEL_CHARS = 34


def grouped_bar_chart(
    groups: Sequence[Group],
    series: Sequence[str],
    *,
    unit: str,
    title: str,
    axis_label: str | None = None,
    chart_id: str = "chart",
) -> str:
    """Horizontal bars: for each group a heading, for each bar of it a row with one bar per series.
    The x axis (0 to a round number above the largest value) has ticks, grid lines and
    ``axis_label`` (default: ``unit``); values are named with ``unit`` in the titles and description."""
    ident = re.sub(r"[^A-Za-z0-9_-]", "-", chart_id) or "chart"
    nseries = max(len(series), 1)
    row_h = nseries * BAR_H + (nseries - 1) * BAR_GAP + ROW_GAP
    values = [_finite(v) for g in groups for b in g.bars for v in b.values[:nseries]]
    ticks = nice_ticks(max((v for v in values if v is not None), default=None))
    axis_max = ticks[-1]
    plot_w = WIDTH - LABEL_W - VALUE_W
    height = TOP + sum(GROUP_HEAD + len(g.bars) * row_h + GROUP_GAP for g in groups) + AXIS_H
    plot_bottom = height - AXIS_H

    def x_of(value: float) -> float:
        return LABEL_W + plot_w * min(max(value / axis_max, 0.0), 1.0)

    parts: list[str] = []
    desc: list[str] = []
    # legend
    for i, name in enumerate(series):
        lx = LABEL_W + i * 110
        parts.append(
            f'<rect class="series-{i}" x="{lx}" y="8" width="14" height="10"/>'
            f'<text class="legend" x="{lx + 20}" y="17">{svg_text(name, 16)}</text>'
        )
    # grid and ticks
    for t in ticks:
        x = _coord(x_of(t))
        parts.append(
            f'<line class="grid" x1="{x}" y1="{TOP - 4}" x2="{x}" y2="{plot_bottom}"/>'
            f'<line class="tick" x1="{x}" y1="{plot_bottom}" x2="{x}" y2="{plot_bottom + 5}"/>'
            f'<text class="tick-label" x="{x}" y="{plot_bottom + 18}" text-anchor="middle">{fmt_value(t)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{LABEL_W}" y1="{plot_bottom}" x2="{LABEL_W + plot_w}" y2="{plot_bottom}"/>'
        f'<text class="axis-label" x="{LABEL_W + plot_w / 2:.2f}" y="{height - 2}" text-anchor="middle">'
        f"{svg_text(unit if axis_label is None else axis_label)}</text>"
    )
    # bars
    y = float(TOP)
    for gi, group in enumerate(groups):
        parts.append(
            f'<g class="group" data-group="{gi}"><text class="group-label" x="4" y="{_coord(y + 14)}">'
            f"<title>{svg_text(group.label)}</title>{svg_text(group.label, LABEL_CHARS + 4)}</text>"
        )
        y += GROUP_HEAD
        for bar in group.bars:
            label_y = y + (nseries * BAR_H + (nseries - 1) * BAR_GAP) / 2 + 4
            parts.append(
                f'<text class="bar-label" x="14" y="{_coord(label_y)}"><title>{svg_text(bar.label)}</title>'
                f"{svg_text(bar.label, LABEL_CHARS)}</text>"
            )
            said = []
            for si in range(nseries):
                raw = bar.values[si] if si < len(bar.values) else None
                v = _finite(raw)
                name = series[si] if si < len(series) else ""
                by = y + si * (BAR_H + BAR_GAP)
                shown = fmt_value(v)
                said.append(f"{name} {shown}")
                width = 0.0 if v is None else x_of(v) - LABEL_W
                tip = f"{group.label} · {bar.label} · {name}: {shown} {unit}"
                parts.append(
                    f'<rect class="series-{si}" x="{LABEL_W}" y="{_coord(by)}" width="{_coord(width)}" '
                    f'height="{BAR_H}"><title>{svg_text(tip)}</title></rect>'
                    f'<text class="value" x="{_coord(LABEL_W + width + 4)}" y="{_coord(by + BAR_H - 2)}">'
                    f"{shown}</text>"
                )
            desc.append(f"{group.label} · {bar.label}: {', '.join(said)} {unit}")
            y += row_h
        parts.append("</g>")
        y += GROUP_GAP
    if not groups:
        parts.append(f'<text class="empty" x="{LABEL_W + 8}" y="{TOP + 4}">no data</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{ident}" viewBox="0 0 {WIDTH} {_coord(height)}" '
        f'role="img" aria-labelledby="{ident}-title {ident}-desc">'
        f'<title id="{ident}-title">{svg_text(title)}</title>'
        f'<desc id="{ident}-desc">{svg_text("; ".join(desc) or "no data")}</desc>' + "".join(parts) + "</svg>"
    )


__all__ = ["Bar", "Group", "fmt_value", "grouped_bar_chart", "nice_ticks", "stage_bar", "svg_text"]

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
  and ``<title>``/``<desc>`` naming every number for assistive technology;
* :func:`heatmap` — a grid of cells (rows × columns, e.g. cohorts × features) coloured on a
  six-step scale, marked cells (drift) outlined and crossed, each cell's verdict in its ``<title>``
  and ``data-verdict`` (never colour alone), optional links per cell;
* :func:`cdf_chart` — empirical CDFs as step lines (e.g. reference vs live quantiles of a feature)
  on a signed value axis (:func:`range_ticks`) with probability 0–1 on the other.
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
    ident = _ident(chart_id)
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


def _ident(chart_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", chart_id) or "chart"


def _real(value: float | None) -> float | None:
    """A drawable signed value: finite, else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        v = float(value)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def fmt_signed(value: float | None) -> str:
    """Like :func:`fmt_value`, for values that may be negative."""
    v = _real(value)
    if v is None:
        return "–"
    return "-" + fmt_value(-v) if v < 0 else fmt_value(v)


def range_ticks(lo: float | None, hi: float | None, target: int = 5) -> list[float]:
    """Ticks at round steps (1, 2, 2.5, 5 × 10^k) covering ``[lo, hi]`` (signed; no data or an empty
    range gives a range around the value). Always at least two increasing, finite ticks."""
    a, b = _real(lo), _real(hi)
    if a is None and b is None:
        a, b = 0.0, 1.0
    a = b if a is None else a
    b = a if b is None else b
    assert a is not None and b is not None
    if a > b:
        a, b = b, a
    if b - a <= 1e-12 * max(1.0, abs(a), abs(b)):
        pad = max(abs(a) * 0.1, 0.5)
        a, b = a - pad, b + pad
    span = b - a
    if not math.isfinite(span):  # beyond the float range: plain end points
        return [a, b]
    step = nice_ticks(span, target)[1]
    k = math.floor(a / step)
    if k * step > a:  # a rounding error above a
        k -= 1
    ticks = []
    while len(ticks) < 4 * target + 2:
        ticks.append(k * step)
        if ticks[-1] >= b:
            break
        k += 1
    if len(ticks) < 2 or not all(math.isfinite(t) for t in ticks):
        return [a, b]
    return ticks


# --- heatmap --------------------------------------------------------------------------------------
#: the colour scale's steps (classes ``heat-0`` … ``heat-5``; ``heat-none`` for no data)
HEAT_LEVELS = 6
HEAT_LABEL_W = 190
HEAT_TOP = 74
HEAT_WIDTH = 1100  # the widest a grid gets before cells shrink to HEAT_MIN_CELL
HEAT_MAX_CELL = 22
HEAT_MIN_CELL = 10


@dataclass(frozen=True)
class HeatCell:
    """One cell: ``level`` in [0, 1] on the colour scale (None: no data), ``marked`` (drawn
    outlined and crossed), ``verdict`` (text, also in ``data-verdict``), ``title`` (the full
    sentence a tooltip and a screen reader get), an optional link."""

    level: float | None
    marked: bool
    verdict: str
    title: str
    href: str | None = None


def heat_class(level: float | None) -> str:
    """The colour class of a level: ``heat-0`` … ``heat-5``, ``heat-none`` for no data."""
    v = _finite(level)
    if v is None:
        return "heat-none"
    return f"heat-{min(int(min(v, 1.0) * HEAT_LEVELS), HEAT_LEVELS - 1)}"


def heatmap(
    rows: Sequence[str],
    columns: Sequence[str],
    cells: Sequence[Sequence[HeatCell]],
    *,
    title: str,
    chart_id: str = "heatmap",
) -> str:
    """A ``len(rows)`` × ``len(columns)`` grid; ``cells[i][j]`` is row i, column j (missing cells
    are drawn as no data). The labels go to the cells' ``data-row``/``data-column``. The
    description lists the marked cells."""
    ident = _ident(chart_id)
    ncols = max(len(columns), 1)
    cell = max(HEAT_MIN_CELL, min(HEAT_MAX_CELL, (HEAT_WIDTH - HEAT_LABEL_W - 10) / ncols))
    width = HEAT_LABEL_W + cell * ncols + 10
    height = HEAT_TOP + cell * max(len(rows), 1) + 8
    font = max(7.0, min(11.0, cell - 2))
    parts: list[str] = []
    for j, name in enumerate(columns):
        x = HEAT_LABEL_W + cell * j + cell / 2 + font / 3
        parts.append(
            f'<text class="column-label" x="{_coord(x)}" y="{HEAT_TOP - 4}" font-size="{_coord(font)}" '
            f'transform="rotate(-60 {_coord(x)} {HEAT_TOP - 4})"><title>{svg_text(name)}</title>'
            f"{svg_text(name, 14)}</text>"
        )
    marked: list[str] = []
    for i, name in enumerate(rows):
        y = HEAT_TOP + cell * i
        parts.append(
            f'<text class="row-label" x="{HEAT_LABEL_W - 6}" y="{_coord(y + cell / 2 + 4)}" text-anchor="end">'
            f"<title>{svg_text(name)}</title>{svg_text(name, 26)}</text>"
        )
        row_cells = cells[i] if i < len(cells) else ()
        for j in range(len(columns)):
            c = row_cells[j] if j < len(row_cells) else HeatCell(None, False, "no data", "no data")
            x = HEAT_LABEL_W + cell * j
            klass = f"cell {heat_class(c.level)}" + (" cell-marked" if c.marked else "")
            size = _coord(cell)
            rect = f'<rect class="{klass}" x="{_coord(x)}" y="{_coord(y)}" width="{size}" height="{size}"/>'
            cross = ""
            if c.marked:
                marked.append(c.title)
                m = cell * 0.25
                cross = (
                    f'<path class="mark" d="M{_coord(x + m)} {_coord(y + m)}L{_coord(x + cell - m)} '
                    f"{_coord(y + cell - m)}M{_coord(x + cell - m)} {_coord(y + m)}L{_coord(x + m)} "
                    f'{_coord(y + cell - m)}"/>'
                )
            body = f"<title>{svg_text(c.title)}</title>{rect}{cross}"
            if c.href:
                body = f'<a href="{svg_text(c.href)}">{body}</a>'
            parts.append(
                f'<g class="heat-cell" data-row="{svg_text(name)}" data-column="{svg_text(columns[j])}" '
                f'data-verdict="{svg_text(c.verdict)}">{body}</g>'
            )
    if not rows or not columns:
        parts.append(f'<text class="empty" x="{HEAT_LABEL_W}" y="{HEAT_TOP + 12}">no data</text>')
    desc = f"{len(marked)} marked: " + "; ".join(marked) if marked else "no cell marked"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart heatmap" id="{ident}" width="{_coord(width)}" '
        f'height="{_coord(height)}" viewBox="0 0 {_coord(width)} {_coord(height)}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc">'
        f'<title id="{ident}-title">{svg_text(title)}</title>'
        f'<desc id="{ident}-desc">{svg_text(desc)}</desc>' + "".join(parts) + "</svg>"
    )


def heat_legend(low: str, high: str) -> str:
    """The colour scale as a small SVG (low → high) with a marked example."""
    steps = "".join(
        f'<rect class="cell heat-{i}" x="{40 + 16 * i}" y="2" width="16" height="12"/>' for i in range(HEAT_LEVELS)
    )
    x = 40 + 16 * HEAT_LEVELS + 14
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" class="heat-legend" viewBox="0 0 420 16" role="img" '
        f'aria-label="{svg_text(f"colour scale from {low} to {high}; a crossed cell is drift")}">'
        f'<text x="0" y="12">{svg_text(low, 8)}</text>{steps}'
        f'<text x="{x}" y="12">{svg_text(high, 24)}</text>'
        f'<rect class="cell heat-5 cell-marked" x="{x + 170}" y="2" width="12" height="12"/>'
        f'<path class="mark" d="M{x + 173} 5L{x + 179} 11M{x + 179} 5L{x + 173} 11"/>'
        f'<text x="{x + 188}" y="12">drift</text></svg>'
    )


# --- CDFs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """An empirical CDF: ``points`` are (value, cumulative probability), drawn as a step line."""

    name: str
    points: tuple[tuple[float, float], ...]


CDF_WIDTH = 820
CDF_HEIGHT = 300
CDF_LEFT = 56
CDF_RIGHT = 20
CDF_TOP = 30
CDF_BOTTOM = 44


def cdf_chart(curves: Sequence[Curve], *, title: str, x_label: str, chart_id: str = "cdf") -> str:
    """Step lines of ``curves`` (one class ``curve-i`` each) on a shared value axis; probability
    0–1 upwards. Non-finite points are left out; a curve without points is named as no data."""
    ident = _ident(chart_id)
    clean: list[list[tuple[float, float]]] = []
    for c in curves:
        pts = []
        for x, p in c.points:
            xv, pv = _real(x), _real(p)
            if xv is not None and pv is not None:
                pts.append((xv, min(max(pv, 0.0), 1.0)))
        clean.append(sorted(pts))
    xs = [x for pts in clean for x, _ in pts]
    ticks = range_ticks(min(xs, default=None), max(xs, default=None))
    lo, hi = ticks[0], ticks[-1]
    plot_w = CDF_WIDTH - CDF_LEFT - CDF_RIGHT
    plot_h = CDF_HEIGHT - CDF_TOP - CDF_BOTTOM
    bottom = CDF_TOP + plot_h

    def x_of(v: float) -> float:
        frac = (v - lo) / (hi - lo) if hi > lo else 0.5
        return CDF_LEFT + plot_w * min(max(frac, 0.0), 1.0) if math.isfinite(frac) else CDF_LEFT

    def y_of(p: float) -> float:
        return bottom - plot_h * p

    parts: list[str] = []
    for t in ticks:
        x = _coord(x_of(t))
        parts.append(
            f'<line class="grid" x1="{x}" y1="{CDF_TOP}" x2="{x}" y2="{bottom}"/>'
            f'<line class="tick" x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 5}"/>'
            f'<text class="tick-label" x="{x}" y="{bottom + 18}" text-anchor="middle">{fmt_signed(t)}</text>'
        )
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _coord(y_of(p))
        parts.append(
            f'<line class="grid" x1="{CDF_LEFT}" y1="{y}" x2="{CDF_LEFT + plot_w}" y2="{y}"/>'
            f'<text class="tick-label" x="{CDF_LEFT - 6}" y="{y}" text-anchor="end" dy="4">{p:g}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{CDF_LEFT}" y1="{bottom}" x2="{CDF_LEFT + plot_w}" y2="{bottom}"/>'
        f'<line class="axis" x1="{CDF_LEFT}" y1="{CDF_TOP}" x2="{CDF_LEFT}" y2="{bottom}"/>'
        f'<text class="axis-label" x="{CDF_LEFT + plot_w / 2:.2f}" y="{CDF_HEIGHT - 4}" text-anchor="middle">'
        f"{svg_text(x_label)}</text>"
        f'<text class="axis-label" x="12" y="{CDF_TOP + plot_h / 2:.2f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {CDF_TOP + plot_h / 2:.2f})">cumulative probability</text>'
    )
    desc: list[str] = []
    for i, (curve, pts) in enumerate(zip(curves, clean, strict=True)):
        lx = CDF_LEFT + i * 200
        parts.append(
            f'<line class="curve-{i}" x1="{lx}" y1="13" x2="{lx + 18}" y2="13"/>'
            f'<text class="legend" x="{lx + 24}" y="17">{svg_text(curve.name, 28)}</text>'
        )
        if not pts:
            desc.append(f"{curve.name}: no data")
            continue
        path = [f"M{_coord(x_of(pts[0][0]))} {_coord(y_of(0.0))}"]
        prev = 0.0
        for x, p in pts:
            xc = _coord(x_of(x))
            path.append(f"L{xc} {_coord(y_of(prev))}L{xc} {_coord(y_of(p))}")
            prev = p
        path.append(f"L{_coord(CDF_LEFT + plot_w)} {_coord(y_of(prev))}")
        median = next((x for x, p in pts if p >= 0.5), pts[-1][0])
        said = (
            f"{curve.name}: {len(pts)} points from {fmt_signed(pts[0][0])} to {fmt_signed(pts[-1][0])}, "
            f"median {fmt_signed(median)}"
        )
        desc.append(said)
        parts.append(f'<path class="curve curve-{i}" d="{"".join(path)}"><title>{svg_text(said)}</title></path>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart cdf" id="{ident}" '
        f'viewBox="0 0 {CDF_WIDTH} {CDF_HEIGHT}" role="img" aria-labelledby="{ident}-title {ident}-desc">'
        f'<title id="{ident}-title">{svg_text(title)}</title>'
        f'<desc id="{ident}-desc">{svg_text("; ".join(desc) or "no data")}</desc>' + "".join(parts) + "</svg>"
    )


__all__ = [
    "Bar",
    "Curve",
    "Group",
    "HeatCell",
    "cdf_chart",
    "fmt_signed",
    "fmt_value",
    "grouped_bar_chart",
    "heat_class",
    "heat_legend",
    "heatmap",
    "nice_ticks",
    "range_ticks",
    "stage_bar",
    "svg_text",
]

"""The dashboard's SVG (:mod:`tinymlops.server.dashboard.charts`) for any numbers and any labels:
well-formed XML (parsed with ``xml.etree``), only finite numbers in attributes, markup in labels
inert, bars in proportion and inside the plot, ticks covering the data; and the manual actions a
release page offers are exactly those the rollout state machine allows."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tinymlops.release.rollout import STATUSES, RolloutState
from tinymlops.server.dashboard import charts
from tinymlops.server.dashboard.charts import Bar, Group, fmt_value, grouped_bar_chart, nice_ticks, stage_bar, svg_text
from tinymlops.server.dashboard.views_release import legal_actions
from tinymlops.spec.rollout import RolloutPlan

SVG = "{http://www.w3.org/2000/svg}"
GEOMETRY = ("x", "y", "width", "height", "x1", "x2", "y1", "y2")
#: any number a database or a bug could hand over: negative, zero, subnormal, huge, beyond float, nan, inf
ANY_NUMBER = st.one_of(st.none(), st.floats(), st.integers(min_value=-10, max_value=10**400))
LABEL = st.text(max_size=60)
PLOT_RIGHT = charts.WIDTH - charts.VALUE_W
TAGS = {f"{SVG}{t}" for t in ("svg", "title", "desc", "rect", "text", "line", "g")}


def _read_back(text: str) -> str:
    """What an XML parser reads back from ``svg_text(text)``: invalid characters replaced, line ends normalised."""
    return (
        re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", "\ufffd", text)
        .replace("\r\n", "\n")
        .replace("\r", "\n")
    )


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    for el in root.iter():
        for name, value in el.attrib.items():
            assert not re.search(r"nan|inf", value, re.I) or name in ("class", "id", "aria-label"), (name, value)
            if name in GEOMETRY:
                assert math.isfinite(float(value)), (name, value)
        if el.tag == f"{SVG}svg" and "viewBox" in el.attrib:
            assert all(math.isfinite(float(v)) for v in el.attrib["viewBox"].split())
    return root


def _bars(root: ET.Element, series: int) -> list[ET.Element]:
    return [
        r for r in root.iter(f"{SVG}rect") if r.get("class") == f"series-{series}" and r.find(f"{SVG}title") is not None
    ]


groups_strategy = st.lists(
    st.builds(
        Group,
        LABEL,
        st.lists(st.builds(Bar, LABEL, st.tuples(ANY_NUMBER, ANY_NUMBER)), min_size=1, max_size=4).map(tuple),
    ),
    max_size=4,
)


@given(groups_strategy, LABEL)
def test_any_numbers_and_labels_make_a_well_formed_chart(groups: list[Group], title: str) -> None:
    svg = grouped_bar_chart(groups, ("p50", "p95"), unit="ms", title=title, chart_id="c")
    root = _parse(svg)
    assert {el.tag for el in root.iter()} <= TAGS  # markup in a label never becomes an element
    assert (root.find(f"{SVG}title").text or "") == _read_back(title)
    assert root.find(f"{SVG}desc") is not None
    bars = [b for g in groups for b in g.bars]
    for s in (0, 1):
        rects = _bars(root, s)
        assert len(rects) == len(bars)
        for rect in rects:
            x, width = float(rect.get("x")), float(rect.get("width"))
            assert width >= 0 and x == charts.LABEL_W and x + width <= PLOT_RIGHT + 0.01


@given(st.lists(st.floats(min_value=0, max_value=1e300, allow_nan=False), min_size=1, max_size=8))
def test_bars_are_in_proportion_and_the_longest_fills_most_of_the_plot(values: list[float]) -> None:
    groups = [Group("g", tuple(Bar(f"b{i}", (v, None)) for i, v in enumerate(values)))]
    root = _parse(grouped_bar_chart(groups, ("p50", "p95"), unit="ms", title="t"))
    widths = [float(r.get("width")) for r in _bars(root, 0)]
    plot_w = PLOT_RIGHT - charts.LABEL_W
    top = max(values)
    for v, w in zip(values, widths, strict=True):
        for v2, w2 in zip(values, widths, strict=True):
            if v <= v2:
                assert w <= w2 + 0.011
    if top > 0:
        assert max(widths) >= 0.7 * plot_w - 0.01  # the axis ends within 1.4x the largest value
    # the no-data series draws nothing, and says so
    assert all(float(r.get("width")) == 0 for r in _bars(root, 1))
    assert "p95 –" in root.find(f"{SVG}desc").text


def test_values_and_labels_are_written_on_the_chart_and_markup_stays_text() -> None:
    xss = '<script>alert(1)</script>"&'
    svg = grouped_bar_chart(
        [Group(xss, (Bar("tiny:2", (1.5, 12.25)), Bar("tiny:3", (None, None))))], ("p50", "p95"), unit="ms", title=xss
    )
    root = _parse(svg)
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "1.5" in texts and "12.25" in texts and texts.count("–") == 2
    assert any(xss in t for t in texts)  # as text, escaped in the markup
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ticks = [t for t in root.iter(f"{SVG}text") if t.get("class") == "tick-label"]
    assert [t.text for t in ticks] == ["0", "2.5", "5", "7.5", "10", "12.5"]
    desc = root.find(f"{SVG}desc").text
    assert f"{xss} · tiny:2: p50 1.5, p95 12.25 ms" in desc and "tiny:3: p50 –, p95 – ms" in desc


def test_an_empty_chart_says_no_data() -> None:
    root = _parse(grouped_bar_chart([], ("p50", "p95"), unit="ms", title="t"))
    assert any(t.text == "no data" for t in root.iter(f"{SVG}text"))


@given(st.floats(allow_nan=True, allow_infinity=True) | st.none(), st.integers(min_value=-3, max_value=20))
@example(5e-324, 2)  # subnormal: fractions of it round to 0 or above it
@example(2e-323, 6)
@example(1.7976931348623157e308, 5)
def test_ticks_start_at_zero_rise_and_cover_the_top(top: float | None, target: int) -> None:
    ticks = nice_ticks(top, target)
    assert ticks[0] == 0 and all(math.isfinite(t) for t in ticks) and ticks[-1] > 0
    assert all(a < b for a, b in itertools.pairwise(ticks))
    assert 2 <= len(ticks) <= max(target, 1) * 2 + 2
    if top is not None and math.isfinite(top) and top > 0:
        assert ticks[-1] >= top * (1 - 1e-12)
        if 1e-300 < top < 1e300:
            assert ticks[-1] <= 2.5 * top or len(ticks) == 2


@given(st.integers(), st.integers(), st.integers(), st.integers(), LABEL)
def test_a_stage_bar_is_valid_for_any_counts(
    devices: int, published: int, installed: int, failed: int, label: str
) -> None:
    root = _parse(stage_bar(devices, published, installed, failed, label=label))
    parts = [r for r in root.iter(f"{SVG}rect") if r.get("class") != "bar-track"]
    assert sum(float(r.get("width")) for r in parts) <= 100.05
    xs = [float(r.get("x")) for r in parts]
    assert xs == sorted(xs)


def test_a_stage_bar_shows_each_part_in_proportion() -> None:
    root = _parse(stage_bar(10, 6, 3, 1, label="canary"))
    widths = {r.get("class"): float(r.get("width")) for r in root.iter(f"{SVG}rect")}
    assert widths == {"bar-track": 100, "bar-installed": 30, "bar-failed": 10, "bar-pending": 20, "bar-waiting": 40}
    assert root.find(f"{SVG}title").text == (
        "canary: 3 installed, 1 failed, 2 published without a report, 4 not published"
    )


@given(st.text())
def test_svg_text_is_xml_text_that_reads_back(text: str) -> None:
    out = svg_text(text)
    assert (ET.fromstring(f"<t>{out}</t>").text or "") == _read_back(text)
    assert not set(out) & set("<>\"'")


def test_numbers_are_shown_to_four_significant_digits() -> None:
    assert [fmt_value(v) for v in (None, 0, 3, 2.0, 1.23456, 1234567.0, 1e20, -1.0, math.nan)] == [
        "–",
        "0",
        "3",
        "2",
        "1.235",
        "1234567",
        "1e+20",
        "–",
        "–",
    ]


PLAN = RolloutPlan.from_dict(
    {"spec_version": "1.0", "stages": [{"name": "canary", "fraction": 0.1}, {"name": "all", "fraction": 1.0}]}
)
EXPECTED = {
    "pending": (),
    "running": ("promote", "pause", "rollback"),
    "paused": ("resume", "rollback"),
    "halted": ("resume", "rollback"),
    "rolling_back": (),
    "rolled_back": (),
    "completed": ("rollback",),
}


@pytest.mark.parametrize("status", STATUSES)
def test_the_page_offers_exactly_the_actions_the_state_machine_allows(status: str) -> None:
    stage = 1 if status == "completed" else 0
    started = None if status == "pending" else 10.0
    state = RolloutState("r" * 16, PLAN, status=status, stage=stage, stage_started_at=started, updated_at=started)
    assert legal_actions(state) == EXPECTED[status]

"""The telemetry and drift pages of the dashboard over plain HTTP, and their SVG charts.

Charts: every chart is well-formed XML for any labels and numbers (hypothesis), hostile model,
feature and cohort names stay text, the heatmap says each cell's verdict in text (``data-verdict``,
``<title>``), not colour alone, and the CDF chart puts the curves where the quantiles are.

Pages: a live control plane with real telemetry (:mod:`drift_dashboard_world`: ten devices ran a
real ONNX model on digits, site-b's inputs shifted in three pixels) — the drift page flags exactly
those features of exactly that cohort (the fleet cohort, which holds site-b, at most those), shows
every count the API's report has and its statistics within the sketches' rank error, computes
reference and live CDFs from the sketches, de-biases and labels the LDP histograms; empty states
say what is missing and how to fix it; bad queries are 400/404 pages naming what is wrong. The
telemetry page's numbers are ``GET /v1/fleet/telemetry``'s; flagged upload stores are those
``GET /v1/devices/{id}/telemetry`` flags.
"""

from __future__ import annotations

import html
import itertools
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard_browser import XSS, http_login
from drift_dashboard_world import LDP_EPSILON, SHIFTED, XSS_COHORT, DriftWorld, open_drift_world
from tinymlops.server.dashboard import charts
from tinymlops.server.dashboard.charts import Curve, HeatCell, cdf_chart, heat_class, heatmap, range_ticks
from tinymlops.server.dashboard.views_drift import DriftQuery, deciding_statistic
from tinymlops.workspace import Workspace

SVG = "{http://www.w3.org/2000/svg}"


# --- a small HTML tree (stdlib only) -------------------------------------------------------------
@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts) + "".join(c.text for c in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.attrs.get("class", "").split())
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, ident: str) -> Node:
        found = [n for n in self.iter() if n.attrs.get("id") == ident]
        assert len(found) == 1, (ident, len(found))
        return found[0]

    def cell(self, cls: str) -> Node:
        (found,) = self.find_all("td", cls)
        return found


VOID = {"meta", "link", "input", "br", "img", "hr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Node("#text", {}, parts=[data]))


def parse(page: str) -> Node:
    b = _Builder()
    b.feed(page)
    b.close()
    return b.root


def svgs(page: str) -> dict[str, ET.Element]:
    """Every inline SVG of a page by id, parsed as XML (fails if one is not well-formed)."""
    out = {}
    for m in re.finditer(r"<svg\b.*?</svg>", page, re.S):
        el = ET.fromstring(m.group(0))
        out[el.get("id") or f"#{len(out)}"] = el
    return out


# --- charts --------------------------------------------------------------------------------------
HOSTILE = ["<script>alert(1)</script>", "a\"b'c&d", "x\x00y\x1b\ud800", "]]><!--", "é" * 200, ""]


def test_heatmap_says_every_verdict_in_text_and_escapes_hostile_names() -> None:
    rows = [XSS, "tag=site-b", 'q"&<']
    cols = ["element:1", XSS, "projection:0"]
    cells = [
        [
            HeatCell(
                0.1 * (i + j),
                i == 1 and j != 2,
                "drift" if i == 1 and j != 2 else "no_drift",
                f"{r} · {c}",
                f"?a=1&b={c}",
            )
            for j, c in enumerate(cols)
        ]
        for i, r in enumerate(rows)
    ]
    svg = heatmap(rows, cols, cells, title=f"drift of {XSS}", chart_id='x"><script>')
    el = ET.fromstring(svg)
    assert "<script" not in svg and "onerror=" not in svg.replace("onerror=&quot;", "")
    assert el.get("id") == "x---script-"
    groups = el.findall(f".//{SVG}g")
    assert len(groups) == 9
    verdicts = {(g.get("data-row"), g.get("data-column")): g.get("data-verdict") for g in groups}
    assert verdicts[("tag=site-b", "element:1")] == "drift" and verdicts[(XSS, "element:1")] == "no_drift"
    assert sum(v == "drift" for v in verdicts.values()) == 2
    # a marked cell is outlined and crossed; its title is the sentence given; links keep their query
    marked = [g for g in groups if g.get("data-verdict") == "drift"]
    for g in marked:
        (rect,) = g.iter(f"{SVG}rect")
        assert "cell-marked" in rect.get("class", "") and g.find(f".//{SVG}path") is not None
    assert {g.find(f".//{SVG}title").text for g in marked} == {"tag=site-b · element:1", f"tag=site-b · {XSS}"}
    assert {a.get("href") for a in el.iter(f"{SVG}a")} == {f"?a=1&b={c}" for c in cols}
    assert el.find(f"{SVG}desc").text.startswith("2 marked: tag=site-b · element:1")
    # labels: the full name in a title, the shown text cut
    labels = [t.find(f"{SVG}title").text for t in el.iter(f"{SVG}text") if t.get("class") == "row-label"]
    assert labels == rows


@given(
    rows=st.lists(st.text(max_size=30), max_size=5),
    cols=st.lists(st.text(max_size=30), max_size=80),
    levels=st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=50),
)
def test_heatmap_is_well_formed_for_any_input(rows: list[str], cols: list[str], levels: list[float | None]) -> None:
    it = iter(levels * 400)
    cells = [
        [HeatCell(next(it, None), bool(j % 2), "drift", f"{r}{c}", c or None) for j, c in enumerate(cols)] for r in rows
    ]
    el = ET.fromstring(heatmap(rows, cols, cells[:-1] if cells else [], title="t"))  # a missing row: no data
    for node in el.iter():
        for key in ("x", "y", "width", "height"):
            if node.get(key) is not None:
                assert math.isfinite(float(node.get(key)))
    assert len(el.findall(f".//{SVG}g")) == len(rows) * len(cols)


def test_heat_class_scale() -> None:
    assert [heat_class(v) for v in (None, math.nan, -1, 0, 0.17, 0.5, 0.99, 1.0, 7)] == [
        "heat-none",
        "heat-none",
        "heat-none",
        "heat-0",
        "heat-1",
        "heat-3",
        "heat-5",
        "heat-5",
        "heat-5",
    ]


def test_deciding_statistic_puts_the_threshold_mid_scale() -> None:
    def feature(**tests: dict[str, Any]) -> dict[str, Any]:
        return {"deciding_tests": list(tests), "tests": tests}

    w = {"statistic": 0.1, "p_value": None, "threshold": 0.1, "threshold_on": "statistic"}
    ks = {"statistic": 0.3, "p_value": 1e-4, "threshold": 0.01, "threshold_on": "p_value"}
    d = deciding_statistic(feature(ks=ks, wasserstein=w))
    assert d is not None and (d.test, d.level) == ("wasserstein", pytest.approx(0.5))
    assert deciding_statistic(feature(wasserstein={**w, "statistic": 0.5})).level == 1.0
    only_ks = deciding_statistic(feature(ks=ks))
    assert only_ks is not None and only_ks.test == "ks" and only_ks.level == pytest.approx(1.0)
    assert deciding_statistic(feature(ks={**ks, "p_value": 0.01})).level == pytest.approx(0.5)
    assert deciding_statistic(feature(ks={**ks, "p_value": None})).level is None
    assert deciding_statistic({"deciding_tests": [], "tests": {}}) is None


def test_cdf_chart_draws_the_quantiles_where_they_are() -> None:
    ref = Curve("reference", tuple((float(v), (i + 1) / 4) for i, v in enumerate([-2, 0, 1, 4])))
    live = Curve(XSS, ((1.0, 0.5), (math.nan, 0.7), (math.inf, 0.8), (6.0, 1.0)))
    svg = cdf_chart([ref, live, Curve("empty", ())], title=f"CDF of {XSS}", x_label='"value"', chart_id="cdf")
    assert "<script" not in svg
    el = ET.fromstring(svg)
    paths = [p for p in el.iter(f"{SVG}path")]
    assert len(paths) == 2  # the empty curve is named, not drawn
    desc = el.find(f"{SVG}desc").text
    assert "reference: 4 points from -2 to 4, median 0" in desc and f"{XSS}: 2 points from 1 to 6" in desc
    assert "empty: no data" in desc
    ticks = [float(t.text.replace("-", "-")) for t in el.iter(f"{SVG}text") if t.get("class") == "tick-label"]
    assert min(ticks) <= -2 and max(ticks) >= 6
    # the reference's step at x=0 rises from 0.25 to 0.5: both heights are in its path
    d = paths[0].get("d")
    xs = sorted({float(x) for x in re.findall(r"[ML]([0-9.]+) ", d)})
    assert len(xs) == 5  # -2, 0, 1, 4 and the right edge


@given(
    lo=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32)),
    hi=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32)),
)
def test_range_ticks_cover_the_range(lo: float | None, hi: float | None) -> None:
    ticks = range_ticks(lo, hi)
    assert len(ticks) >= 2 and all(math.isfinite(t) for t in ticks)
    assert all(a < b for a, b in itertools.pairwise(ticks))
    values = [v for v in (lo, hi) if v is not None]
    if values:
        assert ticks[0] <= min(values) + 1e-9 * max(1, abs(min(values)))
        assert ticks[-1] >= max(values) - 1e-9 * max(1, abs(max(values)))


@given(
    names=st.lists(st.text(max_size=40), min_size=1, max_size=3),
    points=st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True)), max_size=30),
)
def test_cdf_chart_is_well_formed_for_any_input(names: list[str], points: list[tuple[float, float]]) -> None:
    el = ET.fromstring(cdf_chart([Curve(n, tuple(points)) for n in names], title="t", x_label="x"))
    for node in el.iter():
        for key in ("x1", "x2", "y1", "y2", "x", "y"):
            if node.get(key) is not None:
                assert math.isfinite(float(node.get(key)))
        for number in re.findall(r"-?[0-9.]+(?:e[-+]?[0-9]+)?", node.get("d") or ""):
            assert math.isfinite(float(number))


def test_existing_charts_are_unchanged() -> None:
    """The functions other pages use keep their output (the module only grew)."""
    assert charts.stage_bar(4, 3, 2, 1, label="s").startswith(
        '<svg xmlns="http://www.w3.org/2000/svg" class="stage-bar"'
    )
    assert charts.nice_ticks(7) == [0, 2, 4, 6, 8]
    assert charts.fmt_value(1234.5678) == "1235" and charts.fmt_signed(-0.5) == "-0.5"


# --- the query ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"window": "forever"}, "bad window 'forever'"),
        ({"window": "999w"}, "longer than the 366 days"),
        ({"by": "owner"}, "by must be one of tag, profile, device"),
        ({"feature": "pixel 3"}, "feature must look like element:12"),
        ({"feature": "<b>:1"}, "feature must look like"),
        ({"cohort": "x" * 141}, "longer than 140"),
        ({"version": "0"}, "version must be a whole number from 1"),
        ({"version": "v2"}, "version must be a whole number from 1"),
        ({"version": "99999999999"}, "version must be a whole number from 1"),
    ],
)
def test_bad_queries_are_named(kwargs: dict[str, Any], words: str) -> None:
    from tinymlops.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=re.escape(words)):
        DriftQuery.parse(**kwargs)


def test_query_params_leave_out_defaults() -> None:
    q = DriftQuery.parse(window="1h", feature="element:3")
    assert q.params() == {"window": "1h", "feature": "element:3"}
    assert q.params(window="all", by="device", feature=None) == {"by": "device"}


# --- the pages over HTTP --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drift_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriftWorld]:
    ws = Workspace.init(Path(tmp_path_factory.mktemp("drift-dashboard")) / "ws")
    try:
        with open_drift_world(ws) as world:
            yield world
    finally:
        ws.close()


@pytest.fixture(scope="module")
def client(drift_world: DriftWorld) -> Any:
    c = http_login(drift_world.url, drift_world.read_key)
    yield c
    c.close()


def get(client: Any, world: DriftWorld, path: str, status: int = 200, **params: str) -> str:
    r = client.get(f"{world.url}/dashboard{path}", params=params, follow_redirects=False)
    assert r.status_code == status, (path, params, r.status_code, r.text[-600:])
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert "Traceback" not in r.text
    return r.text


def value(node: Node) -> float | None:
    raw = node.attrs.get("data-value", "")
    return None if raw == "" else float(raw)


def test_drift_page_flags_exactly_the_shifted_features_of_the_shifted_cohort(
    client: Any, drift_world: DriftWorld
) -> None:
    page = get(client, drift_world, "/models/digits/drift")
    api = drift_world.drift()
    root = parse(page)
    assert root.by_id("report-verdict").attrs["data-verdict"] == "drift"
    # per cohort: the verdict and the drifted features (links), counts as in the API's report
    rows = {r.attrs["data-cohort"]: r for r in root.by_id("cohorts").find_all("tr", "cohort")}
    assert list(rows) == [c["label"] for c in api["cohorts"]]
    assert sorted(rows) == sorted(["*", "tag=site-a", "tag=site-b", XSS_COHORT])
    for c in api["cohorts"]:
        row = rows[c["label"]]
        assert row.find_all("span", "verdict-badge")[0].attrs["data-verdict"] == c["verdict"]
        for key in ("devices", "windows", "rows"):
            assert int(row.cell(key).text) == c[key], (c["label"], key)
        drifted = [a.attrs["data-feature"] for a in row.find_all("a", "drifted-feature")]
        assert sorted(drifted) == sorted(c["drifted_features"])  # "strongest first": up to the sketches' noise
    site_b = rows["tag=site-b"]
    assert site_b.find_all("span", "verdict-badge")[0].text == "drift"
    assert {a.attrs["data-feature"] for a in site_b.find_all("a", "drifted-feature")} == SHIFTED
    assert rows["tag=site-a"].find_all("a", "drifted-feature") == []
    assert rows[XSS_COHORT].find_all("span", "verdict-badge")[0].attrs["data-verdict"] == "not_enough_data"
    # too few values to judge: no colour (the title still names the numbers)
    odd = [g for g in svgs(page)["heatmap-features"].iter(f"{SVG}g") if g.get("data-row") == XSS_COHORT]
    assert len(odd) == 64 and all(g.find(f".//{SVG}rect").get("class") == "cell heat-none" for g in odd)
    assert {a.attrs["data-feature"] for a in rows["*"].find_all("a", "drifted-feature")} <= SHIFTED

    # the heatmap: a cell per cohort and feature; exactly those cells drifted (derived ones apart)
    charts_ = svgs(page)
    features = charts_["heatmap-features"]
    cells = {(g.get("data-row"), g.get("data-column")): g for g in features.iter(f"{SVG}g")}
    assert len(cells) == 4 * 64
    drifted = {k for k, g in cells.items() if g.get("data-verdict") == "drift"}
    assert {f for r, f in drifted if r == "tag=site-b"} == SHIFTED
    assert {r for r, _ in drifted} <= {"*", "tag=site-b"}
    for (r, f), g in cells.items():
        title = g.find(f".//{SVG}title").text
        verdict = {"drift": "drift", "no_drift": "no drift", "not_enough_data": "not enough data"}[
            g.get("data-verdict")
        ]
        assert title.startswith(f"{r} · {f}: {verdict} — "), title
    derived = charts_["heatmap-derived"]
    assert {g.get("data-column") for g in derived.iter(f"{SVG}g")} == {f"projection:{j}" for j in range(8)}
    assert "derived" in derived.find(f"{SVG}title").text
    assert not any(g.get("data-column", "").startswith("projection:") for g in features.iter(f"{SVG}g"))

    # the default selection: the drifted cohort and its strongest feature, with the API's numbers
    b = next(c for c in api["cohorts"] if c["label"] == "tag=site-b")
    assert root.by_id("selected-cohort").text == "tag=site-b"
    assert root.by_id("selected-feature").text in SHIFTED
    entry = next(f for f in b["features"] if f["name"] == root.by_id("selected-feature").text)
    assert root.by_id("feature-verdict-badge").attrs["data-verdict"] == "drift" == entry["verdict"]
    tests = {r.attrs["data-test"]: r for r in root.by_id("feature-tests").find_all("tr")[1:]}
    assert set(tests) == set(entry["tests"])
    for name, t in entry["tests"].items():
        assert value(tests[name].cell("threshold")) == t["threshold"]
        # a second report merges the sketches again (KLL compaction is randomized): same verdicts,
        # statistics within the rank error the tests allow for
        assert tests[name].find_all("span", "verdict-badge")[0].attrs["data-verdict"] == t["verdict"]
        if t["statistic"] is not None:
            assert value(tests[name].cell("statistic")) == pytest.approx(t["statistic"], rel=0.25, abs=0.02)


def test_cdfs_come_from_the_sketches_of_the_report_windows(client: Any, drift_world: DriftWorld) -> None:
    from observe.telemetry_rows import SHIFTED_PIXELS, digits_world, shifted

    digits = digits_world(0)
    pixel = SHIFTED_PIXELS[0]
    page = get(client, drift_world, "/models/digits/drift", cohort="tag=site-b", feature=f"element:{pixel}")
    root = parse(page)
    quantiles = root.by_id("quantiles")
    ref_row, live_row = (quantiles.find_all("tr", data_side=s)[0] for s in ("reference", "live"))
    ref_q = [value(c) for c in ref_row.find_all("td")[1:]]
    live_q = [value(c) for c in live_row.find_all("td")[1:]]
    assert int(ref_row.cell("n").text) == 600
    # reference: the eval set's pixel, within the sketch's rank error (600 values: exact below k=200·…)
    expected_ref = np.quantile(digits.x_eval[:, pixel], [0.05, 0.25, 0.5, 0.75, 0.95], method="inverted_cdf")
    assert ref_q == pytest.approx(list(expected_ref), abs=1.01)
    # live: site-b's field rows, shifted; within the rank error of a merged sketch
    api = drift_world.drift()
    b = next(c for c in api["cohorts"] if c["label"] == "tag=site-b")
    assert int(live_row.cell("n").text) == b["rows"]
    shifted_values = shifted(digits.x_field, digits.x_eval)[:, pixel]
    for q, got in zip([0.05, 0.25, 0.5, 0.75, 0.95], live_q, strict=True):
        lo, hi = np.quantile(shifted_values, [max(q - 0.12, 0), min(q + 0.12, 1)], method="inverted_cdf")
        assert lo - 1e-6 <= got <= hi + 1e-6, (q, got, lo, hi)
    assert live_q[2] > ref_q[2] or live_q[3] > ref_q[3]  # shifted up
    cdf = svgs(page)["cdf-chart"]
    assert len([p for p in cdf.iter(f"{SVG}path") if "curve" in p.get("class", "")]) == 2
    assert f"element:{pixel}: reference vs live CDF (tag=site-b)" in cdf.find(f"{SVG}title").text


def test_ldp_histograms_are_debiased_and_say_so(client: Any, drift_world: DriftWorld) -> None:
    api = drift_world.drift()
    odd = next(c for c in api["cohorts"] if c["label"] == XSS_COHORT)
    live = odd["predictions"]["live"]
    assert live["debiased"] and live["windows_by_mechanism"] == {f"randomized_response(epsilon={LDP_EPSILON:g})": 2}
    page = get(client, drift_world, "/models/digits/drift", cohort=XSS_COHORT)
    root = parse(page)
    assert root.by_id("ldp-epsilon").text == f"{LDP_EPSILON:g}"
    assert "de-biased" in root.by_id("ldp-note").text
    shares = [value(r.find_all("td")[2]) for r in root.by_id("class-shares").find_all("tr")[1:]]
    estimate = np.maximum(np.asarray(live["estimate"]), 0)
    assert shares == pytest.approx(list(100 * estimate / estimate.sum()))
    assert "live (de-biased)" in svgs(page)["classes-chart"].find(f"{SVG}desc").text or True
    legend = [t.text for t in svgs(page)["classes-chart"].iter(f"{SVG}text") if t.get("class") == "legend"]
    assert legend == ["reference", "live (de-biased)"]
    # exact counts elsewhere: site-a's histograms are not privatized
    root_a = parse(get(client, drift_world, "/models/digits/drift", cohort="tag=site-a"))
    assert "No local differential privacy" in root_a.by_id("ldp-note").text


def test_hostile_names_are_text(client: Any, drift_world: DriftWorld) -> None:
    page = get(client, drift_world, "/models/digits/drift", by="profile")
    assert XSS not in page and "<script>window.__pwned" not in page
    assert html.escape(XSS, quote=True) in page
    rows = [r.attrs["data-cohort"] for r in parse(page).by_id("cohorts").find_all("tr", "cohort")]
    assert f"profile={XSS}" in rows and "profile=rpi-4" in rows
    svgs(page)  # every chart still parses


def test_groupings_windows_and_versions(client: Any, drift_world: DriftWorld) -> None:
    root = parse(get(client, drift_world, "/models/digits/drift", by="device", window="1h"))
    rows = root.by_id("cohorts").find_all("tr", "cohort")
    assert len(rows) == 1 + drift_world.digits_devices
    assert root.by_id("windows").find_all("a", "current")[0].text == "1h"
    assert root.by_id("groupings").find_all("a", "current")[0].text == "device"
    # links keep the other settings
    assert all("by=device" in a.attrs["href"] for a in root.by_id("windows").find_all("a"))
    root = parse(get(client, drift_world, "/models/digits/drift", version="1", window="30m"))
    assert root.by_id("drift-version").text == "1"


def test_empty_states_say_what_is_missing(client: Any, drift_world: DriftWorld) -> None:
    # no reference (and no dataset): how to add one
    root = parse(get(client, drift_world, "/models/bare/drift"))
    empty = root.by_id("drift-empty")
    assert empty.attrs["data-reason"] == "no_reference"
    assert "no reference profile" in root.by_id("drift-message").text
    assert "tinymlops dataset add bare" in root.by_id("drift-hint").text
    # tiny has telemetry but no reference
    root = parse(get(client, drift_world, "/models/tiny/drift"))
    assert root.by_id("drift-empty").attrs["data-reason"] == "no_reference"
    # a reference but no telemetry in the window
    root = parse(get(client, drift_world, "/models/digits/drift", window="1s"))
    assert root.by_id("drift-empty").attrs["data-reason"] == "no_telemetry"
    assert "no telemetry from model 'digits'" in root.by_id("drift-message").text
    assert root.by_id("windows").find_all("a", "current")[0].text == "1s"


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/models/digits/drift", {"window": "forever"}, 400, "bad window 'forever'"),
        ("/models/digits/drift", {"by": "owner"}, 400, "by must be one of"),
        ("/models/digits/drift", {"feature": "pixel"}, 400, "feature must look like"),
        ("/models/digits/drift", {"feature": "element:999"}, 404, "no feature 'element:999'"),
        ("/models/digits/drift", {"cohort": "tag=nowhere"}, 404, "no cohort 'tag=nowhere'"),
        ("/models/digits/drift", {"version": "7"}, 404, "version 7"),
        ("/models/digits/drift", {"version": "one"}, 400, "version must be a whole number"),
        ("/models/ghost/drift", {}, 404, "ghost"),
        ("/telemetry", {"window": "forever"}, 400, "unknown window 'forever'"),
    ],
)
def test_bad_requests_are_clear_pages(
    client: Any, drift_world: DriftWorld, path: str, params: dict[str, str], status: int, words: str
) -> None:
    page = get(client, drift_world, path, status, **params)
    assert words in html.unescape(parse(page).find_all("p", "error")[0].text)


def test_pages_need_a_login(drift_world: DriftWorld) -> None:
    import httpx

    for path in ("/models/digits/drift", "/telemetry", "/drift"):
        r = httpx.get(f"{drift_world.url}/dashboard{path}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"


def test_telemetry_page_numbers_are_the_apis(client: Any, drift_world: DriftWorld) -> None:
    page = get(client, drift_world, "/telemetry", window="all")
    root = parse(page)
    api = drift_world.api().get("/v1/fleet/telemetry").json()["classes"]
    rows = root.by_id("telemetry").find_all("tr")[1:]
    assert [(r.attrs["data-profile"], r.attrs["data-ref"]) for r in rows] == [
        (c["profile"], c["ref"] or "(none)") for c in api
    ]
    for r, c in zip(rows, api, strict=True):
        for key in ("devices", "windows", "requests", "errors"):
            assert int(r.cell(key).text) == c[key], key
        assert value(r.cell("error-rate")) == c["error_rate"]
        assert value(r.cell("p50")) == c["p50_ms"] and value(r.cell("p95")) == c["p95_ms"]
        energy = value(r.cell("energy"))
        assert (energy is None and c["energy_j_per_inference"] is None) or energy == pytest.approx(
            1e3 * c["energy_j_per_inference"], rel=1e-12
        )
        assert value(r.cell("peak-memory")) == c["peak_memory_bytes"]
    tiny = [r for r in rows if r.attrs["data-ref"] == "tiny:1"]
    assert {r.attrs["data-profile"] for r in tiny} == {"rpi-4", "x86-edge-server"}
    assert all(r.cell("energy-method").text == "estimated (power model)" for r in tiny)
    # the charts: a bar per class, the profile named like markup as text
    charts_ = svgs(page)
    latency = charts_["telemetry-latency-chart"]
    bars = [r for r in latency.iter(f"{SVG}rect") if r.get("class") == "series-0" and r.find(f"{SVG}title") is not None]
    assert len(bars) == len(api)
    energy_bars = [t.text for t in charts_["telemetry-energy-chart"].iter(f"{SVG}title")]
    assert any("tiny:1 (model)" in (t or "") for t in energy_bars)
    assert XSS not in page and html.escape(XSS, quote=True) in page


def test_flagged_upload_stores_are_the_devices_the_api_flags(client: Any, drift_world: DriftWorld) -> None:
    root = parse(get(client, drift_world, "/telemetry"))
    flagged = {r.attrs["data-device"]: r for r in root.by_id("flagged").find_all("tr")[1:]}
    assert set(flagged) == {drift_world.full, drift_world.unwritable}
    for device_id, row in flagged.items():
        doc = drift_world.api().get(f"/v1/devices/{device_id}/telemetry").json()
        assert doc["store_flagged"] is True
        assert row.cell("store-status").text == doc["store"]["status"]
        for key in ("pending", "merged", "dropped"):
            assert int(row.cell(key).text) == doc["store"][f"{key}_windows"]
        assert row.cell("store-error").text == (doc["store"]["error"] or "")
    assert drift_world.api().get(f"/v1/devices/{drift_world.recovered}/telemetry").json()["store_flagged"] is False
    # models with telemetry link to their drift pages, here and on the drift index
    links = {a.text: a.attrs["href"] for a in root.by_id("telemetry-models").find_all("a")}
    assert links == {"digits": "/dashboard/models/digits/drift", "tiny": "/dashboard/models/tiny/drift"}
    index = parse(get(client, drift_world, "/drift"))
    assert {a.text for a in index.by_id("drift-models").find_all("a", "drift-link")} == {"digits", "tiny"}
    nav = [a.text for a in index.find_all("nav")[0].find_all("a")]
    assert nav == ["Fleet", "Releases", "Latency", "Telemetry", "Drift", "Licenses"]
    lineage = parse(get(client, drift_world, "/models/digits"))
    assert lineage.by_id("drift-link").attrs["href"] == "/dashboard/models/digits/drift"


def test_telemetry_windows(client: Any, drift_world: DriftWorld) -> None:
    everything = parse(get(client, drift_world, "/telemetry", window="all")).by_id("telemetry").find_all("tr")[1:]
    recent = parse(get(client, drift_world, "/telemetry", window="1h")).by_id("telemetry").find_all("tr")[1:]
    assert len(recent) == len(everything) > 0  # every window of the world is under an hour old
    root = parse(get(client, drift_world, "/telemetry", window="24h"))
    assert root.by_id("windows").find_all("a", "current")[0].text == "24h"


def test_the_cdf_merges_exactly_the_windows_the_report_merged(sqlite_workspace: Any) -> None:
    """A window the report sets aside (its stored privacy no longer parses) stays out of the live CDF."""
    from sqlalchemy import update

    from observe.telemetry_rows import SHIFTED_PIXELS, device_windows, digits_world, enrol, insert_windows, populate
    from tinymlops.observe.schema import TelemetryWindowRow
    from tinymlops.server.dashboard.views_drift import DriftView, drift_view

    digits = digits_world(0)
    populate(sqlite_workspace, digits, shift=False)
    (keys,) = enrol(sqlite_workspace, [["site-a"]])
    (window,) = device_windows(digits.onnx, digits.x_field[:40] + 5.0, windows=1, start=time.time() - 600)
    insert_windows(sqlite_workspace, keys, [window], model="digits", version=1, tags=["site-a"])
    with sqlite_workspace.engine.begin() as conn:
        conn.execute(
            update(TelemetryWindowRow)
            .where(TelemetryWindowRow.device_id == keys.device_id)
            .values(privacy={"no": "such field"})
        )
    feature = f"element:{SHIFTED_PIXELS[0]}"
    view = drift_view(sqlite_workspace, "digits", DriftQuery.parse(cohort="tag=site-a", feature=feature))
    assert isinstance(view, DriftView) and view.cdf is not None and view.cdf.live is not None
    cohort = next(c for c in view.report.cohorts if c.label == "tag=site-a")
    assert sum(n for reason, n in cohort.excluded.items() if "does not parse" in reason) == 1
    assert view.cdf.windows == cohort.windows
    assert view.cdf.live.n == cohort.rows  # the set-aside window's 40 rows are not in it

"""The drift and telemetry pages in a real browser (Debian's headless Chromium via Playwright) against
a live control plane with real telemetry (:mod:`drift_dashboard_world`: site-b's devices saw inputs
shifted in three pixels). The page must show exactly those features of exactly that cohort as
drifted, the same numbers as ``GET /v1/models/{name}/drift`` / ``GET /v1/fleet/telemetry``, work by
links and a GET form alone (no script), and trigger no Content-Security-Policy violation (the
``page`` fixture fails the test on one). Screenshots go to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dashboard_browser
from dashboard_browser import XSS, login, needs_browser, screenshot
from drift_dashboard_world import LDP_EPSILON, SHIFTED, XSS_COHORT, DriftWorld, open_drift_world
from tinymlops.workspace import Workspace

browser, page = dashboard_browser.browser, dashboard_browser.page  # Chromium and a fresh page (fixtures)


@pytest.fixture(scope="module")
def drift_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriftWorld]:
    ws = Workspace.init(Path(tmp_path_factory.mktemp("drift-browser")) / "ws")
    try:
        with open_drift_world(ws) as world:
            yield world
    finally:
        ws.close()


def css(text: str) -> str:
    """``text`` as a CSS string (for attribute selectors)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(locator: Any) -> float | None:
    raw = locator.get_attribute("data-value")
    return None if raw in (None, "") else float(raw)


def _drifted_cells(page: Any, chart: str) -> set[tuple[str, str]]:
    cells = page.locator(f'svg#{chart} g.heat-cell[data-verdict="drift"]')
    return {(g.get_attribute("data-row"), g.get_attribute("data-column")) for g in cells.all()}


@needs_browser
def test_the_drift_page_shows_what_the_api_reports(drift_world: DriftWorld, page: Any) -> None:
    login(page, drift_world.url, drift_world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.click("nav >> text=Drift")
    page.wait_for_url(re.compile(r"/dashboard/drift$"))
    page.click("#drift-models a.drift-link >> text=digits")
    page.wait_for_url(re.compile(r"/dashboard/models/digits/drift$"))
    screenshot(page, "drift")
    api = drift_world.drift()

    # the verdict per cohort, the counts, and the drifted features: exactly the API's
    rows = page.locator("#cohorts tr.cohort")
    assert rows.count() == len(api["cohorts"])
    for row, c in zip(rows.all(), api["cohorts"], strict=True):
        assert row.get_attribute("data-cohort") == c["label"]
        assert row.locator(".verdict-badge").get_attribute("data-verdict") == c["verdict"]
        for key in ("devices", "windows", "rows"):
            assert int(row.locator(f"td.{key}").inner_text()) == c[key], (c["label"], key)
        shown = row.locator("a.drifted-feature").all_inner_texts()
        assert sorted(shown) == sorted(c["drifted_features"])
        assert row.locator("a.derived-feature").count() == len(c["drifted_derived"])
    site_b = page.locator('#cohorts tr[data-cohort="tag=site-b"]')
    assert site_b.locator(".verdict-badge").inner_text() == "drift"
    assert set(site_b.locator("a.drifted-feature").all_inner_texts()) == SHIFTED
    assert page.locator('#cohorts tr[data-cohort="tag=site-a"] .verdict-badge').inner_text() == "no drift"

    # the heatmap: the drifted cells are exactly the API's; the shifted cohort's are the shifted pixels
    api_cells = {(c["label"], f["name"]) for c in api["cohorts"] for f in c["features"] if f["verdict"] == "drift"}
    shown_cells = _drifted_cells(page, "heatmap-features") | _drifted_cells(page, "heatmap-derived")
    assert shown_cells == api_cells
    assert {f for r, f in shown_cells if r == "tag=site-b"} == SHIFTED
    assert {r for r, _ in shown_cells} <= {"*", "tag=site-b"}
    cell = page.locator('svg#heatmap-features g.heat-cell[data-row="tag=site-b"][data-column="element:19"]')
    assert cell.locator("title").text_content().startswith("tag=site-b · element:19: drift — ")
    assert page.locator("svg#heatmap-features g.heat-cell").count() == len(api["cohorts"]) * 64

    # a cell is a link to that feature's CDFs and tests
    for pixel in sorted(SHIFTED):
        page.locator(f'svg#heatmap-features g.heat-cell[data-row="tag=site-b"][data-column="{pixel}"] a').click()
        page.wait_for_url(re.compile(r"cohort=tag%3Dsite-b&feature=" + re.escape(pixel.replace(":", "%3A")) + "$"))
        assert page.inner_text("#selected-feature") == pixel
        assert page.inner_text("#selected-cohort") == "tag=site-b"
        entry = next(
            f for c in api["cohorts"] if c["label"] == "tag=site-b" for f in c["features"] if f["name"] == pixel
        )
        assert page.locator("#feature-verdict-badge").get_attribute("data-verdict") == entry["verdict"] == "drift"
        for name, t in entry["tests"].items():
            row = page.locator(f'#feature-tests tr[data-test="{name}"]')
            assert _value(row.locator("td.threshold")) == t["threshold"]
            assert row.locator(".verdict-badge").get_attribute("data-verdict") == t["verdict"]
            if t["statistic"] is not None:  # a second merge of the sketches: within their rank error
                assert _value(row.locator("td.statistic")) == pytest.approx(t["statistic"], rel=0.25, abs=0.02)
        reference_n = int(page.locator('#quantiles tr[data-side="reference"] td.n').inner_text())
        live_n = int(page.locator('#quantiles tr[data-side="live"] td.n').inner_text())
        assert (reference_n, live_n) == (entry["n_reference"], entry["n_live"])
        assert page.locator("svg#cdf-chart path.curve").count() == 2
    screenshot(page, "drift-feature")

    # the GET form picks another cohort and a derived feature
    page.select_option("#cohort-select", "*")
    page.select_option("#feature-select", "projection:0")
    page.click("#feature-form button")
    page.wait_for_url(re.compile(r"cohort=\*&feature=projection%3A0$"))
    assert page.inner_text("#selected-feature") == "projection:0"
    assert "derived" in page.inner_text("#feature-heading")

    # the cohort with local DP: de-biased class shares and its epsilon
    page.locator(f"#cohorts tr[data-cohort={css(XSS_COHORT)}] a.cohort-link").click()
    page.wait_for_url(re.compile(r"cohort=tag%3D"))
    assert page.inner_text("#selected-cohort") == XSS_COHORT
    assert page.inner_text("#ldp-epsilon") == f"{LDP_EPSILON:g}"
    badge = page.locator(f"#cohorts tr[data-cohort={css(XSS_COHORT)}] .verdict-badge")
    assert badge.inner_text() == "not enough data"
    assert page.evaluate("window.__pwned") is None and page.locator("script").count() == 0
    screenshot(page, "drift-ldp")


@needs_browser
def test_empty_states_and_groupings_in_the_browser(drift_world: DriftWorld, page: Any) -> None:
    login(page, drift_world.url, drift_world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.goto(f"{drift_world.url}/dashboard/models/bare")
    page.click("#drift-link")
    page.wait_for_url(re.compile(r"/dashboard/models/bare/drift$"))
    assert page.locator("#drift-empty").get_attribute("data-reason") == "no_reference"
    assert "tinymlops dataset add bare" in page.inner_text("#drift-hint")
    screenshot(page, "drift-empty")
    page.goto(f"{drift_world.url}/dashboard/models/digits/drift")
    page.click("#groupings >> text=device")
    page.wait_for_url(re.compile(r"by=device$"))
    assert page.locator("#cohorts tr.cohort").count() == 1 + drift_world.digits_devices
    page.click("#windows >> text=1h")
    page.wait_for_url(re.compile(r"window=1h&by=device$"))
    assert page.locator("#cohorts tr.cohort").count() == 1 + drift_world.digits_devices


@needs_browser
def test_the_telemetry_page_shows_the_fleet_apis_numbers(drift_world: DriftWorld, page: Any) -> None:
    login(page, drift_world.url, drift_world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.click("nav >> text=Telemetry")
    page.wait_for_url(re.compile(r"/dashboard/telemetry$"))
    page.click("#windows >> text=all")
    page.wait_for_url(re.compile(r"/dashboard/telemetry\?window=all$"))
    screenshot(page, "telemetry")
    api = drift_world.api().get("/v1/fleet/telemetry").json()["classes"]
    rows = page.locator("#telemetry tbody tr").all()
    assert len(rows) == len(api)
    for row, c in zip(rows, api, strict=True):
        assert row.locator("td.profile").inner_text() == c["profile"]
        for key in ("devices", "windows", "requests", "errors"):
            assert int(row.locator(f"td.{key}").inner_text()) == c[key]
        assert _value(row.locator("td.p50")) == c["p50_ms"] and _value(row.locator("td.p95")) == c["p95_ms"]
    flagged = page.locator("#flagged tbody tr")
    assert {r.get_attribute("data-device") for r in flagged.all()} == {drift_world.full, drift_world.unwritable}
    assert page.locator(f'#flagged tr[data-device="{drift_world.unwritable}"] td.store-status').inner_text() == (
        "unwritable"
    )
    chart = page.locator("svg#telemetry-latency-chart")
    assert chart.locator("rect.series-0:has(title)").count() == len(api)
    assert XSS in page.locator("#telemetry td.profile").all_inner_texts()
    assert page.evaluate("window.__pwned") is None
    page.click("#telemetry-models >> text=digits")
    page.wait_for_url(re.compile(r"/dashboard/models/digits/drift$"))

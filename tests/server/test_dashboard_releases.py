"""The release, rollout and latency pages of the dashboard, in a real browser (Debian's Chromium via
Playwright) and over plain HTTP, against a live control plane where things really happened:

six enrolled devices (one with a profile named like markup) ran ``tiny:1`` (a release with no plan)
and reported its health; then ``tiny:2`` was released with a two-stage plan. Both canary devices
installed it and one reported health: the canary stage passed on its own (a verdict by the health
gate) and the second stage was published; there two devices installed it, one failed its smoke test,
one has not reported — so the last verdict waits, with criteria violated. Every install and health
report went through the device-signed endpoints.

The numbers every page shows are compared with the JSON API's (``GET /v1/releases``,
``/v1/releases/{id}``, ``/v1/releases/{id}/rollout``, ``/v1/fleet/latency``). An admin session acts
on the rollout through the page's forms and the API records the actor; read keys see no forms and
are refused; posts without the session's CSRF token change nothing. Screenshots go to
``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import dashboard_browser
import delivery_world
from dashboard_browser import XSS, http_login, login, login_token, needs_browser, screenshot, watched_page, xss_profile
from delivery_world import World, open_world, register_tiny
from live_server import start_plane
from tinymlops.devices.client import DeviceClient
from tinymlops.server.dashboard.forms import LOGIN_COOKIE
from tinymlops.server.dashboard.sessions import COOKIE_NAME
from tinymlops.workspace import Workspace

browser, page = dashboard_browser.browser, dashboard_browser.page  # Chromium and a fresh page (fixtures)
delivery = delivery_world.delivery  # tiny:1..3 on a live plane (fixture)

PLAN = {
    "spec_version": "1.0",
    "on_failure": "halt",
    "stages": [
        {"name": "canary", "fraction": 0.3, "health": {"min_reports": 2}},
        {"name": "all", "fraction": 1.0, "health": {"min_reports": 6}},
    ],
}
UNPUBLISHED_BUNDLE = "f" * 32


# --- the world ------------------------------------------------------------------------------------
def install(device: DeviceClient, bundle_id: str, *, ok: bool = True, running: str | None = None) -> None:
    report = {
        "spec_version": "1.0",
        "status": "installed" if ok else "failed",
        "reason": "ok" if ok else "smoke test failed: outputs differ from the manifest's",
        "bundle_id": bundle_id,
        "sha256": "1" * 64,
        "slot": "a",
        "active_bundle_id": bundle_id if ok else running,
        "error": None if ok else "SmokeTestError",
        "timings": {"verify_s": 0.01},
        "at": 1.0,
    }
    assert device.request("POST", "/v1/devices/me/installs", json_body=report).status == 201


def health(device: DeviceClient, bundle_id: str, *, predictions: int, errors: int, p50: float) -> None:
    report = {
        "spec_version": "1.0",
        "bundle_id": bundle_id,
        "window_start": 100.0,
        "window_end": 160.0,
        "predictions": predictions,
        "errors": errors,
        "latency_ms": {"p50": p50, "p95": round(p50 * 2.5, 3), "p99": p50 * 4, "max": p50 * 9},
        "context": None,
        "at": 161.0,
    }
    assert device.request("POST", "/v1/devices/me/health", json_body=report).status == 201


@dataclass
class Staged:
    world: World
    devices: list[DeviceClient]
    first: str  # tiny:1, no plan (completed)
    second: str  # tiny:2, staged: canary passed, second stage running, waiting
    admin_id: str
    admin_key: str
    predictions: int  # in every health report sent

    @property
    def url(self) -> str:
        return self.world.url

    def api(self, key: str | None = None) -> httpx.Client:
        return self.world.plane.http(key or self.world.read_key)

    def rollout(self) -> dict[str, Any]:
        r = self.api().get(f"/v1/releases/{self.second}/rollout")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc


@contextmanager
def staged_rollout(ws: Any) -> Iterator[Staged]:
    register_tiny(ws)
    with open_world(ws) as world:
        profiles: list[Any] = ["rpi-4", "rpi-4", "rpi-4", "jetson-orin-nano", "jetson-orin-nano", xss_profile()]
        devices = [world.plane.device(p) for p in profiles]
        by_id = {d.device_id: d for d in devices}
        sent = 0

        def report(device_id: str, bundle_id: str, predictions: int, errors: int, p50: float) -> None:
            nonlocal sent
            health(by_id[device_id], bundle_id, predictions=predictions, errors=errors, p50=p50)
            sent += predictions

        first = world.release("tiny:1")  # the profile named like markup is not in the catalog: skipped
        assert first["rollout"]["status"] == "completed" and (first["published"], first["skipped"]) == (5, 1)
        published = [a for a in first["assignments"] if a["status"] == "published"]
        for i, a in enumerate(published):
            install(by_id[a["device_id"]], a["bundle_id"])
            report(a["device_id"], a["bundle_id"], 100 + 10 * i, 0, 1.0 + 0.1 * i)

        second = world.release("tiny:2", plan=PLAN)
        stages = {a["device_id"]: a["stage"] for a in second["assignments"]}
        bundles = {a["device_id"]: a["bundle_id"] for a in second["assignments"]}
        old = {a["device_id"]: a["bundle_id"] for a in published}
        canary = sorted(d for d, s in stages.items() if s == 0)
        rest = sorted(d for d, s in stages.items() if s == 1)
        assert len(canary) == 2 and len(rest) == 3 and second["rollout"]["status"] == "running"
        install(by_id[canary[0]], bundles[canary[0]])
        report(canary[0], bundles[canary[0]], 200, 2, 1.3)
        install(by_id[canary[1]], bundles[canary[1]])  # the second report: the canary passes
        rollout = world.plane.http(world.read_key).get(f"/v1/releases/{second['id']}/rollout").json()
        assert (rollout["status"], rollout["stage"]) == ("running", 1), rollout["transitions"]
        install(by_id[rest[0]], bundles[rest[0]])
        report(rest[0], bundles[rest[0]], 300, 3, 1.6)
        install(by_id[rest[1]], bundles[rest[1]])
        report(rest[1], bundles[rest[1]], 50, 0, 2.0)
        install(by_id[rest[2]], bundles[rest[2]], ok=False, running=old[rest[2]])
        report(devices[-1].device_id, UNPUBLISHED_BUNDLE, 10, 5, 7.5)  # a bundle no release made
        admin_id, admin_key = world.plane.api_key("admin", "operator")
        yield Staged(world, devices, first["id"], second["id"], admin_id, admin_key, sent)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    """One world for the tests that only look (and the refused posts, which change nothing)."""
    ws = Workspace.init(tmp_path_factory.mktemp("staged") / "ws")
    try:
        with staged_rollout(ws) as world:
            yield world
    finally:
        ws.close()


@pytest.fixture
def fresh(sqlite_workspace: Any) -> Iterator[Staged]:
    """The same world, for a test that changes the rollout."""
    with staged_rollout(sqlite_workspace) as world:
        yield world


# --- reading numbers off a page -------------------------------------------------------------------
def number(text: str) -> float | None:
    return None if text.strip() == "–" else float(text)


def percent(text: str) -> float | None:
    return None if text.strip() == "–" else float(text.rstrip("%")) / 100


def same(shown: float | None, expected: float | None, *, rel: float = 6e-4, abs_: float = 0.0) -> bool:
    """Equal to the 4 significant digits the page shows."""
    if expected is None or shown is None:
        return shown is expected
    return shown == pytest.approx(expected, rel=rel, abs=abs_)


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def cell(row: Any, cls: str) -> str:
    text: str = row.locator(f"td.{cls}").inner_text()
    return text


def assert_release_page_matches_the_api(page: Any, s: Staged, release_id: str) -> dict[str, Any]:
    """Every number of the stage table, health panel, verdict, history and device table, against the API."""
    api = s.api()
    release = api.get(f"/v1/releases/{release_id}").json()
    ro = api.get(f"/v1/releases/{release_id}/rollout").json()
    assert page.inner_text("#release-id") == release_id
    assert page.inner_text("#rollout-status") == ro["status"]
    assert int(page.get_attribute("#rollout-stage", "data-stage")) == ro["stage"]
    assert ro["stage_name"] in page.inner_text("#rollout-stage")
    assert int(page.inner_text("#assigned")) == release["published"]
    assert int(page.inner_text("#skipped")) == release["skipped"]
    assert page.inner_text("#requested") == release["requested"]

    rows = page.locator("#stages tbody tr")
    assert rows.count() == len(ro["stages"])
    for st in ro["stages"]:
        row = page.locator(f'#stages tr[data-stage="{st["index"]}"]')
        assert cell(row, "name") == st["name"]
        assert float(row.locator("td.fraction").get_attribute("data-value")) == st["fraction"]
        assert percent(cell(row, "fraction")) == pytest.approx(st["fraction"])
        for key in ("devices", "published", "installed", "failed"):
            assert int(cell(row, key)) == st[key], (st["name"], key)
        assert cell(row, "reached") == ("yes" if st["reached"] else "no")
        bar = row.locator("svg.stage-bar")
        assert bar.count() == 1
        title = bar.locator("title").first.text_content()
        assert f"{st['installed']} installed, {st['failed']} failed" in title

    h = ro["health"]
    for ident, key in [
        ("installs-ok", "installs_ok"),
        ("installs-failed", "installs_failed"),
        ("smoke-failures", "smoke_failures"),
        ("predictions", "predictions"),
        ("prediction-errors", "prediction_errors"),
    ]:
        assert int(page.inner_text(f"#{ident}")) == h[key], ident
    assert same(number(page.inner_text("#latency-p50")), h["latency_p50_ms"])
    assert same(number(page.inner_text("#baseline-p50")), h["baseline_p50_ms"])
    reports = h["installs_ok"] + h["installs_failed"]
    assert same(percent(page.inner_text("#install-success-rate")), rate(h["installs_ok"], reports), abs_=5e-4)
    assert same(percent(page.inner_text("#smoke-failure-rate")), rate(h["smoke_failures"], reports), abs_=5e-4)
    assert same(percent(page.inner_text("#error-rate")), rate(h["prediction_errors"], h["predictions"]), abs_=5e-4)
    ratio = h["latency_p50_ms"] / h["baseline_p50_ms"] if h["latency_p50_ms"] and h["baseline_p50_ms"] else None
    assert same(number(page.inner_text("#latency-ratio")), ratio)

    v = ro["verdict"]
    assert v is not None and page.inner_text("#verdict-decision") == v["decision"]
    assert page.inner_text("#verdict-reason") == v["reason"]
    assert page.locator("#checks tbody tr").count() == len(v["checks"])
    for c in v["checks"]:
        row = page.locator(f'#checks tr[data-criterion="{c["criterion"]}"]')
        assert same(number(cell(row, "measured")), c["measured"]), c
        assert same(number(cell(row, "threshold")), c["threshold"]), c
        assert cell(row, "ok") == {True: "passed", False: "failed", None: "no data"}[c["ok"]], c
        assert cell(row, "detail") == c["detail"]

    shown = [
        (cell(r, "from").split()[0], cell(r, "to").split()[0], cell(r, "actor"), cell(r, "reason"))
        for r in page.locator("#transitions tbody tr").all()
    ]
    assert shown == [(t["from_status"], t["to_status"], t["actor"], t["reason"]) for t in ro["transitions"]]

    assert page.locator("#release-devices tbody tr").count() == len(release["assignments"])
    for a in release["assignments"]:
        row = page.locator(f'#release-devices tr[data-device="{a["device_id"]}"]')
        assert cell(row, "profile") == a["profile"]
        assert row.locator("td.stage").get_attribute("data-stage") == ("" if a["stage"] is None else str(a["stage"]))
        assert cell(row, "assignment") == a["status"] and cell(row, "ref") == (a["ref"] or "(none)")
        report = a["latest_report"]
        assert cell(row, "install") == (report["status"] if report else "(none)")
        assert (cell(row, "published") == "not yet") == (a["published_at"] is None)
        assert (cell(row, "withdrawn") == "") == (a["withdrawn_at"] is None)
    return ro


def action_forms(page: Any) -> set[str]:
    return {f.get_attribute("id").removeprefix("action-") for f in page.locator("form.action").all()}


# --- browser: reading -----------------------------------------------------------------------------
@needs_browser
def test_release_pages_show_what_the_api_says_and_link_onwards(staged: Staged, page: Any) -> None:
    login(page, staged.url, staged.world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.click("nav >> text=Releases")
    page.wait_for_url(re.compile(r"/dashboard/releases$"))
    screenshot(page, "releases")

    listed = staged.api().get("/v1/releases").json()
    assert [r["id"] for r in listed] == [staged.second, staged.first]  # newest first
    assert int(page.inner_text("#release-total")) == 2
    for r in listed:
        row = page.locator(f'#releases tr[data-release="{r["id"]}"]')
        assert cell(row, "requested") == r["requested"] and cell(row, "created-by") == r["created_by"]
        assert cell(row, "rollout-status") == r["rollout"]["status"]
        assert row.locator("td.stage").get_attribute("data-stage") == str(r["rollout"]["stage"])
        assert r["rollout"]["stage_name"] in cell(row, "stage")
        assert (int(cell(row, "assigned")), int(cell(row, "skipped"))) == (r["published"], r["skipped"])
        created = datetime.fromisoformat(r["created_at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert cell(row, "created-at") == created

    page.click(f'#releases tr[data-release="{staged.second}"] a.release-link')
    page.wait_for_url(re.compile(rf"/dashboard/releases/{staged.second}$"))
    screenshot(page, "release-staged")
    ro = assert_release_page_matches_the_api(page, staged, staged.second)
    # what the world set up really happened: the canary passed by itself, the second stage waits
    assert ro["status"] == "running" and ro["stage_name"] == "all"
    assert [(t["to_status"], t["to_stage"], t["actor"]) for t in ro["transitions"]][-1] == ("running", 1, "auto")
    assert ro["verdict"]["decision"] == "wait"
    assert {c["criterion"] for c in ro["verdict"]["checks"] if c["ok"] is False} >= {
        "min_install_success_rate",
        "max_smoke_failure_rate",
        "min_reports",
    }
    assert ro["health"]["smoke_failures"] == 1 and ro["health"]["baseline_p50_ms"] is not None
    assert [(s["installed"], s["failed"], s["published"]) for s in ro["stages"]] == [(2, 0, 2), (2, 1, 3)]
    # a read key sees no forms; the device whose profile is markup is listed as text
    assert page.locator("form.action").count() == 0 and page.locator("#actions").count() == 0
    assert XSS in page.locator("#release-devices td.profile").all_inner_texts()
    assert page.evaluate("window.__pwned") is None and page.locator("script").count() == 0

    page.click("#model-link")
    page.wait_for_url(re.compile(r"/dashboard/models/tiny$"))
    assert page.inner_text("#model-name") == "tiny"

    # the fleet overview links each device to the release that published what it runs
    page.click("nav >> text=Fleet")
    page.wait_for_url(re.compile(r"/dashboard$"))
    release = staged.api().get(f"/v1/releases/{staged.second}").json()
    for a in release["assignments"]:
        link = page.locator(f'#devices tr[data-device="{a["device_id"]}"] td.release')
        expected = (a["deployment"] or {}).get("release_id") or "(none)"
        assert link.inner_text() == expected
    canary = next(a["device_id"] for a in release["assignments"] if a["stage"] == 0)
    page.click(f'#devices tr[data-device="{canary}"] a.release-link')
    page.wait_for_url(re.compile(rf"/dashboard/releases/{staged.second}$"))
    page.click(f'#release-devices tr[data-device="{canary}"] a.device-link')
    page.wait_for_url(re.compile(rf"/dashboard#device-{canary}$"))

    first = staged.api().get(f"/v1/releases/{staged.first}/rollout").json()
    page.goto(f"{staged.url}/dashboard/releases/{staged.first}")
    assert page.inner_text("#rollout-status") == first["status"] == "completed"
    assert page.locator("#stages tbody tr").count() == 1
    page.goto(f"{staged.url}/dashboard/releases/0123456789abcdef")
    assert "no release with id" in page.inner_text(".error")
    page.goto(f"{staged.url}/dashboard/releases/NOT-AN-ID")
    assert "16 lower-case hex digits" in page.inner_text(".error")


@needs_browser
def test_latency_page_numbers_and_chart_equal_the_api(staged: Staged, page: Any) -> None:
    login(page, staged.url, staged.world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.click("nav >> text=Latency")
    page.wait_for_url(re.compile(r"/dashboard/latency$"))
    assert page.inner_text("#windows a.current") == "24h"
    page.click("#windows >> text=all")
    page.wait_for_url(re.compile(r"/dashboard/latency\?window=all$"))
    screenshot(page, "latency")

    api = staged.api().get("/v1/fleet/latency", params={"window": "all"}).json()
    assert api["window"] == "all"
    classes = api["classes"]
    # tiny:1 on both catalog profiles, tiny:2 on those of the devices that reported it, and the
    # device whose profile is named like markup on a bundle no release made
    assert {(c["profile"], c["ref"]) for c in classes if c["ref"] == "tiny:1"} == {
        ("rpi-4", "tiny:1"),
        ("jetson-orin-nano", "tiny:1"),
    }
    assert {c["ref"] for c in classes} == {"tiny:1", "tiny:2", None}
    assert [(c["profile"], c["predictions"]) for c in classes if c["ref"] is None] == [(XSS, 10)]
    assert sum(c["predictions"] for c in classes) == staged.predictions
    rows = page.locator("#latency tbody tr").all()
    assert len(rows) == len(classes)
    for row, c in zip(rows, classes, strict=True):
        assert cell(row, "profile") == c["profile"] and cell(row, "ref") == (c["ref"] or "(none)")
        assert same(number(cell(row, "p50")), c["p50_ms"]) and same(number(cell(row, "p95")), c["p95_ms"])
        for key in ("predictions", "errors", "devices", "reports"):
            assert int(cell(row, key)) == c[key], key
        assert same(percent(cell(row, "error-rate")), c["error_rate"], abs_=5e-4)

    chart = page.locator("svg#latency-chart")
    assert chart.count() == 1
    assert "Latency by device class" in chart.locator("title").first.text_content()
    desc = chart.locator("desc").text_content()
    p50_bars, p95_bars = chart.locator("rect.series-0:has(title)"), chart.locator("rect.series-1:has(title)")
    assert p50_bars.count() == p95_bars.count() == len(classes)
    values = chart.locator("text.value").all_text_contents()
    assert len(values) == 2 * len(classes)
    for i, (row, c) in enumerate(zip(rows, classes, strict=True)):
        assert values[2 * i : 2 * i + 2] == [cell(row, "p50"), cell(row, "p95")]
        assert f"{c['profile']} · {c['ref'] or '(none)'}: p50 {cell(row, 'p50')}, p95 {cell(row, 'p95')} ms" in desc
        w50 = float(p50_bars.nth(i).get_attribute("width"))
        w95 = float(p95_bars.nth(i).get_attribute("width"))
        assert w50 / w95 == pytest.approx(c["p50_ms"] / c["p95_ms"], rel=0.02)
    groups = chart.locator("text.group-label").all()
    assert [g.locator("title").text_content() for g in groups] == sorted({c["profile"] for c in classes})
    assert chart.locator("text.tick-label").count() >= 3
    # the profile named like markup is text, in the table and in the chart
    assert page.evaluate("window.__pwned") is None and page.locator("script").count() == 0
    assert XSS in page.locator("#latency td.profile").all_inner_texts()

    for w in ("1h", "24h", "7d"):
        page.click(f"#windows >> text={w}")
        page.wait_for_url(re.compile(rf"/dashboard/latency\?window={w}$"))
        api_w = staged.api().get("/v1/fleet/latency", params={"window": w}).json()["classes"]
        assert page.locator("#latency tbody tr").count() == len(api_w) == len(classes)  # all reports are recent
    response = page.goto(f"{staged.url}/dashboard/latency?window=forever")
    assert response.status == 400 and "unknown window 'forever'" in page.inner_text(".error")
    assert "1h, 24h, 7d, all" in page.inner_text(".error")


@needs_browser
def test_the_console_watch_catches_a_csp_violation(browser: Any, staged: Staged) -> None:
    """The control for the CSP checks: a page served under the dashboard's policy that does use an
    inline style and an inline script is reported by the same watch every ``page`` fixture runs."""
    from tinymlops.server.routers.dashboard import SECURITY_HEADERS

    p, errors, violations = watched_page(browser)
    try:
        probe = f"{staged.url}/dashboard/csp-probe"
        p.route(
            probe,
            lambda route: route.fulfill(
                status=200,
                headers={**SECURITY_HEADERS, "Content-Type": "text/html"},
                body='<p style="color:red">x</p><script>window.__ran = 1</script>',
            ),
        )
        p.goto(probe)
        p.wait_for_load_state("load")
        assert p.evaluate("window.__ran") is None
        assert violations, "Chromium reported no CSP violation: the watch in dashboard_browser.page sees nothing"
        assert not errors
    finally:
        p.context.close()


# --- browser: acting ------------------------------------------------------------------------------
@needs_browser
@pytest.mark.slow
def test_an_admin_acts_through_the_forms_and_the_api_records_it(fresh: Staged, page: Any) -> None:
    actor = f"dashboard:api-key:{fresh.admin_id}"
    release_page = f"{fresh.url}/dashboard/releases/{fresh.second}"
    login(page, fresh.url, fresh.admin_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    assert "operator (admin)" in page.inner_text("header")
    page.goto(release_page)
    assert action_forms(page) == {"promote", "pause", "rollback"}
    screenshot(page, "release-admin")

    # pause, with a reason that is markup
    page.fill("#reason-pause", XSS)
    page.click("#action-pause button")
    page.wait_for_url(release_page)
    ro = fresh.rollout()
    assert ro["status"] == "paused"
    last = ro["transitions"][-1]
    assert (last["from_status"], last["to_status"], last["actor"], last["reason"]) == ("running", "paused", actor, XSS)
    assert page.locator("#transitions tbody tr").last.locator("td.reason").inner_text() == XSS
    assert page.evaluate("window.__pwned") is None
    assert action_forms(page) == {"resume", "rollback"}
    assert_release_page_matches_the_api(page, fresh, fresh.second)

    # resume; then the rollout changes under a page still showing "promote": the form's post is a 409
    page.click("#action-resume button")
    page.wait_for_url(release_page)
    assert page.inner_text("#rollout-status") == "running" and action_forms(page) == {"promote", "pause", "rollback"}
    r = fresh.api(fresh.world.release_key).post(f"/v1/releases/{fresh.second}/rollout/pause", json={"reason": "api"})
    assert r.status_code == 200
    before = fresh.rollout()
    with page.expect_response(lambda resp: resp.request.method == "POST") as answer:
        page.click("#action-promote button")
    assert answer.value.status == 409
    assert "cannot promote a paused rollout" in page.inner_text("#action-error")
    assert fresh.rollout()["transitions"] == before["transitions"]
    assert action_forms(page) == {"resume", "rollback"}  # the page shows the state as it is now
    screenshot(page, "release-409")

    # resume and promote: the last stage completes
    page.click("#action-resume button")
    page.wait_for_url(release_page)
    page.fill("#reason-promote", "looks fine")
    page.click("#action-promote button")
    page.wait_for_url(release_page)
    ro = fresh.rollout()
    assert ro["status"] == "completed"
    assert [(t["to_status"], t["actor"]) for t in ro["transitions"][-2:]] == [("running", actor), ("completed", actor)]
    assert ro["transitions"][-1]["reason"] == "looks fine"
    assert action_forms(page) == {"rollback"}

    # roll back: every device it reached is offered tiny:1 again
    page.fill("#reason-rollback", "customer complaint")
    page.click("#action-rollback button")
    page.wait_for_url(release_page)
    ro = fresh.rollout()
    assert ro["status"] in ("rolling_back", "rolled_back")
    rollback = next(t for t in ro["transitions"] if t["to_status"] == "rolling_back")
    assert (rollback["actor"], rollback["reason"]) == (actor, "customer complaint")
    assert page.inner_text("#rollout-status") == ro["status"]
    assert int(page.inner_text("#devices-back")) == ro["devices_back"]
    assert page.locator("form.action").count() == 0 and page.locator("#no-actions").count() == 1
    release = fresh.api().get(f"/v1/releases/{fresh.second}").json()
    assert all(a["withdrawn_at"] for a in release["assignments"] if a["published_at"])
    assert_release_page_matches_the_api(page, fresh, fresh.second)
    screenshot(page, "release-rolled-back")


@needs_browser
def test_a_read_key_sees_no_forms_and_its_posts_are_refused(staged: Staged, page: Any) -> None:
    before = staged.rollout()
    login(page, staged.url, staged.world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.goto(f"{staged.url}/dashboard/releases/{staged.second}")
    assert page.locator("form.action").count() == 0
    for action in ("promote", "pause", "rollback"):
        r = page.request.post(
            f"{staged.url}/dashboard/releases/{staged.second}/rollout/{action}",
            form={"reason": "let me", "csrf": "guess"},
            max_redirects=0,
        )
        assert r.status == 403 and "needs an API key with scope 'admin'" in html.unescape(r.text())
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert staged.rollout() == before


# --- over HTTP ------------------------------------------------------------------------------------
def _csrf(client: httpx.Client, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, r.text
    tokens = set(re.findall(r'name="csrf" value="([^"]+)"', r.text))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def test_posts_without_the_sessions_csrf_token_or_admin_scope_change_nothing(staged: Staged) -> None:
    page_url = f"{staged.url}/dashboard/releases/{staged.second}"
    post_url = f"{page_url}/rollout/pause"
    admin = http_login(staged.url, staged.admin_key)
    other = http_login(staged.url, staged.admin_key)
    token, other_token = _csrf(admin, page_url), _csrf(other, page_url)
    assert token != other_token and len(token) >= 40
    _, release_key = staged.world.plane.api_key("release", "releaser-2")
    releaser = http_login(staged.url, release_key)
    assert "csrf" not in releaser.get(page_url).text  # no forms, no token
    before = staged.rollout()

    refused = [
        (admin, {"reason": "no token"}, 403, "CSRF token is missing or wrong"),
        (admin, {"csrf": "", "reason": "empty"}, 403, "CSRF"),
        (admin, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}, 403, "CSRF"),
        (admin, {"csrf": other_token}, 403, "CSRF"),  # another session's token
        (admin, {"csrf": "é" * 43}, 403, "CSRF"),
        (admin, {"csrf": [token, token]}, 403, "CSRF"),  # ambiguous
        (releaser, {"csrf": token}, 403, "scope 'admin'"),
        (admin, {"csrf": token, "reason": "x" * 1001}, 400, "longer than 1000"),
        (admin, {"csrf": token, **{f"f{i}": "x" for i in range(8)}}, 400, "more than 8 fields"),
    ]
    for client, form, status, needle in refused:
        r = client.post(post_url, data=form, follow_redirects=False)
        assert r.status_code == status and needle in html.unescape(r.text), (form, r.status_code, r.text[-400:])
        assert r.headers["content-type"].startswith("text/html") and "Traceback" not in r.text
    r = admin.post(post_url, json={"csrf": token}, follow_redirects=False)
    assert r.status_code == 415
    r = admin.post(
        post_url, content=b"csrf=" + b"a" * 20_000, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413
    r = admin.post(f"{page_url}/rollout/explode", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 404
    r = admin.post(f"{staged.url}/dashboard/releases/0123456789abcdef/rollout/pause", data={"csrf": token})
    assert r.status_code == 404 and "no release with id" in r.text
    r = admin.post(f"{page_url}/rollout/resume", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 409 and "cannot resume a running rollout" in r.text and 'name="csrf"' in r.text
    # no session at all: to the login page
    r = httpx.post(post_url, data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert staged.rollout() == before

    # a logged-out session's token is dead with it
    old_cookie = admin.cookies[COOKIE_NAME]
    admin.post(f"{staged.url}/dashboard/logout")
    r = httpx.post(post_url, data={"csrf": token}, cookies={COOKIE_NAME: old_cookie}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert staged.rollout() == before


def test_the_login_form_needs_its_login_token(staged: Staged) -> None:
    url = f"{staged.url}/dashboard/login"
    key = staged.world.read_key
    client = httpx.Client()
    token = login_token(client, staged.url)
    assert client.cookies[LOGIN_COOKIE] == token
    refused: list[tuple[dict[str, str], bool]] = [
        ({"api_key": key}, True),  # no token in the form
        ({"api_key": key, "login_token": "forged"}, True),  # not the cookie's
        ({"api_key": key, "login_token": token}, False),  # no cookie: a post from another site
    ]
    for form, with_cookie in refused:
        c = client if with_cookie else httpx.Client()
        r = c.post(url, data=form, follow_redirects=False)
        assert r.status_code == 403 and "did not come from this site" in r.text, form
        assert COOKIE_NAME not in r.cookies
    token = login_token(client, staged.url)  # each refusal sent a fresh form
    r = client.post(url, data={"api_key": key, "login_token": token}, follow_redirects=False)
    assert r.status_code == 303 and COOKIE_NAME in r.cookies


def test_the_latency_api_needs_a_read_key_and_a_known_window(staged: Staged) -> None:
    anonymous = staged.world.plane.http()
    assert anonymous.get("/v1/fleet/latency").status_code == 401
    reader = staged.api()
    r = reader.get("/v1/fleet/latency", params={"window": "forever"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "ValidationError"
    assert reader.get("/v1/fleet/latency", params={"since": "1h"}).status_code == 422
    r = staged.devices[0].request("GET", "/v1/fleet/latency", check=False)
    assert r.status == 401  # a device's signature is not an API key
    doc = reader.get("/v1/fleet/latency").json()
    assert doc["window"] == "24h" and doc["classes"]


def test_the_latency_window_counts_reports_by_when_they_arrived(sqlite_workspace: Any, tmp_path: Path) -> None:
    """A server whose clock runs ahead: reports received two hours ago drop out of the 1h window only."""
    now = [datetime.now(UTC).timestamp()]
    register_tiny(sqlite_workspace)
    plane = start_plane(sqlite_workspace, clock=lambda: now[0])
    try:
        _, read_key = plane.api_key("read", "reader")
        device = plane.device("rpi-4")
        health(device, UNPUBLISHED_BUNDLE, predictions=40, errors=4, p50=3.0)
        reader = plane.http(read_key)
        cookies = http_login(plane.url, read_key)
        now[0] += 2 * 3600
        expected = {"1h": 0, "24h": 1, "7d": 1, "all": 1}
        for window, n in expected.items():
            classes = reader.get("/v1/fleet/latency", params={"window": window}).json()["classes"]
            assert len(classes) == n, window
            html = cookies.get(f"{plane.url}/dashboard/latency", params={"window": window}).text
            assert html.count("<tr data-profile=") == n, window
            assert ('id="no-latency"' in html) == (n == 0)
        (c,) = reader.get("/v1/fleet/latency", params={"window": "all"}).json()["classes"]
        assert (c["profile"], c["ref"], c["predictions"], c["errors"], c["p50_ms"]) == ("rpi-4", None, 40, 4, 3.0)
        assert c["error_rate"] == 0.1 and c["devices"] == 1
    finally:
        plane.close()


def test_a_release_that_published_nothing_shows_no_rollout(delivery: World) -> None:
    device = delivery.plane.device(xss_profile())  # not in the catalog: skipped
    release = delivery.release("tiny:1", [device.device_id])
    assert release["status"] == "empty" and release["rollout"] is None
    admin = http_login(delivery.url, delivery.plane.admin_key)
    r = admin.get(f"{delivery.url}/dashboard/releases/{release['id']}")
    assert r.status_code == 200 and 'id="no-rollout"' in r.text and 'name="csrf"' not in r.text
    assert "&lt;script&gt;window.__pwned=1" in r.text and "<script>" not in r.text
    assert 'class="assignment">skipped<' in r.text
    listed = admin.get(f"{delivery.url}/dashboard/releases").text
    row = re.search(rf'<tr data-release="{release["id"]}">.*?</tr>', listed)
    assert row and 'class="rollout-status status-(none)">(none)<' in row.group(0)
    assert 'class="num assigned">0<' in row.group(0) and 'class="num skipped">1<' in row.group(0)

"""The license pages against a live control plane whose devices really metered and reported: one device
cloned (its ledger copied to a second meter under the same key, both reporting), one honest, and one
whose license was revoked with a reason holding markup. In Debian's headless Chromium (Playwright):
the pages show the API's numbers, the clone flag highlighted and linked to its device, forms only for
an admin — whose top-up and revoke land in the API — and no Content-Security-Policy violation (the
``page`` fixture fails a test on one). Over plain HTTP: a post without the session's CSRF token or
without the ``admin`` scope changes nothing. Screenshots go to ``test-artifacts/dashboard/``."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dashboard_browser
from dashboard_browser import XSS, http_login, login, needs_browser, screenshot
from licensed_devices import MODEL, MeteredDevice, fetch, post_report
from live_server import Plane, start_plane
from tinymlops.devices.client import DeviceClient
from tinymlops.server.routers.dashboard import _top_up_terms
from tinymlops.workspace import Workspace

browser, page = dashboard_browser.browser, dashboard_browser.page  # Chromium and a fresh page (fixtures)


@dataclass
class LicensingWorld:
    plane: Plane
    read_key: str
    cloned: DeviceClient
    honest: DeviceClient
    revoked: DeviceClient
    cloned_license: str
    honest_license: str
    revoked_license: str
    meters: list[MeteredDevice] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.plane.url

    def api(self, path: str, **params: Any) -> Any:
        r = self.plane.admin.get(f"/v1{path}", params=params)
        assert r.status_code == 200, r.text
        return r.json()


def _issue(plane: Plane, device_id: str, queries: int) -> str:
    r = plane.admin.post(
        "/v1/licenses", json={"device_id": device_id, "model": MODEL, "queries": queries, "valid_days": 30}
    )
    assert r.status_code == 201, r.text
    license_id: str = r.json()["license_id"]
    return license_id


def _reported(client: DeviceClient, meter: MeteredDevice, calls: int) -> None:
    meter.serve(calls)
    next_seq = next(c["next_seq"] for c in fetch(client)["chains"] if c["model"] == MODEL)
    r = post_report(client, meter.report(next_seq))
    assert r.status == 201, r.body


def _world(tmp: Path) -> Iterator[LicensingWorld]:
    ws = Workspace.init(tmp / "ws")
    plane = start_plane(ws)
    meters: list[MeteredDevice] = []
    try:
        _, read_key = plane.api_key("read", "reader")
        cloned, honest, revoked = plane.device(), plane.device(), plane.device()
        world = LicensingWorld(
            plane,
            read_key,
            cloned,
            honest,
            revoked,
            _issue(plane, cloned.device_id, 1000),
            _issue(plane, honest.device_id, 100),
            _issue(plane, revoked.device_id, 50),
            meters,
        )
        original = MeteredDevice.open(cloned.keys, ws.root, tmp / "original")
        copy = MeteredDevice.open(cloned.keys, ws.root, tmp / "copy")
        fair = MeteredDevice.open(honest.keys, ws.root, tmp / "honest")
        meters += [original, copy, fair]
        for m, client in ((original, cloned), (copy, cloned), (fair, honest)):
            m.install(fetch(client))
        _reported(honest, fair, 10)
        _reported(cloned, original, 8)
        # the copy reports its own entries: the chain forks at seq 0 ...
        copy.serve(8)
        assert post_report(cloned, copy.report()).status == 201
        # ... and both branches keep growing: two devices with one identity
        original.serve(8)
        assert post_report(cloned, original.report(3)).status == 201
        copy.serve(8)
        assert post_report(cloned, copy.report(3)).status == 201
        r = plane.admin.post(f"/v1/licenses/{world.revoked_license}/revoke", json={"reason": XSS})
        assert r.status_code == 200, r.text
        yield world
    finally:
        for m in meters:
            m.close()
        plane.close()
        ws.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LicensingWorld]:
    yield from _world(Path(tmp_path_factory.mktemp("licenses-dashboard")))


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[LicensingWorld]:
    """A world of its own, for a test that changes it."""
    yield from _world(tmp_path)


@needs_browser
def test_the_licenses_page_shows_the_clone_and_the_apis_numbers(world: LicensingWorld, page: Any) -> None:
    login(page, world.url, world.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.click("nav >> text=Licenses")
    page.wait_for_url(re.compile(r"/dashboard/licenses$"))
    screenshot(page, "licenses")
    assert page.evaluate("window.__pwned") is None  # the revoke reason's markup stayed text

    # each chain's latest license, with the API's numbers
    api = {lic["license_id"]: lic for lic in world.api("/licenses") if lic["status"] != "superseded"}
    rows = page.locator("#licenses tbody tr")
    assert rows.count() == len(api) == 3
    for row in rows.all():
        lic = api[row.get_attribute("data-license")]
        assert row.locator("td.status").inner_text() == lic["status"]
        assert row.locator("td.device").inner_text() == lic["device_id"]
        for cell, key in (("used", "chain_used"), ("licensed", "chain_licensed"), ("remaining", "chain_remaining")):
            assert int(row.locator(f"td.{cell}").inner_text()) == lic[key], (cell, lic)
        bar = row.locator("svg.usage-bar")
        assert (int(bar.get_attribute("data-used")), int(bar.get_attribute("data-licensed"))) == (
            lic["chain_used"],
            lic["chain_licensed"],
        )
        assert int(row.locator("td.alerts").inner_text()) == lic["alerts"]
    assert page.locator(f'#licenses tr[data-license="{world.revoked_license}"] td.status').inner_text() == "revoked"

    # the flags: exactly the audit's, alerts first, the clone highlighted and linked to its device
    audit = world.api("/licensing/audit")
    flags = page.locator("#flags tbody tr")
    assert flags.count() == len(audit)
    severities = [f.get_attribute("data-severity") for f in flags.all()]
    assert severities == sorted(severities, key=lambda s: s != "alert")
    assert {(f.get_attribute("data-flag"), f.get_attribute("data-kind")) for f in flags.all()} == {
        (str(f["id"]), f["kind"]) for f in audit
    }
    clone_rows = page.locator('#flags tr[data-kind="clone"]')
    assert clone_rows.count() >= 1
    first_clone = clone_rows.first
    assert "flag-highlight" in (first_clone.get_attribute("class") or "")
    assert first_clone.get_attribute("data-severity") == "alert"
    assert first_clone.locator("td.device").inner_text() == world.cloned.device_id
    assert (
        page.locator(f'#flags tr[data-kind="clone"] td.device:not(:has-text("{world.cloned.device_id}"))').count() == 0
    )
    first_clone.locator("a.device-link").click()
    page.wait_for_url(re.compile(rf"/dashboard#device-{world.cloned.device_id}$"))
    assert page.locator(f"#device-{world.cloned.device_id}").count() == 1

    # the cloned chain's license: both branches, the server's position, its flags; no forms for a reader
    page.goto(f"{world.url}/dashboard/licenses")
    page.click(f'#licenses tr[data-license="{world.cloned_license}"] a.license-link')
    page.wait_for_url(re.compile(rf"/dashboard/licenses/{world.cloned_license}$"))
    screenshot(page, "license-cloned")
    shown = world.api(f"/licenses/{world.cloned_license}")
    assert page.locator("#chain-branches").inner_text() == str(shown["chain"]["branches"]) == "2"
    assert page.locator("#chain-next-seq").inner_text() == str(shown["chain"]["next_seq"])
    assert page.locator("#chain-head").inner_text() == shown["chain"]["head"]
    assert int(page.locator("#chain-used").inner_text()) == shown["chain_used"]
    kinds = page.locator("#license-flags tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert sorted(kinds) == sorted(f["kind"] for f in shown["flags"]) and "clone" in kinds
    assert page.locator("form.action").count() == 0 and page.locator("#actions").count() == 0

    # the revoked license shows its reason as text
    page.goto(f"{world.url}/dashboard/licenses/{world.revoked_license}")
    assert page.locator("#revoke-reason-shown").inner_text() == XSS
    assert page.evaluate("window.__pwned") is None


@needs_browser
def test_an_admin_tops_up_and_revokes_through_the_forms(fresh: LicensingWorld, page: Any) -> None:
    world = fresh
    login(page, world.url, world.plane.admin_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.goto(f"{world.url}/dashboard/licenses/{world.honest_license}")
    assert page.locator("#action-top-up").count() == 1 and page.locator("#action-revoke").count() == 1
    screenshot(page, "license-admin")

    page.fill("#top-up-queries", "250")
    page.fill("#top-up-days", "7")
    page.click("#action-top-up button")
    page.wait_for_url(re.compile(r"/dashboard/licenses/[0-9a-f]{32}$"))
    topped = page.url.rsplit("/", 1)[1]
    assert topped != world.honest_license
    api = world.api(f"/licenses/{topped}")
    assert api["previous_license_id"] == world.honest_license and api["queries"] == 250
    assert api["chain_licensed"] == 350 and api["status"] == "active"
    assert page.locator("#license-status").inner_text() == "active"
    assert int(page.locator("#chain-licensed").inner_text()) == 350
    assert page.locator("#chain-licenses tbody tr").count() == 2

    # a superseded license offers no action, and a top-up of it is the service's conflict, on the page
    page.goto(f"{world.url}/dashboard/licenses/{world.honest_license}")
    assert page.locator("#no-actions").count() == 1
    admin = http_login(world.url, world.plane.admin_key)
    token = _csrf(admin, f"{world.url}/dashboard/licenses/{topped}")
    r = admin.post(
        f"{world.url}/dashboard/licenses/{world.honest_license}/top-up", data={"csrf": token, "queries": "9"}
    )
    assert r.status_code == 409 and topped in r.text and 'id="action-error"' in r.text
    assert world.api(f"/licenses/{topped}")["chain_licensed"] == 350
    page.goto(f"{world.url}/dashboard/licenses/{topped}")
    page.fill("#revoke-reason", "chargeback")
    page.click("#action-revoke button")
    page.wait_for_url(re.compile(rf"/dashboard/licenses/{topped}$"))
    assert page.locator("#license-status").inner_text() == "revoked"
    assert world.api(f"/licenses/{topped}")["revoke_reason"] == "chargeback"
    # the device hears of it
    assert [r["license_id"] for r in fetch(world.honest)["revocations"]] == [topped]


# --- over HTTP ------------------------------------------------------------------------------------
def _csrf(client: httpx.Client, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, r.text
    tokens = set(re.findall(r'name="csrf" value="([^"]+)"', r.text))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def test_posts_without_the_csrf_token_or_the_admin_scope_change_nothing(world: LicensingWorld) -> None:
    lid = world.honest_license
    page_url = f"{world.url}/dashboard/licenses/{lid}"
    admin = http_login(world.url, world.plane.admin_key)
    reader = http_login(world.url, world.read_key)
    token = _csrf(admin, page_url)
    assert "csrf" not in reader.get(page_url).text  # no forms, no token
    before = world.api("/licenses")

    refused = [
        (admin, "revoke", {"reason": "no token"}, 403, "CSRF token is missing or wrong"),
        (admin, "top-up", {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B"), "queries": "5"}, 403, "CSRF"),
        (admin, "top-up", {"csrf": [token, token], "queries": "5"}, 403, "CSRF"),
        (reader, "revoke", {"csrf": token, "reason": "mine"}, 403, "scope 'admin'"),
        (admin, "top-up", {"csrf": token, "queries": "lots"}, 400, "queries must be a whole number"),
        (admin, "top-up", {"csrf": token, "queries": "0"}, 400, "queries must be a whole number"),
        (admin, "top-up", {"csrf": token, "queries": "5", "days": "-1"}, 400, "days must be a whole number"),
        (admin, "revoke", {"csrf": token, "reason": "  "}, 400, "give a reason"),
        (admin, "revoke", {"csrf": token, "reason": "x" * 201}, 400, "give a reason"),
        (admin, "explode", {"csrf": token}, 404, "no such license action"),
    ]
    for client, action, form, status, needle in refused:
        r = client.post(f"{page_url}/{action}", data=form, follow_redirects=False)
        assert r.status_code == status and needle in html.unescape(r.text), (form, r.status_code, r.text[-400:])
        assert r.headers["content-type"].startswith("text/html") and "Traceback" not in r.text
    r = admin.post(f"{world.url}/dashboard/licenses/{'0' * 32}/revoke", data={"csrf": token, "reason": "why"})
    assert r.status_code == 404
    r = admin.post(f"{world.url}/dashboard/licenses/not-an-id/revoke", data={"csrf": token, "reason": "why"})
    assert r.status_code == 404
    r = httpx.post(f"{page_url}/revoke", data={"csrf": token, "reason": "x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert world.api("/licenses") == before

    for path, status in (
        ("/dashboard/licenses?show=everything", 400),
        ("/dashboard/licenses/zzz", 404),
        (f"/dashboard/licenses/{'0' * 32}", 404),
        ("/dashboard/licenses?show=all", 200),
    ):
        r = reader.get(f"{world.url}{path}")
        assert r.status_code == status, (path, r.text[-300:])
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert httpx.get(f"{world.url}/dashboard/licenses", follow_redirects=False).status_code == 303


#: form values: any text, digit strings with digits int() reads but ASCII does not hold ('²', '١'), a huge number
FIELD_TEXT = st.one_of(st.text(max_size=20), st.from_regex(r"\A[0-9\u00b2\u0661]{1,20}\Z"), st.just("9" * 5000))


@given(st.dictionaries(st.sampled_from(["queries", "days", "csrf", "other"]), st.lists(FIELD_TEXT, max_size=2)))
def test_the_top_up_form_is_terms_or_a_message_never_an_exception(fields: dict[str, list[str]]) -> None:
    terms = _top_up_terms(fields, 1_800_000_000.0)
    if isinstance(terms, str):
        assert terms.startswith(("queries must be", "days must be"))
    else:
        queries, until = terms
        assert 1 <= queries <= 10**12 and (until is None or until > 1_800_000_000)


def test_the_licenses_page_reads_only_the_newest_licenses(monkeypatch: pytest.MonkeyPatch, workspace: Any) -> None:
    """A fleet's every license is tens of thousands: the page reads the newest MAX_LICENSES and says
    where the others are (here MAX_LICENSES is 3, and 5 are issued)."""
    from enrolled_devices import enrol_device
    from licensing_world import DAY, licensing
    from metering_world import T0
    from tinymlops.crypto.keys import key_id
    from tinymlops.server.dashboard import pages_licenses, views_licenses

    service, _, clock = licensing(workspace)
    issued = []
    for _ in range(5):
        clock.now += 1
        device = key_id(enrol_device(workspace).signing)
        issued.append(service.issue(device_id=device, model=MODEL, queries=5, valid_until=T0 + DAY).license_id)
    monkeypatch.setattr(views_licenses, "MAX_LICENSES", 3)
    view = views_licenses.licenses_view(service, show="all")
    assert [r.license_id for r in view.licenses] == issued[:1:-1] and view.truncated
    assert "Of the newest 3 licenses only" in pages_licenses.licenses_page(view, "who")
    monkeypatch.setattr(views_licenses, "MAX_LICENSES", 5)
    view = views_licenses.licenses_view(service, show="all")
    assert len(view.licenses) == 5 and not view.truncated
    assert 'id="licenses-truncated"' not in pages_licenses.licenses_page(view, "who")

"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a live
control plane with a registered model (variants, recipe, metrics), enrolled devices, a release and
install reports. The numbers each page shows are compared with what the JSON API returns.

Screenshots go to ``test-artifacts/dashboard/`` (git-ignored; the path is printed). Without
``/usr/bin/chromium`` the browser tests skip, except in CI (``CI`` set), where they fail loudly.
Install the browser with ``scripts/browser.sh``; never ``playwright install``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dashboard_browser
from dashboard_browser import XSS, login_token, needs_browser
from dashboard_browser import counts as _counts
from dashboard_browser import login as _login
from dashboard_browser import screenshot as _screenshot
from dashboard_browser import xss_profile as _xss_profile
from delivery_world import World, open_world, register_tiny
from tiny_models import tiny_onnx
from tinymlops.server.dashboard.pages import esc
from tinymlops.server.dashboard.sessions import COOKIE_NAME, SessionStore
from tinymlops.spec.recipe import RecipeSpec

browser, page = dashboard_browser.browser, dashboard_browser.page  # Chromium and a fresh page (fixtures)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def fleet(sqlite_workspace: Any) -> Iterator[World]:
    """tiny:1..3 with two variants of tiny:1 (one evaluated, one failed derivation); six devices on
    three profiles; a release of tiny:1 to four of them, three of which reported the install."""
    ws = sqlite_workspace
    register_tiny(ws)
    base = ws.registry.resolve("tiny:1")
    recipe = RecipeSpec(name="scaled", recipe="identity", params={"scale": 2}, tools={"numpy": np.__version__})
    child = ws.registry.add_variant(base, tiny_onnx(2.0), base.info, recipe, variant="scaled")
    ws.registry.add_variant(child, tiny_onnx(2.0), base.info, recipe, variant="scaled/again")
    ws.registry.record_failed_derivation(base, "broken", {"recipe": "x"}, "it broke")
    ws.registry.add_evaluation(child.id, "generated:seed=0", "host", {"accuracy": 0.875})
    with open_world(ws) as world:
        devices = [world.plane.device(p) for p in ("rpi-4", "rpi-4", "rpi-4", "jetson-orin-nano", "x86-edge-server")]
        world.plane.device(_xss_profile())
        release = world.release("tiny:1", [d.device_id for d in devices[:4]])
        bundles = {a["device_id"]: a["bundle_id"] for a in release["assignments"]}
        for d in devices[:3]:
            report = {
                "spec_version": "1.0",
                "status": "installed",
                "reason": "ok",
                "bundle_id": bundles[d.device_id],
                "sha256": "1" * 64,
                "slot": "a",
                "active_bundle_id": bundles[d.device_id],
                "error": None,
                "timings": {"verify_s": 0.01},
                "at": 1.0,
            }
            d.request("POST", "/v1/devices/me/installs", json_body=report)
        yield world


# --- browser tests --------------------------------------------------------------------------------
@needs_browser
def test_pages_show_what_the_api_says_and_link_to_each_other(fleet: World, page: Any) -> None:
    api = fleet.plane.http(fleet.read_key)
    _login(page, fleet.url, fleet.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    _screenshot(page, "fleet")

    devices = api.get("/v1/devices").json()
    assert int(page.inner_text("#device-total")) == len(devices) == 6
    assert _counts(page, "by-profile") == dict(Counter(d["profile_name"] for d in devices))
    assert _counts(page, "by-status") == dict(Counter(d["status"] for d in devices))
    # variants: what the release assigned to the devices that reported installing its bundle
    deployed = {}
    for r in api.get("/v1/releases").json():
        for a in api.get(f"/v1/releases/{r['id']}").json()["assignments"]:
            if a["deployment"] and a["deployment"]["release_id"] == r["id"]:
                deployed[a["device_id"]] = (a["ref"], a["deployment"]["bundle_id"], a["deployment"]["last_status"])
    assert len(deployed) == 3
    variants = Counter(ref for ref, _, _ in deployed.values())
    variants["(none)"] = len(devices) - len(deployed)
    assert _counts(page, "by-variant") == dict(variants)
    assert variants["(none)"] == 3 and set(variants) - {"(none)"} <= {"tiny:1", "tiny:1/scaled", "tiny:1/scaled/again"}
    for d in devices:
        row = page.locator(f'#devices tr[data-device="{d["id"]}"]')
        assert row.locator("td.profile").inner_text() == d["profile_name"]
        assert row.locator("td.status").inner_text() == d["status"]
        ref, bundle, status = deployed.get(d["id"], ("(none)", "(none)", "(none)"))
        assert (row.locator("td.variant").inner_text(), row.locator("td.bundle").inner_text()) == (ref, bundle)
        assert row.locator("td.install").inner_text() == status
        assert row.locator("td.seen").inner_text() != "never"  # every device has made a signed request

    models = api.get("/v1/models").json()
    assert [m["name"] for m in models] == ["tiny"]
    row = page.locator("#models tbody tr")
    assert (int(row.locator(".versions").inner_text()), int(row.locator(".variants").inner_text())) == (
        models[0]["versions"],
        models[0]["variants"],
    )
    assert int(row.locator(".failed").inner_text()) == models[0]["failed_derivations"] == 1

    page.click("a.model-link")
    page.wait_for_url(re.compile(r"/dashboard/models/tiny$"))
    _screenshot(page, "lineage-tiny")
    assert page.inner_text("#model-name") == "tiny"
    assert int(page.inner_text("#versions")) == models[0]["versions"] == 3
    assert int(page.inner_text("#variants")) == models[0]["variants"] == 2

    def flatten(nodes: list[dict[str, Any]], depth: int = 0) -> list[tuple[str, int, str, dict[str, Any]]]:
        out = []
        for n in nodes:
            out.append((n["ref"], depth, n["status"], n["metrics"]))
            out += flatten(n["children"], depth + 1)
        return out

    expected = flatten(api.get("/v1/models/tiny/lineage").json())
    shown = [
        (r.get_attribute("data-ref"), int(r.get_attribute("data-depth")), r.locator(".node-status").inner_text())
        for r in page.locator("#lineage tbody tr").all()
    ]
    assert shown == [(ref, depth, status) for ref, depth, status, _ in expected]
    assert ("tiny:1/scaled/again", 2, "ready") in shown and ("tiny:1/broken", 1, "failed") in shown
    scaled = page.locator('#lineage tr[data-ref="tiny:1/scaled"]')
    assert '"accuracy": 0.875' in scaled.locator(".metrics").inner_text()
    assert '"scale": 2' in scaled.locator(".recipe").inner_text()
    assert "it broke" in page.locator('#lineage tr[data-ref="tiny:1/broken"] .error').inner_text()

    page.click("text=← Fleet")
    page.wait_for_url(re.compile(r"/dashboard$"))
    page.goto(f"{fleet.url}/dashboard/models/nosuch")
    assert "no model named 'nosuch'" in page.inner_text(".error")


@needs_browser
def test_without_login_every_page_redirects_and_a_bad_key_is_refused(fleet: World, page: Any) -> None:
    for path in ("/dashboard", "/dashboard/models/tiny", "/dashboard/models/nosuch"):
        page.goto(fleet.url + path)
        assert page.url == f"{fleet.url}/dashboard/login", path
    for key, message in [
        ("tmk_0123456789abcdef_" + "A" * 43, "unknown API key"),
        ("not-a-key", "API key"),
        ("tmd_0123456789abcdef_" + "A" * 43, "API key"),
    ]:
        _login(page, fleet.url, key)
        assert page.url == f"{fleet.url}/dashboard/login"
        assert "refused" in page.inner_text("#login-error") and message in page.inner_text("#login-error")
        assert [c for c in page.context.cookies() if c["name"] == COOKIE_NAME] == []
    _screenshot(page, "login-refused")
    key_id, key = fleet.plane.api_key("read", "soon-revoked")
    assert fleet.plane.admin.post(f"/v1/admin/api-keys/{key_id}/revoke").status_code == 200
    _login(page, fleet.url, key)
    assert "revoked" in page.inner_text("#login-error")
    page.goto(f"{fleet.url}/dashboard")
    assert page.url.endswith("/dashboard/login")


@needs_browser
def test_session_cookie_is_httponly_strict_and_ends_on_logout_and_on_revocation(fleet: World, page: Any) -> None:
    key_id, key = fleet.plane.api_key("read", "browser")
    _login(page, fleet.url, key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    (cookie,) = page.context.cookies()
    assert cookie["name"] == COOKIE_NAME and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert key not in cookie["value"] and len(cookie["value"]) >= 40  # opaque, not the key
    assert page.evaluate("document.cookie") == ""
    assert "browser (read)" in page.inner_text("header")

    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/dashboard/login$"))
    page.goto(f"{fleet.url}/dashboard")
    assert page.url.endswith("/dashboard/login")
    # the old cookie value is dead server side too, not only deleted in the browser
    r = httpx.get(f"{fleet.url}/dashboard", cookies={COOKIE_NAME: cookie["value"]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"

    _login(page, fleet.url, key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    assert fleet.plane.admin.post(f"/v1/admin/api-keys/{key_id}/revoke").status_code == 200
    page.goto(f"{fleet.url}/dashboard/models/tiny")
    assert page.url.endswith("/dashboard/login")


@needs_browser
def test_xss_in_a_device_profile_renders_as_text(fleet: World, page: Any) -> None:
    _login(page, fleet.url, fleet.read_key)
    page.wait_for_url(re.compile(r"/dashboard$"))
    _screenshot(page, "fleet-xss")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script").count() == 0 and page.locator("main img").count() == 0
    profiles = page.locator("#devices td.profile").all_inner_texts()
    assert XSS in profiles
    assert XSS in _counts(page, "by-profile")
    html = page.content()
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    # the policy forbids scripts anyway (defence in depth, not what the test above relies on)
    r = httpx.get(f"{fleet.url}/dashboard/login")
    assert "default-src 'none'" in r.headers["content-security-policy"]


# --- without a browser ----------------------------------------------------------------------------
def test_login_form_refuses_malformed_posts_and_nothing_is_writable(fleet: World) -> None:
    url = f"{fleet.url}/dashboard/login"
    client = httpx.Client()
    token = login_token(client, fleet.url)
    r = client.post(url, json={"api_key": fleet.read_key})
    assert r.status_code == 415 and "x-www-form-urlencoded" in r.text
    r = client.post(url, data={"api_key": "", "login_token": token})
    assert r.status_code == 400 and "enter an API key" in r.text
    r = client.post(url, content=b"api_key=%ff%fe", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (400, 401) and "Traceback" not in r.text
    token = login_token(client, fleet.url)
    r = client.post(url, data={"api_key": fleet.read_key, "login_token": token}, follow_redirects=False)
    assert r.status_code == 303 and COOKIE_NAME in r.cookies
    cookies = {COOKIE_NAME: r.cookies[COOKIE_NAME]}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/dashboard", "/dashboard/models/tiny"):
            assert httpx.request(method, fleet.url + path, cookies=cookies).status_code == 405, (method, path)
    css = httpx.get(f"{fleet.url}/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and "body" in css.text
    assert not any(p.startswith("/dashboard") for p in httpx.get(f"{fleet.url}/openapi.json").json()["paths"])


def test_sessions_expire() -> None:
    now = [1000.0]
    store = SessionStore(ttl_s=60, clock=lambda: now[0])
    token = store.create("id", "name", "read")
    assert store.get(token) is not None and store.get("other") is None and store.get(None) is None
    now[0] += 59
    assert store.get(token) is not None
    now[0] += 1
    assert store.get(token) is None and len(store) == 0


@given(st.text())
def test_escaped_text_has_no_markup(text: str) -> None:
    out = esc(text)
    assert not set(out) & set("<>\"'") and out.replace("&lt;", "<").replace("&gt;", ">").count("<") == text.count("<")

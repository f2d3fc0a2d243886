"""The dashboard's tests in a real browser: Debian's headless Chromium (``/usr/bin/chromium``) driven
by Playwright, plus the same login over plain HTTP.

A plain module (``from dashboard_browser import browser, page  # noqa: F401`` registers the fixtures).

``needs_browser``       skip without ``/usr/bin/chromium`` — except in CI (``CI`` set), where it fails
``browser`` / ``page``  one Chromium per module; a fresh context per test. The page fails its test on a
                        JavaScript error and on any Content-Security-Policy violation Chromium reports
``login(page, …)``      log in through the form; ``http_login(url, key)`` the same with httpx
``screenshot``          a full-page PNG in ``test-artifacts/dashboard/`` (git-ignored)

Install the browser with ``scripts/browser.sh``; never ``playwright install``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest

from tinymlops.server.dashboard.sessions import COOKIE_NAME

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
#: what Chromium logs to the console when the Content-Security-Policy blocks something
CSP_VIOLATION = "Content Security Policy"

needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason=f"{CHROMIUM} is missing (run scripts/browser.sh); in CI this fails instead of skipping",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"CI is set but {CHROMIUM} is missing: scripts/test.sh runs scripts/browser.sh to install it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def watched_page(browser: Any) -> tuple[Any, list[str], list[str]]:
    """A new page in a fresh context, with the lists its JavaScript errors and CSP violations go to."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    violations: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("console", lambda m: violations.append(m.text) if CSP_VIOLATION in m.text else None)
    return p, errors, violations


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    p, errors, violations = watched_page(browser)
    yield p
    p.context.close()
    assert not errors, errors
    assert not violations, violations


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    assert path.stat().st_size > 1000
    return path


def xss_profile() -> dict[str, Any]:
    """The rpi-4 profile under a name that is markup."""
    doc = tomllib.loads(files("tinymlops.targets").joinpath("profiles/rpi-4.toml").read_text())
    doc["name"] = XSS
    return doc


def login(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/dashboard/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")


def counts(page: Any, table: str) -> dict[str, int]:
    out = {}
    for row in page.locator(f"#{table} tbody tr").all():
        out[row.locator("td.key").inner_text()] = int(row.locator("td.num").inner_text())
    return out


def login_token(client: httpx.Client, url: str) -> str:
    """GET the login form (its cookie lands in ``client``) and return the form's login token."""
    r = client.get(f"{url}/dashboard/login")
    assert r.status_code == 200, r.text
    match = re.search(r'name="login_token" value="([^"]+)"', r.text)
    assert match, "the login form has no login token"
    return match.group(1)


def http_login(url: str, key: str) -> httpx.Client:
    """An httpx client logged in to the dashboard with ``key`` (as a browser does: form, then post)."""
    client = httpx.Client(timeout=30)
    token = login_token(client, url)
    r = client.post(f"{url}/dashboard/login", data={"api_key": key, "login_token": token})
    assert r.status_code == 303 and COOKIE_NAME in client.cookies, r.text
    return client


__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "CSP_VIOLATION",
    "XSS",
    "browser",
    "counts",
    "http_login",
    "login",
    "login_token",
    "needs_browser",
    "page",
    "screenshot",
    "watched_page",
    "xss_profile",
]

"""The release and latency pages rendered from any data (no server): whatever text a device, an
operator or a rollout reason holds, the HTML has only the elements and attributes the templates
write — no script, no event handler — and the action forms appear only with a CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from tinymlops.server.dashboard.pages import latency_page
from tinymlops.server.dashboard.pages_release import MAX_DEVICE_ROWS, release_page, releases_page
from tinymlops.server.dashboard.views import LatencyRow, LatencyView
from tinymlops.server.dashboard.views_release import (
    CheckRow,
    HealthPanel,
    ReleaseDetail,
    ReleaseDeviceRow,
    ReleaseRow,
    RolloutView,
    StageRow,
    TransitionRow,
    VerdictView,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
TAGS = {
    "html", "head", "meta", "title", "link", "body", "header", "h1", "nav", "a", "form", "span", "button", "main",
    "p", "h2", "code", "dl", "dt", "dd", "table", "thead", "tbody", "tr", "th", "td", "div", "label", "input",
    "svg", "rect", "g", "text", "line", "desc", "figure", "figcaption",
}  # fmt: skip
ATTRIBUTES = {
    "lang", "charset", "name", "content", "rel", "href", "method", "action", "class", "type", "id", "value",
    "for", "maxlength", "placeholder", "role", "data-release", "data-stage", "data-value", "data-criterion",
    "data-device", "data-profile", "data-ref", "data-group", "xmlns", "viewbox", "preserveaspectratio",
    "aria-label", "aria-labelledby", "aria-current", "x", "y", "width", "height", "x1", "x2", "y1", "y2",
    "text-anchor",
}  # fmt: skip


class Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.csrf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes |= {a for a, _ in attrs}
        if dict(attrs).get("name") == "csrf":
            self.csrf.append(dict(attrs).get("value") or "")


def structure(html: str) -> Structure:
    parser = Structure()
    parser.feed(html)
    parser.close()
    assert parser.tags <= TAGS, parser.tags - TAGS
    assert parser.attributes <= ATTRIBUTES, parser.attributes - ATTRIBUTES
    return parser


def detail(text: str, n_devices: int = 2, actions: tuple[str, ...] = ("promote", "pause", "rollback")) -> ReleaseDetail:
    row = ReleaseRow("0123456789abcdef", text, text, text, NOW, "published", "running", 1, text, 2, n_devices, 0)
    stages = (
        StageRow(0, text, 0.1, 1, 1, 1, 0, True, False, {text: 1}),
        StageRow(1, text, 1.0, n_devices - 1, n_devices - 1, 0, 1, True, True, {}),
    )
    health = HealthPanel(1, 1, 1, 1, 10, 1, 1.5, None)
    verdict = VerdictView(text, text, NOW, (CheckRow(text, 0.5, 0.95, False, text), CheckRow(text, None, 1, None, "")))
    transitions = (TransitionRow(NOW, "running", 0, "running", 1, text, text, text),)
    rollout = RolloutView(
        "running", 1, text, stages, "halt", NOW, NOW, health, verdict, transitions, None, None, actions
    )
    devices = tuple(
        ReleaseDeviceRow(f"{i:016x}", text, "published", text, 1, text, text, NOW, None, text, text)
        for i in range(n_devices)
    )
    return ReleaseDetail(row, rollout, devices)


@given(st.text(max_size=80))
def test_release_pages_keep_any_text_inert(text: str) -> None:
    page = structure(release_page(detail(text), text, csrf="token-1", error=text))
    assert page.csrf == ["token-1"] * 3  # one form per action allowed
    structure(release_page(detail(text), text))
    structure(releases_page([detail(text).release], text))


@given(st.text(max_size=80), st.one_of(st.none(), st.floats()))
def test_the_latency_page_keeps_any_text_inert(text: str, value: float | None) -> None:
    rows = [LatencyRow(text, text, 1, 1, 10, 1, 0.1, value, value), LatencyRow("b", "x", 1, 1, 0, 0, None, None, None)]
    structure(latency_page(LatencyView("24h", rows), text))


def test_forms_only_with_a_token_and_only_for_legal_actions() -> None:
    assert 'name="csrf"' not in release_page(detail("x"), "reader (read)")
    page = release_page(detail("x", actions=("resume",)), "ops (admin)", csrf="t")
    assert 'id="action-resume"' in page and 'id="action-promote"' not in page
    page = release_page(detail("x", actions=()), "ops (admin)", csrf="t")
    assert 'id="no-actions"' in page and 'name="csrf"' not in page


def test_a_huge_release_lists_the_first_devices_and_says_how_many_there_are() -> None:
    page = release_page(detail("x", n_devices=MAX_DEVICE_ROWS + 5), "reader (read)")
    assert page.count("<tr data-device=") == MAX_DEVICE_ROWS
    assert f"Showing the first {MAX_DEVICE_ROWS} of {MAX_DEVICE_ROWS + 5} devices" in page
    assert "Showing the first" not in release_page(detail("x", n_devices=3), "reader (read)")

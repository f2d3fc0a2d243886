"""HTML for the dashboard pages. Every value from the database goes through :func:`esc` (text and
attribute context alike), so a device profile or tag holding markup renders as inert text.

This module holds the layout (:func:`layout`: head, navigation, logout), the login, fleet, lineage,
latency and error pages; the release pages are in :mod:`~tinymlops.server.dashboard.pages_release`
and the SVG in :mod:`~tinymlops.server.dashboard.charts`."""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from tinymlops.server.dashboard.charts import Bar, Group, fmt_value, grouped_bar_chart
from tinymlops.server.dashboard.views import WINDOWS, DeviceRow, FleetOverview, LatencyView, ModelLineage

BASE = "/dashboard"
NAV = (
    ("Fleet", ""),
    ("Releases", "/releases"),
    ("Latency", "/latency"),
    ("Telemetry", "/telemetry"),
    ("Drift", "/drift"),
    ("Licenses", "/licenses"),
)


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def when(dt: datetime | None, never: str = "never") -> str:
    return never if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def num(value: float | None) -> str:
    """A count or measurement: integers as they are, others to 4 significant digits; ``–`` for none."""
    return fmt_value(value)


def pct(value: float | None) -> str:
    """A rate in [0, 1] as a percentage with one decimal; ``–`` for none."""
    return "–" if value is None else f"{100 * value:.1f}%"


def release_href(release_id: str) -> str:
    return f"{BASE}/releases/{quote(release_id, safe='')}"


def layout(title: str, body: str, *, who: str | None = None) -> str:
    nav = ""
    if who is not None:
        links = "".join(f'<a href="{BASE}{path}">{name}</a>' for name, path in NAV)
        nav = (
            f"<nav>{links}"
            f'<form method="post" action="{BASE}/logout" class="logout">'
            f'<span class="who">{esc(who)}</span><button type="submit">Log out</button></form></nav>'
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · tinymlops</title>"
        f'<link rel="stylesheet" href="{BASE}/static/dashboard.css"></head>'
        f"<body><header><h1>tinymlops</h1>{nav}</header><main>{body}</main></body></html>\n"
    )


def login_page(login_token: str, error: str | None = None) -> str:
    message = f'<p class="error" role="alert" id="login-error">{esc(error)}</p>' if error else ""
    body = (
        '<section class="login"><h2>Log in</h2>'
        "<p>Use an API key with scope <code>read</code> or higher. Only a key with scope <code>admin</code> "
        "may act on rollouts; everything else is read-only.</p>"
        f"{message}"
        f'<form method="post" action="{BASE}/login">'
        f'<input type="hidden" name="login_token" value="{esc(login_token)}">'
        '<label for="api_key">API key</label>'
        '<input id="api_key" name="api_key" type="password" autocomplete="off" required>'
        '<button type="submit">Log in</button></form></section>'
    )
    return layout("Log in", body)


def _count_table(table_id: str, heading: str, rows: list[tuple[str, int]]) -> str:
    cells = "".join(f'<tr><td class="key">{esc(k)}</td><td class="num">{n}</td></tr>' for k, n in rows)
    return (
        f'<table id="{table_id}" class="counts"><thead><tr><th>{esc(heading)}</th><th>devices</th></tr></thead>'
        f"<tbody>{cells}</tbody></table>"
    )


def _release_cell(release_id: str | None) -> str:
    if not release_id:
        return '<td class="release">(none)</td>'
    return (
        f'<td class="release"><a class="release-link" href="{release_href(release_id)}">'
        f"<code>{esc(release_id)}</code></a></td>"
    )


def _device_row(d: DeviceRow) -> str:
    return (
        f'<tr data-device="{esc(d.id)}" id="device-{esc(d.id)}"><td class="id"><code>{esc(d.id)}</code></td>'
        f'<td class="profile">{esc(d.profile)}</td>'
        f'<td class="tags">{esc(", ".join(d.tags))}</td>'
        f'<td class="variant">{esc(d.variant)}</td>'
        f"{_release_cell(d.release_id)}"
        f'<td class="bundle"><code>{esc(d.bundle_id)}</code></td>'
        f'<td class="install">{esc(d.install_status)}</td>'
        f'<td class="status status-{esc(d.status)}">{esc(d.status)}</td>'
        f'<td class="seen">{esc(when(d.last_seen))}</td></tr>'
    )


def fleet_page(view: FleetOverview, who: str) -> str:
    device_rows = "".join(_device_row(d) for d in view.devices)
    model_rows = "".join(
        f'<tr><td><a class="model-link" href="{BASE}/models/{quote(m.name, safe="")}">{esc(m.name)}</a></td>'
        f'<td class="num versions">{m.versions}</td><td class="num variants">{m.variants}</td>'
        f'<td class="num failed">{m.failed_derivations}</td></tr>'
        for m in view.models
    )
    body = (
        f'<h2>Fleet <span id="device-total" class="badge">{len(view.devices)}</span> devices</h2>'
        '<div class="grid">'
        + _count_table("by-profile", "profile", view.by_profile)
        + _count_table("by-variant", "variant", view.by_variant)
        + _count_table("by-status", "status", view.by_status)
        + "</div>"
        '<h2>Models</h2><table id="models"><thead><tr><th>model</th><th>versions</th><th>variants</th>'
        f"<th>failed derivations</th></tr></thead><tbody>{model_rows}</tbody></table>"
        '<h2>Devices</h2><table id="devices"><thead><tr><th>device</th><th>profile</th><th>tags</th>'
        "<th>variant</th><th>release</th><th>bundle</th><th>last install</th><th>status</th><th>last seen</th>"
        "</tr></thead>"
        f"<tbody>{device_rows}</tbody></table>"
    )
    return layout("Fleet", body, who=who)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def lineage_page(view: ModelLineage, who: str) -> str:
    m = view.summary
    rows = "".join(
        f'<tr class="node node-{esc(r.status)}" data-ref="{esc(r.ref)}" data-depth="{r.depth}">'
        f'<td class="ref"><span class="indent">{"│ " * max(r.depth - 1, 0)}{"└ " if r.depth else ""}</span>'
        f"<code>{esc(r.ref)}</code></td>"
        f'<td class="node-status">{esc(r.status)}</td>'
        f'<td>{esc(r.format or "")}</td><td class="num">{esc(r.size_bytes if r.size_bytes is not None else "")}</td>'
        f"<td>{esc(r.target or '')}</td>"
        f'<td class="recipe"><code>{esc(_json(r.recipe) if r.recipe else "")}</code></td>'
        f'<td class="metrics"><code>{esc(_json(r.metrics) if r.metrics else "")}</code></td>'
        f'<td class="error">{esc(r.error)}</td></tr>'
        for r in view.rows
    )
    body = (
        f'<p><a href="{BASE}">← Fleet</a></p>'
        f'<h2>Model <span id="model-name">{esc(m.name)}</span></h2>'
        f'<p><a id="drift-link" href="{BASE}/models/{quote(m.name, safe="")}/drift">Drift of its inputs and '
        "predictions across the fleet</a></p>"
        f'<p class="description">{esc(m.description)}</p>'
        f'<dl class="summary"><dt>versions</dt><dd id="versions">{m.versions}</dd>'
        f'<dt>variants</dt><dd id="variants">{m.variants}</dd>'
        f'<dt>failed derivations</dt><dd id="failed">{m.failed_derivations}</dd></dl>'
        '<h2>Lineage</h2><table id="lineage"><thead><tr><th>ref</th><th>status</th><th>format</th>'
        "<th>bytes</th><th>target</th><th>recipe</th><th>metrics</th><th>error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return layout(f"Model {m.name}", body, who=who)


def latency_page(view: LatencyView, who: str) -> str:
    """Latency per device class: window links, a grouped SVG bar chart (p50 and p95 per variant
    ref, grouped by profile) and the same numbers as a table."""
    windows = "".join(
        f'<a class="window current" href="{BASE}/latency?window={w}" aria-current="page">{w}</a>'
        if w == view.window
        else f'<a class="window" href="{BASE}/latency?window={w}">{w}</a>'
        for w in WINDOWS
    )
    groups = [
        Group(profile, tuple(Bar(r.ref, (r.p50_ms, r.p95_ms)) for r in rows)) for profile, rows in view.by_profile
    ]
    chart = grouped_bar_chart(
        groups,
        ("p50", "p95"),
        unit="ms",
        axis_label="latency (ms)",
        title=f"Latency by device class, reports of the last {view.window}: p50 and p95 (ms) per variant",
        chart_id="latency-chart",
    )
    rows = "".join(
        f'<tr data-profile="{esc(r.profile)}" data-ref="{esc(r.ref)}">'
        f'<td class="profile">{esc(r.profile)}</td><td class="ref"><code>{esc(r.ref)}</code></td>'
        f'<td class="num p50">{num(r.p50_ms)}</td><td class="num p95">{num(r.p95_ms)}</td>'
        f'<td class="num predictions">{r.predictions}</td><td class="num errors">{r.errors}</td>'
        f'<td class="num error-rate">{pct(r.error_rate)}</td><td class="num devices">{r.devices}</td>'
        f'<td class="num reports">{r.reports}</td></tr>'
        for r in view.rows
    )
    body = (
        f'<h2>Latency by device class <span class="muted">(health reports received: {esc(view.window)})</span></h2>'
        f'<p class="windows" id="windows">window: {windows}</p>'
        f'<figure class="chart-box">{chart}<figcaption>Bars: median (p50) and 95th percentile (p95) latency of '
        "successful predictions, in milliseconds, as the devices of each profile reported them per variant. "
        "The table below has the same numbers.</figcaption></figure>"
        '<table id="latency"><thead><tr><th>profile</th><th>variant</th><th>p50 ms</th><th>p95 ms</th>'
        "<th>predictions</th><th>errors</th><th>error rate</th><th>devices</th><th>reports</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        + ("" if view.rows else '<p class="empty" id="no-latency">No health reports in this window.</p>')
    )
    return layout("Latency", body, who=who)


def error_page(status: int, message: str, who: str | None) -> str:
    return layout(
        f"Error {status}", f'<h2>Error {status}</h2><p class="error" role="alert">{esc(message)}</p>', who=who
    )


__all__ = [
    "BASE",
    "error_page",
    "esc",
    "fleet_page",
    "latency_page",
    "layout",
    "lineage_page",
    "login_page",
    "num",
    "pct",
    "release_href",
    "when",
]

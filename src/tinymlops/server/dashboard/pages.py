"""HTML for the dashboard pages. Every value from the database goes through :func:`esc` (text and
attribute context alike), so a device profile or tag holding markup renders as inert text."""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from tinymlops.server.dashboard.views import FleetOverview, ModelLineage

BASE = "/dashboard"


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def _when(dt: datetime | None) -> str:
    return "never" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(title: str, body: str, *, who: str | None = None) -> str:
    nav = ""
    if who is not None:
        nav = (
            f'<nav><a href="{BASE}">Fleet</a>'
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


def login_page(error: str | None = None) -> str:
    message = f'<p class="error" role="alert" id="login-error">{esc(error)}</p>' if error else ""
    body = (
        '<section class="login"><h2>Log in</h2>'
        "<p>Use an API key with scope <code>read</code> or higher. The dashboard is read-only.</p>"
        f"{message}"
        f'<form method="post" action="{BASE}/login">'
        '<label for="api_key">API key</label>'
        '<input id="api_key" name="api_key" type="password" autocomplete="off" required>'
        '<button type="submit">Log in</button></form></section>'
    )
    return _page("Log in", body)


def _count_table(table_id: str, heading: str, rows: list[tuple[str, int]]) -> str:
    cells = "".join(f'<tr><td class="key">{esc(k)}</td><td class="num">{n}</td></tr>' for k, n in rows)
    return (
        f'<table id="{table_id}" class="counts"><thead><tr><th>{esc(heading)}</th><th>devices</th></tr></thead>'
        f"<tbody>{cells}</tbody></table>"
    )


def fleet_page(view: FleetOverview, who: str) -> str:
    device_rows = "".join(
        f'<tr data-device="{esc(d.id)}"><td class="id"><code>{esc(d.id)}</code></td>'
        f'<td class="profile">{esc(d.profile)}</td>'
        f'<td class="tags">{esc(", ".join(d.tags))}</td>'
        f'<td class="variant">{esc(d.variant)}</td>'
        f'<td class="bundle"><code>{esc(d.bundle_id)}</code></td>'
        f'<td class="install">{esc(d.install_status)}</td>'
        f'<td class="status status-{esc(d.status)}">{esc(d.status)}</td>'
        f'<td class="seen">{esc(_when(d.last_seen))}</td></tr>'
        for d in view.devices
    )
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
        "<th>variant</th><th>bundle</th><th>last install</th><th>status</th><th>last seen</th></tr></thead>"
        f"<tbody>{device_rows}</tbody></table>"
    )
    return _page("Fleet", body, who=who)


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
        f'<p class="description">{esc(m.description)}</p>'
        f'<dl class="summary"><dt>versions</dt><dd id="versions">{m.versions}</dd>'
        f'<dt>variants</dt><dd id="variants">{m.variants}</dd>'
        f'<dt>failed derivations</dt><dd id="failed">{m.failed_derivations}</dd></dl>'
        '<h2>Lineage</h2><table id="lineage"><thead><tr><th>ref</th><th>status</th><th>format</th>'
        "<th>bytes</th><th>target</th><th>recipe</th><th>metrics</th><th>error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return _page(f"Model {m.name}", body, who=who)


def error_page(status: int, message: str, who: str | None) -> str:
    return _page(f"Error {status}", f'<h2>Error {status}</h2><p class="error" role="alert">{esc(message)}</p>', who=who)


__all__ = ["BASE", "error_page", "esc", "fleet_page", "lineage_page", "login_page"]

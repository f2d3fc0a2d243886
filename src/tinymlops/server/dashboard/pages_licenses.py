"""HTML for the license pages: the licenses with their chain's usage (a bar of used / licensed) and the
flags reconciliation raised (alerts first, clone and rollback rows highlighted, each linking to its
device and license); one license with its chain (every license of it, the server's acknowledged
position: branches, ``next_seq``, head) and its flags, and — for an ``admin`` session only — the
top-up and revoke forms, each carrying the session's CSRF token. Every value goes through
:func:`~tinymlops.server.dashboard.pages.esc` (or :func:`~tinymlops.server.dashboard.charts.svg_text`)."""

from __future__ import annotations

from urllib.parse import quote

from tinymlops.metering.validity import MAX_VALID_DAYS as MAX_DAYS
from tinymlops.server.dashboard.charts import svg_text
from tinymlops.server.dashboard.pages import BASE, esc, layout, when
from tinymlops.server.dashboard.views_licenses import (
    ChainRow,
    FlagRow,
    LicenseDetail,
    LicenseRow,
    LicensesView,
)
from tinymlops.spec.license import MAX_QUERIES, MAX_REASON_CHARS

LICENSES = f"{BASE}/licenses"


def license_href(license_id: str) -> str:
    return f"{LICENSES}/{quote(license_id, safe='')}"


def action_href(license_id: str, action: str) -> str:
    return f"{license_href(license_id)}/{quote(action, safe='')}"


def device_href(device_id: str) -> str:
    """The device's row on the fleet page."""
    return f"{BASE}#device-{quote(device_id, safe='')}"


def usage_bar(used: int, licensed: int) -> str:
    """Used / licensed as one bar (inline SVG, coloured by class: the CSP allows no inline style):
    used in blue, red from 90% on; anything reserved beyond the licensed queries fills it red."""
    total = max(int(licensed), 0)
    spent = max(int(used), 0)
    fraction = 1.0 if total == 0 else min(spent / total, 1.0)
    klass = "bar-failed" if fraction >= 0.9 else "bar-pending"
    title = f"{spent} of {total} queries used" + (" (over the licensed queries)" if spent > total else "")
    width = f"{100 * fraction:.3f}".rstrip("0").rstrip(".")
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" class="stage-bar usage-bar" viewBox="0 0 100 10" '
        f'preserveAspectRatio="none" role="img" aria-label="{svg_text(title)}" data-used="{spent}" '
        f'data-licensed="{total}"><title>{svg_text(title)}</title>'
        '<rect class="bar-track" x="0" y="0" width="100" height="10"/>'
        + (f'<rect class="{klass}" x="0" y="0" width="{width}" height="10"/>' if spent else "")
        + "</svg>"
    )


def _status(status: str) -> str:
    return f'<span class="status-{esc(status)}">{esc(status)}</span>'


def _versions(r: LicenseRow) -> str:
    if r.min_version is None and r.max_version is None:
        return "any"
    lo = "…" if r.min_version is None else str(r.min_version)
    hi = "…" if r.max_version is None else str(r.max_version)
    return f"{lo}..{hi}"


def _license_link(license_id: str | None, klass: str = "license-link") -> str:
    if not license_id:
        return "–"
    return f'<a class="{klass}" href="{license_href(license_id)}"><code>{esc(license_id)}</code></a>'


def _device_link(device_id: str) -> str:
    return f'<a class="device-link" href="{device_href(device_id)}"><code>{esc(device_id)}</code></a>'


def _license_rows(rows: list[LicenseRow]) -> str:
    return "".join(
        f'<tr data-license="{esc(r.license_id)}" data-status="{esc(r.status)}" class="license-{esc(r.status)}">'
        f'<td class="license">{_license_link(r.license_id)}</td>'
        f'<td class="device">{_device_link(r.device_id)}</td>'
        f'<td class="model">{esc(r.model)}</td>'
        f'<td class="status">{_status(r.status)}</td>'
        f'<td class="usage">{usage_bar(r.used, r.licensed)}</td>'
        f'<td class="num used">{r.used}</td><td class="num licensed">{r.licensed}</td>'
        f'<td class="num remaining">{r.remaining}</td>'
        f'<td class="valid-until">{esc(when(r.valid_until))}</td>'
        f'<td class="last-report">{esc(when(r.last_report_at))}</td>'
        f'<td class="num alerts{" has-alerts" if r.alerts else ""}">{r.alerts}</td></tr>'
        for r in rows
    )


LICENSE_HEAD = (
    "<thead><tr><th>license</th><th>device</th><th>model</th><th>status</th><th>used / licensed</th>"
    '<th>used</th><th>licensed</th><th title="what the current branch of the ledger may still reserve">remaining'
    "</th><th>valid until</th><th>last report</th><th>alerts</th>"
    "</tr></thead>"
)


def flags_table(flags: list[FlagRow], table_id: str = "flags") -> str:
    rows = "".join(
        f'<tr data-flag="{f.id}" data-kind="{esc(f.kind)}" data-severity="{esc(f.severity)}" '
        f'class="flag severity-{esc(f.severity)}{" flag-highlight" if f.highlight else ""}">'
        f'<td class="severity">{esc(f.severity)}</td><td class="kind">{esc(f.kind)}</td>'
        f'<td class="device">{_device_link(f.device_id)}</td>'
        f'<td class="model">{esc(f.model or "–")}</td>'
        f'<td class="license">{_license_link(f.license_id)}</td>'
        f'<td class="num seq">{"–" if f.seq is None else f.seq}</td>'
        f'<td class="num report">{"–" if f.report_id is None else f.report_id}</td>'
        f'<td class="created-at">{esc(when(f.created_at))}</td>'
        f'<td class="num repeats">{f.repeats}</td>'
        f'<td class="last-at">{esc(when(f.last_at)) if f.repeats > 1 else "–"}</td>'
        f'<td class="detail">{esc(f.detail)}</td></tr>'
        for f in flags
    )
    return (
        f'<table id="{esc(table_id)}" class="flags"><thead><tr><th>severity</th><th>kind</th><th>device</th>'
        "<th>model</th><th>license</th><th>seq</th><th>report</th><th>first</th><th>times</th><th>last</th>"
        "<th>detail</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def licenses_page(view: LicensesView, who: str) -> str:
    show_links = "".join(
        f'<a class="window current" href="{LICENSES}?show={s}" aria-current="page">{label}</a>'
        if s == view.show
        else f'<a class="window" href="{LICENSES}?show={s}">{label}</a>'
        for s, label in (("latest", "each chain's latest"), ("all", "every license"))
    )
    alert_badge = f'<span id="alert-total" class="badge{" badge-alert" if view.alerts else ""}">{view.alerts}</span>'
    body = (
        f'<h2>Licenses <span id="license-total" class="badge">{len(view.licenses)}</span> '
        f'<span class="muted">{view.chains} chain(s)</span></h2>'
        f'<p class="windows" id="show">show: {show_links}</p>'
        f'<table id="licenses">{LICENSE_HEAD}<tbody>{_license_rows(view.licenses)}</tbody></table>'
        + ("" if view.licenses else '<p class="empty" id="no-licenses">No licenses yet.</p>')
        + (
            f'<p class="muted" id="licenses-truncated">Of the newest {view.read} licenses only: '
            "<code>tinymlops license list --device …</code> or <code>GET /v1/licenses?device=…</code> "
            "finds any other.</p>"
            if view.truncated
            else ""
        )
        + f'<h2>Flags {alert_badge} <span class="muted">alerts first; clone and rollback highlighted</span></h2>'
        + (
            flags_table(view.flags)
            if view.flags
            else '<p class="empty" id="no-flags">Nothing flagged: every usage report so far reconciled.</p>'
        )
    )
    return layout("Licenses", body, who=who)


def _chain_summary(chain: ChainRow) -> str:
    forked = chain.branches > 1
    facts = [
        ("status", _status(chain.status)),
        ("latest license", _license_link(chain.latest_license_id, "latest-link")),
        ("used / licensed", f'<span id="chain-reserved">{chain.reserved}</span> / {chain.licensed}'),
        ("next_seq", f'<span id="chain-next-seq">{chain.next_seq}</span>'),
        ("head", f'<code id="chain-head">{esc(chain.head or "–")}</code>'),
        (
            "branches",
            f'<span id="chain-branches" class="{"forked" if forked else ""}">{chain.branches}</span>'
            + (' <span class="error">forked: see the flags</span>' if forked else ""),
        ),
        ("reports", f'<span id="chain-reports">{chain.reports}</span>'),
        ("last report", esc(when(chain.last_report_at))),
        ("alerts", f'<span id="chain-alerts">{chain.alerts}</span>'),
    ]
    return '<dl class="summary" id="chain">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _forms(detail: LicenseDetail, csrf: str) -> str:
    r = detail.license
    parts = []
    if detail.can_top_up:
        what = "reinstates the revoked chain and adds" if r.status == "revoked" else "adds"
        parts.append(
            f'<form method="post" action="{action_href(r.license_id, "top-up")}" class="action" id="action-top-up">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<label for="top-up-queries">Top up: a new license that {what} queries (signed now)</label>'
            f'<input id="top-up-queries" name="queries" type="number" min="1" max="{MAX_QUERIES}" required '
            'placeholder="queries">'
            f'<input id="top-up-days" name="days" type="number" min="1" max="{MAX_DAYS}" '
            'placeholder="days valid from now (optional)">'
            '<button type="submit">Top up</button></form>'
        )
    if detail.can_revoke:
        parts.append(
            f'<form method="post" action="{action_href(r.license_id, "revoke")}" class="action" id="action-revoke">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<label for="revoke-reason">Revoke the chain: the device refuses metered calls once it hears of it</label>'
            f'<input id="revoke-reason" name="reason" maxlength="{MAX_REASON_CHARS}" required '
            'placeholder="reason (told to the device)">'
            '<button type="submit">Revoke</button></form>'
        )
    if not parts:
        return (
            '<h2>Actions</h2><p class="empty" id="no-actions">A superseded license: act on the chain\'s latest '
            "license.</p>"
        )
    return f'<h2>Actions</h2><div id="actions">{"".join(parts)}</div>'


def license_page(detail: LicenseDetail, who: str, *, csrf: str | None = None, error: str | None = None) -> str:
    """One license. ``csrf`` (an admin session's token) shows the forms; ``error`` a refused action."""
    r = detail.license
    facts = [
        ("device", _device_link(r.device_id)),
        ("model", f'<span id="license-model">{esc(r.model)}</span> (versions {esc(_versions(r))})'),
        ("status", f'<span id="license-status">{_status(r.status)}</span>'),
        ("queries", f'<span id="license-queries">{r.queries}</span>'),
        ("valid", f"{esc(when(r.valid_from))} .. {esc(when(r.valid_until))}"),
        ("issued", f"{esc(when(r.issued_at))} by issuer key <code>{esc(r.issuer_key_id)}</code>"),
        ("tops up", _license_link(r.previous_license_id, "previous-link")),
        ("chain usage", usage_bar(r.used, r.licensed)),
        (
            "used / licensed",
            f'<span id="chain-used">{r.used}</span> / <span id="chain-licensed">{r.licensed}</span>, '
            f'<span id="chain-remaining">{r.remaining}</span> remaining on the current branch',
        ),
        ("last report", esc(when(r.last_report_at))),
    ]
    if r.revoked_at is not None:
        facts.append(
            ("revoked", f'{esc(when(r.revoked_at))}: <span id="revoke-reason-shown">{esc(r.revoke_reason)}</span>')
        )
    summary = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    body = (
        f'<p><a href="{LICENSES}">← Licenses</a></p>'
        f'<h2>License <code id="license-id">{esc(r.license_id)}</code></h2>'
        + (f'<p class="error" role="alert" id="action-error">{esc(error)}</p>' if error else "")
        + f'<dl class="summary">{summary}</dl>'
        + (_forms(detail, csrf) if csrf is not None else "")
        + "<h2>Chain</h2>"
        + _chain_summary(detail.chain)
        + f'<table id="chain-licenses">{LICENSE_HEAD}<tbody>{_license_rows(detail.chain_licenses)}</tbody></table>'
        + "<h2>Flags of the chain</h2>"
        + (
            flags_table(detail.flags, "license-flags")
            if detail.flags
            else '<p class="empty" id="no-flags">Nothing flagged on this chain.</p>'
        )
    )
    return layout(f"License {r.license_id}", body, who=who)


__all__ = [
    "LICENSES",
    "action_href",
    "device_href",
    "flags_table",
    "license_href",
    "license_page",
    "licenses_page",
    "usage_bar",
]

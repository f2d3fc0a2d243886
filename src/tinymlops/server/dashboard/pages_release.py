"""HTML for the release pages: the list of releases, and one release with its rollout (progress per
stage, health of the stages reached, the last verdict, the transition history, the devices) and —
for an ``admin`` session only — the forms of the manual actions its state allows, each carrying
the session's CSRF token. Every value goes through :func:`~tinymlops.server.dashboard.pages.esc`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tinymlops.server.dashboard.charts import stage_bar
from tinymlops.server.dashboard.pages import BASE, esc, layout, num, pct, release_href, when
from tinymlops.server.dashboard.views import NONE
from tinymlops.server.dashboard.views_release import (
    HealthPanel,
    ReleaseDetail,
    ReleaseRow,
    RolloutView,
    VerdictView,
)

#: the device table's length: a 10,000-device release would make a 5 MB page
MAX_DEVICE_ROWS = 1000
ACTION_LABELS = {"promote": "Promote", "pause": "Pause", "resume": "Resume", "rollback": "Roll back"}
ACTION_HELP = {
    "promote": "publish the next stage now (or complete the rollout) without waiting for a verdict",
    "pause": "hold the stage reached: no promotion and no automatic verdicts until resumed",
    "resume": "continue; the stage's soak time starts again",
    "rollback": "withdraw the release: every device it reached is offered its previous bundle again",
}


def action_href(release_id: str, action: str) -> str:
    return f"{release_href(release_id)}/rollout/{quote(action, safe='')}"


def _stage(stage: int | None, name: str, stages: int | None = None) -> str:
    if stage is None:
        return NONE
    of = f"/{stages}" if stages else ""
    return f"{stage + 1}{of} {name}".strip()


def _fraction(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def releases_page(rows: list[ReleaseRow], who: str) -> str:
    body_rows = "".join(
        f'<tr data-release="{esc(r.id)}">'
        f'<td class="id"><a class="release-link" href="{release_href(r.id)}"><code>{esc(r.id)}</code></a></td>'
        f'<td class="requested"><code>{esc(r.requested)}</code></td>'
        f'<td class="created-by">{esc(r.created_by)}</td><td class="created-at">{esc(when(r.created_at))}</td>'
        f'<td class="rollout-status status-{esc(r.rollout_status)}">{esc(r.rollout_status)}</td>'
        f'<td class="stage" data-stage="{"" if r.stage is None else r.stage}">'
        f"{esc(_stage(r.stage, r.stage_name, r.stages))}</td>"
        f'<td class="num assigned">{r.assigned}</td><td class="num skipped">{r.skipped}</td></tr>'
        for r in rows
    )
    body = (
        f'<h2>Releases <span id="release-total" class="badge">{len(rows)}</span></h2>'
        '<table id="releases"><thead><tr><th>release</th><th>model / ref requested</th><th>created by</th>'
        "<th>created at</th><th>rollout</th><th>stage</th><th>assigned</th><th>skipped</th></tr></thead>"
        f"<tbody>{body_rows}</tbody></table>" + ("" if rows else '<p class="empty">No releases yet.</p>')
    )
    return layout("Releases", body, who=who)


def _criteria(criteria: dict[str, Any]) -> str:
    return ", ".join(f"{esc(k)} {esc(num(v))}" for k, v in sorted(criteria.items()))


def _stages_table(view: RolloutView) -> str:
    rows = "".join(
        f'<tr data-stage="{s.index}" class="{"current" if s.current else ""}{" reached" if s.reached else ""}">'
        f'<td class="num index">{s.index + 1}</td><td class="name">{esc(s.name)}</td>'
        f'<td class="num fraction" data-value="{s.fraction!r}">{_fraction(s.fraction)}</td>'
        f'<td class="num devices">{s.devices}</td><td class="num published">{s.published}</td>'
        f'<td class="num installed">{s.installed}</td><td class="num failed">{s.failed}</td>'
        f'<td class="reached">{"yes" if s.reached else "no"}</td>'
        f'<td class="progress">{stage_bar(s.devices, s.published, s.installed, s.failed, label=s.name)}</td>'
        f'<td class="criteria">{_criteria(s.criteria)}</td></tr>'
        for s in view.stages
    )
    return (
        '<h2>Stages</h2><table id="stages"><thead><tr><th>#</th><th>stage</th><th>fraction</th><th>devices</th>'
        "<th>published</th><th>installed</th><th>failed</th><th>reached</th><th>progress</th><th>health criteria</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        '<p class="legend"><span class="key key-installed"></span>installed <span class="key key-failed"></span>failed '
        '<span class="key key-pending"></span>published, no report yet '
        '<span class="key key-waiting"></span>not published yet</p>'
    )


def _health(h: HealthPanel | None, view: RolloutView) -> str:
    if h is None:
        return '<h2>Health</h2><p class="empty" id="no-health">The rollout has not started.</p>'
    items = [
        ("installs-ok", "installs ok", num(h.installs_ok)),
        ("installs-failed", "installs failed", num(h.installs_failed)),
        ("install-success-rate", "install success rate", pct(h.install_success_rate)),
        ("smoke-failures", "smoke-test failures", num(h.smoke_failures)),
        ("smoke-failure-rate", "smoke-test failure rate", pct(h.smoke_failure_rate)),
        ("predictions", "predictions", num(h.predictions)),
        ("prediction-errors", "prediction errors", num(h.prediction_errors)),
        ("error-rate", "prediction error rate", pct(h.error_rate)),
        ("latency-p50", "p50 latency (ms)", num(h.latency_p50_ms)),
        ("baseline-p50", "previous release's p50 (ms)", num(h.baseline_p50_ms)),
        ("latency-ratio", "p50 / previous", num(h.latency_ratio)),
    ]
    cells = "".join(f'<dt>{esc(label)}</dt><dd id="{ident}">{esc(value)}</dd>' for ident, label, value in items)
    reached = ", ".join(esc(s.name) for s in view.stages if s.reached)
    return (
        f'<h2>Health <span class="muted">of the stages reached: {reached}</span></h2>'
        f'<dl class="summary" id="health">{cells}</dl>'
    )


#: a check's outcome: (class suffix, text)
_RESULT: dict[bool | None, tuple[str, str]] = {
    True: ("ok", "passed"),
    False: ("bad", "failed"),
    None: ("none", "no data"),
}


def _verdict(v: VerdictView | None) -> str:
    if v is None:
        return '<h2>Last verdict</h2><p class="empty" id="no-verdict">No automatic verdict yet.</p>'
    checks = "".join(
        f'<tr data-criterion="{esc(c.criterion)}" class="check-{_RESULT[c.ok][0]}">'
        f'<td class="criterion"><code>{esc(c.criterion)}</code></td>'
        f'<td class="num measured">{esc(num(c.measured))}</td><td class="num threshold">{esc(num(c.threshold))}</td>'
        f'<td class="ok">{_RESULT[c.ok][1]}</td>'
        f'<td class="detail">{esc(c.detail)}</td></tr>'
        for c in v.checks
    )
    return (
        f'<h2>Last verdict: <span id="verdict-decision" class="verdict-{esc(v.decision)}">{esc(v.decision)}</span>'
        f' <span class="muted" id="verdict-at">{esc(when(v.at, "(time unknown)"))}</span></h2>'
        f'<p id="verdict-reason">{esc(v.reason)}</p>'
        '<table id="checks"><thead><tr><th>criterion</th><th>measured</th><th>threshold</th><th>result</th>'
        f"<th>detail</th></tr></thead><tbody>{checks}</tbody></table>"
    )


def _transitions(view: RolloutView) -> str:
    rows = "".join(
        f'<tr><td class="at">{esc(when(t.at))}</td>'
        f'<td class="from">{esc(t.from_status)} <span class="muted">({t.from_stage + 1})</span></td>'
        f'<td class="to">{esc(t.to_status)} <span class="muted">({t.to_stage + 1} {esc(t.stage_name)})</span></td>'
        f'<td class="actor"><code>{esc(t.actor)}</code></td><td class="reason">{esc(t.reason)}</td></tr>'
        for t in view.transitions
    )
    return (
        '<h2>History</h2><table id="transitions"><thead><tr><th>when</th><th>from</th><th>to (stage)</th>'
        f"<th>actor</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _actions(release_id: str, view: RolloutView, csrf: str) -> str:
    if not view.actions:
        return '<h2>Actions</h2><p class="empty" id="no-actions">No manual action is possible in this state.</p>'
    forms = "".join(
        f'<form method="post" action="{action_href(release_id, a)}" class="action" id="action-{a}">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<label for="reason-{a}">{ACTION_LABELS[a]}: {esc(ACTION_HELP[a])}</label>'
        f'<input id="reason-{a}" name="reason" maxlength="1000" placeholder="reason (recorded)">'
        f'<button type="submit">{ACTION_LABELS[a]}</button></form>'
        for a in view.actions
    )
    return f'<h2>Actions</h2><div id="actions">{forms}</div>'


def _devices(detail: ReleaseDetail) -> str:
    shown = detail.devices[:MAX_DEVICE_ROWS]
    more = ""
    if len(detail.devices) > len(shown):
        more = (
            f'<p class="muted" id="more-devices">Showing the first {len(shown)} of {len(detail.devices)} devices; '
            f"<code>GET /v1/releases/{esc(detail.release.id)}</code> lists them all.</p>"
        )
    rows = "".join(
        f'<tr data-device="{esc(d.device_id)}">'
        f'<td class="id"><a class="device-link" href="{BASE}#device-{esc(d.device_id)}">'
        f"<code>{esc(d.device_id)}</code></a></td>"
        f'<td class="profile">{esc(d.profile)}</td>'
        f'<td class="stage" data-stage="{"" if d.stage is None else d.stage}">{esc(_stage(d.stage, d.stage_name))}</td>'
        f'<td class="assignment">{esc(d.assignment)}</td>'
        f'<td class="ref"><code>{esc(d.ref)}</code></td>'
        f'<td class="published">{esc(when(d.published_at, "not yet"))}</td>'
        f'<td class="withdrawn">{esc(when(d.withdrawn_at, ""))}</td>'
        f'<td class="install">{esc(d.install_status)}</td><td class="running">{esc(d.running)}</td>'
        f'<td class="reason">{esc(d.reason)}</td></tr>'
        for d in shown
    )
    return (
        '<h2>Devices</h2><table id="release-devices"><thead><tr><th>device</th><th>profile</th><th>stage</th>'
        "<th>assignment</th><th>variant</th><th>published</th><th>withdrawn</th><th>last install report</th>"
        f"<th>running</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>{more}"
    )


def release_page(detail: ReleaseDetail, who: str, *, csrf: str | None = None, error: str | None = None) -> str:
    """One release. ``csrf`` (an admin session's token) shows the action forms; ``error`` a refused action."""
    r = detail.release
    ro = detail.rollout
    facts = [
        ("model", f'<a id="model-link" href="{BASE}/models/{quote(r.model, safe="")}">{esc(r.model)}</a>'),
        ("requested", f'<code id="requested">{esc(r.requested)}</code>'),
        ("created by", f'<span id="created-by">{esc(r.created_by)}</span>'),
        ("created at", esc(when(r.created_at))),
        ("release status", f'<span id="release-status">{esc(r.status)}</span>'),
        ("devices assigned", f'<span id="assigned">{r.assigned}</span>'),
        ("devices skipped", f'<span id="skipped">{r.skipped}</span>'),
    ]
    if ro is not None:
        facts += [
            ("rollout", f'<span id="rollout-status" class="status-{esc(ro.status)}">{esc(ro.status)}</span>'),
            (
                "stage",
                f'<span id="rollout-stage" data-stage="{ro.stage}">{esc(_stage(ro.stage, ro.stage_name))}</span>',
            ),
            ("on failure", esc(ro.on_failure)),
            ("stage started", esc(when(ro.stage_started_at, "–"))),
            ("updated", esc(when(ro.updated_at, "–"))),
        ]
        if ro.devices_withdrawn is not None:
            facts.append(
                (
                    "devices back",
                    f'<span id="devices-back">{ro.devices_back}</span> of {ro.devices_withdrawn} withdrawn',
                )
            )
    summary = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
    body = (
        f'<p><a href="{BASE}/releases">← Releases</a></p>'
        f'<h2>Release <code id="release-id">{esc(r.id)}</code></h2>'
        + (f'<p class="error" role="alert" id="action-error">{esc(error)}</p>' if error else "")
        + f'<dl class="summary">{summary}</dl>'
    )
    if ro is None:
        body += '<p class="empty" id="no-rollout">Nothing was published: this release has no rollout.</p>'
    else:
        if csrf is not None:
            body += _actions(r.id, ro, csrf)
        body += _stages_table(ro) + _health(ro.health, ro) + _verdict(ro.verdict) + _transitions(ro)
    body += _devices(detail)
    return layout(f"Release {r.id}", body, who=who)


__all__ = ["ACTION_LABELS", "MAX_DEVICE_ROWS", "action_href", "release_page", "releases_page"]

"""HTML for the telemetry and drift pages: the models with telemetry (:func:`drift_index_page`), one
model's drift (:func:`drift_page`: per cohort a verdict and the drifted features, a cohort × feature
heatmap with derived projection features apart, for one cohort and feature the reference and live
CDFs and every test's numbers, the predicted-class histograms) and the fleet's performance per
device class (:func:`telemetry_page`). Every value goes through
:func:`~tinymlops.server.dashboard.pages.esc` or :func:`~tinymlops.server.dashboard.charts.svg_text`;
numbers carry their unrounded value in ``data-value``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from tinymlops.observe.drift_tests import DRIFT_TESTS
from tinymlops.server.dashboard.charts import (
    HEAT_LEVELS,
    Bar,
    Curve,
    Group,
    HeatCell,
    cdf_chart,
    fmt_signed,
    grouped_bar_chart,
    heat_legend,
    heatmap,
)
from tinymlops.server.dashboard.pages import BASE, esc, layout, num, pct, when
from tinymlops.server.dashboard.views import NONE, WINDOWS
from tinymlops.server.dashboard.views_drift import (
    DRIFT_WINDOWS,
    TABLE_QUANTILES,
    VERDICT_TEXT,
    ClassesView,
    DriftEmpty,
    DriftQuery,
    DriftView,
    FeatureCdf,
    ModelTelemetry,
    TelemetryView,
    deciding_statistic,
    heat_cell,
)

#: cohorts the heatmap draws at most (``by=device`` on a large fleet); the table lists them all
MAX_HEATMAP_ROWS = 60


def drift_href(model: str, params: dict[str, str] | None = None) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return f"{BASE}/models/{quote(model, safe='')}/drift{query}"


def _value(value: float | None, *, klass: str = "num") -> str:
    """A number cell: shown to 4 significant digits, the unrounded value in ``data-value``."""
    raw = "" if value is None else repr(float(value))
    return f'<td class="{klass}" data-value="{raw}">{esc(fmt_signed(value))}</td>'


def _verdict_badge(verdict: str, ident: str | None = None) -> str:
    id_attr = f' id="{esc(ident)}"' if ident else ""
    return (
        f'<span class="verdict-badge verdict-{esc(verdict)}"{id_attr} data-verdict="{esc(verdict)}">'
        f"{esc(VERDICT_TEXT.get(verdict, verdict))}</span>"
    )


# --- index ---------------------------------------------------------------------------------------
def drift_index_page(models: list[ModelTelemetry], who: str) -> str:
    rows = "".join(
        f'<tr data-model="{esc(m.model)}">'
        f'<td><a class="drift-link" href="{drift_href(m.model)}">{esc(m.model)}</a></td>'
        f'<td class="num windows">{m.windows}</td><td class="num devices">{m.devices}</td>'
        f'<td class="last">{esc(when(m.last_window_end, "–"))}</td></tr>'
        for m in models
    )
    body = (
        "<h2>Drift</h2><p>Models whose devices uploaded telemetry; each link opens the model's drift report "
        "(live input and prediction profiles against the reference profile of its evaluation data).</p>"
        '<table id="drift-models"><thead><tr><th>model</th><th>windows</th><th>devices</th>'
        f"<th>newest window ends (device clock)</th></tr></thead><tbody>{rows}</tbody></table>"
        + ("" if models else '<p class="empty" id="no-telemetry">No device has uploaded telemetry yet.</p>')
    )
    return layout("Drift", body, who=who)


# --- the drift page ------------------------------------------------------------------------------
def _controls(model: str, query: DriftQuery, versions: list[int] | None = None) -> str:
    def link(cls: str, text: str, current: bool, **change: Any) -> str:
        href = esc(drift_href(model, query.params(cohort=None, feature=None, **change)))
        if current:
            return f'<a class="{cls} current" href="{href}" aria-current="page">{esc(text)}</a>'
        return f'<a class="{cls}" href="{href}">{esc(text)}</a>'

    windows = "".join(link("window", w, w == query.window, window=w) for w in DRIFT_WINDOWS)
    if query.window not in DRIFT_WINDOWS:
        windows += f'<a class="window current" aria-current="page" href="#">{esc(query.window)}</a>'
    groupings = "".join(link("window", b, b == query.by, by=b) for b in ("tag", "profile", "device"))
    out = (
        f'<p class="windows" id="windows">window: {windows}</p>'
        f'<p class="windows" id="groupings">cohorts by: {groupings}</p>'
    )
    if versions and len(versions) > 1:
        links = "".join(link("window", f"v{v}", v == query.version, version=v) for v in versions)
        out += f'<p class="windows" id="versions">version: {links}</p>'
    return out


def _empty_page(view: DriftEmpty, who: str) -> str:
    body = (
        f'<p><a href="{BASE}/models/{quote(view.model, safe="")}">← Model {esc(view.model)}</a> · '
        f'<a href="{BASE}/drift">All models with telemetry</a></p>'
        f'<h2>Drift of model <span id="model-name">{esc(view.model)}</span></h2>'
        + _controls(view.model, view.query)
        + f'<div class="empty-state" id="drift-empty" data-reason="{esc(view.reason)}">'
        f'<p id="drift-message">{esc(view.message)}</p>'
        + (f'<p id="drift-hint">{esc(view.hint)}</p>' if view.hint else "")
        + "</div>"
    )
    return layout(f"Drift of {view.model}", body, who=who)


def _on_p_value(test: str) -> bool:
    """Does ``test`` decide on its p-value (else on its statistic)?"""
    return DRIFT_TESTS[test].decides_on == "p_value"


def _span(time_range: dict[str, str | None]) -> str:
    since, until = time_range["since"], time_range["until"]
    if since is None and until is None:
        return "any time (all windows)"
    return f"{since or '…'} to {until or '…'} (device clocks)"


def _facts(view: DriftView) -> str:
    doc = view.doc
    ref = doc["reference"]
    policy = doc["policy"]
    tr = doc["time_range"]
    deciding = ", ".join(
        f"{t} ({'p <' if _on_p_value(t) else '≥'} {policy['thresholds'].get(t)})"
        for t in policy["deciding_feature_tests"]
    )
    excluded = "".join(f'<li><span class="num">{n}</span> {esc(reason)}</li>' for reason, n in doc["excluded"].items())
    items = [
        ("version", f'<span id="drift-version">{doc["version"]}</span>'),
        ("windows ending", f'<span id="time-range">{esc(_span(tr))}</span>'),
        (
            "reference",
            f'<span id="reference">dataset <code>{esc(ref["dataset"])}</code>, {ref["rows"]} rows, '
            f"built {esc(ref['created_at'])}</span>",
        ),
        (
            "policy",
            f'<span id="policy">{esc(doc["policy_source"])}: a feature drifts when {esc(policy["require"])} of '
            f"{esc(deciding)} say so; at least {policy['min_samples']} values per side; "
            f"correction {esc(policy['correction'])}</span>",
        ),
        ("drifted cohorts", f'<span id="drifted-cohorts">{esc(", ".join(doc["drifted_cohorts"]) or "none")}</span>'),
    ]
    out = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    out = f'<dl class="summary">{out}</dl><p id="drift-summary" class="muted">{esc(doc["summary"])}</p>'
    if excluded:
        out += f'<p>Windows set aside (not comparable with the reference):</p><ul id="excluded">{excluded}</ul>'
    return out


def _feature_links(model: str, query: DriftQuery, cohort: str, names: list[str], klass: str) -> str:
    if not names:
        return '<span class="muted">none</span>'
    return ", ".join(
        f'<a class="{klass}" data-feature="{esc(n)}" '
        f'href="{esc(drift_href(model, query.params(cohort=cohort, feature=n)))}">{esc(n)}</a>'
        for n in names
    )


def _cohorts_table(view: DriftView) -> str:
    rows = []
    for c in view.doc["cohorts"]:
        label = c["label"]
        derived = c["drifted_derived"]
        derived_cell = (
            f'<span class="derived-count">{len(derived)}</span> derived: '
            + _feature_links(view.model, view.query, label, derived, "derived-feature")
            if derived
            else '<span class="muted">none</span>'
        )
        excluded = sum(c["excluded"].values())
        selected = " selected" if label == view.cohort["label"] else ""
        cohort_href = drift_href(view.model, view.query.params(cohort=label, feature=None))
        drifted = _feature_links(view.model, view.query, label, c["drifted_features"], "drifted-feature")
        rows.append(
            f'<tr class="cohort{selected}" data-cohort="{esc(label)}">'
            f'<td class="label"><a class="cohort-link" href="{esc(cohort_href)}"><code>{esc(label)}</code></a></td>'
            f'<td class="verdict">{_verdict_badge(c["verdict"])}</td>'
            f'<td class="num devices">{c["devices"]}</td><td class="num windows">{c["windows"]}</td>'
            f'<td class="num rows">{c["rows"]}</td>'
            f'<td class="drifted">{drifted}</td>'
            f'<td class="derived">{derived_cell}</td>'
            f'<td class="prediction-drift">{esc(", ".join(c["prediction_drift"]) or "none")}</td>'
            f'<td class="num excluded">{excluded}</td></tr>'
        )
    return (
        '<h2>Cohorts</h2><table id="cohorts"><thead><tr><th>cohort</th><th>verdict</th><th>devices</th>'
        "<th>windows</th><th>rows</th><th>drifted input features (strongest first)</th>"
        "<th>drifted derived features</th><th>prediction drift</th><th>windows set aside</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _heatmap(view: DriftView, names: tuple[str, ...], chart_id: str, title: str) -> str:
    cohorts = view.doc["cohorts"][:MAX_HEATMAP_ROWS]
    cells = []
    for c in cohorts:
        by_name = {f["name"]: f for f in c["features"]}
        row = []
        for n in names:
            f = by_name.get(n)
            href = drift_href(view.model, view.query.params(cohort=c["label"], feature=n))
            if f is None:
                row.append(HeatCell(None, False, "not_enough_data", f"{c['label']} · {n}: no data", href))
            else:
                row.append(heat_cell(c["label"], f, href))
        cells.append(row)
    more = ""
    if len(view.doc["cohorts"]) > len(cohorts):
        more = (
            f'<p class="muted">The heatmap shows the first {len(cohorts)} of {len(view.doc["cohorts"])} cohorts; '
            "the table above lists them all.</p>"
        )
    chart = heatmap([c["label"] for c in cohorts], list(names), cells, title=title, chart_id=chart_id)
    return f'<figure class="chart-box heat-box">{chart}</figure>{more}'


def _scale_note(view: DriftView) -> str:
    policy = view.doc["policy"]
    statistic_tests = [t for t in policy["deciding_feature_tests"] if not _on_p_value(t)]
    what = statistic_tests[0] if statistic_tests else policy["deciding_feature_tests"][0]
    return (
        f'<p class="legend" id="heat-scale">{heat_legend("0", "2 × threshold")} Colour: the deciding test '
        f"<code>{esc(what)}</code>'s value relative to its threshold ({HEAT_LEVELS} steps; the threshold is "
        "the middle of the scale). A crossed cell drifted (every deciding test says so); each cell's title "
        "names its verdict and every test's numbers. Click a cell for its CDFs.</p>"
    )


def _selector(view: DriftView) -> str:
    q = view.query
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{esc(v)}">' for k, v in q.params(cohort=None, feature=None).items()
    )
    cohorts = "".join(
        f'<option value="{esc(c["label"])}"{" selected" if c["label"] == view.cohort["label"] else ""}>'
        f"{esc(c['label'])}</option>"
        for c in view.doc["cohorts"]
    )
    features = "".join(
        f'<option value="{esc(n)}"{" selected" if n == view.feature else ""}>{esc(n)}</option>'
        for n in (*view.features, *view.derived)
    )
    return (
        f'<form method="get" action="{esc(drift_href(view.model))}" class="selector" id="feature-form">{hidden}'
        f'<label for="cohort-select">cohort</label><select id="cohort-select" name="cohort">{cohorts}</select>'
        f'<label for="feature-select">feature</label><select id="feature-select" name="feature">{features}</select>'
        '<button type="submit">Show</button></form>'
    )


def _drift_when(threshold_on: str) -> str:
    return "p-value below" if threshold_on == "p_value" else "statistic at or above"


def _tests_table(entry: dict[str, Any], table_id: str) -> str:
    rows = "".join(
        f'<tr data-test="{esc(name)}" class="{"decides" if t["decides"] else ""}">'
        f'<td class="test"><code>{esc(name)}</code>{" (deciding)" if t["decides"] else ""}</td>'
        f"{_value(t['statistic'], klass='num statistic')}{_value(t['p_value'], klass='num p-value')}"
        f"{_value(t['threshold'], klass='num threshold')}"
        f'<td class="threshold-on">{_drift_when(t["threshold_on"])}</td>'
        f'<td class="test-verdict">{_verdict_badge(t["verdict"])}</td>'
        f'<td class="reason">{esc(t["reason"] or "")}</td></tr>'
        for name, t in entry["tests"].items()
    )
    return (
        f'<table id="{table_id}" class="tests"><thead><tr><th>test</th><th>statistic</th><th>p-value</th>'
        "<th>threshold</th><th>drift when</th><th>verdict</th><th>note</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _cdf_section(view: DriftView, cdf: FeatureCdf | None) -> str:
    if view.feature is None or cdf is None:
        return '<h2>Feature</h2><p class="empty">The reference has no features.</p>'
    cohort = view.cohort
    entry = next((f for f in cohort["features"] if f["name"] == view.feature), None)
    derived = view.feature.startswith("projection:")
    tag = ' <span class="derived-label">derived (projection)</span>' if derived else ""
    head = (
        f'<h2 id="feature-heading">Feature <code id="selected-feature">{esc(view.feature)}</code>{tag} in cohort '
        f'<code id="selected-cohort">{esc(cohort["label"])}</code></h2>'
    )
    if entry is None:
        verdict = '<p class="empty" id="feature-verdict">This cohort has no profile of its inputs.</p>'
        tests = ""
    else:
        d = deciding_statistic(entry)
        decided = "" if d is None else f" — deciding statistic {esc(d.test)} {esc(fmt_signed(d.statistic))}"
        verdict = (
            f'<p id="feature-verdict">verdict: {_verdict_badge(entry["verdict"], "feature-verdict-badge")}'
            f'{decided}; values: reference <span id="n-reference">{esc(num(entry["n_reference"]))}</span>, '
            f'live <span id="n-live">{esc(num(entry["n_live"]))}</span>'
            + (f'; <span class="muted">{esc(entry["reason"])}</span>' if entry["reason"] else "")
            + "</p>"
        )
        tests = _tests_table(entry, "feature-tests")
    curves = [
        Curve("reference", cdf.reference.points if cdf.reference else ()),
        Curve(f"live {cohort['label']}", cdf.live.points if cdf.live else ()),
    ]
    chart = cdf_chart(
        curves,
        title=f"{view.feature}: reference vs live CDF ({cohort['label']}), quantiles from the KLL sketches",
        x_label=f"{view.feature} value",
        chart_id="cdf-chart",
    )
    qrows = "".join(
        f'<tr data-side="{side}"><th>{label}</th>'
        + (
            f'<td class="num n">{s.n}</td>' + "".join(_value(v) for v in s.quantiles)
            if s is not None
            else f'<td class="num n">0</td>{"<td>–</td>" * len(TABLE_QUANTILES)}'
        )
        + "</tr>"
        for side, label, s in (("reference", "reference", cdf.reference), ("live", "live", cdf.live))
    )
    qhead = "".join(f"<th>p{round(100 * q)}</th>" for q in TABLE_QUANTILES)
    note = (
        f"Live: the sketches of {cdf.windows} window(s) of this cohort merged"
        + ". KLL quantiles are approximate (rank error about "
        + (
            f"{100 * max(cdf.live.rank_error, cdf.reference.rank_error if cdf.reference else 0):.2g}%"
            if cdf.live
            else "–"
        )
        + ")."
    )
    return (
        head
        + _selector(view)
        + verdict
        + tests
        + f'<figure class="chart-box">{chart}<figcaption>{esc(note)}</figcaption></figure>'
        + f'<table id="quantiles"><thead><tr><th></th><th>values</th>{qhead}</tr></thead><tbody>{qrows}</tbody></table>'
    )


def _classes_section(view: DriftView, classes: ClassesView | None) -> str:
    head = f'<h2>Predicted classes <span class="muted">in cohort {esc(view.cohort["label"])}</span></h2>'
    if classes is None:
        return (
            head + '<p class="empty" id="no-classes">No class histograms to compare '
            "(the reference or the live windows have none).</p>"
        )
    n = len(classes.reference)
    bars = tuple(
        Bar(f"class {i}", (100 * classes.reference[i], 100 * classes.live[i] if i < len(classes.live) else None))
        for i in range(n)
    )
    live_name = "live (de-biased)" if classes.debiased else "live"
    chart = grouped_bar_chart(
        [Group("predicted class", bars)],
        ("reference", live_name),
        unit="%",
        axis_label="share of predictions (%)",
        title=f"Predicted-class shares, reference vs {live_name}, cohort {classes.cohort}",
        chart_id="classes-chart",
    )
    if classes.debiased:
        eps = ", ".join(f"{e:g}" for e in classes.epsilons) or "?"
        mechanisms = ", ".join(f"{m}: {w} window(s)" for m, w in classes.mechanisms.items())
        privacy = (
            f'<p id="ldp-note" class="ldp">Local differential privacy was applied on the devices (epsilon '
            f'<span id="ldp-epsilon">{esc(eps)}</span> per window; {esc(mechanisms)}). The live shares are '
            "de-biased estimates (negative estimates clipped to 0), and the tests use an effective sample of "
            f"{esc(num(classes.live_predictions / classes.design_effect if classes.design_effect else None))} "
            f"predictions (design effect {esc(num(classes.design_effect))}).</p>"
        )
    else:
        privacy = '<p id="ldp-note" class="muted">No local differential privacy on these histograms: exact counts.</p>'
    finding = classes.finding
    verdict = ""
    if finding is not None:
        verdict = (
            '<p id="prediction-verdict">prediction drift: '
            f"{_verdict_badge(finding['verdict'], 'prediction-verdict-badge')}"
            f" (reference {esc(num(finding['n_reference']))}, live {esc(num(finding['n_live']))} predictions)</p>"
            + _tests_table(finding, "prediction-tests")
        )
    rows = "".join(
        f'<tr data-class="{i}"><td class="num">{i}</td>{_value(100 * r)}'
        f"{_value(100 * classes.live[i] if i < len(classes.live) else None)}</tr>"
        for i, r in enumerate(classes.reference)
    )
    table = (
        f'<table id="class-shares"><thead><tr><th>class</th><th>reference %</th><th>{esc(live_name)} %</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )
    return head + privacy + verdict + f'<figure class="chart-box">{chart}</figure>' + table


def drift_page(view: DriftView | DriftEmpty, who: str) -> str:
    if isinstance(view, DriftEmpty):
        return _empty_page(view, who)
    doc = view.doc
    versions = list(doc["versions_with_telemetry"])
    notes = "".join(f'<p class="muted note">{esc(n)}</p>' for n in doc["notes"])
    body = (
        f'<p><a href="{BASE}/models/{quote(view.model, safe="")}">← Model {esc(view.model)}</a> · '
        f'<a href="{BASE}/drift">All models with telemetry</a></p>'
        f'<h2>Drift of model <span id="model-name">{esc(view.model)}</span> version {doc["version"]} '
        f"{_verdict_badge('drift' if doc['drifted'] else 'no_drift', 'report-verdict')}</h2>"
        + _controls(view.model, view.query, versions)
        + _facts(view)
        + _cohorts_table(view)
        + "<h2>Input features</h2>"
        + _scale_note(view)
        + _heatmap(view, view.features, "heatmap-features", f"Drift of {view.model}'s input features per cohort")
    )
    if view.derived:
        body += (
            '<h2>Derived features <span class="derived-label">projection</span></h2>'
            + notes
            + _heatmap(
                view,
                view.derived,
                "heatmap-derived",
                f"Drift of {view.model}'s derived projection features per cohort (evidence the input moved, not where)",
            )
        )
    body += _cdf_section(view, view.cdf) + _classes_section(view, view.classes)
    return layout(f"Drift of {view.model}", body, who=who)


# --- telemetry -----------------------------------------------------------------------------------
MIB = 1024 * 1024


def telemetry_page(view: TelemetryView, who: str) -> str:
    windows = "".join(
        f'<a class="window current" href="{BASE}/telemetry?window={w}" aria-current="page">{w}</a>'
        if w == view.window
        else f'<a class="window" href="{BASE}/telemetry?window={w}">{w}</a>'
        for w in WINDOWS
    )
    latency = grouped_bar_chart(
        [
            Group(p, tuple(Bar(c.ref or NONE, (c.stats.p50_ms, c.stats.p95_ms)) for c in rows))
            for p, rows in view.by_profile
        ],
        ("p50", "p95"),
        unit="ms",
        axis_label="latency (ms)",
        title=f"Latency by device class from telemetry, windows of the last {view.window}: p50 and p95 (ms)",
        chart_id="telemetry-latency-chart",
    )
    energy = grouped_bar_chart(
        [
            Group(
                p,
                tuple(
                    Bar(
                        f"{c.ref or NONE} ({c.stats.energy_method or 'none'})",
                        (_mj(c.stats.energy_j_per_inference),),
                    )
                    for c in rows
                ),
            )
            for p, rows in view.by_profile
        ],
        ("mJ / inference",),
        unit="mJ",
        axis_label="energy per inference (mJ)",
        title=f"Energy per inference by device class, windows of the last {view.window} (mJ; method in brackets)",
        chart_id="telemetry-energy-chart",
    )
    rows = "".join(
        f'<tr data-profile="{esc(c.profile)}" data-ref="{esc(c.ref or NONE)}">'
        f'<td class="profile">{esc(c.profile)}</td><td class="ref"><code>{esc(c.ref or NONE)}</code></td>'
        f'<td class="num devices">{c.stats.devices}</td><td class="num windows">{c.stats.windows}</td>'
        f'<td class="num requests">{c.stats.requests}</td><td class="num errors">{c.stats.errors}</td>'
        f'<td class="num error-rate" data-value="{"" if c.stats.error_rate is None else repr(c.stats.error_rate)}">'
        f"{pct(c.stats.error_rate)}</td>"
        f"{_value(c.stats.p50_ms, klass='num p50')}{_value(c.stats.p95_ms, klass='num p95')}"
        f"{_value(_mj(c.stats.energy_j_per_inference), klass='num energy')}"
        f'<td class="energy-method">{esc(_method(c.stats.energy_method))}</td>'
        f'<td class="num peak-memory" data-value="{_or_empty(c.stats.peak_memory_bytes)}">'
        f"{esc(num(None if c.stats.peak_memory_bytes is None else c.stats.peak_memory_bytes / MIB))}</td></tr>"
        for c in view.classes
    )
    flagged_rows = "".join(
        f'<tr data-device="{esc(f.device_id)}" class="store-{esc(f.status)}">'
        f'<td class="id"><a href="{BASE}#device-{esc(f.device_id)}"><code>{esc(f.device_id)}</code></a></td>'
        f'<td class="profile">{esc(f.profile)}</td><td class="store-status">{esc(f.status)}</td>'
        f'<td class="num pending">{f.pending_windows}</td><td class="num merged">{f.merged_windows}</td>'
        f'<td class="num dropped">{f.dropped_windows}</td><td class="store-error">{esc(f.error or "")}</td>'
        f'<td class="received">{esc(when(f.received_at))}</td></tr>'
        for f in view.flagged
    )
    flagged = (
        '<h2>Upload stores needing attention <span class="muted">(the last status each device reported)</span></h2>'
        + (
            '<table id="flagged"><thead><tr><th>device</th><th>profile</th><th>store</th><th>pending windows</th>'
            "<th>merged</th><th>dropped</th><th>error</th><th>reported</th></tr></thead>"
            f"<tbody>{flagged_rows}</tbody></table>"
            '<p class="muted">Predictions keep working on these devices; their telemetry waits, is merged into '
            "coarser windows, or — only when even that cannot be stored — is dropped and counted.</p>"
            if view.flagged
            else '<p class="empty" id="no-flagged">No device reports a full or unwritable upload store.</p>'
        )
    )
    models = "".join(
        f'<li data-model="{esc(m.model)}"><a class="drift-link" href="{drift_href(m.model)}">{esc(m.model)}</a> '
        f'<span class="muted">{m.windows} windows from {m.devices} devices</span></li>'
        for m in view.models
    )
    body = (
        f'<h2>Telemetry by device class <span class="muted">({esc(_window_words(view.window))}, '
        "device clocks)</span></h2>"
        f'<p class="windows" id="windows">window: {windows}</p>'
        '<table id="telemetry"><thead><tr><th>profile</th><th>variant</th><th>devices</th><th>windows</th>'
        "<th>requests</th><th>errors</th><th>error rate</th><th>p50 ms</th><th>p95 ms</th>"
        "<th>energy mJ / inference</th><th>energy method</th><th>peak memory MiB</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        + ("" if view.classes else '<p class="empty" id="no-telemetry">No telemetry windows in this window.</p>')
        + f'<figure class="chart-box">{latency}<figcaption>Latency percentiles from the windows\' latency '
        "histograms merged exactly (1% relative error).</figcaption></figure>"
        f'<figure class="chart-box">{energy}<figcaption>Energy per inference, inference-weighted: '
        "<em>measured</em> (RAPL), <em>estimated</em> (CPU time × the profile's power) or <em>mixed</em> "
        "(both, added).</figcaption></figure>"
        + flagged
        + "<h2>Drift</h2>"
        + (f'<ul id="telemetry-models">{models}</ul>' if models else '<p class="empty">No model has telemetry.</p>')
    )
    return layout("Telemetry", body, who=who)


def _window_words(window: str) -> str:
    return "all windows" if window == "all" else f"windows ending in the last {window}"


def _mj(joules: float | None) -> float | None:
    return None if joules is None else 1e3 * joules


def _or_empty(value: object) -> str:
    return "" if value is None else esc(value)


def _method(method: str | None) -> str:
    return {"rapl": "measured (RAPL)", "model": "estimated (power model)", "mixed": "mixed"}.get(
        method or "", method or "–"
    )


__all__ = ["MAX_HEATMAP_ROWS", "drift_href", "drift_index_page", "drift_page", "telemetry_page"]

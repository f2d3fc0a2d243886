"""``tinymlops drift …``: drift reports across the fleet, the drift policy, the reference profiles.

``drift report MODEL`` reads the telemetry devices uploaded (on the workspace database: no server
needed) and prints, per cohort, the features that drifted with every test's statistic and
threshold, prediction drift, and a one-line summary. It exits 0 whatever the verdict — it is a
report — and non-zero on bad input (unknown model, no reference profile, a bad window, no
telemetry in the window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_num, parse_pairs, table
from tinymlops.errors import UsageError

app = typer.Typer(
    help="Drift of inputs and predictions across the fleet, against reference profiles.", no_args_is_help=True
)
policy_app = typer.Typer(help="The thresholds and tests drift is judged by, per model.", no_args_is_help=True)
reference_app = typer.Typer(
    help="Reference profiles: a model version's inputs/outputs on its dataset.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")
app.add_typer(reference_app, name="reference")

VersionOpt = Annotated[int | None, typer.Option("--version", min=1, help="Base version (default: see the command).")]


def _open(workspace: Path | None) -> Any:
    from tinymlops.workspace import Workspace

    return Workspace.open(workspace)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (abs(value) < 1e-3 and value != 0):
        return f"{value:.1e}"
    return fmt_num(value, digits)


def _test_cell(tests: dict[str, Any], name: str) -> str:
    t = tests.get(name)
    if t is None:
        return ""
    mark = "*" if t["verdict"] == "drift" else ""
    if t["threshold_on"] == "p_value":
        return f"{_fmt(t['statistic'])} (p={_fmt(t['p_value'])}){mark}"
    return f"{_fmt(t['statistic'])}{mark}"


_VERDICT_STYLE = {"drift": "bold red", "no_drift": "green", "not_enough_data": "yellow"}


def _cohort_table(c: dict[str, Any], policy: dict[str, Any], show_all: bool) -> None:
    feature_tests, prediction_tests = policy["feature_tests"], policy["prediction_tests"]
    features = c["features"]
    shown = features if show_all else [f for f in features if f["verdict"] == "drift"]
    shown = sorted(shown, key=lambda f: (f["verdict"] != "drift", f["derived"], -f["strength"], f["name"]))
    t = Table(
        title=f"cohort {c['label']}: {c['verdict']} — {c['devices']} device(s), {c['windows']} window(s), "
        f"{c['rows']} rows",
        header_style="bold",
        title_justify="left",
    )
    for col in ["feature", "verdict", *feature_tests, "deciding"]:
        t.add_column(col, overflow="fold")
    for f in shown:
        name = f["name"] + (" (derived)" if f["derived"] else "")
        style = "bold red" if f["verdict"] == "drift" else None
        cells = [name, f["verdict"], *[_test_cell(f["tests"], n) for n in feature_tests], ",".join(f["deciding_tests"])]
        t.add_row(*cells, style=style)
    if shown:
        console.print(t)
    else:
        console.print(f"[bold]{t.title}[/]", highlight=False)
    rest = len(features) - len(shown)
    if rest:
        counts: dict[str, int] = {}
        for f in features:
            if f not in shown:
                counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
        console.print(
            f"  {rest} other feature(s): "
            + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
            + " (--all shows them)",
            highlight=False,
        )
    if c["excluded"]:
        for reason, n in c["excluded"].items():
            console.print(f"  [yellow]set aside[/]: {n} window(s) — {escape(reason)}", highlight=False)
    rows = []
    for kind in ("predictions", "confidence"):
        h = c.get(kind)
        if h is None:
            continue
        live = h["live"]
        private = f"de-biased, design effect {_fmt(live['design_effect'], 2)}" if live["debiased"] else "exact"
        rows.append(
            [
                kind,
                h["verdict"],
                *[_test_cell(h["tests"], n) for n in prediction_tests],
                _fmt(live["effective_predictions"], 1),
                private,
            ]
        )
    if rows:
        table(None, ["histogram", "verdict", *prediction_tests, "n (effective)", "privacy"], rows)


def _show_report(doc: dict[str, Any], show_all: bool) -> None:
    ref = doc["reference"]
    console.print(
        f"drift of [bold]{doc['model']}:{doc['version']}[/] by {doc['by']} — reference: dataset '{ref['dataset']}' "
        f"({ref['rows']} rows); policy: {doc['policy_source']} "
        f"(deciding: {', '.join(doc['policy']['deciding_feature_tests'])}, require {doc['policy']['require']})",
        highlight=False,
    )
    for c in doc["cohorts"]:
        _cohort_table(c, doc["policy"], show_all)
    if any(c["drifted_derived"] for c in doc["cohorts"]):
        console.print(f"note: {doc['notes'][0]}", highlight=False)
    style = "bold red" if doc["drifted"] else "bold green"
    console.print(doc["summary"], style=style, markup=False, highlight=False, soft_wrap=True)


@app.command("report")
def report_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: VersionOpt = None,
    window: Annotated[str | None, typer.Option(help="The last 30m, 1h, 7d … (instead of --since/--until).")] = None,
    since: Annotated[str | None, typer.Option(help="Windows ending at or after this ISO 8601 time.")] = None,
    until: Annotated[str | None, typer.Option(help="Windows ending at or before this ISO 8601 time.")] = None,
    by: Annotated[str, typer.Option(help="What makes a cohort: tag, profile or device.")] = "tag",
    cohort: Annotated[str | None, typer.Option(help="Only this cohort ('*': the whole fleet).")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Show every feature, not only the drifted ones.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Drift per cohort against the version's reference profile (default version: the newest with
    telemetry in the range). Exit 0 whatever the verdict; non-zero on bad input."""
    from tinymlops.observe.fleet_drift import DriftService, parse_instant

    lo = None if since is None else parse_instant(since, "--since")
    hi = None if until is None else parse_instant(until, "--until")
    with _open(workspace) as ws:
        doc = (
            DriftService(ws.engine, ws.registry)
            .report(model, version=version, window=window, since=lo, until=hi, by=by, cohort=cohort)
            .to_dict()
        )
    if json_out:
        emit_json(doc)
    else:
        _show_report(doc, show_all)


# --- policy --------------------------------------------------------------------------------------
def _show_policy(doc: dict[str, Any]) -> None:
    p = doc["policy"]
    who = f", set by {doc['updated_by']} at {doc['updated_at']}" if doc["source"] == "stored" else ""
    console.print(f"drift policy of [bold]{doc['model']}[/] ({doc['source']}{who})", highlight=False)
    table(
        None,
        ["setting", "value"],
        [
            ["thresholds", ", ".join(f"{k}={v:g}" for k, v in p["thresholds"].items())],
            ["feature tests", ", ".join(p["feature_tests"])],
            ["deciding feature tests", ", ".join(p["deciding_feature_tests"])],
            ["prediction tests", ", ".join(p["prediction_tests"])],
            ["deciding prediction tests", ", ".join(p["deciding_prediction_tests"])],
            ["require", p["require"]],
            ["min samples", p["min_samples"]],
            ["correction", p["correction"]],
            ["ks rank error", p["ks_rank_error"]],
            ["bins", p["bins"]],
            ["psi epsilon", p["psi_epsilon"]],
        ],
    )


def parse_thresholds(values: list[str]) -> dict[str, float]:
    """``["ks=0.001", "wasserstein=0.15"]`` → ``{"ks": 0.001, "wasserstein": 0.15}``."""
    out: dict[str, float] = {}
    for name, raw in parse_pairs(values, "--threshold", form="TEST=VALUE", example="ks=0.001").items():
        try:
            out[name] = float(raw)
        except ValueError:
            raise UsageError(f"--threshold: the value of {name!r} is not a number: {raw!r}") from None
    return out


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@policy_app.command("show")
def policy_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The model's drift policy (the defaults when none was set)."""
    from tinymlops.observe.fleet_drift import DriftService

    with _open(workspace) as ws:
        doc = DriftService(ws.engine, ws.registry).policy(model).to_dict()
    emit_json(doc) if json_out else _show_policy(doc)


@policy_app.command("set")
def policy_set(
    model: Annotated[str, typer.Argument(help="Model name.")],
    threshold: Annotated[
        list[str] | None, typer.Option("--threshold", help="TEST=VALUE, repeatable (e.g. ks=0.001, wasserstein=0.15).")
    ] = None,
    require: Annotated[str | None, typer.Option(help="all or any: how the deciding tests combine.")] = None,
    min_samples: Annotated[int | None, typer.Option("--min-samples", help="Fewer values: not enough data.")] = None,
    correction: Annotated[str | None, typer.Option(help="bonferroni or none (p-values over features).")] = None,
    feature_tests: Annotated[str | None, typer.Option("--feature-tests", help="Comma-separated tests to run.")] = None,
    deciding_feature_tests: Annotated[
        str | None, typer.Option("--deciding-feature-tests", help="Comma-separated tests that decide.")
    ] = None,
    prediction_tests: Annotated[str | None, typer.Option("--prediction-tests", help="Comma-separated.")] = None,
    deciding_prediction_tests: Annotated[
        str | None, typer.Option("--deciding-prediction-tests", help="Comma-separated.")
    ] = None,
    ks_rank_error: Annotated[
        str | None, typer.Option("--ks-rank-error", help="conservative, point or worst_case.")
    ] = None,
    bins: Annotated[int | None, typer.Option(help="Bins of PSI and JS on features.")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Start from the defaults, not the stored policy.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change the model's drift policy: the options given change the stored policy (or, with
    --reset, the defaults); everything is validated before anything is stored."""
    from tinymlops.observe.fleet_drift import DriftService
    from tinymlops.release.rollouts import cli_actor

    with _open(workspace) as ws:
        service = DriftService(ws.engine, ws.registry)
        current = service.policy(model)
        settings: dict[str, Any] = {} if reset else current.policy.to_dict()
        if threshold:
            settings["thresholds"] = {**settings.get("thresholds", {}), **parse_thresholds(threshold)}
        changes = {
            "require": require,
            "min_samples": min_samples,
            "correction": correction,
            "feature_tests": _names(feature_tests),
            "deciding_feature_tests": _names(deciding_feature_tests),
            "prediction_tests": _names(prediction_tests),
            "deciding_prediction_tests": _names(deciding_prediction_tests),
            "ks_rank_error": ks_rank_error,
            "bins": bins,
        }
        settings.update({k: v for k, v in changes.items() if v is not None})
        doc = service.set_policy(model, settings, updated_by=cli_actor()).to_dict()
    emit_json(doc) if json_out else _show_policy(doc)


# --- reference ------------------------------------------------------------------------------------
def _show_reference(doc: dict[str, Any]) -> None:
    s = doc["settings"]
    console.print(
        f"reference profile of [bold]{doc['model']}:{doc['version']}[/] from dataset '{doc['dataset']}' "
        f"(sha256 {doc['dataset_sha256'][:12]}), {doc['rows']} rows profiled, outputs: {s.get('outputs', '-')}, "
        f"made {doc['created_at']}",
        highlight=False,
    )
    if s.get("outputs_error"):
        console.print(f"  [yellow]the model could not be run on it[/]: {escape(s['outputs_error'])}", highlight=False)
    plain = [f for f in doc["features"] if not f["derived"]]
    derived = len(doc["features"]) - len(plain)
    console.print(
        f"  {len(plain)} {plain[0]['kind'] if plain else 'input'} feature(s) + {derived} derived projection "
        f"feature(s); k={s.get('k')}, projection seed {s.get('projection_seed')}",
        highlight=False,
    )
    if doc["classes"] is not None:
        console.print(f"  predicted classes: {doc['classes']}", highlight=False)


@reference_app.command("build")
def reference_build(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: VersionOpt = None,
    dataset: Annotated[
        str | None, typer.Option(help="A registered dataset (default: the newest eval, else calibration set).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even if the stored one is up to date.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compute a version's reference profile (default: the latest version) by running it on a dataset."""
    from tinymlops.observe.references import ReferenceService

    with _open(workspace) as ws:
        doc = ReferenceService(ws.engine, ws.registry).build(model, version, dataset=dataset, force=force).to_dict()
    emit_json(doc) if json_out else _show_reference(doc)


@reference_app.command("show")
def reference_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: VersionOpt = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A version's reference profile (default: the latest version)."""
    from tinymlops.observe.references import ReferenceService

    with _open(workspace) as ws:
        doc = ReferenceService(ws.engine, ws.registry).require(model, version).to_dict()
    emit_json(doc) if json_out else _show_reference(doc)

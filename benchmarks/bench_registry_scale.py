"""Registry queries on a model with 10,000 variants (and ~50 other models), SQLite and PostgreSQL.

The rows are realistic: a real digits CNN is registered with its datasets, its default
variants are derived and evaluated, and the ``info``/``recipe`` JSON of its int8-static
variant, that derivation's ``details`` and that evaluation's ``metrics`` are copied into every
synthetic row. The big model has one base version, ``top`` first-level variants (written
through ``Registry.add_variant``, so its write rate is measured too) and ``children`` variants
under each of them (bulk-inserted with SQLAlchemy Core into the same tables, with one
derivation row and one evaluation row each, as the registry itself would write them).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import fmt_ms, goal, goals_table, stats_ms, time_calls
from rich.table import Table

NAME = "registry_scale"
TITLE = "Registry queries with 10,000 variants of one model"
ENV_PG = "TINYMLOPS_TEST_PG_URL"
BIG = "big"
GOAL_MS = 100.0
CHUNK = 1000


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "top": 10,
            "children": 99,
            "other_models": 20,
            "other_variants": 5,
            "runs": {"list_models": 10, "lineage": 5, "artifacts": 10, "resolve": 50, "breakdown": 3},
        }
    return {
        "top": 100,
        "children": 99,
        "other_models": 50,
        "other_variants": 5,
        "runs": {"list_models": 50, "lineage": 15, "artifacts": 30, "resolve": 300, "breakdown": 10},
    }


def _template() -> dict[str, Any]:
    """Register a real CNN (1 training epoch is enough: only the metadata matters here) in a
    scratch workspace and copy its rows' JSON."""
    from tinymlops.demo.digits import train_digits_cnn
    from tinymlops.optimize.pipeline import register_model
    from tinymlops.workspace import Workspace

    dm = train_digits_cnn(epochs=1)
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-") as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        try:
            reg = register_model(ws, "digits", dm.onnx, dataset=dm.npz("test"), calibration=dm.npz("train"))
            outcome = next(o for o in reg.derivations if o.variant == "int8-static")
            art = outcome.artifact
            assert art is not None
            derivation = next(d for d in ws.registry.derivations("digits") if d.artifact_id == art.id)
            return {
                "base_bytes": dm.onnx,
                "variant_bytes": ws.registry.read_bytes(art),
                "info": art.info_data,
                "recipe": art.recipe_data,
                "details": derivation.details,
                "metrics": reg.evaluations[art.id],
                "dataset_label": ws.registry.latest_evaluation(art.id).dataset,  # type: ignore[union-attr]
                "host": ws.registry.latest_evaluation(art.id).host,  # type: ignore[union-attr]
            }
        finally:
            ws.close()


def _populate(ws: Any, tpl: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import insert, select

    from tinymlops.registry.schema import ArtifactRow, DerivationRow, EvaluationRow, ModelRow
    from tinymlops.spec.model_info import ModelInfo
    from tinymlops.spec.recipe import RecipeSpec

    reg = ws.registry
    info = ModelInfo.from_dict(tpl["info"])
    recipe = RecipeSpec.from_dict(tpl["recipe"])
    timings: dict[str, Any] = {}

    base = reg.register(BIG, tpl["base_bytes"], source="benchmark", description="10k variants")
    t0 = time.perf_counter()
    tops = []
    for i in range(cfg["top"]):
        tops.append(
            reg.add_variant(base, tpl["variant_bytes"], info, recipe, variant=f"v{i:03d}", details=tpl["details"])
        )
    timings["add_variant_ms_per_call"] = 1e3 * (time.perf_counter() - t0) / cfg["top"]

    digest, size = tops[0].sha256, tops[0].size_bytes
    with ws.engine.connect() as conn:
        model_id = conn.scalar(select(ModelRow.id).where(ModelRow.name == BIG))
    now = datetime.now(UTC)
    child_rows = [
        {
            "model_id": model_id,
            "version": base.version,
            "variant": f"{top.variant}/c{j:02d}",
            "parent_id": top.id,
            "format": "onnx",
            "sha256": digest,
            "size_bytes": size,
            "info": tpl["info"],
            "recipe": tpl["recipe"],
            "target": None,
            "source": f"derived from {top.ref} by {recipe.recipe}",
            "tags": [],
            "created_at": now,
        }
        for top in tops
        for j in range(cfg["children"])
    ]
    t0 = time.perf_counter()
    with ws.engine.begin() as conn:
        for k in range(0, len(child_rows), CHUNK):
            conn.execute(insert(ArtifactRow), child_rows[k : k + CHUNK])
        ids = conn.execute(
            select(ArtifactRow.id, ArtifactRow.parent_id, ArtifactRow.variant).where(
                ArtifactRow.model_id == model_id, ArtifactRow.parent_id.in_([t.id for t in tops])
            )
        ).all()
        derivations = [
            {
                "model_id": model_id,
                "version": base.version,
                "parent_id": parent_id,
                "variant": variant,
                "recipe": tpl["recipe"],
                "status": "succeeded",
                "error": "",
                "details": tpl["details"],
                "artifact_id": aid,
                "duration_s": 0.1,
                "created_at": now,
            }
            for aid, parent_id, variant in ids
        ]
        # a few failed derivations, as a real registry has (shown as leaves in the lineage)
        derivations += [
            {
                **derivations[i],
                "variant": derivations[i]["variant"] + "/failed",
                "parent_id": derivations[i]["artifact_id"],
                "status": "failed",
                "error": "RecipeError: benchmark",
                "artifact_id": None,
            }
            for i in range(0, len(derivations), max(1, len(derivations) // 10))
        ]
        evaluations = [
            {
                "artifact_id": aid,
                "dataset": tpl["dataset_label"],
                "host": tpl["host"],
                "metrics": tpl["metrics"],
                "created_at": now,
            }
            for aid in [base.id, *(t.id for t in tops), *(r[0] for r in ids)]
        ]
        for rows, table in ((derivations, DerivationRow), (evaluations, EvaluationRow)):
            for k in range(0, len(rows), CHUNK):
                conn.execute(insert(table), rows[k : k + CHUNK])
    timings["bulk_insert_s"] = time.perf_counter() - t0
    timings["bulk_rows"] = len(child_rows) + len(derivations) + len(evaluations)

    t0 = time.perf_counter()
    for m in range(cfg["other_models"]):
        other = reg.register(f"model-{m:02d}", tpl["base_bytes"], source="benchmark")
        reg.add_evaluation(other.id, tpl["dataset_label"], tpl["host"], tpl["metrics"])
        for v in range(cfg["other_variants"]):
            a = reg.add_variant(
                other, tpl["variant_bytes"], info, recipe, variant=f"variant-{v}", details=tpl["details"]
            )
            reg.add_evaluation(a.id, tpl["dataset_label"], tpl["host"], tpl["metrics"])
    timings["other_models_s"] = time.perf_counter() - t0
    counts = {}
    with ws.engine.connect() as conn:
        from sqlalchemy import func

        for table in (ModelRow, ArtifactRow, DerivationRow, EvaluationRow):
            counts[table.__tablename__] = conn.scalar(select(func.count()).select_from(table))
        counts["big_variants"] = conn.scalar(
            select(func.count())
            .select_from(ArtifactRow)
            .where(ArtifactRow.model_id == model_id, ArtifactRow.variant != "")
        )
    deep = f"{BIG}:{base.version}/{tops[len(tops) // 2].variant}/c{cfg['children'] // 2:02d}"
    return {"timings": timings, "counts": counts, "deep_ref": deep}


def _queries(ws: Any, deep: str, runs: dict[str, int]) -> dict[str, Any]:
    reg = ws.registry
    ids = [a.id for a in reg.artifacts(BIG)]
    lineage = reg.lineage(BIG)
    tree_nodes = 0
    stack = list(lineage)
    while stack:
        n = stack.pop()
        tree_nodes += 1
        stack.extend(n.children)
    checks = {
        "list_models_count": len(reg.list_models()),
        "lineage_nodes": tree_nodes,
        "artifacts_count": len(ids),
        "resolved": reg.resolve(deep).ref,
    }
    calls = {
        "list_models()": (reg.list_models, runs["list_models"]),
        f"lineage('{BIG}')": (lambda: reg.lineage(BIG), runs["lineage"]),
        f"artifacts('{BIG}')": (lambda: reg.artifacts(BIG), runs["artifacts"]),
        f"resolve('{deep}')": (lambda: reg.resolve(deep), runs["resolve"]),
        # other reads over the whole model, and the bare tree query as a floor (not goals)
        f"derivations('{BIG}')": (lambda: reg.derivations(BIG), runs["breakdown"]),
        "evaluations(all ids)": (lambda: reg.evaluations(ids), runs["breakdown"]),
        "floor: SELECT id, parent_id, variant": (lambda: _slim_tree(ws), runs["breakdown"]),
    }
    out = {name: stats_ms(time_calls(fn, n, warmup=2)) for name, (fn, n) in calls.items()}
    return {"queries": out, "checks": checks}


def _slim_tree(ws: Any) -> list[Any]:
    """The tree's shape alone (no JSON columns): a lower bound for what lineage must fetch."""
    from sqlalchemy import select

    from tinymlops.registry.schema import ArtifactRow, ModelRow

    with ws.engine.connect() as conn:
        return conn.execute(
            select(ArtifactRow.id, ArtifactRow.parent_id, ArtifactRow.variant)
            .join(ModelRow)
            .where(ModelRow.name == BIG)
        ).all()


def _fresh_pg_database(base_url: str) -> tuple[str, str]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database, autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False), name


def _drop_pg_database(base_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database, autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _backend(kind: str, tpl: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    from tinymlops.workspace import Workspace

    pg_base = os.environ.get(ENV_PG)
    db_url, db_name = (None, None)
    if kind == "postgresql":
        assert pg_base is not None
        db_url, db_name = _fresh_pg_database(pg_base)
    try:
        with tempfile.TemporaryDirectory(prefix="tinymlops-bench-") as tmp:
            ws = Workspace.init(Path(tmp) / "ws", db_url=db_url)
            try:
                t0 = time.perf_counter()
                populated = _populate(ws, tpl, cfg)
                populated["timings"]["populate_total_s"] = time.perf_counter() - t0
                result = _queries(ws, populated["deep_ref"], cfg["runs"])
                server = None
                if kind == "postgresql":
                    with ws.engine.connect() as conn:
                        server = conn.exec_driver_sql("select version()").scalar()
                else:
                    import sqlite3

                    server = f"SQLite {sqlite3.sqlite_version} (file in the workspace, WAL)"
            finally:
                ws.close()
    finally:
        if db_name is not None and pg_base is not None:
            _drop_pg_database(pg_base, db_name)
    return {"backend": kind, "server": server, **populated, **result}


def run(quick: bool) -> dict[str, Any]:
    cfg = _settings(quick)
    tpl = _template()
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get(ENV_PG) else [])
    backends = {kind: _backend(kind, tpl, cfg) for kind in kinds}
    goal_queries = ("list_models()", f"lineage('{BIG}')", f"artifacts('{BIG}')")
    goals = []
    n_variants = cfg["top"] * (1 + cfg["children"])
    for kind, b in backends.items():
        names = [*goal_queries, next(q for q in b["queries"] if q.startswith("resolve("))]
        for q in names:
            s = b["queries"][q]
            goals.append(
                goal(
                    f"{q} under {GOAL_MS:.0f} ms on {kind} ({n_variants:,} variants)",
                    s["p50_ms"] < GOAL_MS,
                    f"median {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms over {s['n']} runs",
                    "wall time of the Registry call in this process (connection pool warm, 2 untimed warm-up "
                    "calls, garbage collector on as for any caller); pass = median < 100 ms",
                )
            )
    if "postgresql" not in backends:
        goals.append(
            goal(
                "same queries on PostgreSQL",
                False,
                f"not run: set {ENV_PG} to a PostgreSQL URL",
                "skipped",
                skipped=True,
            )
        )
        goals[-1]["passed"] = None
    return {
        "settings": {**cfg, "variants_of_big_model": n_variants},
        "method": (
            f"One model '{BIG}' with 1 base version, {cfg['top']} first-level variants written with "
            f"Registry.add_variant and {cfg['children']} children under each bulk-inserted with SQLAlchemy Core "
            "(one derivation and one evaluation row per artifact, realistic JSON copied from a real registered "
            f"int8-static variant of the digits CNN, plus a few failed derivations), and {cfg['other_models']} other "
            f"models with {cfg['other_variants']} variants each written through the Registry API. Each query: 2 "
            "warm-up calls then N timed calls (garbage collector on); median and p95 reported."
        ),
        "backends": backends,
        "goals": goals,
        "headline": {kind: {q: round(s["p50_ms"], 2) for q, s in b["queries"].items()} for kind, b in backends.items()},
    }


def render(result: dict[str, Any]) -> list[Table]:
    backends = result["backends"]
    kinds = list(backends)
    first = backends[kinds[0]]
    t = Table(
        title=f"Registry queries, {result['settings']['variants_of_big_model']:,} variants of '{BIG}' + "
        f"{result['settings']['other_models']} other models (median / p95 ms)",
        title_justify="left",
    )
    t.add_column("query")
    for kind in kinds:
        t.add_column(f"{kind} p50", justify="right")
        t.add_column(f"{kind} p95", justify="right")
    t.add_column("runs", justify="right")
    for q in first["queries"]:
        cells = []
        for kind in kinds:
            s = backends[kind]["queries"][q]
            style = "" if s["p50_ms"] < GOAL_MS else "[red]"
            cells += [f"{style}{fmt_ms(s['p50_ms'], 2)}", fmt_ms(s["p95_ms"], 2)]
        t.add_row(q, *cells, str(first["queries"][q]["n"]))
    t.caption = f"goal: list_models, lineage, artifacts and resolve each under {GOAL_MS:.0f} ms (median)"

    w = Table(title="Writing the rows", title_justify="left")
    w.add_column("")
    for kind in kinds:
        w.add_column(kind, justify="right")
    w.add_row(
        "Registry.add_variant (ms/call)", *[f"{backends[k]['timings']['add_variant_ms_per_call']:.2f}" for k in kinds]
    )
    w.add_row(
        "Core bulk insert (rows/s)",
        *[f"{backends[k]['timings']['bulk_rows'] / backends[k]['timings']['bulk_insert_s']:,.0f}" for k in kinds],
    )
    w.add_row("populate total (s)", *[f"{backends[k]['timings']['populate_total_s']:.1f}" for k in kinds])
    for key in ("models", "artifacts", "derivations", "evaluations"):
        w.add_row(f"rows in {key}", *[f"{backends[k]['counts'][key]:,}" for k in kinds])
    w.add_row("lineage nodes", *[f"{backends[k]['checks']['lineage_nodes']:,}" for k in kinds])
    return [t, w, goals_table(result)]

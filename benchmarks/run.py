"""Run the benchmarks: ``python benchmarks/run.py [--only NAME] [--quick]``.

Prints a table per benchmark and writes ``benchmarks/results/<name>.json`` plus a combined
``benchmarks/results/summary.json``. These are measurements, not tests: nothing here fails
the build when a goal is missed — the goals section says pass or fail and how it was measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, goals_table, jsonable, machine_info, now_iso
from rich.console import Console

#: benchmark name -> module (each exposes run(quick) -> dict and render(result) -> tables)
BENCHMARKS = {
    "quantization": "bench_quantization",
    "registry_scale": "bench_registry_scale",
    "derivation": "bench_derivation",
    "runtime": "bench_runtime",
    "device_auth": "bench_device_auth",
    "update_repo": "bench_update_repo",
    "telemetry": "bench_telemetry",
    "fleet_load": "bench_fleet_load",
    "drift": "bench_drift",
    "metering": "bench_metering",
    "usage_ingest": "bench_usage_ingest",
}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs (a smoke run)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON files go")
    args = parser.parse_args(argv)

    console = Console()
    if not console.is_terminal:  # piped or captured: wide enough for the tables
        console = Console(width=max(console.width, 180))
    machine = machine_info()
    console.print(
        f"[bold]tinymlops benchmarks[/] {'(quick) ' if args.quick else ''}on {machine['cpu_model']}, "
        f"{machine['logical_cores']} logical cores ({machine['usable_cores']} usable), "
        f"onnxruntime {machine['versions']['onnxruntime']}"
    )
    names = args.only or list(BENCHMARKS)
    ran: dict[str, dict[str, Any]] = {}
    failures = 0
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        console.rule(f"[bold]{name}[/]: {module.TITLE}")
        started = now_iso()
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        try:
            result = module.run(args.quick)
        except Exception:
            failures += 1
            console.print(f"[red]benchmark {name} crashed:[/]")
            console.print(traceback.format_exc())
            result = {"error": traceback.format_exc(), "goals": []}
        elapsed = time.perf_counter() - t0
        doc = {
            "benchmark": name,
            "title": module.TITLE,
            "started_at": started,
            "elapsed_s": elapsed,
            "quick": args.quick,
            # other processes on the machine skew absolute times (ratios measured side by side less so)
            "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
            "machine": machine,
            **result,
        }
        _write(args.results / f"{name}.json", doc)
        ran[name] = doc
        if "error" not in result:
            for table in module.render(doc):
                console.print(table)
        else:
            console.print(goals_table(doc))
        load = doc["load_average_1_5_15"]
        console.print(
            f"[dim]{name}: {elapsed:.1f} s, load average {load['before'][0]:.2f} → {load['after'][0]:.2f} "
            f"→ {args.results / (name + '.json')}[/]"
        )

    # the summary covers every result file present (this run's and earlier ones, each dated)
    summary: dict[str, Any] = {"written_at": now_iso(), "machine": machine, "benchmarks": {}}
    for name in BENCHMARKS:
        doc = ran.get(name)
        if doc is None:
            path = args.results / f"{name}.json"
            if not path.is_file():
                continue
            doc = json.loads(path.read_text(encoding="utf-8"))
        summary["benchmarks"][name] = {
            "title": doc.get("title"),
            "started_at": doc.get("started_at"),
            "elapsed_s": doc.get("elapsed_s"),
            "quick": doc.get("quick"),
            "this_run": name in ran,
            "error": doc.get("error"),
            "goals": doc.get("goals", []),
            "headline": doc.get("headline", {}),
        }
    _write(args.results / "summary.json", summary)

    console.rule("[bold]summary[/]")
    all_goals = [
        {
            **g,
            "goal": f"{name}: {g['goal']}"
            + ("" if b["this_run"] else f" [dim](earlier run {b['started_at']}{', quick' if b['quick'] else ''})[/]"),
        }
        for name, b in summary["benchmarks"].items()
        for g in b["goals"]
    ]
    console.print(goals_table({"goals": all_goals}))
    console.print(f"[dim]summary → {args.results / 'summary.json'}[/]")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Output for the CLI: a rich table for people, ``--json`` for scripts, errors to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tinymlops.errors import UsageError

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="TINYMLOPS_WORKSPACE",
        help="Workspace directory (default: $TINYMLOPS_WORKSPACE, else the current directory).",
        show_default=False,
    ),
]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_num(n: float | None, digits: int = 3) -> str:
    if n is None:
        return "-"
    if isinstance(n, int) or (float(n).is_integer() and abs(n) >= 1000):
        return f"{int(n):,}"
    return f"{n:.{digits}f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def parse_pairs(
    values: Iterable[str] | None, option: str, *, form: str = "KEY=VALUE", example: str = ""
) -> dict[str, str]:
    """``["a=1", "b = 2"]`` → ``{"a": "1", "b": " 2"}``: repeated ``KEY=VALUE`` options (the key
    stripped). Not that form, or a key given twice: :class:`UsageError` naming ``option``."""
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{option}: {item!r} is not {form}" + (f" (e.g. {example})" if example else ""))
        if key in out:
            raise UsageError(f"{option}: {key!r} is given twice")
        out[key] = value
    return out

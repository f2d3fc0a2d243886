"""What people see of a simulated fleet: a live rich table (~2 refreshes a second), a final table,
and the JSON result for scripts.

One row per mix entry (usually a device profile) and a total row: devices (enrolled / serving a
bundle), installs, predictions (and how many of them while offline), refusals, prediction errors,
accuracy on the held-out digits, latency p50/p95, seconds offline and flat, the mean battery and
the agent's failed polls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tinymlops.fleet.simulator import FleetResult, FleetSnapshot

COLUMNS = (
    "profile",
    "devices",
    "serving",
    "installs",
    "predictions",
    "offline",
    "refused",
    "errors",
    "accuracy",
    "p50 ms",
    "p95 ms",
    "offline s",
    "flat s",
    "battery",
    "poll errors",
)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def row(r: Mapping[str, Any]) -> list[str]:
    return [
        str(r["profile"]),
        f"{r['enrolled']}/{r['devices']}",
        str(r["serving"]),
        str(r["installs"]),
        f"{r['predictions']:,}",
        f"{r['offline_predictions']:,}",
        f"{r['refused']:,}",
        f"{r['errors']:,}",
        _pct(r["accuracy"]),
        _ms(r["latency_ms"]["p50"]),
        _ms(r["latency_ms"]["p95"]),
        f"{r['offline_s']:.1f}",
        f"{r['flat_s']:.1f}",
        _pct(r["battery_mean"]),
        str(r["cycle_errors"]),
    ]


def profile_table(summary: Mapping[str, Any], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", show_footer=False)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "profile" else "right", no_wrap=True)
    for r in summary["profiles"]:
        table.add_row(*row(r))
    table.add_section()
    table.add_row(*row(summary["total"]), style="bold")
    return table


def live_view(snapshot: FleetSnapshot, *, server_url: str, duration_s: float | None, backend: str) -> RenderableType:
    total = snapshot.summary["total"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(total["states"].items()))
    until = f" of {duration_s:.0f}s" if duration_s else " (Ctrl-C stops)"
    head = Text(
        f"fleet of {total['devices']} on {backend} → {server_url}: {snapshot.elapsed_s:.1f}s{until}; {states}",
        style="dim",
    )
    return Group(head, profile_table(snapshot.summary))


def final_view(result: FleetResult) -> RenderableType:
    total = result.summary["total"]
    how = "interrupted" if result.interrupted else "done"
    head = Text(
        f"fleet simulation {how} after {result.elapsed_s:.1f}s: {total['devices']} devices "
        f"({result.enrolled_now} enrolled now), {total['predictions']:,} predictions, "
        f"{total['installs']} installs — {result.server_url} ({result.backend})"
    )
    parts: list[RenderableType] = [head, profile_table(result.summary, title="per profile")]
    failed = [d for d in result.devices if d["state"] in ("failed", "crashed", "stuck")]
    if failed:
        t = Table(title="devices that did not run", header_style="bold")
        for c in ("device", "profile", "state", "last error"):
            t.add_column(c, overflow="fold")
        for d in failed[:20]:
            t.add_row(d["name"], d["profile"], d["state"], d["last_error"] or "-")
        parts.append(t)
    if result.kept:
        parts.append(Text(f"device data: {result.data_dir}", style="dim"))
    return Group(*parts)


class LiveSummary:
    """A rich Live display of the fleet, refreshed about twice a second."""

    def __init__(
        self, console: Console, *, server_url: str, duration_s: float | None, backend: str, enabled: bool = True
    ) -> None:
        self.console = console
        self.server_url = server_url
        self.duration_s = duration_s
        self.backend = backend
        self.enabled = enabled
        self._live: Live | None = None

    def __enter__(self) -> LiveSummary:
        if self.enabled:
            self._live = Live(Text("starting the fleet…"), console=self.console, refresh_per_second=2, transient=True)
            self._live.__enter__()
        return self

    def update(self, snapshot: FleetSnapshot) -> None:
        if self._live is not None:
            self._live.update(
                live_view(snapshot, server_url=self.server_url, duration_s=self.duration_s, backend=self.backend)
            )

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None


def result_json(result: FleetResult) -> str:
    return json.dumps(result.to_dict(), indent=2, default=str)


__all__ = ["COLUMNS", "LiveSummary", "final_view", "live_view", "profile_table", "result_json", "row"]

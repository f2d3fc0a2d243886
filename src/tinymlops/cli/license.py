"""``tinymlops license …``: prepaid query licenses on the workspace (no server needed; a running server
serves what this writes, and devices fetch it at their next contact).

* ``issue --device D --model M --queries N (--days N | --until DATE)`` — the root license of a
  (device, model) chain, signed with the workspace's release key (devices already trust it);
* ``top-up LICENSE --queries N [--days N | --until DATE]`` — more queries for the chain (a top-up of
  a revoked chain reinstates it); ``--days`` counts from now;
* ``revoke LICENSE --reason TEXT`` — revoke the chain; the device refuses once it has heard of it;
* ``show LICENSE`` — the license, its chain's usage and position, the chain's flags;
* ``list [--device] [--model] [--status] [--limit]`` — licenses, newest first (the newest 100);
* ``audit [--device] [--kind] [--license] [--fail-on-alert]`` — what reconciliation of the usage
  reports flagged (alerts in red); ``--fail-on-alert`` exits 1 when an alert is listed (for cron/CI);
* ``chains [--device]`` — every chain's usage, acknowledged position and branches.

Dates are ISO 8601: ``2030-01-31`` (midnight UTC), ``2030-01-31T12:00`` (UTC) or with an offset.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_num, table
from tinymlops.errors import UsageError

if TYPE_CHECKING:
    from tinymlops.metering.licensing import LicenseService

app = typer.Typer(
    help="Prepaid query licenses: issue, top up, revoke, and audit the devices' usage reports.", no_args_is_help=True
)

#: the validity options as metering.validity names them in its errors (it checks their ranges too)
OPTIONS = ("--days", "--until")
#: the exit code of ``audit --fail-on-alert`` when an alert is listed (errors use 2-4)
ALERT_EXIT = 1
BAR_WIDTH = 30
#: the newest flags of the license's chain that ``show`` lists
FLAGS_SHOWN = 200

LicenseArg = Annotated[str, typer.Argument(help="A license id (32 hex digits).")]
DaysOpt = Annotated[int | None, typer.Option("--days", help="Valid for this many days (at most 36,500).")]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Valid until this ISO 8601 date or time (exclusive; UTC if no offset).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Only this device's (its id).")]


def _end(days: int | None, until: str | None, *, start: int | None, required: bool) -> int | None:
    from tinymlops.metering.validity import validity_end

    return validity_end(days=days, until=until, start=start, now=time.time(), required=required, names=OPTIONS)


def _date(text: str, option: str) -> int:
    from tinymlops.metering.validity import license_time

    return license_time(text, option)


def _open(workspace: Path | None) -> Any:
    from tinymlops.workspace import Workspace

    return Workspace.open(workspace)


def _service(ws: Any) -> LicenseService:
    from tinymlops.bundle.workspace_keys import release_key
    from tinymlops.metering.licensing import LicenseService

    return LicenseService(ws.engine, release_key(ws))


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def usage_bar(used: int, licensed: int, width: int = BAR_WIDTH) -> str:
    """``███████░░░░░ 700/1,000 used (70.0%)`` (rich markup; red past 90%)."""
    fraction = min(used / licensed, 1.0) if licensed > 0 else 1.0
    filled = round(fraction * width)
    colour = "red" if fraction >= 0.9 else "green"
    bar = f"[{colour}]{'█' * filled}[/][dim]{'░' * (width - filled)}[/]"
    return f"{bar} {fmt_num(used)}/{fmt_num(licensed)} used ({100 * fraction:.1f}%)"


def _status_text(status: str) -> str:
    return {"revoked": "[bold red]revoked[/]", "active": "[green]active[/]"}.get(status, status)


def _show_license(doc: dict[str, Any], *, heading: str = "license") -> None:
    versions = (
        "any"
        if doc["min_version"] is None and doc["max_version"] is None
        else f"{doc['min_version'] if doc['min_version'] is not None else '…'}.."
        f"{doc['max_version'] if doc['max_version'] is not None else '…'}"
    )
    console.print(
        f"{heading} [bold]{doc['license_id']}[/]: {_status_text(doc['status'])} — device {doc['device_id']}, "
        f"model {escape(doc['model'])} (versions {versions})",
        highlight=False,
    )
    rows = [
        ["queries", fmt_num(doc["queries"])],
        ["valid", f"{_when(doc['valid_from'])} .. {_when(doc['valid_until'])} UTC"],
        ["issued", f"{_when(doc['issued_at'])} by issuer key {doc['issuer_key_id']}"],
        ["tops up", doc["previous_license_id"] or "- (the chain's root)"],
        ["chain root", doc["root_license_id"]],
        ["chain licensed", fmt_num(doc["chain_licensed"])],
        ["chain used", f"{fmt_num(doc['chain_used'])} (reserved on every branch: billed)"],
        ["chain remaining", f"{fmt_num(doc['chain_remaining'])} (on the current branch)"],
        ["last report", _when(doc["last_report_at"])],
        ["alerts", doc["alerts"]],
    ]
    if doc["status"] == "revoked":
        rows.append(["revoked", f"{_when(doc['revoked_at'])}: {doc['revoke_reason']}"])
    table(None, ["", ""], rows)


def _flag_rows(flags: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title=f"flags ({len(flags)})", header_style="bold", title_justify="left")
    for col in ("id", "first", "times", "last", "severity", "kind", "device", "model", "license", "seq", "report"):
        t.add_column(col, overflow="fold")
    t.add_column("detail", overflow="fold")
    for f in flags:
        t.add_row(
            str(f["id"]),
            _when(f["created_at"]),
            str(f["repeats"]),
            _when(f["last_at"]) if f["repeats"] > 1 else "-",
            f["severity"],
            f["kind"],
            f["device_id"],
            f["model"] or "-",
            (f["license_id"] or "-")[:12],
            "-" if f["seq"] is None else str(f["seq"]),
            "-" if f["report_id"] is None else str(f["report_id"]),
            f["detail"],
            style="bold red" if f["severity"] == "alert" else None,
        )
    console.print(t)


@app.command("issue")
def issue_cmd(
    device: Annotated[str, typer.Option("--device", help="The enrolled device's id.")],
    model: Annotated[str, typer.Option("--model", help="The model name the queries are for.")],
    queries: Annotated[int, typer.Option("--queries", min=1, max=10**12, help="Prepaid queries.")],
    days: DaysOpt = None,
    until: UntilOpt = None,
    valid_from: Annotated[
        str | None, typer.Option("--from", help="Valid from this ISO 8601 date or time (default: now).")
    ] = None,
    min_version: Annotated[
        int | None, typer.Option("--min-version", min=0, help="Lowest base version covered.")
    ] = None,
    max_version: Annotated[
        int | None, typer.Option("--max-version", min=0, help="Highest base version covered.")
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Issue the root license of a device's chain for a model (a chain that exists: top it up)."""
    start = None if valid_from is None else _date(valid_from, "--from")
    end = _end(days, until, start=start, required=True)
    assert end is not None
    with _open(workspace) as ws:
        doc = (
            _service(ws)
            .issue(
                device_id=device,
                model=model,
                queries=queries,
                valid_until=end,
                valid_from=start,
                min_version=min_version,
                max_version=max_version,
            )
            .to_dict()
        )
    if json_out:
        emit_json(doc)
        return
    _show_license(doc, heading="issued license")
    console.print("the device fetches it at its next contact with the control plane", highlight=False)


@app.command("top-up")
def top_up_cmd(
    license_id: LicenseArg,
    queries: Annotated[int, typer.Option("--queries", min=1, max=10**12, help="Queries added to the chain.")],
    days: DaysOpt = None,
    until: UntilOpt = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add queries to the chain whose latest license this is (--days counts from now; neither --days nor
    --until: the license's end). A top-up of a revoked license reinstates its chain."""
    end = _end(days, until, start=None, required=False)
    with _open(workspace) as ws:
        doc = _service(ws).top_up(license_id, queries=queries, valid_until=end).to_dict()
    if json_out:
        emit_json(doc)
        return
    _show_license(doc, heading="top-up")
    console.print(usage_bar(doc["chain_used"], doc["chain_licensed"]), highlight=False)


@app.command("revoke")
def revoke_cmd(
    license_id: LicenseArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded; the device is told in the revocation).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke the license's chain: the device refuses metered calls once it has heard of it."""
    if not reason.strip():
        raise UsageError("--reason must say why")
    with _open(workspace) as ws:
        doc = _service(ws).revoke(license_id, reason=reason.strip()).to_dict()
    if json_out:
        emit_json(doc)
        return
    _show_license(doc, heading="revoked")
    console.print("the device learns it at its next contact; a top-up of this license reinstates the chain")


@app.command("show")
def show_cmd(license_id: LicenseArg, workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """A license, its chain's usage and position, and the chain's flags."""
    with _open(workspace) as ws:
        service = _service(ws)
        doc = service.get(license_id).to_dict()
        doc["chain"] = service.chain(license_id).to_dict()
        doc["flags"] = [f.to_dict() for f in service.audit(license_id=license_id, limit=FLAGS_SHOWN)]
    if json_out:
        emit_json(doc)
        return
    _show_license(doc)
    console.print(usage_bar(doc["chain_used"], doc["chain_licensed"]), highlight=False)
    chain = doc["chain"]
    forked = " [bold red](forked)[/]" if chain["branches"] > 1 else ""
    console.print(
        f"chain: latest {chain['latest_license_id']}, {chain['reports']} report(s), next_seq {chain['next_seq']}, "
        f"{chain['branches']} branch(es){forked}",
        highlight=False,
    )
    if doc["flags"]:
        _flag_rows(doc["flags"])
    else:
        console.print("no flags on this chain", highlight=False)


@app.command("list")
def list_cmd(
    device: DeviceOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model's.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="active, superseded or revoked.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="How many, newest first.")] = 100,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Licenses, newest first (the newest 100 unless --limit says otherwise)."""
    with _open(workspace) as ws:
        docs = [v.to_dict() for v in _service(ws).list(device_id=device, model=model, status=status, limit=limit)]
    if json_out:
        emit_json(docs)
        return
    table(
        f"licenses ({len(docs)})",
        [
            "license",
            "device",
            "model",
            "status",
            "queries",
            "chain used/licensed",
            "remaining (branch)",
            "valid until",
            "alerts",
        ],
        [
            [
                d["license_id"],
                d["device_id"],
                d["model"],
                d["status"],
                fmt_num(d["queries"]),
                f"{fmt_num(d['chain_used'])}/{fmt_num(d['chain_licensed'])}",
                fmt_num(d["chain_remaining"]),
                _when(d["valid_until"]),
                d["alerts"],
            ]
            for d in docs
        ],
    )


@app.command("audit")
def audit_cmd(
    device: DeviceOpt = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only this kind: rollback, clone, tamper, revoked-use, replay, …")
    ] = None,
    license_id: Annotated[str | None, typer.Option("--license", help="Only flags naming this license.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = 100,
    fail_on_alert: Annotated[
        bool, typer.Option("--fail-on-alert", help=f"Exit {ALERT_EXIT} when an alert is listed (for cron/CI).")
    ] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """What reconciliation of the devices' usage reports flagged, newest first (alerts in red)."""
    with _open(workspace) as ws:
        docs = [
            f.to_dict() for f in _service(ws).audit(device_id=device, kind=kind, license_id=license_id, limit=limit)
        ]
    alerts = sum(1 for d in docs if d["severity"] == "alert")
    if json_out:
        emit_json(docs)
    elif docs:
        _flag_rows(docs)
        style = "bold red" if alerts else "green"
        console.print(f"{alerts} alert(s), {len(docs) - alerts} info", style=style, highlight=False)
    else:
        console.print("no flags", style="green", highlight=False)
    if fail_on_alert and alerts:
        raise typer.Exit(ALERT_EXIT)


@app.command("chains")
def chains_cmd(device: DeviceOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Every (device, model) chain: usage, the server's acknowledged position, branches, reports."""
    with _open(workspace) as ws:
        docs = [c.to_dict() for c in _service(ws).chains(device_id=device)]
    if json_out:
        emit_json(docs)
        return
    table(
        f"chains ({len(docs)})",
        [
            "device",
            "model",
            "status",
            "latest license",
            "used/licensed",
            "next_seq",
            "branches",
            "reports",
            "alerts",
        ],
        [
            [
                c["device_id"],
                c["model"],
                c["status"],
                c["latest_license_id"],
                f"{fmt_num(c['reserved'])}/{fmt_num(c['licensed'])}",
                c["next_seq"],
                c["branches"],
                c["reports"],
                c["alerts"],
            ]
            for c in docs
        ],
    )


__all__ = ["ALERT_EXIT", "app", "usage_bar"]

"""``tinymlops device …``: enrolment tokens and enrolled devices, on the workspace database
(no server needed)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, table
from tinymlops.errors import UsageError

app = typer.Typer(help="Enrolled devices and their one-time enrolment tokens.", no_args_is_help=True)
token_app = typer.Typer(help="One-time enrolment tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

_DURATION = re.compile(r"^([0-9]+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"not a duration: {text!r} (use e.g. 3600, 90s, 15m, 24h, 7d)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None


def _token_dict(t: Any, now: Any) -> dict[str, Any]:
    return {
        "id": t.id,
        "status": t.status(now),
        "profile": t.profile_name,
        "tags": list(t.tags),
        "note": t.note,
        "created_at": _iso(t.created_at),
        "expires_at": _iso(t.expires_at),
        "used_at": _iso(t.used_at),
        "used_by": t.used_by,
    }


def _device_dict(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "status": d.status,
        "profile": d.profile_name,
        "tags": list(d.tags),
        "wrapping_key_id": d.wrapping_key_id,
        "enrolled_at": _iso(d.enrolled_at),
        "last_seen": _iso(d.last_seen),
        "revoked_at": _iso(d.revoked_at),
    }


@token_app.command("create")
def token_create(
    profile: Annotated[str | None, typer.Option(help="Only devices of this profile may enrol with it.")] = None,
    ttl: Annotated[str, typer.Option(help="Validity: seconds or 90s / 15m / 24h / 7d.")] = "24h",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag the device gets (repeatable).")] = None,
    note: Annotated[str, typer.Option(help="What the token is for.")] = "",
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a one-time enrolment token and print it (this once: only its hash is stored)."""
    from tinymlops.devices.enrolment import EnrolmentService
    from tinymlops.workspace import Workspace

    ttl_s = parse_duration(ttl)
    with Workspace.open(workspace) as ws:
        service = EnrolmentService(ws.engine, ws.targets.get)
        record, secret = service.create_token(ttl_s=ttl_s, profile=profile, tags=tag or (), note=note)
        info = {**_token_dict(record, service.now()), "token": secret}
    if json_out:
        emit_json(info)
        return
    bound = f", profile {profile}" if profile else ""
    console.print(f"enrolment token [bold]{record.id}[/] (expires {info['expires_at']}{bound}):", highlight=False)
    console.print(secret, highlight=False, soft_wrap=True)
    console.print("It enrols one device and is not shown again.", highlight=False)


@token_app.command("list")
def token_list(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List enrolment tokens (never the tokens themselves)."""
    from tinymlops.devices.enrolment import EnrolmentService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        service = EnrolmentService(ws.engine, ws.targets.get)
        now = service.now()
        tokens = [_token_dict(t, now) for t in service.list_tokens()]
    if json_out:
        emit_json(tokens)
        return
    table(
        "enrolment tokens",
        ["id", "status", "profile", "tags", "expires", "used by"],
        [
            [t["id"], t["status"], t["profile"] or "-", ",".join(t["tags"]), t["expires_at"], t["used_by"] or "-"]
            for t in tokens
        ],
    )


@app.command("list")
def device_list(
    status: Annotated[str | None, typer.Option(help="active or revoked.")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List enrolled devices."""
    from tinymlops.devices.service import DeviceService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        devices = [_device_dict(d) for d in DeviceService(ws.engine).list(status=status)]
    if json_out:
        emit_json(devices)
        return
    table(
        "devices",
        ["id", "status", "profile", "tags", "enrolled", "last seen"],
        [
            [d["id"], d["status"], d["profile"], ",".join(d["tags"]), d["enrolled_at"], d["last_seen"] or "-"]
            for d in devices
        ],
    )


@app.command("show")
def device_show(
    device_id: Annotated[str, typer.Argument(help="The device id (16 hex digits).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one device, with its profile."""
    from tinymlops.devices.service import DeviceService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        record = DeviceService(ws.engine).get(device_id)
    info = {**_device_dict(record), "profile_document": record.profile}
    if json_out:
        emit_json(info)
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)


@app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="The device id (16 hex digits).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke a device: its requests are refused from now on."""
    from tinymlops.devices.service import DeviceService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        record = DeviceService(ws.engine).revoke(device_id)
    if json_out:
        emit_json(_device_dict(record))
    else:
        console.print(f"device {record.id} revoked", highlight=False)

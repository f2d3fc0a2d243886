"""``tinymlops repo …``: the TUF update repository devices follow (publish, refresh, keys)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_bytes, table
from tinymlops.errors import UsageError

if TYPE_CHECKING:
    from tinymlops.release import UpdateRepository

app = typer.Typer(help="The TUF update repository: publish bundles to devices and cohorts.", no_args_is_help=True)

_DURATION = re.compile(r"^([1-9][0-9]{0,8})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

DeviceOpt = Annotated[str | None, typer.Option("--device", help="Device id (target devices/<id>/bundle.tmlb).")]
CohortOpt = Annotated[str | None, typer.Option("--cohort", help="Cohort name (target cohorts/<name>/bundle.tmlb).")]
RootKeyOpt = Annotated[
    Path | None, typer.Option("--root-key", help="The offline root key file (if it is not in the workspace).")
]


def parse_duration(text: str, what: str) -> timedelta:
    """``90s``, ``30m``, ``12h`` or ``7d``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise UsageError(f"{what} must look like 90s, 30m, 12h or 7d, got {text!r}")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _workspace_root(workspace: Path | None) -> Path:
    from tinymlops.workspace import Workspace

    ws = Workspace.open(workspace)
    ws.close()
    return ws.root


def _open(workspace: Path | None) -> UpdateRepository:
    from tinymlops.release import UpdateRepository

    return UpdateRepository.open(_workspace_root(workspace))


def _target(device: str | None, cohort: str | None) -> str:
    from tinymlops.spec.update import TargetPath

    if (device is None) == (cohort is None):
        raise UsageError("give exactly one of --device ID or --cohort NAME")
    return (TargetPath.device(device) if device is not None else TargetPath.cohort(cohort)).path  # type: ignore[arg-type]


def _show_status(info: dict[str, Any]) -> None:
    table(
        f"update repository {info['directory']}",
        ["role", "version", "expires", "in", "key ids", "key here"],
        [
            (
                r["role"],
                r["version"],
                r["expires"],
                f"{r['expires_in_s'] / 3600:.1f} h",
                ", ".join(r["key_ids"]),
                ", ".join("yes" if k else "offline" for k in r["keys_here"]),
            )
            for r in info["roles"]
        ],
    )
    console.print(
        f"{info['bins']} hash bins (newest version {info['bins_version_max']}, earliest expiry "
        f"{info['bins_earliest_expiry']}), {info['targets']} published target(s)",
        highlight=False,
    )
    for w in info["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


@app.command("init")
def init_repo(
    bins_bits: Annotated[int, typer.Option("--bins-bits", help="2**N hash bins (1-16; 8 = 256 bins).")] = 8,
    timestamp_expiry: Annotated[str, typer.Option("--timestamp-expiry", help="e.g. 1d, 12h.")] = "1d",
    snapshot_expiry: Annotated[str, typer.Option("--snapshot-expiry")] = "7d",
    targets_expiry: Annotated[str, typer.Option("--targets-expiry", help="Top-level targets and bins.")] = "90d",
    root_expiry: Annotated[str, typer.Option("--root-expiry")] = "365d",
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the repository's keys (root, targets, snapshot, timestamp) and first metadata."""
    from tinymlops.release import ExpiryPolicy, UpdateRepository

    expiry = ExpiryPolicy(
        root=parse_duration(root_expiry, "--root-expiry"),
        targets=parse_duration(targets_expiry, "--targets-expiry"),
        snapshot=parse_duration(snapshot_expiry, "--snapshot-expiry"),
        timestamp=parse_duration(timestamp_expiry, "--timestamp-expiry"),
    )
    repo = UpdateRepository.init(_workspace_root(workspace), bin_bits=bins_bits, expiry=expiry)
    info = repo.status().to_dict()
    if json_out:
        emit_json(info)
        return
    _show_status(info)
    console.print(
        "the root key is in the workspace; move it offline with `tinymlops repo export-root-key DEST`", highlight=False
    )


@app.command("publish")
def publish(
    bundle: Annotated[Path, typer.Argument(help="A bundle built by `tinymlops bundle build`.")],
    device: DeviceOpt = None,
    cohort: CohortOpt = None,
    urgent: Annotated[bool, typer.Option("--urgent", help="Devices may download it on a metered network.")] = False,
    release_id: Annotated[str | None, typer.Option("--release-id", help="The release this belongs to.")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a bundle and publish it for one device or one cohort."""
    _target(device, cohort)
    if not bundle.is_file():
        raise UsageError(f"{bundle}: no such bundle file")
    repo = _open(workspace)
    published = repo.publish(bundle, device=device, cohort=cohort, urgent=urgent, release_id=release_id)
    info = published.to_dict()
    if json_out:
        emit_json(info)
        return
    console.print(
        f"published [bold]{info['ref']}[/] ({fmt_bytes(info['length'])}, bundle {info['bundle_id']}) "
        f"at {info['path']}{' (urgent)' if urgent else ''}",
        highlight=False,
    )


@app.command("unpublish")
def unpublish(
    device: DeviceOpt = None, cohort: CohortOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """Withdraw the bundle published for a device or a cohort."""
    path = _target(device, cohort)
    removed = _open(workspace).unpublish(path).to_dict()
    if json_out:
        emit_json(removed)
        return
    console.print(f"unpublished {removed['path']} ({removed['ref']}, bundle {removed['bundle_id']})", highlight=False)


@app.command("list")
def list_targets(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Every published target with its custom info."""
    items = [t.to_dict() for t in _open(workspace).targets()]
    if json_out:
        emit_json(items)
        return
    table(
        "published targets",
        ["path", "ref", "target", "size", "urgent", "release", "bundle id", "bin"],
        [
            (
                t["path"],
                t["ref"],
                t["target"],
                fmt_bytes(t["length"]),
                "yes" if t["urgent"] else "",
                t["release_id"],
                t["bundle_id"],
                t["role"],
            )
            for t in items
        ],
    )


@app.command("refresh")
def refresh(
    force_snapshot: Annotated[bool, typer.Option("--force-snapshot", help="Sign a new snapshot too.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign a new timestamp and renew whatever metadata is past half its validity."""
    result = _open(workspace).refresh(force_snapshot=force_snapshot).to_dict()
    if json_out:
        emit_json(result)
        return
    console.print(
        f"timestamp v{result['timestamp_version']} (snapshot v{result['snapshot_version']}); "
        f"re-signed: {', '.join(result['renewed'])}",
        highlight=False,
    )
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


@app.command("status")
def status(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Versions, expiries and keys of every role; warnings when something is due."""
    info = _open(workspace).status().to_dict()
    if json_out:
        emit_json(info)
        return
    _show_status(info)


@app.command("rotate")
def rotate(
    role: Annotated[str, typer.Argument(help="root, targets, snapshot or timestamp.")],
    root_key: RootKeyOpt = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Replace a role's key (needs the root key); devices follow through the new root."""
    repo = _open(workspace)
    new_id = repo.rotate_key(role, root_key=root_key)
    info = {"role": role, "key_id": new_id, "root_version": repo.status().roles[0].version}
    if json_out:
        emit_json(info)
        return
    console.print(f"{role} key is now {new_id} (root v{info['root_version']})", highlight=False)


@app.command("renew-root")
def renew_root(root_key: RootKeyOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Sign a new root version with a fresh expiry (needs the root key)."""
    version = _open(workspace).renew_root(root_key=root_key)
    if json_out:
        emit_json({"root_version": version})
        return
    console.print(f"root v{version} written", highlight=False)


@app.command("export-root-key")
def export_root_key(
    dest: Annotated[Path, typer.Argument(help="File or directory to move the root key to (e.g. a USB stick).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Move the root key out of the workspace (publishing never needs it)."""
    paths = [str(p) for p in _open(workspace).export_root_key(dest)]
    if json_out:
        emit_json({"exported": paths})
        return
    for p in paths:
        console.print(f"root key moved to {p}; keep it offline", highlight=False)


@app.command("import-root-key")
def import_root_key(
    source: Annotated[Path, typer.Argument(help="The root key file exported earlier.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bring the root key back into the workspace (it must be the current root key)."""
    path = str(_open(workspace).import_root_key(source))
    if json_out:
        emit_json({"imported": path})
        return
    console.print(f"root key imported to {path}", highlight=False)


@app.command("root")
def root_json(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write root.json here (else to stdout).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """The current root metadata: the trust anchor a device is given at enrolment."""
    import sys

    from tinymlops.crypto.keys import write_file_atomic

    data = _open(workspace).root_bytes()
    if out is None:
        sys.stdout.write(data.decode("utf-8") + "\n")
        return
    write_file_atomic(out, data)
    console.print(f"wrote {out} ({fmt_bytes(len(data))})", highlight=False)


@app.command("prune")
def prune(
    keep: Annotated[int, typer.Option("--keep", help="Keep what the last N snapshots refer to.")] = 3,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete old metadata versions and target files no recent snapshot refers to."""
    result = _open(workspace).prune(keep=keep).to_dict()
    if json_out:
        emit_json(result)
        return
    console.print(
        f"removed {result['removed_metadata']} metadata file(s), {result['removed_targets']} target file(s), "
        f"{result['removed_temp']} temp file(s)",
        highlight=False,
    )

"""``tinymlops keys …``: the workspace's release and fleet keys, and device identities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json
from tinymlops.errors import UsageError

app = typer.Typer(help="Release, fleet and device keys.", no_args_is_help=True)


@app.command("init")
def init_keys(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """Create the workspace's release signing key and fleet key if absent; print their public halves."""
    from tinymlops.bundle.workspace_keys import init_keys as create_keys
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        info = create_keys(ws)
    if json_out:
        emit_json(info)
        return
    for label, k in info.items():
        status = "created" if k["created"] else "exists"
        console.print(f"[bold]{label}[/] ({k['algorithm']}, {status}) key id {k['key_id']}", highlight=False)
        console.print(f"  public key: {k['public_key']}", highlight=False)
        console.print(f"  public key file: {k['public_key_file']}", highlight=False)


@app.command("device-new")
def device_new(
    directory: Annotated[Path, typer.Argument(help="Directory for the device's keys (private keys stay here).")],
    json_out: JsonOpt = False,
) -> None:
    """Create a device identity (Ed25519 + X25519); print its public key files."""
    from tinymlops.crypto.keys import DeviceKeys

    if DeviceKeys.exists(directory):
        raise UsageError(f"{directory} already holds a device identity; refusing to overwrite it")
    keys = DeviceKeys.generate()
    files = keys.save(directory)
    info = {
        **keys.public_dict(),
        "directory": str(Path(directory).resolve()),
        "signing_public_file": str(files["signing_public"]),
        "wrapping_public_file": str(files["wrapping_public"]),
    }
    if json_out:
        emit_json(info)
        return
    console.print(f"device identity [bold]{info['device_id']}[/] in {info['directory']}", highlight=False)
    console.print(f"  encrypt bundles for it with: --device-key {info['wrapping_public_file']}", highlight=False)
    console.print(f"  its signing public key:      {info['signing_public_file']}", highlight=False)

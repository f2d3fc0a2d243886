"""``tinymlops release …``: create, list and show releases on the workspace (no server needed; a
running server publishes what this writes, the repository is shared)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, table

app = typer.Typer(
    help="Releases: a variant per device, bundles encrypted to each, published via TUF.", no_args_is_help=True
)


def _assignment_rows(doc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for a in doc["assignments"]:
        report = a.get("latest_report") or {}
        rows.append(
            [
                a["device_id"],
                a["profile"],
                a["status"],
                a["ref"] or "-",
                (a["bundle_id"] or "-")[:12],
                report.get("status", "-"),
                a["reason"][:80] or "-",
            ]
        )
    return rows


def _show(doc: dict[str, Any]) -> None:
    console.print(
        f"release [bold]{doc['id']}[/] of {doc['requested']}: {doc['status']}, "
        f"{doc['published']} published, {doc['skipped']} skipped (snapshot {doc['snapshot_version']})",
        highlight=False,
    )
    table(None, ["device", "profile", "status", "ref", "bundle", "installed", "reason"], _assignment_rows(doc))


@app.command("create")
def create_cmd(
    model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (selected per device) or NAME:VERSION/VARIANT.")],
    device: Annotated[list[str] | None, typer.Option("--device", help="A device id (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only devices with this tag (repeatable).")] = None,
    urgent: Annotated[bool, typer.Option("--urgent", help="Devices may download it on metered networks.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Select a variant per device, build a bundle encrypted to each and publish them in one TUF commit."""
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        record = ReleaseService(ws).create_release(
            model, devices=device or None, tags=tag or (), urgent=urgent, created_by="cli"
        )
        doc = record.to_dict()
    if json_out:
        emit_json(doc)
    else:
        _show(doc)


@app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1, max=1000)] = 50,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List releases, newest first."""
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        docs = [r.to_dict(assignments=False) for r in ReleaseService(ws).list_releases(limit=limit)]
    if json_out:
        emit_json(docs)
        return
    table(
        "releases",
        ["id", "requested", "status", "published", "skipped", "urgent", "created"],
        [[d[k] for k in ("id", "requested", "status", "published", "skipped", "urgent", "created_at")] for d in docs],
    )


@app.command("show")
def show_cmd(
    release_id: Annotated[str, typer.Argument(help="The release id.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A release with each device's assignment and its latest install report."""
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        doc = ReleaseService(ws).get_release(release_id).to_dict()
    if json_out:
        emit_json(doc)
    else:
        _show(doc)

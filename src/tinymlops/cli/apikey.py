"""``tinymlops apikey …``: admin API keys, on the workspace database (no server needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, table

app = typer.Typer(
    help="Admin API keys with scopes read, release, admin (admin ⊇ release ⊇ read).", no_args_is_help=True
)


def _key_dict(k) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "id": k.id,
        "name": k.name,
        "scope": k.scope.value,
        "created_by": k.created_by,
        "created_at": k.created_at.isoformat(),
        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "status": "active" if k.active else "revoked",
    }


@app.command("create")
def create(
    scope: Annotated[str, typer.Option(help="read, release or admin.")] = "read",
    name: Annotated[str, typer.Option(help="What the key is for (shown in listings).")] = "cli",
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API key and print it (this once: only its hash is stored)."""
    from tinymlops.access.scopes import Scope
    from tinymlops.access.service import ApiKeyService
    from tinymlops.workspace import Workspace

    parsed = Scope.parse(scope)
    with Workspace.open(workspace) as ws:
        record, secret = ApiKeyService(ws.engine).create(name, parsed, created_by="cli")
    if json_out:
        emit_json({**_key_dict(record), "key": secret})
        return
    console.print(f"API key [bold]{record.id}[/] ({record.name}, scope {record.scope}):", highlight=False)
    console.print(secret, highlight=False, soft_wrap=True)
    console.print("Store it now: it is not shown again. Send it as 'Authorization: Bearer <key>'.", highlight=False)


@app.command("list")
def list_keys(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List API keys (never the keys themselves)."""
    from tinymlops.access.service import ApiKeyService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        keys = [_key_dict(k) for k in ApiKeyService(ws.engine).list()]
    if json_out:
        emit_json(keys)
        return
    table(
        "API keys",
        ["id", "name", "scope", "status", "created", "last used"],
        [[k["id"], k["name"], k["scope"], k["status"], k["created_at"], k["last_used_at"] or "-"] for k in keys],
    )


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (16 hex digits).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Revoke an API key: it is refused from now on."""
    from tinymlops.access.service import ApiKeyService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        record = ApiKeyService(ws.engine).revoke(key_id)
    if json_out:
        emit_json(_key_dict(record))
    else:
        console.print(f"API key {record.id} ({record.name}) revoked", highlight=False)

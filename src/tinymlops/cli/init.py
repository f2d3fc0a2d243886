"""``tinymlops init DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tinymlops.cli.output import JsonOpt, console, emit_json
from tinymlops.workspace import Workspace


def init_workspace(
    directory: Annotated[Path, typer.Argument(help="Directory to create the workspace in.")],
    db_url: Annotated[
        str | None, typer.Option("--db-url", envvar="TINYMLOPS_DB_URL", help="SQLAlchemy URL of the metadata DB.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a workspace: tinymlops.toml, a metadata database and a content-addressed blob store."""
    ws = Workspace.init(directory, db_url=db_url)
    info = {"workspace": str(ws.root), "database": ws.engine.url.render_as_string(hide_password=True)}
    ws.close()
    if json_out:
        emit_json(info)
    else:
        console.print(f"Initialized workspace in [bold]{info['workspace']}[/] (database: {info['database']})")

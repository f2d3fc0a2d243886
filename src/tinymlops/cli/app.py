"""The ``tinymlops`` command: one typer app, one module per command group."""

from __future__ import annotations

import json
import sys

import typer

from tinymlops.cli import (
    agent,
    apikey,
    bundle,
    dataset,
    demo,
    device,
    drift,
    fleet,
    init,
    keys,
    license,
    model,
    recipe,
    release,
    repo,
    select,
    serve,
    target,
)
from tinymlops.cli.output import err_console
from tinymlops.errors import TinyMLOpsError

app = typer.Typer(
    name="tinymlops",
    help="Take a trained model to a fleet of heterogeneous edge devices and keep it healthy there.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts hold literal brackets: NAME[:VERSION][/VARIANT]
)
app.command("init")(init.init_workspace)
app.command("select")(select.select_cmd)
app.command("demo")(demo.demo_cmd)
app.command("serve")(serve.serve_cmd)
app.add_typer(model.app, name="model")
app.add_typer(dataset.app, name="dataset")
app.add_typer(target.app, name="target")
app.add_typer(recipe.app, name="recipe")
app.add_typer(keys.app, name="keys")
app.add_typer(bundle.app, name="bundle")
app.add_typer(repo.app, name="repo")
app.add_typer(apikey.app, name="apikey")
app.add_typer(device.app, name="device")
app.add_typer(release.app, name="release")
app.add_typer(agent.app, name="agent")
app.add_typer(fleet.app, name="fleet")
app.add_typer(drift.app, name="drift")
app.add_typer(license.app, name="license")


def main() -> None:
    """Entry point: every :class:`TinyMLOpsError` becomes a clear message and a non-zero exit."""
    try:
        app(standalone_mode=True)
    except TinyMLOpsError as exc:
        if "--json" in sys.argv:
            sys.stdout.write(json.dumps(exc.to_dict(), default=str) + "\n")
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(exc.exit_code)

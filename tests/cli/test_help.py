"""Every command's ``--help`` renders (help texts with brackets such as NAME[:VERSION] included)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from tinymlops.cli.app import app


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [prefix]
    for info in group.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        paths.append((*prefix, name))
    for sub in group.registered_groups:
        assert sub.typer_instance is not None and sub.name
        paths += _command_paths(sub.typer_instance, (*prefix, sub.name))
    return paths


def test_every_command_has_working_help() -> None:
    runner = CliRunner()
    paths = _command_paths(app)
    assert len(paths) > 20
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output, result.exception)
        assert "Usage:" in result.output, path

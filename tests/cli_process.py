"""Run the ``tinymlops`` command for CLI tests: as a user would (a subprocess), or in this process.

``run_cli``     ``python -m tinymlops ARGS`` in a subprocess: the installed entry point really works.
                Keep one such smoke test per command group; it costs a Python start and every import.
``invoke_cli``  the same entry point, :func:`tinymlops.cli.app.main`, called in this process under
                typer's ``CliRunner`` isolation (``sys.argv``, stdin/stdout/stderr and the environment
                swapped for the call): the same exit codes, the same stdout and stderr, a traceback on
                stderr and exit 1 for an uncaught exception — in milliseconds instead of seconds.

Both return a :class:`subprocess.CompletedProcess` (``returncode``, ``stdout``, ``stderr``) and
assert the exit code unless ``code`` is None.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from typer.testing import CliRunner

COLUMNS = "200"  # wide enough that no table or message a test looks for is wrapped


def _env(ws: Path | None) -> dict[str, str | None]:
    """``TINYMLOPS_WORKSPACE=ws`` (unset when ``ws`` is None) and a fixed terminal width."""
    return {"TINYMLOPS_WORKSPACE": None if ws is None else str(ws), "COLUMNS": COLUMNS}


def _check(proc: subprocess.CompletedProcess[str], code: int | None) -> subprocess.CompletedProcess[str]:
    if code is not None:
        assert proc.returncode == code, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc


def run_cli(ws: Path | None, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``python -m tinymlops ARGS`` with ``TINYMLOPS_WORKSPACE=ws`` (unset when ``ws`` is None);
    asserts the exit code unless ``code`` is None."""
    env = {k: v for k, v in os.environ.items() if k != "TINYMLOPS_WORKSPACE"}
    env.update({k: v for k, v in _env(ws).items() if v is not None})
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlops", *args], capture_output=True, text=True, env=env, timeout=300
    )
    return _check(proc, code)


@contextlib.contextmanager
def _plain_consoles() -> Iterator[None]:
    """The CLI's two rich consoles were made once, at import, in this process: whether they colour
    their output was decided then (a terminal under ``pytest -s``). For the call they print what a
    subprocess writing to a pipe prints — no escape codes, ``COLUMNS`` wide — as ``run_cli`` sees it."""
    from tinymlops.cli.output import console, err_console

    saved = [(c, c._color_system, c._width) for c in (console, err_console)]
    try:
        for c, _, _ in saved:
            c._color_system = None
            c._width = None  # then rich reads COLUMNS from the (isolated) environment on each print
        yield
    finally:
        for c, color_system, width in saved:
            c._color_system, c._width = color_system, width


def invoke_cli(ws: Path | None, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    """:func:`tinymlops.cli.app.main` with ``sys.argv = ["tinymlops", *args]`` in this process, under
    ``CliRunner`` isolation with ``TINYMLOPS_WORKSPACE=ws`` (unset when ``ws`` is None); asserts the exit
    code unless ``code`` is None."""
    from tinymlops.cli.app import main

    argv = ["tinymlops", *args]
    runner = CliRunner()
    returncode = 0
    with runner.isolation(env=_env(ws)) as (out, err, _), _plain_consoles():
        saved_argv, sys.argv = sys.argv, argv
        try:
            main()
        except SystemExit as exc:  # how click, typer and main() end a run
            returncode = _exit_status(exc.code)
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=sys.stderr)
            returncode = 1
        finally:
            sys.argv = saved_argv
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode("utf-8", "backslashreplace")
    return _check(subprocess.CompletedProcess(argv, returncode, stdout, stderr), code)


def _exit_status(code: object) -> int:
    """``sys.exit(code)`` as the process's exit status: None is 0, an int itself, anything else is
    printed to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1

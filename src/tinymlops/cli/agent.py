"""``tinymlops agent …``: the device agent against a control-plane server.

A thin typer front for :mod:`tinymlops.edge.agent.command` (what ``python -m tinymlops.edge.agent``
runs on a device without typer): the same options, the same JSON lines on stdout, the same exit
codes. All device-side logic stays in the edge closure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The device agent: enrol, follow the update repository, install A/B.", no_args_is_help=True)


@app.command("run")
def run_cmd(
    server: Annotated[str, typer.Option(help="Control-plane URL, e.g. http://127.0.0.1:8470.")],
    data_dir: Annotated[Path, typer.Option(help="The agent's data directory (keys, trust, slots, state).")],
    token: Annotated[str | None, typer.Option(help="One-time enrolment token (first run only).")] = None,
    profile: Annotated[str | None, typer.Option(help="Device profile to enrol with (first run only).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls (jittered).", min=0.01)] = 60.0,
    backoff_base: Annotated[float, typer.Option(help="First back-off after a failure, seconds.", min=0.01)] = 2.0,
    backoff_cap: Annotated[float, typer.Option(help="Longest back-off, seconds.", min=0.01)] = 600.0,
    context_file: Annotated[Path | None, typer.Option(help="DeviceContext JSON read before every poll.")] = None,
    telemetry_consent: Annotated[
        bool, typer.Option("--telemetry-consent/--no-telemetry-consent", help="The user agrees to upload telemetry.")
    ] = False,
    upload_any_network: Annotated[
        bool, typer.Option("--upload-any-network", help="Upload telemetry on cellular too (default: Wi-Fi only).")
    ] = False,
    upload_only_charging: Annotated[
        bool, typer.Option("--upload-only-charging", help="Upload telemetry only while charging.")
    ] = False,
    upload_max_bytes_per_day: Annotated[
        int | None, typer.Option(help="Most compressed telemetry bytes in any 24 hours.", min=1)
    ] = None,
    telemetry_interval: Annotated[
        float, typer.Option(help="Seconds between telemetry windows (0: every cycle).", min=0.0)
    ] = 60.0,
) -> None:
    """Enrol once (with --token and --profile), then poll the server's TUF repository, install what it
    publishes for this device into A/B slots, and report every install. One JSON line per event.
    Telemetry windows wait on the device and are uploaded only with --telemetry-consent, on Wi-Fi
    (unless --upload-any-network), while charging with --upload-only-charging, within
    --upload-max-bytes-per-day."""
    from tinymlops.edge.agent.command import main

    argv = ["run", "--server", server, "--data-dir", str(data_dir), "--poll-interval", str(interval)]
    argv += ["--backoff-base", str(backoff_base), "--backoff-cap", str(backoff_cap)]
    if token is not None:
        argv += ["--token", token]
    if profile is not None:
        argv += ["--profile", profile]
    if context_file is not None:
        argv += ["--context-file", str(context_file)]
    if once:
        argv.append("--once")
    argv.append("--telemetry-consent" if telemetry_consent else "--no-telemetry-consent")
    if upload_any_network:
        argv.append("--upload-any-network")
    if upload_only_charging:
        argv.append("--upload-only-charging")
    if upload_max_bytes_per_day is not None:
        argv += ["--upload-max-bytes-per-day", str(upload_max_bytes_per_day)]
    argv += ["--telemetry-interval", str(telemetry_interval)]
    code = main(argv)
    if code:
        raise typer.Exit(code)


@app.command("status")
def status_cmd(
    data_dir: Annotated[Path, typer.Option(help="The agent's data directory.")],
) -> None:
    """Print the agent's slot state and what it knows about its control plane (read-only, no network)."""
    from tinymlops.edge.agent.command import main

    code = main(["status", "--data-dir", str(data_dir)])
    if code:
        raise typer.Exit(code)

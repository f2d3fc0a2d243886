"""``tinymlops fleet …``: simulate a fleet of real agents against a running control plane.

``fleet simulate`` runs N real device agents (:mod:`tinymlops.fleet`) with the profile mix's
profiles and context scenarios, shows a live table per profile and prints the final one (or, with
``--json``, the whole result). ``fleet mix`` prints the default mix, or checks a mix file and shows
how N devices are spread over it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tinymlops.cli.output import JsonOpt, console, emit_json, err_console, table

if TYPE_CHECKING:
    from tinymlops.fleet.mix import Mix

app = typer.Typer(help="Simulated fleets: many real agents against a real control plane.", no_args_is_help=True)

ProfilesOpt = Annotated[
    Path | None,
    typer.Option(
        "--profiles",
        help="The profile mix (TOML: profile -> weight/count, tags, network and battery scenario). "
        "Default: the built-in mix over the catalog profiles (`tinymlops fleet mix` prints it).",
        show_default=False,
    ),
]


def _mix(path: Path | None) -> Mix:
    from tinymlops.fleet.mix import default_mix, load_mix

    return default_mix() if path is None else load_mix(path)


@app.command("simulate")
def simulate_cmd(
    devices: Annotated[int, typer.Option("--devices", "-n", help="How many devices.", min=1)],
    server: Annotated[str, typer.Option(help="Control-plane URL, e.g. http://127.0.0.1:8470.")],
    profiles: ProfilesOpt = None,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default: until Ctrl-C).", min=0.001, show_default=False)
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="TINYMLOPS_API_KEY",
            help="An admin-scope API key, to create the new devices' enrolment tokens (env TINYMLOPS_API_KEY).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the devices' data directories go (re-use it to re-use the devices). "
            "Default: a temporary directory, removed at the end unless --keep.",
            show_default=False,
        ),
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary data directory.")] = False,
    backend: Annotated[str, typer.Option(help="threads (one process) or ray (pip install 'tinymlops[fleet-ray]').")] = (
        "threads"
    ),
    seed: Annotated[int, typer.Option(help="Seed of every device's scenario and workload.")] = 0,
    poll_interval: Annotated[float, typer.Option(help="Seconds between each agent's polls.", min=0.01)] = 5.0,
    ramp: Annotated[
        float | None, typer.Option(help="Spread the devices' starts over this many seconds.", min=0.0)
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option(help="Ray actors to spread the devices over (default: one per CPU).", min=1)
    ] = None,
    ray_cpus: Annotated[int, typer.Option(help="CPUs of a local Ray instance.", min=1)] = 2,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run N real agents (own keys, enrolment, TUF updates, A/B installs, real predictions) with the
    mix's profiles and changing context; live table per profile, final table at the end."""
    from tinymlops.fleet.simulator import FleetSettings, FleetSimulator
    from tinymlops.fleet.summary import LiveSummary, final_view, result_json

    settings = FleetSettings(
        server_url=server,
        devices=devices,
        mix=_mix(profiles),
        api_key=api_key or None,
        data_dir=data_dir,
        keep=keep,
        backend=backend,
        seed=seed,
        poll_interval_s=poll_interval,
        ramp_s=ramp,
        ray_actors=ray_actors,
        ray_cpus=ray_cpus,
    )
    # the agents log every failed poll; the live table shows them, a log line would tear it
    logging.getLogger("tinymlops").addHandler(logging.NullHandler())
    with FleetSimulator(settings) as sim:
        sim.prepare()
        if not json_out:
            err_console.print(
                f"{devices} devices ({sim.enrolled_now} to enrol) on {backend} against {server}", highlight=False
            )
        live = LiveSummary(
            console,
            server_url=server,
            duration_s=duration,
            backend=backend,
            enabled=console.is_terminal and not json_out,
        )
        with live:
            result = sim.run(duration_s=duration, on_snapshot=live.update)
    if out is not None:
        out.write_text(result_json(result) + "\n", encoding="utf-8")
    if json_out:
        emit_json(result.to_dict())
    else:
        console.print(final_view(result))
    broken = [d for d in result.devices if d["state"] in ("failed", "crashed", "stuck")]
    if broken:  # the result is printed (stdout stays one JSON document); the exit code says it
        first = broken[0]
        err_console.print(
            f"[bold red]error:[/] {len(broken)} of {len(result.devices)} simulated devices could not run; "
            f"{first['name']} ({first['profile']}): {first['last_error']}",
            highlight=False,
        )
        raise typer.Exit(4)


@app.command("mix")
def mix_cmd(
    file: Annotated[Path | None, typer.Argument(help="A mix file to check (default: print the built-in mix).")] = None,
    devices: Annotated[
        int | None, typer.Option("--devices", "-n", help="Show how N devices are spread.", min=1)
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the built-in profile mix (a starting point for --profiles), or check a mix file and show
    how --devices N are spread over its entries."""
    from tinymlops.fleet.mix import DEFAULT_MIX_TOML

    if file is None and devices is None:
        if json_out:
            emit_json(_mix(None).to_dict())
        else:
            typer.echo(DEFAULT_MIX_TOML, nl=False)
        return
    mix = _mix(file)
    counts = mix.counts(devices) if devices is not None else {}
    if json_out:
        emit_json({**mix.to_dict(), "counts": counts})
        return
    rows = []
    for e in mix.entries:
        d = e.to_dict()
        net = ", ".join(f"{k} {d['network'][k]:g}" for k in ("wifi", "cellular", "offline") if k in d["network"])
        battery = "mains" if e.scenario.battery is None else "battery"
        share = str(e.count) if e.count is not None else f"weight {e.weight:g}"
        rows.append(
            [e.name, e.profile, share, counts.get(e.name, "-"), f"{e.rate:g}/s", net, battery, ",".join(e.tags)]
        )
    table(mix.source, ["entry", "profile", "share", "devices", "rate", "network", "power", "tags"], rows)


__all__ = ["app"]

"""``python -m tinymlops.edge.agent``: run the agent against a control-plane server or a local directory.

    python -m tinymlops.edge.agent run --data-dir D --server URL [--token T --profile P]
                                       [--once] [--poll-interval S] ...
    python -m tinymlops.edge.agent run --data-dir D --source DIR [--trusted-key FILE ...]
                                       [--device-keys DIR] [--once] [--poll-interval S] ...
    python -m tinymlops.edge.agent status --data-dir D

``run --server`` connects to the control plane (:func:`tinymlops.edge.agent.remote.connect`:
enrols once with ``--token``/``--profile``, bootstraps the TUF root and release keys once), then
follows its update repository and reports every install to it. Without ``--once``, a server that
cannot be reached for the first enrolment is retried with back-off until it answers.
``run --source`` polls ``DIR`` (``offer.json`` + bundle files, see
:mod:`tinymlops.edge.agent.source`) instead. Either runs until SIGTERM/SIGINT (or one cycle with
``--once``); each event (recovery, install results, cycles) is one JSON line on stdout. The device
keys default to ``D/keys`` and the trusted release keys to ``D/trusted/*.pub``.

Telemetry (``run --server``): the active bundle's telemetry windows wait in
``D/telemetry/upload.sqlite3`` and are uploaded as the upload policy allows —
``--telemetry-consent`` (default: no consent, nothing leaves the device), ``--upload-any-network``
(default: Wi-Fi only), ``--upload-only-charging``, ``--upload-max-bytes-per-day N``; windows close
every ``--telemetry-interval`` seconds. Energy is measured with RAPL where it is readable, else
estimated from CPU time × the enrolled profile's active power. On exit the last window goes into
the store and one more upload is tried.

``status`` prints the state file as it is and what the directory knows about its control plane
(no recovery, nothing written, no network).

Argument parsing is the standard library's: this module is in the edge closure (no typer).
Errors print one JSON object on stderr and exit 2 (usage), 3 (bad data) or 4 (operation failed).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinymlops.errors import TinyMLOpsError, UsageError

KEYS_DIR = "keys"
TRUSTED_DIR = "trusted"
ENROLMENT_FILE = "enrolment.json"


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinymlops.edge.agent", description="The tinymlops device agent.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="recover, then follow a control plane (or a local directory) and install")
    run.add_argument("--data-dir", required=True, type=Path, help="the agent's data directory (slots, state)")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="control-plane URL, e.g. http://127.0.0.1:8470")
    where.add_argument("--source", type=Path, help="directory holding offer.json and bundles")
    run.add_argument("--token", help="one-time enrolment token (first run with --server only)")
    run.add_argument("--profile", help="device profile name to enrol with (first run with --server only)")
    run.add_argument("--device-keys", type=Path, help="device key directory (default DATA_DIR/keys)")
    run.add_argument(
        "--trusted-key", action="append", type=Path, default=[], help="trusted release public key file (repeatable)"
    )
    run.add_argument("--once", action="store_true", help="run one cycle and exit")
    run.add_argument("--poll-interval", type=float, default=60.0)
    run.add_argument("--backoff-base", type=float, default=2.0)
    run.add_argument("--backoff-cap", type=float, default=600.0)
    run.add_argument("--large-bundle-bytes", type=int, default=None)
    run.add_argument("--health-threshold", type=int, default=3)
    run.add_argument("--context-file", type=Path, help="DeviceContext JSON read before every poll")
    run.add_argument("--chunk-bytes", type=int, default=64 * 1024, help="I/O chunk size (download, slot copy)")
    run.add_argument("--allow-no-check-vector", action="store_true", help="accept bundles without a smoke test")
    consent = run.add_mutually_exclusive_group()
    consent.add_argument(
        "--telemetry-consent", dest="telemetry_consent", action="store_true", help="the user agrees to upload telemetry"
    )
    consent.add_argument("--no-telemetry-consent", dest="telemetry_consent", action="store_false")
    run.set_defaults(telemetry_consent=False)
    run.add_argument("--upload-any-network", action="store_true", help="upload telemetry on cellular too")
    run.add_argument("--upload-only-charging", action="store_true", help="upload telemetry only while charging")
    run.add_argument("--upload-max-bytes-per-day", type=int, default=None, help="cap on compressed bytes per 24 h")
    run.add_argument("--telemetry-interval", type=float, default=60.0, help="seconds between telemetry windows")
    status = sub.add_parser("status", help="print the state file (read-only)")
    status.add_argument("--data-dir", required=True, type=Path)
    return p


def _trusted_keys(args: argparse.Namespace) -> list[bytes]:
    from tinymlops.crypto.keys import load_public_key

    files = list(args.trusted_key)
    if not files:
        files = sorted((args.data_dir / TRUSTED_DIR).glob("*.pub"))
    if not files:
        raise UsageError(
            f"no trusted release keys: pass --trusted-key FILE or put *.pub files in {args.data_dir / TRUSTED_DIR}"
        )
    return [load_public_key(f) for f in files]


def _connect(args: argparse.Namespace, stop: threading.Event, upload_policy: Any = None) -> Any:
    """Connect to the control plane; without ``--once``, retry an unreachable server with back-off."""
    import random

    from tinymlops.edge.agent.backoff import Backoff
    from tinymlops.edge.agent.remote import connect
    from tinymlops.errors import ServerRequestError, ServerUnreachableError

    backoff = Backoff(base=args.backoff_base, cap=args.backoff_cap, rng=random.Random())
    while True:
        try:
            return connect(
                args.server,
                args.data_dir,
                enrolment_token=args.token,
                profile=args.profile,
                keys_dir=args.device_keys,
                upload_policy=upload_policy,
            )
        except ServerRequestError as exc:
            # unreachable, or the server failed (5xx): wait and retry; a refusal (4xx) is final
            if args.once or not (isinstance(exc, ServerUnreachableError) or exc.status >= 500):
                raise
            delay = backoff.failure()
            _emit({"event": "connect", "error": f"{type(exc).__name__}: {exc.message}", "delay": round(delay, 3)})
            if stop.wait(delay):
                return None  # asked to stop before the server answered


def _run(args: argparse.Namespace) -> int:
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.edge.agent.context import FileContext
    from tinymlops.edge.agent.loop import Agent, AgentConfig
    from tinymlops.edge.agent.policy import DEFAULT_LARGE_BUNDLE_BYTES
    from tinymlops.edge.agent.source import LocalDirectorySource

    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def emit_result(result: Any) -> None:
        _emit(result.to_dict())

    reporter: Any = emit_result
    health_reporter: Any = None
    telemetry: dict[str, Any] = {}
    if args.server is not None:
        connection = _connect(args, stop, _upload_policy(args))
        if connection is None:
            return 0
        keys = connection.keys
        source: Any = connection.source
        trusted = _trusted_keys(args)

        def reporter(result: Any) -> None:
            emit_result(result)
            connection.reporter(result)

        health_reporter = connection.health_reporter
        if connection.telemetry is not None:
            telemetry = {
                "telemetry_store": connection.telemetry.store,
                "telemetry_uploader": connection.telemetry,
                "energy_meter": _meter(connection.enrolment.profile_name),
            }

        _emit({"event": "connected", "server": connection.server_url, "device_id": connection.device_id})
    else:
        if args.token or args.profile:
            raise UsageError("--token and --profile enrol with a control plane: use them with --server")
        keys = DeviceKeys.load(args.device_keys or args.data_dir / KEYS_DIR)
        source = LocalDirectorySource(args.source, chunk=args.chunk_bytes)
        trusted = _trusted_keys(args)
    config = AgentConfig(
        poll_interval=args.poll_interval,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        large_bundle_bytes=DEFAULT_LARGE_BUNDLE_BYTES if args.large_bundle_bytes is None else args.large_bundle_bytes,
        health_threshold=args.health_threshold,
        require_check_vector=not args.allow_no_check_vector,
        copy_chunk_bytes=args.chunk_bytes,
        telemetry_interval=args.telemetry_interval,
    )
    agent = Agent(
        args.data_dir,
        source,
        keys,
        trusted,
        config=config,
        context=FileContext(args.context_file) if args.context_file else None,
        reporter=reporter,
        health_reporter=health_reporter,
        **telemetry,
    )
    with agent:
        _emit(agent.start().to_dict())
        if args.once:
            cycle = agent.run_once()
            _emit(cycle.to_dict())
            return 0
        agent.run_forever(stop)
        if health_reporter is not None:
            agent.flush_health()  # the last window goes out (or to the on-disk queue) before exit
        if telemetry:
            outcome = agent.flush_telemetry()  # the last window goes into the store, and out if allowed
            if outcome is not None:
                _emit(outcome.to_dict())
    return 0


def _upload_policy(args: argparse.Namespace) -> Any:
    from tinymlops.observe.upload_policy import UploadPolicy

    return UploadPolicy(
        consent=args.telemetry_consent,
        wifi_only=not args.upload_any_network,
        only_charging=args.upload_only_charging,
        max_bytes_per_day=args.upload_max_bytes_per_day,
    )


def _meter(profile_name: str) -> Any:
    """RAPL where readable, else CPU time × the enrolled profile's active power (None: neither)."""
    from tinymlops.edge.runtime import default_meter
    from tinymlops.observe.energy import best_meter
    from tinymlops.targets.catalog import builtin_profiles

    profile = builtin_profiles().get(profile_name)
    if profile is None or profile.active_power_w is None:
        return default_meter()
    return best_meter(profile)


def _status(args: argparse.Namespace) -> int:
    from tinymlops.edge.agent.store import SlotStore

    store = SlotStore(args.data_dir)
    if not store.state_path.exists():
        raise UsageError(f"{args.data_dir}: no agent state here (the agent has not run on this data directory)")
    state = store.read_state()
    doc: dict[str, Any] = {"event": "status", **state.to_dict()}
    if (args.data_dir / ENROLMENT_FILE).exists():
        from tinymlops.edge.agent.remote import describe

        doc["control_plane"] = describe(args.data_dir)
    _emit(doc)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args) if args.command == "run" else _status(args)
    except TinyMLOpsError as exc:
        sys.stderr.write(json.dumps(exc.to_dict(), default=str) + "\n")
        return exc.exit_code


__all__ = ["main"]

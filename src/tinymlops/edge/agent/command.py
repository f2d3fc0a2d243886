"""``python -m tinymlops.edge.agent``: run the agent against a local directory source.

    python -m tinymlops.edge.agent run --data-dir D --source DIR [--trusted-key FILE ...]
                                       [--device-keys DIR] [--once] [--poll-interval S] ...
    python -m tinymlops.edge.agent status --data-dir D

``run`` recovers the data directory, then polls ``DIR`` (``offer.json`` + bundle files, see
:mod:`tinymlops.edge.agent.source`) until SIGTERM/SIGINT (or one cycle with ``--once``). Each event
(recovery, install results, cycles) is one JSON line on stdout. The device keys default to
``D/keys`` and the trusted release keys to ``D/trusted/*.pub``.

``status`` prints the state file as it is (no recovery, nothing written).

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


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinymlops.edge.agent", description="The tinymlops device agent.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="recover, then poll a local update directory and install what it offers")
    run.add_argument("--data-dir", required=True, type=Path, help="the agent's data directory (slots, state)")
    run.add_argument("--source", required=True, type=Path, help="directory holding offer.json and bundles")
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


def _run(args: argparse.Namespace) -> int:
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.edge.agent.context import FileContext
    from tinymlops.edge.agent.loop import Agent, AgentConfig
    from tinymlops.edge.agent.policy import DEFAULT_LARGE_BUNDLE_BYTES
    from tinymlops.edge.agent.source import LocalDirectorySource

    keys = DeviceKeys.load(args.device_keys or args.data_dir / KEYS_DIR)
    config = AgentConfig(
        poll_interval=args.poll_interval,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        large_bundle_bytes=DEFAULT_LARGE_BUNDLE_BYTES if args.large_bundle_bytes is None else args.large_bundle_bytes,
        health_threshold=args.health_threshold,
        require_check_vector=not args.allow_no_check_vector,
        copy_chunk_bytes=args.chunk_bytes,
    )
    agent = Agent(
        args.data_dir,
        LocalDirectorySource(args.source, chunk=args.chunk_bytes),
        keys,
        _trusted_keys(args),
        config=config,
        context=FileContext(args.context_file) if args.context_file else None,
        reporter=lambda result: _emit(result.to_dict()),
    )
    with agent:
        _emit(agent.start().to_dict())
        if args.once:
            cycle = agent.run_once()
            _emit(cycle.to_dict())
            return 0
        stop = threading.Event()

        def _stop(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

        agent.run_forever(stop)
    return 0


def _status(args: argparse.Namespace) -> int:
    from tinymlops.edge.agent.store import SlotStore

    store = SlotStore(args.data_dir)
    if not store.state_path.exists():
        raise UsageError(f"{args.data_dir}: no agent state here (the agent has not run on this data directory)")
    state = store.read_state()
    _emit({"event": "status", **state.to_dict()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args) if args.command == "run" else _status(args)
    except TinyMLOpsError as exc:
        sys.stderr.write(json.dumps(exc.to_dict(), default=str) + "\n")
        return exc.exit_code


__all__ = ["main"]

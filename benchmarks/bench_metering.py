"""Metering (issue 7, device half): what the usage ledger adds to a prediction, and its throughput.

Overhead: the same tiny ONNX model (4 → 2 MatMul, ONNX Runtime, one thread) called through
``compose([], endpoint)`` and through ``compose([meter.middleware()], endpoint)`` — the metering
policy as the runtime builds it, with a real SQLite ledger (WAL, ``synchronous=FULL``) and the file
monotonic counter, i.e. with the crash-safety guarantee intact: every block of calls is durable
(fsync) before its first call runs. Calls are interleaved one by one (bare and metered in a shuffled
order each round, ``_common.interleaved_calls``), each timed with ``perf_counter``, garbage collector
paused; the added cost is
the median of the metered calls minus the median of the bare ones, and the median of the paired
differences. p99 includes the calls that wrote a reservation (one in ``block``); the mean added
cost spreads that write over the block (the price of the guarantee: larger blocks, cheaper calls,
more calls lost to a crash).

Throughput: reservations/s (``block=1``: every call writes and fsyncs an entry and moves the
counter; with and without the counter) and authorizations/s inside a block (in memory, locked).
"""

from __future__ import annotations

import gc
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import goal, goals_table, interleaved_calls, tiny_onnx
from rich.table import Table

NAME = "metering"
TITLE = "Metering: per-prediction overhead of the usage ledger, and ledger throughput"
GOAL_ADDED_US = 20.0
GOAL_BLOCK = 64
BLOCKS = (16, 64, 256)


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"calls": 3000, "reservations": 100, "authorizations": 50_000}
    return {"calls": 30_000, "reservations": 1000, "authorizations": 500_000}


def _tiny_session() -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(tiny_onnx(), opts, providers=["CPUExecutionProvider"])


def _world(queries: int) -> tuple[Any, Any, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.crypto.keys import key_id, public_bytes
    from tinymlops.metering import sign_license
    from tinymlops.spec.license import License

    issuer, device = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    now = int(time.time())
    lic = License(
        license_id=secrets.token_hex(16),
        device_id=key_id(device),
        device_public_key=public_bytes(device).hex(),
        model="tiny",
        queries=queries,
        valid_from=now - 60,
        valid_until=now + 86400,
        issued_at=now,
        issuer_key_id=key_id(issuer),
    )
    return issuer, device, sign_license(lic, issuer)


def _open(directory: Path, name: str, block: int, queries: int, counter: bool = True) -> Any:
    from tinymlops.metering import Meter

    issuer, device, signed = _world(queries)
    meter = Meter.open(
        directory / f"{name}.sqlite3",
        "tiny",
        device_key=device,
        trusted_issuer_keys=[issuer],
        block=block,
        counter=counter,
    )
    meter.install(signed)
    return meter


def _overhead(directory: Path, block: int, calls: int) -> dict[str, Any]:
    from tinymlops.edge.middleware import Request, Response, compose

    sess = _tiny_session()
    x = np.ones((1, 4), np.float32)

    def endpoint(request: Request) -> Response:
        return Response(outputs={"y": sess.run(None, {"x": request.inputs})[0]})

    meter = _open(directory, f"overhead-{block}", block, calls + 10_000)
    bare = compose([], endpoint)
    metered = compose([meter.middleware()], endpoint)
    times = interleaved_calls({"bare": bare, "metered": metered}, [Request(x) for _ in range(500)], calls)
    tb, tm = times["bare"], times["metered"]
    meter.close()
    us = 1e6
    return {
        "block": block,
        "calls": calls,
        "bare_p50_us": float(np.median(tb) * us),
        "metered_p50_us": float(np.median(tm) * us),
        "added_p50_us": float((np.median(tm) - np.median(tb)) * us),
        "paired_diff_p50_us": float(np.median(tm - tb) * us),
        # the mean carries the reservations (one fsynced write per block) spread over the block's calls
        "added_mean_us": float((tm.mean() - tb.mean()) * us),
        "bare_p99_us": float(np.percentile(tb, 99) * us),
        "metered_p99_us": float(np.percentile(tm, 99) * us),
        "metered_max_us": float(tm.max() * us),
    }


def _throughput(directory: Path, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for counter in (True, False):
        n = s["reservations"]
        meter = _open(directory, f"reserve-{counter}", 1, n + 10, counter=counter)
        t0 = time.perf_counter()
        for _ in range(n):
            meter.authorize()  # block=1: every call writes a reservation
        dt = time.perf_counter() - t0
        meter.close()
        out["reservations_per_s_counter" if counter else "reservations_per_s_no_counter"] = n / dt
    n = s["authorizations"]
    meter = _open(directory, "authorize", 1 << 20, n + 10)
    meter.authorize()  # the one reservation, outside the timing
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        meter.authorize()
    out["authorizations_per_s"] = n / (time.perf_counter() - t0)
    meter.close()
    return out


def run(quick: bool) -> dict[str, Any]:
    s = _settings(quick)
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-metering-") as tmp:
        directory = Path(tmp)
        overhead = [_overhead(directory, block, s["calls"]) for block in BLOCKS]
        throughput = _throughput(directory, s)
    at_goal = next(o for o in overhead if o["block"] == GOAL_BLOCK)
    goals = [
        goal(
            f"metering adds under {GOAL_ADDED_US:.0f} µs (median) at block {GOAL_BLOCK}, crash-safe",
            at_goal["added_p50_us"] < GOAL_ADDED_US,
            f"{at_goal['added_p50_us']:.2f} µs added (median), paired {at_goal['paired_diff_p50_us']:.2f} µs; "
            f"mean {at_goal['added_mean_us']:.1f} µs with the block's fsynced reservation amortized",
            "tiny ONNX model bare vs through the metering middleware, interleaved one by one, GC paused; "
            "SQLite WAL synchronous=FULL + file monotonic counter, reservation fsynced before its calls",
        )
    ]
    return {"settings": s, "overhead": overhead, "throughput": throughput, "goals": goals}


def render(result: dict[str, Any]) -> list[Table]:
    t = Table(title="Per prediction (µs): bare vs metered, interleaved", title_justify="left")
    cols = (
        "block",
        "bare p50",
        "metered p50",
        "added p50",
        "paired diff p50",
        "added mean (amortized writes)",
        "bare p99",
        "metered p99",
        "max",
    )
    for c in cols:
        t.add_column(c, justify="right")
    for o in result["overhead"]:
        t.add_row(
            str(o["block"]),
            f"{o['bare_p50_us']:.1f}",
            f"{o['metered_p50_us']:.1f}",
            f"{o['added_p50_us']:.2f}",
            f"{o['paired_diff_p50_us']:.2f}",
            f"{o['added_mean_us']:.2f}",
            f"{o['bare_p99_us']:.1f}",
            f"{o['metered_p99_us']:.1f}",
            f"{o['metered_max_us']:.0f}",
        )
    th = result["throughput"]
    u = Table(title="Ledger throughput", title_justify="left")
    u.add_column("operation")
    u.add_column("per second", justify="right")
    u.add_row("reservations (fsynced entry + file counter)", f"{th['reservations_per_s_counter']:.0f}")
    u.add_row("reservations (fsynced entry, no counter)", f"{th['reservations_per_s_no_counter']:.0f}")
    u.add_row("authorizations inside a block", f"{th['authorizations_per_s']:.0f}")
    return [t, u, goals_table(result)]

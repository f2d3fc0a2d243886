"""The TUF update repository at fleet scale: what a device downloads, and how fast publishing is.

For each fleet size and hash-bin count a real :class:`UpdateRepository` is created and every
device gets its own target (``devices/<id>/bundle.tmlb``, realistic custom info) in one edit.
Then: the size of each metadata file; the bytes a real ``UpdateClient`` (python-tuf's
``ngclient``) downloads for its first check and for an update of its own bundle (counted by a
fetcher that serves the repository's files through ``UpdateRepository.resolve``, so no network
time is included); the same for a flat layout (every target in one top-level targets file,
measured by signing such a file); the time to publish one more bundle and to refresh the
timestamp; and a device's check latency (verification included, network excluded).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import fmt_bytes, fmt_ms, goal, goals_table, stats_ms, time_calls
from rich.table import Table

NAME = "update_repo"
TITLE = "TUF update repository: bytes per device and publish time at fleet scale"
GOAL_FLEET = 10_000
GOAL_BITS = 8
GOAL_RATIO = 0.05
GOAL_PUBLISH_MS = 250.0
GOAL_CHECK_MS = 100.0


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"cases": [(1_000, 4), (2_000, 4), (2_000, GOAL_BITS)], "runs": 5}
    return {"cases": [(1_000, 4), (1_000, GOAL_BITS), (GOAL_FLEET, GOAL_BITS), (GOAL_FLEET, 10)], "runs": 15}


def _info(i: int, payload: bytes) -> Any:
    from tinymlops.spec.update import UpdateInfo

    return UpdateInfo(
        bundle_id=hashlib.sha256(payload).hexdigest()[:32],
        model="kws",
        version=3,
        variant="int8-static",
        ref="kws:3/int8-static",
        target="rpi-4",
        size=len(payload),
        urgent=i % 10 == 0,
        release_id="rollout-2030-01-stage-2",
        published_at=datetime(2030, 1, 1, tzinfo=UTC).isoformat(),
    )


def _device_id(i: int) -> str:
    return hashlib.sha256(f"device {i}".encode()).hexdigest()[:16]


class _CountingFetcher:
    """A python-tuf fetcher serving the repository's files in-process, counting bytes by URL."""

    def __new__(cls, repo: Any) -> Any:
        from tuf.ngclient import FetcherInterface

        class Fetcher(FetcherInterface):
            def __init__(self) -> None:
                self.log: list[tuple[str, int]] = []

            def _fetch(self, url: str) -> Iterator[bytes]:
                from tuf.api.exceptions import DownloadHTTPError

                from tinymlops.errors import NotFoundError

                rel = url.split("://", 1)[1].split("/", 1)[1]
                try:
                    data = repo.resolve(rel).read_bytes()
                except NotFoundError:
                    raise DownloadHTTPError("not found", 404) from None
                self.log.append((rel, len(data)))
                return iter([data])

        return Fetcher()


def _flat_targets_bytes(repo: Any, fleet: int, payload: bytes) -> int:
    """Size of one top-level targets file listing every device's target (the layout bins replace)."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, TargetFile, Targets

    from tinymlops.crypto.keys import generate_signing_key
    from tinymlops.spec.update import device_target_path

    md = Metadata(Targets(expires=datetime.now(UTC) + timedelta(days=90)))
    for i in range(fleet):
        path = device_target_path(_device_id(i))
        t = TargetFile.from_data(path, payload)
        t.unrecognized_fields["custom"] = _info(i, payload).to_dict()
        md.signed.targets[path] = t
    md.sign(CryptoSigner(generate_signing_key()))
    return len(md.to_bytes())


def _case(fleet: int, bits: int, runs: int) -> dict[str, Any]:
    from tinymlops.edge.updates import UpdateClient
    from tinymlops.release import UpdateRepository
    from tinymlops.spec.update import device_target_path

    payload = b"\x00" * 64  # content does not matter here; only the metadata is measured
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-tuf-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        repo = UpdateRepository.init(root / "ws", bin_bits=bits)
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with repo.edit() as edit:
            for i in range(fleet):
                edit.put(device_target_path(_device_id(i)), payload, _info(i, payload))
        bulk_s = time.perf_counter() - t0

        md = repo.metadata_dir
        ts = (md / "timestamp.json").stat().st_size
        snap_size = max(md.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0])).stat().st_size
        targets_size = max(md.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0])).stat().st_size
        status = repo.status()
        bins = [p.stat().st_size for p in md.glob("*.bins-*.json") if int(p.name.split(".")[0]) == 2]

        # a device: first check (enrolled with the root, so root.json is not counted) and its own update
        me = device_target_path(_device_id(7))
        UpdateClient.enrol(root / "device", repo.root_bytes())
        fetcher = _CountingFetcher(repo)
        client = UpdateClient(root / "device", "http://repo.invalid", fetcher=fetcher)
        assert client.check(me) is not None
        first = sum(n for _, n in fetcher.log)
        fetcher.log.clear()
        new_payload = b"\x01" * 64
        with repo.edit() as edit:
            edit.put(me, new_payload, _info(7, new_payload))
        assert client.check(me) is not None
        update = sum(n for _, n in fetcher.log)
        update_files = [rel for rel, _ in fetcher.log]

        # timings: publish one more bundle; refresh; a device's check with nothing new
        counter = iter(range(10**9))

        def publish_one() -> None:
            i = fleet + next(counter)
            with repo.edit() as edit:
                edit.put(device_target_path(_device_id(i)), payload, _info(i, payload))

        publish = stats_ms(time_calls(publish_one, runs))
        refresh = stats_ms(time_calls(repo.refresh, runs))
        check = stats_ms(time_calls(lambda: client.check(me), runs))
        flat = _flat_targets_bytes(repo, fleet, payload)
    return {
        "fleet": fleet,
        "bits": bits,
        "bins": 2**bits,
        "init_s": init_s,
        "bulk_publish_s": bulk_s,
        "sizes": {
            "timestamp": ts,
            "snapshot": snap_size,
            "targets": targets_size,
            "bin_mean": sum(bins) / len(bins),
            "bin_max": max(bins),
            "flat_targets": flat,
        },
        "targets_listed": status.targets,
        "device_first_check_bytes": first,
        "device_update_bytes": update,
        "device_update_files": update_files,
        "flat_first_check_bytes": ts + flat,  # timestamp + (tiny) snapshot + the whole listing
        "publish_one": publish,
        "refresh": refresh,
        "device_check": check,
    }


def run(quick: bool) -> dict[str, Any]:
    cfg = _settings(quick)
    cases = [_case(fleet, bits, cfg["runs"]) for fleet, bits in cfg["cases"]]
    goals = []
    big = max(fleet for fleet, _ in cfg["cases"])
    bits = GOAL_BITS
    c = next(x for x in cases if x["fleet"] == big and x["bits"] == bits)
    ratio = c["device_update_bytes"] / c["sizes"]["flat_targets"]
    goals.append(
        goal(
            f"a device's update downloads ≤ {GOAL_RATIO:.0%} of a flat targets file ({big:,} devices, {2**bits} bins)",
            ratio <= GOAL_RATIO,
            f"{fmt_bytes(c['device_update_bytes'])} vs {fmt_bytes(c['sizes']['flat_targets'])} ({ratio:.2%})",
            "bytes python-tuf's ngclient fetched (timestamp, snapshot, its bin) after its own bundle changed, "
            "counted by an in-process fetcher; flat = one signed targets file listing every device's target",
        )
    )
    goals.append(
        goal(
            f"publishing one bundle into a {big:,}-device repository under {GOAL_PUBLISH_MS:.0f} ms",
            c["publish_one"]["p50_ms"] < GOAL_PUBLISH_MS,
            f"median {c['publish_one']['p50_ms']:.1f} ms, p95 {c['publish_one']['p95_ms']:.1f} ms",
            "wall time of one RepositoryEdit (target file, bin, snapshot, timestamp written and fsynced)",
        )
    )
    goals.append(
        goal(
            f"a device's check under {GOAL_CHECK_MS:.0f} ms ({big:,} devices, network excluded)",
            c["device_check"]["p50_ms"] < GOAL_CHECK_MS,
            f"median {c['device_check']['p50_ms']:.1f} ms",
            "UpdateClient.check with nothing new: root probe, timestamp fetched and verified, cached snapshot, "
            "targets and bin re-verified from disk",
        )
    )
    return {
        "settings": cfg,
        "method": (
            "Real UpdateRepository per case (Ed25519 keys, consistent snapshots, succinct hash bins); every device "
            "target added in one edit with realistic custom info; sizes of the files as written; device bytes "
            "counted by a python-tuf FetcherInterface serving UpdateRepository.resolve() in-process; timings: "
            "1 warm-up then N timed calls, garbage collector on."
        ),
        "cases": cases,
        "goals": goals,
        "headline": {
            f"{x['fleet']}x{x['bins']}": {
                "update_bytes": x["device_update_bytes"],
                "flat_bytes": x["sizes"]["flat_targets"],
                "publish_ms": round(x["publish_one"]["p50_ms"], 1),
            }
            for x in cases
        },
    }


def render(result: dict[str, Any]) -> list[Table]:
    t = Table(title="Metadata sizes and what one device downloads", title_justify="left")
    for col in (
        "devices",
        "bins",
        "timestamp",
        "snapshot",
        "targets",
        "bin (mean/max)",
        "first check",
        "own update",
        "flat targets file",
    ):
        t.add_column(col, justify="right")
    for c in result["cases"]:
        s = c["sizes"]
        t.add_row(
            f"{c['fleet']:,}",
            str(c["bins"]),
            fmt_bytes(s["timestamp"]),
            fmt_bytes(s["snapshot"]),
            fmt_bytes(s["targets"]),
            f"{fmt_bytes(int(s['bin_mean']))} / {fmt_bytes(s['bin_max'])}",
            fmt_bytes(c["device_first_check_bytes"]),
            fmt_bytes(c["device_update_bytes"]),
            fmt_bytes(s["flat_targets"]),
        )
    w = Table(title="Timings (median / p95 ms)", title_justify="left")
    for col in ("devices", "bins", "init (s)", "bulk publish (s)", "publish one", "refresh", "device check"):
        w.add_column(col, justify="right")
    for c in result["cases"]:
        w.add_row(
            f"{c['fleet']:,}",
            str(c["bins"]),
            f"{c['init_s']:.2f}",
            f"{c['bulk_publish_s']:.2f}",
            f"{fmt_ms(c['publish_one']['p50_ms'], 1)} / {fmt_ms(c['publish_one']['p95_ms'], 1)}",
            f"{fmt_ms(c['refresh']['p50_ms'], 1)} / {fmt_ms(c['refresh']['p95_ms'], 1)}",
            f"{fmt_ms(c['device_check']['p50_ms'], 1)} / {fmt_ms(c['device_check']['p95_ms'], 1)}",
        )
    return [t, w, goals_table(result)]

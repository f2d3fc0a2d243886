"""Rollback attacks on the update repository: older metadata served after newer was seen.

Every case runs against a real repository served over HTTP on 127.0.0.1; the device is refused
with ``attack == "rollback"``, gets no offer, keeps its trusted metadata byte for byte, and
follows the honest repository again afterwards.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.metadata import Metadata, Snapshot, Timestamp

from simulators.tuf_server import Attacker, assert_refused, put, world
from tinymlops.spec.update import device_target_path

PATH = device_target_path("dev-a")


def _honest_update_works(w, client, data: bytes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w.server.reset()
    put(w.repo, PATH, data)
    offer = client.check(PATH)
    assert offer is not None and client.download(offer, tmp_path / "after").read_bytes() == data


def test_an_older_release_replayed_by_a_mirror_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"release one: vulnerable")
        old_release = w.server.capture()  # a mirror keeps this copy
        put(w.repo, PATH, b"release two: the fix")
        client = w.client()
        offer = client.check(PATH)
        assert offer is not None and client.download(offer, tmp_path / "slot").read_bytes() == b"release two: the fix"

        w.server.freeze(old_release)  # every file exactly as the repository served it back then
        err = assert_refused(client, PATH, "rollback")
        assert err.member == "timestamp.json" and "older than metadata this device already trusts" in err.message
        _honest_update_works(w, client, b"release three", tmp_path)


def test_a_fresh_timestamp_naming_an_older_snapshot_is_refused(tmp_path: Path) -> None:
    """Even with the (online) timestamp key stolen, the snapshot cannot be rolled back."""
    with world(tmp_path) as w:
        attacker = Attacker(w.repo)
        put(w.repo, PATH, b"one")
        old_name, old_snapshot = attacker.current("snapshot")
        old_bytes = (w.repo.metadata_dir / old_name).read_bytes()
        put(w.repo, PATH, b"two")
        client = w.client()
        assert client.check(PATH) is not None

        _, ts = attacker.current("timestamp")
        forged = Metadata(
            Timestamp(
                version=ts.signed.version + 1,
                expires=datetime.now(UTC) + timedelta(days=1),
                snapshot_meta=attacker.snapshot_meta(old_snapshot.signed.version, old_bytes),
            )
        )
        w.server.serve("metadata/timestamp.json", attacker.sign(forged, attacker.steal("timestamp")))
        err = assert_refused(client, PATH, "rollback")
        assert "snapshot version" in err.message
        _honest_update_works(w, client, b"three", tmp_path)


def test_a_snapshot_listing_an_older_targets_bin_is_refused(tmp_path: Path) -> None:
    """With snapshot and timestamp keys stolen, an older bin (an older bundle) still cannot come back."""
    with world(tmp_path) as w:
        attacker = Attacker(w.repo)
        put(w.repo, PATH, b"old bundle")
        bin_role = w.repo.get(PATH).role  # type: ignore[union-attr]
        old_bin_version = attacker.current("snapshot")[1].signed.meta[f"{bin_role}.json"].version
        put(w.repo, PATH, b"new bundle")
        client = w.client()
        assert client.check(PATH) is not None

        _, snap = attacker.current("snapshot")
        forged: Metadata[Snapshot] = copy.deepcopy(snap)
        forged.signed.version += 1
        forged.signed.meta[f"{bin_role}.json"].version = old_bin_version
        forged.signed.meta[f"{bin_role}.json"].length = None
        snap_bytes = attacker.sign(forged, attacker.steal("snapshot"))
        _, ts = attacker.current("timestamp")
        ts_forged = Metadata(
            Timestamp(
                version=ts.signed.version + 1,
                expires=datetime.now(UTC) + timedelta(days=1),
                snapshot_meta=attacker.snapshot_meta(forged.signed.version, snap_bytes),
            )
        )
        w.server.serve(f"metadata/{forged.signed.version}.snapshot.json", snap_bytes)
        w.server.serve("metadata/timestamp.json", attacker.sign(ts_forged, attacker.steal("timestamp")))
        err = assert_refused(client, PATH, "rollback", stolen=("timestamp", "snapshot"))
        assert bin_role in err.message


def test_an_old_root_served_as_the_next_root_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"payload")
        client = w.client()  # trusts root v1
        assert client.check(PATH) is not None
        w.repo.rotate_key("timestamp")  # root v2 exists now
        w.server.serve("metadata/2.root.json", (w.repo.metadata_dir / "1.root.json").read_bytes())
        err = assert_refused(client, PATH, "rollback")
        assert "root version" in err.message and err.member == "2.root.json"
        _honest_update_works(w, client, b"after rotation", tmp_path)
        assert client.trusted_versions()["root"] == 2

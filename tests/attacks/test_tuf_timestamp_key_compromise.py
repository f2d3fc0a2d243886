"""Compromise of the timestamp key alone: the attacker cannot offer devices anything new.

The timestamp key is online (it signs every few hours), so it is the likeliest to leak. With it
an attacker can sign a timestamp — but the snapshot and the targets listing need keys it does
not have. A forged targets listing (naming a malicious bundle) signed with the timestamp key is
refused as ``untrusted-signature``; the device's trusted snapshot and targets stay as they were.
What the attacker *can* do is hold the device on what it has (a forged timestamp it accepted
with a far-future version): rotating the timestamp key with the root key ends that, because the
device drops a timestamp the new root's key did not sign.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile, TargetFile, Timestamp

from simulators.tuf_server import Attacker, assert_refused, put, trusted_files, world
from tinymlops.errors import UpdateRefusedError
from tinymlops.spec.update import device_target_path

PATH = device_target_path("dev-a")
EVIL = b"malicious firmware for dev-a"


def test_a_targets_listing_signed_with_the_timestamp_key_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        attacker = Attacker(w.repo)
        put(w.repo, PATH, b"genuine bundle")
        client = w.client()
        genuine = client.check(PATH)
        assert genuine is not None
        ts_key = attacker.steal("timestamp")
        role = w.repo.get(PATH).role  # type: ignore[union-attr]

        # a new bin naming the attacker's bundle, a snapshot naming that bin, a timestamp naming it
        _, bin_md = attacker.current(role)
        forged_bin = copy.deepcopy(bin_md)
        forged_bin.signed.version += 1
        target = TargetFile.from_data(PATH, EVIL)
        target.unrecognized_fields["custom"] = genuine.info.to_dict()
        forged_bin.signed.targets[PATH] = target
        bin_bytes = attacker.sign(forged_bin, ts_key)
        _, snap = attacker.current("snapshot")
        forged_snap = copy.deepcopy(snap)
        forged_snap.signed.version += 1
        forged_snap.signed.meta[f"{role}.json"] = MetaFile(forged_bin.signed.version, len(bin_bytes))
        snap_bytes = attacker.sign(forged_snap, ts_key)
        _, ts = attacker.current("timestamp")
        forged_ts = Metadata(
            Timestamp(
                version=ts.signed.version + 1000,  # far ahead: the honest repository cannot catch up
                expires=datetime.now(UTC) + timedelta(days=1),
                snapshot_meta=attacker.snapshot_meta(forged_snap.signed.version, snap_bytes),
            )
        )
        (served,) = target.get_prefixed_paths()
        w.server.serve(f"targets/{served}", EVIL)
        w.server.serve(f"metadata/{forged_bin.signed.version}.{role}.json", bin_bytes)
        w.server.serve(f"metadata/{forged_snap.signed.version}.snapshot.json", snap_bytes)
        w.server.serve("metadata/timestamp.json", attacker.sign(forged_ts, ts_key))

        before = trusted_files(client)
        try:
            client.check(PATH)
            raise AssertionError("a forged targets listing was accepted")
        except UpdateRefusedError as err:
            assert err.attack == "untrusted-signature" and err.member.endswith("snapshot.json")
            assert "not signed by the keys the trusted metadata names" in err.message
        after = trusted_files(client)
        # the forged timestamp itself verifies (the key is genuine) — everything below it is untouched
        assert {k: v for k, v in after.items() if k != "timestamp.json"} == {
            k: v for k, v in before.items() if k != "timestamp.json"
        }
        assert not any(hashlib.sha256(EVIL).hexdigest() in p for p in w.server.paths_requested("targets/"))

        # the honest repository's next timestamp is behind the forged one: held back ...
        w.server.reset()
        put(w.repo, PATH, b"genuine bundle 2")
        assert_refused(client, PATH, "rollback")
        # ... until the owner rotates the leaked key (root key needed); then the device follows again
        w.repo.rotate_key("timestamp")
        offer = client.check(PATH)
        assert offer is not None and client.download(offer, tmp_path / "dl").read_bytes() == b"genuine bundle 2"


def test_a_bin_resigned_with_the_timestamp_key_at_the_honest_address_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        attacker = Attacker(w.repo)
        put(w.repo, PATH, b"genuine")
        client = w.client()
        genuine = client.check(PATH)
        assert genuine is not None
        put(w.repo, PATH, b"genuine, newer")  # a fresh bin the device has not seen yet
        role = w.repo.get(PATH).role  # type: ignore[union-attr]
        name, bin_md = attacker.current(role)
        forged = copy.deepcopy(bin_md)
        target = TargetFile.from_data(PATH, b"x" * len(b"genuine, newer"))
        target.unrecognized_fields["custom"] = bin_md.signed.targets[PATH].unrecognized_fields["custom"]
        forged.signed.targets[PATH] = target
        data = attacker.sign(forged, attacker.steal("timestamp"))
        assert len(data) == len((w.repo.metadata_dir / name).read_bytes())  # same length: the signature decides
        w.server.serve(f"metadata/{name}", data)
        err = assert_refused(client, PATH, "untrusted-signature", repo=w.repo)
        assert err.member == name
        w.server.reset()
        offer = client.check(PATH)
        assert offer is not None and client.download(offer, tmp_path / "dl").read_bytes() == b"genuine, newer"

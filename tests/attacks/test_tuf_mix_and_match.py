"""Mix-and-match attacks: metadata from different releases served together.

Each release's timestamp pins its snapshot (version, length, sha256) and the snapshot pins every
targets file (version, length). A device handed a new timestamp with an old snapshot, or a new
snapshot with an old bin, refuses with ``attack == "mix-and-match"``.
"""

from __future__ import annotations

from pathlib import Path

from simulators.tuf_server import Attacker, assert_refused, put, world
from tinymlops.spec.update import device_target_path

PATH = device_target_path("dev-a")


def _mixed(tmp_path: Path, which: str) -> None:
    with world(tmp_path) as w:
        attacker = Attacker(w.repo)
        put(w.repo, PATH, b"release one, bundle")
        client = w.client()
        assert client.check(PATH) is not None
        role = w.repo.get(PATH).role  # type: ignore[union-attr]
        old = {"snapshot": attacker.current("snapshot"), role: attacker.current(role)}
        old_bytes = {k: (w.repo.metadata_dir / name).read_bytes() for k, (name, _) in old.items()}
        put(w.repo, PATH, b"release two, longer bundle")
        new_name = attacker.current(which if which == "snapshot" else role)[0]
        w.server.serve(f"metadata/{new_name}", old_bytes["snapshot" if which == "snapshot" else role])
        err = assert_refused(client, PATH, "mix-and-match", repo=w.repo)
        assert err.member == new_name and "mix-and-match" in err.message
        w.server.reset()
        offer = client.check(PATH)
        assert (
            offer is not None and client.download(offer, tmp_path / "dl").read_bytes() == b"release two, longer bundle"
        )


def test_new_timestamp_with_the_previous_snapshot_is_refused(tmp_path: Path) -> None:
    _mixed(tmp_path, "snapshot")


def test_new_snapshot_with_the_previous_targets_bin_is_refused(tmp_path: Path) -> None:
    _mixed(tmp_path, "bin")


def test_a_bin_whose_version_differs_from_the_snapshot_is_refused_even_at_the_right_length(tmp_path: Path) -> None:
    """Same length, other version: caught by the version the snapshot pins, not only by length."""
    with world(tmp_path) as w:
        attacker = Attacker(w.repo)
        put(w.repo, PATH, b"A" * 100)
        client = w.client()
        assert client.check(PATH) is not None
        role = w.repo.get(PATH).role  # type: ignore[union-attr]
        old_name, _ = attacker.current(role)
        old = (w.repo.metadata_dir / old_name).read_bytes()
        put(w.repo, PATH, b"B" * 100)  # same sizes: the bins differ only in hash and version digits
        new_name, _ = attacker.current(role)
        new = (w.repo.metadata_dir / new_name).read_bytes()
        assert len(new) == len(old)  # same sizes and expiry: only hash and version digits differ
        w.server.serve(f"metadata/{new_name}", old)
        err = assert_refused(client, PATH, "mix-and-match", repo=w.repo)
        assert "version is not the one the signed parent metadata pins" in err.message

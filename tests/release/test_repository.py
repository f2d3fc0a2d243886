"""The update repository on disk: layout, keys, publishing, expiry upkeep, key rotation, pruning.

Every check of the metadata goes through python-tuf's own Metadata API (signatures, versions,
lengths and hashes), so what is asserted is what a TUF client would see.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from simulators.tuf_server import info_for, put, real_bundles
from tinymlops.crypto.keys import DeviceKeys, generate_signing_key, key_id, save_private_key
from tinymlops.errors import (
    IntegrityError,
    InvalidInputError,
    MissingKeyError,
    NotFoundError,
    SpecError,
    UsageError,
    WorkspaceError,
)
from tinymlops.release import ExpiryPolicy, UpdateRepository
from tinymlops.release.keystore import raw_public
from tinymlops.spec.update import cohort_target_path, device_target_path


def _md(repo: UpdateRepository, name: str) -> Metadata:  # type: ignore[type-arg]
    return Metadata.from_bytes((repo.metadata_dir / name).read_bytes())


def verify_chain(repo: UpdateRepository) -> dict[str, int]:
    """Walk the committed repository as a client would and check every link; return versions."""
    roots = sorted(int(p.name.split(".")[0]) for p in repo.metadata_dir.glob("*.root.json"))
    assert roots == list(range(1, len(roots) + 1)), "root versions must be contiguous from 1"
    trusted: Root = _md(repo, "1.root.json").signed
    first = _md(repo, "1.root.json")
    trusted.verify_delegate("root", first.signed_bytes, first.signatures)
    for v in roots[1:]:
        new = _md(repo, f"{v}.root.json")
        trusted.verify_delegate("root", new.signed_bytes, new.signatures)  # signed by the previous root
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)  # and by itself
        trusted = new.signed
    ts_raw = (repo.metadata_dir / "timestamp.json").read_bytes()
    ts = Metadata[Timestamp].from_bytes(ts_raw)
    trusted.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    snap_name = f"{ts.signed.snapshot_meta.version}.snapshot.json"
    snap_raw = (repo.metadata_dir / snap_name).read_bytes()
    ts.signed.snapshot_meta.verify_length_and_hashes(snap_raw)
    snap = Metadata[Snapshot].from_bytes(snap_raw)
    trusted.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    targets_name = f"{snap.signed.meta['targets.json'].version}.targets.json"
    targets_raw = (repo.metadata_dir / targets_name).read_bytes()
    snap.signed.meta["targets.json"].verify_length_and_hashes(targets_raw)
    targets = Metadata[Targets].from_bytes(targets_raw)
    trusted.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    succinct = targets.signed.delegations.succinct_roles  # type: ignore[union-attr]
    assert succinct is not None
    bins = list(succinct.get_roles())
    assert set(snap.signed.meta) == {"targets.json", *(f"{b}.json" for b in bins)}
    for b in bins:
        meta = snap.signed.meta[f"{b}.json"]
        raw = (repo.metadata_dir / f"{meta.version}.{b}.json").read_bytes()
        meta.verify_length_and_hashes(raw)
        md = Metadata[Targets].from_bytes(raw)
        assert md.signed.version == meta.version
        targets.signed.verify_delegate(b, md.signed_bytes, md.signatures)
        for path, t in md.signed.targets.items():
            assert succinct.get_role_for_target(path) == b
            (served,) = t.get_prefixed_paths()
            t.verify_length_and_hashes((repo.targets_dir / served).read_bytes())
    return {
        "root": roots[-1],
        "timestamp": ts.signed.version,
        "snapshot": snap.signed.version,
        "targets": targets.signed.version,
    }


@pytest.fixture
def repo(tmp_path: Path) -> UpdateRepository:
    return UpdateRepository.init(tmp_path / "ws", bin_bits=4)


# --- init ----------------------------------------------------------------------------------
def test_init_writes_keys_and_a_verifiable_first_release(tmp_path: Path) -> None:
    repo = UpdateRepository.init(tmp_path / "ws")  # default: 256 bins
    assert verify_chain(repo) == {"root": 1, "timestamp": 1, "snapshot": 1, "targets": 1}
    assert len(list(repo.metadata_dir.glob("1.bins-*.json"))) == 256
    key_files = sorted(p.name.split("-")[0] for p in repo.keys.files())
    assert key_files == ["root", "snapshot", "targets", "timestamp"]
    assert stat.S_IMODE(repo.keys.directory.stat().st_mode) == 0o700
    for p in repo.keys.files():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    root = _md(repo, "1.root.json").signed
    assert root.consistent_snapshot is True
    # four distinct keys, each named by its own key id, none stored inside tuf/ (which is served)
    ids = {r: root.roles[r].keyids[0] for r in ("root", "targets", "snapshot", "timestamp")}
    assert len(set(ids.values())) == 4
    assert not any(p.suffix == ".ed25519" for p in repo.dir.rglob("*"))
    status = repo.status()
    assert status.bins == 256 and status.targets == 0 and all(all(r.keys_here) for r in status.roles)
    assert [r.version for r in status.roles] == [1, 1, 1, 1]


def test_init_twice_and_open_without_init_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no update repository"):
        UpdateRepository.open(tmp_path / "ws")
    UpdateRepository.init(tmp_path / "ws", bin_bits=2)
    with pytest.raises(WorkspaceError, match="already has an update repository"):
        UpdateRepository.init(tmp_path / "ws", bin_bits=2)
    for bad in (0, 17, True, "8"):
        with pytest.raises(UsageError, match="bin_bits"):
            UpdateRepository.init(tmp_path / f"other-{bad}", bin_bits=bad)  # type: ignore[arg-type]


def test_expiry_policy_is_stored_and_used(tmp_path: Path) -> None:
    policy = ExpiryPolicy(timestamp=timedelta(hours=6), snapshot=timedelta(days=2))
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    UpdateRepository.init(tmp_path / "ws", bin_bits=1, expiry=policy, clock=lambda: t0)
    repo = UpdateRepository.open(tmp_path / "ws", clock=lambda: t0)
    assert repo.expiry == policy
    ts = _md(repo, "timestamp.json").signed
    assert ts.expires == t0 + timedelta(hours=6)
    assert _md(repo, "1.snapshot.json").signed.expires == t0 + timedelta(days=2)
    assert _md(repo, "1.root.json").signed.expires == t0 + timedelta(days=365)
    with pytest.raises(UsageError, match="at least one second"):
        ExpiryPolicy(timestamp=timedelta(0))
    with pytest.raises(SpecError):
        ExpiryPolicy.from_dict({"timestamp": -5})
    with pytest.raises(SpecError):
        ExpiryPolicy.from_dict({"bogus": 5})


# --- publishing ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with real_bundles(tmp_path_factory.mktemp("bundles")) as b:
        yield b


def test_publish_a_real_bundle_for_a_device_and_a_cohort(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = UpdateRepository.init(bundles.ws.root, bin_bits=4)  # publish() verifies with this workspace's release key
    dev = DeviceKeys.generate()
    data = bundles.build(dev)
    before = verify_chain(repo)
    p = repo.publish(data, device=dev.device_id, urgent=True, release_id="r-1")
    after = verify_chain(repo)
    assert after["snapshot"] == before["snapshot"] + 1 and after["timestamp"] == before["timestamp"] + 1
    assert after["targets"] == before["targets"]  # only a bin changed, not the top-level targets
    assert p.path == device_target_path(dev.device_id)
    assert (p.length, p.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (repo.targets_dir / p.served_name).read_bytes() == data
    assert p.info.ref == "tiny:1" and p.info.model == "tiny" and p.info.version == 1
    assert p.info.target == "x86-edge-server" and p.info.urgent and p.info.release_id == "r-1"
    assert p.info.size == len(data) and len(p.info.bundle_id) == 32
    assert repo.get(p.path) == p
    c = repo.publish(bundles.build(dev, "tiny:2"), cohort="pilot")
    assert c.path == cohort_target_path("pilot") and c.info.version == 2 and not c.info.urgent
    listed = {t.path: t for t in repo.targets()}
    assert listed[p.path] == p and listed[c.path] == c
    assert repo.unpublish(p.path).info.bundle_id == p.info.bundle_id
    assert repo.get(p.path) is None and [t.path for t in repo.targets()] == [c.path]
    with pytest.raises(NotFoundError, match="nothing is published"):
        repo.unpublish(p.path)
    verify_chain(repo)


def test_publish_refuses_what_the_release_key_did_not_sign(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo = UpdateRepository.init(tmp_path / "other-ws", bin_bits=2)
    dev = DeviceKeys.generate()
    data = bundles.build(dev)
    # tmp_path/other-ws has no release key of its own: the bundle's signer must be given
    with pytest.raises(UsageError):
        repo.publish(data, device=dev.device_id)
    from tinymlops.bundle.workspace_keys import release_public_key

    trusted = [release_public_key(bundles.ws)]
    repo.publish(data, device=dev.device_id, trusted_release_keys=trusted)
    tampered = bytearray(data)
    tampered[-5] ^= 0x01
    snap_before = repo.status().roles[2].version
    with pytest.raises(IntegrityError):
        repo.publish(bytes(tampered), device="other", trusted_release_keys=trusted)
    with pytest.raises(IntegrityError):  # signed by some other key
        repo.publish(data, device="other", trusted_release_keys=[generate_signing_key().public_key()])
    assert repo.status().roles[2].version == snap_before  # nothing committed
    with pytest.raises(UsageError, match="exactly one"):
        repo.publish(data, trusted_release_keys=trusted)
    with pytest.raises(UsageError, match="exactly one"):
        repo.publish(data, device="a", cohort="b", trusted_release_keys=trusted)
    with pytest.raises(SpecError, match="bad device id"):
        repo.publish(data, device="../etc", trusted_release_keys=trusted)


def test_one_edit_is_one_release(repo: UpdateRepository) -> None:
    before = verify_chain(repo)
    with repo.edit() as edit:
        for i in range(20):
            edit.put(device_target_path(f"dev-{i}"), f"bundle {i}".encode(), info_for(f"bundle {i}".encode()))
    after = verify_chain(repo)
    assert after["snapshot"] == before["snapshot"] + 1 and after["timestamp"] == before["timestamp"] + 1
    assert len(repo.targets()) == 20
    # an edit that fails commits nothing (and its orphan target files are pruned later)
    with pytest.raises(RuntimeError), repo.edit() as edit:
        edit.put(device_target_path("late"), b"late", info_for(b"late"))
        raise RuntimeError("operator changed their mind")
    assert verify_chain(repo) == after and repo.get(device_target_path("late")) is None
    with pytest.raises(UsageError, match="update info says"), repo.edit() as edit:
        edit.put(device_target_path("x"), b"abc", info_for(b"abcd"))


def test_concurrent_writers_lose_nothing(repo: UpdateRepository) -> None:
    errors: list[BaseException] = []

    def publish(i: int) -> None:
        try:
            r = UpdateRepository.open(repo.workspace_root)
            put(r, device_target_path(f"t{i}"), f"data {i}".encode())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(t.path for t in repo.targets()) == sorted(device_target_path(f"t{i}") for i in range(12))
    assert verify_chain(repo)["snapshot"] == 13


# --- upkeep --------------------------------------------------------------------------------
class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_refresh_signs_a_new_timestamp_and_renews_only_what_is_due(tmp_path: Path) -> None:
    clock = Clock(datetime.now(UTC))
    repo = UpdateRepository.init(tmp_path / "ws", bin_bits=2, clock=clock)
    r = repo.refresh()
    assert r.renewed == ("timestamp",) and r.snapshot_version == 1 and r.timestamp_version == 2
    assert verify_chain(repo)["snapshot"] == 1  # devices need not download a new snapshot
    clock.now += timedelta(days=4)  # snapshot (7 days) is past half its life
    r = repo.refresh()
    assert r.renewed == ("snapshot", "timestamp") and r.snapshot_version == 2
    clock.now += timedelta(days=50)  # targets and bins (90 days) are past half theirs
    r = repo.refresh()
    assert set(r.renewed) == {"bins-0", "bins-1", "bins-2", "bins-3", "targets", "snapshot", "timestamp"}
    versions = verify_chain(repo)
    assert versions["targets"] == 2
    for name in ("timestamp.json", "3.snapshot.json", "2.targets.json"):
        assert _md(repo, name).signed.expires > clock.now
    clock.now += timedelta(days=150)  # root (365 days) past half: renewed while its key is here
    r = repo.refresh()
    assert "root" in r.renewed and verify_chain(repo)["root"] == 2


def test_status_warns_about_expired_metadata_and_an_offline_root(tmp_path: Path) -> None:
    clock = Clock(datetime.now(UTC))
    repo = UpdateRepository.init(tmp_path / "ws", bin_bits=1, clock=clock)
    assert repo.status().warnings == ()
    clock.now += timedelta(days=2)
    warnings = " ".join(repo.status().warnings)
    assert "timestamp metadata expired" in warnings
    repo.export_root_key(tmp_path / "usb")
    assert "root key is offline" in " ".join(repo.status().warnings)
    clock.now += timedelta(days=200)
    r = repo.refresh()
    assert "root" not in r.renewed and "its key is offline" in " ".join(r.warnings)


# --- the offline root key and key rotation -------------------------------------------------
def test_the_root_key_can_live_offline(repo: UpdateRepository, tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (exported,) = repo.export_root_key(usb)
    assert exported.parent == usb and stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert not any(p.name.startswith("root-") for p in repo.keys.files())
    # normal work never needs it
    put(repo, device_target_path("a"), b"a")
    repo.refresh(force_snapshot=True)
    repo.prune()
    verify_chain(repo)
    # what does need it says which key and where it looked
    with pytest.raises(MissingKeyError) as err:
        repo.rotate_key("timestamp")
    first_root = _md(repo, "1.root.json").signed
    root_id = key_id(raw_public(first_root.keys[first_root.roles["root"].keyids[0]]))
    assert err.value.details["key_id"] == root_id
    assert err.value.exit_code == 2
    assert err.value.details["role"] == "root" and str(repo.keys.directory) in err.value.message
    assert err.value.details["key_id"] in err.value.message
    with pytest.raises(MissingKeyError):
        repo.renew_root()
    # ... and works when given the key from the offline medium
    repo.rotate_key("timestamp", root_key=exported)
    assert verify_chain(repo)["root"] == 2
    # a key that is not the root key is refused, on import and as an argument
    stranger = tmp_path / "stranger.ed25519"
    save_private_key(stranger, generate_signing_key())
    with pytest.raises(UsageError, match="not a current root key"):
        repo.import_root_key(stranger)
    with pytest.raises(UsageError, match="repository's root key is"):
        repo.rotate_key("snapshot", root_key=stranger)
    repo.import_root_key(exported)
    repo.rotate_key("snapshot")
    assert verify_chain(repo)["root"] == 3
    third = _md(repo, "3.root.json").signed
    assert key_id(raw_public(third.keys[third.roles["root"].keyids[0]])) == root_id  # root key itself unchanged
    with pytest.raises(UsageError, match="already exists"):
        repo.export_root_key(exported)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "root"])
def test_rotating_a_key_keeps_every_moment_verifiable(repo: UpdateRepository, role: str) -> None:
    put(repo, device_target_path("a"), b"content a")
    old_root = _md(repo, "1.root.json").signed
    old_kid = old_root.roles[role].keyids[0]
    new_id = repo.rotate_key(role)
    versions = verify_chain(repo)  # verifies under the new root
    assert versions["root"] == 2
    new_root = _md(repo, "2.root.json").signed
    assert new_root.roles[role].keyids != [old_kid]
    assert key_id(raw_public(new_root.keys[new_root.roles[role].keyids[0]])) == new_id
    assert not repo.keys.has(role, raw_public(old_root.keys[old_kid]))  # old key file deleted
    if role != "root":
        # the metadata committed during the rotation verifies under the *old* root as well
        md = _md(
            repo,
            {"timestamp": "timestamp.json", "snapshot": f"{versions['snapshot']}.snapshot.json"}.get(
                role, f"{versions['targets']}.targets.json"
            ),
        )
        old_root.verify_delegate(role, md.signed_bytes, md.signatures)
    # later writes sign with the new key only and still verify
    put(repo, device_target_path("b"), b"content b")
    verify_chain(repo)
    assert len(repo.targets()) == 2
    with pytest.raises(UsageError, match="unknown TUF role"):
        repo.rotate_key("bins-0")


# --- crash safety --------------------------------------------------------------------------
_PUBLISHER = """
import sys
from tinymlops.release import UpdateRepository
from tinymlops.spec.update import UpdateInfo
repo = UpdateRepository.open(sys.argv[1])
i = 0
while True:
    data = f"bundle {i} ".encode() * 50
    info = UpdateInfo(bundle_id=f"{i:032x}", model="m", version=1, variant="", ref="m:1", target="t", size=len(data))
    with repo.edit() as edit:
        edit.put(f"devices/d{i % 40}/bundle.tmlb", data, info)
        edit.put(f"cohorts/c{i % 3}/bundle.tmlb", data, info)
    if i % 7 == 0:
        repo.refresh(force_snapshot=True)
    if i % 11 == 0:
        repo.prune(keep=2)
    i += 1
    print(i, flush=True)
"""


def test_a_publisher_killed_at_any_moment_leaves_a_consistent_repository(repo: UpdateRepository) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(4)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(repo.workspace_root)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one commit done: it is busy writing now
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        verify_chain(repo)  # every file the committed state refers to exists and verifies
        put(repo, device_target_path("after-crash"), b"still works")  # and it can be written again
        verify_chain(repo)
        assert repo.get(device_target_path("after-crash")) is not None
    repo.prune(keep=1)
    assert not [p for p in repo.dir.rglob(".*.tmp")]
    verify_chain(repo)


# --- pruning -------------------------------------------------------------------------------
def test_prune_keeps_what_recent_snapshots_refer_to(repo: UpdateRepository) -> None:
    for i in range(6):
        put(repo, device_target_path("a"), f"version {i}".encode())
    files_before = {p.name for p in repo.metadata_dir.iterdir()}
    targets_before = list(repo.targets_dir.rglob("*.bundle.tmlb"))
    assert len(targets_before) == 6
    result = repo.prune(keep=2)
    verify_chain(repo)
    remaining = {p.name for p in repo.metadata_dir.iterdir()}
    assert {"1.root.json", "timestamp.json", "7.snapshot.json", "6.snapshot.json"} <= remaining
    assert "5.snapshot.json" not in remaining and "5.snapshot.json" in files_before
    assert result.removed_metadata == len(files_before - remaining)
    # the files of the two kept releases: the current bundle and the one before it
    kept = sorted(p.read_bytes() for p in repo.targets_dir.rglob("*.bundle.tmlb"))
    assert kept == [b"version 4", b"version 5"] and result.removed_targets == 4
    with pytest.raises(UsageError):
        repo.prune(keep=0)


# --- serving -------------------------------------------------------------------------------
def test_resolve_serves_repository_files_and_nothing_else(repo: UpdateRepository, tmp_path: Path) -> None:
    put(repo, device_target_path("a"), b"payload")
    (p,) = repo.targets()
    assert repo.resolve("metadata/timestamp.json").read_bytes() == (repo.metadata_dir / "timestamp.json").read_bytes()
    assert repo.resolve("metadata/1.root.json").parent == repo.metadata_dir.resolve()
    assert repo.resolve(f"targets/{p.served_name}").read_bytes() == b"payload"
    for missing in ("metadata/99.root.json", "metadata/2.bins-0.json", "targets/devices/a/nope.bundle.tmlb", "keys/x"):
        with pytest.raises(NotFoundError):
            repo.resolve(missing)
    unsafe = [
        "metadata/../../keys/tuf",
        "metadata/../repository.json",
        "targets/../metadata/timestamp.json",
        "targets/devices/../../../keys",
        "targets/devices/a/..",
        "targets/./devices",
        "targets/.lock",
        "/etc/passwd",
        "targets//etc/passwd",
        "targets/devices\\..\\x",
        "targets/a\x00b",
        "",
        "metadata/a/b.json",
    ]
    for bad in unsafe:
        with pytest.raises(InvalidInputError):
            repo.resolve(bad)
    # a symlink planted inside targets/ that leads out is refused too
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (repo.targets_dir / "devices" / "evil").symlink_to(secret)
    with pytest.raises(InvalidInputError, match="outside the repository"):
        repo.resolve("targets/devices/evil")
    key_file = repo.keys.files()[0]
    rel = os.path.relpath(key_file, repo.targets_dir)
    with pytest.raises(InvalidInputError):
        repo.resolve(f"targets/{rel}")


def test_config_file_is_json_with_a_version(repo: UpdateRepository) -> None:
    doc = json.loads((repo.dir / "repository.json").read_text())
    assert doc["spec_version"] == "1.0" and doc["expiry_seconds"]["timestamp"] == 86400


_PIECES = ["metadata", "targets", "devices", "a", "..", ".", "", "timestamp.json", "1.root.json", "keys", "tuf", "%2e"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), min_size=1, max_size=6),
    sep=st.sampled_from(["/", "\\", "//"]),
)
def test_resolve_never_leaves_the_repository(repo: UpdateRepository, parts: list[str], sep: str) -> None:
    relative = sep.join(parts)
    try:
        path = repo.resolve(relative)
    except (InvalidInputError, NotFoundError):
        return
    assert path.is_file() and path.is_relative_to(repo.dir.resolve())
    assert path.parent.name != "tuf" and not path.name.startswith(".")

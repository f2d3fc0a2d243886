"""The agent's data directory: durable writes, and recovery from every kind of damage — a lost or
corrupt state file, interrupted installs and downloads, slot bundles tampered with while the agent
was down. Recovery never raises on bad data and always ends on a verified slot (or none)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from agent_testbed import agent_bundles_fixture  # noqa: F401 (a fixture)

from tinymlops.edge.agent.install import Installer
from tinymlops.edge.agent.slots import SlotState
from tinymlops.edge.agent.store import SlotStore, copy_durably, write_durably
from tinymlops.errors import AgentStateError, UsageError


def _installer(root: Path, bundles) -> Installer:  # type: ignore[no-untyped-def]
    return Installer(SlotStore(root), bundles.device, bundles.trusted)


def _with(root: Path, bundles, *names: str) -> None:  # type: ignore[no-untyped-def]
    """A data directory with ``names`` installed in order (then the store closed, as after a stop)."""
    inst = _installer(root, bundles)
    inst.store.recover(inst)
    for name in names:
        assert inst.install(bundles.paths[name]).status == "installed"
    inst.store.close()


def _recover(root: Path, bundles):  # type: ignore[no-untyped-def]
    inst = _installer(root, bundles)
    try:
        return inst.store.recover(inst), inst.store
    finally:
        inst.store.close()


def _assert_verified(store: SlotStore, bundles) -> None:  # type: ignore[no-untyped-def]
    """Every non-empty slot of the recovered state holds exactly the recorded bundle, and it verifies."""
    inst = Installer(store, bundles.device, bundles.trusted)
    for slot, entry in store.state.slots.items():
        if entry is None:
            assert not store.slot_path(slot).exists()
            continue
        assert inst.verify(store.slot_path(slot).read_bytes()) == entry.bundle
    assert SlotState.from_dict(json.loads(store.state_path.read_text())) == store.state


# --- durable writes --------------------------------------------------------------------------------
def test_write_durably_replaces_whole_files_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_durably(target, b"one")
    write_durably(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["state.json"]

    def boom() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_durably(target, b"three", before_replace=boom)
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["state.json"]


def test_copy_durably_hashes_what_it_writes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(200_000))
    import hashlib

    digest = copy_durably(src, tmp_path / "d" / "dest", chunk=4096)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (tmp_path / "d" / "dest").read_bytes() == src.read_bytes()
    assert os.listdir(tmp_path / "d") == ["dest"]


def test_one_agent_per_data_directory(tmp_path: Path) -> None:
    first = SlotStore(tmp_path)
    first.open()
    with pytest.raises(UsageError, match="another agent is already running"):
        SlotStore(tmp_path).open()
    first.close()
    SlotStore(tmp_path).open()  # released on close (and by the kernel when a process dies)


# --- recovery --------------------------------------------------------------------------------------
def test_a_fresh_directory_recovers_to_the_empty_state(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    recovery, store = _recover(tmp_path / "d", agent_bundles)
    assert recovery.state == SlotState.initial()
    assert recovery.state_file == "missing" and recovery.actions == []
    assert store.state_path.exists()


def test_an_intact_directory_recovers_unchanged(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    _with(tmp_path, agent_bundles, "v1", "v2")
    before = json.loads((tmp_path / "state.json").read_text())
    recovery, store = _recover(tmp_path, agent_bundles)
    assert recovery.state_file == "ok" and recovery.actions == []
    assert recovery.state.to_dict() == before
    _assert_verified(store, agent_bundles)


def test_partial_downloads_interrupted_installs_and_temp_files_are_discarded(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    _with(tmp_path, agent_bundles, "v1")
    inst = _installer(tmp_path, agent_bundles)
    inst.store.recover(inst)
    # an install of v2 that got as far as a half copy into slot b
    info = inst.verify(agent_bundles.data("v2"))
    inst.store.apply(inst.store.state.stage(info))
    inst.store.slot_path("b").write_bytes(agent_bundles.data("v2")[:700])
    (inst.store.slot_dir("b") / ".bundle.tmlb.x1y2.tmp").write_bytes(b"half")
    (tmp_path / ".state.json.abc.tmp").write_bytes(b"{")
    (inst.store.incoming_dir / "0123.part").write_bytes(b"partial download")
    inst.store.close()

    recovery, store = _recover(tmp_path, agent_bundles)
    text = " | ".join(recovery.actions)
    assert "discarded 1 leftover download(s)" in text
    assert "removed 2 temp file(s)" in text
    assert f"aborted the interrupted install of bundle {info.bundle_id} into slot b" in text
    assert recovery.state.active == "a" and recovery.state.pending is None
    assert recovery.state.active_bundle.bundle_id == agent_bundles.bundle_id("v1")  # type: ignore[union-attr]
    assert not recovery.state.is_refused(info.sha256)  # a crash is not the bundle's fault
    assert os.listdir(store.incoming_dir) == [] and os.listdir(store.slot_dir("b")) == []
    _assert_verified(store, agent_bundles)


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace-with-other-valid-bundle", "delete", "garbage"])
def test_a_slot_damaged_while_down_is_refused_and_the_active_falls_back(
    tmp_path: Path, agent_bundles, damage: str
) -> None:  # type: ignore[no-untyped-def]
    _with(tmp_path, agent_bundles, "v1", "v2")  # v2 active in b, v1 fallback in a
    path = tmp_path / "slots" / "b" / "bundle.tmlb"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-100]))
    elif damage == "replace-with-other-valid-bundle":  # signed and valid, but not what was installed
        path.write_bytes(agent_bundles.data("v3"))
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(os.urandom(len(data)))

    recovery, store = _recover(tmp_path, agent_bundles)
    assert recovery.state.active == "a"
    assert recovery.state.active_bundle.bundle_id == agent_bundles.bundle_id("v1")  # type: ignore[union-attr]
    assert recovery.state.slots["b"] is None and not path.exists()
    (note,) = [a for a in recovery.actions if "failed re-verification" in a]
    assert note.startswith(f"slot b (bundle {agent_bundles.bundle_id('v2')}) failed re-verification")
    assert note.endswith("active slot is now a")
    assert not recovery.state.is_refused(agent_bundles.sha("v2"))  # it can be downloaded again
    _assert_verified(store, agent_bundles)


def test_both_slots_damaged_leaves_no_active_bundle(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    _with(tmp_path, agent_bundles, "v1", "v2")
    for slot in ("a", "b"):
        p = tmp_path / "slots" / slot / "bundle.tmlb"
        d = bytearray(p.read_bytes())
        d[-1] ^= 0xFF
        p.write_bytes(bytes(d))
    recovery, store = _recover(tmp_path, agent_bundles)
    assert recovery.state.active is None and recovery.state.slots == {"a": None, "b": None}
    _assert_verified(store, agent_bundles)


def _corruptions(doc: bytes) -> list[tuple[str, bytes]]:
    out = [(f"truncated to {n} bytes", doc[:n]) for n in (0, 1, 2, len(doc) // 3, len(doc) // 2, len(doc) - 2)]
    out += [
        ("zeros", b"\x00" * len(doc)),
        ("not utf-8", b"\xff\xfe" + doc[2:]),
        ("valid JSON, wrong shape", b"[1, 2, 3]"),
        ("inconsistent", doc.replace(b'"active": "b"', b'"active": "c"')),
        ("huge", b" " * (2 << 20)),
        ("nested", b"[" * 100_000),
    ]
    return out


def test_a_corrupt_state_file_is_rebuilt_from_the_slots(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    """Every corruption: never a crash; the slots are re-verified and smoke-tested and the newest
    one that passes (v2, built after v1) is active again; the bad file is kept aside."""
    _with(tmp_path, agent_bundles, "v1", "v2")
    good = (tmp_path / "state.json").read_bytes()
    for label, bad in _corruptions(good):
        (tmp_path / "state.json").write_bytes(bad)
        recovery, store = _recover(tmp_path, agent_bundles)
        assert recovery.state_file == "corrupt", label
        assert recovery.state.active == "b", label
        assert recovery.state.active_bundle.bundle_id == agent_bundles.bundle_id("v2"), label  # type: ignore[union-attr]
        assert recovery.state.fallback == "a", label
        assert (tmp_path / "state.json.corrupt").read_bytes() == bad, label
        assert "rebuilding it from the slots" in recovery.actions[0], label
        _assert_verified(store, agent_bundles)


def test_a_lost_state_file_with_a_tampered_slot_keeps_only_what_qualifies(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    _with(tmp_path, agent_bundles, "v1", "v2")
    (tmp_path / "state.json").unlink()
    p = tmp_path / "slots" / "b" / "bundle.tmlb"
    d = bytearray(p.read_bytes())
    d[40] ^= 0x10
    p.write_bytes(bytes(d))
    recovery, store = _recover(tmp_path, agent_bundles)
    assert recovery.state_file == "missing"
    assert recovery.state.active == "a" and recovery.state.slots["b"] is None
    assert any(a.startswith("slot b does not qualify") for a in recovery.actions)
    _assert_verified(store, agent_bundles)


def test_a_staged_but_never_smoke_tested_bundle_is_not_trusted_after_a_lost_state(
    tmp_path: Path, agent_bundles
) -> None:  # type: ignore[no-untyped-def]
    """The scan smoke-tests every slot: a bundle that was only staged (and would fail) stays out."""
    _with(tmp_path, agent_bundles, "v1")
    (tmp_path / "slots" / "b" / "bundle.tmlb").write_bytes(agent_bundles.data("badcheck"))
    (tmp_path / "state.json").write_bytes(b"{")
    recovery, store = _recover(tmp_path, agent_bundles)
    assert recovery.state.active == "a" and recovery.state.slots["b"] is None
    assert any("smoke test failed" in a for a in recovery.actions)
    _assert_verified(store, agent_bundles)


def test_read_state_names_the_problem(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    with pytest.raises(AgentStateError, match="no state file"):
        store.read_state()
    (tmp_path / "state.json").write_bytes(b'{"spec_version": "1.0"')
    with pytest.raises(AgentStateError, match=r"not valid JSON \(truncated or corrupt, 22 bytes\)"):
        store.read_state()

"""The install flow on real bundles: verify, stage, re-verify, open, smoke-test, switch — and every
way it refuses or fails without touching the active slot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from agent_testbed import agent_bundles_fixture  # noqa: F401 (a fixture)

from tinymlops.edge.agent.install import STATUSES, Installer, InstallResult
from tinymlops.edge.agent.slots import Phase
from tinymlops.edge.agent.store import SlotStore
from tinymlops.edge.backends import open_backend
from tinymlops.errors import UsageError


@pytest.fixture
def installer(tmp_path: Path, agent_bundles) -> Installer:  # type: ignore[no-untyped-def]
    store = SlotStore(tmp_path / "data")
    inst = Installer(store, agent_bundles.device, agent_bundles.trusted)
    store.recover(inst)
    yield inst
    store.close()


def _snapshot(store: SlotStore) -> tuple[bytes, dict[str, bytes | None]]:
    slots = {s: (store.slot_path(s).read_bytes() if store.slot_path(s).exists() else None) for s in ("a", "b")}
    return store.state_path.read_bytes(), slots


def test_install_commits_into_the_inactive_slot_and_predicts_like_the_model(installer, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    store = installer.store
    r1 = installer.install(agent_bundles.paths["v1"])
    assert r1.status == "installed", r1.reason
    assert (r1.slot, r1.bundle_id, r1.sha256) == ("a", agent_bundles.bundle_id("v1"), agent_bundles.sha("v1"))
    assert r1.active_bundle_id == agent_bundles.bundle_id("v1")
    assert {"verify_s", "stage_s", "reverify_s", "open_s", "smoke_s", "commit_s", "total_s"} <= set(r1.timings)
    assert all(v >= 0 for v in r1.timings.values())
    assert r1.timings["total_s"] >= r1.timings["smoke_s"]

    # the runtime it hands over predicts exactly like the plaintext model in ONNX Runtime
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    (want,) = open_backend(agent_bundles.plaintext["v1"]).run(x)
    assert r1.runtime is not None
    assert np.array_equal(r1.runtime.predict(x).outputs["y"], want)

    # on disk: the state file says so, and the slot holds the encrypted bundle byte for byte
    doc = json.loads(store.state_path.read_text())
    assert doc["active"] == "a" and doc["pending"] is None and doc["slots"]["a"]["phase"] == "ready"
    assert store.slot_path("a").read_bytes() == agent_bundles.data("v1")
    assert agent_bundles.plaintext["v1"][16:48] not in store.slot_path("a").read_bytes()  # encrypted at rest

    r2 = installer.install(agent_bundles.paths["v2"])
    assert r2.status == "installed" and r2.slot == "b"
    assert store.state.active == "b" and store.state.fallback == "a"
    assert store.slot_path("a").read_bytes() == agent_bundles.data("v1")  # the fallback is kept

    again = installer.install(agent_bundles.paths["v2"])
    assert again.status == "unchanged" and again.slot == "b"


def test_a_bundle_failing_its_smoke_test_is_not_committed(installer, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    store = installer.store
    assert installer.install(agent_bundles.paths["v1"]).status == "installed"
    before = store.state
    result = installer.install(agent_bundles.paths["badcheck"])
    assert result.status == "failed"
    assert "smoke test failed: output 'y' differs by up to" in result.reason and "stayed on slot a" in result.reason
    assert result.error == "IntegrityError" and result.slot == "b"
    assert store.state.active == "a" and store.state.active_bundle == before.active_bundle
    assert store.state.slots["b"] is None and not store.slot_path("b").exists()
    assert store.state.is_refused(agent_bundles.sha("badcheck"))
    assert "open_s" in result.timings and "commit_s" not in result.timings
    # and it is refused without being staged the next time
    state_bytes = store.state_path.read_bytes()
    again = installer.install(agent_bundles.paths["badcheck"])
    assert again.status == "refused" and "refused before" in again.reason
    assert store.state_path.read_bytes() == state_bytes
    # the device still runs v1
    (want,) = open_backend(agent_bundles.plaintext["v1"]).run(np.ones((1, 4), np.float32))
    assert np.array_equal(
        installer.open_active("a", store.state.active_bundle).predict(np.ones((1, 4), np.float32)).outputs["y"], want
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "match", "error"),
    [
        ("other_device", "is encrypted for key", "KeyMismatchError"),
        ("untrusted", "signed by an untrusted release key", "SignatureError"),
        ("nocheck", "has no smoke-test vector and this agent requires one", "InvalidInputError"),
    ],
)
def test_bundles_that_are_not_for_us_are_refused_and_nothing_changes(
    installer, agent_bundles, name: str, match: str, error: str
) -> None:  # type: ignore[no-untyped-def]
    assert installer.install(agent_bundles.paths["v1"]).status == "installed"
    before = _snapshot(installer.store)
    result = installer.install(agent_bundles.paths[name])
    assert result.status == "refused" and match in result.reason and result.error == error
    assert result.slot is None and "stage_s" not in result.timings
    assert _snapshot(installer.store) == before


def test_tampered_and_mismatched_downloads_are_refused(installer, agent_bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert installer.install(agent_bundles.paths["v1"]).status == "installed"
    before = _snapshot(installer.store)
    data = bytearray(agent_bundles.data("v2"))
    for pos in (20, len(data) // 2, len(data) - 1):  # container header, somewhere inside, last byte
        bad = bytearray(data)
        bad[pos] ^= 0x01
        path = tmp_path / f"bad{pos}.tmlb"
        path.write_bytes(bad)
        result = installer.install(path)
        assert result.status == "refused", (pos, result)
        assert result.error in ("IntegrityError", "SignatureError", "SpecError")
    wrong = installer.install(agent_bundles.paths["v2"], expected_sha256="0" * 64)
    assert wrong.status == "refused" and "is not the offered" in wrong.reason
    missing = installer.install(tmp_path / "nope.tmlb")
    assert missing.status == "refused" and "no such bundle file" in missing.reason
    assert _snapshot(installer.store) == before


def test_a_runtime_that_cannot_open_is_a_failed_install(installer, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    assert installer.install(agent_bundles.paths["v1"]).status == "installed"

    def broken() -> list:  # type: ignore[type-arg]
        raise RuntimeError("no memory for a session")

    installer.middleware = broken
    result = installer.install(agent_bundles.paths["v2"])
    assert result.status == "failed" and "runtime could not open it" in result.reason
    assert "no memory for a session" in result.reason
    assert installer.store.state.active == "a" and installer.store.state.pending is None


def test_the_slot_copy_is_what_gets_verified(installer, agent_bundles, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A copy that lands corrupted in the slot (a flaky disk) fails the install; it is not committed."""
    assert installer.install(agent_bundles.paths["v1"]).status == "installed"
    store = installer.store
    real_copy = store.copy_into_slot

    def flaky(src: Path, slot: str) -> str:
        digest = real_copy(src, slot)
        data = bytearray(store.slot_path(slot).read_bytes())
        data[-5] ^= 0xFF
        store.slot_path(slot).write_bytes(bytes(data))
        return digest  # the copy "thought" it wrote the right bytes

    monkeypatch.setattr(store, "copy_into_slot", flaky)
    result = installer.install(agent_bundles.paths["v2"])
    assert result.status == "failed" and "slot copy" in result.reason
    assert store.state.active == "a" and store.state.slots["b"] is None


def test_install_result_is_strict_and_serialisable() -> None:
    with pytest.raises(UsageError, match="install status must be one of"):
        InstallResult("maybe", "?")
    r = InstallResult("installed", "ok", bundle_id="a" * 32, timings={"total_s": 0.1234567})
    assert json.loads(json.dumps(r.to_dict()))["timings"] == {"total_s": 0.123457}
    assert set(STATUSES) == {"installed", "refused", "failed", "deferred", "rolled_back", "unchanged"}


def test_the_installer_needs_keys_and_a_recovered_store(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    store = SlotStore(tmp_path)
    with pytest.raises(UsageError, match=r"must be recovered \(SlotStore.recover\) before installing"):
        Installer(store, agent_bundles.device, agent_bundles.trusted).install(agent_bundles.paths["v1"])
    with pytest.raises(UsageError, match="at least one trusted release key"):
        Installer(store, agent_bundles.device, [])
    with pytest.raises(UsageError, match="needs the device's DeviceKeys"):
        Installer(store, "key", agent_bundles.trusted)  # type: ignore[arg-type]


def test_phases_are_recorded_on_disk_in_order(installer, agent_bundles, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Every transition of an install is written before the next step runs."""
    seen: list[tuple[str | None, str | None, str | None]] = []
    store = installer.store
    real_apply = store.apply

    def spy(state, **kw):  # type: ignore[no-untyped-def]
        out = real_apply(state, **kw)
        doc = json.loads(store.state_path.read_text())
        pending = doc["pending"]
        seen.append((doc["active"], pending, doc["slots"][pending]["phase"] if pending else None))
        return out

    monkeypatch.setattr(store, "apply", spy)
    assert installer.install(agent_bundles.paths["v1"]).status == "installed"
    assert seen == [(None, "a", "staged"), (None, "a", "verified"), (None, "a", "ready"), ("a", None, None)]
    assert store.state.slots["a"].phase is Phase.READY  # type: ignore[union-attr]
    assert hashlib.sha256(store.slot_path("a").read_bytes()).hexdigest() == agent_bundles.sha("v1")

"""Crash tests: the agent runs as a real subprocess (``python -m tinymlops.edge.agent``) and is
SIGKILLed during the download, during the copy into the slot and during the switch — at named crash
points, so each test hits exactly the moment it names — and at random moments while it installs
bundle after bundle. After every kill the data directory holds a consistent state whose active
slot verifies; restarted, the agent recovers and converges to the offered bundle."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_testbed import agent_bundles_fixture  # noqa: F401 (a fixture)

from tinymlops.bundle.reader import verify_bundle
from tinymlops.edge.agent.crashpoints import ENV_VAR, POINTS
from tinymlops.edge.agent.slots import Phase, SlotState
from tinymlops.edge.agent.source import write_offer


def _cmd(data: Path, source: Path, bundles: Any, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tinymlops.edge.agent",
        "run",
        "--data-dir",
        str(data),
        "--source",
        str(source),
        "--device-keys",
        str(bundles.device_dir),
        "--trusted-key",
        str(bundles.release_public_file),
        "--chunk-bytes",
        "256",  # the bundles are ~2 KB: a download takes several chunks
        *extra,
    ]


def run_agent(data: Path, source: Path, bundles: Any, *, crash: str | None = None) -> tuple[int, list[dict]]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if crash is not None:
        env[ENV_VAR] = crash
    proc = subprocess.run(
        _cmd(data, source, bundles, "--once"), env=env, capture_output=True, text=True, timeout=120, check=False
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if crash is None:
        assert proc.returncode == 0, proc.stderr
    return proc.returncode, events


def assert_consistent(data: Path, bundles: Any) -> SlotState:
    """The state file parses (it is only ever replaced whole) and every slot the state relies on —
    the active one and a ready fallback — holds exactly the recorded bundle, which verifies."""
    state = SlotState.from_dict(json.loads((data / "state.json").read_text()))
    for slot, entry in state.slots.items():
        if entry is None or slot == state.pending:
            continue  # an interrupted install's slot may hold anything: recovery discards it
        assert entry.phase is Phase.READY
        raw = (data / "slots" / slot / "bundle.tmlb").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == entry.bundle.sha256, f"slot {slot} does not hold its bundle"
        assert verify_bundle(raw, trusted_release_keys=bundles.trusted).manifest.bundle_id == entry.bundle.bundle_id
    return state


def _active_is(state: SlotState, bundles: Any, name: str) -> bool:
    return state.active_bundle is not None and state.active_bundle.sha256 == bundles.sha(name)


@pytest.fixture
def device(tmp_path: Path, agent_bundles: Any) -> tuple[Path, Path]:
    """A data directory on v1 (installed by a first run of the agent) and a source offering v2."""
    data, source = tmp_path / "data", tmp_path / "source"
    source.mkdir()
    for name in ("v1", "v2", "v3"):
        (source / f"{name}.tmlb").write_bytes(agent_bundles.data(name))
    write_offer(source, source / "v1.tmlb")
    _, events = run_agent(data, source, agent_bundles)
    assert [e["status"] for e in events if e["event"] == "install"] == ["installed"]
    assert _active_is(assert_consistent(data, agent_bundles), agent_bundles, "v1")
    write_offer(source, source / "v2.tmlb")
    return data, source


# what a kill at each point leaves on disk, and what recovery says about it
EXPECTED = {
    "download": ("a", "discarded 1 leftover download(s)"),
    "stage-copy": ("a", "aborted the interrupted install of bundle"),
    "staged": ("a", "aborted the interrupted install of bundle"),
    "switch": ("a", "aborted the interrupted install of bundle"),
    "switched": ("b", None),
}


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_each_point_recovers_onto_a_verified_slot_and_converges(
    device: tuple[Path, Path], agent_bundles: Any, point: str
) -> None:
    data, source = device
    rc, events = run_agent(data, source, agent_bundles, crash=point)
    assert rc == -signal.SIGKILL, f"the agent did not reach crash point {point!r}"
    assert not [e for e in events if e["event"] == "install"]  # it died before reporting

    # what the kill left behind: a consistent state, on the old bundle until the switch
    state = assert_consistent(data, agent_bundles)
    active, note = EXPECTED[point]
    assert state.active == active
    assert _active_is(state, agent_bundles, "v1" if active == "a" else "v2")
    leftovers = {
        "download": list((data / "incoming").glob("*.part")),
        "stage-copy": list((data / "slots" / "b").glob(".bundle.tmlb.*.tmp")),
        "switch": list(data.glob(".state.json.*.tmp")),
    }.get(point)
    if leftovers is not None:
        assert leftovers, f"expected the half-done work of {point!r} on disk"
    if point in ("download", "stage-copy"):
        assert 0 < leftovers[0].stat().st_size < len(agent_bundles.data("v2"))  # truly half-way through
    if point in ("stage-copy", "staged", "switch"):
        assert state.pending == "b"

    # restarted: recovery, then it converges to v2
    rc, events = run_agent(data, source, agent_bundles)
    recovered = events[0]
    assert recovered["event"] == "recovered" and recovered["state_file"] == "ok"
    if note is not None:
        assert any(note in a for a in recovered["actions"]), recovered["actions"]
    if point == "switched":
        # the switch is on disk: only the finished download is left to clean up
        assert recovered["actions"] == ["discarded 1 leftover download(s)"] and events[-1]["action"] == "idle"
    else:
        assert [e["status"] for e in events if e["event"] == "install"] == ["installed"]
    state = assert_consistent(data, agent_bundles)
    assert state.active == "b" and _active_is(state, agent_bundles, "v2") and state.pending is None
    assert state.fallback == "a" and state.slots["a"].bundle.sha256 == agent_bundles.sha("v1")  # type: ignore[union-attr]
    assert list((data / "incoming").iterdir()) == []
    assert not list(data.rglob("*.tmp")) and not list(data.rglob("*.part"))


def test_a_corrupt_state_file_after_a_crash_is_rebuilt(device: tuple[Path, Path], agent_bundles: Any) -> None:
    data, source = device
    run_agent(data, source, agent_bundles)
    (data / "state.json").write_bytes((data / "state.json").read_bytes()[:37])  # a torn write by a bad disk
    _, events = run_agent(data, source, agent_bundles)
    assert events[0]["state_file"] == "corrupt" and events[0]["bundle_id"] == agent_bundles.bundle_id("v2")
    assert events[-1]["action"] == "idle"
    state = assert_consistent(data, agent_bundles)
    assert _active_is(state, agent_bundles, "v2") and state.fallback == "a"
    assert (data / "state.json.corrupt").exists()


def test_a_slot_tampered_while_down_is_refused_then_reinstalled(device: tuple[Path, Path], agent_bundles: Any) -> None:
    data, source = device
    run_agent(data, source, agent_bundles)  # now on v2 (slot b), v1 in slot a
    slot_b = data / "slots" / "b" / "bundle.tmlb"
    raw = bytearray(slot_b.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, in the encrypted model
    slot_b.write_bytes(bytes(raw))
    # the agent offered nothing new comes back on v1 (re-verification refused b) …
    write_offer(source, source / "v1.tmlb")
    _, events = run_agent(data, source, agent_bundles)
    (note,) = [a for a in events[0]["actions"] if "failed re-verification" in a]
    assert "slot b" in note and note.endswith("active slot is now a")
    state = assert_consistent(data, agent_bundles)
    assert _active_is(state, agent_bundles, "v1") and state.slots["b"] is None
    # … and when v2 is offered again it is downloaded and installed afresh (a tampered copy is not blamed on it)
    write_offer(source, source / "v2.tmlb")
    _, events = run_agent(data, source, agent_bundles)
    assert [e["status"] for e in events if e["event"] == "install"] == ["installed"]
    assert _active_is(assert_consistent(data, agent_bundles), agent_bundles, "v2")


def test_status_command(device: tuple[Path, Path], agent_bundles: Any, tmp_path: Path) -> None:
    data, _ = device
    out = subprocess.run(
        [sys.executable, "-m", "tinymlops.edge.agent", "status", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    assert doc["event"] == "status" and doc["active"] == "a"
    missing = subprocess.run(
        [sys.executable, "-m", "tinymlops.edge.agent", "status", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "has not run on this data directory" in json.loads(missing.stderr)["message"]
    no_keys = subprocess.run(
        [sys.executable, "-m", "tinymlops.edge.agent", "run", "--data-dir", str(tmp_path / "d2"), "--source", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_keys.returncode == 2 and "no such" in json.loads(no_keys.stderr)["message"]


@pytest.mark.slow
def test_killed_at_random_moments_while_installing_stays_consistent_and_converges(
    device: tuple[Path, Path], agent_bundles: Any
) -> None:
    """The offer rotates v1 → v2 → v3 every 150 ms, so the agent (polling every 20 ms) is nearly
    always installing; it is SIGKILLed from outside at random moments, restarted each time."""
    data, source = device
    rng = random.Random(20240501)
    stop = threading.Event()

    def rotate() -> None:
        names = ["v2", "v3", "v1"]
        i = 0
        while not stop.wait(0.15):
            write_offer(source, source / f"{names[i % 3]}.tmlb")
            i += 1

    rotator = threading.Thread(target=rotate, daemon=True)
    rotator.start()
    mid_install = 0
    try:
        for _ in range(6):
            proc = subprocess.Popen(
                _cmd(
                    data,
                    source,
                    agent_bundles,
                    "--poll-interval",
                    "0.02",
                    "--backoff-base",
                    "0.02",
                    "--backoff-cap",
                    "0.1",
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the recovery line: it is up
            assert json.loads(first)["event"] == "recovered"
            time.sleep(rng.uniform(0.05, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            state = assert_consistent(data, agent_bundles)
            mid_install += state.pending is not None
    finally:
        stop.set()
        rotator.join()
    write_offer(source, source / "v3.tmlb")
    run_agent(data, source, agent_bundles)
    state = assert_consistent(data, agent_bundles)
    assert _active_is(state, agent_bundles, "v3") and state.pending is None
    print(f"{mid_install} of 6 kills landed mid-install")

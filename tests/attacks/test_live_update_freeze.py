"""Freeze through the real control plane: the server's repository keeps serving the metadata the
device already has — a newer release exists, but the device is never told — until that metadata
expires. The agent then refuses the expired timestamp (python-tuf: a freeze attack) rather than
believe nothing changed, stays on its bundle, and installs the newer release once the repository
serves fresh metadata again.

The repository here signs timestamps valid for 4 s and the server's on-demand re-signing is off
(``ServerSettings(tuf_refresh=False)``): the frozen state an attacker, or a stalled server, serves.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from live_update_attacks import install_first

from delivery_world import assert_serves, open_world, register_tiny
from tinymlops.release import ExpiryPolicy, UpdateRepository
from tinymlops.server import ServerSettings

TIMESTAMP_S = 4


def test_metadata_frozen_until_it_expires_is_refused_and_the_agent_stays(sqlite_workspace: Any, tmp_path: Path) -> None:
    ws = sqlite_workspace
    register_tiny(ws)
    UpdateRepository.init(ws.root, expiry=ExpiryPolicy(timestamp=timedelta(seconds=TIMESTAMP_S)))
    with open_world(ws, ServerSettings(tuf_refresh=False)) as world:
        first = install_first(world, tmp_path / "dev")
        with first.agent:
            timestamp = first.metadata / "timestamp.json"
            frozen = timestamp.read_bytes()  # exactly what the device trusts now
            second = first.release("tiny:2")
            honest = timestamp.read_bytes()
            timestamp.write_bytes(frozen)  # the device is never told about release two

            expires = datetime.fromisoformat(json.loads(frozen)["signed"]["expires"])
            time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
            first.assert_refused_and_stayed(first.agent.run_once(), "freeze attack")

            timestamp.write_bytes(honest)
            UpdateRepository.open(ws.root).refresh()  # a live repository again: a fresh timestamp
            assert first.agent.run_once().action == "installed"
            assert_serves(first.agent, world, "tiny:2", second["bundle_id"])

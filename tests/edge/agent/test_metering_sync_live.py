"""The device's metering sync against the real control plane (FastAPI under uvicorn on 127.0.0.1, a
SQLite workspace, licenses issued through the API and signed with the workspace's release key): a
license sold before the first contact installs, a ledger far longer than the server's body limit
allows in one report is delivered in smaller reports after the 413s, and the server then counts every
reserved query."""

from __future__ import annotations

from pathlib import Path

import pytest

import live_server
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.edge.agent import MeteringSync
from tinymlops.metering import MeteringHost
from tinymlops.server import ServerSettings
from tinymlops.workspace import Workspace

ENTRIES = 300


@pytest.mark.slow
def test_a_ledger_beyond_the_servers_body_limit_reaches_the_real_server_in_smaller_reports(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    plane = live_server.start_plane(ws, ServerSettings(max_body_bytes=16 * 1024))
    try:
        client = plane.device()
        host = MeteringHost(
            tmp_path / "metering", device_key=client.keys.signing, trusted_issuer_keys=[release_public_key(ws)]
        )
        sync = MeteringSync(host, client, tmp_path / "metering")
        r = plane.admin.post(
            "/v1/licenses", json={"device_id": client.device_id, "model": "tiny", "queries": 10_000, "valid_days": 30}
        )
        assert r.status_code == 201, r.text
        lid = r.json()["license_id"]
        outcome = sync()
        assert outcome.installed == (lid,) and outcome.ok, outcome
        meter = host.meter("tiny", block=1)
        for _ in range(ENTRIES - 1):
            meter.authorize()  # block=1: one entry a call
        outcome = sync()  # one report of every entry would be ~67 KB: refused (413) until they are small enough
        assert outcome.ok and outcome.reported == ENTRIES - 1, outcome.errors
        shown = plane.admin.get(f"/v1/licenses/{lid}").json()
        assert shown["chain_used"] == ENTRIES - 1 and shown["alerts"] == 0
        assert sync.acknowledged()["tiny"][0] == meter.next_seq == ENTRIES
        host.close()
    finally:
        plane.close()
        ws.close()

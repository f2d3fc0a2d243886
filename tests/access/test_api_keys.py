"""API keys as a service (on SQLite and PostgreSQL): shown once, hashed at rest, scoped,
revocable, last use recorded only when a call is admitted; and the bootstrap CLI."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from live_server import LiveServer
from tinymlops.access.credentials import new_secret, parse_secret
from tinymlops.access.scopes import Scope
from tinymlops.access.service import ApiKeyService
from tinymlops.cli.app import app
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.errors import AccessDeniedError, AuthenticationError, NotFoundError, UsageError


def test_keys_are_shown_once_and_hashed_at_rest(workspace) -> None:
    service = ApiKeyService(workspace.engine)
    record, key = service.create("ci", "release")
    assert key.startswith(f"tmk_{record.id}_") and record.scope is Scope.RELEASE
    with workspace.engine.connect() as conn:
        dump = repr(conn.execute(text("SELECT * FROM api_keys")).all())
    assert key not in dump and key.split("_")[2] not in dump
    assert record.id in dump
    assert all(not hasattr(k, "key") for k in service.list())


@pytest.mark.parametrize("held", list(Scope))
@pytest.mark.parametrize("needed", list(Scope))
def test_scopes_nest(workspace, held: Scope, needed: Scope) -> None:
    service = ApiKeyService(workspace.engine)
    _, key = service.create("k", held)
    order = [Scope.READ, Scope.RELEASE, Scope.ADMIN]
    if order.index(held) >= order.index(needed):
        assert service.authenticate(key, needed).last_used_at is not None
    else:
        with pytest.raises(AccessDeniedError, match=f"needs '{needed}'"):
            service.authenticate(key, needed)
        assert service.list()[0].last_used_at is None  # a refused call records nothing


def test_revocation_and_bad_keys(workspace) -> None:
    service = ApiKeyService(workspace.engine)
    record, key = service.create("k", "admin")
    assert service.authenticate(key, Scope.ADMIN).id == record.id
    revoked = service.revoke(record.id)
    assert revoked.revoked_at is not None and service.revoke(record.id).revoked_at == revoked.revoked_at
    with pytest.raises(AuthenticationError, match="revoked"):
        service.authenticate(key, Scope.READ)
    with pytest.raises(NotFoundError):
        service.revoke("0" * 16)
    with pytest.raises(AuthenticationError, match="unknown API key"):
        service.authenticate(f"tmk_{record.id}_{'x' * 43}", Scope.READ)
    for bad in ("", "tmk", f"tmk_{record.id}_short", key + "\n", " " + key):
        with pytest.raises(AuthenticationError, match="malformed"):
            service.authenticate(bad, Scope.READ)
    for name in ("", " leading", "x" * 129, "new\nline"):
        with pytest.raises(UsageError):
            service.create(name, "read")
    with pytest.raises(UsageError, match="unknown scope"):
        service.create("k", "root")


def test_secrets_are_random_and_parse_back() -> None:
    seen = set()
    for _ in range(200):
        ident, secret, digest = new_secret("tmk")
        assert parse_secret(secret, "tmk", "API key") == (ident, digest)
        seen.add(secret)
    assert len(seen) == 200


def test_bootstrap_from_the_cli_without_a_server(sqlite_workspace) -> None:
    """`tinymlops apikey create --scope admin` and `tinymlops device token create` work on the
    workspace; the server started afterwards admits the key and enrols with the token."""
    ws = sqlite_workspace
    runner = CliRunner()
    result = runner.invoke(app, ["apikey", "create", "--scope", "admin", "--name", "ops", "--json", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    args = [
        "device",
        "token",
        "create",
        "--profile",
        "rpi-4",
        "--ttl",
        "15m",
        "--tag",
        "lab",
        "--json",
        "-w",
        str(ws.root),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    token = json.loads(result.stdout)
    assert token["status"] == "unused" and token["profile"] == "rpi-4"
    server = LiveServer(ws).start()
    try:
        state = DeviceClient(server.url, DeviceKeys.generate()).enrol(token["token"], "rpi-4")
        assert state.tags == ("lab",)
        r = httpx.get(f"{server.url}/v1/admin/api-keys", headers={"Authorization": f"Bearer {created['key']}"})
        assert r.status_code == 200 and [k["name"] for k in r.json()] == ["ops"]
        assert r.json()[0]["last_used_at"] is not None
        listed = json.loads(runner.invoke(app, ["apikey", "list", "--json", "-w", str(ws.root)]).stdout)
        assert listed[0]["last_used_at"] is not None and "key" not in listed[0]
        assert runner.invoke(app, ["apikey", "revoke", created["id"], "-w", str(ws.root)]).exit_code == 0
        r = httpx.get(f"{server.url}/v1/admin/api-keys", headers={"Authorization": f"Bearer {created['key']}"})
        assert r.status_code == 401
    finally:
        server.stop()

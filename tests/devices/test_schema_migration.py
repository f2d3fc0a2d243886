"""Migration 0002 (devices, enrolment tokens, replay cache, device tokens, API keys): a workspace
created at 0001, with data in it, upgrades to head on open and keeps its data."""

from __future__ import annotations

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from tinymlops.registry.db import alembic_config, create_db_engine, resolve_url
from tinymlops.workspace import Workspace
from tinymlops.workspace.workspace import CONFIG_FILE


def test_a_workspace_at_0001_upgrades_to_head(tmp_path, db_url) -> None:
    ws = Workspace.init(tmp_path / "ws", db_url=db_url)
    url = ws.db_url
    ws.close()
    engine = create_db_engine(resolve_url(url, tmp_path / "ws"))
    cfg = alembic_config()
    with engine.begin() as conn:  # back to the state an older tinymlops left it in
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with engine.begin() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
        assert "devices" not in inspect(conn).get_table_names()
        conn.execute(text("INSERT INTO models (name, description, created_at) VALUES ('kept', '', CURRENT_TIMESTAMP)"))
    engine.dispose()

    assert (tmp_path / "ws" / CONFIG_FILE).exists()
    ws = Workspace.open(tmp_path / "ws", db_url=url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with ws.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head
        tables = set(inspect(conn).get_table_names())
        assert {"devices", "enrolment_tokens", "device_nonces", "device_tokens", "api_keys"} <= tables
        assert conn.execute(text("SELECT name FROM models")).scalars().all() == ["kept"]
    from tinymlops.access.service import ApiKeyService

    record, key = ApiKeyService(ws.engine).create("after-upgrade", "admin")
    assert ApiKeyService(ws.engine).authenticate(key, record.scope).id == record.id
    ws.close()

"""Shared fixtures: real workspaces on SQLite and PostgreSQL, a real CNN trained on digits."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL = os.environ.get("TINYMLOPS_TEST_PG_URL")


def _fresh_pg_database() -> str:
    """A new empty database on the test server (one per test: no state leaks between tests)."""
    import psycopg
    from sqlalchemy.engine import make_url

    assert PG_URL is not None
    url = make_url(PG_URL)
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def backends() -> list[object]:
    params: list[object] = ["sqlite"]
    if PG_URL:
        params.append(pytest.param("postgresql", marks=pytest.mark.postgres))
    elif os.environ.get("CI"):
        raise RuntimeError(
            "CI must run the registry tests on PostgreSQL: set TINYMLOPS_TEST_PG_URL (scripts/test.sh does)"
        )
    return params


@pytest.fixture(params=backends())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """``None`` = the workspace's default SQLite file; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return _fresh_pg_database()


@pytest.fixture
def workspace(tmp_path: Path, db_url: str | None) -> Iterator[object]:
    from tinymlops.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws", db_url=db_url)
    yield ws
    ws.close()


@pytest.fixture
def sqlite_workspace(tmp_path: Path) -> Iterator[object]:
    from tinymlops.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture(scope="session")
def digits_model() -> object:
    """A real CNN trained on scikit-learn's digits (deterministic, trained once per session)."""
    from tinymlops.demo.digits import train_digits_cnn

    return train_digits_cnn(epochs=15)

"""Shared fixtures: real workspaces on SQLite and PostgreSQL, a real CNN trained on digits; and what a
parallel run (pytest-xdist: ``scripts/test.sh`` runs ``-n auto --dist loadfile``) needs: the cores
shared between the workers, the CNN trained once per run, the modules with slow tests handed out
first, and no Hypothesis deadline."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

PG_URL = os.environ.get("TINYMLOPS_TEST_PG_URL")


def _share_the_cores_between_workers() -> None:
    """In an xdist worker: each of the N workers gets cores/N threads for PyTorch (OpenMP) and the BLAS
    under numpy, before either is imported. Left alone, each takes every core, and N workers'
    spinning thread pools oversubscribe the machine: the digits CNN trains in ~50 s instead of ~16 s
    when two workers train it at once on 2 cores. Subprocesses the tests start inherit the setting.
    A value already in the environment is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


_share_the_cores_between_workers()

# No Hypothesis deadline (its default: 200 ms per example): a deadline times the machine, not the code
# under test — in a parallel run each test gets a share of a machine others are loading too, and a
# property test sending each example through a live server went over it (FlakyFailure). Speed goals
# are benchmarks (benchmarks/), never timed unit tests; a test may still set its own deadline.
settings.register_profile("tinymlops", deadline=None)
settings.load_profile("tinymlops")


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
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A real CNN trained on scikit-learn's digits (deterministic, trained once per session — once per
    run under xdist: the first worker to need it trains it, the others load what it saved)."""
    from tinymlops.demo.digits import train_digits_cnn

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train_digits_cnn(epochs=15)
    with _run_wide_file(tmp_path_factory, "digits-cnn.pickle") as cached:
        if cached.is_file():
            return pickle.loads(cached.read_bytes())
        model = train_digits_cnn(epochs=15)
        part = cached.with_suffix(".part")
        part.write_bytes(pickle.dumps(model))
        os.replace(part, cached)
        return model


@contextlib.contextmanager
def _run_wide_file(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """``name`` in the directory every xdist worker of this run shares (the parent of each worker's
    base temporary directory), held under an exclusive lock for the ``with`` block."""
    path = tmp_path_factory.getbasetemp().parent / name
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the order xdist hands out work in ------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist only: the modules that hold tests marked ``slow`` first (most slow tests first),
    then the others by their number of tests, each module's tests in their own order.

    ``scripts/test.sh`` runs ``--dist loadfile --no-loadscope-reorder``: a module goes to one worker
    as a whole, so a module-scoped fixture (a trained model, a populated world, a browser) is built
    once, not once per worker, and the modules are handed out in this order, so no long test starts
    last and leaves one worker running alone at the end. (xdist's own reordering, by number of tests,
    would hand out the one-test modules — the schema fuzz test, the demo — last. ``--dist loadgroup``
    would group finer, but pytest 9.2 ignores the node-id suffix it relies on: pytest-xdist#1386.)"""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def first_the_longest(tests: list[pytest.Item]) -> tuple[int, int]:
        return -sum(item.get_closest_marker("slow") is not None for item in tests), -len(tests)

    items[:] = [item for tests in sorted(modules.values(), key=first_the_longest) for item in tests]

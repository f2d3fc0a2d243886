"""``with Workspace.open(...) as ws`` closes the database engine, also when the block raises."""

from __future__ import annotations

import pytest

from tinymlops.workspace import Workspace


def test_the_engine_is_disposed_on_exit_even_after_an_error(tmp_path) -> None:
    Workspace.init(tmp_path / "ws").close()
    disposed: list[bool] = []
    with pytest.raises(RuntimeError, match="boom"), Workspace.open(tmp_path / "ws") as ws:
        engine = ws.engine
        original = engine.dispose
        engine.dispose = lambda *a, **k: (disposed.append(True), original(*a, **k))[1]  # type: ignore[method-assign]
        assert ws.registry.list_models() == []
        raise RuntimeError("boom")
    assert disposed == [True]
    with Workspace.open(tmp_path / "ws") as again:  # reopens fine afterwards
        assert again.registry.list_models() == []

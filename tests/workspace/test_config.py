from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymlops.errors import ConfigError, WorkspaceError
from tinymlops.workspace import Workspace, parse_config
from tinymlops.workspace.config import DEFAULT_CONFIG


def test_default_config_applies_to_every_model() -> None:
    cfg = parse_config(DEFAULT_CONFIG)
    chains = cfg.chains_for("any-model")
    variants = [c.variant for c in chains]
    assert {"fp16", "int8-dynamic", "int8-static", "prune-50", "prune-50/int8-static"} <= set(variants)
    assert any(c.target == "android-nnapi-phone" for c in chains)
    assert cfg.steps["int8-static"].params == {"activation_type": "quint8", "weight_type": "qint8"}


def test_model_override() -> None:
    cfg = parse_config(DEFAULT_CONFIG + '\n[derive.models.special]\nchains = ["fp16"]\n')
    assert [c.variant for c in cfg.chains_for("special") if c.target is None] == ["fp16"]
    assert len(cfg.chains_for("other")) > 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[derive]\ndefault = ['nope']\n", "no \\[recipes.nope\\] table"),
        ("[recipes.a]\nparams = {}\n", "'recipe' must name"),
        ("[recipes.A]\nrecipe='fp16'\n", "step names"),
        ("[bogus]\n", "unknown section"),
        ("[evaluation]\nruns = -1\n", "non-negative"),
        ("[evaluation]\nruns = 0\n", "at least 1"),
        ("[derive]\ndefault = 'fp16'\n", "must be a list"),
        ("not toml = = =", "not valid TOML"),
        ("[workspace]\ndatabase = 3\n", "SQLAlchemy URL"),
    ],
)
def test_bad_configs(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


@given(st.text(max_size=200))
def test_parser_only_raises_config_errors(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


def test_init_refuses_existing_workspace(tmp_path) -> None:
    Workspace.init(tmp_path / "ws").close()
    with pytest.raises(WorkspaceError, match="already a tinymlops workspace"):
        Workspace.init(tmp_path / "ws")


def test_open_without_workspace_is_clear(tmp_path) -> None:
    with pytest.raises(WorkspaceError, match="not a tinymlops workspace"):
        Workspace.open(tmp_path)


def test_bad_database_url(tmp_path) -> None:
    with pytest.raises(ConfigError):
        Workspace.init(tmp_path / "ws", db_url="nosuchdb://x")
    assert not (tmp_path / "ws" / "tinymlops.toml").exists()

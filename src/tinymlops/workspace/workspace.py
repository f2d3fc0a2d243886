"""A workspace: ``tinymlops.toml``, the metadata database, the blob store and user target profiles."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine

from tinymlops.errors import WorkspaceError
from tinymlops.registry.blobs import LocalBlobStore
from tinymlops.registry.db import create_db_engine, resolve_url, upgrade
from tinymlops.registry.store import Registry
from tinymlops.workspace.config import DEFAULT_CONFIG, WorkspaceConfig, load_config

CONFIG_FILE = "tinymlops.toml"
ENV_WORKSPACE = "TINYMLOPS_WORKSPACE"
ENV_DB_URL = "TINYMLOPS_DB_URL"


@dataclass
class Workspace:
    root: Path
    config: WorkspaceConfig
    db_url: str

    @classmethod
    def init(cls, root: Path | str, *, db_url: str | None = None) -> Workspace:
        """Create a workspace in ``root`` (an existing empty directory is fine)."""
        root = Path(root).resolve()
        if (root / CONFIG_FILE).exists():
            raise WorkspaceError(f"{root} is already a tinymlops workspace ({CONFIG_FILE} exists)")
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / "blobs").mkdir(exist_ok=True)
            (root / "targets").mkdir(exist_ok=True)
            tmp = root / f".{CONFIG_FILE}.tmp"
            tmp.write_text(DEFAULT_CONFIG, encoding="utf-8")
        except OSError as exc:
            raise WorkspaceError(f"cannot create a workspace in {root}: {exc.strerror}") from exc
        ws = cls(root, load_config(tmp), "")
        ws.db_url = ws._db_url(db_url)
        ws.migrate()
        os.replace(tmp, root / CONFIG_FILE)  # the config appears last: a workspace is whole or absent
        return ws

    @classmethod
    def open(cls, root: Path | str | None = None, *, db_url: str | None = None) -> Workspace:
        """Open the workspace in ``root`` (default: ``$TINYMLOPS_WORKSPACE``, else the current dir)."""
        if root is None:
            root = os.environ.get(ENV_WORKSPACE) or Path.cwd()
        root = Path(root).resolve()
        cfg_path = root / CONFIG_FILE
        if not cfg_path.is_file():
            raise WorkspaceError(
                f"{root} is not a tinymlops workspace (no {CONFIG_FILE}); run `tinymlops init {root}` "
                f"or pass --workspace / set {ENV_WORKSPACE}"
            )
        ws = cls(root, load_config(cfg_path), "")
        ws.db_url = ws._db_url(db_url)
        ws.migrate()
        return ws

    def _db_url(self, explicit: str | None) -> str:
        return resolve_url(explicit or os.environ.get(ENV_DB_URL) or self.config.database, self.root)

    @cached_property
    def engine(self) -> Engine:
        return create_db_engine(self.db_url)

    def migrate(self) -> None:
        upgrade(self.engine)

    @cached_property
    def blobs(self) -> LocalBlobStore:
        return LocalBlobStore(self.root / "blobs")

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.engine, self.blobs)

    @cached_property
    def targets(self):  # type: ignore[no-untyped-def]
        from tinymlops.targets.catalog import TargetCatalog

        return TargetCatalog(self.root / "targets")

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

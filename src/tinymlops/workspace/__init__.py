"""Workspaces: one directory holding the config, the metadata database and the blob store."""

from tinymlops.workspace.config import WorkspaceConfig, load_config, parse_config
from tinymlops.workspace.workspace import CONFIG_FILE, ENV_DB_URL, ENV_WORKSPACE, Workspace

__all__ = ["CONFIG_FILE", "ENV_DB_URL", "ENV_WORKSPACE", "Workspace", "WorkspaceConfig", "load_config", "parse_config"]

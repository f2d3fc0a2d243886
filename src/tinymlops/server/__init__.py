"""The control-plane server: a FastAPI app over one workspace (composition root only).

``create_app(workspace, settings)`` wires the services of the concept packages
(:mod:`tinymlops.devices`, :mod:`tinymlops.access`, :mod:`tinymlops.registry`) to thin routers,
one per resource (``server/routers/``); ``tinymlops serve`` runs it with uvicorn. All state is
in the workspace database, so SQLite and PostgreSQL both work and a restart loses nothing.
"""

from tinymlops.server.app import API_PREFIX, create_app
from tinymlops.server.settings import ServerSettings

__all__ = ["API_PREFIX", "ServerSettings", "create_app"]

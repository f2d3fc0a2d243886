"""Alembic environment: runs against the connection handed over by ``tinymlops.registry.db``."""

from __future__ import annotations

from alembic import context

# the tables of other packages join the one metadata (and so the one migration history)
import tinymlops.access.schema
import tinymlops.devices.schema
import tinymlops.metering.schema
import tinymlops.observe.schema
import tinymlops.release.schema  # noqa: F401
from tinymlops.registry.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

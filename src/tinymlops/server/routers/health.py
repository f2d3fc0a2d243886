"""``GET /healthz``: is the server up and its database reachable (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from tinymlops import __version__
from tinymlops.server.deps import ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/healthz", response_model=Health)
def health(services: ServicesDep) -> Health:
    with services.workspace.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return Health(status="ok", version=__version__)

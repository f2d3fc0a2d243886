"""API keys: create (the key is returned once), list, revoke, and authenticate with a scope.

Authentication looks the key up by its id, compares SHA-256 hashes in constant time, refuses a
revoked key, checks the scope, and only then records ``last_used_at`` — so a refused call changes
nothing in the database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, select, update

from tinymlops.access.credentials import API_KEY_PREFIX, hashes_match, new_secret, parse_secret
from tinymlops.access.schema import ApiKeyRow
from tinymlops.access.scopes import Scope
from tinymlops.errors import AccessDeniedError, AuthenticationError, NotFoundError, UsageError
from tinymlops.registry.db import session_factory

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,127}$")


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    scope: Scope
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _record(row: ApiKeyRow) -> ApiKeyRecord:
    created = _aware(row.created_at)
    assert created is not None
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        scope=Scope(row.scope),
        created_by=row.created_by,
        created_at=created,
        last_used_at=_aware(row.last_used_at),
        revoked_at=_aware(row.revoked_at),
    )


class ApiKeyService:
    """Admin API keys in the workspace database."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def create(self, name: str, scope: Scope | str, *, created_by: str = "") -> tuple[ApiKeyRecord, str]:
        """A new key: its record and the key itself (shown this once; only its hash is kept)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UsageError(
                f"API key name must be 1-128 characters (letters, digits, space, '.', '_', '@', ':', '-'), got {name!r}"
            )
        scope = Scope.parse(scope) if isinstance(scope, str) else scope
        ident, secret, digest = new_secret(API_KEY_PREFIX)
        row = ApiKeyRow(
            id=ident, name=name, scope=scope.value, key_hash=digest, created_by=created_by, created_at=self._now()
        )
        with self._sessions() as session:
            session.add(row)
            session.commit()
            return _record(row), secret

    def list(self) -> list[ApiKeyRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)).all()
            return [_record(r) for r in rows]

    def get(self, key_id: str) -> ApiKeyRecord:
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFoundError(f"no API key with id {key_id!r}", key_id=key_id)
            return _record(row)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key (revoking a revoked key changes nothing)."""
        with self._sessions() as session:
            session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                session.rollback()
                raise NotFoundError(f"no API key with id {key_id!r}", key_id=key_id)
            session.commit()
            return _record(row)

    def authenticate(self, key: str, required: Scope) -> ApiKeyRecord:
        """The key's record if it is valid, not revoked and its scope includes ``required``.

        :class:`AuthenticationError` for a malformed, unknown or revoked key;
        :class:`AccessDeniedError` for a valid key with too small a scope.
        """
        ident, digest = parse_secret(key, API_KEY_PREFIX, "API key")
        with self._sessions() as session:
            row = session.get(ApiKeyRow, ident)
            if row is None or not hashes_match(row.key_hash, digest):
                raise AuthenticationError("unknown API key")
            record = _record(row)
        if record.revoked_at is not None:
            raise AuthenticationError(
                f"API key {record.id} ({record.name}) was revoked at {record.revoked_at.isoformat()}", key_id=record.id
            )
        if not record.scope.allows(required):
            raise AccessDeniedError(
                f"API key {record.id} has scope '{record.scope}', this needs '{required}'",
                key_id=record.id,
                scope=record.scope.value,
                required=required.value,
            )
        now = self._now()
        with self._sessions() as session:
            session.execute(update(ApiKeyRow).where(ApiKeyRow.id == ident).values(last_used_at=now))
            session.commit()
        return replace(record, last_used_at=now)


__all__ = ["ApiKeyRecord", "ApiKeyService"]

"""Devices, server side: look up, list, revoke, and authenticate their requests.

A signed request (:mod:`tinymlops.devices.request_auth`) is checked in this order: headers
well-formed → device enrolled → not revoked → timestamp within the window → signature over what
arrived → the device may ask for this (``must_be``) → the nonce is new. Only a request that passed
every check is recorded: its (device, nonce) goes into the replay cache and ``last_seen`` moves,
in one transaction, written first so that concurrent writers on SQLite queue on the lock instead
of failing. A refused request changes nothing. Seen nonces are pruned once their timestamp falls
out of the window (a replay that old is refused as stale before the cache is consulted).

A device may instead use a short-lived bearer token (``tmd_…``) obtained with one signed request
(:meth:`DeviceService.issue_token`); only its hash is stored, and revoking the device ends it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from tinymlops.access.credentials import DEVICE_TOKEN_PREFIX, hashes_match, new_secret, parse_secret
from tinymlops.devices.records import DEVICE_STATUSES, DeviceRecord, IssuedSecret
from tinymlops.devices.request_auth import DEFAULT_WINDOW_S, ReceivedRequest, verify_request
from tinymlops.devices.schema import DeviceNonceRow, DeviceRow, DeviceTokenRow
from tinymlops.errors import (
    AccessDeniedError,
    AuthenticationError,
    NotFoundError,
    ReplayedRequestError,
    UsageError,
)
from tinymlops.registry.db import session_factory

DEFAULT_TOKEN_TTL_S = 900
#: the statements every signed request runs (built once)
_DEVICE_BY_ID = select(DeviceRow.__table__).where(DeviceRow.__table__.c.id == bindparam("device_id"))
_NEW_NONCE = insert(DeviceNonceRow.__table__)
_TOUCH = (
    update(DeviceRow.__table__)
    .where(DeviceRow.__table__.c.id == bindparam("device_id"))
    .values(last_seen=bindparam("last_seen"))
)
#: how often (at most) the replay cache and expired bearer tokens are pruned
PRUNE_EVERY_S = 60.0


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def device_record(row: Any) -> DeviceRecord:
    """A :class:`DeviceRecord` from an ORM :class:`DeviceRow` or a Core row of ``devices``."""
    enrolled = aware(row.enrolled_at)
    assert enrolled is not None
    return DeviceRecord(
        id=row.id,
        signing_public=bytes.fromhex(row.signing_public),
        wrapping_public=bytes.fromhex(row.wrapping_public),
        wrapping_key_id=row.wrapping_key_id,
        profile_name=row.profile_name,
        profile=dict(row.profile),
        tags=tuple(row.tags or ()),
        status=row.status,
        enrolled_at=enrolled,
        last_seen=aware(row.last_seen),
        revoked_at=aware(row.revoked_at),
    )


class DeviceService:
    """Enrolled devices in the workspace database (enrolment itself: :mod:`tinymlops.devices.enrolment`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        window_s: int = DEFAULT_WINDOW_S,
        token_ttl_s: int = DEFAULT_TOKEN_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s < 1 or token_ttl_s < 1:
            raise UsageError("window_s and token_ttl_s must be at least 1 second")
        self.engine = engine
        self.window_s = window_s
        self.token_ttl_s = token_ttl_s
        self._sessions = session_factory(engine)
        self._clock = clock
        self._pruned_at = 0.0
        self._prune_lock = threading.Lock()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- reading and revoking -------------------------------------------------------------
    def get(self, device_id: str) -> DeviceRecord:
        with self._sessions() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise NotFoundError(f"no device with id {device_id!r}", device_id=device_id)
            return device_record(row)

    def list(self, *, status: str | None = None) -> list[DeviceRecord]:
        if status is not None and status not in DEVICE_STATUSES:
            raise UsageError(f"device status must be one of {', '.join(DEVICE_STATUSES)}, got {status!r}")
        q = select(DeviceRow).order_by(DeviceRow.enrolled_at, DeviceRow.id)
        if status is not None:
            q = q.where(DeviceRow.status == status)
        with self._sessions() as session:
            return [device_record(r) for r in session.scalars(q).all()]

    def revoke(self, device_id: str) -> DeviceRecord:
        """Revoke a device: its signed requests and bearer tokens are refused from now on
        (revoking a revoked device changes nothing). It cannot enrol again with the same keys."""
        with self._sessions() as session:
            session.execute(
                update(DeviceRow)
                .where(DeviceRow.id == device_id, DeviceRow.status == "active")
                .values(status="revoked", revoked_at=self._now())
            )
            row = session.get(DeviceRow, device_id)
            if row is None:
                session.rollback()
                raise NotFoundError(f"no device with id {device_id!r}", device_id=device_id)
            session.execute(delete(DeviceTokenRow).where(DeviceTokenRow.device_id == device_id))
            session.commit()
            return device_record(row)

    # --- authenticating requests --------------------------------------------------------------
    def _active_device(self, session: Session, device_id: str) -> DeviceRow:
        return self._checked_active(session.get(DeviceRow, device_id), device_id)

    @staticmethod
    def _checked_active(row: Any, device_id: str) -> Any:
        """``row`` (an ORM row or a Core row of ``devices``) if the device is enrolled and active."""
        if row is None:
            raise AuthenticationError(f"unknown device {device_id}: it is not enrolled here", device_id=device_id)
        if row.status != "active":
            revoked = aware(row.revoked_at)
            when = f" at {revoked.isoformat()}" if revoked else ""
            raise AuthenticationError(f"device {device_id} was revoked{when}", device_id=device_id)
        return row

    @staticmethod
    def _check_owner(device_id: str, must_be: str | None) -> None:
        if must_be is not None and must_be != device_id:
            raise AccessDeniedError(
                f"device {device_id} may not access device {must_be}'s resources", device_id=device_id
            )

    def authenticate(self, request: ReceivedRequest, *, must_be: str | None = None) -> DeviceRecord:
        """The device that signed ``request``, once every check passed and its nonce is recorded.

        ``must_be``: the device the resource belongs to; another device gets :class:`AccessDeniedError`.

        Every device request comes through here, so it uses SQLAlchemy Core on one pooled connection
        (one checkout, no ORM unit of work): a read transaction for the device, ended before the
        checks, then a write transaction that starts with the nonce insert.
        """
        auth = request.auth()
        now = self._clock()
        with self.engine.connect() as conn:
            row = conn.execute(_DEVICE_BY_ID, {"device_id": auth.device_id}).one_or_none()
            conn.rollback()  # no read snapshot is held into the write (SQLite could not upgrade it)
            record = device_record(self._checked_active(row, auth.device_id))
            verify_request(
                auth,
                method=request.method,
                target=request.target,
                body=request.body,
                signing_public=record.signing_public,
                now=now,
                window_s=self.window_s,
            )
            self._check_owner(record.id, must_be)
            seen = datetime.fromtimestamp(now, UTC)
            try:
                conn.execute(_NEW_NONCE, {"device_id": record.id, "nonce": auth.nonce, "timestamp": auth.timestamp})
            except DBIntegrityError:
                conn.rollback()
                raise ReplayedRequestError(
                    f"replayed request: device {record.id} already used nonce {auth.nonce}", device_id=record.id
                ) from None
            conn.execute(_TOUCH, {"device_id": record.id, "last_seen": seen})
            conn.commit()
        self._maybe_prune(now)
        return replace(record, last_seen=seen)

    def issue_token(self, device: DeviceRecord) -> IssuedSecret:
        """A bearer token for an (already authenticated) device, valid ``token_ttl_s``; shown once."""
        ident, secret, digest = new_secret(DEVICE_TOKEN_PREFIX)
        now = self._now()
        expires = now + timedelta(seconds=self.token_ttl_s)
        with self._sessions() as session:
            self._active_device(session, device.id)
            session.add(
                DeviceTokenRow(id=ident, device_id=device.id, token_hash=digest, created_at=now, expires_at=expires)
            )
            session.commit()
        return IssuedSecret(ident, secret, expires)

    def authenticate_token(self, token: str, *, must_be: str | None = None) -> DeviceRecord:
        """The device a bearer token belongs to (valid, unexpired, device active); records ``last_seen``."""
        ident, digest = parse_secret(token, DEVICE_TOKEN_PREFIX, "device token")
        now = self._now()
        with self._sessions() as session:
            row = session.get(DeviceTokenRow, ident)
            if row is None or not hashes_match(row.token_hash, digest):
                raise AuthenticationError("unknown device token (obtain a new one with a signed request)")
            expires = aware(row.expires_at)
            assert expires is not None
            if now >= expires:
                raise AuthenticationError(f"device token expired at {expires.isoformat()}", device_id=row.device_id)
            record = device_record(self._active_device(session, row.device_id))
        self._check_owner(record.id, must_be)
        with self._sessions() as session:
            session.execute(update(DeviceRow).where(DeviceRow.id == record.id).values(last_seen=now))
            session.commit()
        return replace(record, last_seen=now)

    # --- housekeeping -------------------------------------------------------------------------
    def prune(self, now: float | None = None) -> int:
        """Forget nonces whose timestamp is out of the window and expired bearer tokens; returns rows removed."""
        now = self._clock() if now is None else now
        cutoff = int(now) - self.window_s - 1
        with self._sessions() as session:
            n = session.execute(delete(DeviceNonceRow).where(DeviceNonceRow.timestamp < cutoff)).rowcount
            n += session.execute(
                delete(DeviceTokenRow).where(DeviceTokenRow.expires_at < datetime.fromtimestamp(now, UTC))
            ).rowcount
            session.commit()
        return int(n)

    def _maybe_prune(self, now: float) -> None:
        with self._prune_lock:
            if now - self._pruned_at < PRUNE_EVERY_S:
                return
            self._pruned_at = now
        self.prune(now)


__all__ = ["DEFAULT_TOKEN_TTL_S", "DeviceService", "aware", "device_record"]

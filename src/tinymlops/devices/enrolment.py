"""Enrolment, server side: one-time enrolment tokens, and turning a token into an enrolled device.

A token (``tme_<id>_<secret>``, shown once; only its hash is stored) expires after its TTL and
enrols exactly one device. It may be bound to a profile (a device enrolling with it must claim
that profile) and carry tags that the device gets — devices never choose their own tags, so a
device cannot put itself into a cohort (a canary, say) it was not given.

:meth:`EnrolmentService.enrol` checks, in this order: public keys well-formed → the request is
signed by the key it enrols (proof of possession; timestamp within the window) → the token is
well-formed → the profile parses → then, in one transaction that starts by claiming the token
with a conditional UPDATE (so two devices racing for one token cannot both win): token known,
unexpired and unused → bound profile matches → device not already enrolled → insert the device
and its first nonce. Any refusal rolls the whole transaction back: the token stays usable and no
row changes.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from tinymlops.access.credentials import ENROLMENT_TOKEN_PREFIX, hashes_match, new_secret, parse_secret
from tinymlops.crypto.keys import PUBLIC_KEY_BYTES, ed25519_public, key_id, x25519_public
from tinymlops.devices.records import DeviceRecord, EnrolmentTokenRecord
from tinymlops.devices.request_auth import DEFAULT_WINDOW_S, ReceivedRequest, verify_request
from tinymlops.devices.schema import DeviceNonceRow, DeviceRow, EnrolmentTokenRow
from tinymlops.devices.service import aware, device_record
from tinymlops.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    SpecError,
    UsageError,
)
from tinymlops.registry.db import session_factory
from tinymlops.spec.profile import DeviceProfile

DEFAULT_TOKEN_TTL_S = 24 * 3600
MAX_TOKEN_TTL_S = 30 * 24 * 3600
MAX_TAGS = 32
MAX_NOTE_CHARS = 500
TAG = re.compile(r"^[a-z0-9][a-z0-9._:=-]{0,63}$")

ProfileLookup = Callable[[str], DeviceProfile]


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise UsageError("tags must be a list of strings, not one string")
    if len(tags) > MAX_TAGS:
        raise UsageError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise UsageError(
                f"bad tag {tag!r}: 1-64 characters, lower-case letters, digits and '.', '_', ':', '=', '-'"
            )
    return tuple(sorted(set(tags)))


def decode_public(value: str, field: str) -> bytes:
    """32 raw key bytes from strict base64; the error names ``field``."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidInputError(f"'{field}' is not base64", field=field) from None
    if len(raw) != PUBLIC_KEY_BYTES or base64.b64encode(raw).decode("ascii") != value:
        raise InvalidInputError(
            f"'{field}' must be {PUBLIC_KEY_BYTES} bytes in canonical base64, got {len(raw)} bytes", field=field
        )
    return raw


def _token_record(row: EnrolmentTokenRow) -> EnrolmentTokenRecord:
    created, expires = aware(row.created_at), aware(row.expires_at)
    assert created is not None and expires is not None
    return EnrolmentTokenRecord(
        id=row.id,
        created_at=created,
        expires_at=expires,
        used_at=aware(row.used_at),
        used_by=row.used_by,
        profile_name=row.profile_name,
        tags=tuple(row.tags or ()),
        note=row.note,
    )


class EnrolmentService:
    """Enrolment tokens and enrolment, over the workspace database and a profile catalog."""

    def __init__(
        self,
        engine: Engine,
        profiles: ProfileLookup,
        *,
        window_s: int = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.profiles = profiles
        self.window_s = window_s
        self._sessions = session_factory(engine)
        self._clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- tokens ---------------------------------------------------------------------------
    def create_token(
        self,
        *,
        ttl_s: int = DEFAULT_TOKEN_TTL_S,
        profile: str | None = None,
        tags: Sequence[str] = (),
        note: str = "",
    ) -> tuple[EnrolmentTokenRecord, str]:
        """A new one-time token: its record and the token itself (shown this once)."""
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TOKEN_TTL_S:
            raise UsageError(f"token TTL must be 1 s to {MAX_TOKEN_TTL_S // 86400} days in seconds, got {ttl_s!r}")
        if profile is not None:
            profile = self.profiles(profile).name  # an unknown profile is refused now, not at enrolment
        tags = check_tags(tags)
        if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
            raise UsageError(f"note must be a string of at most {MAX_NOTE_CHARS} characters")
        ident, secret, digest = new_secret(ENROLMENT_TOKEN_PREFIX)
        now = self.now()
        row = EnrolmentTokenRow(
            id=ident,
            token_hash=digest,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
            profile_name=profile,
            tags=list(tags),
            note=note,
        )
        with self._sessions() as session:
            session.add(row)
            session.commit()
            return _token_record(row), secret

    def list_tokens(self) -> list[EnrolmentTokenRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(EnrolmentTokenRow).order_by(EnrolmentTokenRow.created_at)).all()
            return [_token_record(r) for r in rows]

    # --- enrolment --------------------------------------------------------------------------
    def _profile(self, profile: str | Mapping[str, Any]) -> DeviceProfile:
        if isinstance(profile, str):
            return self.profiles(profile)
        if isinstance(profile, Mapping):
            return DeviceProfile.from_dict(profile, source="enrolment profile")
        raise SpecError("'profile' must be a profile name or a device-profile document")

    def enrol(
        self,
        *,
        token: str,
        signing_public: str,
        wrapping_public: str,
        profile: str | Mapping[str, Any],
        request: ReceivedRequest,
    ) -> DeviceRecord:
        """Enrol the device whose keys are given (base64), with a one-time ``token``.

        ``request`` is the enrolment request as received: it must be signed by ``signing_public``.
        """
        signing = decode_public(signing_public, "signing_public")
        wrapping = decode_public(wrapping_public, "wrapping_public")
        ed25519_public(signing)
        x25519_public(wrapping)
        device_id = key_id(signing)
        auth = request.auth()
        if auth.device_id != device_id:
            raise AuthenticationError(
                f"an enrolment must be signed by the key it enrols ({device_id}), not by {auth.device_id}"
            )
        now_s = self._clock()
        verify_request(
            auth,
            method=request.method,
            target=request.target,
            body=request.body,
            signing_public=signing,
            now=now_s,
            window_s=self.window_s,
        )
        token_id, digest = parse_secret(token, ENROLMENT_TOKEN_PREFIX, "enrolment token")
        claimed = self._profile(profile)
        now = datetime.fromtimestamp(now_s, UTC)
        with self._sessions() as session:
            won = session.execute(
                update(EnrolmentTokenRow)
                .where(
                    EnrolmentTokenRow.id == token_id,
                    EnrolmentTokenRow.token_hash == digest,
                    EnrolmentTokenRow.used_at.is_(None),
                    EnrolmentTokenRow.expires_at > now,
                )
                .values(used_at=now, used_by=device_id)
            ).rowcount
            row = session.get(EnrolmentTokenRow, token_id)
            try:
                if row is None or not hashes_match(row.token_hash, digest):
                    raise AuthenticationError("unknown enrolment token")
                if not won:
                    tok = _token_record(row)
                    if tok.used_at is not None:
                        raise ConflictError(
                            f"enrolment token {tok.id} was already used at {tok.used_at.isoformat()}; "
                            "each token enrols one device",
                            token_id=tok.id,
                        )
                    raise AuthenticationError(
                        f"enrolment token {tok.id} expired at {tok.expires_at.isoformat()}", token_id=tok.id
                    )
                if row.profile_name is not None and claimed.name != row.profile_name:
                    raise AccessDeniedError(
                        f"enrolment token {row.id} enrols only devices with profile '{row.profile_name}', "
                        f"not '{claimed.name}'",
                        token_id=row.id,
                    )
                existing = session.get(DeviceRow, device_id)
                if existing is not None:
                    raise ConflictError(
                        f"device {device_id} is already enrolled"
                        + (" and was revoked: create new keys to enrol again" if existing.status != "active" else ""),
                        device_id=device_id,
                    )
                device = DeviceRow(
                    id=device_id,
                    signing_public=signing.hex(),
                    wrapping_public=wrapping.hex(),
                    wrapping_key_id=key_id(wrapping),
                    profile_name=claimed.name,
                    profile=claimed.to_dict(),
                    tags=list(row.tags or ()),
                    status="active",
                    enrolment_token_id=row.id,
                    enrolled_at=now,
                    last_seen=now,
                )
                session.add(device)
                session.flush()
                session.add(DeviceNonceRow(device_id=device_id, nonce=auth.nonce, timestamp=auth.timestamp))
                session.commit()
            except DBIntegrityError:
                session.rollback()
                raise ConflictError(f"device {device_id} is already enrolled", device_id=device_id) from None
            except BaseException:
                session.rollback()
                raise
            return device_record(device)


__all__ = ["DEFAULT_TOKEN_TTL_S", "MAX_TOKEN_TTL_S", "EnrolmentService", "check_tags", "decode_public"]

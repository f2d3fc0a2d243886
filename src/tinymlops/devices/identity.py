"""A device's identity, device side: its key pairs, its enrolment request, and what it remembers
once enrolled.

The private keys are created on the device (:class:`tinymlops.crypto.keys.DeviceKeys`: Ed25519 to
sign requests, X25519 that bundles for it are wrapped to) and never leave it; the control plane
only ever sees the public halves. The device id is the key id of the Ed25519 public key, so the
id cannot be claimed without the key.

Enrolment sends :func:`enrolment_body` once, with a one-time enrolment token, as a *signed*
request (see :mod:`tinymlops.devices.request_auth`): the signature, by the key in the body, proves
the device holds it. Afterwards the device keeps an :class:`EnrolmentState` next to its keys
(``enrolment.json``, written atomically).

Edge-safe: imports only ``cryptography`` and the standard library.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlops.crypto.keys import DeviceKeys, write_file_atomic
from tinymlops.errors import InvalidInputError, UsageError

ENROLMENT_FILE = "enrolment.json"
ENROLMENT_STATE_VERSION = 1
MAX_ENROLMENT_FILE_BYTES = 64 * 1024


def load_or_create_keys(directory: Path | str) -> DeviceKeys:
    """The device's keys in ``directory``; created (private keys 0600, directory 0700) when absent."""
    if DeviceKeys.exists(directory):
        return DeviceKeys.load(directory)
    keys = DeviceKeys.generate()
    keys.save(directory)
    return keys


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def enrolment_body(keys: DeviceKeys, token: str, profile: str | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of an enrolment request.

    ``profile`` is the name of a profile the control plane knows (``"rpi-4"``) or a whole
    device-profile document (:class:`tinymlops.spec.DeviceProfile` as a dict).
    """
    if not isinstance(token, str) or not token:
        raise UsageError("an enrolment token is required (create one with `tinymlops device token create`)")
    if not isinstance(profile, str | Mapping) or not profile:
        raise UsageError("enrolment needs a device profile: a profile name or a profile document")
    return {
        "token": token,
        "signing_public": b64(keys.signing_public),
        "wrapping_public": b64(keys.wrapping_public),
        "profile": profile if isinstance(profile, str) else dict(profile),
    }


@dataclass(frozen=True)
class EnrolmentState:
    """What a device remembers after enrolling: where, as whom, with which profile and tags."""

    server_url: str
    device_id: str
    profile_name: str
    enrolled_at: str
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": ENROLMENT_STATE_VERSION,
            "server_url": self.server_url,
            "device_id": self.device_id,
            "profile_name": self.profile_name,
            "enrolled_at": self.enrolled_at,
            "tags": list(self.tags),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = ENROLMENT_FILE) -> EnrolmentState:
        if not isinstance(data, dict):
            raise InvalidInputError(f"{source}: expected a JSON object")
        fields = {"version", "server_url", "device_id", "profile_name", "enrolled_at", "tags"}
        if set(data) != fields:
            raise InvalidInputError(f"{source}: expected exactly the fields {', '.join(sorted(fields))}")
        if data["version"] != ENROLMENT_STATE_VERSION:
            raise InvalidInputError(f"{source}: unsupported version {data['version']!r}")
        for key in fields - {"version", "tags"}:
            if not isinstance(data[key], str) or not data[key]:
                raise InvalidInputError(f"{source}: field '{key}' must be a non-empty string")
        tags = data["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidInputError(f"{source}: field 'tags' must be a list of strings")
        return cls(data["server_url"], data["device_id"], data["profile_name"], data["enrolled_at"], tuple(tags))

    def save(self, directory: Path | str) -> Path:
        data = json.dumps(self.to_dict(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        return write_file_atomic(Path(directory) / ENROLMENT_FILE, data, mode=0o600)

    @classmethod
    def load(cls, directory: Path | str) -> EnrolmentState | None:
        """The saved state, or ``None`` when the device has not enrolled yet."""
        path = Path(directory) / ENROLMENT_FILE
        try:
            if path.stat().st_size > MAX_ENROLMENT_FILE_BYTES:
                raise InvalidInputError(f"{path}: far too large for an enrolment record")
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidInputError(f"{path}: not valid JSON") from None
        return cls.from_dict(data, str(path))


__all__ = ["ENROLMENT_FILE", "EnrolmentState", "enrolment_body", "load_or_create_keys"]

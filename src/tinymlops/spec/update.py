"""What the update repository tells a device about a bundle: the target namespace and the custom info.

The contract between :mod:`tinymlops.release` (which publishes) and :mod:`tinymlops.edge.updates`
(which checks and downloads); standard library only.

Target paths
    ``devices/<device_id>/bundle.tmlb``  the bundle meant for one device
    ``cohorts/<cohort>/bundle.tmlb``     the bundle meant for every device of a cohort

    A device asks for its own path first and then for its cohort's. Names are 1–64 characters
    of letters, digits, ``_ . -`` starting with a letter or digit (no ``/``, no ``..``). With
    consistent snapshots the file is served as ``targets/<scope>/<name>/<sha256>.bundle.tmlb``
    (:meth:`TargetPath.from_served_name` reads that back, so an HTTP layer can tell whose file
    is being asked for).

Custom target info (:class:`UpdateInfo`)
    Carried in the signed targets metadata next to the bundle's length and hash: which model,
    version and variant, the bundle id, its size, whether the release is urgent (may be
    downloaded on a metered network), the release it belongs to and when it was published.
    Like every signed document, unknown fields are kept as they are and only an unsupported
    major ``spec_version`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, get_bool, get_int, get_str

UPDATE_SPEC_MAJOR = 1
UPDATE_SPEC_VERSION = "1.0"
BUNDLE_FILENAME = "bundle.tmlb"
SCOPES = ("devices", "cohorts")
#: largest custom-info document accepted (it sits in every bin a device downloads)
MAX_INFO_FIELDS = 64

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = (
    "spec_version",
    "bundle_id",
    "model",
    "version",
    "variant",
    "ref",
    "target",
    "size",
    "urgent",
    "release_id",
    "published_at",
)


def check_name(name: object, what: str = "name") -> str:
    """A device id or cohort name as used in a target path (raises :class:`SpecError`)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(
            f"target path: bad {what} {name!r} (1-64 letters, digits, '_', '.', '-', starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class TargetPath:
    """``<scope>/<name>/bundle.tmlb`` with ``scope`` one of ``devices``, ``cohorts``."""

    scope: str
    name: str

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise SpecError(f"target path: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        check_name(self.name, "device id" if self.scope == "devices" else "cohort name")

    @property
    def path(self) -> str:
        return f"{self.scope}/{self.name}/{BUNDLE_FILENAME}"

    def __str__(self) -> str:
        return self.path

    @classmethod
    def device(cls, device_id: str) -> TargetPath:
        return cls("devices", device_id)

    @classmethod
    def cohort(cls, name: str) -> TargetPath:
        return cls("cohorts", name)

    @classmethod
    def parse(cls, path: object) -> TargetPath:
        """Read a target path strictly; anything but the layout above is a :class:`SpecError`."""
        if not isinstance(path, str):
            raise SpecError(f"target path must be a string, got {type(path).__name__}")
        parts = path.split("/")
        if len(parts) != 3 or parts[2] != BUNDLE_FILENAME:
            raise SpecError(f"target path {path!r} must look like devices/<id>/{BUNDLE_FILENAME} or cohorts/<name>/…")
        return cls(parts[0], parts[1])

    @classmethod
    def from_served_name(cls, name: object) -> tuple[TargetPath, str]:
        """``<scope>/<name>/<sha256>.bundle.tmlb`` (as served) -> (target path, sha256)."""
        if not isinstance(name, str):
            raise SpecError(f"served target name must be a string, got {type(name).__name__}")
        parts = name.split("/")
        digest, dot, rest = parts[-1].partition(".") if parts else ("", "", "")
        if len(parts) != 3 or not dot or rest != BUNDLE_FILENAME or not _HEX64.match(digest):
            raise SpecError(f"served target name {name!r} must look like devices/<id>/<sha256>.{BUNDLE_FILENAME}")
        return cls(parts[0], parts[1]), digest


def device_target_path(device_id: str) -> str:
    """``devices/<device_id>/bundle.tmlb``"""
    return TargetPath.device(device_id).path


def cohort_target_path(name: str) -> str:
    """``cohorts/<name>/bundle.tmlb``"""
    return TargetPath.cohort(name).path


@dataclass(frozen=True)
class UpdateInfo:
    """The custom info published with a bundle (signed as part of the targets metadata)."""

    bundle_id: str
    model: str
    version: int
    variant: str
    ref: str
    target: str
    size: int
    urgent: bool = False
    release_id: str | None = None
    published_at: str = ""
    spec_version: str = UPDATE_SPEC_VERSION
    #: fields this build does not know, kept as they were
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        doc = "update info"
        if not isinstance(self.bundle_id, str) or not _HEX32.match(self.bundle_id):
            raise SpecError(f"{doc}: bundle_id must be 32 lowercase hex digits, got {self.bundle_id!r}")
        for key in ("model", "ref", "target"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value or len(value) > 256:
                raise SpecError(f"{doc}: {key} must be a non-empty string of at most 256 characters, got {value!r}")
        if not isinstance(self.variant, str) or len(self.variant) > 256:
            raise SpecError(f"{doc}: variant must be a string of at most 256 characters, got {self.variant!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise SpecError(f"{doc}: version must be an integer >= 1, got {self.version!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise SpecError(f"{doc}: size must be an integer >= 0, got {self.size!r}")
        if not isinstance(self.urgent, bool):
            raise SpecError(f"{doc}: urgent must be true or false, got {self.urgent!r}")
        if self.release_id is not None and (
            not isinstance(self.release_id, str) or not self.release_id or len(self.release_id) > 128
        ):
            raise SpecError(f"{doc}: release_id must be null or a string of 1-128 characters, got {self.release_id!r}")
        if not isinstance(self.published_at, str):
            raise SpecError(f"{doc}: published_at must be a string, got {self.published_at!r}")
        if self.published_at:
            try:
                datetime.fromisoformat(self.published_at)
            except ValueError:
                raise SpecError(f"{doc}: published_at must be an ISO 8601 time, got {self.published_at!r}") from None

    @classmethod
    def from_dict(cls, data: Any) -> UpdateInfo:
        doc = "update info"
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
        if len(data) > MAX_INFO_FIELDS:
            raise SpecError(f"{doc}: {len(data)} fields is more than the {MAX_INFO_FIELDS} allowed")
        if not all(isinstance(k, str) for k in data):
            raise SpecError(f"{doc}: field names must be strings")
        spec_version = check_version(doc, data, UPDATE_SPEC_MAJOR)
        release_id = data.get("release_id")
        if release_id is not None:
            release_id = get_str(doc, data, "release_id")
        return cls(
            spec_version=spec_version,
            bundle_id=get_str(doc, data, "bundle_id"),
            model=get_str(doc, data, "model"),
            version=get_int(doc, data, "version", minimum=1),
            variant=get_str(doc, data, "variant", ""),
            ref=get_str(doc, data, "ref"),
            target=get_str(doc, data, "target"),
            size=get_int(doc, data, "size", minimum=0),
            urgent=get_bool(doc, data, "urgent", False),
            release_id=release_id,
            published_at=get_str(doc, data, "published_at", ""),
            unrecognized={k: v for k, v in data.items() if k not in _FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "spec_version": self.spec_version,
            "bundle_id": self.bundle_id,
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "ref": self.ref,
            "target": self.target,
            "size": self.size,
            "urgent": self.urgent,
            "release_id": self.release_id,
            "published_at": self.published_at,
        }


__all__ = [
    "BUNDLE_FILENAME",
    "SCOPES",
    "UPDATE_SPEC_MAJOR",
    "UPDATE_SPEC_VERSION",
    "TargetPath",
    "UpdateInfo",
    "check_name",
    "cohort_target_path",
    "device_target_path",
]

"""What a device's agent reports after each install attempt (``POST /v1/devices/me/installs``).

The document (an unsigned request: unknown fields are refused)::

    {
      "spec_version": "1.0",
      "status": "installed",            # installed | refused | failed | deferred | rolled_back | unchanged
      "reason": "…",                    # human-readable, at most 4096 characters
      "bundle_id": "<32 hex>" | null,   # the bundle the attempt was about
      "sha256": "<64 hex>" | null,      # its file SHA-256
      "slot": "a" | "b" | null,         # the slot it went to (or the active slot)
      "active_bundle_id": "<32 hex>" | null,  # what the device runs after the attempt
      "error": "KeyMismatchError" | null,     # the error type when it did not install
      "timings": {"verify_s": 0.01, …},       # step durations in seconds (at most 32)
      "at": 1718000000.0                      # the device's clock, seconds since the epoch
    }

The device builds it from :class:`tinymlops.edge.agent.install.InstallResult`
(:meth:`InstallReport.from_result_dict`); the server parses it strictly with :meth:`from_dict`.
Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, get_choice, get_number, get_str, reject_unknown

INSTALL_REPORT_MAJOR = 1
INSTALL_REPORT_VERSION = "1.0"
INSTALL_STATUSES = ("installed", "refused", "failed", "deferred", "rolled_back", "unchanged")
SLOTS = ("a", "b")
MAX_REASON_CHARS = 4096
MAX_TIMINGS = 32
MAX_ERROR_CHARS = 128

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TIMING_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ERROR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
_FIELDS = {
    "spec_version",
    "status",
    "reason",
    "bundle_id",
    "sha256",
    "slot",
    "active_bundle_id",
    "error",
    "timings",
    "at",
}
DOC = "install report"


def _optional(data: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise SpecError(f"{DOC}: field '{key}' must be null or {what}, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class InstallReport:
    status: str
    reason: str = ""
    bundle_id: str | None = None
    sha256: str | None = None
    slot: str | None = None
    active_bundle_id: str | None = None
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    at: float = 0.0
    spec_version: str = INSTALL_REPORT_VERSION

    def __post_init__(self) -> None:
        # one set of rules for documents and for direct construction
        InstallReport.from_dict(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> InstallReport:
        if not isinstance(data, Mapping):
            raise SpecError(f"{DOC}: must be an object, got {type(data).__name__}")
        reject_unknown(DOC, data, _FIELDS)
        version = check_version(DOC, data, INSTALL_REPORT_MAJOR)
        status = get_choice(DOC, data, "status", INSTALL_STATUSES)
        reason = get_str(DOC, data, "reason", "")
        if len(reason) > MAX_REASON_CHARS:
            raise SpecError(f"{DOC}: field 'reason' is longer than {MAX_REASON_CHARS} characters")
        slot = data.get("slot")
        if slot is not None and slot not in SLOTS:
            raise SpecError(f"{DOC}: field 'slot' must be null, 'a' or 'b', got {slot!r:.40}")
        timings = data.get("timings", {})
        if not isinstance(timings, Mapping) or len(timings) > MAX_TIMINGS:
            raise SpecError(f"{DOC}: field 'timings' must be an object of at most {MAX_TIMINGS} step durations")
        clean: dict[str, float] = {}
        for name, seconds in timings.items():
            if not isinstance(name, str) or not _TIMING_NAME.match(name):
                raise SpecError(f"{DOC}: timing name {name!r:.40} must be lower-case letters, digits and '_'")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
                raise SpecError(f"{DOC}: timing '{name}' must be a finite number of seconds, got {seconds!r:.40}")
            if seconds < 0:
                raise SpecError(f"{DOC}: timing '{name}' must be >= 0, got {seconds}")
            clean[name] = float(seconds)
        at = get_number(DOC, data, "at", 0.0, minimum=0.0)
        if not math.isfinite(at):
            raise SpecError(f"{DOC}: field 'at' must be a finite number of seconds")
        report = object.__new__(cls)
        for key, value in (
            ("spec_version", version),
            ("status", status),
            ("reason", reason),
            ("bundle_id", _optional(data, "bundle_id", _HEX32, "32 lower-case hex digits")),
            ("sha256", _optional(data, "sha256", _HEX64, "64 lower-case hex digits")),
            ("slot", slot),
            ("active_bundle_id", _optional(data, "active_bundle_id", _HEX32, "32 lower-case hex digits")),
            ("error", _optional(data, "error", _ERROR_NAME, "an error type name")),
            ("timings", clean),
            ("at", at),
        ):
            object.__setattr__(report, key, value)
        return report

    @classmethod
    def from_result_dict(cls, result: Mapping[str, Any]) -> InstallReport:
        """From ``InstallResult.to_dict()`` (the agent's own record): drops its ``event`` field and
        shortens an over-long reason instead of refusing it (a device never fails to report)."""
        doc = {k: v for k, v in result.items() if k in _FIELDS}
        reason = doc.get("reason") or ""
        if isinstance(reason, str) and len(reason) > MAX_REASON_CHARS:
            doc["reason"] = reason[: MAX_REASON_CHARS - 1] + "…"
        timings = doc.get("timings") or {}
        if isinstance(timings, Mapping):
            doc["timings"] = {k: v for k, v in list(timings.items())[:MAX_TIMINGS]}
        doc["spec_version"] = INSTALL_REPORT_VERSION
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "status": self.status,
            "reason": self.reason,
            "bundle_id": self.bundle_id,
            "sha256": self.sha256,
            "slot": self.slot,
            "active_bundle_id": self.active_bundle_id,
            "error": self.error,
            "timings": dict(self.timings),
            "at": self.at,
        }


__all__ = ["INSTALL_REPORT_VERSION", "INSTALL_STATUSES", "InstallReport"]

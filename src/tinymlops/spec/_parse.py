"""Strict field readers shared by the contract types (standard library only).

Each reader names the document and the field in its error, so a bad profile or manifest
says exactly what is wrong with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tinymlops.errors import SpecError, UnsupportedVersionError

_MISSING = object()

HEX16 = re.compile(r"^[0-9a-f]{16}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def reject_unknown(doc: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(f"{doc}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def get_str(doc: str, data: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = data.get(key, default)
    if value is _MISSING:
        raise SpecError(f"{doc}: missing required field '{key}'")
    if not isinstance(value, str) or (default is _MISSING and not value):
        raise SpecError(f"{doc}: field '{key}' must be a non-empty string, got {value!r}")
    return value


def get_number(
    doc: str,
    data: Mapping[str, Any],
    key: str,
    default: Any = _MISSING,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    value = data.get(key, default)
    if value is _MISSING:
        raise SpecError(f"{doc}: missing required field '{key}'")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{doc}: field '{key}' must be a number, got {value!r}")
    if value != value:  # NaN
        raise SpecError(f"{doc}: field '{key}' must not be NaN")
    if minimum is not None and value < minimum:
        raise SpecError(f"{doc}: field '{key}' must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SpecError(f"{doc}: field '{key}' must be <= {maximum}, got {value}")
    return float(value)


def get_int(doc: str, data: Mapping[str, Any], key: str, default: Any = _MISSING, *, minimum: int | None = None) -> int:
    value = data.get(key, default)
    if value is _MISSING:
        raise SpecError(f"{doc}: missing required field '{key}'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{doc}: field '{key}' must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{doc}: field '{key}' must be >= {minimum}, got {value}")
    return value


def get_bool(doc: str, data: Mapping[str, Any], key: str, default: Any = _MISSING) -> bool:
    value = data.get(key, default)
    if value is _MISSING:
        raise SpecError(f"{doc}: missing required field '{key}'")
    if not isinstance(value, bool):
        raise SpecError(f"{doc}: field '{key}' must be true or false, got {value!r}")
    return value


def get_str_list(doc: str, data: Mapping[str, Any], key: str, default: Any = _MISSING) -> list[str]:
    value = data.get(key, default)
    if value is _MISSING:
        raise SpecError(f"{doc}: missing required field '{key}'")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{doc}: field '{key}' must be a list of non-empty strings, got {value!r}")
    return list(value)


def get_choice(doc: str, data: Mapping[str, Any], key: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
    value = get_str(doc, data, key, default)
    if value not in choices:
        raise SpecError(f"{doc}: field '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def read_hex(doc: str, data: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    """A required string matching ``pattern`` (``what`` names the form in the error)."""
    if key not in data:
        raise SpecError(f"{doc}: missing required field '{key}'")
    value = data[key]
    if not isinstance(value, str) or not pattern.match(value):
        raise SpecError(f"{doc}: field '{key}' must be {what}, got {value!r:.80}")
    return value


def read_int(doc: str, data: Mapping[str, Any], key: str, *, low: int, high: int, nullable: bool = False) -> Any:
    """A required integer in ``[low, high]`` (not a bool); None too when ``nullable``."""
    if key not in data:
        raise SpecError(f"{doc}: missing required field '{key}'")
    value = data[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{doc}: field '{key}' must be an integer, got {value!r:.80}")
    if not low <= value <= high:
        raise SpecError(f"{doc}: field '{key}' must be within [{low}, {high}], got {value}")
    return value


def check_version(doc: str, data: Mapping[str, Any], supported_major: int) -> str:
    """Read ``spec_version`` ("MAJOR.MINOR"); refuse only an unsupported major version."""
    version = get_str(doc, data, "spec_version")
    major, _, minor = version.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise SpecError(f"{doc}: spec_version must look like '1.0', got {version!r}")
    if int(major) != supported_major:
        raise UnsupportedVersionError(
            f"{doc}: unsupported spec_version {version} (this build reads {supported_major}.x)"
        )
    return version

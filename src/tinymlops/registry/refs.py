"""Model references: ``NAME``, ``NAME:VERSION``, ``NAME:VERSION/VARIANT[/VARIANT…]``,
``NAME/VARIANT`` (latest version) and ``NAME:latest``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tinymlops.errors import ModelRefError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SEGMENT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None  # None = latest
    variant: str = ""  # "" = the base version itself

    def __str__(self) -> str:
        out = self.name if self.version is None else f"{self.name}:{self.version}"
        return f"{out}/{self.variant}" if self.variant else out


def format_ref(name: str, version: int, variant: str = "") -> str:
    return str(ModelRef(name, version, variant))


def parse_ref(text: str) -> ModelRef:
    if not isinstance(text, str) or not text.strip():
        raise ModelRefError("empty model reference; expected NAME[:VERSION][/VARIANT]")
    head, slash, variant = text.strip().partition("/")
    if slash and not variant:
        raise ModelRefError(f"empty variant in reference {text!r}; expected NAME[:VERSION]/VARIANT")
    name, sep, version_text = head.partition(":")
    if not NAME.match(name):
        raise ModelRefError(f"bad model name in reference {text!r}: use letters, digits, '.', '_' and '-' (max 128)")
    version: int | None = None
    if sep:
        if version_text == "latest":
            version = None
        elif version_text.isdigit() and int(version_text) >= 1:
            version = int(version_text)
        else:
            raise ModelRefError(f"bad version in reference {text!r}: expected a positive integer or 'latest'")
    if variant:
        for segment in variant.split("/"):
            if not SEGMENT.match(segment):
                raise ModelRefError(f"bad variant segment {segment!r} in reference {text!r}")
    return ModelRef(name, version, variant)

"""Context providers for the agent: where "the moment the device is in" comes from.

A provider is any ``Callable[[], DeviceContext]``. :class:`FileContext` reads a
:class:`~tinymlops.spec.DeviceContext` JSON document on every call (a simulated device, or a
helper daemon that writes what the OS reports); a missing file means the default context.
"""

from __future__ import annotations

from pathlib import Path

from tinymlops.errors import SpecError
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.manifest import parse_json_strict

MAX_CONTEXT_BYTES = 16 * 1024


class FileContext:
    def __init__(self, path: Path | str, default: DeviceContext | None = None) -> None:
        self.path = Path(path)
        self.default = default or DeviceContext()

    def __call__(self) -> DeviceContext:
        try:
            size = self.path.stat().st_size
            if size > MAX_CONTEXT_BYTES:
                raise SpecError(f"{self.path}: {size} bytes is far too large for a device context")
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.default
        except OSError as exc:
            raise SpecError(f"{self.path}: cannot read the device context: {exc.strerror or exc}") from exc
        return DeviceContext.from_dict(parse_json_strict(raw, f"device context {self.path}"))


__all__ = ["FileContext"]

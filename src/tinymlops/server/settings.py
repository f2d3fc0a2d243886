"""Server settings: where to listen and the limits that protect the control plane."""

from __future__ import annotations

from dataclasses import dataclass

from tinymlops.devices.request_auth import DEFAULT_WINDOW_S
from tinymlops.devices.service import DEFAULT_TOKEN_TTL_S
from tinymlops.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: request bodies larger than this are refused with 413 before they are read
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: accepted clock difference of signed device requests, seconds either way
    clock_window_s: int = DEFAULT_WINDOW_S
    #: lifetime of a device bearer token
    device_token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    #: re-sign the update repository's timestamp when a device asks for it and less than half of its
    #: validity is left (see tinymlops.release.service); off only to show what a frozen repository does
    tuf_refresh: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"port must be 0-65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise UsageError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if not 1 <= self.clock_window_s <= 3600:
            raise UsageError(f"clock_window_s must be 1-3600 seconds, got {self.clock_window_s}")
        if not 1 <= self.device_token_ttl_s <= 24 * 3600:
            raise UsageError(f"device_token_ttl_s must be 1 s to 24 h, got {self.device_token_ttl_s}")

"""Device context: the moment a device is in (battery, charging, network, user preference)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import (
    check_version,
    get_bool,
    get_choice,
    get_number,
    reject_unknown,
)

CONTEXT_SPEC_MAJOR = 1
NETWORKS = ("wifi", "cellular", "offline")
PREFERENCES = ("balanced", "accuracy", "latency", "energy", "download")

_FIELDS = {"spec_version", "battery", "charging", "network", "bandwidth_kbps", "prefer"}


@dataclass(frozen=True)
class DeviceContext:
    """``battery`` is the state of charge in [0, 1]; ``bandwidth_kbps`` None means unknown."""

    battery: float = 1.0
    charging: bool = False
    network: str = "wifi"
    bandwidth_kbps: float | None = None
    prefer: str = "balanced"
    spec_version: str = "1.0"

    def __post_init__(self) -> None:
        if not 0.0 <= self.battery <= 1.0 or self.battery != self.battery:
            raise SpecError(f"device context: battery must be within [0, 1], got {self.battery}")
        if self.network not in NETWORKS:
            raise SpecError(f"device context: network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        if self.prefer not in PREFERENCES:
            raise SpecError(f"device context: prefer must be one of {', '.join(PREFERENCES)}, got {self.prefer!r}")
        if self.bandwidth_kbps is not None and not self.bandwidth_kbps > 0:
            raise SpecError(f"device context: bandwidth_kbps must be > 0, got {self.bandwidth_kbps}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceContext:
        doc = "device context"
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
        reject_unknown(doc, data, _FIELDS)
        check_version(doc, data, CONTEXT_SPEC_MAJOR)
        bw = data.get("bandwidth_kbps")
        return cls(
            spec_version=str(data["spec_version"]),
            battery=get_number(doc, data, "battery", 1.0, minimum=0.0, maximum=1.0),
            charging=get_bool(doc, data, "charging", False),
            network=get_choice(doc, data, "network", NETWORKS, "wifi"),
            bandwidth_kbps=None if bw is None else get_number(doc, data, "bandwidth_kbps", minimum=1e-9),
            prefer=get_choice(doc, data, "prefer", PREFERENCES, "balanced"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spec_version": self.spec_version,
            "battery": self.battery,
            "charging": self.charging,
            "network": self.network,
            "prefer": self.prefer,
        }
        if self.bandwidth_kbps is not None:
            out["bandwidth_kbps"] = self.bandwidth_kbps
        return out

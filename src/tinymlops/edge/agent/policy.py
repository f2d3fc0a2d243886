"""When the device context allows a download: large bundles only on Wi-Fi unless urgent.

A pure function of the offer and the :class:`~tinymlops.spec.DeviceContext` (no I/O), so the
loop stays thin and the rule is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinymlops.edge.agent.source import OfferLike
from tinymlops.errors import UsageError
from tinymlops.spec.context import DeviceContext

#: bundles above this many bytes wait for Wi-Fi unless the offer is urgent
DEFAULT_LARGE_BUNDLE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class DownloadPolicy:
    large_bundle_bytes: int = DEFAULT_LARGE_BUNDLE_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.large_bundle_bytes, bool) or not isinstance(self.large_bundle_bytes, int):
            raise UsageError(f"large_bundle_bytes must be an integer, got {self.large_bundle_bytes!r}")
        if self.large_bundle_bytes < 0:
            raise UsageError(f"large_bundle_bytes must be >= 0, got {self.large_bundle_bytes}")

    def decide(self, offer: OfferLike, context: DeviceContext) -> Decision:
        if context.network == "offline":
            return Decision(False, "the device is offline")
        if offer.length > self.large_bundle_bytes and context.network != "wifi":
            if offer.urgent:
                return Decision(True, f"urgent: downloading {offer.length} bytes over {context.network}")
            return Decision(
                False,
                f"bundle is {offer.length} bytes (over {self.large_bundle_bytes}) and the device is on "
                f"{context.network}: waiting for Wi-Fi",
            )
        return Decision(True, f"{offer.length} bytes over {context.network}")


__all__ = ["DEFAULT_LARGE_BUNDLE_BYTES", "Decision", "DownloadPolicy"]

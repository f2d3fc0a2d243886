"""When a device may upload telemetry: the user's consent, the network, the charger, a daily byte cap.

:func:`decide` is a pure function of the :class:`UploadPolicy`, the device's
:class:`~tinymlops.spec.context.DeviceContext`, what it sent recently (``(at, bytes)`` pairs of the
compressed bodies it put on the wire) and the time. The rules, in the order they are checked (the
first that refuses is the reason given):

1. **consent** — without the user's consent nothing is uploaded (the default): windows wait in the
   upload store, merging into coarser ones, never dropped for this reason alone;
2. **network** — nothing goes while offline; with ``wifi_only`` (the default) nothing goes on a
   cellular link;
3. **charging** — with ``only_charging`` nothing goes on battery;
4. **bytes per day** — with ``max_bytes_per_day``, the bodies sent in the last 24 hours (a rolling
   window: ``now − 24 h < at``; a send stamped after ``now`` — the clock was set back — still
   counts) plus the next body must stay within the cap. The decision says how many bytes may still
   go (``allowance``) and, when the cap refuses, when enough of the past sends will have aged out
   (``retry_at``).

Standard library only (edge closure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tinymlops.errors import UsageError
from tinymlops.spec.context import DeviceContext

DAY_S = 86_400.0


@dataclass(frozen=True)
class UploadPolicy:
    """``consent``: the user agreed to telemetry leaving the device; ``wifi_only``: never on a
    cellular link; ``only_charging``: never on battery; ``max_bytes_per_day``: the compressed bytes
    any 24 hours may carry (None: no cap)."""

    consent: bool = False
    wifi_only: bool = True
    only_charging: bool = False
    max_bytes_per_day: int | None = None

    def __post_init__(self) -> None:
        for name in ("consent", "wifi_only", "only_charging"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"upload policy: {name} must be true or false, got {getattr(self, name)!r}")
        cap = self.max_bytes_per_day
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise UsageError(f"upload policy: max_bytes_per_day must be a positive integer or None, got {cap!r}")


@dataclass(frozen=True)
class UploadDecision:
    """``allowed`` or not and why; ``allowance``: the bytes that may still go now (None: no cap);
    ``retry_at``: when the byte cap will let ``batch_bytes`` go (only when the cap refused)."""

    allowed: bool
    reason: str
    allowance: int | None = None
    retry_at: float | None = None


def sent_within_day(sent: Iterable[tuple[float, int]], now: float) -> int:
    """The bytes of the sends in the 24 hours up to ``now`` (and any stamped after it)."""
    return sum(n for at, n in sent if at > now - DAY_S)


def decide(
    policy: UploadPolicy,
    context: DeviceContext,
    sent: Iterable[tuple[float, int]],
    now: float,
    *,
    batch_bytes: int = 0,
) -> UploadDecision:
    """May a body of ``batch_bytes`` (0: "anything at all?") go now? See the module doc."""
    if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
        raise UsageError(f"now must be a finite number of seconds, got {now!r}")
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) or batch_bytes < 0:
        raise UsageError(f"batch_bytes must be a non-negative integer, got {batch_bytes!r}")
    if not policy.consent:
        return UploadDecision(False, "no consent: the user has not agreed to upload telemetry")
    if context.network == "offline":
        return UploadDecision(False, "offline")
    if policy.wifi_only and context.network != "wifi":
        return UploadDecision(False, f"Wi-Fi only, and the device is on {context.network}")
    if policy.only_charging and not context.charging:
        return UploadDecision(False, "only while charging, and the device is on battery")
    cap = policy.max_bytes_per_day
    if cap is None:
        return UploadDecision(True, "allowed")
    recent = sorted((at, n) for at, n in sent if at > now - DAY_S)
    used = sent_within_day(recent, now)
    allowance = max(0, cap - used)
    need = max(batch_bytes, 1)
    if need <= allowance:
        return UploadDecision(True, "allowed", allowance=allowance)
    if need > cap:
        return UploadDecision(
            False, f"a body of {batch_bytes} bytes is more than the {cap} bytes a day allows", allowance=allowance
        )
    # the oldest sends age out first: the earliest moment the rest plus this body fit the cap
    retry_at = now
    freed = 0
    for at, n in recent:
        freed += n
        retry_at = at + DAY_S
        if used - freed + need <= cap:
            break
    return UploadDecision(
        False,
        f"{used} of the {cap} bytes a day allows were sent in the last 24 hours",
        allowance=allowance,
        retry_at=max(retry_at, now),
    )


__all__ = ["DAY_S", "UploadDecision", "UploadPolicy", "decide", "sent_within_day"]

"""Jittered, capped exponential back-off for the agent's polls (deterministic with a seeded RNG).

After the n-th consecutive failure the agent waits ``min(cap, base * factor**(n-1))`` scaled by a
random factor in ``[1 - jitter, 1]`` ("equal jitter": never zero, never above the cap), so a fleet
that lost its server does not come back in lock-step. A success resets the count. Healthy polls
are spread too: :meth:`Backoff.poll_delay` jitters the normal interval by ``±poll_jitter``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from tinymlops.errors import UsageError


@dataclass
class Backoff:
    base: float = 2.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.5
    poll_jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, repr=False)
    failures: int = 0

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UsageError(f"back-off {name} must be a positive number of seconds, got {value!r}")
        if not self.base <= self.cap:
            raise UsageError(f"back-off base ({self.base}s) must not exceed the cap ({self.cap}s)")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise UsageError(f"back-off factor must be >= 1, got {self.factor!r}")
        for name in ("jitter", "poll_jitter"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise UsageError(f"back-off {name} must be within [0, 1), got {value!r}")

    def ceiling(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures (0 for none)."""
        if failures <= 0:
            return 0.0
        if self.factor == 1:
            return self.base
        # base * factor**(n-1) overflows long after it passes the cap: stop at the cap
        steps = math.log(self.cap / self.base, self.factor)
        if failures - 1 >= steps:
            return self.cap
        return min(self.cap, self.base * self.factor ** (failures - 1))

    def failure(self) -> float:
        """Record one more failure; the seconds to wait before trying again."""
        self.failures += 1
        return self.ceiling(self.failures) * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.failures = 0

    def poll_delay(self, interval: float) -> float:
        """The normal polling interval, spread by ``±poll_jitter``."""
        return interval * (1.0 + self.poll_jitter * (2.0 * self.rng.random() - 1.0))


__all__ = ["Backoff"]

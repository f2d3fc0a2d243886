"""The telemetry policy a bundle's manifest sets (its ``[policies.telemetry]`` table).

::

    [policies.telemetry]
    enabled = true
    inputs = true              # profile inputs (sketches and moments; never raw inputs) — false: performance only
    max_features = 64          # per-element/per-channel features up to this many (else the projection only)
    projection_dims = 8        # the fixed random projection (0: none)
    projection_seed = 0
    sketch_k = 200             # KLL k (rank error ~1.65% at 200)
    outputs = "auto"           # "probabilities" | "logits" | "auto": what the class scores are
    output = "probabilities"   # the output holding class scores or labels (default: the first that fits)
    classes = 10               # the number of classes (needed for labels; fixes the histogram's length)
    energy_every = 1           # measure energy on one call in N (RAPL reads cost ~10 µs each)
    memory = "process"         # "process": the process's peak since start; "window": reset every window
    latency_window = 4096      # read by the runtime's LatencyRecorder only

    [policies.telemetry.privacy]
    classes_epsilon = 1.0      # k-ary randomized response on the class histogram (absent: exact)
    confidence_epsilon = 1.0   # discrete Laplace on the confidence histogram (absent: exact)
    window_epsilon = 4.0       # the device's caps: per window …
    day_epsilon = 24.0         # … and in any 24 hours

A manifest is signed release data: a value this runtime cannot honour is refused with a
:class:`~tinymlops.errors.SpecError` naming it (as :mod:`tinymlops.edge.middleware` refuses an
unknown policy) — silently ignoring, say, a privacy setting would send what the release promised
not to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError, UsageError
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.observe.sketches import DEFAULT_K, DEFAULT_MAX_FEATURES, DEFAULT_PROJECTION_DIMS, MAX_K, OUTPUT_KINDS
from tinymlops.spec.telemetry import MAX_CLASSES, MAX_FEATURES, MAX_PROJECTION_DIMS

MEMORY_MODES = ("process", "window")
DOC = "telemetry policy"
_KEYS = {
    "enabled",
    "inputs",
    "max_features",
    "projection_dims",
    "projection_seed",
    "sketch_k",
    "outputs",
    "output",
    "classes",
    "energy_every",
    "memory",
    "latency_window",
    "privacy",
}
_PRIVACY_KEYS = {"classes_epsilon", "confidence_epsilon", "window_epsilon", "day_epsilon"}


@dataclass(frozen=True)
class TelemetryPolicy:
    inputs: bool = True
    max_features: int = DEFAULT_MAX_FEATURES
    projection_dims: int = DEFAULT_PROJECTION_DIMS
    projection_seed: int = 0
    sketch_k: int = DEFAULT_K
    outputs: str = "auto"
    output: str | None = None
    classes: int | None = None
    energy_every: int = 1
    memory: str = "process"
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_features", 0, MAX_FEATURES - MAX_PROJECTION_DIMS),
            ("projection_dims", 0, MAX_PROJECTION_DIMS),
            ("projection_seed", 0, 2**63 - 1),
            ("sketch_k", 8, MAX_K),
            ("energy_every", 1, 1 << 20),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise SpecError(f"{DOC}: '{name}' must be an integer within [{low}, {high}], got {value!r}")
        if self.classes is not None and (
            isinstance(self.classes, bool) or not isinstance(self.classes, int) or not 1 <= self.classes <= MAX_CLASSES
        ):
            raise SpecError(f"{DOC}: 'classes' must be an integer within [1, {MAX_CLASSES}], got {self.classes!r}")
        if not isinstance(self.inputs, bool):
            raise SpecError(f"{DOC}: 'inputs' must be true or false, got {self.inputs!r}")
        if self.outputs not in OUTPUT_KINDS:
            raise SpecError(f"{DOC}: 'outputs' must be one of {', '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        if self.output is not None and (not isinstance(self.output, str) or not self.output):
            raise SpecError(f"{DOC}: 'output' must be a non-empty output name, got {self.output!r}")
        if self.memory not in MEMORY_MODES:
            raise SpecError(f"{DOC}: 'memory' must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> TelemetryPolicy:
        """From the manifest's telemetry table (unknown keys refused). ``latency_window`` (the key an
        older runtime's latency ring buffer read) is still accepted and checked, and has no other
        effect: the recorder's latency histogram is bounded whatever it sees."""
        if not isinstance(table, Mapping):
            raise SpecError(f"{DOC}: must be a table, got {type(table).__name__}")
        window = table.get("latency_window", 4096)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise SpecError(f"telemetry policy: latency_window must be an integer >= 1, got {window!r}")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise SpecError(f"{DOC}: this runtime does not implement {', '.join(unknown)}")
        privacy_table = table.get("privacy", {})
        if not isinstance(privacy_table, Mapping):
            raise SpecError(f"{DOC}: 'privacy' must be a table")
        unknown = sorted(set(privacy_table) - _PRIVACY_KEYS)
        if unknown:
            raise SpecError(f"{DOC}: privacy: this runtime does not implement {', '.join(unknown)}")
        try:
            privacy = PrivacyPolicy(**dict(privacy_table))
        except UsageError as exc:
            raise SpecError(f"{DOC}: privacy: {exc.message}") from exc
        values = {k: v for k, v in table.items() if k not in ("enabled", "latency_window", "privacy")}
        return cls(privacy=privacy, **values)


__all__ = ["MEMORY_MODES", "TelemetryPolicy"]

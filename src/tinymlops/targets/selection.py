"""Choose the best variant of a model for one device at one moment, and say why.

Only *measured* numbers decide (accuracy or agreement from evaluation, host p50 latency, file
size); nothing is assumed about a variant from its dtype. The steps:

1. **Eligibility.** Every candidate is checked against the target profile (``check``, by default
   :func:`~tinymlops.targets.compat.check_compatibility`). Incompatible candidates are out, with
   their issues as the explanation. No compatible candidate -> :class:`IncompatibleError`.

2. **Metrics** (per compatible candidate):

   * quality ``q`` = accuracy if measured, else agreement with the base model, else 0;
   * estimated latency on the target ``L = latency_ms / relative_compute`` (None if unmeasured);
   * energy per inference ``E = L/1000 × active_power_w`` joules (None if latency unmeasured);
   * download size ``S = size_bytes`` (time ``S·8/1000 / bandwidth_kbps`` seconds is reported).

3. **Normalisation** over the compatible set only (so it does not depend on the context), each to
   a "badness" in [0, 1] where 0 is the best candidate of the set:

   * ``n_q = (q_max − q) / q_max``  (0 when ``q_max`` = 0): relative shortfall from the best quality;
   * ``n_L = 1 − L_min / L``, ``n_E = 1 − E_min / E``, ``n_S = 1 − S_min / S`` (0 when equal to the
     minimum): the fraction of its cost that the best candidate saves. A candidate with no measured
     latency gets ``n_L = n_E = 1`` - ranked last on latency and energy, and told so.

   Under the constant-power model ``E ∝ L`` on one device, so ``n_E = n_L``; the energy weight
   is what makes battery matter.

4. **Score** (lower is better): ``score = w_q·n_q + w_L·n_L + w_E·n_E + w_S·n_S`` with

   * base weights from ``context.prefer`` (:data:`PREFERENCE_WEIGHTS`);
   * ``w_E = base_E × (1 + BATTERY_GAIN × (1 − battery))`` when the profile has a battery and the
     device is not charging, else ``base_E`` - a non-increasing function of the battery level;
     the other weights do not depend on the battery;
   * ``w_S = base_S × clamp(sqrt(REFERENCE_BANDWIDTH_KBPS / bandwidth), 1/4, 4)``, with
     bandwidth from the context or :data:`DEFAULT_BANDWIDTH_KBPS` per network; ``0`` offline
     (the device cannot download now; the choice is noted as such).

5. **Tie-break**, deterministic and independent of input order: lower energy per inference
   (unmeasured = highest), then smaller file, then ref name.

Scores are computed in exact rational arithmetic (:class:`fractions.Fraction`), so the ranking is
exactly the argmin of ``f + λ·g`` with ``λ = w_E``: lowering the battery (not charging) can only move
the choice to a variant with lower or equal energy per inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tinymlops.errors import IncompatibleError, UsageError
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.model_info import ModelInfo
from tinymlops.spec.profile import DeviceProfile
from tinymlops.targets.compat import CompatReport, check_compatibility

METRICS = ("quality", "latency", "energy", "download")

#: base weights per ``DeviceContext.prefer``, in METRICS order
PREFERENCE_WEIGHTS: Mapping[str, Mapping[str, float]] = {
    "balanced": {"quality": 10.0, "latency": 1.0, "energy": 0.5, "download": 0.25},
    "accuracy": {"quality": 40.0, "latency": 0.5, "energy": 0.25, "download": 0.1},
    "latency": {"quality": 10.0, "latency": 4.0, "energy": 0.5, "download": 0.25},
    "energy": {"quality": 10.0, "latency": 1.0, "energy": 4.0, "download": 0.25},
    "download": {"quality": 10.0, "latency": 1.0, "energy": 0.5, "download": 2.0},
}
#: energy weight multiplier at an empty battery is 1 + BATTERY_GAIN
BATTERY_GAIN = 3
DEFAULT_BANDWIDTH_KBPS: Mapping[str, float] = {"wifi": 20000.0, "cellular": 2000.0}
REFERENCE_BANDWIDTH_KBPS = 20000.0

Check = Callable[..., CompatReport]


@dataclass(frozen=True)
class Candidate:
    """One variant to choose from, with what was measured about it on the host.

    ``accuracy`` is top-1 against labels, ``agreement`` top-1 agreement with the base model
    (either may be None), ``latency_ms`` the host p50, ``peak_memory_bytes`` the host peak
    (reported only: a host runtime's memory does not transfer to another runtime).
    """

    ref: str
    info: ModelInfo
    size_bytes: int
    accuracy: float | None = None
    agreement: float | None = None
    latency_ms: float | None = None
    peak_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.ref:
            raise UsageError("candidate: ref must be a non-empty string")
        if self.size_bytes < 0:
            raise UsageError(f"candidate {self.ref}: size_bytes must be >= 0, got {self.size_bytes}")
        for name in ("accuracy", "agreement"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UsageError(f"candidate {self.ref}: {name} must be within [0, 1], got {value}")
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms) and self.latency_ms > 0):
            raise UsageError(f"candidate {self.ref}: latency_ms must be a positive number, got {self.latency_ms}")
        if self.peak_memory_bytes is not None and self.peak_memory_bytes < 0:
            raise UsageError(f"candidate {self.ref}: peak_memory_bytes must be >= 0")

    @property
    def quality(self) -> float:
        if self.accuracy is not None:
            return self.accuracy
        if self.agreement is not None:
            return self.agreement
        return 0.0

    @property
    def quality_source(self) -> str:
        if self.accuracy is not None:
            return "accuracy"
        return "agreement" if self.agreement is not None else "none"


@dataclass(frozen=True)
class Selection:
    """The chosen candidate, every compatible candidate's score and metrics, and why each other
    candidate lost (``explanations``). ``reason`` says why the chosen one won."""

    target: str
    chosen: Candidate
    reason: str
    scores: dict[str, float]
    metrics: dict[str, dict[str, Any]]
    weights: dict[str, float]
    explanations: dict[str, str]
    reports: dict[str, CompatReport]
    notes: list[str] = field(default_factory=list)

    @property
    def ranking(self) -> list[str]:
        """Compatible refs, best first."""
        return sorted(self.scores, key=lambda r: self.metrics[r]["rank"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "chosen": self.chosen.ref,
            "reason": self.reason,
            "score_basis": "lower is better: sum of weight × normalised badness (see weights, metrics)",
            "weights": dict(self.weights),
            "scores": dict(sorted(self.scores.items())),
            "metrics": {r: dict(m) for r, m in sorted(self.metrics.items())},
            "explanations": dict(sorted(self.explanations.items())),
            "compatibility": {r: rep.to_dict() for r, rep in sorted(self.reports.items())},
            "notes": list(self.notes),
        }


# --- weights ----------------------------------------------------------------------------------
def battery_factor(profile: DeviceProfile, context: DeviceContext) -> Fraction:
    """Multiplier of the energy weight: 1 + BATTERY_GAIN·(1 − battery), non-increasing in battery;
    1 when the device has no battery or is charging."""
    if profile.battery_wh is None or context.charging:
        return Fraction(1)
    return 1 + BATTERY_GAIN * (1 - Fraction(context.battery))


def bandwidth_kbps(context: DeviceContext) -> float | None:
    """The bandwidth to assume, None when offline."""
    if context.network == "offline":
        return None
    if context.bandwidth_kbps is not None:
        return context.bandwidth_kbps
    return DEFAULT_BANDWIDTH_KBPS[context.network]


def selection_weights(profile: DeviceProfile, context: DeviceContext) -> dict[str, Fraction]:
    """The weights for this device and moment (exact fractions)."""
    base = PREFERENCE_WEIGHTS[context.prefer]
    bw = bandwidth_kbps(context)
    if bw is None:
        download = Fraction(0)
    else:
        factor = min(4.0, max(0.25, math.sqrt(REFERENCE_BANDWIDTH_KBPS / bw)))
        download = Fraction(base["download"]) * Fraction(factor)
    return {
        "quality": Fraction(base["quality"]),
        "latency": Fraction(base["latency"]),
        "energy": Fraction(base["energy"]) * battery_factor(profile, context),
        "download": download,
    }


# --- scoring ----------------------------------------------------------------------------------
def _ratio_badness(value: Fraction | None, best: Fraction | None) -> Fraction:
    """1 − best/value (0 at the best, 1 for unmeasured)."""
    if value is None or best is None:
        return Fraction(1)
    if value == best:
        return Fraction(0)
    return 1 - best / value


@dataclass(frozen=True)
class _Scored:
    cand: Candidate
    score: Fraction
    norms: dict[str, Fraction]
    est_latency_ms: Fraction | None
    energy_j: Fraction | None

    def key(self) -> tuple[Any, ...]:
        energy_key = (0, self.energy_j) if self.energy_j is not None else (1, Fraction(0))
        return (self.score, energy_key, self.cand.size_bytes, self.cand.ref)


def _score(eligible: list[Candidate], profile: DeviceProfile, weights: Mapping[str, Fraction]) -> list[_Scored]:
    rc = Fraction(profile.relative_compute)
    power = Fraction(profile.active_power_w)
    lat = {c.ref: None if c.latency_ms is None else Fraction(c.latency_ms) / rc for c in eligible}
    energy = {r: None if v is None else v / 1000 * power for r, v in lat.items()}
    quality = {c.ref: Fraction(c.quality) for c in eligible}
    q_max = max(quality.values())
    known_lat = [v for v in lat.values() if v is not None]
    known_energy = [v for v in energy.values() if v is not None]
    l_min = min(known_lat) if known_lat else None
    e_min = min(known_energy) if known_energy else None
    s_min = min(Fraction(c.size_bytes) for c in eligible)
    out = []
    for c in eligible:
        norms = {
            "quality": (q_max - quality[c.ref]) / q_max if q_max > 0 else Fraction(0),
            "latency": _ratio_badness(lat[c.ref], l_min),
            "energy": _ratio_badness(energy[c.ref], e_min),
            "download": _ratio_badness(Fraction(c.size_bytes), s_min),
        }
        score = sum((weights[k] * norms[k] for k in METRICS), Fraction(0))
        out.append(_Scored(c, score, norms, lat[c.ref], energy[c.ref]))
    out.sort(key=_Scored.key)
    return out


# --- explanations -----------------------------------------------------------------------------
def _fmt_size(n: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _fmt_energy(j: float) -> str:
    if j >= 1:
        return f"{j:.3g} J"
    if j >= 1e-3:
        return f"{j * 1e3:.3g} mJ"
    return f"{j * 1e6:.3g} µJ"


def _compare(loser: _Scored, winner: _Scored) -> tuple[list[str], list[str]]:
    """(ways the loser is worse, ways it is better) than the winner."""
    worse: list[str] = []
    better: list[str] = []
    lc, wc = loser.cand, winner.cand
    if loser.est_latency_ms is None:
        if winner.est_latency_ms is not None:
            worse.append("has no measured latency (ranked last on latency and energy)")
    elif winner.est_latency_ms is None:
        better.append("has a measured latency where the winner has none")
    else:
        d = float(loser.est_latency_ms - winner.est_latency_ms)
        de = float(loser.energy_j - winner.energy_j)  # type: ignore[operator]
        if d > 0:
            worse.append(f"slower by {d:.3g} ms (est. on target)")
            worse.append(f"uses {_fmt_energy(de)} more energy per inference")
        elif d < 0:
            better.append(f"faster by {-d:.3g} ms (est. on target)")
            better.append(f"uses {_fmt_energy(-de)} less energy per inference")
    dq = lc.quality - wc.quality
    if dq != 0:
        basis = (
            lc.quality_source
            if lc.quality_source == wc.quality_source
            else (f"{lc.quality_source} vs {wc.quality_source}")
        )
        text = f"by {abs(dq) * 100:.2f} points ({basis})"
        (worse if dq < 0 else better).append(("less accurate " if dq < 0 else "more accurate ") + text)
    ds = lc.size_bytes - wc.size_bytes
    if ds > 0:
        worse.append(f"larger by {_fmt_size(ds)}")
    elif ds < 0:
        better.append(f"smaller by {_fmt_size(-ds)}")
    return worse, better


def _explain_loss(loser: _Scored, winner: _Scored) -> str:
    worse, better = _compare(loser, winner)
    if loser.score == winner.score:
        lk, wk = loser.key(), winner.key()
        if lk[1] != wk[1]:
            why = "higher energy per inference"
        elif lk[2] != wk[2]:
            why = "larger file"
        else:
            why = "ref name sorts after"
        head = f"tied on score {float(loser.score):.4f} with {winner.cand.ref}; lost the tie-break ({why})"
    else:
        head = f"scored {float(loser.score):.4f} vs {float(winner.score):.4f} for {winner.cand.ref} (lower is better)"
    parts = [head]
    if worse:
        parts.append(", ".join(worse))
    if better:
        parts.append("though " + ", ".join(better))
    return ": ".join(parts[:2]) + ("; " + parts[2] if len(parts) > 2 else "")


# --- the entry point --------------------------------------------------------------------------
def select_variant(
    candidates: Iterable[Candidate],
    profile: DeviceProfile,
    context: DeviceContext | None = None,
    *,
    check: Check = check_compatibility,
) -> Selection:
    """Pick the best compatible candidate for ``profile`` in ``context`` (see the module docstring
    for the exact formula). Raises :class:`IncompatibleError` when none is compatible."""
    context = context if context is not None else DeviceContext()
    cands = sorted(candidates, key=lambda c: c.ref)
    refs = [c.ref for c in cands]
    dupes = sorted({r for r in refs if refs.count(r) > 1})
    if dupes:
        raise UsageError(f"candidate refs must be unique; repeated: {', '.join(dupes)}")
    if not cands:
        raise IncompatibleError(
            f"no candidates to choose from for target {profile.name}", target=profile.name, candidates={}
        )

    reports = {c.ref: check(c.info, c.size_bytes, profile, host_latency_ms=c.latency_ms) for c in cands}
    eligible = [c for c in cands if reports[c.ref].compatible]
    if not eligible:
        lines = [f"  {c.ref}: " + "; ".join(i.message for i in reports[c.ref].issues) for c in cands]
        raise IncompatibleError(
            f"no candidate can run on target {profile.name}:\n" + "\n".join(lines),
            target=profile.name,
            candidates={c.ref: [i.to_dict() for i in reports[c.ref].issues] for c in cands},
        )

    weights = selection_weights(profile, context)
    ranked = _score(eligible, profile, weights)
    winner = ranked[0]
    bw = bandwidth_kbps(context)

    metrics: dict[str, dict[str, Any]] = {}
    for rank, s in enumerate(ranked):
        c = s.cand
        metrics[c.ref] = {
            "rank": rank,
            "quality": c.quality,
            "quality_source": c.quality_source,
            "host_latency_ms": c.latency_ms,
            "est_latency_ms": None if s.est_latency_ms is None else float(s.est_latency_ms),
            "energy_j": None if s.energy_j is None else float(s.energy_j),
            "size_bytes": c.size_bytes,
            "download_s": None if bw is None else c.size_bytes * 8 / 1000 / bw,
            "host_peak_memory_bytes": c.peak_memory_bytes,
            "norm": {k: float(v) for k, v in s.norms.items()},
            "contribution": {k: float(weights[k] * v) for k, v in s.norms.items()},
        }

    explanations: dict[str, str] = {}
    for s in ranked[1:]:
        explanations[s.cand.ref] = _explain_loss(s, winner)
    for c in cands:
        if not reports[c.ref].compatible:
            explanations[c.ref] = "incompatible: " + "; ".join(i.message for i in reports[c.ref].issues)

    notes = [
        "latency and energy are estimates: host p50 × 1/relative_compute, energy = that × active_power_w",
        "energy ∝ latency on one device under the constant-power model; battery raises the energy weight",
    ]
    if bw is None:
        notes.append("offline: download cost not weighed (the variant cannot be fetched until the device is online)")
    if profile.battery_wh is None:
        notes.append(f"{profile.name} has no battery: battery level ignored")
    elif context.charging:
        notes.append("charging: battery level ignored")
    else:
        factor = float(battery_factor(profile, context))
        notes.append(f"battery at {context.battery:.0%}, not charging: energy weight × {factor:.3g}")
    unmeasured = sorted(s.cand.ref for s in ranked if s.est_latency_ms is None)
    if unmeasured:
        notes.append(f"no measured latency for {', '.join(unmeasured)}: ranked last on latency and energy")
    sources = {s.cand.quality_source for s in ranked}
    if len(sources) > 1:
        notes.append(f"quality mixes {', '.join(sorted(sources))}: accuracy where measured, else agreement with base")

    if len(ranked) == 1:
        reason = f"the only compatible candidate ({len(cands) - 1} incompatible)"
    else:
        runner = ranked[1]
        reason = (
            f"best score {float(winner.score):.4f} (lower is better); runner-up {runner.cand.ref} at "
            f"{float(runner.score):.4f}"
        )

    return Selection(
        target=profile.name,
        chosen=winner.cand,
        reason=reason,
        scores={s.cand.ref: float(s.score) for s in ranked},
        metrics=metrics,
        weights={k: float(v) for k, v in weights.items()},
        explanations=explanations,
        reports=reports,
        notes=notes,
    )


__all__ = [
    "BATTERY_GAIN",
    "DEFAULT_BANDWIDTH_KBPS",
    "PREFERENCE_WEIGHTS",
    "REFERENCE_BANDWIDTH_KBPS",
    "Candidate",
    "Selection",
    "bandwidth_kbps",
    "battery_factor",
    "select_variant",
    "selection_weights",
]

"""Variant selection: unit tests for the explanations, property tests for the guarantees.

Properties (hypothesis):
(a) the choice is always compatible with the target;
(b) lowering the battery (not charging), all else fixed, never picks a variant with higher energy
    per inference;
(c) no compatible variant -> IncompatibleError;
(d) same inputs -> same choice, whatever the order of the candidates.
"""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinymlops.errors import IncompatibleError, UsageError
from tinymlops.spec import DeviceContext, DeviceProfile, ModelInfo, TensorSpec
from tinymlops.spec.context import NETWORKS, PREFERENCES
from tinymlops.targets import Candidate, check_compatibility, select_variant, selection_weights

ONNX_OPS = [
    "Conv",
    "Relu",
    "Gemm",
    "MatMul",
    "Add",
    "Erf",
    "HardSwish",
    "Softmax",
    "com.microsoft::FusedConv",
]
TFLITE_OPS = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "FLEX_ERF"]
DTYPES = ["float32", "float16", "int8", "uint8", "int32", "int64", "float64"]
MIB = 2**20

# per-test settings (not a global profile, which would leak into other test modules)
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- builders -------------------------------------------------------------------------------
def make_info(
    fmt: str = "onnx",
    ops: dict[str, int] | None = None,
    *,
    dtypes: tuple[str, ...] = ("float32",),
    opset: int | None = 17,
    peak: int = 1000,
    weights: int = 1000,
) -> ModelInfo:
    t = TensorSpec("x", (1, 4), "float32")
    return ModelInfo(
        format=fmt,
        inputs=(t,),
        outputs=(t,),
        operators=ops or {"Gemm": 1},
        parameters=10,
        macs=100,
        peak_activation_bytes=peak,
        weight_bytes=weights,
        weight_dtypes=dtypes,
        compute_dtypes=dtypes,
        opset=opset if fmt == "onnx" else None,
    )


def make_profile(**kw: object) -> DeviceProfile:
    base: dict[str, object] = dict(
        name="phone",
        device_class="phone",
        backends=("onnxruntime", "litert"),
        dtypes=("fp32", "fp16", "int8"),
        ram_mb=512.0,
        storage_mb=512.0,
        relative_compute=0.5,
        active_power_w=3.0,
        idle_power_w=0.1,
        battery_wh=15.0,
    )
    base.update(kw)
    return DeviceProfile(**base)  # type: ignore[arg-type]


def cand(
    ref: str,
    *,
    acc: float | None = 0.9,
    agree: float | None = None,
    lat: float | None = 10.0,
    size: int = 100_000,
    info: ModelInfo | None = None,
) -> Candidate:
    return Candidate(
        ref=ref,
        info=info or make_info(),
        size_bytes=size,
        accuracy=acc,
        agreement=agree,
        latency_ms=lat,
        peak_memory_bytes=None,
    )


def energy(c: Candidate, p: DeviceProfile) -> Fraction | float:
    if c.latency_ms is None:
        return math.inf
    return Fraction(c.latency_ms) / Fraction(p.relative_compute) * Fraction(p.active_power_w)


# --- unit tests -----------------------------------------------------------------------------
def test_faster_equal_quality_wins_and_every_loser_is_explained() -> None:
    cands = [
        cand("fp32", lat=10, size=400_000),
        cand("int8", lat=5, size=100_000),
        cand("mcu-only", info=make_info("tflite", {"FLEX_ERF": 1}), lat=1),
    ]
    sel = select_variant(cands, make_profile(backends=("onnxruntime",)), DeviceContext())
    assert sel.chosen.ref == "int8"
    assert set(sel.explanations) == {"fp32", "mcu-only"}
    assert "slower by" in sel.explanations["fp32"] and "larger by" in sel.explanations["fp32"]
    assert sel.explanations["mcu-only"].startswith("incompatible:") and "litert" in sel.explanations["mcu-only"]
    assert sel.scores["int8"] < sel.scores["fp32"] and "mcu-only" not in sel.scores
    assert sel.ranking == ["int8", "fp32"]
    json.dumps(sel.to_dict())


def test_int8_is_not_assumed_faster() -> None:
    """Only measured numbers count: an int8 variant measured slower loses on latency."""
    fp32 = cand("fp32", lat=4.0, size=400_000, info=make_info(dtypes=("float32",)))
    int8 = cand("int8", lat=9.0, size=100_000, info=make_info(dtypes=("int8", "int32")))
    sel = select_variant([fp32, int8], make_profile(), DeviceContext(prefer="latency"))
    assert sel.chosen.ref == "fp32"
    assert "slower by" in sel.explanations["int8"] and "smaller by" in sel.explanations["int8"]


def test_battery_shifts_choice_to_lower_energy() -> None:
    accurate = cand("accurate", acc=0.92, lat=10.0, size=100_000)
    frugal = cand("frugal", acc=0.88, lat=8.0, size=100_000)
    p = make_profile()
    full = select_variant([accurate, frugal], p, DeviceContext(battery=1.0))
    empty = select_variant([accurate, frugal], p, DeviceContext(battery=0.05))
    charging = select_variant([accurate, frugal], p, DeviceContext(battery=0.05, charging=True))
    assert full.chosen.ref == "accurate" and empty.chosen.ref == "frugal" and charging.chosen.ref == "accurate"
    assert "slower by" in empty.explanations["accurate"] and "more accurate" in empty.explanations["accurate"]
    assert any("battery" in n for n in empty.notes) and any("charging" in n for n in charging.notes)
    # a mains-powered device ignores the battery level entirely
    mains = make_profile(battery_wh=None)
    assert select_variant([accurate, frugal], mains, DeviceContext(battery=0.05)).chosen.ref == "accurate"


def test_unmeasured_latency_ranks_last_and_says_so() -> None:
    sel = select_variant([cand("measured", lat=50.0), cand("unmeasured", lat=None)], make_profile(), DeviceContext())
    assert sel.chosen.ref == "measured"
    assert "no measured latency" in sel.explanations["unmeasured"]
    assert sel.metrics["unmeasured"]["est_latency_ms"] is None and sel.metrics["unmeasured"]["energy_j"] is None
    assert any("no measured latency" in n for n in sel.notes)


def test_quality_falls_back_to_agreement_then_zero() -> None:
    a = cand("a", acc=None, agree=0.99, lat=10)
    b = cand("b", acc=None, agree=None, lat=10)
    sel = select_variant([a, b], make_profile(), DeviceContext())
    assert sel.chosen.ref == "a" and sel.metrics["a"]["quality_source"] == "agreement"
    assert "less accurate" in sel.explanations["b"]


def test_offline_ignores_download_and_cellular_weighs_it_more() -> None:
    p = make_profile()
    offline = selection_weights(p, DeviceContext(network="offline"))
    wifi = selection_weights(p, DeviceContext(network="wifi"))
    cell = selection_weights(p, DeviceContext(network="cellular"))
    assert offline["download"] == 0 < wifi["download"] < cell["download"]
    small, big = cand("small", lat=10.0, size=10_000), cand("big", lat=10.0, size=10_000_000)
    sel = select_variant([small, big], p, DeviceContext(network="offline"))
    assert any("offline" in n for n in sel.notes) and sel.metrics["big"]["download_s"] is None
    assert sel.scores["small"] == sel.scores["big"]  # download not weighed: tie ...
    assert sel.chosen.ref == "small" and "tie-break" in sel.explanations["big"]  # ... broken by size


def test_tie_break_energy_then_size_then_ref() -> None:
    p = make_profile(active_power_w=0.0, idle_power_w=0.0)  # zero power: all energies equal
    # identical measurements: ref decides
    sel = select_variant([cand("b"), cand("a")], p, DeviceContext(network="offline"))
    assert sel.chosen.ref == "a" and "ref name" in sel.explanations["b"]


def test_no_compatible_candidate_lists_every_candidates_issues() -> None:
    p = make_profile(backends=("litert",), dtypes=("int8",))
    cands = [cand("onnx-fp32"), cand("tfl-fp16", info=make_info("tflite", {"ADD": 1}, dtypes=("float16",)))]
    with pytest.raises(IncompatibleError) as err:
        select_variant(cands, p, DeviceContext())
    text = str(err.value)
    assert "onnx-fp32" in text and "tfl-fp16" in text and "fp16" in text and "onnxruntime" in text
    assert set(err.value.details["candidates"]) == {"onnx-fp32", "tfl-fp16"}
    with pytest.raises(IncompatibleError):
        select_variant([], p, DeviceContext())


def test_duplicate_refs_and_bad_candidates_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unique"):
        select_variant([cand("a"), cand("a")], make_profile(), DeviceContext())
    with pytest.raises(UsageError):
        cand("x", acc=1.5)
    with pytest.raises(UsageError):
        cand("x", lat=0.0)


# --- strategies -----------------------------------------------------------------------------
def _info_pool() -> list[ModelInfo]:
    """A fixed, varied pool of model facts (formats, ops, dtypes, memory) to draw candidates from;
    drawing from a pool keeps data generation cheap."""
    rng = random.Random(20240601)
    pool = []
    for i in range(48):
        fmt = "onnx" if i % 2 == 0 else "tflite"
        ops_pool = ONNX_OPS if fmt == "onnx" else TFLITE_OPS
        ops = {op: rng.randint(1, 5) for op in rng.sample(ops_pool, rng.randint(1, 4))}
        dtypes = tuple(rng.sample(DTYPES, rng.randint(1, 3)))
        pool.append(
            make_info(
                fmt,
                ops,
                dtypes=dtypes,
                opset=rng.randint(7, 21),
                peak=rng.randint(0, 4 * MIB),
                weights=rng.randint(0, 4 * MIB),
            )
        )
    # and some that run almost anywhere
    pool += [
        make_info("onnx", {"Gemm": 1, "Relu": 1}, dtypes=("float32",), peak=1000, weights=1000),
        make_info("onnx", {"Conv": 2}, dtypes=("int8", "int32"), peak=500, weights=300),
        make_info("tflite", {"FULLY_CONNECTED": 1}, dtypes=("int8", "int32"), peak=500, weights=300),
        make_info("tflite", {"CONV_2D": 3, "SOFTMAX": 1}, dtypes=("float32",), peak=9000, weights=4000),
    ]
    return pool


INFO_POOL = _info_pool()
model_infos = st.sampled_from(INFO_POOL)


@st.composite
def candidate_lists(draw: st.DrawFn, min_size: int = 1) -> list[Candidate]:
    n = draw(st.integers(min_size, 6))
    out = []
    for i in range(n):
        out.append(
            Candidate(
                ref=f"v{i}",
                info=draw(model_infos),
                # small sets of values as well as arbitrary ones, so ties and tie-breaks get exercised
                size_bytes=draw(st.sampled_from([0, 1000, 250_000]) | st.integers(0, 8 * MIB)),
                accuracy=draw(st.none() | st.sampled_from([0.0, 0.8, 0.9]) | st.floats(0, 1)),
                agreement=draw(st.none() | st.sampled_from([0.95, 1.0]) | st.floats(0, 1)),
                latency_ms=draw(st.none() | st.sampled_from([0.5, 2.0, 10.0]) | st.floats(1e-3, 1e4)),
                peak_memory_bytes=draw(st.none() | st.integers(0, 8 * MIB)),
            )
        )
    return out


@st.composite
def profiles(draw: st.DrawFn, battery: bool | None = None) -> DeviceProfile:
    permissive = draw(st.booleans())
    has_battery = draw(st.booleans()) if battery is None else battery
    if permissive:  # everything fits: lots of compatible candidates
        return make_profile(
            relative_compute=draw(st.floats(1e-3, 2.0)),
            active_power_w=draw(st.sampled_from([0.0, 0.3, 3.0, 15.0])),
            idle_power_w=0.0,
            ram_mb=64.0,
            storage_mb=64.0,
            max_opset=21,
            battery_wh=15.0 if has_battery else None,
        )
    backends = tuple(draw(st.lists(st.sampled_from(["onnxruntime", "litert"]), min_size=1, unique=True)))
    dtypes = tuple(draw(st.lists(st.sampled_from(["fp32", "fp16", "int8"]), min_size=1, unique=True)))
    onnx_ops = draw(st.none() | st.lists(st.sampled_from(ONNX_OPS), unique=True).map(tuple))
    table = None if onnx_ops is not None else draw(st.none() | st.sampled_from(["nnapi", "coreml-mlprogram"]))
    lo = draw(st.integers(7, 17))
    return make_profile(
        backends=backends,
        dtypes=dtypes,
        onnx_operators=onnx_ops,
        onnx_operator_table=table,
        tflite_operators=draw(st.none() | st.lists(st.sampled_from(TFLITE_OPS), unique=True).map(tuple)),
        min_opset=lo,
        max_opset=draw(st.integers(lo, 21)),
        ram_mb=draw(st.floats(0.5, 16.0)),
        storage_mb=draw(st.floats(0.5, 16.0)),
        relative_compute=draw(st.floats(1e-3, 2.0)),
        active_power_w=draw(st.floats(0.0, 20.0)),
        idle_power_w=0.0,
        battery_wh=15.0 if has_battery else None,
    )


contexts = st.builds(
    DeviceContext,
    battery=st.floats(0, 1),
    charging=st.booleans(),
    network=st.sampled_from(NETWORKS),
    bandwidth_kbps=st.none() | st.floats(1.0, 1e6),
    prefer=st.sampled_from(PREFERENCES),
)


def _compatible(c: Candidate, p: DeviceProfile) -> bool:
    return check_compatibility(c.info, c.size_bytes, p, host_latency_ms=c.latency_ms).compatible


# --- properties -----------------------------------------------------------------------------
@PROPERTY
@given(candidate_lists(min_size=0), profiles(), contexts)
def test_choice_is_compatible_or_incompatible_error(
    cands: list[Candidate], p: DeviceProfile, ctx: DeviceContext
) -> None:
    """(a) and (c)."""
    if not any(_compatible(c, p) for c in cands):
        with pytest.raises(IncompatibleError):
            select_variant(cands, p, ctx)
        return
    sel = select_variant(cands, p, ctx)
    assert sel.chosen in cands and _compatible(sel.chosen, p)
    # every other candidate is explained; scores only for compatible ones; chosen has the best score
    assert set(sel.explanations) == {c.ref for c in cands} - {sel.chosen.ref}
    assert set(sel.scores) == {c.ref for c in cands if _compatible(c, p)}
    assert sel.scores[sel.chosen.ref] == min(sel.scores.values())


@PROPERTY
@given(candidate_lists(), profiles(battery=True), contexts, st.floats(0, 1), st.floats(0, 1))
def test_lower_battery_never_picks_higher_energy(
    cands: list[Candidate], p: DeviceProfile, ctx: DeviceContext, b1: float, b2: float
) -> None:
    """(b)."""
    assume(any(_compatible(c, p) for c in cands))
    low, high = sorted((b1, b2))
    at_low = select_variant(cands, p, DeviceContext(**{**ctx.__dict__, "battery": low, "charging": False}))
    at_high = select_variant(cands, p, DeviceContext(**{**ctx.__dict__, "battery": high, "charging": False}))
    assert energy(at_low.chosen, p) <= energy(at_high.chosen, p)
    # and the energy weight is the only one that moved
    w_low = selection_weights(
        p,
        DeviceContext(battery=low, prefer=ctx.prefer, network=ctx.network, bandwidth_kbps=ctx.bandwidth_kbps),
    )
    w_high = selection_weights(
        p,
        DeviceContext(battery=high, prefer=ctx.prefer, network=ctx.network, bandwidth_kbps=ctx.bandwidth_kbps),
    )
    assert w_low["energy"] >= w_high["energy"]
    assert all(w_low[k] == w_high[k] for k in ("quality", "latency", "download"))


@PROPERTY
@given(candidate_lists(), profiles(), contexts, st.floats(0, 1))
def test_charging_makes_battery_irrelevant(
    cands: list[Candidate], p: DeviceProfile, ctx: DeviceContext, other: float
) -> None:
    assume(any(_compatible(c, p) for c in cands))
    a = select_variant(cands, p, DeviceContext(**{**ctx.__dict__, "charging": True}))
    b = select_variant(cands, p, DeviceContext(**{**ctx.__dict__, "charging": True, "battery": other}))
    assert a.chosen.ref == b.chosen.ref and a.scores == b.scores


@PROPERTY
@given(candidate_lists(), profiles(), contexts, st.randoms(use_true_random=False))
def test_deterministic_and_order_independent(
    cands: list[Candidate], p: DeviceProfile, ctx: DeviceContext, rnd: object
) -> None:
    """(d)."""
    assume(any(_compatible(c, p) for c in cands))
    first = select_variant(cands, p, ctx)
    shuffled = list(cands)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    second = select_variant(shuffled, p, ctx)
    assert first.chosen == second.chosen
    assert first.to_dict() == second.to_dict()
    assert select_variant(cands, p, ctx).to_dict() == first.to_dict()

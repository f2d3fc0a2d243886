"""WebAssembly stages: the example modules against NumPy, the sandbox's limits, and the ABI checks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinymlops.edge.backends import open_backend
from tinymlops.errors import PipelineError, StageError
from tinymlops.pipeline import (
    BUILTIN_MODULES,
    WasmLimits,
    WasmStep,
    build_pipeline,
    builtin_module,
    validate_pipeline,
    wat_to_wasm,
)
from tinymlops.spec import PipelineSpec, TensorSpec

SIGS = {
    "main": ((TensorSpec("input", ("batch", 1, 8, 8), "float32"),), (TensorSpec("output", ("batch", 10), "float32"),))
}

# A minimal allocator shared by the adversarial modules below (never fails, never grows).
_ALLOC = '(func (export "alloc") (param i32) (result i32) i32.const 1024)'

LOOP_FOREVER = f"""
(module
  (memory (export "memory") 1)
  {_ALLOC}
  (func (export "process") (param i32 i32) (result i32)
    (loop $forever (br $forever))
    i32.const 0))
"""

# Grows memory one page at a time until refused, then writes past the end (traps).
GROW_THEN_TRAP = f"""
(module
  (memory (export "memory") 1)
  {_ALLOC}
  (func (export "process") (param i32 i32) (result i32)
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (i32.store (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))
    i32.const 0))
"""

# Keeps asking for more memory, ignoring refusals, until the fuel runs out.
GROW_FOREVER = f"""
(module
  (memory (export "memory") 1)
  {_ALLOC}
  (func (export "process") (param i32 i32) (result i32)
    (loop $more (drop (memory.grow (i32.const 16))) (br $more))
    i32.const 0))
"""

IMPORTS_WASI = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "process") (param i32 i32) (result i32) i32.const 0))
"""

IMPORTS_HOST_FUNCTION = """
(module
  (import "env" "now" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "process") (param i32 i32) (result i32) i32.const 0))
"""

# Traps (unreachable) when the first value is negative, else doubles every value; status 7 on NaN.
PICKY = f"""
(module
  (memory (export "memory") 1)
  {_ALLOC}
  (func (export "process") (param $p i32) (param $n i32) (result i32)
    (local $end i32)
    (if (f32.lt (f32.load (local.get $p)) (f32.const 0)) (then unreachable))
    (if (f32.ne (f32.load (local.get $p)) (f32.load (local.get $p))) (then (return (i32.const 7))))
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (f32.store (local.get $p) (f32.mul (f32.load (local.get $p)) (f32.const 2)))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $l)))
    i32.const 0))
"""


# Call k overwrites all of its memory above 1024 (0x7f bytes), then fills the buffer with k: a
# returned array that still pointed into linear memory would change under the caller.
REWRITES_ITS_MEMORY = f"""
(module
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  {_ALLOC}
  (func (export "process") (param $p i32) (param $n i32) (result i32)
    (local $end i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (memory.fill (i32.const 1024) (i32.const 0x7f)
      (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 1024)))
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (f32.store (local.get $p) (f32.convert_i32_u (global.get $calls)))
      (local.set $p (i32.add (local.get $p) (i32.const 4)))
      (br $l)))
    i32.const 0))
"""


def pipeline_spec(stage_params: dict, name: str | None = None) -> PipelineSpec:
    stage = {"op": "wasm", "params": stage_params}
    if name:
        stage["name"] = name
    return PipelineSpec.from_dict({"spec_version": "1.0", "pre": [stage]})


# --- the example modules ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1_000, 100_000])
def test_wasm_normalize_equals_numpy(n: int) -> None:
    x = np.random.default_rng(n).normal(3.0, 2.0, n).astype(np.float32)
    step = WasmStep(builtin_module("normalize"), label="normalize", params=[3.0, 2.0])
    y = step(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    # bit-exact with the same float32 arithmetic in NumPy …
    np.testing.assert_array_equal(y, (x - np.float32(3.0)) * (np.float32(1.0) / np.float32(2.0)))
    # … and equal (to rounding) to the built-in normalize op
    np.testing.assert_allclose(y, (x - 3.0) / 2.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
def test_fast_and_public_call_paths_agree(fast: bool) -> None:
    x = np.random.default_rng(1).normal(0, 1, 1003).astype(np.float32)
    step = WasmStep(builtin_module("normalize"), label="normalize", params=[0.5, 0.25], fast=fast)
    assert step.fast is fast
    np.testing.assert_array_equal(step(x), (x - np.float32(0.5)) * np.float32(4.0))


def test_wasm_clip_equals_numpy() -> None:
    x = np.random.default_rng(2).normal(0, 3, (7, 13)).astype(np.float32)
    x[0, 0] = np.nan
    y = WasmStep(builtin_module("clip"), label="clip", params=[-1.0, 2.5])(x)
    np.testing.assert_array_equal(y, np.clip(x, -1.0, 2.5))


# Lengths around the loops' strides (64 values per unrolled iteration, 4 per vector, 1 in the
# tail) and values including NaN, ±inf, ±0 and subnormals: bit-exact with NumPy's float32 maths.
_FLOATS = hnp.arrays(
    np.float32,
    st.integers(0, 200),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
)
_NORMALIZE = WasmStep(builtin_module("normalize"), label="normalize", params=[0.75, 3.0])
_CLIP = WasmStep(builtin_module("clip"), label="clip", params=[-2.0, 0.5])


@settings(max_examples=300, deadline=None)
@given(_FLOATS)
def test_normalize_is_bit_exact_for_any_length_and_values(x: np.ndarray) -> None:
    with np.errstate(invalid="ignore", over="ignore"):
        expected = (x - np.float32(0.75)) * (np.float32(1.0) / np.float32(3.0))
    np.testing.assert_array_equal(_NORMALIZE(x), expected)


@settings(max_examples=300, deadline=None)
@given(_FLOATS)
def test_clip_is_bit_exact_for_any_length_and_values(x: np.ndarray) -> None:
    np.testing.assert_array_equal(_CLIP(x), np.clip(x, np.float32(-2.0), np.float32(0.5)))


@pytest.mark.parametrize("n", [31, 32, 33, 35, 36, 63, 64, 65, 127, 128, 129, 99_999, 100_007])
def test_normalize_at_the_loop_boundaries(n: int) -> None:
    x = np.random.default_rng(n).normal(0, 1, n).astype(np.float32)
    y = _NORMALIZE(x)
    np.testing.assert_array_equal(y, (x - np.float32(0.75)) * (np.float32(1.0) / np.float32(3.0)))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=9),
        elements=st.integers(0, 100),
    ),
    st.sampled_from(["as is", "transposed", "every other"]),
)
def test_any_dtype_and_layout_is_computed_as_contiguous_float32(x: np.ndarray, layout: str) -> None:
    if layout == "transposed":
        x = x.T
    elif layout == "every other" and x.ndim:
        x = x[::2]
    y = _NORMALIZE(x)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, _NORMALIZE(np.ascontiguousarray(x, dtype=np.float32)))


def test_a_returned_result_is_never_changed_by_later_calls() -> None:
    step = WasmStep(wat_to_wasm(REWRITES_ITS_MEMORY), label="rewriter")
    first = step(np.zeros(1000, np.float32))
    np.testing.assert_array_equal(first, np.full(1000, 1.0, np.float32))
    first[:] = -5.0  # the caller owns its copy: writing to it reaches no module
    second = step(np.zeros(1000, np.float32))
    np.testing.assert_array_equal(second, np.full(1000, 2.0, np.float32))
    np.testing.assert_array_equal(first, np.full(1000, -5.0, np.float32))


def test_buffers_grow_and_shapes_survive() -> None:
    step = WasmStep(builtin_module("normalize"), label="normalize", params=[1.0, 4.0])
    rng = np.random.default_rng(3)
    for shape in [(3,), (2, 500), (100_000,), (4, 1, 8, 8), (0,), (1,)]:
        x = rng.normal(0, 1, shape)  # float64 in: the stage computes in float32
        y = step(x)
        assert y.shape == shape and y.dtype == np.float32
        np.testing.assert_array_equal(y, (x.astype(np.float32) - np.float32(1)) * np.float32(0.25))


def test_fuel_is_reset_before_every_call() -> None:
    # 100 values need a few hundred units of fuel; 1000 calls would need far more than one budget
    step = WasmStep(
        builtin_module("normalize"), label="normalize", params=[0, 1], limits=WasmLimits(fuel=2_000, fuel_per_value=5)
    )
    x = np.ones(100, np.float32)
    for _ in range(1000):
        step(x)


def test_a_step_is_safe_to_share_between_threads() -> None:
    step = WasmStep(builtin_module("normalize"), label="normalize", params=[0.0, 0.5])
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            x = rng.normal(0, 1, int(rng.integers(1, 3000))).astype(np.float32)
            if not np.array_equal(step(x), x * np.float32(2)):
                errors.append("mismatch")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_builtin_modules_are_built_from_packaged_wat(tmp_path: Path) -> None:
    assert set(BUILTIN_MODULES) == {"normalize", "clip"}
    wasm = builtin_module("normalize")
    assert wasm[:4] == b"\x00asm"
    source = Path(__file__).resolve().parents[2] / "src/tinymlops/pipeline/wasm_modules/normalize.wat"
    assert wat_to_wasm(source) == wasm
    with pytest.raises(PipelineError, match="no built-in WebAssembly module 'nope'"):
        builtin_module("nope")
    with pytest.raises(PipelineError, match="WebAssembly text does not compile"):
        wat_to_wasm("(module (func (export ")


# --- the sandbox -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
def test_a_module_that_loops_forever_is_stopped(fast: bool) -> None:
    limits = WasmLimits(fuel=200_000, fuel_per_value=10)
    step = WasmStep(wat_to_wasm(LOOP_FOREVER), label="spin", limits=limits, fast=fast)
    for _ in range(2):  # and again on the fresh instance: the bound is the same every time
        t0 = time.perf_counter()
        with pytest.raises(StageError, match=r"WebAssembly stage 'spin' ran out of fuel \(limit 200100\)") as info:
            step(np.zeros(10, np.float32))
        assert time.perf_counter() - t0 < 5
        assert info.value.details["reason"] == "fuel"


def test_an_infinite_loop_in_a_bundle_pipeline_is_a_stage_error(digits_model) -> None:
    backend = open_backend(digits_model.onnx)
    pipe = build_pipeline(
        pipeline_spec({"module": "spin", "fuel": 50_000, "fuel_per_value": 1}, name="spinner"),
        {"main": backend},
        {"spin": wat_to_wasm(LOOP_FOREVER)},
    )
    with pytest.raises(StageError, match=r"WebAssembly stage 'spinner' ran out of fuel \(limit 50064\)"):
        pipe.run(digits_model.x_test[:1])


def test_a_module_growing_memory_past_its_limit_is_stopped() -> None:
    limit = 1 << 20
    step = WasmStep(wat_to_wasm(GROW_THEN_TRAP), label="hog", limits=WasmLimits(memory=limit))
    with pytest.raises(
        StageError, match=rf"WebAssembly stage 'hog' exceeded its memory limit of {limit} bytes"
    ) as info:
        step(np.zeros(4, np.float32))
    assert info.value.details["reason"] == "memory"
    assert "out of bounds memory access" in info.value.message


def test_a_module_that_keeps_asking_for_memory_is_stopped() -> None:
    limit = 2 << 20
    step = WasmStep(wat_to_wasm(GROW_FOREVER), label="greedy", limits=WasmLimits(memory=limit, fuel=100_000))
    with pytest.raises(StageError, match=rf"'greedy' ran out of fuel .* at its limit of {limit} bytes"):
        step(np.zeros(4, np.float32))


def test_an_input_too_large_for_the_memory_limit_is_a_clear_error() -> None:
    step = WasmStep(builtin_module("normalize"), label="normalize", params=[0, 1], limits=WasmLimits(memory=4 * 65536))
    step(np.zeros(1000, np.float32))
    with pytest.raises(StageError, match=r"exceeded its memory limit of 262144 bytes \(alloc could not provide"):
        step(np.zeros(100_000, np.float32))
    step(np.zeros(1000, np.float32))  # still usable


@pytest.mark.parametrize("fast", [True, False])
def test_a_trap_is_reported_and_the_next_call_gets_a_fresh_instance(fast: bool) -> None:
    step = WasmStep(wat_to_wasm(PICKY), label="picky", fast=fast)
    np.testing.assert_array_equal(step(np.array([1.0, 2.0], np.float32)), [2.0, 4.0])
    for _ in range(2):  # a second trap in a row is reported as well as the first
        with pytest.raises(StageError, match=r"'picky' trapped \(unreachable\) in process: .*unreachable"):
            step(np.array([-1.0, 2.0], np.float32))
    np.testing.assert_array_equal(step(np.array([3.0], np.float32)), [6.0])
    with pytest.raises(StageError, match="process returned error code 7") as info:
        step(np.array([np.nan], np.float32))
    assert info.value.details["status"] == 7
    np.testing.assert_array_equal(step(np.array([0.5], np.float32)), [1.0])


# --- build-time refusals ------------------------------------------------------------------------
@pytest.mark.parametrize("source", [IMPORTS_WASI, IMPORTS_HOST_FUNCTION])
def test_a_module_that_imports_anything_is_refused_at_validation(source: str) -> None:
    wasm = wat_to_wasm(source)
    with pytest.raises(PipelineError, match=r"pre stage 0 \(wasm\): WebAssembly stage 'bad': module imports") as info:
        validate_pipeline(pipeline_spec({"module": "bad"}), SIGS, {"bad": wasm})
    assert "no WASI" in info.value.message
    assert "wasi_snapshot_preview1.fd_write" in info.value.message or "env.now" in info.value.message


def test_a_pipeline_naming_a_missing_module_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"names WebAssembly module 'normalize', which the bundle does not carry"):
        validate_pipeline(pipeline_spec({"module": "normalize"}), SIGS, {"clip": builtin_module("clip")})


NO_PROCESS = '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 1024))'
BAD_SIGNATURE = (
    '(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 1024)'
    ' (func (export "process") (param i32) (result i32) i32.const 0))'
)
NO_MEMORY = (
    '(module (memory 1) (func (export "alloc") (param i32) (result i32) i32.const 1024)'
    ' (func (export "process") (param i32 i32) (result i32) i32.const 0))'
)
BIG_MEMORY = (
    '(module (memory (export "memory") 300) (func (export "alloc") (param i32) (result i32) i32.const 1024)'
    ' (func (export "process") (param i32 i32) (result i32) i32.const 0))'
)
ABI_2 = (
    '(module (memory (export "memory") 1) (global (export "tinymlops_abi") i32 (i32.const 2))'
    ' (func (export "alloc") (param i32) (result i32) i32.const 1024)'
    ' (func (export "process") (param i32 i32) (result i32) i32.const 0))'
)
START_LOOPS = (
    '(module (memory (export "memory") 1) (func $start (loop $l (br $l))) (start $start)'
    ' (func (export "alloc") (param i32) (result i32) i32.const 1024)'
    ' (func (export "process") (param i32 i32) (result i32) i32.const 0))'
)


@pytest.mark.parametrize(
    ("module", "params", "match"),
    [
        (NO_PROCESS, {}, "does not export 'process'"),
        (BAD_SIGNATURE, {}, r"export 'process' must be a function \(i32, i32\) -> i32"),
        (NO_MEMORY, {}, "does not export its linear memory as 'memory'"),
        (BIG_MEMORY, {}, "starts with 19660800 bytes of memory, over its memory limit of 16777216"),
        (ABI_2, {}, "written for ABI v2"),
        (START_LOOPS, {}, "ran out of fuel .* in instantiation"),
        (LOOP_FOREVER, {"params": [1.0]}, "passes 1 parameter.* exports no 'configure'"),
        ("normalize", {"params": [1.0, 0.0]}, r"rejected its 2 parameter\(s\) \[1.0, 0.0\] \(configure returned 2\)"),
        ("normalize", {"params": [1.0]}, r"configure returned 1"),
        ("normalize", {"params": ["x"]}, "param 'params' must be a list of finite numbers"),
        ("normalize", {"memory_limit": 1000}, "param 'memory_limit' must be >= 65536"),
        ("normalize", {"fuel": 0}, "param 'fuel' must be >= 1"),
        ("normalize", {"budget": 1}, r"unknown parameter\(s\) budget"),
    ],
)
def test_modules_off_the_abi_are_refused_at_validation(module: str, params: dict, match: str) -> None:
    wasm = builtin_module(module) if module in BUILTIN_MODULES else wat_to_wasm(module)
    with pytest.raises(PipelineError, match=match):
        validate_pipeline(pipeline_spec({"module": "m", **params}), SIGS, {"m": wasm})


def test_bytes_that_are_not_webassembly_are_refused() -> None:
    for junk in (b"", b"\x00asm\x01\x00\x00\x00\xff\xff", b"MZ\x90\x00 not wasm"):
        with pytest.raises(PipelineError, match=r"not a WebAssembly binary|does not compile"):
            validate_pipeline(pipeline_spec({"module": "m"}), SIGS, {"m": junk})


# --- in a pipeline, and its cost ---------------------------------------------------------------------
def test_wasm_pre_stage_matches_the_normalize_op(digits_model) -> None:
    backend = open_backend(digits_model.onnx)
    x = digits_model.x_test[:32]
    with_wasm = build_pipeline(
        pipeline_spec({"module": "normalize", "params": [0.25, 0.5]}),
        {"main": backend},
        {"normalize": builtin_module("normalize")},
    ).run(x)
    with_op = build_pipeline(
        PipelineSpec.from_dict(
            {"spec_version": "1.0", "pre": [{"op": "normalize", "params": {"mean": 0.25, "std": 0.5}}]}
        ),
        {"main": backend},
    ).run(x)
    np.testing.assert_allclose(with_wasm.value, with_op.value, rtol=1e-5, atol=1e-5)


def test_the_fast_call_path_is_available_with_the_installed_wasmtime() -> None:
    # the per-call cost is measured in benchmarks/bench_runtime.py; this catches a wasmtime
    # upgrade that silently drops the step onto the ~20x slower public call path
    step = WasmStep(builtin_module("normalize"), label="normalize", params=[0.5, 0.25])
    assert step.fast, "the pre-built C call frame is not available with this wasmtime"

"""WebAssembly pipeline steps, run by wasmtime in a sandbox.

A bundle may carry small WebAssembly modules that transform a float32 buffer (a custom
normalisation, a filter, a feature extractor) without shipping native code. The host gives a
module **no imports at all** — no WASI, no files, no network, no clock, no host functions: a
module that imports anything is refused when the pipeline is validated. Each call runs with a
**fuel** budget (reset before every call) and inside a **memory limit**; a module that loops
forever, traps, or tries to grow past its limit is stopped with a :class:`StageError` saying so.

ABI (version 1; the full text is ``docs/wasm-abi.md``)
------------------------------------------------------
The module exports:

``memory``
    its linear memory (32-bit), the only memory the host reads or writes.
``alloc(nbytes: i32) -> i32``
    a pointer to a fresh region of at least ``nbytes`` bytes, 4-byte aligned (16 recommended),
    valid for the lifetime of the instance; ``0`` when it cannot (e.g. memory limit). The host
    calls it once for the parameters and again only when an input no longer fits the data
    buffer it already has (so a bump allocator is enough).
``process(ptr: i32, n: i32) -> i32``
    transform the ``n`` little-endian float32 values at ``ptr`` **in place**; return ``0`` on
    success, any other value is a module-defined error code (reported in the StageError).

and optionally:

``configure(ptr: i32, n: i32) -> i32``
    called once per instance, before any ``process``, with the stage's ``n`` float32
    parameters at ``ptr`` (a region from ``alloc`` the host never writes again); ``0`` accepts
    them, anything else rejects them — a :class:`PipelineError` when the bundle is built.
    A module without ``configure`` takes no parameters.
``tinymlops_abi`` (global i32)
    the ABI version the module was written for; when present it must be ``1``.

Calls per prediction: one ``process`` (two i32 arguments). Parameters live in linear memory,
the instance is created once per pipeline and reused, the input is copied straight into linear
memory through a NumPy view of it and the result copied out (two ``memcpy``; the copy out is
what keeps a returned array from being overwritten by the next call or rewritten by the module
later). Calling through wasmtime-py's generic ``Func.__call__`` costs tens of microseconds (it
re-reads the function type and boxes every argument), so a pre-built call frame of plain
addresses goes to wasmtime's C API directly (``wasmtime_func_call``, which still type-checks the
call) when the installed binding exposes it; otherwise the public API is used. Fuel stays the
way a call is bounded (deterministic: the same module and input always get the same budget);
wasmtime charges it per basic block, so the shipped modules unroll their loops (64 floats per
iteration) and the metering costs little (numbers in ``docs/wasm-abi.md``).

After a failed call (trap, fuel, memory) the instance is discarded and a fresh one is made for
the next call, so a half-finished run cannot leave corrupt module state behind.

This module is in the edge closure; it imports wasmtime lazily, only when a WebAssembly step is
validated or built.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import PipelineError, StageError

ABI_VERSION = 1
PAGE = 65536
DEFAULT_FUEL = 1_000_000
DEFAULT_FUEL_PER_VALUE = 100
DEFAULT_MEMORY_LIMIT = 16 * 2**20
MAX_MEMORY_LIMIT = 2**32
#: the most parameters a stage may pass to ``configure``
MAX_PARAMS = 65536
BUILTIN_MODULES = ("clip", "normalize")

_REQUIRED = {"alloc": 1, "process": 2}
_OPTIONAL = {"configure": 2}


def _wasmtime() -> Any:
    try:
        import wasmtime
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise PipelineError(
            "WebAssembly stages need wasmtime, which is not installed (pip install 'tinymlops[edge]')"
        ) from exc
    return wasmtime


@cache
def _engine() -> Any:
    wt = _wasmtime()
    config = wt.Config()
    config.consume_fuel = True
    # A memory that never moves lets the host keep one NumPy view of it across calls.
    with contextlib.suppress(AttributeError):  # older wasmtime: the view is refreshed per call
        config.memory_may_move = False
    return wt.Engine(config)


def _memory_fixed() -> bool:
    return hasattr(_wasmtime().Config, "memory_may_move")


_COMPILED: dict[str, Any] = {}
_COMPILED_LOCK = threading.Lock()


@atexit.register
def _release_compiled() -> None:
    # Drop wasmtime objects while its bindings still exist (not during interpreter teardown).
    with _COMPILED_LOCK:
        _COMPILED.clear()
    _engine.cache_clear()


def _compile(wasm: bytes, label: str) -> Any:
    wt = _wasmtime()
    if not isinstance(wasm, bytes | bytearray | memoryview):
        raise PipelineError(f"WebAssembly stage '{label}': module must be bytes, got {type(wasm).__name__}")
    wasm = bytes(wasm)
    key = hashlib.sha256(wasm).hexdigest()
    with _COMPILED_LOCK:
        module = _COMPILED.get(key)
    if module is not None:
        return module
    if wasm[:4] != b"\x00asm":
        raise PipelineError(f"WebAssembly stage '{label}': not a WebAssembly binary (bad magic number)")
    try:
        module = wt.Module(_engine(), wasm)
    except Exception as exc:
        raise PipelineError(f"WebAssembly stage '{label}': module does not compile: {_first_line(exc)}") from None
    with _COMPILED_LOCK:
        if len(_COMPILED) >= 64:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = module
    return module


def wat_to_wasm(source: str | Path) -> bytes:
    """Compile WebAssembly text (a WAT string, or the path of a ``.wat`` file) to a binary."""
    wt = _wasmtime()
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    try:
        return bytes(wt.wat2wasm(text))
    except Exception as exc:
        raise PipelineError(f"WebAssembly text does not compile: {_first_line(exc)}") from None


@cache
def builtin_module(name: str) -> bytes:
    """The WebAssembly binary of a module shipped with tinymlops, built from its ``.wat`` source.

    The sources live in ``tinymlops/pipeline/wasm_modules/``; they are compiled on first use
    (and kept in memory), so the project never ships an opaque binary.
    """
    if name not in BUILTIN_MODULES:
        raise PipelineError(f"no built-in WebAssembly module {name!r}; known: {', '.join(BUILTIN_MODULES)}")
    text = (
        resources.files("tinymlops.pipeline")
        .joinpath("wasm_modules")
        .joinpath(f"{name}.wat")
        .read_text(encoding="utf-8")
    )
    return wat_to_wasm(text)


@dataclass(frozen=True)
class WasmLimits:
    """Per-call fuel is ``fuel + fuel_per_value * n``; ``memory`` caps the linear memory in bytes."""

    fuel: int = DEFAULT_FUEL
    fuel_per_value: int = DEFAULT_FUEL_PER_VALUE
    memory: int = DEFAULT_MEMORY_LIMIT


def check_module(module: Any, label: str, limits: WasmLimits, n_params: int) -> None:
    """Refuse a compiled module that imports anything or does not follow the ABI (PipelineError)."""
    wt = _wasmtime()
    where = f"WebAssembly stage '{label}'"
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    if imports:
        shown = ", ".join(imports[:5]) + (", …" if len(imports) > 5 else "")
        raise PipelineError(
            f"{where}: module imports {shown}; WebAssembly stages get no imports "
            "(no WASI, no host functions) — only a self-contained module is accepted"
        )
    exports = {e.name: e.type for e in module.exports}
    mem = exports.get("memory")
    if not isinstance(mem, wt.MemoryType):
        raise PipelineError(f"{where}: module does not export its linear memory as 'memory' (ABI v{ABI_VERSION})")
    if getattr(mem, "is_64", False):
        raise PipelineError(f"{where}: 64-bit memories are not supported by ABI v{ABI_VERSION}")
    if mem.limits.min * PAGE > limits.memory:
        raise PipelineError(
            f"{where}: module starts with {mem.limits.min * PAGE} bytes of memory, "
            f"over its memory limit of {limits.memory} bytes"
        )
    i32 = wt.ValType.i32()
    for name, nargs in {**_REQUIRED, **_OPTIONAL}.items():
        ty = exports.get(name)
        if ty is None:
            if name in _REQUIRED:
                raise PipelineError(
                    f"{where}: module does not export '{name}' (ABI v{ABI_VERSION} needs memory, "
                    "alloc(nbytes) -> ptr and process(ptr, n) -> status)"
                )
            continue
        if not isinstance(ty, wt.FuncType) or list(ty.params) != [i32] * nargs or list(ty.results) != [i32]:
            sig = "(" + ", ".join(["i32"] * nargs) + ") -> i32"
            raise PipelineError(f"{where}: export '{name}' must be a function {sig}")
    abi = exports.get("tinymlops_abi")
    if abi is not None and (not isinstance(abi, wt.GlobalType) or abi.content != i32):
        raise PipelineError(f"{where}: export 'tinymlops_abi' must be an i32 global")
    if n_params and "configure" not in exports:
        raise PipelineError(f"{where}: stage passes {n_params} parameter(s) but the module exports no 'configure'")


class _FastCall:
    """Call an ``(i32, ...) -> i32`` export through wasmtime's C API with a pre-built frame.

    ``wasmtime_func_call`` type-checks the call like the public binding does; what is skipped
    is re-reading the function type and boxing every argument on every call. The frame is a
    tuple of plain addresses (store context, function, argument and result arrays, trap slot)
    passed through a ``c_void_p`` prototype: ctypes checks ``POINTER(...)``-typed arguments one
    by one, which cost ~2 us per call here. Every address belongs to an object this frame keeps
    alive. ``fn(fuel, *args)`` resets the store's fuel to ``fuel`` and calls.
    """

    def __init__(self, store: Any, func: Any, nargs: int) -> None:
        from wasmtime import _bindings, _ffi  # private: guarded by _fast_calls_available()

        self._keep = (store, func)  # the frame points into both
        self._call, self._set_fuel = _c_functions()
        self._ctx = ctypes.cast(store._context(), ctypes.c_void_p).value
        self._args = (_bindings.wasmtime_val_t * nargs)()
        for a in self._args:
            a.kind = _ffi.WASMTIME_I32.value
        self._slots = [a.of for a in self._args]
        self._last: tuple[int, ...] = ()
        self._results = (_bindings.wasmtime_val_t * 1)()
        self._result = self._results[0].of
        self._trap = ctypes.c_void_p()  # wasm_trap_t *, written by wasmtime only when the call traps
        self._frame = (
            self._ctx,
            ctypes.addressof(func._func),
            ctypes.addressof(self._args),
            nargs,
            ctypes.addressof(self._results),
            1,
            ctypes.addressof(self._trap),
        )

    def __call__(self, fuel: int, *values: int) -> int:
        err = self._set_fuel(self._ctx, fuel)
        if err:
            raise _wasmtime_error(err)
        if values != self._last:
            for slot, v in zip(self._slots, values, strict=True):
                slot.i32 = v
            self._last = values
        err = self._call(*self._frame)
        if err:
            raise _wasmtime_error(err)
        trap = self._trap.value
        if trap:
            from wasmtime import Trap, _bindings

            self._trap.value = None  # the Trap object owns the pointer from here on
            raise Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(_bindings.wasm_trap_t)))
        return self._result.i32


def _wasmtime_error(address: int) -> Exception:
    from wasmtime import WasmtimeError, _bindings

    return WasmtimeError._from_ptr(ctypes.cast(address, ctypes.POINTER(_bindings.wasmtime_error_t)))


@cache
def _c_functions() -> tuple[Any, Any]:
    """``wasmtime_func_call`` and ``wasmtime_context_set_fuel`` with address-only prototypes."""
    from wasmtime import _bindings

    ptr, size = ctypes.c_void_p, ctypes.c_size_t
    call = ctypes.CFUNCTYPE(ptr, ptr, ptr, ptr, size, ptr, size, ptr)
    set_fuel = ctypes.CFUNCTYPE(ptr, ptr, ctypes.c_uint64)
    return (
        call(ctypes.cast(_bindings._wasmtime_func_call, ptr).value),
        set_fuel(ctypes.cast(_bindings._wasmtime_context_set_fuel, ptr).value),
    )


@cache
def _fast_calls_available() -> bool:
    try:
        from wasmtime import Func, Store, Trap, WasmtimeError, _bindings, _ffi

        needed = ("wasmtime_val_t", "_wasmtime_func_call", "_wasmtime_context_set_fuel", "wasm_trap_t")
        return (
            all(hasattr(_bindings, n) for n in needed)
            and hasattr(_bindings, "wasmtime_error_t")
            and hasattr(_ffi, "WASMTIME_I32")
            and hasattr(Store, "_context")
            and "_func" in getattr(Func, "__annotations__", {})
            and hasattr(Trap, "_from_ptr")
            and hasattr(WasmtimeError, "_from_ptr")
        )
    except Exception:  # pragma: no cover - depends on the binding
        return False


class _PublicCall:
    """The same calls through wasmtime-py's public API (slower; used when the fast path is absent)."""

    def __init__(self, store: Any, func: Any, nargs: int) -> None:
        self._store = store
        self._func = func

    def __call__(self, fuel: int, *values: int) -> int:
        self._store.set_fuel(fuel)
        return int(self._func(self._store, *values))


class WasmStep:
    """One WebAssembly module instantiated for one pipeline stage: ``step(x) -> y`` (float32).

    Construction compiles, checks and instantiates the module and passes it ``params``; any
    problem there is a :class:`PipelineError` (the bundle must not be built). Calling the step
    runs ``process`` on a float32 copy of ``x`` and returns an array of the same shape; any
    failure then is a :class:`StageError` naming the stage and the limit it hit. A step is
    safe to share between threads (calls are serialised).
    """

    def __init__(
        self,
        wasm: bytes,
        *,
        label: str,
        params: Sequence[float] = (),
        limits: WasmLimits | None = None,
        fast: bool | None = None,
    ) -> None:
        self.label = label
        self.limits = limits or WasmLimits()
        self._params = np.asarray(list(params), dtype="<f4")
        if len(self._params) > MAX_PARAMS:
            raise PipelineError(f"WebAssembly stage '{label}': more than {MAX_PARAMS} parameters")
        self._module = _compile(wasm, label)
        check_module(self._module, label, self.limits, len(self._params))
        self._exports = {e.name for e in self._module.exports}
        self.fast = _fast_calls_available() if fast is None else (fast and _fast_calls_available())
        self._lock = threading.Lock()
        self._fixed = _memory_fixed()
        self._ok = False
        try:
            self._instantiate()
        except StageError as exc:
            raise PipelineError(exc.message) from None

    # --- instance lifecycle -------------------------------------------------------------
    def _instantiate(self) -> None:
        wt = _wasmtime()
        self._ok = False
        self._memory: Any = None
        self._view: np.ndarray | None = None
        self._buf_ptr = self._buf_cap = 0
        store = wt.Store(_engine())
        store.set_limits(memory_size=self.limits.memory)
        self._store = store
        store.set_fuel(self.limits.fuel)  # a start function runs on the base budget
        try:
            instance = wt.Instance(store, self._module, [])
        except Exception as exc:
            raise self._failure(exc, "instantiation", 0, self.limits.fuel) from None
        exports = instance.exports(store)
        self._memory = exports["memory"]
        self._size = self._memory.data_len(store)
        caller = _FastCall if self.fast else _PublicCall
        self._alloc = caller(store, exports["alloc"], 1)
        self._process = caller(store, exports["process"], 2)
        if "tinymlops_abi" in self._exports:
            version = exports["tinymlops_abi"].value(store)
            if version != ABI_VERSION:
                raise StageError(
                    f"WebAssembly stage '{self.label}': module is written for ABI v{version}; "
                    f"this runtime speaks v{ABI_VERSION}"
                )
        n = len(self._params)
        if n:
            ptr = self._allocate(4 * n, "its parameters")
            self._bytes(ptr, 4 * n)[:] = self._params.view(np.uint8)
            configure = caller(store, exports["configure"], 2)
            status = self._guarded(configure, "configure", 0, ptr, n)
            if status != 0:
                raise StageError(
                    f"WebAssembly stage '{self.label}': module rejected its {n} parameter(s) "
                    f"{self._params.tolist()} (configure returned {status})"
                )
        self._ok = True

    def _bytes(self, ptr: int, nbytes: int) -> np.ndarray:
        """A writable uint8 NumPy view of ``[ptr, ptr + nbytes)`` in linear memory (bounds-checked)."""
        size = self._memory.data_len(self._store)
        if ptr <= 0 or ptr % 4 or ptr + nbytes > size:
            self._ok = False
            raise StageError(
                f"WebAssembly stage '{self.label}': alloc returned the region [{ptr}, {ptr + nbytes}), "
                f"outside its {size}-byte memory or misaligned (ABI v{ABI_VERSION})"
            )
        base = ctypes.addressof(self._memory.data_ptr(self._store).contents)
        return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(base + ptr))

    def _allocate(self, nbytes: int, what: str) -> int:
        ptr = self._guarded(self._alloc, "alloc", 0, nbytes) & 0xFFFFFFFF  # a pointer is unsigned
        self._size = self._memory.data_len(self._store)
        if ptr == 0:
            raise StageError(
                f"WebAssembly stage '{self.label}' exceeded its memory limit of {self.limits.memory} bytes "
                f"(alloc could not provide {nbytes} bytes for {what})",
                stage=self.label,
                reason="memory",
                limit=self.limits.memory,
            )
        return ptr

    def _ensure_buffer(self, n: int) -> np.ndarray:
        nbytes = 4 * n
        if self._view is None or nbytes > self._buf_cap:
            want = max(nbytes, 2 * self._buf_cap, 4096)
            try:
                ptr = self._allocate(want, f"an input of {n} float32 values")
            except StageError:
                if want == nbytes or not self._ok:
                    raise
                want = nbytes  # the doubled size did not fit: try the exact one
                ptr = self._allocate(want, f"an input of {n} float32 values")
            self._view = self._bytes(ptr, want).view("<f4")
            self._buf_ptr, self._buf_cap = ptr, want
        elif not self._fixed:  # pragma: no cover - memory may have moved on older wasmtime
            self._view = self._bytes(self._buf_ptr, self._buf_cap).view("<f4")
        return self._view

    # --- calls -------------------------------------------------------------------------
    def _guarded(self, fn: Any, what: str, n: int, *args: int) -> int:
        fuel = self.limits.fuel + self.limits.fuel_per_value * n
        try:
            return fn(fuel, *args)
        except Exception as exc:
            self._ok = False
            raise self._failure(exc, what, self._size, fuel) from None

    def _failure(self, exc: BaseException, what: str, size_before: int, fuel: int) -> StageError:
        wt = _wasmtime()
        where = f"WebAssembly stage '{self.label}'"
        limit = self.limits.memory
        code = exc.trap_code if isinstance(exc, wt.Trap) else None
        size = None
        if self._memory is not None:
            try:
                size = self._memory.data_len(self._store)
            except Exception:  # pragma: no cover - a broken store
                size = None
        # memory.grow past the limit returns -1 to the module rather than trapping; what we see
        # is its reaction (a trap, a spin until the fuel runs out). Blame the limit when the
        # memory ends within one page of it, or grew during the call and could not grow as much again.
        grew = 0 if size is None else size - size_before
        at_limit = size is not None and (size + PAGE > limit or (grew > 0 and size + grew > limit))
        detail = _first_line(exc)
        if code == wt.TrapCode.OUT_OF_FUEL or (code is None and "all fuel consumed" in detail):
            msg = f"{where} ran out of fuel (limit {fuel}) in {what}"
            if at_limit:
                msg += f" with its memory at its limit of {limit} bytes"
            return StageError(msg, stage=self.label, reason="fuel", limit=fuel)
        if at_limit or ("memory" in detail.lower() and "limit" in detail.lower()):
            return StageError(
                f"{where} exceeded its memory limit of {limit} bytes in {what} "
                f"(memory at {size} bytes; then: {detail})",
                stage=self.label,
                reason="memory",
                limit=limit,
            )
        kind = f" ({code.name.lower().replace('_', ' ')})" if code is not None else ""
        return StageError(f"{where} trapped{kind} in {what}: {detail}", stage=self.label, reason="trap")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x)
        n = a.size
        if n >= 2**29:
            raise StageError(f"WebAssembly stage '{self.label}': an input of {n} values is too large for ABI v1")
        with self._lock:
            if not self._ok:
                try:
                    self._instantiate()
                except PipelineError as exc:  # pragma: no cover - it instantiated before
                    raise StageError(exc.message) from None
            view = self._view
            if view is None or 4 * n > self._buf_cap or not self._fixed:
                view = self._ensure_buffer(n)
            # one pass into linear memory: a memcpy for contiguous float32 input, else the cast/gather
            if a.ndim == 1:
                view[:n] = a
            elif a.flags.c_contiguous:
                view[:n] = a.reshape(-1)
            else:
                np.copyto(view[:n].reshape(a.shape), a, casting="unsafe")
            fuel = self.limits.fuel + self.limits.fuel_per_value * n
            try:
                status = self._process(fuel, self._buf_ptr, n)
            except Exception as exc:
                self._ok = False
                raise self._failure(exc, "process", self._size, fuel) from None
            if status != 0:
                self._ok = False
                raise StageError(
                    f"WebAssembly stage '{self.label}': process returned error code {status}",
                    stage=self.label,
                    reason="status",
                    status=status,
                )
            if not self._fixed:  # pragma: no cover - memory may have moved on older wasmtime
                view = self._view = self._bytes(self._buf_ptr, self._buf_cap).view("<f4")
            # a copy out (one memcpy): a view would be overwritten by the next call and stays
            # writable by the module, which could change a result after it was returned
            out = view[:n].copy()
            return out if a.ndim == 1 else out.reshape(a.shape)


def _first_line(exc: BaseException) -> str:
    """The cause of a wasmtime error, without its backtrace (``"wasm trap: ..."``)."""
    text = str(exc)
    if "Caused by:" in text:
        text = text.split("Caused by:", 1)[1]
    lines = [re.sub(r"^\d+:\s*", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines)[:300] or type(exc).__name__


__all__ = [
    "ABI_VERSION",
    "BUILTIN_MODULES",
    "DEFAULT_FUEL",
    "DEFAULT_FUEL_PER_VALUE",
    "DEFAULT_MEMORY_LIMIT",
    "WasmLimits",
    "WasmStep",
    "builtin_module",
    "check_module",
    "wat_to_wasm",
]

"""A strict reader of Apache DataSketches' serialized KLL float sketch (standard library only).

Telemetry batches carry KLL sketches as bytes from devices. The ``datasketches`` library's own
``deserialize`` checks the header but not the body: a sketch whose level offsets were tampered
with deserializes "successfully" and then crashes the process (a segmentation fault) on the
first quantile query — a hostile device could take the server down. So every sketch is checked
here, structurally and completely, before any library sees it.

The format (little-endian; DataSketches ``kll_sketch::serialize``, serial versions 1 and 2)::

    byte 0   preamble ints      2 (empty or single item) | 5 (full)
    byte 1   serial version     1 (empty or full) | 2 (single item)
    byte 2   family id          15 (KLL)
    byte 3   flags              bit 0 empty, bit 1 level zero sorted, bit 2 single item
    bytes 4-5  k                8 ..= 65535
    byte 6   m                  8
    byte 7   unused
    -- empty: nothing more (8 bytes)
    -- single item: one float32 (12 bytes)
    -- full:
    bytes 8-15   n              the number of items the sketch has seen
    bytes 16-17  min k          8 ..= k (the smallest k of the sketches merged into it)
    byte 18      num levels     1 ..= 61
    byte 19      unused
    num_levels × uint32         start offset of each level; the end of the last one is the
                                total capacity of ``num_levels`` levels (computed, not stored)
    float32 min, float32 max
    float32 × (capacity − levels[0])  the retained items, level by level

A full sketch is accepted only when: the offsets are non-decreasing and within the capacity, the
byte length is exactly what the offsets imply, every item is finite and within [min, max], every
level above 0 is sorted (and level 0 too when its flag says so), and the items' weights (an item
on level h weighs 2^h) add up to exactly ``n``.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct

from tinymlops.errors import SpecError

FAMILY_KLL = 15
MIN_K = 8
MAX_K = 65535
M = 8
MAX_LEVELS = 61
_FLAG_EMPTY = 1
_FLAG_LEVEL_ZERO_SORTED = 2
_FLAG_SINGLE_ITEM = 4
_HEADER = struct.Struct("<BBBBHBB")
_FULL = struct.Struct("<QHBB")


def _cap_aux_aux(k: int, depth: int) -> int:
    twok = k << 1
    return (((twok << depth) // 3**depth) + 1) >> 1


def _cap_aux(k: int, depth: int) -> int:
    if depth <= 30:
        return _cap_aux_aux(k, depth)
    half = depth // 2
    return _cap_aux_aux(_cap_aux_aux(k, half), depth - half)


@functools.lru_cache(maxsize=4096)
def total_capacity(k: int, num_levels: int, m: int = M) -> int:
    """Items a KLL sketch with ``k`` and ``num_levels`` levels holds (level h: ~k·(2/3)^depth, at least m)."""
    return sum(max(m, _cap_aux(k, num_levels - h - 1)) for h in range(num_levels))


def kll_floats_n(data: bytes, what: str = "sketch") -> int:
    """Check that ``data`` is a well-formed serialized KLL float sketch; return its ``n``.

    Raises :class:`~tinymlops.errors.SpecError` naming ``what`` and the defect."""
    return _read(data, what, want_items=False)[0]


def kll_floats_items(data: bytes, what: str = "sketch") -> tuple[list[float], list[int]]:
    """The retained items of a (checked) serialized KLL float sketch and the weight of each (an item
    on level h weighs 2^h; the weights add up to ``n``), in storage order.

    Read from the bytes rather than through the ``datasketches`` binding's iterator: in
    datasketches 5.2.0 that iterator reports weight 1 for every item of a sketch made by ``merge``
    (its ``n`` and rank queries stay right), which understates the merged sketch's higher levels —
    a merged fleet profile read that way holds a fraction of its samples."""
    _, items, weights = _read(data, what, want_items=True)
    return items, weights


def _read(data: bytes, what: str, *, want_items: bool) -> tuple[int, list[float], list[int]]:
    if len(data) < _HEADER.size:
        raise SpecError(f"{what}: a KLL sketch is at least 8 bytes, got {len(data)}")
    pre, serial, family, flags, k, m, _ = _HEADER.unpack_from(data, 0)
    if family != FAMILY_KLL:
        raise SpecError(f"{what}: not a KLL sketch (family id {family}, expected {FAMILY_KLL})")
    if m != M:
        raise SpecError(f"{what}: KLL parameter m must be {M}, got {m}")
    if not MIN_K <= k <= MAX_K:
        raise SpecError(f"{what}: KLL parameter k must be within [{MIN_K}, {MAX_K}], got {k}")
    if flags & ~(_FLAG_EMPTY | _FLAG_LEVEL_ZERO_SORTED | _FLAG_SINGLE_ITEM):
        raise SpecError(f"{what}: unknown KLL flags {flags:#04x}")
    if flags & _FLAG_EMPTY:
        if flags & _FLAG_SINGLE_ITEM or (pre, serial, len(data)) != (2, 1, 8):
            raise SpecError(f"{what}: malformed empty KLL sketch")
        return 0, [], []
    if flags & _FLAG_SINGLE_ITEM:
        if (pre, serial, len(data)) != (2, 2, 12):
            raise SpecError(f"{what}: malformed single-item KLL sketch")
        item = struct.unpack_from("<f", data, 8)[0]
        if not math.isfinite(item):
            raise SpecError(f"{what}: KLL sketch holds a non-finite item")
        return 1, [item], [1]
    if (pre, serial) != (5, 1) or len(data) < 20:
        raise SpecError(f"{what}: malformed KLL sketch header (preamble {pre}, serial version {serial})")
    n, min_k, num_levels, _ = _FULL.unpack_from(data, 8)
    if not MIN_K <= min_k <= k:
        raise SpecError(f"{what}: KLL min k must be within [{MIN_K}, k={k}], got {min_k}")
    if not 1 <= num_levels <= MAX_LEVELS:
        raise SpecError(f"{what}: KLL sketch has {num_levels} levels (1 to {MAX_LEVELS} allowed)")
    body = 20 + 4 * num_levels
    if len(data) < body + 8:
        raise SpecError(f"{what}: KLL sketch truncated")
    levels = list(struct.unpack_from(f"<{num_levels}I", data, 20))
    capacity = total_capacity(k, num_levels, m)
    levels.append(capacity)
    if any(a > b for a, b in itertools.pairwise(levels)):
        raise SpecError(f"{what}: KLL level offsets are out of order or beyond the capacity {capacity}")
    retained = capacity - levels[0]
    if len(data) != body + 8 + 4 * retained:
        raise SpecError(f"{what}: KLL sketch is {len(data)} bytes, its levels say {body + 8 + 4 * retained}")
    lo, hi = struct.unpack_from("<2f", data, body)
    items = struct.unpack_from(f"<{retained}f", data, body + 8)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise SpecError(f"{what}: KLL min/max must be finite with min <= max, got {lo}, {hi}")
    # C-speed checks (a report reads tens of thousands of sketches): a non-finite item makes the exact
    # sum non-finite (or raises); with every item finite, min/max and sorted() are exact
    try:
        finite = math.isfinite(math.fsum(items))
    except (ValueError, OverflowError):
        finite = False
    if not finite:
        raise SpecError(f"{what}: KLL sketch holds a non-finite item")
    ordered = sorted(items)
    if ordered and (ordered[0] < lo or ordered[-1] > hi):
        raise SpecError(f"{what}: KLL sketch holds an item outside [min, max]")
    weight = 0
    base = levels[0]
    weights: list[int] = []
    for h in range(num_levels):
        start, end = levels[h] - base, levels[h + 1] - base
        if h > 0 or flags & _FLAG_LEVEL_ZERO_SORTED:
            level = items[start:end]
            if list(level) != sorted(level):
                raise SpecError(f"{what}: KLL level {h} is not sorted")
        weight += (end - start) << h
        if want_items:
            weights.extend([1 << h] * (end - start))
    if weight != n:
        raise SpecError(f"{what}: KLL sketch weights add up to {weight}, but it says n = {n}")
    return n, list(items) if want_items else [], weights


__all__ = ["kll_floats_items", "kll_floats_n", "total_capacity"]

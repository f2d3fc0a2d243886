"""The strict single-file container: round trips, every structural error, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.bundle.container import HEADER, MAGIC, MAX_MEMBER_BYTES, pack, unpack
from tinymlops.errors import IntegrityError, UsageError

MEMBERS = {"manifest.json": b"{}", "manifest.sig": b"sig", "model.enc": b"\x00" * 100, "wasm/norm.wasm": b""}


def test_round_trip_keeps_order_and_bytes() -> None:
    data = pack(MEMBERS)
    assert data.startswith(MAGIC)
    out = unpack(data)
    assert out == MEMBERS and list(out) == list(MEMBERS)
    assert unpack(bytearray(data)) == MEMBERS and unpack(memoryview(data)) == MEMBERS


def test_pack_refuses_bad_input() -> None:
    with pytest.raises(UsageError):
        pack({})
    for name in ("", "../x", "a//b", "/abs", "a b", "x/..", "é"):
        with pytest.raises(UsageError):
            pack({name: b"x"})


def _member(name: bytes, data: bytes, *, name_len: int | None = None, size: int | None = None) -> bytes:
    return (
        struct.pack(">H", len(name) if name_len is None else name_len)
        + name
        + struct.pack(">Q", len(data) if size is None else size)
        + data
    )


@pytest.mark.parametrize(
    ("data", "member", "message"),
    [
        (b"", HEADER, "only 0 bytes"),
        (b"TMLBNDL2" + struct.pack(">I", 1) + _member(b"a", b""), HEADER, "bad magic"),
        (MAGIC + struct.pack(">I", 0), HEADER, "member count 0"),
        (MAGIC + struct.pack(">I", 10**6), HEADER, "out of range"),
        (MAGIC + struct.pack(">I", 2) + _member(b"a", b"x"), HEADER, "name length is missing"),
        (MAGIC + struct.pack(">I", 1) + _member(b"a", b"", name_len=0), HEADER, "name length 0"),
        (MAGIC + struct.pack(">I", 1) + struct.pack(">H", 50) + b"abc", HEADER, "name is cut off"),
        (MAGIC + struct.pack(">I", 1) + _member(b"\xff\xfe", b""), HEADER, "not UTF-8"),
        (MAGIC + struct.pack(">I", 1) + _member(b"../etc", b""), HEADER, "bad member name"),
        (MAGIC + struct.pack(">I", 2) + _member(b"a", b"1") + _member(b"a", b"2"), "a", "duplicate member"),
        (MAGIC + struct.pack(">I", 1) + struct.pack(">H", 1) + b"a" + b"\x00\x00", "a", "no data length"),
        (MAGIC + struct.pack(">I", 1) + _member(b"a", b"", size=MAX_MEMBER_BYTES + 1), "a", "the limit"),
        (MAGIC + struct.pack(">I", 1) + _member(b"a", b"abc", size=2**40)[:-3], "a", "the limit"),
        (MAGIC + struct.pack(">I", 1) + _member(b"model.enc", b"abc", size=10), "model.enc", "claims 10 bytes"),
        (MAGIC + struct.pack(">I", 1) + _member(b"a", b"abc") + b"\x00", HEADER, "trailing"),
    ],
)
def test_structural_errors_name_the_member(data: bytes, member: str, message: str) -> None:
    with pytest.raises(IntegrityError, match=message) as info:
        unpack(data)
    assert info.value.member == member


def test_every_truncation_is_refused() -> None:
    data = pack(MEMBERS)
    for cut in range(len(data)):
        with pytest.raises(IntegrityError) as info:
            unpack(data[:cut])
        assert info.value.member is not None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_integrity_errors(data: bytes) -> None:
    try:
        unpack(data)
    except IntegrityError as exc:
        assert exc.member is not None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_after_a_valid_magic_only_integrity_errors(tail: bytes) -> None:
    try:
        members = unpack(MAGIC + tail)
    except IntegrityError as exc:
        assert exc.member is not None
    else:  # whatever parses must re-pack to the very same bytes (no byte is free)
        assert pack(members) == MAGIC + tail


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutations_of_a_valid_container(data: st.DataObject) -> None:
    blob = bytearray(pack(MEMBERS))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        members = unpack(bytes(blob[:cut]))
    except IntegrityError as exc:
        assert exc.member is not None
    else:
        assert pack(members) == bytes(blob[:cut])

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymlops.errors import ModelRefError
from tinymlops.registry.refs import ModelRef, parse_ref

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
segments = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,10}", fullmatch=True)


@given(names, st.one_of(st.none(), st.integers(1, 10**6)), st.lists(segments, max_size=3))
def test_round_trip(name: str, version: int | None, variant: list[str]) -> None:
    ref = ModelRef(name, version, "/".join(variant))
    assert parse_ref(str(ref)) == ref


@given(st.text(max_size=40))
def test_never_crashes(text: str) -> None:
    with contextlib.suppress(ModelRefError):
        parse_ref(text)


@pytest.mark.parametrize("bad", ["", " ", ":1", "m:0", "m:-1", "m:x", "m/", "m//a", "m/A", "a b"])
def test_bad_refs(bad: str) -> None:
    with pytest.raises(ModelRefError):
        parse_ref(bad)

"""The pipeline spec: strict parsing, clear errors, JSON round trips, version policy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import PipelineError, SpecError, UnsupportedVersionError
from tinymlops.spec import PipelineSpec, StageSpec

EXAMPLE = {
    "spec_version": "1.0",
    "pre": [
        {"op": "reshape", "params": {"shape": [1, 8, 8]}},
        {"op": "wasm", "name": "norm", "params": {"module": "normalize", "params": [0.5, 0.25]}},
    ],
    "post": [
        {"op": "cascade", "params": {"model": "big", "threshold": 0.9, "confidence": "max_softmax"}},
        {"op": "softmax", "params": {}},
        {"op": "top_k", "name": "best", "params": {"k": 3}},
    ],
}


def test_parses_the_documented_example() -> None:
    spec = PipelineSpec.from_dict(EXAMPLE)
    assert [s.op for s in spec.pre] == ["reshape", "wasm"]
    assert spec.pre[1].name == "norm" and spec.pre[1].label == "norm" and spec.post[1].label == "softmax"
    assert spec.post[0].params["threshold"] == 0.9
    assert [(w, i) for w, i, _ in spec.stages()] == [("pre", 0), ("pre", 1), ("post", 0), ("post", 1), ("post", 2)]


def test_round_trip_through_json() -> None:
    spec = PipelineSpec.from_dict(EXAMPLE)
    again = PipelineSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.to_dict() == spec.to_dict() == EXAMPLE


def test_defaults_and_empty_pipeline() -> None:
    spec = PipelineSpec.from_dict({"spec_version": "1.0"})
    assert spec.empty and spec == PipelineSpec()
    assert StageSpec.from_dict({"op": "softmax"}) == StageSpec("softmax")
    assert StageSpec("softmax").to_dict() == {"op": "softmax", "params": {}}


def test_constructor_normalises_params_to_json_data() -> None:
    stage = StageSpec("reshape", {"shape": (1, 8, 8)})
    assert stage.params == {"shape": [1, 8, 8]}
    assert stage == StageSpec.from_dict({"op": "reshape", "params": {"shape": [1, 8, 8]}})
    spec = PipelineSpec(pre=[stage])  # a list is accepted and stored as a tuple
    assert spec.pre == (stage,)


def test_newer_minor_version_is_read_newer_major_refused() -> None:
    assert PipelineSpec.from_dict({"spec_version": "1.7"}).spec_version == "1.7"
    with pytest.raises(UnsupportedVersionError, match=r"unsupported spec_version 2\.0"):
        PipelineSpec.from_dict({"spec_version": "2.0", "pre": []})
    with pytest.raises(UnsupportedVersionError):
        PipelineSpec(spec_version="3.1")


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"spec_version": "1.0", "stages": []}, "unknown field"),
        ({"pre": []}, "spec_version"),
        ({"spec_version": "one"}, "spec_version must look like"),
        ({"spec_version": "1.0", "pre": {"op": "cast"}}, "'pre' must be a list"),
        ({"spec_version": "1.0", "pre": ["cast"]}, "pre stage 0: a stage must be a table"),
        ({"spec_version": "1.0", "post": [{"params": {}}]}, "post stage 0: missing required field 'op'"),
        ({"spec_version": "1.0", "post": [{"op": "Soft Max"}]}, "'op' must be a lowercase op name"),
        ({"spec_version": "1.0", "post": [{"op": "softmax", "axis": -1}]}, "unknown field"),
        ({"spec_version": "1.0", "post": [{"op": "softmax", "params": [1]}]}, "'params' must be a table"),
        ({"spec_version": "1.0", "post": [{"op": "softmax", "name": ""}]}, "'name' must be"),
        ({"spec_version": "1.0", "post": [{"op": "clip", "params": {"max": float("nan")}}]}, "finite"),
        (
            {"spec_version": "1.0", "pre": [{"op": "cast", "name": "a"}], "post": [{"op": "softmax", "name": "a"}]},
            "stage name 'a' is used twice",
        ),
    ],
)
def test_malformed_documents_are_refused_with_a_clear_error(doc: dict, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        PipelineSpec.from_dict(doc)


def test_hostile_nesting_is_refused_not_a_recursion_error() -> None:
    params: dict = {}
    inner = params
    for _ in range(200):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(PipelineError, match="nest deeper"):
        PipelineSpec.from_dict({"spec_version": "1.0", "pre": [{"op": "cast", "params": params}]})


def test_not_a_table() -> None:
    with pytest.raises(PipelineError, match="must be a table"):
        PipelineSpec.from_dict(["pre"])  # type: ignore[arg-type]


# --- property tests ----------------------------------------------------------------------------
json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(["spec_version", "pre", "post", "op", "params", "name", "extra"])
stage_like = st.dictionaries(
    st.sampled_from(["op", "params", "name", "junk"]),
    st.sampled_from(["softmax", "top_k", "Bad Op", "", "x"]) | json_value,
    max_size=4,
)
doc_like = st.dictionaries(
    field_names,
    st.sampled_from(["1.0", "1.3", "2.0", "x"]) | st.lists(stage_like | json_value, max_size=4) | json_value,
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(doc_like | json_value)
def test_random_documents_parse_or_raise_spec_errors_only(doc: object) -> None:
    try:
        spec = PipelineSpec.from_dict(doc)  # type: ignore[arg-type]
    except SpecError as exc:
        # a pipeline document's errors are all PipelineErrors, except a newer major version
        assert isinstance(exc, PipelineError | UnsupportedVersionError)
        return
    # whatever parses, round-trips exactly
    assert PipelineSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


stage_specs = st.builds(
    StageSpec,
    op=st.sampled_from(["cast", "scale", "softmax", "top_k", "wasm", "cascade", "my_op2"]),
    params=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
            max_leaves=10,
        ),
        max_size=4,
    ),
    name=st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(stage_specs, max_size=4), st.lists(stage_specs, max_size=4))
def test_every_valid_spec_round_trips(pre: list[StageSpec], post: list[StageSpec]) -> None:
    names = [s.name for s in pre + post if s.name is not None]
    if len(names) != len(set(names)):
        with pytest.raises(PipelineError, match="used twice"):
            PipelineSpec(pre=tuple(pre), post=tuple(post))
        return
    spec = PipelineSpec(pre=tuple(pre), post=tuple(post))
    text = json.dumps(spec.to_dict(), allow_nan=False)
    assert PipelineSpec.from_dict(json.loads(text)) == spec

"""The bundle manifest: strict parsing, round trips, unknown fields kept, major versions refused,
and the check vector whose shapes live in the manifest and whose bytes live in a member."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import IntegrityError, SpecError, UnsupportedVersionError, UsageError
from tinymlops.spec.manifest import (
    CHECK_MEMBER,
    BundleManifest,
    BundleModel,
    CheckTensor,
    CheckVector,
    KeyWrap,
    LineageStep,
    MemberEntry,
    canonical_json,
)

SHA = "ab" * 32


def make_manifest(**changes: Any) -> BundleManifest:
    fields: dict[str, Any] = dict(
        bundle_id="0123456789abcdef0123456789abcdef",
        created_at="2024-05-01T12:00:00+00:00",
        target="rpi-4",
        model=BundleModel("digits", 1, "fp16", "digits:1/fp16", SHA, 10, "onnx", "onnxruntime", "model.enc"),
        extra_models={"small": BundleModel("tiny", 2, "", "tiny:2", SHA, 5, "tflite", "litert", "models/small.enc")},
        lineage=(
            LineageStep("digits:1", SHA),
            LineageStep("digits:1/fp16", SHA, {"name": "fp16", "recipe": "fp16", "params": {}}),
        ),
        pipeline={"spec_version": "1.0", "pre": [{"op": "scale", "factor": 2.0}]},
        members={
            "model.enc": MemberEntry(SHA, 26, "model", True, b"n" * 12),
            "models/small.enc": MemberEntry(SHA, 21, "model", True, b"m" * 12),
            "wasm/norm.wasm": MemberEntry(SHA, 8, "wasm", False, None),
            "check.bin": MemberEntry(SHA, 12, "check", False, None),
        },
        key_wrap=KeyWrap("device", "0011223344556677", b"e" * 32, b"s" * 32, b"n" * 12, b"w" * 48),
        check=CheckVector(
            (CheckTensor("input", (1, 2), b"\x01" * 8),), (CheckTensor("output", (1, 1), b"\x02" * 4),), 1e-4, 1e-3
        ),
    )
    fields.update(changes)
    return BundleManifest(**fields)


def test_round_trip_through_canonical_bytes() -> None:
    m = make_manifest()
    raw = m.canonical_bytes()
    assert raw == canonical_json(json.loads(raw))  # sorted keys, no spaces
    back = BundleManifest.from_bytes(raw)
    assert back == m and back.raw == raw and back.to_bytes() == raw
    assert back.to_dict() == m.to_dict()
    assert BundleManifest.from_dict(m.to_dict()) == m
    assert set(back.models) == {"main", "small"}
    assert set(back.members_of_role("wasm")) == {"wasm/norm.wasm"}
    assert back.policies == {n: {"enabled": False} for n in ("metering", "telemetry", "guard", "proof")}
    assert back.spec_version == "2.0" and back.check is not None and back.check.member == CHECK_MEMBER


def test_the_check_tensors_bytes_are_not_in_the_manifest_but_bound_from_its_member() -> None:
    m = make_manifest()
    assert m.check is not None and m.check.loaded
    raw = m.canonical_bytes()
    assert b"data" not in raw and base64.b64encode(b"\x01" * 8) not in raw
    payload = m.check.payload()
    assert payload == b"\x01" * 8 + b"\x02" * 4 and m.check.nbytes == 12 == m.members["check.bin"].size
    parsed = BundleManifest.from_bytes(raw)
    assert parsed.check is not None and not parsed.check.loaded  # a manifest on its own has shapes only
    bound = parsed.with_check_data(payload)
    assert bound.check is not None and bound.check.loaded and bound == parsed and bound.raw == raw
    assert bound.check.inputs[0].data == b"\x01" * 8 and bound.check.outputs[0].data == b"\x02" * 4
    with pytest.raises(IntegrityError, match="holds 11 bytes") as info:
        parsed.with_check_data(payload[:-1])
    assert info.value.member == "check.bin"
    with pytest.raises(UsageError, match="no data"):
        parsed.check.payload()
    with pytest.raises(UsageError, match="no check vector"):
        make_manifest(check=None, members={k: v for k, v in m.members.items() if k != "check.bin"}).with_check_data(b"")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3), min_size=2, max_size=5),
    st.integers(1, 4),
    st.randoms(use_true_random=False),
)
def test_payload_and_bind_round_trip_any_shapes(shapes: list[list[int]], n_inputs: int, rnd: Any) -> None:
    n_inputs = min(n_inputs, len(shapes) - 1)
    tensors = []
    for i, shape in enumerate(shapes):
        values = np.array([rnd.uniform(-1e6, 1e6) for _ in range(int(np.prod(shape)))], dtype="<f4")
        tensors.append(CheckTensor(f"t{i}", tuple(shape), values.tobytes()))
    check = CheckVector(tuple(tensors[:n_inputs]), tuple(tensors[n_inputs:]), 0.0, 0.0)
    payload = check.payload()
    assert len(payload) == check.nbytes == sum(4 * int(np.prod(s)) for s in shapes)
    back = CheckVector.from_dict(json.loads(json.dumps(check.to_dict()))).bind(payload)
    assert back == check and [t.data for t in back.tensors] == [t.data for t in check.tensors]


def test_unknown_fields_are_kept_at_every_level_and_raw_bytes_byte_for_byte() -> None:
    d = make_manifest().to_dict()
    d["spec_version"] = "2.9"
    d["future_top"] = {"x": [1, 2]}
    d["model"]["quantization_report"] = "kept"
    d["members"]["model.enc"]["compression"] = "zstd"
    d["key_wrap"]["kem"] = "x25519"
    d["lineage"][0]["note"] = 1
    d["check"]["seed"] = 7
    d["check"]["inputs"][0]["layout"] = "NC"
    raw = json.dumps(d, indent=3).encode()  # not canonical: the bytes are kept as they are
    m = BundleManifest.from_bytes(raw)
    assert m.raw == raw and m.to_bytes() == raw
    assert m.spec_version == "2.9" and m.unrecognized == {"future_top": {"x": [1, 2]}}
    assert m.to_dict() == d
    assert BundleManifest.from_dict(m.to_dict()).to_dict() == d


@pytest.mark.parametrize("version", ["1.0", "3.0", "0.9", "10.1"])
def test_unsupported_major_version_is_refused(version: str) -> None:
    d = make_manifest().to_dict()
    d["spec_version"] = version
    d["something_new"] = True
    with pytest.raises(UnsupportedVersionError, match=f"unsupported spec_version {version}"):
        BundleManifest.from_bytes(canonical_json(d))


def test_a_1_0_manifest_with_inline_check_data_is_refused_as_unsupported() -> None:
    """1.0 carried the check tensors inline as base64; 2.0 reads only the member form."""
    d = make_manifest().to_dict()
    d["spec_version"] = "1.0"
    del d["check"]["member"], d["members"]["check.bin"]
    for t in d["check"]["inputs"] + d["check"]["outputs"]:
        t["data"] = base64.b64encode(b"\x00" * 4 * int(np.prod(t["shape"]))).decode()
    with pytest.raises(UnsupportedVersionError, match=r"unsupported spec_version 1\.0 \(this build reads 2\.x\)"):
        BundleManifest.from_bytes(canonical_json(d))


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    node: Any = d
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec_version", "one", "spec_version"),
        ("spec_version", KeyError, "spec_version"),
        ("bundle_id", "xyz", "bundle_id"),
        ("created_at", "yesterday", "created_at"),
        ("target", 3, "target"),
        ("model", KeyError, "model"),
        ("model.version", "1", "version"),
        ("model.format", "pt", "format"),
        ("model.backend", "tensorrt", "backend"),
        ("model.sha256", "AB" * 32, "sha256"),
        ("model.member", "missing.enc", "not listed"),
        ("model.member", "wasm/norm.wasm", "role 'wasm'"),
        ("extra_models.small.member", "model.enc", "share member"),
        ("members.model.enc.size", -1, "size"),
        ("members.model.enc.encrypted", "yes", "encrypted"),
        ("members.model.enc.nonce", "!!", "base64"),
        ("members.model.enc.nonce", "AAAA", "12 bytes"),
        ("members.wasm/norm.wasm.nonce", "AAAAAAAAAAAAAAAA", "must be null"),
        ("key_wrap.mode", "group", "mode"),
        ("key_wrap.wrapped_key", "AAAA", "48 bytes"),
        ("key_wrap.recipient_key_id", "zz", "recipient_key_id"),
        ("pipeline", [1], "pipeline"),
        ("policies", [], "policies"),
        ("policies.metering", True, "policy 'metering'"),
        ("lineage", {}, "lineage"),
        ("check.inputs", [], "inputs"),
        ("check.atol", -1, "atol"),
        ("check.member", KeyError, "member"),
        ("check.member", "../up", "bad member name"),
        ("check.member", "missing.bin", "'missing.bin', which is not listed"),
        ("check.member", "model.enc", "role 'model', not 'check'"),
        ("check.inputs.0.shape", [1, 3], r"12 bytes, but its tensors \(input \[1, 3\], output \[1, 1\]\) need 16"),
        ("check.inputs.0.shape", [1, -2], "non-negative"),
        ("check.inputs.0.shape", [1, True], "non-negative"),
        ("check.inputs.0.dtype", "int8", "dtype"),
        ("check.inputs.0.name", "", "name"),
        ("members.check.bin.size", 13, "13 bytes, but its tensors"),
        ("members.check.bin.role", "model", "role 'model', not 'check'"),
        ("members.wasm/norm.wasm.role", "check", "'wasm/norm.wasm' has role 'check' but is not the check vector's"),
    ],
)
def test_bad_known_fields_are_refused_naming_the_field(path: str, value: Any, message: str) -> None:
    d = make_manifest().to_dict()
    if path.startswith("members."):  # member names contain dots: split off the last part only
        name, key = path.removeprefix("members.").rsplit(".", 1)
        d["members"][name][key] = value
    elif path.startswith("check.inputs.0."):
        d["check"]["inputs"][0][path.rsplit(".", 1)[1]] = value
    else:
        d = _set(d, path, value)
    with pytest.raises(SpecError, match=message):
        BundleManifest.from_bytes(json.dumps(d).encode())


def test_the_check_member_must_be_plain_and_only_the_check_vector_has_role_check() -> None:
    d = make_manifest().to_dict()
    d["members"]["check.bin"].update(encrypted=True, nonce=base64.b64encode(b"n" * 12).decode())
    with pytest.raises(SpecError, match=r"'check\.bin' must not be encrypted"):
        BundleManifest.from_bytes(canonical_json(d))
    d = make_manifest().to_dict()
    d["check"] = None  # the member stays: a bulk member nothing uses
    with pytest.raises(SpecError, match=r"'check\.bin' has role 'check' but the manifest has no check vector"):
        BundleManifest.from_bytes(canonical_json(d))
    del d["members"]["check.bin"]
    assert BundleManifest.from_bytes(canonical_json(d)).check is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["member", "inputs", "outputs", "atol", "rtol", "inputs.0", "inputs.0.shape", "inputs.0.name",
                     "inputs.0.dtype", "outputs.0.shape", "outputs.0.shape.0"]),
    _JSON,
)  # fmt: skip
def test_any_value_in_the_check_table_parses_or_is_a_spec_error(path: str, value: Any) -> None:
    d = make_manifest().to_dict()
    node: Any = d["check"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part) if part.isdigit() else part]
    node[int(last) if last.isdigit() else last] = value
    try:
        m = BundleManifest.from_bytes(json.dumps(d).encode())
    except SpecError:
        return
    # accepted: then it is self-consistent (the member's size is what the shapes need)
    assert m.check is not None and m.members[m.check.member].size == m.check.nbytes
    assert m.check.member == "check.bin" and m.members["check.bin"].role == "check"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff{}", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"x": NaN}', "NaN"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply|not valid JSON"),
    ],
)
def test_malformed_json_is_a_spec_error(raw: bytes, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        BundleManifest.from_bytes(raw)


def test_public_dict_has_no_secrets() -> None:
    m = make_manifest()
    public = json.dumps(m.public_dict())
    for secret in (m.key_wrap.wrapped_key, m.key_wrap.salt, m.key_wrap.ephemeral_public):
        assert base64.b64encode(secret).decode() not in public
    shown = m.public_dict()
    assert shown["check"]["member"] == "check.bin" and shown["check"]["inputs"][0]["shape"] == [1, 2]
    assert "data" not in json.dumps(shown["check"])
    assert m.public_dict()["key_wrap"] == {
        "mode": "device",
        "recipient_key_id": "0011223344556677",
        "wrapped_key_bytes": 48,
    }

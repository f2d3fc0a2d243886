"""The bundle manifest: strict parsing, round trips, unknown fields kept, major versions refused."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from tinymlops.errors import SpecError, UnsupportedVersionError
from tinymlops.spec.manifest import (
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
        },
        key_wrap=KeyWrap("device", "0011223344556677", b"e" * 32, b"s" * 32, b"n" * 12, b"w" * 48),
        check=CheckVector(
            (CheckTensor("input", (1, 2), b"\x00" * 8),), (CheckTensor("output", (1, 1), b"\x00" * 4),), 1e-4, 1e-3
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


def test_unknown_fields_are_kept_at_every_level_and_raw_bytes_byte_for_byte() -> None:
    d = make_manifest().to_dict()
    d["spec_version"] = "1.9"
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
    assert m.spec_version == "1.9" and m.unrecognized == {"future_top": {"x": [1, 2]}}
    assert m.to_dict() == d
    assert BundleManifest.from_dict(m.to_dict()).to_dict() == d


@pytest.mark.parametrize("version", ["2.0", "0.9", "10.1"])
def test_unsupported_major_version_is_refused(version: str) -> None:
    d = make_manifest().to_dict()
    d["spec_version"] = version
    d["something_new"] = True
    with pytest.raises(UnsupportedVersionError, match=f"unsupported spec_version {version}"):
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
        ("check.inputs.0.data", "AAAA", "needs 8"),
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
    assert m.public_dict()["key_wrap"] == {
        "mode": "device",
        "recipient_key_id": "0011223344556677",
        "wrapped_key_bytes": 48,
    }

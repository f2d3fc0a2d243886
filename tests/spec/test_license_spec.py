"""License v1: canonical bytes, strict parser, unknown fields kept byte-for-byte, only a new major refused."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from metering_world import Issuer
from tinymlops.errors import SpecError, UnsupportedVersionError
from tinymlops.spec.license import License

DEVICE = Ed25519PrivateKey.generate()
ISSUER = Issuer()


def test_round_trip_is_canonical_and_exact() -> None:
    lic = ISSUER.license(DEVICE, queries=7, min_version=1, max_version=3)
    raw = lic.to_bytes()
    again = License.from_bytes(raw)
    assert again == lic and again.to_bytes() == raw
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert again.covers_version(2) and not again.covers_version(4) and not again.covers_version(None)


def test_unknown_fields_are_kept_byte_for_byte_and_new_minor_accepted() -> None:
    doc = json.loads(ISSUER.license(DEVICE).to_bytes())
    doc["spec_version"] = "1.7"
    doc["future"] = {"z": [1, 2], "a": "x"}
    raw = json.dumps(doc, indent=1).encode()  # not canonical: still the bytes that were signed
    lic = License.from_bytes(raw)
    assert lic.extra == {"future": {"z": [1, 2], "a": "x"}} and lic.to_bytes() == raw


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"spec_version": "2.0"}, "unsupported spec_version"),
        ({"queries": 0}, "queries"),
        ({"queries": True}, "queries"),
        ({"license_id": "ABC"}, "license_id"),
        ({"valid_until": 1}, "valid_until"),
        ({"min_version": 5, "max_version": 2}, "min_version"),
        ({"device_id": "0" * 16}, "key id of device_public_key"),
        ({"model": "../etc"}, "model"),
        ({"previous_license_id": "x"}, "previous_license_id"),
    ],
)
def test_bad_fields_are_refused_by_name(change: dict, match: str) -> None:
    doc = json.loads(ISSUER.license(DEVICE).to_bytes())
    doc.update(change)
    with pytest.raises(SpecError, match=match) as info:
        License.from_bytes(json.dumps(doc).encode())
    if change.get("spec_version") == "2.0":
        assert isinstance(info.value, UnsupportedVersionError)


def test_missing_field_duplicate_key_and_oversize_are_refused() -> None:
    doc = json.loads(ISSUER.license(DEVICE).to_bytes())
    del doc["issued_at"]
    with pytest.raises(SpecError, match="issued_at"):
        License.from_bytes(json.dumps(doc).encode())
    with pytest.raises(SpecError, match="duplicate"):
        License.from_bytes(b'{"queries":1,"queries":2}')
    with pytest.raises(SpecError, match="bytes"):
        License.from_bytes(b" " * 20000)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_bytes_only_raise_spec_error(data: bytes) -> None:
    with pytest.raises(SpecError):
        License.from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 10**12),
    st.integers(0, 10**11),
    st.integers(1, 10**9),
    st.one_of(st.none(), st.integers(0, 100)),
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in License.__dataclass_fields__), st.integers()
    ),
)
def test_any_valid_license_round_trips(queries: int, start: int, span: int, vmin: int | None, extra: dict) -> None:
    lic = ISSUER.license(DEVICE, queries=queries, valid_from=start, valid_until=start + span, min_version=vmin)
    doc = {**extra, **lic.to_dict()}
    raw = json.dumps(doc, sort_keys=True).encode()
    again = License.from_bytes(raw)
    assert again.to_bytes() == raw and again.queries == queries and dict(again.extra) == extra

"""Key pairs, key files and device identities."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.crypto.keys import (
    DeviceKeys,
    decode_public_key,
    generate_signing_key,
    generate_wrapping_key,
    key_id,
    load_public_key,
    load_signing_key,
    load_wrapping_key,
    public_bytes,
    save_private_key,
    save_public_key,
)
from tinymlops.errors import InvalidInputError, UsageError


def test_private_key_round_trip_is_0600_and_atomic(tmp_path: Path) -> None:
    key = generate_signing_key()
    path = save_private_key(tmp_path / "k" / "release.ed25519", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_bytes(load_signing_key(path)) == public_bytes(key)
    assert [p.name for p in path.parent.iterdir()] == ["release.ed25519"]  # no temp file left behind
    wkey = generate_wrapping_key()
    wpath = save_private_key(tmp_path / "fleet.x25519", wkey)
    assert public_bytes(load_wrapping_key(wpath)) == public_bytes(wkey)


def test_missing_and_bad_key_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ed25519"
    with pytest.raises(UsageError, match=r"nope\.ed25519"):
        load_signing_key(missing)
    bad = tmp_path / "bad.ed25519"
    bad.write_text("not a key")
    with pytest.raises(InvalidInputError, match=r"bad\.ed25519"):
        load_signing_key(bad)
    wrong = save_private_key(tmp_path / "x.x25519", generate_wrapping_key())
    with pytest.raises(InvalidInputError, match=r"x\.x25519.*X25519"):
        load_signing_key(wrong)
    with pytest.raises(InvalidInputError, match="expected an X25519"):
        load_wrapping_key(save_private_key(tmp_path / "e.ed25519", generate_signing_key()))
    with pytest.raises(UsageError, match="directory"):
        load_signing_key(tmp_path)


def test_public_key_formats(tmp_path: Path) -> None:
    key = generate_wrapping_key()
    raw = public_bytes(key)
    assert len(raw) == 32
    path = save_public_key(tmp_path / "dev.pub", key)
    assert path.read_text().strip() == base64.b64encode(raw).decode()
    assert load_public_key(path) == raw
    assert decode_public_key(raw) == raw
    assert decode_public_key(raw.hex()) == raw
    assert decode_public_key(raw.hex().upper()) == raw
    assert decode_public_key(base64.b64encode(raw) + b"\n") == raw
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert decode_public_key(pem) == raw
    for bad in (b"", b"abc", base64.b64encode(raw[:31]), b"\xff" * 33):
        with pytest.raises(InvalidInputError):
            decode_public_key(bad)
    with pytest.raises(UsageError):
        public_bytes(b"short")


def test_key_id_is_stable_hex_of_the_public_key() -> None:
    key = generate_signing_key()
    kid = key_id(key)
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert kid == key_id(key.public_key()) == key_id(public_bytes(key))
    assert kid != key_id(generate_signing_key())


def test_device_identity_save_load(tmp_path: Path) -> None:
    dev = DeviceKeys.generate()
    files = dev.save(tmp_path / "dev")
    for name in ("signing_private", "wrapping_private"):
        assert stat.S_IMODE(files[name].stat().st_mode) == 0o600
    assert load_public_key(files["wrapping_public"]) == dev.wrapping_public
    assert load_public_key(files["signing_public"]) == dev.signing_public
    again = DeviceKeys.load(tmp_path / "dev")
    assert isinstance(again.signing, Ed25519PrivateKey) and isinstance(again.wrapping, X25519PrivateKey)
    assert again.device_id == dev.device_id and again.wrapping_key_id == dev.wrapping_key_id
    assert DeviceKeys.exists(tmp_path / "dev") and not DeviceKeys.exists(tmp_path / "other")
    # the repr and the public view never carry private material
    pem = (tmp_path / "dev" / "device.x25519").read_text()
    assert "PRIVATE" in pem
    assert "PRIVATE" not in repr(dev) and pem not in repr(dev)
    assert set(dev.public_dict()) == {"device_id", "signing_public", "wrapping_public", "wrapping_key_id"}
    with pytest.raises(UsageError, match=r"device\.ed25519"):
        DeviceKeys.load(tmp_path / "missing")

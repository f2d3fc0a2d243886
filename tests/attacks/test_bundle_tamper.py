"""Attacks on bundles: every one refused with the right error, never a crash or another exception.

The bundles are real: built by the builder from a registered model in a real workspace, signed
with the workspace's release key, opened with ``open_bundle`` as a device does.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tiny_models import tiny_onnx as _tiny_onnx
from tinymlops.bundle import open_bundle, verify_bundle
from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.container import HEADER, MAGIC, pack, unpack
from tinymlops.bundle.workspace_keys import release_key
from tinymlops.crypto.keys import DeviceKeys, generate_signing_key, generate_wrapping_key
from tinymlops.crypto.signing import DetachedSignature
from tinymlops.errors import IntegrityError, KeyMismatchError, SignatureError, SpecError, UnsupportedVersionError
from tinymlops.spec.manifest import BundleManifest, canonical_json
from tinymlops.workspace import Workspace


@dataclass
class Setup:
    ws: Workspace
    device_a: DeviceKeys
    device_b: DeviceKeys
    bundle: bytes  # tiny:1 for device A (no extras)
    bundle2: bytes  # tiny:1 again for device A (another bundle id and content key)
    cascade: bytes  # tiny:1 + cascade model "small" + a wasm module, for device A

    @property
    def trusted(self) -> list[bytes]:
        return [release_key(self.ws).public_key()]

    def open(self, data: bytes, key: object | None = None):  # type: ignore[no-untyped-def]
        return open_bundle(data, key=key or self.device_a, trusted_release_keys=self.trusted)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("attacks")
    ws = Workspace.init(root / "ws")
    ws.registry.register("tiny", _tiny_onnx())
    a, b = DeviceKeys.generate(), DeviceKeys.generate()

    def build(name: str, **kw: object) -> bytes:
        out = root / name
        build_bundle(ws, "tiny:1", target="x86-edge-server", device_public_key=a.wrapping_public, out=out, **kw)
        return out.read_bytes()

    s = Setup(
        ws,
        a,
        b,
        build("one.tmlb"),
        build("two.tmlb"),
        build("cascade.tmlb", extra_models={"small": "tiny:1"}, wasm_modules={"norm": b"\x00asm\x01\x00\x00\x00"}),
    )
    yield s
    ws.close()


def _regions(data: bytes) -> list[tuple[int, int, str | None]]:
    """(start, end, member) for every byte range: None marks structure (magic, count, names, lengths)."""
    out: list[tuple[int, int, str | None]] = [(0, 12, None)]
    pos = 12
    for name, blob in unpack(data).items():
        header = 2 + len(name.encode()) + 8
        out.append((pos, pos + header, None))
        out.append((pos + header, pos + header + len(blob), name))
        pos += header + len(blob)
    assert pos == len(data)
    return out


def _resign(setup: Setup, manifest_bytes: bytes, members: dict[str, bytes], key=None) -> bytes:  # type: ignore[no-untyped-def]
    sig = DetachedSignature.create(key or release_key(setup.ws), manifest_bytes)
    rest = {k: v for k, v in members.items() if k not in ("manifest.json", "manifest.sig")}
    return pack({"manifest.json": manifest_bytes, "manifest.sig": sig.encode(), **rest})


# --- baseline -------------------------------------------------------------------------------
def test_the_untampered_bundles_open(setup: Setup) -> None:
    for data in (setup.bundle, setup.bundle2, setup.cascade):
        opened = setup.open(data)
        assert opened.models["main"] == _tiny_onnx()
    assert len(setup.bundle) < 4096  # small enough to flip every byte


# --- single-byte flips, exhaustively -------------------------------------------------------
@pytest.mark.parametrize("how", ["bit", "xff"])
def test_every_single_byte_flip_is_refused_naming_the_member(setup: Setup, how: str) -> None:
    data = setup.bundle
    names = set(unpack(data))
    signed = {"manifest.json", "manifest.sig"}
    failures: list[tuple[object, ...]] = []
    seen: dict[tuple[object, ...], int] = {}
    for start, end, member in _regions(data):
        for i in range(start, end):
            for bit in range(8) if how == "bit" else (None,):
                mutated = bytearray(data)
                mutated[i] ^= 0xFF if bit is None else 1 << bit
                try:
                    setup.open(bytes(mutated))
                except IntegrityError as exc:  # SignatureError is one too
                    # structure bytes (magic, count, names, lengths) may surface as the header or
                    # as whichever member the shifted parse was reading; data bytes name their member
                    # (for the signed pair: the manifest or its signature, which cannot be told apart)
                    if member is None:
                        ok = exc.member == HEADER or exc.member in names or bool(exc.member)
                    elif member in signed:
                        ok = exc.member in signed
                    else:
                        ok = exc.member == member
                    seen[(member, type(exc).__name__, exc.member if exc.member in names else "<other>")] = 1
                    if not ok:
                        failures.append((i, bit, member, type(exc).__name__, exc.member))
                except Exception as exc:  # anything else is a bug
                    failures.append((i, bit, member, type(exc).__name__, str(exc)))
                else:
                    failures.append((i, bit, member, "OPENED", None))
    assert not failures, failures[:10]
    # every data region was hit and named: the payload by itself, the signed pair by one of its two
    named = {m for m, _, got in seen if m is not None and got == m}
    assert named >= {"model.enc", "check.bin", "manifest.json", "manifest.sig"}


def test_flips_in_the_payload_name_the_payload_member(setup: Setup) -> None:
    data = setup.bundle
    for start, end, member in _regions(data):
        if member != "model.enc":
            continue
        for i in range(start, end, 7):
            mutated = bytearray(data)
            mutated[i] ^= 0x01
            with pytest.raises(IntegrityError, match=r"model\.enc") as info:
                setup.open(bytes(mutated))
            assert info.value.member == "model.enc" and type(info.value) is IntegrityError


def test_truncation_at_every_point_is_refused(setup: Setup) -> None:
    data = setup.bundle
    for cut in range(len(data)):
        with pytest.raises(IntegrityError) as info:
            setup.open(data[:cut])
        assert info.value.member is not None
    with pytest.raises(IntegrityError, match="trailing"):
        setup.open(data + b"\x00")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_random_mutations_only_integrity_errors(setup: Setup, data: st.DataObject) -> None:
    blob = bytearray(setup.cascade)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    assume(bytes(blob) != setup.cascade)  # two flips of the same byte can cancel out
    with pytest.raises(IntegrityError) as info:
        setup.open(bytes(blob))
    assert info.value.member is not None


# --- keys -----------------------------------------------------------------------------------
def test_wrong_device_key_is_a_key_mismatch(setup: Setup) -> None:
    with pytest.raises(KeyMismatchError, match="not for this device/fleet key"):
        setup.open(setup.bundle, setup.device_b)
    with pytest.raises(KeyMismatchError):
        setup.open(setup.bundle, generate_wrapping_key())
    # verification alone (no key) still passes: the bundle is intact, just not for B
    assert verify_bundle(setup.bundle, trusted_release_keys=setup.trusted).manifest.bundle_id


def test_a_bundle_for_device_a_is_useless_on_device_b_even_if_the_key_id_is_forged(setup: Setup) -> None:
    members = unpack(setup.bundle)
    doc = json.loads(members["manifest.json"])
    doc["key_wrap"]["recipient_key_id"] = setup.device_b.wrapping_key_id
    forged = _resign(setup, canonical_json(doc), members)  # even with the real release key
    with pytest.raises(KeyMismatchError):
        setup.open(forged, setup.device_b)


def test_unknown_release_key_is_refused(setup: Setup) -> None:
    with pytest.raises(SignatureError, match="signed by an untrusted release key") as info:
        open_bundle(setup.bundle, key=setup.device_a, trusted_release_keys=[generate_signing_key().public_key()])
    assert info.value.member == "manifest.sig"
    with pytest.raises(SignatureError, match="no trusted"):
        open_bundle(setup.bundle, key=setup.device_a, trusted_release_keys=[])
    # an attacker re-signs a changed manifest with their own key, keeping a trusted-looking bundle
    members = unpack(setup.bundle)
    resigned = _resign(setup, members["manifest.json"], members, key=generate_signing_key())
    with pytest.raises(SignatureError, match="untrusted release key"):
        setup.open(resigned)


def test_manifest_changed_without_resigning_is_refused(setup: Setup) -> None:
    members = unpack(setup.bundle)
    doc = json.loads(members["manifest.json"])
    doc["target"] = "rpi-4"
    members["manifest.json"] = canonical_json(doc)
    with pytest.raises(SignatureError, match="does not verify") as info:
        setup.open(pack(members))
    assert info.value.member == "manifest.json"


# --- versions -------------------------------------------------------------------------------
def test_newer_major_version_is_refused_even_when_properly_signed(setup: Setup) -> None:
    members = unpack(setup.bundle)
    doc = json.loads(members["manifest.json"])
    doc["spec_version"] = "3.0"
    doc["model"] = {"completely": "different"}
    with pytest.raises(UnsupportedVersionError, match=r"unsupported spec_version 3\.0"):
        setup.open(_resign(setup, canonical_json(doc), members))


def test_newer_minor_version_with_unknown_fields_verifies_and_keeps_them(setup: Setup) -> None:
    members = unpack(setup.bundle)
    doc = json.loads(members["manifest.json"])
    doc["spec_version"] = "2.4"
    doc["provenance"] = {"slsa": "v1", "builder": "ci"}
    doc["model"]["quantization"] = {"scheme": "none"}
    doc["members"]["model.enc"]["compression"] = None
    doc["key_wrap"]["hint"] = "tpm"
    raw = json.dumps(doc, indent=1, ensure_ascii=False).encode()  # not even canonical: bytes are kept
    opened = setup.open(_resign(setup, raw, members))
    m = opened.manifest
    assert opened.models["main"] == _tiny_onnx()
    assert m.raw == raw and m.to_bytes() == raw and m.spec_version == "2.4"
    assert m.unrecognized == {"provenance": {"slsa": "v1", "builder": "ci"}}
    assert m.to_dict() == doc
    assert BundleManifest.from_bytes(raw).to_dict()["model"]["quantization"] == {"scheme": "none"}


# --- members --------------------------------------------------------------------------------
def test_a_member_swapped_in_from_another_bundle_is_refused(setup: Setup) -> None:
    mine, theirs = unpack(setup.bundle), unpack(setup.bundle2)
    assert mine["model.enc"] != theirs["model.enc"]
    swapped = dict(mine, **{"model.enc": theirs["model.enc"]})
    with pytest.raises(IntegrityError, match="SHA-256") as info:
        setup.open(pack(swapped))
    assert info.value.member == "model.enc"
    # even a manifest that lists the foreign ciphertext (re-signed by the release key) does not
    # decrypt it: another content key, and the AAD binds it to the other bundle's id
    doc = json.loads(mine["manifest.json"])
    doc["members"]["model.enc"] = json.loads(theirs["manifest.json"])["members"]["model.enc"]
    with pytest.raises(IntegrityError, match="decryption failed") as info:
        setup.open(_resign(setup, canonical_json(doc), swapped))
    assert info.value.member == "model.enc"


def test_members_swapped_between_positions_do_not_decrypt(setup: Setup) -> None:
    members = unpack(setup.cascade)
    doc = json.loads(members["manifest.json"])
    a, b = "model.enc", "models/small.enc"
    members[a], members[b] = members[b], members[a]
    doc["members"][a], doc["members"][b] = doc["members"][b], doc["members"][a]
    with pytest.raises(IntegrityError, match="decryption failed") as info:
        setup.open(_resign(setup, canonical_json(doc), members))  # same key and nonce, other AAD
    assert info.value.member in (a, b)


def test_extra_and_missing_members_are_refused(setup: Setup) -> None:
    members = unpack(setup.bundle)
    with pytest.raises(IntegrityError, match="not listed") as info:
        setup.open(pack({**members, "evil.bin": b"payload"}))
    assert info.value.member == "evil.bin"
    without = {k: v for k, v in members.items() if k != "model.enc"}
    with pytest.raises(IntegrityError, match="missing") as info:
        setup.open(pack(without))
    assert info.value.member == "model.enc"
    for required in ("manifest.json", "manifest.sig"):
        with pytest.raises(IntegrityError) as info:
            setup.open(pack({k: v for k, v in members.items() if k != required}))
        assert info.value.member == required


def test_duplicate_member_names_are_refused(setup: Setup) -> None:
    members = unpack(setup.bundle)
    extra = struct.pack(">H", 9) + b"model.enc" + struct.pack(">Q", 1) + b"x"
    raw = pack(members)
    count = struct.unpack(">I", raw[8:12])[0]
    dup = MAGIC + struct.pack(">I", count + 1) + raw[12:] + extra
    with pytest.raises(IntegrityError, match="duplicate") as info:
        setup.open(dup)
    assert info.value.member == "model.enc"


# --- the check vector (smoke test) ---------------------------------------------------------
def test_a_changed_check_vector_is_refused_naming_its_member(setup: Setup) -> None:
    """Rewriting the expected outputs so that a broken model would pass the smoke test: the check
    member is covered by the signed manifest's SHA-256 like every other member."""
    members = unpack(setup.bundle)
    check = bytearray(members["check.bin"])
    check[-4:] = np.float32(123.0).tobytes()  # the last expected output
    with pytest.raises(IntegrityError, match=r"'check\.bin' does not match its SHA-256") as info:
        setup.open(pack({**members, "check.bin": bytes(check)}))
    assert info.value.member == "check.bin" and type(info.value) is IntegrityError
    with pytest.raises(IntegrityError) as info:
        verify_bundle(pack({**members, "check.bin": bytes(check)}), trusted_release_keys=setup.trusted)
    assert info.value.member == "check.bin"
    with pytest.raises(IntegrityError, match="missing") as info:
        setup.open(pack({k: v for k, v in members.items() if k != "check.bin"}))
    assert info.value.member == "check.bin"


def test_the_check_vector_cannot_be_moved_out_of_the_signed_manifest(setup: Setup) -> None:
    """Even a manifest re-signed by the release key must describe its check member exactly."""
    members = unpack(setup.bundle)
    doc = json.loads(members["manifest.json"])
    doc["check"]["inputs"][0]["shape"] = [1, 4]  # half the bytes the member holds
    with pytest.raises(SpecError, match=r"check vector member 'check\.bin' is \d+ bytes, but its tensors"):
        setup.open(_resign(setup, canonical_json(doc), members))
    doc = json.loads(members["manifest.json"])
    doc["members"]["check.bin"]["role"] = "model"
    with pytest.raises(SpecError, match="not 'check'"):
        setup.open(_resign(setup, canonical_json(doc), members))


def test_the_opened_manifest_carries_the_verified_check_vector(setup: Setup) -> None:
    opened = setup.open(setup.bundle)
    check = opened.manifest.check
    assert check is not None and check.loaded
    assert b"".join(t.data for t in check.tensors) == unpack(setup.bundle)["check.bin"]


def test_plaintext_hash_is_checked_after_decryption(setup: Setup, tmp_path: Path) -> None:
    """A release key holder who lies about the plaintext hash is still caught on the device."""
    members = unpack(setup.bundle)
    doc = json.loads(members["manifest.json"])
    doc["model"]["sha256"] = "0" * 64
    with pytest.raises(IntegrityError, match="plaintext SHA-256") as info:
        setup.open(_resign(setup, canonical_json(doc), members))
    assert info.value.member == "model.enc"

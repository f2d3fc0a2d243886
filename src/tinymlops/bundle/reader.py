"""Opening a bundle on a device: verify, check, unwrap, decrypt — in memory only.

:func:`open_bundle` works in this order, and stops at the first failure:

1. parse the container strictly (:mod:`tinymlops.bundle.container`) -> :class:`IntegrityError`;
2. verify ``manifest.sig`` over the *exact* ``manifest.json`` bytes with a key the caller
   trusts -> :class:`SignatureError` (``"signed by an untrusted release key <id>"`` when the
   signer is not trusted);
3. parse the manifest (only now: nothing unsigned is interpreted) -> :class:`SpecError`, or
   :class:`UnsupportedVersionError` for an unsupported major version;
4. every payload member's size and SHA-256 against the manifest; members present but not
   listed, or listed but missing, are refused -> :class:`IntegrityError` naming the member;
   the check vector is then bound to the (now verified) bytes of its ``check`` member;
5. unwrap the content key with the device's (or fleet's) X25519 key -> :class:`KeyMismatchError`;
6. decrypt each member with AES-256-GCM (AAD = bundle id + member name) -> :class:`IntegrityError`
   naming the member;
7. check each model's plaintext SHA-256 against the manifest.

Plaintext exists only in the returned :class:`OpenedBundle` (bytes in memory); nothing is
written anywhere. :func:`verify_bundle` does steps 1–4 (a server holds no device key);
:func:`inspect_bundle` shows a manifest without verifying it and without secrets. Each step is
also a function of its own (:func:`verify_manifest`, :func:`check_members`, :func:`content_key`,
:func:`decrypt_members`, :func:`check_models`), which is how the runtime benchmark times them.

Edge-safe: standard library, ``cryptography`` and (for the smoke check only) numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.bundle.container import MAX_BUNDLE_BYTES, unpack
from tinymlops.crypto.envelope import WrappedKey, decrypt_member, unwrap_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.crypto.signing import DetachedSignature, TrustedKey, verify_detached
from tinymlops.errors import IntegrityError, UsageError
from tinymlops.spec.manifest import MANIFEST_MEMBER, SIGNATURE_MEMBER, BundleManifest, CheckVector

if TYPE_CHECKING:
    import numpy as np

    from tinymlops.edge.backends import Backend

WASM_PREFIX = "wasm/"
WASM_SUFFIX = ".wasm"

BundleSource = bytes | bytearray | memoryview | str | Path


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, manifest and member hashes checked out (nothing decrypted).

    ``members`` holds the stored (encrypted) payload bytes by member name."""

    manifest: BundleManifest
    release_key_id: str
    members: Mapping[str, bytes] = field(repr=False)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.members.values())


@dataclass(frozen=True)
class OpenedBundle:
    """A verified, decrypted bundle. ``models`` maps the pipeline's model names (``"main"`` and
    any cascade models) to plaintext model bytes; ``wasm_modules`` maps module names to bytes.
    Both live in memory only."""

    manifest: BundleManifest
    models: dict[str, bytes] = field(repr=False)
    wasm_modules: dict[str, bytes] = field(default_factory=dict, repr=False)
    release_key_id: str = ""

    def __repr__(self) -> str:
        return (
            f"OpenedBundle(bundle_id={self.manifest.bundle_id!r}, model={self.manifest.model.ref!r}, "
            f"models={sorted(self.models)}, wasm_modules={sorted(self.wasm_modules)})"
        )


# --- steps ---------------------------------------------------------------------------------
def read_source(source: BundleSource) -> bytes:
    """The bundle's bytes from bytes or a path (size checked before reading)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if not isinstance(source, str | Path):
        raise UsageError(f"a bundle is bytes or a path, got {type(source).__name__}")
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise IntegrityError(f"{path}: {size} bytes exceeds the bundle limit", member="container header")
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such bundle file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a bundle file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read bundle: {exc.strerror or exc}") from exc


def _split(members: dict[str, bytes]) -> tuple[bytes, bytes, dict[str, bytes]]:
    for required in (MANIFEST_MEMBER, SIGNATURE_MEMBER):
        if required not in members:
            raise IntegrityError(f"the bundle has no '{required}' member", member=required)
    payload = {k: v for k, v in members.items() if k not in (MANIFEST_MEMBER, SIGNATURE_MEMBER)}
    return members[MANIFEST_MEMBER], members[SIGNATURE_MEMBER], payload


def check_members(manifest: BundleManifest, payload: Mapping[str, bytes]) -> None:
    """Every listed member present with its size and SHA-256; nothing unlisted."""
    for name in payload:
        if name not in manifest.members:
            raise IntegrityError(f"member '{name}' is in the bundle but not listed in the signed manifest", member=name)
    for name, entry in manifest.members.items():
        data = payload.get(name)
        if data is None:
            raise IntegrityError(f"member '{name}' is listed in the manifest but missing from the bundle", member=name)
        if len(data) != entry.size:
            raise IntegrityError(
                f"member '{name}' is {len(data)} bytes; the signed manifest says {entry.size}", member=name
            )
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise IntegrityError(f"member '{name}' does not match its SHA-256 in the signed manifest", member=name)


def verify_manifest(
    manifest_bytes: bytes, signature: bytes, trusted_release_keys: Iterable[TrustedKey]
) -> tuple[BundleManifest, str]:
    """Steps 2–3: the signature over the exact manifest bytes, and only then the strict parse.
    Returns the manifest (its check vector not yet bound to data) and the signer's key id."""
    signer = verify_detached(
        signature, manifest_bytes, trusted_release_keys, member=SIGNATURE_MEMBER, signed_member=MANIFEST_MEMBER
    )
    return BundleManifest.from_bytes(manifest_bytes), signer


def _verify(data: bytes, trusted_release_keys: Iterable[TrustedKey]) -> VerifiedBundle:
    manifest_bytes, signature, payload = _split(unpack(data))
    manifest, signer = verify_manifest(manifest_bytes, signature, trusted_release_keys)
    check_members(manifest, payload)
    if manifest.check is not None:  # its member's hash checked out just now
        manifest = manifest.with_check_data(payload[manifest.check.member])
    return VerifiedBundle(manifest, signer, payload)


def verify_bundle(source: BundleSource, *, trusted_release_keys: Iterable[TrustedKey]) -> VerifiedBundle:
    """Everything :func:`open_bundle` checks except what needs the device key (steps 1–4)."""
    return _verify(read_source(source), list(trusted_release_keys))


def _private_key(key: X25519PrivateKey | DeviceKeys) -> X25519PrivateKey:
    if isinstance(key, DeviceKeys):
        return key.wrapping
    if isinstance(key, X25519PrivateKey):
        return key
    raise UsageError(f"open_bundle needs an X25519 private key or DeviceKeys, got {type(key).__name__}")


def content_key(manifest: BundleManifest, key: X25519PrivateKey | DeviceKeys) -> bytes:
    """Step 5: unwrap the content key with the device's (or fleet's) private key."""
    kw = manifest.key_wrap
    wrapped = WrappedKey(kw.recipient_key_id, kw.ephemeral_public, kw.salt, kw.nonce, kw.wrapped_key)
    return unwrap_key(wrapped, _private_key(key), context=manifest.bundle_id.encode("ascii"))


def decrypt_members(manifest: BundleManifest, payload: Mapping[str, bytes], key: bytes) -> dict[str, bytes]:
    """Step 6: every member's plaintext (encrypted ones decrypted with the content key ``key``)."""
    plain: dict[str, bytes] = {}
    for name, entry in manifest.members.items():
        stored = payload[name]
        if entry.encrypted:
            assert entry.nonce is not None  # the manifest parser guarantees it
            plain[name] = decrypt_member(key, manifest.bundle_id, name, entry.nonce, stored)
        else:
            plain[name] = stored
    return plain


def check_models(manifest: BundleManifest, plain: Mapping[str, bytes]) -> dict[str, bytes]:
    """Step 7: each model's plaintext against the manifest's size and SHA-256; returns the
    models by the name the pipeline calls them."""
    models: dict[str, bytes] = {}
    for model_name, model in manifest.models.items():
        data = plain[model.member]
        if len(data) != model.size or hashlib.sha256(data).hexdigest() != model.sha256:
            raise IntegrityError(
                f"model '{model_name}' ({model.member}) decrypted to bytes that do not match the "
                "manifest's plaintext SHA-256",
                member=model.member,
            )
        models[model_name] = data
    return models


def open_bundle(
    data_or_path: BundleSource,
    *,
    key: X25519PrivateKey | DeviceKeys,
    trusted_release_keys: Iterable[TrustedKey],
) -> OpenedBundle:
    """Verify and decrypt a bundle in memory (see the module docstring for the order of checks)."""
    _private_key(key)  # a wrong kind of key is the caller's mistake: say so before reading anything
    verified = _verify(read_source(data_or_path), list(trusted_release_keys))
    manifest = verified.manifest
    plain = decrypt_members(manifest, verified.members, content_key(manifest, key))
    models = check_models(manifest, plain)
    wasm = {_wasm_name(name): plain[name] for name, entry in manifest.members.items() if entry.role == "wasm"}
    return OpenedBundle(manifest, models, wasm, verified.release_key_id)


def _wasm_name(member: str) -> str:
    name = member.removeprefix(WASM_PREFIX)
    return name.removesuffix(WASM_SUFFIX)


def wasm_member(name: str) -> str:
    """The member name a WebAssembly module called ``name`` is stored under."""
    return f"{WASM_PREFIX}{name}{WASM_SUFFIX}"


def inspect_bundle(data_or_path: BundleSource) -> dict[str, Any]:
    """The manifest of a bundle, **without verifying it** and without secrets (the wrapped key is
    shown only as its size and recipient key id). Use :func:`verify_bundle` to trust it."""
    members = unpack(read_source(data_or_path))
    manifest_bytes, _, _ = _split(members)
    return BundleManifest.from_bytes(manifest_bytes).public_dict()


def signature_key_id(data_or_path: BundleSource) -> str:
    """The key id a bundle *claims* to be signed by (not verified)."""
    members = unpack(read_source(data_or_path))
    _, signature, _ = _split(members)
    return DetachedSignature.decode(signature, member=SIGNATURE_MEMBER).keyid


# --- the smoke-test vector -----------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    passed: bool
    max_abs_error: float
    worst_output: str
    message: str


def check_arrays(check: CheckVector) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The check vector's inputs (by input name) and expected outputs as float32 arrays.

    The tensors must be bound to their bytes: use the manifest :func:`verify_bundle`,
    :func:`open_bundle` or ``Runtime.open`` returns, not one parsed on its own."""
    import numpy as np

    if not check.loaded:
        raise UsageError(
            f"the check vector's data (member '{check.member}') is not loaded: use the manifest of a "
            "verified bundle (verify_bundle, open_bundle, Runtime.open), not one parsed on its own"
        )

    def arr(t: Any) -> np.ndarray:
        return np.frombuffer(t.data, dtype="<f4").reshape(t.shape).astype(np.float32)

    return {t.name: arr(t) for t in check.inputs}, [arr(t) for t in check.outputs]


def run_check(manifest: BundleManifest, backend: Backend) -> CheckResult:
    """Run the manifest's smoke-test vector on a loaded backend of the main model."""
    import numpy as np

    if manifest.check is None:
        return CheckResult(True, 0.0, "", "the bundle has no check vector")
    inputs, expected = check_arrays(manifest.check)
    got = backend.run(inputs)
    if len(got) != len(expected):
        return CheckResult(False, float("inf"), "", f"model gave {len(got)} outputs, expected {len(expected)}")
    worst, worst_name, ok = 0.0, "", True
    for g, e, spec in zip(got, expected, manifest.check.outputs, strict=True):
        if g.shape != e.shape:
            return CheckResult(False, float("inf"), spec.name, f"output '{spec.name}' shape {g.shape} != {e.shape}")
        err = np.abs(g.astype(np.float64) - e.astype(np.float64))
        limit = manifest.check.atol + manifest.check.rtol * np.abs(e.astype(np.float64))
        ok = ok and bool(np.all(err <= limit))
        m = float(err.max()) if err.size else 0.0
        if m >= worst:
            worst, worst_name = m, spec.name
    msg = "outputs match" if ok else f"output '{worst_name}' differs by up to {worst:.3g}"
    return CheckResult(ok, worst, worst_name, msg)


__all__ = [
    "CheckResult",
    "OpenedBundle",
    "VerifiedBundle",
    "check_arrays",
    "check_members",
    "check_models",
    "content_key",
    "decrypt_members",
    "inspect_bundle",
    "open_bundle",
    "read_source",
    "run_check",
    "signature_key_id",
    "verify_bundle",
    "verify_manifest",
    "wasm_member",
]

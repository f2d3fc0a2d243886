"""Building a bundle on the control plane: check, encrypt, sign, write.

:func:`build_bundle` refuses — before anything is written — a variant the target cannot run:
a backend the device lacks (an ONNX model for a LiteRT-only microcontroller), unsupported
operators or dtypes, too little memory or storage (:class:`IncompatibleError`, listing every
issue), and a pipeline that does not validate against the bundled models and WebAssembly
modules (:class:`PipelineError`). It then

1. runs the plaintext model once on fixed inputs (the model's registered eval set's first rows,
   else generated inputs with seed 0) and records inputs and outputs as the ``check`` vector
   (shapes in the manifest, the tensors' bytes in the plain member ``check.bin``);
2. encrypts every payload member with one fresh AES-256-GCM content key (AAD = bundle id +
   member name) and wraps that key to the device's or the fleet's X25519 public key;
3. writes the manifest as canonical JSON, signs those exact bytes with the workspace's release
   key, packs the container, verifies the result as a device would (minus decryption), and
4. writes the file atomically (temp file + ``os.replace``).

Server side: imports the registry and targets (not part of the edge closure).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from tinymlops.bundle import workspace_keys
from tinymlops.bundle.container import pack
from tinymlops.bundle.reader import verify_bundle, wasm_member
from tinymlops.crypto.envelope import encrypt_member, new_content_key, wrap_key
from tinymlops.crypto.keys import key_id, write_file_atomic, x25519_public
from tinymlops.crypto.signing import DetachedSignature
from tinymlops.errors import (
    BackendError,
    IncompatibleError,
    InvalidDatasetError,
    PipelineError,
    SpecError,
    StoreError,
    UsageError,
)
from tinymlops.registry.records import ArtifactRecord
from tinymlops.spec.manifest import (
    MAIN_MODEL,
    MAIN_MODEL_MEMBER,
    MANIFEST_MEMBER,
    SIGNATURE_MEMBER,
    BundleManifest,
    BundleModel,
    CheckTensor,
    CheckVector,
    KeyWrap,
    LineageStep,
    MemberEntry,
    default_policies,
)
from tinymlops.targets.compat import FORMAT_BACKENDS, check_compatibility

if TYPE_CHECKING:
    from tinymlops.workspace.workspace import Workspace

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
#: the check vector uses 2 rows, or 1 when 2 would exceed this many input bytes (none beyond 4x)
CHECK_INPUT_BUDGET = 512 * 1024
CHECK_ROWS = 2


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: BundleManifest
    size: int
    sha256: str
    release_key_id: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "path": str(self.path),
            "bundle_id": m.bundle_id,
            "ref": m.model.ref,
            "target": m.target,
            "format": m.model.format,
            "backend": m.model.backend,
            "key_wrap": m.key_wrap.public_summary(),
            "release_key_id": self.release_key_id,
            "size": self.size,
            "sha256": self.sha256,
            "members": {
                name: {"size": e.size, "role": e.role, "encrypted": e.encrypted} for name, e in m.members.items()
            },
            "extra_models": {name: em.ref for name, em in m.extra_models.items()},
            "pipeline": m.pipeline is not None,
            "check": None
            if m.check is None
            else {"rows": m.check.inputs[0].shape[0], "atol": m.check.atol, "rtol": m.check.rtol},
            "notes": list(self.notes),
        }


# --- checks --------------------------------------------------------------------------------
def _check_target(record: ArtifactRecord, profile: Any, role: str) -> None:
    backend = FORMAT_BACKENDS.get(record.format)
    if backend is None or backend not in profile.backends:
        raise IncompatibleError(
            f"refusing to build: {role} {record.ref} is a {record.format} model that needs "
            f"{backend or 'an unknown backend'}, but target {profile.name} has only "
            f"{', '.join(profile.backends)} (a bundle for a backend the device lacks is refused)",
            ref=record.ref,
            target=profile.name,
            issues=[{"kind": "backend", "subject": backend or record.format}],
        )
    report = check_compatibility(record.info, record.size_bytes, profile)
    if not report.compatible:
        listing = "; ".join(f"{i.kind}: {i.message}" for i in report.issues)
        raise IncompatibleError(
            f"refusing to build: {role} {record.ref} cannot run on {profile.name}: {listing}",
            ref=record.ref,
            target=profile.name,
            issues=[i.to_dict() for i in report.issues],
        )


def _pipeline_dict(
    pipeline: Any, signatures: Mapping[str, Any], wasm_modules: Mapping[str, bytes]
) -> dict[str, Any] | None:
    """Normalise and validate the pipeline against the bundled models and WebAssembly modules."""
    if pipeline is None:
        return None
    try:
        from tinymlops.pipeline import validate_pipeline
        from tinymlops.spec.pipeline import PipelineSpec
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("tinymlops.pipeline", "tinymlops.spec.pipeline")):
            raise UsageError(
                "this build of tinymlops cannot validate pipelines (tinymlops.pipeline is missing); "
                "refusing to bundle an unvalidated pipeline"
            ) from exc
        raise
    if isinstance(pipeline, PipelineSpec):
        spec = pipeline
    elif isinstance(pipeline, Mapping):
        try:
            spec = PipelineSpec.from_dict(pipeline)
        except SpecError as exc:
            if type(exc) is not SpecError:  # PipelineError, UnsupportedVersionError: already precise
                raise
            raise PipelineError(exc.message, **exc.details) from None
    else:
        raise UsageError(f"pipeline must be a PipelineSpec or a table, got {type(pipeline).__name__}")
    validate_pipeline(spec, dict(signatures), dict(wasm_modules), main=MAIN_MODEL)
    out = spec.to_dict()
    if not isinstance(out, dict):  # pragma: no cover - a contract check on the other module
        raise PipelineError("PipelineSpec.to_dict() did not return a table")
    return out


def _lineage(ws: Workspace, record: ArtifactRecord) -> tuple[LineageStep, ...]:
    chain = [record]
    seen = {record.id}
    while chain[-1].parent_id is not None:
        parent = ws.registry.get(chain[-1].parent_id)
        if parent.id in seen:  # pragma: no cover - the schema forbids cycles
            raise StoreError(f"lineage of {record.ref} has a cycle at {parent.ref}")
        seen.add(parent.id)
        chain.append(parent)
    return tuple(
        LineageStep(a.ref, a.sha256, None if a.recipe_data is None else dict(a.recipe_data)) for a in reversed(chain)
    )


# --- the smoke-test vector -----------------------------------------------------------------
def _check_inputs(ws: Workspace, record: ArtifactRecord) -> tuple[np.ndarray, str]:
    from tinymlops.optimize.calibration import generated_inputs
    from tinymlops.registry.datasets import check_matches

    info = record.info
    ds_record = ws.registry.dataset_for(record.model, "eval")
    rows = CHECK_ROWS
    per_row = 4 * math.prod(info.inputs[0].concrete_shape(1)[1:]) if len(info.inputs) == 1 else 0
    if per_row * rows > CHECK_INPUT_BUDGET:
        rows = 1
    if per_row > 4 * CHECK_INPUT_BUDGET:
        raise InvalidDatasetError(f"one input row is {per_row} bytes: too large for a check vector")
    if ds_record is not None:
        dataset = ws.registry.load_dataset(ds_record)
        try:
            check_matches(dataset, info, f"dataset '{ds_record.name}'")
            return np.ascontiguousarray(dataset.x[:rows], dtype=np.float32), ds_record.label
        except InvalidDatasetError:
            pass  # a variant whose input layout differs from the base: fall back to generated rows
    return generated_inputs(info, rows, seed=0), "generated:seed=0"


def _tolerance(record: ArtifactRecord, outputs: list[np.ndarray]) -> tuple[float, float]:
    scale = max((float(np.max(np.abs(o))) for o in outputs if o.size), default=1.0)
    scale = max(scale, 1.0) if math.isfinite(scale) else 1.0
    dtypes = set(record.info.compute_dtypes) | set(record.info.weight_dtypes)
    if dtypes & {"int8", "uint8"}:
        return 5e-2 * scale, 5e-2
    if dtypes & {"float16", "bfloat16"}:
        return 1e-2 * scale, 1e-2
    return 1e-4 * scale, 1e-3


def _check_vector(ws: Workspace, record: ArtifactRecord, model: bytes) -> tuple[CheckVector | None, str]:
    from tinymlops.edge.backends import open_backend

    try:
        x, source = _check_inputs(ws, record)
    except InvalidDatasetError as exc:
        return None, f"no check vector: {exc.message}"
    backend = open_backend(model, record.format)  # BackendError: the model does not even load
    name = backend.inputs[0].name
    try:
        outputs = backend.run({name: x})
    except BackendError:
        raise
    except (AttributeError, TypeError, ValueError) as exc:  # non-tensor outputs (e.g. ZipMap maps)
        return None, f"no check vector: outputs are not float tensors ({type(exc).__name__})"
    atol, rtol = _tolerance(record, outputs)
    ins = (CheckTensor(name, tuple(int(d) for d in x.shape), x.astype("<f4").tobytes()),)
    outs = tuple(
        CheckTensor(spec.name, tuple(int(d) for d in o.shape), np.ascontiguousarray(o, dtype="<f4").tobytes())
        for spec, o in zip(backend.outputs, outputs, strict=True)
    )
    return CheckVector(ins, outs, atol, rtol), f"check vector: {x.shape[0]} row(s) from {source}"


# --- building ------------------------------------------------------------------------------
def _recipient(ws: Workspace, device_public_key: Any, fleet: bool) -> tuple[str, X25519PublicKey]:
    if fleet and device_public_key is not None:
        raise UsageError("give either a device public key or fleet=True, not both")
    if fleet:
        return "fleet", workspace_keys.fleet_key(ws).public_key()
    if device_public_key is None:
        raise UsageError("a bundle is encrypted for one device (device_public_key) or for the fleet (fleet=True)")
    return "device", x25519_public(device_public_key)


def _model_entry(record: ArtifactRecord, data: bytes, member: str) -> BundleModel:
    return BundleModel(
        name=record.model,
        version=record.version,
        variant=record.variant,
        ref=record.ref,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        format=record.format,
        backend=FORMAT_BACKENDS[record.format],
        member=member,
    )


def build_bundle(
    ws: Workspace,
    ref: str,
    *,
    target: str,
    device_public_key: bytes | X25519PublicKey | None = None,
    fleet: bool = False,
    pipeline: Any = None,
    extra_models: Mapping[str, str] | None = None,
    wasm_modules: Mapping[str, bytes] | None = None,
    policies: Mapping[str, Mapping[str, Any]] | None = None,
    out: Path | str,
    check: bool = True,
    release_key: Ed25519PrivateKey | None = None,
) -> BuildResult:
    """Build, sign and write the bundle for model ``ref`` on device profile ``target``.

    ``device_public_key`` (an X25519 public key or its 32 raw bytes) encrypts for one device;
    ``fleet=True`` for every holder of the workspace's fleet key. ``extra_models`` maps cascade
    model names (as the pipeline calls them) to registry refs; ``wasm_modules`` maps module names
    to WebAssembly bytes. ``policies`` tables override the defaults (every policy disabled).
    ``release_key`` defaults to the workspace's (created on first use).
    """
    extra_models = dict(extra_models or {})
    wasm_modules = {k: bytes(v) for k, v in (wasm_modules or {}).items()}
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out} is a directory; give the bundle's file name")
    mode, recipient = _recipient(ws, device_public_key, fleet)
    for name in extra_models:
        if not _NAME.match(name) or name == MAIN_MODEL:
            raise UsageError(f"bad cascade model name {name!r}: lowercase letters, digits, '_.-'; not '{MAIN_MODEL}'")
    for name in wasm_modules:
        if not _NAME.match(name):
            raise UsageError(f"bad WebAssembly module name {name!r}: lowercase letters, digits, '_.-'")
    if policies is not None and not all(isinstance(v, Mapping) for v in policies.values()):
        raise UsageError("policies must map a policy name to a table")

    # --- everything that can refuse, before anything is encrypted or written ---
    profile = ws.targets.get(target)
    record = ws.registry.resolve(ref)
    _check_target(record, profile, "model")
    extras = {name: ws.registry.resolve(r) for name, r in extra_models.items()}
    for name, rec in extras.items():
        _check_target(rec, profile, f"cascade model '{name}'")
    signatures = {MAIN_MODEL: record.info, **{n: r.info for n, r in extras.items()}}
    pipeline_doc = _pipeline_dict(pipeline, signatures, wasm_modules)

    model_bytes = ws.registry.read_bytes(record)
    extra_bytes = {name: ws.registry.read_bytes(rec) for name, rec in extras.items()}
    notes: list[str] = []
    check_vector = None
    if check:
        check_vector, note = _check_vector(ws, record, model_bytes)
        notes.append(note)

    # --- encrypt ---
    bundle_id = secrets.token_hex(16)
    content_key = new_content_key()
    plain: dict[str, tuple[str, bytes]] = {MAIN_MODEL_MEMBER: ("model", model_bytes)}
    plain.update({f"models/{n}.enc": ("model", b) for n, b in sorted(extra_bytes.items())})
    plain.update({wasm_member(n): ("wasm", b) for n, b in sorted(wasm_modules.items())})
    stored: dict[str, bytes] = {}
    members: dict[str, MemberEntry] = {}
    if check_vector is not None:  # the check tensors' bytes: a plain member (before the models) the manifest hashes
        check_bytes = check_vector.payload()
        stored[check_vector.member] = check_bytes
        members[check_vector.member] = MemberEntry(
            sha256=hashlib.sha256(check_bytes).hexdigest(), size=len(check_bytes), role="check", encrypted=False
        )
    for member, (role, data) in plain.items():
        nonce, ciphertext = encrypt_member(content_key, bundle_id, member, data)
        stored[member] = ciphertext
        members[member] = MemberEntry(
            sha256=hashlib.sha256(ciphertext).hexdigest(), size=len(ciphertext), role=role, encrypted=True, nonce=nonce
        )
    wrapped = wrap_key(content_key, recipient, context=bundle_id.encode("ascii"))
    del content_key

    merged_policies = default_policies()
    for name, table in (policies or {}).items():
        merged_policies[name] = dict(table)
    manifest = BundleManifest(
        bundle_id=bundle_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        target=profile.name,
        model=_model_entry(record, model_bytes, MAIN_MODEL_MEMBER),
        extra_models={n: _model_entry(extras[n], extra_bytes[n], f"models/{n}.enc") for n in sorted(extras)},
        lineage=_lineage(ws, record),
        pipeline=pipeline_doc,
        members=members,
        policies=merged_policies,
        key_wrap=KeyWrap(
            mode=mode,
            recipient_key_id=wrapped.recipient_key_id,
            ephemeral_public=wrapped.ephemeral_public,
            salt=wrapped.salt,
            nonce=wrapped.nonce,
            wrapped_key=wrapped.wrapped_key,
        ),
        check=check_vector,
    )

    # --- sign, pack, self-verify, write ---
    signer = release_key if release_key is not None else workspace_keys.release_key(ws)
    manifest_bytes = manifest.canonical_bytes()
    signature = DetachedSignature.create(signer, manifest_bytes)
    data = pack({MANIFEST_MEMBER: manifest_bytes, SIGNATURE_MEMBER: signature.encode(), **stored})
    verified = verify_bundle(data, trusted_release_keys=[signer.public_key()])
    try:
        write_file_atomic(out, data, mode=0o644)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the bundle: {exc.strerror or exc}") from exc
    notes.append(f"encrypted for {mode} key {key_id(recipient)}")
    return BuildResult(
        path=out,
        manifest=verified.manifest,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        release_key_id=signature.keyid,
        notes=tuple(notes),
    )


__all__ = ["BuildResult", "build_bundle"]

"""The bundle manifest: what one model release carries, signed by the workspace's release key.

A manifest is JSON. The builder writes it as *canonical JSON* (sorted keys, no spaces, UTF-8)
and signs exactly those bytes; a reader verifies the signature over the bytes it received and
only then parses them with :meth:`BundleManifest.from_bytes`, which keeps those bytes
(:attr:`BundleManifest.raw`) and every field it does not know (``unrecognized`` at each
level, as python-tuf does), so an older device can still verify and use a newer minor version.
Only an unsupported *major* ``spec_version`` is refused (:class:`UnsupportedVersionError`).
Known fields are parsed strictly: a wrong type or value is a :class:`SpecError` naming it.

Layout (``spec_version`` "2.0")::

    {
      "spec_version": "2.0",
      "bundle_id": "<32 hex: random 128 bits>",
      "created_at": "2024-05-01T12:00:00+00:00",
      "target": "<device profile name>",
      "model": {"name", "version", "variant", "ref", "sha256" (plaintext), "size" (plaintext),
                "format": "onnx"|"tflite", "backend": "onnxruntime"|"litert", "member": "model.enc"},
      "extra_models": {"<name>": {same fields, "member": "models/<name>.enc"}},   # cascades
      "lineage": [{"ref", "sha256", "recipe": {...} | null}, ...],                 # base first
      "pipeline": {...} | null,                                                   # PipelineSpec dict
      "members": {"<member>": {"sha256" (stored bytes), "size", "role": "model"|"wasm"|"check",
                               "encrypted": bool, "nonce": "<base64>" | null}},
      "policies": {"metering": {...}, "telemetry": {...}, "guard": {...}, "proof": {...}},
      "key_wrap": {"mode": "device"|"fleet", "recipient_key_id", "ephemeral_public", "salt",
                   "nonce", "wrapped_key"},                                       # base64 bytes
      "check": {"member": "check.bin", "inputs": [tensor], "outputs": [tensor], "atol", "rtol"} | null
    }

where a check tensor is ``{"name", "shape": [ints], "dtype": "float32"}``: a smoke-test vector
computed at build time by running the plaintext model on fixed inputs. Its *data* is not in the
manifest: it is the payload member ``check.member`` (role ``"check"``, not encrypted), the
tensors' little-endian bytes back to back (inputs, then outputs, in the listed order), and the
manifest lists that member's SHA-256 and size like any other's. So the signed document stays
small whatever the model's input size (the signature, the JSON parser and base64 never touch
the bulk; one SHA-256 does), and the parser can still refuse a check vector whose shapes do not
add up to the member's size. A manifest parsed on its own (:meth:`BundleManifest.from_bytes`)
has the tensors' shapes but no data; the bundle reader binds the verified member bytes to it
(:meth:`BundleManifest.with_check_data`), so the manifest that ``verify_bundle``, ``open_bundle``
and ``Runtime.open`` return carries the whole check vector.

Version history: "1.0" carried the check tensors inline as base64 (``"data"``); "2.0" moved
them into the ``check`` member. The change is incompatible for a 1.x reader, hence the new major.

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from tinymlops.errors import IntegrityError, SpecError, UsageError
from tinymlops.spec._parse import check_version, get_bool, get_choice, get_int, get_number, get_str

MANIFEST_SPEC_MAJOR = 2
MANIFEST_SPEC_VERSION = "2.0"
#: the manifest's member name in a bundle, and its detached signature's
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
#: the pipeline calls the bundle's main model by this name; extra (cascade) models by their own
MAIN_MODEL = "main"
MAIN_MODEL_MEMBER = "model.enc"
#: the member holding the check vector's tensor bytes
CHECK_MEMBER = "check.bin"
MEMBER_ROLES = ("model", "wasm", "check")
KEY_WRAP_MODES = ("device", "fleet")
POLICY_NAMES = ("metering", "telemetry", "guard", "proof")
MODEL_FORMATS = ("onnx", "tflite")
MODEL_BACKENDS = ("onnxruntime", "litert")
CHECK_DTYPES = ("float32",)
_DTYPE_BYTES = {"float32": 4}
#: largest manifest accepted (bulk data lives in members; a manifest is a few kilobytes)
MAX_MANIFEST_BYTES = 16 * 2**20

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYID = re.compile(r"^[0-9a-f]{16}$")
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_MEMBER_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

_TOP_FIELDS = (
    "spec_version",
    "bundle_id",
    "created_at",
    "target",
    "model",
    "extra_models",
    "lineage",
    "pipeline",
    "members",
    "policies",
    "key_wrap",
    "check",
)


# --- helpers -------------------------------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the bytes that get signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise SpecError(f"manifest: duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise SpecError(f"manifest: {name} is not valid JSON")


def parse_json_strict(raw: bytes, doc: str = "manifest") -> Any:
    """UTF-8 JSON without duplicate keys or NaN/Infinity."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{doc}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{doc}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise SpecError(f"{doc}: JSON nested too deeply") from None


def _table(doc: str, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise SpecError(f"{doc}: field '{key}' must be a table, got {type(value).__name__}")
    return value


def _regex(doc: str, data: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = get_str(doc, data, key)
    if not pattern.match(value):
        raise SpecError(f"{doc}: field '{key}' must be {what}, got {value!r}")
    return value


def _b64(doc: str, data: Mapping[str, Any], key: str, size: int | None = None) -> bytes:
    value = data.get(key)
    if not isinstance(value, str):
        raise SpecError(f"{doc}: field '{key}' must be a base64 string, got {value!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(f"{doc}: field '{key}' is not valid base64") from None
    if size is not None and len(raw) != size:
        raise SpecError(f"{doc}: field '{key}' must decode to {size} bytes, got {len(raw)}")
    return raw


def _enc(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unrecognized(data: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def check_member_name(name: str, doc: str = "manifest") -> str:
    """Member names are ``/``-separated segments of letters, digits, ``_ . -`` (no ``..``)."""
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 1024:
        raise SpecError(f"{doc}: bad member name {name!r}")
    for seg in name.split("/"):
        if not _MEMBER_SEGMENT.match(seg) or seg in (".", ".."):
            raise SpecError(f"{doc}: bad member name {name!r} (segments of letters, digits, '_', '.', '-')")
    return name


def _check_member(doc: str, check: CheckVector | None, members: Mapping[str, MemberEntry]) -> None:
    """The check vector's member is listed, plain, of role "check" and exactly its tensors' size;
    no other member has that role."""
    stray = [name for name, m in members.items() if m.role == "check" and (check is None or name != check.member)]
    if check is None:
        if stray:
            raise SpecError(f"{doc}: member '{stray[0]}' has role 'check' but the manifest has no check vector")
        return
    entry = members.get(check.member)
    if entry is None:
        raise SpecError(f"{doc}: the check vector is stored in member '{check.member}', which is not listed")
    if entry.role != "check":
        raise SpecError(f"{doc}: check vector member '{check.member}' has role '{entry.role}', not 'check'")
    if entry.encrypted:
        raise SpecError(f"{doc}: check vector member '{check.member}' must not be encrypted")
    if entry.size != check.nbytes:
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in check.tensors)
        raise SpecError(
            f"{doc}: check vector member '{check.member}' is {entry.size} bytes, but its tensors "
            f"({shapes}) need {check.nbytes}"
        )
    if stray:
        raise SpecError(f"{doc}: member '{stray[0]}' has role 'check' but is not the check vector's member")


# --- parts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleModel:
    """One model in the bundle. ``sha256``/``size`` are of the *plaintext* model; ``member``
    names the container member that holds its (encrypted) bytes."""

    _FIELDS = ("name", "version", "variant", "ref", "sha256", "size", "format", "backend", "member")

    name: str
    version: int
    variant: str
    ref: str
    sha256: str
    size: int
    format: str
    backend: str
    member: str
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, doc: str = "manifest model") -> BundleModel:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be a table")
        return cls(
            name=get_str(doc, data, "name"),
            version=get_int(doc, data, "version", minimum=1),
            variant=get_str(doc, data, "variant", ""),
            ref=get_str(doc, data, "ref"),
            sha256=_regex(doc, data, "sha256", _HEX64, "64 lowercase hex digits"),
            size=get_int(doc, data, "size", minimum=0),
            format=get_choice(doc, data, "format", MODEL_FORMATS),
            backend=get_choice(doc, data, "backend", MODEL_BACKENDS),
            member=check_member_name(get_str(doc, data, "member"), doc),
            unrecognized=_unrecognized(data, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "name": self.name,
            "version": self.version,
            "variant": self.variant,
            "ref": self.ref,
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
            "backend": self.backend,
            "member": self.member,
        }


@dataclass(frozen=True)
class LineageStep:
    """One artifact on the path from the base version to the bundled variant."""

    _FIELDS = ("ref", "sha256", "recipe")

    ref: str
    sha256: str
    recipe: Mapping[str, Any] | None = None
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, doc: str = "manifest lineage") -> LineageStep:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: each lineage step must be a table")
        recipe = data.get("recipe")
        if recipe is not None and not isinstance(recipe, Mapping):
            raise SpecError(f"{doc}: 'recipe' must be a table or null")
        return cls(
            ref=get_str(doc, data, "ref"),
            sha256=_regex(doc, data, "sha256", _HEX64, "64 lowercase hex digits"),
            recipe=None if recipe is None else dict(recipe),
            unrecognized=_unrecognized(data, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "ref": self.ref,
            "sha256": self.sha256,
            "recipe": None if self.recipe is None else dict(self.recipe),
        }


@dataclass(frozen=True)
class MemberEntry:
    """What the manifest promises about one container member: the SHA-256 and size of the
    *stored* bytes (ciphertext when encrypted), its role, and the AES-GCM nonce if encrypted."""

    _FIELDS = ("sha256", "size", "role", "encrypted", "nonce")

    sha256: str
    size: int
    role: str
    encrypted: bool
    nonce: bytes | None = None
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, doc: str = "manifest member") -> MemberEntry:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be a table")
        encrypted = get_bool(doc, data, "encrypted")
        nonce_value = data.get("nonce")
        if encrypted:
            nonce: bytes | None = _b64(doc, data, "nonce", 12)
        elif nonce_value is not None:
            raise SpecError(f"{doc}: 'nonce' must be null for a member that is not encrypted")
        else:
            nonce = None
        return cls(
            sha256=_regex(doc, data, "sha256", _HEX64, "64 lowercase hex digits"),
            size=get_int(doc, data, "size", minimum=0),
            role=get_str(doc, data, "role"),
            encrypted=encrypted,
            nonce=nonce,
            unrecognized=_unrecognized(data, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "sha256": self.sha256,
            "size": self.size,
            "role": self.role,
            "encrypted": self.encrypted,
            "nonce": None if self.nonce is None else _enc(self.nonce),
        }


@dataclass(frozen=True)
class KeyWrap:
    """The content key, wrapped to one device's (or the fleet's) X25519 public key."""

    _FIELDS = ("mode", "recipient_key_id", "ephemeral_public", "salt", "nonce", "wrapped_key")

    mode: str
    recipient_key_id: str
    ephemeral_public: bytes
    salt: bytes
    nonce: bytes
    wrapped_key: bytes
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Any, doc: str = "manifest key_wrap") -> KeyWrap:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be a table")
        return cls(
            mode=get_choice(doc, data, "mode", KEY_WRAP_MODES),
            recipient_key_id=_regex(doc, data, "recipient_key_id", _KEYID, "16 lowercase hex digits"),
            ephemeral_public=_b64(doc, data, "ephemeral_public", 32),
            salt=_b64(doc, data, "salt", 32),
            nonce=_b64(doc, data, "nonce", 12),
            wrapped_key=_b64(doc, data, "wrapped_key", 48),
            unrecognized=_unrecognized(data, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "mode": self.mode,
            "recipient_key_id": self.recipient_key_id,
            "ephemeral_public": _enc(self.ephemeral_public),
            "salt": _enc(self.salt),
            "nonce": _enc(self.nonce),
            "wrapped_key": _enc(self.wrapped_key),
        }

    def public_summary(self) -> dict[str, Any]:
        """What ``inspect`` shows: no wrapped key bytes, no salt or nonce."""
        return {
            "mode": self.mode,
            "recipient_key_id": self.recipient_key_id,
            "wrapped_key_bytes": len(self.wrapped_key),
        }

    def __repr__(self) -> str:
        return f"KeyWrap(mode={self.mode!r}, recipient_key_id={self.recipient_key_id!r})"


@dataclass(frozen=True)
class CheckTensor:
    """One tensor of the check vector: its name, shape and dtype, and (once bound to the bundle's
    ``check`` member) its little-endian bytes in :attr:`data`. ``data`` is not part of the
    manifest document, so it takes no part in equality."""

    _FIELDS = ("name", "shape", "dtype")

    name: str
    shape: tuple[int, ...]
    data: bytes | None = field(default=None, compare=False, repr=False)
    dtype: str = "float32"
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        """The size of the tensor's data: its element count times the dtype's size."""
        size = _DTYPE_BYTES.get(self.dtype)
        if size is None:
            raise UsageError(f"check tensor '{self.name}': dtype must be one of {', '.join(CHECK_DTYPES)}")
        return size * math.prod(self.shape)

    @classmethod
    def from_dict(cls, data: Any, doc: str = "manifest check tensor") -> CheckTensor:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be a table")
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise SpecError(f"{doc}: 'shape' must be a list of non-negative integers, got {shape!r}")
        return cls(
            name=get_str(doc, data, "name"),
            shape=tuple(shape),
            dtype=get_choice(doc, data, "dtype", CHECK_DTYPES),
            unrecognized=_unrecognized(data, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.unrecognized, "name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class CheckVector:
    """A smoke test: the plaintext model's outputs for fixed inputs, computed at build time.
    A device passes it when ``|got - expected| <= atol + rtol * |expected|`` everywhere.

    The tensors' bytes travel in the bundle member :attr:`member` (see the module docstring);
    :attr:`loaded` tells whether they are bound to this object."""

    _FIELDS = ("member", "inputs", "outputs", "atol", "rtol")

    inputs: tuple[CheckTensor, ...]
    outputs: tuple[CheckTensor, ...]
    atol: float
    rtol: float
    member: str = CHECK_MEMBER
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tensors(self) -> tuple[CheckTensor, ...]:
        """Inputs then outputs: the order of their bytes in the member."""
        return self.inputs + self.outputs

    @property
    def nbytes(self) -> int:
        """The size the ``check`` member must have."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def loaded(self) -> bool:
        """Whether every tensor's bytes are bound (a manifest from a verified bundle: yes)."""
        return all(t.data is not None for t in self.tensors)

    @classmethod
    def from_dict(cls, data: Any, doc: str = "manifest check") -> CheckVector:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be a table or null")
        ins, outs = data.get("inputs"), data.get("outputs")
        if not isinstance(ins, list) or not ins or not isinstance(outs, list) or not outs:
            raise SpecError(f"{doc}: 'inputs' and 'outputs' must be non-empty lists of tensors")
        return cls(
            inputs=tuple(CheckTensor.from_dict(t, f"{doc} input") for t in ins),
            outputs=tuple(CheckTensor.from_dict(t, f"{doc} output") for t in outs),
            atol=get_number(doc, data, "atol", minimum=0.0),
            rtol=get_number(doc, data, "rtol", minimum=0.0),
            member=check_member_name(get_str(doc, data, "member"), doc),
            unrecognized=_unrecognized(data, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "member": self.member,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "atol": self.atol,
            "rtol": self.rtol,
        }

    def payload(self) -> bytes:
        """The ``check`` member's bytes: every tensor's data back to back (what a builder stores)."""
        parts = []
        for t in self.tensors:
            if t.data is None or len(t.data) != t.nbytes:
                got = "no data" if t.data is None else f"{len(t.data)} bytes"
                raise UsageError(
                    f"check tensor '{t.name}' {list(t.shape)} of {t.dtype} needs {t.nbytes} bytes, has {got}"
                )
            parts.append(bytes(t.data))
        return b"".join(parts)

    def bind(self, payload: bytes) -> CheckVector:
        """A copy whose tensors carry their slices of ``payload`` (the verified ``check`` member)."""
        if len(payload) != self.nbytes:
            raise IntegrityError(
                f"check member '{self.member}' holds {len(payload)} bytes; the check tensors need {self.nbytes}",
                member=self.member,
            )
        pos, bound = 0, []
        for t in self.tensors:
            bound.append(CheckTensor(t.name, t.shape, bytes(payload[pos : pos + t.nbytes]), t.dtype, t.unrecognized))
            pos += t.nbytes
        n = len(self.inputs)
        return CheckVector(tuple(bound[:n]), tuple(bound[n:]), self.atol, self.rtol, self.member, self.unrecognized)


def default_policies() -> dict[str, dict[str, Any]]:
    """Every policy a later issue defines, present and disabled."""
    return {name: {"enabled": False} for name in POLICY_NAMES}


# --- the manifest --------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleManifest:
    """The signed description of a bundle. See the module docstring for the layout."""

    bundle_id: str
    created_at: str
    target: str
    model: BundleModel
    members: Mapping[str, MemberEntry]
    key_wrap: KeyWrap
    extra_models: Mapping[str, BundleModel] = field(default_factory=dict)
    lineage: tuple[LineageStep, ...] = ()
    pipeline: Mapping[str, Any] | None = None
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=default_policies)
    check: CheckVector | None = None
    spec_version: str = MANIFEST_SPEC_VERSION
    #: fields this build does not know, kept as they were (top level; nested parts keep theirs)
    unrecognized: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: the exact bytes this manifest was parsed from (what the signature covers); None if built
    raw: bytes | None = field(default=None, compare=False, repr=False)

    # -- parsing --
    @classmethod
    def from_bytes(cls, raw: bytes) -> BundleManifest:
        """Parse the exact (already signature-verified) bytes; keep them and unknown fields."""
        raw = bytes(raw)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise SpecError(f"manifest: {len(raw)} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
        data = parse_json_strict(raw)
        return cls.from_dict(data, raw=raw)

    @classmethod
    def from_dict(cls, data: Any, *, raw: bytes | None = None) -> BundleManifest:
        doc = "manifest"
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be a JSON object, got {type(data).__name__}")
        version = check_version(doc, data, MANIFEST_SPEC_MAJOR)
        bundle_id = _regex(doc, data, "bundle_id", _HEX32, "32 lowercase hex digits")
        created_at = get_str(doc, data, "created_at")
        try:
            datetime.fromisoformat(created_at)
        except ValueError:
            raise SpecError(f"{doc}: 'created_at' must be an ISO 8601 timestamp, got {created_at!r}") from None

        members_data = _table(doc, data, "members")
        members: dict[str, MemberEntry] = {}
        for name, entry in members_data.items():
            check_member_name(name, doc)
            if name in (MANIFEST_MEMBER, SIGNATURE_MEMBER):
                raise SpecError(f"{doc}: '{name}' cannot be listed as a payload member")
            members[name] = MemberEntry.from_dict(entry, f"{doc} member '{name}'")

        model = BundleModel.from_dict(data.get("model"), f"{doc} model")
        extra_data = data.get("extra_models", {})
        if not isinstance(extra_data, Mapping):
            raise SpecError(f"{doc}: 'extra_models' must be a table of name -> model")
        extra: dict[str, BundleModel] = {}
        for name, entry in extra_data.items():
            if not isinstance(name, str) or not _MODEL_NAME.match(name) or name == MAIN_MODEL:
                raise SpecError(f"{doc}: bad extra model name {name!r} (lowercase, digits, '_.-'; not '{MAIN_MODEL}')")
            extra[name] = BundleModel.from_dict(entry, f"{doc} extra model '{name}'")
        seen: dict[str, str] = {}
        for name, m in {MAIN_MODEL: model, **extra}.items():
            entry = members.get(m.member)
            if entry is None:
                raise SpecError(f"{doc}: model '{name}' is stored in member '{m.member}', which is not listed")
            if entry.role != "model":
                raise SpecError(f"{doc}: model '{name}' member '{m.member}' has role '{entry.role}', not 'model'")
            if m.member in seen:
                raise SpecError(f"{doc}: models '{seen[m.member]}' and '{name}' share member '{m.member}'")
            seen[m.member] = name

        lineage_data = data.get("lineage", [])
        if not isinstance(lineage_data, list):
            raise SpecError(f"{doc}: 'lineage' must be a list")
        pipeline = data.get("pipeline")
        if pipeline is not None and not isinstance(pipeline, Mapping):
            raise SpecError(f"{doc}: 'pipeline' must be a table or null")
        policies_data = data.get("policies", {})
        if not isinstance(policies_data, Mapping):
            raise SpecError(f"{doc}: 'policies' must be a table")
        policies: dict[str, dict[str, Any]] = {}
        for name, table in policies_data.items():
            if not isinstance(table, Mapping):
                raise SpecError(f"{doc}: policy '{name}' must be a table, got {type(table).__name__}")
            policies[name] = dict(table)
        check_data = data.get("check")
        check = None if check_data is None else CheckVector.from_dict(check_data, f"{doc} check")
        _check_member(doc, check, members)
        return cls(
            spec_version=version,
            bundle_id=bundle_id,
            created_at=created_at,
            target=get_str(doc, data, "target"),
            model=model,
            extra_models=extra,
            lineage=tuple(LineageStep.from_dict(s, f"{doc} lineage") for s in lineage_data),
            pipeline=None if pipeline is None else dict(pipeline),
            members=members,
            policies=policies,
            key_wrap=KeyWrap.from_dict(data.get("key_wrap"), f"{doc} key_wrap"),
            check=check,
            unrecognized=_unrecognized(data, _TOP_FIELDS),
            raw=raw,
        )

    # -- writing --
    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "spec_version": self.spec_version,
            "bundle_id": self.bundle_id,
            "created_at": self.created_at,
            "target": self.target,
            "model": self.model.to_dict(),
            "extra_models": {k: v.to_dict() for k, v in sorted(self.extra_models.items())},
            "lineage": [s.to_dict() for s in self.lineage],
            "pipeline": None if self.pipeline is None else dict(self.pipeline),
            "members": {k: v.to_dict() for k, v in sorted(self.members.items())},
            "policies": {k: dict(v) for k, v in sorted(self.policies.items())},
            "key_wrap": self.key_wrap.to_dict(),
            "check": None if self.check is None else self.check.to_dict(),
        }

    def canonical_bytes(self) -> bytes:
        """Canonical JSON of :meth:`to_dict` (what a builder signs)."""
        return canonical_json(self.to_dict())

    def to_bytes(self) -> bytes:
        """The exact bytes this manifest was parsed from, else its canonical encoding."""
        return self.raw if self.raw is not None else self.canonical_bytes()

    # -- views --
    @property
    def models(self) -> dict[str, BundleModel]:
        """Every model by the name the pipeline calls it: ``"main"`` first, then the extras."""
        return {MAIN_MODEL: self.model, **dict(self.extra_models)}

    def with_check_data(self, payload: bytes) -> BundleManifest:
        """This manifest with the check vector bound to ``payload``, the bytes of its (verified)
        ``check`` member; the reader does this after checking every member's hash."""
        if self.check is None:
            raise UsageError("this manifest has no check vector to bind data to")
        return replace(self, check=self.check.bind(payload))

    def members_of_role(self, role: str) -> dict[str, MemberEntry]:
        return {name: m for name, m in self.members.items() if m.role == role}

    def public_dict(self) -> dict[str, Any]:
        """The manifest without secrets: the key wrap as its mode, recipient and size; member
        nonces left out (the check vector's data is never in the manifest)."""
        out = self.to_dict()
        out["key_wrap"] = self.key_wrap.public_summary()
        out["members"] = {
            name: {k: v for k, v in entry.items() if k != "nonce"} for name, entry in out["members"].items()
        }
        if self.check is not None:
            out["check"] = {
                "member": self.check.member,
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.check.inputs],
                "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.check.outputs],
                "atol": self.check.atol,
                "rtol": self.check.rtol,
            }
        return out


__all__ = [
    "CHECK_MEMBER",
    "KEY_WRAP_MODES",
    "MAIN_MODEL",
    "MAIN_MODEL_MEMBER",
    "MANIFEST_MEMBER",
    "MANIFEST_SPEC_MAJOR",
    "MANIFEST_SPEC_VERSION",
    "MAX_MANIFEST_BYTES",
    "MEMBER_ROLES",
    "POLICY_NAMES",
    "SIGNATURE_MEMBER",
    "BundleManifest",
    "BundleModel",
    "CheckTensor",
    "CheckVector",
    "KeyWrap",
    "LineageStep",
    "MemberEntry",
    "canonical_json",
    "check_member_name",
    "default_policies",
    "parse_json_strict",
]

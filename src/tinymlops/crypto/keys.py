"""Key pairs: Ed25519 for signatures, X25519 for wrapping content keys.

Private keys are stored as unencrypted PKCS#8 PEM files with mode 0600, written atomically
(temp file in the same directory + ``os.replace``), so a crash never leaves half a key behind.
Public keys are 32 raw bytes; a public key *file* holds one line of base64, and the loader also
accepts the 32 raw bytes, 64 hex digits or a PEM ``PUBLIC KEY`` block.

A key's id is the first 16 hex digits of the SHA-256 of its raw public bytes (:func:`key_id`).

A device identity (:class:`DeviceKeys`) is one Ed25519 pair (the device signs with it) and one
X25519 pair (bundles for the device wrap their content key to it).

Edge-safe: imports only ``cryptography`` and the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tinymlops.errors import InvalidInputError, UsageError

PUBLIC_KEY_BYTES = 32
KEY_ID_HEX = 16
#: largest key file we read (a PEM key is ~120 bytes)
MAX_KEY_FILE_BYTES = 16 * 1024

PrivateKey = Ed25519PrivateKey | X25519PrivateKey
PublicKey = Ed25519PublicKey | X25519PublicKey
_K = TypeVar("_K", Ed25519PrivateKey, X25519PrivateKey)

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_KIND = {Ed25519PrivateKey: "Ed25519", X25519PrivateKey: "X25519"}


# --- generating and identifying ------------------------------------------------------------
def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def generate_wrapping_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: PrivateKey | PublicKey | bytes) -> bytes:
    """The raw 32 public bytes of a key pair, a public key, or raw bytes (checked and returned)."""
    if isinstance(key, Ed25519PrivateKey | X25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey | X25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
        if len(raw) != PUBLIC_KEY_BYTES:
            raise UsageError(f"a public key is {PUBLIC_KEY_BYTES} raw bytes, got {len(raw)}")
        return raw
    raise UsageError(f"expected a key or {PUBLIC_KEY_BYTES} raw public-key bytes, got {type(key).__name__}")


def key_id(key: PrivateKey | PublicKey | bytes) -> str:
    """First 16 hex digits of SHA-256 over the raw public key bytes."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:KEY_ID_HEX]


def ed25519_public(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object or its 32 raw bytes."""
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(public_bytes(key))
    except ValueError as exc:
        raise InvalidInputError(f"not a valid Ed25519 public key: {exc}") from exc


def x25519_public(key: X25519PublicKey | X25519PrivateKey | bytes) -> X25519PublicKey:
    """An X25519 public key from a key object or its 32 raw bytes."""
    if isinstance(key, X25519PrivateKey):
        return key.public_key()
    if isinstance(key, X25519PublicKey):
        return key
    try:
        return X25519PublicKey.from_public_bytes(public_bytes(key))
    except ValueError as exc:
        raise InvalidInputError(f"not a valid X25519 public key: {exc}") from exc


# --- files ---------------------------------------------------------------------------------
def write_file_atomic(path: Path | str, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def save_private_key(path: Path | str, key: PrivateKey) -> Path:
    """Write ``key`` as PKCS#8 PEM, mode 0600, atomically."""
    try:
        return write_file_atomic(path, private_key_pem(key), mode=0o600)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write private key: {exc.strerror or exc}", file=str(path)) from exc


def save_public_key(path: Path | str, key: PrivateKey | PublicKey | bytes) -> Path:
    """Write the public key as one line of base64 (mode 0644), atomically."""
    text = base64.b64encode(public_bytes(key)).decode("ascii") + "\n"
    try:
        return write_file_atomic(path, text.encode("ascii"), mode=0o644)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write public key: {exc.strerror or exc}", file=str(path)) from exc


def _read_key_file(path: Path | str, what: str) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE_BYTES:
            raise InvalidInputError(f"{path}: {size} bytes is far too large for a {what}", file=str(path))
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what} file", file=str(path)) from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a {what} file", file=str(path)) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror or exc}", file=str(path)) from exc


def _load_private(path: Path | str, cls: type[_K]) -> _K:
    kind = _KIND[cls]
    data = _read_key_file(path, f"{kind} private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"{path}: not a readable {kind} private key (expected an unencrypted PKCS#8 PEM file)", file=str(path)
        ) from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise InvalidInputError(f"{path}: unsupported private key ({type(exc).__name__})", file=str(path)) from exc
    if not isinstance(key, cls):
        raise InvalidInputError(
            f"{path}: holds a {type(key).__name__.removesuffix('PrivateKey')} key, expected an {kind} private key",
            file=str(path),
        )
    return key


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an Ed25519 private key; a missing file is a UsageError, a bad one an InvalidInputError."""
    return _load_private(path, Ed25519PrivateKey)


def load_wrapping_key(path: Path | str) -> X25519PrivateKey:
    """Load an X25519 private key; a missing file is a UsageError, a bad one an InvalidInputError."""
    return _load_private(path, X25519PrivateKey)


def decode_public_key(data: bytes | str, source: str = "public key") -> bytes:
    """Raw 32 bytes from raw bytes, hex, base64 or a PEM ``PUBLIC KEY`` block."""
    if isinstance(data, bytes | bytearray) and len(data) == PUBLIC_KEY_BYTES:
        return bytes(data)
    try:
        text = data.decode("ascii") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError:
        raise InvalidInputError(f"{source}: not a public key (binary data of {len(data)} bytes)") from None
    text = text.strip()
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except Exception as exc:
            raise InvalidInputError(f"{source}: unreadable PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey | X25519PublicKey):
            raise InvalidInputError(f"{source}: PEM holds a {type(key).__name__}, expected Ed25519 or X25519")
        return public_bytes(key)
    if _HEX_KEY.match(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidInputError(
            f"{source}: not a public key (expected {PUBLIC_KEY_BYTES} bytes as base64, hex, raw or PEM)"
        )
    return raw


def load_public_key(path: Path | str) -> bytes:
    """Raw 32 public-key bytes from a file (base64, hex, raw or PEM)."""
    return decode_public_key(_read_key_file(path, "public key"), str(path))


# --- a device identity ---------------------------------------------------------------------
DEVICE_SIGNING_FILE = "device.ed25519"
DEVICE_WRAPPING_FILE = "device.x25519"
PUBLIC_SUFFIX = ".pub"


@dataclass(frozen=True)
class DeviceKeys:
    """A device's identity: an Ed25519 pair (it signs) and an X25519 pair (bundles are wrapped to it)."""

    signing: Ed25519PrivateKey
    wrapping: X25519PrivateKey

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(generate_signing_key(), generate_wrapping_key())

    @property
    def signing_public(self) -> bytes:
        return public_bytes(self.signing)

    @property
    def wrapping_public(self) -> bytes:
        return public_bytes(self.wrapping)

    @property
    def device_id(self) -> str:
        """The key id of the device's Ed25519 public key."""
        return key_id(self.signing)

    @property
    def wrapping_key_id(self) -> str:
        """The key id bundles for this device are wrapped to."""
        return key_id(self.wrapping)

    def save(self, directory: Path | str) -> dict[str, Path]:
        """Write both private keys (0600) and both public keys into ``directory``."""
        directory = Path(directory)
        try:
            if not directory.exists():
                directory.mkdir(parents=True)
                os.chmod(directory, 0o700)  # a new key directory is private; an existing one is left alone
        except OSError as exc:
            raise UsageError(f"{directory}: cannot create key directory: {exc.strerror or exc}") from exc
        return {
            "signing_private": save_private_key(directory / DEVICE_SIGNING_FILE, self.signing),
            "wrapping_private": save_private_key(directory / DEVICE_WRAPPING_FILE, self.wrapping),
            "signing_public": save_public_key(directory / (DEVICE_SIGNING_FILE + PUBLIC_SUFFIX), self.signing),
            "wrapping_public": save_public_key(directory / (DEVICE_WRAPPING_FILE + PUBLIC_SUFFIX), self.wrapping),
        }

    @classmethod
    def load(cls, directory: Path | str) -> DeviceKeys:
        directory = Path(directory)
        return cls(
            load_signing_key(directory / DEVICE_SIGNING_FILE),
            load_wrapping_key(directory / DEVICE_WRAPPING_FILE),
        )

    @staticmethod
    def exists(directory: Path | str) -> bool:
        directory = Path(directory)
        return (directory / DEVICE_SIGNING_FILE).exists() or (directory / DEVICE_WRAPPING_FILE).exists()

    def public_dict(self) -> dict[str, str]:
        return {
            "device_id": self.device_id,
            "signing_public": base64.b64encode(self.signing_public).decode("ascii"),
            "wrapping_public": base64.b64encode(self.wrapping_public).decode("ascii"),
            "wrapping_key_id": self.wrapping_key_id,
        }

    def __repr__(self) -> str:  # never print private material
        return f"DeviceKeys(device_id={self.device_id!r}, wrapping_key_id={self.wrapping_key_id!r})"


__all__ = [
    "DEVICE_SIGNING_FILE",
    "DEVICE_WRAPPING_FILE",
    "KEY_ID_HEX",
    "PUBLIC_KEY_BYTES",
    "DeviceKeys",
    "PrivateKey",
    "PublicKey",
    "decode_public_key",
    "ed25519_public",
    "generate_signing_key",
    "generate_wrapping_key",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "load_wrapping_key",
    "private_key_pem",
    "public_bytes",
    "save_private_key",
    "save_public_key",
    "write_file_atomic",
    "x25519_public",
]

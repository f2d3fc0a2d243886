"""The workspace's own keys: the release signing key and the fleet key-wrapping key.

``<workspace>/keys/release.ed25519``
    Ed25519 private key that signs every bundle's manifest. Devices trust its public key
    (``release.ed25519.pub``).
``<workspace>/keys/fleet.x25519``
    X25519 private key of the fleet: a bundle built with ``fleet=True`` wraps its content key to
    this key's public half (``fleet.x25519.pub``), and every device provisioned with the fleet
    key can open it.

Keys are created on first use (or by ``tinymlops keys init``). Creation is create-if-absent
and atomic (a complete temp file hard-linked into place), so two processes racing to create
the release key end up using the same one, and a crash never leaves half a key.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.crypto.keys import (
    PrivateKey,
    generate_signing_key,
    generate_wrapping_key,
    key_id,
    load_signing_key,
    load_wrapping_key,
    private_key_pem,
    public_bytes,
    save_public_key,
)
from tinymlops.errors import UsageError

if TYPE_CHECKING:
    from tinymlops.workspace.workspace import Workspace

KEYS_DIR = "keys"
RELEASE_KEY_FILE = "release.ed25519"
FLEET_KEY_FILE = "fleet.x25519"
PUBLIC_SUFFIX = ".pub"

_K = TypeVar("_K", Ed25519PrivateKey, X25519PrivateKey)


def keys_dir(ws: Workspace | Path | str) -> Path:
    root = Path(ws) if isinstance(ws, str | Path) else ws.root
    return root / KEYS_DIR


def release_key_path(ws: Workspace | Path | str) -> Path:
    return keys_dir(ws) / RELEASE_KEY_FILE


def fleet_key_path(ws: Workspace | Path | str) -> Path:
    return keys_dir(ws) / FLEET_KEY_FILE


def _create_if_absent(path: Path, key: PrivateKey) -> bool:
    """Place ``key`` at ``path`` unless a key is already there; True when this call created it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"{path.parent}: cannot create the key directory: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_key_pem(key))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and fails if the key already exists
            created = True
        except FileExistsError:
            created = False
        except OSError:  # no hard links on this filesystem: best effort
            created = not path.exists()
            if created:
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    save_public_key(path.with_name(path.name + PUBLIC_SUFFIX), _load_any(path, key))
    return created


def _load_any(path: Path, like: PrivateKey) -> PrivateKey:
    return load_signing_key(path) if isinstance(like, Ed25519PrivateKey) else load_wrapping_key(path)


def _key(path: Path, load: Callable[[Path], _K], generate: Callable[[], _K], create: bool) -> _K:
    if path.exists() or not create:
        return load(path)  # a missing file raises a UsageError naming it
    _create_if_absent(path, generate())
    return load(path)


def release_key(ws: Workspace | Path | str, *, create: bool = True) -> Ed25519PrivateKey:
    """The workspace's release signing key (created on first use unless ``create=False``)."""
    return _key(release_key_path(ws), load_signing_key, generate_signing_key, create)


def release_public_key(ws: Workspace | Path | str, *, create: bool = True) -> bytes:
    """Raw 32 bytes of the release public key (what devices trust)."""
    return public_bytes(release_key(ws, create=create))


def fleet_key(ws: Workspace | Path | str, *, create: bool = True) -> X25519PrivateKey:
    """The workspace's fleet key-wrapping key (created on first use unless ``create=False``)."""
    return _key(fleet_key_path(ws), load_wrapping_key, generate_wrapping_key, create)


def fleet_public_key(ws: Workspace | Path | str, *, create: bool = True) -> bytes:
    return public_bytes(fleet_key(ws, create=create))


def init_keys(ws: Workspace | Path | str) -> dict[str, Any]:
    """Create the release and fleet keys if absent; describe them (public halves only)."""
    out: dict[str, Any] = {}
    for label, path, load, generate in (
        ("release", release_key_path(ws), load_signing_key, generate_signing_key),
        ("fleet", fleet_key_path(ws), load_wrapping_key, generate_wrapping_key),
    ):
        created = False if path.exists() else _create_if_absent(path, generate())
        key = load(path)
        pub_path = path.with_name(path.name + PUBLIC_SUFFIX)
        if not pub_path.exists():
            save_public_key(pub_path, key)
        out[label] = {
            "key_id": key_id(key),
            "algorithm": "Ed25519" if label == "release" else "X25519",
            "public_key": base64.b64encode(public_bytes(key)).decode("ascii"),
            "private_key_file": str(path),
            "public_key_file": str(pub_path),
            "created": created,
        }
    return out


__all__ = [
    "FLEET_KEY_FILE",
    "KEYS_DIR",
    "RELEASE_KEY_FILE",
    "fleet_key",
    "fleet_key_path",
    "fleet_public_key",
    "init_keys",
    "keys_dir",
    "release_key",
    "release_key_path",
    "release_public_key",
]

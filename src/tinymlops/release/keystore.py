"""The update repository's signing keys: one Ed25519 key per TUF role, in ``<workspace>/keys/tuf/``.

A key file is named after its role and the key id of its public half
(``<role>-<key id>.ed25519``, PKCS#8 PEM, mode 0600, written atomically), with the public half
beside it (``….ed25519.pub``). Which key is *current* is never stored here: the repository's
latest root metadata says which keys each role has, and the store finds their files by key id.
That makes a key rotation crash-safe without renames — a key written but never named by a root
is an orphan that nothing uses, and a key a new root no longer names is deleted afterwards.

The root key is *offline-capable*: :meth:`TufKeyStore.export_key` moves it out of the workspace
(normal publishing never needs it) and operations that do need it take it as an argument or
raise :class:`MissingKeyError` naming the key and where it was looked for.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Key

from tinymlops.crypto.keys import (
    generate_signing_key,
    key_id,
    load_signing_key,
    private_key_pem,
    public_bytes,
    save_private_key,
    save_public_key,
    write_file_atomic,
)
from tinymlops.errors import InvalidInputError, MissingKeyError, UsageError

ROLES = ("root", "targets", "snapshot", "timestamp")
KEY_SUFFIX = ".ed25519"
PUBLIC_SUFFIX = ".pub"


def tuf_key(key: Ed25519PrivateKey | bytes) -> SSlibKey:
    """The TUF (securesystemslib) public key of an Ed25519 private key or 32 raw public bytes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else Ed25519PublicKey.from_public_bytes(key)
    return SSlibKey.from_crypto(pub)


def raw_public(key: Key) -> bytes:
    """32 raw public bytes of a TUF Ed25519 key (anything else is refused)."""
    if key.keytype != "ed25519" or not isinstance(key.keyval.get("public"), str):
        raise InvalidInputError(f"TUF key {key.keyid[:16]} is a {key.keytype} key; this repository uses Ed25519 only")
    try:
        raw = bytes.fromhex(key.keyval["public"])
    except ValueError:
        raise InvalidInputError(f"TUF key {key.keyid[:16]}: public value is not hex") from None
    if len(raw) != 32:
        raise InvalidInputError(f"TUF key {key.keyid[:16]}: public value is {len(raw)} bytes, expected 32")
    return raw


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"unknown TUF role {role!r}; roles are {', '.join(ROLES)}")
    return role


class TufKeyStore:
    """Key files of the four top-level roles in one directory (created 0700)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def path(self, role: str, public: bytes) -> Path:
        return self.directory / f"{_check_role(role)}-{key_id(public)}{KEY_SUFFIX}"

    def _ensure_dir(self) -> None:
        try:
            if not self.directory.exists():
                self.directory.mkdir(parents=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise UsageError(f"{self.directory}: cannot create the TUF key directory: {exc.strerror or exc}") from exc

    def generate(self, role: str) -> Ed25519PrivateKey:
        """A fresh key for ``role``, saved before it is returned (so it is never used unsaved)."""
        key = generate_signing_key()
        self.save(role, key)
        return key

    def save(self, role: str, key: Ed25519PrivateKey) -> Path:
        self._ensure_dir()
        path = self.path(role, public_bytes(key))
        save_private_key(path, key)
        save_public_key(path.with_name(path.name + PUBLIC_SUFFIX), key)
        return path

    def has(self, role: str, public: bytes) -> bool:
        return self.path(role, public).is_file()

    def load(self, role: str, public: bytes) -> Ed25519PrivateKey:
        """The private key of ``role`` whose public half is ``public``, or :class:`MissingKeyError`."""
        path = self.path(role, public)
        if not path.is_file():
            hint = (
                " (the root key is kept offline: pass it with root_key=/--root-key FILE, or bring it back "
                "with `tinymlops repo import-root-key FILE`)"
                if role == "root"
                else ""
            )
            raise MissingKeyError(
                f"the {role} key {key_id(public)} is not in {self.directory}{hint}",
                role=role,
                key_id=key_id(public),
                path=str(path),
            )
        key = load_signing_key(path)
        if public_bytes(key) != public:
            raise InvalidInputError(f"{path}: holds another key than its name says", file=str(path))
        return key

    def signer(self, role: str, key: Key, private: Ed25519PrivateKey | None = None) -> CryptoSigner:
        """A signer for the TUF ``key`` of ``role`` (from ``private`` if given, else from its file)."""
        public = raw_public(key)
        if private is None:
            private = self.load(role, public)
        elif public_bytes(private) != public:
            raise UsageError(
                f"the {role} key given has key id {key_id(private)}, but the repository's {role} key is "
                f"{key_id(public)}",
                role=role,
            )
        return CryptoSigner(private, key)  # type: ignore[arg-type]

    def remove(self, role: str, public: bytes) -> None:
        path = self.path(role, public)
        for p in (path, path.with_name(path.name + PUBLIC_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def export_key(self, role: str, public: bytes, dest: Path | str) -> Path:
        """Move a private key out of the workspace to ``dest`` (a file, or a directory to put it in).

        The copy is written and synced before the workspace file is removed, so a crash leaves
        the key in one place or both, never in neither."""
        src = self.path(role, public)
        key = self.load(role, public)
        dest = Path(dest)
        target = dest / src.name if dest.is_dir() else dest
        if target.exists():
            raise UsageError(f"{target} already exists; refusing to overwrite a key file", file=str(target))
        try:
            write_file_atomic(target, private_key_pem(key), mode=0o600)
        except OSError as exc:
            raise UsageError(f"{target}: cannot write the {role} key: {exc.strerror or exc}") from exc
        if public_bytes(load_signing_key(target)) != public:  # read back before deleting the original
            raise UsageError(f"{target}: the written key does not read back; the original is kept")
        self.remove(role, public)
        return target

    def import_key(self, role: str, source: Path | str, expected: list[bytes]) -> Path:
        """Copy a private key file into the store; it must be one of the ``expected`` public keys."""
        key = load_signing_key(source)
        if public_bytes(key) not in expected:
            ids = ", ".join(key_id(p) for p in expected) or "none"
            raise UsageError(
                f"{source}: key {key_id(key)} is not a current {role} key of this repository (expected {ids})",
                file=str(source),
            )
        return self.save(role, key)

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(KEY_SUFFIX))


__all__ = ["KEY_SUFFIX", "ROLES", "TufKeyStore", "raw_public", "tuf_key"]

"""Content-addressed blob storage (sha256). One interface; the local directory store is the
embedded default (an S3-compatible store plugs in behind the same interface)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from tinymlops.errors import NotFoundError, StoreError

_HEX = set("0123456789abcdef")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_digest(digest: str) -> str:
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise NotFoundError(f"not a sha256 digest: {digest!r}")
    return digest


class BlobStore(ABC):
    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data``; return its sha256. Idempotent."""

    @abstractmethod
    def get(self, digest: str) -> bytes:
        """Return the bytes; verify they still hash to ``digest``."""

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def digests(self) -> set[str]:
        """Every stored digest (for garbage collection)."""

    @abstractmethod
    def delete(self, digest: str) -> None: ...


class LocalBlobStore(BlobStore):
    """``ROOT/sha256/ab/abcdef…``; each write is a temp file + fsync + ``os.replace``, so a
    reader never sees a partial blob."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        path = self._path(digest)
        if path.exists():
            return digest
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write blob {digest[:12]} under {self.root}: {exc.strerror}") from exc
        return digest

    def get(self, digest: str) -> bytes:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest[:12]}… is missing from {self.root}") from None
        if sha256_hex(data) != digest:
            raise StoreError(f"blob {digest[:12]}… is corrupt (content no longer matches its hash)")
        return data

    def exists(self, digest: str) -> bool:
        return self._path(digest).exists()

    def digests(self) -> set[str]:
        base = self.root / "sha256"
        if not base.exists():
            return set()
        return {p.name for p in base.glob("??/*") if len(p.name) == 64}

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

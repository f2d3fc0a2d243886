"""Where the agent gets bundles from: the :class:`UpdateSource` protocol, the :class:`Offer` it
returns, and :class:`LocalDirectorySource` — a folder where bundle files appear next to an offer
document (air-gapped devices: a USB stick, a mounted share; and the crash tests).

The TUF update client implements the same protocol over HTTP (``check`` refreshes the trusted
metadata and returns the target meant for this device; ``fetch`` downloads and verifies it).

The offer document a local directory holds (``offer.json``; unknown fields are refused)::

    {
      "spec_version": "1.0",
      "bundle": "digits-2.tmlb",      # a file name in the same directory (no path)
      "sha256": "<64 hex>",           # of the bundle file
      "length": 123456,               # bytes
      "urgent": false,                # optional: download even when the context says wait
      "revoked": ["<bundle id>", …]   # optional: bundles (ids or file SHA-256s) rolled back
    }
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tinymlops.bundle.container import MAX_BUNDLE_BYTES
from tinymlops.edge.agent.crashpoints import crash_point
from tinymlops.errors import IntegrityError, SpecError, UpdateSourceError, UsageError
from tinymlops.spec._parse import check_version, get_bool, get_int, get_str, reject_unknown
from tinymlops.spec.manifest import parse_json_strict

OFFER_SPEC_MAJOR = 1
OFFER_FILE = "offer.json"
#: an offer document is a few hundred bytes (plus the revoked list)
MAX_OFFER_BYTES = 64 * 1024
MAX_REVOKED = 256
DOWNLOAD_CHUNK = 64 * 1024

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REVOKED = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FIELDS = {"spec_version", "bundle", "sha256", "length", "urgent", "revoked"}


@dataclass(frozen=True)
class Offer:
    """One bundle an update source offers this device.

    ``target_path`` identifies it at the source (a file name, a TUF target path); ``sha256`` and
    ``length`` describe the bundle file (the field names of the TUF client's offer, so that one
    satisfies the agent as it is); ``urgent`` lets it through a context policy that would otherwise
    wait (e.g. for Wi-Fi); ``revoked`` lists bundles (ids or file SHA-256s) the control plane has
    rolled back — a device running one of them rolls back.
    """

    target_path: str
    sha256: str
    length: int
    urgent: bool = False
    revoked: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not isinstance(self.target_path, str) or not self.target_path or len(self.target_path) > 1024:
            raise SpecError(f"offer: target_path must be a non-empty string, got {self.target_path!r}")
        if not isinstance(self.sha256, str) or not _HEX64.match(self.sha256):
            raise SpecError(f"offer: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or not 0 < self.length <= MAX_BUNDLE_BYTES:
            raise SpecError(f"offer: length must be an integer in 1..{MAX_BUNDLE_BYTES}, got {self.length!r}")
        if not isinstance(self.urgent, bool):
            raise SpecError(f"offer: urgent must be true or false, got {self.urgent!r}")
        revoked = frozenset(self.revoked)
        if len(revoked) > MAX_REVOKED or not all(isinstance(r, str) and _REVOKED.match(r) for r in revoked):
            raise SpecError(f"offer: revoked must list at most {MAX_REVOKED} bundle ids (32 hex) or SHA-256s (64 hex)")
        object.__setattr__(self, "revoked", revoked)

    def revokes(self, bundle_id: str, sha256: str) -> bool:
        return bundle_id in self.revoked or sha256 in self.revoked

    @classmethod
    def from_dict(cls, data: Any) -> Offer:
        doc = "offer"
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
        reject_unknown(doc, data, _FIELDS)
        check_version(doc, data, OFFER_SPEC_MAJOR)
        bundle = get_str(doc, data, "bundle")
        if not _FILE_NAME.match(bundle):
            raise SpecError(
                f"{doc}: 'bundle' must be a plain file name (letters, digits, '_.-', no path), got {bundle!r}"
            )
        revoked = data.get("revoked", [])
        if not isinstance(revoked, list) or not all(isinstance(r, str) for r in revoked):
            raise SpecError(f"{doc}: 'revoked' must be a list of bundle ids or SHA-256s, got {revoked!r:.80}")
        return cls(
            target_path=bundle,
            sha256=get_str(doc, data, "sha256"),
            length=get_int(doc, data, "length", minimum=1),
            urgent=get_bool(doc, data, "urgent", False),
            revoked=frozenset(revoked),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": f"{OFFER_SPEC_MAJOR}.0",
            "bundle": self.target_path,
            "sha256": self.sha256,
            "length": self.length,
            "urgent": self.urgent,
            "revoked": sorted(self.revoked),
        }


class OfferLike(Protocol):
    """What the agent reads from an offer: :class:`Offer` here, and the TUF client's ``Offer`` as it
    is. An optional ``revoked`` attribute (bundle ids or file SHA-256s) triggers rollbacks."""

    @property
    def target_path(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def length(self) -> int: ...

    @property
    def urgent(self) -> bool: ...


OfferT = TypeVar("OfferT", bound=OfferLike)


class UpdateSource(Protocol[OfferT]):
    """What the agent polls. Errors (any exception) make the agent back off and try again."""

    def check(self) -> OfferT | None:
        """The bundle this device should run now, or None when there is nothing for it."""
        ...

    def fetch(self, offer: OfferT, dest_dir: Path) -> Path:
        """Download ``offer`` into ``dest_dir`` (a new file); verify its length and SHA-256 against
        the offer; return its path. A partial file may be left behind on a crash only."""
        ...


def revoked_by(offer: OfferLike) -> frozenset[str]:
    """The bundles (ids or SHA-256s) an offer says the control plane rolled back (none if it has no
    ``revoked`` attribute)."""
    revoked = getattr(offer, "revoked", None)
    if revoked is None:
        return frozenset()
    if isinstance(revoked, str) or not all(isinstance(r, str) and _REVOKED.match(r) for r in revoked):
        raise SpecError("offer: revoked must list bundle ids (32 hex) or SHA-256s (64 hex)")
    return frozenset(revoked)


def check_offer(offer: object) -> OfferLike:
    """Refuse an offer whose fields the agent relies on are malformed (the other side's data)."""
    sha, length, urgent = (getattr(offer, k, None) for k in ("sha256", "length", "urgent"))
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise SpecError(f"offer: sha256 must be 64 lowercase hex digits, got {sha!r}")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= MAX_BUNDLE_BYTES:
        raise SpecError(f"offer: length must be an integer in 1..{MAX_BUNDLE_BYTES}, got {length!r}")
    if not isinstance(urgent, bool):
        raise SpecError(f"offer: urgent must be true or false, got {urgent!r}")
    if not isinstance(getattr(offer, "target_path", None), str):
        raise SpecError("offer: target_path must be a string")
    return offer  # type: ignore[return-value]


class LocalDirectorySource:
    """Offers from a local folder: ``offer.json`` and the bundle file it names."""

    def __init__(self, directory: Path | str, *, offer_file: str = OFFER_FILE, chunk: int = DOWNLOAD_CHUNK) -> None:
        if chunk < 1:
            raise SpecError(f"download chunk must be >= 1 byte, got {chunk}")
        self.directory = Path(directory)
        self.offer_file = offer_file
        self.chunk = chunk

    def check(self) -> Offer | None:
        path = self.directory / self.offer_file
        if not self.directory.is_dir():
            raise UpdateSourceError(f"update directory {self.directory} does not exist or is not a directory")
        try:
            size = path.stat().st_size
            if size > MAX_OFFER_BYTES:
                raise SpecError(f"{path}: {size} bytes is far too large for an offer document")
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UpdateSourceError(f"{path}: cannot read the offer: {exc.strerror or exc}") from exc
        return Offer.from_dict(parse_json_strict(raw, f"offer {path}"))

    def fetch(self, offer: Offer, dest_dir: Path) -> Path:
        if not _FILE_NAME.match(offer.target_path):
            raise SpecError(f"offer: bundle {offer.target_path!r} is not a plain file name")
        src = self.directory / offer.target_path
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{offer.sha256[:32]}.tmlb"
        part = dest.with_suffix(".part")
        digest = hashlib.sha256()
        total = 0
        try:
            with open(src, "rb") as fh, open(part, "wb") as out:
                while block := fh.read(self.chunk):
                    total += len(block)
                    if total > offer.length:
                        raise IntegrityError(
                            f"{src} is larger than the offered {offer.length} bytes", member="bundle file"
                        )
                    out.write(block)
                    digest.update(block)
                    if total == len(block):
                        out.flush()
                        crash_point("download")
                out.flush()
                os.fsync(out.fileno())
        except FileNotFoundError:
            part.unlink(missing_ok=True)
            raise UpdateSourceError(f"offered bundle {src} does not exist") from None
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise UpdateSourceError(f"cannot fetch {src}: {exc.strerror or exc}") from exc
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if total != offer.length or digest.hexdigest() != offer.sha256:
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"{src} does not match the offer ({total} bytes, sha256 {digest.hexdigest()[:12]}…; "
                f"offered {offer.length} bytes, {offer.sha256[:12]}…)",
                member="bundle file",
            )
        os.replace(part, dest)
        return dest


def write_offer(
    directory: Path | str,
    bundle: Path | str,
    *,
    urgent: bool = False,
    revoked: Iterable[str] = (),
) -> Offer:
    """Publish ``bundle`` (a file inside ``directory``) as the offer there, atomically."""
    from tinymlops.edge.agent.store import write_durably

    directory, bundle = Path(directory), Path(bundle)
    if bundle.parent.resolve() != directory.resolve() or not _FILE_NAME.match(bundle.name):
        raise UsageError(f"{bundle}: an offered bundle must be a plainly named file inside {directory}")
    data = bundle.read_bytes()
    offer = Offer(bundle.name, hashlib.sha256(data).hexdigest(), len(data), urgent, frozenset(revoked))
    write_durably(directory / OFFER_FILE, json.dumps(offer.to_dict(), indent=1).encode("utf-8"))
    return offer


__all__ = [
    "OFFER_FILE",
    "LocalDirectorySource",
    "Offer",
    "OfferLike",
    "UpdateSource",
    "check_offer",
    "revoked_by",
    "write_offer",
]

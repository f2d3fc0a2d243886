"""The device half of secure updates: python-tuf's client (``ngclient``) against the update repository.

How a device updates:

1. **Enrolment** hands the device the repository's current ``root.json``;
   :meth:`UpdateClient.enrol` checks that it is a self-signed TUF root and stores it in the data
   directory (``<data_dir>/tuf/trusted-root.json``). It is the trust anchor from then on: every
   later root must be signed by the previous one, so a device never trusts anything it cannot
   chain back to what it was given at enrolment.
2. :meth:`UpdateClient.check` builds an ``ngclient.Updater`` over the metadata cache
   (``<data_dir>/tuf/metadata/``) and refreshes: newer roots one by one, then ``timestamp.json``,
   the snapshot it names, the top-level targets, and the one hash bin the asked-for target path
   falls in. Every file is checked against the keys and versions the device already trusts:
   an older version than one seen before (*rollback*), expired metadata (*freeze*), a file
   whose version or hash differs from what its parent pins (*mix-and-match*), a signature by a
   key the root or the delegation does not name, more bytes than allowed (*endless data*) or
   unparseable JSON are all refused. Only metadata that passed is written to the cache, so a
   refused update leaves the device's trusted state as it was.
3. The answer is an :class:`Offer` (the target's signed length and sha256 plus its custom
   :class:`~tinymlops.spec.update.UpdateInfo`), or ``None`` when nothing is published there.
4. :meth:`UpdateClient.download` fetches the hash-prefixed target file into a temp file,
   refuses it unless its length and sha256 are exactly the signed ones (*arbitrary package*,
   *endless data*), and only then moves it into place (``<sha256>.bundle.tmlb``).

Every ngclient failure becomes a :mod:`tinymlops.errors` exception: :class:`UpdateRefusedError`
(``attack`` names what was detected; exit code 3) when the repository served something that does
not verify, :class:`UpdateError` (exit code 4) when it could not be reached or answered with an
HTTP error. Requests can carry device-authentication headers: pass ``headers=`` a callable
``(method, url) -> {name: value}`` (called once per request), or a whole ``FetcherInterface``.

One :class:`UpdateClient` per data directory at a time (python-tuf's ``Updater`` is single-
instance); calls on one client are serialized. Edge-safe: python-tuf's client, urllib3,
cryptography and the standard library.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.api.serialization import DeserializationError
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from tinymlops.crypto.keys import write_file_atomic
from tinymlops.errors import SpecError, TinyMLOpsError, UpdateError, UpdateRefusedError, UsageError
from tinymlops.spec.update import TargetPath, UpdateInfo, cohort_target_path, device_target_path

TUF_SUBDIR = "tuf"
TRUSTED_ROOT_FILE = "trusted-root.json"
METADATA_SUBDIR = "metadata"
HASH_ALGORITHM = "sha256"
#: largest root.json accepted at enrolment (python-tuf's own limit for a root)
MAX_ROOT_BYTES = 512_000

HeaderProvider = Callable[[str, str], Mapping[str, str]]

# attack names carried by UpdateRefusedError.attack
ROLLBACK = "rollback"
FREEZE = "freeze"
MIX_AND_MATCH = "mix-and-match"
ARBITRARY_PACKAGE = "arbitrary-package"
ENDLESS_DATA = "endless-data"
UNTRUSTED_SIGNATURE = "untrusted-signature"
MALFORMED_METADATA = "malformed-metadata"
INVALID_METADATA = "invalid-metadata"

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ROLLBACK_MESSAGES = re.compile(r"must be >=|Expected root version|Expected \S+\.json version|missing info for")


# --- HTTP ------------------------------------------------------------------------------------
class HttpFetcher(FetcherInterface):
    """ngclient's downloads over urllib3, with optional per-request headers.

    ``headers(method, url)`` is called for every request (so a signature can cover a fresh
    timestamp and nonce); redirects are not followed and anything but HTTP 200 is an error."""

    def __init__(
        self,
        headers: HeaderProvider | None = None,
        *,
        timeout: float = 30.0,
        chunk_size: int = 64 * 1024,
        user_agent: str = "tinymlops-agent",
    ) -> None:
        self._headers = headers
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._chunk_size = chunk_size
        self._user_agent = user_agent
        self._pool = urllib3.PoolManager(retries=urllib3.Retry(total=2, redirect=False, status=0, read=0))

    def _request_headers(self, url: str) -> dict[str, str]:
        out = {"User-Agent": self._user_agent}
        if self._headers is None:
            return out
        extra = self._headers("GET", url)
        if not isinstance(extra, Mapping):
            raise UsageError(f"the request-header callable must return a mapping, got {type(extra).__name__}")
        for name, value in extra.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise UsageError(f"the request-header callable returned a bad header name {name!r}")
            if not isinstance(value, str) or "\r" in value or "\n" in value:
                raise UsageError(f"the request-header callable returned a bad value for header {name}")
            out[name] = value
        return out

    def _fetch(self, url: str) -> Iterator[bytes]:
        headers = self._request_headers(url)
        try:
            response = self._pool.request(
                "GET", url, headers=headers, preload_content=False, redirect=False, timeout=self._timeout
            )
        except urllib3.exceptions.MaxRetryError as exc:
            # (urllib3 counts a refused connection as a connect timeout: tell them apart)
            refused = isinstance(exc.reason, urllib3.exceptions.NewConnectionError)
            if isinstance(exc.reason, urllib3.exceptions.TimeoutError) and not refused:
                raise tuf_errors.SlowRetrievalError(f"timed out fetching {url}") from exc
            raise tuf_errors.DownloadError(f"cannot reach {url}: {exc.reason}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError(f"timed out fetching {url}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {exc}") from exc
        if response.status != 200:
            response.close()
            response.release_conn()
            raise tuf_errors.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return self._chunks(response)

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        complete = False
        try:
            yield from response.stream(self._chunk_size)
            complete = True
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError("timed out while downloading") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_errors.DownloadError(f"download interrupted: {exc}") from exc
        finally:
            if not complete:  # an abandoned body (e.g. endless data): never reuse this connection
                response.close()
            response.release_conn()


class _Recorder(FetcherInterface):
    """Wraps the fetcher to remember the last URL asked for (named in error messages)."""

    def __init__(self, inner: FetcherInterface) -> None:
        self.inner = inner
        self.last_url: str | None = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        return self.inner.fetch(url)


# --- offers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """A target the repository offers: signed length and sha256, and its custom info."""

    target_path: str
    length: int
    sha256: str
    info: UpdateInfo
    _target: TargetFile = field(repr=False, compare=False)
    _updater: Updater | None = field(default=None, repr=False, compare=False)

    @property
    def bundle_id(self) -> str:
        return self.info.bundle_id

    @property
    def urgent(self) -> bool:
        return self.info.urgent

    @property
    def file_name(self) -> str:
        """The name :meth:`UpdateClient.download` stores it under: ``<sha256>.bundle.tmlb``."""
        return f"{self.sha256}.{self.target_path.rpartition('/')[2]}"

    def to_dict(self) -> dict[str, Any]:
        return {"target_path": self.target_path, "length": self.length, "sha256": self.sha256, **self.info.to_dict()}


def _offer(target: TargetFile, updater: Updater) -> Offer:
    sha = target.hashes.get(HASH_ALGORITHM)
    if not isinstance(sha, str):
        raise SpecError(f"target {target.path}: the repository lists no {HASH_ALGORITHM} hash for it")
    info = UpdateInfo.from_dict(target.custom)
    if info.size != target.length:
        raise SpecError(
            f"target {target.path}: update info says {info.size} bytes but the signed length is {target.length}"
        )
    return Offer(target.path, target.length, sha, info, target, updater)


# --- errors ----------------------------------------------------------------------------------
def _member(url: str | None) -> str | None:
    return None if url is None else url.rstrip("/").rpartition("/")[2] or url


def translate_error(exc: BaseException, *, member: str | None, target: bool = False) -> TinyMLOpsError:
    """Map an exception from python-tuf's client to the tinymlops hierarchy.

    ``member`` names the metadata file (or target path, with ``target=True``) being processed."""
    what = f"target {member}" if target else (member or "update metadata")
    if isinstance(exc, TinyMLOpsError):
        return exc
    if isinstance(exc, tuf_errors.DownloadError) and isinstance(exc.__cause__, TinyMLOpsError):
        return exc.__cause__  # e.g. the request-header callable refused
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, tuf_errors.DownloadLengthMismatchError):
        return UpdateRefusedError(
            f"refused {what}: the repository sent more bytes than the signed metadata allows "
            f"(endless-data attack): {msg}",
            attack=ENDLESS_DATA,
            member=member,
        )
    if isinstance(exc, tuf_errors.DownloadHTTPError):
        return UpdateError(
            f"the update repository answered HTTP {exc.status_code} for {what}", status=exc.status_code, member=member
        )
    if isinstance(exc, tuf_errors.SlowRetrievalError):
        return UpdateError(f"the update repository timed out sending {what}: {msg}", member=member)
    if isinstance(exc, tuf_errors.DownloadError):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        return UpdateError(f"could not download {what}: {msg}{cause}", member=member)
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return UpdateRefusedError(
            f"refused {what}: {msg} — the repository, or something in between, serves stale metadata "
            "(a freeze attack, or a repository nobody refreshes)",
            attack=FREEZE,
            member=member,
        )
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        if _ROLLBACK_MESSAGES.search(msg):
            return UpdateRefusedError(
                f"refused {what}: it is older than metadata this device already trusts ({msg}) — a rollback attack",
                attack=ROLLBACK,
                member=member,
            )
        return UpdateRefusedError(
            f"refused {what}: its version is not the one the signed parent metadata pins ({msg}) — "
            "metadata from different releases mixed together (mix-and-match attack)",
            attack=MIX_AND_MATCH,
            member=member,
        )
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return UpdateRefusedError(
            f"refused {what}: not signed by the keys the trusted metadata names ({msg}) — forged metadata, "
            "or metadata signed with a key that is not trusted for it (e.g. a compromised timestamp key)",
            attack=UNTRUSTED_SIGNATURE,
            member=member,
        )
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        if target:
            return UpdateRefusedError(
                f"refused {what}: its bytes do not match the signed length and sha256 ({msg}) — "
                "an arbitrary-package attack",
                attack=ARBITRARY_PACKAGE,
                member=member,
            )
        return UpdateRefusedError(
            f"refused {what}: its length or hash is not the one the signed parent metadata pins ({msg}) — "
            "tampered metadata, or metadata from another release (mix-and-match attack)",
            attack=MIX_AND_MATCH,
            member=member,
        )
    if isinstance(exc, DeserializationError):
        return UpdateRefusedError(
            f"refused {what}: not valid TUF metadata ({msg})", attack=MALFORMED_METADATA, member=member
        )
    if isinstance(exc, tuf_errors.RepositoryError):
        if _ROLLBACK_MESSAGES.search(msg):
            return UpdateRefusedError(
                f"refused {what}: it drops metadata this device already trusts ({msg}) — a rollback attack",
                attack=ROLLBACK,
                member=member,
            )
        return UpdateRefusedError(f"refused {what}: {msg}", attack=INVALID_METADATA, member=member)
    if isinstance(exc, OSError):
        return UpdateError(f"cannot use the local update cache: {exc.strerror or exc}", member=member)
    raise exc


# --- the client ------------------------------------------------------------------------------
class UpdateClient:
    """Checks for and downloads this device's bundle through the TUF repository at ``repository_url``.

    ``repository_url`` serves ``metadata/`` and ``targets/`` (override either with
    ``metadata_url`` / ``targets_url``). ``headers`` adds device-authentication headers to every
    request; ``fetcher`` replaces the HTTP layer altogether."""

    def __init__(
        self,
        data_dir: Path | str,
        repository_url: str,
        *,
        metadata_url: str | None = None,
        targets_url: str | None = None,
        headers: HeaderProvider | None = None,
        fetcher: FetcherInterface | None = None,
        config: UpdaterConfig | None = None,
    ) -> None:
        if headers is not None and fetcher is not None:
            raise UsageError("give headers= or fetcher=, not both (a custom fetcher adds its own headers)")
        self.data_dir = Path(data_dir)
        self.tuf_dir = self.data_dir / TUF_SUBDIR
        self.metadata_dir = self.tuf_dir / METADATA_SUBDIR
        base = repository_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise UsageError(f"repository URL must be http:// or https://, got {repository_url!r}")
        self.metadata_url = (metadata_url or f"{base}/metadata").rstrip("/") + "/"
        self.targets_url = (targets_url or f"{base}/targets").rstrip("/") + "/"
        self._fetcher = _Recorder(fetcher if fetcher is not None else HttpFetcher(headers))
        self._config = config or UpdaterConfig()
        self._lock = threading.Lock()
        root_file = self.tuf_dir / TRUSTED_ROOT_FILE
        try:
            self._bootstrap = root_file.read_bytes()
        except FileNotFoundError:
            raise UsageError(
                f"{self.data_dir} is not enrolled with an update repository (no {root_file}); "
                "enrol first (UpdateClient.enrol)"
            ) from None
        except OSError as exc:
            raise UpdateError(f"{root_file}: cannot read the trusted root: {exc.strerror or exc}") from exc

    # -- enrolment --
    @staticmethod
    def enrol(data_dir: Path | str, root_json: bytes) -> Path:
        """Check ``root_json`` (a self-signed TUF root) and store it as this device's trust anchor."""
        data = bytes(root_json)
        if len(data) > MAX_ROOT_BYTES:
            raise UpdateRefusedError(
                f"root metadata of {len(data)} bytes is larger than {MAX_ROOT_BYTES}",
                attack=MALFORMED_METADATA,
                member="root.json",
            )
        try:
            md = Metadata[Root].from_bytes(data)
            if not isinstance(md.signed, Root):
                raise tuf_errors.RepositoryError(f"expected root metadata, got {md.signed.type}")
            md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        except Exception as exc:
            raise translate_error(exc, member="root.json") from exc
        tuf_dir = Path(data_dir) / TUF_SUBDIR
        try:
            (tuf_dir / METADATA_SUBDIR).mkdir(parents=True, exist_ok=True)
            return write_file_atomic(tuf_dir / TRUSTED_ROOT_FILE, data)
        except OSError as exc:
            raise UpdateError(f"{tuf_dir}: cannot store the trusted root: {exc.strerror or exc}") from exc

    @staticmethod
    def is_enrolled(data_dir: Path | str) -> bool:
        return (Path(data_dir) / TUF_SUBDIR / TRUSTED_ROOT_FILE).is_file()

    # -- checking --
    def _updater(self) -> Updater:
        try:
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            return Updater(
                str(self.metadata_dir),
                self.metadata_url,
                None,
                self.targets_url,
                self._fetcher,
                self._config,
                bootstrap=self._bootstrap,
            )
        except Exception as exc:
            raise translate_error(exc, member=TRUSTED_ROOT_FILE) from exc

    def check(self, target_path: str) -> Offer | None:
        """The offer at ``target_path`` (e.g. ``devices/<id>/bundle.tmlb``), or None if none."""
        return self.check_first([target_path])

    def check_first(self, target_paths: Sequence[str]) -> Offer | None:
        """One refresh, then the first of ``target_paths`` that has an offer (device before cohort)."""
        if isinstance(target_paths, str) or not target_paths:
            raise UsageError("check_first needs a non-empty list of target paths")
        for p in target_paths:
            try:
                TargetPath.parse(p)
            except SpecError as exc:
                raise UsageError(exc.message) from None
        with self._lock:
            updater = self._updater()
            self._fetcher.last_url = None
            try:
                updater.refresh()
                for p in target_paths:
                    target = updater.get_targetinfo(p)
                    if target is not None:
                        return _offer(target, updater)
                return None
            except SpecError:
                raise
            except Exception as exc:
                raise translate_error(exc, member=_member(self._fetcher.last_url)) from exc

    # -- downloading --
    def download(self, offer: Offer, dest_dir: Path | str) -> Path:
        """Download ``offer`` into ``dest_dir`` as ``<sha256>.bundle.tmlb`` (verified; atomic).

        A file already there with the right length and hash is reused (a restarted agent does not
        download twice). Nothing is left in ``dest_dir`` when the download is refused."""
        if not isinstance(offer, Offer):
            raise UsageError(f"download needs an Offer from check(), got {type(offer).__name__}")
        dest = Path(dest_dir)
        final = dest / offer.file_name
        try:
            dest.mkdir(parents=True, exist_ok=True)
            if final.is_file():
                with final.open("rb") as fh:
                    try:
                        offer._target.verify_length_and_hashes(fh)
                        return final
                    except tuf_errors.LengthOrHashMismatchError:
                        pass
                final.unlink()
            for stale in dest.glob(f".{offer.file_name}.*.part"):
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise UpdateError(f"{dest}: cannot prepare the download directory: {exc.strerror or exc}") from exc
        tmp = dest / f".{offer.file_name}.{secrets.token_hex(6)}.part"
        with self._lock:
            updater = offer._updater or self._updater()
            try:
                updater.download_target(offer._target, str(tmp), self.targets_url)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                raise translate_error(exc, member=offer.target_path, target=True) from exc
        with contextlib.suppress(OSError):
            fd = os.open(dest, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return final

    # -- local state --
    def trusted_versions(self) -> dict[str, int]:
        """Versions of the metadata this device currently trusts (from its cache; verified when stored)."""
        import json

        out: dict[str, int] = {}
        roots = self.metadata_dir / "root_history"
        versions = [int(p.name.split(".")[0]) for p in roots.glob("*.root.json")] if roots.is_dir() else []
        if versions:
            out["root"] = max(versions)
        for p in sorted(self.metadata_dir.glob("*.json")):
            if p.name == "root.json":
                continue
            try:
                out[p.name.removesuffix(".json")] = int(json.loads(p.read_bytes())["signed"]["version"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out


class TufUpdateSource:
    """The agent's update source (``check()`` / ``fetch(offer, dest_dir)``) over an :class:`UpdateClient`:
    this device's own target first, then each of its cohorts' in order."""

    def __init__(self, client: UpdateClient, device_id: str, cohorts: Sequence[str] = ()) -> None:
        try:
            self.target_paths = [device_target_path(device_id), *(cohort_target_path(c) for c in cohorts)]
        except SpecError as exc:
            raise UsageError(exc.message) from None
        self.client = client

    def check(self) -> Offer | None:
        return self.client.check_first(self.target_paths)

    def fetch(self, offer: Offer, dest_dir: Path) -> Path:
        return self.client.download(offer, dest_dir)


__all__ = [
    "ARBITRARY_PACKAGE",
    "ENDLESS_DATA",
    "FREEZE",
    "INVALID_METADATA",
    "MALFORMED_METADATA",
    "MIX_AND_MATCH",
    "ROLLBACK",
    "UNTRUSTED_SIGNATURE",
    "HeaderProvider",
    "HttpFetcher",
    "Offer",
    "TufUpdateSource",
    "UpdateClient",
    "translate_error",
]

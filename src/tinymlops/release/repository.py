"""The update repository: bundles published to devices through The Update Framework (python-tuf).

Layout (under the workspace)::

    tuf/
      repository.json              expiry policy (seconds per role)
      metadata/
        1.root.json 2.root.json …  every root version (clients walk them; never deleted)
        N.targets.json             top-level targets: only the hash-bin delegation
        N.bins-00.json … bins-ff   the targets, spread over 2**bits bins by path hash
        N.snapshot.json            versions (and lengths) of targets and every bin
        timestamp.json             version, length and sha256 of the current snapshot
      targets/
        devices/<device_id>/<sha256>.bundle.tmlb
        cohorts/<cohort>/<sha256>.bundle.tmlb
    keys/tuf/<role>-<key id>.ed25519   one Ed25519 key per role (see :mod:`.keystore`)

Target namespace (:mod:`tinymlops.spec.update`): ``devices/<device_id>/bundle.tmlb`` is the
bundle for one device, ``cohorts/<name>/bundle.tmlb`` the bundle for a cohort; a device asks
for its own path, then its cohort's. Each target carries custom info (:class:`UpdateInfo`:
model, version, variant, bundle id, size, urgent flag, release id). Consistent snapshots are
on, so every metadata version and target content has its own file name and a client that
read timestamp vN sees one coherent release even while the next one is being written.

Keys. Root, targets, snapshot and timestamp each have one Ed25519 key. Publishing, refreshing
and pruning use only the online keys (targets, snapshot, timestamp); the root key is needed
only to rotate a key or renew the root, so it can live off the machine
(:meth:`UpdateRepository.export_root_key`); operations that need it take ``root_key=`` or raise
:class:`MissingKeyError` naming the key and where it was looked for. The hash bins are signed
with the targets key (the delegation names it), so rotating the targets key re-signs them.

Scale: succinct hash-bin delegation (TAP 15, followed by ``ngclient``). A device downloads
timestamp (≈0.5 KB, every poll), snapshot (≈45 bytes per bin, only when something changed),
top-level targets (≈0.7 KB, changes only on key rotation or renewal) and the one bin its path
hashes to. Measured (``benchmarks/bench_update_repo.py``) with 10,000 devices and the default
256 bins: a bin averages 16 KB, the snapshot 11.6 KB, and a device whose bundle changed fetches
24 KB — against 4.0 MB for one flat targets file listing every device (0.6%). 1,024 bins would
make the snapshot (45 KB) cost more than the smaller bins save; 16 bins suit ~1,000 devices.

Crash safety. Every file is written to a temp file, synced and ``os.replace``\\ d. A change is
written in dependency order — target files, then bins/targets metadata, then the snapshot,
then (after syncing the directories) ``timestamp.json`` last. The timestamp is the commit
point: the repository state is read back through it (timestamp → snapshot → versions), so a
crash before it leaves new files nothing refers to, and the next write simply writes them
again. A key rotation signs the affected metadata with the old *and* the new key before the
new root is written, so the repository verifies under either root at every moment. Writers
hold an exclusive ``flock`` on ``tuf/.lock``; readers need none (old versions stay until
:meth:`~UpdateRepository.prune`).

Server side: may import python-tuf's metadata API and securesystemslib; not part of the edge
closure.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from tinymlops.crypto.keys import key_id, load_signing_key, public_bytes, write_file_atomic
from tinymlops.errors import (
    InvalidInputError,
    NotFoundError,
    SpecError,
    StoreError,
    UsageError,
    WorkspaceError,
)
from tinymlops.release.keystore import ROLES, TufKeyStore, raw_public, tuf_key
from tinymlops.spec.update import BUNDLE_FILENAME, TargetPath, UpdateInfo

if TYPE_CHECKING:
    from tinymlops.crypto.signing import TrustedKey
    from tinymlops.workspace.workspace import Workspace

TUF_DIR = "tuf"
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
CONFIG_FILE = "repository.json"
LOCK_FILE = ".lock"
BINS_PREFIX = "bins"
DEFAULT_BIN_BITS = 8
MAX_BIN_BITS = 16
HASH_ALGORITHM = "sha256"
CONFIG_SPEC_VERSION = "1.0"

_ROOT_FILE = re.compile(r"^([1-9][0-9]{0,9})\.root\.json$")
_VERSIONED_FILE = re.compile(r"^([1-9][0-9]{0,9})\.([a-z0-9-]{1,64})\.json$")
_METADATA_NAME = re.compile(r"^(?:[1-9][0-9]{0,9}\.[a-z0-9-]{1,64}|timestamp)\.json$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Clock = Callable[[], datetime]
RootKey = Ed25519PrivateKey | Path | str
_S = TypeVar("_S", bound=Signed)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _root_of(ws: Workspace | Path | str) -> Path:
    return Path(ws) if isinstance(ws, str | Path) else ws.root


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for sync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- policy and results --------------------------------------------------------------------
@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata is valid. The timestamp is short (a frozen mirror is noticed
    within a day); the others are renewed by :meth:`UpdateRepository.refresh` when less than
    half of their period is left. ``targets`` applies to the top-level targets and every bin."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        for role in ROLES:
            value = getattr(self, role)
            if not isinstance(value, timedelta) or value < timedelta(seconds=1):
                raise UsageError(f"expiry of {role} metadata must be at least one second, got {value!r}")

    def period(self, role: str) -> timedelta:
        return self.targets if role not in ROLES else getattr(self, role)

    def to_dict(self) -> dict[str, int]:
        return {role: int(getattr(self, role).total_seconds()) for role in ROLES}

    @classmethod
    def from_dict(cls, data: Any, source: str = "expiry policy") -> ExpiryPolicy:
        if not isinstance(data, dict) or set(data) - set(ROLES):
            raise SpecError(f"{source}: expected an object with seconds for {', '.join(ROLES)}")
        values: dict[str, timedelta] = {}
        for role, seconds in data.items():
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
                raise SpecError(f"{source}: {role} must be a whole number of seconds >= 1, got {seconds!r}")
            values[role] = timedelta(seconds=seconds)
        return cls(**values)


@dataclass(frozen=True)
class PublishedTarget:
    """One published bundle: its target path, length, sha256, custom info and the bin holding it."""

    path: str
    length: int
    sha256: str
    info: UpdateInfo
    role: str

    @property
    def target_path(self) -> TargetPath:
        return TargetPath.parse(self.path)

    @property
    def served_name(self) -> str:
        """The file name under ``targets/`` (hash-prefixed, as consistent snapshots serve it)."""
        parent, _, name = self.path.rpartition("/")
        return f"{parent}/{self.sha256}.{name}"

    def to_dict(self) -> dict[str, Any]:
        tp = self.target_path
        return {
            "path": self.path,
            "scope": tp.scope,
            "name": tp.name,
            "length": self.length,
            "sha256": self.sha256,
            "role": self.role,
            "served_name": self.served_name,
            **{k: v for k, v in self.info.to_dict().items() if k != "spec_version"},
        }

    @classmethod
    def from_target_file(cls, target: TargetFile, role: str) -> PublishedTarget:
        sha = target.hashes.get(HASH_ALGORITHM)
        if sha is None:
            raise StoreError(f"target {target.path} in {role} has no {HASH_ALGORITHM} hash")
        try:
            info = UpdateInfo.from_dict(target.custom)
        except SpecError as exc:
            raise StoreError(f"target {target.path} in {role}: {exc.message}") from exc
        return cls(target.path, target.length, sha, info, role)


@dataclass(frozen=True)
class RefreshResult:
    timestamp_version: int
    snapshot_version: int
    renewed: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp_version": self.timestamp_version,
            "snapshot_version": self.snapshot_version,
            "renewed": list(self.renewed),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class PruneResult:
    removed_metadata: int
    removed_targets: int
    removed_temp: int

    def to_dict(self) -> dict[str, int]:
        return {
            "removed_metadata": self.removed_metadata,
            "removed_targets": self.removed_targets,
            "removed_temp": self.removed_temp,
        }


@dataclass(frozen=True)
class RoleStatus:
    role: str
    version: int
    expires: datetime
    key_ids: tuple[str, ...]
    keys_here: tuple[bool, ...]

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "role": self.role,
            "version": self.version,
            "expires": self.expires.isoformat(),
            "expires_in_s": int((self.expires - now).total_seconds()),
            "key_ids": list(self.key_ids),
            "keys_here": list(self.keys_here),
        }


@dataclass(frozen=True)
class RepositoryStatus:
    directory: Path
    now: datetime
    roles: tuple[RoleStatus, ...]
    bins: int
    bins_version_max: int
    bins_earliest_expiry: datetime
    targets: int
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "now": self.now.isoformat(),
            "roles": [r.to_dict(self.now) for r in self.roles],
            "bins": self.bins,
            "bins_version_max": self.bins_version_max,
            "bins_earliest_expiry": self.bins_earliest_expiry.isoformat(),
            "targets": self.targets,
            "warnings": list(self.warnings),
        }


# --- the repository's committed state ------------------------------------------------------
@dataclass
class _State:
    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]

    @property
    def succinct(self) -> SuccinctRoles:
        delegations = self.targets.signed.delegations
        if delegations is None or delegations.succinct_roles is None:
            raise StoreError("top-level targets metadata has no hash-bin delegation")
        return delegations.succinct_roles


class RepositoryEdit:
    """Changes made under one lock and committed together (one new snapshot and timestamp).

    Get one from :meth:`UpdateRepository.edit`; nothing is visible to devices until the
    ``with`` block ends without an exception."""

    def __init__(self, repo: UpdateRepository, state: _State) -> None:
        self._repo = repo
        self._state = state
        self.bins: dict[str, Metadata[Targets]] = {}
        self.target_dirs: set[Path] = set()

    @property
    def changed(self) -> bool:
        return bool(self.bins)

    def _bin_for(self, path: str) -> tuple[str, Metadata[Targets]]:
        name = self._state.succinct.get_role_for_target(path)
        if name not in self.bins:
            self.bins[name] = self._repo._load_bin(self._state, name)
        return name, self.bins[name]

    def put(self, target_path: str | TargetPath, data: bytes, info: UpdateInfo) -> PublishedTarget:
        """Publish ``data`` at ``target_path`` with ``info`` (no bundle check: see :meth:`publish`)."""
        tp = target_path if isinstance(target_path, TargetPath) else TargetPath.parse(target_path)
        data = bytes(data)
        if info.size != len(data):
            raise UsageError(f"update info says {info.size} bytes but the target is {len(data)} bytes")
        digest = hashlib.sha256(data).hexdigest()
        target_dir = self._repo.targets_dir / tp.scope / tp.name
        file = target_dir / f"{digest}.{BUNDLE_FILENAME}"
        try:  # content-addressed: a file already there with these exact bytes is reused
            if not (file.is_file() and hashlib.sha256(file.read_bytes()).hexdigest() == digest):
                write_file_atomic(file, data)
        except OSError as exc:
            raise StoreError(f"{file}: cannot write the target file: {exc.strerror or exc}") from exc
        self.target_dirs.update((target_dir, target_dir.parent))
        name, md = self._bin_for(tp.path)
        md.signed.targets[tp.path] = TargetFile(
            len(data), {HASH_ALGORITHM: digest}, tp.path, {"custom": info.to_dict()}
        )
        return PublishedTarget(tp.path, len(data), digest, info, name)

    def publish(
        self,
        bundle: bytes | Path | str,
        *,
        device: str | None = None,
        cohort: str | None = None,
        urgent: bool = False,
        release_id: str | None = None,
        trusted_release_keys: Iterable[TrustedKey] | None = None,
    ) -> PublishedTarget:
        """Verify a bundle (signature and members, as a device would minus decryption) and publish
        it for one device or one cohort, with custom info read from its signed manifest."""
        from tinymlops.bundle.reader import read_source, verify_bundle

        if (device is None) == (cohort is None):
            raise UsageError("publish a bundle for exactly one of a device or a cohort")
        tp = TargetPath.device(device) if device is not None else TargetPath.cohort(cohort)  # type: ignore[arg-type]
        data = read_source(bundle)
        keys = list(trusted_release_keys) if trusted_release_keys is not None else [self._repo.release_public_key()]
        verified = verify_bundle(data, trusted_release_keys=keys)
        m = verified.manifest
        info = UpdateInfo(
            bundle_id=m.bundle_id,
            model=m.model.name,
            version=m.model.version,
            variant=m.model.variant,
            ref=m.model.ref,
            target=m.target,
            size=len(data),
            urgent=urgent,
            release_id=release_id,
            published_at=self._repo._now().isoformat(),
        )
        return self.put(tp, data, info)

    def get(self, target_path: str | TargetPath) -> PublishedTarget | None:
        """What this edit would publish at ``target_path`` (None when nothing)."""
        tp = target_path if isinstance(target_path, TargetPath) else TargetPath.parse(target_path)
        name, md = self._bin_for(tp.path)
        target = md.signed.targets.get(tp.path)
        return None if target is None else PublishedTarget.from_target_file(target, name)

    def unpublish(self, target_path: str | TargetPath) -> PublishedTarget:
        """Withdraw the target at ``target_path`` (:class:`NotFoundError` if none is published)."""
        tp = target_path if isinstance(target_path, TargetPath) else TargetPath.parse(target_path)
        name, md = self._bin_for(tp.path)
        target = md.signed.targets.pop(tp.path, None)
        if target is None:
            raise NotFoundError(f"nothing is published at {tp.path}")
        return PublishedTarget.from_target_file(target, name)


class UpdateRepository:
    """A TUF repository in ``<workspace>/tuf`` with its keys in ``<workspace>/keys/tuf``.

    Create one with :meth:`init`, open it with :meth:`open`. ``clock`` (UTC ``datetime``) is
    the time metadata is signed at; ``expiry`` overrides the stored expiry policy."""

    def __init__(self, workspace_root: Path, *, clock: Clock | None = None, expiry: ExpiryPolicy | None = None) -> None:
        self.workspace_root = Path(workspace_root)
        self.dir = self.workspace_root / TUF_DIR
        self.metadata_dir = self.dir / METADATA_DIR
        self.targets_dir = self.dir / TARGETS_DIR
        self.keys = TufKeyStore(self.workspace_root / "keys" / "tuf")
        self._clock = clock or _utcnow
        self._expiry = expiry

    # -- creating and opening --
    @staticmethod
    def exists(ws: Workspace | Path | str) -> bool:
        """True when the workspace holds a committed repository (its ``timestamp.json``)."""
        return (_root_of(ws) / TUF_DIR / METADATA_DIR / "timestamp.json").is_file()

    @classmethod
    def open(
        cls, ws: Workspace | Path | str, *, clock: Clock | None = None, expiry: ExpiryPolicy | None = None
    ) -> UpdateRepository:
        root = _root_of(ws)
        if not cls.exists(root):
            raise WorkspaceError(
                f"{root} has no update repository (no {TUF_DIR}/{METADATA_DIR}/timestamp.json); "
                "run `tinymlops repo init`"
            )
        return cls(root, clock=clock, expiry=expiry)

    @classmethod
    def init(
        cls,
        ws: Workspace | Path | str,
        *,
        bin_bits: int = DEFAULT_BIN_BITS,
        expiry: ExpiryPolicy | None = None,
        clock: Clock | None = None,
    ) -> UpdateRepository:
        """Create the keys and the first version of every metadata file (2**bin_bits bins)."""
        root = _root_of(ws)
        if isinstance(bin_bits, bool) or not isinstance(bin_bits, int) or not 1 <= bin_bits <= MAX_BIN_BITS:
            raise UsageError(f"bin_bits must be an integer from 1 to {MAX_BIN_BITS}, got {bin_bits!r}")
        if cls.exists(root):
            raise WorkspaceError(f"{root} already has an update repository ({TUF_DIR}/)")
        repo = cls(root, clock=clock, expiry=expiry or ExpiryPolicy())
        try:
            repo.metadata_dir.mkdir(parents=True, exist_ok=True)
            repo.targets_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create {repo.dir}: {exc.strerror or exc}") from exc
        with repo._locked():
            if cls.exists(root):  # lost a race with another init
                raise WorkspaceError(f"{root} already has an update repository ({TUF_DIR}/)")
            repo._create(bin_bits)
        return repo

    def _create(self, bin_bits: int) -> None:
        now = self._now()
        exp = self.expiry
        keys = {role: self.keys.generate(role) for role in ROLES}
        config = {"spec_version": CONFIG_SPEC_VERSION, "expiry_seconds": exp.to_dict()}
        write_file_atomic(self.dir / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())

        root = Root(expires=now + exp.root, consistent_snapshot=True)
        for role, k in keys.items():
            root.add_key(tuf_key(k), role)
        root_md = Metadata(root)
        self._sign(root_md, [CryptoSigner(keys["root"], tuf_key(keys["root"]))])
        self._write(root_md, "1.root.json")

        targets_key = tuf_key(keys["targets"])
        succinct = SuccinctRoles([targets_key.keyid], 1, bin_bits, BINS_PREFIX)
        targets_md = Metadata(
            Targets(
                expires=now + exp.targets, delegations=Delegations({targets_key.keyid: targets_key}, None, succinct)
            )
        )
        targets_signer = [CryptoSigner(keys["targets"], targets_key)]
        meta: dict[str, MetaFile] = {}
        for name in succinct.get_roles():
            md = Metadata(Targets(expires=now + exp.targets))
            self._sign(md, targets_signer)
            meta[f"{name}.json"] = MetaFile(1, len(self._write(md, f"1.{name}.json")))
        self._sign(targets_md, targets_signer)
        meta["targets.json"] = MetaFile(1, len(self._write(targets_md, "1.targets.json")))
        snapshot_md = Metadata(Snapshot(expires=now + exp.snapshot, meta=meta))
        self._sign(snapshot_md, [CryptoSigner(keys["snapshot"], tuf_key(keys["snapshot"]))])
        snapshot_bytes = self._write(snapshot_md, "1.snapshot.json")
        _fsync_dir(self.metadata_dir)
        ts_md = Metadata(Timestamp(expires=now + exp.timestamp, snapshot_meta=self._snapshot_meta(1, snapshot_bytes)))
        self._sign(ts_md, [CryptoSigner(keys["timestamp"], tuf_key(keys["timestamp"]))])
        self._write(ts_md, "timestamp.json")
        _fsync_dir(self.metadata_dir)

    # -- small helpers --
    @property
    def expiry(self) -> ExpiryPolicy:
        if self._expiry is None:
            path = self.dir / CONFIG_FILE
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                doc = {}
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: unreadable repository configuration: {exc}") from exc
            if not isinstance(doc, dict):
                raise StoreError(f"{path}: repository configuration must be a JSON object")
            self._expiry = ExpiryPolicy.from_dict(doc.get("expiry_seconds", {}), str(path)) if doc else ExpiryPolicy()
        return self._expiry

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now.astimezone(UTC).replace(microsecond=0)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.dir}: cannot open the repository lock: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def release_public_key(self) -> bytes:
        """The workspace's bundle release key (what :meth:`RepositoryEdit.publish` verifies with)."""
        from tinymlops.bundle.workspace_keys import release_key_path, release_public_key
        from tinymlops.crypto.keys import load_public_key

        pub = release_key_path(self.workspace_root).with_name("release.ed25519.pub")
        if pub.is_file():
            return load_public_key(pub)
        return release_public_key(self.workspace_root, create=False)

    @staticmethod
    def _sign(md: Metadata[Any], signers: Iterable[Signer]) -> None:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)

    def _write(self, md: Metadata[Any], name: str) -> bytes:
        data = md.to_bytes()
        try:
            write_file_atomic(self.metadata_dir / name, data)
        except OSError as exc:
            raise StoreError(f"{self.metadata_dir / name}: cannot write metadata: {exc.strerror or exc}") from exc
        return data

    @staticmethod
    def _snapshot_meta(version: int, data: bytes) -> MetaFile:
        return MetaFile(version, len(data), {HASH_ALGORITHM: hashlib.sha256(data).hexdigest()})

    def _read(self, name: str) -> bytes:
        path = self.metadata_dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path}: metadata file is missing (the repository is damaged)") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read metadata: {exc.strerror or exc}") from exc

    def _load(self, name: str, cls: type[_S]) -> Metadata[_S]:
        try:
            md: Metadata[_S] = Metadata.from_bytes(self._read(name))
        except DeserializationError as exc:
            raise StoreError(f"{self.metadata_dir / name}: unreadable metadata: {exc}") from exc
        if not isinstance(md.signed, cls):
            raise StoreError(f"{self.metadata_dir / name}: holds {md.signed.type} metadata, expected {cls.type}")
        return md

    def _root_versions(self) -> list[int]:
        try:
            names = os.listdir(self.metadata_dir)
        except OSError as exc:
            raise StoreError(f"{self.metadata_dir}: cannot list metadata: {exc.strerror or exc}") from exc
        return sorted(int(m.group(1)) for n in names if (m := _ROOT_FILE.match(n)))

    def _state(self) -> _State:
        roots = self._root_versions()
        if not roots:
            raise StoreError(f"{self.metadata_dir}: no root metadata")
        root = self._load(f"{roots[-1]}.root.json", Root)
        timestamp = self._load("timestamp.json", Timestamp)
        snapshot = self._load(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise StoreError("snapshot metadata does not list targets.json")
        targets = self._load(f"{targets_meta.version}.targets.json", Targets)
        return _State(root, timestamp, snapshot, targets)

    def _load_bin(self, state: _State, name: str) -> Metadata[Targets]:
        meta = state.snapshot.signed.meta.get(f"{name}.json")
        if meta is None:
            raise StoreError(f"snapshot metadata does not list {name}.json")
        return self._load(f"{meta.version}.{name}.json", Targets)

    def _all_bins(self, state: _State) -> dict[str, Metadata[Targets]]:
        return {name: self._load_bin(state, name) for name in state.succinct.get_roles()}

    def _signers(self, root: Root, role: str, given: Ed25519PrivateKey | None = None) -> list[CryptoSigner]:
        return [self.keys.signer(role, root.keys[kid], given) for kid in root.roles[role].keyids]

    def _bin_signers(self, state: _State) -> list[CryptoSigner]:
        delegations = state.targets.signed.delegations
        assert delegations is not None
        return [self.keys.signer("targets", delegations.keys[kid]) for kid in state.succinct.keyids]

    def _resolve_root_key(self, state: _State, root_key: RootKey | None) -> list[CryptoSigner]:
        given = load_signing_key(root_key) if isinstance(root_key, str | Path) else root_key
        return self._signers(state.root.signed, "root", given)

    def _commit(
        self,
        state: _State,
        bins: dict[str, Metadata[Targets]],
        *,
        targets: Metadata[Targets] | None = None,
        new_snapshot: bool = True,
        target_dirs: Iterable[Path] = (),
        targets_signers: list[CryptoSigner] | None = None,
        bin_signers: list[CryptoSigner] | None = None,
        snapshot_signers: list[CryptoSigner] | None = None,
        timestamp_signers: list[CryptoSigner] | None = None,
    ) -> tuple[int, int]:
        """Write changed bins/targets, then a snapshot, then the timestamp (the commit point)."""
        now = self._now()
        exp = self.expiry
        root = state.root.signed
        for d in target_dirs:
            _fsync_dir(d)
        snap = state.snapshot.signed
        meta = dict(snap.meta)
        if bins:
            signers = bin_signers if bin_signers is not None else self._bin_signers(state)
            for name in sorted(bins):
                md = bins[name]
                md.signed.version = meta[f"{name}.json"].version + 1
                md.signed.expires = now + exp.targets
                self._sign(md, signers)
                meta[f"{name}.json"] = MetaFile(
                    md.signed.version, len(self._write(md, f"{md.signed.version}.{name}.json"))
                )
        if targets is not None:
            targets.signed.version = meta["targets.json"].version + 1
            targets.signed.expires = now + exp.targets
            self._sign(targets, targets_signers if targets_signers is not None else self._signers(root, "targets"))
            v = targets.signed.version
            meta["targets.json"] = MetaFile(v, len(self._write(targets, f"{v}.targets.json")))
        if bins or targets is not None or new_snapshot:
            snapshot_md = Metadata(Snapshot(version=snap.version + 1, expires=now + exp.snapshot, meta=meta))
            self._sign(
                snapshot_md, snapshot_signers if snapshot_signers is not None else self._signers(root, "snapshot")
            )
            snapshot_version = snapshot_md.signed.version
            snapshot_bytes = self._write(snapshot_md, f"{snapshot_version}.snapshot.json")
            _fsync_dir(self.metadata_dir)
        else:
            snapshot_version = snap.version
            snapshot_bytes = self._read(f"{snapshot_version}.snapshot.json")
        ts_md = Metadata(
            Timestamp(
                version=state.timestamp.signed.version + 1,
                expires=now + exp.timestamp,
                snapshot_meta=self._snapshot_meta(snapshot_version, snapshot_bytes),
            )
        )
        signers = timestamp_signers if timestamp_signers is not None else self._signers(root, "timestamp")
        self._sign(ts_md, signers)
        self._write(ts_md, "timestamp.json")
        _fsync_dir(self.metadata_dir)
        return ts_md.signed.version, snapshot_version

    # -- publishing --
    @contextlib.contextmanager
    def edit(self) -> Iterator[RepositoryEdit]:
        """Gather publish/unpublish calls and commit them as one release (one snapshot)."""
        with self._locked():
            edit = RepositoryEdit(self, self._state())
            yield edit
            if edit.changed:
                self._commit(edit._state, edit.bins, target_dirs=edit.target_dirs)

    def publish(
        self,
        bundle: bytes | Path | str,
        *,
        device: str | None = None,
        cohort: str | None = None,
        urgent: bool = False,
        release_id: str | None = None,
        trusted_release_keys: Iterable[TrustedKey] | None = None,
    ) -> PublishedTarget:
        """Verify ``bundle`` and publish it at ``devices/<device>/…`` or ``cohorts/<cohort>/…``."""
        with self.edit() as edit:
            return edit.publish(
                bundle,
                device=device,
                cohort=cohort,
                urgent=urgent,
                release_id=release_id,
                trusted_release_keys=trusted_release_keys,
            )

    def unpublish(self, target_path: str | TargetPath) -> PublishedTarget:
        with self.edit() as edit:
            return edit.unpublish(target_path)

    # -- reading --
    def root_bytes(self) -> bytes:
        """The current root metadata, exactly as served: what a device is given at enrolment."""
        roots = self._root_versions()
        if not roots:
            raise StoreError(f"{self.metadata_dir}: no root metadata")
        return self._read(f"{roots[-1]}.root.json")

    def get(self, target_path: str | TargetPath) -> PublishedTarget | None:
        tp = target_path if isinstance(target_path, TargetPath) else TargetPath.parse(target_path)
        state = self._state()
        name = state.succinct.get_role_for_target(tp.path)
        target = self._load_bin(state, name).signed.targets.get(tp.path)
        return None if target is None else PublishedTarget.from_target_file(target, name)

    def targets(self) -> list[PublishedTarget]:
        """Every published target, sorted by path."""
        state = self._state()
        out = [
            PublishedTarget.from_target_file(t, name)
            for name, md in self._all_bins(state).items()
            for t in md.signed.targets.values()
        ]
        return sorted(out, key=lambda p: p.path)

    def status(self) -> RepositoryStatus:
        state = self._state()
        now = self._now()
        exp = self.expiry
        roles: list[RoleStatus] = []
        warnings: list[str] = []
        mds: dict[str, Metadata[Any]] = {
            "root": state.root,
            "targets": state.targets,
            "snapshot": state.snapshot,
            "timestamp": state.timestamp,
        }
        for role in ROLES:
            publics = [raw_public(state.root.signed.keys[k]) for k in state.root.signed.roles[role].keyids]
            md = mds[role]
            roles.append(
                RoleStatus(
                    role,
                    md.signed.version,
                    md.signed.expires,
                    tuple(key_id(p) for p in publics),
                    tuple(self.keys.has(role, p) for p in publics),
                )
            )
            if md.signed.expires <= now:
                warnings.append(f"{role} metadata expired at {md.signed.expires.isoformat()}: devices refuse updates")
            elif md.signed.expires - now < exp.period(role) / 2:
                warnings.append(
                    f"{role} metadata expires at {md.signed.expires.isoformat()}: run `tinymlops repo refresh`"
                )
        if not all(roles[0].keys_here):
            warnings.append(
                "the root key is offline (not in the workspace): needed only to rotate keys or renew the root"
            )
        bins = self._all_bins(state)
        earliest = min(md.signed.expires for md in bins.values())
        if earliest <= now:
            warnings.append(f"a hash bin expired at {earliest.isoformat()}: run `tinymlops repo refresh`")
        return RepositoryStatus(
            directory=self.dir,
            now=now,
            roles=tuple(roles),
            bins=len(bins),
            bins_version_max=max(md.signed.version for md in bins.values()),
            bins_earliest_expiry=earliest,
            targets=sum(len(md.signed.targets) for md in bins.values()),
            warnings=tuple(warnings),
        )

    # -- upkeep --
    def refresh(self, *, force_snapshot: bool = False) -> RefreshResult:
        """Sign a new timestamp; re-sign whatever has less than half its validity left.

        Run it well within the timestamp's expiry (e.g. hourly for the default day): a device
        refuses an expired timestamp (a freeze attack looks exactly like a repository nobody
        refreshes). The root is renewed only when its key is in the workspace; otherwise a
        warning says it is due."""
        with self._locked():
            state = self._state()
            now = self._now()
            exp = self.expiry
            half = {role: exp.period(role) / 2 for role in ROLES}
            renewed: list[str] = []
            warnings: list[str] = []
            root = state.root.signed
            if root.expires - now < half["root"]:
                publics = [raw_public(root.keys[k]) for k in root.roles["root"].keyids]
                if all(self.keys.has("root", p) for p in publics):
                    self._renew_root(state, self._resolve_root_key(state, None))
                    renewed.append("root")
                else:
                    warnings.append(
                        f"root metadata expires at {root.expires.isoformat()} and its key is offline: "
                        "run `tinymlops repo renew-root --root-key FILE`"
                    )
            bins = {n: md for n, md in self._all_bins(state).items() if md.signed.expires - now < half["targets"]}
            renewed += sorted(bins)
            targets = None
            if state.targets.signed.expires - now < half["targets"]:
                targets = copy.deepcopy(state.targets)
                renewed.append("targets")
            new_snapshot = force_snapshot or bool(bins) or targets is not None
            if state.snapshot.signed.expires - now < half["snapshot"]:
                new_snapshot = True
            if new_snapshot:
                renewed.append("snapshot")
            renewed.append("timestamp")
            ts_version, snap_version = self._commit(state, bins, targets=targets, new_snapshot=new_snapshot)
        return RefreshResult(ts_version, snap_version, tuple(renewed), tuple(warnings))

    def _renew_root(self, state: _State, root_signers: list[CryptoSigner], new_root: Root | None = None) -> int:
        """Write root version N+1 (same keys unless ``new_root`` says otherwise); never overwrite one."""
        root = new_root or copy.deepcopy(state.root.signed)
        root.version = max(self._root_versions()) + 1
        root.expires = self._now() + self.expiry.root
        md = Metadata(root)
        self._sign(md, root_signers)
        name = f"{root.version}.root.json"
        if (self.metadata_dir / name).exists():
            raise StoreError(f"{self.metadata_dir / name} already exists; refusing to overwrite a root")
        self._write(md, name)
        _fsync_dir(self.metadata_dir)
        state.root = md
        return root.version

    def renew_root(self, *, root_key: RootKey | None = None) -> int:
        """Sign a new root version with the same keys and a fresh expiry (needs the root key)."""
        with self._locked():
            state = self._state()
            return self._renew_root(state, self._resolve_root_key(state, root_key))

    def rotate_key(self, role: str, *, root_key: RootKey | None = None) -> str:
        """Replace ``role``'s key with a new one (needs the root key); returns the new key id.

        For an online role the affected metadata is first re-signed with the old and the new key
        and committed, then the new root is written, then the old key file is deleted, so every
        moment of the rotation verifies under the old root and under the new one. A device whose
        trusted timestamp was signed by a compromised timestamp key drops it once it loads the new
        root (its signature no longer verifies) and follows the repository again."""
        if role not in ROLES:
            raise UsageError(f"unknown TUF role {role!r}; roles are {', '.join(ROLES)}")
        with self._locked():
            state = self._state()
            root_signers = self._resolve_root_key(state, root_key)
            old_root = state.root.signed
            old_publics = [raw_public(old_root.keys[k]) for k in old_root.roles[role].keyids]
            new_key = self.keys.generate(role)
            new_tuf = tuf_key(new_key)
            new_signer = CryptoSigner(new_key, new_tuf)
            new_root = copy.deepcopy(old_root)
            for kid in list(new_root.roles[role].keyids):
                new_root.revoke_key(kid, role)
            new_root.add_key(new_tuf, role)

            if role == "root":
                self._renew_root(state, [*root_signers, new_signer], new_root)
            else:
                both = [*self._signers(old_root, role), new_signer]
                if role == "timestamp":
                    self._commit(state, {}, new_snapshot=False, timestamp_signers=both)
                elif role == "snapshot":
                    self._commit(state, {}, new_snapshot=True, snapshot_signers=both)
                else:  # targets: the bins are delegated to the targets key, so they move with it
                    targets = copy.deepcopy(state.targets)
                    delegations = targets.signed.delegations
                    assert delegations is not None and delegations.succinct_roles is not None
                    delegations.keys = {new_tuf.keyid: new_tuf}
                    delegations.succinct_roles.keyids = [new_tuf.keyid]
                    self._commit(
                        state,
                        self._all_bins(state),
                        targets=targets,
                        targets_signers=both,
                        bin_signers=[new_signer],
                    )
                self._renew_root(state, root_signers, new_root)
            for pub in old_publics:
                if pub != public_bytes(new_key):
                    self.keys.remove(role, pub)
        return key_id(new_key)

    def export_root_key(self, dest: Path | str) -> list[Path]:
        """Move the root key out of the workspace (to a file, or into a directory)."""
        with self._locked():
            root = self._state().root.signed
            publics = [raw_public(root.keys[k]) for k in root.roles["root"].keyids]
            missing = [p for p in publics if not self.keys.has("root", p)]
            if missing:
                raise UsageError(
                    f"the root key {key_id(missing[0])} is not in {self.keys.directory} (already offline?)",
                    role="root",
                )
            return [self.keys.export_key("root", p, dest) for p in publics]

    def import_root_key(self, source: Path | str) -> Path:
        """Bring the (offline) root key back into the workspace; it must be the current root key."""
        with self._locked():
            root = self._state().root.signed
            publics = [raw_public(root.keys[k]) for k in root.roles["root"].keyids]
            return self.keys.import_key("root", source, publics)

    def prune(self, *, keep: int = 3) -> PruneResult:
        """Delete metadata versions and target files not referenced by the last ``keep`` snapshots.

        Root versions are never deleted (a device may still walk them). ``keep`` ≥ 2 leaves a
        device that fetched the previous timestamp time to fetch the snapshot it names."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise UsageError(f"keep must be an integer >= 1, got {keep!r}")
        with self._locked():
            state = self._state()
            current = state.snapshot.signed.version
            keep_meta = {"timestamp.json"}
            keep_targets: set[str] = set()
            loaded: set[str] = set()
            for v in range(current, max(0, current - keep), -1):
                name = f"{v}.snapshot.json"
                if not (self.metadata_dir / name).is_file():
                    continue
                keep_meta.add(name)
                snap = self._load(name, Snapshot).signed
                for role_file, mf in snap.meta.items():
                    file = f"{mf.version}.{role_file}"
                    keep_meta.add(file)
                    if file in loaded or not (self.metadata_dir / file).is_file():
                        continue
                    loaded.add(file)
                    for t in self._load(file, Targets).signed.targets.values():
                        keep_targets.update(t.get_prefixed_paths())
            removed_meta = removed_targets = removed_temp = 0
            for p in self.metadata_dir.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    removed_temp += 1
                elif _VERSIONED_FILE.match(p.name) and not _ROOT_FILE.match(p.name) and p.name not in keep_meta:
                    p.unlink(missing_ok=True)
                    removed_meta += 1
            for p in sorted(self.targets_dir.rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(self.targets_dir).as_posix()
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    removed_temp += 1
                elif rel not in keep_targets:
                    p.unlink(missing_ok=True)
                    removed_targets += 1
        return PruneResult(removed_meta, removed_targets, removed_temp)

    # -- serving --
    def resolve(self, relative: str) -> Path:
        """The file to serve for ``metadata/<name>`` or ``targets/<path>`` (as in the URL).

        Refuses anything that could step outside the repository (``..``, absolute paths,
        backslashes, hidden or odd names, symlinks out) with :class:`InvalidInputError`, and a
        well-formed name that is not there with :class:`NotFoundError` (an HTTP 404)."""
        if not isinstance(relative, str) or not relative or len(relative) > 1024:
            raise InvalidInputError("unsafe repository path: empty, too long or not a string")
        if "\\" in relative or "\x00" in relative or relative.startswith("/"):
            raise InvalidInputError(f"unsafe repository path {relative!r}")
        kind, _, rest = relative.partition("/")
        if kind == METADATA_DIR:
            if not _METADATA_NAME.match(rest):
                if "/" in rest or ".." in rest or not rest:
                    raise InvalidInputError(f"unsafe repository path {relative!r}")
                raise NotFoundError(f"no metadata file {rest!r} in the update repository")
            base = self.metadata_dir
        elif kind == TARGETS_DIR:
            parts = rest.split("/")
            if not rest or not all(_SEGMENT.match(p) for p in parts):
                raise InvalidInputError(f"unsafe repository path {relative!r}")
            base = self.targets_dir
        else:
            raise NotFoundError(f"no {relative!r} in the update repository (only metadata/ and targets/)")
        path = base / rest
        try:
            real = path.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"no {relative!r} in the update repository") from None
        except OSError as exc:
            raise NotFoundError(f"{relative!r} cannot be read: {exc.strerror or exc}") from exc
        if not real.is_relative_to(base.resolve()):
            raise InvalidInputError(f"unsafe repository path {relative!r} (leads outside the repository)")
        if not real.is_file():
            raise NotFoundError(f"no file {relative!r} in the update repository")
        return real


__all__ = [
    "BINS_PREFIX",
    "DEFAULT_BIN_BITS",
    "ExpiryPolicy",
    "PruneResult",
    "PublishedTarget",
    "RefreshResult",
    "RepositoryEdit",
    "RepositoryStatus",
    "RoleStatus",
    "UpdateRepository",
]

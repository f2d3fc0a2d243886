"""The agent's files in a device data directory, around the pure slot state machine.

Layout of ``data_dir``::

    state.json            the SlotState (JSON), replaced atomically on every transition
    lock                  held (flock) while an agent runs on this directory
    slots/a/bundle.tmlb   the bundle in slot a, exactly as signed and encrypted by the release
    slots/b/bundle.tmlb   (bundles stay encrypted at rest; Runtime.open decrypts in memory)
    incoming/             downloads in progress

Every write is durable and atomic: a temp file in the same directory, written, ``fsync``-ed,
``os.replace``-d over the target, then the directory ``fsync``-ed so the rename itself survives a
power cut. (``crypto.keys.write_file_atomic`` fsyncs the file but not the directory, so this
module has its own :func:`write_durably`.) The switch from one slot to the other is exactly one
such replace of ``state.json``: before it the old slot is active, after it the new one.

:meth:`SlotStore.recover` runs when an agent starts, and never raises on bad data:

1. partial downloads (``incoming/``) and temp files are deleted;
2. ``state.json`` is parsed strictly. If it is missing, truncated, corrupt or inconsistent, it is
   kept aside as ``state.json.corrupt`` and the state is rebuilt by *scanning* the slots: each
   slot file is verified and smoke-tested again (:meth:`SlotVerifier.qualify`) and the newest
   (manifest ``created_at``) that passes becomes active;
3. a pending install is aborted (its slot emptied; the loop downloads and installs it again);
4. every non-empty slot is re-verified (signature + hashes + the recorded file SHA-256); a slot
   that fails — tampered or corrupted while the agent was down — is invalidated, and an active
   slot falls back to the other one when that one verifies;
5. files no state refers to are removed, and the repaired state is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from tinymlops.edge.agent.crashpoints import crash_point
from tinymlops.edge.agent.slots import SLOT_NAMES, BundleInfo, Phase, SlotEntry, SlotState
from tinymlops.errors import AgentStateError, OperationError, UsageError

STATE_FILE = "state.json"
CORRUPT_SUFFIX = ".corrupt"
LOCK_FILE = "lock"
SLOTS_DIR = "slots"
INCOMING_DIR = "incoming"
BUNDLE_FILE = "bundle.tmlb"
#: a state file is a few hundred bytes; anything far larger is corrupt
MAX_STATE_BYTES = 1 << 20
COPY_CHUNK = 64 * 1024


# --- durable file writes -------------------------------------------------------------------
def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_in(directory: Path, name: str) -> tuple[IO[bytes], Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    return os.fdopen(fd, "wb"), Path(tmp)


def write_durably(path: Path, data: bytes, *, before_replace: Callable[[], None] | None = None) -> None:
    """Temp file + fsync + ``os.replace`` + fsync of the directory. ``before_replace`` runs when the
    temp file is complete on disk and the target not yet replaced (a crash point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh, tmp = _temp_in(path.parent, path.name)
    try:
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_durably(src: Path, dest: Path, *, chunk: int = COPY_CHUNK, crash_at: str | None = None) -> str:
    """Copy ``src`` to ``dest`` through a temp file (fsync, replace, fsync dir); returns the SHA-256
    of the bytes written. ``crash_at`` names the crash point hit after the first chunk."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fh, tmp = _temp_in(dest.parent, dest.name)
    try:
        with fh, open(src, "rb") as source:
            first = True
            while block := source.read(chunk):
                fh.write(block)
                digest.update(block)
                if first and crash_at is not None:
                    fh.flush()
                    crash_point(crash_at)
                first = False
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return digest.hexdigest()


# --- what recovery needs from the installer ------------------------------------------------
class SlotVerifier(Protocol):
    """Checks a slot's bytes. Both raise (any exception) when the bundle is not acceptable."""

    def verify(self, data: bytes) -> BundleInfo:
        """Signature, manifest and member hashes (no decryption)."""
        ...

    def qualify(self, data: bytes) -> BundleInfo:
        """Everything :meth:`verify` checks, then open it in the runtime and pass the smoke test."""
        ...


@dataclass
class Recovery:
    """What :meth:`SlotStore.recover` found and did (``actions`` in order, human-readable)."""

    state: SlotState
    state_file: str  # "ok" | "missing" | "corrupt"
    actions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        active = self.state.active_bundle
        return {
            "event": "recovered",
            "state_file": self.state_file,
            "active": self.state.active,
            "bundle_id": None if active is None else active.bundle_id,
            "actions": list(self.actions),
        }


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"


# --- the store -----------------------------------------------------------------------------
class SlotStore:
    """The files of one device's agent. ``state`` is the last state written (or recovered)."""

    def __init__(self, data_dir: Path | str, *, copy_chunk: int = COPY_CHUNK) -> None:
        if isinstance(copy_chunk, bool) or not isinstance(copy_chunk, int) or copy_chunk < 1:
            raise UsageError(f"copy_chunk must be a positive number of bytes, got {copy_chunk!r}")
        self.root = Path(data_dir)
        self.copy_chunk = copy_chunk
        self.state = SlotState.initial()
        #: True once :meth:`recover` has run: ``state`` is then what is on disk, and verified
        self.recovered = False
        self._lock_fh: IO[bytes] | None = None

    # paths
    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @property
    def incoming_dir(self) -> Path:
        return self.root / INCOMING_DIR

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise UsageError(f"no slot named {slot!r} (slots: {', '.join(SLOT_NAMES)})")
        return self.root / SLOTS_DIR / slot

    def slot_path(self, slot: str) -> Path:
        return self.slot_dir(slot) / BUNDLE_FILE

    # the data directory
    def open(self) -> None:
        """Create the layout and take the directory's lock (one agent per data directory)."""
        try:
            for d in (self.root, self.incoming_dir, *(self.slot_dir(s) for s in SLOT_NAMES)):
                d.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / LOCK_FILE, "ab")  # noqa: SIM115 - held open for the agent's life
        except OSError as exc:
            raise UsageError(f"{self.root}: cannot use as the agent's data directory: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise UsageError(f"{self.root}: another agent is already running on this data directory") from None
        self._lock_fh = fh

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()  # closing releases the flock
            self._lock_fh = None
        self.recovered = False

    # state
    def read_state(self) -> SlotState:
        """Parse ``state.json`` strictly; :class:`AgentStateError` when it is missing or bad."""
        path = self.state_path
        try:
            size = path.stat().st_size
            if size > MAX_STATE_BYTES:
                raise AgentStateError(f"{path}: {size} bytes is far too large for a state file")
            raw = path.read_bytes()
        except FileNotFoundError:
            raise AgentStateError(f"{path}: no state file") from None
        except OSError as exc:
            raise AgentStateError(f"{path}: cannot read the state file: {exc.strerror or exc}") from exc
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise AgentStateError(f"{path}: not valid JSON (truncated or corrupt, {len(raw)} bytes)") from None
        return SlotState.from_dict(doc)

    def apply(self, state: SlotState, *, crash_at: str | None = None) -> SlotState:
        """Write ``state`` durably and make it current. ``crash_at`` names the crash point between
        the fsync of the new file and the replace (used for the switch)."""
        state.check()
        data = json.dumps(state.to_dict(), sort_keys=True, indent=1).encode("utf-8") + b"\n"
        hook = None if crash_at is None else (lambda: crash_point(crash_at))
        try:
            write_durably(self.state_path, data, before_replace=hook)
        except OSError as exc:
            raise OperationError(f"{self.state_path}: cannot write the agent state: {exc.strerror or exc}") from exc
        self.state = state
        return state

    # slots
    def copy_into_slot(self, src: Path, slot: str) -> str:
        """Copy a bundle file into ``slot`` (durably); returns the SHA-256 of what was written."""
        try:
            return copy_durably(src, self.slot_path(slot), chunk=self.copy_chunk, crash_at="stage-copy")
        except OSError as exc:
            raise OperationError(f"cannot copy {src} into slot {slot}: {exc.strerror or exc}") from exc

    def read_slot(self, slot: str) -> bytes:
        path = self.slot_path(slot)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise AgentStateError(f"slot {slot}: the bundle file {path} is missing") from None
        except OSError as exc:
            raise AgentStateError(f"slot {slot}: cannot read {path}: {exc.strerror or exc}") from exc

    def clear_slot(self, slot: str) -> None:
        """Remove everything in a slot's directory."""
        d = self.slot_dir(slot)
        if not d.exists():
            return
        for p in d.iterdir():
            _remove(p)
        fsync_dir(d)

    def clear_incoming(self) -> int:
        """Delete every (partial) download; returns how many entries were removed."""
        d = self.incoming_dir
        if not d.exists():
            return 0
        n = 0
        for p in d.iterdir():
            _remove(p)
            n += 1
        return n

    # --- recovery ------------------------------------------------------------------------
    def recover(self, verifier: SlotVerifier) -> Recovery:
        """Bring the directory to a consistent, verified state (see the module docstring)."""
        if self._lock_fh is None:
            self.open()
        actions: list[str] = []
        n = self.clear_incoming()
        if n:
            actions.append(f"discarded {n} leftover download(s)")
        n = self._remove_temp_files()
        if n:
            actions.append(f"removed {n} temp file(s) left by an interrupted write")

        state_file = "ok"
        try:
            state = self.read_state()
        except AgentStateError as exc:
            fresh = not self.state_path.exists() and not any(self.slot_path(s).exists() for s in SLOT_NAMES)
            if fresh:
                state, state_file = SlotState.initial(), "missing"
            else:
                state_file = "missing" if not self.state_path.exists() else "corrupt"
                actions.append(f"state file unusable ({exc.message}); rebuilding it from the slots")
                if state_file == "corrupt":
                    with contextlib.suppress(OSError):
                        os.replace(self.state_path, self.state_path.with_name(STATE_FILE + CORRUPT_SUFFIX))
                state = self._scan(verifier, actions)

        if state.pending is not None:
            bundle = state.pending_bundle
            actions.append(
                f"aborted the interrupted install of bundle {bundle.bundle_id if bundle else '?'} "
                f"into slot {state.pending}"
            )
            self.clear_slot(state.pending)
            state = state.abort()

        for slot in SLOT_NAMES:
            entry = state.slots[slot]
            if entry is None:
                continue
            problem = self._reverify(verifier, slot, entry)
            if problem is None:
                continue
            was_active = state.active == slot
            state = state.invalidate(slot)
            self.clear_slot(slot)
            note = f"slot {slot} (bundle {entry.bundle.bundle_id}) failed re-verification: {problem}"
            if was_active:
                note += f"; active slot is now {state.active or 'none'}"
            actions.append(note)

        for slot in SLOT_NAMES:  # files no state refers to
            if state.slots[slot] is None and any(self.slot_dir(slot).iterdir()):
                self.clear_slot(slot)
                actions.append(f"removed unreferenced files from slot {slot}")

        self.apply(state)
        self.recovered = True
        return Recovery(state, state_file, actions)

    def _remove_temp_files(self) -> int:
        n = 0
        candidates = list(self.root.glob(f".{STATE_FILE}.*.tmp"))
        for slot in SLOT_NAMES:
            candidates += [p for p in self.slot_dir(slot).iterdir() if p.name != BUNDLE_FILE]
        for p in candidates:
            _remove(p)
            n += 1
        return n

    def _reverify(self, verifier: SlotVerifier, slot: str, entry: SlotEntry) -> str | None:
        try:
            info = verifier.verify(self.read_slot(slot))
        except Exception as exc:  # any failure means: do not trust this slot
            return _describe(exc)
        if info.sha256 != entry.bundle.sha256 or info.bundle_id != entry.bundle.bundle_id:
            return (
                f"the file now holds bundle {info.bundle_id} (sha256 {info.sha256[:12]}…), "
                f"not the recorded {entry.bundle.bundle_id} (sha256 {entry.bundle.sha256[:12]}…)"
            )
        return None

    def _scan(self, verifier: SlotVerifier, actions: list[str]) -> SlotState:
        found: dict[str, BundleInfo] = {}
        for slot in SLOT_NAMES:
            if not self.slot_path(slot).exists():
                continue
            try:
                info = verifier.qualify(self.read_slot(slot))
            except Exception as exc:  # a slot that does not qualify is emptied
                actions.append(f"slot {slot} does not qualify ({_describe(exc)}); emptied it")
                self.clear_slot(slot)
                continue
            if any(other.sha256 == info.sha256 for other in found.values()):
                actions.append(f"slot {slot} duplicates the other slot's bundle; emptied it")
                self.clear_slot(slot)
                continue
            found[slot] = info
        slots: dict[str, SlotEntry | None] = {s: None for s in SLOT_NAMES}
        for slot, info in found.items():
            slots[slot] = SlotEntry(info, Phase.READY)
        # newest bundle (manifest created_at, ISO 8601 UTC) first; slot a on a tie
        active = max(found, key=lambda s: (found[s].created_at, s == "a"), default=None)
        if active is not None:
            actions.append(f"slot {active} (bundle {found[active].bundle_id}) qualifies and is the newest: active")
        state = SlotState(slots=slots, active=active, generation=1)
        state.check()
        return state


__all__ = [
    "BUNDLE_FILE",
    "INCOMING_DIR",
    "SLOTS_DIR",
    "STATE_FILE",
    "Recovery",
    "SlotStore",
    "SlotVerifier",
    "copy_durably",
    "fsync_dir",
    "write_durably",
]

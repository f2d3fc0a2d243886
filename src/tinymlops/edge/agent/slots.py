"""The A/B slot switch as a pure state machine: no I/O, no clock, no randomness.

Like python-tuf's ``TrustedMetadataSet``, this module only decides what is legal; the agent's
:mod:`~tinymlops.edge.agent.store` does the file work around it and writes every new state
atomically. A :class:`SlotState` is immutable; each transition returns a new one (with
``generation`` one higher) or raises :class:`~tinymlops.errors.SlotTransitionError` naming why
the transition is illegal now.

Two slots, ``a`` and ``b``. Each is empty or holds one bundle (:class:`SlotEntry`) in a phase:

``staged``   the bundle file is (being) copied into the slot;
``verified`` the slot's copy passed signature and hash checks;
``ready``    it also opened in the runtime and passed the manifest's smoke test.

An install walks the *inactive* slot (the one ``active`` does not point to) through them::

    stage(info) ─► mark_verified(id) ─► mark_smoke_tested(id) ─► commit(id)   (active := that slot)
          │               │                     │
          └───────────────┴─────────────────────┴─► fail(id)  (slot emptied, bundle refused,
                                                               active unchanged)
                                                     abort()   (a crash lost the work: slot
                                                               emptied, bundle not blamed)

After a commit the previously active slot keeps its ``ready`` bundle: the fallback.

* ``rollback()`` — the committed bundle turned out unhealthy (or the server rolled its release
  back): active := the other slot, which must hold a ``ready`` bundle.
* ``invalidate(slot)`` — a slot's bytes no longer verify (tampered or corrupted on disk while
  the agent was down): the slot is emptied; if it was active, active falls back to the other
  slot when that one is ``ready``, else to none.

Invariants (checked by :meth:`SlotState.check` and by the hypothesis state machine in the tests):
the active slot, if any, holds a ``ready`` bundle and is never the pending slot; only the pending
slot may hold a bundle that is not ``ready``; a failed or aborted install never moves ``active``.

Refused bundles (failed smoke test, rolled back as unhealthy) are remembered by the SHA-256 of
their file (the last :data:`MAX_REFUSED`), so the agent does not download and try them again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tinymlops.errors import AgentStateError, SlotTransitionError

STATE_SPEC_MAJOR = 1
STATE_SPEC_VERSION = "1.0"
SLOT_NAMES = ("a", "b")
#: how many refused bundle hashes are remembered (oldest forgotten first)
MAX_REFUSED = 64

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_TEXT = 512


class Phase(StrEnum):
    STAGED = "staged"
    VERIFIED = "verified"
    READY = "ready"


@dataclass(frozen=True)
class BundleInfo:
    """What the agent records about one bundle (taken from its verified manifest and its file)."""

    bundle_id: str
    sha256: str
    size: int
    ref: str = ""
    created_at: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_id, str) or not _HEX32.match(self.bundle_id):
            raise AgentStateError(f"bundle info: bundle_id must be 32 lowercase hex digits, got {self.bundle_id!r}")
        if not isinstance(self.sha256, str) or not _HEX64.match(self.sha256):
            raise AgentStateError(f"bundle info: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise AgentStateError(f"bundle info: size must be a non-negative integer, got {self.size!r}")
        for name in ("ref", "created_at"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > _MAX_TEXT:
                raise AgentStateError(f"bundle info: {name} must be a string of at most {_MAX_TEXT} characters")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "sha256": self.sha256,
            "size": self.size,
            "ref": self.ref,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class SlotEntry:
    bundle: BundleInfo
    phase: Phase

    def to_dict(self) -> dict[str, Any]:
        return {**self.bundle.to_dict(), "phase": self.phase.value}


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class SlotState:
    """One immutable state of the A/B slots. Build the first with :meth:`initial`."""

    slots: Mapping[str, SlotEntry | None] = field(default_factory=lambda: {"a": None, "b": None})
    active: str | None = None
    pending: str | None = None
    generation: int = 0
    refused: tuple[str, ...] = ()

    @classmethod
    def initial(cls) -> SlotState:
        return cls()

    # --- queries -------------------------------------------------------------------------
    @property
    def inactive(self) -> str:
        """The slot the next install goes into."""
        return "a" if self.active is None else _other(self.active)

    def entry(self, slot: str) -> SlotEntry | None:
        if slot not in SLOT_NAMES:
            raise SlotTransitionError(f"no slot named {slot!r} (slots: {', '.join(SLOT_NAMES)})")
        return self.slots[slot]

    @property
    def active_bundle(self) -> BundleInfo | None:
        if self.active is None:
            return None
        entry = self.slots[self.active]
        return None if entry is None else entry.bundle

    @property
    def pending_bundle(self) -> BundleInfo | None:
        if self.pending is None:
            return None
        entry = self.slots[self.pending]
        return None if entry is None else entry.bundle

    @property
    def fallback(self) -> str | None:
        """The slot a rollback would switch to: the other slot, when it holds a ready bundle that
        was not refused and no install is using it."""
        if self.active is None:
            return None
        other = _other(self.active)
        entry = self.slots[other]
        if entry is None or entry.phase is not Phase.READY or self.pending == other:
            return None
        if self.is_refused(entry.bundle.sha256):  # rolled back from as unhealthy: never back to it
            return None
        return other

    def is_refused(self, sha256: str) -> bool:
        return sha256 in self.refused

    # --- transitions ---------------------------------------------------------------------
    def _next(self, **changes: Any) -> SlotState:
        new = replace(self, generation=self.generation + 1, **changes)
        new.check()
        return new

    def _with_slot(self, slot: str, entry: SlotEntry | None) -> dict[str, SlotEntry | None]:
        slots = dict(self.slots)
        slots[slot] = entry
        return slots

    def _pending_entry(self, bundle_id: str, action: str) -> tuple[str, SlotEntry]:
        if self.pending is None:
            raise SlotTransitionError(f"cannot {action}: no install is pending")
        entry = self.slots[self.pending]
        assert entry is not None  # invariant: the pending slot holds the bundle being installed
        if entry.bundle.bundle_id != bundle_id:
            raise SlotTransitionError(
                f"cannot {action} bundle {bundle_id}: the pending install in slot {self.pending} is "
                f"bundle {entry.bundle.bundle_id}"
            )
        return self.pending, entry

    def _refuse(self, sha256: str) -> tuple[str, ...]:
        kept = (*(s for s in self.refused if s != sha256), sha256)
        return kept[-MAX_REFUSED:]

    def stage(self, bundle: BundleInfo) -> SlotState:
        """Begin installing ``bundle`` into the inactive slot (whatever it held is given up)."""
        if not isinstance(bundle, BundleInfo):
            raise SlotTransitionError(f"stage needs a BundleInfo, got {type(bundle).__name__}")
        if self.pending is not None:
            pending = self.pending_bundle
            raise SlotTransitionError(
                f"cannot stage bundle {bundle.bundle_id}: an install of bundle "
                f"{pending.bundle_id if pending else '?'} into slot {self.pending} is still pending"
            )
        active = self.active_bundle
        if active is not None and active.sha256 == bundle.sha256:
            raise SlotTransitionError(
                f"cannot stage bundle {bundle.bundle_id}: it is already the active bundle (slot {self.active})"
            )
        if self.is_refused(bundle.sha256):
            raise SlotTransitionError(
                f"cannot stage bundle {bundle.bundle_id}: it was refused before (failed its smoke test or "
                "was rolled back as unhealthy)"
            )
        slot = self.inactive
        return self._next(slots=self._with_slot(slot, SlotEntry(bundle, Phase.STAGED)), pending=slot)

    def mark_verified(self, bundle_id: str) -> SlotState:
        """The staged copy's signature and hashes checked out."""
        slot, entry = self._pending_entry(bundle_id, "mark verified")
        if entry.phase is not Phase.STAGED:
            raise SlotTransitionError(f"cannot mark bundle {bundle_id} verified: it is {entry.phase.value}, not staged")
        return self._next(slots=self._with_slot(slot, SlotEntry(entry.bundle, Phase.VERIFIED)))

    def mark_smoke_tested(self, bundle_id: str) -> SlotState:
        """The verified copy opened in the runtime and passed its smoke test."""
        slot, entry = self._pending_entry(bundle_id, "mark smoke-tested")
        if entry.phase is not Phase.VERIFIED:
            raise SlotTransitionError(
                f"cannot mark bundle {bundle_id} smoke-tested: it is {entry.phase.value}, not verified "
                "(a bundle is verified before it is smoke-tested)"
            )
        return self._next(slots=self._with_slot(slot, SlotEntry(entry.bundle, Phase.READY)))

    def commit(self, bundle_id: str) -> SlotState:
        """The switch: the pending slot becomes active; the old active slot is the fallback."""
        slot, entry = self._pending_entry(bundle_id, "commit")
        if entry.phase is not Phase.READY:
            raise SlotTransitionError(
                f"cannot commit bundle {bundle_id}: it is {entry.phase.value}; only a verified, "
                "smoke-tested bundle is committed"
            )
        return self._next(active=slot, pending=None)

    def fail(self, bundle_id: str) -> SlotState:
        """The pending install failed (verification or smoke test): empty its slot, remember the
        bundle as refused, stay on the active slot."""
        slot, entry = self._pending_entry(bundle_id, "fail")
        return self._next(slots=self._with_slot(slot, None), pending=None, refused=self._refuse(entry.bundle.sha256))

    def abort(self) -> SlotState:
        """Drop a pending install whose work was lost (the agent restarted): the bundle is not blamed."""
        if self.pending is None:
            raise SlotTransitionError("cannot abort: no install is pending")
        return self._next(slots=self._with_slot(self.pending, None), pending=None)

    def rollback(self, *, refuse: bool = True) -> SlotState:
        """Switch back to the other slot's ready bundle. ``refuse`` remembers the bundle rolled back
        from as refused (it was unhealthy); a rollback the server asked for passes False."""
        if self.pending is not None:
            raise SlotTransitionError(
                f"cannot roll back while an install into slot {self.pending} is pending (fail or abort it first)"
            )
        if self.active is None:
            raise SlotTransitionError("cannot roll back: no bundle is active")
        target = self.fallback
        if target is None:
            raise SlotTransitionError(
                f"cannot roll back from slot {self.active}: slot {_other(self.active)} holds no "
                "verified, smoke-tested bundle"
            )
        bad = self.slots[self.active]
        assert bad is not None
        refused = self._refuse(bad.bundle.sha256) if refuse else self.refused
        return self._next(active=target, refused=refused)

    def invalidate(self, slot: str) -> SlotState:
        """A slot's bytes no longer verify: empty it; an active slot falls back (or to none)."""
        entry = self.entry(slot)
        if entry is None:
            raise SlotTransitionError(f"cannot invalidate slot {slot}: it is empty")
        if self.pending == slot:
            raise SlotTransitionError(f"cannot invalidate slot {slot}: an install into it is pending (fail or abort)")
        active = self.active
        if active == slot:
            active = self.fallback
        return self._next(slots=self._with_slot(slot, None), active=active)

    # --- invariants ----------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`AgentStateError` unless every invariant holds."""
        if set(self.slots) != set(SLOT_NAMES):
            raise AgentStateError(f"slot state: slots must be exactly {', '.join(SLOT_NAMES)}")
        for name, entry in self.slots.items():
            if entry is not None and not isinstance(entry, SlotEntry):
                raise AgentStateError(f"slot state: slot {name} holds {type(entry).__name__}, not a SlotEntry")
        if self.active is not None:
            if self.active not in SLOT_NAMES:
                raise AgentStateError(f"slot state: active slot {self.active!r} does not exist")
            entry = self.slots[self.active]
            if entry is None or entry.phase is not Phase.READY:
                raise AgentStateError(
                    f"slot state: active slot {self.active} must hold a verified, smoke-tested bundle"
                )
            if entry.bundle.sha256 in self.refused:
                raise AgentStateError(f"slot state: the active bundle {entry.bundle.bundle_id} is a refused one")
        if self.pending is not None:
            if self.pending not in SLOT_NAMES:
                raise AgentStateError(f"slot state: pending slot {self.pending!r} does not exist")
            if self.pending == self.active:
                raise AgentStateError(f"slot state: slot {self.pending} is both active and pending")
            if self.slots[self.pending] is None:
                raise AgentStateError(f"slot state: pending slot {self.pending} is empty")
        for name, entry in self.slots.items():
            if entry is not None and name != self.pending and entry.phase is not Phase.READY:
                raise AgentStateError(
                    f"slot state: slot {name} is {entry.phase.value} but no install into it is pending"
                )
        a, b = self.slots["a"], self.slots["b"]
        if a is not None and b is not None and a.bundle.sha256 == b.bundle.sha256:
            raise AgentStateError("slot state: both slots hold the same bundle")
        if isinstance(self.generation, bool) or not isinstance(self.generation, int) or self.generation < 0:
            raise AgentStateError(f"slot state: generation must be a non-negative integer, got {self.generation!r}")
        if len(self.refused) > MAX_REFUSED or not all(isinstance(s, str) and _HEX64.match(s) for s in self.refused):
            raise AgentStateError(f"slot state: refused must list at most {MAX_REFUSED} SHA-256 hex digests")

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": STATE_SPEC_VERSION,
            "generation": self.generation,
            "active": self.active,
            "pending": self.pending,
            "slots": {n: (None if e is None else e.to_dict()) for n, e in sorted(self.slots.items())},
            "refused": list(self.refused),
        }

    @classmethod
    def from_dict(cls, data: Any) -> SlotState:
        """Parse strictly; anything malformed or inconsistent is an :class:`AgentStateError`."""
        doc = "agent state"
        if not isinstance(data, Mapping):
            raise AgentStateError(f"{doc}: must be an object, got {type(data).__name__}")
        _exact(doc, data, {"spec_version", "generation", "active", "pending", "slots", "refused"})
        version = data["spec_version"]
        if not isinstance(version, str) or version.partition(".")[0] != str(STATE_SPEC_MAJOR):
            raise AgentStateError(
                f"{doc}: unsupported spec_version {version!r} (this build reads {STATE_SPEC_MAJOR}.x)"
            )
        slots_doc = data["slots"]
        if not isinstance(slots_doc, Mapping):
            raise AgentStateError(f"{doc}: 'slots' must be an object")
        _exact(f"{doc} slots", slots_doc, set(SLOT_NAMES))
        slots = {name: _entry(f"{doc} slot {name}", slots_doc[name]) for name in SLOT_NAMES}
        for key in ("active", "pending"):
            value = data[key]
            if value is not None and value not in SLOT_NAMES:
                raise AgentStateError(f"{doc}: '{key}' must be null or one of {', '.join(SLOT_NAMES)}, got {value!r}")
        refused = data["refused"]
        if not isinstance(refused, list):
            raise AgentStateError(f"{doc}: 'refused' must be a list")
        state = cls(
            slots=slots,
            active=data["active"],
            pending=data["pending"],
            generation=data["generation"],
            refused=tuple(refused),
        )
        state.check()
        return state


def _exact(doc: str, data: Mapping[str, Any], fields: set[str]) -> None:
    keys = set(data)
    if keys != fields:
        missing, unknown = sorted(fields - keys), sorted(keys - fields)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
        )
        raise AgentStateError(f"{doc}: {'; '.join(parts)}")


_ENTRY_FIELDS = {"bundle_id", "sha256", "size", "ref", "created_at", "phase"}


def _entry(doc: str, data: Any) -> SlotEntry | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise AgentStateError(f"{doc}: must be null or an object")
    _exact(doc, data, _ENTRY_FIELDS)
    try:
        phase = Phase(data["phase"])
    except (ValueError, TypeError):
        raise AgentStateError(
            f"{doc}: 'phase' must be one of {', '.join(p.value for p in Phase)}, got {data['phase']!r}"
        ) from None
    info = BundleInfo(
        bundle_id=data["bundle_id"],
        sha256=data["sha256"],
        size=data["size"],
        ref=data["ref"],
        created_at=data["created_at"],
    )
    return SlotEntry(info, phase)


__all__ = [
    "MAX_REFUSED",
    "SLOT_NAMES",
    "STATE_SPEC_VERSION",
    "BundleInfo",
    "Phase",
    "SlotEntry",
    "SlotState",
]

"""Installing one bundle file into the inactive A/B slot: verify, copy, re-verify, open, smoke-test,
switch — and a :class:`InstallResult` saying what happened, why, and how long each step took.

:meth:`Installer.install` on a downloaded file:

1. **verify** the file as received: its SHA-256 against the offer's, the release signature and
   every member hash (:func:`~tinymlops.bundle.reader.verify_bundle`), that it is wrapped to this
   device's key, that it carries a smoke-test vector (unless ``require_check_vector=False``), and
   that it was not refused before. Any failure -> ``refused``; no slot or state is touched.
2. **stage**: record the install as pending in the state file, then copy the file into the
   inactive slot (temp file + fsync + replace). The bundle stays encrypted at rest.
3. **re-verify** the slot's copy (what is on disk is what will run) -> ``verified``.
4. **open** it with :meth:`Runtime.open <tinymlops.edge.runtime.Runtime.open>` (decrypts in
   memory) and run the manifest's **smoke test** (:func:`~tinymlops.bundle.reader.run_check`:
   the check vector's inputs through the main model, outputs within the stated tolerance)
   -> ``smoke-tested``. Any failure -> ``failed``: the slot is emptied, the bundle remembered as
   refused, and the active slot is untouched.
5. **switch**: one atomic replace of the state file makes the slot active -> ``installed``.

The slot's bytes are read once and the same bytes are hashed, verified and opened, so nothing
can change between the check and the use. A crash at any point is repaired by
:meth:`SlotStore.recover <tinymlops.edge.agent.store.SlotStore.recover>` on the next start.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.bundle.reader import read_source, run_check, verify_bundle
from tinymlops.crypto.keys import DeviceKeys, key_id
from tinymlops.crypto.signing import TrustedKey
from tinymlops.edge.agent.crashpoints import crash_point
from tinymlops.edge.agent.slots import BundleInfo
from tinymlops.edge.agent.store import SlotStore
from tinymlops.edge.middleware import Middleware
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import (
    IntegrityError,
    InvalidInputError,
    KeyMismatchError,
    OperationError,
    TinyMLOpsError,
    UsageError,
)

if TYPE_CHECKING:
    from tinymlops.observe.energy import EnergyMeter

#: every status an :class:`InstallResult` can report
STATUSES = ("installed", "refused", "failed", "deferred", "rolled_back", "unchanged")


@dataclass(frozen=True)
class InstallResult:
    """The outcome of one install (or rollback, or deferral), as reported to the control plane.

    ``installed``   the bundle is committed and active;
    ``refused``     it did not verify, is not for this device, or was refused before (nothing changed);
    ``failed``      it verified but did not open or failed its smoke test (active slot unchanged);
    ``deferred``    the device context does not allow the download now (e.g. large, not on Wi-Fi);
    ``rolled_back`` the agent switched back to the previous slot;
    ``unchanged``   it is already the active bundle.
    """

    status: str
    reason: str
    bundle_id: str | None = None
    sha256: str | None = None
    slot: str | None = None
    active_bundle_id: str | None = None
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    at: float = 0.0
    runtime: Runtime | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise UsageError(f"install status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status in ("installed", "unchanged", "rolled_back")

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "install",
            "status": self.status,
            "reason": self.reason,
            "bundle_id": self.bundle_id,
            "sha256": self.sha256,
            "slot": self.slot,
            "active_bundle_id": self.active_bundle_id,
            "error": self.error,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "at": self.at,
        }


def _wrapping_key(key: X25519PrivateKey | DeviceKeys) -> X25519PrivateKey:
    if isinstance(key, DeviceKeys):
        return key.wrapping
    if isinstance(key, X25519PrivateKey):
        return key
    raise UsageError(f"the installer needs the device's DeviceKeys or X25519 private key, got {type(key).__name__}")


class Installer:
    """Verifies, stages, smoke-tests and commits bundles into a :class:`SlotStore`.

    ``middleware`` is called once per runtime the installer opens and returns extra middleware for
    it (the agent's health watch goes there). ``meter`` is the device's energy meter, handed to each
    runtime (:meth:`Runtime.open <tinymlops.edge.runtime.Runtime.open>`: ``"auto"`` lets the runtime
    pick its default). ``timer`` measures step durations, ``clock`` stamps results (both injectable
    for tests).
    """

    def __init__(
        self,
        store: SlotStore,
        device_key: X25519PrivateKey | DeviceKeys,
        trusted_release_keys: Iterable[TrustedKey],
        *,
        require_check_vector: bool = True,
        threads: int = 1,
        middleware: Callable[[], list[Middleware]] | None = None,
        meter: EnergyMeter | Literal["auto"] | None = "auto",
        timer: Callable[[], float] = time.perf_counter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.device_key = device_key
        self._wrapping_key_id = key_id(_wrapping_key(device_key))
        self.trusted = list(trusted_release_keys)
        if not self.trusted:
            raise UsageError("the installer needs at least one trusted release key")
        self.require_check_vector = require_check_vector
        self.threads = threads
        self.middleware = middleware
        self.meter = meter
        self.timer = timer
        self.clock = clock

    # --- checks (also the SlotVerifier that recovery uses) ---------------------------------
    def verify(self, data: bytes) -> BundleInfo:
        """Signature, manifest, member hashes, recipient key, check vector present."""
        verified = verify_bundle(data, trusted_release_keys=self.trusted)
        m = verified.manifest
        info = BundleInfo(
            bundle_id=m.bundle_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            ref=m.model.ref,
            created_at=m.created_at,
        )
        if m.key_wrap.recipient_key_id != self._wrapping_key_id:
            raise KeyMismatchError(
                f"bundle {m.bundle_id} is encrypted for key {m.key_wrap.recipient_key_id} "
                f"({m.key_wrap.mode}); this device's key is {self._wrapping_key_id}"
            )
        if self.require_check_vector and m.check is None:
            raise InvalidInputError(
                f"bundle {m.bundle_id} has no smoke-test vector and this agent requires one "
                "(require_check_vector=False to accept it)"
            )
        return info

    def open_runtime(self, data: bytes) -> Runtime:
        extra = self.middleware() if self.middleware is not None else None
        return Runtime.open(
            data, self.device_key, self.trusted, threads=self.threads, extra_middleware=extra, meter=self.meter
        )

    def smoke(self, runtime: Runtime) -> None:
        """Run the manifest's check vector; raise :class:`IntegrityError` when the outputs differ."""
        backend = runtime.backends.get("main")
        if backend is None:
            raise IntegrityError("the bundle's runtime has no 'main' model to smoke-test", member="model.enc")
        try:
            result = run_check(runtime.manifest, backend)
        except TinyMLOpsError:
            raise
        except Exception as exc:  # the model crashed on its own check inputs
            raise IntegrityError(f"smoke test could not run: {type(exc).__name__}: {exc}", member="check") from exc
        if not result.passed:
            raise IntegrityError(f"smoke test failed: {result.message}", member="check")

    def qualify(self, data: bytes) -> BundleInfo:
        """Verify, open and smoke-test (used when the state must be rebuilt from the slots)."""
        info = self.verify(data)
        self.smoke(self.open_runtime(data))
        return info

    def open_active(self, slot: str, expected: BundleInfo) -> Runtime:
        """Open (and smoke-test) the bundle in ``slot``, checking it is still ``expected``."""
        data = self.store.read_slot(slot)
        sha = hashlib.sha256(data).hexdigest()
        if sha != expected.sha256:
            raise IntegrityError(
                f"slot {slot}: the bundle file changed on disk (sha256 {sha[:12]}…, recorded {expected.sha256[:12]}…)",
                member="bundle file",
            )
        runtime = self.open_runtime(data)
        self.smoke(runtime)
        return runtime

    # --- the install flow ----------------------------------------------------------------
    def _result(self, status: str, reason: str, t0: float, timings: dict[str, float], **kw: Any) -> InstallResult:
        timings["total_s"] = self.timer() - t0
        active = self.store.state.active_bundle
        return InstallResult(
            status,
            reason,
            timings=timings,
            at=self.clock(),
            active_bundle_id=None if active is None else active.bundle_id,
            **kw,
        )

    def install(self, path: Path | str, *, expected_sha256: str | None = None) -> InstallResult:
        """Install the bundle file at ``path`` (see the module docstring for the steps)."""
        if not self.store.recovered:
            raise UsageError("the slot store must be recovered (SlotStore.recover) before installing into it")
        t0 = self.timer()
        timings: dict[str, float] = {}
        path = Path(path)

        # 1. verify what was received — refusals change nothing
        t = self.timer()
        try:
            data = read_source(path)
        except UsageError as exc:
            return self._result("refused", exc.message, t0, timings, error=type(exc).__name__)
        sha = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            return self._result(
                "refused",
                f"the downloaded file's SHA-256 {sha[:12]}… is not the offered {expected_sha256[:12]}…",
                t0,
                timings,
                sha256=sha,
                error="IntegrityError",
            )
        try:
            info = self.verify(data)
        except TinyMLOpsError as exc:
            return self._result("refused", exc.message, t0, timings, sha256=sha, error=type(exc).__name__)
        del data
        timings["verify_s"] = self.timer() - t
        state = self.store.state
        ids = {"bundle_id": info.bundle_id, "sha256": info.sha256}
        active = state.active_bundle
        if active is not None and active.sha256 == info.sha256:
            return self._result("unchanged", "this bundle is already active", t0, timings, slot=state.active, **ids)
        if state.is_refused(info.sha256):
            return self._result(
                "refused",
                "this bundle was refused before (failed its smoke test or was rolled back as unhealthy)",
                t0,
                timings,
                **ids,
            )
        if state.pending is not None:
            raise UsageError(f"an install into slot {state.pending} is pending; recover the store first")

        # 2. stage into the inactive slot
        t = self.timer()
        state = self.store.apply(state.stage(info))
        slot = state.pending
        assert slot is not None
        ids["slot"] = slot
        try:
            written = self.store.copy_into_slot(path, slot)
            timings["stage_s"] = self.timer() - t
            crash_point("staged")
            if written != info.sha256:
                return self._fail(info, f"the file changed while it was copied into slot {slot}", t0, timings, ids)

            # 3. re-verify the slot's copy
            t = self.timer()
            try:
                data = self.store.read_slot(slot)
                if hashlib.sha256(data).hexdigest() != info.sha256:
                    raise IntegrityError(f"slot {slot}: copy differs from the verified file", member="bundle file")
                self.verify(data)
            except TinyMLOpsError as exc:
                return self._fail(info, f"slot copy: {exc.message}", t0, timings, ids, exc)
            self.store.apply(self.store.state.mark_verified(info.bundle_id))
            timings["reverify_s"] = self.timer() - t

            # 4. open in memory and smoke-test
            t = self.timer()
            try:
                runtime = self.open_runtime(data)
            except Exception as exc:  # any failure to load is a failed install, not a crash
                return self._fail(info, f"runtime could not open it: {_message(exc)}", t0, timings, ids, exc)
            del data
            timings["open_s"] = self.timer() - t
            t = self.timer()
            try:
                self.smoke(runtime)
            except TinyMLOpsError as exc:
                return self._fail(info, exc.message, t0, timings, ids, exc)
            timings["smoke_s"] = self.timer() - t
            self.store.apply(self.store.state.mark_smoke_tested(info.bundle_id))

            # 5. the switch: one atomic replace of the state file
            t = self.timer()
            self.store.apply(self.store.state.commit(info.bundle_id), crash_at="switch")
            timings["commit_s"] = self.timer() - t
            crash_point("switched")
        except BaseException:
            self._abandon()
            raise
        reason = f"bundle {info.bundle_id} ({info.ref}) is active in slot {slot}"
        return self._result("installed", reason, t0, timings, runtime=runtime, **ids)

    def _fail(
        self,
        info: BundleInfo,
        reason: str,
        t0: float,
        timings: dict[str, float],
        ids: Mapping[str, Any],
        exc: BaseException | None = None,
    ) -> InstallResult:
        slot = self.store.state.pending
        self.store.apply(self.store.state.fail(info.bundle_id))
        if slot is not None:
            self.store.clear_slot(slot)
        return self._result(
            "failed",
            f"{reason}; stayed on slot {self.store.state.active or '(none)'}",
            t0,
            timings,
            error=None if exc is None else type(exc).__name__,
            **ids,
        )

    def _abandon(self) -> None:
        """An unexpected error mid-install: drop the pending install (best effort) so the store
        stays usable; recovery does the same on the next start if this fails too."""
        state = self.store.state
        if state.pending is None:
            return
        slot = state.pending
        try:
            self.store.apply(state.abort())
            self.store.clear_slot(slot)
        except (OperationError, OSError):
            pass


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


def with_timing(result: InstallResult, **timings: float) -> InstallResult:
    """``result`` with extra timings (e.g. the download's) merged in."""
    return replace(result, timings={**timings, **result.timings})


__all__ = ["STATUSES", "InstallResult", "Installer", "with_timing"]

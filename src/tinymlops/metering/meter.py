"""The metering middleware: every prediction is authorized and debited before it runs, offline.

:class:`Meter` is the live ledger of one model on this device — the pure
:class:`~tinymlops.metering.ledger.Ledger`, its :class:`~tinymlops.metering.ledger_store.LedgerStore`
and a lock. :meth:`Meter.authorize` is the hot path: inside the open block it is a clock read, two
comparisons and a decrement under the lock; when the block is empty it first writes a reservation
of ``block`` calls durably (SQLite ``synchronous=FULL`` and the monotonic counter), so a crash
can only lose the rest of a block, never regain a call. A refused call raises
:class:`~tinymlops.errors.QuotaExceededError` / :class:`~tinymlops.errors.LicenseExpiredError` /
:class:`~tinymlops.errors.LicenseScopeError` (``remaining``, ``limit``, ``license_id``,
``reason``) and never reaches the model.

Wiring into the runtime: the manifest's ``metering`` policy (position 10, before everything)::

    [policies.metering]
    enabled = true
    model = "digits"     # the model name the license must name (and the bundle must carry)
    block = 64           # calls per durable reservation (default 64)

The ledgers live on the device, not in the bundle: the agent binds its :class:`MeteringHost`
(ledger directory, device signing key, trusted issuer keys) before it opens runtimes — with
:func:`metering_bound` around the opening (bound for the current thread and context only, so
several agents in one process each open their runtimes over their own ledgers), or process-wide
with :func:`bind_metering`. Without a bound host a metered bundle does not open (no silent free
service); bundles without the policy open as before. One :class:`Meter` per model is shared by
every runtime of that model opened over the same host (the A/B slots), so two runtimes never fork
the chain.

Revocations: :meth:`Meter.revoke` writes the issuer's signed revocation of the license in force
into the ledger (durably, like a license); the meter then refuses with
:class:`~tinymlops.errors.LicenseRevokedError` until a top-up of the revoked license is installed.

A ledger that cannot be used does not stop its bundle from opening: when the host cannot open the
model's meter — the ledger does not verify (:class:`~tinymlops.errors.LedgerTamperedError`; the host
remembers it until it is closed, so it is not verified again at every call) or cannot be opened now
(:class:`~tinymlops.errors.StoreError`) — the runtime opens with a middleware that refuses every call
with :class:`~tinymlops.errors.LedgerUnusableError` naming the cause (trying the host again at each
call, so a ledger that becomes usable is used at once). Failing the bundle instead would make the
agent roll back to whatever the other slot holds — a bundle without the metering policy would then
serve the model for free — and refuse a release that is not at fault.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.crypto.keys import key_id
from tinymlops.crypto.signing import TrustedKey
from tinymlops.errors import (
    LedgerTamperedError,
    LedgerUnusableError,
    LicenseScopeError,
    MeteringRefusedError,
    SpecError,
    StoreError,
    UsageError,
)
from tinymlops.metering.ledger import Ledger
from tinymlops.metering.ledger_store import LedgerStore, MonotonicCounter, default_counter
from tinymlops.metering.license_signing import (
    SignedLicense,
    SignedRevocation,
    SignedUsageReport,
    sign_usage_report,
    verify_license,
    verify_revocation,
)
from tinymlops.spec.license import MODEL_NAME, License, Revocation
from tinymlops.spec.usage_report import GENESIS_HASH, MAX_REPORT_ENTRIES, LedgerEntry, UsageReport

if TYPE_CHECKING:
    from tinymlops.edge.middleware import CallNext, PolicyContext, Request, Response

log = logging.getLogger("tinymlops.metering")

DEFAULT_BLOCK = 64
MAX_BLOCK = 1 << 20
#: a model's ledger file in a host's directory: ``<model>.ledger.sqlite3``
LEDGER_SUFFIX = ".ledger.sqlite3"
_REF = re.compile(r"^([^:/]+)(?::(\d+))?")


class Meter:
    """The live usage ledger of one model (thread-safe; see the module doc)."""

    def __init__(
        self,
        store: LedgerStore,
        device_key: Ed25519PrivateKey,
        trusted_issuer_keys: Iterable[TrustedKey],
        *,
        block: int = DEFAULT_BLOCK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_block(block)
        self.store = store
        self.ledger: Ledger = store.ledger
        self.block = block
        self._key = device_key
        self._trusted = list(trusted_issuer_keys)
        self._clock = clock
        self._lock = threading.Lock()
        self._covered: dict[int | None, bool] = {}
        #: metered calls refused since this meter opened (a sync may want to run sooner when it moves)
        self.refused = 0

    @classmethod
    def open(
        cls,
        path: Path | str,
        model: str,
        *,
        device_key: Ed25519PrivateKey,
        trusted_issuer_keys: Iterable[TrustedKey],
        block: int = DEFAULT_BLOCK,
        counter: MonotonicCounter | bool | None = True,
        clock: Callable[[], float] = time.time,
    ) -> Meter:
        """Open (verify, replay) the ledger file at ``path``. ``counter``: True = the file counter
        beside it, False/None = none (no local rollback check), or any :class:`MonotonicCounter`."""
        trusted = list(trusted_issuer_keys)
        if counter is True:
            counter = default_counter(path)
        store = LedgerStore.open(
            path,
            device_id=key_id(device_key),
            model=model,
            trusted_issuer_keys=trusted,
            counter=counter or None,
        )
        return cls(store, device_key, trusted, block=block, clock=clock)

    # --- reading ---------------------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return self.ledger.remaining

    @property
    def limit(self) -> int:
        return self.ledger.licensed

    @property
    def installed_ids(self) -> frozenset[str]:
        """The ids of every license installed in this chain (revoked ones included)."""
        with self._lock:
            return frozenset(self.ledger.licenses)

    @property
    def revoked_ids(self) -> frozenset[str]:
        """The ids of the licenses whose revocation is written into this chain."""
        with self._lock:
            return frozenset(self.ledger.revocations)

    @property
    def current_license_id(self) -> str | None:
        """The license in force (the chain's latest), revoked or not; None before the first."""
        current = self.ledger.current
        return None if current is None else current.license_id

    @property
    def next_seq(self) -> int:
        """The seq the next entry will have (the number of entries in force)."""
        return self.ledger.next_seq

    def hash_before(self, seq: int) -> str | None:
        """The hash of entry ``seq - 1`` (:data:`GENESIS_HASH` for 0): the head a report starting at
        ``seq`` links to. None when the chain has no entry ``seq - 1``."""
        if seq == 0:
            return GENESIS_HASH
        with self._lock:
            if not 0 < seq <= self.ledger.next_seq:
                return None
            bodies = self.store.bodies(seq - 1, limit=1)
        return LedgerEntry.from_bytes(bodies[0]).hash if bodies else None

    # --- licenses ----------------------------------------------------------------------------------
    def install(self, signed: SignedLicense) -> License:
        """Verify a license (or top-up) and add it to the chain, durably."""
        license = verify_license(signed, self._trusted)
        with self._lock:
            entry = self.ledger.propose_license(license, self._clock())
            self._append(entry, signed)
            self.ledger.apply(entry, license)
            self._covered.clear()
        return license

    def _append(self, entry: LedgerEntry, signed: SignedLicense | SignedRevocation | None = None) -> None:
        """Store ``entry`` (under the lock); the caller applies it next. A store error after the commit
        (the monotonic counter would not move) is logged and the entry applied all the same: it is
        durable, and the store catches the counter up before it writes again. Before the commit,
        nothing was written: the :class:`~tinymlops.errors.StoreError` is raised."""
        try:
            self.store.append(entry, signed)
        except StoreError as exc:
            if not exc.details.get("committed"):
                raise
            log.error("%s", exc.message)

    def revoke(self, signed: SignedRevocation) -> bool:
        """Verify the issuer's revocation of the license in force and write it into the chain, durably:
        from now on every call is refused (LicenseRevokedError) until a top-up of that license is
        installed. Idempotent: a revocation of a license this chain already revoked changes nothing
        and returns False; True when it was written. A forged revocation raises SignatureError /
        SpecError; one for another device or model, or not of the license in force, LicenseError."""
        revocation: Revocation = verify_revocation(signed, self._trusted)
        with self._lock:
            if revocation.license_id in self.ledger.revocations:
                return False
            entry = self.ledger.propose_revoke(revocation, self._clock())
            self._append(entry, signed)
            self.ledger.apply(entry, revocation)
            self._covered.clear()
        return True

    # --- the hot path ------------------------------------------------------------------------------
    def authorize(self, version: int | None = None) -> None:
        """Debit one call for ``version`` of the model, or raise the refusal (nothing debited; counted
        in :attr:`refused`)."""
        with self._lock:
            try:
                covered = self._covered.get(version)
                if covered is None:
                    covered = self._covered[version] = self._scope(version)
                if not covered:
                    self._refuse_scope(version)
                now = self._clock()
                if not self.ledger.authorize(now):
                    entry = self.ledger.propose_reserve(self.block, now)
                    try:
                        self._append(entry)
                    except StoreError as exc:  # nothing written: a refusal like any other, not a model failure
                        raise unusable_ledger(self.ledger.model, exc) from exc
                    self.ledger.apply(entry)
                    self.ledger.authorize(now)
            except MeteringRefusedError:
                self.refused += 1
                raise

    def _scope(self, version: int | None) -> bool:
        current = self.ledger.current
        return current is None or current.covers_version(version)

    def _refuse_scope(self, version: int | None) -> None:
        lic = self.ledger.current
        assert lic is not None
        raise LicenseScopeError(
            f"license {lic.license_id} covers {lic.model} versions {lic.min_version}..{lic.max_version}, "
            f"this runtime serves version {version}",
            reason="version",
            remaining=self.ledger.remaining,
            limit=self.ledger.licensed,
            license_id=lic.license_id,
        )

    def middleware(self, version: int | None = None) -> MeteringMiddleware:
        return MeteringMiddleware(self, version)

    # --- reports -----------------------------------------------------------------------------------
    def usage_report(self, since_seq: int = 0, *, limit: int = MAX_REPORT_ENTRIES) -> SignedUsageReport | None:
        """The signed report of the entries from ``since_seq`` on, at most ``limit`` (at most
        :data:`~tinymlops.spec.usage_report.MAX_REPORT_ENTRIES`) of them (the next report starts at this
        one's ``last_seq + 1``); None when there are none.

        Only the stored bytes and the ledger's state are read under the lock (a few ms at the
        maximum); parsing, building and signing run outside it, so :meth:`authorize` is not held up.
        ``block_remaining`` is the open block's when the report reaches the head of the chain, else 0
        (every block in a report that stops short of the head is closed)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_REPORT_ENTRIES:
            raise UsageError(f"a usage report carries 1..{MAX_REPORT_ENTRIES} entries, got limit={limit!r}")
        with self._lock:
            bodies = self.store.bodies(since_seq, limit=limit)
            next_seq = self.ledger.next_seq
            block_remaining = self.ledger.block_remaining
        entries = [LedgerEntry.from_bytes(body) for body in bodies]
        entries = [e for e in entries if e.seq < next_seq]  # a row written but not in force: not yet
        if not entries:
            return None
        report = UsageReport.build(
            device_id=self.ledger.device_id,
            entries=entries,
            block_remaining=block_remaining if entries[-1].seq == next_seq - 1 else 0,
            created_at=int(self._clock()),
        )
        return sign_usage_report(report, self._key)

    def close(self) -> None:
        with self._lock:
            self.store.close()


class MeteringMiddleware:
    """``mw(request, call_next)``: debit one call of ``meter`` for ``version``, then run the chain.

    :meth:`unusable` builds one whose meter could not be opened: it refuses every call with
    :class:`~tinymlops.errors.LedgerUnusableError` and asks the host again at each call (once the
    meter opens, it debits it as any other)."""

    __slots__ = ("_authorize", "_block", "_host", "_model", "meter", "version")

    def __init__(self, meter: Meter, version: int | None) -> None:
        self.meter: Meter | None = meter
        self.version = version
        self._authorize: Callable[[int | None], None] = meter.authorize
        self._host: MeteringHost | None = None
        self._model = meter.ledger.model
        self._block: int | None = None

    @classmethod
    def unusable(cls, host: MeteringHost, model: str, block: int | None, version: int | None) -> MeteringMiddleware:
        """The middleware of ``model`` while ``host`` cannot open its meter (see the class doc)."""
        mw = cls.__new__(cls)
        mw.meter, mw.version, mw._host, mw._model, mw._block = None, version, host, model, block
        mw._authorize = mw._open_then_authorize
        return mw

    def _open_then_authorize(self, version: int | None) -> None:
        assert self._host is not None
        try:
            meter = self._host.meter(self._model, block=self._block)
        except (LedgerTamperedError, StoreError) as exc:
            raise unusable_ledger(self._model, exc) from None
        self.meter, self._authorize = meter, meter.authorize
        meter.authorize(version)

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        self._authorize(self.version)
        return call_next(request)


def unusable_ledger(model: str, exc: LedgerTamperedError | StoreError) -> LedgerUnusableError:
    """The refusal of a metered call of ``model`` whose ledger could not be opened (``exc`` says why)."""
    if isinstance(exc, LedgerTamperedError):
        return LedgerUnusableError(
            f"metered predictions of '{model}' are refused: its usage ledger does not verify ({exc.message}); "
            "the device must be re-licensed",
            reason="ledger-tampered",
            ledger_reason=exc.details.get("reason"),
            model=model,
            remaining=0,
            limit=0,
            license_id=None,
        )
    return LedgerUnusableError(
        f"metered predictions of '{model}' are refused: its usage ledger cannot be used now ({exc.message})",
        reason="ledger-unavailable",
        model=model,
        remaining=0,
        limit=0,
        license_id=None,
    )


class MeteringHost:
    """This device's metering: where the ledgers live, the key that signs usage reports, the issuer
    keys licenses must be signed by. One :class:`Meter` per model, opened on first use."""

    def __init__(
        self,
        directory: Path | str,
        *,
        device_key: Ed25519PrivateKey,
        trusted_issuer_keys: Iterable[TrustedKey],
        counter: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.device_key = device_key
        self.trusted_issuer_keys = list(trusted_issuer_keys)
        self.counter = counter
        self.clock = clock
        self._meters: dict[str, Meter] = {}
        self._broken: dict[str, LedgerTamperedError] = {}
        self._refused_closed = 0  # refusals counted by meters since closed
        self._lock = threading.Lock()

    def meter(self, model: str, *, block: int | None = None) -> Meter:
        """The meter of ``model``, opened (verified, replayed) on first use. ``block``: calls per
        reservation from now on — a bundle's metering policy sets it when its runtime opens; None
        keeps the meter's block (:data:`DEFAULT_BLOCK` for a meter opened without one, e.g. by the
        agent's license sync before any bundle of the model opened).

        A ledger that does not verify raises :class:`~tinymlops.errors.LedgerTamperedError`, and
        raises it again at every call until :meth:`close` (see :attr:`broken`) without being read again."""
        if not MODEL_NAME.match(model):
            raise UsageError(f"not a model name: {model!r}")
        if block is not None:
            _check_block(block)
        with self._lock:
            meter = self._meters.get(model)
            if meter is None:
                broken = self._broken.get(model)
                if broken is not None:
                    raise broken
                try:
                    meter = Meter.open(
                        self.directory / f"{model}{LEDGER_SUFFIX}",
                        model,
                        device_key=self.device_key,
                        trusted_issuer_keys=self.trusted_issuer_keys,
                        block=DEFAULT_BLOCK if block is None else block,
                        counter=self.counter,
                        clock=self.clock,
                    )
                except LedgerTamperedError as exc:
                    self._broken[model] = exc
                    log.error("the %s usage ledger does not verify: %s", model, exc.message)
                    raise
                self._meters[model] = meter
            elif block is not None:
                meter.block = block  # read under the meter's lock at the next reservation
            return meter

    def opened(self) -> dict[str, Meter]:
        """The meters open now, by model (none is opened here: reading a ledger verifies all of it)."""
        with self._lock:
            return dict(self._meters)

    @property
    def refusals(self) -> int:
        """Metered calls refused by this host's meters since it was created (it only grows): a device
        whose calls are refused — no license, out of queries, expired, revoked — wants its next sync now."""
        with self._lock:
            return self._refused_closed + sum(m.refused for m in self._meters.values())

    @property
    def broken(self) -> dict[str, LedgerTamperedError]:
        """``{model: why}`` for the ledgers found not to verify since this host was opened (or closed)."""
        with self._lock:
            return dict(self._broken)

    def models(self) -> list[str]:
        """The models this device holds a ledger of (open, or on disk in :attr:`directory`), sorted."""
        with self._lock:
            names = set(self._meters)
        with suppress(OSError):
            names.update(
                p.name[: -len(LEDGER_SUFFIX)]
                for p in self.directory.glob(f"*{LEDGER_SUFFIX}")
                if MODEL_NAME.match(p.name[: -len(LEDGER_SUFFIX)])
            )
        return sorted(names)

    def close(self) -> None:
        """Close every meter; ledgers reopen (verified again, the broken ones too) on their next use."""
        with self._lock:
            for meter in self._meters.values():
                meter.close()
                self._refused_closed += meter.refused
            self._meters.clear()
            self._broken.clear()


_bound: MeteringHost | None = None
_bound_lock = threading.Lock()
#: the host bound by metering_bound for the current thread / context (it wins over _bound)
_scoped: ContextVar[MeteringHost | None] = ContextVar("tinymlops_metering_host", default=None)


def bind_metering(host: MeteringHost | None) -> None:
    """Make ``host`` the process's metering for runtimes opened from now on (None: unbind). A host
    bound with :func:`metering_bound` wins inside its block."""
    global _bound
    with _bound_lock:
        _bound = host


@contextmanager
def metering_bound(host: MeteringHost) -> Iterator[MeteringHost]:
    """``with metering_bound(host):`` runtimes opened in the block, by this thread (this context),
    meter with ``host``; what was bound before is restored after. Other threads are not affected, so
    several agents in one process each bind their own."""
    token = _scoped.set(host)
    try:
        yield host
    finally:
        _scoped.reset(token)


def bound_host() -> MeteringHost | None:
    """The host runtimes opened here and now would meter with (None: none bound)."""
    return _scoped.get() or _bound


def _check_block(block: object) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
        raise UsageError(f"metering block must be an integer in [1, {MAX_BLOCK}], got {block!r}")


def split_model_ref(ref: str | None) -> tuple[str | None, int | None]:
    """``"digits:3/int8-static"`` → ``("digits", 3)``; None → ``(None, None)``."""
    if not ref:
        return None, None
    m = _REF.match(ref)
    if m is None:
        return None, None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def metering_factory(table: Mapping[str, Any], context: PolicyContext | None) -> MeteringMiddleware:
    """The ``metering`` policy: the bound host's meter for the table's model, checked against the bundle."""
    allowed = {"enabled", "model", "block"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(
            f"metering policy: this runtime does not implement {', '.join(unknown)} "
            f"(known: {', '.join(sorted(allowed))})",
            policy="metering",
        )
    model = table.get("model")
    if not isinstance(model, str) or not MODEL_NAME.match(model):
        raise SpecError(f"metering policy: 'model' must be a model name, got {model!r:.80}")
    block = table.get("block", DEFAULT_BLOCK)
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
        raise SpecError(f"metering policy: 'block' must be an integer in [1, {MAX_BLOCK}], got {block!r:.40}")
    name, version = split_model_ref(context.model if context is not None else None)
    if name is not None and name != model:
        raise SpecError(f"metering policy meters model '{model}', but the bundle carries '{context.model}'")  # type: ignore[union-attr]
    host = bound_host()
    if host is None:
        raise UsageError(
            "the bundle's metering policy needs this device's usage ledger: bind a MeteringHost "
            "(tinymlops.metering.bind_metering) before opening the runtime"
        )
    try:
        meter = host.meter(model, block=block)
    except (LedgerTamperedError, StoreError) as exc:  # not the bundle's fault: it opens, its calls are refused
        log.error("%s", unusable_ledger(model, exc).message)
        return MeteringMiddleware.unusable(host, model, block, version)
    return meter.middleware(version)


__all__ = [
    "DEFAULT_BLOCK",
    "LEDGER_SUFFIX",
    "Meter",
    "MeteringHost",
    "MeteringMiddleware",
    "bind_metering",
    "bound_host",
    "metering_bound",
    "metering_factory",
    "split_model_ref",
    "unusable_ledger",
]

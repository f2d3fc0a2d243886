"""Revocation in the device's ledger: the pure state machine (forfeit, freeze, reinstate by a top-up),
chain verification of ``revoke`` entries, the store keeping and re-verifying signed revocations, and
the attacks on them (deleted, swapped, forged, misaddressed)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from metering_world import T0, Clock, Issuer
from tinymlops.crypto.keys import key_id, public_bytes
from tinymlops.errors import (
    LedgerTamperedError,
    LicenseError,
    LicenseExpiredError,
    LicenseRevokedError,
    QuotaExceededError,
    SignatureError,
    UsageError,
)
from tinymlops.metering import Meter, MeteringHost, metering_bound, verify_usage_report
from tinymlops.metering.ledger import Ledger, verify_chain
from tinymlops.metering.license_signing import (
    LICENSE_DOMAIN,
    REVOCATION_DOMAIN,
    SignedRevocation,
    sign_revocation,
)
from tinymlops.metering.meter import DEFAULT_BLOCK, bound_host
from tinymlops.spec.license import License, Revocation

DEVICE = Ed25519PrivateKey.generate()
ISSUER = Issuer()


def revocation(
    lic: License, *, issuer: Issuer = ISSUER, reason: str = "chargeback", at: int = T0, **fields: str
) -> Revocation:
    return Revocation(
        license_id=fields.get("license_id", lic.license_id),
        device_id=fields.get("device_id", lic.device_id),
        model=fields.get("model", lic.model),
        revoked_at=at,
        reason=reason,
        issuer_key_id=key_id(issuer.key),
    )


def signed(rev: Revocation, issuer: Issuer = ISSUER) -> SignedRevocation:
    return sign_revocation(rev, issuer.key)


def fresh() -> Ledger:
    return Ledger(key_id(DEVICE), "tiny")


def step(ledger: Ledger, entry, doc=None, log=None):
    ledger.apply(entry, doc)
    if log is not None:
        log.append(entry)
    return entry


# --- the pure ledger ---------------------------------------------------------------------------------
def test_a_revocation_forfeits_what_is_left_freezes_the_chain_and_a_top_up_reinstates() -> None:
    led, log = fresh(), []
    first = ISSUER.license(DEVICE, queries=20)
    step(led, led.propose_license(first, T0), first, log)
    step(led, led.propose_reserve(8, T0), log=log)
    for _ in range(3):
        assert led.authorize(T0)
    assert led.remaining == 17  # 12 unreserved + 5 left in the open block
    rev = revocation(first)
    entry = step(led, led.propose_revoke(rev, T0 + 5), rev, log)
    assert (entry.kind, entry.count, entry.ref, entry.license_id) == ("revoke", 12, rev.digest, first.license_id)
    assert (led.remaining, led.block_remaining, led.forfeited) == (0, 0, 12)  # the open block is dropped too
    assert not led.authorize(T0 + 5)
    with pytest.raises(LicenseRevokedError) as info:
        led.propose_reserve(8, T0 + 5)
    assert info.value.details | {"revoked_at": None} == {
        "reason": "revoked",
        "remaining": 0,
        "limit": 20,
        "license_id": first.license_id,
        "revoked_at": None,
    }
    assert "chargeback" in info.value.message
    # only a top-up of the revoked license is accepted, and only its queries are usable
    with pytest.raises(LicenseError, match="tops up"):
        led.propose_license(ISSUER.license(DEVICE, queries=5), T0 + 6)
    top = ISSUER.license(DEVICE, queries=7, previous=first.license_id)
    step(led, led.propose_license(top, T0 + 6), top, log)
    assert led.revoked is None and led.remaining == 7
    step(led, led.propose_reserve(64, T0 + 6), log=log)
    assert log[-1].count == 7
    assert verify_chain(log) == led.head
    replayed = Ledger.replay(
        key_id(DEVICE), "tiny", log, {first.license_id: first, top.license_id: top}, {first.license_id: rev}
    )
    assert (replayed.head, replayed.forfeited, replayed.reserved, replayed.licensed) == (led.head, 12, 15, 27)


def test_a_revocation_is_refused_unless_it_names_the_license_in_force_of_this_device_and_model() -> None:
    led = fresh()
    first = ISSUER.license(DEVICE, queries=10)
    with pytest.raises(LicenseError) as info:
        led.propose_revoke(revocation(first), T0)  # nothing installed
    assert info.value.details["reason"] == "not-in-force"
    step(led, led.propose_license(first, T0), first)
    top = ISSUER.license(DEVICE, queries=10, previous=first.license_id)
    step(led, led.propose_license(top, T0), top)
    other = Ed25519PrivateKey.generate()
    cases = {
        "not-in-force": revocation(first),  # superseded by the top-up
        "other-device": revocation(top, device_id=key_id(other)),
        "other-model": revocation(top, model="other"),
    }
    for reason, rev in cases.items():
        with pytest.raises(LicenseError) as info:
            led.propose_revoke(rev, T0)
        assert info.value.details["reason"] == reason
    rev = revocation(top)
    step(led, led.propose_revoke(rev, T0), rev)
    with pytest.raises(LicenseError) as info:
        led.propose_revoke(revocation(top, reason="again"), T0)
    assert info.value.details["reason"] == "duplicate"
    assert led.next_seq == 3  # nothing refused was proposed into the chain


def test_a_revocation_never_waits_for_the_clock() -> None:
    """Set back, or past the license's end: the revocation is still written (dated at the last entry)."""
    led = fresh()
    lic = ISSUER.license(DEVICE, queries=10, valid_until=T0 + 100)
    step(led, led.propose_license(lic, T0 + 50), lic)
    entry = led.propose_revoke(revocation(lic), T0)  # clock set back
    assert entry.at == T0 + 50
    led2 = fresh()
    step(led2, led2.propose_license(lic, T0), lic)
    with pytest.raises(LicenseExpiredError):
        led2.propose_reserve(1, T0 + 200)
    rev = revocation(lic)
    step(led2, led2.propose_revoke(rev, T0 + 200), rev)
    assert led2.forfeited == 10


def test_apply_holds_a_stored_revoke_entry_to_the_rules_of_propose_revoke() -> None:
    lic = ISSUER.license(DEVICE, queries=10)
    rev = revocation(lic)
    other_model = revocation(lic, model="other")

    installed = fresh().propose_license(lic, T0)

    def ledger_with_license() -> tuple[Ledger, object]:
        led = fresh()
        return led, step(led, installed, lic)

    led, _ = ledger_with_license()
    good = led.propose_revoke(rev, T0)
    cases = {
        "revocation-mismatch": (good, revocation(lic, reason="another")),  # another document than committed
        "counts": (dataclasses.replace(good, count=3), rev),  # forfeits less than was left
        "other-model": (dataclasses.replace(good, ref=other_model.digest), other_model),
    }
    for reason, (entry, doc) in cases.items():
        led, _ = ledger_with_license()
        with pytest.raises(LedgerTamperedError) as info:
            led.apply(entry, doc)
        assert info.value.details["reason"] == reason and info.value.details["seq"] == 1
        assert led.revoked is None and led.forfeited == 0
    led, _ = ledger_with_license()
    with pytest.raises(LedgerTamperedError, match="missing"):
        led.apply(good, None)


def test_verify_chain_understands_revoke_entries() -> None:
    led, log = fresh(), []
    lic = ISSUER.license(DEVICE, queries=10)
    step(led, led.propose_license(lic, T0), lic, log)
    step(led, led.propose_reserve(4, T0), log=log)
    rev = revocation(lic)
    step(led, led.propose_revoke(rev, T0 + 1), rev, log)
    assert verify_chain(log) == led.head
    reserve_after = dataclasses.replace(log[1], seq=3, prev_hash=log[2].hash, at=T0 + 2)
    again = dataclasses.replace(log[2], seq=3, prev_hash=log[2].hash, count=0)
    other = dataclasses.replace(log[2], license_id="ab" * 16)
    cases = {
        "revoked": [*log, reserve_after],  # a reservation under the revoked license before any top-up
        "duplicate-revoke": [*log, again],
        "counts": [*log[:2], dataclasses.replace(log[2], count=7)],  # 6 were left
        "wrong-license": [*log[:2], other],
    }
    for reason, entries in cases.items():
        with pytest.raises(LedgerTamperedError) as info:
            verify_chain(entries)
        assert info.value.details["reason"] == reason


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(1, 6)),
        st.tuples(st.just("reserve"), st.integers(1, 20)),
        st.tuples(st.just("topup"), st.integers(1, 30)),
        st.tuples(st.just("revoke"), st.integers(0, 0)),
        st.tuples(st.just("crash"), st.integers(0, 0)),
        st.tuples(st.just("tick"), st.integers(-5, 50)),
    ),
    max_size=60,
)


def _state(led: Ledger) -> tuple:
    return (
        led.head,
        led.next_seq,
        led.licensed,
        led.reserved,
        led.forfeited,
        led.current.license_id if led.current else None,
        led.revoked.license_id if led.revoked else None,
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), OPS)
def test_any_sequence_with_revocations_keeps_the_counts_and_replays_to_the_same_state(first: int, ops) -> None:
    led, log, licenses, revocations, now, served = fresh(), [], {}, {}, float(T0), 0
    lic = ISSUER.license(DEVICE, queries=first)
    licenses[lic.license_id] = lic
    step(led, led.propose_license(lic, now), lic, log)
    for op, n in ops:
        try:
            if op == "call":
                for _ in range(n):
                    if not led.authorize(now):
                        step(led, led.propose_reserve(4, now), log=log)
                        assert led.authorize(now)
                    served += 1
            elif op == "reserve" and led.block_remaining == 0:
                step(led, led.propose_reserve(n, now), log=log)
            elif op == "topup":
                top = ISSUER.license(DEVICE, queries=n, previous=led.current.license_id)
                licenses[top.license_id] = top
                step(led, led.propose_license(top, now), top, log)
            elif op == "revoke":
                rev = revocation(led.current, at=int(now))
                if led.revoked is not None:
                    with pytest.raises(LicenseError, match="revoked already"):
                        led.propose_revoke(rev, now)
                    continue
                revocations[rev.license_id] = rev
                step(led, led.propose_revoke(rev, now), rev, log)
                assert led.remaining == 0
            elif op == "crash":
                led = Ledger.replay(key_id(DEVICE), "tiny", log, licenses, revocations)
            elif op == "tick":
                now += n
        except (QuotaExceededError, LicenseExpiredError, LicenseRevokedError):
            pass
        assert led.remaining >= 0
        assert led.remaining == led.licensed - led.reserved - led.forfeited + led.block_remaining
        assert served <= led.reserved and led.reserved + led.forfeited <= led.licensed
        if led.revoked is not None:
            assert led.remaining == 0 and led.block_remaining == 0
    assert verify_chain(log) == led.head
    replayed = Ledger.replay(key_id(DEVICE), "tiny", log, licenses, revocations)
    assert _state(replayed) == _state(led) and replayed.block_remaining == 0


# --- the meter and its store -------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path):
    issuer, device, clock = Issuer(), Ed25519PrivateKey.generate(), Clock()

    def open_meter(block: int = 4, **kw) -> Meter:
        return Meter.open(
            tmp_path / "tiny.ledger.sqlite3",
            "tiny",
            device_key=device,
            trusted_issuer_keys=[issuer.public],
            block=block,
            clock=clock,
            **kw,
        )

    return issuer, device, clock, open_meter, tmp_path / "tiny.ledger.sqlite3"


def _revoked_meter(world) -> tuple[Meter, License, SignedRevocation]:
    issuer, device, _clock, open_meter, _ = world
    meter = open_meter()
    lic = meter.install(issuer.signed(device, queries=10))
    for _ in range(3):
        meter.authorize()
    rev = signed(revocation(lic, issuer=issuer), issuer)
    assert meter.revoke(rev) is True
    return meter, lic, rev


def test_meter_revoke_is_durable_idempotent_and_undone_only_by_a_top_up(world) -> None:
    issuer, device, _clock, open_meter, _ = world
    meter, lic, rev = _revoked_meter(world)
    assert meter.revoke(rev) is False  # already written: nothing changes
    another = signed(revocation(lic, issuer=issuer, reason="a second word on it"), issuer)
    assert meter.revoke(another) is False
    assert meter.next_seq == 3 and meter.revoked_ids == {lic.license_id} and meter.installed_ids == {lic.license_id}
    with pytest.raises(LicenseRevokedError):
        meter.authorize()
    meter.close()
    meter = open_meter()  # reopened: the stored revocation verifies and the chain is still frozen
    assert (meter.remaining, meter.ledger.forfeited) == (0, 6)
    with pytest.raises(LicenseRevokedError):
        meter.authorize()
    top = meter.install(issuer.signed(device, queries=2, previous=lic.license_id))
    meter.authorize()
    meter.authorize()
    with pytest.raises(QuotaExceededError):
        meter.authorize()
    assert meter.installed_ids == {lic.license_id, top.license_id} and meter.current_license_id == top.license_id
    report = verify_usage_report(meter.usage_report(0), public_bytes(device))
    kinds = [e.kind for e in report.entries]
    assert kinds == ["license", "reserve", "revoke", "license", "reserve"]
    assert (report.licensed, report.reserved) == (12, 6)  # the forfeit is in neither sum
    meter.close()


def test_a_forged_or_misaddressed_revocation_is_refused_and_writes_nothing(world) -> None:
    issuer, device, _clock, open_meter, _ = world
    meter = open_meter()
    lic = meter.install(issuer.signed(device, queries=10))
    rev = revocation(lic, issuer=issuer)
    data = rev.to_bytes()
    stranger = Issuer()
    forged = [
        SignedRevocation(data, stranger.key.sign(REVOCATION_DOMAIN + data)),  # names the issuer, signed by another
        SignedRevocation(data, issuer.key.sign(LICENSE_DOMAIN + data)),  # the issuer's key, the license domain
        SignedRevocation(data.replace(b"chargeback", b"chargeBACK"), signed(rev, issuer).signature),  # altered
        signed(revocation(lic, issuer=stranger), stranger),  # an issuer the device does not trust
    ]
    for doc in forged:
        with pytest.raises(SignatureError):
            meter.revoke(doc)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(LicenseError, match="device"):
        meter.revoke(signed(revocation(lic, issuer=issuer, device_id=key_id(other)), issuer))
    with pytest.raises(LicenseError, match="in force"):
        meter.revoke(signed(revocation(lic, issuer=issuer, license_id="cd" * 16), issuer))
    assert meter.next_seq == 1 and meter.revoked_ids == frozenset()
    meter.authorize()  # still serving
    meter.close()


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("delete-revocation-row", "revocation-mismatch"),
        ("alter-revocation-bytes", "revocation-signature"),
        ("swap-for-another-genuine-revocation", "revocation-mismatch"),
        ("revocation-row-of-another-license", "revocation-mismatch"),
    ],
)
def test_an_edited_revocation_row_makes_the_ledger_refuse_to_open(world, attack: str, reason: str) -> None:
    issuer, _device, _clock, open_meter, path = world
    meter, lic, rev = _revoked_meter(world)
    meter.close()
    conn = sqlite3.connect(path)
    if attack == "delete-revocation-row":
        conn.execute("DELETE FROM revocations")
    elif attack == "alter-revocation-bytes":
        conn.execute("UPDATE revocations SET data = ?", (rev.data.replace(b"chargeback", b"goodwill!!"),))
    elif attack == "swap-for-another-genuine-revocation":
        other = signed(revocation(lic, issuer=issuer, reason="another"), issuer)
        conn.execute("UPDATE revocations SET data = ?, signature = ?", (other.data, other.signature))
    else:
        conn.execute("UPDATE revocations SET license_id = ?", ("ef" * 16,))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerTamperedError) as info:
        open_meter()
    assert info.value.details["reason"] == reason


def test_deleting_the_revoke_entry_is_caught_by_the_counter_and_a_rewritten_forfeit_by_the_counts(world) -> None:
    _issuer, _device, _clock, open_meter, path = world
    meter, _lic, _rev = _revoked_meter(world)
    meter.close()
    conn = sqlite3.connect(path)
    body, _hash = conn.execute("SELECT body, hash FROM entries WHERE seq = 2").fetchone()
    conn.execute("DELETE FROM entries WHERE seq = 2")  # un-revoke: drop the last entry
    conn.commit()
    with pytest.raises(LedgerTamperedError) as info:
        open_meter()
    assert info.value.details["reason"] == "rollback"
    # forfeit nothing instead, the hash recomputed, no counter to compare with: the counts give it away
    from tinymlops.spec.usage_report import LedgerEntry

    entry = dataclasses.replace(LedgerEntry.from_bytes(bytes(body)), count=0)
    conn.execute("INSERT INTO entries (seq, body, hash) VALUES (2, ?, ?)", (entry.to_bytes(), entry.hash))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerTamperedError) as info:
        open_meter(counter=False)
    assert info.value.details["reason"] == "counts"


def test_the_store_refuses_a_revoke_entry_without_its_signed_revocation(world) -> None:
    issuer, device, _clock, open_meter, _ = world
    meter = open_meter()
    lic = meter.install(issuer.signed(device, queries=10))
    entry = meter.ledger.propose_revoke(revocation(lic, issuer=issuer), T0)
    with pytest.raises(UsageError, match="SignedRevocation"):
        meter.store.append(entry)
    with pytest.raises(UsageError, match="no signed document"):
        meter.store.append(meter.ledger.propose_reserve(1, T0), signed(revocation(lic, issuer=issuer), issuer))
    assert len(meter.store.entries()) == 1  # neither was written
    meter.close()


# --- the host --------------------------------------------------------------------------------------
def test_the_host_lists_its_ledgers_and_keeps_a_meters_block_unless_a_policy_sets_it(tmp_path: Path) -> None:
    issuer, device = Issuer(), Ed25519PrivateKey.generate()
    host = MeteringHost(tmp_path / "ledgers", device_key=device, trusted_issuer_keys=[issuer.public])
    assert host.models() == []
    meter = host.meter("tiny")
    assert meter.block == DEFAULT_BLOCK and host.meter("tiny", block=4) is meter and meter.block == 4
    assert host.meter("tiny").block == 4
    host.meter("other.model")
    host.close()
    (tmp_path / "ledgers" / "stray.txt").write_text("not a ledger")
    reopened = MeteringHost(tmp_path / "ledgers", device_key=device, trusted_issuer_keys=[issuer.public])
    assert reopened.models() == ["other.model", "tiny"]
    with pytest.raises(UsageError, match="block"):
        reopened.meter("tiny", block=0)


def test_metering_bound_binds_for_this_thread_only(tmp_path: Path) -> None:
    """Several agents in one process (the fleet simulator) each open runtimes with their own host."""
    issuer = Issuer()
    hosts = [
        MeteringHost(tmp_path / str(i), device_key=Ed25519PrivateKey.generate(), trusted_issuer_keys=[issuer.public])
        for i in range(2)
    ]
    inside, seen = threading.Barrier(2), {}

    def worker(i: int) -> None:
        with metering_bound(hosts[i]):
            inside.wait(5)  # both bound at once
            seen[i] = bound_host()
            inside.wait(5)
        seen[f"after{i}"] = bound_host()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {0: hosts[0], 1: hosts[1], "after0": None, "after1": None}
    assert bound_host() is None

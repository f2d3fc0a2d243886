"""The pure ledger: licenses, top-ups, reservations, refusals, and chain verification (no I/O)."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from metering_world import T0, Issuer
from tinymlops.crypto.keys import key_id
from tinymlops.errors import LedgerTamperedError, LicenseError, LicenseExpiredError, QuotaExceededError, UsageError
from tinymlops.metering.ledger import Ledger, verify_chain

DEVICE = Ed25519PrivateKey.generate()
ISSUER = Issuer()


def fresh() -> Ledger:
    return Ledger(key_id(DEVICE), "tiny")


def step(ledger: Ledger, entry, lic=None, log=None):
    ledger.apply(entry, lic)
    if log is not None:
        log.append(entry)
    return entry


def test_n_calls_pass_then_quota_is_refused_and_top_up_extends() -> None:
    led, log = fresh(), []
    first = ISSUER.license(DEVICE, queries=10)
    step(led, led.propose_license(first, T0), first, log)
    served = 0
    while True:
        if not led.authorize(T0):
            try:
                step(led, led.propose_reserve(4, T0), log=log)
            except QuotaExceededError as exc:
                assert exc.details["remaining"] == 0 and exc.details["limit"] == 10
                break
            continue
        served += 1
    assert served == 10 and [e.count for e in log[1:]] == [4, 4, 2]
    top = ISSUER.license(DEVICE, queries=5, previous=first.license_id)
    step(led, led.propose_license(top, T0 + 1), top, log)
    assert led.remaining == 5
    step(led, led.propose_reserve(64, T0 + 1), log=log)
    assert log[-1].count == 5
    assert verify_chain(log) == led.head


def test_licenses_for_another_device_or_model_or_not_chained_are_refused() -> None:
    led = fresh()
    other = Ed25519PrivateKey.generate()
    with pytest.raises(LicenseError, match="device") as e1:
        led.propose_license(ISSUER.license(other), T0)
    with pytest.raises(LicenseError, match="model") as e2:
        led.propose_license(ISSUER.license(DEVICE, model="other"), T0)
    with pytest.raises(LicenseError, match="tops up") as e3:
        led.propose_license(ISSUER.license(DEVICE, previous="ab" * 16), T0)
    assert [e.value.details["reason"] for e in (e1, e2, e3)] == ["other-device", "other-model", "broken-chain"]
    first = ISSUER.license(DEVICE)
    led.apply(led.propose_license(first, T0), first)
    with pytest.raises(LicenseError, match="tops up"):
        led.propose_license(ISSUER.license(DEVICE), T0)  # a second chain start is not a top-up


@pytest.mark.parametrize(("now", "reason"), [(T0 + 86400, "expired"), (T0 + 10**6, "expired")])
def test_outside_the_window_is_refused(now: float, reason: str) -> None:
    led = fresh()
    lic = ISSUER.license(DEVICE)
    led.apply(led.propose_license(lic, T0 - 3600), lic)
    led.apply(led.propose_reserve(8, T0 - 3600))
    with pytest.raises(LicenseExpiredError) as info:
        led.authorize(now)
    assert info.value.details["reason"] == reason
    assert led.block_remaining == 8  # nothing debited for a refused call


def test_a_license_past_its_end_still_installs_so_the_top_up_extending_it_can_follow() -> None:
    """A device away longer than its license lasted learns, at one contact, the expired license and the
    top-up that extends it: both install (the chain stays one chain), and the queries left of the first
    are served in the top-up's window — as the server, which pools them, counts."""
    led = fresh()
    first = ISSUER.license(DEVICE, queries=10, valid_until=T0 + 100)
    top = ISSUER.license(DEVICE, queries=5, previous=first.license_id, valid_until=T0 + 10_000)
    away = T0 + 5000
    led.apply(led.propose_license(first, away), first)  # refused as expired before: the chain was stuck
    with pytest.raises(LicenseExpiredError, match="expired"):
        led.propose_reserve(4, away)  # its window is still enforced
    led.apply(led.propose_license(top, away), top)
    led.apply(led.propose_reserve(64, away))
    assert led.block_remaining == 15 and led.authorize(away)
    expired_top = ISSUER.license(DEVICE, queries=5, previous=top.license_id, valid_until=T0 + 200)
    led.apply(led.propose_license(expired_top, away + 1), expired_top)  # a top-up that ended installs too ...
    with pytest.raises(LicenseExpiredError, match="expired"):
        led.authorize(away + 1)  # ... and its window governs (the issuer's newest word)
    with pytest.raises(LicenseExpiredError, match="set back"):
        led.propose_license(ISSUER.license(DEVICE, previous=expired_top.license_id), away)  # the clock still counts


def test_a_license_installed_before_it_starts_refuses_until_then() -> None:
    led = fresh()
    lic = ISSUER.license(DEVICE, valid_from=T0 + 100)
    led.apply(led.propose_license(lic, T0), lic)
    with pytest.raises(LicenseExpiredError) as info:
        led.propose_reserve(8, T0 + 99)
    assert info.value.details["reason"] == "not-yet-valid"
    led.apply(led.propose_reserve(8, T0 + 100))
    assert led.authorize(T0 + 100)


def test_clock_set_back_before_the_last_entry_is_refused() -> None:
    led = fresh()
    lic = ISSUER.license(DEVICE)
    led.apply(led.propose_license(lic, T0), lic)
    led.apply(led.propose_reserve(8, T0 + 100))
    assert led.authorize(T0 + 100)
    with pytest.raises(LicenseExpiredError, match="set back") as info:
        led.authorize(T0 + 50)  # still inside the license window, but before the reservation
    assert info.value.details["reason"] == "clock-set-back"


def test_verify_chain_names_each_kind_of_tampering() -> None:
    led, log = fresh(), []
    lic = ISSUER.license(DEVICE, queries=20)
    step(led, led.propose_license(lic, T0), lic, log)
    for i in range(3):
        step(led, led.propose_reserve(5, T0 + i), log=log)
        while led.authorize(T0 + i):
            pass
    assert verify_chain(log) == led.head
    cases = {
        "broken-link": [*log[:1], dataclasses.replace(log[1], count=1), *log[2:]],
        "sequence-gap": log[:2] + log[3:],
        "counts": [*log[:1], dataclasses.replace(log[1], count=25, prev_hash=log[0].hash)],
        "time-backwards": [*log[:1], dataclasses.replace(log[1], at=T0 - 1)],
    }
    for reason, entries in cases.items():
        with pytest.raises(LedgerTamperedError) as info:
            verify_chain(entries)
        assert info.value.details["reason"] == reason


def test_replay_opens_no_block_so_a_crash_only_loses() -> None:
    led, log = fresh(), []
    lic = ISSUER.license(DEVICE, queries=100)
    step(led, led.propose_license(lic, T0), lic, log)
    step(led, led.propose_reserve(16, T0), log=log)
    for _ in range(3):
        assert led.authorize(T0)
    before = led.remaining
    after = Ledger.replay(key_id(DEVICE), "tiny", log, {lic.license_id: lic})
    assert after.head == led.head and after.block_remaining == 0
    assert before - after.remaining == 13  # the unused rest of the block, lost


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 0)),
        st.tuples(st.just("reserve"), st.integers(1, 20)),
        st.tuples(st.just("topup"), st.integers(1, 30)),
        st.tuples(st.just("crash"), st.integers(0, 0)),
        st.tuples(st.just("tick"), st.integers(-5, 50)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), OPS)
def test_any_operation_sequence_keeps_debited_within_licensed_and_the_chain_valid(first: int, ops) -> None:
    led, log, licenses, now, served = fresh(), [], {}, float(T0), 0
    lic = ISSUER.license(DEVICE, queries=first)
    licenses[lic.license_id] = lic
    step(led, led.propose_license(lic, now), lic, log)
    for op, n in ops:
        usable_before = led.remaining
        try:
            if op == "call":
                if led.authorize(now):
                    served += 1
            elif op == "reserve":
                if led.block_remaining:
                    with pytest.raises(UsageError, match="open block"):
                        led.propose_reserve(n, now)
                    continue
                step(led, led.propose_reserve(n, now), log=log)
            elif op == "topup":
                top = ISSUER.license(DEVICE, queries=n, previous=led.current.license_id)
                licenses[top.license_id] = top
                step(led, led.propose_license(top, now), top, log)
            elif op == "crash":
                led = Ledger.replay(key_id(DEVICE), "tiny", log, licenses)
                assert usable_before - led.remaining <= max([e.count for e in log if e.kind == "reserve"] + [0])
            else:
                now += n
        except (QuotaExceededError, LicenseExpiredError):
            pass
        assert led.remaining <= usable_before + (n if op == "topup" else 0)
        assert served <= led.reserved <= led.licensed
    assert verify_chain(log) == led.head


def test_apply_holds_a_stored_license_entry_to_the_rules_of_propose_license() -> None:
    """A chain rewritten by hand (every hash recomputed) cannot bring in a license propose_license
    would refuse: apply raises LedgerTamperedError with the same reason code."""
    first = ISSUER.license(DEVICE, queries=10)
    unchained = ISSUER.license(DEVICE, queries=10)  # starts a chain too: previous_license_id is None
    other_device = ISSUER.license(Ed25519PrivateKey.generate(), queries=10)
    for lic, reason in ((first, "duplicate"), (unchained, "broken-chain")):
        led = fresh()
        step(led, led.propose_license(first, T0), first)
        forged = dataclasses.replace(
            led.propose_license(ISSUER.license(DEVICE, previous=first.license_id), T0),
            license_id=lic.license_id,
            count=lic.queries,
            ref=lic.digest,
        )
        with pytest.raises(LedgerTamperedError) as info:
            led.apply(forged, lic, live=False)
        assert info.value.details["reason"] == reason and info.value.details["seq"] == 1
        assert led.licensed == 10
    led = fresh()
    entry = dataclasses.replace(
        led.propose_license(first, T0), license_id=other_device.license_id, ref=other_device.digest
    )
    with pytest.raises(LedgerTamperedError) as info:
        Ledger.replay(key_id(DEVICE), "tiny", [entry], {other_device.license_id: other_device})
    assert info.value.details["reason"] == "other-device"


def test_verify_chain_refuses_a_license_installed_twice() -> None:
    led, log = fresh(), []
    first = ISSUER.license(DEVICE, queries=10)
    step(led, led.propose_license(first, T0), first, log)
    again = dataclasses.replace(log[0], seq=1, prev_hash=log[0].hash)
    with pytest.raises(LedgerTamperedError) as info:
        verify_chain([log[0], again])
    assert info.value.details["reason"] == "duplicate-license" and info.value.details["seq"] == 1


def test_the_latest_license_sets_the_window_so_a_top_up_extends_or_shortens_it() -> None:
    """The rule (module doc): the window is the latest license's, whichever way it moves — the
    issuer's newest signed word governs, and the queries left of earlier licenses are served in it."""
    first = ISSUER.license(DEVICE, queries=10, valid_until=T0 + 100)
    for until, served_at, refused_at in ((T0 + 1000, T0 + 500, T0 + 1000), (T0 + 50, T0 + 49, T0 + 50)):
        led = fresh()
        led.apply(led.propose_license(first, T0), first)
        top = ISSUER.license(DEVICE, queries=10, previous=first.license_id, valid_until=until)
        led.apply(led.propose_license(top, T0), top)
        led.apply(led.propose_reserve(4, T0))
        assert led.authorize(served_at)  # inside the top-up's window (after the first's end when extended)
        with pytest.raises(LicenseExpiredError) as info:
            led.authorize(refused_at)  # at the top-up's end (before the first's end when shortened)
        assert info.value.details["reason"] == "expired" and info.value.details["valid_until"] == until
        assert led.block_remaining == 3  # the refused call took nothing


def test_a_call_before_any_license_is_refused_naming_the_model() -> None:
    with pytest.raises(QuotaExceededError, match="no license is installed for model 'tiny'") as info:
        fresh().propose_reserve(4, T0)
    assert info.value.details == {"reason": "no-license", "remaining": 0, "limit": 0, "license_id": None}

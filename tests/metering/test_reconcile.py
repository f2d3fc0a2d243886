"""The pure reconciliation (no database): linking, overlaps, gaps, forks, clones, license and count
checks, revocations — on hand-made chains and on chains written by the real pure ledger."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import T0
from reconcile_world import MODEL, Issuer, LedgerDevice, MemoryServer, issued, link, relink, report_of
from tinymlops.crypto.keys import key_id
from tinymlops.metering.reconcile import (
    ALERT_KINDS,
    FLAG_KINDS,
    FLAG_SEVERITY,
    Accepted,
    ChainSnapshot,
    Gap,
    IssuedRevocation,
    Refused,
    locate,
    reconcile,
    resume_after,
)
from tinymlops.spec.usage_report import GENESIS_HASH

ISSUER = Issuer()


def world(queries: int = 1000, *, block: int = 8) -> tuple[LedgerDevice, MemoryServer]:
    device = LedgerDevice(block=block)
    server = MemoryServer(device.device_id)
    lic = ISSUER.license(device.key, queries=queries)
    server.issue(lic)
    device.install(lic)
    return device, server


def test_flag_kinds_and_severities() -> None:
    assert set(FLAG_KINDS) == {"rollback", "clone", "tamper", "overuse", "revoked-use", "replay"}
    assert set(FLAG_KINDS) - {"replay"} == ALERT_KINDS
    assert FLAG_SEVERITY["replay"] == "info"


# --- honest reports ------------------------------------------------------------------------------
def test_consecutive_reports_are_accepted_and_move_the_head() -> None:
    device, server = world()
    device.serve(20)  # license + 3 blocks of 8
    first = server.send(device.report(0, 2))
    assert first.kind == "accepted" and first.next_seq == 2 and first.flags == ()
    second = server.send(device.report(2))
    assert second.kind == "accepted" and second.next_seq == 4
    assert server.next_seq == len(device.log) == 4
    assert server.head == (3, device.ledger.head)
    assert server.used == 24 == device.reserved
    top = server.branch_totals()
    assert top is not None and (top.totals.licensed, top.totals.reserved) == (1000, 24)


def test_a_resend_overlapping_stored_entries_stores_only_the_new_ones() -> None:
    device, server = world()
    device.serve(10)
    server.send(device.report(0, 2))
    device.serve(30)
    answer = server.send(device.report(0))  # 0..1 again, then new ones
    assert answer.kind == "accepted" and answer.flags == ()
    assert isinstance(answer.decision, Accepted) and [s.seq for s in answer.decision.new] == list(
        range(2, len(device.log))
    )
    assert server.used == device.reserved == 40
    assert server.next_seq == len(device.log)


def test_a_report_of_stored_entries_only_is_a_replay_counted_once() -> None:
    device, server = world()
    device.serve(30)
    server.send(device.report(0))
    used = server.used
    device.now += 5  # another created_at: another digest, the same entries
    answer = server.send(device.report(1, 3))
    assert answer.kind == "accepted" and [f.kind for f in answer.flags] == ["replay"]
    assert answer.flags[0].severity == "info"
    assert answer.next_seq == 3 < server.next_seq  # right after what the device showed, never past it
    assert server.used == used


def test_a_chain_must_be_reported_from_seq_zero() -> None:
    device, server = world()
    device.serve(20)
    answer = server.send(device.report(1))
    assert answer.kind == "gap" and answer.next_seq == 0
    assert server.send(device.report(0)).kind == "accepted"


def test_reordered_reports_are_a_gap_then_both_accepted_in_order() -> None:
    device, server = world()
    device.serve(40)
    early, late = device.report(0, 3), device.report(3)
    answer = server.send(late)
    assert answer.kind == "gap" and answer.next_seq == 0 and server.entries == {}
    assert isinstance(answer.decision, Gap) and "lost" in answer.decision.detail
    assert server.send(early).next_seq == 3
    assert server.send(late).next_seq == len(device.log)
    assert server.used == device.reserved and server.alerts == []


# --- rollback and clone ------------------------------------------------------------------------------
def test_a_restored_ledger_forks_the_chain_a_rollback_and_both_branches_are_billed() -> None:
    device, server = world()
    device.serve(40)  # 1 + 5 entries
    backup_len = 3
    server.send(device.report(0))
    restored = device.restored(backup_len)
    restored.serve(20)  # new entries at 3.. with fresh nonces: other hashes
    answer = server.send(restored.report(backup_len))
    assert answer.kind == "accepted" and [f.kind for f in answer.flags] == ["rollback"]
    assert answer.flags[0].seq == backup_len and "restored" in answer.flags[0].detail
    assert server.branches == 2 and server.current_branch == 1
    assert server.head == (len(restored.log) - 1, restored.ledger.head)
    billed = device.reserved + sum(e.count for e in restored.log[backup_len:] if e.kind == "reserve")
    assert server.used == billed  # the rolled-back usage is still counted
    top = server.branch_totals()
    assert top is not None and top.totals.reserved == restored.reserved


def test_a_fork_at_seq_zero_is_a_rollback_too() -> None:
    device, server = world()
    device.serve(8)
    server.send(device.report(0))
    other = LedgerDevice(device.key)  # a wiped ledger, the same license installed again
    other.install(device.licenses[device.log[0].license_id])
    other.serve(8)
    answer = server.send(other.report(0))
    assert [f.kind for f in answer.flags] == ["rollback"] and answer.flags[0].seq == 0


def test_two_copies_that_both_keep_reporting_are_a_clone_flagged_once_per_pair() -> None:
    device, server = world(block=4)
    device.serve(12)
    server.send(device.report(0))
    clone = device.restored(len(device.log))  # the whole device state copied
    device.serve(8)
    clone.serve(8)
    acked = {id(device): server.send(device.report(4)).next_seq}
    answer = server.send(clone.report(4))
    assert [f.kind for f in answer.flags] == ["rollback"]
    acked[id(clone)] = answer.next_seq
    for _ in range(3):  # they keep alternating: the first return to the old branch is a clone
        for d in (device, clone):
            d.serve(4)
            a = server.send(d.report(acked[id(d)]))
            assert a.kind == "accepted"
            acked[id(d)] = a.next_seq
    assert server.kinds() == ["rollback", "clone"]
    clone_flag = server.flags[1]
    assert clone_flag.severity == "alert" and "both in use" in clone_flag.detail
    assert server.used == device.reserved + sum(e.count for e in clone.log[4:] if e.kind == "reserve")
    assert server.branches == 2


def test_a_restored_device_reporting_from_the_servers_position_is_sent_back_until_it_links() -> None:
    device, server = world(block=4)
    device.serve(40)  # 11 entries
    server.send(device.report(0))
    restored = device.restored(5)
    restored.serve(60)  # longer than the server's chain now
    answer = server.send(restored.report(server.next_seq))
    assert answer.kind == "gap" and answer.next_seq == 0  # no known fork: from the start
    assert isinstance(answer.decision, Gap) and "left the stored chain" in answer.decision.detail
    answer = server.send(restored.report(answer.next_seq))
    assert answer.kind == "accepted" and [(f.kind, f.seq) for f in answer.flags] == [("rollback", 5)]


def test_an_unlinkable_report_is_sent_back_to_the_latest_known_fork() -> None:
    device, server = world(block=4)
    device.serve(40)
    server.send(device.report(0))
    first = device.restored(5)
    first.serve(40)
    server.send(first.report(5))  # fork at 5
    second = first.restored(9)
    second.serve(40)
    answer = server.send(second.report(12))
    assert answer.kind == "gap" and answer.next_seq == 5
    answer = server.send(second.report(5))
    assert answer.kind == "accepted" and [(f.kind, f.seq) for f in answer.flags] == [("rollback", 9)]


def test_a_replay_sends_the_device_on_right_after_it_whichever_branch_it_is_on() -> None:
    device, server = world(block=4)
    device.serve(20)  # entries 0..5
    server.send(device.report(0))
    a = device.restored(3)
    a.serve(12)
    server.send(a.report(3))  # A forks at 3 and is the current branch
    for d, start, end in ((device, 1, 3), (device, 4, 6), (a, 3, 5), (a, 0, 6)):
        report = d.report(start, end)
        assert resume_after(report) == end
        d.now += 1  # built anew: another digest, entries the server has
        answer = server.send(d.report(start, end))
        assert (answer.kind, answer.next_seq) == ("accepted", end)
        assert server.send(d.report(start, end)).next_seq == end  # the same bytes again: a duplicate


@pytest.mark.parametrize("rebuilt", [False, True])
def test_a_restored_ledger_forking_past_its_first_chunk_is_walked_to_its_fork(rebuilt: bool) -> None:
    """Chunks of stored entries must not send the device to the head of the other copy's chain:
    from there it does not link, the gap sends it back to 0, and it would go round for ever."""
    device, server = world(block=4)
    device.serve(40)  # entries 0..10
    for start in range(0, 11, 2):  # in chunks of 2, as the restored copy will send
        server.send(device.report(start, start + 2))
    restored = device.restored(5)
    restored.serve(60)  # forks at 5, longer than the server's chain
    if rebuilt:
        restored.now += 1  # its chunks are new bytes (201 replays), not the stored reports (409s)
    acked, answers = 0, []
    for _ in range(10):
        answer = server.send(restored.report(acked, acked + 2))
        answers.append((answer.kind, [f.kind for f in answer.flags]))
        acked = answer.next_seq
        if answer.kind == "accepted" and answer.flags and answer.flags[0].kind == "rollback":
            break
    replay = ("accepted", ["replay"]) if rebuilt else ("duplicate", ["replay"])
    assert answers == [replay, replay, ("accepted", ["rollback"])]
    assert [f.seq for f in server.flags if f.kind == "rollback"] == [5]


# --- license and count checks ------------------------------------------------------------------------------
def test_a_report_whose_license_is_not_its_last_entrys_or_never_issued_or_anothers_is_refused() -> None:
    device, server = world()
    device.serve(8)
    report = device.report(0)
    other = dataclasses.replace(report, license_id="ab" * 16)
    refused = locate(other, device.device_id, None)
    assert isinstance(refused, Refused) and refused.flag.kind == "tamper" and refused.reason == "report-license"
    refused = locate(report, device.device_id, None)
    assert isinstance(refused, Refused) and refused.reason == "unknown-license"
    lic = server.licenses[report.license_id]
    refused = locate(report, "0" * 16, lic)
    assert isinstance(refused, Refused) and refused.flag.kind == "clone" and refused.reason == "other-device"
    assert locate(report, device.device_id, lic) == MODEL


def _refusal(server: MemoryServer, entries) -> Refused:  # type: ignore[no-untyped-def]
    answer = server.send(report_of(server.device_id, entries))
    assert answer.kind == "refused", answer
    assert server.entries == {} or answer.decision is not None
    assert isinstance(answer.decision, Refused)
    return answer.decision


@pytest.mark.parametrize(
    ("mutate", "kind", "reason"),
    [
        ("unknown", "tamper", "unknown-license"),
        ("other-device", "clone", "other-device"),
        ("other-model", "tamper", "other-model"),
        ("digest", "tamper", "license-digest"),
        ("count", "tamper", "counts"),
        ("chain", "tamper", "license-chain"),
    ],
)
def test_license_entries_are_checked_against_what_was_issued(mutate: str, kind: str, reason: str) -> None:
    key = Ed25519PrivateKey.generate()
    server = MemoryServer(key_id(key))
    lic = ISSUER.license(key, queries=50)
    ref, lid, count = lic.digest, lic.license_id, 50
    if mutate == "unknown":
        lid = "cd" * 16
    elif mutate == "other-device":
        stranger = ISSUER.license(Ed25519PrivateKey.generate(), queries=50)
        server.issue(stranger)
        lid, ref = stranger.license_id, stranger.digest
    elif mutate == "other-model":
        lic = ISSUER.license(key, queries=50, model="other")
        lid, ref = lic.license_id, lic.digest
    elif mutate == "digest":
        ref = "00" * 32
    elif mutate == "count":
        count = 5000  # the forger grants himself more queries
    elif mutate == "chain":
        lic = ISSUER.license(key, queries=50, previous="ef" * 16)  # a top-up of nothing installed
        lid, ref = lic.license_id, lic.digest
    server.issue(lic)
    refusal = _refusal(server, link([("license", lid, count, ref), ("reserve", lid, 8)]))
    assert (refusal.flag.kind, refusal.reason, refusal.flag.seq) == (kind, reason, 0)
    assert server.entries == {} and server.used == 0 and server.kinds() == [kind]


def test_a_reservation_naming_a_license_not_in_force_or_dated_backwards_is_tamper() -> None:
    key = Ed25519PrivateKey.generate()
    server = MemoryServer(key_id(key))
    lic = ISSUER.license(key, queries=50)
    server.issue(lic)
    refusal = _refusal(server, link([("license", lic.license_id, 50, lic.digest), ("reserve", "ab" * 16, 8)]))
    assert (refusal.reason, refusal.flag.seq) == ("not-in-force", 1)
    entries = link([("license", lic.license_id, 50, lic.digest), ("reserve", lic.license_id, 8)])
    backwards = relink([entries[0], dataclasses.replace(entries[1], at=entries[0].at - 1)], GENESIS_HASH)
    refusal = _refusal(server, backwards)
    assert (refusal.reason, refusal.flag.seq) == ("time", 1)


def test_a_license_entry_edited_and_rehashed_is_caught_by_the_license_it_names() -> None:
    device, server = world(queries=40)
    device.serve(40)
    edited = relink([dataclasses.replace(device.log[0], count=4000), *device.log[1:]], GENESIS_HASH)
    refusal = _refusal(server, edited)
    assert refusal.reason == "counts" and "grants 40" in refusal.flag.detail


def test_reservations_beyond_the_licensed_queries_are_accepted_billed_and_flagged_overuse() -> None:
    key = Ed25519PrivateKey.generate()
    server = MemoryServer(key_id(key))
    lic = ISSUER.license(key, queries=20)
    server.issue(lic)
    lid = lic.license_id
    entries = link([("license", lid, 20, lic.digest), ("reserve", lid, 16), ("reserve", lid, 16), ("reserve", lid, 8)])
    answer = server.send(report_of(server.device_id, entries))
    assert answer.kind == "accepted" and [(f.kind, f.seq) for f in answer.flags] == [("overuse", 2)]
    assert "20 calls beyond the 20" in answer.flags[0].detail
    assert server.used == 40


def test_a_top_up_adds_to_the_branch_and_must_follow_the_license_in_force() -> None:
    key = Ed25519PrivateKey.generate()
    server = MemoryServer(key_id(key))
    root = ISSUER.license(key, queries=10)
    top = ISSUER.license(key, queries=10, previous=root.license_id)
    server.issue(root)
    server.issue(top)
    entries = link(
        [
            ("license", root.license_id, 10, root.digest),
            ("reserve", root.license_id, 10),
            ("license", top.license_id, 10, top.digest),
            ("reserve", top.license_id, 10),
        ]
    )
    answer = server.send(report_of(server.device_id, entries))
    assert answer.kind == "accepted" and answer.flags == ()
    totals = server.branch_totals()
    assert totals is not None and (totals.totals.licensed, totals.totals.reserved) == (20, 20)
    # the same top-up installed twice: it no longer tops up the license in force
    again = link([("license", top.license_id, 10, top.digest)], start=4, prev=entries[-1].hash, at=T0 + 10)
    assert _refusal(server, again).reason == "license-chain"


# --- revocations ------------------------------------------------------------------------------
def _revoked_world(delivered_at: float | None = None) -> tuple[MemoryServer, list, object, str]:  # type: ignore[type-arg]
    key = Ed25519PrivateKey.generate()
    server = MemoryServer(key_id(key))
    lic = ISSUER.license(key, queries=50)
    server.issue(lic)
    digest = "5e" * 32  # the revocation's digest (its bytes do not matter here)
    server.revocations[lic.license_id] = IssuedRevocation(lic.license_id, digest, 0, delivered_at)
    entries = link([("license", lic.license_id, 50, lic.digest), ("reserve", lic.license_id, 16)])
    return server, entries, lic, digest


def test_a_revoke_entry_forfeiting_what_was_left_is_accepted_and_freezes_the_branch() -> None:
    server, entries, lic, digest = _revoked_world()
    revoke = link([("revoke", lic.license_id, 34, digest)], start=2, prev=entries[-1].hash, at=T0 + 5)
    answer = server.send(report_of(server.device_id, entries + revoke))
    assert answer.kind == "accepted" and answer.flags == ()
    head = server.branch_totals()
    assert head is not None and head.totals.revoked and head.totals.forfeited == 34 and head.totals.available == 0
    # a reservation after it (a patched device): revoked-use, not also overuse; still billed
    more = link([("reserve", lic.license_id, 8)], start=3, prev=revoke[-1].hash, at=T0 + 6)
    answer = server.send(report_of(server.device_id, more))
    assert [(f.kind, f.seq) for f in answer.flags] == [("revoked-use", 3)]
    assert server.used == 24


def test_a_top_up_of_the_revoked_license_reinstates_the_branch() -> None:
    server, entries, lic, digest = _revoked_world()
    top = ISSUER.license(Ed25519PrivateKey.generate(), queries=30, previous=lic.license_id)
    key_device = lic.device_id
    top = dataclasses.replace(top, device_id=key_device, device_public_key=lic.device_public_key)
    server.issue(top)
    tail = link(
        [
            ("revoke", lic.license_id, 34, digest),
            ("license", top.license_id, 30, top.digest),
            ("reserve", top.license_id, 30),
        ],
        start=2,
        prev=entries[-1].hash,
        at=T0 + 5,
    )
    answer = server.send(report_of(server.device_id, entries + tail))
    assert answer.kind == "accepted" and answer.flags == ()
    head = server.branch_totals()
    assert head is not None and (head.totals.licensed, head.totals.reserved, head.totals.forfeited) == (80, 46, 34)
    assert not head.totals.revoked and head.totals.available == 0


def test_a_top_up_installed_without_the_revocation_before_it_is_revoked_use() -> None:
    """A device that skips the revocation (patched, or the revocation stripped from its licenses
    answer) pools the revoked license's 34 remaining queries with the top-up's 30: accepted, billed,
    flagged — the honest chain above (revoke entry first) is not."""
    server, entries, lic, _ = _revoked_world()
    top = ISSUER.license(Ed25519PrivateKey.generate(), queries=30, previous=lic.license_id)
    top = dataclasses.replace(top, device_id=lic.device_id, device_public_key=lic.device_public_key)
    server.issue(top)
    tail = link(
        [("license", top.license_id, 30, top.digest), ("reserve", top.license_id, 64)],
        start=2,
        prev=entries[-1].hash,
        at=T0 + 5,
    )
    answer = server.send(report_of(server.device_id, entries + tail))
    assert answer.kind == "accepted"
    assert [(f.kind, f.seq, f.license_id) for f in answer.flags] == [("revoked-use", 2, top.license_id)]
    assert "without the revocation" in answer.flags[0].detail and "34 queries" in answer.flags[0].detail
    assert server.used == 16 + 64  # billed all the same


@pytest.mark.parametrize(
    ("specs", "reason"),
    [
        ([("revoke", "L", 34, "bad")], "revocation-digest"),
        ([("revoke", "L", 33, "D")], "counts"),
        ([("revoke", "L", 34, "D"), ("revoke", "L", 0, "D")], "revoked-twice"),
        ([("revoke", "ab" * 16, 34, "D")], "not-in-force"),
    ],
)
def test_revoke_entries_that_do_not_match_the_servers_revocation_are_tamper(specs, reason: str) -> None:  # type: ignore[no-untyped-def]
    server, entries, lic, digest = _revoked_world()
    subst = {"L": lic.license_id, "D": digest, "bad": "00" * 32}
    tail = link(
        [tuple(subst.get(x, x) if isinstance(x, str) else x for x in spec) for spec in specs],
        start=2,
        prev=entries[-1].hash,
        at=T0 + 5,
    )
    refusal = _refusal(server, entries + tail)
    assert refusal.flag.kind == "tamper" and refusal.reason == reason


def test_a_revoke_entry_for_a_license_never_revoked_is_tamper() -> None:
    server, entries, lic, digest = _revoked_world()
    server.revocations.clear()
    tail = link([("revoke", lic.license_id, 34, digest)], start=2, prev=entries[-1].hash, at=T0 + 5)
    assert _refusal(server, entries + tail).reason == "revocation-digest"


def test_reservations_dated_after_the_revocation_reached_the_device_are_revoked_use() -> None:
    delivered = T0 + 1000.0
    server, entries, lic, _ = _revoked_world(delivered_at=delivered)
    assert server.send(report_of(server.device_id, entries)).flags == ()  # written before: fine
    lid = lic.license_id
    within_grace = link([("reserve", lid, 8)], start=2, prev=entries[-1].hash, at=int(delivered) + 10)
    assert server.send(report_of(server.device_id, within_grace)).flags == ()
    late = link([("reserve", lid, 8)], start=3, prev=within_grace[-1].hash, at=int(delivered) + 301)
    answer = server.send(report_of(server.device_id, late))
    assert [(f.kind, f.seq, f.license_id) for f in answer.flags] == [("revoked-use", 3, lid)]
    assert server.used == 32  # billed all the same


def test_a_revocation_not_delivered_yet_flags_nothing() -> None:
    server, entries, lic, _ = _revoked_world(delivered_at=None)
    late = link([("reserve", lic.license_id, 8)], start=2, prev=entries[-1].hash, at=T0 + 10**6)
    assert server.send(report_of(server.device_id, entries + late)).flags == ()


def test_the_snapshot_must_cover_the_entry_before_the_report() -> None:
    device, _ = world()
    device.serve(20)
    snap = ChainSnapshot(device_id=device.device_id, model=MODEL, window_start=3)
    with pytest.raises(ValueError, match="window"):
        reconcile(snap, device.report(2))


def test_issued_license_positions_follow_the_chain() -> None:
    key = Ed25519PrivateKey.generate()
    root = ISSUER.license(key)
    assert issued(root, 0).position == 0 and issued(root, 0).digest == root.digest

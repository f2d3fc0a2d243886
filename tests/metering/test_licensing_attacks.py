"""Attacks on pay-per-query, against LicenseService on SQLite and PostgreSQL with real device
ledgers: each is refused or flagged, the counts stay right, nothing is counted twice.

Restored ledger (with its monotonic counter restored too: the device cannot tell), a cloned device
(ledger and key copied), edited and re-signed reports, a report signed by another device's key, a
license entry for a license never issued or issued to another device, a replayed report, reordered
reports, use after a revocation reached the device."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from licensing_world import DAY, MODEL, MeteredDevice, licensing
from metering_world import T0
from reconcile_world import link, relink
from tinymlops.crypto.signing import sign
from tinymlops.errors import (
    DuplicateReportError,
    LicenseError,
    PayloadTooLargeError,
    ReportGapError,
    SignatureError,
    SpecError,
    UnsupportedVersionError,
)
from tinymlops.metering.license_signing import USAGE_REPORT_DOMAIN, SignedUsageReport
from tinymlops.metering.licensing import ReportResult
from tinymlops.metering.schema import LicenseRevocationRow, UsageReportRow
from tinymlops.spec.license import License
from tinymlops.spec.usage_report import MAX_REPORT_BYTES, UsageReport


@pytest.fixture
def plane(workspace):  # type: ignore[no-untyped-def]
    service, issuer, clock = licensing(workspace)
    return workspace, service, issuer, clock


def _licensed(plane, tmp_path: Path, name: str = "dev", queries: int = 1000, block: int = 4) -> MeteredDevice:  # type: ignore[no-untyped-def]
    ws, service, issuer, clock = plane
    device = MeteredDevice(ws, service, issuer, clock, tmp_path / name, block=block)
    service.issue(device_id=device.id, model=MODEL, queries=queries, valid_until=T0 + 30 * DAY)
    device.sync()
    return device


def _entries(device: MeteredDevice, since: int = 0) -> list:  # type: ignore[type-arg]
    return list(UsageReport.from_bytes(device.report(since).data).entries)


def _signed(device: MeteredDevice, entries, key: Ed25519PrivateKey | None = None, **change) -> SignedUsageReport:  # type: ignore[no-untyped-def]
    report = UsageReport.build(device_id=device.id, entries=entries, block_remaining=0, created_at=T0)
    if change:
        report = dataclasses.replace(report, **change)
    return _raw_sign(report, key or device.keys.signing)


def _raw_sign(report: UsageReport, key: Ed25519PrivateKey) -> SignedUsageReport:
    data = report.to_bytes()
    return SignedUsageReport(data, sign(key, USAGE_REPORT_DOMAIN + data))


def _used(service, device: MeteredDevice) -> int:  # type: ignore[no-untyped-def]
    return service.chains(device_id=device.id)[0].reserved


def _kinds(service, device: MeteredDevice) -> list[str]:  # type: ignore[no-untyped-def]
    """The device's flags, oldest first, each as many times as it was raised."""
    return [f.kind for f in reversed(service.audit(device_id=device.id)) for _ in range(f.repeats)]


# --- a restored ledger -----------------------------------------------------------------------------
def test_a_restored_backup_of_the_ledger_and_its_counter_is_caught_as_a_rollback(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(10)  # 12 reserved
    device.flush()
    backup = device.backup(tmp_path / "backup")
    acked_then = device.acked
    device.serve(20)  # 20 more, reported: the server holds them
    device.flush()
    assert _used(service, device) == 32
    device.restore(backup)  # opens fine: the counter went back with it
    assert device.meter.next_seq == acked_then
    device.acked = acked_then  # the agent's state went back too
    device.serve(8)
    [result] = device.flush()
    assert isinstance(result, ReportResult)
    assert [(f.kind, f.severity, f.seq) for f in result.flags] == [("rollback", "alert", acked_then)]
    # both branches are billed: 12 + 20 (the lost branch) + 8 (the restored one)
    [chain] = service.chains(device_id=device.id)
    assert (chain.reserved, chain.branches, chain.alerts) == (40, 2, 1)
    view = service.get(chain.root_license_id)
    assert (view.chain_used, view.chain_remaining, view.alerts) == (40, 1000 - 20, 1)
    device.close()


def test_a_restored_ledger_reporting_from_the_servers_position_is_sent_back_and_caught(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(4)
    device.flush()
    backup = device.backup(tmp_path / "backup")
    device.serve(16)
    device.flush()
    server_at = device.acked
    device.restore(backup)
    device.serve(40)  # longer than the server's chain now
    answers = device.flush()  # from the server's position: does not link, sent back to 0, then caught
    assert isinstance(answers[0], ReportGapError) and answers[0].next_seq == 0 and answers[0].first_seq == server_at
    assert [f.kind for f in answers[1].flags] == ["rollback"]  # type: ignore[union-attr]
    assert _used(service, device) == 4 + 16 + 40
    assert _kinds(service, device) == ["rollback"]
    device.close()


def test_a_restored_ledger_forking_past_its_first_report_chunk_is_still_caught(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The restored copy reports from 0 in chunks (the agent's 4,096 entries; 3 here), and its fork
    lies past the first chunk: every chunk before it holds entries the server has. The server must
    answer such a chunk with the seq right after it — not with the head of the chain the *other*
    copy reported, which this ledger does not hold: from there the report does not link, the gap
    sends it back to 0, and the fork (and the usage on it) is never reported."""
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(8)  # license + 2 reservations: seq 0..2
    device.flush()
    backup = device.backup(tmp_path / "backup")
    device.serve(40)  # 10 more reservations, reported: the server's chain reaches seq 12
    device.flush()
    device.restore(backup)
    device.serve(60)  # the restored copy writes 15 reservations from seq 3 on: its chain forks at 3
    device.acked = 0  # neither the server's position nor a remembered one is on this ledger
    answers = device.flush(limit=3)
    # seq 0..2 are the very bytes the device sent before the backup: already counted, go on at 3
    assert isinstance(answers[0], DuplicateReportError) and answers[0].next_seq == 3
    assert isinstance(answers[1], ReportResult) and [(f.kind, f.seq) for f in answers[1].flags] == [("rollback", 3)]
    assert _used(service, device) == 8 + 40 + 60  # both branches billed
    assert _kinds(service, device) == ["replay", "rollback"]
    device.close()


# --- a cloned device --------------------------------------------------------------------------------
def test_a_ledger_and_key_copied_to_a_second_device_is_flagged_as_a_clone_and_both_are_billed(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(8)
    device.flush()
    twin = device.clone_to(tmp_path / "twin")
    for _ in range(3):
        for d in (device, twin):
            d.serve(6)
            d.flush()
    assert _kinds(service, device) == ["rollback", "clone"]
    [chain] = service.chains(device_id=device.id)
    # 8 before the copy, then each served 18 in blocks of 4: 20 reserved each
    assert (chain.reserved, chain.branches, chain.alerts) == (8 + 20 + 20, 2, 2)
    clone_flag = service.audit(kind="clone")[0]
    assert clone_flag.severity == "alert" and clone_flag.model == MODEL and clone_flag.report_id is not None
    # each copy, resending what the server has, is told where its own branch ends
    twin.serve(8)
    twin.flush()  # the twin's branch is the current one, and longer
    assert twin.meter.next_seq > device.meter.next_seq
    for d in (twin, device):
        d.clock.now += 1  # a report built anew: another digest, entries the server has
        again = d.report(d.acked - 2)
        result = d.post(again)
        assert [f.kind for f in result.flags] == ["replay"] and result.next_seq == d.meter.next_seq
        with pytest.raises(DuplicateReportError) as dup:  # the very same bytes again
            d.post(again)
        assert dup.value.next_seq == d.meter.next_seq
    assert service.chains(device_id=device.id)[0].reserved == 56  # nothing counted twice
    device.close()
    twin.close()


# --- edited and forged reports -------------------------------------------------------------------
def test_edited_counts_re_signed_by_the_device_are_refused_and_flagged_tamper(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path, queries=40)
    device.serve(20)
    entries = _entries(device)
    # the report's sum edited
    with pytest.raises(SpecError, match="add up"):
        device.post(_signed(device, entries, reserved=4))
    # one reservation edited, the hashes left: the chain breaks
    broken = [entries[0], dataclasses.replace(entries[1], count=1), *entries[2:]]
    report = UsageReport(
        device_id=device.id,
        license_id=entries[-1].license_id,
        first_seq=0,
        last_seq=len(broken) - 1,
        head_before=entries[0].prev_hash,
        head_after=entries[-1].hash,
        licensed=40,
        reserved=sum(e.count for e in broken if e.kind == "reserve"),
        block_remaining=0,
        entries=tuple(broken),
        created_at=T0,
    )
    with pytest.raises(SpecError, match="does not link"):
        device.post(_raw_sign(report, device.keys.signing))
    # the license entry's queries edited and every hash recomputed: the license says otherwise
    rehashed = relink([dataclasses.replace(entries[0], count=4000), *entries[1:]], entries[0].prev_hash)
    with pytest.raises(LicenseError, match="grants 40") as exc:
        device.post(_signed(device, rehashed))
    assert exc.value.details["flag"] == "tamper" and exc.value.details["reason"] == "counts"
    flags = service.audit(device_id=device.id)
    # the two that do not parse are not tied to a chain: one row, raised twice; the third is on the chain
    assert [(f.kind, f.repeats) for f in flags] == [("tamper", 1), ("tamper", 2)]
    assert flags[0].model == MODEL and flags[0].seq == 0 and flags[1].model is None
    [chain] = service.chains(device_id=device.id)
    assert (chain.reserved, chain.next_seq, chain.reports) == (0, 0, 0)  # nothing of them stored
    assert isinstance(device.send(0), ReportResult) and _used(service, device) == 20  # the honest one still is
    device.close()


def test_a_report_signed_with_another_devices_key_is_refused_and_flagged(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    other = _licensed(plane, tmp_path, "other")
    device.serve(4)
    other.serve(4)
    forged = _signed(device, _entries(device), key=other.keys.signing)  # names the device, other's key
    with pytest.raises(SignatureError, match="does not verify"):
        device.post(forged)
    with pytest.raises(SignatureError, match="claims device"):
        device.post(other.report(0))  # other's own report, sent as the device
    assert _kinds(service, device) == ["tamper", "tamper"] and _kinds(service, other) == []
    assert _used(service, device) == 0
    device.close()
    other.close()


def test_a_license_entry_for_a_license_never_issued_or_issued_to_another_device_is_refused(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    other = _licensed(plane, tmp_path, "other")
    device.serve(4)
    device.flush()
    entries = _entries(device)
    head = entries[-1]
    current = entries[0].license_id
    never = License(
        license_id="ab" * 16,
        device_id=device.id,
        device_public_key=device.record.signing_public.hex(),
        model=MODEL,
        queries=10**6,
        valid_from=T0,
        valid_until=T0 + DAY,
        issued_at=T0,
        issuer_key_id=service.issuer_key_id,
        previous_license_id=current,
    )
    forged = link(
        [("license", never.license_id, never.queries, never.digest), ("reserve", never.license_id, 1000)],
        start=head.seq + 1,
        prev=head.hash,
        at=head.at,
    )
    with pytest.raises(LicenseError, match="never issued") as exc:
        device.post(_signed(device, forged))
    assert exc.value.details["flag"] == "tamper"
    theirs = service.list(device_id=other.id)[0]
    stolen = link(
        [("license", theirs.license_id, theirs.queries, "00" * 32), ("reserve", theirs.license_id, 4)],
        start=head.seq + 1,
        prev=head.hash,
        at=head.at,
    )
    with pytest.raises(LicenseError, match=f"issued to device {other.id}") as exc:
        device.post(_signed(device, stolen))
    assert exc.value.details["flag"] == "clone"
    assert _kinds(service, device) == ["tamper", "clone"]
    # the owner of the license sees it on its chain
    [flag] = service.audit(license_id=theirs.license_id)
    assert (flag.kind, flag.device_id, flag.license_id) == ("clone", device.id, theirs.license_id)
    assert service.get(theirs.license_id).alerts == 1 and _kinds(service, other) == []
    assert _used(service, device) == 4 and service.chains(device_id=device.id)[0].next_seq == 2
    device.close()
    other.close()


# --- replayed and reordered reports ------------------------------------------------------------------
def test_a_replayed_report_is_a_409_counted_once_and_an_info_flag(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(8)
    old = device.report(0)
    device.post(old)
    device.serve(8)
    device.send(2)
    with pytest.raises(DuplicateReportError) as exc:
        device.post(old)
    # already counted: go on right after it (what the device showed; the server's head is further)
    assert exc.value.details["digest"] == exc.value.digest and exc.value.next_seq == 3
    assert service.chains(device_id=device.id)[0].next_seq == device.meter.next_seq == 5
    assert _used(service, device) == 16
    [flag] = service.audit(device_id=device.id)
    assert (flag.kind, flag.severity, flag.seq) == ("replay", "info", 0)
    assert service.chains(device_id=device.id)[0].alerts == 0
    device.close()


def test_a_report_of_entries_already_stored_does_not_store_them_again(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A replay rebuilt with another created_at (another digest) is accepted as a 201 replay — but its
    bytes repeat entries whose signed words are kept already: its row keeps no body, so resending a
    long chain (a forked device walked back from 0 sends it again chunk by chunk) stores nothing
    twice. Its digest is kept: the same bytes again are a 409."""
    ws, service, _, clock = plane
    device = _licensed(plane, tmp_path)
    device.serve(64)  # 17 entries
    first = device.report(0)
    device.post(first)
    clock.now += 1
    again = device.report(0)
    assert again.data != first.data
    result = device.post(again)
    assert [f.kind for f in result.flags] == ["replay"] and result.next_seq == 17
    with ws.engine.connect() as conn:
        bodies = dict(conn.execute(select(UsageReportRow.id, UsageReportRow.body)).all())
    assert len(bodies) == 2 and bytes(bodies[result.report_id]) == b""
    assert bytes(bodies[min(bodies)]) == first.data  # the report that brought the entries keeps its bytes
    with pytest.raises(DuplicateReportError):
        device.post(again)
    assert _used(service, device) == 64
    device.close()


def test_reordered_reports_are_a_gap_then_accepted_in_order(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(16)
    early, late = device.report(0, limit=3), device.report(3)
    with pytest.raises(ReportGapError) as exc:
        device.post(late)
    assert (exc.value.first_seq, exc.value.next_seq) == (3, 0)
    assert service.chains(device_id=device.id)[0].reports == 0
    assert device.post(early).next_seq == 3
    assert device.post(late).next_seq == 5
    assert _used(service, device) == 16 and service.audit(device_id=device.id) == []
    device.close()


# --- revocations ------------------------------------------------------------------------------
def test_use_after_the_revocation_reached_a_patched_device_is_flagged_revoked_use(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, clock = plane
    device = _licensed(plane, tmp_path)
    device.serve(4)
    device.flush()
    clock.now = T0 + 100
    service.revoke(device.meter.current_license_id, reason="stolen")
    device.sync(revocations=False)  # sent at T0 + 100; this device ignores it
    clock.now = T0 + 120  # still within the grace: a block written while fetching
    device.serve(4)
    [result] = device.flush()  # its report confirms the delivery at T0 + 100
    assert result.flags == ()  # type: ignore[union-attr]
    clock.now = T0 + 200
    device.sync(revocations=False)  # sent again: a delivery once confirmed does not move
    assert _delivered(plane) == T0 + 100
    clock.now = T0 + 100 + 301
    device.serve(8)
    [result] = device.flush()
    assert [f.kind for f in result.flags] == ["revoked-use"]  # type: ignore[union-attr]
    assert result.revoked == (device.meter.current_license_id,)  # type: ignore[union-attr]
    assert _used(service, device) == 16  # billed all the same
    device.close()


def test_an_honest_device_whose_answer_carrying_a_revocation_was_lost_is_not_flagged(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A revocation served in an answer the device never got (the connection dropped) has not reached
    it: the device serves on, honestly, until its next contact gets the revocation — then writes the
    revoke entry and reports. Its reservations in between are no revoked-use: the server counts a
    revocation as delivered when the device reports after having been sent it (the agent reports only
    after it has installed what it fetched), from the last time it was sent."""
    _, service, _, clock = plane
    device = _licensed(plane, tmp_path)
    device.serve(4)
    device.flush()
    clock.now = T0 + 100
    service.revoke(device.meter.current_license_id, reason="chargeback")
    service.for_device(device.id, model=MODEL)  # served; the answer is lost on the way
    clock.now = T0 + 100 + 3600  # an hour offline, serving as it may
    device.serve(40)
    clock.now += 60
    assert device.sync()[1] == [device.meter.current_license_id]  # the next contact: revoked on the device
    assert _delivered(plane) is None  # sent twice, reported after neither yet
    [result] = device.flush()
    assert result.flags == () and result.revoked == (device.meter.current_license_id,)  # type: ignore[union-attr]
    assert _delivered(plane) == T0 + 100 + 3660  # the sending the report came after
    assert _kinds(service, device) == [] and _used(service, device) == 44
    device.close()


def test_a_device_forking_its_chain_over_and_over_adds_one_flag_row(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Forks cost a hostile device nothing: a license entry at seq 0 with a fresh nonce is a new
    branch each time (no reservation: nothing billed). Every entry is kept — they are the device's
    signed word — but the rollback flags of one device on one chain within the window are one row."""
    _, service, _, clock = plane
    device = _licensed(plane, tmp_path)
    device.serve(4)
    device.flush()
    [install] = [e for e in _entries(device) if e.kind == "license"]
    for i in range(30):
        clock.now += 1
        fork = dataclasses.replace(install, nonce=f"{i:016x}")
        result = device.post(_signed(device, [fork]))
        assert [f.kind for f in result.flags] == ["rollback"]
    flags = service.audit(device_id=device.id, limit=1000)
    assert [(f.kind, f.repeats) for f in flags] == [("rollback", 30)], f"{len(flags)} rows for 30 forks"
    [chain] = service.chains(device_id=device.id)
    assert (chain.branches, chain.alerts, chain.reserved) == (31, 1, 4)
    device.close()


def _delivered(plane) -> float | None:  # type: ignore[no-untyped-def]
    with plane[0].engine.connect() as conn:
        return conn.scalar(select(LicenseRevocationRow.delivered_at))


# --- bodies and headers --------------------------------------------------------------------------------
def test_bad_bodies_and_headers(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    device = _licensed(plane, tmp_path)
    device.serve(4)
    good = device.report(0)
    with pytest.raises(SignatureError, match="missing"):
        service.ingest_report(device.record, good.data, None)
    with pytest.raises(SignatureError, match="128 lowercase hex"):
        service.ingest_report(device.record, good.data, "AB" * 64)
    with pytest.raises(PayloadTooLargeError):
        service.ingest_report(device.record, b" " * (MAX_REPORT_BYTES + 1), good.signature.hex())
    assert service.audit() == []  # none of those is the device's signed word
    newer = json.dumps({**json.loads(good.data), "spec_version": "2.0"}).encode()
    with pytest.raises(UnsupportedVersionError):
        service.ingest_report(device.record, newer, sign(device.keys.signing, USAGE_REPORT_DOMAIN + newer).hex())
    assert service.audit() == []  # a newer device is not a tampering one
    garbage = b'{"not": "a report"}'
    with pytest.raises(SpecError):
        service.ingest_report(device.record, garbage, sign(device.keys.signing, USAGE_REPORT_DOMAIN + garbage).hex())
    with pytest.raises(SignatureError):
        service.ingest_report(device.record, good.data, "00" * 64)
    assert _kinds(service, device) == ["tamper", "tamper"]
    assert service.audit(kind="tamper", license_id=device.meter.current_license_id) == []  # not tied to the chain
    device.close()


# --- flooding the flags table --------------------------------------------------------------------------
def test_a_device_repeating_refused_or_replayed_reports_adds_no_row_per_report(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each refused report (bad signature, junk, a forged entry, another device's license) and each
    replay is the device's signed word and is flagged — but as one row per (device, chain, kind)
    that counts its repeats, so a device cannot fill the flags table; after the coalescing window a
    new row starts (the operator sees each episode)."""
    _, service, _, clock = plane
    device = _licensed(plane, tmp_path)
    other = _licensed(plane, tmp_path, "other")
    device.serve(8)
    good = device.report(0)
    device.post(good)
    theirs = service.list(device_id=other.id)[0]
    head = _entries(device)[-1]
    stolen = link(
        [("license", theirs.license_id, theirs.queries, "00" * 32), ("reserve", theirs.license_id, 4)],
        start=head.seq + 1,
        prev=head.hash,
        at=head.at,
    )
    refused = {
        "signature": lambda i: service.ingest_report(device.record, good.data, f"{i:0128x}"),
        "junk": lambda i: service.ingest_report(
            device.record, b"[%d]" % i, sign(device.keys.signing, USAGE_REPORT_DOMAIN + b"[%d]" % i).hex()
        ),
        "stolen": lambda i: device.post(_signed(device, stolen)),
        "replay": lambda i: device.post(good),
    }
    for _ in range(25):
        clock.now += 1
        for send in refused.values():
            with pytest.raises((SignatureError, SpecError, LicenseError, DuplicateReportError)):
                send(_)
    flags = service.audit(device_id=device.id, limit=1000)
    assert len(flags) == 3, f"{len(flags)} rows for 100 refused or replayed reports"
    assert sorted((f.kind, f.repeats) for f in flags) == [("clone", 25), ("replay", 25), ("tamper", 50)], flags
    tamper = next(f for f in flags if f.kind == "tamper")
    assert (tamper.created_at, tamper.last_at) == (T0 + 1, T0 + 25)
    assert service.get(theirs.license_id).alerts == 1  # the owner's chain: one clone episode
    clock.now += 3601  # a new episode: a new row
    with pytest.raises(DuplicateReportError):
        device.post(good)
    replays = service.audit(device_id=device.id, kind="replay")
    assert [f.repeats for f in replays] == [1, 25]
    assert [f.to_dict()["repeats"] for f in replays] == [1, 25]
    device.close()
    other.close()

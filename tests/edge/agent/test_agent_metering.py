"""The agent's metering, end to end on the device side: a real metered bundle (its signed manifest enables
the metering policy) served by the real Runtime through the agent, a real SQLite ledger, licenses signed
with the workspace's release key, and the sync talking signed HTTP to a simulated control plane
(tests/simulators/licensing_server.py: the two device endpoints of the licensing contract, in memory).

Covered: the first contact installs the license; offline use until the quota is spent, then refused on
the device; reconnecting reports the usage and installs the top-up; a lost 201 (the same bytes resent ->
409 duplicate -> carry on); a gap (the server lost entries: it says where to resend from); a revocation
(refused until a top-up of it); forged and misaddressed documents refused while the genuine ones install;
the server down (nothing lost, all sent later); reports in chunks; a restored ledger reported from 0 so the
server sees the fork; bundles without the metering policy untouched."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from metering_testbed import (  # noqa: F401 (fixtures)
    EVERY_CYCLE,
    OFFLINE,
    ONLINE,
    Device,
    MeteredBundles,
    X,
    device_fixture,
    installed,
    metered_bundles_fixture,
    server_fixture,
)

from metering_world import Clock
from simulators.licensing_server import LICENSES_PATH, USAGE_PATH, LicensingServer
from tinymlops.crypto.keys import DeviceKeys, key_id
from tinymlops.edge.agent import SyncOutcome
from tinymlops.edge.agent.metering import METERING_DIR, STATE_FILE
from tinymlops.errors import (
    InvalidInputError,
    LicenseRevokedError,
    QuotaExceededError,
    ServerRequestError,
)
from tinymlops.metering import bind_metering, metering_bound
from tinymlops.metering.license_signing import LICENSE_DOMAIN, REVOCATION_DOMAIN, sign_license
from tinymlops.spec.license import Revocation
from tinymlops.spec.usage_report import UsageReport


def test_first_contact_offline_quota_then_reconnect_reports_and_installs_the_top_up(device: Device) -> None:
    lic = installed(device, 10)  # the license was sold before the device's first contact
    active = device.agent.state.active_bundle.bundle_id
    device.context = OFFLINE
    requests_before = len(device.server.requests)
    served, refusals = device.serve(14)
    assert served == 10 and len(refusals) == 4  # refused on the device, with no network
    assert all(isinstance(r, QuotaExceededError) and r.details["remaining"] == 0 for r in refusals)
    assert device.agent.run_once().action == "offline"
    assert len(device.server.requests) == requests_before  # offline: nothing was sent
    assert device.agent.state.active_bundle.bundle_id == active  # refusals never roll the bundle back

    top = device.server.top_up(lic.license_id, 5)  # sold while the device was away
    device.context = ONLINE
    outcome = device.cycle()
    assert outcome.installed == (top.license_id,) and outcome.ok and outcome.reports >= 1
    chain = device.server.chain(device.device_id, "tiny")
    assert chain.reserved() == 10  # every prepaid query used is now known to the server
    served, refusals = device.serve(6)
    assert served == 5 and len(refusals) == 1
    device.cycle()
    device.assert_server_has_the_whole_chain()
    assert chain.reserved() == 15 and device.sync.acknowledged()["tiny"] == (device.meter.next_seq, chain.head)


def test_a_device_away_past_its_licenses_end_takes_it_and_the_top_up_extending_it(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    """Sold a 6-query license that ran out of time before the device's first contact, then topped up
    with 4 more and a new end: both install (before, the first was refused as expired and the top-up
    as not chained — the chain could never be used again), and all 10 queries are served."""
    clock = Clock(time.time())
    dev = Device(tmp_path, metered_bundles, server, agent_kw={"clock": clock})
    try:
        lic = server.issue(dev.device_id, "tiny", 6, valid_until=int(clock.now) + 100)
        top = server.top_up(lic.license_id, 4, valid_until=int(clock.now) + 86400)
        clock.now += 1000  # the first contact comes after the first license ended
        dev.offer("m1")
        outcome = dev.cycle()
        assert outcome.installed == (lic.license_id, top.license_id) and outcome.ok, outcome.refused
        served, refusals = dev.serve(12)
        assert served == 10 and len(refusals) == 2
    finally:
        dev.close()


def test_a_lost_answer_is_resent_byte_for_byte_and_the_duplicate_409_moves_on(device: Device) -> None:
    installed(device, 50)
    device.serve(6)
    device.server.lose_responses(1)
    outcome = device.cycle()
    assert outcome.reports == 0 and "ServerUnreachableError" in outcome.errors[0]  # it never saw the answer
    chain = device.server.chain(device.device_id, "tiny")
    assert len(chain.reports) == 2  # ... but the server took it
    outcome = device.cycle()
    assert outcome.duplicates == 1 and outcome.ok and outcome.reports == 0
    assert device.server.usage_bodies[-1] == device.server.usage_bodies[-2]  # the same bytes again
    assert device.server.statuses(USAGE_PATH)[-1] == 409
    assert len(chain.reports) == 2 and chain.reserved() == 8  # counted once
    assert device.sync.acknowledged()["tiny"][0] == device.meter.next_seq
    device.serve(5)
    assert device.cycle().reports == 1
    device.assert_server_has_the_whole_chain()


def test_a_gap_makes_the_device_resend_from_where_the_server_says(device: Device) -> None:
    installed(device, 100)
    device.serve(9)
    device.cycle()
    remembered = device.sync.acknowledged()["tiny"]
    assert remembered[0] == device.meter.next_seq == 4
    device.serve(8)
    device.server.forget(device.device_id, "tiny", from_seq=2)  # the server lost entries 2..3
    device.server.hide_chains = True  # so the device goes by its own memory (seq 4)
    outcome = device.cycle()
    assert outcome.gaps == 1 and outcome.ok and outcome.reports == 1
    assert device.server.statuses(USAGE_PATH)[-2:] == [409, 201]
    sent = UsageReport.from_bytes(device.server.usage_bodies[-1])
    assert sent.first_seq == 2  # resent from where the server said
    device.assert_server_has_the_whole_chain()


def test_a_revocation_refuses_until_a_top_up_of_it_is_installed(device: Device) -> None:
    lic = installed(device, 20)
    device.serve(5)  # two blocks of 4 reserved
    device.cycle()
    device.server.revoke(lic.license_id, "chargeback")
    outcome = device.cycle()
    assert outcome.revoked == (lic.license_id,) and outcome.ok
    served, refusals = device.serve(3)
    assert served == 0 and all(isinstance(r, LicenseRevokedError) for r in refusals)
    assert refusals[0].details["reason"] == "revoked" and refusals[0].details["license_id"] == lic.license_id
    assert device.agent.state.active_bundle is not None  # the agent runs on; the bundle stays
    entries = device.meter.store.entries()
    assert (entries[-1].kind, entries[-1].count) == ("revoke", 12)  # 20 licensed - 8 reserved, forfeited
    device.assert_server_has_the_whole_chain()  # the revoke entry went out in the same sync
    assert device.cycle().revoked == ()  # learnt again: a no-op
    top = device.server.top_up(lic.license_id, 3)
    assert device.cycle().installed == (top.license_id,)
    served, refusals = device.serve(4)
    assert served == 3 and isinstance(refusals[0], QuotaExceededError)  # only the top-up's queries


def test_a_chain_revoked_and_topped_up_while_away_is_replayed_in_order(device: Device) -> None:
    """Both learnt at one contact: the revocation forfeits what was left *before* the top-up reinstates,
    so the queries of the revoked license are not pooled into the top-up."""
    lic = installed(device, 20)
    device.serve(5)  # 8 reserved, 3 left in the open block
    device.server.revoke(lic.license_id)
    top = device.server.top_up(lic.license_id, 6)
    outcome = device.cycle()
    assert outcome.revoked == (lic.license_id,) and outcome.installed == (top.license_id,) and outcome.ok
    kinds = [(e.kind, e.count) for e in device.meter.store.entries()]
    assert kinds == [("license", 20), ("reserve", 4), ("reserve", 4), ("revoke", 12), ("license", 6)]
    assert device.serve(10)[0] == 6


def test_a_revocation_named_in_a_201_is_fetched_in_the_same_sync(device: Device) -> None:
    lic = installed(device, 20)
    device.serve(2)
    device.server.revoke_on_next_report(lic.license_id)
    outcome = device.cycle()
    assert outcome.revoked == (lic.license_id,) and outcome.ok
    assert device.server.statuses(LICENSES_PATH) == [200, 200, 200]  # install cycle, this cycle, the refetch
    with pytest.raises(LicenseRevokedError):
        device.agent.predict(X)


def _item(license_id: str, data: bytes, signature: bytes) -> dict:
    return {
        "license_id": license_id,
        "model": "tiny",
        "data": base64.b64encode(data).decode(),
        "signature": signature.hex(),
    }


def test_forged_and_misaddressed_documents_are_refused_and_the_genuine_ones_install(
    device: Device, metered_bundles: MeteredBundles
) -> None:
    srv = device.server
    genuine = srv.issue(device.device_id, "tiny", 5)
    stranger = Ed25519PrivateKey.generate()
    big = srv.license(device.device_id, "tiny", 10**6)  # names the real issuer key ...
    forged = _item(
        big.license_id, big.to_bytes(), stranger.sign(LICENSE_DOMAIN + big.to_bytes())
    )  # ... signed by another
    real = sign_license(genuine, srv.issuer_key)
    altered = _item("altered", real.data.replace(b'"queries":5', b'"queries":9'), real.signature)
    other = DeviceKeys.generate()
    srv.enrol(other.device_id, other.signing.public_key())
    theirs = srv.license(other.device_id, "tiny", 7)
    misaddressed = _item(theirs.license_id, theirs.to_bytes(), sign_license(theirs, srv.issuer_key).signature)
    untrusted = srv.license(device.device_id, "tiny", 8, key=stranger)
    rev = Revocation(genuine.license_id, device.device_id, "tiny", 1, "forged", key_id(srv.issuer_key))
    forged_rev = _item(genuine.license_id, rev.to_bytes(), stranger.sign(REVOCATION_DOMAIN + rev.to_bytes()))
    srv.extra_licenses = [
        forged,
        altered,
        misaddressed,
        _item(untrusted.license_id, untrusted.to_bytes(), sign_license(untrusted, stranger).signature),
        {"license_id": "garbage", "data": "not base64!", "signature": "00" * 64},
    ]
    srv.extra_revocations = [forged_rev]
    device.offer("m1")
    outcome = device.cycle()
    assert outcome.installed == (genuine.license_id,) and outcome.revoked == ()
    refused = "\n".join(outcome.refused)
    for needle in (big.license_id, "altered", theirs.license_id, untrusted.license_id, "garbage"):
        assert needle in refused
    assert f"revocation of license {genuine.license_id}" in refused and len(outcome.refused) == 6
    assert device.meter.installed_ids == {genuine.license_id} and device.meter.revoked_ids == frozenset()
    assert device.serve(6)[0] == 5  # the genuine license, and nothing more
    # a top-up of a license whose listed revocation did not verify waits: installing it would pool
    # the queries that revocation forfeits
    srv.extra_licenses = []
    top = srv.top_up(genuine.license_id, 4)
    outcome = device.cycle()
    assert outcome.installed == () and any(top.license_id in r and "did not verify" in r for r in outcome.refused)
    srv.extra_revocations = []
    assert device.cycle().installed == (top.license_id,)


def test_the_server_down_loses_nothing_and_everything_goes_at_the_next_contact(device: Device) -> None:
    installed(device, 100)
    device.serve(7)
    device.server.down = True
    outcome = device.cycle()
    assert outcome.reports == 0 and "fetching licenses" in outcome.errors[0]
    device.serve(6)
    assert device.cycle().errors  # still down
    device.server.down = False
    outcome = device.cycle()
    assert outcome.ok and outcome.reports == 1
    device.assert_server_has_the_whole_chain()
    assert device.server.chain(device.device_id, "tiny").reserved() == device.meter.ledger.reserved == 16


def test_refusals_stop_the_model_for_this_cycle_and_keep_the_data(device: Device) -> None:
    installed(device, 100)
    device.serve(5)
    device.server.answer(400, {"error": {"type": "SpecError", "message": "not today"}}, path=USAGE_PATH)
    outcome = device.cycle()
    assert outcome.reports == 0 and "SpecError: not today" in outcome.errors[0]
    wrong = {"error": {"type": "DuplicateReportError", "message": "x", "digest": "ab" * 32, "next_seq": 3}}
    device.server.answer(409, wrong, path=USAGE_PATH)  # names another report: not a delivery
    outcome = device.cycle()
    assert outcome.duplicates == 0 and "not naming this report" in outcome.errors[0]
    stuck = {"error": {"type": "ReportGapError", "message": "x", "first_seq": 1, "next_seq": 1}}
    device.server.answer(409, stuck, n=10, path=USAGE_PATH)  # "resend from where you are": would never end
    outcome = device.cycle()
    assert outcome.gaps == 0 and "without a next_seq before this report" in outcome.errors[0]
    assert device.server.statuses(USAGE_PATH).count(409) == 2  # one try this cycle, no loop
    device.server.answer(200, {}, n=0)  # nothing canned any more
    assert device.sync.acknowledged()["tiny"][0] == 1  # only the license entry was acknowledged
    outcome = device.cycle()
    assert outcome.ok and outcome.reports == 1
    device.assert_server_has_the_whole_chain()


def test_a_long_ledger_goes_in_chunks(tmp_path: Path, metered_bundles: MeteredBundles, server) -> None:
    dev = Device(tmp_path, metered_bundles, server, max_report_entries=2)
    try:
        installed(dev, 100)
        dev.serve(21)  # 6 blocks: entries 1..6
        outcome = dev.cycle()
        assert outcome.ok and outcome.reports == 3 and outcome.reported == 6
        assert all(len(UsageReport.from_bytes(b).entries) <= 2 for b in server.usage_bodies)
        dev.assert_server_has_the_whole_chain()
    finally:
        dev.close()


def test_a_413_shrinks_the_reports_instead_of_stalling(device: Device) -> None:
    """A report of 4096 entries is ~0.9 MB, close to the server's default 1 MiB body limit (past it with
    large counts); a server with a lower limit answered 413 to every report before, so a device behind on
    its reports never caught up. A 413 now halves the entries per report and sends again, in the same sync."""
    installed(device, 1000)
    device.server.max_body_bytes = 1500  # an operator's limit: ~5 entries a report
    device.serve(4 * 30)
    outcome = device.cycle()
    assert outcome.ok and outcome.reported == 30, outcome.errors
    assert 413 in device.server.statuses(USAGE_PATH)
    device.assert_server_has_the_whole_chain()
    device.server.max_body_bytes = 200  # not even one entry fits: a clear error, nothing lost
    device.serve(4)
    outcome = device.cycle()
    assert outcome.reports == 0 and any("PayloadTooLargeError" in e for e in outcome.errors), outcome.errors
    device.server.max_body_bytes = None
    assert device.cycle().reported == 1
    device.assert_server_has_the_whole_chain()


def test_reports_are_cut_to_the_byte_cap(tmp_path: Path, metered_bundles: MeteredBundles, server) -> None:
    dev = Device(tmp_path, metered_bundles, server, max_report_bytes=4096)
    try:
        installed(dev, 1000)
        dev.serve(4 * 40)
        outcome = dev.cycle()
        assert outcome.ok and outcome.reported == 40
        sizes = [len(body) for path, body in server.received if path == USAGE_PATH]
        assert max(sizes) <= 4096 and len(sizes) >= 3
        dev.assert_server_has_the_whole_chain()
    finally:
        dev.close()


@pytest.mark.parametrize("with_state", [True, False], ids=["whole-directory", "ledger-and-counter-only"])
def test_a_restored_ledger_reports_from_where_it_forks_so_the_server_sees_the_rollback(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer, with_state: bool
) -> None:
    """A backup put back: the server's head is not on the restored ledger. With the sync's state
    restored too, the device goes on from the position it remembers (still on its ledger and held by
    the server); without it (the newer state names a hash the ledger no longer has), from seq 0.
    Either way the report forks from the stored chain and every block either copy reserved is billed."""
    dev = Device(tmp_path / "a", metered_bundles, server)
    installed(dev, 100)
    dev.serve(4)
    dev.cycle()
    dev.close()
    metering = tmp_path / "a" / "agent" / METERING_DIR
    backup = tmp_path / "backup"
    shutil.copytree(metering, backup)  # ledger, counter and sync state
    dev = Device(tmp_path / "a", metered_bundles, server)
    dev.serve(9)
    dev.cycle()
    dev.close()
    for item in backup.iterdir():  # the owner restores the backup
        if with_state or item.name != STATE_FILE:
            shutil.copy2(item, metering / item.name)
    for stale in metering.glob("*-wal"):
        stale.unlink()
    dev = Device(tmp_path / "a", metered_bundles, server)
    try:
        dev.serve(3)  # writes on the older copy: a fork
        outcome = dev.cycle()
        assert [f["kind"] for f in outcome.flags] == ["rollback"] and outcome.ok
        sent = UsageReport.from_bytes(server.usage_bodies[-1])
        assert sent.first_seq == (2 if with_state else 0)
        chain = server.chain(dev.device_id, "tiny")
        assert chain.reserved() == 4 + 12 + 4  # every block either copy reserved is billed
        dev.assert_server_has_the_whole_chain()
    finally:
        dev.close()


def test_a_restored_ledger_forking_past_the_first_chunk_walks_the_replays_to_its_fork(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    """The backup put back without the sync's state, its fork past the first report chunk: the device
    reports from 0 in chunks; each chunk the server already holds is a replay answered right after it
    (the server's rule), so the device walks to the fork and reports it — flagged, and billed."""
    dev = Device(tmp_path / "a", metered_bundles, server, max_report_entries=2)
    installed(dev, 100)
    dev.serve(16)  # seq 1..4
    dev.cycle()
    dev.close()
    metering = tmp_path / "a" / "agent" / METERING_DIR
    backup = tmp_path / "backup"
    shutil.copytree(metering, backup)
    dev = Device(tmp_path / "a", metered_bundles, server, max_report_entries=2)
    dev.serve(12)  # seq 5..7, reported
    dev.cycle()
    dev.close()
    for item in backup.iterdir():
        if item.name != STATE_FILE:
            shutil.copy2(item, metering / item.name)
    (metering / STATE_FILE).unlink()
    for stale in metering.glob("*-wal"):
        stale.unlink()
    dev = Device(tmp_path / "a", metered_bundles, server, max_report_entries=2)
    try:
        dev.serve(3)  # seq 5 again, another entry: the fork
        sent_before = len(server.usage_bodies)
        outcome = dev.cycle()
        assert outcome.ok and [f["kind"] for f in outcome.flags] == ["replay", "replay", "rollback"], outcome.errors
        firsts = [UsageReport.from_bytes(b).first_seq for b in server.usage_bodies[sent_before:]]
        assert firsts == [0, 2, 4]  # 0..1 and 2..3 replays, then 4..5 with the fork
        assert server.chain(dev.device_id, "tiny").reserved() == 16 + 12 + 4
        dev.assert_server_has_the_whole_chain()
    finally:
        dev.close()


def test_a_copied_device_reports_its_own_branch_and_the_server_flags_and_bills_both(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    """The device's whole state copied to a second machine: each copy goes on reporting from its own
    acknowledged position (never from scratch), so the server sees one chain fork (``rollback``) and
    then both branches grow (``clone``), and bills every block either copy reserved."""
    a = Device(tmp_path / "a", metered_bundles, server)
    installed(a, 100)
    a.serve(4)
    a.cycle()
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shared = 4
    a, b = Device(tmp_path / "a", metered_bundles, server), Device(tmp_path / "b", metered_bundles, server)
    try:
        sent_before = len(server.usage_bodies)
        kinds = []
        for dev, calls in ((a, 5), (b, 6), (a, 4), (b, 3)):  # each writes at least one new block
            dev.serve(calls)
            outcome = dev.cycle()
            assert outcome.ok and outcome.reports == 1
            kinds += [f["kind"] for f in outcome.flags]
        assert kinds == ["rollback", "clone", "clone"]
        assert all(UsageReport.from_bytes(body).first_seq >= 2 for body in server.usage_bodies[sent_before:])
        billed = a.meter.ledger.reserved + b.meter.ledger.reserved - shared
        assert server.chain(a.device_id, "tiny").reserved() == billed == 4 + (8 + 4) + (8 + 4)
    finally:
        a.close()
        b.close()


def test_each_runtime_debits_the_ledger_of_the_agent_that_opened_it_from_any_thread(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    """Agents in one process (the fleet simulator): the meter is taken when the runtime opens (inside its
    agent's metering_bound), so a prediction made from any thread — one where another host is bound,
    or none — debits the ledger of the agent whose runtime it is."""
    a, b = Device(tmp_path / "a", metered_bundles, server), Device(tmp_path / "b", metered_bundles, server)
    try:
        server.issue(a.device_id, "tiny", 100)  # one device key for both: each ledger installs it
        for dev in (a, b):
            dev.offer("m1")
            dev.cycle()
        assert a.meter.remaining == b.meter.remaining == 100
        done = threading.Event()

        def elsewhere() -> None:
            bind_metering(b.agent.metering)  # another agent's host, process-wide, in this thread
            try:
                a.serve(5)
                with metering_bound(b.agent.metering):
                    a.serve(5)
            finally:
                bind_metering(None)
                done.set()

        threading.Thread(target=elsewhere).start()
        assert done.wait(30)
        assert (a.meter.ledger.reserved, b.meter.ledger.reserved) == (12, 0)  # 10 calls in blocks of 4
    finally:
        a.close()
        b.close()


def test_a_bundle_without_metering_never_opens_a_ledger(device: Device) -> None:
    device.offer("free")
    outcome = device.cycle()
    assert outcome.ok and outcome.installed == ()
    assert device.agent.predict(X).outputs
    assert device.agent.metering.models() == [] and not (device.root / "agent" / METERING_DIR).exists()
    assert device.server.statuses(USAGE_PATH) == []


def test_the_state_file_is_written_atomically_and_a_corrupt_one_is_ignored(device: Device) -> None:
    installed(device, 20)
    state = device.root / "agent" / METERING_DIR / STATE_FILE
    doc = json.loads(state.read_text())
    assert doc["models"]["tiny"]["next_seq"] == 1
    assert not [p for p in state.parent.iterdir() if p.name.endswith(".tmp")]
    state.write_text("{not json")
    assert device.sync.acknowledged() == {}
    device.serve(3)
    outcome = device.cycle()  # the server's chain position still says where to go on
    assert outcome.ok and UsageReport.from_bytes(device.server.usage_bodies[-1]).first_seq == 1
    assert json.loads(state.read_text())["models"]["tiny"]["next_seq"] == 2


def test_the_client_calls_follow_the_contract(device: Device) -> None:
    device.server.issue(device.device_id, "tiny", 5)
    device.server.issue(device.device_id, "other", 5)
    doc = device.client.licenses(model="tiny")  # the query is part of what the request signs
    assert [i["model"] for i in doc["licenses"]] == ["tiny"] and doc["chains"][0]["next_seq"] == 0
    assert {i["model"] for i in device.client.licenses()["licenses"]} == {"tiny", "other"}
    gap = {"error": {"type": "ReportGapError", "message": "lost one", "first_seq": 5, "next_seq": 2}}
    device.server.answer(409, gap, path=USAGE_PATH)
    meter = device.meter
    meter.install(sign_license(device.server.chain(device.device_id, "tiny").latest, device.server.issuer_key))
    with pytest.raises(ServerRequestError) as info:
        device.client.send_usage(meter.usage_report(0))
    assert (info.value.status, info.value.error_type) == (409, "ReportGapError")
    assert info.value.details["next_seq"] == 2 and info.value.details["first_seq"] == 5
    device.server.answer(200, {"device_id": "0" * 16, "licenses": []}, path=LICENSES_PATH)
    with pytest.raises(InvalidInputError, match="not this device"):
        device.client.licenses()


@pytest.mark.slow
def test_connect_syncs_once_after_enrolling_and_wires_the_agent(tmp_path: Path) -> None:
    """Against a real control plane: the first connect (enrolment, bootstrap) runs the sync once — a
    license sold before the first contact is then there before the first install; a restart (no
    network needed) does not; the agent meters with the connection's host and syncs every cycle."""
    import live_server
    from tinymlops.edge.agent.remote import connect
    from tinymlops.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    plane = live_server.start_plane(ws)
    try:
        first = connect(plane.url, tmp_path / "dev", enrolment_token=plane.enrolment_token(), profile="rpi-4")
        assert isinstance(first.metering_outcome, SyncOutcome)  # tried (whatever this server answers)
        assert first.metering.host is first.metering_host
        assert first.metering_host.trusted_issuer_keys == first.trusted_keys  # the issuer signs with a release key
        again = connect(plane.url, tmp_path / "dev")
        assert again.metering_outcome is None
        with again.agent(config=EVERY_CYCLE) as agent:
            assert agent.metering is again.metering_host and agent.metering_sync is again.metering
            agent.run_once()
            assert isinstance(agent.metering_outcome, SyncOutcome)
        with again.agent(metering_sync=None) as quiet:
            assert quiet.metering_sync is None
    finally:
        plane.close()
        ws.close()

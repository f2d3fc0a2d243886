"""Properties of the pure reconciliation, with chains written by the real pure ledger:

* any honest sequence of reports — random chunking, resends from earlier, lost answers, identical
  resends, two reports delivered out of order — raises no alert and ends with the server's
  ``next_seq`` at the chain's length and every count right;
* any single mutation — a restored ledger (rollback), a cloned one, an edited and re-hashed entry,
  a license entry for a license never issued or issued to another device — raises the right flag,
  and nothing is counted twice."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile_world import Issuer, LedgerDevice, MemoryServer, link, relink, report_of
from tinymlops.metering.reconcile import Refused

ISSUER = Issuer()
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

serve = st.tuples(st.just("serve"), st.integers(1, 40))
send = st.tuples(st.just("send"), st.integers(1, 6), st.booleans(), st.integers(0, 3))  # chunk, lost, back
resend = st.tuples(st.just("resend"), st.booleans())  # the last report's exact bytes; lost
reorder = st.tuples(st.just("reorder"), st.integers(1, 4))
top_up = st.tuples(st.just("top-up"), st.integers(1, 60))
ops = st.lists(st.one_of(serve, serve, send, send, resend, reorder, top_up), max_size=30)


def _honest_world(block: int, queries: int) -> tuple[LedgerDevice, MemoryServer]:
    device = LedgerDevice(block=block)
    server = MemoryServer(device.device_id)
    lic = ISSUER.license(device.key, queries=queries)
    server.issue(lic)
    device.install(lic)
    return device, server


def _flush(device: LedgerDevice, server: MemoryServer, acked: int, chunk: int = 5) -> int:
    while acked < len(device.log):
        answer = server.send(device.report(acked, acked + chunk))
        assert answer.kind in ("accepted", "duplicate"), answer
        acked = answer.next_seq
    return acked


@PROPERTY
@given(steps=ops, block=st.integers(1, 16), queries=st.integers(1, 200))
def test_any_honest_sequence_of_reports_raises_no_alert_and_counts_right(
    steps: list[tuple], block: int, queries: int
) -> None:
    device, server = _honest_world(block, queries)
    acked = 0  # where the device believes the server is
    last = None
    for step in steps:
        if step[0] == "serve":
            device.serve(step[1])
        elif step[0] == "top-up":
            current = device.ledger.current
            assert current is not None
            lic = ISSUER.license(device.key, queries=step[1], previous=current.license_id)
            server.issue(lic)
            device.install(lic)
        elif step[0] == "send":
            _, chunk, lost, back = step
            start = max(0, acked - back)
            if start >= len(device.log):
                continue
            last = device.report(start, start + chunk)
            answer = server.send(last)
            assert answer.kind in ("accepted", "duplicate"), answer  # the same bytes may be built again
            if not lost:
                acked = answer.next_seq
        elif step[0] == "resend" and last is not None:
            answer = server.send(last)
            assert answer.kind == "duplicate" and answer.next_seq == last.last_seq + 1
            if not step[1]:
                acked = answer.next_seq
        elif step[0] == "reorder" and len(device.log) - acked >= 2:
            mid = min(acked + step[1], len(device.log) - 1)
            early, late = device.report(acked, mid), device.report(mid)
            answer = server.send(late)
            if mid > server.next_seq:
                assert answer.kind == "gap" and answer.next_seq == server.next_seq
            else:  # the same bytes may have been sent before (acked is right after a resent report)
                assert answer.kind in ("accepted", "duplicate")
            for report in (early, late):
                answer = server.send(report)
                assert answer.kind in ("accepted", "duplicate")
            acked = answer.next_seq
        assert acked <= server.next_seq
    acked = _flush(device, server, acked)
    assert server.alerts == []
    assert server.next_seq == len(device.log) == acked
    assert server.head == (len(device.log) - 1, device.ledger.head)
    assert server.branches == 1 and len(server.entries) == len(device.log)
    assert server.used == device.ledger.reserved
    head = server.branch_totals()
    assert head is not None and head.totals.licensed == device.ledger.licensed


mutations = st.sampled_from(
    ["rollback", "rollback-from-server", "rollback-chunked", "clone", "edit-reported", "unknown", "stranger"]
)


def _grow(device: LedgerDevice, calls: int) -> None:
    """Serve ``calls`` and then past the open block, so at least one new entry is written."""
    device.serve(calls + device.ledger.block_remaining + 1)


def _new_reserved(device: LedgerDevice, since: int) -> int:
    return sum(e.count for e in device.log[since:] if e.kind == "reserve")


@PROPERTY
@given(
    mutation=mutations,
    calls=st.integers(10, 120),
    cut=st.floats(0.0, 1.0),
    extra=st.integers(1, 60),
    block=st.integers(1, 8),
)
def test_any_single_mutation_raises_the_right_flag_and_counts_nothing_twice(
    mutation: str, calls: int, cut: float, extra: int, block: int
) -> None:
    device, server = _honest_world(block, 10_000)
    device.serve(calls)
    acked = _flush(device, server, 0)
    length = len(device.log)
    k = 1 + int(cut * (length - 2))  # 1 <= k < length: the license entry stays, something is cut
    if mutation in ("rollback", "rollback-from-server", "rollback-chunked"):
        restored = device.restored(k)  # a backup of the ledger (and its counter) put back
        _grow(restored, extra)
        start = k if mutation == "rollback" else min(server.next_seq, len(restored.log) - 1)
        chunk = block if mutation == "rollback-chunked" else len(restored.log)  # the agent's chunks
        answer = server.send(restored.report(start, start + chunk))
        for _ in range(2 * len(restored.log) + 2):  # sent back until it links, then on past what is stored
            if answer.kind == "accepted" and any(f.kind == "rollback" for f in answer.flags):
                break
            assert answer.kind in ("gap", "accepted", "duplicate"), answer
            answer = server.send(restored.report(answer.next_seq, answer.next_seq + chunk))
        assert [(f.kind, f.seq) for f in answer.flags] == [("rollback", k)]
        _flush(restored, server, answer.next_seq, chunk)  # the rest of the restored copy's chain
        assert server.used == device.ledger.reserved + _new_reserved(restored, k)
    elif mutation == "clone":
        clone = device.restored(length)  # the device's whole state copied to a second device
        acks = {}
        for d in (device, clone):
            _grow(d, extra)
            acks[id(d)] = server.send(d.report(acked)).next_seq
        for d in (device, clone):
            _grow(d, extra)
            acks[id(d)] = server.send(d.report(acks[id(d)])).next_seq
        assert server.kinds() == ["rollback", "clone"]
        assert server.used == device.ledger.reserved + _new_reserved(clone, length)
        assert server.branches == 2
    elif mutation == "edit-reported":
        j = next((i for i in range(k, length) if device.log[i].kind == "reserve"), None)
        if j is None:
            return
        edited = relink(
            [dataclasses.replace(device.log[j], count=device.log[j].count + extra), *device.log[j + 1 :]],
            device.log[j].prev_hash,
        )
        answer = server.send(report_of(device.device_id, edited))
        assert [(f.kind, f.seq) for f in answer.flags] == [("rollback", j)]
        # the edited entries are kept as what the device signed: billed on their own branch
        assert server.used == device.ledger.reserved + sum(e.count for e in edited if e.kind == "reserve")
    else:
        current = device.ledger.current
        assert current is not None
        if mutation == "stranger":  # a license the server issued to another device
            lic = ISSUER.license(Ed25519PrivateKey.generate(), queries=extra)
            server.issue(lic)
            expected = ("clone", "other-device")
        else:  # a well-formed top-up the server never issued
            lic = ISSUER.license(device.key, queries=extra, previous=current.license_id)
            expected = ("tamper", "unknown-license")
        forged = link(
            [("license", lic.license_id, extra, lic.digest), ("reserve", lic.license_id, 1)],
            start=length,
            prev=device.ledger.head,
            at=int(device.now) + 1,
        )
        answer = server.send(report_of(device.device_id, forged))
        assert answer.kind == "refused" and isinstance(answer.decision, Refused)
        assert (answer.flags[0].kind, answer.decision.reason) == expected
        assert server.next_seq == length and server.used == device.ledger.reserved  # nothing stored

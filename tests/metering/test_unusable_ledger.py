"""A metered runtime over a ledger that cannot be used opens anyway and refuses every call with
LedgerUnusableError (fail closed, the bundle not blamed); the host remembers a ledger that does not
verify until it is closed, and a middleware whose ledger becomes usable debits it from the next call."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import Clock, Issuer
from tinymlops.edge.middleware import PolicyContext, Request, Response, build_chain, compose
from tinymlops.errors import LedgerTamperedError, LedgerUnusableError, MeteringRefusedError, StoreError
from tinymlops.metering import MeteringHost, metering_bound
from tinymlops.metering.meter import LEDGER_SUFFIX

CTX = PolicyContext("a" * 32, model="tiny:1")
POLICY = {"metering": {"enabled": True, "model": "tiny", "block": 2}}


@pytest.fixture
def host_world(tmp_path: Path):
    issuer, device, clock = Issuer(), Ed25519PrivateKey.generate(), Clock()

    def new_host() -> MeteringHost:
        return MeteringHost(tmp_path, device_key=device, trusted_issuer_keys=[issuer.public], clock=clock)

    return issuer, device, new_host, tmp_path / f"tiny{LEDGER_SUFFIX}"


def _edit_first_reservation(path: Path, old: bytes, new: bytes) -> None:
    conn = sqlite3.connect(path)
    (body,) = conn.execute("SELECT body FROM entries WHERE seq = 1").fetchone()
    assert old in bytes(body)
    conn.execute("UPDATE entries SET body = ? WHERE seq = 1", (bytes(body).replace(old, new),))
    conn.commit()
    conn.close()


def test_a_tampered_ledger_opens_a_refusing_runtime_and_the_host_remembers_it(host_world) -> None:
    issuer, device, new_host, path = host_world
    host = new_host()
    host.meter("tiny", block=2).install(issuer.signed(device, queries=10))
    host.meter("tiny").authorize()
    host.close()
    _edit_first_reservation(path, b'"count":2', b'"count":1')

    host = new_host()
    with metering_bound(host):
        (mw,) = build_chain(POLICY, context=CTX)  # raised LedgerTamperedError before: the bundle did not open
    calls: list[int] = []
    predict = compose([mw], lambda r: calls.append(1) or Response(outputs={}))
    for _ in range(3):
        with pytest.raises(LedgerUnusableError) as info:
            predict(Request(np.zeros(1)))
    assert calls == []  # nothing reached the model
    assert isinstance(info.value, MeteringRefusedError)
    assert info.value.details["reason"] == "ledger-tampered" and info.value.details["ledger_reason"] == "bad-hash"
    assert "row seq 1" in info.value.message and "re-licensed" in info.value.message
    assert set(host.broken) == {"tiny"}

    _edit_first_reservation(path, b'"count":1', b'"count":2')  # put back: the host does not read it again ...
    with pytest.raises(LedgerTamperedError):
        host.meter("tiny")
    with pytest.raises(LedgerUnusableError):
        predict(Request(np.zeros(1)))
    host.close()  # ... until it is closed (an agent restart)
    assert host.broken == {} and host.meter("tiny").remaining == 8  # the block of 2 is lost, as at any restart
    host.close()


def test_one_meter_per_ledger_file_and_a_runtime_waiting_for_it_debits_once_it_is_free(host_world) -> None:
    """Two meters over one file would each hold their own idea of the chain: a license one installs is
    not seen by the other (it refused 'no license' before), and the stale one's next reservation clashes
    with the other's. The second opener is refused, naming the ledger; a metered runtime opened while
    another holds it refuses its calls until it is free, then debits the ledger itself."""
    issuer, device, new_host, path = host_world
    holder = new_host()
    meter = holder.meter("tiny")
    other = new_host()  # another host over the same directory (or another process)
    with pytest.raises(StoreError, match="in use by another meter") as info:
        other.meter("tiny")
    assert str(path) in info.value.message
    with metering_bound(other):
        (mw,) = build_chain(POLICY, context=CTX)
    predict = compose([mw], lambda r: Response(outputs={}))
    meter.install(issuer.signed(device, queries=10))
    with pytest.raises(LedgerUnusableError) as refused:
        predict(Request(np.zeros(1)))
    assert (
        refused.value.details["reason"] == "ledger-unavailable" and "in use by another meter" in refused.value.message
    )
    assert other.broken == {}  # not remembered: tried again at the next call
    holder.close()
    predict(Request(np.zeros(1)))
    predict(Request(np.zeros(1)))
    assert other.meter("tiny").remaining == 8 and other.meter("tiny").block == 2  # the license, the policy's block
    other.close()
    reopened = new_host()
    assert reopened.meter("tiny").remaining == 8  # the lock went with the closed meter
    reopened.close()


def test_a_store_nobody_closed_lets_go_of_the_ledger_when_it_is_collected(host_world) -> None:
    issuer, device, new_host, _path = host_world
    forgotten = new_host()
    forgotten.meter("tiny").install(issuer.signed(device, queries=3))
    del forgotten  # e.g. a Connection dropped without closing its agent
    gc.collect()
    host = new_host()
    assert host.meter("tiny").remaining == 3
    host.close()


def test_a_ledger_overwritten_with_garbage_is_tampered_not_a_passing_store_failure(host_world) -> None:
    issuer, device, new_host, path = host_world
    host = new_host()
    host.meter("tiny").install(issuer.signed(device, queries=3))
    host.close()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(b"not a ledger at all " * 256)
    host = new_host()
    with pytest.raises(LedgerTamperedError) as info:  # a StoreError before: retried at every call, as if transient
        host.meter("tiny")
    assert info.value.details["reason"] == "unreadable" and str(path) in info.value.message
    assert set(host.broken) == {"tiny"}
    host.close()

"""A metered runtime over a ledger that cannot be used opens anyway and refuses every call with
LedgerUnusableError (fail closed, the bundle not blamed); the host remembers a ledger that does not
verify until it is closed, and a middleware whose ledger becomes usable debits it from the next call."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import Clock, Issuer
from tinymlops.edge.middleware import PolicyContext, Request, Response, build_chain, compose
from tinymlops.errors import LedgerTamperedError, LedgerUnusableError, MeteringRefusedError
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

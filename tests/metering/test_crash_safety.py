"""Crash safety of the ledger: a process predicting in a loop is killed with SIGKILL at random
moments; after each restart the usable count never went up, every call that ran was debited, and
what was lost is at most the one open block."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import Issuer
from tinymlops.metering import Meter

BLOCK = 16
KILLS = 20

CHILD = """
import os, sys
import numpy as np
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tinymlops.edge.middleware import Request, Response, compose
from tinymlops.metering import Meter

ledger, key_pem, issuer_pub, served_path, block = sys.argv[1:6]
key = load_pem_private_key(open(key_pem, "rb").read(), None)
meter = Meter.open(ledger, "tiny", device_key=key, trusted_issuer_keys=[bytes.fromhex(issuer_pub)], block=int(block))
w = np.ones((4, 2), np.float32)
predict = compose([meter.middleware()], lambda r: Response(outputs={"y": r.inputs @ w}))
served = os.open(served_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
x = np.ones((1, 4), np.float32)
while True:
    predict(Request(x))
    os.write(served, b".")   # after the call ran: a byte per served prediction
"""


def _remaining(open_meter) -> tuple[int, int]:
    meter = open_meter()
    try:
        return meter.remaining, meter.ledger.reserved
    finally:
        meter.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_never_gains_and_loses_at_most_a_block(tmp_path: Path) -> None:
    issuer, device = Issuer(), Ed25519PrivateKey.generate()
    ledger = tmp_path / "tiny.ledger.sqlite3"
    key_pem = tmp_path / "device.pem"
    key_pem.write_bytes(
        device.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    def open_meter() -> Meter:
        return Meter.open(ledger, "tiny", device_key=device, trusted_issuer_keys=[issuer.public], block=BLOCK)

    meter = open_meter()
    now = int(time.time())
    meter.install(issuer.signed(device, queries=10**7, valid_from=now - 60, valid_until=now + 86400))
    meter.close()
    rng = random.Random(7)
    total_served = total_lost = 0
    for run in range(KILLS):
        before, _ = _remaining(open_meter)
        served_path = tmp_path / f"served-{run}"
        child = subprocess.Popen(
            [sys.executable, str(script), str(ledger), str(key_pem), issuer.public.hex(), str(served_path), str(BLOCK)],
            stderr=subprocess.PIPE,
        )
        target = rng.randrange(1, 400)  # kill after a random number of served calls ...
        deadline = time.monotonic() + 60
        while not served_path.exists() or served_path.stat().st_size < target:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child served nothing"
            time.sleep(0.001)
        for _ in range(rng.randrange(0, 2000)):  # ... plus a random few microseconds more
            pass
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stderr.close()
        served = served_path.stat().st_size
        after, _ = _remaining(open_meter)
        assert after <= before, f"run {run}: the usable count went up ({before} -> {after})"
        debited = before - after
        assert debited >= served, f"run {run}: {served} calls ran but only {debited} were debited"
        assert debited - served <= BLOCK, f"run {run}: lost {debited - served} calls, more than a block"
        total_served += served
        total_lost += debited - served
    assert total_lost > 0  # some kills landed inside a block (the case that matters)
    meter = open_meter()
    assert meter.remaining == 10**7 - total_served - total_lost  # the chain accounts for every call
    meter.close()

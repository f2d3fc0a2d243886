"""A monotonic counter that fails to move (a TPM NV write refused, a full disk under the file counter)
after the entry is committed: the entry is durable, so it is in force — the reservation's calls are
served — and the counter is caught up before anything more is written; while it cannot be, every new
reservation is refused on the device (LedgerUnusableError, nothing written) instead of raising a raw
OSError that left the in-memory ledger behind the file (every later write then clashed on its seq)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import Clock, Issuer
from tinymlops.errors import LedgerUnusableError, MeteringRefusedError
from tinymlops.metering import FileCounter, Meter, MonotonicCounter


class FlakyCounter:
    """The file counter behind a switch: while ``failing``, advancing raises OSError as a device would."""

    def __init__(self, path: Path) -> None:
        self.inner = FileCounter(path)
        self.failing = False

    def read(self) -> tuple[int, str] | None:
        return self.inner.read()

    def advance(self, seq: int, head: str) -> None:
        if self.failing:
            raise OSError(5, "Input/output error")
        self.inner.advance(seq, head)


def test_a_counter_that_fails_after_the_commit_never_desyncs_the_meter(tmp_path: Path) -> None:
    issuer, device = Issuer(), Ed25519PrivateKey.generate()
    path = tmp_path / "tiny.ledger.sqlite3"
    counter = FlakyCounter(tmp_path / "tiny.counter")
    assert isinstance(counter, MonotonicCounter)

    def open_meter() -> Meter:
        return Meter.open(
            path,
            "tiny",
            device_key=device,
            trusted_issuer_keys=[issuer.public],
            block=4,
            counter=counter,
            clock=Clock(),
        )

    meter = open_meter()
    meter.install(issuer.signed(device, queries=20))
    counter.failing = True
    for _ in range(4):
        meter.authorize()  # the first writes a reservation the counter does not take: raised OSError before
    assert meter.next_seq == 2 and len(meter.store.entries()) == 2 and counter.read()[0] == 0
    with pytest.raises(LedgerUnusableError) as info:  # a new reservation waits for the counter
        meter.authorize()
    assert isinstance(info.value, MeteringRefusedError) and info.value.details["reason"] == "ledger-unavailable"
    assert "monotonic counter" in info.value.message and "Input/output error" in info.value.message
    assert len(meter.store.entries()) == 2  # nothing written while the counter lags
    counter.failing = False
    meter.authorize()  # caught up, then the next reservation
    assert counter.read() == (2, meter.ledger.head) and meter.remaining == 20 - 8 + 3
    meter.close()
    meter = open_meter()  # the chain and the counter agree
    assert meter.remaining == 12
    meter.close()

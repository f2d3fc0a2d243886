"""Freeze attacks: a device is kept on stale metadata (expired timestamp) — and refuses it.

A mirror (or anything in between) that stops passing on new releases can show a device valid
metadata only until the timestamp expires (one day by default; seconds here). After that the
device refuses, gets no offer and keeps its trusted metadata, and follows the honest repository
as soon as it is reachable again.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from simulators.tuf_server import assert_refused, put, world
from tinymlops.release import ExpiryPolicy
from tinymlops.spec.update import device_target_path

PATH = device_target_path("dev-a")


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def test_an_expired_timestamp_is_refused_even_when_it_is_newer(tmp_path: Path) -> None:
    clock = Clock()
    with world(tmp_path, clock=clock) as w:
        put(w.repo, PATH, b"current")
        client = w.client()
        assert client.check(PATH) is not None
        clock.offset = -timedelta(days=2)  # metadata signed two days ago: its timestamp expired yesterday
        put(w.repo, PATH, b"stale release")
        err = assert_refused(client, PATH, "freeze")
        assert "timestamp.json is expired" in err.message and err.member == "timestamp.json"
        clock.offset = timedelta(0)
        w.repo.refresh()
        offer = client.check(PATH)
        assert offer is not None and client.download(offer, tmp_path / "dl").read_bytes() == b"stale release"


def test_a_frozen_mirror_is_refused_once_its_timestamp_expires(tmp_path: Path) -> None:
    policy = ExpiryPolicy(timestamp=timedelta(seconds=3))
    with world(tmp_path, expiry=policy) as w:
        put(w.repo, PATH, b"release one")
        client = w.client()
        offer = client.check(PATH)
        assert offer is not None
        frozen = w.server.capture()
        w.server.freeze(frozen)  # the mirror stops updating here
        put(w.repo, PATH, b"release two: the fix")
        # within the timestamp's validity the freeze cannot be told from "no news"
        still = client.check(PATH)
        assert still is not None and still.sha256 == offer.sha256
        time.sleep(4.2)
        err = assert_refused(client, PATH, "freeze")
        assert "expired" in err.message
        w.server.reset()
        w.repo.refresh()
        fixed = client.check(PATH)
        assert fixed is not None and client.download(fixed, tmp_path / "dl").read_bytes() == b"release two: the fix"

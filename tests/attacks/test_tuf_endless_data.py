"""Endless-data attacks: a file that never ends (or is longer than signed) is cut off and refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from simulators.tuf_server import Attacker, assert_refused, put, trusted_files, world
from tinymlops.errors import UpdateRefusedError
from tinymlops.spec.update import device_target_path

PATH = device_target_path("dev-a")


def test_an_endless_target_is_cut_off_at_its_signed_length(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"b" * 10_000)
        client = w.client()
        offer = client.check(PATH)
        assert offer is not None
        (p,) = w.repo.targets()
        for served in (b"b" * 10_001, None):  # one byte too many, and a stream without end
            if served is None:
                w.server.serve_endless(f"targets/{p.served_name}")
            else:
                w.server.serve(f"targets/{p.served_name}", served)
            before = trusted_files(client)
            t0 = time.perf_counter()
            with pytest.raises(UpdateRefusedError) as err:
                client.download(offer, tmp_path / "dl")
            assert time.perf_counter() - t0 < 20
            assert (
                err.value.attack == "endless-data" and "more bytes than the signed metadata allows" in err.value.message
            )
            assert not any((tmp_path / "dl").iterdir())
            assert trusted_files(client) == before
        w.server.reset()
        assert client.download(offer, tmp_path / "dl").read_bytes() == b"b" * 10_000


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "bin", "next-root"])
def test_endless_metadata_is_cut_off(tmp_path: Path, role: str) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"payload")
        client = w.client()
        assert client.check(PATH) is not None
        put(w.repo, PATH, b"payload 2")
        attacker = Attacker(w.repo)
        if role == "timestamp":
            name = "timestamp.json"
        elif role == "snapshot":
            name = attacker.current("snapshot")[0]
        elif role == "bin":
            name = attacker.current(w.repo.get(PATH).role)[0]  # type: ignore[union-attr]
        else:
            name = "2.root.json"
        w.server.serve_endless(f"metadata/{name}", b"{" * 65536)
        err = assert_refused(client, PATH, "endless-data", repo=w.repo)
        assert err.member == name
        w.server.reset()
        offer = client.check(PATH)
        assert offer is not None and client.download(offer, tmp_path / "dl").read_bytes() == b"payload 2"

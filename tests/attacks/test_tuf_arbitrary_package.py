"""Arbitrary-package attacks: the target bytes are replaced on the way to the device.

Real signed bundles for two real device identities. Whatever replaces device A's bundle — a
same-length forgery, a truncated copy, or device B's genuine bundle — is refused with
``attack == "arbitrary-package"``; nothing new appears in the download directory and the
bundle A installed earlier is untouched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.tuf_server import real_bundles, trusted_files, world
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.errors import UpdateRefusedError
from tinymlops.spec.update import device_target_path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with real_bundles(tmp_path_factory.mktemp("bundles")) as b:
        yield b


def _forgeries(genuine: bytes, other_device: bytes) -> dict[str, bytes]:
    flipped = bytearray(genuine)
    flipped[len(flipped) // 2] ^= 0x40
    return {
        "same length, one byte changed": bytes(flipped),
        "truncated": genuine[:-1],
        "another device's genuine bundle": other_device,
        "empty": b"",
    }


@pytest.mark.parametrize(
    "kind", ["same length, one byte changed", "truncated", "another device's genuine bundle", "empty"]
)
def test_replaced_bundle_bytes_are_refused(bundles, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    trusted = [release_public_key(bundles.ws)]
    dev_a, dev_b = DeviceKeys.generate(), DeviceKeys.generate()
    path = device_target_path(dev_a.device_id)
    with world(tmp_path) as w:
        installed_bytes = bundles.build(dev_a, "tiny:1")
        w.repo.publish(installed_bytes, device=dev_a.device_id, trusted_release_keys=trusted)
        client = w.client()
        slot = tmp_path / "slot"
        installed = client.download(client.check(path), slot)  # type: ignore[arg-type]

        genuine = bundles.build(dev_a, "tiny:2")
        published = w.repo.publish(genuine, device=dev_a.device_id, trusted_release_keys=trusted)
        forged = _forgeries(genuine, bundles.build(dev_b, "tiny:2"))[kind]
        assert forged != genuine
        w.server.serve(f"targets/{published.served_name}", forged)
        offer = client.check(path)
        assert offer is not None and offer.sha256 == published.sha256  # the metadata is honest
        before = trusted_files(client)
        with pytest.raises(UpdateRefusedError) as err:
            client.download(offer, slot)
        assert err.value.attack == "arbitrary-package" and err.value.member == path
        assert "signed length and sha256" in err.value.message
        assert sorted(p.name for p in slot.iterdir()) == [installed.name]  # nothing new, nothing half-written
        assert installed.read_bytes() == installed_bytes  # still on its current bundle
        assert trusted_files(client) == before

        w.server.reset()
        assert client.download(offer, slot).read_bytes() == genuine

"""The device's update client against a real repository served over HTTP on 127.0.0.1.

Attacks live in ``tests/attacks/test_tuf_*.py``; this file covers the honest paths, enrolment,
per-device isolation, authentication headers, key rotation, faults and the edge closure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors

from simulators.tuf_server import TufServer, put, real_bundles, trusted_files, world
from tinymlops.bundle import open_bundle
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.updates import UpdateClient, translate_error
from tinymlops.errors import UpdateError, UpdateRefusedError, UpdateSourceError, UsageError
from tinymlops.release import UpdateRepository
from tinymlops.spec.update import cohort_target_path, device_target_path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with real_bundles(tmp_path_factory.mktemp("bundles")) as b:
        yield b


# --- the honest path -----------------------------------------------------------------------
def test_publish_check_download_open_and_republish(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    device = DeviceKeys.generate()
    path = device_target_path(device.device_id)
    with world(tmp_path, workspace=bundles.ws.root) as w:
        client = w.client(device.device_id)
        assert client.check(path) is None  # nothing published yet

        first = bundles.build(device, "tiny:1")
        published = w.repo.publish(first, device=device.device_id, urgent=True, release_id="r1")
        offer = client.check(path)
        assert offer is not None
        assert (offer.target_path, offer.length, offer.sha256) == (path, published.length, published.sha256)
        assert offer.info == published.info and offer.urgent and offer.info.release_id == "r1"
        file = client.download(offer, tmp_path / "slot")
        assert file.read_bytes() == first and file.name == offer.file_name
        assert [p.name for p in (tmp_path / "slot").iterdir()] == [file.name]  # no temp file left
        opened = open_bundle(file, key=device, trusted_release_keys=[release_public_key(bundles.ws)])
        assert opened.manifest.bundle_id == offer.bundle_id and opened.manifest.model.ref == "tiny:1"

        second = bundles.build(device, "tiny:2")
        w.repo.publish(second, device=device.device_id)
        newer = client.check(path)
        assert newer is not None and newer.bundle_id != offer.bundle_id and newer.info.version == 2
        assert not newer.urgent
        assert client.download(newer, tmp_path / "slot").read_bytes() == second

        w.repo.unpublish(path)
        assert client.check(path) is None


def test_download_is_reused_after_a_restart_and_partials_are_cleaned(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, device_target_path("d"), b"x" * 5000)
        client = w.client("d")
        offer = client.check(device_target_path("d"))
        assert offer is not None
        dest = tmp_path / "dl"
        dest.mkdir()
        (dest / f".{offer.file_name}.dead.part").write_bytes(b"half a download from a killed agent")
        first = client.download(offer, dest)
        assert sorted(p.name for p in dest.iterdir()) == [offer.file_name]
        fetched = len(w.server.paths_requested("targets/"))
        # a restarted agent (new client, new offer) does not fetch the same bytes again
        again = UpdateClient(client.data_dir, w.server.url)
        offer2 = again.check(device_target_path("d"))
        assert offer2 is not None and again.download(offer2, dest) == first
        assert len(w.server.paths_requested("targets/")) == fetched
        # a damaged file in place is replaced by a verified download
        first.write_bytes(b"y" * 5000)
        assert again.download(offer2, dest).read_bytes() == b"x" * 5000


def test_device_target_first_then_cohort(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        client = w.client("d1")
        paths = [device_target_path("d1"), cohort_target_path("pilot")]
        assert client.check_first(paths) is None
        put(w.repo, cohort_target_path("pilot"), b"cohort bundle")
        offer = client.check_first(paths)
        assert offer is not None and offer.target_path == cohort_target_path("pilot")
        put(w.repo, device_target_path("d1"), b"device bundle")
        offer = client.check_first(paths)
        assert offer is not None and offer.target_path == device_target_path("d1")
        assert client.download(offer, tmp_path / "dl").read_bytes() == b"device bundle"
        with pytest.raises(UsageError):
            client.check("../../etc/passwd")
        with pytest.raises(UsageError):
            client.check_first([])


def _ids_in_different_bins(repo: UpdateRepository) -> tuple[str, str]:
    from tuf.api.metadata import SuccinctRoles

    succinct = SuccinctRoles([], 1, 4, "bins")
    a = "aaaaaaaaaaaaaaaa"
    for i in range(1000):
        b = f"{i:016x}"
        if succinct.get_role_for_target(device_target_path(b)) != succinct.get_role_for_target(device_target_path(a)):
            return a, b
    raise AssertionError("no two ids in different bins")


def test_a_device_sees_only_its_own_bin_and_never_gets_another_devices_bundle(bundles, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with world(tmp_path, workspace=tmp_path / "repo-ws") as w:
        trusted = [release_public_key(bundles.ws)]
        a_id, b_id = _ids_in_different_bins(w.repo)
        dev_a, dev_b = DeviceKeys.generate(), DeviceKeys.generate()
        w.repo.publish(bundles.build(dev_a), device=a_id, trusted_release_keys=trusted)
        pub_b = w.repo.publish(bundles.build(dev_b), device=b_id, trusted_release_keys=trusted)
        client = w.client("a")
        offer = client.check(device_target_path(a_id))
        assert offer is not None and offer.bundle_id != pub_b.info.bundle_id
        cached = trusted_files(client)
        bins = [name for name in cached if name.startswith("bins-")]
        assert len(bins) == 1  # one bin of 16 downloaded, not the whole targets listing
        assert not any(b_id.encode() in data for data in cached.values())  # B's entry never reached A
        requested = w.server.paths_requested("metadata/")
        assert sum("bins-" in p for p in requested) == 1
        file = client.download(offer, tmp_path / "a")
        open_bundle(file, key=dev_a, trusted_release_keys=trusted)  # A's bundle opens with A's key
        assert not any(pub_b.sha256 in p for p in w.server.paths_requested("targets/"))


# --- enrolment -----------------------------------------------------------------------------
def test_enrolment_checks_the_root_it_is_given(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        root = w.repo.root_bytes()
        with pytest.raises(UsageError, match="not enrolled"):
            UpdateClient(tmp_path / "fresh", w.server.url)
        assert not UpdateClient.is_enrolled(tmp_path / "fresh")
        with pytest.raises(UpdateRefusedError) as err:
            UpdateClient.enrol(tmp_path / "fresh", b"{not json")
        assert err.value.attack == "malformed-metadata" and err.value.exit_code == 3
        doc = json.loads(root)
        doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # changed after signing
        with pytest.raises(UpdateRefusedError) as err:
            UpdateClient.enrol(tmp_path / "fresh", json.dumps(doc).encode())
        assert err.value.attack == "untrusted-signature"
        with pytest.raises(UpdateRefusedError, match="expected root"):
            UpdateClient.enrol(tmp_path / "fresh", (w.repo.metadata_dir / "timestamp.json").read_bytes())
        assert not UpdateClient.is_enrolled(tmp_path / "fresh")
        UpdateClient.enrol(tmp_path / "fresh", root)
        assert UpdateClient.is_enrolled(tmp_path / "fresh")
        with pytest.raises(UsageError, match="http"):
            UpdateClient(tmp_path / "fresh", "ftp://example")


def test_a_device_trusting_another_repository_refuses_this_one(tmp_path: Path) -> None:
    with world(tmp_path / "one") as one, world(tmp_path / "two") as two:
        put(two.repo, device_target_path("d"), b"from two")
        UpdateClient.enrol(tmp_path / "dev", one.repo.root_bytes())
        client = UpdateClient(tmp_path / "dev", two.server.url)  # pointed at a repository it never trusted
        with pytest.raises(UpdateRefusedError) as err:
            client.check(device_target_path("d"))
        assert err.value.attack == "untrusted-signature"


# --- key rotation is followed --------------------------------------------------------------
@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_the_client_follows_key_rotations(tmp_path: Path, role: str) -> None:
    with world(tmp_path) as w:
        put(w.repo, device_target_path("d"), b"before")
        client = w.client("d")
        assert client.check(device_target_path("d")) is not None
        w.repo.rotate_key(role)
        w.repo.rotate_key(role)  # twice: the client walks root v2 then v3
        put(w.repo, device_target_path("d"), b"after")
        offer = client.check(device_target_path("d"))
        assert offer is not None and client.download(offer, tmp_path / "dl").read_bytes() == b"after"
        assert client.trusted_versions()["root"] == 3
        assert {"metadata/2.root.json", "metadata/3.root.json"} <= set(w.server.paths_requested("metadata/"))


# --- authentication headers ----------------------------------------------------------------
def test_every_request_carries_the_device_headers(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def headers(method: str, url: str) -> dict[str, str]:
        calls.append((method, url))
        return {"X-Device-Id": "d", "X-Signature": f"sig-{len(calls)}"}

    with world(tmp_path) as w:
        put(w.repo, device_target_path("d"), b"payload")
        client = w.client("d", headers=headers)
        offer = client.check(device_target_path("d"))
        assert offer is not None
        client.download(offer, tmp_path / "dl")
        assert len(w.server.requests) == len(calls) >= 5
        for req, (method, url) in zip(w.server.requests, calls, strict=True):
            assert method == "GET" and url == f"{w.server.url}/{req.path}"
            assert req.headers["X-Device-Id"] == "d" and req.headers["X-Signature"].startswith("sig-")
        assert len({r.headers["X-Signature"] for r in w.server.requests}) == len(calls)  # fresh per request
        bad = w.client("e", headers=lambda m, u: {"Bad\nName": "x"})
        with pytest.raises(UsageError, match="bad header name"):
            bad.check(device_target_path("e"))
        with pytest.raises(UsageError, match="not both"):
            UpdateClient(client.data_dir, w.server.url, headers=headers, fetcher=object())  # type: ignore[arg-type]


# --- faults --------------------------------------------------------------------------------
def test_unreachable_and_failing_servers_are_operational_errors(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, device_target_path("d"), b"payload")
        client = w.client("d")
        before = trusted_files(client)
        w.server.serve("metadata/timestamp.json", 503)
        with pytest.raises(UpdateError, match="HTTP 503") as err:
            client.check(device_target_path("d"))
        assert err.value.exit_code == 4
        w.server.reset()
        offer = client.check(device_target_path("d"))
        assert offer is not None
        w.server.serve(f"targets/{offer.target_path.rpartition('/')[0]}/{offer.file_name}", 404)
        with pytest.raises(UpdateError, match="HTTP 404"):
            client.download(offer, tmp_path / "dl")
        assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())
        url = w.server.url
    dead = UpdateClient(client.data_dir, url)  # the server is gone now
    with pytest.raises(UpdateError, match="could not download"):
        dead.check(device_target_path("d"))
    assert set(trusted_files(dead)) >= set(before)


# --- the edge closure ------------------------------------------------------------------------
def test_the_update_client_stays_in_the_edge_closure() -> None:
    code = (
        "import sys, json; import tinymlops.edge.updates;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "({'tinymlops.release'} & set(sys.modules)))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    forbidden = {"sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "tinymlops.release"}
    assert not loaded & forbidden, sorted(loaded & forbidden)
    assert "tuf" in loaded


def test_server_simulator_refuses_traversal(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    with world(tmp_path) as w:
        assert isinstance(w.server, TufServer)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{w.server.url}/targets/..%2f..%2fkeys", timeout=5)
        assert err.value.code == 400


# --- the error mapping, class by class -----------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "expected", "attack"),
    [
        (tuf_errors.SlowRetrievalError("slow"), UpdateError, None),
        (tuf_errors.DownloadError("boom"), UpdateError, None),
        (tuf_errors.DownloadHTTPError("gone", 410), UpdateError, None),
        (tuf_errors.DownloadLengthMismatchError("too long"), UpdateRefusedError, "endless-data"),
        (tuf_errors.ExpiredMetadataError("timestamp.json is expired"), UpdateRefusedError, "freeze"),
        (tuf_errors.BadVersionNumberError("New timestamp version 1 must be >= 2"), UpdateRefusedError, "rollback"),
        (tuf_errors.BadVersionNumberError("Expected snapshot version 3, got 2"), UpdateRefusedError, "mix-and-match"),
        (tuf_errors.BadVersionNumberError("Expected bins-0a v3, got v2."), UpdateRefusedError, "mix-and-match"),
        (tuf_errors.BadVersionNumberError("Expected bins-0a.json version 2, got 3."), UpdateRefusedError, "rollback"),
        (tuf_errors.RepositoryError("New snapshot is missing info for 'bins-1.json'"), UpdateRefusedError, "rollback"),
        (
            tuf_errors.UnsignedMetadataError("timestamp was signed by 0/1 keys"),
            UpdateRefusedError,
            "untrusted-signature",
        ),
        (tuf_errors.LengthOrHashMismatchError("hash mismatch"), UpdateRefusedError, "mix-and-match"),
        (tuf_errors.RepositoryError("something else"), UpdateRefusedError, "invalid-metadata"),
    ],
)
def test_every_ngclient_failure_maps_into_the_error_tree(exc: Exception, expected: type, attack: str | None) -> None:
    out = translate_error(exc, member="x.json")
    assert type(out) is expected and out.details.get("member") == "x.json"
    assert getattr(out, "attack", None) == attack
    assert out.exit_code == (3 if expected is UpdateRefusedError else 4)


def test_error_mapping_details() -> None:
    from tuf.api.serialization import DeserializationError

    target = translate_error(
        tuf_errors.LengthOrHashMismatchError("bad hash"), member="devices/a/bundle.tmlb", target=True
    )
    assert isinstance(target, UpdateRefusedError) and target.attack == "arbitrary-package"
    assert translate_error(DeserializationError("bad json"), member="t.json").attack == "malformed-metadata"  # type: ignore[attr-defined]
    assert isinstance(translate_error(OSError(28, "No space left on device"), member=None), UpdateError)
    own = UsageError("the signer refused")
    wrapped = tuf_errors.DownloadError("Failed to download")
    wrapped.__cause__ = own
    assert translate_error(wrapped, member=None) is own  # a refusal of our own header callable surfaces as is
    with pytest.raises(KeyError):  # a bug is not disguised as a refusal
        translate_error(KeyError("x"), member=None)


def test_the_agent_plugs_in_through_tuf_update_source(tmp_path: Path) -> None:
    from tinymlops.edge.agent.source import check_offer
    from tinymlops.edge.updates import TufUpdateSource

    with world(tmp_path) as w:
        source = TufUpdateSource(w.client("d9"), "d9", cohorts=["pilot", "everyone"])
        assert source.target_paths == [
            device_target_path("d9"),
            cohort_target_path("pilot"),
            "cohorts/everyone/bundle.tmlb",
        ]
        assert source.check() is None
        put(w.repo, cohort_target_path("everyone"), b"for everyone", urgent=True)
        offer = source.check()
        assert offer is not None and offer.target_path == "cohorts/everyone/bundle.tmlb"
        assert check_offer(offer) is offer  # what the agent reads is there and well-formed
        assert source.fetch(offer, tmp_path / "incoming").read_bytes() == b"for everyone"
        w.server.serve("metadata/timestamp.json", 500)
        with pytest.raises(UpdateSourceError):  # the agent backs off on it like on any source failure
            source.check()
        with pytest.raises(UsageError):
            TufUpdateSource(w.client("d9"), "../x")

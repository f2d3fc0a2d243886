"""The agent's telemetry, end to end on the device side: real bundles whose manifests enable the
telemetry policy, real ONNX Runtime, a real upload store (SQLite), batches sealed with the device key
and POSTed with signed requests to a simulated control plane (tests/simulators/telemetry_server.py: a
real HTTP server that opens batches as the real endpoint does and answers a replayed digest with the
DuplicateBatchError 409). What the server gets is exactly what was served, per bundle; a lost
response is retried with the same bytes and merged once; refusals drop (and count), other failures
retry; the upload policy gates everything; broken storage never stops predictions."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from telemetry_testbed import TelemetryBundles, telemetry_bundles_fixture  # noqa: F401 (fixture)

from simulators.telemetry_server import TelemetryServer, telemetry_server
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.edge.agent import Agent, AgentConfig, LocalDirectorySource, write_offer
from tinymlops.edge.agent.remote import TelemetryUploader
from tinymlops.observe.energy import PowerModelMeter
from tinymlops.observe.upload_policy import UploadPolicy
from tinymlops.observe.upload_store import UploadStore
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.telemetry import LatencyBuckets, Performance, TelemetryWindow

EVERY_CYCLE = AgentConfig(poll_interval=0.2, backoff_base=0.05, backoff_cap=0.4, telemetry_interval=0)
WIFI = DeviceContext(network="wifi", charging=True)


class Device:
    """An agent over a local offer directory, with an upload store and an uploader to ``server``."""

    def __init__(
        self, root: Path, bundles: TelemetryBundles, server: TelemetryServer, policy: UploadPolicy | None = None
    ) -> None:
        self.root = root
        self.bundles = bundles
        self.server = server
        self.offers = root / "offers"
        self.offers.mkdir(parents=True)
        self.context = WIFI
        keys = bundles.device
        server.enrol(keys.device_id, keys.signing.public_key())
        self.store = UploadStore(root / "telemetry" / "upload.sqlite3", keys.signing)
        client = DeviceClient(server.url, keys, timeout_s=5.0)
        self.uploader = TelemetryUploader(client, self.store, policy or UploadPolicy(consent=True))
        self.agent = Agent(
            root / "agent",
            LocalDirectorySource(self.offers),
            keys,
            bundles.trusted,
            config=EVERY_CYCLE,
            context=lambda: self.context,
            telemetry_store=self.store,
            telemetry_uploader=self.uploader,
            energy_meter=PowerModelMeter(4.0),
        )

    def offer(self, name: str) -> None:
        dest = self.offers / f"{name}.tmlb"
        shutil.copyfile(self.bundles.paths[name], dest)
        write_offer(self.offers, dest)

    def serve(self, n: int, seed: int = 0) -> np.ndarray:
        x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
        for row in x:
            self.agent.predict(row[None, :])
        return x

    def close(self) -> None:
        self.agent.close()
        self.store.close()


@pytest.fixture
def device(tmp_path: Path, telemetry_bundles: TelemetryBundles):
    with telemetry_server() as server:
        dev = Device(tmp_path, telemetry_bundles, server)
        yield dev
        dev.close()


def requests_by_bundle(server: TelemetryServer) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in server.windows():
        out[w.bundle_id] = out.get(w.bundle_id, 0) + w.performance.requests
    return out


def test_the_server_gets_what_each_bundle_served_and_never_a_raw_row(device: Device) -> None:
    ids = device.bundles.bundle_ids
    device.offer("t1")
    assert device.agent.run_once().action == "installed"
    recorder = device.agent.telemetry
    assert recorder is not None and recorder.bundle_id == ids["t1"] and recorder.model == "tiny:1"
    assert isinstance(recorder.meter, PowerModelMeter)  # the agent's meter, not the runtime's default
    x1 = device.serve(50, seed=1)
    assert device.agent.run_once().action == "idle"
    assert requests_by_bundle(device.server) == {ids["t1"]: 50}
    (window,) = device.server.windows()
    assert window.model == "tiny:1" and window.inputs is not None and window.inputs.rows == 50
    assert window.performance.energy is not None and window.performance.energy.method == "model"
    assert window.privacy.classes is not None and window.privacy.classes.mechanism == "randomized_response"

    x2 = device.serve(7, seed=2)  # served by t1 just before t2 replaces it
    device.offer("t2")
    assert device.agent.run_once().action == "installed"  # t1's window closes at the switch
    x3 = device.serve(11, seed=3)
    device.agent.run_once()
    assert requests_by_bundle(device.server) == {ids["t1"]: 57, ids["t2"]: 11}
    assert device.store.status().pending_windows == 0
    # nothing the device served appears as a row in what it sent
    for body in device.server.bodies:
        payload = gzip.decompress(body).decode()
        for row in np.concatenate([x1, x2, x3]):
            assert json.dumps([float(v) for v in row]) not in payload
            assert json.dumps([float(v) for v in row[:2]])[1:-1] not in payload


def test_each_runtime_opens_with_the_agents_meter_never_the_default(device: Device, monkeypatch) -> None:
    def default_meter():
        raise AssertionError("the runtime opened its default meter")

    monkeypatch.setattr("tinymlops.edge.runtime.default_meter", default_meter)
    device.offer("t1")
    assert device.agent.run_once().action == "installed"
    assert device.agent.telemetry.meter is device.agent.energy_meter


def test_a_lost_response_is_retried_with_the_same_bytes_and_merged_once(device: Device) -> None:
    device.offer("t1")
    device.agent.run_once()
    device.serve(9)
    device.server.lose_responses(1)
    device.agent.run_once()
    outcome = device.agent.telemetry_outcome
    assert outcome.sent == 0 and outcome.error  # no answer: it does not know the server has it
    assert len(device.server.batches) == 1
    in_flight = device.store.in_flight
    assert in_flight is not None
    device.serve(4, seed=5)
    device.agent.run_once()  # the same bytes again -> 409 DuplicateBatchError -> delivered; then the rest
    outcome = device.agent.telemetry_outcome
    assert outcome.duplicates == 1 and outcome.sent == 2
    assert device.server.bodies.count(in_flight.body) == 2 and device.server.statuses.count(409) == 1
    assert requests_by_bundle(device.server) == {device.bundles.bundle_ids["t1"]: 13}  # merged once


@pytest.mark.parametrize(
    ("status", "error_type", "kept"),
    [
        (400, "SpecError", False),
        (413, "PayloadTooLargeError", False),
        (409, "WindowOverlapError", False),  # a 409 that is not the duplicate contract is a refusal
        (503, "ServerError", True),
        (404, "NotFoundError", True),  # a server without the endpoint yet
        (401, "StaleRequestError", True),
    ],
)
def test_refusals_drop_and_count_other_failures_keep(device: Device, status: int, error_type: str, kept: bool) -> None:
    device.offer("t1")
    device.agent.run_once()
    device.serve(6)
    device.server.answer(status, error_type)
    device.agent.run_once()
    outcome = device.agent.telemetry_outcome
    assert outcome.sent == 0 and outcome.refused == (0 if kept else 1)
    assert (device.store.in_flight is not None) == kept
    device.serve(2, seed=9)
    device.agent.run_once()
    t1 = device.bundles.bundle_ids["t1"]
    assert requests_by_bundle(device.server) == {t1: 8 if kept else 2}
    last = device.server.batches[-1].batch.store
    assert last is not None and last.dropped_windows == (0 if kept else 1)


@pytest.mark.parametrize("digest", [None, "00" * 32], ids=["no-digest", "another-batchs-digest"])
def test_a_duplicate_409_that_does_not_name_this_batch_is_a_refusal(device: Device, digest: str | None) -> None:
    device.offer("t1")
    device.agent.run_once()
    device.serve(6)
    error = {"type": "DuplicateBatchError", "message": "batch received before"}
    if digest is not None:
        error["digest"] = digest
    device.server.answer(409, body={"error": error})
    device.agent.run_once()
    outcome = device.agent.telemetry_outcome
    # not "the server has it": never counted as delivered; refused for good, dropped and counted
    assert (outcome.sent, outcome.windows, outcome.duplicates, outcome.refused) == (0, 0, 0, 1)
    assert device.store.in_flight is None and device.server.batches == []
    device.serve(2, seed=9)
    device.agent.run_once()
    assert requests_by_bundle(device.server) == {device.bundles.bundle_ids["t1"]: 2}
    last = device.server.batches[-1].batch.store
    assert last is not None and last.dropped_windows == 1


def test_a_batch_whose_signature_fails_is_refused_not_retried(tmp_path: Path, device: Device) -> None:
    """The endpoint answers a batch signed by another key with 400 (not 401, which a device retries)."""
    keys = device.bundles.device
    stranger = UploadStore(tmp_path / "other.sqlite3", DeviceKeys.generate().signing)
    latency = LatencyBuckets(((500, 3),), 0.001, 0.002)
    stranger.add(TelemetryWindow("b1" * 16, 10.0, 11.0, Performance(requests=3, latency=latency)))
    uploader = TelemetryUploader(DeviceClient(device.server.url, keys, timeout_s=5.0), stranger, UploadPolicy(True))
    outcome = uploader.upload(WIFI)
    assert device.server.statuses == [400] and (outcome.sent, outcome.refused) == (0, 1)
    assert stranger.in_flight is None and stranger.status().dropped_windows == 1
    stranger.close()


def test_the_upload_policy_gates_every_upload(tmp_path: Path, telemetry_bundles: TelemetryBundles) -> None:
    with telemetry_server() as server:
        dev = Device(tmp_path / "a", telemetry_bundles, server, UploadPolicy(consent=False))
        dev.offer("t1")
        dev.agent.run_once()
        dev.serve(5)
        dev.agent.run_once()
        assert server.bodies == [] and "consent" in dev.agent.telemetry_outcome.deferred
        assert dev.store.status().pending_windows >= 1  # waiting on the device
        dev.close()

        policy = UploadPolicy(consent=True, wifi_only=True, only_charging=True, max_bytes_per_day=3000)
        dev = Device(tmp_path / "b", telemetry_bundles, server, policy)
        dev.offer("t1")
        dev.agent.run_once()
        dev.serve(5)
        dev.context = DeviceContext(network="cellular", charging=True)
        dev.agent.run_once()
        assert server.bodies == [] and "Wi-Fi" in dev.agent.telemetry_outcome.deferred
        dev.context = DeviceContext(network="wifi", charging=False)
        dev.agent.run_once()
        assert server.bodies == [] and "charging" in dev.agent.telemetry_outcome.deferred
        dev.context = DeviceContext(network="offline", charging=True)
        assert dev.agent.run_once().action == "offline"
        assert server.bodies == [] and dev.store.status().pending_windows >= 1  # windows still close
        dev.context = WIFI
        dev.agent.run_once()
        assert len(server.batches) == 1 and requests_by_bundle(server) == {telemetry_bundles.bundle_ids["t1"]: 5}
        sent = sum(len(b) for b in server.bodies)
        for i in range(6):  # more windows than 3000 bytes a day can carry
            dev.serve(5, seed=10 + i)
            dev.agent.run_once()
        assert sum(len(b) for b in server.bodies) <= 3000 and len(server.bodies) > 1
        assert "bytes a day" in dev.agent.telemetry_outcome.deferred
        assert sum(len(b) for b in server.bodies) > sent
        dev.close()


def test_unwritable_storage_never_stops_predictions_and_is_reported(device: Device) -> None:
    device.offer("t1")
    device.agent.run_once()
    device.serve(3)
    directory = device.store.path.parent
    shutil.rmtree(directory)
    directory.write_bytes(b"")  # the store's directory is gone and cannot be made again
    x = device.serve(20, seed=4)  # predictions go on
    assert len(x) == 20
    device.agent.run_once()
    (first,) = device.server.batches
    assert first.batch.store is not None and first.batch.store.status == "unwritable"
    # the 3 served before were still in the open window: nothing was lost
    assert requests_by_bundle(device.server) == {device.bundles.bundle_ids["t1"]: 23}


def test_a_closing_agent_keeps_its_last_window(tmp_path: Path, telemetry_bundles: TelemetryBundles) -> None:
    with telemetry_server() as server:
        dev = Device(tmp_path, telemetry_bundles, server, UploadPolicy(consent=False))
        dev.offer("t1")
        dev.agent.run_once()
        dev.serve(12)
        dev.close()  # no flush: the window goes into the store as the runtime is retired
        keys = telemetry_bundles.device
        store = UploadStore(tmp_path / "telemetry" / "upload.sqlite3", keys.signing)
        batch = store.next_batch()
        assert batch is not None and batch.requests == 12
        store.close()


def test_agent_config_refuses_a_bad_telemetry_interval() -> None:
    from tinymlops.errors import UsageError

    for bad in (-1.0, float("inf"), True, "60"):
        with pytest.raises(UsageError, match="telemetry_interval"):
            AgentConfig(telemetry_interval=bad)  # type: ignore[arg-type]


def test_the_cli_options_make_the_upload_policy() -> None:
    from typer.testing import CliRunner

    from tinymlops.cli.agent import app
    from tinymlops.edge.agent.command import _parser, _upload_policy

    base = ["run", "--data-dir", "d", "--server", "http://127.0.0.1:1"]
    assert _upload_policy(_parser().parse_args(base)) == UploadPolicy()  # no consent by default
    args = _parser().parse_args(
        [
            *base,
            "--telemetry-consent",
            "--upload-any-network",
            "--upload-only-charging",
            "--upload-max-bytes-per-day",
            "5000",
            "--telemetry-interval",
            "5",
        ]
    )
    assert _upload_policy(args) == UploadPolicy(
        consent=True, wifi_only=False, only_charging=True, max_bytes_per_day=5000
    )
    assert args.telemetry_interval == 5.0
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for option in (
        "--telemetry-consent",
        "--no-telemetry-consent",
        "--upload-any-network",
        "--upload-only-charging",
        "--upload-max-bytes-per-day",
        "--telemetry-interval",
    ):
        assert option in help_text


def test_windows_too_many_for_one_request_body_go_as_several_batches(device: Device) -> None:
    """The uploader keeps every body under its limit (by default the server's request limit), so a
    backlog goes out as several batches instead of one the server would refuse with a 413."""
    device.offer("t1")
    device.agent.run_once()
    device.uploader.max_body_bytes = 3000  # a small window's body is ~1.6 KB: two fit, four do not
    for i in range(4):  # four windows wait (no upload: consent is asked per cycle; store directly)
        device.serve(20, seed=10 + i)
        device.agent.flush_telemetry(upload=False)
    assert device.store.status().pending_windows == 4
    outcome = device.uploader(WIFI)
    assert 2 <= outcome.sent < 4 and outcome.windows == 4 and outcome.refused == 0
    assert max(len(body) for body in device.server.bodies) <= 3000
    assert requests_by_bundle(device.server) == {device.bundles.bundle_ids["t1"]: 80}


def test_agent_status_reads_the_store_without_its_key_and_without_writing(device: Device) -> None:
    from tinymlops.observe.upload_store import peek

    path = device.root / "telemetry" / "upload.sqlite3"
    device.offer("t1")
    device.agent.run_once()
    device.serve(12)
    device.agent.flush_telemetry(upload=False)
    device.serve(5)
    device.agent.flush_telemetry(upload=False)
    before = path.read_bytes()
    seen = peek(path)
    assert seen == {"windows_waiting": 2, "requests_waiting": 17, "windows_in_flight": 0, "bytes_sent_24h": 0}
    assert path.read_bytes() == before  # read-only
    outcome = device.uploader(WIFI)
    assert outcome.sent == 1
    after = peek(path)
    assert after is not None and after["windows_waiting"] == 0 and after["bytes_sent_24h"] > 0
    assert peek(device.root / "nothing-here.sqlite3") is None
    broken = device.root / "broken.sqlite3"
    broken.write_bytes(b"not a database at all, just bytes")
    assert "error" in (peek(broken) or {})

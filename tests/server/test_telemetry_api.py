"""Telemetry ingestion over HTTP (``POST /v1/devices/me/telemetry``): real sealed batches from real
recorder windows (digits through ONNX Runtime) signed with real device keys, against a live server.

Accepted batches are stored once with what the server knows (release, ref, model, profile, tags,
latency buckets); everything hostile — a tampered body, a bad or foreign signature, a corrupted sketch,
an oversized body, a gzip bomb, a replay, an overlapping window, a bundle never published to the
device — is refused with a clear 4xx and stores nothing, and valid data is never lost."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text

import delivery_world
from delivery_world import World
from live_server import error_of
from sealed_telemetry import UPLOAD, SimulatedDevice, send, upload
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.crypto.signing import sign
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.request_auth import sign_request
from tinymlops.edge.agent.serving_stats import LatencyHistogram
from tinymlops.observe.recorder import latency_histogram
from tinymlops.observe.sealing import CONTENT_TYPE, DOMAIN, SIGNATURE_HEADER, seal_batch
from tinymlops.release.repository import UpdateRepository
from tinymlops.spec.telemetry import MAX_BATCH_BYTES, Performance, StoreStatus, TelemetryBatch

delivery = delivery_world.delivery  # the live world (fixture)
delivery_any_db = delivery_world.delivery_any_db


def _stored(world: World) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with world.ws.engine.connect() as conn:
        return (
            [tuple(r) for r in conn.execute(text("SELECT * FROM telemetry_batches ORDER BY id")).all()],
            [tuple(r) for r in conn.execute(text("SELECT * FROM telemetry_windows ORDER BY id")).all()],
        )


def _device(
    world: World, profile: str = "rpi-4", model: str = "tiny:1", **token: Any
) -> tuple[SimulatedDevice, str, str]:
    """An enrolled device given a release of ``model``: (the device, its bundle id, the release id)."""
    keys = DeviceKeys.generate()
    DeviceClient(world.url, keys).enrol(world.plane.enrolment_token(**token), profile)
    release = world.release(model, [keys.device_id])
    bundle = release["assignments"][0]["bundle_id"]
    assert bundle, release
    return SimulatedDevice(keys), bundle, release["id"]


def _headers(signature: str | None, **more: str) -> dict[str, str]:
    out = {"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip", **more}
    if signature is not None:
        out[SIGNATURE_HEADER] = signature
    return out


def _signed(payload: bytes, keys: DeviceKeys) -> str:
    return sign(keys.signing, DOMAIN + payload).hex()


def test_a_batch_is_stored_once_with_what_the_server_knows(delivery_any_db: World) -> None:
    world = delivery_any_db
    dev, bundle, release_id = _device(world, "rpi-4", "tiny:2", tags=["lab"])
    w1 = dev.window(bundle, 120, latency_ms=2.0)
    w2 = dev.window(bundle, 80, latency_ms=3.0)
    sealed = dev.seal(w1, w2, store=StoreStatus("ok", pending_windows=2))
    r = send(world.plane, dev, sealed)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert set(doc) == {"batch_id", "digest", "windows", "accepted_at"}
    assert doc["digest"] == sealed.digest and doc["windows"] == 2
    with world.ws.engine.connect() as conn:
        b = conn.execute(text("SELECT * FROM telemetry_batches")).mappings().one()
        rows = conn.execute(text("SELECT * FROM telemetry_windows ORDER BY window_start")).mappings().all()
    assert (b["id"], b["device_id"], b["digest"]) == (doc["batch_id"], dev.device_id, sealed.digest)
    assert b["signature"] == sealed.signature
    assert (b["body_bytes"], b["payload_bytes"], b["windows"]) == (len(sealed.body), sealed.payload_bytes, 2)
    assert (b["store_status"], b["store_pending"], b["store_dropped"]) == ("ok", 2, 0)
    assert len(rows) == 2
    for row, window in zip(rows, (w1, w2), strict=True):
        assert (row["profile_name"], row["ref"], row["model"], row["version"]) == ("rpi-4", "tiny:2", "tiny", 2)
        assert row["release_id"] == release_id and row["batch_id"] == b["id"]
        tags = row["tags"] if isinstance(row["tags"], list) else json.loads(row["tags"])
        assert tags == ["lab"]
        assert (row["window_start"], row["window_end"]) == (window.window_start, window.window_end)
        assert window.inputs is not None
        assert (row["requests"], row["errors"], row["rows"]) == (window.performance.requests, 0, window.inputs.rows)
        assert row["energy_method"] == "model" and row["energy_j"] == pytest.approx(5.0 * 1e-3)
        assert row["energy_inferences"] == window.performance.requests
        perf = row["performance"] if isinstance(row["performance"], dict) else json.loads(row["performance"])
        assert perf == window.performance.to_dict()
        # percentiles: the stored buckets give the histogram filled from the raw latencies the device saw
        h = LatencyHistogram()
        for s in dev.by_window[window.window_start]:
            h.add(s)
        stored = latency_histogram(Performance.from_dict(perf).latency)
        assert stored.quantiles([0.5, 0.95, 0.99]) == pytest.approx(h.quantiles([0.5, 0.95, 0.99]), rel=1e-12)
    view = world.plane.http(world.read_key).get(f"/v1/devices/{dev.device_id}/telemetry")
    assert view.status_code == 200, view.text
    assert view.json()["batches"][0]["digest"] == sealed.digest and view.json()["store_flagged"] is False


def test_a_replayed_batch_is_a_409_naming_its_digest_and_is_merged_once(delivery_any_db: World) -> None:
    world = delivery_any_db
    dev, bundle, _ = _device(world)
    sealed = dev.seal(dev.window(bundle, 50))
    assert send(world.plane, dev, sealed).status_code == 201
    before = _stored(world)
    for _ in range(2):  # a retry whose answer was lost, then an attacker replaying the capture
        r = send(world.plane, dev, sealed)
        assert r.status_code == 409, r.text
        assert r.json() == {"error": {"type": "DuplicateBatchError", "message": r.json()["error"]["message"],
                                      "digest": sealed.digest}}  # fmt: skip
        assert sealed.digest in r.json()["error"]["message"]
    assert _stored(world) == before


def test_an_overlapping_window_refuses_the_whole_batch_and_loses_nothing_valid(delivery: World) -> None:
    dev, bundle, _ = _device(delivery)
    first = dev.window(bundle, 40)
    assert send(delivery.plane, dev, dev.seal(first)).status_code == 201
    before = _stored(delivery)
    fresh = dev.window(bundle, 30)  # a new, valid window
    # the stored window again, inside a newly signed batch (a different digest) with the valid one
    r = send(delivery.plane, dev, dev.seal(fresh, first))
    assert r.status_code == 409, r.text
    err = error_of(r)
    assert err["type"] == "WindowOverlapError" and err["window"] == 1 and err["bundle_id"] == bundle
    assert (err["stored_start"], err["stored_end"]) == (first.window_start, first.window_end)
    assert "nothing of it is stored" in err["message"]
    assert _stored(delivery) == before
    # a window that starts inside the stored one (a clock set back) is refused too
    dev.now = first.window_start + 10
    late = dev.window(bundle, 10)
    r = send(delivery.plane, dev, dev.seal(late))
    assert r.status_code == 409 and error_of(r)["type"] == "WindowOverlapError"
    assert _stored(delivery) == before
    # the valid window alone goes through: nothing valid was lost
    r = send(delivery.plane, dev, dev.seal(fresh))
    assert r.status_code == 201, r.text
    _, windows = _stored(delivery)
    assert len(windows) == 2
    # windows of one batch that overlap each other are malformed
    dev.now = fresh.window_end + 100
    a = dev.window(bundle, 5, duration_s=60)
    dev.now = a.window_start + 30
    b = dev.window(bundle, 5, duration_s=60)
    r = send(delivery.plane, dev, dev.seal(a, b))
    assert r.status_code == 400 and "overlap" in error_of(r)["message"]


def _tampered(dev: SimulatedDevice, bundle: str, other: SimulatedDevice, other_bundle: str) -> dict[str, Callable]:
    """Ways to send something the server must refuse: name -> () -> (body, headers, error types)."""

    def body_bit_flipped() -> tuple[bytes, dict[str, str], set[str]]:
        sealed = dev.seal(dev.window(bundle, 20))
        body = bytearray(sealed.body)
        body[len(body) // 2] ^= 0x40
        return bytes(body), sealed.headers(), {"SpecError", "SignatureError"}

    def payload_changed() -> tuple[bytes, dict[str, str], set[str]]:
        sealed = dev.seal(dev.window(bundle, 20))
        payload = gzip.decompress(sealed.body).replace(b'"requests":20', b'"requests":21', 1)
        return gzip.compress(payload), sealed.headers(), {"SignatureError"}

    def another_batch_signature() -> tuple[bytes, dict[str, str], set[str]]:
        a, b = dev.seal(dev.window(bundle, 20)), dev.seal(dev.window(bundle, 21))
        return a.body, _headers(b.signature), {"SignatureError"}

    def no_signature() -> tuple[bytes, dict[str, str], set[str]]:
        return dev.seal(dev.window(bundle, 20)).body, _headers(None), {"SignatureError"}

    def malformed_signature() -> tuple[bytes, dict[str, str], set[str]]:
        return dev.seal(dev.window(bundle, 20)).body, _headers("zz" * 64), {"SignatureError"}

    def signed_by_an_unknown_key() -> tuple[bytes, dict[str, str], set[str]]:
        payload = dev.batch(dev.window(bundle, 20)).to_bytes()  # names the caller, signed by a stranger
        return gzip.compress(payload), _headers(_signed(payload, DeviceKeys.generate())), {"SignatureError"}

    def another_devices_batch() -> tuple[bytes, dict[str, str], set[str]]:
        sealed = other.seal(other.window(other_bundle, 20))  # valid for the other device, sent by this one
        return sealed.body, sealed.headers(), {"SignatureError"}

    def not_gzip() -> tuple[bytes, dict[str, str], set[str]]:
        payload = dev.batch(dev.window(bundle, 20)).to_bytes()
        return payload, _headers(_signed(payload, dev.keys)), {"SpecError"}

    def no_content_encoding() -> tuple[bytes, dict[str, str], set[str]]:
        sealed = dev.seal(dev.window(bundle, 20))
        headers = {k: v for k, v in sealed.headers().items() if k != "Content-Encoding"}
        return sealed.body, headers, {"InvalidInputError"}

    def corrupted_sketch() -> tuple[bytes, dict[str, str], set[str]]:
        doc = dev.batch(dev.window(bundle, 20)).to_dict()
        feature = doc["windows"][0]["inputs"]["features"][3]
        raw = bytearray(base64.b64decode(feature["sketch"]))
        raw[4:8] = b"\xff\xff\xff\x7f"  # the sketch's k (and the layout behind it) made up
        feature["sketch"] = base64.b64encode(bytes(raw)).decode()
        payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return gzip.compress(payload), _headers(_signed(payload, dev.keys)), {"SpecError"}

    def not_canonical() -> tuple[bytes, dict[str, str], set[str]]:
        payload = json.dumps(dev.batch(dev.window(bundle, 20)).to_dict(), indent=1).encode()
        return gzip.compress(payload), _headers(_signed(payload, dev.keys)), {"SpecError"}

    def another_devices_bundle() -> tuple[bytes, dict[str, str], set[str]]:
        sealed = dev.seal(dev.window(other_bundle, 20))
        return sealed.body, sealed.headers(), {"InvalidInputError"}

    def a_bundle_never_published() -> tuple[bytes, dict[str, str], set[str]]:
        sealed = dev.seal(dev.window("ab" * 16, 20))
        return sealed.body, sealed.headers(), {"InvalidInputError"}

    return {f.__name__: f for f in (
        body_bit_flipped, payload_changed, another_batch_signature, no_signature, malformed_signature,
        signed_by_an_unknown_key, another_devices_batch, not_gzip, no_content_encoding, corrupted_sketch,
        not_canonical, another_devices_bundle, a_bundle_never_published,
    )}  # fmt: skip


HOSTILE = [
    "body_bit_flipped",
    "payload_changed",
    "another_batch_signature",
    "no_signature",
    "malformed_signature",
    "signed_by_an_unknown_key",
    "another_devices_batch",
    "not_gzip",
    "no_content_encoding",
    "corrupted_sketch",
    "not_canonical",
    "another_devices_bundle",
    "a_bundle_never_published",
]


def test_hostile_uploads_are_refused_with_a_clear_400_and_store_nothing(delivery: World) -> None:
    dev, bundle, _ = _device(delivery)
    other, other_bundle, _ = _device(delivery, "x86-edge-server")
    cases = _tampered(dev, bundle, other, other_bundle)
    assert sorted(cases) == sorted(HOSTILE)
    before = _stored(delivery)
    for name in HOSTILE:
        body, headers, types = cases[name]()
        r = upload(delivery.plane, dev.keys, body, headers)
        assert r.status_code == 400, (name, r.text)
        err = error_of(r)
        assert err["type"] in types, (name, err)
        assert _stored(delivery) == before, name
        assert httpx.get(f"{delivery.url}/healthz").status_code == 200, name  # the server is alive
    messages = {name: "" for name in HOSTILE}
    for name in ("no_content_encoding", "another_devices_bundle", "corrupted_sketch", "no_signature"):
        body, headers, _ = cases[name]()
        messages[name] = error_of(upload(delivery.plane, dev.keys, body, headers))["message"]
    assert "Content-Encoding: gzip" in messages["no_content_encoding"]
    assert other_bundle in messages["another_devices_bundle"] and dev.device_id in messages["another_devices_bundle"]
    assert "sketch" in messages["corrupted_sketch"]
    assert SIGNATURE_HEADER in messages["no_signature"]
    # and the device's valid batch still goes through afterwards
    assert send(delivery.plane, dev, dev.seal(dev.window(bundle, 20))).status_code == 201


def test_only_an_enrolled_device_may_upload(delivery: World) -> None:
    dev, bundle, _ = _device(delivery)
    sealed = dev.seal(dev.window(bundle, 10))
    stranger = DeviceKeys.generate()
    assert upload(delivery.plane, stranger, sealed.body, sealed.headers()).status_code == 401
    r = delivery.plane.admin.post(UPLOAD, content=sealed.body, headers=sealed.headers())
    assert r.status_code == 403
    assert delivery.plane.http().post(UPLOAD, content=sealed.body, headers=sealed.headers()).status_code == 401
    assert _stored(delivery) == ([], [])


def test_an_oversized_body_and_a_gzip_bomb_are_413(delivery: World) -> None:
    dev, _, _ = _device(delivery)
    limit = delivery.plane.server.app.state.services.settings.max_body_bytes
    big = bytes(range(256)) * (limit // 256 + 16)
    r = upload(delivery.plane, dev.keys, big, _headers("00" * 64))
    assert r.status_code == 413 and error_of(r)["type"] == "PayloadTooLargeError"
    # the same without a Content-Length (chunked): refused as it streams in
    auth = sign_request(dev.keys.signing, "POST", UPLOAD, big)
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    r = delivery.plane.http().post(UPLOAD, content=chunks, headers={**auth.headers(), **_headers("00" * 64)})
    assert r.status_code == 413 and error_of(r)["type"] == "PayloadTooLargeError"
    # a few KiB that inflate past a batch's limit, correctly signed: decompression stops at the limit
    payload = b" " * (MAX_BATCH_BYTES + 4096)
    bomb = gzip.compress(payload, compresslevel=9)
    assert len(bomb) < 16 * 1024
    r = upload(delivery.plane, dev.keys, bomb, _headers(_signed(payload, dev.keys)))
    assert r.status_code == 413, r.text
    assert error_of(r)["type"] == "PayloadTooLargeError" and "decompresses" in error_of(r)["message"]
    assert _stored(delivery) == ([], [])


def test_concurrent_duplicates_and_concurrent_overlaps_store_one(delivery_any_db: World) -> None:
    world = delivery_any_db
    dev, bundle, _ = _device(world)
    window = dev.window(bundle, 30)
    same = dev.seal(window)
    racing = [dev.seal(window) for _ in range(4)]  # the same window in batches of different digests
    assert len({s.digest for s in racing} | {same.digest}) == 5

    def race(bodies: list[Any]) -> list[httpx.Response]:
        barrier = threading.Barrier(len(bodies))
        out: list[httpx.Response | None] = [None] * len(bodies)

        def go(i: int) -> None:
            barrier.wait()
            out[i] = send(world.plane, dev, bodies[i])

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r for r in out if r is not None]

    answers = race([same] * 6)
    assert sorted(r.status_code for r in answers) == [201] + [409] * 5, [r.text for r in answers]
    assert {error_of(r)["type"] for r in answers if r.status_code == 409} == {"DuplicateBatchError"}
    answers = race(racing)
    assert [r.status_code for r in answers] == [409] * 4
    assert {error_of(r)["type"] for r in answers} == {"WindowOverlapError"}
    batches, windows = _stored(world)
    assert len(batches) == 1 and len(windows) == 1
    # a fresh window in racing batches: exactly one of them is stored
    fresh = dev.window(bundle, 25)
    answers = race([dev.seal(fresh) for _ in range(4)])
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409], [r.text for r in answers]
    batches, windows = _stored(world)
    assert len(batches) == 2 and len(windows) == 2


def test_bundles_published_to_a_cohort_or_replaced_by_a_release_are_accepted(delivery: World) -> None:
    dev, bundle, _ = _device(delivery, "rpi-4", "tiny:1", tags=["lab"])
    other, _, other_release = _device(delivery, "rpi-4", "tiny:3")
    # the other device's bundle, published to the cohort 'lab' outside a release
    repo = UpdateRepository.open(delivery.ws.root)
    target = repo.publish(delivery.ws.root / "releases" / other_release / f"{other.device_id}.tmlb", cohort="lab")
    cohort_bundle = target.info.bundle_id
    r = send(delivery.plane, dev, dev.seal(dev.window(cohort_bundle, 15)))
    assert r.status_code == 201, r.text
    # a new release for the device: the bundle it replaced (its baseline) is still its own
    newer = delivery.release("tiny:2", [dev.device_id])
    r = send(
        delivery.plane, dev, dev.seal(dev.window(bundle, 15), dev.window(newer["assignments"][0]["bundle_id"], 15))
    )
    assert r.status_code == 201, r.text
    with delivery.ws.engine.connect() as conn:
        refs = conn.execute(text("SELECT bundle_id, ref, model, version FROM telemetry_windows ORDER BY id")).all()
    assert [tuple(r) for r in refs] == [
        (cohort_bundle, "tiny:3", "tiny", 3),
        (bundle, "tiny:1", "tiny", 1),
        (newer["assignments"][0]["bundle_id"], "tiny:2", "tiny", 2),
    ]


def test_a_full_store_is_flagged_on_the_device_view(delivery: World) -> None:
    dev, bundle, _ = _device(delivery)
    full = StoreStatus("full", pending_windows=64, merged_windows=7, dropped_windows=0, error="store at 4 MiB cap")
    assert send(delivery.plane, dev, dev.seal(dev.window(bundle, 10), store=full)).status_code == 201
    assert send(delivery.plane, dev, dev.seal(dev.window(bundle, 10))).status_code == 201  # a 1.0-style batch
    reader = delivery.plane.http(delivery.read_key)
    doc = reader.get(f"/v1/devices/{dev.device_id}/telemetry", params={"limit": 5}).json()
    assert doc["store_flagged"] is True
    assert doc["store"]["status"] == "full" and doc["store"]["merged_windows"] == 7
    assert [b["store"] for b in doc["batches"]] == [None, {**full.to_dict()}]
    assert reader.get("/v1/devices/0123456789abcdef/telemetry").status_code == 404
    assert delivery.plane.http().get(f"/v1/devices/{dev.device_id}/telemetry").status_code == 401


def test_the_batch_spec_limits_hold_at_the_door(delivery: World) -> None:
    """A batch of the maximum window count passes; the server checks sizes the spec allows."""
    dev, bundle, _ = _device(delivery)
    windows = [dev.window(bundle, 2, duration_s=1.0) for _ in range(8)]
    batch = TelemetryBatch(dev.device_id, dev.now, tuple(windows))
    sealed = seal_batch(batch, dev.keys.signing)
    r = send(delivery.plane, dev, sealed)
    assert r.status_code == 201 and r.json()["windows"] == 8

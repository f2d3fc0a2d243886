"""Metered releases: ``metering={...}`` puts a ``[policies.metering]`` table into every bundle's signed
manifest (the release's model name, the reservation block), which a device reads from the verified
manifest; bad options are refused before anything is built (service: SpecError; API: 422 JSON; CLI:
non-zero exit). A metering refusal on the device is the license's answer, not a failure of the
bundle: the health watch does not count it toward a rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import text

import delivery_world
from cli_process import invoke_cli
from delivery_world import World
from tinymlops.bundle.reader import open_bundle
from tinymlops.edge.agent.health import HealthWatch
from tinymlops.edge.agent.serving_stats import ServingStats
from tinymlops.edge.middleware import Request, Response
from tinymlops.errors import LicenseRevokedError, QuotaExceededError, SpecError
from tinymlops.metering.meter import DEFAULT_BLOCK
from tinymlops.release.metering import metering_table
from tinymlops.release.service import BUNDLE_SUFFIX, RELEASES_DIR, ReleaseService

delivery = delivery_world.delivery  # the live world (fixture)


def _count(world: World, table: str) -> int:
    with world.ws.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def test_a_metered_release_puts_the_policy_into_every_verified_manifest(delivery: World, tmp_path: Path) -> None:
    conn = delivery.connect(tmp_path / "a")
    record = ReleaseService(delivery.ws).create_release("tiny:2", metering={"block": 16})
    expected = {"enabled": True, "model": "tiny", "block": 16}
    assert record.metering == expected
    assignment = record.assignment(conn.device_id)
    assert assignment.metering == expected
    data = (Path(delivery.ws.root) / RELEASES_DIR / record.id / f"{conn.device_id}{BUNDLE_SUFFIX}").read_bytes()
    assert hashlib.sha256(data).hexdigest() == assignment.bundle_sha256
    opened = open_bundle(data, key=conn.keys, trusted_release_keys=conn.trusted_keys)
    assert dict(opened.manifest.policies["metering"]) == expected
    assert "telemetry" in opened.manifest.policies  # metering joins the telemetry policy, not replaces it

    free = ReleaseService(delivery.ws).create_release("tiny:2")
    assert free.metering is None and free.assignment(conn.device_id).metering is None
    default = ReleaseService(delivery.ws).create_release("tiny:3", metering={})
    assert default.metering == {"enabled": True, "model": "tiny", "block": DEFAULT_BLOCK}
    assert ReleaseService(delivery.ws).get_release(record.id).metering == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block": 0}, "block"),
        ({"block": True}, "block"),
        ({"block": 1 << 21}, "block"),
        ({"blocks": 3}, "unknown key"),
        ([("block", 3)], "table"),
    ],
)
def test_bad_options_are_refused_naming_them(options: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        metering_table(options, "digits")  # type: ignore[arg-type]


def test_a_bad_option_is_refused_before_anything_is_built(delivery: World, tmp_path: Path) -> None:
    delivery.connect(tmp_path / "a")
    with pytest.raises(SpecError, match="block"):
        ReleaseService(delivery.ws).create_release("tiny:1", metering={"block": -1})
    assert _count(delivery, "releases") == 0
    releases = Path(delivery.ws.root) / RELEASES_DIR
    assert not releases.exists() or not any(releases.iterdir())


def test_the_api_and_the_cli_take_the_option(delivery: World, tmp_path: Path) -> None:
    conn = delivery.connect(tmp_path / "a")
    doc = delivery.release("tiny:1", metering={"block": 8})
    assert doc["metering"] == {"enabled": True, "model": "tiny", "block": 8}
    assert doc["assignments"][0]["selection"]["metering"] == doc["metering"]
    assert delivery.show(doc["id"])["metering"] == doc["metering"]
    http = delivery.plane.http(delivery.release_key)
    before = _count(delivery, "releases")
    for bad in ({"block": 0}, {"block": 1.5}, {"block": "eight"}, {"model": "other"}):
        answer = http.post("/v1/releases", json={"model": "tiny:1", "metering": bad})
        assert answer.status_code == 422, answer.text
        assert "metering" in answer.json()["error"]["message"]
    assert _count(delivery, "releases") == before

    ws = Path(delivery.ws.root)
    out = invoke_cli(ws, "release", "create", "tiny:1", "--metered", "--metering-block", "4")
    assert "metering: pay per query under a license for 'tiny' (reservations of 4 calls)" in out.stdout
    refused = invoke_cli(ws, "release", "create", "tiny:1", "--metering-block", "4", code=2)
    assert "--metering-block applies only with --metered" in refused.stderr
    assert _count(delivery, "releases") == before + 1
    assert conn.device_id


def test_a_metering_refusal_is_not_a_bundle_failure() -> None:
    unhealthy: list[str] = []
    stats = ServingStats("b" * 16)
    watch = HealthWatch(2, lambda _w, reason: unhealthy.append(reason), stats=stats)
    refusals = [
        QuotaExceededError("used up", reason="quota", remaining=0, limit=5, license_id=None),
        LicenseRevokedError("revoked", reason="revoked", remaining=0, limit=5, license_id="a" * 32),
    ]

    def refuse(_request: Request) -> Response:
        raise refusals[0]

    for exc in refusals * 3:
        refusals[0] = exc
        with pytest.raises(type(exc)):
            watch(Request({}), refuse)
    assert unhealthy == [] and watch.failures == 0

    def broken(_request: Request) -> Response:
        raise RuntimeError("model failed")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            watch(Request({}), broken)
    assert len(unhealthy) == 1 and watch.failures == 2

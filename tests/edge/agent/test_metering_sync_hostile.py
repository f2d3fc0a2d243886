"""The metering sync against a broken or hostile control plane: whatever comes back — a truncated
answer, a status line that is not HTTP, JSON nested past the parser's depth, an error body whose
fields collide with the client's own — the sync ends with an outcome naming the problem (it never
raises), loses nothing, and the next contact with a sane server delivers every entry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from metering_testbed import (  # noqa: F401 (fixtures)
    Device,
    MeteredBundles,
    device_fixture,
    installed,
    metered_bundles_fixture,
    server_fixture,
)

from metering_world import Clock
from simulators.licensing_server import LICENSES_PATH, USAGE_PATH, LicensingServer
from tinymlops.spec.usage_report import UsageReport

TRUNCATED_201 = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    + b'{"report_id": 1, "next_seq": '
)
NOT_HTTP = b"ICY 200 OK\r\n\r\n"
DEEP = b"[" * 200_000 + b"]" * 200_000
DEEP_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(DEEP), DEEP)
COLLIDING = json.dumps({"error": {"type": "SpecError", "message": "not today", "self": 1, "status": "x"}}).encode()
COLLIDING_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(COLLIDING),
    COLLIDING,
)


@pytest.mark.parametrize(
    ("raw", "path", "needle"),
    [
        (TRUNCATED_201, USAGE_PATH, "ServerUnreachableError"),
        (NOT_HTTP, LICENSES_PATH, "ServerUnreachableError"),
        (DEEP_200, LICENSES_PATH, "not JSON"),
        (COLLIDING_400, USAGE_PATH, "SpecError: not today"),
    ],
    ids=["truncated-201", "not-http", "json-too-deep", "error-fields-colliding"],
)
def test_a_broken_answer_ends_the_sync_with_an_error_and_loses_nothing(
    device: Device, raw: bytes, path: str, needle: str
) -> None:
    installed(device, 100)
    device.serve(9)  # three blocks of 4
    device.server.answer_raw(raw, path=path)
    outcome = device.sync()  # raised (IncompleteRead, BadStatusLine, RecursionError, TypeError) before
    assert outcome.reports == 0 and any(needle in e for e in outcome.errors), outcome.errors
    outcome = device.sync()
    assert outcome.ok and outcome.reports == 1
    device.assert_server_has_the_whole_chain()


def test_a_truncated_201_is_an_answer_never_seen_so_the_same_bytes_go_again(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    clock = Clock(time.time())
    device = Device(tmp_path, metered_bundles, server, agent_kw={"clock": clock})
    try:
        installed(device, 100)
        device.serve(5)
        device.server.answer_raw(TRUNCATED_201, path=USAGE_PATH)
        device.sync()
        clock.now += 10  # a report built anew would say so in its created_at
        device.sync()
        sent = [body for p, body in device.server.received if p == USAGE_PATH]
        assert sent[-1] == sent[-2]  # resent byte for byte: a server that did take it answers "duplicate"
        assert UsageReport.from_bytes(sent[-1]).first_seq == 1
    finally:
        device.close()

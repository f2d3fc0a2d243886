"""``DeviceService.authenticate`` directly, on SQLite and PostgreSQL: what it accepts and records, that
every refusal leaves the tables as they were, and that it holds under concurrency — many devices'
requests at once all pass (SQLite writers queue on the lock instead of failing), and the same signed
request sent from many threads at once is accepted exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from enrolled_devices import enrol_device
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.request_auth import ReceivedRequest, sign_request
from tinymlops.devices.schema import DeviceNonceRow, DeviceRow
from tinymlops.devices.service import DeviceService
from tinymlops.errors import (
    AccessDeniedError,
    AuthenticationError,
    ReplayedRequestError,
    RequestSignatureError,
    StaleRequestError,
)

TARGET = "/v1/tuf/metadata/timestamp.json"


def enrol(ws: Any, n: int) -> list[DeviceKeys]:
    """``n`` devices enrolled the way the server does it (a signed enrolment request)."""
    return [enrol_device(ws) for _ in range(n)]


def signed(keys: DeviceKeys, target: str = TARGET, *, method: str = "GET", body: bytes = b"", **kw: Any) -> Any:
    auth = sign_request(keys.signing, method, target, body, **kw)
    return ReceivedRequest(method, target, body, tuple(auth.headers().items()))


def state(ws: Any) -> tuple[int, dict[str, Any]]:
    """(nonce rows, last_seen by device): what an authenticated request changes."""
    with ws.engine.connect() as conn:
        nonces = conn.execute(select(func.count()).select_from(DeviceNonceRow)).scalar_one()
        seen = dict(conn.execute(select(DeviceRow.id, DeviceRow.last_seen)).all())
    return nonces, seen


def test_an_accepted_request_records_its_nonce_and_last_seen(workspace: Any) -> None:
    (keys,) = enrol(workspace, 1)
    clock = [time.time() + 5.0]
    service = DeviceService(workspace.engine, clock=lambda: clock[0])
    nonces_before, seen_before = state(workspace)
    record = service.authenticate(signed(keys))
    assert record.id == keys.device_id and record.active and record.profile_name == "rpi-4"
    assert record.signing_public == keys.signing_public and record.wrapping_public == keys.wrapping_public
    assert record.last_seen is not None and abs(record.last_seen.timestamp() - clock[0]) < 1e-3
    nonces, seen = state(workspace)
    assert nonces == nonces_before + 1
    assert seen[keys.device_id] is not None and seen[keys.device_id] != seen_before[keys.device_id]
    assert service.get(keys.device_id).last_seen == record.last_seen


@pytest.mark.parametrize("case", ["unknown", "revoked", "stale", "tampered", "other_owner", "replay"])
def test_every_refusal_changes_nothing(workspace: Any, case: str) -> None:
    mine, other = enrol(workspace, 2)
    service = DeviceService(workspace.engine)
    expected: type[Exception]
    request = signed(mine)
    must_be = None
    if case == "unknown":
        request, expected = signed(DeviceKeys.generate()), AuthenticationError
    elif case == "revoked":
        service.revoke(mine.device_id)
        expected = AuthenticationError
    elif case == "stale":
        request, expected = signed(mine, timestamp=int(time.time()) - 3600), StaleRequestError
    elif case == "tampered":
        auth = sign_request(mine.signing, "GET", TARGET)
        request = ReceivedRequest("GET", "/v1/tuf/metadata/2.root.json", b"", tuple(auth.headers().items()))
        expected = RequestSignatureError
    elif case == "other_owner":
        must_be, expected = other.device_id, AccessDeniedError
    else:
        service.authenticate(request)
        expected = ReplayedRequestError
    before = state(workspace)
    with pytest.raises(expected) as info:
        service.authenticate(request, must_be=must_be)
    assert isinstance(info.value, AuthenticationError | AccessDeniedError)
    assert state(workspace) == before


def test_many_devices_at_once_all_pass(workspace: Any) -> None:
    devices = enrol(workspace, 8)
    service = DeviceService(workspace.engine)
    per_device = 25
    requests = {k.device_id: [signed(k) for _ in range(per_device)] for k in devices}
    nonces_before, _ = state(workspace)
    start = threading.Barrier(len(devices))

    def burst(device_id: str) -> int:
        start.wait()
        return sum(service.authenticate(r).id == device_id for r in requests[device_id])

    with ThreadPoolExecutor(len(devices)) as pool:
        accepted = list(pool.map(burst, requests))
    assert accepted == [per_device] * len(devices)
    nonces, seen = state(workspace)
    assert nonces == nonces_before + per_device * len(devices)
    assert all(seen[k.device_id] is not None for k in devices)


def test_the_same_request_from_many_threads_is_accepted_once(workspace: Any) -> None:
    (keys,) = enrol(workspace, 1)
    service = DeviceService(workspace.engine)
    threads = 8
    for _ in range(3):
        request = signed(keys)
        start = threading.Barrier(threads)

        def attempt(_: int, request: Any = request, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                service.authenticate(request)
                return "accepted"
            except ReplayedRequestError:
                return "replay"

        with ThreadPoolExecutor(threads) as pool:
            outcomes = sorted(pool.map(attempt, range(threads)))
        assert outcomes == ["accepted"] + ["replay"] * (threads - 1)


STEPS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.booleans()), min_size=1, max_size=12)


def test_accepted_exactly_when_signed_and_new(sqlite_workspace: Any) -> None:
    """A model of the replay cache: a request passes iff its signature holds and its (device, nonce)
    was not accepted before; a refused one (bad signature, replay) changes nothing."""
    devices = enrol(sqlite_workspace, 3)
    service = DeviceService(sqlite_workspace.engine)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(STEPS)
    def check(steps: list[tuple[int, int, bool]]) -> None:
        run = uuid.uuid4().hex[:24]  # this example's nonces (the database is shared by all examples)
        spent: set[tuple[int, int]] = set()
        for device, nonce_no, genuine in steps:
            auth = sign_request(devices[device].signing, "GET", TARGET, nonce=f"{run}{nonce_no:08x}")
            target = TARGET if genuine else TARGET + "?forged=1"
            request = ReceivedRequest("GET", target, b"", tuple(auth.headers().items()))
            before = state(sqlite_workspace)
            if not genuine:
                with pytest.raises(RequestSignatureError):
                    service.authenticate(request)
                assert state(sqlite_workspace) == before
            elif (device, nonce_no) in spent:
                with pytest.raises(ReplayedRequestError):
                    service.authenticate(request)
                assert state(sqlite_workspace) == before
            else:
                assert service.authenticate(request).id == devices[device].device_id
                assert state(sqlite_workspace)[0] == before[0] + 1
                spent.add((device, nonce_no))

    check()

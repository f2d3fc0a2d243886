"""What the licensing reads cost in SQL, on SQLite and PostgreSQL: a fleet has thousands of devices,
so every listing (the API's, the CLI's, the dashboard's) must be a fixed number of statements, each
with a fixed number of bound parameters — no query per license (N+1), and no ``IN (...)`` list of
every license id (PostgreSQL refuses a statement with more than 65,535 parameters; a long list is
also re-planned each time). Measured by counting what reaches the database driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from enrolled_devices import enrol_device
from licensing_world import DAY, MODEL, MeteredDevice, licensing
from metering_world import T0
from tinymlops.crypto.keys import key_id
from tinymlops.errors import ReportGapError
from tinymlops.server.dashboard import views_licenses

#: the most bound parameters one listing statement may carry (the filters and the flag kinds)
MAX_PARAMS = 12


@contextmanager
def statements(engine: Any) -> Iterator[list[tuple[str, int]]]:
    """Every statement sent to the driver while inside, with its number of bound parameters."""
    seen: list[tuple[str, int]] = []

    def record(_conn, _cursor, statement, parameters, _context, executemany) -> None:  # type: ignore[no-untyped-def]
        count = len(parameters[0] if executemany and parameters else parameters or ())
        seen.append((statement, count))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _shape(engine: Any, call: Callable[[], object]) -> tuple[int, int]:
    """(statements, the most parameters of one) that ``call`` sends."""
    with statements(engine) as seen:
        call()
    return len(seen), max((n for _, n in seen), default=0)


@pytest.fixture
def fleet(workspace):  # type: ignore[no-untyped-def]
    """A service over a fleet: 2 devices at first; ``grow(n)`` licenses n more (each with a top-up, and
    every third revoked)."""
    service, _, clock = licensing(workspace)

    def grow(n: int) -> None:
        for i in range(n):
            device = key_id(enrol_device(workspace).signing)
            clock.now += 1
            root = service.issue(device_id=device, model=MODEL, queries=10, valid_until=T0 + DAY)
            top = service.top_up(root.license_id, queries=5)
            if i % 3 == 0:
                service.revoke(top.license_id, reason="unpaid")

    grow(2)
    return workspace, service, grow


def test_listing_licenses_and_chains_is_a_fixed_number_of_small_statements(fleet) -> None:  # type: ignore[no-untyped-def]
    ws, service, grow = fleet
    some = service.list()[0]
    calls: dict[str, Callable[[], object]] = {
        "list": service.list,
        "list revoked": lambda: service.list(status="revoked"),
        "list of a device": lambda: service.list(device_id=some.device_id),
        "chains": service.chains,
        "audit": service.audit,
        "get": lambda: service.get(some.license_id),
        "dashboard list": lambda: views_licenses.licenses_view(service, show="all"),
        "dashboard license": lambda: views_licenses.license_detail(service, some.license_id),
    }
    small = {name: _shape(ws.engine, call) for name, call in calls.items()}
    grow(30)
    assert len(service.list()) == 64
    large = {name: _shape(ws.engine, call) for name, call in calls.items()}
    for name in calls:
        (few, _), (many, params) = small[name], large[name]
        assert many == few, f"{name}: {few} statements for 4 licenses, {many} for 64"
        assert params <= MAX_PARAMS, f"{name}: a statement with {params} parameters for 64 licenses"


def test_an_ordinary_report_reads_only_the_entries_around_it(workspace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A report that links (the usual case) never reads the chain's earlier entries: the search for
    the latest fork below a report (a GROUP BY over every earlier entry) runs only for a report that
    does not link while the stored chain has entries before it — and then sends it to that fork."""
    service, issuer, clock = licensing(workspace)
    device = MeteredDevice(workspace, service, issuer, clock, tmp_path / "dev", block=1)
    service.issue(device_id=device.id, model=MODEL, queries=1000, valid_until=T0 + DAY)
    device.sync()
    device.serve(20)
    device.flush()
    backup = device.backup(tmp_path / "backup")  # at seq 21
    device.serve(10)
    with statements(workspace.engine) as seen:
        device.flush()  # links at the head
    assert seen and not [sql for sql, _ in seen if "GROUP BY" in sql]
    device.restore(backup)
    device.serve(10)  # seq 21..30 again, other entries
    assert [f.kind for f in device.send(15).flags] == ["rollback"]  # type: ignore[union-attr]
    second = device.backup(tmp_path / "second")  # the restored copy at seq 31
    device.serve(5)
    device.send()  # its branch reaches seq 35
    device.restore(second)
    device.serve(12)  # seq 31..42, forking the restored copy's branch at 31
    with statements(workspace.engine) as seen:
        answer = device.send(36)  # does not link at 35: sent back to the latest fork below it
    assert isinstance(answer, ReportGapError) and answer.next_seq == 21
    assert [sql for sql, _ in seen if "GROUP BY" in sql]
    assert [f.kind for f in device.send(21).flags] == ["rollback"]  # type: ignore[union-attr]
    device.close()

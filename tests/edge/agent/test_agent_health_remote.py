"""Health reports over the wire (tinymlops.edge.agent.remote.HealthReporter) against a real control
plane: a real agent installs a release, serves real digits, and the server stores a report of exactly
those predictions for that bundle — and, after the next release, the previous bundle's window as its
baseline. Reports wait on disk (apart from install reports) while the server cannot take them, are
sent before the next check, and are dropped only when the server refuses them for good."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import delivery_world
from delivery_world import World, X
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.edge.agent import AgentConfig, InstallResult
from tinymlops.edge.agent.remote import (
    HEALTH_REPORTS_DIR,
    REPORTS_DIR,
    HealthReporter,
    InstallReporter,
    connect,
    describe,
)
from tinymlops.errors import InputMismatchError
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import HealthReport

delivery = delivery_world.delivery  # the live world (fixture)

#: report at every cycle
EVERY_CYCLE = AgentConfig(poll_interval=0.2, backoff_base=0.05, backoff_cap=0.4, health_interval=0)


def stored(world: World, device_id: str) -> list[Any]:
    """The server's records of the device's health reports, oldest first."""
    services = world.plane.server.app.state.services
    return sorted(services.releases.health.list(device_id=device_id), key=lambda r: r.id)


def report(bundle_id: str, predictions: int = 3, **kw: Any) -> HealthReport:
    return HealthReport(
        bundle_id=bundle_id,
        window_start=100.0,
        window_end=160.0,
        predictions=predictions,
        latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
        at=161.0,
        **kw,
    )


@pytest.mark.slow
def test_a_real_agent_reports_the_digits_it_served_and_the_previous_release_as_baseline(
    delivery: World, tmp_path: Path, digits_model: Any
) -> None:
    delivery.ws.registry.register("digits", digits_model.onnx)
    delivery.ws.registry.register("digits", digits_model.onnx)  # version 2: the next release
    conn = delivery.connect(tmp_path / "dev")
    first = delivery.release("digits:1", [conn.device_id])["assignments"][0]["bundle_id"]
    context = DeviceContext(battery=0.55, network="cellular")
    n = 120
    with delivery.agent(conn, config=EVERY_CYCLE, context=lambda: context) as agent:
        assert agent.run_once().action == "installed"
        digits = digits_model.x_test[:n]
        answers = [int(np.argmax(next(iter(agent.predict(digits[i : i + 1]).outputs.values())))) for i in range(n)]
        assert np.mean(np.array(answers) == digits_model.y_test[:n]) > 0.8  # it really classifies digits
        with pytest.raises(InputMismatchError):  # the caller's mistake is not the bundle's prediction
            agent.predict(np.zeros((1, 64), np.float32))
        assert agent.run_once().action == "idle"

        (served,) = stored(delivery, conn.device_id)
        doc = served.to_dict()
        assert (doc["bundle_id"], doc["predictions"], doc["errors"]) == (first, n, 0)
        assert doc["ref"] == "digits:1" and doc["release_id"] is not None
        assert 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"] <= doc["latency_ms"]["max"] < 1000
        assert doc["context"]["network"] == "cellular" and doc["context"]["battery"] == 0.55

        second = delivery.release("digits:2", [conn.device_id])["assignments"][0]["bundle_id"]
        for i in range(7):
            agent.predict(digits[i : i + 1])
        assert agent.run_once().action == "installed"  # the old window goes with the install
        for i in range(5):
            agent.predict(digits[i : i + 1])
        agent.run_once()
    records = stored(delivery, conn.device_id)
    assert [(r.report.bundle_id, r.report.predictions) for r in records] == [(first, n), (first, 7), (second, 5)]
    stats = delivery.plane.server.app.state.services.releases.health.bundle_stats([(conn.device_id, first)])
    assert (stats.predictions, stats.errors) == (n + 7, 0)  # the baseline the next release is judged against
    assert describe(tmp_path / "dev")["pending_health_reports"] == 0


def test_reports_the_server_cannot_take_wait_on_disk_and_go_before_the_next_check(
    delivery: World, tmp_path: Path
) -> None:
    skew = [0.0]
    data = tmp_path / "dev"
    conn = connect(
        delivery.url,
        data,
        enrolment_token=delivery.plane.enrolment_token(),
        profile="rpi-4",
        clock=lambda: time.time() + skew[0],
    )
    bundle_id = delivery.release("tiny:1", [conn.device_id])["assignments"][0]["bundle_id"]
    with delivery.agent(conn, config=EVERY_CYCLE) as agent:
        assert agent.run_once().action == "installed"
        for _ in range(4):
            agent.predict(X)
        skew[0] = -3600.0  # the device's clock falls an hour behind: the server refuses its signatures (401)
        assert agent.run_once().action == "error"  # the check failed; the report waits on disk
        queued = sorted((data / HEALTH_REPORTS_DIR).glob("*.json"))
        assert len(queued) == 1 and json.loads(queued[0].read_text())["predictions"] == 4
        assert describe(data)["pending_health_reports"] == 1 and stored(delivery, conn.device_id) == []
        assert not list((data / REPORTS_DIR).glob("*.json"))  # the install report went earlier; none waits

        skew[0] = 0.0
        assert agent.run_once().action == "idle"  # sent before the check
    (record,) = stored(delivery, conn.device_id)
    assert (record.report.bundle_id, record.report.predictions) == (bundle_id, 4)
    assert describe(data)["pending_health_reports"] == 0
    assert conn.health_reporter is not None and conn.health_reporter.sent == 1


def test_the_agent_over_a_connection_reports_by_default_and_can_be_told_not_to(delivery: World, tmp_path: Path) -> None:
    conn = delivery.connect(tmp_path / "dev")
    delivery.release("tiny:1", [conn.device_id])
    with delivery.agent(conn, config=EVERY_CYCLE, health_reporter=None) as agent:
        agent.run_once()
        agent.predict(X)
        agent.run_once()
        assert agent.serving is None
    assert stored(delivery, conn.device_id) == []
    taken: list[HealthReport] = []
    with delivery.agent(conn, config=EVERY_CYCLE, health_reporter=taken.append) as agent:
        agent.predict(X)
        agent.run_once()
    assert [r.predictions for r in taken] == [1] and stored(delivery, conn.device_id) == []


# --- the queue's rules, against a scripted HTTP server ----------------------------------------------
@pytest.fixture
def agent_keys() -> DeviceKeys:
    return DeviceKeys.generate()


class Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted status (201 when none is left), keeping what it took."""

    statuses: ClassVar[list[int]]
    bodies: ClassVar[list[dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.statuses.pop(0) if self.statuses else 201
        if status == 201:
            self.bodies.append({"path": self.path, **json.loads(body)})
        payload = json.dumps({"error": {"type": "X", "message": "scripted"}} if status >= 300 else {"id": 1})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[Scripted]]]:
    handler = type("Handler", (Scripted,), {"statuses": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_transient_refusals_keep_a_report_and_permanent_ones_drop_it(
    scripted: tuple[str, type[Scripted]], tmp_path: Path, agent_keys: Any
) -> None:
    url, handler = scripted
    reporter = HealthReporter(DeviceClient(url, agent_keys), tmp_path / "health")
    handler.statuses = [503, 500, 422, 201, 400, 413, 201]
    bundle = "ab" * 16
    reporter(report(bundle, 1))  # 503: kept
    assert len(reporter.pending()) == 1
    reporter(report(bundle, 2))  # 500 on the oldest: both kept, in order
    assert len(reporter.pending()) == 2 and handler.bodies == []
    assert reporter.flush() == 1  # 422 drops #1 for good, 201 takes #2
    assert [b["predictions"] for b in handler.bodies] == [2] and reporter.dropped == 1
    for n in (3, 4, 5):
        reporter.enqueue(report(bundle, n))
    assert reporter.flush() == 1  # 400 and 413 drop, 201 takes the last
    assert [b["predictions"] for b in handler.bodies] == [2, 5] and reporter.dropped == 3
    assert {b["path"] for b in handler.bodies} == {"/v1/devices/me/health"}
    assert reporter.pending() == [] and reporter.sent == 2


def test_the_queue_is_bounded_and_skips_what_it_cannot_read(
    scripted: tuple[str, type[Scripted]], tmp_path: Path, agent_keys: Any
) -> None:
    url, handler = scripted
    queue = tmp_path / "reports" / "health"
    away = HealthReporter(DeviceClient("http://127.0.0.1:9", agent_keys, timeout_s=2), queue, max_pending=3)
    for n in range(1, 6):
        away(report("ab" * 16, n))
    assert len(away.pending()) == 3 and away.dropped == 2  # the oldest went
    (queue / "00000000000000000000-garbage.json").write_text("{not json")
    (queue / "00000000000000000001-other.json").write_text(json.dumps({"status": "installed"}))
    back = HealthReporter(DeviceClient(url, agent_keys), queue)
    assert back.flush() == 3 and back.dropped == 2
    assert [b["predictions"] for b in handler.bodies] == [3, 4, 5]


def test_a_report_that_cannot_be_queued_is_not_taken(tmp_path: Path, agent_keys: Any) -> None:
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the queue directory should be")
    reporter = HealthReporter(DeviceClient("http://127.0.0.1:9", agent_keys), blocker / "health")
    with pytest.raises(OSError):
        reporter(report("ab" * 16))  # the agent keeps the window when this raises


def test_install_reports_and_health_reports_queue_apart(tmp_path: Path, agent_keys: Any) -> None:
    away = DeviceClient("http://127.0.0.1:9", agent_keys, timeout_s=2)
    installs = InstallReporter(away, tmp_path / REPORTS_DIR)
    health = HealthReporter(away, tmp_path / HEALTH_REPORTS_DIR)
    health(report("ab" * 16))
    installs(InstallResult("installed", "ok", bundle_id="ab" * 16, active_bundle_id="ab" * 16, at=1.0))
    assert len(installs.pending()) == 1 and len(health.pending()) == 1
    assert installs.flush() == 0 and health.flush() == 0  # unreachable: both kept, neither read the other's
    assert installs.dropped == 0 and health.dropped == 0

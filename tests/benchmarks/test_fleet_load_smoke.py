"""The fleet-load benchmark's path end to end with tiny numbers (20 devices for 3 s, SQLite only):
``tinymlops serve`` starts as a process, the devices enrol through the API, a release reaches them,
python-tuf's real client agrees with what the simulated devices fetch, the load runs, every request
gets the answer it should, and the result renders. The numbers themselves are not judged here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_fleet_load

        yield bench_fleet_load
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow
def test_a_tiny_fleet_runs_against_a_real_server(bench: Any, tmp_path: Path) -> None:
    from rich.console import Console

    tiny = {
        "devices": 20,
        "interval_s": 1.0,
        "duration_s": 3.0,
        "sweep_rps": [40],
        "step_s": 2.0,
        "profile_s": 0.0,
        "artifacts": str(tmp_path),
    }
    result = bench.run(True, tiny, postgres=False)
    sqlite = result["backends"]["sqlite"]
    setup = sqlite["setup"]
    assert setup["bundles"] == 20 and setup["health_endpoint"] is True
    assert [tuple(x) for x in setup["real_client_noop_check"]] == [("2.root.json", 404), ("timestamp.json", 200)]

    headline = sqlite["headline"]
    kinds = headline["kinds"]
    # every device polled at least once in 3 s at a 1 s interval; each poll is a root probe + timestamp
    assert headline["requests"] >= 2 * 20 and kinds["root_probe"]["n"] == kinds["timestamp"]["n"] >= 20
    assert {"install_report", "health_report"} <= set(kinds)
    assert headline["errors"] == {} and headline["error_count"] == 0, headline["errors"]
    assert headline["cpu"]["server_pct"] > 0 and headline["cpu"]["client_pct"] > 0
    assert len(sqlite["sweep"]) == 1 and sqlite["sweep"][0]["planned_rps"] == pytest.approx(40)
    assert result["skipped"] == {"postgresql": "not asked for"}
    assert result["goals"][0]["passed"] is True  # zero errors

    console = Console(width=200, record=True)
    for table in bench.render(result):
        console.print(table)
    text = console.export_text()
    assert "sqlite: 20 devices" in text and "Goals" in text

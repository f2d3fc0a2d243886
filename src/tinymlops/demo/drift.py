"""The demo's drift step: part of the fleet starts seeing shifted inputs, and the server finds exactly
which cohort and which input features — from sketches, without a raw input leaving any device.

The fleet is split into two sites by tag (``site-north``, ``site-south``; every profile has a device
at each). After the rollouts, every device closes its telemetry window (so what follows is in
windows of its own), then classifies the held-out digits once more, one at a time as a device
would. The devices of ``site-south`` see them through a sensor that has drifted: three pixels of the
8×8 image — (row 2, column 3), (2, 4) and (5, 4) — read half a standard deviation (of that pixel
over the model's eval set) brighter. Everything else is the same data.

The devices' agents profile what they serve (per pixel a KLL sketch and moments, a fixed random
projection, the predicted-class and confidence histograms; :mod:`tinymlops.observe.sketches`), seal
the window (gzip, signed with the device key) and upload it — the demo devices consented, on any
network. The server compares each site's merged profile with the reference profile computed from
the eval set when the model was registered (``GET /v1/models/{name}/drift?by=tag&since=…``), and the
demo checks that it names exactly the three shifted pixels, in ``site-south`` only.

Then an audit of what the server holds: the JSON of every uploaded window is searched for every input
row the devices served — written the way JSON writes numbers — and none is found: no input row is
visible in the telemetry's JSON (sketches are base64 bytes, which this search does not decode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from tinymlops.errors import OperationError
from tinymlops.fleet.workload import InputShift

SITES = ("site-north", "site-south")
SHIFTED_SITE = "site-south"
#: the drifted pixels of the 8×8 digit, as (row, column)
SHIFTED_PIXELS = ((2, 3), (2, 4), (5, 4))
SHIFT_SD = 0.5


def site_of(index: int) -> str:
    """The site of the ``index``-th device of the fleet (alternating: each profile has one at each)."""
    return SITES[index % len(SITES)]


#: the drifted sensor: the shifted pixels ``SHIFT_SD`` standard deviations (over the inputs shifted) brighter
SHIFT = InputShift(tuple(r * 8 + c for r, c in SHIFTED_PIXELS), SHIFT_SD)


def shifted_features() -> list[str]:
    return [f"element:{i}" for i in SHIFT.features]


@dataclass
class CohortFinding:
    label: str
    verdict: str
    devices: int
    rows: int
    drifted_features: list[str]
    drifted_derived: list[str]
    prediction_drift: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DriftResult:
    since: float
    shifted_site: str
    shifted_features: list[str]
    summary: str
    cohorts: list[CohortFinding]
    uploads: dict[str, int]
    audit: dict[str, int]
    report_url: str = ""
    dashboard_url: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["cohorts"] = [c.to_dict() for c in self.cohorts]
        return out


def run_drift(
    http: Any,
    devices: Sequence[Any],
    model: str,
    x01: np.ndarray,
    *,
    engine: Engine,
    server_url: str,
    classify: Callable[[Any, np.ndarray], tuple[np.ndarray, int]],
    say: Callable[[str], None] = lambda _m: None,
) -> DriftResult:
    """The drift step (module doc). ``devices`` have ``.agent``, ``.site`` and ``.conn``;
    ``classify(agent, x)`` runs one prediction per row on the device."""
    serving = [d for d in devices if d.agent.runtime is not None]
    if not serving:
        raise OperationError("no device runs a bundle: nothing to watch for drift")
    for d in serving:  # what the devices served so far goes in windows that end now
        d.agent.flush_telemetry()
    since = time.time()
    shifted = SHIFT.apply(x01)
    rng = np.random.default_rng(6)
    served: list[np.ndarray] = []
    uploads = {"batches": 0, "windows": 0, "refused": 0}
    for d in serving:
        x = shifted if d.site == SHIFTED_SITE else x01
        x = x[rng.permutation(len(x))]
        classify(d.agent, x)
        served.append(x)
        outcome = d.agent.flush_telemetry()
        if outcome is None or outcome.error or outcome.deferred:
            why = "nothing tried" if outcome is None else (outcome.error or outcome.deferred)
            raise OperationError(f"device {d.conn.device_id} could not upload its telemetry: {why}")
        uploads["batches"] += outcome.sent
        uploads["windows"] += outcome.windows
        uploads["refused"] += outcome.refused
    say(
        f"{len(serving)} devices classified the held-out digits again; {SHIFTED_SITE}'s see pixels "
        f"{', '.join(f'({r},{c})' for r, c in SHIFTED_PIXELS)} {SHIFT_SD} SD brighter "
        f"({uploads['batches']} signed telemetry batches, {uploads['windows']} windows uploaded)"
    )
    if uploads["refused"]:
        raise OperationError(f"the server refused {uploads['refused']} telemetry batch(es)")
    base = model.split(":", 1)[0]
    params = {"by": "tag", "since": since_iso(since)}  # the windows closed above all ended before since
    response = http.get(f"/v1/models/{base}/drift", params=params)
    if response.status_code >= 400:
        raise OperationError(f"drift report: HTTP {response.status_code}: {response.text[:300]}")
    report = response.json()
    cohorts = [
        CohortFinding(
            label=c["label"],
            verdict=c["verdict"],
            devices=c["devices"],
            rows=c["rows"],
            drifted_features=list(c["drifted_features"]),
            drifted_derived=list(c["drifted_derived"]),
            prediction_drift=list(c["prediction_drift"]),
        )
        for c in report["cohorts"]
    ]
    for c in cohorts:
        flagged = ", ".join(c.drifted_features) or "none"
        extra = f"; {len(c.drifted_derived)} derived projection feature(s)" if c.drifted_derived else ""
        pred = f"; prediction drift: {', '.join(c.prediction_drift)}" if c.prediction_drift else ""
        say(f"  drift {c.label}: {c.verdict} ({c.devices} devices, {c.rows} rows) — features: {flagged}{extra}{pred}")
    by_label = {c.label: c for c in cohorts}
    want = sorted(shifted_features())
    for site in SITES:
        found = by_label.get(f"tag={site}")
        if found is None:
            raise OperationError(f"the drift report has no cohort for {site}: {sorted(by_label)}")
        expected = want if site == SHIFTED_SITE and any(d.site == site for d in serving) else []
        if sorted(found.drifted_features) != expected:
            raise OperationError(
                f"the drift report flags {found.drifted_features or 'nothing'} in {site}, expected "
                f"{expected or 'nothing'}"
            )
    audit = audit_raw_inputs(engine, served, since=since)
    if audit["rows_found"]:
        raise OperationError(f"{audit['rows_found']} served input rows were found in uploaded telemetry")
    say(
        f"audit: {audit['windows']} uploaded windows ({audit['bytes']} bytes of JSON) searched for the "
        f"{audit['rows_checked']} input rows the devices served: {audit['rows_found']} found"
    )
    return DriftResult(
        since=since,
        shifted_site=SHIFTED_SITE,
        shifted_features=want,
        summary=report["summary"],
        cohorts=cohorts,
        uploads=uploads,
        audit=audit,
        report_url=f"{server_url}/v1/models/{base}/drift?by=tag",
        dashboard_url=f"{server_url}/dashboard/models/{base}/drift",
    )


def audit_raw_inputs(engine: Engine, served: Sequence[np.ndarray], *, since: float) -> dict[str, int]:
    """Search the JSON of every telemetry window stored since ``since`` (its performance, inputs and
    privacy columns) for every served input row (:func:`rows_found`): the counts of what was
    searched and of rows found (0 when no raw input left the devices in a JSON-visible form)."""
    from tinymlops.observe.schema import TelemetryWindowRow

    with engine.connect() as conn:
        rows = conn.execute(
            select(TelemetryWindowRow.performance, TelemetryWindowRow.inputs, TelemetryWindowRow.privacy).where(
                TelemetryWindowRow.window_end >= since
            )
        ).all()
        total = conn.scalar(select(func.count()).select_from(TelemetryWindowRow)) or 0
    text = "\n".join(json.dumps([r.performance, r.inputs, r.privacy]) for r in rows)
    checked, found = rows_found(text, served)
    return {
        "windows": len(rows),
        "windows_total": int(total),
        "bytes": len(text),
        "rows_checked": checked,
        "rows_found": found,
    }


def rows_found(text: str, served: Sequence[np.ndarray]) -> tuple[int, int]:
    """(rows checked, rows found): each served row (flattened) is looked for in ``text`` written as
    JSON writes numbers — the whole row, or the run of its 4th or 5th image row (values 24–31 or
    32–39, where the strokes are). Only what JSON shows is searched: the KLL sketches in a window
    are base64 bytes, so a value inside one is not found this way."""
    found = checked = 0
    for x in served:
        for row in x.reshape(len(x), -1):
            values = [float(v) for v in row]
            checked += 1
            needles = [json.dumps(values)] + [json.dumps(values[i : i + 8])[1:-1] for i in (24, 32)]
            if any(needle in text for needle in needles):
                found += 1
    return checked, found


def since_iso(ts: float) -> str:
    """``ts`` to the millisecond, rounded up: the windows closed just before it stay out of the range
    (the form the API's and the CLI's ``since`` take)."""
    import math
    from datetime import UTC, datetime

    return datetime.fromtimestamp(math.ceil(ts * 1000) / 1000, UTC).isoformat(timespec="milliseconds")


__all__ = [
    "SHIFT",
    "SHIFTED_PIXELS",
    "SHIFTED_SITE",
    "SHIFT_SD",
    "SITES",
    "DriftResult",
    "audit_raw_inputs",
    "rows_found",
    "run_drift",
    "shifted_features",
    "since_iso",
    "site_of",
]

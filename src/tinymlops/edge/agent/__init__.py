"""The device agent: follows an update source, installs bundles into A/B slots with an atomic
switch, smoke-tests before committing, falls back and rolls back, and survives being killed at
any moment.

Modules (each holds one thing):

* :mod:`~tinymlops.edge.agent.slots` — the A/B switch as a pure state machine (no I/O);
* :mod:`~tinymlops.edge.agent.store` — the data directory around it: durable state writes, slot
  files, crash recovery;
* :mod:`~tinymlops.edge.agent.install` — verify → stage → re-verify → open → smoke test → switch;
* :mod:`~tinymlops.edge.agent.loop` — the :class:`Agent`: polling, back-off, context policy,
  health-driven rollback, status and health reports;
* :mod:`~tinymlops.edge.agent.metering` — the :class:`MeteringSync`: licenses and revocations in,
  signed usage reports out, at each contact with the control plane;
* :mod:`~tinymlops.edge.agent.serving_stats` — what one bundle served (predictions, errors, a
  latency histogram), window by window, for health reports;
* :mod:`~tinymlops.edge.agent.source` — the :class:`UpdateSource` protocol, :class:`Offer`, and
  :class:`LocalDirectorySource`;
* :mod:`~tinymlops.edge.agent.policy`, :mod:`~tinymlops.edge.agent.backoff`,
  :mod:`~tinymlops.edge.agent.health`, :mod:`~tinymlops.edge.agent.context`,
  :mod:`~tinymlops.edge.agent.crashpoints` — the small parts;
* :mod:`~tinymlops.edge.agent.command` — ``python -m tinymlops.edge.agent``.

In the edge closure: nothing here imports sqlalchemy, fastapi, torch, flwr or onnx.
"""

from tinymlops.edge.agent.backoff import Backoff
from tinymlops.edge.agent.context import FileContext
from tinymlops.edge.agent.health import HealthWatch
from tinymlops.edge.agent.install import STATUSES, Installer, InstallResult
from tinymlops.edge.agent.loop import Agent, AgentConfig, Cycle, HealthSink
from tinymlops.edge.agent.metering import MeteringSync, SyncOutcome
from tinymlops.edge.agent.policy import Decision, DownloadPolicy
from tinymlops.edge.agent.serving_stats import LatencyHistogram, PendingWindows, ServingStats, Window
from tinymlops.edge.agent.slots import BundleInfo, Phase, SlotEntry, SlotState
from tinymlops.edge.agent.source import LocalDirectorySource, Offer, OfferLike, UpdateSource, write_offer
from tinymlops.edge.agent.store import Recovery, SlotStore

__all__ = [
    "STATUSES",
    "Agent",
    "AgentConfig",
    "Backoff",
    "BundleInfo",
    "Cycle",
    "Decision",
    "DownloadPolicy",
    "FileContext",
    "HealthSink",
    "HealthWatch",
    "InstallResult",
    "Installer",
    "LatencyHistogram",
    "LocalDirectorySource",
    "MeteringSync",
    "Offer",
    "OfferLike",
    "PendingWindows",
    "Phase",
    "Recovery",
    "ServingStats",
    "SlotEntry",
    "SlotState",
    "SlotStore",
    "SyncOutcome",
    "UpdateSource",
    "Window",
    "write_offer",
]

"""Where the simulated devices run: threads in this process, or Ray actors.

Both backends take the same :class:`~tinymlops.fleet.device.DevicePlan` list and answer with the
same per-device stats dicts; the simulator does not know which one it drives.

* ``threads`` (default) — one :class:`~tinymlops.fleet.device.DeviceGroup` here: a thread per
  device. Tens of devices are comfortable on one machine.
* ``ray`` — the fleet is cut into shards, one :class:`DeviceGroup` per Ray actor (a process of
  its own, on whichever node Ray places it), so thousands of devices spread over the cores and
  machines of a Ray cluster. Ray is imported only here, only when asked for
  (``pip install 'tinymlops[fleet-ray]'``). Without a running cluster (``RAY_ADDRESS`` or
  ``address=``) a local one is started small: ``num_cpus`` CPUs, no dashboard, a small object
  store; it is shut down again at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

from tinymlops.errors import OperationError, UsageError
from tinymlops.fleet.device import DeviceGroup, DevicePlan

BACKENDS = ("threads", "ray")
RAY_INSTALL_HINT = "pip install 'tinymlops[fleet-ray]'"
#: the local Ray's shared-memory object store: the simulator moves only small stats dicts
RAY_OBJECT_STORE_BYTES = 128 * 2**20
#: how long a snapshot may take before the live view skips it
SNAPSHOT_TIMEOUT_S = 10.0


class FleetBackend(Protocol):
    name: str

    def start(self, plans: Sequence[DevicePlan]) -> None: ...

    def snapshot(self) -> list[dict[str, Any]]: ...

    def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class ThreadsBackend:
    """Every device on a thread of this process."""

    name = "threads"

    def __init__(self) -> None:
        self._group: DeviceGroup | None = None

    def start(self, plans: Sequence[DevicePlan]) -> None:
        self._group = DeviceGroup(plans)
        self._group.start()

    def snapshot(self) -> list[dict[str, Any]]:
        return [] if self._group is None else self._group.snapshot()

    def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        return [] if self._group is None else self._group.stop(timeout_s)

    def close(self) -> None:
        if self._group is not None:
            self._group.stop(0.0)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"the ray backend needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


class RayBackend:
    """Shards of the fleet on Ray actors, each a :class:`DeviceGroup` (see the module docstring)."""

    name = "ray"

    def __init__(self, *, actors: int | None = None, num_cpus: int = 2, address: str | None = None) -> None:
        if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
            raise UsageError(f"the number of Ray actors must be an integer >= 1, got {actors!r}")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
            raise UsageError(f"num_cpus must be an integer >= 1, got {num_cpus!r}")
        self.ray = import_ray()
        self.actors_wanted = actors
        self._owns_ray = False
        self._actors: list[Any] = []
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not self.ray.is_initialized():
            common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
            try:
                if address:
                    self.ray.init(address=address, **common)
                else:
                    self.ray.init(
                        num_cpus=num_cpus,
                        include_dashboard=False,
                        object_store_memory=RAY_OBJECT_STORE_BYTES,
                        **common,
                    )
            except Exception as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise OperationError(f"could not start or join {where}: {exc}") from exc
            self._owns_ray = True
        self._group_cls = self.ray.remote(num_cpus=0, max_concurrency=4)(DeviceGroup)

    def start(self, plans: Sequence[DevicePlan]) -> None:
        if not plans:
            return
        cpus = int(self.ray.cluster_resources().get("CPU", 1)) or 1
        k = min(len(plans), self.actors_wanted or cpus)
        shards = [list(plans[i::k]) for i in range(k)]
        self._actors = [self._group_cls.remote(shard) for shard in shards]
        self.ray.get([a.start.remote() for a in self._actors])

    def snapshot(self) -> list[dict[str, Any]]:
        parts = self.ray.get([a.snapshot.remote() for a in self._actors], timeout=SNAPSHOT_TIMEOUT_S)
        return [d for part in parts for d in part]

    def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        parts = self.ray.get([a.stop.remote(timeout_s) for a in self._actors], timeout=timeout_s + 30.0)
        return [d for part in parts for d in part]

    def close(self) -> None:
        for a in self._actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(a)
        self._actors = []
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns_ray = False


def open_backend(name: str, **options: Any) -> FleetBackend:
    """A backend by name: ``threads`` or ``ray`` (``options``: ``actors``, ``num_cpus``, ``address``)."""
    if name == "threads":
        if options:
            raise UsageError(f"the threads backend takes no options, got {', '.join(sorted(options))}")
        return ThreadsBackend()
    if name == "ray":
        return RayBackend(**options)
    raise UsageError(f"unknown fleet backend {name!r}; one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "RAY_INSTALL_HINT", "FleetBackend", "RayBackend", "ThreadsBackend", "import_ray", "open_backend"]

"""Energy meters: how many joules the device spent, measured or estimated, and always saying which.

An :class:`EnergyMeter` is a cumulative counter: :meth:`~EnergyMeter.read` returns the joules
spent since the meter was made; the difference of two reads around a prediction is that
prediction's energy. Two implementations (DESIGN.md: "the energy meter (RAPL / power model)"):

* :class:`RaplMeter` (``method = "rapl"``, measured) sums Intel RAPL's package domains
  (``<root>/intel-rapl:N/energy_uj``; sub-domains ``intel-rapl:N:M`` are inside their package
  and not added again). The counters wrap at ``max_energy_range_uj``: a read lower than the
  previous one is taken as one wrap (``delta = raw + range − previous``), so reads must come more
  often than one wrap period (hours at typical package power). Since Linux 5.10 ``energy_uj`` is
  readable by root only (the PLATYPUS side channel): a meter that cannot read it is unavailable —
  :meth:`RaplMeter.open` raises OperationError naming the file and the reason — and
  :func:`best_meter` falls back to the model. RAPL measures the whole package, so a prediction's
  reading includes whatever else ran on the CPU at the time; the counter's update interval is
  about 1 ms, so per-call readings of short calls are noisy and only their mean is meaningful.
* :class:`PowerModelMeter` (``method = "model"``, estimated) multiplies CPU time by the device
  profile's ``active_power_w``: ``time.thread_time`` of the calling thread by default (the
  runtime runs ONNX Runtime with one intra-op thread on the caller's thread, so that is the
  model's CPU time and concurrent calls on other threads are not counted twice), or
  ``time.process_time`` for a runtime with its own thread pool. It is an estimate: active power
  is the whole device's, and CPU time is not energy.

Standard library only (edge closure).
"""

from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinymlops.errors import OperationError, UsageError

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE = re.compile(r"^intel-rapl:\d+$")


class EnergyMeter(ABC):
    """A cumulative energy counter in joules, labelled with how it is obtained."""

    #: "rapl" (measured) or "model" (estimated) — the spec's ``energy_method``
    method: str

    @abstractmethod
    def read(self) -> float:
        """Joules spent since the meter was made (non-decreasing). Raises OperationError when the
        source cannot be read any more."""


@dataclass
class _Domain:
    energy: Path
    range_uj: int
    last_uj: int


class RaplMeter(EnergyMeter):
    """Intel RAPL package energy (see the module doc). Thread-safe."""

    method = "rapl"

    def __init__(self, domains: list[_Domain]) -> None:
        if not domains:
            raise UsageError("a RAPL meter needs at least one domain")
        self._domains = domains
        self._total_uj = 0
        self._lock = threading.Lock()
        self.wraps = 0

    @classmethod
    def open(cls, root: str | Path = POWERCAP_ROOT) -> RaplMeter:
        """A meter over every readable package domain under ``root``; OperationError if there is none."""
        root = Path(root)
        try:
            names = sorted(p.name for p in root.iterdir() if _PACKAGE.match(p.name))
        except OSError as exc:
            raise OperationError(f"RAPL is not available: cannot list {root} ({exc.strerror or exc})") from exc
        if not names:
            raise OperationError(f"RAPL is not available: no intel-rapl package domain under {root}")
        domains = []
        for name in names:
            energy, limit = root / name / "energy_uj", root / name / "max_energy_range_uj"
            try:
                raw, range_uj = _read_uj(energy), _read_uj(limit)
            except PermissionError as exc:
                raise OperationError(
                    f"RAPL is not available: {exc.filename or energy} is not readable by this process "
                    "(root only since Linux 5.10)",
                    path=str(exc.filename or energy),
                ) from exc
            except (OSError, ValueError) as exc:
                raise OperationError(f"RAPL is not available: cannot read {energy} ({exc})", path=str(energy)) from exc
            if range_uj <= 0 or raw > range_uj:
                raise OperationError(
                    f"RAPL is not available: {energy} reads {raw}, outside its range {range_uj}", path=str(energy)
                )
            domains.append(_Domain(energy, range_uj, raw))
        return cls(domains)

    @property
    def domains(self) -> list[str]:
        return [d.energy.parent.name for d in self._domains]

    def read(self) -> float:
        with self._lock:
            for d in self._domains:
                try:
                    raw = _read_uj(d.energy)
                except (OSError, ValueError) as exc:
                    raise OperationError(f"RAPL counter {d.energy} cannot be read any more ({exc})") from exc
                if raw > d.range_uj:
                    raise OperationError(f"RAPL counter {d.energy} reads {raw}, beyond its range {d.range_uj}")
                if raw >= d.last_uj:
                    self._total_uj += raw - d.last_uj
                else:  # the counter wrapped once since the last read
                    self._total_uj += raw + d.range_uj - d.last_uj
                    self.wraps += 1
                d.last_uj = raw
            return self._total_uj * 1e-6


def _read_uj(path: Path) -> int:
    text = path.read_text(encoding="ascii").strip()
    if not text.isdigit():
        raise ValueError(f"{path} does not hold a non-negative integer: {text[:40]!r}")
    return int(text)


class PowerModelMeter(EnergyMeter):
    """CPU seconds × ``active_power_w`` (see the module doc)."""

    method = "model"

    def __init__(self, active_power_w: float, *, cpu_clock: Callable[[], float] = time.thread_time) -> None:
        if isinstance(active_power_w, bool) or not isinstance(active_power_w, int | float) or not active_power_w >= 0:
            raise UsageError(f"active_power_w must be a non-negative number, got {active_power_w!r}")
        self.active_power_w = float(active_power_w)
        self.cpu_clock = cpu_clock
        self.note = ""

    def read(self) -> float:
        # a per-thread clock is only ever differenced on the thread that read it (the recorder does)
        return self.cpu_clock() * self.active_power_w


def best_meter(profile: object, *, rapl_root: str | Path = POWERCAP_ROOT, process: bool = False) -> EnergyMeter:
    """RAPL when it is readable here, else the power model of ``profile`` (a
    :class:`~tinymlops.spec.profile.DeviceProfile` or anything with ``active_power_w``). The model's
    ``note`` says why RAPL was not used. ``process``: CPU time of the whole process, not the thread."""
    try:
        return RaplMeter.open(rapl_root)
    except OperationError as exc:
        power = getattr(profile, "active_power_w", None)
        if power is None:
            raise UsageError(f"no RAPL ({exc.message}) and the profile has no active_power_w") from exc
        meter = PowerModelMeter(power, cpu_clock=time.process_time if process else time.thread_time)
        meter.note = exc.message
        return meter


__all__ = ["POWERCAP_ROOT", "EnergyMeter", "PowerModelMeter", "RaplMeter", "best_meter"]

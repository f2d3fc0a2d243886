"""The process's peak resident memory — read once per telemetry window, never per prediction.

Why not per call: the peak is a high-water mark the kernel keeps anyway (``VmHWM`` in
``/proc/self/status``, the same number ``getrusage(RUSAGE_SELF).ru_maxrss`` reports), so reading it
when a window closes costs one small file read and nothing on the hot path. ``tracemalloc`` was
not used: it slows every Python allocation and does not see ONNX Runtime's native arenas, which is
where a model's memory lives.

The mark is the process's since it started (or since the last reset): the model's sessions, the
runtime and everything else in the process. :func:`reset_peak` (Linux: writing ``5`` to
``/proc/self/clear_refs``) restarts it from the current resident size, which makes the next
reading the peak *of that window* — but it is process-wide, so only one component of a process
should reset it (the recorder does only when asked: ``memory="window"``).

Standard library only (edge closure).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_bytes() -> int:
    """The process's peak resident set size in bytes (0 if the platform says nothing)."""
    try:
        for line in _STATUS.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                parts = line.split()
                return int(parts[1]) * 1024  # "VmHWM:   25176 kB"
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere


def reset_peak() -> bool:
    """Restart the peak from the current resident size (Linux ≥ 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


__all__ = ["peak_rss_bytes", "reset_peak"]

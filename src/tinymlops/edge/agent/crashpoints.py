"""Named crash points: a test hook that makes the agent kill itself (SIGKILL) at a precise moment.

Set ``TINYMLOPS_AGENT_CRASH_AT`` to a comma-separated list of point names; when the agent reaches
one of them it sends itself SIGKILL — no cleanup, no ``finally``, no flushed buffers, exactly what
a power cut or the OOM killer does. The crash tests run the agent as a subprocess with this set,
then restart it without it and check that it recovers onto a consistent, verified slot.

The points, in the order an install reaches them:

``download``      half-way through fetching a bundle (after the first chunk is written)
``stage-copy``    half-way through copying the bundle into the inactive slot
``staged``        the copy is in the slot, before it is re-verified
``switch``        the new state file is written and fsynced, before ``os.replace`` makes it current
``switched``      the switch is on disk, before the runtime is swapped and the status reported

Unset (the normal case) this costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "TINYMLOPS_AGENT_CRASH_AT"
POINTS = ("download", "stage-copy", "staged", "switch", "switched")


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is listed in ``TINYMLOPS_AGENT_CRASH_AT``."""
    wanted = os.environ.get(ENV_VAR)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ENV_VAR", "POINTS", "crash_point"]

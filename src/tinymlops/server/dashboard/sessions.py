"""Dashboard login sessions: an opaque random token in an HttpOnly, SameSite=Strict cookie, mapped
server side to the API key that logged in. Every request re-checks that key (a revoked key ends its
sessions at once); sessions also expire after ``ttl_s`` and end on logout. Each session has its own
CSRF token (``csrf``) that the dashboard's forms must send back (:mod:`~tinymlops.server.dashboard.forms`).
Kept in memory: a server restart logs everyone out (and voids their forms), which is acceptable for
a dashboard."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tinymlops.errors import UsageError
from tinymlops.server.dashboard.forms import new_token

COOKIE_NAME = "tinymlops_session"
DEFAULT_SESSION_TTL_S = 8 * 3600
#: at most this many live sessions; the oldest is dropped beyond it (bounded memory)
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class DashboardSession:
    key_id: str
    key_name: str
    scope: str
    expires_at: float
    csrf: str  # the token this session's forms carry


class SessionStore:
    """Thread-safe token → :class:`DashboardSession` map."""

    def __init__(self, *, ttl_s: int = DEFAULT_SESSION_TTL_S, clock: Callable[[], float] = time.time) -> None:
        if ttl_s < 1:
            raise UsageError("session ttl_s must be at least 1 second")
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, DashboardSession] = {}

    def create(self, key_id: str, key_name: str, scope: str) -> str:
        token = new_token()
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[token] = DashboardSession(key_id, key_name, scope, self._clock() + self._ttl_s, new_token())
        return token

    def get(self, token: str | None) -> DashboardSession | None:
        """The live session of ``token``; None for a missing, unknown or expired one."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[token]
                return None
            return session

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)


__all__ = ["COOKIE_NAME", "DEFAULT_SESSION_TTL_S", "DashboardSession", "SessionStore"]

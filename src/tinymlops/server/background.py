"""The control plane in a background thread of this process: for ``tinymlops demo`` and for
embedding (a notebook, a simulator). ``tinymlops serve`` is the foreground way.

    with BackgroundServer(workspace) as server:
        print(server.url)        # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

from tinymlops.errors import OperationError
from tinymlops.server.settings import ServerSettings
from tinymlops.workspace import Workspace

START_TIMEOUT_S = 15.0


class BackgroundServer:
    """uvicorn serving :func:`tinymlops.server.create_app` on ``host:port`` (0 = a free port)."""

    def __init__(self, workspace: Workspace, settings: ServerSettings | None = None, *, port: int = 0) -> None:
        import uvicorn

        from tinymlops.server.app import create_app

        settings = settings or ServerSettings()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((settings.host, port))
        except OSError as exc:
            self._sock.close()
            raise OperationError(f"cannot listen on {settings.host}:{port}: {exc.strerror or exc}") from exc
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.app = create_app(workspace, settings)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="auto")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="tinymlops-server", daemon=True
        )

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OperationError(f"the control plane did not start on {self.url}")
            time.sleep(0.01)
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C stops it)."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(START_TIMEOUT_S)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["BackgroundServer"]

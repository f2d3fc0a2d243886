"""``tinymlops serve``: run the control-plane server (FastAPI under uvicorn) over a workspace."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from tinymlops.cli.output import WorkspaceOpt, err_console
from tinymlops.errors import OperationError


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, proto, _, address = infos[0]
        # with the protocol number asyncio recognises a TCP socket and turns Nagle's algorithm off;
        # without it every second response on a kept-alive connection waited ~40 ms for a delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise OperationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", host=host, port=port) from exc
    sock.set_inheritable(True)
    return sock


def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on (default: loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port).", min=0, max=65535)] = 8470,
    workspace: WorkspaceOpt = None,
    max_body_bytes: Annotated[int, typer.Option(help="Refuse request bodies larger than this (413).", min=1024)] = 1024
    * 1024,
    clock_window: Annotated[
        int, typer.Option(help="Accepted clock difference of signed device requests, seconds.", min=1, max=3600)
    ] = 300,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the control-plane API (OpenAPI at /openapi.json) until interrupted."""
    import uvicorn

    from tinymlops.server import ServerSettings, create_app
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        sock = _listen(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        settings = ServerSettings(
            host=host, port=bound_port, max_body_bytes=max_body_bytes, clock_window_s=clock_window
        )
        app = create_app(ws, settings)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        err_console.print(
            f"tinymlops control plane on http://{shown}:{bound_port} (workspace {ws.root})", highlight=False
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug"))
        server.run(sockets=[sock])

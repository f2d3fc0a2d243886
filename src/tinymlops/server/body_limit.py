"""Refuse oversized request bodies before reading them (pure ASGI middleware).

A declared ``Content-Length`` above the limit is answered with 413 at once, without reading a
byte of the body. A body without a length (chunked) is counted as it streams in; the first chunk
that crosses the limit raises an HTTP 413 out of ``receive``, which FastAPI passes through to the
error handlers, so the endpoint never sees the body.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _json_response(status: int, error_type: str, message: str) -> tuple[dict[str, object], bytes]:
    body = json.dumps({"error": {"type": error_type, "message": message}}).encode("utf-8")
    start: dict[str, object] = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ],
    }
    return start, body


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        refusal: tuple[int, str, str] | None = None
        if len(lengths) > 1:
            refusal = (400, "BadRequestError", "Content-Length given more than once")
        elif lengths:
            if not lengths[0].isdigit() or len(lengths[0]) > 18:
                refusal = (400, "BadRequestError", "Content-Length is not a non-negative integer")
            elif int(lengths[0]) > self.max_bytes:
                refusal = (413, "PayloadTooLargeError", self.too_large())
        if refusal is not None:
            start, body = _json_response(*refusal)
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self.too_large())
            return message

        await self.app(scope, limited_receive, send)

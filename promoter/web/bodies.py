"""Request bodies are bounded before anything parses them (DESIGN §7, resource bounds).

FastAPI reads a JSON body whole into memory and parses it on the event loop:
a 300 MB list in a PATCH blocked every request for seconds, and a 1 GB body
took three times that in memory. No route here takes more than a few bytes
of JSON, so `BodyLimit` reads at most `max_bytes` of any request body, answers
413 past it (at once when `Content-Length` says so, else as soon as the bytes
arrive), and hands the app the body it buffered. The upload route is the one
exception: it streams to disk under its own limit, `http.max_upload_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promoter.web.security import deny

__all__ = ["JSON_BODY_MAX", "BodyLimit"]

JSON_BODY_MAX: Final = 64 * 1024
_CLOSE: Final = [(b"connection", b"close")]  # the unread rest of the body is not drained


def _declares_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return (length is not None and length.strip("0 ") != "") or "transfer-encoding" in headers


class BodyLimit:
    """ASGI middleware: at most `max_bytes` of body reach the app, except where `exempt`."""

    def __init__(self, app: ASGIApp, max_bytes: int,
                 exempt: Callable[[Scope], bool]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not _declares_body(headers):
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, send: Send) -> None:
        await deny(send, 413, f"The request body is over {self.max_bytes} bytes.", _CLOSE)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message, then whatever the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

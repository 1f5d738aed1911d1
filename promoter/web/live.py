"""`GET /runtime/events`: server-sent events of the store's changes (DESIGN §7, §8).

One `EventHub` per app, started by the first client on the server's event loop
and kept for the life of the process (so a client that reconnects finds what
it missed). Events get increasing ids; the last `RING` are kept, and a client
that sends `Last-Event-ID` gets exactly the events after it, or one `reset`
when they are no longer known (too old, or from before this process started).

Slow or dead clients never hold anything back: `publish` only appends to each
client's buffer, never awaits; a buffer that reaches `CLIENT_BUFFER` is
dropped for one `reset` (the client reloads the list). Each client's own task
writes its stream; uvicorn's flow control then blocks that task alone. A
comment line every `KEEPALIVE_S` keeps proxies from closing an idle stream and
lets the server notice a peer that is gone. Ids start at the start time in
microseconds, so they keep increasing across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from promoter.changes import RESET, Change, ChangeSource
from promoter.events import EVENTS_SOURCE_FAILED
from promoter.logs import get_logger

__all__ = ["CLIENT_BUFFER", "KEEPALIVE_S", "RING", "EventHub", "events_router"]

log = get_logger()
RING: Final = 4096
CLIENT_BUFFER: Final = 1024
KEEPALIVE_S: Final = 15.0
RETRY_MS: Final = 2000


class _Client:
    """One connected stream: a bounded buffer and a wake-up."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, Change]] = deque()
        self.reset = False
        self.ended = False  # the source failed: this stream ends, the client reconnects
        self.wake = asyncio.Event()

    def push(self, item: tuple[int, Change]) -> None:
        if self.reset:
            return  # already behind: the reset covers this one too
        if len(self.items) >= CLIENT_BUFFER:
            self.items.clear()
            self.reset = True
        else:
            self.items.append(item)
        self.wake.set()


class EventHub:
    """Numbers the changes of one source and fans them out to every client."""

    def __init__(self, source: ChangeSource,
                 on_change: Callable[[Change], None] | None = None) -> None:
        self._source = source
        # called before a change reaches the clients: the run list's short-lived cache is
        # dropped, or the refresh an event triggers could be answered from before it
        self._on_change = on_change
        self._ring: deque[tuple[int, Change]] = deque(maxlen=RING)
        self._clients: set[_Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._first = self._last = time.time_ns() // 1000  # ids after this are ours
        self.closed = False

    @property
    def last_id(self) -> int:
        return self._last

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            if self._task is None:
                self._first = self._last = max(self._last, time.time_ns() // 1000)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="promoter-events")

    async def _run(self) -> None:
        try:
            await self._source.run(self.publish)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream cannot go on: clients fall back to polling
            log.error(EVENTS_SOURCE_FAILED, reason=f"{type(exc).__name__}: {exc}")
        # The source ended (failed, or lost artifacts/): what changed meanwhile is unknown,
        # so every stream ends and no id so far can resume; the next client starts it again.
        self._first = self._last = self._last + 1
        self._ring.clear()
        for client in self._clients:
            client.ended = True
            client.wake.set()

    def publish(self, change: Change) -> None:
        """Number a change, keep it, hand it to every client (never waits on one)."""
        if self._on_change is not None:
            self._on_change(change)
        self._last += 1
        item = (self._last, change)
        if change.kind == RESET:
            self._ring.clear()  # a client resuming from before it must reload too
            self._first = self._last
            for client in self._clients:
                client.items.clear()
                client.reset = True
                client.wake.set()
            return
        self._ring.append(item)
        for client in self._clients:
            client.push(item)

    def close(self) -> None:
        """End every stream (the server is stopping, or the source failed)."""
        self.closed = True
        for client in self._clients:
            client.wake.set()
        if self._task is not None:
            self._task.cancel()

    def subscribe(self, last_event_id: str | None) -> _Client:
        """A new client, primed with what it missed since `last_event_id`, or a reset."""
        self._ensure_started()
        client = _Client()
        if last_event_id is not None:
            try:
                since = int(last_event_id.strip())
            except ValueError:
                since = -1
            oldest = self._ring[0][0] if self._ring else self._last + 1
            if since < self._first or since > self._last or (since < oldest - 1):
                client.reset = True
            else:
                for item in self._ring:
                    if item[0] > since:
                        client.push(item)
        self._clients.add(client)
        return client

    def unsubscribe(self, client: _Client) -> None:
        self._clients.discard(client)

    async def stream(self, client: _Client) -> AsyncIterator[bytes]:
        """The client's text/event-stream, until it goes away or the hub closes."""
        try:
            yield f"retry: {RETRY_MS}\n: promoter events\n\n".encode()
            while not self.closed and not client.ended:
                if not client.reset and not client.items:
                    client.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                    if not client.reset and not client.items and not self.closed \
                            and not client.ended:
                        yield b": keep-alive\n\n"
                        continue
                if client.reset:
                    client.reset = False
                    client.items.clear()
                    yield _frame(self._last, Change(RESET, {}))
                    continue
                batch = []
                while client.items:
                    batch.append(_frame(*client.items.popleft()))
                yield b"".join(batch)
        finally:
            self.unsubscribe(client)


def _frame(event_id: int, change: Change) -> bytes:
    data = json.dumps(change.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}\nevent: {change.kind}\ndata: {data}\n\n".encode()


events_router = APIRouter(prefix="/runtime")

_SSE: Final[dict[int | str, dict[str, Any]]] = {
    200: {"description": "An endless text/event-stream: run.updated, run.deleted, "
                         "library.changed, reset.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
}


@events_router.get("/events", response_class=Response, responses=_SSE,
                   summary="Server-sent events of the store's changes")
async def events(request: Request, last_event_id: Annotated[
        str | None, Header(description="Resume after this event id")] = None) -> Response:
    """`run.updated` ({run_id, updated_at}), `run.deleted` ({run_id}), `library.changed`
    ({name}) with increasing ids; `reset` when the client must reload the list."""
    hub: EventHub = request.app.state.events
    client = hub.subscribe(last_event_id)
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no",
               "x-content-type-options": "nosniff"}
    return StreamingResponse(hub.stream(client), media_type="text/event-stream",
                             headers=headers)

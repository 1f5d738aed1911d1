"""Resource bounds on connections (DESIGN §7): a head timeout and a cap below the descriptors.

uvicorn arms its only timer (keep-alive) after a first answer, and cancels it
as soon as any byte arrives: a client that opens a socket and never finishes
its request head, or sends one byte every few seconds, holds a descriptor for
ever, and about a thousand of them lock every other client out. So:

- `HeadTimeoutProtocol` (uvicorn's own h11 protocol, subclassed) closes a
  connection whose request head is not complete `http.header_timeout_s`
  after the connection opened or after its previous answer, whatever
  trickles in meanwhile; and one whose request body stops arriving for as
  long, or arrives slower than `MIN_BODY_RATE` after the first
  `header_timeout` (unless the app itself has paused reading): a body sent
  one byte every few seconds held its connection for days, and a few hundred
  of them locked every other client out (Apache's mod_reqtimeout has the
  same default, `body=20,MinRate=500`); and one whose reader stops taking
  the answer (the socket's buffer full for `header_timeout`, as nginx's
  `send_timeout`): a client that asked for a large file and never read held
  the connection and the file's descriptor for ever.
- `connection_cap` keeps open connections below `RLIMIT_NOFILE` with room for
  one open file per connection, the process's own descriptors and the sockets
  accepted in a burst (`accept_backlog`, the listen backlog). Past the
  cap, a new connection first evicts the longest-waiting one that has not
  sent a request head (as nginx reuses idle keep-alive connections when it
  runs out), so idle or half-open sockets delay others, never lock them out;
  only when every connection is busy with a request is the newcomer closed.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["RESERVED_DESCRIPTORS", "HeadTimeoutProtocol", "accept_backlog", "connection_cap"]

# Descriptors kept for the process itself: the listening socket, the event loop, logs,
# the store's folders and locks, worker threads' opens.
RESERVED_DESCRIPTORS: Final = 64
MIN_CONNECTIONS: Final = 16
MIN_BACKLOG: Final = 16
MAX_BACKLOG: Final = 2048
BURSTS: Final = 3  # accept, then the transport's task, then connection_made: three loop turns
LOG_EVERY_S: Final = 10.0
MIN_BODY_RATE: Final = 500.0  # bytes a second a request body must keep up, past its grace


def _soft_nofile() -> int:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if nofile == resource.RLIM_INFINITY else nofile


def accept_backlog(nofile: int | None = None) -> int:
    """Connections accepted in one burst (asyncio accepts up to the backlog at once, before
    any of them is seen by the protocol): small enough that bursts fit the headroom."""
    nofile = _soft_nofile() if nofile is None else nofile
    return max(MIN_BACKLOG, min(MAX_BACKLOG, nofile // 16))


def connection_cap(nofile: int | None = None) -> int:
    """How many connections may be open: what the descriptor limit leaves, halved.

    Each connection may hold a second descriptor (the file it streams), hence half;
    up to BURSTS accept bursts may be in flight before the cap is enforced on them.
    """
    nofile = _soft_nofile() if nofile is None else nofile
    spare = nofile - RESERVED_DESCRIPTORS - BURSTS * accept_backlog(nofile)
    return max(MIN_CONNECTIONS, spare // 2)


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and the connection cap.

    Set `header_timeout` and `max_connections` on a subclass (`configured`): uvicorn
    builds the protocol itself, from the class alone.
    """

    header_timeout: float = 10.0
    max_connections: int = 1 << 20
    _last_warning: float = -LOG_EVERY_S  # one warning per LOG_EVERY_S under a flood

    @classmethod
    def configured(cls, header_timeout: float, max_connections: int) -> type[H11Protocol]:
        return type("ConfiguredHeadTimeoutProtocol", (cls,),
                    {"header_timeout": header_timeout, "max_connections": max_connections})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started: float | None = None  # loop time the current body began
        self._body_bytes = 0  # bytes of the current body received so far
        self._write_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # monotonic time the wait for the current head began

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        self._disarm_write_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._body_started is not None:
            self._body_bytes += len(data)
        super().data_received(data)
        self._watch_body()

    def handle_events(self) -> None:
        super().handle_events()
        if not self._awaiting_head():
            self._disarm_head_timer()
        self._watch_body()

    def _watch_body(self) -> None:
        """While a request body is due, bytes must keep coming: `header_timeout` of silence,
        or a body behind `header_timeout` plus one second per MIN_BODY_RATE bytes (with
        reading not paused by the app), closes the connection. A head sent with a
        Content-Length and a body that never comes, or comes a byte at a time, held the
        connection for ever."""
        self._disarm_body_timer()
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            self._body_started = None
            return
        now = self.loop.time()
        if self._body_started is None:
            self._body_started, self._body_bytes = now, 0
        due = self._body_started + self.header_timeout + self._body_bytes / MIN_BODY_RATE
        self._body_timer = self.loop.call_at(min(now + self.header_timeout, due),
                                             self._body_stalled)

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_stalled(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow.read_paused:  # the app is not reading yet: the client is not to blame
            self._body_started = None  # its rate counts from when reading resumes
            self._watch_body()
            return
        self._close()

    def pause_writing(self) -> None:
        """The socket's buffer is full: the reader has `header_timeout` to take some."""
        super().pause_writing()
        if self._write_timer is None and not self.transport.is_closing():
            self._write_timer = self.loop.call_later(self.header_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._disarm_write_timer()
        super().resume_writing()

    def _disarm_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        """Abort, not close: close() waits to flush a buffer this reader never takes."""
        self._write_timer = None
        if self.flow.write_paused:
            self._disarm_head_timer()
            self._disarm_body_timer()
            self.transport.abort()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._awaiting_head() and \
                self._head_timer is None:
            self._arm_head_timer()

    def _awaiting_head(self) -> bool:
        """No request head yet on this connection's current cycle."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._waiting_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            self._close()

    def _close(self) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for a head, else this."""
        idle = [c for c in self.connections
                if isinstance(c, HeadTimeoutProtocol) and c is not self and c._awaiting_head()
                and not c.transport.is_closing()]
        victim = min(idle, key=lambda c: c._waiting_since) if idle else self
        now = time.monotonic()
        if now - HeadTimeoutProtocol._last_warning >= LOG_EVERY_S:
            HeadTimeoutProtocol._last_warning = now
            self.logger.warning("Connection limit (%d) reached: closing %s connection.",
                                self.max_connections, "an idle" if idle else "the new")
        victim._close()

"""`GET /runtime/events`: the hub in-process, then a real `promoter serve` over inotify."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from promoter.changes import LIBRARY_CHANGED, RESET, RUN_UPDATED, Change
from promoter.cli import main
from promoter.web import create_app, live
from promoter.web.live import EventHub
from tests.daemon_helpers import wait_until
from tests.page_helpers import free_port, promoter_argv, spawn, stop_all, wait_healthy
from tests.web_helpers import make_store, populate


class FakeSource:
    """A change source the test drives by hand."""

    def __init__(self) -> None:
        self.emit: Any = None
        self.started = asyncio.Event()

    async def run(self, emit: Any) -> None:
        self.emit = emit
        self.started.set()
        await asyncio.Event().wait()  # until cancelled


def _parse(raw: bytes) -> list[dict[str, str]]:
    """SSE frames into dicts (comments kept under ':')."""
    frames = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            frame[key or ":"] = value.lstrip(" ")
        frames.append(frame)
    return frames


async def _take(stream: AsyncIterator[bytes], n: int, timeout: float = 5) -> list[dict[str, str]]:
    """The next n frames that are events (not comments, not the retry preamble)."""
    got: list[dict[str, str]] = []
    while len(got) < n:
        chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        got += [f for f in _parse(chunk) if "event" in f]
    return got


def test_hub_ids_increase_and_resume_without_gap() -> None:
    """Events carry increasing ids; a client resuming with Last-Event-ID gets exactly the
    ones after it; an unknown or future id gets one reset."""

    async def body() -> None:
        source = FakeSource()
        hub = EventHub(source)
        first = hub.subscribe(None)
        stream = hub.stream(first)
        await source.started.wait()
        for i in range(3):
            source.emit(Change(RUN_UPDATED, {"run_id": f"r{i}", "updated_at": "t"}))
        frames = await _take(stream, 3)
        ids = [int(f["id"]) for f in frames]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert [json.loads(f["data"])["run_id"] for f in frames] == ["r0", "r1", "r2"]
        await stream.aclose()
        assert hub.clients == 0
        source.emit(Change(LIBRARY_CHANGED, {"name": "a.csv"}))
        source.emit(Change(RUN_UPDATED, {"run_id": "r9", "updated_at": "t"}))
        again = hub.subscribe(str(ids[-1]))
        resumed = await _take(hub.stream(again), 2)
        assert [f["event"] for f in resumed] == ["library.changed", "run.updated"]
        assert int(resumed[0]["id"]) == ids[-1] + 1
        for bad in ("0", str(hub.last_id + 5), "garbage"):
            frames = await _take(hub.stream(hub.subscribe(bad)), 1)
            assert frames[0]["event"] == RESET
        hub.close()

    asyncio.run(body())


def test_hub_a_client_that_falls_behind_gets_one_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that reads nothing while its buffer overflows costs bounded memory, holds
    nobody back, and then gets a single reset followed by the newer events."""
    monkeypatch.setattr(live, "CLIENT_BUFFER", 10)

    async def body() -> None:
        source = FakeSource()
        hub = EventHub(source)
        slow, quick = hub.subscribe(None), hub.subscribe(None)
        quick_stream = hub.stream(quick)
        await source.started.wait()
        for i in range(50):
            source.emit(Change(RUN_UPDATED, {"run_id": f"r{i}", "updated_at": "t"}))
            if i % 5 == 0:
                await _take(quick_stream, 1)  # the quick one keeps up
        assert len(slow.items) <= 10 and slow.reset
        source.emit(Change(RUN_UPDATED, {"run_id": "after", "updated_at": "t"}))
        frames = await _take(hub.stream(slow), 1)
        assert frames[0]["event"] == RESET
        assert not slow.reset and not slow.items  # one reset covers all it missed
        hub.close()

    asyncio.run(body())


def test_hub_keepalive_comment_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle stream sends a comment line every KEEPALIVE_S; close() ends every stream."""
    monkeypatch.setattr(live, "KEEPALIVE_S", 0.05)

    async def body() -> None:
        hub = EventHub(FakeSource())
        stream = hub.stream(hub.subscribe(None))
        assert (await stream.__anext__()).startswith(b"retry: ")
        assert await asyncio.wait_for(stream.__anext__(), 2) == b": keep-alive\n\n"
        hub.close()
        with pytest.raises(StopAsyncIteration):
            while True:
                await asyncio.wait_for(stream.__anext__(), 2)
        assert hub.clients == 0

    asyncio.run(body())


def test_hub_source_reset_reaches_every_client_and_blocks_old_resumes() -> None:
    """A reset from the source (an inotify overflow) reaches all clients; an id from before
    it can no longer resume."""

    async def body() -> None:
        source = FakeSource()
        hub = EventHub(source)
        stream = hub.stream(hub.subscribe(None))
        await source.started.wait()
        source.emit(Change(RUN_UPDATED, {"run_id": "a", "updated_at": "t"}))
        before = int((await _take(stream, 1))[0]["id"])
        source.emit(Change(RESET, {"reason": "overflow"}))
        assert (await _take(stream, 1))[0]["event"] == RESET
        late = await _take(hub.stream(hub.subscribe(str(before))), 1)
        assert late[0]["event"] == RESET
        hub.close()

    asyncio.run(body())


# --- a real server, real inotify ---------------------------------------------------------


class Reader:
    """An SSE client on a thread: frames land in a list as they arrive, with arrival times.

    http.client on a socket of our own, so close() can shut it down under a blocked read.
    """

    def __init__(self, url: str, last_event_id: str | None = None) -> None:
        self.frames: list[tuple[float, dict[str, str]]] = []
        self.headers: dict[str, str] = {}
        split = urlsplit(url)
        self._conn = http.client.HTTPConnection(split.hostname or "", split.port, timeout=30)
        extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._conn.request("GET", split.path, headers=extra)
        self._response = self._conn.getresponse()
        self.headers = {k.lower(): v for k, v in self._response.getheaders()}
        self._thread = threading.Thread(target=self._run, name="sse-reader")
        self._thread.start()

    def _run(self) -> None:
        buffer = b""
        try:
            while chunk := self._response.read1(65536):
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    for frame in _parse(block + b"\n\n"):
                        self.frames.append((time.monotonic(), frame))
        except (OSError, ValueError, http.client.HTTPException):
            return  # shut down under it by close(), or the server went away

    def events(self, kind: str | None = None) -> list[dict[str, str]]:
        return [f for _, f in self.frames if "event" in f and (kind is None or f["event"] == kind)]

    def close(self) -> None:
        """Stop reading: the socket is shut down under the reader, which then ends."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One `promoter serve` over a store with run r1, for the end-to-end cases."""
    root = tmp_path_factory.mktemp("events") / "root"
    store = make_store(root)
    populate(store, root, "r1", {"a.txt": b"a"})
    populate(store, root, "r2", {"b.txt": b"b"})
    port = free_port()
    log = root.parent / "serve.log"
    proc = spawn(promoter_argv("serve", "--root", str(root), "--listen", f"127.0.0.1:{port}"),
                 log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log)
        yield base, root
    finally:
        stop_all([proc])


def _connected(base: str, n: int) -> bool:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return f"promoter_http_event_clients {float(n)}" in text


def test_metadata_write_delete_and_library_reach_a_client(server: tuple[str, Path]) -> None:
    """keep (a metadata replacement), a library file and rm arrive as run.updated,
    library.changed and run.deleted, with increasing ids; then Last-Event-ID resumes."""
    base, root = server
    reader = Reader(f"{base}/runtime/events")
    try:
        wait_until(lambda: _connected(base, 1), 10, what="the client to connect")
        assert reader.headers["content-type"].startswith("text/event-stream")
        assert main(["keep", "r1", "--root", str(root)]) == 0
        update = wait_until(lambda: reader.events("run.updated"), 10, what="run.updated")[0]
        data = json.loads(update["data"])
        meta = json.loads((root / "artifacts/r1/metadata.json").read_text())
        assert data == {"run_id": "r1", "updated_at": meta["updated_at"]}
        (root / "library/.x.tmp").write_bytes(b"lib")
        os.rename(root / "library/.x.tmp", root / "library/new.csv")
        lib = wait_until(lambda: reader.events("library.changed"), 10, what="library")[0]
        assert json.loads(lib["data"]) == {"name": "new.csv"}
        assert main(["rm", "r2", "--root", str(root)]) == 0
        gone = wait_until(lambda: reader.events("run.deleted"), 10, what="run.deleted")[0]
        assert json.loads(gone["data"]) == {"run_id": "r2"}
        ids = [int(f["id"]) for f in reader.events()]
        assert ids == sorted(ids) and len(ids) == len(set(ids))
        assert not reader.events("reset")
    finally:
        reader.close()
        assert main(["keep", "r1", "--off", "--root", str(root)]) == 0  # wakes the reader
    wait_until(lambda: _connected(base, 0), 10, what="the client to be dropped")
    resumed = Reader(f"{base}/runtime/events", last_event_id=str(ids[-1]))
    try:
        wait_until(lambda: resumed.events(), 10, what="the missed event")
        first = resumed.events()[0]
        assert first["event"] == "run.updated" and json.loads(first["data"])["run_id"] == "r1"
        assert int(first["id"]) == ids[-1] + 1
    finally:
        resumed.close()
        (root / "library/new.csv").unlink()


def test_a_client_that_never_reads_does_not_stop_others(server: tuple[str, Path]) -> None:
    """A connection that sends the request and never reads (or dies) holds nobody back."""
    base, root = server
    port = int(base.rsplit(":", 1)[1])
    stuck = socket.create_connection(("127.0.0.1", port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /runtime/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reader = Reader(f"{base}/runtime/events")
    try:
        wait_until(lambda: _connected(base, 2), 10, what="both clients")
        for i in range(20):
            (root / "library" / f"f{i}.txt").write_bytes(b"x" * 10)
        wait_until(lambda: len(reader.events("library.changed")) >= 20, 10, what="20 events")
    finally:
        reader.close()
        stuck.close()
        for i in range(20):
            (root / "library" / f"f{i}.txt").unlink()
    wait_until(lambda: _connected(base, 0), 10, what="both to be dropped")


def test_sigterm_ends_streams_promptly(tmp_path: Path) -> None:
    """A server with a client on the stream still stops within a few seconds of SIGTERM."""
    root = tmp_path / "root"
    make_store(root)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn(promoter_argv("serve", "--root", str(root), "--listen", f"127.0.0.1:{port}"),
                 log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log)
        reader = Reader(f"{base}/runtime/events")
        wait_until(lambda: _connected(base, 1), 10, what="the client")
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=8) == 0
        assert time.monotonic() - started < 5
        reader.close()
    finally:
        stop_all([proc])


class FailingSource:
    """A source that fails once started; the next start waits for the test."""

    def __init__(self) -> None:
        self.starts = 0
        self.emit: Any = None
        self.fail = asyncio.Event()

    async def run(self, emit: Any) -> None:
        self.starts += 1
        self.emit = emit
        await self.fail.wait()
        self.fail.clear()
        raise OSError("artifacts/ was removed")


def test_hub_a_failed_source_ends_streams_and_restarts_with_the_next_client() -> None:
    """When the change source fails every stream ends (clients poll, then reconnect); the
    next client starts it again, and no id from before the failure can resume."""

    async def body() -> None:
        source = FailingSource()
        hub = EventHub(source)
        stream = hub.stream(hub.subscribe(None))
        await stream.__anext__()  # the preamble
        await asyncio.sleep(0)
        source.emit(Change(RUN_UPDATED, {"run_id": "a", "updated_at": "t"}))
        seen = int((await _take(stream, 1))[0]["id"])
        source.fail.set()
        with pytest.raises(StopAsyncIteration):
            while True:
                await asyncio.wait_for(stream.__anext__(), 2)
        again = hub.stream(hub.subscribe(str(seen)))
        assert (await _take(again, 1))[0]["event"] == RESET
        assert source.starts == 2 and not hub.closed
        hub.close()

    asyncio.run(body())


def test_a_reported_change_clears_the_cached_run_list(tmp_path: Path) -> None:
    """The refresh an event triggers never gets the run list from before the change: the
    hub drops the list's short-lived cache before the event reaches any client."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    app = create_app(store.config, store, list_ttl_s=3600, changes=FakeSource())
    lister = app.state.web.lister
    before = lister.render("all", None).etag
    populate(store, tmp_path, "r2", {"b.txt": b"b"})  # the daemon, behind the server's back
    assert lister.render("all", None).etag == before  # served from the cache
    app.state.events.publish(Change(RUN_UPDATED, {"run_id": "r2", "updated_at": "t"}))
    assert lister.render("all", None).etag != before

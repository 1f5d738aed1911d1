"""Hostile requests, second round (issue 17, server items): one client must not stop the server.

Raw sockets against a real `promoter serve` where the socket matters (Range
bytes no HTTP client sends, heads that never end, descriptor limits, a
read-only store), in-process through the ASGI app otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from promoter.store import Store
from promoter.web import create_app
from promoter.web.bodies import JSON_BODY_MAX
from promoter.web.connections import connection_cap
from promoter.web.files import Unsatisfiable, parse_range
from tests.daemon_helpers import wait_until
from tests.test_web_server import Server, start, stop, wait_healthy
from tests.web_helpers import CSRF, LogCapture, WebClient, client_for, make_store, populate

FILE = b"0123456789" * 100  # 1,000 bytes
BIG = bytes(range(256)) * (32 << 10)  # 8 MiB: more than any socket buffer holds
HOSTILE_RANGES = [
    b"bytes=0-\xb2",                 # latin-1 superscript two: str.isdigit() says yes, int() no
    b"bytes=\xb2-",
    b"bytes=-\xb9",
    b"bytes=0-" + b"9" * 4400,       # past int()'s 4,300-digit limit
    b"bytes=" + b"9" * 4400 + b"-",
    b"bytes=-" + b"9" * 4400,
    b"bytes=\xd9\xa3-",              # Arabic-Indic digit three, as UTF-8 bytes
    b"bytes=0x10-20", b"bytes=--1", b"bytes=1-2-3", b"bytes= - ", b"bytes=-", b"bytes",
    b"bytes=0-1,2-3", b"pages=0-1", b"bytes=5-1", b"\xff\xfe=0-1",
]


def _write_config(tmp_path: Path, http: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path / "root"}"\n[http]\n{http}\n')
    return config


def _raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """One request (with `Connection: close`) over a fresh socket; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)  # no half-close: uvicorn drops an answer once it sees EOF
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _get(path: str, *headers: bytes) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: localhost", *headers,
             b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes `sock` (reads and drops what it sends); fails past
    `seconds`."""
    start_at = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open past {seconds} s") from None
    return time.monotonic() - start_at


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the socket cases; the head timeout shortened to 0.5 s."""
    tmp_path = tmp_path_factory.mktemp("hostile-serve")
    store = make_store(tmp_path / "root")
    populate(store, tmp_path / "root", "r1", {"a.txt": FILE, "big.bin": BIG})
    server, _lines = start(_write_config(tmp_path, "header_timeout_s = 0.5"))
    try:
        wait_healthy(server)
        yield server
    finally:
        server.close()


# -- item 7: a malformed Range --------------------------------------------------------------


@pytest.mark.parametrize("header", HOSTILE_RANGES, ids=lambda h: repr(h[:24]))
def test_unparseable_range_is_ignored_or_416_never_500(served: Server, header: bytes) -> None:
    """Any Range a client can send answers 200, 206 or 416 over a real socket, never 500."""
    answer = _raw(served.port, _get("/runtime/artifacts/r1/files/a.txt", b"Range: " + header))
    status = _status(answer)
    assert status in (200, 206, 416), answer[:300]
    if status == 200:
        assert answer.endswith(FILE)


def test_malformed_ranges_leave_no_descriptor_open(served: Server) -> None:
    """300 requests with hostile Ranges, then the server holds no more descriptors than before."""
    path = "/runtime/artifacts/r1/files/a.txt"
    _raw(served.port, _get(path))  # warm: the run's metadata cached
    before = _open_fds(served.proc.pid)
    for i in range(300):
        _raw(served.port, _get(path, b"Range: " + HOSTILE_RANGES[i % len(HOSTILE_RANGES)]))
    deadline = time.monotonic() + 10
    while _open_fds(served.proc.pid) > before + 2 and time.monotonic() < deadline:
        threading.Event().wait(0.05)  # the last sockets are being closed
    assert _open_fds(served.proc.pid) <= before + 2
    assert _status(_raw(served.port, _get(path))) == 200


def test_parse_range_raises_nothing_but_unsatisfiable() -> None:
    """parse_range on every hostile header, decoded as the server decodes it (latin-1)."""
    for raw in HOSTILE_RANGES:
        try:
            result = parse_range(raw.decode("latin-1"), 1000)
        except Unsatisfiable:
            continue
        assert result is None or 0 <= result[0] <= result[1] < 1000
    assert parse_range("bytes=0-" + "9" * 4400, 1000) == (0, 999)
    assert parse_range("bytes=-" + "9" * 4400, 1000) == (0, 999)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=" + "9" * 4400 + "-", 1000)


def _exhaust_descriptors() -> list[int]:
    """Open /dev/null until the process is out of descriptors (soft limit lowered first)."""
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return held


def test_healthz_503_and_files_503_when_out_of_descriptors(tmp_path: Path) -> None:
    """Out of descriptors: /healthz 503 and a file GET 503 (not 404 "no such file")."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": FILE})
    app = create_app(store.config, store, list_ttl_s=0.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("testclient", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            await c.get("/runtime/artifacts/r1/files/a.txt")  # the run cached: open on the loop
            resource.setrlimit(resource.RLIMIT_NOFILE, (_open_count() + 64, hard))
            held = _exhaust_descriptors()
            try:
                health = await c.get("/healthz")
                file = await c.get("/runtime/artifacts/r1/files/a.txt")
            finally:
                for fd in held:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            return health, file, await c.get("/healthz")

    health, file, after = anyio.run(run)
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable",
                             "detail": "The server cannot open files: too many open descriptors."}
    assert file.status_code == 503, file.text
    assert after.status_code == 200


def _open_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- item 8: heads that never end, connections past the descriptors --------------------------


def test_connection_without_a_whole_head_is_closed(served: Server) -> None:
    """A head never finished (a trickle of bytes included) is closed after header_timeout_s."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
        assert _closed_within(sock, 5) > 0.3
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        start_at = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # one byte every 0.1 s for up to 4 s: data is not a head
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            threading.Event().wait(0.1)
        if not closed:
            _closed_within(sock, 5)
        assert time.monotonic() - start_at < 4.5
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        assert _closed_within(sock, 5) > 0.3  # nothing at all sent


def test_second_head_on_a_kept_alive_connection_is_timed_too(served: Server) -> None:
    """After a first answer, a half-sent second head is closed by the same deadline."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert _status(first) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: loc")
        assert _closed_within(sock, 5) < 4  # uvicorn's own keep-alive timer is 5 s


def test_request_body_that_stops_coming_is_closed(served: Server) -> None:
    """A head announcing 50 bytes of body, then 10 and silence: closed after the timeout."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"PATCH /runtime/artifacts/r1 HTTP/1.1\r\nHost: localhost\r\n"
                     b"X-Promoter-Request: 1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50\r\n\r\n{\"keep\": t")
        assert _closed_within(sock, 5) < 4


def test_request_body_that_trickles_is_closed(served: Server) -> None:
    """A body sent one byte every 0.1 s (never 0.5 s of silence, far under MIN_BODY_RATE):
    closed soon after the timeout. It held the connection for days, and a few hundred
    such connections locked every other client out (issue 17, probe)."""
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"PATCH /runtime/artifacts/r1 HTTP/1.1\r\nHost: localhost\r\n"
                     b"X-Promoter-Request: 1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        start_at = time.monotonic()
        closed = False
        for _ in range(60):  # up to 6 s of trickle
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
            threading.Event().wait(0.1)
        if not closed:
            _closed_within(sock, 1)
        assert time.monotonic() - start_at < 3


def test_request_body_at_a_fair_rate_is_read_whole(served: Server) -> None:
    """A slow but steady body (1,000 B/s, gaps of 0.1 s, longer than the head timeout in
    all) is answered: the rate bound refuses trickles, not slow clients."""
    body = b'{"keep": true}' + b" " * 1986
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"PATCH /runtime/artifacts/r1 HTTP/1.1\r\nHost: localhost\r\n"
                     b"X-Promoter-Request: 1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 100):
            sock.sendall(body[i:i + 100])
            threading.Event().wait(0.1)
        assert _status(sock.recv(65536)) == 200


def test_reader_that_stops_reading_is_dropped_with_its_file(served: Server) -> None:
    """A client asks for 8 MiB and reads nothing: once the socket's buffer has been full
    for header_timeout_s the connection is aborted and the file closed. It held both for
    ever, and a few hundred such clients locked every other one out (issue 17, probe)."""
    path = "/runtime/artifacts/r1/files/big.bin"
    _raw(served.port, _get(path))  # warm: the run's metadata cached
    before = _open_fds(served.proc.pid)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", served.port))
        sock.sendall(_get(path))
        wait_until(lambda: _open_fds(served.proc.pid) > before, 10, interval=0.02,
                   what="the answer under way (its socket and file open)")
        wait_until(lambda: _open_fds(served.proc.pid) <= before, 10, interval=0.05,
                   what="the stalled answer's socket and file closed")
        received = 0
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += len(chunk)
        assert received < len(BIG)
    assert _status(_raw(served.port, _get("/healthz"))) == 200


def test_slow_reader_that_keeps_reading_gets_the_whole_file(served: Server) -> None:
    """A reader pausing 0.2 s between reads (never a full buffer for 0.5 s) gets every byte:
    the write bound drops readers that stopped, not slow ones."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect(("127.0.0.1", served.port))
        sock.sendall(_get("/runtime/artifacts/r1/files/big.bin"))
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
            threading.Event().wait(0.2)
    assert data.endswith(BIG[-65536:]) and len(data) > len(BIG)


def test_idle_sockets_past_the_descriptor_limit_never_lock_clients_out(tmp_path: Path) -> None:
    """At RLIMIT_NOFILE 128, 300 idle sockets: a new client is still answered within seconds."""
    make_store(tmp_path / "root")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    server, lines = start(_write_config(tmp_path, "header_timeout_s = 60"),
                          preexec_fn=low_limit)
    idle: list[socket.socket] = []
    try:
        wait_healthy(server)
        assert server.lines[-1]["max_connections"] == connection_cap(128) == 16
        for _ in range(300):  # all at once: the kernel retries the SYNs the backlog drops
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            idle.append(sock)
        start_at = time.monotonic()
        with httpx.Client(base_url=server.url, headers={"Host": "localhost"},
                          timeout=20) as client:
            assert client.get("/healthz").status_code == 200
        assert time.monotonic() - start_at < 10  # delayed by seconds at most
        assert _open_fds(server.proc.pid) < 128
        assert not any("Too many open files" in str(line) for line in server.lines)
        assert stop(server, lines) == 0
    finally:
        for sock in idle:
            sock.close()
        server.close()


def test_web_unit_sets_a_descriptor_limit() -> None:
    """promoter-web.service raises LimitNOFILE, which the connection cap derives from."""
    unit = (Path(__file__).resolve().parents[1] / "systemd" / "promoter-web.service").read_text()
    values = [line.split("=", 1)[1] for line in unit.splitlines()
              if line.startswith("LimitNOFILE=")]
    assert values == ["8192"]
    assert connection_cap(8192) == 3296


# -- item 9: request bodies ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = make_store(tmp_path, http={"max_upload_bytes": 100_000})
    populate(store, tmp_path, "r1", {"a.txt": FILE})
    return store


def _call(app: Any, method: str, path: str, headers: dict[str, str],
          chunks: Iterator[bytes]) -> tuple[int, bytes, int]:
    """The app over a streamed body; returns the status, the body and the chunks it read."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8730),
        "headers": [(k.lower().encode(), v.encode()) for k, v in
                    {"host": "localhost", **CSRF, **headers}.items()],
    }
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    start_msg = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start_msg["status"], body, read


def _endless(chunk: bytes, count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield chunk


def test_json_body_over_64k_is_413_before_it_is_read(store: Store) -> None:
    """A PATCH announcing 300 MB is refused unread; one streaming without a length, at 64 KiB."""
    app = create_app(store.config, store)
    status, body, read = _call(app, "PATCH", "/runtime/artifacts/r1",
                               {"content-type": "application/json",
                                "content-length": str(300 << 20)}, _endless(b"[" * 65536, 4800))
    assert (status, read) == (413, 0)
    assert json.loads(body) == {"detail": f"The request body is over {JSON_BODY_MAX} bytes."}
    status, body, read = _call(app, "PATCH", "/runtime/artifacts/r1",
                               {"content-type": "application/json",
                                "transfer-encoding": "chunked"}, _endless(b"[" * 16384, 20000))
    assert status == 413
    assert read <= JSON_BODY_MAX // 16384 + 1  # stopped reading at the limit
    assert store.get_run("r1").keep is False


def test_small_json_body_still_works(store: Store) -> None:
    """Under the limit PATCH and DELETE work; the upload keeps its own, larger limit."""
    client = client_for(store)
    assert client.patch("/runtime/artifacts/r1", json={"keep": True}, headers=CSRF).json()["keep"]
    r = client.post("/runtime/library", headers=CSRF,
                    files={"file": ("big.bin", b"x" * 90_000)})  # over 64 KiB: not a JSON body
    assert r.status_code == 201, r.text
    r = client.request("DELETE", "/runtime/artifacts/r1/files/a.txt", headers=CSRF,
                       content=b"x" * 70_000)
    assert r.status_code == 413
    assert store.get_run("r1").entry("a.txt") is not None
    r = client.request("DELETE", "/runtime/artifacts/r1/files/a.txt", headers=CSRF,
                       content=b"{}")
    assert r.status_code == 204


def test_other_multipart_parts_count_against_the_upload_limit(store: Store) -> None:
    """A 1 MB extra field beside a small file is over a 100 kB max_upload_bytes: 413."""
    boundary = "B0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"pad\"\r\n\r\n".encode()
            + b"p" * 1_000_000 +
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"s.txt\"\r\n\r\nsmall\r\n--{boundary}--\r\n".encode())
    app = create_app(store.config, store)
    chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    status, answer, read = _call(app, "POST", "/runtime/library",
                                 {"content-type": f"multipart/form-data; boundary={boundary}"},
                                 chunks)
    assert status == 413, answer
    assert read < len(body) // 65536  # refused before the end
    assert not (store.library.path / "s.txt").exists()


# -- item 10: an oversized metadata.json ---------------------------------------------------


def test_oversized_metadata_is_set_aside_unread_and_rebuilt(tmp_path: Path) -> None:
    """metadata.json over promote.max_metadata_bytes: corrupt, set aside whole, rebuilt."""
    store = make_store(tmp_path, promote={"max_metadata_bytes": 1 << 20})
    meta = populate(store, tmp_path, "r1", {"a.txt": FILE})
    planted = json.loads(meta.to_json())
    planted["user_directive"] = "x" * (2 << 20)  # valid JSON, valid schema, 2 MiB
    path = tmp_path / "artifacts" / "r1" / "metadata.json"
    path.write_text(json.dumps(planted))
    size = path.stat().st_size
    client = client_for(store)
    with LogCapture() as logs:
        r = client.get("/runtime/artifacts/r1")
    assert r.status_code == 200
    assert r.json()["user_directive"] == ""  # nothing of the oversized file was parsed
    assert [a["filename"] for a in r.json()["artifacts"]] == ["a.txt"]
    aside = list(path.parent.glob("metadata.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == size
    recovered = logs.events("metadata.recovered")
    assert recovered and "max_metadata_bytes" in recovered[0]["reason"]
    assert path.stat().st_size < 4096


def test_file_route_never_parses_metadata_on_the_event_loop(store: Store,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A file GET of a run not cached reads its metadata in a worker thread, not the loop."""
    threads: list[str] = []
    original = Store._parse

    def recording(self: Store, art: int, run_id: str) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, art, run_id)

    monkeypatch.setattr(Store, "_parse", recording)
    fresh = Store(store.config)  # nothing cached
    client = client_for(fresh)
    assert client.get("/runtime/artifacts/r1/files/a.txt").content == FILE
    assert client.get("/runtime/artifacts/r1/files/a.txt").content == FILE  # cached: no parse
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name


def test_deeply_nested_metadata_under_the_bound_is_rebuilt(tmp_path: Path) -> None:
    """100,000 nested brackets (under the bound) are corrupt, not a RecursionError."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": FILE})
    (tmp_path / "artifacts" / "r1" / "metadata.json").write_bytes(b"[" * 100_000)
    r = client_for(store).get("/runtime/artifacts/r1")
    assert r.status_code == 200
    assert [a["filename"] for a in r.json()["artifacts"]] == ["a.txt"]


def test_metadata_of_many_bad_entries_under_the_bound_is_rebuilt(tmp_path: Path) -> None:
    """200,000 bad entries (1.6 MB, under the bound) are one schema failure, rebuilt as any
    corrupt file: reporting each bad entry took a minute and gigabytes (issue 17)."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": FILE})
    path = tmp_path / "artifacts" / "r1" / "metadata.json"
    path.write_text('{"run_id": "r1", "artifacts": [' + ",".join(['{"x": 1}'] * 200_000) + "]}")
    client = client_for(store)
    started = time.monotonic()
    with LogCapture() as logs:
        r = client.get("/runtime/artifacts/r1")
    assert time.monotonic() - started < 10  # 30 s before, under a second after (unloaded)
    assert r.status_code == 200
    assert [a["filename"] for a in r.json()["artifacts"]] == ["a.txt"]
    assert [e["reason"] for e in logs.events("metadata.recovered")] == \
        ["does not match the schema"]


def test_store_write_path_rebuilds_oversized_metadata(tmp_path: Path) -> None:
    """The daemon's path (load under lock) treats it the same: keep works on the rebuilt run."""
    store = make_store(tmp_path, promote={"max_metadata_bytes": 1 << 20})
    populate(store, tmp_path, "r1", {"a.txt": FILE})
    path = tmp_path / "artifacts" / "r1" / "metadata.json"
    path.write_bytes(b"[" * (2 << 20))
    assert store.set_keep("r1", True).keep is True
    assert [a.filename for a in store.get_run("r1").artifacts] == ["a.txt"]


# -- item 12: metric labels ----------------------------------------------------------------


def test_made_up_methods_do_not_grow_metrics(store: Store) -> None:
    """Requests with 400 made-up methods on known and unknown paths share one label value."""
    app = create_app(store.config, store)
    client = WebClient(app)

    def hostile(first: int, last: int) -> None:
        for i in range(first, last):
            _call(app, f"M{i}X", "/runtime/artifacts/r1", {}, iter([b""]))
            _call(app, f"M{i}Y", f"/made/up/{i}", {}, iter([b""]))

    def label_sets() -> set[str]:
        text = client.get("/metrics").text
        assert "M4" not in text and "made/up" not in text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines()
                if line and not line.startswith("#")}

    hostile(0, 10)
    label_sets()  # /metrics's own label set now exists
    first = label_sets()
    hostile(10, 200)
    assert label_sets() == first  # counts change, label sets do not
    assert any('method="OTHER"' in labels for labels in first)


# -- item 13: a read-only store ------------------------------------------------------------


def test_read_only_artifacts_make_changes_503(tmp_path: Path) -> None:
    """artifacts/ mounted read-only (a mount namespace of its own): PATCH and DELETE are 503."""
    assert shutil.which("unshare"), "util-linux unshare is needed (apt-get install util-linux)"
    store = make_store(tmp_path / "root")
    populate(store, tmp_path / "root", "r1", {"a.txt": FILE, "b.txt": b"b"})
    art = tmp_path / "root" / "artifacts"
    ro = (f"mount --bind {art} {art} && mount -o remount,bind,ro {art} && exec \"$@\"")
    server, lines = start(_write_config(tmp_path), prefix=["unshare", "-rm", "sh", "-c", ro, "-"])
    try:
        with httpx.Client(base_url=server.url, headers={"Host": "localhost", **CSRF}) as c:
            health = c.get("/healthz")  # the server is up: it listened before this line
            assert health.status_code == 503
            assert health.json()["detail"] == "The artifacts folder is not usable."
            answers = [c.patch("/runtime/artifacts/r1", json={"keep": True}),
                       c.delete("/runtime/artifacts/r1/files/b.txt"),
                       c.delete("/runtime/artifacts/r1")]
            for r in answers:
                assert r.status_code == 503, (r.request.method, r.request.url, r.text)
                detail = r.json()["detail"]
                assert detail == "The store could not be read or written: read-only file system."
            assert c.get("/runtime/artifacts/r1/files/a.txt").content == FILE
        assert stop(server, lines) == 0
    finally:
        server.close()
    assert store.get_run("r1").keep is False
    assert not any(e.get("event") == "http.error" for e in server.lines)


# -- issue 11, defect 1: a read never waits for a run's lock ------------------------------

_HOLD_LOCK = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
select.select([sys.stdin], [], [], 5)  # held until told, or 5 s: a reader that waits fails
"""


def test_reads_are_answered_while_another_process_holds_the_run_lock(store: Store,
                                                                     tmp_path: Path) -> None:
    """The daemon copying a new run's first batch (its lock held, no metadata yet): GETs
    of that run and of others are answered within 100 ms, not after the copy."""
    files = tmp_path / "artifacts" / "r2" / "files"
    files.mkdir(parents=True)
    (files / "half.txt").write_bytes(b"being copied")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK,
                               str(tmp_path / "artifacts" / ".locks" / "r2")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        client = client_for(Store(store.config))  # nothing cached
        assert client.get("/runtime/library").status_code == 200  # warm: threads, routes
        for path, status in (("/runtime/artifacts/r2/files/half.txt", 404),
                             ("/runtime/artifacts/r2", 404),
                             ("/runtime/artifacts/r1/files/a.txt", 200),
                             ("/runtime/artifacts", 200)):
            start_at = time.monotonic()
            assert client.get(path).status_code == status, path
            # 100 ms is the aim (a few ms measured); 250 ms leaves room for a loaded machine
            assert time.monotonic() - start_at < 0.25, path
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert client.get("/runtime/artifacts/r2").status_code == 200  # lock free: recovered

"""A real `promoter serve` process on a loopback port: routes end to end, logs, SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from promoter.web.files import FILE_CSP
from tests.web_helpers import CSRF, make_store, populate


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Kill it if it still runs; reap it, its stderr reader and its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=15)
        if self.pump is not None:
            self.pump.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path / "root"}"\n{extra}')
    return config


def _pump(stream: Any, out: queue.Queue[bytes | None]) -> None:
    for line in iter(stream.readline, b""):
        out.put(line)
    out.put(None)


def start(config: Path, listen: str = "127.0.0.1:0", prefix: Sequence[str] = (),
          preexec_fn: Callable[[], None] | None = None,
          ) -> tuple[Server, queue.Queue[bytes | None]]:
    """Start `promoter serve` and wait (bounded) for its http.listening line.

    `prefix`: a command that runs it (e.g. in a mount namespace); `preexec_fn`: run in
    the child before it starts (e.g. a lower descriptor limit).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "promoter", "serve", "--config",
                             str(config), "--listen", listen], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=preexec_fn)
    lines: queue.Queue[bytes | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stderr, lines), name="serve-stderr",
                            daemon=True)
    pump.start()
    server = Server(proc, 0, pump=pump)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        raw = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        if raw is None:
            break
        event = json.loads(raw)
        server.lines.append(event)
        if event["event"] == "http.listening":
            server.port = event["port"]
            assert event["url"] == f"http://127.0.0.1:{server.port}/"  # the page's address
            return server, lines
    server.close()
    raise AssertionError(f"promoter serve did not start: {server.lines}")


def wait_healthy(server: Server, timeout: float = 10) -> None:
    """Poll /healthz until it answers 200 (bounded; no fixed sleep)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, headers={"Host": "localhost"}) as client:
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("promoter serve never became healthy")
            threading.Event().wait(0.05)


def stop(server: Server, lines: queue.Queue[bytes | None]) -> int:
    """SIGTERM, then collect the rest of stderr; returns the exit status."""
    server.proc.send_signal(signal.SIGTERM)
    status = server.proc.wait(timeout=15)
    while (raw := lines.get(timeout=5)) is not None:
        server.lines.append(json.loads(raw))
    return status


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, queue.Queue[bytes | None]]]:
    store = make_store(tmp_path / "root")
    populate(store, tmp_path / "root", "run-1", {"report.html": b"<h1>r</h1>",
                                                 "plots/a.png": b"\x89PNG" + b"x" * 5000})
    server, lines = start(_write_config(tmp_path))
    try:
        wait_healthy(server)
        yield server, lines
    finally:
        server.close()


def test_serves_routes_end_to_end_and_stops_on_sigterm(
        served: tuple[Server, queue.Queue[bytes | None]], tmp_path: Path) -> None:
    """List, file, 304, delete and the page's 404 work over a socket; SIGTERM exits 0."""
    server, lines = served
    with httpx.Client(base_url=server.url, headers={"Host": "localhost"}) as client:
        listing = client.get("/runtime/artifacts")
        assert listing.status_code == 200
        assert listing.json()["artifacts"][0]["run_id"] == "run-1"
        assert client.get("/runtime/artifacts", headers={
            "If-None-Match": listing.headers["etag"]}).status_code == 304
        png = client.get("/runtime/artifacts/run-1/files/plots/a.png")
        assert png.status_code == 200
        assert png.headers["content-security-policy"] == FILE_CSP
        assert png.content.startswith(b"\x89PNG")
        ranged = client.get("/runtime/artifacts/run-1/files/plots/a.png",
                            headers={"Range": "bytes=0-3"})
        assert (ranged.status_code, ranged.content) == (206, b"\x89PNG")
        html = client.get("/runtime/artifacts/run-1/files/report.html")
        assert html.headers["content-disposition"].startswith("attachment;")
        assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
        assert client.delete("/runtime/artifacts/run-1").status_code == 403
        assert client.delete("/runtime/artifacts/run-1", headers=CSRF).status_code == 204
        assert "server" not in png.headers  # uvicorn does not advertise itself
    assert stop(server, lines) == 0
    assert server.proc.stdout is not None
    assert server.proc.stdout.read() == b""  # logs never go to stdout
    events = [e["event"] for e in server.lines]
    # successful reads are logged at debug (DESIGN §7): at info, only the refusals and the change
    requests = [(e["method"], e["status"]) for e in server.lines if e["event"] == "http.request"]
    assert sorted(requests) == [("DELETE", 204), ("DELETE", 403), ("GET", 400)]
    assert "run.deleted" in events
    assert events[-1] == "http.stopped"
    deleted = next(e for e in server.lines if e["event"] == "run.deleted")
    assert deleted["client"] == "127.0.0.1" and deleted["actor"] == "http:127.0.0.1"


def test_raw_traversal_over_the_socket(served: tuple[Server, queue.Queue[bytes | None]],
                                       tmp_path: Path) -> None:
    """Literal `..` and encoded shapes sent byte for byte (no client normalisation): 400/404."""
    server, lines = served
    (tmp_path / "secret.txt").write_text("SECRET")
    for path in ("/runtime/artifacts/run-1/files/../../../../secret.txt",
                 "/runtime/artifacts/run-1/files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
                 "/runtime/artifacts/run-1/files/..%2f..%2f..%2f..%2fsecret.txt",
                 "/runtime/library/..%2f..%2fsecret.txt", "/runtime/library/%2e%2e",
                 "/runtime/artifacts/..", "/static/../../../secret.txt",
                 "/runtime/artifacts/run-1/files/a%00b"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "localhost")
        conn.endheaders()
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        assert answer.status in (400, 404), (path, answer.status)
        assert b"SECRET" not in body
    assert stop(server, lines) == 0


def test_bad_listen_and_busy_port(tmp_path: Path) -> None:
    """A malformed --listen is a usage error (2); a port in use is one clear line and 1."""
    make_store(tmp_path / "root")
    config = _write_config(tmp_path)
    bad = subprocess.run([sys.executable, "-m", "promoter", "serve", "--config", str(config),
                          "--listen", "nonsense"], capture_output=True, timeout=30)
    assert bad.returncode == 2
    assert b"--listen" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run([sys.executable, "-m", "promoter", "serve", "--config",
                                str(config), "--listen", f"127.0.0.1:{port}"],
                               capture_output=True, timeout=30)
    assert taken.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}".encode() in taken.stderr
    assert b"Traceback" not in taken.stderr


def test_sigint_also_exits_0(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) stops the server gracefully too."""
    make_store(tmp_path / "root")
    server, _ = start(_write_config(tmp_path))
    try:
        wait_healthy(server)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=15) == 0
    finally:
        server.close()


def test_the_listening_socket_is_tcp_so_answers_are_not_delayed() -> None:
    """The pre-bound socket says IPPROTO_TCP, so asyncio sets TCP_NODELAY on its connections
    (without it, Nagle and delayed ACKs held each small answer back ~40 ms)."""
    from promoter.web.server import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        with socket.create_connection(sock.getsockname()) as client:
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
                del client
    finally:
        sock.close()

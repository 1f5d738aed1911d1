"""`promoter serve`: uvicorn on `http.listen` or `--listen` (DESIGN §3, §7).

Logs are structlog JSON on stderr, uvicorn's own records included (bridged
below); there is no uvicorn access log, the app logs `http.request` itself.
SIGTERM and SIGINT stop it gracefully: uvicorn stops accepting, finishes the
answers in progress (bounded), and `serve` returns 0.
"""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType
from typing import Final

import uvicorn

from promoter import events
from promoter.config import Config
from promoter.errors import StoreIOError, UsageError
from promoter.logs import StdlibBridge, get_logger
from promoter.names import split_host_port
from promoter.s3backend import S3Backend
from promoter.s3errors import StoreUnavailable
from promoter.startup import prepare_store
from promoter.store import Store
from promoter.web.app import create_app
from promoter.web.bucket import Bucket
from promoter.web.connections import HeadTimeoutProtocol, accept_backlog, connection_cap
from promoter.web.live import EventHub
from promoter.web.runcache import RunCache

__all__ = ["parse_listen", "serve"]

log = get_logger()
GRACEFUL_SECONDS: Final = 10  # within the unit's TimeoutStopSec=30


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets) → (host, port); port 0 picks a free port."""
    try:
        return split_host_port(value, zero_port=True)
    except ValueError as exc:
        raise UsageError(f"--listen {value!r}: {exc}") from None


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so a failure is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they
    # are TCP; without it, Nagle and delayed ACKs add ~40 ms to every small answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StoreIOError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _route_uvicorn_logs(level: str) -> None:
    handler = StdlibBridge(events.HTTP_SERVER)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name == "uvicorn" else []
        logger.setLevel(logging.WARNING if level == "info" else level.upper())
        logger.propagate = name != "uvicorn"
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True


def _open(config: Config) -> tuple[Store, Bucket | None]:
    """The store, the folders it writes and what a crash of this process may have left
    there (only `promoter run` creates the store, DESIGN §3, and repairs runs: it reads
    sessions/); over a bucket, the run cache and object reads (DESIGN §10).

    The bucket's probe stops the server on a definite answer (missing bucket, refused
    credentials, conditional writes ignored: exit 2); a bucket that cannot be reached is
    an outage, not a reason to stay down: the server starts and `/healthz` answers 503
    until it is back (`store.unavailable`).
    """
    try:
        store = prepare_store(config, sessions=False, create=False, repair=False)
    except StoreUnavailable as exc:
        log.warning(events.STORE_UNAVAILABLE, reason=str(exc))
        store = Store(config)
    if not isinstance(store.disk, S3Backend):
        return store, None
    objects = store.disk.objects
    return store, Bucket(store, objects, RunCache(objects, config.promote.max_metadata_bytes))


class _Server(uvicorn.Server):
    """uvicorn waits for running answers at shutdown: event streams never end by themselves,
    so they are ended first (clients reconnect to the next server with Last-Event-ID)."""

    def __init__(self, config: uvicorn.Config, hub: EventHub) -> None:
        super().__init__(config)
        self._hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._hub.close()
        await super().shutdown(sockets)


def serve(config: Config, listen: str | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status (0 after a graceful stop)."""
    host, port = parse_listen(listen or config.http.listen)
    store, bucket = _open(config)
    app = create_app(config, store, bucket=bucket)
    sock = _bind(host, port)
    _route_uvicorn_logs(config.log.level)
    cap = connection_cap()
    protocol = HeadTimeoutProtocol.configured(config.http.header_timeout_s, cap)
    # limit_concurrency one above the cap: uvicorn answers 503 only when requests in
    # progress (not idle sockets, which the protocol evicts) exceed it.
    server = _Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS, http=protocol,
        limit_concurrency=cap + 1, backlog=accept_backlog(),
        # uvicorn would trust X-Forwarded-For from loopback by default; the app honours it
        # only from http.trusted_proxies (create_app), so uvicorn's own is off
        proxy_headers=False), app.state.events)
    def stop_early(signum: int, frame: FrameType | None) -> None:
        # before uvicorn's own handlers (and after: uvicorn raises its signal again once
        # stopped): a SIGTERM just after `http.listening` stops the server (probe r9-signals
        # F2: 9 in 110 were taken quietly and the server went on)
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop_early) for sig in (signal.SIGTERM, signal.SIGINT)}
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info(events.HTTP_LISTENING, host=bound_host, port=bound_port,
             url=f"http://{shown}:{bound_port}/",
             max_connections=cap, header_timeout_s=config.http.header_timeout_s)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    log.info(events.HTTP_STOPPED)
    return 0

"""One `http.request` log line and one metrics sample per request (DESIGN §7).

The outermost middleware: it also binds the client address into structlog's
context for the whole request, so the store's own audit events
(`run.deleted`, `library.promoted`, ...) carry `client` without being logged
twice, and it turns an unexpected exception into a generic 500 whose details
go to the log only.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Sequence
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bound_contextvars
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from promoter import events
from promoter.audit import acting_as, http_actor
from promoter.logs import get_logger
from promoter.web.errors import StreamBroken
from promoter.web.metrics import HttpMetrics
from promoter.web.security import deny

__all__ = ["KNOWN_METHODS", "ForwardedFor", "RequestObserver", "method_label"]

log = get_logger()
UNMATCHED: Final = "<unmatched>"
OTHER_METHOD: Final = "OTHER"
# The methods a label may name; any other token a client makes up shares one value,
# so made-up methods cannot grow /metrics (each label set lives for the process's life).
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                  "CONNECT", "TRACE"})
_PATH_LOG_CHARS: Final = 300
_METHOD_LOG_CHARS: Final = 32
_PEER: Final = "promoter.peer"  # scope key: the socket's peer, before X-Forwarded-For


def method_label(method: str) -> str:
    """The request's method as a bounded metric label value."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ForwardedFor:
    """X-Forwarded-For from `http.trusted_proxies` (uvicorn's middleware), believed only when
    it names an IP address: the audit actor is `http:<address>` (DESIGN §11), so a list entry
    such as `unknown` or any other text leaves the proxy's own address instead."""

    def __init__(self, app: ASGIApp, trusted_hosts: list[str]) -> None:
        self.app = app
        self.proxy = ProxyHeadersMiddleware(self._checked,  # type: ignore[arg-type]
                                            trusted_hosts=trusted_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_PEER] = scope.get("client")
        await self.proxy(scope, receive, send)  # type: ignore[arg-type]

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and not _is_address(client[0]):
            scope["client"] = scope[_PEER]
        await self.app(scope, receive, send)


class RequestObserver:
    """ASGI middleware: time, log and count every request; no traceback ever reaches a client."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics,
                 templates: Sequence[tuple[re.Pattern[str], str]], token: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token  # every change is under /runtime/, where a configured token is checked
        self.templates = templates  # (path regex, template) of every route, for refused requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # scope["client"] is the peer, or the X-Forwarded-For client when the peer is one
        # of http.trusted_proxies (ProxyHeadersMiddleware runs outside this one)
        client = scope.get("client")
        address = client[0] if client else "-"
        with bound_contextvars(client=address), acting_as(http_actor(address, self.token)):
            try:
                await self.app(scope, receive, observed)
            except StreamBroken as exc:  # the head is sent: uvicorn drops the connection
                log.warning(events.HTTP_STREAM_BROKEN, method=scope["method"][:_METHOD_LOG_CHARS],
                            path=scope["path"][:_PATH_LOG_CHARS], reason=str(exc))
            except Exception:
                log.exception(events.HTTP_ERROR, method=scope["method"][:_METHOD_LOG_CHARS],
                              path=scope["path"][:_PATH_LOG_CHARS])
                if status == 0:  # nothing sent yet: a generic answer, details in the log only
                    status = 500
                    await deny(send, 500, "The server met an unexpected error; "
                               "its log has the details.")
            finally:
                seconds = time.perf_counter() - start
                route = self._template(scope)
                # successful reads at debug: an open page's polling must not bury the
                # audit events (DESIGN §7)
                read = scope["method"] in ("GET", "HEAD") and (200 <= status < 300 or status == 304)
                (log.debug if read else log.info)(
                    events.HTTP_REQUEST, method=scope["method"][:_METHOD_LOG_CHARS],
                    route=route, path=scope["path"][:_PATH_LOG_CHARS], status=status,
                    duration_ms=round(seconds * 1000, 2))
                self.metrics.observe(method_label(scope["method"]), route, status, seconds)

    def _template(self, scope: Scope) -> str:
        """The route's path template (bounded label values), even for requests refused early."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        for regex, template in self.templates:
            if regex.match(scope["path"]):
                return template
        return UNMATCHED

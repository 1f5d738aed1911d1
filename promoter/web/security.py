"""Who may ask what: every access rule of DESIGN §7 in one ASGI middleware.

In order: the `Host` allow-list (400, against DNS rebinding); CORS preflights,
granted only to `http.cors_origins`; the bearer token on everything but the
page, its files, /healthz and /openapi.json (401); and for changing requests
(POST, PATCH, DELETE) a same-origin or allowed `Origin` and, without a token,
the `X-Promoter-Request` header a cross-site page cannot send without a
preflight (403). Routes never check access themselves.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promoter.config import HttpConfig
from promoter.errors import ConfigError
from promoter.signing import EXPIRES, SIG, LinkSigner

__all__ = ["CSRF_HEADER", "AccessGuard", "host_allowed", "is_open_path", "load_token"]

CSRF_HEADER: Final = "x-promoter-request"
CHANGING: Final = frozenset({"POST", "PATCH", "DELETE", "PUT"})
_OPEN_PATHS: Final = frozenset({"/", "/healthz", "/openapi.json", "/favicon.ico"})
_ALLOW_METHODS: Final = "GET, HEAD, POST, PATCH, DELETE"
_ALLOW_HEADERS: Final = ("Authorization, Content-Type, If-None-Match, If-Range, Range, "
                         "X-Promoter-Request")
_EXPOSE_HEADERS: Final = "Content-Disposition, Content-Length, Content-Range, ETag, Location"
_SIGNABLE: Final = re.compile(r"^/runtime/artifacts/[^/]+/files/.+$")  # the artifact file route


def load_token(token_file: str) -> bytes | None:
    """The bearer token of `http.token_file`, surrounding whitespace ignored; None when unset."""
    if not token_file:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
        raise ConfigError(f"http.token_file {token_file}: {reason}") from None
    if not token:
        raise ConfigError(f"http.token_file {token_file} is empty")
    return token.encode()


def is_open_path(path: str) -> bool:
    """The page, its static files, /healthz and the API description need no token."""
    return path in _OPEN_PATHS or path.startswith("/static/")


def _split_host(host: str) -> str:
    """`example.com:8730` → `example.com`; `[::1]:8730` → `[::1]`."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def host_allowed(host: str | None, allowed: frozenset[str]) -> bool:
    """The Host header, with or without its port, is on the allow-list."""
    if not host:
        return False
    host = host.strip().lower()
    return host in allowed or _split_host(host) in allowed


def _same_origin(origin: str, host: str) -> bool:
    """The Origin names this server: same host and port as the request's Host header."""
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and authority.lower() == host.lower()


async def deny(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
               ) -> None:
    """Answer `{"detail": ...}` without calling the app."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessGuard:
    """ASGI middleware enforcing DESIGN §7's access rules before any route runs."""

    def __init__(self, app: ASGIApp, http: HttpConfig, token: bytes | None,
                 signer: LinkSigner | None = None) -> None:
        self.app = app
        self.signer = signer
        self.allowed_hosts = frozenset(h.strip().lower() for h in http.allowed_hosts)
        self.cors_origins = frozenset(o.rstrip("/") for o in http.cors_origins)
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not host_allowed(host, self.allowed_hosts):
            await deny(send, 400, "The Host header names a host this server does not answer to.")
            return
        method: str = scope["method"]
        origin = headers.get("origin")
        cors = origin is not None and origin in self.cors_origins
        if method == "OPTIONS" and origin is not None and \
                "access-control-request-method" in headers:
            await self._preflight(send, origin, cors)
            return
        if self.token is not None and not is_open_path(scope["path"]) and \
                not self._token_ok(headers):
            signed = self._signed(scope)
            if signed is True:
                await self.app(scope, receive, send)  # GET/HEAD of the one file it names
                return
            if signed is False:
                await deny(send, 403, "This link is expired, altered or malformed.")
                return
            await deny(send, 401, "This request needs a valid bearer token.",
                       [(b"www-authenticate", b'Bearer realm="promoter"')])
            return
        if method in CHANGING:
            assert host is not None  # checked above
            if origin is not None and not cors and not _same_origin(origin, host):
                await deny(send, 403, "Changing requests from another site are refused.")
                return
            if self.token is None and CSRF_HEADER not in headers:
                await deny(send, 403, "Changing requests need the X-Promoter-Request header.")
                return
        if cors:
            assert origin is not None
            await self.app(scope, receive, _with_cors(send, origin))
        else:
            await self.app(scope, receive, send)

    def _token_ok(self, headers: Headers) -> bool:
        assert self.token is not None
        value = headers.get("authorization", "")
        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # latin-1 is how ASGI hands header bytes over: compare the bytes as sent.
        return hmac.compare_digest(given.strip().encode("latin-1", "replace"), self.token)

    def _signed(self, scope: Scope) -> bool | None:
        """None: no link parameters; True: a valid signed link (DESIGN §7); False: a bad one."""
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if EXPIRES not in query and SIG not in query:
            return None
        expires, sig = query.get(EXPIRES, []), query.get(SIG, [])
        if self.signer is None or len(expires) != 1 or len(sig) != 1 or \
                not _SIGNABLE.match(scope["path"]):
            return False
        return self.signer.check(scope["method"], scope["path"], expires[0], sig[0], time.time())

    @staticmethod
    async def _preflight(send: Send, origin: str, allowed: bool) -> None:
        if not allowed:
            await deny(send, 403, "Cross-origin requests from this origin are not allowed.")
            return
        await send({"type": "http.response.start", "status": 204, "headers": [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", _ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", _ALLOW_HEADERS.encode()),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]})
        await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: str) -> Send:
    """Add the CORS answer headers for an allowed origin."""
    extra = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", _EXPOSE_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped

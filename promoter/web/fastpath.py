"""The lean path for file answers: GET and HEAD of a stored file without FastAPI's dispatch.

Serving a small artifact is the API's hottest request (the page's previews,
scripts fetching results; DESIGN §9 asks 1,500 a second). FastAPI's routing,
dependency solving and exception layers cost more CPU than everything the
answer itself needs (profile in bench/http_results.md), so this middleware,
inside the request observer and the access guard, matches the two file routes
with the routes' own regexes and calls the same functions the routes call.
Whatever it does not recognise exactly (another method or path, an unusual
query) goes on to FastAPI, which answers it the documented way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import parse_qsl

from fastapi import Request, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from promoter.errors import PromoterError
from promoter.web.errors import error_response, store_io_error

__all__ = ["FileHandler", "LeanFiles", "parse_flags"]

FileHandler = Callable[[Request, dict[str, str], bool, bool], Awaitable[Response]]
# What pydantic reads as a bool from a query string; anything else goes to FastAPI (422).
_TRUE: Final = frozenset({"1", "true", "t", "on", "yes", "y"})
_FALSE: Final = frozenset({"0", "false", "f", "off", "no", "n"})
_FLAGS: Final = ("view", "download")


def parse_flags(query: bytes) -> tuple[bool, bool] | None:
    """(view, download) from the query string, or None when FastAPI should judge it."""
    if not query:
        return False, False
    found: dict[str, bool] = {}
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key not in _FLAGS:
            continue  # FastAPI ignores parameters a route does not declare
        if key in found:
            return None
        lowered = value.lower()
        if lowered in _TRUE:
            found[key] = True
        elif lowered in _FALSE:
            found[key] = False
        else:
            return None
    return found.get("view", False), found.get("download", False)


class LeanFiles:
    """ASGI middleware: the file routes' GET and HEAD, dispatched directly."""

    def __init__(self, app: ASGIApp, routes: Sequence[tuple[Route, FileHandler]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            for route, handler in self.routes:
                match = route.path_regex.match(scope["path"])
                if match is None:
                    continue
                flags = parse_flags(scope["query_string"])
                if flags is None:
                    break
                scope["route"] = route  # the observer logs and counts the route's template
                params = {k: route.param_convertors[k].convert(v)
                          for k, v in match.groupdict().items()}
                try:
                    response = await handler(Request(scope, receive), params, *flags)
                except PromoterError as exc:
                    response = error_response(exc)
                except OSError as exc:
                    response = error_response(store_io_error(exc))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

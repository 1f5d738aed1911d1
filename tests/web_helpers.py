"""Helpers for the web tests: a populated store on tmp_path, an in-process client, log capture."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
from fastapi import FastAPI

from promoter.config import Config
from promoter.logs import configure_logging
from promoter.metadata import RunMetadata
from promoter.store import Outcome, Store
from promoter.web import create_app
from tests.store_helpers import FakeClock, make_config, make_store, write_session_file

__all__ = [
    "BASE",
    "CSRF",
    "FakeClock",
    "LogCapture",
    "WebClient",
    "client_for",
    "make_config",
    "make_store",
    "populate",
    "tree_snapshot",
    "write_session_file",
]

BASE = "http://localhost"
CSRF = {"X-Promoter-Request": "1"}


def populate(store: Store, root: Path, run_id: str, files: dict[str, bytes],
             age_s: float = 10.0) -> RunMetadata:
    """Write agent files into the run's session and promote them through the real store."""
    for name, data in files.items():
        write_session_file(root, run_id, name, data, age_s=age_s)
    results = store.promote_files(run_id, list(files))
    assert all(r.outcome is Outcome.PROMOTED for r in results), results
    return store.get_run(run_id)


class WebClient:
    """A synchronous in-process client: httpx over ASGITransport, one event loop a request.

    (Starlette's TestClient warns about httpx with this Starlette; and a loop per
    request leaves no thread behind.)
    """

    def __init__(self, app: FastAPI, base_url: str = BASE) -> None:
        self.app = app
        self.base_url = base_url
        self.transport = httpx.ASGITransport(app=app, client=("testclient", 50000))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport,
                                         base_url=self.base_url) as client:
                return await client.request(method, url, **kwargs)

        return anyio.run(call)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kwargs)


def client_for(store: Store, config: Config | None = None, **kwargs: Any) -> WebClient:
    """An in-process client on a fresh app over `store`, speaking as http://localhost.

    The run list is not reused between requests (list_ttl_s=0) unless asked: tests
    change the store behind the app's back and look at the next answer.
    """
    kwargs.setdefault("list_ttl_s", 0.0)
    return WebClient(create_app(config or store.config, store, **kwargs))


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` with its size and mtime: proof that nothing was touched."""
    found: dict[str, tuple[int, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


class LogCapture:
    """promoter's structlog output, as JSON objects, while the capture is active."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def __enter__(self) -> LogCapture:
        configure_logging("debug", "json", stream=self.stream)
        return self

    def __exit__(self, *exc: object) -> None:
        configure_logging("info", "json")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("event") == name]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.lines())

"""The run list and the library list as JSON bytes with an ETag (DESIGN §7, §8).

The page polls the run list every second with `If-None-Match`, so an unchanged
list must cost little: the store's parsed-metadata cache already keys each run
on its metadata.json's (inode, mtime, size), and here each parsed run keeps its
serialized JSON and a digest of it. A poll is then one `stat` per run plus a
hash over the digests of the runs that pass the filter; the ETag changes
exactly when the body does.

A rendered list is also kept for `ttl_s` (half a second): every page open on
the server polls once a second, and however many there are, the store is
stat'ed at most twice a second. Changes made through this server clear it at
once, and so does every change the event stream reports (a page that refreshes
on an event must not get the list from before it); without the stream, the
daemon's changes appear within the TTL plus the poll (DESIGN §8: 2 s).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol

from promoter.metadata import RunMetadata
from promoter.names import check_run_id
from promoter.render import matches_filter
from promoter.store import Store
from promoter.web.models import LibraryEntry, LibraryList

__all__ = ["Filter", "Listing", "RunLister", "RunSource", "library_listing"]

Filter = Literal["all", "current", "recent", "expiring"]
_PRUNE_EVERY: Final = 64
_MAX_RENDERED: Final = 64  # distinct (filter, run_id) queries kept


class RunSource(Protocol):
    """Where the runs are read: the Store over folders, `runcache.RunCache` over a bucket.

    Both hand back the same parsed object until the run's metadata changes."""

    def list_runs(self) -> list[RunMetadata]: ...

    def read_run(self, run_id: str) -> RunMetadata | None: ...

    def cached_run(self, run_id: str) -> RunMetadata | None: ...


class Listing:
    """A rendered list: its body and its (quoted, strong) ETag."""

    __slots__ = ("body", "etag")

    def __init__(self, body: bytes, etag: str) -> None:
        self.body = body
        self.etag = etag


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()


class RunLister:
    """Renders `GET /runtime/artifacts` from the store, reusing each run's JSON until it changes."""

    def __init__(self, store: Store, ttl_s: float = 0.5,
                 monotonic: Callable[[], float] = time.monotonic,
                 runs: RunSource | None = None) -> None:
        self.store = store
        self.runs: RunSource = runs if runs is not None else store
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        # run_id -> (the metadata object the store's cache returned, its item JSON, digest)
        self._items: dict[str, tuple[RunMetadata, bytes, bytes]] = {}
        self._rendered: dict[tuple[str, str | None], tuple[float, Listing]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def invalidate(self, runs: bool = True) -> None:
        """Forget rendered lists: a change was made through this server (`runs`: the
        bucket's run cache lists again too), or the event stream reported one."""
        with self._lock:
            self._rendered.clear()
        forget = getattr(self.runs, "invalidate", None) if runs else None
        if forget is not None:
            forget()

    def _item(self, meta: RunMetadata) -> tuple[bytes, bytes]:
        cached = self._items.get(meta.run_id)
        if cached is not None and cached[0] is meta:
            return cached[1], cached[2]
        item = b'{"run_id":' + json.dumps(meta.run_id).encode() + b',"metadata":' + \
            meta.model_dump_json().encode() + b"}"
        digest = hashlib.blake2b(item, digest_size=16).digest()
        with self._lock:
            self._items[meta.run_id] = (meta, item, digest)
        return item, digest

    def select(self, name: Filter, run_id: str | None) -> list[RunMetadata]:
        """The runs the filter keeps, newest first (`current`: DESIGN §7's two meanings)."""
        if name == "current" and run_id is not None:
            meta = self.runs.read_run(check_run_id(run_id))
            return [meta] if meta is not None else []
        runs = self.runs.list_runs()
        self._prune(runs)
        if name == "current":
            return [m for m in runs if m.status == "active"]
        now = self.store.clock.now()
        return [m for m in runs if matches_filter(m, name, now)]

    def render(self, name: Filter, run_id: str | None) -> Listing:
        """The body and ETag for one query, at most `ttl_s` old."""
        if run_id is not None:
            check_run_id(run_id)
        key = (name, run_id)
        now = self._monotonic()
        hit = self._rendered.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        listing = self._render(name, run_id)
        with self._lock:
            if len(self._rendered) >= _MAX_RENDERED:
                self._rendered.clear()
            self._rendered[key] = (now, listing)
        return listing

    def _render(self, name: Filter, run_id: str | None) -> Listing:
        runs = self.select(name, run_id)
        items = [self._item(m) for m in runs]
        body = b'{"artifacts":[' + b",".join(i for i, _ in items) + b"]}"
        etag = _digest(f"{name}\0{run_id or ''}".encode(), *(d for _, d in items))
        return Listing(body, f'"runs-{etag}"')

    def _prune(self, runs: Sequence[RunMetadata]) -> None:
        """Forget deleted runs now and then."""
        self._calls += 1
        if self._calls % _PRUNE_EVERY and len(self._items) <= len(runs):
            return
        live = {m.run_id for m in runs}
        with self._lock:
            for gone in [r for r in self._items if r not in live]:
                del self._items[gone]


def library_listing(store: Store) -> Listing:
    """`GET /runtime/library`: small enough to render each time; the ETag is its digest."""
    files = LibraryList(files=[LibraryEntry.of(f) for f in store.library.list()])
    body = files.model_dump_json().encode()
    return Listing(body, f'"lib-{_digest(body)}"')

"""`promoter serve` over a bucket (DESIGN §10): stored files, health and changes.

The run list is `runcache.RunCache`; this module reads the objects themselves.
A file answer is one HEAD (size, and the object's own sha256 from
`x-amz-meta-sha256`, which becomes the HTTP ETag: never S3's MD5 ETag), then
one ranged GET carrying `If-Match` on the ETag the HEAD saw, so the bytes sent
are always the bytes that digest describes. A file rewritten between the two
(the object is replaced before its entry, §10) fails the GET with 412; the
answer is then planned again from a new HEAD. Bytes pass through in chunks of
256 KiB, fetched in a worker thread: memory stays bounded whatever the size.

Keys are built by `s3layout` from names that passed section 1's checks, so no
request can address a key outside the layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Final

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from promoter.changes import RUN_DELETED, RUN_UPDATED, Change, Emit
from promoter.clock import format_time
from promoter.errors import NotFoundError
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.names import split_relpath
from promoter.objectstore import ObjectStore
from promoter.s3errors import PreconditionFailed, StoreUnavailable
from promoter.store import Store
from promoter.web.files import StoredBody, body_response, file_headers, plan_answer
from promoter.web.runcache import Refreshed, RunCache

__all__ = ["Bucket", "BucketChanges", "object_etag"]

_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_ATTEMPTS: Final = 3  # HEAD then GET If-Match, again when the object was replaced between
HEALTH_TTL_S: Final = 1.0
CHANGES_EVERY_S: Final = 1.0  # the event stream's listing of meta/, while a client listens


def object_etag(found: StoredBody, mtime_ns: int) -> str:
    """The quoted sha256 the object carries; for an object without one (not uploaded by
    promoter), a tag from its size and time, which change whenever the object does."""
    sha = (found.sha256 or "").lower()
    if _SHA256.fullmatch(sha):
        return f'"{sha}"'
    return f'"s3-{found.size:x}-{mtime_ns:x}"'


class Bucket:
    """What the server reads from the bucket: runs (cached), objects and health."""

    def __init__(self, store: Store, objects: ObjectStore, runs: RunCache,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.objects = objects
        self.runs = runs
        self._monotonic = monotonic
        self._health: tuple[float, str | None] = (float("-inf"), None)

    def entry(self, run_id: str, filename: str,
              meta: RunMetadata | None = None) -> ArtifactEntry:
        """The run's entry for `filename` (from the cached run list), or NotFoundError."""
        split_relpath(filename)
        if meta is None:
            meta = self.runs.read_run(run_id)
        if meta is not None and meta.entry(filename) is None:
            meta = self.runs.reread(run_id)
        entry = meta.entry(filename) if meta is not None else None
        if entry is None:
            raise NotFoundError(f"no artifact {filename} in run {run_id}")
        return entry

    def answer(self, request: Request, run_id: str, filename: str, view: bool,
               download: bool) -> Response:
        """A stored file's answer (in a worker thread): DESIGN §7's headers, its own sha256."""
        split_relpath(filename)  # a bad name is a 400 before any request to the bucket
        for attempt in range(_ATTEMPTS):
            meta = self.runs.read_run(run_id)
            if meta is not None and meta.entry(filename) is None:
                meta = self.runs.reread(run_id)  # promoted since the cache's listing?
            if meta is None:
                raise NotFoundError(f"no run {run_id}")
            found, entry = self.store.read_artifact(run_id, filename, meta)  # one HEAD
            plan = plan_answer(request, found.size, object_etag(found, found.mtime_ns),
                               file_headers(entry.filename, entry.content_type, view, download),
                               entry.content_type)
            try:
                return body_response(plan, found)
            except PreconditionFailed:  # replaced between HEAD and GET: look again
                if attempt == _ATTEMPTS - 1:
                    raise StoreUnavailable(f"{entry.filename} in run {run_id} is being "
                                           "rewritten; try again") from None
        raise AssertionError("unreachable")

    def library_answer(self, request: Request, name: str, view: bool,
                       download: bool) -> Response:
        """A library file's answer from its object, as for artifacts."""
        for attempt in range(_ATTEMPTS):
            found, item = self.store.library.read(name)
            etag = object_etag(found, found.mtime_ns)
            plan = plan_answer(request, found.size, etag.replace('"', '"lib-', 1),
                               file_headers(item.name, item.content_type, view, download),
                               item.content_type)
            try:
                return body_response(plan, found)
            except PreconditionFailed:
                if attempt == _ATTEMPTS - 1:
                    raise StoreUnavailable(f"library file {name} is being rewritten; "
                                           "try again") from None
        raise AssertionError("unreachable")

    def unhealthy(self) -> str | None:
        """Why the bucket cannot serve now, or None: one listing of `meta/` of one key,
        at most once a second however often a load balancer asks."""
        at, why = self._health
        now = self._monotonic()
        if now - at < HEALTH_TTL_S:
            return why
        try:
            for _ in self.objects.list_pages("meta/", page_size=1):
                break
            why = None
        except StoreUnavailable as exc:
            why = str(exc)
        except Exception as exc:  # refused credentials, a deleted bucket: not usable either
            why = f"the bucket is not usable: {type(exc).__name__}"
        self._health = (now, why)
        return why


class BucketChanges:
    """The event stream's source over a bucket (changes.ChangeSource): the run cache's
    refreshes, whoever triggers them, become `run.updated` and `run.deleted`; while a
    client listens, the cache is refreshed every `every_s` (one listing of `meta/`)."""

    def __init__(self, runs: RunCache, every_s: float = CHANGES_EVERY_S) -> None:
        self.runs = runs
        self.every_s = every_s

    async def run(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()

        def heard(report: Refreshed) -> None:
            if report.first:
                return  # the first fill: nothing a client missed
            changes = [Change(RUN_UPDATED, {"run_id": m.run_id,
                                            "updated_at": format_time(m.updated_at)})
                       for m in report.updated]
            changes += [Change(RUN_DELETED, {"run_id": r}) for r in report.deleted]
            for change in changes:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(emit, change)

        self.runs.listeners.append(heard)
        try:
            while True:
                with contextlib.suppress(StoreUnavailable):  # an outage: /healthz says so
                    await anyio.to_thread.run_sync(self.runs.fresh)
                await asyncio.sleep(self.every_s)
        finally:
            self.runs.listeners.remove(heard)


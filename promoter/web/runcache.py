"""The run list of `promoter serve` over a bucket, kept in memory (DESIGN §10).

One paginated listing of `<prefix>meta/` (1,000 keys a page, each with its
ETag) tells every run and which changed since the last look; only those are
read again (a GET each, a few in parallel when many changed, as at start).
Nothing else is listed to show the store. A refresh is at most `ttl_s` old
when a reader asks; one refresh runs at a time and readers that arrive while
it runs wait for it rather than listing again. Changes made through this
server call `invalidate`, so the next reader lists at once.

Parsed runs keep their identity until their ETag changes: the listing's
rendered JSON and the stats' per-run sums (listing.py, insights.py) are
reused by identity, as over folders.

A metadata object that is not a valid run (corrupt, too big, another run's)
is left out and not read again until its ETag changes; rebuilding it from its
objects is the daemon's job (§10), not a reader's. A run marked `"status":
"deleting"` is left out too: its deletion is under way (§10).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Protocol

from pydantic import ValidationError

from promoter import events
from promoter.errors import NotFoundError, PromoterError
from promoter.logs import get_logger
from promoter.metadata import RunMetadata
from promoter.names import check_run_id
from promoter.objectstore import ObjectInfo
from promoter.s3errors import ObjectRefused
from promoter.s3layout import meta_key, run_id_from_meta_key

__all__ = ["PAGE_SIZE", "MetaObjects", "Refreshed", "RunCache"]

log = get_logger()
PAGE_SIZE: Final = 1000
READERS: Final = 8  # GETs in flight when many runs changed (a cold start reads them all)


class MetaObjects(Protocol):
    """What the cache needs of the object layer (`ObjectStore` has it)."""

    @property
    def prefix(self) -> str: ...

    def list_pages(self, under: str = "", page_size: int = PAGE_SIZE
                   ) -> Iterable[list[ObjectInfo]]: ...

    def list_fast(self, under: str = "") -> Iterable[list[ObjectInfo]]: ...

    def get(self, key: str, max_bytes: int = ...) -> tuple[bytes, str]: ...


@dataclass(frozen=True)
class Refreshed:
    """What one refresh found changed: runs new or rewritten, and runs gone."""

    updated: list[RunMetadata] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    first: bool = False  # the cache's first fill: everything is "new", nothing changed


class RunCache:
    """Every run's metadata by run id, with the ETag it was read at."""

    def __init__(self, objects: MetaObjects, max_metadata_bytes: int, ttl_s: float = 0.5,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.objects = objects
        self.max_metadata_bytes = max_metadata_bytes
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        # run_id -> (ETag read at, the run or None when that version is not a valid run)
        self._runs: dict[str, tuple[str, RunMetadata | None]] = {}
        self._sorted: list[RunMetadata] | None = None
        self._at = float("-inf")  # when the last refresh started
        self._filled = False
        self._must_wait = False  # the next reader waits for a listing (invalidated, failed)
        self._generation = 0  # invalidations so far
        self._lock = threading.Lock()  # guards the dicts
        self._refreshing = threading.Lock()  # one refresh at a time
        self.listeners: list[Callable[[Refreshed], None]] = []
        self.lists = 0  # listings made (tests and the bench count them)
        self.reads = 0  # metadata objects read

    # -- readers -------------------------------------------------------------------------

    def list_runs(self) -> list[RunMetadata]:
        """Every run, newest first (as `Store.list_runs`), at most `ttl_s` old."""
        self.fresh()
        with self._lock:
            if self._sorted is None:
                runs = [m for _, m in self._runs.values() if m is not None]
                runs.sort(key=lambda m: (m.created_at, m.run_id), reverse=True)
                self._sorted = runs
            return self._sorted

    def read_run(self, run_id: str) -> RunMetadata | None:
        """One run, at most `ttl_s` old; None when the bucket has no such run. A run the
        cache does not know is looked for at once (one GET): a client that just made it, or
        heard of it from another host, must not get a 404 for the cache's age."""
        check_run_id(run_id)
        self.fresh()
        with self._lock:
            hit = self._runs.get(run_id)
        if hit is None:
            return self.reread(run_id)
        return hit[1]

    def reread(self, run_id: str) -> RunMetadata | None:
        """Read one run's metadata now (a file the cached copy does not list yet, a run not
        yet listed) and keep what was read; None when there is no such run."""
        got = self._read(check_run_id(run_id), "")
        with self._lock:
            if got is None:
                self._runs.pop(run_id, None)
            else:
                self._runs[run_id] = got
            self._sorted = None
        return got[1] if got is not None else None

    def cached_run(self, run_id: str) -> RunMetadata | None:
        """The run when the cache is fresh, with no I/O at all; None otherwise."""
        if self._monotonic() - self._at >= self.ttl_s:
            return None
        with self._lock:
            hit = self._runs.get(run_id)
        return hit[1] if hit is not None else None

    def invalidate(self) -> None:
        """A change was made through this server: the next reader waits for a listing
        (and one under way, which may have listed before the change, does not count)."""
        with self._lock:
            self._generation += 1
            self._must_wait = True
            self._at = float("-inf")

    # -- refreshing ----------------------------------------------------------------------

    def fresh(self) -> None:
        """Make the cache at most `ttl_s` old, for a reader.

        Cold, invalidated (a change through this server) or after a failed refresh, the
        reader waits for a listing. Merely old, it is served what the cache holds while
        one refresh runs in the background: a listing of 1,000 keys takes a tenth of a
        second or more, and no reader should pay it twice a second (DESIGN §9: p50 under
        50 ms). Either way one refresh runs at a time. `ttl_s` 0: every reader lists.
        """
        if self._monotonic() - self._at < self.ttl_s:
            return
        if self._filled and not self._must_wait and self.ttl_s > 0:
            if self._refreshing.acquire(blocking=False):
                threading.Thread(target=self._background, name="promoter-meta-refresh",
                                 daemon=True).start()
            return
        with self._refreshing:
            if self._monotonic() - self._at < self.ttl_s:
                return  # another reader refreshed while this one waited
            self._refresh()

    def _background(self) -> None:
        """One refresh, holding the lock `fresh` took; a failure makes the next reader wait
        for its own listing, which then raises (503) if the bucket is still unreachable."""
        try:
            self._refresh()
        except Exception:  # noqa: S110 (an outage: the next reader's own listing answers 503)
            pass
        finally:
            self._refreshing.release()

    def refresh(self) -> Refreshed:
        """List `meta/` now and read the runs whose ETag changed."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> Refreshed:
        try:
            return self._refresh_once()
        except BaseException:
            self._must_wait = True
            raise

    def _refresh_once(self) -> Refreshed:
        started = self._monotonic()
        with self._lock:
            generation = self._generation
        listed = self._list()
        with self._lock:
            known = dict(self._runs)
        changed = [(run_id, etag) for run_id, etag in listed.items()
                   if run_id not in known or known[run_id][0] != etag]
        read = self._read_all(changed)
        dropped = [run_id for run_id in known if run_id not in listed]
        gone = [run_id for run_id in dropped if known[run_id][1] is not None]
        updated: list[RunMetadata] = []
        with self._lock:
            for run_id in dropped:
                del self._runs[run_id]
            for run_id, got in read.items():
                old = known.get(run_id)
                shown = old is not None and old[1] is not None  # clients have seen it
                if got is None:  # deleted between the listing and the read
                    self._runs.pop(run_id, None)
                else:
                    self._runs[run_id] = got
                if got is not None and got[1] is not None:
                    updated.append(got[1])
                elif shown:  # gone, or now invalid or being deleted: no longer listed
                    gone.append(run_id)
            if dropped or read:
                self._sorted = None
            if self._generation == generation:  # else invalidated meanwhile: still stale
                self._at = started
                self._must_wait = False
        report = Refreshed(updated=updated, deleted=gone, first=not self._filled)
        self._filled = True
        if updated or gone or report.first:
            for listener in list(self.listeners):
                listener(report)
        return report

    def _list(self) -> dict[str, str]:
        """run id -> ETag, from one paginated listing of `meta/` (obstore's, five times
        cheaper; boto3's when obstore cannot list some key, or failed: an outage then
        fails both, and raises)."""
        self.lists += 1
        try:
            return self._listed(self.objects.list_fast("meta/"))
        except PromoterError:
            return self._listed(self.objects.list_pages("meta/", PAGE_SIZE))

    def _listed(self, pages: Iterable[list[ObjectInfo]]) -> dict[str, str]:
        prefix = self.objects.prefix
        listed: dict[str, str] = {}
        for page in pages:
            for info in page:
                run_id = run_id_from_meta_key(prefix, info.key)
                if run_id is not None:
                    listed[run_id] = info.etag
        return listed

    def _read_all(self, changed: list[tuple[str, str]]
                  ) -> dict[str, tuple[str, RunMetadata | None] | None]:
        if len(changed) <= 1:
            return {run_id: self._read(run_id, etag) for run_id, etag in changed}
        with ThreadPoolExecutor(max_workers=min(READERS, len(changed)),
                                thread_name_prefix="promoter-meta") as pool:
            results = pool.map(lambda item: self._read(*item), changed)
            return {run_id: got for (run_id, _), got in zip(changed, results, strict=True)}

    def _read(self, run_id: str, listed: str) -> tuple[str, RunMetadata | None] | None:
        """(ETag, run) of one metadata object; None when it is gone; run None when invalid."""
        key = meta_key(self.objects.prefix, run_id)
        self.reads += 1
        try:
            raw, etag = self.objects.get(key, self.max_metadata_bytes)
        except NotFoundError:
            return None
        except ObjectRefused:  # over the size limit; an outage raises: the cache keeps its runs
            log.warning(events.METADATA_UNREADABLE, run_id=run_id,
                        reason=f"over {self.max_metadata_bytes} bytes")
            return listed, None  # read again when its ETag changes
        try:
            meta = RunMetadata.model_validate_json(raw)
        except ValidationError:
            meta = None
        if meta is None or meta.run_id != run_id:
            log.warning(events.METADATA_UNREADABLE, run_id=run_id,
                        reason="not a valid metadata object for this run")
            return etag, None
        if meta.status == "deleting":  # a deletion under way (§10): the run is gone already
            return etag, None
        return etag, meta

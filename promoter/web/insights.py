"""`GET /runtime/stats`: the store's figures for the page's Insights view (DESIGN §7).

Computed by `promoter.stats` (the same function as `promoter stats`) from the
run list the listing already keeps (`RunLister.select`: one `stat` per run and
the store's parsed-metadata cache), with each run's sums kept until its
metadata changes: a warm call merges a few sums a run and reads no
metadata.json that has not changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from promoter.errors import UsageError
from promoter.metadata import RunMetadata
from promoter.stats import (
    DEFAULT_SINCE,
    RunTally,
    StoreStats,
    in_window,
    parse_duration,
    summarize,
    tally_run,
    with_expiry,
)
from promoter.web.errors import detail_response, sentence
from promoter.web.models import ErrorDetail
from promoter.web.routes import web_state

__all__ = ["StatsCache", "router"]

router = APIRouter(prefix="/runtime")
_CACHE_LOCK: Final = threading.Lock()
_MAX_ANSWERS: Final = 32  # distinct `since` values kept

_SINCE_PATTERN: Final = r"^\s*[0-9]{1,9}[smhdw]\s*$"
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {422: {"model": ErrorDetail}}

Since = Annotated[str, Query(
    max_length=16, pattern=_SINCE_PATTERN,
    description="Runs created within this long before now count: a whole number and a unit "
                "s, m, h, d or w (e.g. 30d, 12h); longer than a century reads as a century.")]


class StatsCache:
    """Each run's sums while its metadata is unchanged, and each answer for a short while.

    The store re-parses a metadata.json only when its (inode, mtime, size) change,
    and then hands back a new object: identity is the version check, as in
    RunLister. An answer is also reused for the listing's TTL (half a second), as
    the run list is: a change appears within it.
    """

    def __init__(self, ttl_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[RunMetadata, RunTally]] = {}
        self._chosen: list[RunMetadata] = []
        self._base: StoreStats | None = None
        self._answers: dict[str, tuple[float, bytes]] = {}

    def compute(self, runs: Sequence[RunMetadata], now: datetime,
                window: timedelta) -> StoreStats:
        """The figures, tallying again only the runs whose metadata changed.

        When the runs in the window are the very objects of the last call (an
        idle store, a page polling), only the expiring bytes are worked out again.
        """
        with self._lock:
            old, last_chosen, last_base = self._seen, self._chosen, self._base
        fresh: dict[str, tuple[RunMetadata, RunTally]] = {}

        def tally(meta: RunMetadata) -> RunTally:
            hit = fresh.get(meta.run_id) or old.get(meta.run_id)
            result = hit[1] if hit is not None and hit[0] is meta else tally_run(meta)
            fresh[meta.run_id] = (meta, result)
            return result

        chosen = in_window(runs, now, window)
        same = last_base is not None and len(chosen) == len(last_chosen) and \
            all(a is b for a, b in zip(chosen, last_chosen, strict=True))
        base = last_base if same and last_base is not None else summarize(chosen, tally)
        stats = with_expiry(base, chosen, now, tally)
        for meta in runs:  # outside this window but unchanged: kept for the next one
            hit = old.get(meta.run_id)
            if hit is not None and meta.run_id not in fresh and hit[0] is meta:
                fresh[meta.run_id] = hit
        with self._lock:  # deleted runs are forgotten
            self._seen, self._chosen, self._base = fresh, chosen, base
        return stats

    def answer(self, since: str, build: Callable[[], bytes]) -> bytes:
        """The body for `since`, at most `ttl_s` old."""
        now = self._monotonic()
        with self._lock:
            hit = self._answers.get(since)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        body = build()
        with self._lock:
            if len(self._answers) >= _MAX_ANSWERS:
                self._answers.clear()
            self._answers[since] = (now, body)
        return body


def _cache(request: Request) -> StatsCache:
    state = request.app.state
    with _CACHE_LOCK:
        cache: StatsCache | None = getattr(state, "stats_cache", None)
        if cache is None:
            cache = state.stats_cache = StatsCache(web_state(request).lister.ttl_s)
    return cache


def _stats_json(request: Request, since: str) -> bytes:
    web = web_state(request)
    window = parse_duration(since)
    cache = _cache(request)

    def build() -> bytes:
        runs = web.lister.select("all", None)
        return cache.compute(runs, web.store.clock.now(), window).model_dump_json().encode()

    return cache.answer(since.strip(), build)


@router.get("/stats", response_model=StoreStats, responses=_ERRORS,
            summary="What the store holds, by agent, type, workflow and day")
async def store_stats(request: Request, since: Since = DEFAULT_SINCE) -> Response:
    """Totals, breakdowns (top 20, then "other"), bytes per day, largest runs, refusals."""
    try:
        body = await anyio.to_thread.run_sync(_stats_json, request, since)
    except UsageError as exc:  # matches the pattern, but zero ("0d")
        return detail_response(422, sentence(str(exc)))
    return Response(body, media_type="application/json", headers={"cache-control": "no-cache"})

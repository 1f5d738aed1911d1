"""`GET /runtime/stats`: the store's figures for the page's Insights view (DESIGN §7).

Computed by `promoter.stats` (the same function as `promoter stats`) from the
run list the listing already keeps (`RunLister.select`: one `stat` per run and
the store's parsed-metadata cache), so a warm call costs one pass over the
entries, never a read of a metadata.json that has not changed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
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
    compute_stats,
    parse_duration,
    tally_run,
)
from promoter.web.errors import detail_response, sentence
from promoter.web.models import ErrorDetail
from promoter.web.routes import web_state

__all__ = ["TallyMemo", "router"]

router = APIRouter(prefix="/runtime")
_MEMO_LOCK: Final = threading.Lock()

_SINCE_PATTERN: Final = r"^\s*[0-9]{1,9}[smhdw]\s*$"
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {422: {"model": ErrorDetail}}

Since = Annotated[str, Query(
    max_length=16, pattern=_SINCE_PATTERN,
    description="Runs created within this long before now count: a whole number and a unit "
                "s, m, h, d or w (e.g. 30d, 12h); longer than a century reads as a century.")]


class TallyMemo:
    """Each run's sums, kept while the store's cache hands back the same metadata object.

    The store re-parses a metadata.json only when its (inode, mtime, size) change,
    and then returns a new object: identity is the version check, as in RunLister.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[RunMetadata, RunTally]] = {}

    def compute(self, runs: Sequence[RunMetadata], now: datetime,
                window: timedelta) -> StoreStats:
        with self._lock:
            old = self._seen
        fresh: dict[str, tuple[RunMetadata, RunTally]] = {}

        def tally(meta: RunMetadata) -> RunTally:
            hit = old.get(meta.run_id)
            result = hit[1] if hit is not None and hit[0] is meta else tally_run(meta)
            fresh[meta.run_id] = (meta, result)
            return result

        stats = compute_stats(runs, now, window, tally)
        with self._lock:  # runs outside this window, or deleted, are forgotten
            self._seen = fresh
        return stats


def _memo(request: Request) -> TallyMemo:
    state = request.app.state
    with _MEMO_LOCK:
        memo: TallyMemo | None = getattr(state, "stats_memo", None)
        if memo is None:
            memo = state.stats_memo = TallyMemo()
    return memo


def _stats_json(request: Request, since: str) -> bytes:
    web = web_state(request)
    window = parse_duration(since)
    runs = web.lister.select("all", None)
    stats = _memo(request).compute(runs, web.store.clock.now(), window)
    return stats.model_dump_json().encode()


@router.get("/stats", response_model=StoreStats, responses=_ERRORS,
            summary="What the store holds, by agent, type, workflow and day")
async def store_stats(request: Request, since: Since = DEFAULT_SINCE) -> Response:
    """Totals, breakdowns (top 20, then "other"), bytes per day, largest runs, refusals."""
    try:
        body = await anyio.to_thread.run_sync(_stats_json, request, since)
    except UsageError as exc:  # matches the pattern, but zero ("0d")
        return detail_response(422, sentence(str(exc)))
    return Response(body, media_type="application/json", headers={"cache-control": "no-cache"})

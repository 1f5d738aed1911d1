"""Stopping within a few seconds (DESIGN §5): what the pipeline does once SIGTERM came.

Two jobs, both for `promoter.pipeline`: the two looks at pending files whose close was
never seen (promoted if steady, else deferred), and a worker's batch cut into chunks: at
most `MAX_BATCH_BYTES` each always (a batch stages its copies as temps before any rename),
and once stopping at most `STOP_CHUNK` files and `STOP_BYTES` each, none started after the
stop budget: a SIGTERM waits at most for the chunks begun (probe-cpu F4).
Files left are logged `artifact.deferred`; the next start's catch-up finds them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from promoter import events
from promoter.errors import QUIET, descriptor_episodes, host_limit, plain_reason
from promoter.layout import session_file
from promoter.logs import get_logger
from promoter.rules import MAX_BATCH, byte_chunks
from promoter.safeio import Refused
from promoter.settle import Batch, FileState, Settler
from promoter.store import PromoteResult, Store

__all__ = ["STEADY_LOOK_S", "STOP_BUDGET_S", "STOP_BYTES", "STOP_CHUNK", "one_by_one",
           "promote_chunks", "sizes", "steady_files", "worker_error"]

log = get_logger()
STEADY_LOOK_S = 0.05  # at shutdown, a file without a close is looked at twice this far apart
STOP_BUDGET_S = 1.5  # after SIGTERM, no new chunk of files starts once this is spent
STOP_CHUNK = 256  # files in one chunk while stopping: the budget is looked at between chunks
STOP_BYTES = 16 << 20  # and bytes (a file bigger goes alone: a copy begun is finished)

Stat = Callable[[str, str], FileState | None]
Measure = Callable[[str, Sequence[str]], list[tuple[str, int]]]


def steady_files(s: Settler, stat: Stat) -> set[tuple[str, str]]:
    """Shutdown: of the pending files whose close was never seen, those not known to be
    open that two looks STEADY_LOOK_S apart saw the same (DESIGN §5). The others are
    left for the next start's catch-up, logged `artifact.deferred`."""
    unsure: list[tuple[str, str]] = []
    for run_id, name, open_seen in s.unclosed():
        if open_seen:  # written to, and inotify reported no close: still open
            log.info(events.ARTIFACT_DEFERRED, run_id=run_id, filename=name,
                     reason="still open at shutdown: the next start catches up")
        else:
            unsure.append((run_id, name))
    if not unsure:
        return set()
    first = {key: stat(*key) for key in unsure}
    threading.Event().wait(STEADY_LOOK_S)  # one pause at shutdown, not a polling loop
    steady: set[tuple[str, str]] = set()
    for key, seen in first.items():
        now = stat(*key)
        if seen is not None and now == seen:
            steady.add(key)
        elif now is not None:  # one gone meanwhile is nothing to defer
            log.info(events.ARTIFACT_DEFERRED, run_id=key[0], filename=key[1],
                     reason="still being written at shutdown: the next start catches up")
    return steady


def sizes(sessions: str | os.PathLike[str], run_id: str, names: Sequence[str]
          ) -> list[tuple[str, int]]:
    """(name, size) of a batch's files, 0 for one gone: an lstat each by its path, made once
    (a `FileState` and the path's making a file were a twentieth of a worker's time)."""
    prefix = session_file(sessions, run_id, "")
    lstat = os.lstat
    out: list[tuple[str, int]] = []
    for name in names:
        try:
            out.append((name, lstat(prefix + name).st_size))
        except (OSError, ValueError):
            out.append((name, 0))
    return out


def promote_chunks(store: Store, batch: Batch, stop_by: Callable[[], float | None],
                   step: Callable[[int, int], None] = lambda files, nbytes: None,
                   measure: Measure | None = None) -> tuple[list[PromoteResult], list[str]]:
    """Promote `batch` chunk by chunk; returns the results and the files deferred because
    `stop_by()` (the stop budget's end, None while running) passed before their chunk.
    `step(files, bytes)` is told as each chunk starts: the worker's progress (stall check).
    `measure(run_id, names)`: the files' sizes the cuts go by (`sizes` by default)."""
    sized = (measure or partial(sizes, store.sessions_path))(batch.run_id, batch.filenames)
    sizes_by_name = dict(sized)
    results: list[PromoteResult] = []
    todo = byte_chunks(sized, None, MAX_BATCH)[::-1]  # within rules.MAX_BATCH_BYTES
    while todo:
        chunk = todo.pop()
        end = stop_by()
        if end is not None and time.monotonic() >= end:
            left = chunk + [n for c in reversed(todo) for n in c]
            log.info(events.ARTIFACT_DEFERRED, run_id=batch.run_id, filename=left[0],
                     files=len(left), reason="settled but not promoted within the stop "
                     "budget: the next start catches up")
            return results, left
        if end is not None and len(chunk) > 1:  # stopping: smaller chunks, budget between
            chunk, *rest = byte_chunks([(n, sizes_by_name[n]) for n in chunk], STOP_BYTES,
                                        STOP_CHUNK)
            todo += rest[::-1]
        step(len(chunk), sum(sizes_by_name[n] for n in chunk))
        results += store.promote_files(batch.run_id, chunk)
    return results, []


def one_by_one(store: Store, batch: Batch, step: Callable[[int, int], None],
               stat: Stat
               ) -> tuple[list[PromoteResult], set[str]]:
    """After a batch raised: its files each in a batch of its own; and the names that raised.
    Each file's step carries its size, so a big file alone is not read as a stuck worker."""
    results: list[PromoteResult] = []
    raised: set[str] = set()
    for name in batch.filenames:
        state = stat(batch.run_id, name)
        step(1, state.size if state is not None else 0)
        try:
            results += store.promote_files(batch.run_id, [name])
        except Exception as exc:
            raised.add(name)
            worker_error(batch.run_id, exc, filename=name)
    return results, raised


def worker_error(run_id: str, exc: Exception, **fields: object) -> None:
    """A batch raised: one line; a host limit (out of descriptors...) said plainly, without
    the traceback a bug gets (r7 probe F6). A store path refused (the run's folder in
    artifacts/ made a file or a link) is no bug either: said once a minute a run, plainly,
    while its files are retried (a batch probe counted ~100 tracebacks a second)."""
    reason, name = plain_reason(exc), fields.get("filename")  # out of descriptors: once
    level = descriptor_episodes.failed(run_id, name if isinstance(name, str) else None, reason)
    refused = isinstance(exc, Refused)
    if refused and not _refusal_told(run_id, reason):
        level = "debug"
    getattr(log, level)(events.WORKER_ERROR, run_id=run_id, reason=reason, **fields,
                        exc_info=host_limit(exc) is None and not refused,
                        **QUIET if level == "warning" else {})


_told: dict[tuple[str, str], float] = {}  # a store refusal said: when (run, reason)
_told_lock = threading.Lock()
REFUSAL_EVERY_S = 60.0


def _refusal_told(run_id: str, reason: str) -> bool:
    """Whether to say this refusal now: not said for this run in the last minute."""
    now = time.monotonic()
    with _told_lock:
        if now - _told.get((run_id, reason), -REFUSAL_EVERY_S) < REFUSAL_EVERY_S:
            return False
        if len(_told) >= 10_000:
            _told.clear()
        _told[(run_id, reason)] = now
        return True

"""Catch-up: find every finished session file the store lacks or holds stale (DESIGN §3, §5).

Size and times decide, never content: a file already promoted is not read
again, so a start-up pass over 100,000 promoted files costs one `stat` each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from promoter import events, rules, stopcopy
from promoter.clock import last_change_ns, micros
from promoter.errors import PromoterError, StoreIOError, host_limit, plain_reason
from promoter.logs import get_logger
from promoter.parsedruns import RunView
from promoter.promotion import RETRY, Outcome, PromoteResult
from promoter.safeio import folder
from promoter.scan import (
    Listing,
    Rejections,
    SessionFile,
    quiet,
    refusal_log,
    scan_run,
    session_runs,
    too_deep,
)
from promoter.store import Store
from promoter.walk import exclusion, gc_paused, known_changes, known_copies

__all__ = [
    "Listing",
    "ReconcileReport",
    "Rejections",
    "SessionFile",
    "exclusion",
    "find_pending",
    "note_walk_refusals",
    "quiet",
    "reconcile",
    "scan_run",
    "session_runs",
    "too_deep",
]

log = get_logger()


def find_pending(store: Store, rejections: Rejections, runs: Iterable[str] | None = None,
                 listing: Listing | None = None, stop: threading.Event | None = None
                 ) -> dict[str, list[SessionFile]]:
    """Session files to promote, by run. `listing`: the start-up's scan made by a second
    process (`promoter.prescan`) once the watches were set; a run it lacks is scanned here.
    `stop`: looked at between runs (a SIGTERM waited for a scan of every run, r6 probe)."""
    pending: dict[str, list[SessionFile]] = {}
    exclude = store.config.watch.exclude
    if listing is not None:
        listing.replay(refusal_log(rejections))
    with folder(store.sessions_path) as sessions:
        run_ids = list(runs) if runs is not None else session_runs(sessions, rejections)
        for run_id in run_ids:
            if stop is not None and stop.is_set():
                break
            try:
                # a run the bounded cache let go is compared from its view, parsed only
                # when some file needs a verdict (parsedruns.py, DESIGN §9)
                look = store.look(run_id)
                meta = look if not isinstance(look, RunView) else None
                known = look.known_copies() if isinstance(look, RunView) else known_copies(meta)
                # a file changed (ctime) since its copy read it is judged again (times put
                # back); an entry older than its `source_changed_at`: since the run's last write
                seen = look.known_changes() if isinstance(look, RunView) else known_changes(meta)
                written = micros(look.updated_at) if look is not None else None
                found = [] if listing is not None and listing.unchanged(
                    run_id, known, written, seen) else list(scan_run(
                        sessions, run_id, exclude, rejections, store.config.watch.max_depth,
                        known, written, seen))
                # one lookup a file, not a walk of the run; none when every file is known,
                # nor a read of its tombstone (1,000 failed opens at a warm start)
                if found and isinstance(look, RunView):
                    meta = store.read_run(run_id)
                entries = rules.by_filename(meta) if found else {}
                tomb = store.read_tombstone(run_id) if found else None
                todo = [f for f in found
                        if rules.needs_promotion(meta, tomb, f.filename, f.size, f.mtime_ns,
                                                 f.ctime_ns or f.mtime_ns, entries)
                        and not rejections.known(f)]
            except StoreIOError:
                raise  # the store itself: every run is concerned
            except Exception as exc:  # one run's surprise never stops the others' (DESIGN §6)
                if host_limit(exc) is not None:
                    raise  # the host's (descriptors, memory): every run is concerned
                _failed(run_id, exc)
                continue
            if todo:
                pending[run_id] = todo
    note_walk_refusals(store, rejections, hold=pending.keys())
    return pending


def note_walk_refusals(store: Store, rejections: Rejections,
                       hold: Collection[str] = ()) -> None:
    """The walk's refusals of the pass (a folder too deep, `output/` a link) in their runs'
    `rejected` lists, as a refused file's are (DESIGN §2; r7 probe F4). One that cannot be
    written now is kept for the next pass; so are those of the runs in `hold`, whose files
    are about to be promoted: a write now would move the run's `updated_at` past a file
    changed under an old time before it is judged (`rules.verdict`)."""
    for run_id, refusals in rejections.take_walk().items():
        if run_id in hold:
            for filename, reason in refusals:
                rejections.walk_refused(run_id, filename, reason)
            continue
        try:
            store.note_refusals(run_id, refusals)
        except Exception as exc:  # the store's trouble: noted at the next pass
            for filename, reason in refusals:
                rejections.walk_refused(run_id, filename, reason)
            if isinstance(exc, StoreIOError) or host_limit(exc) is not None:
                raise
            _failed(run_id, exc)


def _session_is_ours(store: Store, host: str | None) -> bool:
    """Whether this host can tell that the run's session folder is gone: on a bucket only
    the run's own host can (DESIGN §10: each host keeps its own sessions/); another host's
    live run must not be completed (and so left to the budget sweep) by every other host."""
    return store.config.storage.backend != "s3" or not host or host == store.host


def complete_finished_runs(store: Store) -> None:
    """Runs whose session folder is gone are completed; run.json changes are folded in."""
    for run_id in store.run_ids():
        try:
            meta = store.look(run_id)  # status and host: a view does (no parse)
            if meta is None or meta.status == "completed":
                continue
            if not store.session_exists(run_id):
                if _session_is_ours(store, meta.host):
                    store.mark_completed(run_id)
            else:
                store.refresh_context(run_id)
        except StoreIOError:
            raise
        except Exception as exc:  # one run's surprise never stops the others' (DESIGN §6)
            _failed(run_id, exc)


@dataclass
class ReconcileReport:
    """Final outcome counts of one catch-up pass."""

    outcomes: dict[tuple[str, str], PromoteResult] = field(default_factory=dict, repr=False)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.outcomes.values() if r.outcome is outcome)

    def left(self) -> list[PromoteResult]:
        """The files whose last try failed or met a change: the daemon's pipeline takes
        them over, with its backoff that never gives up (DESIGN §5)."""
        return [r for r in self.outcomes.values() if r.outcome in RETRY]

    def summary(self) -> dict[str, int]:
        counts = {o.value: self.count(o) for o in Outcome}
        counts["runs"] = len({run for run, _ in self.outcomes})
        return counts


RETRY_ROUNDS = 6  # rounds with only failures left: 50 ms .. 1.6 s apart (~3 s in all)


def reconcile(store: Store, rejections: Rejections | None = None,
              stop: threading.Event | None = None, max_rounds: int = 50,
              runs: Iterable[str] | None = None,
              progress: Callable[[int, int, int], None] | None = None,
              listing: Listing | None = None) -> ReconcileReport:
    """Promote every finished file the store lacks; a file still being written is waited
    for until it has been quiet for `settle_ms` (DESIGN §3). Files that changed during
    their copy or met an I/O error are tried again, a bounded number of rounds.
    `listing`: the first round's scan, made already (`find_pending`)."""
    with gc_paused():
        return _reconcile(store, rejections or Rejections(), stop or threading.Event(),
                          max_rounds, runs, progress, listing)


def _wait(stop: threading.Event, seconds: float, tick: Callable[[], None] | None) -> bool:
    """Wait `seconds` for files to settle, calling `tick` each second (a progress line
    shows a long wait, not only its end); True if `stop` was set."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop.wait(min(left, 1.0)):
            return True
        if tick is not None:
            tick()
    return stop.is_set()


def _reconcile(store: Store, rejections: Rejections, stop: threading.Event, max_rounds: int,
               runs: Iterable[str] | None, progress: Callable[[int, int, int], None] | None,
               listing: Listing | None) -> ReconcileReport:
    settle_ns = store.config.watch.settle_ms * 1_000_000
    report = ReconcileReport()
    run_filter = list(runs) if runs is not None else None
    found: set[tuple[str, str]] = set()
    done_bytes = 0
    retries = 0
    for _ in range(max_rounds):
        pending = find_pending(store, rejections, run_filter, listing, stop)
        listing = None  # the later rounds look again
        found.update((run_id, f.filename) for run_id, files in pending.items() for f in files)
        now_ns = int(store.clock.now().timestamp() * 1e9)
        wait_ns = 0
        retry = progressed = False
        ready_runs: dict[str, dict[str, SessionFile]] = {}
        for run_id, files in pending.items():
            # one pass: `f not in ready` scanned the list per file, and a run of 20,000
            # pending files took 9 minutes to catch up (probe-15)
            ready: dict[str, SessionFile] = {}
            for f in files:
                if quiet(f, now_ns, settle_ns):
                    ready[f.filename] = f
                else:
                    wait_ns = max(wait_ns, min(settle_ns - (now_ns - last_change_ns(
                        f.mtime_ns, f.ctime_ns, now_ns)), settle_ns))
            if ready:
                ready_runs[run_id] = ready
        for run_id, results in _promote_runs(store, ready_runs, stop):
            by_name = ready_runs[run_id]
            for r in results:
                report.outcomes[(run_id, r.filename)] = r
                retry = retry or r.outcome in RETRY
                progressed = progressed or r.outcome not in RETRY
                if r.outcome is Outcome.REJECTED:
                    rejections.add(by_name[r.filename])
                elif r.outcome is Outcome.PROMOTED and r.entry is not None:
                    done_bytes += r.entry.size_bytes
            if progress is not None:  # files done of files found, bytes (DESIGN §3)
                progress(len(report.outcomes), len(found), done_bytes)
        if stop.is_set() or not pending or (wait_ns <= 0 and not retry):
            break
        if progressed:  # files went through (e.g. descriptors short): the rest soon after
            retries = 0
        elif wait_ns <= 0:  # only failures, and none went through: twice the last wait
            retries += 1
            if retries > RETRY_ROUNDS:
                break  # left to the next pass (the daemon's rescan, or a later reconcile)
            wait_ns = 50_000_000 << (retries - 1)
        if _wait(stop, max(wait_ns / 1e9, 0.05), None if progress is None else partial(
                progress, len(report.outcomes), len(found), done_bytes)):
            break
    note_walk_refusals(store, rejections)  # those held while their runs' files went in
    complete_finished_runs(store)
    return report


def _promote_run(store: Store, run_id: str, files: dict[str, SessionFile],
                 stop: threading.Event) -> list[PromoteResult]:
    """One run's files in batches as large as the daemon's (pipeline.batch_limit, growing with
    the run), the stop looked at between them: the whole run in one batch could not be
    stopped (a SIGTERM waited 23 s for 6,000 files) and a kill lost every copy (probe-15);
    and within rules.MAX_BATCH_BYTES, so a batch never stages gigabytes of temps."""
    names = list(files)
    results: list[PromoteResult] = []
    start = 0
    while start < len(names) and not stop.is_set():
        meta = store.cached_run(run_id)
        chunk = names[start:start + rules.batch_limit(len(meta.artifacts) if meta else 0)]
        chunk = rules.byte_chunks([(n, files[n].size) for n in chunk])[0]
        start += len(chunk)
        results += store.promote_files(run_id, chunk)
    if start < len(names):  # the stop came first: said once a run (probe r10-stop2 N3)
        log.info(events.ARTIFACT_DEFERRED, run_id=run_id, filename=names[start],
                 files=len(names) - start,
                 reason="not reached before the stop: the next start catches up")
    return results


def _promote_runs(store: Store, runs: dict[str, dict[str, SessionFile]],
                  stop: threading.Event) -> Iterator[tuple[str, list[PromoteResult]]]:
    """Each run's ready files promoted, yielded in the order given. Runs go in parallel on
    `promote.workers` threads, as the daemon's workers take them: each run is a metadata
    change of its own, and on an object store every upload waits on the network, so one
    run at a time left the store idle between requests (issue 12). A run whose promotion
    raised is logged and its files count as failed (tried again); a failure of the store
    itself (StoreIOError) ends the pass: runs not started are cancelled, those in flight
    finish first."""
    workers = min(store.config.promote.workers, len(runs))
    if workers <= 1:
        for run_id, names in runs.items():
            try:
                results = _promote_run(store, run_id, names, stop)
            except StoreIOError:
                raise
            except Exception as exc:  # one run's surprise never stops the others' (DESIGN §6)
                yield run_id, _failed(run_id, exc, names)
                continue
            yield run_id, results
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="promoter-catchup-copy")
    try:
        jobs = [(run_id, pool.submit(stopcopy.carried(_promote_run), store, run_id, names, stop))
                for run_id, names in runs.items()]
        failure: StoreIOError | None = None
        for run_id, job in jobs:
            names = runs[run_id]
            try:
                results = job.result()
            except CancelledError:
                continue
            except StoreIOError as exc:
                failure = failure or exc
                for _, other in jobs:
                    other.cancel()
                continue
            except Exception as exc:  # one run's surprise never stops the others'
                yield run_id, _failed(run_id, exc, names)
                continue
            yield run_id, results
        if failure is not None:
            raise failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _failed(run_id: str, exc: Exception, files: Iterable[str] = ()) -> list[PromoteResult]:
    """A run's surprise, logged in one line (a host's trouble plainly, at warning; a bug
    at error with its traceback); its `files` failed, to be tried again as any failed copy."""
    reason = plain_reason(exc)
    if isinstance(exc, OSError | PromoterError):
        log.warning(events.RECONCILE_FAILED, run_id=run_id, reason=reason)
    else:
        log.error(events.RECONCILE_FAILED, run_id=run_id, reason=reason, exc_info=True)
    return [PromoteResult(run_id, name, Outcome.FAILED, reason) for name in files]

"""Catch-up: find every finished session file the store lacks or holds stale (DESIGN §3, §5).

Size and times decide, never content: a file already promoted is not read
again, so a start-up pass over 100,000 promoted files costs one `stat` each.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from promoter import events, rules
from promoter.clock import last_change_ns
from promoter.errors import StoreIOError
from promoter.layout import OUTPUT, session_file
from promoter.logs import get_logger
from promoter.names import is_valid_run_id
from promoter.promotion import RETRY, Outcome, PromoteResult
from promoter.safeio import Refused, folder, open_dir_chain
from promoter.store import Store
from promoter.walk import Folder, exclusion, gc_paused, known_copies, walk_tree

__all__ = [
    "ReconcileReport",
    "Rejections",
    "SessionFile",
    "exclusion",
    "find_pending",
    "quiet",
    "reconcile",
    "scan_run",
]

log = get_logger()


@dataclass(frozen=True)
class SessionFile:
    """One entry under `output/` as `lstat` saw it."""

    run_id: str
    filename: str
    size: int
    mtime_ns: int
    ino: int
    regular: bool
    ctime_ns: int = 0

    @property
    def identity(self) -> tuple[int, int, int]:
        return (self.ino, self.mtime_ns, self.size)


class Rejections:
    """Remembers refused entries, so a rescan does not log the same refusal again."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._runs_warned: set[str] = set()

    def known(self, f: SessionFile) -> bool:
        with self._lock:
            return self._seen.get((f.run_id, f.filename)) == f.identity

    def add(self, f: SessionFile) -> None:
        with self._lock:
            self._seen[(f.run_id, f.filename)] = f.identity

    def remember(self, sessions: Path, run_id: str, filename: str) -> None:
        """A worker's refusal, by the file's identity now (gone: nothing to remember)."""
        try:
            st = os.stat(session_file(sessions, run_id, filename), follow_symlinks=False)
        except (OSError, ValueError):
            return
        self.add(SessionFile(run_id, filename, st.st_size, st.st_mtime_ns, st.st_ino,
                             stat.S_ISREG(st.st_mode)))

    def warn_once(self, key: str) -> bool:
        """True the first time `key` is seen: one warning per bad run id or folder."""
        with self._lock:
            if key in self._runs_warned:
                return False
            self._runs_warned.add(key)
            return True


def session_runs(sessions_fd: int, rejections: Rejections) -> list[str]:
    """Valid run ids under `sessions/`; anything else is ignored with one warning."""
    runs = []
    for entry in os.scandir(sessions_fd):
        if is_valid_run_id(entry.name) and entry.is_dir(follow_symlinks=False):
            runs.append(entry.name)
        elif rejections.warn_once(f"run:{entry.name}"):
            log.warning(events.RUN_IGNORED, name=entry.name,
                        reason="not a valid run id" if not is_valid_run_id(entry.name)
                        else "not a folder")
    return runs


def scan_run(sessions_fd: int, run_id: str, exclude: Iterable[str],
             rejections: Rejections, max_depth: int = 64,
             unchanged: Mapping[str, tuple[int, int]] | None = None) -> Iterator[SessionFile]:
    """Every non-excluded entry under the run's `output/`, walked without following links
    (walk.walk_tree); a folder deeper than `max_depth` is refused, not entered. One `lstat`
    a file, none a folder (the directory entry tells its type). `unchanged`: (size, µs) by
    name of the copies the store holds as they are (`known_copies`): those are skipped
    without a SessionFile or a verdict each (issue 15)."""
    patterns = tuple(exclude)
    try:
        top = open_dir_chain(sessions_fd, [run_id, OUTPUT])
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    except Refused as exc:
        if rejections.warn_once(f"output:{run_id}"):
            log.warning(events.ARTIFACT_REJECTED, run_id=run_id, filename="output/",
                        reason=exc.reason)
        return

    def denied(prefix: str, exc: OSError | Refused) -> None:
        # gone, or swapped for a link since it was listed: nothing to say
        if isinstance(exc, PermissionError) and rejections.warn_once(f"dir:{run_id}/{prefix}"):
            log.warning(events.ARTIFACT_REJECTED, run_id=run_id, filename=prefix or "output/",
                        reason="permission denied")

    excluded = exclusion(patterns)
    try:
        for folder in walk_tree(top, denied):
            yield from _scan_folder(folder, run_id, excluded, rejections, max_depth,
                                    unchanged or {})
    finally:
        os.close(top)


def _scan_folder(folder: Folder, run_id: str, excluded: Callable[[str], bool],
                 rejections: Rejections, max_depth: int,
                 unchanged: Mapping[str, tuple[int, int]]) -> Iterator[SessionFile]:
    """One folder of scan_run: its files, and its sub-folders to enter."""
    prefix = folder.prefix
    depth = prefix.count("/") + 1
    for entry in folder.entries:
        if excluded(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > max_depth:
                    if rejections.warn_once(f"deep:{run_id}/{prefix}{entry.name}"):
                        log.warning(events.ARTIFACT_REJECTED, run_id=run_id,
                                    filename=f"{prefix}{entry.name}/", reason=too_deep(max_depth))
                    continue
                folder.enter.append(entry.name)
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        name = prefix + entry.name
        held = unchanged.get(name)
        if held is not None and held[0] == st.st_size and held[1] == st.st_mtime_ns // 1000:
            continue
        yield SessionFile(run_id, name, st.st_size, st.st_mtime_ns, st.st_ino,
                          stat.S_ISREG(st.st_mode), st.st_ctime_ns)


def too_deep(max_depth: int) -> str:
    return f"deeper than watch.max_depth ({max_depth} folders)"


def quiet(f: SessionFile, now_ns: int, settle_ns: int) -> bool:
    """Settled on disk: not a regular file, or unchanged for settle_ns (a future mtime is
    judged by the ctime: it is no reason to wait)."""
    return not f.regular or now_ns - last_change_ns(f.mtime_ns, f.ctime_ns, now_ns) >= settle_ns


def find_pending(store: Store, rejections: Rejections,
                 runs: Iterable[str] | None = None) -> dict[str, list[SessionFile]]:
    """Session files to promote, by run; also marks runs whose session is gone completed."""
    pending: dict[str, list[SessionFile]] = {}
    exclude = store.config.watch.exclude
    with folder(store.sessions_path) as sessions:
        run_ids = list(runs) if runs is not None else session_runs(sessions, rejections)
        for run_id in run_ids:
            try:
                meta = store.read_run(run_id)
                found = list(scan_run(sessions, run_id, exclude, rejections,
                                      store.config.watch.max_depth, known_copies(meta)))
                # one lookup a file, not a walk of the run; none when every file is known,
                # nor a read of its tombstone (1,000 failed opens at a warm start)
                entries = rules.by_filename(meta) if found else {}
                tomb = store.read_tombstone(run_id) if found else None
                todo = [f for f in found
                        if rules.needs_promotion(meta, tomb, f.filename, f.size, f.mtime_ns,
                                                 f.ctime_ns or f.mtime_ns, entries)
                        and not rejections.known(f)]
            except StoreIOError:
                raise  # the store itself: every run is concerned
            except Exception as exc:  # one run's surprise never stops the others' (DESIGN §6)
                log.error(events.RECONCILE_FAILED, run_id=run_id,
                          reason=f"{type(exc).__name__}: {exc}")
                continue
            if todo:
                pending[run_id] = todo
    return pending


def _session_is_ours(store: Store, host: str | None) -> bool:
    """Whether this host can tell that the run's session folder is gone: on a bucket only
    the run's own host can (DESIGN §10: each host keeps its own sessions/); another host's
    live run must not be completed (and so left to the budget sweep) by every other host."""
    return store.config.storage.backend != "s3" or not host or host == store.host


def complete_finished_runs(store: Store) -> None:
    """Runs whose session folder is gone are completed; run.json changes are folded in."""
    for run_id in store.run_ids():
        try:
            meta = store.read_run(run_id)
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
            log.error(events.RECONCILE_FAILED, run_id=run_id,
                      reason=f"{type(exc).__name__}: {exc}")


@dataclass
class ReconcileReport:
    """Final outcome counts of one catch-up pass."""

    outcomes: dict[tuple[str, str], PromoteResult] = field(default_factory=dict, repr=False)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.outcomes.values() if r.outcome is outcome)

    def summary(self) -> dict[str, int]:
        counts = {o.value: self.count(o) for o in Outcome}
        counts["runs"] = len({run for run, _ in self.outcomes})
        return counts


RETRY_ROUNDS = 6  # rounds with only failures left: 50 ms .. 1.6 s apart (~3 s in all)


def reconcile(store: Store, rejections: Rejections | None = None,
              stop: threading.Event | None = None, max_rounds: int = 50,
              runs: Iterable[str] | None = None,
              progress: Callable[[int, int, int], None] | None = None) -> ReconcileReport:
    """Promote every finished file the store lacks; a file still being written is waited
    for until it has been quiet for `settle_ms` (DESIGN §3). Files that changed during
    their copy or met an I/O error are tried again, a bounded number of rounds."""
    with gc_paused():
        return _reconcile(store, rejections or Rejections(), stop or threading.Event(),
                          max_rounds, runs, progress)


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
               runs: Iterable[str] | None,
               progress: Callable[[int, int, int], None] | None) -> ReconcileReport:
    settle_ns = store.config.watch.settle_ms * 1_000_000
    report = ReconcileReport()
    run_filter = list(runs) if runs is not None else None
    found: set[tuple[str, str]] = set()
    done_bytes = 0
    retries = 0
    for _ in range(max_rounds):
        pending = find_pending(store, rejections, run_filter)
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
    return results


def _promote_runs(store: Store, runs: dict[str, dict[str, SessionFile]],
                  stop: threading.Event) -> Iterator[tuple[str, list[PromoteResult]]]:
    """Each run's ready files promoted, yielded in the order given. Runs go in parallel on
    `promote.workers` threads, as the daemon's workers take them: each run is a metadata
    change of its own, and on an object store every upload waits on the network, so one
    run at a time left the store idle between requests (issue 12). A run whose promotion
    failed is logged and skipped; a failure of the store itself (StoreIOError) ends the
    pass: runs not started are cancelled, those in flight finish first."""
    workers = min(store.config.promote.workers, len(runs))
    if workers <= 1:
        for run_id, names in runs.items():
            try:
                results = _promote_run(store, run_id, names, stop)
            except StoreIOError:
                raise
            except Exception as exc:  # one run's surprise never stops the others' (DESIGN §6)
                _failed(run_id, exc)
                continue
            yield run_id, results
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="promoter-catchup-copy")
    try:
        jobs = [(run_id, pool.submit(_promote_run, store, run_id, names, stop))
                for run_id, names in runs.items()]
        failure: StoreIOError | None = None
        for run_id, job in jobs:
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
                _failed(run_id, exc)
                continue
            yield run_id, results
        if failure is not None:
            raise failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _failed(run_id: str, exc: Exception) -> None:
    log.error(events.RECONCILE_FAILED, run_id=run_id, reason=f"{type(exc).__name__}: {exc}")

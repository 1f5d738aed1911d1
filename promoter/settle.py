"""Settle: decide when a session file is finished, and batch finished files by run (DESIGN §5).

Pure and clock-injected: every method takes `now` (monotonic nanoseconds) and
nothing here sleeps, starts a thread or touches the file system. The one look
at a file that deciding needs, its size and times, comes through the `stat`
callable that `due()` is given, so the shell does the system call and this
module does the deciding. The records it keeps are in `promoter.settle_state`.

The rules:

- Every event re-arms the file's quiet period: it is looked at `settle_ns`
  after the last one, so a burst of events on one file makes one copy.
- A file closed after writing, or renamed in (a *strong* event, not followed by
  another write), is finished once that quiet period has passed.
- Without a close (a file in a just-created folder gets only a synthetic
  "created" event; the polling observer never reports closes; an event may
  have been lost), a file is finished only when two looks `settle_ns` apart
  saw the same size, times and inode.
- A run has at most one batch in flight, and a batch holds every finished file
  of its run (up to `max_batch`), so many files of one run make few metadata
  writes and two workers never queue on one run's lock.
- A file touched while its batch is in flight is looked at again afterwards; a
  copy that must be retried (changed during the copy, store I/O error) waits
  an exponential backoff.
- At shutdown, closed and finished files go at once. A file whose close was never
  seen goes too if it is not known to be open (its last event was no real write)
  and the shell's two looks 50 ms apart saw it steady (`unclosed`, `flush_closed`).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator
from itertools import islice

from promoter.settle_state import (
    MAX_BACKOFF_NS,
    MIN_BACKOFF_NS,
    MS,
    Batch,
    FileState,
    Phase,
    Room,
    RunState,
    StatFn,
    TrackedFile,
)

__all__ = ["MAX_BACKOFF_NS", "MIN_BACKOFF_NS", "MS", "Batch", "FileState", "Room", "Settler",
           "StatFn"]


class Settler:
    """Tracks every file the daemon has heard of until its run's batch is done."""

    def __init__(self, settle_ns: int, max_batch: int = 256) -> None:
        self.settle_ns = settle_ns
        self.max_batch = max_batch
        self._runs: dict[str, RunState] = {}
        self._heap: list[tuple[int, int, str, str]] = []  # (deadline, seq, run_id, filename | "")
        self._seq = 0
        # runs with something READY not yet batched, oldest first (a dict as an ordered set)
        self._ready: dict[str, None] = {}
        self._holding = False  # the last `due` kept ready batches back: no worker was free
        self._draining = False

    # -- events --------------------------------------------------------------------------

    def touch(self, run_id: str, filename: str, now: int, strong: bool = False,
              open_unknown: bool = False) -> None:
        """An event on a file: strong = closed after writing or renamed in; weak = written to,
        so still open, unless `open_unknown` (created, found by a scan: it may be closed)."""
        if self._draining:
            return
        run = self._runs.setdefault(run_id, RunState())
        f = run.files.get(filename)
        if f is None:
            f = run.files[filename] = TrackedFile(deadline=now + self.settle_ns)
        f.deadline = now + self.settle_ns
        f.closed = strong
        f.open_seen = not strong and not open_unknown
        f.forgotten = False
        self._rearm(run_id, filename, f)

    def nudge(self, run_id: str, filename: str, now: int) -> None:
        """A change that says nothing about writing (attributes): restart the quiet period."""
        run = self._runs.get(run_id)
        f = run.files.get(filename) if run is not None else None
        if f is None:
            self.touch(run_id, filename, now, strong=False, open_unknown=True)
            return
        f.deadline = now + self.settle_ns
        self._rearm(run_id, filename, f)

    def offer(self, run_id: str, filename: str, now: int, quiet: bool) -> None:
        """A catch-up found the file. `quiet`: its mtime is settle_ns old, so it is finished
        now (else: being written). A file tracked keeps its state: its events know more."""
        run = self._runs.get(run_id)
        if self._draining or (run is not None and filename in run.files):
            return
        self.touch(run_id, filename, now - self.settle_ns if quiet else now, strong=quiet,
                   open_unknown=True)

    def forget(self, run_id: str, filename: str) -> None:
        """The file was deleted or renamed away before it settled."""
        run = self._runs.get(run_id)
        f = run.files.get(filename) if run is not None else None
        if run is None or f is None:
            return
        if f.phase is Phase.FLIGHT:
            f.forgotten = True
        else:
            del run.files[filename]
            run.ready.pop(filename, None)
            self._drop_if_empty(run_id)

    def forget_tree(self, run_id: str, folder: str) -> None:
        """A folder under output/ was deleted or renamed away ("" = the whole output/)."""
        run = self._runs.get(run_id)
        if run is None:
            return
        prefix = f"{folder}/" if folder else ""
        for name in [n for n in run.files if n.startswith(prefix)]:
            self.forget(run_id, name)

    def context(self, run_id: str, now: int) -> None:
        """run.json or attribution.jsonl changed: refresh the run once they are quiet."""
        if self._draining:
            return
        run = self._runs.setdefault(run_id, RunState())
        run.context = True
        run.chores_ready = False
        self._schedule_chores(run_id, run, now + self.settle_ns)

    def session_gone(self, run_id: str, now: int) -> None:
        """The session folder vanished: its pending files are gone, the run is completed."""
        if self._draining:
            return
        self.forget_tree(run_id, "")
        run = self._runs.setdefault(run_id, RunState())
        run.completed = True
        run.context = False  # run.json went with the folder
        self._schedule_chores(run_id, run, now)

    # -- deciding ------------------------------------------------------------------------

    def due(self, now: int, stat: StatFn, room: Room | None = None) -> list[Batch]:
        """Batches of finished files (and run chores) to hand out now, in order, as far as
        `room` goes (None: no limit; see `_batches`)."""
        if self._draining:
            return []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, run_id, name = heapq.heappop(self._heap)
            run = self._runs.get(run_id)
            if run is None:
                continue
            if not name:
                if run.queued_at == deadline:
                    self._run_due(run_id, run, now)
                continue
            f = run.files.get(name)
            if f is None or not f.queued:
                continue
            f.queued = False
            if f.phase is not Phase.ARMED:
                continue
            if f.deadline > now:  # touched since this entry was pushed
                self._push(f.deadline, run_id, name)
                f.queued = True
                continue
            self._look(run_id, run, name, f, now, stat)
        return self._batches(room)

    def _run_due(self, run_id: str, run: RunState, now: int) -> None:
        run.queued_at = None
        if run.chores_at is None:
            return
        if run.chores_at > now:  # postponed by a later event
            self._schedule_chores(run_id, run, run.chores_at)
            return
        run.chores_at = None
        run.chores_ready = True
        self._ready.setdefault(run_id)

    def _look(self, run_id: str, run: RunState, name: str, f: TrackedFile, now: int,
              stat: StatFn) -> None:
        if f.closed:
            self._set_ready(run_id, run, name, f)
            return
        state = stat(run_id, name)
        if state is None:  # gone without an event: the store logs it as lost
            self._set_ready(run_id, run, name, f)
            return
        if state == f.seen and now - f.seen_at >= self.settle_ns:
            self._set_ready(run_id, run, name, f)
            return
        if state != f.seen:
            f.seen, f.seen_at = state, now
        f.deadline = f.seen_at + self.settle_ns
        self._rearm(run_id, name, f)

    def _set_ready(self, run_id: str, run: RunState, name: str, f: TrackedFile) -> None:
        f.phase = Phase.READY
        run.ready[name] = None
        self._ready.setdefault(run_id)

    def _batches(self, room: Room | None = None) -> list[Batch]:
        """A batch for each ready run not in flight, oldest first, as far as `room` goes (the
        workers' batches, then the lane's). A batch beyond it is not made: its files gather
        into the run's next batch (frozen while queued, batches were a few files each). A run
        kept back costs its count, not a look at each file (issue 15 r7: thousands a turn)."""
        out: list[Batch] = []
        workers = room.workers if room is not None else len(self._ready)
        small: list[tuple[str, int]] = []  # (run, files) that only the small room could take
        holding = False
        for run_id in list(self._ready):
            run = self._runs.get(run_id)
            if run is None:
                self._ready.pop(run_id, None)
                continue
            if run.in_flight:
                continue  # its files wait for the batch in flight, then go together
            files = min(len(run.ready), run.limit or self.max_batch)
            if not (files or (run.chores_ready and (run.context or run.completed))):
                self._ready.pop(run_id, None)
                self._drop_if_empty(run_id)
                continue
            if workers > 0:
                workers -= 1
                out.append(self._make_batch(run_id, run, files))
            else:
                holding = True
                if room is not None and len(small) < room.small and files <= room.small_files:
                    small.append((run_id, files))
        out += [self._make_batch(r, self._runs[r], n) for r, n in small]  # the lane's: last
        self._holding = holding
        return out

    def _make_batch(self, run_id: str, run: RunState, files: int) -> Batch:
        """The run's next batch: its first `files` READY files (and its chores, if due)."""
        chunk, chores = tuple(islice(run.ready, files)), run.chores_ready
        batch = Batch(run_id, chunk, context=chores and run.context,
                      completed=chores and run.completed)
        del self._ready[run_id]
        for name in chunk:
            del run.ready[name]
            run.files[name].phase = Phase.FLIGHT
        if run.ready:
            self._ready[run_id] = None  # the rest: behind the runs already waiting
        if chores:
            run.chores_ready = run.context = run.completed = False
        run.in_flight += 1
        return batch

    def done(self, batch: Batch, retry: Collection[str], now: int,
             retry_run: bool = False, limit: int = 0) -> None:
        """A worker finished `batch`. Files named in `retry`, and with `retry_run` its run
        chores, are tried again after a backoff. `limit`: the run's batches from now on."""
        run = self._runs.get(batch.run_id)
        if run is None:
            return
        run.in_flight = max(run.in_flight - 1, 0)
        run.limit = limit or run.limit
        for name in batch.filenames:
            f = run.files.get(name)
            if f is None or f.phase is not Phase.FLIGHT:
                continue
            if f.forgotten or self._draining:
                del run.files[name]
            elif f.dirty:
                f.dirty, f.attempts, f.phase = False, 0, Phase.ARMED
                f.deadline = max(f.deadline, now)
                self._rearm(batch.run_id, name, f)
            elif name in retry:
                f.attempts += 1
                f.phase = Phase.ARMED
                f.deadline = now + self.backoff(f.attempts)
                self._rearm(batch.run_id, name, f)
            else:
                del run.files[name]
        if (batch.context or batch.completed) and not self._draining:
            if retry_run:
                run.context = run.context or batch.context
                run.completed = run.completed or batch.completed
                run.chore_attempts += 1
                self._schedule_chores(batch.run_id, run, now + self.backoff(run.chore_attempts))
            else:
                run.chore_attempts = 0
        if run.chores_ready or run.ready:
            self._ready.setdefault(batch.run_id)
        self._drop_if_empty(batch.run_id)

    def backoff(self, attempts: int) -> int:
        """Wait before retry number `attempts`: doubling from settle_ns, within bounds."""
        base = max(self.settle_ns, MIN_BACKOFF_NS)
        return min(base << min(attempts - 1, 20), MAX_BACKOFF_NS)

    def unclosed(self) -> list[tuple[str, str, bool]]:
        """(run_id, filename, open_seen) of every pending file whose close was never seen
        (`open_seen`: its last event was a real write). At shutdown the shell looks twice at
        the others and names the steady ones to `flush_closed`."""
        return [(run_id, name, f.open_seen) for run_id, run in self._runs.items()
                for name, f in run.files.items() if f.phase is Phase.ARMED and not f.closed]

    def flush_closed(self, steady: Collection[tuple[str, str]] = ()) -> list[Batch]:
        """Shutdown: batches of every file closed (or finished) and the `steady` ones (no close
        seen, two looks saw the same state; DESIGN §5), with the runs' chores, at once. Files
        still written are left to the next start's catch-up. Nothing is decided after this."""
        self._draining = True
        out: list[Batch] = []
        for run_id, run in self._runs.items():
            names = [n for n, f in run.files.items()
                     if f.phase is Phase.READY or (f.phase is Phase.ARMED and (
                         f.closed or (run_id, n) in steady))]
            for name in names:
                run.files[name].phase = Phase.FLIGHT
            run.ready.clear()
            limit = run.limit or self.max_batch
            for start in range(0, max(len(names), 1), limit):
                first = start == 0
                batch = Batch(run_id, tuple(names[start:start + limit]),
                              context=first and run.context, completed=first and run.completed)
                if batch.filenames or batch.context or batch.completed:
                    run.in_flight += 1
                    out.append(batch)
            run.context = run.completed = run.chores_ready = False
        self._ready.clear()
        self._heap.clear()
        return out

    # -- bookkeeping ---------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """When `due()` has something to decide next (monotonic ns), or None when idle."""
        if self._draining:
            return None
        if not self._holding and any(not self._runs[r].in_flight for r in self._ready
                                     if r in self._runs):
            return 0
        while self._heap:
            deadline, _, run_id, name = self._heap[0]
            run = self._runs.get(run_id)
            live = run is not None and (run.queued_at == deadline if not name else
                                        (f := run.files.get(name)) is not None and f.queued)
            if live:
                return deadline
            heapq.heappop(self._heap)
        return None

    def busy(self, run_id: str) -> bool:
        """True while the run has files or chores pending or in flight (the sweeper waits)."""
        return run_id in self._runs

    def busy_runs(self) -> frozenset[str]:
        return frozenset(self._runs)

    def __len__(self) -> int:
        """Files pending or in flight."""
        return sum(len(run.files) for run in self._runs.values())

    def in_flight(self) -> int:
        """Batches handed out and not yet done."""
        return sum(run.in_flight for run in self._runs.values())

    def files(self) -> Iterator[tuple[str, str]]:
        """(run_id, filename) of every file tracked: for tests and diagnostics."""
        for run_id, run in self._runs.items():
            for name in run.files:
                yield run_id, name

    # -- internals -----------------------------------------------------------------------

    def _push(self, deadline: int, run_id: str, name: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, run_id, name))

    def _rearm(self, run_id: str, name: str, f: TrackedFile) -> None:
        if f.phase is Phase.FLIGHT:
            f.dirty = True
            return
        if f.phase is Phase.READY:  # written again after it finished: not ready any more
            self._runs[run_id].ready.pop(name, None)
        f.phase = Phase.ARMED
        if not f.queued:  # one live heap entry a file; a later deadline re-pushes on pop
            self._push(f.deadline, run_id, name)
            f.queued = True

    def _schedule_chores(self, run_id: str, run: RunState, deadline: int) -> None:
        run.chores_at = deadline if run.chores_at is None else max(run.chores_at, deadline)
        if run.completed:  # nothing to wait for: the folder is gone
            run.chores_at = min(run.chores_at, deadline)
        if run.queued_at is None or run.queued_at > run.chores_at:
            run.queued_at = run.chores_at
            self._push(run.chores_at, run_id, "")

    def _drop_if_empty(self, run_id: str) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.empty():
            del self._runs[run_id]
            self._ready.pop(run_id, None)

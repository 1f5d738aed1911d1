"""The settle thread and the workers around a scripted store: batching, retries, errors,
stalls and the shutdown drain, without a daemon process."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from promoter.errors import StoreIOError
from promoter.metrics import DaemonMetrics
from promoter.pipeline import Pipeline
from promoter.reconcile import Rejections, SessionFile
from promoter.store import Outcome, PromoteResult
from tests.daemon_helpers import no_thread_leak, wait_until, write

__all__ = ["no_thread_leak"]


@pytest.fixture(autouse=True)
def _threads(no_thread_leak: None) -> None:
    """Every pipeline here is drained: no thread may outlive its test."""


class FakeStore:
    """Records calls; `script` lists what the next promote_files calls do."""

    def __init__(self, sessions: Path) -> None:
        self.sessions_path = sessions
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []
        self.script: list[Any] = []  # an Outcome for every file, an exception, or an Event
        self.lock = threading.Lock()

    def promote_files(self, run_id: str, filenames: tuple[str, ...]) -> list[PromoteResult]:
        with self.lock:
            self.calls.append(("promote", run_id, tuple(filenames)))
            step = self.script.pop(0) if self.script else Outcome.PROMOTED
        if isinstance(step, threading.Event):
            step.wait(10)
            step = Outcome.PROMOTED
        if isinstance(step, Exception):
            raise step
        return [PromoteResult(run_id, name, step) for name in filenames]

    def refresh_context(self, run_id: str) -> None:
        with self.lock:
            self.calls.append(("context", run_id, ()))

    def mark_completed(self, run_id: str) -> None:
        with self.lock:
            self.calls.append(("completed", run_id, ()))

    def promoted(self, run_id: str) -> list[str]:
        with self.lock:
            return [n for kind, r, names in self.calls if kind == "promote" and r == run_id
                    for n in names]


@pytest.fixture
def store(tmp_path: Path) -> FakeStore:
    return FakeStore(tmp_path)


def pipeline(store: FakeStore, settle_ms: int = 50, **kwargs: Any) -> Pipeline:
    p = Pipeline(store, DaemonMetrics(), Rejections(), workers=2,  # type: ignore[arg-type]
                 settle_ms=settle_ms, **kwargs)
    p.start()
    return p


@pytest.fixture
def running(store: FakeStore) -> Iterator[Pipeline]:
    p = pipeline(store)
    yield p
    assert p.drain(5)


def test_files_of_a_run_settling_together_are_coalesced(store: FakeStore) -> None:
    """Ten files of one run closed together reach the store in one or two calls, never one
    call a file (the exact batching rule is test_settle's
    test_files_of_one_run_settling_together_make_one_batch)."""
    # Each file is due at its own event time + settle_ms: a settle thread that wakes
    # between two of those deadlines (microseconds apart) takes the files due so far, and
    # the rest wait behind that batch (one batch in flight per run) and go together.
    # The first call is held until every file's quiet period is over, so the rest are
    # certainly all ready behind it: at most two calls, whatever the threads' timing.
    first = threading.Event()
    store.script = [first]
    p = pipeline(store, settle_ms=1000)
    try:
        for i in range(10):
            p.file_changed("r", f"f{i}", strong=True)
        p.file_changed("q", "g", strong=True)
        all_due = time.monotonic() + 1.2
        wait_until(lambda: time.monotonic() >= all_due, timeout=5)
        first.set()
        wait_until(lambda: len(store.promoted("r")) == 10 and store.promoted("q"))
        assert len([c for c in store.calls if c[1] == "r"]) <= 2, store.calls
        assert sorted(store.promoted("r")) == sorted(f"f{i}" for i in range(10))
    finally:
        assert p.drain(5)


def test_a_worker_error_is_logged_and_the_batch_retried(store: FakeStore) -> None:
    """An exception from the store never stops a worker: it is logged, and the files come
    back after a backoff."""
    store.script = [RuntimeError("disk on fire")]
    p = pipeline(store)
    try:
        with structlog.testing.capture_logs() as logs:
            p.file_changed("r", "a", strong=True)
            wait_until(lambda: len(store.promoted("r")) == 2, timeout=5)
        assert any(e["event"] == "worker.error" and "disk on fire" in e["reason"] for e in logs)
        assert p.health() is None
    finally:
        assert p.drain(5)


def test_out_of_descriptors_in_a_worker_is_one_plain_line(store: FakeStore) -> None:
    """EMFILE, even wrapped in StoreIOError (raised `from None`), is the host's limit:
    worker.error names it plainly, without a traceback (r7 probe F6); retried as any error."""
    def wrapped() -> StoreIOError:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            try:
                raise StoreIOError(f"artifacts folder unusable: {exc.strerror}") from None
            except StoreIOError as outer:
                return outer
    store.script = [wrapped()]
    p = pipeline(store)
    try:
        with structlog.testing.capture_logs() as logs:
            p.file_changed("r", "a", strong=True)
            wait_until(lambda: len(store.promoted("r")) == 2, timeout=5)
        [line] = [e for e in logs if e["event"] == "worker.error"]
        assert line["reason"] == ("out of file descriptors (Too many open files): raise the "
                                  "daemon's limit (LimitNOFILE=)")
        assert not line.get("exc_info")
    finally:
        assert p.drain(5)


@pytest.mark.parametrize("outcome", [Outcome.CHANGED, Outcome.FAILED])
def test_changed_or_failed_files_are_tried_again(store: FakeStore, outcome: Outcome) -> None:
    """CHANGED and FAILED outcomes are retried; the others are final."""
    store.script = [outcome]
    p = pipeline(store)
    try:
        p.file_changed("r", "a", strong=True)
        wait_until(lambda: len(store.promoted("r")) == 2, timeout=5)
        wait_until(lambda: not p.busy("r"))
        assert len(store.promoted("r")) == 2
    finally:
        assert p.drain(5)


def test_drain_promotes_closed_files_without_waiting_out_settle(store: FakeStore) -> None:
    """At shutdown a closed file goes at once even with settle_ms at a minute; a file only
    written to (not closed) is left for the next start."""
    p = pipeline(store, settle_ms=60_000)
    p.file_changed("r", "closed", strong=True)
    p.file_changed("r", "open", strong=False)
    wait_until(lambda: p.busy("r"))
    assert p.drain(5)
    assert store.promoted("r") == ["closed"]


def test_a_stalled_backlog_is_unhealthy(store: FakeStore) -> None:
    """Work outstanding with no batch done for stall_s makes health() say so (no pings)."""
    release = threading.Event()
    store.script = [release]
    p = pipeline(store, stall_s=0.2)
    try:
        p.file_changed("r", "a", strong=True)
        wait_until(lambda: "finished no chunk" in (p.health() or ""), timeout=5)
        assert p.busy("r")
        release.set()
        wait_until(lambda: p.health() is None and not p.busy("r"), timeout=5)
    finally:
        release.set()
        assert p.drain(5)


class SlowStore(FakeStore):
    """Every promote_files call (one chunk) takes `pause` seconds: a slow disk or bucket."""

    pause = 0.15

    def promote_files(self, run_id: str, filenames: tuple[str, ...]) -> list[PromoteResult]:
        threading.Event().wait(self.pause)  # the store's own slowness, not the test's wait
        return super().promote_files(run_id, filenames)


def test_a_long_batch_whose_chunks_complete_is_healthy(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """probe-cpu F1: a batch of many chunks outlasting stall_s is progress, not a stall,
    as long as each chunk finishes within it."""
    monkeypatch.setattr("promoter.rules.MAX_BATCH_BYTES", 2000)
    store = SlowStore(tmp_path)
    names = [f"f{i}.bin" for i in range(16)]
    for name in names:
        write(tmp_path / "r" / "output" / name, "x" * 1000)  # two a chunk: 8 chunks
    p = pipeline(store, settle_ms=100, stall_s=0.6)
    try:
        for name in names:
            p.file_changed("r", name, strong=True)
        seen: list[str] = []
        started = time.monotonic()

        def done() -> bool:
            seen.append(p.health() or "")
            return sorted(store.promoted("r")) == sorted(names)
        wait_until(done, timeout=20, interval=0.02)
        assert time.monotonic() - started > 0.6 * 1.5  # the batch did outlast stall_s
        assert [h for h in seen if h] == []
    finally:
        assert p.drain(5)


def test_a_quiet_catch_up_find_goes_without_waiting(store: FakeStore) -> None:
    """A file offered by a catch-up whose mtime is already old is promoted at once."""
    p = pipeline(store, settle_ms=60_000)
    try:
        p.offer("r", "old", quiet=True)
        wait_until(lambda: store.promoted("r") == ["old"], timeout=5)
    finally:
        assert p.drain(5)


def test_context_changes_and_vanished_sessions_are_run_chores(store: FakeStore,
                                                             running: Pipeline) -> None:
    """A context change alone refreshes the run's context; a vanished session completes it."""
    running.context_changed("r")
    running.session_gone("q")
    wait_until(lambda: ("context", "r", ()) in store.calls
               and ("completed", "q", ()) in store.calls)


def test_rejected_files_are_remembered_for_rescans(store: FakeStore, tmp_path: Path) -> None:
    """A refused file is remembered by identity, so a rescan does not offer and log it again."""
    path = write(tmp_path / "r" / "output" / "link", "x")
    store.script = [Outcome.REJECTED]
    rejections = Rejections()
    p = Pipeline(store, DaemonMetrics(), rejections, workers=1, settle_ms=10)  # type: ignore[arg-type]
    p.start()
    try:
        p.file_changed("r", "link", strong=True)
        st = path.stat()
        f = SessionFile("r", "link", st.st_size, st.st_mtime_ns, st.st_ino, True, st.st_ctime_ns)
        wait_until(lambda: rejections.known(f), timeout=5)
    finally:
        assert p.drain(5)


def test_health_names_a_dead_thread(store: FakeStore) -> None:
    """After the drain the threads are gone, and health() says which."""
    p = pipeline(store)
    assert p.health() is None
    assert p.drain(5)
    assert "is not running" in (p.health() or "")


class BlockingStore(FakeStore):
    """Holds every batch of a run named big-* until `release` is set, and of a run named
    hold-* (the lane's, in the test that needs it) until `lane_release` is set."""

    def __init__(self, sessions: Path) -> None:
        super().__init__(sessions)
        self.release = threading.Event()
        self.lane_release = threading.Event()

    def promote_files(self, run_id: str, filenames: tuple[str, ...]) -> list[PromoteResult]:
        gate = {"big-": self.release, "hold-": self.lane_release}.get(run_id[:run_id.find("-") + 1])
        if gate is not None:
            with self.lock:
                self.calls.append(("started", run_id, tuple(filenames)))
            gate.wait(20)
        return super().promote_files(run_id, filenames)


def _hold_both_workers(p: Pipeline, store: BlockingStore) -> None:
    """Two big runs' batches, each taken by a worker and held there (until store.release)."""
    for run in ("big-a", "big-b"):
        for i in range(40):
            p.file_changed(run, f"f{i}.bin", strong=True)
    wait_until(lambda: sum(kind == "started" for kind, _, _ in store.calls) == 2, timeout=10)


def _hold_workers_and_lane(p: Pipeline, store: BlockingStore) -> None:
    """Both workers held by big batches, and the lane by a lone file (until the releases)."""
    _hold_both_workers(p, store)
    p.file_changed("hold-1", "x.txt", strong=True)  # the lane takes it and blocks
    wait_until(lambda: sum(kind == "started" for kind, _, _ in store.calls) == 3, timeout=10)


def test_a_lone_file_passes_big_batches_that_hold_every_worker(tmp_path: Path) -> None:
    """probe-15 finding 5: while two runs' batches hold both workers, a lone file of a
    third run is promoted at once (the lane), not after them."""
    store = BlockingStore(tmp_path)
    p = pipeline(store)
    try:
        _hold_both_workers(p, store)
        p.file_changed("lone", "x.txt", strong=True)
        wait_until(lambda: store.promoted("lone") == ["x.txt"], timeout=5, what=repr(store.calls))
        assert not store.release.is_set() and store.promoted("big-a") == []
    finally:
        store.release.set()
        assert p.drain(10)


def test_batches_waiting_behind_the_busy_lane_go_to_the_workers_once_free(tmp_path: Path
                                                                          ) -> None:
    """probe-cpu F5: small batches that finished while both workers and the lane were busy
    are taken by the workers once they are free, not left to the lane alone."""
    store = BlockingStore(tmp_path)
    p = pipeline(store)
    try:
        _hold_workers_and_lane(p, store)
        smalls = [f"small-{i}" for i in range(4)]
        for run in smalls:
            p.file_changed(run, "y.txt", strong=True)
        # tracked, finished, and kept back: nobody is free to take them
        wait_until(lambda: p.queue_length == 85 and p._outstanding == 3, timeout=10)
        store.release.set()
        wait_until(lambda: all(store.promoted(r) == ["y.txt"] for r in smalls), timeout=5,
                   what=repr(store.calls))
        assert store.promoted("hold-1") == []  # the lane is still held: the workers did them
    finally:
        store.release.set()
        store.lane_release.set()
        assert p.drain(10)


def test_files_finishing_while_every_worker_is_busy_go_as_one_batch(tmp_path: Path) -> None:
    """Issue 15 round 6: a run's files that finish one by one while both workers and the lane
    are busy are kept back, not frozen into a batch each, and go in one batch once a worker
    is free; the settle thread does not spin meanwhile."""
    store = BlockingStore(tmp_path)
    p = pipeline(store, settle_ms=10)
    try:
        _hold_workers_and_lane(p, store)
        for i in range(30):
            p.file_changed("many", f"m{i}.bin", strong=True)
            wait_until(lambda i=i: p.queue_length == 81 + i + 1, timeout=10)
        pause = threading.Event()
        pause.wait(0.1)  # not a wait for a result: the last file's 10 ms settle time passes
        settle = next(t for t in threading.enumerate() if t.name == "promoter-settle")
        assert settle.is_alive()
        cpu0 = time.thread_time()  # this thread's: the settle thread must not spin instead
        busy0 = time.process_time()
        pause.wait(0.3)
        assert time.process_time() - busy0 - (time.thread_time() - cpu0) < 0.15
        store.release.set()
        wait_until(lambda: len(store.promoted("many")) == 30, timeout=10)
        calls = [names for kind, run, names in store.calls if kind == "promote" and run == "many"]
        assert len(calls) == 1 and len(calls[0]) == 30, calls
    finally:
        store.release.set()
        store.lane_release.set()
        assert p.drain(10)


def test_a_kept_back_batch_goes_the_moment_a_worker_is_free(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Issue 15 round 6: a worker's finish is not one of the burst's events to gather for:
    a batch kept back for want of a free worker goes at once, not after the gather pause."""
    import promoter.pipeline as pipeline_module

    store = BlockingStore(tmp_path)
    p = pipeline(store, settle_ms=10)
    try:
        _hold_workers_and_lane(p, store)
        p.file_changed("late", "y.txt", strong=True)
        wait_until(lambda: p.queue_length == 82, timeout=10)  # tracked and kept back
        gather = pipeline_module.GATHER_S
        monkeypatch.setattr(pipeline_module, "GATHER_S", 5.0)  # a pause no one could miss
        started = time.monotonic()
        store.release.set()
        wait_until(lambda: store.promoted("late") == ["y.txt"], timeout=10)
        assert time.monotonic() - started < 2.5, "the freed worker waited out the gather pause"
        monkeypatch.setattr(pipeline_module, "GATHER_S", gather)  # the drain's flush not held
    finally:
        store.release.set()
        store.lane_release.set()
        assert p.drain(10)


def _settle_cpu_s() -> float:
    """The settle thread's own CPU time so far (Linux: the thread's CPU clock)."""
    settle = next(t for t in threading.enumerate() if t.name == "promoter-settle")
    assert settle.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(settle.ident))


def test_files_kept_back_for_busy_workers_cost_the_settle_thread_nothing_a_turn(
        tmp_path: Path) -> None:
    """Issue 15 round 7 (the overload regression): runs whose finished files are kept back
    for want of a free worker are not looked over file by file at every turn. With 20,000
    such files waiting, lone files of another run still go through the lane one by one, and
    the settle thread's CPU for each stays that of an idle pipeline (~0.6 ms: its wake-ups);
    main spent 21-24 ms, so under overload the lone file's events, deadline and batch all
    came late."""
    store = BlockingStore(tmp_path)
    p = pipeline(store, settle_ms=5)
    try:
        _hold_both_workers(p, store)
        for k in range(4):
            for i in range(5_000):
                p.file_changed(f"busy-{k}", f"f{i}.bin", strong=True)
        wait_until(lambda: p.queue_length == 80 + 20_000, timeout=20)
        cpu0 = 0.0
        for i in range(41):  # the first: every busy file finished before it (deadline order)
            p.file_changed("lone", f"l{i}.txt", strong=True)
            wait_until(lambda i=i: len(store.promoted("lone")) == i + 1, timeout=10,
                       what=repr(store.calls[-3:]))
            cpu0 = cpu0 or _settle_cpu_s()
        per_file_ms = (_settle_cpu_s() - cpu0) / 40 * 1000
        assert per_file_ms < 5.0, f"settle thread: {per_file_ms:.2f} ms of CPU a lone file"
        assert [kind for kind, run, _ in store.calls if run.startswith("busy-")] == []
    finally:
        store.release.set()
        assert p.drain(20)

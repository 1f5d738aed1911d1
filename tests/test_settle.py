"""The settle tracker, pure: an injected clock and a scripted stat, no threads, no sleeps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from promoter.settle import MAX_BACKOFF_NS, MIN_BACKOFF_NS, Batch, FileState, Room, Settler
from promoter.settle_state import Phase

MS = 1_000_000
SETTLE = 50 * MS


class Disk:
    """A scripted `stat`: what each file looks like now, and how often it was asked."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], FileState] = {}
        self.calls = 0

    def write(self, run: str, name: str, size: int, t: int) -> None:
        self.files[(run, name)] = FileState(size=size, mtime_ns=t, ctime_ns=t, ino=1)

    def stat(self, run: str, name: str) -> FileState | None:
        self.calls += 1
        return self.files.get((run, name))


def names(batches: list[Batch]) -> dict[str, list[str]]:
    return {b.run_id: sorted(b.filenames) for b in batches}


def test_closed_file_is_due_one_settle_after_its_close() -> None:
    """A file closed after writing is handed out settle_ns after the close, not a moment before."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a.txt", 0, strong=False)
    s.touch("r", "a.txt", 10 * MS, strong=True)
    assert s.due(10 * MS + SETTLE - 1, disk.stat) == []
    assert s.due(10 * MS + SETTLE, disk.stat) == [Batch("r", ("a.txt",))]


def test_closed_file_needs_no_stat() -> None:
    """The close event and the quiet period decide a closed file; no stat is spent on it."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a.txt", 0, strong=True)
    assert names(s.due(SETTLE, disk.stat)) == {"r": ["a.txt"]}
    assert disk.calls == 0


def test_every_event_restarts_the_quiet_period() -> None:
    """Events keep pushing the deadline out: the file goes only after settle_ns of silence."""
    s, disk = Settler(SETTLE), Disk()
    for t in range(0, 400 * MS, 20 * MS):
        s.touch("r", "slow.bin", t, strong=False)
        assert s.due(t, disk.stat) == []
    s.touch("r", "slow.bin", 400 * MS, strong=True)
    assert s.due(400 * MS + SETTLE - 1, disk.stat) == []
    assert names(s.due(400 * MS + SETTLE, disk.stat)) == {"r": ["slow.bin"]}


def test_many_events_on_one_file_make_one_copy() -> None:
    """A burst of events on one file coalesces into one entry of one batch."""
    s, disk = Settler(SETTLE), Disk()
    for i in range(1000):
        s.touch("r", "a.txt", i, strong=i % 2 == 1)
    batches = s.due(10 * SETTLE, disk.stat)
    assert batches == [Batch("r", ("a.txt",))]
    assert len(s) == 1
    s.done(batches[0], retry=(), now=10 * SETTLE)
    assert len(s) == 0


def test_a_burst_keeps_one_heap_entry_per_file() -> None:
    """Touches do not pile up timers: the heap holds one live entry per file."""
    s = Settler(SETTLE)
    for i in range(10_000):
        s.touch("r", f"f{i % 10}", i, strong=False)
    assert len(s._heap) == 10  # private, but the bound is the point of this test


def test_unclosed_file_needs_two_equal_looks_a_settle_apart() -> None:
    """Without a close, a file goes only when two looks settle_ns apart see the same state."""
    s, disk = Settler(SETTLE), Disk()
    disk.write("r", "a.png", 10, 1)
    s.touch("r", "a.png", 0, strong=False)
    assert s.due(SETTLE, disk.stat) == []  # first look
    assert disk.calls == 1
    assert s.next_deadline() == 2 * SETTLE
    assert s.due(2 * SETTLE - 1, disk.stat) == []
    assert names(s.due(2 * SETTLE, disk.stat)) == {"r": ["a.png"]}
    assert disk.calls == 2


def test_unclosed_file_that_grows_between_looks_waits_again() -> None:
    """A size or time change between looks starts the comparison over."""
    s, disk = Settler(SETTLE), Disk()
    disk.write("r", "a", 10, 1)
    s.touch("r", "a", 0)
    assert s.due(SETTLE, disk.stat) == []
    disk.write("r", "a", 20, 2)
    assert s.due(2 * SETTLE, disk.stat) == []
    assert s.due(3 * SETTLE - 1, disk.stat) == []
    assert names(s.due(3 * SETTLE, disk.stat)) == {"r": ["a"]}


def test_inode_change_counts_as_a_change() -> None:
    """A file replaced by another of the same size and times is not stable."""
    s, disk = Settler(SETTLE), Disk()
    disk.files[("r", "a")] = FileState(1, 1, 1, ino=1)
    s.touch("r", "a", 0)
    s.due(SETTLE, disk.stat)
    disk.files[("r", "a")] = FileState(1, 1, 1, ino=2)
    assert s.due(2 * SETTLE, disk.stat) == []
    assert names(s.due(3 * SETTLE, disk.stat)) == {"r": ["a"]}


def test_unclosed_file_that_vanished_goes_to_the_store() -> None:
    """A file gone without an event is handed out, so that the store logs it as lost."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "gone", 0)
    assert names(s.due(SETTLE, disk.stat)) == {"r": ["gone"]}


def test_a_write_after_the_close_cancels_it() -> None:
    """A weak event after a close means the file is being written again: looks decide."""
    s, disk = Settler(SETTLE), Disk()
    disk.write("r", "a", 1, 1)
    s.touch("r", "a", 0, strong=True)
    s.touch("r", "a", 1, strong=False)
    assert s.due(SETTLE + 1, disk.stat) == []
    assert names(s.due(2 * SETTLE + 1, disk.stat)) == {"r": ["a"]}


def test_attribute_change_restarts_the_wait_but_keeps_the_close() -> None:
    """`nudge` (utime, chmod after the close) delays a closed file without demoting it."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    s.nudge("r", "a", 30 * MS)
    assert s.due(SETTLE, disk.stat) == []
    assert names(s.due(30 * MS + SETTLE, disk.stat)) == {"r": ["a"]}
    assert disk.calls == 0


def test_nudge_on_an_unknown_file_tracks_it_as_written() -> None:
    """An attribute event for a file never seen before still gets the file looked at."""
    s, disk = Settler(SETTLE), Disk()
    disk.write("r", "a", 1, 1)
    s.nudge("r", "a", 0)
    assert s.due(SETTLE, disk.stat) == []
    assert names(s.due(2 * SETTLE, disk.stat)) == {"r": ["a"]}


def test_files_of_one_run_settling_together_make_one_batch() -> None:
    """Files of a run that are due in one pass go in one batch; runs get a batch each."""
    s, disk = Settler(SETTLE), Disk()
    for i in range(5):
        s.touch("r1", f"f{i}", i, strong=True)
        s.touch("r2", f"g{i}", i, strong=True)
    assert names(s.due(SETTLE + 10, disk.stat)) == {
        "r1": [f"f{i}" for i in range(5)], "r2": [f"g{i}" for i in range(5)]}


def test_one_batch_in_flight_per_run() -> None:
    """Files of a run finished while its batch is in flight wait, then go together."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    (first,) = s.due(SETTLE, disk.stat)
    s.touch("r", "b", 1 * MS, strong=True)
    s.touch("r", "c", 2 * MS, strong=True)
    assert s.due(SETTLE + 2 * MS + SETTLE, disk.stat) == []
    assert s.next_deadline() is None  # nothing to decide until the batch is done
    s.done(first, retry=(), now=200 * MS)
    assert s.next_deadline() == 0
    assert names(s.due(200 * MS, disk.stat)) == {"r": ["b", "c"]}


def test_other_runs_are_not_held_up_by_a_run_in_flight() -> None:
    """A batch in flight holds back only its own run."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r1", "a", 0, strong=True)
    s.due(SETTLE, disk.stat)
    s.touch("r2", "b", 0, strong=True)
    assert names(s.due(SETTLE, disk.stat)) == {"r2": ["b"]}


def test_large_runs_are_split_into_bounded_batches() -> None:
    """At most max_batch files a batch; the rest follow once it is done."""
    s, disk = Settler(SETTLE, max_batch=3), Disk()
    for i in range(7):
        s.touch("r", f"f{i}", 0, strong=True)
    (b1,) = s.due(SETTLE, disk.stat)
    assert len(b1.filenames) == 3
    s.done(b1, (), SETTLE)
    (b2,) = s.due(SETTLE, disk.stat)
    s.done(b2, (), SETTLE)
    (b3,) = s.due(SETTLE, disk.stat)
    assert len(b2.filenames) == 3 and len(b3.filenames) == 1
    assert set(b1.filenames) | set(b2.filenames) | set(b3.filenames) == {f"f{i}" for i in range(7)}
    s.done(b3, (), SETTLE)
    assert len(s) == 0 and not s.busy("r")


def test_file_touched_during_its_copy_is_looked_at_again() -> None:
    """An event while a file is being copied brings it back after the batch, not dropped."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    (batch,) = s.due(SETTLE, disk.stat)
    s.touch("r", "a", SETTLE + 5 * MS, strong=True)
    s.done(batch, retry=(), now=SETTLE + 10 * MS)
    assert s.busy("r")
    assert s.due(2 * SETTLE + 5 * MS - 1, disk.stat) == []
    assert names(s.due(2 * SETTLE + 5 * MS, disk.stat)) == {"r": ["a"]}


def test_retry_waits_a_doubling_backoff() -> None:
    """CHANGED or FAILED files come back after settle, 2 x settle, ... up to the cap."""
    s, disk = Settler(200 * MS), Disk()
    s.touch("r", "a", 0, strong=True)
    now = 200 * MS
    waits = []
    for _ in range(12):
        (batch,) = s.due(now, disk.stat)
        s.done(batch, retry={"a"}, now=now)
        deadline = s.next_deadline()
        assert deadline is not None
        waits.append(deadline - now)
        now = deadline
    assert waits[:3] == [200 * MS, 400 * MS, 800 * MS]
    assert waits[-1] == MAX_BACKOFF_NS == 30_000 * MS  # DESIGN §5: capped at 30 s
    (batch,) = s.due(now, disk.stat)
    s.done(batch, retry=(), now=now)
    assert len(s) == 0


def test_backoff_has_a_floor_for_tiny_settle_times() -> None:
    """With settle_ms 0 a failing file is still not retried in a hot loop."""
    assert Settler(0).backoff(1) == MIN_BACKOFF_NS


def test_forgotten_file_is_never_handed_out() -> None:
    """A file deleted or renamed away before it settled is dropped."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    s.forget("r", "a")
    assert s.due(SETTLE, disk.stat) == []
    assert not s.busy("r")


def test_file_forgotten_during_its_copy_is_dropped_even_on_retry() -> None:
    """A delete during the copy wins over a retry."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    (batch,) = s.due(SETTLE, disk.stat)
    s.forget("r", "a")
    s.done(batch, retry={"a"}, now=SETTLE)
    assert len(s) == 0 and not s.busy("r")


def test_forget_tree_drops_one_folder_only() -> None:
    """A folder deleted under output/ forgets its files, not its neighbours'."""
    s = Settler(SETTLE)
    for name in ("plots/a", "plots/sub/b", "plotsx", "c"):
        s.touch("r", name, 0, strong=True)
    s.forget_tree("r", "plots")
    assert sorted(n for _, n in s.files()) == ["c", "plotsx"]
    s.forget_tree("r", "")
    assert len(s) == 0


def test_forgetting_unknown_things_is_harmless() -> None:
    """Deletes for files or runs never tracked change nothing."""
    s = Settler(SETTLE)
    s.forget("r", "a")
    s.forget_tree("r", "x")
    s.touch("r", "b", 0)
    s.forget("r", "a")
    assert len(s) == 1


def test_context_change_is_a_chore_after_the_quiet_period() -> None:
    """run.json/attribution changes make one context refresh, settle_ns after the last one."""
    s, disk = Settler(SETTLE), Disk()
    for t in (0, 10 * MS, 20 * MS):
        s.context("r", t)
    assert s.due(SETTLE, disk.stat) == []
    assert s.due(20 * MS + SETTLE, disk.stat) == [Batch("r", (), context=True)]
    s.done(Batch("r", (), context=True), (), 20 * MS + SETTLE)
    assert not s.busy("r")


def test_context_rides_with_files_settling_at_the_same_time() -> None:
    """A file and its attribution line that settle together make one batch, one write."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    s.context("r", 0)
    assert s.due(SETTLE, disk.stat) == [Batch("r", ("a",), context=True)]


def test_failed_context_refresh_is_retried_with_backoff() -> None:
    """A chore that failed is scheduled again, not dropped and not hot-looped."""
    s, disk = Settler(SETTLE), Disk()
    s.context("r", 0)
    (batch,) = s.due(SETTLE, disk.stat)
    s.done(batch, (), SETTLE, retry_run=True)
    assert s.due(SETTLE, disk.stat) == []
    assert s.next_deadline() == SETTLE + s.backoff(1)
    assert s.due(SETTLE + s.backoff(1), disk.stat) == [Batch("r", (), context=True)]


def test_session_gone_forgets_files_and_completes_the_run_at_once() -> None:
    """A vanished session drops its pending files and asks for completion without waiting."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    s.context("r", 0)
    s.session_gone("r", 5)
    assert s.next_deadline() == 5
    assert s.due(5, disk.stat) == [Batch("r", (), completed=True)]
    assert s.busy("r")
    s.done(Batch("r", (), completed=True), (), 6)
    assert not s.busy("r")


def test_session_gone_waits_for_the_batch_in_flight() -> None:
    """Completion comes after the copy in flight, so the run's last files are in first."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    (batch,) = s.due(SETTLE, disk.stat)
    s.session_gone("r", SETTLE)
    assert s.due(SETTLE, disk.stat) == []
    s.done(batch, (), SETTLE + 1)
    assert s.due(SETTLE + 1, disk.stat) == [Batch("r", (), completed=True)]


def test_failed_completion_is_retried() -> None:
    """Marking a run completed that failed is tried again after a backoff."""
    s, disk = Settler(SETTLE), Disk()
    s.session_gone("r", 0)
    (batch,) = s.due(0, disk.stat)
    s.done(batch, (), 0, retry_run=True)
    assert s.due(1, disk.stat) == []
    assert s.due(s.backoff(1), disk.stat) == [Batch("r", (), completed=True)]


def test_flush_hands_out_closed_and_finished_files_only() -> None:
    """Shutdown promotes files closed after writing without waiting; open ones stay behind."""
    s = Settler(SETTLE)
    s.touch("r", "closed", 0, strong=True)
    s.touch("r", "writing", 0, strong=False)
    s.touch("q", "moved-in", 0, strong=True)
    s.context("q", 0)
    flushed = s.flush_closed()
    assert names(flushed) == {"r": ["closed"], "q": ["moved-in"]}
    assert [b.context for b in flushed if b.run_id == "q"] == [True]


def test_after_flush_nothing_new_is_decided() -> None:
    """Once draining, events are ignored, due() is empty and retries are dropped."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    (batch,) = s.flush_closed()
    s.touch("r", "b", 1, strong=True)
    s.context("r", 1)
    s.offer("r", "c", 1, quiet=True)
    s.session_gone("x", 1)
    assert s.due(10 * SETTLE, disk.stat) == []
    assert s.next_deadline() is None
    s.done(batch, retry={"a"}, now=2)
    assert len(s) == 0


def test_flush_includes_files_waiting_behind_a_batch_in_flight() -> None:
    """Finished files queued behind an in-flight batch are flushed in a batch of their own."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=True)
    s.due(SETTLE, disk.stat)
    s.touch("r", "b", 0, strong=True)
    s.due(SETTLE, disk.stat)
    assert names(s.flush_closed()) == {"r": ["b"]}


def test_flush_splits_into_bounded_batches() -> None:
    """A large flush respects max_batch as well."""
    s = Settler(SETTLE, max_batch=2)
    for i in range(5):
        s.touch("r", f"f{i}", 0, strong=True)
    assert [len(b.filenames) for b in s.flush_closed()] == [2, 2, 1]


def test_offer_of_a_quiet_file_is_due_at_once() -> None:
    """A catch-up find whose mtime is settle_ns old is promoted without another wait."""
    s, disk = Settler(SETTLE), Disk()
    s.offer("r", "old", 100 * MS, quiet=True)
    assert s.next_deadline() == 100 * MS
    assert names(s.due(100 * MS, disk.stat)) == {"r": ["old"]}
    assert disk.calls == 0


def test_offer_of_a_fresh_file_waits_like_a_written_one() -> None:
    """A catch-up find modified within settle_ns is watched until stable."""
    s, disk = Settler(SETTLE), Disk()
    disk.write("r", "new", 1, 1)
    s.offer("r", "new", 0, quiet=False)
    assert s.due(SETTLE, disk.stat) == []
    assert names(s.due(2 * SETTLE, disk.stat)) == {"r": ["new"]}


def test_offer_does_not_override_a_tracked_file() -> None:
    """A file already known from its events keeps its own state when a catch-up finds it."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("r", "a", 0, strong=False)
    s.offer("r", "a", 1, quiet=True)
    disk.write("r", "a", 1, 1)
    assert s.due(SETTLE, disk.stat) == []


def test_next_deadline_is_none_when_idle() -> None:
    """An idle tracker asks for no wake-up at all."""
    s, disk = Settler(SETTLE), Disk()
    assert s.next_deadline() is None
    s.touch("r", "a", 7, strong=True)
    assert s.next_deadline() == 7 + SETTLE
    (batch,) = s.due(7 + SETTLE, disk.stat)
    assert s.next_deadline() is None
    s.done(batch, (), 8 + SETTLE)
    assert s.next_deadline() is None and len(s) == 0


def test_next_deadline_skips_stale_entries() -> None:
    """A deadline pushed out by a later event is reported at its new time."""
    s = Settler(SETTLE)
    s.touch("r", "a", 0, strong=True)
    s.forget("r", "a")
    s.touch("r", "b", 30 * MS, strong=True)
    assert s.next_deadline() == 30 * MS + SETTLE


def test_busy_runs_cover_pending_and_in_flight() -> None:
    """The sweeper's busy test is true from the first event until the last batch is done."""
    s, disk = Settler(SETTLE), Disk()
    assert not s.busy("r")
    s.touch("r", "a", 0)
    s.context("q", 0)
    assert s.busy_runs() == frozenset({"r", "q"})
    disk.write("r", "a", 1, 1)
    batches = s.due(SETTLE, disk.stat) + s.due(2 * SETTLE, disk.stat)
    assert s.in_flight() == 2
    for b in batches:
        s.done(b, (), 2 * SETTLE)
    assert s.busy_runs() == frozenset()


def test_settle_time_can_change_at_reload() -> None:
    """A new settle_ns applies to events from then on."""
    s, disk = Settler(SETTLE), Disk()
    s.settle_ns = 500 * MS
    s.touch("r", "a", 0, strong=True)
    assert s.due(SETTLE, disk.stat) == []
    assert names(s.due(500 * MS, disk.stat)) == {"r": ["a"]}


def test_done_for_an_unknown_run_is_ignored() -> None:
    """A late result for a run no longer tracked changes nothing."""
    s = Settler(SETTLE)
    s.done(Batch("nope", ("a",)), retry={"a"}, now=0)
    assert len(s) == 0


ops = st.lists(st.tuples(
    st.sampled_from(["touch", "close", "forget", "context", "tick", "finish", "retry"]),
    st.sampled_from(["r1", "r2"]),
    st.sampled_from(["a", "b", "c/d"]),
    st.integers(min_value=0, max_value=3 * SETTLE),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_every_closed_file_is_copied_after_its_last_event(script: list) -> None:  # type: ignore[type-arg]
    """Whatever the interleaving (and whatever room the shell has): no run has two batches
    in flight, each file whose last event was a close ends up in a batch handed out after
    that event, and a run's list of finished files is exactly its READY files."""
    s, disk = Settler(SETTLE, max_batch=2), Disk()
    now = 0
    in_flight: dict[str, Batch] = {}
    last_event: dict[tuple[str, str], tuple[int, bool]] = {}
    copied_at: dict[tuple[str, str], int] = {}

    def take(batches: list[Batch]) -> None:
        for b in batches:
            assert b.run_id not in in_flight, "two batches in flight for one run"
            in_flight[b.run_id] = b
            for name in b.filenames:
                copied_at[(b.run_id, name)] = now

    for op, run, name, dt in script:
        if op in ("touch", "close"):
            s.touch(run, name, now, strong=op == "close")
            disk.write(run, name, now, now)
            last_event[(run, name)] = (now, op == "close")
        elif op == "forget":
            s.forget(run, name)
            last_event.pop((run, name), None)
        elif op == "context":
            s.context(run, now)
        elif op == "tick":
            now += dt
            take(s.due(now, disk.stat, Room(dt % 2, dt // 2 % 2, 1)))  # some room, or none
        elif in_flight:
            b = in_flight.pop(sorted(in_flight)[0])
            s.done(b, retry=set(b.filenames) if op == "retry" else (), now=now)
            take(s.due(now, disk.stat))
        for r in s._runs.values():
            assert set(r.ready) == {n for n, f in r.files.items() if f.phase is Phase.READY}
    for _ in range(200):  # let everything settle and finish
        for b in list(in_flight.values()):
            in_flight.pop(b.run_id)
            s.done(b, retry=(), now=now)
        now += SETTLE
        take(s.due(now, disk.stat))
        if not in_flight and len(s) == 0:
            break
    assert len(s) == 0 and not in_flight
    for key, (t, _) in last_event.items():
        assert copied_at.get(key, -1) >= t, f"{key} changed at {t}, copied {copied_at.get(key)}"


def test_unclosed_names_pending_files_and_whether_they_are_known_open() -> None:
    """A file last reported written (and not closed) is known open; one only reported
    created, or found by a catch-up, may be closed: the shell looks at those twice."""
    s = Settler(SETTLE)
    s.touch("r", "closed", 0, strong=True)
    s.touch("r", "writing", 0, strong=False)
    s.touch("r", "created", 0, strong=False, open_unknown=True)
    s.offer("q", "found", 0, quiet=False)
    assert sorted(s.unclosed()) == [("q", "found", False), ("r", "created", False),
                                    ("r", "writing", True)]


def test_flush_takes_the_steady_files_the_shell_names() -> None:
    """At shutdown a file with no close seen goes with the closed ones when named steady;
    the others stay behind for the next start."""
    s = Settler(SETTLE)
    s.touch("r", "closed", 0, strong=True)
    s.touch("r", "steady", 0, strong=False, open_unknown=True)
    s.touch("r", "growing", 0, strong=False, open_unknown=True)
    assert names(s.flush_closed(steady={("r", "steady")})) == {"r": ["closed", "steady"]}


def test_a_batch_beyond_the_room_is_not_made_and_its_files_gather() -> None:
    """`due(room=...)`: a batch the shell has no room for is not made; its run's files stay
    ready, the tracker does not ask to be woken at once (no spin), and the next `due` makes
    one batch of everything finished meanwhile, the runs that waited longest first."""
    s, disk = Settler(SETTLE), Disk()
    s.touch("old", "a", 0, strong=True)
    s.touch("new", "b", 1, strong=True)
    assert s.due(SETTLE + 1, disk.stat, Room(0)) == []
    assert s.next_deadline() is None  # nothing to decide until the shell has room
    s.touch("old", "c", 2 * SETTLE, strong=True)
    assert s.due(3 * SETTLE, disk.stat, Room(0)) == []
    assert names(s.due(3 * SETTLE, disk.stat, Room(1))) == {"old": ["a", "c"]}
    assert s.next_deadline() is None  # "new" still waits for room, without a spin
    assert names(s.due(3 * SETTLE, disk.stat, Room(1))) == {"new": ["b"]}
    assert len(s) == 3 and s.in_flight() == 2


def test_the_small_room_takes_the_oldest_small_batch_after_the_workers_batches() -> None:
    """With no worker free, the lane's one small batch goes to the oldest ready run that
    fits it (a run with more files than its limit never takes it), and the workers'
    batches come first in the list: the pipeline hands them out in that order."""
    s, disk = Settler(SETTLE), Disk()
    for i in range(40):
        s.touch("busy", f"f{i}", 0, strong=True)
    for i in range(5):
        s.touch("leftovers", f"g{i}", 1, strong=True)
    s.touch("lone", "x", 2, strong=True)
    s.touch("lone-2", "y", 3, strong=True)
    assert s.due(SETTLE + 3, disk.stat, Room(0, 0, 16)) == []
    assert [(b.run_id, len(b.filenames)) for b in s.due(SETTLE + 3, disk.stat, Room(0, 1, 16))
            ] == [("leftovers", 5)]
    assert [b.run_id for b in s.due(SETTLE + 3, disk.stat, Room(1, 1, 16))] == ["busy", "lone"]
    assert s.in_flight() == 3 and s.next_deadline() is None  # "lone-2" waits for room


def test_a_ready_file_written_again_or_deleted_leaves_its_run_s_next_batch() -> None:
    """The settler's per-run list of finished files follows every file: one written again
    after it finished waits out its quiet period again, one deleted is never batched."""
    s, disk = Settler(SETTLE), Disk()
    for name in ("a", "b", "c"):
        s.touch("r", name, 0, strong=True)
    assert s.due(SETTLE, disk.stat, Room(0)) == []  # all three finished, kept back
    s.touch("r", "b", SETTLE)  # written again: open
    s.forget("r", "c")
    assert names(s.due(SETTLE, disk.stat, Room(1))) == {"r": ["a"]}
    s.touch("r", "b", SETTLE + 1, strong=True)
    s.done(Batch("r", ("a",)), (), SETTLE + 2)
    assert names(s.due(2 * SETTLE + 1, disk.stat, Room(1))) == {"r": ["b"]}
    s.done(Batch("r", ("b",)), (), 2 * SETTLE + 2)
    assert len(s) == 0 and s.next_deadline() is None

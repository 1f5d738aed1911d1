"""Faults against the real `promoter run` (DESIGN §5, §6): files that vanish, grow or lose
their session mid-promotion, `kill -9` mid-burst, a full disk, a real inotify overflow and
watch limit, a worker that raises or is stuck, and command-line processes writing the same
run's metadata as the daemon.

Each case ends with `Arena.check` (tests/fault_helpers.py): nothing read or written outside
the store, nothing finished lost, every metadata.json valid, and a canary still promoted.
Where watchdog's own silent failures are injected instead (a raising handler, a dead
dispatcher, an overflow and a failed watch, tests/fault_site/watch_faults.py), see the tests at
the end of tests/test_daemon.py; these cases make the kernel fail for real.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promoter.metadata import RunMetadata
from tests.daemon_helpers import (
    Daemon,
    NotifySocket,
    base_config,
    copy_under_way,
    wait_until,
    write,
)
from tests.fault_helpers import (
    Arena,
    arena_at,
    hold_run_lock,
    hook_env,
    in_thread,
    is_root,
    remount,
    remove_tree,
    sha,
    snapshot,
    tmpfs,
    wait_blocked,
)


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[Arena]:
    """A test's own arena (a tmpfs with the access monitor, as root)."""
    with arena_at(tmp_path) as a:
        yield a


def queue_empty(metrics: Path) -> bool:
    """The daemon's metrics file says no file is waiting or in flight."""
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return False
    return re.search(r"^promoter_queue_files 0(\.0)?$", text, re.M) is not None


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".promoter-*")] if folder.exists() else []


# -- a module daemon for the files that misbehave -----------------------------------------


@pytest.fixture(scope="module")
def marena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """The module's arena."""
    with arena_at(tmp_path_factory.mktemp("faults")) as a:
        yield a


@pytest.fixture(scope="module")
def md(marena: Arena) -> Iterator[Daemon]:
    """A daemon at debug level (artifact.changed is a debug line) with a fast metrics file."""
    metrics = marena.root.parent / "promoter.prom"
    d = marena.start(base_config(log={"level": "debug"},
                                 metrics={"textfile": str(metrics), "interval_s": 0.05}))
    d.metrics_path = metrics  # type: ignore[attr-defined]
    yield d
    assert d.stop() == 0


def settled(d: Daemon) -> None:
    """Until the daemon has nothing pending (its queue gauge is 0)."""
    wait_until(lambda: queue_empty(d.metrics_path), what="an empty queue")  # type: ignore[attr-defined]


def test_a_file_deleted_before_its_copy_is_logged_lost(marena: Arena, md: Daemon) -> None:
    """A file deleted after its event but before its copy is logged artifact.lost, with no entry."""
    # A file deleted after its event, while its worker waits for the run's lock, is logged as
    # artifact.lost with a reason and gets no entry; the run's other files are kept.
    out = marena.out("lost-1")
    write(out / "keep.txt", "keep")
    md.wait_entry("lost-1", "keep.txt")
    with hold_run_lock(marena.artifacts, "lost-1") as lock:
        write(out / "gone.txt", "gone")
        wait_blocked(lock, md.proc.pid)
        (out / "gone.txt").unlink()
    line = md.wait_log("artifact.lost", run_id="lost-1", filename="gone.txt")
    assert line["reason"] and line["level"] == "warning"
    assert md.entry("lost-1", "gone.txt") is None and md.entry("lost-1", "keep.txt")
    marena.check(md)


def test_a_file_growing_during_its_copy_is_stored_whole(marena: Arena, md: Daemon) -> None:
    """A file appended to during its copy is stored whole once quiet, the only version promoted."""
    # A 48 MiB file appended to while the daemon copies it: the copy is discarded
    # (artifact.changed), and once quiet the complete file is stored, the only version ever
    # promoted. The run's first copy failing this way is no corruption: no metadata.recovered, and
    # run.created once.
    files = marena.artifacts / "grow-1" / "files"
    out = marena.out("grow-1")
    for attempt in range(3):  # the append must land during the copy; a lost race goes again
        name = f"g{attempt}.bin"
        first, tail = os.urandom(1 << 20) * 48, os.urandom(4096)
        write(out / name, first)
        wait_until(lambda: copy_under_way(md.proc.pid, files), timeout=10, interval=0.001,
                   what="the copy to start")
        with (out / name).open("ab") as fh:
            fh.write(tail)
        md.wait_entry("grow-1", name, timeout=15,
                      check=lambda e: e["sha256"] == sha(first + tail))  # noqa: B023
        if md.events("artifact.changed", run_id="grow-1", filename=name):
            break
    else:
        pytest.fail("the append never landed during a copy")
    promoted = md.events("artifact.promoted", run_id="grow-1", filename=name)
    assert [p["sha256"] for p in promoted] == [sha(first + tail)]
    assert (files / name).read_bytes() == first + tail
    assert md.events("metadata.recovered", run_id="grow-1") == []
    assert len(md.events("run.created", run_id="grow-1")) == 1
    marena.check(md)


def test_a_session_deleted_while_its_files_settle(marena: Arena, md: Daemon) -> None:
    """A session removed while its files settle: no error; the run never created, or completed."""
    # A session folder removed while its files are still settling: no crash, no error, no
    # traceback; the run is either never created or completed, and what it lists is whole.
    out = marena.out("vanish-1")
    data = {f"f{i:02d}.txt": os.urandom(2000) for i in range(30)}
    for name, body in data.items():
        write(out / name, body)
    shutil.rmtree(marena.sessions / "vanish-1")
    marena.canary(md)  # its events come after vanish-1's: the settle thread has seen them all
    settled(md)
    meta = md.meta("vanish-1")
    if meta is not None:
        wait_until(lambda: (md.meta("vanish-1") or {}).get("status") == "completed",
                   what="the run completed")
        meta = md.meta("vanish-1")
        assert meta is not None
        for a in meta["artifacts"]:
            assert a["sha256"] == sha(data[a["filename"]])
    marena.check(md)


def test_a_session_deleted_while_its_batch_waits(marena: Arena, md: Daemon) -> None:
    """A session removed while its batch waits for the lock: files lost, no run, no error."""
    # The session removed while a worker holds its batch (waiting for the run's lock): every file
    # is logged lost, the run is never created, and nothing fails.
    out = marena.out("vanish-2")
    with hold_run_lock(marena.artifacts, "vanish-2") as lock:
        for i in range(5):
            write(out / f"f{i}.txt", str(i))
        wait_blocked(lock, md.proc.pid)
        shutil.rmtree(marena.sessions / "vanish-2")
    wait_until(lambda: md.events("artifact.lost", run_id="vanish-2"), what="lost files")
    settled(md)
    assert md.meta("vanish-2") is None and md.events("run.created", run_id="vanish-2") == []
    marena.check(md)


# -- kill -9 -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_file_planted_as_the_lock_folder_is_one_plain_line_then_retried(
        marena: Arena, md: Daemon) -> None:
    """`.locks` replaced by a file while the daemon runs: the store is unusable, said in one
    line naming it (before: worker.error with a traceback), and the file is promoted once
    the folder is back (the retries go on)."""
    locks, saved = marena.artifacts / ".locks", marena.artifacts / "locks-saved"
    locks.rename(saved)
    locks.write_text("planted")
    try:
        write(marena.out("planted-locks") / "a.txt", "a")
        line = md.wait_log("artifact.failed", run_id="planted-locks")
        assert str(locks) in line["reason"] and "exception" not in line
    finally:
        locks.unlink()
        saved.rename(locks)
    md.wait_entry("planted-locks", "a.txt", timeout=40)
    assert not md.events("worker.error", run_id="planted-locks")
    marena.check(md, allow_errors=["artifact.failed"])


def test_kill_9_mid_burst_then_restart_loses_nothing(arena: Arena) -> None:
    """kill -9 at random moments of four bursts, then a clean start: nothing lost, no temporary."""
    # Four rounds of 300 files over three runs each, the daemon killed with SIGKILL at a random
    # moment of every burst (in odd rounds, while it starts: repairing and catching up the last
    # round's leftovers), then a clean start: once READY no temporary is visible and every stored
    # copy is listed; then every file is promoted once with its digest, and the store passes every
    # check.
    seed = random.randrange(1 << 30)  # noqa: S311 - a schedule, printed to reproduce it
    rng = random.Random(seed)  # noqa: S311
    print(f"kill schedule seed {seed}")  # shown with a failure
    for round_ in range(4):
        d = arena.start(ready=round_ % 2 == 0)
        if round_ % 2:  # killed during its start-up: repair and catch-up of the last round
            d.wait_log("daemon.starting")
        delay = rng.uniform(0.02, 0.4)
        fired = threading.Event()

        def kill(d: Daemon = d, delay: float = delay, fired: threading.Event = fired) -> None:
            if not fired.wait(delay):
                d.proc.kill()
        killer = in_thread(kill, "fault-killer")
        for i in range(300):
            size = rng.choice((0, 100, 4096, 70_000))
            write(arena.out(f"kill-{round_}-{i % 3}") / f"f{i:03d}.bin", os.urandom(size))
        killer.join(5)
        fired.set()
        d.proc.kill()
        assert d.proc.wait(10) == -signal.SIGKILL, f"seed {seed}"
        d.close()
    d = arena.start()
    assert temps(arena.artifacts) == [], f"seed {seed}"
    arena.check_store()
    arena.check(d)
    for line in d.logs():
        assert line["event"] != "metadata.recovered" or line["reason"] in (
            "repair after restart", "metadata.json missing"), line
    assert d.stop() == 0


# -- a full disk -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not is_root(), reason="mounting a small tmpfs needs root")
def test_a_full_disk_leaves_no_partial_file_and_is_retried(arena: Arena) -> None:
    """A full disk leaves no partial file; the daemon's retry promotes all once space returns."""
    # artifacts/ on a 2 MiB tmpfs and 3.2 MB of files: artifact.failed ("No space left"), no
    # partial file visible (every visible copy is whole), metadata valid. Once the tmpfs grows,
    # the daemon's own retry (backoff, no catch-up, no new event) promotes them all.
    with tmpfs(arena.artifacts, "2m"):
        d = arena.start()
        out = arena.out("full-1")
        data = {f"f{i}.bin": os.urandom(400_000) for i in range(8)}
        for name, body in data.items():
            write(out / name, body)
        line = d.wait_log("artifact.failed", run_id="full-1")
        assert "No space left" in line["reason"]
        files = arena.artifacts / "full-1" / "files"
        for path in files.iterdir() if files.exists() else []:
            if not path.name.startswith(".promoter-"):
                assert path.read_bytes() == data[path.name], f"partial {path.name}"
        meta = arena.artifacts / "full-1" / "metadata.json"
        if meta.exists():
            RunMetadata.model_validate_json(meta.read_bytes())
        remount(arena.artifacts, "64m")
        arena.wait_promoted({("full-1", n): sha(b) for n, b in data.items()})
        scans = [e for e in d.events("reconcile.finished") if e["trigger"] != "startup"]
        assert scans == []
        arena.check(d, allow_errors={"artifact.failed"})
        assert d.stop() == 0


# -- inotify's limits, for real ----------------------------------------------------------


@pytest.mark.slow
def test_a_real_inotify_queue_overflow_is_caught_up(arena: Arena) -> None:
    """A real inotify queue overflow (the daemon SIGSTOPped) is logged and caught up."""
    # The daemon stopped (SIGSTOP) while more events than fs.inotify.max_queued_events happen, so
    # the kernel's queue really overflows; once resumed it logs watch.overflow and a catch-up
    # promotes every file whose events were dropped. No limit is changed.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make")
    d = arena.start()
    out = arena.out("ovf-1")
    write(out / "first.txt", "watched")
    d.wait_entry("ovf-1", "first.txt")
    d.send(signal.SIGSTOP)
    try:
        with (out / "noise-a.log").open("wb") as a, (out / "noise-b.log").open("wb") as b:
            for _ in range(limit // 2 + 1000):  # alternate: inotify merges repeats of one
                a.write(b"a")
                a.flush()
                b.write(b"b")
                b.flush()
        for i in range(100):
            write(out / "late" / f"l{i:03d}.txt", f"late {i}")
    finally:
        d.send(signal.SIGCONT)
    d.wait_log("watch.overflow", timeout=20)
    arena.check(d)
    assert d.stop() == 0


@pytest.mark.slow
@pytest.mark.skipif(not is_root(), reason="a user namespace of its own with a watch limit")
def test_a_real_watch_limit_is_caught_up(arena: Arena) -> None:
    """A real inotify watch limit (in a user namespace of its own) is logged and caught up."""
    # The daemon in a user namespace of its own whose inotify watch limit is 3 (sessions/, one
    # run, its output/): the kernel refuses the next watches with ENOSPC, each is logged as
    # watch.error naming the limit, and catch-ups of the runs concerned (at once, then every few
    # seconds while the run has no watch) promote every file, later ones too.
    d = arena.start(env=hook_env(userns_watches=3))
    write(arena.out("lim-1") / "a.txt", "a")
    d.wait_entry("lim-1", "a.txt")
    write(arena.out("lim-1") / "deep" / "b.txt", "b")
    write(arena.out("lim-2") / "c.txt", "c")
    line = d.wait_log("watch.error", source="add_watch")
    assert "limit" in line["reason"] and line["hint"], line
    d.wait_entry("lim-2", "c.txt")  # the catch-up the failed watch asked for
    write(arena.out("lim-2") / "later.txt", "later")  # no watch: a degraded rescan finds it
    d.wait_entry("lim-2", "later.txt", timeout=15)
    arena.check(d, allow_errors={"watch.error"})
    assert d.stop() == 0


# -- workers -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_that_raises_holds_back_nothing_else(arena: Arena) -> None:
    """A worker raising on one file holds back neither its batch-mates nor the daemon."""
    # Store.promote_files raising for one file (injected through tests/fault_site) in a batch of
    # four: logged as worker.error and retried alone, while its batch-mates and other runs are
    # promoted, the daemon goes on, and the systemd watchdog keeps being pinged.
    env = {**hook_env(worker_raise="poison"), "WATCHDOG_USEC": "200000"}
    d = arena.start(env=env)
    names = ("a.txt", "poison.txt", "b.txt", "c.txt")
    for attempt in range(3):  # the four must meet in one batch; a split goes again
        run = f"raise-{attempt}"
        with hold_run_lock(arena.artifacts, run) as lock:
            write(arena.out(run) / "blocker.txt", "b")
            wait_blocked(lock, d.proc.pid)  # the run has a batch in flight: the next waits
            for name in names:
                write(arena.out(run) / name, name)
            written = time.monotonic()  # finished after settle_ms: give them five
            wait_until(lambda: time.monotonic() - written > 0.25, what="a quiet period")  # noqa: B023
        line = d.wait_log("worker.error", run_id=run)
        if line["files"] > 1:
            break
    else:
        pytest.fail("the poisoned file never shared a batch")
    assert "injected" in line["reason"]
    for name in names:
        if name != "poison.txt":
            d.wait_entry(run, name)
    d.wait_log("worker.error", run_id=run, filename="poison.txt")
    mark = len(d.notify.messages)
    d.notify.wait_for("WATCHDOG=1", after=mark)
    owed = {k: v for k, v in arena.finished_files().items() if k[1] != "poison.txt"}
    arena.check(d, owed, allow_errors={"worker.error"}, tracebacks=True)
    assert d.entry(run, "poison.txt") is None
    assert d.stop() == 0


def no_message(notify: NotifySocket, text: str, after: int, window: float) -> bool:
    """True when no notify message from `after` on holds `text` during `window` seconds."""
    try:
        notify.wait_for(text, timeout=window, after=after)
    except AssertionError:
        return True
    return False


@pytest.mark.slow
def test_a_stuck_pipeline_stops_the_watchdog_pings(arena: Arena) -> None:
    """A worker stuck on a run's lock stops the WATCHDOG=1 pings until it is released, while
    another run's lone file still goes by the lane."""
    # A worker blocked on a run's lock held by another process (one worker, the stall bound set to
    # 1 s through tests/fault_site): daemon.unhealthy, STATUS=unhealthy, and WATCHDOG=1 stops, so
    # systemd would restart it, even though the lane promotes other runs' small batches meanwhile
    # (probe-15 finding 5). Released, the files arrive and the pings resume.
    env = {**hook_env(stall_s=1), "WATCHDOG_USEC": "200000"}
    d = arena.start(base_config(promote={"workers": 1}), env=env)
    d.notify.wait_for("WATCHDOG=1")
    with hold_run_lock(arena.artifacts, "stuck-1") as lock:
        write(arena.out("stuck-1") / "a.txt", "a")
        wait_blocked(lock, d.proc.pid)
        write(arena.out("other-1") / "b.txt", "b")
        # read the pings meanwhile: a full notify socket (10 datagrams) drops the STATUS line
        status = d.notify.wait_for("STATUS=unhealthy")
        line = d.wait_log("daemon.unhealthy", timeout=10)
        assert "promoter-worker-1 has finished no chunk" in line["reason"]
        assert no_message(d.notify, "WATCHDOG=1", status + 1, 1.0)  # 5 ping periods
        d.wait_entry("other-1", "b.txt")  # by the lane, past the stuck worker
        assert d.entry("stuck-1", "a.txt") is None
    d.wait_entry("stuck-1", "a.txt")
    d.notify.wait_for("WATCHDOG=1", after=status + 1)
    arena.check(d, allow_errors={"daemon.unhealthy"})
    assert d.stop() == 0


# -- the command line and the daemon on one run ------------------------------------------

CLI_LOOP = """
import sys
from promoter.cli import main
config, root, run, what = sys.argv[1:5]
common = ["--config", config, "--root", root]
if what == "keep":
    for i in range(int(sys.argv[5])):
        off = ["--off"] if i % 2 else []
        assert main(["keep", run, *common, *off]) == 0
else:
    for name in sys.argv[5:]:
        assert main(["rm", run, name, *common]) == 0
"""


@pytest.mark.slow
def test_cli_processes_and_the_daemon_write_one_run_at_once(arena: Arena) -> None:
    """keep, keep --off and rm in two processes beside the daemon lose no update of one run."""
    # `keep`/`keep --off` in a loop and `rm RUN FILE` in another process while the daemon promotes
    # new files into the same run: no lost update (every promoted file listed, the removed ones
    # out and in `removed`, keep as the last command left it), and a reader parsing metadata.json
    # in a loop never sees it broken.
    d = arena.start()
    out = arena.out("conc-1")
    doomed = [f"pre{i}.txt" for i in range(10)]
    for name in doomed:
        write(out / name, name)
    for name in doomed:
        d.wait_entry("conc-1", name)
    stop = threading.Event()
    seen: dict[str, Any] = {"reads": 0, "broken": [], "written": 0}

    def writer() -> None:
        while not stop.wait(0.01):
            write(out / f"new{seen['written']:04d}.txt", f"new {seen['written']}")
            seen["written"] += 1

    def reader() -> None:
        path = arena.artifacts / "conc-1" / "metadata.json"
        while not stop.is_set():
            raw = path.read_bytes()
            try:
                RunMetadata.model_validate_json(raw)
            except ValueError as exc:
                seen["broken"].append(str(exc)[:200])
            seen["reads"] += 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}
    procs = [subprocess.Popen([sys.executable, "-c", CLI_LOOP, str(d.cfgfile), str(arena.root),
                               "conc-1", *args], env=env, stderr=subprocess.PIPE)
             for args in (["keep", "41"], ["rm", *doomed])]
    arena.pids.update(p.pid for p in procs)
    # the threads start after the fork: a child forked while the writer held a session file
    # open closes that copy of it at exec, which the monitor reports as the child's write
    threads = [in_thread(writer, "fault-writer"), in_thread(reader, "fault-reader")]
    try:
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()[-2000:]
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert seen["broken"] == [] and seen["reads"] > 10 and seen["written"] > 20, seen
    meta = RunMetadata.model_validate_json((arena.artifacts / "conc-1" / "metadata.json")
                                           .read_bytes())
    assert meta.keep is True  # i = 40, the last of 41, is even: `keep` without --off
    assert {r.filename for r in meta.removed} == set(doomed)
    owed = {k: v for k, v in arena.finished_files().items() if k[1] not in doomed}
    arena.check(d, owed)
    assert not any(meta.entry(n) for n in doomed)
    assert d.stop() == 0


# -- the harness itself ------------------------------------------------------------------


@pytest.mark.skipif(not is_root(), reason="the access monitor needs root (fanotify)")
def test_the_access_monitor_catches_a_trespasser(arena: Arena) -> None:
    """The access monitor and the secrets snapshot catch a process that trespasses."""
    # The checks above are not vacuous: a process held to the rules that reads the secret through
    # a hard link elsewhere, or writes beside sessions/, moves the secret's access time and is
    # caught by the monitor.
    (arena.root / "elsewhere").mkdir()
    os.link(arena.secrets / "secret.txt", arena.root / "elsewhere" / "alias")
    script = (f"open({str(arena.root / 'elsewhere' / 'alias')!r}, 'rb').read(); "
              f"open({str(arena.sessions / 'planted')!r}, 'w').write('x')")
    subprocess.run([sys.executable, "-c", script], check=True)
    assert arena.monitor is not None
    arena.monitor.settle()
    theirs = [a for a in arena.monitor.accesses if a.path.endswith(("alias", "planted"))]
    assert theirs and all(a.pid != os.getpid() for a in theirs)
    arena.pids.update(a.pid for a in theirs)
    with pytest.raises(AssertionError, match="secrets/ changed or was read"):
        arena.check_contained()
    arena.baseline = snapshot(arena.secrets)  # past the access time: to the monitor's verdict
    with pytest.raises(AssertionError) as caught:
        arena.check_contained()
    assert "a secret's inode" in str(caught.value) and "planted" in str(caught.value)


def test_a_deep_tree_at_start_up_keeps_watching_and_pinging(arena: Arena) -> None:
    """A run with 1,200 nested folders present at start: the daemon starts watching (inotify,
    not a fallback), refuses that folder for its run alone, and keeps sending WATCHDOG=1."""
    out = arena.out("deep-start")
    write(out / "top.txt", "top")
    subprocess.run(["mkdir", "-p", str(out / "/".join(["d"] * 1200))], check=True)
    try:
        d = arena.start(env={"WATCHDOG_USEC": "200000"})
        started = d.wait_log("watch.started")
        assert started["observer"] == "inotify"
        mark = d.notify.wait_for("WATCHDOG=1")
        d.wait_log("artifact.rejected", run_id="deep-start", filename="d/" * 65)
        d.wait_entry("deep-start", "top.txt")
        arena.check(d)
        d.notify.wait_for("WATCHDOG=1", after=mark + 1)
        assert not d.events("watch.error")
        assert d.stop() == 0
    finally:
        remove_tree(arena.sessions / "deep-start")

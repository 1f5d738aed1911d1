"""The start-up catch-up's scan of `sessions/`, made by a second process (issue 15).

At start the daemon parses every run's metadata.json (the start-up repair) and
then `lstat`s every session file (the catch-up): both are CPU-bound, and on one
thread they took one core while the other stayed idle. A thread could not share
them (each `lstat` hands the GIL to the parser and waits to get it back: slower
than serial, round 5), so the scan runs in a child made by `fork`. The child only
lists and `lstat`s, through the same walk as the in-process scan
(`scan.run_stats`), and sends back through a pipe, in `marshal` form, per run:
name: (size, µs of the mtime) and name: µs from the mtime to the ctime of every
file (the same key objects: marshal writes each name once), and the refusals,
which the daemon logs itself.

The child is made as soon as the configuration is read (`promoter run`, before the
daemon's own imports, round 8), so its listing runs beside those imports, the
watch walk and the repair rather than after the watch walk. DESIGN §5 wants a
folder listed only after its watch exists (a file written after the listing is an
event, never a miss); the daemon's watches do not exist yet, so the child watches
for itself: an inotify instance of its own, a watch on `sessions/`, on each run
folder and on each folder of its `output/` added before that folder is listed.
Once the daemon's watches are all set it says so (`go()`); the child then reads
what its own watches saw meanwhile and leaves out every run with any event (a
file written, touched, made, moved or removed, a folder made), as it leaves out a
run whose walk failed: those the daemon scans itself, after its watches. On an
overflow of the child's queue every run is left out. So what the listing says of
a run is true from its listing until the daemon's watches took over.

The comparison with the store stays in the daemon (`reconcile.find_pending`): a run
whose every file is a copy the store holds as it is needs nothing more; any other run
is scanned again there, so what is judged (settled, to promote) is the file as it is
then, never the listing.

A child that cannot be made, fails, or sends something unreadable costs nothing
but the time: its runs are scanned in-process as before (`reconcile.prescan_failed`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import marshal
import os
import resource
import select
import signal
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from promoter import events
from promoter.listwatch import TOP, ListWatch, NoWatch, libc
from promoter.logs import get_logger
from promoter.names import is_valid_run_id
from promoter.safeio import folder, open_dir_chain
from promoter.scan import Listing, run_stats
from promoter.walk import exclusion_match
from promoter.watchshare import ChildShare

if TYPE_CHECKING:
    from promoter.config import Config
    from promoter.watch import Watcher

__all__ = ["Prescan", "early", "start_watching", "watches_set"]

log = get_logger()
LOOK_MS = 100  # how soon a stop is seen while the child works
STALL_S = 10.0  # a child whose CPU time stands still this long is given up (SIGSTOP, ...)
PR_SET_PDEATHSIG = 1
CHILD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FOLDER = struct.Struct("QQ")  # a folder's device and inode, as go() tells them


class Prescan:
    """The child scanning `sessions/`, and the pipe its listing comes through."""

    def __init__(self, pid: int, fd: int, go: int | None = None,
                 sessions: Path | None = None) -> None:
        self.pid = pid
        self._sessions = sessions
        self._fd: int | None = fd
        self._go = go  # the pipe's end that tells the child the daemon's watches are set
        self._reaped = False
        # called once the child is gone (its watches freed): the runs to take out of its
        # listing (None: every run), the daemon's watches put off for the child's (F1)
        self.ended: Callable[[], frozenset[str] | None] | None = None
        self.rewatched: frozenset[str] | None = frozenset()

    @classmethod
    def start(cls, sessions: Path, exclude: Iterable[str], max_depth: int,
              watching: bool = True) -> Prescan | None:
        """Fork the child (its listing starts at once, under its own watches unless the
        daemon's are set already: `watching`); None when it cannot be made, or on one CPU,
        where it could only take turns with the daemon. Its listing comes once `go()` has
        said the daemon's watches are set."""
        if len(os.sched_getaffinity(0)) < 2:
            return None
        patterns = tuple(exclude)
        exclusion_match(patterns)  # compiled once, here: the child finds it made
        libc()  # (likewise)
        try:
            r, w = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            _failed(f"pipe: {exc.strerror}")
            return None
        try:
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            os.close(r)
            os.close(w)
            _failed(f"pipe: {exc.strerror}")
            return None
        parent = os.getpid()
        # no signal handler of the daemon's (entry.py's early one) may run in the child
        # between the fork and its own dispositions: held until then, on both sides
        held = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
        try:
            with warnings.catch_warnings():  # 3.12 warns of a fork beside threads: the
                warnings.simplefilter("ignore", DeprecationWarning)  # child only lists
                pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            for fd in (r, w, go_r, go_w):
                os.close(fd)
            _failed(f"fork: {exc.strerror}")
            return None
        if pid == 0:
            _child(r, w, go_r, str(sessions), patterns, max_depth, parent, held, watching)
        os.close(w)
        os.close(go_r)
        made = cls(pid, r, go_w, sessions)
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        except BaseException:  # entry.py's early stop, held across the fork: the child too
            made.discard()
            raise
        return made

    @property
    def alive(self) -> bool:
        """Not discarded (killed, or ended and reaped) yet."""
        return not self._reaped

    def go(self) -> None:
        """The daemon's watches are all set: the child may end its own and send. With it,
        which folder `sessions/` is now (device, inode): when it is not the one the child
        listed (replaced meanwhile), the child leaves every run to the daemon."""
        if self._go is not None:
            try:
                st = os.stat(self._sessions) if self._sessions is not None else None
            except OSError:
                st = None
            with contextlib.suppress(OSError):  # a child gone already: collect() says so
                os.write(self._go, b"g" + FOLDER.pack(st.st_dev, st.st_ino) if st else b"g")
            os.close(self._go)
            self._go = None

    def collect(self, stop: threading.Event) -> Listing | None:
        """The listing, once the child has ended; None when it failed (logged: the catch-up
        scans in-process) or when `stop` was set meanwhile (the child is killed)."""
        assert self._fd is not None
        self.go()  # (the caller's watches are set by now whatever it said)
        chunks = []
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        cpu, moved = _cpu_ticks(self.pid), time.monotonic()
        try:
            while True:
                if stop.is_set():
                    return None
                if not poller.poll(LOOK_MS):
                    if (now_cpu := _cpu_ticks(self.pid)) != cpu:
                        cpu, moved = now_cpu, time.monotonic()
                    elif time.monotonic() - moved > STALL_S:  # stopped, or stuck: the
                        _failed(f"the scanning process made no progress for {STALL_S:.0f} s")
                        return None  # daemon scans itself (the child is killed below)
                    continue
                chunk = os.read(self._fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            if stop.is_set():
                return None  # (a stop of the whole group ended the child too: no failure)
            _, status = os.waitpid(self.pid, 0)
            self._reaped = True
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                _failed(f"the scanning process ended with status {code}")
                return None
            data = marshal.loads(b"".join(chunks))  # noqa: S302 (our own child's, our pipe)
        except (OSError, ValueError, EOFError, TypeError) as exc:
            _failed(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.discard()
        if not (isinstance(data, tuple) and len(data) == 4 and isinstance(data[0], dict)
                and isinstance(data[1], list) and isinstance(data[2], dict)
                and isinstance(data[3], dict)):
            _failed("unreadable listing")
            return None
        runs, refusals, changed, ctimes = data
        again = set(runs) if self.rewatched is None else self.rewatched & runs.keys()
        for run_id in again:  # watched only now: what changed meanwhile, the daemon sees
            runs.pop(run_id)
            changed.pop(run_id, None)
            ctimes.pop(run_id, None)
        if again:
            refusals = [one for one in refusals if one[1] in runs]
        return Listing(runs, refusals, changed, ctimes)

    def discard(self) -> None:
        """Close the pipes; a child still running is killed. Always reaped: no zombie."""
        if self._go is not None:
            os.close(self._go)
            self._go = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self._reaped = True
        ended, self.ended = self.ended, None
        if ended is not None:
            self.rewatched = ended()


def early(config: Config) -> Prescan | None:
    """`promoter run`'s child, made as soon as the configuration is read, before the daemon's
    own imports (round 8). None with the polling observer (no watches to wait for) or when
    `sessions/` is not there yet (a first start makes it): then the daemon makes its child
    once its watches are set, as it always did."""
    storage, watch = config.storage, config.watch
    if watch.observer == "polling" or not storage.sessions_dir.is_dir():
        return None
    return Prescan.start(storage.sessions_dir, watch.exclude, watch.max_depth)


def start_watching(watcher: Watcher, made: Prescan | None, sessions: Path, config: Config
                   ) -> Prescan | None:
    """The daemon's watches, then its start-up child told they are set (or made now). The
    early child shares the user's inotify limits with them: a watch that fails for the
    limit while the child lives is added once it has ended (its listing then leaves that
    run to the daemon), and when the daemon's inotify instance or its first watch cannot
    be made, the child is ended first and it is tried again (r8 probe F1, F4)."""
    if made is not None:
        watcher.share = ChildShare(made)
        made.ended = watcher.rewatch
    with contextlib.suppress(OSError, ImportError, RuntimeError):
        watcher.start()  # (a failure is logged; the main loop's supervision retries)
    return watches_set(made if made is not None and made.alive else None, watcher.in_use,
                       sessions, config.watch.exclude, config.watch.max_depth)


def watches_set(made: Prescan | None, observer: str, sessions: Path, exclude: Iterable[str],
                max_depth: int) -> Prescan | None:
    """The daemon's watches are set (`observer` in use): the child made early is told so, or
    one is made now (with no watches of its own: the daemon's are there); with no inotify
    watches none (an early one is killed)."""
    if observer != "inotify":
        if made is not None:
            made.discard()
        return None
    started = made if made is not None else Prescan.start(sessions, exclude, max_depth,
                                                           watching=False)
    if started is not None:
        started.go()
    return started


def _failed(reason: str) -> None:
    log.warning(events.RECONCILE_PRESCAN_FAILED, reason=reason,
                action="the start-up catch-up scans in the daemon itself")


def _child(r: int, w: int, go: int, sessions: str, exclude: tuple[str, ...],
           max_depth: int, parent: int, held: set[int | signal.Signals],
           watching: bool) -> NoReturn:
    """The child's whole life: list under its own watches, wait for the daemon's, leave out
    the runs that changed meanwhile, send, `_exit` (never back into the daemon's code, no
    log line, no lock another thread held at the fork)."""
    code = 1
    try:
        with contextlib.suppress(ValueError):  # (a fork from another thread than the main)
            # SIGTERM (a stop of the group) ends it at once; SIGHUP is the daemon's reload and
            # SIGINT a terminal's Ctrl-C to the group: the daemon decides, and kills it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        # no collection: it would walk every object of the daemon's heap, each page it
        # touches copied for the child (copy-on-write), for a list it keeps to its end
        gc.disable()
        # nothing written anywhere: another thread may have held stderr's lock at the fork
        warnings.simplefilter("ignore")
        sys.stdout = sys.stderr = None
        os.close(r)
        # the daemon's lock and the watches are the parent's: a child outliving a killed
        # parent must not hold the lock against the next start
        top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        keep = sorted((w, go))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, top if top != resource.RLIM_INFINITY else 1 << 20)
        _die_with_parent(parent)
        watch = ListWatch(libc()) if watching else NoWatch()
        runs, refusals, changed, ctimes = _listing(sessions, exclude, max_depth, watch)
        said = os.read(go, 1 + FOLDER.size)
        if said[:1] != b"g":
            os._exit(1)  # the daemon gave the listing up
        gone = watch.changed() if said[1:] == FOLDER.pack(*watch.top) else None
        for run_id in set(runs) if gone is None else gone & set(runs):
            runs.pop(run_id)
            changed.pop(run_id, None)
            ctimes.pop(run_id, None)
        refusals = [one for one in refusals if one[1] in runs]
        data = marshal.dumps((runs, refusals, changed, ctimes))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        code = 0
    except BaseException:  # nothing may escape into the parent's code: the exit says it
        code = 1
    finally:
        os._exit(code)


def _cpu_ticks(pid: int) -> int | None:
    """The child's CPU time so far, in clock ticks (/proc); None once it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, ValueError, IndexError):
        return None


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon's thread that forked it ends (kill -9 of the daemon): an
    orphan listed on for seconds, a core taken for nothing (prctl PR_SET_PDEATHSIG)."""
    if (lib := libc()) is not None:
        lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the daemon ended before the prctl: no signal will come
        os._exit(1)


def _listing(sessions: str, exclude: tuple[str, ...], max_depth: int,
             watch: ListWatch | NoWatch
             ) -> tuple[dict[str, dict[str, tuple[int, int]]], list[tuple[str, str, str, str]],
                        dict[str, int], dict[str, dict[str, int]]]:
    runs: dict[str, dict[str, tuple[int, int]]] = {}
    refusals: list[tuple[str, str, str, str]] = []
    changed: dict[str, int] = {}  # each run's latest ctime, µs (scan.Listing)
    ctimes: dict[str, dict[str, int]] = {}  # each file's ctime less its mtime, µs, by run

    def refuse(key: str, run_id: str, filename: str, reason: str) -> None:
        refusals.append((key, run_id, filename, reason))

    with folder(sessions) as fd:
        watch.add(fd, TOP)  # (a failure: no listing at all, the daemon scans every run)
        with os.scandir(fd) as it:
            run_ids = [e.name for e in it
                       if is_valid_run_id(e.name) and e.is_dir(follow_symlinks=False)]
        for run_id in run_ids:
            # a run whose walk fails is left out: the daemon scans it itself, and says why;
            # so is one whose folders cannot all be watched first
            with contextlib.suppress(Exception):
                run_fd = open_dir_chain(fd, [run_id])
                try:
                    watch.add(run_fd, run_id)  # its output/ made or replaced
                finally:
                    os.close(run_fd)
                stats = list(run_stats(fd, run_id, exclude, refuse, max_depth,
                                       opened=functools.partial(_watch, watch, run_id)))
                if any(st.st_nlink > 1 for _, st in stats):
                    continue  # written through another link, no event here: the daemon
                    # stats the run itself (r8 probe F2)
                changed[run_id] = max((st.st_ctime_ns for _, st in stats), default=0) // 1000
                runs[run_id] = {name: (st.st_size, st.st_mtime_ns // 1000)
                                for name, st in stats}
                # 0 for a file written plainly (ctime = mtime): one small int, sent as a
                # reference, where a time in µs was 13 bytes and an object to make (issue 15)
                ctimes[run_id] = {name: st.st_ctime_ns // 1000 - st.st_mtime_ns // 1000
                                  for name, st in stats}
    return runs, refusals, changed, ctimes


def _watch(watch: ListWatch | NoWatch, run_id: str, prefix: str, fd: int) -> None:
    watch.add(fd, run_id)

"""The start-up catch-up's scan of `sessions/`, made by a second process (issue 15).

At start the daemon parses every run's metadata.json (the start-up repair) and
then `lstat`s every session file (the catch-up): both are CPU-bound, and on one
thread they took one core while the other stayed idle. A thread could not share
them (each `lstat` hands the GIL to the parser and waits to get it back: slower
than serial, round 5), so the scan runs in a child made by `fork` once every
watch is set (DESIGN §5: a folder is listed only after its watch exists, so a
file written after the listing is an event, never a miss), while the parent
repairs. The child only lists and `lstat`s, through the same walk as the
in-process scan (`scan.run_stats`), and sends back through a pipe, in `marshal`
form, per run: name: (size, µs of the mtime) and name: µs from the mtime to the ctime
of every file (the same key objects: marshal writes each name once), and the refusals,
which the daemon logs itself. The comparison with the store stays in the daemon
(`reconcile.find_pending`): a run whose every file is a copy the store holds as
it is needs nothing more; any other run is scanned again there, so what is
judged (settled, to promote) is the file as it is then, never the listing.

A child that cannot be made, fails, or sends something unreadable costs nothing
but the time: its runs are scanned in-process as before (`reconcile.prescan_failed`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import marshal
import os
import resource
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from promoter import events
from promoter.logs import get_logger
from promoter.names import is_valid_run_id
from promoter.safeio import folder
from promoter.scan import Listing, run_stats
from promoter.walk import exclusion_match

__all__ = ["Prescan"]

log = get_logger()
LOOK_MS = 100  # how soon a stop is seen while the child works
STALL_S = 10.0  # a child whose CPU time stands still this long is given up (SIGSTOP, ...)
PR_SET_PDEATHSIG = 1


class Prescan:
    """The child scanning `sessions/`, and the pipe its listing comes through."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd: int | None = fd
        self._reaped = False

    @classmethod
    def start(cls, sessions: Path, exclude: Iterable[str], max_depth: int) -> Prescan | None:
        """Fork the child (its listing starts at once); None when it cannot be made, or on
        one CPU, where it could only take turns with the daemon."""
        if len(os.sched_getaffinity(0)) < 2:
            return None
        patterns = tuple(exclude)
        exclusion_match(patterns)  # compiled once, here: the child finds it made
        _prctl()  # (likewise)
        try:
            r, w = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            _failed(f"pipe: {exc.strerror}")
            return None
        parent = os.getpid()
        try:
            with warnings.catch_warnings():  # 3.12 warns of a fork beside threads: the
                warnings.simplefilter("ignore", DeprecationWarning)  # child only lists
                pid = os.fork()
        except OSError as exc:
            os.close(r)
            os.close(w)
            _failed(f"fork: {exc.strerror}")
            return None
        if pid == 0:
            _child(r, w, str(sessions), patterns, max_depth, parent)
        os.close(w)
        return cls(pid, r)

    def collect(self, stop: threading.Event) -> Listing | None:
        """The listing, once the child has ended; None when it failed (logged: the catch-up
        scans in-process) or when `stop` was set meanwhile (the child is killed)."""
        assert self._fd is not None
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
        return Listing(data[0], data[1], data[2], data[3])

    def discard(self) -> None:
        """Close the pipe; a child still running is killed. Always reaped: no zombie."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self._reaped = True


def _failed(reason: str) -> None:
    log.warning(events.RECONCILE_PRESCAN_FAILED, reason=reason,
                action="the start-up catch-up scans in the daemon itself")


def _child(r: int, w: int, sessions: str, exclude: tuple[str, ...],
           max_depth: int, parent: int) -> NoReturn:
    """The child's whole life: list, send, `_exit` (never back into the daemon's code, no
    log line, no lock another thread held at the fork)."""
    code = 1
    try:
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
        os.closerange(3, w)
        os.closerange(w + 1, top if top != resource.RLIM_INFINITY else 1 << 20)
        with contextlib.suppress(ValueError):  # (a fork from another thread than the main)
            # SIGTERM (a stop of the group) ends it at once; SIGHUP is the daemon's reload and
            # SIGINT a terminal's Ctrl-C to the group: the daemon decides, and kills it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(parent)
        data = marshal.dumps(_listing(sessions, exclude, max_depth))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view):]
        code = 0
    except BaseException:  # nothing may escape into the parent's code: the exit says it
        code = 1
    finally:
        os._exit(code)


@functools.cache
def _prctl() -> Any:
    """libc's prctl, looked up in the daemon before the fork (a `dlopen` in the child could
    wait for a loader lock another thread held at the fork); None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


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
    if (prctl := _prctl()) is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the daemon ended before the prctl: no signal will come
        os._exit(1)


def _listing(sessions: str, exclude: tuple[str, ...], max_depth: int
             ) -> tuple[dict[str, dict[str, tuple[int, int]]], list[tuple[str, str, str, str]],
                        dict[str, int], dict[str, dict[str, int]]]:
    runs: dict[str, dict[str, tuple[int, int]]] = {}
    refusals: list[tuple[str, str, str, str]] = []
    changed: dict[str, int] = {}  # each run's latest ctime, µs (scan.Listing)
    ctimes: dict[str, dict[str, int]] = {}  # each file's ctime less its mtime, µs, by run

    def refuse(key: str, run_id: str, filename: str, reason: str) -> None:
        refusals.append((key, run_id, filename, reason))

    with folder(sessions) as fd:
        with os.scandir(fd) as it:
            run_ids = [e.name for e in it
                       if is_valid_run_id(e.name) and e.is_dir(follow_symlinks=False)]
        for run_id in run_ids:
            # a run whose walk fails is left out: the daemon scans it itself, and says why
            with contextlib.suppress(Exception):
                stats = list(run_stats(fd, run_id, exclude, refuse, max_depth))
                changed[run_id] = max((st.st_ctime_ns for _, st in stats), default=0) // 1000
                runs[run_id] = {name: (st.st_size, st.st_mtime_ns // 1000)
                                for name, st in stats}
                # 0 for a file written plainly (ctime = mtime): one small int, sent as a
                # reference, where a time in µs was 13 bytes and an object to make (issue 15)
                ctimes[run_id] = {name: st.st_ctime_ns // 1000 - st.st_mtime_ns // 1000
                                  for name, st in stats}
    return runs, refusals, changed, ctimes

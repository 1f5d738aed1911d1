"""The catch-up's look at a run's `output/`: one `lstat` a file (DESIGN §3, §5, issue 15).

`run_stats` is the walk itself, shared by the in-process scan (`scan_run`, every
catch-up pass) and the start-up's second process (`promoter.prescan`): what a
walk refuses (a folder too deep, one it may not read, an `output/` that is a
link) goes to a `Refuse` callback, which logs it here and is recorded there, to
be logged by the daemon itself.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from promoter import events
from promoter.clock import MAX_US, last_change_ns
from promoter.layout import OUTPUT, session_file
from promoter.logs import get_logger
from promoter.names import is_valid_run_id
from promoter.safeio import Refused, open_dir_chain
from promoter.walk import Folder, exclusion_match, walk_tree

__all__ = [
    "Listing",
    "Refuse",
    "Rejections",
    "SessionFile",
    "quiet",
    "refusal_log",
    "run_stats",
    "scan_run",
    "session_runs",
    "too_deep",
]

log = get_logger()

Refuse = Callable[[str, str, str, str], None]
"""A refusal of the walk: (key for `Rejections.warn_once`, run id, filename, reason)."""


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
    def identity(self) -> tuple[int, int, int, int]:
        """A refusal holds while this does: the ctime too, so a hard link removed again (no
        new bytes, mtime or inode) has the file looked at again (r8 probe)."""
        return (self.ino, self.mtime_ns, self.size, self.ctime_ns)


class Rejections:
    """Remembers refused entries, so a rescan does not log the same refusal again."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()
        self._runs_warned: set[str] = set()
        self._walk: dict[str, list[tuple[str, str]]] = {}  # run -> refusals to note

    def walk_refused(self, run_id: str, filename: str, reason: str) -> None:
        """A walk's refusal, to be noted in the run's `rejected` list (`take_walk`)."""
        with self._lock:
            self._walk.setdefault(run_id, []).append((filename, reason))

    def take_walk(self) -> dict[str, list[tuple[str, str]]]:
        """The walk's refusals noted since the last call, by run."""
        with self._lock:
            taken, self._walk = self._walk, {}
        return taken

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
                             stat.S_ISREG(st.st_mode), st.st_ctime_ns))

    def warn_once(self, key: str) -> bool:
        """True the first time `key` is seen: one warning per bad run id or folder."""
        with self._lock:
            if key in self._runs_warned:
                return False
            self._runs_warned.add(key)
            return True


def refusal_log(rejections: Rejections) -> Refuse:
    """A walk's refusals logged (`artifact.rejected`), each once, and kept for the run's
    `rejected` list (`Rejections.take_walk`)."""

    def refuse(key: str, run_id: str, filename: str, reason: str) -> None:
        if rejections.warn_once(key):
            log.warning(events.ARTIFACT_REJECTED, run_id=run_id, filename=filename,
                        reason=reason)
            rejections.walk_refused(run_id, filename, reason)
    return refuse


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


def run_stats(sessions_fd: int, run_id: str, exclude: Iterable[str], refuse: Refuse,
              max_depth: int = 64, opened: Callable[[str, int], None] | None = None
              ) -> Iterator[tuple[str, os.stat_result]]:
    """(name below `output/`, its `lstat`) of every non-excluded entry under the run's
    `output/`, walked without following links (walk.walk_tree); a folder deeper than
    `max_depth` is refused, not entered. One `lstat` a file, none a folder (the directory
    entry tells its type)."""
    try:
        top = open_dir_chain(sessions_fd, [run_id, OUTPUT])
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    except Refused as exc:
        refuse(f"output:{run_id}", run_id, "output/", exc.reason)
        return

    def denied(prefix: str, exc: OSError | Refused) -> None:
        # gone, or swapped for a link since it was listed: nothing to say
        if isinstance(exc, PermissionError):
            refuse(f"dir:{run_id}/{prefix}", run_id, prefix or "output/", "permission denied")

    excluded = exclusion_match(tuple(exclude))
    try:
        for folder in walk_tree(top, denied, opened):
            yield from _stat_folder(folder, run_id, excluded, refuse, max_depth)
    finally:
        os.close(top)


def _stat_folder(folder: Folder, run_id: str, excluded: Callable[[str], object],
                 refuse: Refuse, max_depth: int) -> list[tuple[str, os.stat_result]]:
    """One folder of run_stats: its files, and its sub-folders to enter (a list a folder,
    not a generator a file: 100,000 files at start-up, issue 15)."""
    prefix = folder.prefix
    depth = prefix.count("/") + 1
    found = []
    for entry in folder.entries:
        name = entry.name
        if excluded(name) is not None:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > max_depth:
                    refuse(f"deep:{run_id}/{prefix}{name}", run_id, f"{prefix}{name}/",
                           too_deep(max_depth))
                else:
                    folder.enter.append(name)
                continue
            found.append((prefix + name, entry.stat(follow_symlinks=False)))
        except FileNotFoundError:
            continue
    return found


def scan_run(sessions_fd: int, run_id: str, exclude: Iterable[str],
             rejections: Rejections, max_depth: int = 64,
             unchanged: Mapping[str, tuple[int, int]] | None = None,
             written_us: int | None = None,
             seen: Mapping[str, int] | None = None) -> Iterator[SessionFile]:
    """Every non-excluded entry under the run's `output/` (`run_stats`), its refusals logged.
    `unchanged`: (size, µs) by name of the copies the store holds as they are
    (`known_copies`): those are skipped without a SessionFile or a verdict each (issue 15),
    unless changed (ctime) since their copy read them: `seen[name]` µs after their mtime
    (the entry's `source_changed_at`: `known_changes`) or, for an entry older than that
    field, after `written_us`, the run's last write: new bytes under an old mtime
    (`rules.verdict`)."""
    held_by = unchanged or {}
    since = MAX_US if written_us is None else written_us
    read_at = seen or {}
    for name, st in run_stats(sessions_fd, run_id, exclude, refusal_log(rejections),
                              max_depth):
        held = held_by.get(name)
        if held is not None and held[0] == st.st_size and held[1] == st.st_mtime_ns // 1000:
            after = read_at.get(name)
            ctime_us = st.st_ctime_ns // 1000  # a recorded ctime only when it is the file's
            if ctime_us <= since if after is None else ctime_us == held[1] + after:
                continue  # (probe r7-ctime N2: a later one hid rewrites: rules.verdict)
        yield SessionFile(run_id, name, st.st_size, st.st_mtime_ns, st.st_ino,
                          stat.S_ISREG(st.st_mode), st.st_ctime_ns)


@dataclass(frozen=True)
class Listing:
    """What a second process saw (`promoter.prescan`): the files of each run it listed, as
    name: (size, µs of its mtime) like `known_copies`, the walk's refusals, each run's
    latest ctime (µs) among its files, and by run, name: µs from each file's mtime to its
    ctime, like `known_changes`."""

    runs: Mapping[str, dict[str, tuple[int, int]]]
    refusals: list[tuple[str, str, str, str]]
    changed: Mapping[str, int] = field(default_factory=dict)
    ctimes: Mapping[str, dict[str, int]] = field(default_factory=dict)

    def replay(self, refuse: Refuse) -> None:
        """The refusals, told as the in-process scan tells them."""
        for key, run_id, filename, reason in self.refusals:
            refuse(key, run_id, filename, reason)

    def unchanged(self, run_id: str, copies: Mapping[str, tuple[int, int]],
                  written_us: int | None = None, seen: Mapping[str, int] | None = None
                  ) -> bool:
        """True when the run was listed and each of its files is a copy the store holds as
        it is (`known_copies`: size, µs), none changed (ctime) since its copy read it (`seen`,
        `known_changes`: the entries' `source_changed_at` less their mtime, µs) or, for an
        entry older than that field, since `written_us`, the run's last write: nothing of
        the run to scan again. A run with any other file is scanned again in-process
        (`scan_run`): its files' state then is the one judged (settled or not), as it always
        was, not the listing's, made earlier."""
        files = self.runs.get(run_id)
        if files is None or not files.items() <= copies.items():  # in C: no loop here
            return False
        ctimes = self.ctimes.get(run_id)
        read_at = seen or {}
        if ctimes is not None and ctimes.items() <= read_at.items():
            return True  # each file's ctime the one its copy read (the usual case): in C
        if written_us is None:
            return True  # (no store to compare with: every copy as it is, as before)
        if not read_at:  # entries from before `source_changed_at` only: the run's last write
            return self.changed.get(run_id, MAX_US) <= written_us
        if ctimes is None:
            return False  # not listed with its ctimes: judged in-process
        # a run with both kinds of entry, or a ctime other than the recorded one (the same
        # mtime: the entry's and the file's differences compare as their ctimes do)
        return all(after == read_at[name] if name in read_at
                   else files[name][1] + after <= written_us for name, after in ctimes.items())


def too_deep(max_depth: int) -> str:
    return f"deeper than watch.max_depth ({max_depth} folders)"


def quiet(f: SessionFile, now_ns: int, settle_ns: int) -> bool:
    """Settled on disk: not a regular file, or unchanged for settle_ns (a future mtime is
    judged by the ctime: it is no reason to wait)."""
    return not f.regular or now_ns - last_change_ns(f.mtime_ns, f.ctime_ns, now_ns) >= settle_ns

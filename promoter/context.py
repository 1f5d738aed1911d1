"""Run context written by the runtime: `run.json` and `attribution.jsonl` (DESIGN §1).

Both files are agent-side and untrusted: they are opened the safe way, and
anything malformed is a warning (`context.invalid`), never a failure.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promoter import events
from promoter.layout import OUTPUT
from promoter.logs import get_logger
from promoter.names import split_relpath
from promoter.safeio import Refused, open_dir_chain, open_regular

__all__ = ["AttributionReader", "RunContext", "RunJsonReader", "read_run_json", "session_exists"]

log = get_logger()
MAX_RUN_JSON_BYTES = 1 << 20
READ_CHUNK = 1 << 20  # attribution.jsonl is read this much at a time
MAX_LINE_BYTES = 64 << 10  # a longer line is skipped
MAX_RECENT_NAMES = 4096  # lines for files not (yet) seen, kept in case their file follows


@dataclass(frozen=True)
class RunContext:
    """What the runtime told us about a run; empty fields when it said nothing."""

    workflow_id: str = ""
    user_directive: str = ""
    status: str = ""
    agents: dict[str, str] = field(default_factory=dict)


def _open_in_run(sessions_fd: int, run_id: str, name: str,
                 output: bool = False) -> tuple[int, os.stat_result, int | None] | None:
    """A context file of the run open for reading with its stat (and, with `output`, the
    run's output/ folder, None when absent); None when absent or refused (logged). Links
    are never followed."""
    try:
        run_fd = open_dir_chain(sessions_fd, [run_id])
    except (FileNotFoundError, NotADirectoryError, Refused):
        return None
    try:
        fd, st = open_regular(run_fd, name, allow_hardlinks=True)
    except FileNotFoundError:
        os.close(run_fd)
        return None
    except (Refused, OSError) as exc:
        os.close(run_fd)
        reason = exc.reason if isinstance(exc, Refused) else exc.strerror
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file=name, reason=reason)
        return None
    output_fd: int | None = None
    try:
        if output:
            output_fd = open_dir_chain(run_fd, [OUTPUT])
    except (OSError, Refused):
        output_fd = None
    finally:
        os.close(run_fd)
    return fd, st, output_fd


def session_exists(sessions: Path, run_id: str) -> bool:
    """False only when the session is known to be gone (DESIGN §1).

    When sessions/ itself cannot be seen (promoter-web's unit makes it
    inaccessible; a web container may not mount it) nothing is known, and a
    tombstone must be kept rather than dropped.
    """
    try:
        os.lstat(sessions / run_id)
        return True
    except FileNotFoundError:
        try:
            return not stat.S_ISDIR(os.stat(sessions).st_mode)
        except OSError:
            return True
    except OSError:
        return True


def _read_small(
    sessions_fd: int, run_id: str, name: str, limit: int, offset: int = 0
) -> bytes | None:
    """The bytes of a session file from `offset`, or None when it is absent or refused."""
    opened = _open_in_run(sessions_fd, run_id, name)
    if opened is None:
        return None
    fd, st, _ = opened
    try:
        if st.st_size - offset > limit:
            log.warning(events.CONTEXT_INVALID, run_id=run_id, file=name, reason="too large")
            return None
        return os.pread(fd, max(st.st_size - offset, 0), offset) if st.st_size > offset else b""
    finally:
        os.close(fd)


def read_run_json(sessions_fd: int, run_id: str) -> dict[str, str]:
    """`workflow_id`, `user_directive` and `status` from run.json, each only when valid."""
    return _run_json(sessions_fd, run_id)[0]


def _run_json(sessions_fd: int, run_id: str) -> tuple[dict[str, str], bool]:
    """`read_run_json`, and whether the file was there and valid (nothing logged)."""
    raw = _read_small(sessions_fd, run_id, "run.json", MAX_RUN_JSON_BYTES)
    if raw is None:
        return {}, False
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json", reason="not JSON")
        return {}, False
    if not isinstance(data, dict):
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json", reason="not an object")
        return {}, False
    out: dict[str, str] = {}
    clean = True
    for key in ("workflow_id", "user_directive", "status"):
        value = data.get(key)
        if isinstance(value, str):
            out[key] = value
        elif value is not None:
            clean = False
            log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json",
                        reason=f"{key} is not a string")
    if out.get("status") not in (None, "running", "completed", "failed"):
        clean = False
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json", reason="unknown status")
        out.pop("status")
    return out, clean


FileKey = tuple[int, int, int, int, int]  # device, inode, size, mtime, ctime (ns)
SETTLED_NS = 2_000_000_000  # a file changed this recently may change again within its time tick
KEPT_RUNS = 256  # run.json parses kept, the last ones made (memory stays small when idle, §9)
KEPT_CHARS = 16_384  # a longer run.json (a long user_directive) is read every time


def _lstat(sessions_fd: int, run_id: str, name: str) -> os.stat_result | None:
    """A session file's own stat by its path (one call, no descriptor); None when absent or
    unreadable. A link in the run's place is followed: callers only compare the result with
    a file they opened the safe way before, and take the safe way on any difference."""
    try:
        return os.stat(f"{run_id}/{name}", dir_fd=sessions_fd, follow_symlinks=False)
    except (OSError, ValueError):
        return None


class RunJsonReader:
    """run.json's fields by run, parsed again only when the file changed (issue 15: every
    batch read and parsed it: a descriptor for the run, one for the file, its read). A
    file's version is its device, inode, size, mtime and ctime; one changed in the last
    SETTLED_NS is not kept, so a rewrite within the same time tick is never missed (ctime
    cannot be set back). Only a valid file is kept: an invalid one is logged each read."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[FileKey, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def read(self, sessions_fd: int, run_id: str) -> dict[str, str]:
        st = _lstat(sessions_fd, run_id, "run.json")
        key: FileKey | None = None
        if st is not None and stat.S_ISREG(st.st_mode) \
                and st.st_ctime_ns < time.time_ns() - SETTLED_NS:
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            kept = self._runs.get(run_id)
            if kept is not None and kept[0] == key:
                return dict(kept[1])
        fields, clean = _run_json(sessions_fd, run_id)
        with self._lock:  # workers read several runs at once
            self._runs.pop(run_id, None)
            if key is not None and clean and sum(map(len, fields.values())) <= KEPT_CHARS:
                self._runs[run_id] = (key, dict(fields))  # the key read before the file: a
                if len(self._runs) > KEPT_RUNS:  # later change shows; the last parsed stay
                    del self._runs[next(iter(self._runs))]
        return fields


@dataclass
class _Attribution:
    """What is kept of one run's attribution.jsonl between reads."""

    ino: int = -1
    offset: int = 0  # bytes consumed: every complete line before it has been read
    skipping: bool = False  # inside a line longer than MAX_LINE_BYTES: skip to its end
    kept: dict[str, str] = field(default_factory=dict)  # names that exist or are entries
    recent: OrderedDict[str, str] = field(default_factory=OrderedDict)  # others, the newest


class AttributionReader:
    """Reads attribution.jsonl incrementally, in bounded chunks, from the last offset, and
    keeps it in bounded memory (DESIGN §6): only lines naming a file that exists under
    `output/` or an entry of the run are kept for good, plus the newest MAX_RECENT_NAMES
    others (a line written just before its file). Four million made-up names cost a
    bounded dict, not one entry each."""

    def __init__(self) -> None:
        self._runs: dict[str, _Attribution] = {}

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def agents(self, sessions_fd: int, run_id: str,
               known: Callable[[], Collection[str]] = tuple) -> dict[str, str]:
        """filename -> agent_id; a later line for the same filename wins. `known`: the run's
        entries and the names about to be promoted (their lines are kept), asked for only
        when there are lines to judge: a start-up refreshes 1,000 runs, most without an
        attribution.jsonl, and made a set of 200,000 names for nothing (issue 15)."""
        state = self._runs.setdefault(run_id, _Attribution())
        wanted = functools.cache(lambda: frozenset(known()))
        self._read(sessions_fd, run_id, state, wanted)
        if state.recent:
            names = wanted()
            for name in [n for n in state.recent if n in names]:
                state.kept[name] = state.recent.pop(name)
        return {**state.recent, **state.kept}

    def _read(self, sessions_fd: int, run_id: str, state: _Attribution,
              wanted: Callable[[], frozenset[str]]) -> None:
        st = _lstat(sessions_fd, run_id, "attribution.jsonl")
        if st is None or (st.st_ino == state.ino and st.st_size == state.offset):
            return  # absent, or nothing appended since the last read: no descriptor (issue 15)
        opened = _open_in_run(sessions_fd, run_id, "attribution.jsonl", output=True)
        if opened is None:
            return
        fd, st, output_fd = opened
        known = wanted()
        files = _Files(output_fd)
        bad, first_bad = 0, -1
        try:
            if st.st_ino != state.ino or st.st_size < state.offset:  # replaced or truncated
                state.ino, state.offset, state.skipping = st.st_ino, 0, False
                state.kept.clear()
                state.recent.clear()
            while state.offset < st.st_size:
                chunk = os.pread(fd, min(READ_CHUNK, st.st_size - state.offset), state.offset)
                if not chunk:
                    break
                end = chunk.rfind(b"\n") + 1
                if end == 0:  # no complete line in this chunk
                    if len(chunk) < READ_CHUNK:
                        break  # a line still being appended waits for its newline
                    if not state.skipping:
                        log.warning(events.CONTEXT_INVALID, run_id=run_id,
                                    file="attribution.jsonl",
                                    reason=f"line too long after byte {state.offset}")
                    state.skipping = True
                    state.offset += len(chunk)
                    continue
                lines = chunk[:end].split(b"\n")[:-1]
                if state.skipping:  # the rest of a long line
                    lines, state.skipping = lines[1:], False
                for line in lines:
                    if not self._line(state, line, known, files):
                        bad += 1
                        first_bad = state.offset if first_bad < 0 else first_bad
                state.offset += end
        finally:
            os.close(fd)
            if output_fd is not None:
                os.close(output_fd)
            if bad:  # one line per read, however many bad lines: the log is bounded too
                log.warning(events.CONTEXT_INVALID, run_id=run_id, file="attribution.jsonl",
                            reason=f"{bad} bad line(s), the first in the chunk at byte"
                                   f" {first_bad}", bad_lines=bad)

    @staticmethod
    def _line(state: _Attribution, line: bytes, known: frozenset[str], files: _Files) -> bool:
        """Take one line in; False when it is malformed."""
        if not line.strip():
            return True
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError("too long")
            item = json.loads(line)
            filename, agent = item["filename"], item["agent_id"]
            if not isinstance(filename, str) or not isinstance(agent, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return False
        if filename in state.kept or filename in known or files.exists(filename):
            state.kept[filename] = agent
            state.recent.pop(filename, None)
            return True
        state.recent[filename] = agent
        state.recent.move_to_end(filename)
        if len(state.recent) > MAX_RECENT_NAMES:
            state.recent.popitem(last=False)
        return True


class _Files:
    """Which names exist under output/, for one read: top-level names from one listing
    (a `stat` per line would cost millions of calls), deeper ones looked up without
    following any link."""

    def __init__(self, output_fd: int | None) -> None:
        self._fd = output_fd
        self._top: set[str] | None = None

    def exists(self, filename: str) -> bool:
        if self._fd is None:
            return False
        if "/" not in filename:
            if self._top is None:
                try:
                    self._top = set(os.listdir(self._fd))
                except OSError:
                    self._top = set()
            return filename in self._top
        try:
            parts = split_relpath(filename)
        except Exception:  # not a name a file can have: no file has it
            return False
        try:
            folder_fd = open_dir_chain(self._fd, parts[:-1])
        except (OSError, Refused):
            return False
        try:
            os.stat(parts[-1], dir_fd=folder_fd, follow_symlinks=False)
            return True
        except OSError:
            return False
        finally:
            os.close(folder_fd)

"""Seeing when a written file becomes visible at a tool's destination, and statistics."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.inotify import Event, Inotify

# Above this many pending files in one run, one scandir() of the folder is cheaper than
# one stat() per pending file.
_SCANDIR_ABOVE = 8


class Destination(ABC):
    """Where a tool makes files visible."""

    @abstractmethod
    def visible(self, run_id: str, pending: Mapping[str, int], fresh: bool = False) -> set[str]:
        """The relpaths (under output/) of pending that are visible now (fresh: an event said
        something changed, so no cached read may answer)."""

    @abstractmethod
    def watch_root(self) -> Path:
        """The folder to watch with inotify."""

    @abstractmethod
    def watch_depth(self) -> int:
        """How deep under watch_root to watch."""

    @abstractmethod
    def candidate(self, event: Event) -> tuple[str, str | None] | None:
        """(run_id, relpath to check, or None for all of the run's pending files), or None."""


class MirrorDest(Destination):
    """A peer's mirror of sessions/: <dest>/<run_id>/output/<relpath>.

    A file counts as visible once it exists with its full size (cp writes in place; rsync
    writes a temporary file and renames it, so for rsync existence alone would do).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def watch_root(self) -> Path:
        return self.root

    def watch_depth(self) -> int:
        return 64

    def candidate(self, event: Event) -> tuple[str, str | None] | None:
        parts = event.rel_dir.split("/", 2)
        if len(parts) < 2 or parts[1] != "output" or event.name.startswith("."):
            return None
        sub = parts[2] + "/" if len(parts) == 3 else ""
        return parts[0], sub + event.name

    def visible(self, run_id: str, pending: Mapping[str, int], fresh: bool = False) -> set[str]:
        out = os.path.join(self.root, run_id, "output")
        seen: set[str] = set()
        if len(pending) > _SCANDIR_ABOVE:
            try:
                with os.scandir(out) as it:
                    for entry in it:
                        size = pending.get(entry.name)
                        if size is not None and entry.stat().st_size == size:
                            seen.add(entry.name)
            except FileNotFoundError:
                return seen
            nested = [rel for rel in pending if "/" in rel]
        else:
            nested = list(pending)
        for rel in nested:
            try:
                if os.stat(os.path.join(out, rel)).st_size == pending[rel]:
                    seen.add(rel)
            except FileNotFoundError:
                pass
        return seen


class PromoterDest(Destination):
    """promoter's store: the file's entry in <artifacts>/<run_id>/metadata.json (DESIGN §2).

    metadata.json is re-read when its (inode, mtime, ctime, size) changed, and in any case
    when the last read is older than REREAD_S: promoter replaces it by rename, but a freed
    inode number can come back at once and ext4's timestamps are coarse, so the key alone
    could miss a new version of the same size.
    """

    REREAD_S = 0.1

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self._keys: dict[str, tuple[int, int, int, int]] = {}
        self._read_at: dict[str, float] = {}
        self._names: dict[str, set[str]] = {}
        self.read_errors = 0
        self.reads = 0

    def watch_root(self) -> Path:
        return self.artifacts

    def watch_depth(self) -> int:
        return 1  # artifacts/ and artifacts/<run_id>/: not the copies under files/

    def candidate(self, event: Event) -> tuple[str, str | None] | None:
        if event.rel_dir and "/" not in event.rel_dir and event.name == "metadata.json":
            return event.rel_dir, None
        return None

    def visible(self, run_id: str, pending: Mapping[str, int], fresh: bool = False) -> set[str]:
        path = os.path.join(self.artifacts, run_id, "metadata.json")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return set()
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        now = time.monotonic()
        stale = now - self._read_at.get(run_id, 0.0) > self.REREAD_S
        if fresh or stale or self._keys.get(run_id) != key:
            doc = self._read(path)
            if doc is None:
                return set()
            self._keys[run_id] = key
            self._read_at[run_id] = now
            self._names[run_id] = {
                str(a.get("filename")) for a in doc.get("artifacts", []) if isinstance(a, dict)
            }
        names = self._names.get(run_id, set())
        return {rel for rel in pending if rel in names}

    def _read(self, path: str) -> dict[str, Any] | None:
        self.reads += 1
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            # DESIGN §2: a reader never sees a half-written metadata.json. Count violations.
            self.read_errors += 1
            return None
        return doc if isinstance(doc, dict) else None

    def entries(self, run_id: str) -> list[dict[str, Any]]:
        """A fresh read of a run's artifact entries (for duplicate counts)."""
        doc = self._read(os.path.join(self.artifacts, run_id, "metadata.json"))
        if doc is None:
            return []
        return [a for a in doc.get("artifacts", []) if isinstance(a, dict)]

    def duplicates(self, run_ids: Sequence[str]) -> tuple[int, int]:
        """(duplicate entries, total entries) over the given runs."""
        dups = total = 0
        for run_id in run_ids:
            counts = Counter(str(a.get("filename")) for a in self.entries(run_id))
            total += sum(counts.values())
            dups += sum(c - 1 for c in counts.values() if c > 1)
        return dups, total


@dataclass
class Sample:
    run_id: str
    relpath: str
    size: int
    t_close_ns: int = 0  # set by the writer right after close()
    t_visible_ns: int | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.t_visible_ns is None or not self.t_close_ns:
            return None
        return (self.t_visible_ns - self.t_close_ns) / 1e6


@dataclass
class TrackerStats:
    passes: int = 0
    pass_ns_total: int = 0
    pass_ns_max: int = 0
    errors: int = 0
    events: int = 0
    full_checks: int = 0
    found_by_full_check: int = 0
    overflows: int = 0


class Tracker:
    """A thread that records when each expected file becomes visible at a Destination.

    mode "inotify" (default): the destination tree is watched with inotify; each event
    (close_write or moved_to of a file, or of promoter's metadata.json) triggers a check of
    just that file (or that run's metadata.json), stamped with the time the event was read.
    A full check of everything pending runs every full_check_s as a safety net (its finds are
    counted: they would mean a missed event, and their times are late).

    mode "poll": every interval_s, stat only the files still pending (one stat of
    metadata.json per run for promoter); the time is taken right after the pass that saw the
    file, so the error is at most interval_s plus one pass (both reported).

    Register a file with add() before writing it, then set its t_close_ns after close(): an
    event for a file the tracker does not know yet would otherwise be dropped.
    """

    def __init__(
        self,
        dest: Destination,
        interval_s: float,
        max_lifetime_s: float,
        mode: str = "inotify",
        full_check_s: float = 0.5,
    ) -> None:
        self.dest = dest
        self.interval_s = interval_s
        self.max_lifetime_s = max_lifetime_s
        self.mode = mode
        self.full_check_s = full_check_s
        self.samples: list[Sample] = []
        self.stats = TrackerStats()
        self._pending: dict[str, dict[str, Sample]] = {}
        # the same keys with the expected sizes: copied (in C) for a check
        self._sizes: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        loop = self._loop_inotify if mode == "inotify" else self._loop_poll
        self._thread = threading.Thread(target=loop, name="tracker", daemon=True)

    def __enter__(self) -> Tracker:
        self._thread.start()
        # the watches are in place before anything is written
        self._ready.wait(timeout=30.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def add(self, run_id: str, relpath: str, size: int, t_close_ns: int = 0) -> Sample:
        sample = Sample(run_id, relpath, size, t_close_ns)
        with self._lock:
            self.samples.append(sample)
            self._pending.setdefault(run_id, {})[relpath] = sample
            self._sizes.setdefault(run_id, {})[relpath] = size
        return sample

    def pending_count(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())

    def _check(self, run_id: str, names: set[str] | None, when_ns: int | None = None) -> int:
        """Check names (None: all pending) of one run and mark the visible ones, stamped
        when_ns (the time an event was read) or else the time right after the check."""
        with self._lock:
            sizes = self._sizes.get(run_id)
            if not sizes:
                return 0
            sub = sizes.copy() if names is None else {n: sizes[n] for n in names if n in sizes}
        if not sub:
            return 0
        try:
            seen = self.dest.visible(run_id, sub, fresh=when_ns is not None)
        except OSError:
            self.stats.errors += 1
            return 0
        if not seen:
            return 0
        return self._mark(run_id, seen, when_ns if when_ns is not None else time.monotonic_ns())

    def _mark(self, run_id: str, seen: set[str], when_ns: int) -> int:
        n = 0
        with self._lock:
            run_pending = self._pending[run_id]
            run_sizes = self._sizes[run_id]
            for rel in seen:
                run_sizes.pop(rel, None)
                sample = run_pending.pop(rel, None)
                if sample is not None:
                    sample.t_visible_ns = when_ns
                    n += 1
        return n

    def _account(self, t0: int) -> None:
        spent = time.monotonic_ns() - t0
        self.stats.passes += 1
        self.stats.pass_ns_total += spent
        self.stats.pass_ns_max = max(self.stats.pass_ns_max, spent)

    def _loop_poll(self) -> None:
        self._ready.set()
        deadline = time.monotonic() + self.max_lifetime_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            with self._lock:
                runs = [r for r, p in self._sizes.items() if p]
            for run_id in runs:
                self._check(run_id, None)
            self._account(t0)
            self._stop.wait(self.interval_s)

    def _loop_inotify(self) -> None:
        root = self.dest.watch_root()
        os.makedirs(root, exist_ok=True)
        try:
            with Inotify(str(root), self.dest.watch_depth()) as ino:
                backlog = ino.add_tree("")
                self._ready.set()
                self._inotify_events(ino, backlog)
        finally:
            self._ready.set()

    def _inotify_events(self, ino: Inotify, backlog: list[Event]) -> None:
        deadline = time.monotonic() + self.max_lifetime_s
        next_full = time.monotonic() + self.full_check_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            events = backlog + ino.read(self.interval_s)
            backlog = []
            t_read = time.monotonic_ns()
            checks: dict[str, set[str] | None] = {}
            for event in events:
                hit = self.dest.candidate(event)
                if hit is None:
                    continue
                run_id, rel = hit
                if rel is None:
                    checks[run_id] = None
                elif checks.get(run_id, set()) is not None:
                    checks.setdefault(run_id, set()).add(rel)  # type: ignore[union-attr]
            self.stats.events += len(events)
            for run_id, names in checks.items():
                self._check(run_id, names, t_read)
            if ino.overflowed:
                self.stats.overflows += 1
                ino.overflowed = False
                next_full = 0.0
            if time.monotonic() >= next_full:
                self.stats.full_checks += 1
                with self._lock:
                    runs = [r for r, p in self._sizes.items() if p]
                for run_id in runs:
                    self.stats.found_by_full_check += self._check(run_id, None)
                next_full = time.monotonic() + self.full_check_s
            self._account(t_read)

    def wait_all(self, timeout_s: float) -> bool:
        """Poll until nothing is pending; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.01) + 2):
            if self.pending_count() == 0:
                return True
            if time.monotonic() >= deadline or not self._thread.is_alive():
                break
            time.sleep(0.01)
        return self.pending_count() == 0

    def summary(self) -> dict[str, float | str]:
        s = self.stats
        return {
            "mode": self.mode,
            "interval_ms": self.interval_s * 1000,
            "passes": s.passes,
            "pass_mean_us": (s.pass_ns_total / s.passes / 1000) if s.passes else 0.0,
            "pass_max_ms": s.pass_ns_max / 1e6,
            "errors": s.errors,
            "events": s.events,
            "full_checks": s.full_checks,
            "found_by_full_check": s.found_by_full_check,
            "overflows": s.overflows,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2

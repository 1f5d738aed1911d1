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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Above this many pending files in one run, one scandir() of the folder is cheaper than
# one stat() per pending file.
_SCANDIR_ABOVE = 8


class Destination(ABC):
    """Where a tool makes files visible."""

    @abstractmethod
    def visible(self, run_id: str, pending: Mapping[str, int]) -> set[str]:
        """The relpaths (under output/) of pending that are visible now."""


class MirrorDest(Destination):
    """A peer's mirror of sessions/: <dest>/<run_id>/output/<relpath>.

    A file counts as visible once it exists with its full size (cp writes in place; rsync
    writes a temporary file and renames it, so for rsync existence alone would do).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def visible(self, run_id: str, pending: Mapping[str, int]) -> set[str]:
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

    metadata.json is re-read only when its (inode, mtime, size) changed: promoter replaces it
    by rename, so each new version has a new inode.
    """

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self._keys: dict[str, tuple[int, int, int]] = {}
        self._names: dict[str, set[str]] = {}
        self.read_errors = 0
        self.reads = 0

    def visible(self, run_id: str, pending: Mapping[str, int]) -> set[str]:
        path = os.path.join(self.artifacts, run_id, "metadata.json")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return set()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._keys.get(run_id) != key:
            doc = self._read(path)
            if doc is None:
                return set()
            self._keys[run_id] = key
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
    t_close_ns: int
    t_visible_ns: int | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.t_visible_ns is None:
            return None
        return (self.t_visible_ns - self.t_close_ns) / 1e6


@dataclass
class TrackerStats:
    passes: int = 0
    pass_ns_total: int = 0
    pass_ns_max: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Tracker:
    """A thread that polls a Destination for the files still pending, every interval_s.

    Only pending files are looked at, so a pass costs a few stat() calls in the latency
    workload. The time recorded is taken right after the pass that saw the file; the error is
    at most interval_s plus one pass (both reported in the results).
    """

    def __init__(self, dest: Destination, interval_s: float, max_lifetime_s: float) -> None:
        self.dest = dest
        self.interval_s = interval_s
        self.max_lifetime_s = max_lifetime_s
        self.samples: list[Sample] = []
        self.stats = TrackerStats()
        self._pending: dict[str, dict[str, Sample]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tracker", daemon=True)

    def __enter__(self) -> Tracker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def add(self, run_id: str, relpath: str, size: int, t_close_ns: int) -> None:
        sample = Sample(run_id, relpath, size, t_close_ns)
        with self._lock:
            self.samples.append(sample)
            self._pending.setdefault(run_id, {})[relpath] = sample

    def pending_count(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_lifetime_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            with self._lock:
                work = {r: {k: s.size for k, s in p.items()} for r, p in self._pending.items() if p}
            for run_id, pending in work.items():
                try:
                    seen = self.dest.visible(run_id, pending)
                except OSError:
                    self.stats.errors += 1
                    continue
                if not seen:
                    continue
                now = time.monotonic_ns()
                with self._lock:
                    run_pending = self._pending[run_id]
                    for rel in seen:
                        sample = run_pending.pop(rel, None)
                        if sample is not None:
                            sample.t_visible_ns = now
            spent = time.monotonic_ns() - t0
            self.stats.passes += 1
            self.stats.pass_ns_total += spent
            self.stats.pass_ns_max = max(self.stats.pass_ns_max, spent)
            self._stop.wait(self.interval_s)

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

    def summary(self) -> dict[str, float]:
        s = self.stats
        return {
            "poll_interval_ms": self.interval_s * 1000,
            "passes": s.passes,
            "pass_mean_us": (s.pass_ns_total / s.passes / 1000) if s.passes else 0.0,
            "pass_max_ms": s.pass_ns_max / 1e6,
            "errors": s.errors,
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

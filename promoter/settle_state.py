"""What the settler tracks (DESIGN §5): the records behind `promoter.settle.Settler`.

Plain data, no behaviour beyond `RunState.empty`: the deciding is in `settle.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["MAX_BACKOFF_NS", "MIN_BACKOFF_NS", "MS", "Batch", "FileState", "Phase", "Room",
           "RunState", "StatFn", "TrackedFile"]

MS = 1_000_000
MIN_BACKOFF_NS = 100 * MS
MAX_BACKOFF_NS = 30_000 * MS  # DESIGN §5: capped at 30 s


@dataclass(frozen=True)
class FileState:
    """What one `lstat` says about a file: equal states mean nothing changed."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


StatFn = Callable[[str, str], "FileState | None"]
"""(run_id, filename) -> the file's state now, or None when it is gone."""


@dataclass(frozen=True)
class Batch:
    """Work for one run: files to promote, and run-level chores."""

    run_id: str
    filenames: tuple[str, ...] = ()
    context: bool = False  # run.json or attribution.jsonl changed: refresh the run's context
    completed: bool = False  # the session folder is gone: mark the run completed


@dataclass(frozen=True)
class Room:
    """What the shell can take now (`Settler.due`): `workers` batches of any size, then
    `small` more of at most `small_files` files each (the pipeline's lane)."""

    workers: int
    small: int = 0
    small_files: int = 0


class Phase(Enum):
    """Where a tracked file is: armed, ready for its run's batch, or in one."""

    ARMED = "armed"  # waiting for its quiet period to end
    READY = "ready"  # finished, waiting for its run's batch
    FLIGHT = "flight"  # in a batch being promoted


@dataclass
class TrackedFile:
    """One pending file: its deadline, what was last seen of it, where it is."""

    deadline: int
    closed: bool = False
    open_seen: bool = False  # the last event was a real write with no close after it
    phase: Phase = Phase.ARMED
    queued: bool = False  # has a live entry in the heap
    seen: FileState | None = None
    seen_at: int = 0
    dirty: bool = False  # touched while in flight: look again after
    forgotten: bool = False  # deleted while in flight: drop after
    attempts: int = 0


@dataclass
class RunState:
    """One run's pending files and its run-level chores."""

    files: dict[str, TrackedFile] = field(default_factory=dict)
    context: bool = False  # a context refresh is wanted
    completed: bool = False  # marking the run completed is wanted
    chores_at: int | None = None  # when the run-level chores above may go
    chores_ready: bool = False
    chore_attempts: int = 0
    in_flight: int = 0
    queued_at: int | None = None  # deadline of the run's live heap entry
    limit: int = 0  # files in one batch of this run (0: the settler's max_batch); done() sets it
    # the names of its READY files, in the order they finished (a dict as an ordered set): a
    # run kept back is weighed by its count, never looked over file by file (issue 15 r7)
    ready: dict[str, None] = field(default_factory=dict)

    def empty(self) -> bool:
        return (not self.files and not self.context and not self.completed
                and self.in_flight == 0)

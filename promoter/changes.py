"""Where the event stream learns of changes (DESIGN §7 `GET /runtime/events`).

A change source is one small interface, so a second backend can bring its own
(S3: the periodic listing of `meta/` it keeps anyway). The local one watches,
with inotify and no thread (the descriptor sits in the event loop's selector,
so an idle store costs no wake-up at all):

- `artifacts/` itself, for run folders that appear (a new watch) or go (a
  deletion renames the run into `.trash/`: `run.deleted`);
- each `artifacts/<run>/`, for `metadata.json` replaced (the store's atomic
  rename: `IN_MOVED_TO`) or removed; never `files/`, whose copies would cost a
  watch per folder and an event per byte written;
- `library/`, for files added, replaced or removed (`library.changed`).

An inotify queue overflow, or a watch that cannot be added, becomes one
`reset` for every client: they reload the list, so nothing is silently missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from promoter import events
from promoter.logs import get_logger
from promoter.names import is_valid_run_id

__all__ = [
    "LIBRARY_CHANGED",
    "RESET",
    "RUN_DELETED",
    "RUN_UPDATED",
    "Change",
    "ChangeSource",
    "LocalChanges",
]

log = get_logger()
RUN_UPDATED = "run.updated"
RUN_DELETED = "run.deleted"
LIBRARY_CHANGED = "library.changed"
RESET = "reset"
METADATA = "metadata.json"


@dataclass(frozen=True)
class Change:
    """One thing a client should know: the event's name and its JSON data."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Emit = Callable[[Change], None]


class ChangeSource(Protocol):
    """Runs until cancelled, calling `emit` (on the event loop) for each change it sees."""

    async def run(self, emit: Emit) -> None: ...


class LocalChanges:
    """inotify on `artifacts/`, each run folder (metadata.json only) and `library/`."""

    def __init__(self, artifacts: Path, library: Path,
                 updated_at: Callable[[str], str | None]) -> None:
        self.artifacts = artifacts
        self.library = library
        self._updated_at = updated_at  # run id -> metadata's updated_at (None: no such run)

    async def run(self, emit: Emit) -> None:
        from asyncinotify import Inotify, Mask

        top = Mask.CREATE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE | Mask.ONLYDIR
        per_run = Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.DELETE | Mask.MOVED_FROM | Mask.ONLYDIR
        library = Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.DELETE | Mask.MOVED_FROM | Mask.ONLYDIR
        with Inotify(cache_size=64) as inotify:
            inotify.add_watch(self.artifacts, top)
            with contextlib.suppress(OSError):
                inotify.add_watch(self.library, library)
            runs: dict[str, Any] = {}

            def watch_run(run_id: str) -> None:
                try:
                    runs[run_id] = inotify.add_watch(self.artifacts / run_id, per_run)
                except OSError as exc:  # gone already, or the watch limit: clients reload
                    if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                        log.warning(events.EVENTS_WATCH_FAILED, run_id=run_id,
                                    reason=exc.strerror or str(exc))
                        emit(Change(RESET, {"reason": "watch failed"}))
                    return
                self._updated(run_id, emit)  # written before the watch existed

            for name in _run_folders(self.artifacts):
                with contextlib.suppress(OSError):
                    runs[name] = inotify.add_watch(self.artifacts / name, per_run)
            async for event in inotify:
                mask, name = event.mask, str(event.name) if event.name is not None else ""
                if Mask.Q_OVERFLOW in mask:
                    emit(Change(RESET, {"reason": "overflow"}))
                    for run_id in _run_folders(self.artifacts):
                        if run_id not in runs:
                            watch_run(run_id)
                    continue
                where = event.watch.path if event.watch is not None else None
                if where == self.artifacts and Mask.IGNORED in mask:
                    raise OSError(f"{self.artifacts} was removed or unmounted")
                if where is None or not name:
                    continue
                if where == self.library:
                    if not name.startswith("."):
                        emit(Change(LIBRARY_CHANGED, {"name": name}))
                elif where == self.artifacts:
                    if not is_valid_run_id(name) or Mask.ISDIR not in mask:
                        continue
                    if mask & (Mask.CREATE | Mask.MOVED_TO):
                        watch_run(name)
                    else:
                        gone = runs.pop(name, None)
                        if gone is not None:
                            with contextlib.suppress(OSError, ValueError):
                                inotify.rm_watch(gone)
                        emit(Change(RUN_DELETED, {"run_id": name}))
                elif name == METADATA:
                    run_id = where.name
                    if mask & (Mask.MOVED_TO | Mask.CLOSE_WRITE):
                        await self._updated_async(run_id, emit)
                    elif not (self.artifacts / run_id).is_dir():
                        emit(Change(RUN_DELETED, {"run_id": run_id}))

    def _updated(self, run_id: str, emit: Emit) -> None:
        stamp = self._updated_at(run_id)
        if stamp is not None:
            emit(Change(RUN_UPDATED, {"run_id": run_id, "updated_at": stamp}))

    async def _updated_async(self, run_id: str, emit: Emit) -> None:
        """Read updated_at in a worker thread: a run of many files has a large metadata.json."""
        stamp = await asyncio.to_thread(self._updated_at, run_id)
        if stamp is not None:
            emit(Change(RUN_UPDATED, {"run_id": run_id, "updated_at": stamp}))


def _run_folders(artifacts: Path) -> list[str]:
    try:
        with os.scandir(artifacts) as it:
            return [e.name for e in it if is_valid_run_id(e.name)
                    and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []

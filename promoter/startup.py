"""What every process that writes the store does first (DESIGN §6: crash leftovers)."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from promoter import events, recovery
from promoter.audit import Actor
from promoter.config import Config
from promoter.errors import StoreIOError
from promoter.localdisk import LocalDisk
from promoter.logs import get_logger
from promoter.metadata import parse_metadata
from promoter.store import LockFileError, Store
from promoter.walk import gc_paused

log = get_logger()

__all__ = ["prepare", "prepare_store"]


def prepare_store(config: Config, sessions: bool = True, actor: Actor | None = None,
                  create: bool = True, repair: bool = True) -> Store:
    """Create the folders, empty the trash, remove temporaries and relist orphaned copies,
    so that after a crash every file under `files/` is listed in metadata.json.

    `create=False`: the store must exist already (only `promoter run` creates it).
    `repair=False` (`serve`): the folders and this process's own leftovers only; relisting
    runs reads sessions/ for their context, which is the daemon's job."""
    store = Store(config, actor=actor)
    prepare(store, sessions, create, repair)
    return store


def prepare(store: Store, sessions: bool = True, create: bool = True,
            repair: bool = True, stop: threading.Event | None = None) -> None:
    """What `prepare_store` does to a Store already made (the daemon's, when the bucket was
    unreachable at start: done again once it answers, DESIGN §10). Once `stop` is set (a
    SIGTERM during the daemon's start), runs not yet repaired are left to the next start,
    as a crash would leave them: the repair is for leftovers, and is made to be cut."""
    if not create:
        store.require_store()
    store.ensure_folders(sessions=sessions)
    store.empty_trash()
    store.library.remove_stale_temps()
    if not repair:
        return
    with gc_paused():
        if _repair_all(store, stop or threading.Event()):
            store.disk.repaired_all()  # every run walked or unmarked: trust the marks
        # the runs just parsed stay (the store's cache) for the process's life: out of the
        # collector's sight, not walked by the first collection after the pause (~0.1 s)
        # and by every full one after it (issue 15)
        gc.freeze()


def _repair_all(store: Store, stop: threading.Event) -> bool:
    """Repair every run; True when none failed and none was left for `stop`."""
    runs = store.run_ids()
    workers = min(store.config.promote.workers, len(runs))
    if isinstance(store.disk, LocalDisk) and store.disk.marks_trusted():
        # no walk but of marked runs: parsing holds the GIL, and two threads took more
        # time and CPU than one (issue 15); an object store's listings wait on the network
        workers = 1
    if workers <= 1:
        if isinstance(store.disk, LocalDisk) and store.disk.marks_trusted():
            with store.disk.reading() as art:
                return all([_repair(store, run_id, stop, art) for run_id in runs])
        return all([_repair(store, run_id, stop) for run_id in runs])
    # runs in parallel (each under its own lock): the walk's `lstat`s and reads (a whole
    # walk) or an object store's listings let go of the GIL, so a second thread parses
    with ThreadPoolExecutor(workers, thread_name_prefix="promoter-repair") as pool:
        jobs = [pool.submit(_repair, store, run_id, stop) for run_id in runs]
        try:
            return all([job.result() for job in jobs])
        finally:
            for job in jobs:
                job.cancel()


def _repair(store: Store, run_id: str, stop: threading.Event, art: int | None = None) -> bool:
    """`art`: the artifacts folder once the marks are trusted (local disk), where a clean
    run is taken as it is, without a write session (`_take_clean`)."""
    if stop.is_set():
        return False  # left for the next start, marks and all
    try:
        if art is None or not _take_clean(store, art, run_id):
            store.repair(run_id)
    except (StoreIOError, LockFileError):
        raise  # the store itself is unusable: that is for everyone, not one run
    except Exception as exc:  # one bad run never stops a start-up (DESIGN §6)
        log.error(events.REPAIR_FAILED, run_id=run_id, reason=f"{type(exc).__name__}: {exc}")
        return False
    return True


def _take_clean(store: Store, art: int, run_id: str) -> bool:
    """A run with nothing to repair (`recovery.clean_metadata`: no mark, no temporary file,
    a valid metadata.json of this run) is parsed once and remembered, as `store.repair`
    would, without its lock, write session and further looks: a third of the repair's time
    over 1,000 runs (issue 15). False for any other run: `store.repair` decides it."""
    seen = recovery.clean_metadata(art, run_id, store.config.promote.max_metadata_bytes)
    if seen is None:
        return False
    version, raw = seen
    try:
        meta = parse_metadata(raw)
    except (ValidationError, ValueError):
        return False  # corrupt: set aside and rebuilt under the lock
    if meta.run_id != run_id or meta.status == "deleting":  # (an object store's, never here)
        return False
    store.remember(run_id, meta, version)
    return True

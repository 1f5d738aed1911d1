"""What every process that writes the store does first (DESIGN §6: crash leftovers)."""

from __future__ import annotations

from promoter.config import Config
from promoter.store import Store

__all__ = ["prepare_store"]


def prepare_store(config: Config, sessions: bool = True) -> Store:
    """Create the folders, empty the trash, remove temporaries and relist orphaned copies,
    so that after a crash every file under `files/` is listed in metadata.json."""
    store = Store(config)
    store.ensure_folders(sessions=sessions)
    store.empty_trash()
    store.library.remove_stale_temps()
    for run_id in store.run_ids():
        store.repair(run_id)
    return store

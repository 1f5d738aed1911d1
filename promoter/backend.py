"""The storage seam (STYLE §19, DESIGN §10): what a place to keep artifacts must do.

Every rule (what to promote, upserts, expiry, tombstones' meaning, recovery)
is decided above this line, once, in `rules.py` and `store.py`. A backend only
keeps bytes: a run's metadata with a version tag, stored files, tombstones.

`locked(run_id)` opens a write session on one run and yields its handle `H`,
which every write takes. On the local disk (`localdisk.LocalDisk`) the handle
is the artifacts folder's descriptor and the session holds the run's `flock`:
that lock is the compare-and-set, so a write there never loses a race. An
object store would yield a handle carrying the ETag read at `read_meta` and
make `write_meta` a conditional put (`ObjectStore.put_if`), raising
`ConflictError` when it lost; `meta_version` is then the ETag.

The library (`library.Library`) and the audit journal (`audit.JournalSink`) are
seams of their own, passed beside it.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from promoter.safeio import CopyPools, CopyResult

__all__ = ["Backend"]

H = TypeVar("H")


class Backend(Protocol[H]):
    """Bytes and metadata of runs, with version tags; no rule lives here."""

    # -- runs ------------------------------------------------------------------------------
    def run_ids(self) -> list[str]: ...

    def is_run(self, run_id: str) -> bool: ...

    def reading(self) -> AbstractContextManager[H]: ...

    def locked(self, run_id: str, wait: bool = True) -> AbstractContextManager[H]: ...

    # -- metadata, with a version tag --------------------------------------------------------
    def meta_version(self, run_id: str) -> Hashable | None: ...

    def read_meta(self, handle: H, run_id: str, limit: int) -> bytes | None: ...

    def write_meta(self, handle: H, run_id: str, data: bytes) -> None: ...

    # -- stored files ------------------------------------------------------------------------
    def put_file(self, handle: H, run_id: str, filename: str, src: int, st: os.stat_result,
                 checksum: bool, max_bytes: int, pools: CopyPools | None) -> CopyResult: ...

    def sync_folders(self, handle: H, run_id: str,
                     folders: Iterable[tuple[str, ...]]) -> None: ...

    def open_file(self, run_id: str, filename: str) -> tuple[int, os.stat_result]: ...

    def remove_file(self, handle: H, run_id: str, filename: str) -> None: ...

    def trash_run(self, handle: H, run_id: str) -> None: ...

    def empty_trash(self) -> None: ...

    # -- tombstones --------------------------------------------------------------------------
    def read_tombstone(self, run_id: str) -> bytes | None: ...

    def write_tombstone(self, handle: H, run_id: str, data: bytes) -> None: ...

    def tombstones(self) -> list[str]: ...

    def drop_tombstone(self, run_id: str) -> bool: ...

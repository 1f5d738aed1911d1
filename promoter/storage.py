"""Which store a configuration names: the backend, library and journal (DESIGN §10, §11).

`storage.backend = "local"` (the default) keeps them in folders; `"s3"` in one
bucket, through one `ObjectStore` (imported only then: the `s3` extra). The
Store is built on what this returns, so every command, the daemon and the
server reach either store through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from promoter.audit import AUDIT_DIR, JournalSink, LocalJournal, read_journal
from promoter.backend import Backend, StoredRead
from promoter.clock import Clock
from promoter.config import Config
from promoter.library import Library, LibraryFile
from promoter.localdisk import LocalDisk

__all__ = ["LibraryStore", "Parts", "open_parts"]

JournalReader = Callable[[datetime | None, str | None], list[dict[str, Any]]]


class LibraryStore(Protocol):
    """What a library keeps (library.Library, s3library.S3Library)."""

    @property
    def path(self) -> Any: ...

    def list(self) -> list[LibraryFile]: ...

    def read(self, name: str) -> tuple[StoredRead, LibraryFile]: ...

    def exists(self, name: str) -> bool: ...

    def add(self, name: str, write: Callable[[int], None], overwrite: bool,
            mtime_ns: int | None = None) -> LibraryFile: ...

    def add_stream(self, name: str, stream: Any, overwrite: bool,
                   max_bytes: int) -> LibraryFile: ...

    def remove(self, name: str) -> LibraryFile: ...

    def remove_stale_temps(self) -> int: ...


@dataclass(frozen=True)
class Parts:
    backend: Backend[Any]
    library: Any  # Library or S3Library (LibraryStore); Any keeps `open` for the local one
    journal: JournalSink
    read_journal: JournalReader


def open_parts(config: Config, clock: Clock) -> Parts:
    """The configured store's parts; for S3 the client is made, nothing is sent yet."""
    storage = config.storage
    if storage.backend == "s3":
        from promoter.objectstore import ObjectStore
        from promoter.s3backend import S3Backend
        from promoter.s3library import S3Journal, S3Library

        objects = ObjectStore(storage.s3)
        journal = S3Journal(objects, storage.host, clock)
        return Parts(S3Backend(objects), S3Library(objects, clock), journal, journal.read)
    folder = storage.artifacts_dir / AUDIT_DIR

    def read_local(since: datetime | None, run_id: str | None) -> list[dict[str, Any]]:
        return read_journal(folder, since, run_id)

    return Parts(LocalDisk(storage.artifacts_dir), Library(storage.library_dir, clock),
                 LocalJournal(folder), read_local)

"""The library and the audit journal in the bucket (DESIGN §10, §11).

`S3Library` is `library.Library` over `<prefix>library/<name>`: a name is never
overwritten unless asked (a conditional create, `If-None-Match: *`, for what fits
one PUT). `S3Journal` writes one object a batch under
`<prefix>audit/<YYYY-MM-DD>/<timestamp>-<host_id>-<random>.jsonl`, so a listing is
in time order and no two processes ever write the same object.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any, BinaryIO

from promoter import audit
from promoter.backend import StoredRead
from promoter.clock import Clock, from_timestamp_ns
from promoter.errors import ConflictError, NotFoundError, PromoterError
from promoter.library import LibraryFile, capped_copy
from promoter.metadata import guess_content_type
from promoter.names import check_library_name
from promoter.objectstore import EntryFields, ObjectStore
from promoter.s3errors import ObjectNotFound, PreconditionFailed
from promoter.s3layout import library_key

__all__ = ["S3Journal", "S3Library"]

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class S3Library:
    """Adds, lists, reads and deletes files under `<prefix>library/`."""

    def __init__(self, objects: ObjectStore, clock: Clock) -> None:
        self.objects = objects
        self.clock = clock
        self.head_key = f"{objects.prefix}library/"
        self.path = f"s3://{objects.settings.bucket}/{self.head_key}"  # for messages

    def list(self) -> list[LibraryFile]:
        files = []
        for page in self.objects.list_pages("library/"):
            for info in page:
                name = info.key[len(self.head_key):]
                if "/" in name or name.startswith(".") or not name:
                    continue
                files.append(LibraryFile(name=name, size_bytes=info.size,
                                         content_type=guess_content_type(name),
                                         modified_at=info.last_modified.astimezone(UTC)))
        return sorted(files, key=lambda f: f.name)

    def read(self, name: str) -> tuple[StoredRead, LibraryFile]:
        """The file to read in ranges (one HEAD; GETs on that version), and its description."""
        key = library_key(self.objects.prefix, check_library_name(name))
        try:
            head = self.objects.head(key)
        except ObjectNotFound:
            raise NotFoundError(f"no library file {name}") from None
        size, etag = head.info.size, head.info.etag

        def chunks(start: int, end: int | None) -> Iterator[bytes]:
            stop = size if end is None else min(end, size)
            return iter(()) if start >= stop else self.objects.stream(key, start, stop,
                                                                      if_match=etag)

        modified = head.info.last_modified.astimezone(UTC)
        item = LibraryFile(name=name, size_bytes=size, content_type=guess_content_type(name),
                           modified_at=modified)
        return StoredRead(size=size, mtime_ns=int(modified.timestamp() * 1e9),
                          sha256=head.sha256, _chunks=chunks), item

    def exists(self, name: str) -> bool:
        try:
            self.objects.head(library_key(self.objects.prefix, check_library_name(name)))
        except ObjectNotFound:
            return False
        return True

    def add(self, name: str, write: Callable[[int], None], overwrite: bool,
            mtime_ns: int | None = None) -> LibraryFile:
        """Spool `write(fd)` to a temporary file, then upload it: a conditional create when
        it must not overwrite (one PUT up to the multipart threshold)."""
        key = library_key(self.objects.prefix, check_library_name(name))
        with tempfile.TemporaryFile(prefix="promoter-library-") as spool:
            fd = spool.fileno()
            write(fd)
            size = os.fstat(fd).st_size
            when = from_timestamp_ns(mtime_ns) if mtime_ns is not None else self.clock.now()
            fields = EntryFields(filename=name, agent_id="library",
                                 generated_at=audit_stamp(when))
            small = size <= self.objects.settings.multipart_threshold_bytes
            if not overwrite and small:
                data = os.pread(fd, size, 0)
                try:
                    self.objects.put_if(key, data, etag=None)
                except PreconditionFailed:
                    raise ConflictError(f"library file {name} exists") from None
            else:
                if not overwrite and self.exists(name):
                    raise ConflictError(f"library file {name} exists")
                self.objects.put_file(key, fd, size, fields)
        return LibraryFile(name=name, size_bytes=size, content_type=guess_content_type(name),
                           modified_at=self.clock.now())

    def add_stream(self, name: str, stream: BinaryIO, overwrite: bool,
                   max_bytes: int) -> LibraryFile:
        """An upload: refused whole (nothing stored) once it passes `max_bytes`."""
        if not overwrite and self.exists(name):
            raise ConflictError(f"library file {name} exists")
        return self.add(name, capped_copy(stream, max_bytes), overwrite)

    def remove(self, name: str) -> LibraryFile:
        key = library_key(self.objects.prefix, check_library_name(name))
        try:
            head = self.objects.head(key)
        except ObjectNotFound:
            raise NotFoundError(f"no library file {name}") from None
        self.objects.delete_many([key])
        return LibraryFile(name=name, size_bytes=head.info.size,
                           content_type=guess_content_type(name),
                           modified_at=head.info.last_modified.astimezone(UTC))

    def remove_stale_temps(self) -> int:
        """Nothing: uploads are spooled locally; stale multipart uploads are aborted."""
        return 0


def audit_stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class S3Journal:
    """The audit journal as one object a batch (DESIGN §11); never rewritten."""

    def __init__(self, objects: ObjectStore, host: str, clock: Clock) -> None:
        self.objects = objects
        self.host = _UNSAFE.sub("_", host)[:64] or "host"
        self.clock = clock

    def append(self, day: str, data: bytes) -> None:
        """One PUT; a failure is an OSError for the auditor (`audit.failed`)."""
        stamp = self.clock.now().astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        key = f"{self.objects.prefix}audit/{day}/{stamp}-{self.host}-{secrets.token_hex(4)}.jsonl"
        try:
            self.objects.put(key, data)
        except PromoterError as exc:
            raise OSError(errno.EIO, str(exc)) from None

    def _days(self) -> dict[str, list[str]]:
        head = f"{self.objects.prefix}audit/"
        days: dict[str, list[str]] = {}
        for page in self.objects.list_pages("audit/"):
            for info in page:
                day, _, name = info.key[len(head):].partition("/")
                if _DAY.match(day) and name.endswith(".jsonl") and "/" not in name:
                    days.setdefault(day, []).append(info.key)
        return days

    def prune(self, before: str) -> list[str]:
        removed = []
        for day, keys in sorted(self._days().items()):
            if day < before:
                try:
                    self.objects.delete_many(keys)
                except PromoterError as exc:
                    raise OSError(errno.EIO, str(exc)) from None
                removed.append(day)
        return removed

    def read(self, since: datetime | None, run_id: str | None) -> list[dict[str, Any]]:
        """Every event since `since`, merged in time order (bad lines skipped, reported)."""
        first = since.astimezone(UTC).date() if since is not None else date.min
        found: list[tuple[datetime, dict[str, Any]]] = []
        for day, keys in sorted(self._days().items()):
            with contextlib.suppress(ValueError):
                if date.fromisoformat(day) < first:
                    continue
            for key in sorted(keys):
                try:
                    raw, _ = self.objects.get(key)
                except ObjectNotFound:
                    continue  # pruned meanwhile
                found += audit.events_in(raw, key.rsplit("/", 1)[-1], since, run_id)
        return audit.merged(found)

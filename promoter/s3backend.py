"""The object-store backend: the storage seam over an S3-compatible bucket (DESIGN §10).

Bytes only, as `localdisk.py` is for folders: which key is read, written or
deleted, never what it means. There is no lock across hosts: a write session's
handle remembers the ETag each metadata read returned, `write_meta` is a
conditional PUT on it (`If-None-Match: *` for a run that had none), and a write
that lost its race raises `LostRace`; the store reads again and retries. Keys
come from `s3layout`, built only from names that passed the checks of §1.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from promoter import rules
from promoter.backend import ByteBudget, ImmediateBatch, LostRace, Relisted, StoredRead
from promoter.clock import UNREAD, file_time, format_time, parse_time
from promoter.context import RunContext
from promoter.errors import InvalidNameError
from promoter.layout import FILES
from promoter.localdisk import Oversized
from promoter.metadata import ArtifactEntry, RunMetadata, Tombstone, guess_content_type
from promoter.names import is_valid_run_id
from promoter.objectstore import UPLOAD_CONCURRENCY, EntryFields, ObjectHead, ObjectStore
from promoter.s3errors import ObjectNotFound, ObjectRefused, PreconditionFailed
from promoter.s3errors import SourceChanged as UploadChanged
from promoter.s3layout import (
    file_key,
    meta_key,
    part_size_for,
    relpath_from_file_key,
    run_id_from_meta_key,
    tombstone_key,
)
from promoter.safeio import CopyPools, CopyResult, Refused, SourceChanged

__all__ = ["S3Backend", "S3Handle"]

STALE_UPLOAD = timedelta(hours=1)  # multipart uploads older than this are a crash's (§10)
RELIST_MARGIN = timedelta(minutes=5)  # clock skew between a host and the store
PUT_CONCURRENCY = 32  # files of one batch uploaded at once (small files are latency-bound)
LISTING_FRESH_S = 10.0  # a listing's ETags stand for the runs' versions this long


@dataclass
class S3Handle:
    """A write session: the ETag each metadata read saw (None: there was none)."""

    etags: dict[str, str | None] = field(default_factory=dict)


class S3Backend:
    """Runs, stored files and tombstones as objects under the configured prefix."""

    marks_deletion = True  # many objects cannot leave in one step: mark, then delete (§10)
    put_concurrency = PUT_CONCURRENCY  # a batch's files go up in parallel (Store)

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self.prefix = objects.prefix
        self._listed: dict[str, str] = {}  # ETags of the last listing, each used once
        self._listed_at = 0.0
        # memory bound for uploads in flight: the parts in flight of a multipart upload, or files
        # up to the threshold read whole, whichever is larger
        threshold = objects.settings.multipart_threshold_bytes
        self.budget = ByteBudget(max(UPLOAD_CONCURRENCY * part_size_for(threshold + 1),
                                     threshold))
        self._probed = False

    # -- the store ----------------------------------------------------------------------------

    def check(self, create: bool) -> None:
        """The probe of §10 (bucket, credentials, conditional writes); at a daemon's start
        also abort the multipart uploads a crash left behind."""
        if not self._probed:  # once a process (require_store, then ensure_folders)
            self.objects.probe()
            self._probed = True
        if create:
            self.clean_leftovers()

    def describe(self) -> str:
        where = self.objects.settings.endpoint or "AWS S3"
        return f"bucket {self.objects.settings.bucket!r} prefix {self.prefix!r} at {where}"

    def clean_leftovers(self) -> None:
        self.objects.abort_stale_uploads(STALE_UPLOAD)

    # -- runs ---------------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """One paginated listing of meta/ (each key with its ETag, kept for meta_version)."""
        found: dict[str, str] = {}
        for page in self.objects.list_pages("meta/"):
            for info in page:
                run_id = run_id_from_meta_key(self.prefix, info.key)
                if run_id is not None:
                    found[run_id] = info.etag
        self._listed, self._listed_at = found, time.monotonic()
        return sorted(found)

    def listed(self) -> dict[str, str]:
        """Run id -> metadata ETag, from one fresh listing of meta/ (for readers that cache)."""
        self.run_ids()
        return dict(self._listed)

    def is_run(self, run_id: str) -> bool:
        """Metadata, or stored objects whose metadata a crash never wrote (to be rebuilt)."""
        return self._head_etag(meta_key(self.prefix, run_id)) is not None or \
            self.has_files(None, run_id)

    @contextlib.contextmanager
    def reading(self) -> Iterator[S3Handle]:
        yield S3Handle()

    @contextlib.contextmanager
    def locked(self, run_id: str, wait: bool = True) -> Iterator[S3Handle]:
        """No lock across hosts: the session's conditional writes are the compare-and-set."""
        yield S3Handle()

    # -- metadata -------------------------------------------------------------------------------

    def _head_etag(self, key: str) -> str | None:
        try:
            return self.objects.head(key).info.etag
        except ObjectNotFound:
            return None

    def meta_version(self, run_id: str) -> str | None:
        """The metadata's ETag: from the listing just made (`run_ids`, used once and only
        while LISTING_FRESH_S old, so it never hides a later change for long), else a HEAD."""
        listed = self._listed.pop(run_id, None)
        if listed is not None and time.monotonic() - self._listed_at < LISTING_FRESH_S:
            return listed
        return self._head_etag(meta_key(self.prefix, run_id))

    def read_meta(self, handle: S3Handle, run_id: str, limit: int) -> bytes | None:
        key = meta_key(self.prefix, run_id)
        try:
            data, etag = self.objects.get(key, max_bytes=limit)
        except ObjectNotFound:
            handle.etags[run_id] = None
            return None
        except ObjectRefused:
            head = self._head_etag(key)
            handle.etags[run_id] = head
            raise Oversized(f"larger than promote.max_metadata_bytes ({limit})") from None
        handle.etags[run_id] = etag
        return data

    def write_meta(self, handle: S3Handle, run_id: str, data: bytes) -> None:
        """A conditional PUT on what this session read: If-Match its ETag, If-None-Match: *
        when there was none; LostRace when another writer came first."""
        try:
            etag = self.objects.put_if(meta_key(self.prefix, run_id), data,
                                       etag=handle.etags.get(run_id))
        except PreconditionFailed:
            handle.etags.pop(run_id, None)
            raise LostRace(f"run {run_id} changed meanwhile") from None
        handle.etags[run_id] = etag

    # -- stored files ---------------------------------------------------------------------------

    def put_file(self, handle: S3Handle, run_id: str, filename: str, src: int,
                 st: os.stat_result, checksum: bool, max_bytes: int, pools: CopyPools | None,
                 agent_id: str = "unknown") -> CopyResult:
        """Stream the open source into its object, hashed in the same pass, with the entry's
        fields as user metadata; SourceChanged when it changed meanwhile."""
        when = file_time(st.st_mtime_ns)
        fields = EntryFields(filename=filename, agent_id=agent_id,
                             generated_at=format_time(when) if when is not None else "")
        key = file_key(self.prefix, run_id, filename)
        try:
            with self.budget.take(self._buffered(st.st_size)):
                stored = self.objects.put_file(key, src, st.st_size, fields)
        except UploadChanged:
            raise SourceChanged(filename) from None
        except (ObjectRefused, InvalidNameError) as exc:  # this file, for good: a refusal
            raise Refused(str(exc)) from None
        after = os.fstat(src)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise SourceChanged(filename)  # the object holds bytes and their own digest
        return CopyResult(size=stored.size, sha256=stored.sha256 if checksum else None)

    def batch(self, handle: S3Handle, run_id: str, checksum: bool, max_bytes: int,
              pools: CopyPools | None) -> ImmediateBatch[S3Handle]:
        """Each object is durable once its PUT completed: nothing to batch."""
        return ImmediateBatch(self, handle, run_id, checksum, max_bytes, pools)

    def _buffered(self, size: int) -> int:
        """Bytes an upload of `size` holds in memory at once."""
        if size <= self.objects.settings.multipart_threshold_bytes:
            return size
        return UPLOAD_CONCURRENCY * part_size_for(size)

    def sync_folders(self, handle: S3Handle, run_id: str,
                     folders: Iterable[tuple[str, ...]]) -> None:
        """Nothing to do: an object is durable once its PUT (or multipart) completed."""

    def open_file(self, run_id: str, filename: str) -> tuple[int, os.stat_result]:
        raise OSError(errno.EOPNOTSUPP, "an object has no descriptor: use read_file")

    def read_file(self, run_id: str, filename: str) -> StoredRead:
        """The object's size and own sha256 from one HEAD; its bytes by ranged GETs on that
        very version (If-Match), so a rewrite in between fails rather than mixing."""
        key = file_key(self.prefix, run_id, filename)
        try:
            head = self.objects.head(key)
        except ObjectNotFound:
            raise FileNotFoundError(errno.ENOENT, "no such object", filename) from None
        size, etag = head.info.size, head.info.etag

        def chunks(start: int, end: int | None) -> Iterator[bytes]:
            stop = size if end is None else min(end, size)
            if start >= stop:
                return iter(())
            return self.objects.stream(key, start, stop, if_match=etag)

        mtime_ns = int(head.info.last_modified.timestamp() * 1e9)
        return StoredRead(size=size, mtime_ns=mtime_ns, sha256=head.sha256, _chunks=chunks)

    def list_files(self, run_id: str, limit: int | None = None) -> list[str]:
        names: list[str] = []
        for page in self.objects.list_pages(f"{FILES}/{run_id}/", page_size=limit or 1000):
            names += [n for n in (relpath_from_file_key(self.prefix, o.key) for o in page) if n]
            if limit is not None and len(names) >= limit:
                break
        return names

    def remove_file(self, handle: S3Handle, run_id: str, filename: str,
                    sha256: str | None = None) -> None:
        """Delete the object, unless a newer upload (another sha256) took its name meanwhile."""
        key = file_key(self.prefix, run_id, filename)
        if sha256 is not None:
            try:
                head = self.objects.head(key)
            except ObjectNotFound:
                return
            if head.sha256 is not None and head.sha256 != sha256:
                return
        self.objects.delete_many([key])

    def trash_run(self, handle: S3Handle, run_id: str) -> None:
        """Delete the run's objects (batched), then its metadata (§10: after the mark)."""
        keys = [file_key(self.prefix, run_id, n) for n in self.list_files(run_id)]
        self.objects.delete_many(keys)
        self.objects.delete_many([meta_key(self.prefix, run_id)])
        self._listed.pop(run_id, None)

    def empty_trash(self) -> None:
        """Nothing: each deletion removes its objects itself."""

    # -- recovery -------------------------------------------------------------------------------

    def has_files(self, handle: S3Handle | None, run_id: str) -> bool:
        return bool(self.list_files(run_id, limit=1))

    def _entry(self, head: ObjectHead, filename: str, ctx: RunContext,
               checksum: bool) -> ArtifactEntry:
        """An entry from the object's own user metadata (a foreign object is hashed)."""
        fields = head.fields
        agent = fields.agent_id if fields is not None else "unknown"
        if agent == "unknown":
            agent = rules.agent_for(ctx, filename)
        try:
            generated = parse_time(fields.generated_at) if fields is not None else None
        except ValueError:
            generated = None
        sha = head.sha256
        if checksum and sha is None:
            digest = hashlib.sha256()
            for piece in self.objects.stream(head.info.key, if_match=head.info.etag):
                digest.update(piece)
            sha = digest.hexdigest()
        return ArtifactEntry(filename=filename, path=f"{FILES}/{filename}", agent_id=agent,
                             generated_at=generated or head.info.last_modified,
                             size_bytes=head.info.size,
                             content_type=guess_content_type(filename),
                             sha256=sha if checksum else None,
                             source_changed_at=UNREAD)  # the source is read once more

    def stored_entries(self, handle: S3Handle, run_id: str, ctx: RunContext,
                       checksum: bool) -> list[ArtifactEntry]:
        out = []
        for name in self.list_files(run_id):
            with contextlib.suppress(ObjectNotFound):
                head = self.objects.head(file_key(self.prefix, run_id, name))
                out.append(self._entry(head, name, ctx, checksum))
        return out

    def set_aside(self, handle: S3Handle, run_id: str, now: datetime) -> str:
        """Copy a corrupt metadata object under .promoter/corrupt/ before it is rebuilt
        (server-side: one over max_metadata_bytes is kept too, as a local rename keeps it)."""
        key = meta_key(self.prefix, run_id)
        aside = (f"{self.prefix}.promoter/corrupt/{run_id}.json."
                 f"corrupt-{now.strftime('%Y%m%dT%H%M%S%fZ')}")
        try:
            self.objects.copy(key, aside)
        except (ObjectNotFound, ObjectRefused):
            return ""
        return aside.removeprefix(self.prefix)

    def remove_temps(self, handle: S3Handle, run_id: str) -> None:
        """Nothing: an object is never visible half-written."""

    def mark(self, handle: S3Handle, run_id: str) -> None:
        """Nothing: `relist` looks at every run's objects (its own rule of what to HEAD)."""

    def repaired_all(self) -> None:
        """Nothing, as `mark`."""

    def relist(self, handle: S3Handle, meta: RunMetadata, context: Callable[[], RunContext],
               checksum: bool) -> Relisted | None:
        """After a crash: objects without an entry adopted from their own fields, entries
        without an object dropped. An object is looked at (HEAD) only when its size differs
        from its entry's or it was written after the metadata: a crash between the two."""
        known = {a.filename: a for a in meta.artifacts}
        seen: set[str] = set()
        fresh: list[ArtifactEntry] = []
        ctx: RunContext | None = None
        since = meta.updated_at - RELIST_MARGIN
        tomb = self._tombstone(meta.run_id)
        for page in self.objects.list_pages(f"{FILES}/{meta.run_id}/"):
            for info in page:
                name = relpath_from_file_key(self.prefix, info.key)
                if name is None:
                    continue
                old = known.get(name)
                if old is None and rules.raced_deletion(tomb, info.last_modified, RELIST_MARGIN):
                    self.objects.delete_many([info.key])  # an upload that raced a deletion
                    continue
                seen.add(name)
                if old is not None and old.size_bytes == info.size and \
                        info.last_modified < since:
                    continue
                try:
                    head = self.objects.head(info.key)
                except ObjectNotFound:
                    seen.discard(name)
                    continue
                if old is not None and old.size_bytes == head.info.size and \
                        (head.sha256 is None or head.sha256 == old.sha256 or not checksum):
                    continue
                ctx = ctx or context()
                fresh.append(self._entry(head, name, ctx, checksum))
        dropped = len(known.keys() - seen)
        if not fresh and not dropped:
            return None
        return rules.relist(meta, fresh, seen), len(fresh), dropped

    def _tombstone(self, run_id: str) -> Tombstone | None:
        raw = self.read_tombstone(run_id)
        try:
            return Tombstone.model_validate_json(raw) if raw is not None else None
        except ValueError:
            return None

    # -- tombstones -----------------------------------------------------------------------------

    def read_tombstone(self, run_id: str) -> bytes | None:
        try:
            return self.objects.get(tombstone_key(self.prefix, run_id), max_bytes=1 << 16)[0]
        except (ObjectNotFound, ObjectRefused):
            return None

    def write_tombstone(self, handle: S3Handle, run_id: str, data: bytes) -> None:
        self.objects.put(tombstone_key(self.prefix, run_id), data)

    def tombstones(self) -> list[str]:
        head = f"{self.prefix}tombstones/"
        names = [o.key[len(head):] for page in self.objects.list_pages("tombstones/")
                 for o in page]
        return [n for n in names if is_valid_run_id(n)]

    def drop_tombstone(self, run_id: str) -> bool:
        key = tombstone_key(self.prefix, run_id)
        if self._head_etag(key) is None:
            return False
        self.objects.delete_many([key])
        return True


"""The artifact store (DESIGN §1, §2, §6, §10): what commands, the daemon and the server call.

`StoreCore` (storecore.py) reads runs and owns every metadata change; this adds
promotion, keeping, deletion (deletion.py) and serving, on whichever backend the
configuration names (storage.py): folders, or one bucket for many hosts.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from promoter import deletion, events, promotion, rules
from promoter.backend import StoredRead, TooManyRaces
from promoter.clock import format_time
from promoter.context import RunContext
from promoter.deletion import DeleteReport
from promoter.errors import ConflictError, NotFoundError, StoreIOError, host_limit
from promoter.layout import session_file
from promoter.library import LibraryFile
from promoter.localdisk import LockFileError
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.names import check_library_name, check_run_id, split_relpath
from promoter.parsedruns import RunView
from promoter.promotion import RETRY, Outcome, PromoteResult
from promoter.s3errors import StoreUnavailable
from promoter.safeio import CopyResult, Refused, folder, out_of_descriptors
from promoter.storecore import StoreCore

__all__ = ["RETRY", "DeleteReport", "LockFileError", "Outcome", "PromoteResult", "Store"]

log = get_logger()


class Store(StoreCore):
    """Owns the artifacts (and, through `.library`, the library); reads `sessions/` only."""

    # -- keeping -------------------------------------------------------------------------

    def set_keep(self, run_id: str, keep: bool) -> RunMetadata:
        """Pin a run so that it never expires, or unpin it."""
        self._require(run_id)

        def apply(art: Any) -> tuple[RunMetadata, bool]:
            meta = self.load_for_update(art, run_id)
            if meta is None or meta.status == "deleting":  # a deletion won the race
                raise NotFoundError(f"no run {run_id}")
            changed = meta.keep != keep
            if changed:
                meta.keep = keep
                self.write_metadata(art, meta)
            return meta, changed

        meta, changed = self.change(run_id, apply)
        if changed:
            self.audit.one(events.RUN_KEPT if keep else events.RUN_UNKEPT, run_id=run_id)
        return meta

    # -- run context ---------------------------------------------------------------------

    def apply_context(self, meta: RunMetadata, ctx: RunContext) -> tuple[RunMetadata, bool]:
        """Fold run.json and attribution into the run (rules.apply_context); True if changed."""
        applied = rules.apply_context(meta, ctx, self.config.retention)
        if applied.completed:
            log.info(events.RUN_COMPLETED, run_id=meta.run_id, reason=f"run.json {ctx.status}")
        return applied.meta, applied.changed

    def refresh_context(self, run_id: str) -> RunMetadata | RunView | None:
        """Re-read the run's context and update its metadata if the run exists. A current
        cached run (or the view the bounded cache left of it) the context leaves as it is
        takes no write session and no parse (issue 15)."""
        cached, view = self.current(check_run_id(run_id))
        if cached is None and view is None and not self._exists(run_id):
            return None
        ctx = self.context(run_id)
        if cached is not None and cached.status != "deleting" \
                and not rules.apply_context(cached, ctx, self.config.retention).changed:
            return cached
        if view is not None and not view.context_changes(ctx):
            return view

        def apply(art: Any) -> RunMetadata | None:
            meta = self.load_current(art, run_id)  # shared: apply_context copies to change
            if meta is None or meta.status == "deleting":
                return None
            meta, changed = self.apply_context(meta, ctx)
            if changed:
                self.write_metadata(art, meta)
            return meta

        return self.change(run_id, apply)

    def mark_completed(self, run_id: str, reason: str = "session gone") -> None:
        """A run whose session folder is gone is complete (DESIGN §2)."""
        if not self._exists(check_run_id(run_id)):
            return

        def apply(art: Any) -> bool:
            meta = self.load_for_update(art, run_id)
            if meta is None or meta.status != "active":
                return False
            meta.status = "completed"
            self.write_metadata(art, meta)
            return True

        if self.change(run_id, apply):
            log.info(events.RUN_COMPLETED, run_id=run_id, reason=reason)

    # -- promotion -----------------------------------------------------------------------

    def promote_files(self, run_id: str, filenames: Iterable[str]) -> list[PromoteResult]:
        """Promote files of `sessions/<run_id>/output/` in one batch with one metadata write.

        A batch whose metadata write lost its race (another host changed the run) is
        decided again on the fresh metadata; a copy already stored from the same source
        version is not sent twice.
        """
        check_run_id(run_id)
        names = list(dict.fromkeys(filenames))
        stored: dict[str, tuple[tuple[int, int, int], CopyResult]] = {}
        results: list[PromoteResult] = []
        try:
            with folder(self.sessions_path) as sessions:
                ctx = self.context(run_id, names, sessions)
                results = self.change(run_id, lambda art: self._promote_batch(
                    art, sessions, run_id, names, ctx, stored))
        except (OSError, StoreUnavailable, TooManyRaces) as exc:  # the store: all wait
            reason = str(exc)
            if isinstance(exc, OSError):  # which entry, when the error names one
                where = f" ({exc.filename})" if exc.filename else ""
                reason = host_limit(exc) or f"store unusable: {exc.strerror or exc}{where}"
            done = {r.filename for r in results}
            results = [r if r.outcome is not Outcome.PROMOTED else
                       PromoteResult(run_id, r.filename, Outcome.FAILED, reason) for r in results]
            results += [PromoteResult(run_id, n, Outcome.FAILED, reason) for n in names
                        if n not in done]
        promotion.log_results(self.clock, results)
        self._journal_promoted(results)
        return results

    def _promote_batch(self, art: Any, sessions: int, run_id: str, names: list[str],
                       ctx: Any, stored: dict[str, tuple[tuple[int, int, int], CopyResult]]
                       ) -> list[PromoteResult]:
        meta = self.load_current(art, run_id)
        tomb = self.read_tombstone(run_id)
        created = meta is None or meta.status == "deleting"
        fresh_run = meta is None and tomb is None  # neither deleted nor being deleted
        if meta is None or meta.status == "deleting":
            meta = rules.new_run(run_id, ctx, self.clock.now(), self.config.retention)
        limits = self.config.promote
        with self.disk.batch(art, run_id, self._checksum, limits.max_file_bytes,
                             self.pools) as batch:

            def put(name: str, src: int, st: os.stat_result) -> CopyResult:
                version = (st.st_size, st.st_mtime_ns, st.st_ino)
                if name in stored and stored[name][0] == version:
                    return stored[name][1]  # sent in an attempt that lost its race
                copied = batch.put(name, src, st, agent_id=rules.agent_for(ctx, name))
                stored[name] = (version, copied)
                return copied

            workers = min(self.disk.put_concurrency, len(names))
            if workers > 1 and self._fits_run(meta, run_id, names):
                # an object store: PUTs wait on the network, so several go at once
                results, fresh = promotion.promote_parallel(self.config, sessions, put, meta,
                                                            tomb, ctx, names, workers)
            else:
                results, fresh = promotion.promote_batch(self.config, sessions, put, meta,
                                                         tomb, ctx, names)
            # every copy durable and in place (its folder flushed) before an entry names it
            failed = batch.commit()
        if failed:
            results = promotion.failed_renames(results, failed)
            fresh = [e for e in fresh if e.filename not in failed]
        meta = rules.upsert_many(meta, fresh)
        # a file read and found the same (its ctime moved: rules.Verdict.RECHECK) writes the
        # run too: its entry now records that ctime, so no later pass nor start reads it again
        changed = any(r.outcome is Outcome.PROMOTED or r.reason == promotion.READ_SAME
                      for r in results)
        # a refusal alone creates the run, so that `show` and the page tell why the file is
        # not there (DESIGN §2), unless the run was deleted (deleted stays deleted, §1)
        if changed or not created or fresh_run:
            for r in results:
                if r.outcome is Outcome.REJECTED:
                    noted = rules.note_rejection(meta, r.filename, r.reason, r.size_bytes,
                                                 self.clock.now())
                    changed = changed or noted is not meta
                    meta = noted
        if changed or not created:
            meta, context_changed = self.apply_context(meta, ctx)
            changed = context_changed or changed
        if changed:
            written = self.write_metadata(art, meta)
            self.remember_local(run_id, meta, written)  # the next batch need not parse it
            if created:
                log.info(events.RUN_CREATED, run_id=run_id, workflow_id=meta.workflow_id,
                         expires_at=format_time(meta.expires_at))
        return results

    def note_refusals(self, run_id: str, refusals: list[tuple[str, str]]) -> None:
        """The walk's own refusals (filename, reason: a folder too deep, `output/` a link)
        in the run's `rejected` list, as a refused file's are (DESIGN §2); a refusal alone
        creates the run, unless the run was deleted (deleted stays deleted, §1)."""
        check_run_id(run_id)

        def apply(art: Any) -> None:
            meta = self.load_current(art, run_id)
            if meta is not None and meta.status == "deleting":
                return
            created = meta is None
            if meta is None:
                if self.read_tombstone(run_id) is not None:
                    return
                ctx = self.context(run_id)
                meta = rules.new_run(run_id, ctx, self.clock.now(), self.config.retention)
                meta, _ = self.apply_context(meta, ctx)
            noted = meta
            for filename, reason in refusals[-rules.MAX_REJECTED:]:  # the list keeps no more
                noted = rules.note_rejection(noted, filename, reason, None, self.clock.now())
            if noted is meta and not created:
                return
            self.remember_local(run_id, noted, self.write_metadata(art, noted))
            if created:
                log.info(events.RUN_CREATED, run_id=run_id, workflow_id=noted.workflow_id,
                         expires_at=format_time(noted.expires_at))

        self.change(run_id, apply)

    def _fits_run(self, meta: RunMetadata, run_id: str, names: list[str]) -> bool:
        """Whether the run stays within max_run_bytes even if every named file is added
        (their sizes now, by stat; a file that cannot be seen counts as nothing)."""
        total = meta.total_bytes
        for name in names:
            with contextlib.suppress(OSError, ValueError):
                total += os.stat(session_file(self.sessions_path, run_id, name),
                                 follow_symlinks=False).st_size
        return total <= self.config.promote.max_run_bytes

    def _journal_promoted(self, results: list[PromoteResult]) -> None:
        """The batch's promotions: one journal write; a journal failure never stops promotion."""
        now_ns = int(self.clock.now().timestamp() * 1e9)
        batch = [(events.ARTIFACT_PROMOTED, promotion.promoted_fields(r, now_ns)) for r in results
                 if r.outcome is Outcome.PROMOTED and r.entry is not None]
        with contextlib.suppress(StoreIOError):  # logged (audit.failed) by the auditor
            self.audit.record(batch)

    # -- deletion (deletion.py) ----------------------------------------------------------

    def tombstones(self) -> list[str]:
        return self.disk.tombstones()

    def drop_stale_tombstones(self) -> list[str]:
        return deletion.drop_stale_tombstones(self)

    def delete_run(self, run_id: str, reason: str = "rm",
                   created_before: datetime | None = None) -> DeleteReport:
        return deletion.delete_run(self, run_id, reason, created_before)

    def delete_artifact(self, run_id: str, filename: str) -> ArtifactEntry:
        return deletion.delete_artifact(self, run_id, filename)

    def finish_deletions(self) -> list[str]:
        return deletion.finish_deletions(self)

    def empty_trash(self) -> None:
        """What crashes left: the trash (local), stale multipart uploads (S3)."""
        self.disk.clean_leftovers()

    # -- expiry --------------------------------------------------------------------------

    def is_expired(self, meta: RunMetadata | RunView, now: datetime | None = None,
                   created_before: datetime | None = None) -> bool:
        """rules.is_expired (DESIGN §2), with the lever `created_before` (`sweep --older-than`)."""
        return rules.is_expired(meta, now or self.clock.now(), created_before)

    def expired_runs(self, created_before: datetime | None = None
                     ) -> list[RunMetadata | RunView]:
        now = self.clock.now()  # heads only: no parse of the runs the daemon let go (§9)
        return [m for m in self.list_looks() if self.is_expired(m, now, created_before)]

    # -- serving -------------------------------------------------------------------------

    def _entry_of(self, run_id: str, filename: str,
                  meta: RunMetadata | None) -> ArtifactEntry:
        check_run_id(run_id)
        split_relpath(filename)
        if meta is None:
            meta = self.get_run(run_id)
        entry = meta.entry(filename)
        if entry is None:
            raise NotFoundError(f"no artifact {filename} in run {run_id}")
        return entry

    def open_artifact(
        self, run_id: str, filename: str, meta: RunMetadata | None = None
    ) -> tuple[int, os.stat_result, ArtifactEntry]:
        """An open descriptor on a stored copy with its entry; links are never followed.
        The local disk only: `read_artifact` works on every backend.

        `meta`: the run's metadata when the caller has a current copy (`cached_run`).
        """
        entry = self._entry_of(run_id, filename, meta)
        try:
            fd, st = self.disk.open_file(run_id, filename)
        except (OSError, Refused) as exc:
            if out_of_descriptors(exc):
                raise StoreIOError("the server cannot open files now: too many open "
                                   "descriptors") from None
            raise NotFoundError(f"no artifact {filename} in run {run_id}") from None
        return fd, st, entry

    def read_artifact(self, run_id: str, filename: str, meta: RunMetadata | None = None
                      ) -> tuple[StoredRead, ArtifactEntry]:
        """A stored copy to read in ranges, with its entry, on any backend. Its `sha256` is
        the copy's own where the store keeps one (S3: the object's), so a server's ETag
        never names another version's digest; else None (use the entry's). Close it."""
        entry = self._entry_of(run_id, filename, meta)
        try:
            return self.disk.read_file(run_id, filename), entry
        except (OSError, Refused) as exc:
            if out_of_descriptors(exc):
                raise StoreIOError("the server cannot open files now: too many open "
                                   "descriptors") from None
            raise NotFoundError(f"no artifact {filename} in run {run_id}") from None

    def promote_to_library(self, run_id: str, filename: str, as_name: str | None = None,
                           overwrite: bool = False) -> LibraryFile:
        """Copy a stored artifact into the library under its base name or `as_name`."""
        name = check_library_name(as_name if as_name else filename.rsplit("/", 1)[-1])
        if not overwrite and self.library.exists(name):
            raise ConflictError(f"library file {name} exists")
        source, _ = self.read_artifact(run_id, filename)
        with source:
            def write(fd: int) -> None:
                if source.fd is not None:  # the local disk: copied in the kernel
                    _copy_range(source.fd, fd, source.size)
                    return
                for piece in source.chunks():
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view):]

            added: LibraryFile = self.library.add(name, write, overwrite,
                                                  mtime_ns=source.mtime_ns)
        self.audit.one(events.LIBRARY_PROMOTED, run_id=run_id, filename=filename, name=name,
                       size_bytes=added.size_bytes, overwrite=overwrite)
        return added

    def delete_library_file(self, name: str) -> LibraryFile:
        """Delete one library file (`library.deleted`)."""
        removed: LibraryFile = self.library.remove(name)
        self.audit.one(events.LIBRARY_DELETED, name=removed.name, size_bytes=removed.size_bytes)
        return removed


_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def _copy_range(src: int, dst: int, size: int) -> None:
    """Copied in the kernel; read and written here where it cannot be (library/ on another
    file system than artifacts/: EXDEV, probe r10-mark F3; a file system without it)."""
    offset = 0
    while offset < size:
        try:
            sent = os.copy_file_range(src, dst, size - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            piece = memoryview(os.pread(src, min(size - offset, 1 << 20), offset))
            sent = 0
            while sent < len(piece):
                sent += os.pwrite(dst, piece[sent:], offset + sent)
        if sent == 0:
            break
        offset += sent

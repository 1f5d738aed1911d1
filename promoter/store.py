"""The artifact store: `artifacts/<run_id>/` with its metadata.json (DESIGN §1, §2, §6).

Every change to a run happens under the run's lock (threads and processes
alike) and ends with one atomic metadata write, so the daemon, the command
line and the HTTP server never lose each other's updates. Copies are made
under the same lock, so an entry always describes the file beside it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from promoter import events, promotion, recovery, rules
from promoter.audit import AUDIT_DIR, Actor, Auditor, LocalJournal, cli_actor
from promoter.backend import Backend
from promoter.budget import StoreTotal, evictable
from promoter.clock import Clock, SystemClock, format_time
from promoter.config import Config
from promoter.context import AttributionReader, RunContext, read_run_json
from promoter.errors import ConflictError, NotFoundError, StoreIOError
from promoter.layout import LOCKS, TOMBSTONES, TRASH
from promoter.library import Library, LibraryFile
from promoter.localdisk import LocalDisk, LockFileError, Oversized
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata, Tombstone
from promoter.names import (
    check_library_name,
    check_run_id,
    split_relpath,
)
from promoter.promotion import RETRY, Outcome, PromoteResult
from promoter.safeio import CopyPools, CopyResult, Refused, folder, out_of_descriptors

__all__ = ["RETRY", "DeleteReport", "LockFileError", "Outcome", "PromoteResult", "Store"]

log = get_logger()
@dataclass(frozen=True)
class DeleteReport:
    run_id: str
    files: int
    size_bytes: int


def _json_invalid(exc: Exception) -> bool:
    """Whether a parse failed on the JSON itself, read from the error list, never from
    str(exc), which renders every error and every input (seconds on a planted file)."""
    if not isinstance(exc, ValidationError):
        return False
    return any(e["type"] == "json_invalid" for e in
               exc.errors(include_url=False, include_context=False, include_input=False))


class Store:
    """Owns `artifacts/` (and, through `.library`, `library/`); reads `sessions/` only."""

    def __init__(self, config: Config, clock: Clock | None = None,
                 actor: Actor | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.sessions_path = config.storage.sessions_dir
        self.artifacts_path = config.storage.artifacts_dir
        # the local journal sink; another backend passes its own to Auditor (DESIGN §11)
        self.audit = Auditor(LocalJournal(self.artifacts_path / AUDIT_DIR), config.storage.host,
                             actor or cli_actor(), self.clock)
        # the backend (backend.py): bytes, folders and locks; every rule is decided here
        self.disk: Backend[int] = LocalDisk(self.artifacts_path)
        self.library = Library(config.storage.library_dir, self.clock)
        self.attribution = AttributionReader()
        self._cache: dict[str, tuple[Hashable, RunMetadata]] = {}
        self.total = StoreTotal()  # the store's size, kept as metadata is written (DESIGN §4)
        self.on_over_budget: Callable[[], None] | None = None  # the daemon kicks its sweeper
        self.pools: CopyPools | None = None  # the daemon's pipeline lends its copy threads

    # -- folders -------------------------------------------------------------------------

    def ensure_folders(self, sessions: bool = True) -> None:
        """Create the storage folders and promoter's own dot-folders when missing."""
        paths = [self.artifacts_path, self.library.path]
        if sessions:
            paths.append(self.sessions_path)
        try:
            for path in paths:
                path.mkdir(parents=True, exist_ok=True)
            for name in (LOCKS, TRASH, TOMBSTONES, AUDIT_DIR):
                (self.artifacts_path / name).mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreIOError(f"cannot create storage folders: {exc.strerror}") from None

    def require_store(self) -> None:
        """Commands other than `run` never create the store (DESIGN §3): a mistyped root must
        not look like an empty store, nor grow a new tree."""
        if not os.path.isdir(self.artifacts_path):
            raise NotFoundError(f"no store at {self.artifacts_path}: the folder does not exist "
                                "(check --root / storage.artifacts; only `promoter run` "
                                "creates the store)")

    def _exists(self, run_id: str) -> bool:
        """A cheap look before taking a lock, so asking about a missing run creates nothing."""
        return self.disk.is_run(run_id)

    def _require(self, run_id: str) -> None:
        if not self._exists(check_run_id(run_id)):
            raise NotFoundError(f"no run {run_id}")

    def locked(self, run_id: str, wait: bool = True) -> contextlib.AbstractContextManager[int]:
        """Hold the run's lock; yields the handle (the artifacts folder's descriptor) that
        writes take. `wait=False`: BlockingIOError at once when another holds it."""
        return self.disk.locked(run_id, wait)

    # -- reading -------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """Every run in the store."""
        return self.disk.run_ids()

    def read_run(self, run_id: str) -> RunMetadata | None:
        """The run's metadata (shared, treat as read-only), or None if there is no such run.

        Parsed models are cached by the file's identity, so listing many runs
        re-reads only the ones that changed.
        """
        check_run_id(run_id)
        key = self.disk.meta_version(run_id)
        if key is None:
            return self._recover_if_orphaned(run_id)
        cached = self._cache.get(run_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        with self.disk.reading() as art:
            meta = self._parse(art, run_id)
        if meta is None:
            return self._recover_if_orphaned(run_id)
        self._cache[run_id] = (key, meta)
        return meta

    def cached_run(self, run_id: str) -> RunMetadata | None:
        """The run's metadata if the cached copy is current (one stat), else None.

        Never parses: the server calls it on its event loop and, on None, reads the
        run in a worker thread (DESIGN §7: metadata is never parsed on the loop).
        """
        cached = self._cache.get(run_id)
        if cached is None:
            return None
        return cached[1] if cached[0] == self.disk.meta_version(run_id) else None

    def remember(self, run_id: str, meta: RunMetadata) -> None:
        """Under the run's lock: `meta` is what metadata.json holds now, so readers need not
        parse it again (start-up repair reads every run once; the catch-up then reuses it)."""
        version = self.disk.meta_version(run_id)
        if version is not None:
            self._cache[run_id] = (version, meta)

    def get_run(self, run_id: str) -> RunMetadata:
        """The run's metadata, or NotFoundError."""
        meta = self.read_run(run_id)
        if meta is None:
            raise NotFoundError(f"no run {run_id}")
        return meta

    def list_runs(self) -> list[RunMetadata]:
        """Every run, newest first."""
        runs = [m for m in (self.read_run(r) for r in self.run_ids()) if m is not None]
        runs.sort(key=lambda m: (m.created_at, m.run_id), reverse=True)
        return runs

    def _parse(self, art: int, run_id: str) -> RunMetadata | None:
        """Parse metadata.json; None when absent or corrupt (corruption is recovered under lock)."""
        try:
            raw = self._read_metadata_bytes(art, run_id)
        except Oversized:
            return None
        if raw is None:
            return None
        try:
            meta = RunMetadata.model_validate_json(raw)
        except ValidationError:
            return None
        return meta if meta.run_id == run_id else None

    def _read_metadata_bytes(self, art: int, run_id: str) -> bytes | None:
        return self.disk.read_meta(art, run_id, self.config.promote.max_metadata_bytes)

    def _recover_if_orphaned(self, run_id: str) -> RunMetadata | None:
        """A run folder whose metadata is missing or corrupt is rebuilt, never dropped.

        A reader never waits for the run's lock: whoever holds it (the daemon copying
        the run's first batch, a rebuild) is writing the metadata; until then the run
        is not there. Waiting froze the HTTP server behind a copy (issue 11).
        """
        if not self.disk.is_run(run_id):  # a link planted as a run folder is none (DESIGN §6)
            return None
        try:
            with self.locked(run_id, wait=False) as art:
                return self.load_for_update(art, run_id)
        except BlockingIOError:
            return None

    def load_for_update(self, art: int, run_id: str) -> RunMetadata | None:
        """Under the run's lock: a private copy of the metadata, recovered if corrupt."""
        try:
            raw = self._read_metadata_bytes(art, run_id)
        except Oversized as exc:  # set aside unread; nothing of it is salvaged
            return self._rebuild(art, run_id, b"", str(exc))
        if raw is None:
            if not self.disk.is_run(run_id):
                return None
            if not recovery.has_files(art, run_id):
                # the run's first copy never completed (changed, failed, killed): there is
                # no run yet and nothing to recover; its promotion will create it
                return None
            return self._rebuild(art, run_id, None, "metadata.json missing")
        try:
            meta = RunMetadata.model_validate_json(raw)
            if meta.run_id != run_id:
                raise ValueError("run_id does not match its folder")
            return meta
        except (ValidationError, ValueError) as exc:
            reason = "not valid JSON" if _json_invalid(exc) else "does not match the schema"
            return self._rebuild(art, run_id, raw, reason)

    # -- run context ---------------------------------------------------------------------

    def context(self, run_id: str, names: Iterable[str] = ()) -> RunContext:
        """What run.json and attribution.jsonl say about the run now. `names`: files about to
        be promoted; with the entries already known they are the lines worth keeping."""
        known = set(names)
        cached = self._cache.get(run_id)
        for item in cached[1].artifacts if cached is not None else ():
            known.add(item.filename)
        known.update([n.rsplit("/", 1)[-1] for n in known])  # lines may name the base name
        try:
            with folder(self.sessions_path) as sessions:
                fields = read_run_json(sessions, run_id)
                agents = self.attribution.agents(sessions, run_id, known)
        except OSError:
            return RunContext()
        return RunContext(workflow_id=fields.get("workflow_id", ""),
                          user_directive=fields.get("user_directive", ""),
                          status=fields.get("status", ""), agents=agents)

    def session_exists(self, run_id: str) -> bool:
        """False only when the session is known to be gone (DESIGN §1).

        When sessions/ itself cannot be seen (promoter-web's unit makes it
        inaccessible; a web container may not mount it) nothing is known, and a
        tombstone must be kept rather than dropped.
        """
        try:
            os.lstat(self.sessions_path / run_id)
            return True
        except FileNotFoundError:
            try:
                return not stat.S_ISDIR(os.stat(self.sessions_path).st_mode)
            except OSError:
                return True
        except OSError:
            return True

    def apply_context(self, meta: RunMetadata, ctx: RunContext) -> tuple[RunMetadata, bool]:
        """Fold run.json and attribution into the run (rules.apply_context); True if changed."""
        applied = rules.apply_context(meta, ctx, self.config.retention)
        if applied.completed:
            log.info(events.RUN_COMPLETED, run_id=meta.run_id, reason=f"run.json {ctx.status}")
        return applied.meta, applied.changed

    def refresh_context(self, run_id: str) -> RunMetadata | None:
        """Re-read the run's context and update its metadata if the run exists."""
        if not self._exists(check_run_id(run_id)):
            return None
        ctx = self.context(run_id)
        with self.locked(run_id) as art:
            meta = self.load_for_update(art, run_id)
            if meta is None:
                return None
            meta, changed = self.apply_context(meta, ctx)
            if changed:
                self.write_metadata(art, meta)
            return meta

    def mark_completed(self, run_id: str, reason: str = "session gone") -> None:
        """A run whose session folder is gone is complete (DESIGN §2)."""
        if not self._exists(check_run_id(run_id)):
            return
        with self.locked(run_id) as art:
            meta = self.load_for_update(art, run_id)
            if meta is None or meta.status == "completed":
                return
            meta.status = "completed"
            self.write_metadata(art, meta)
        log.info(events.RUN_COMPLETED, run_id=run_id, reason=reason)

    # -- writing metadata ----------------------------------------------------------------

    def write_metadata(self, art: int, meta: RunMetadata) -> None:
        meta.updated_at = self.clock.now()
        self.disk.write_meta(art, meta.run_id, meta.to_json().encode())
        self._cache.pop(meta.run_id, None)
        total = self.total.set(meta.run_id, meta.total_bytes)
        ceiling = self.config.retention.max_store_bytes
        if ceiling and total > ceiling and self.on_over_budget is not None:
            self.on_over_budget()  # sets an event: nothing waits on it under the run's lock

    def set_keep(self, run_id: str, keep: bool) -> RunMetadata:
        """Pin a run so that it never expires, or unpin it."""
        self._require(run_id)
        with self.locked(run_id) as art:
            meta = self.load_for_update(art, run_id)
            if meta is None:
                raise NotFoundError(f"no run {run_id}")
            changed = meta.keep != keep
            if changed:
                meta.keep = keep
                self.write_metadata(art, meta)
        if changed:
            self.audit.one(events.RUN_KEPT if keep else events.RUN_UNKEPT, run_id=run_id)
        return meta

    # -- promotion -----------------------------------------------------------------------

    def promote_files(self, run_id: str, filenames: Iterable[str]) -> list[PromoteResult]:
        """Promote files of `sessions/<run_id>/output/` in one batch with one metadata write."""
        check_run_id(run_id)
        names = list(dict.fromkeys(filenames))
        ctx = self.context(run_id, names)
        results: list[PromoteResult] = []
        try:
            with folder(self.sessions_path) as sessions, self.locked(run_id) as art:
                meta = self.load_for_update(art, run_id)
                tomb = self.read_tombstone(run_id)
                created = meta is None
                if meta is None:
                    meta = rules.new_run(run_id, ctx, self.clock.now(), self.config.retention)
                limits = self.config.promote

                def put(name: str, src: int, st: os.stat_result) -> CopyResult:
                    return self.disk.put_file(art, run_id, name, src, st, self._checksum,
                                              limits.max_file_bytes, self.pools)

                for name in names:
                    result = promotion.promote_one(self.config, sessions, put, meta, tomb, ctx,
                                                   name)
                    results.append(result)
                    if result.outcome is Outcome.PROMOTED and result.entry is not None:
                        meta = rules.upsert(meta, result.entry)
                changed = any(r.outcome is Outcome.PROMOTED for r in results)
                if changed or not created:  # a refusal alone never creates a run
                    for r in results:
                        if r.outcome is Outcome.REJECTED:
                            noted = rules.note_rejection(meta, r.filename, r.reason,
                                                         r.size_bytes, self.clock.now())
                            changed = changed or noted is not meta
                            meta = noted
                if changed or not created:
                    meta, context_changed = self.apply_context(meta, ctx)
                    changed = context_changed or changed
                if changed:
                    self._sync_folders(art, run_id, results)
                    self.write_metadata(art, meta)
                    if created:
                        log.info(events.RUN_CREATED, run_id=run_id, workflow_id=meta.workflow_id,
                                 expires_at=format_time(meta.expires_at))
        except OSError as exc:
            reason = f"store unusable: {exc.strerror or exc}"
            done = {r.filename for r in results}
            results = [r if r.outcome is not Outcome.PROMOTED else
                       PromoteResult(run_id, r.filename, Outcome.FAILED, reason) for r in results]
            results += [PromoteResult(run_id, n, Outcome.FAILED, reason) for n in names
                        if n not in done]
        promotion.log_results(self.clock, results)
        self._journal_promoted(results)
        return results

    def _journal_promoted(self, results: list[PromoteResult]) -> None:
        """The batch's promotions: one journal write; a journal failure never stops promotion."""
        now_ns = int(self.clock.now().timestamp() * 1e9)
        batch = [(events.ARTIFACT_PROMOTED, promotion.promoted_fields(r, now_ns)) for r in results
                 if r.outcome is Outcome.PROMOTED and r.entry is not None]
        with contextlib.suppress(StoreIOError):  # logged (audit.failed) by the auditor
            self.audit.record(batch)

    def _sync_folders(self, art: int, run_id: str, results: list[PromoteResult]) -> None:
        """Make the batch's renames durable, one fsync per folder, before any entry names them."""
        self.disk.sync_folders(art, run_id, {tuple(r.filename.split("/")[:-1]) for r in results
                                             if r.outcome is Outcome.PROMOTED})

    # -- recovery (promoter/recovery.py does the file work, rules.py decides) -------------

    def _rebuild(self, art: int, run_id: str, raw: bytes | None, reason: str) -> RunMetadata:
        """Under the run's lock: set a corrupt metadata.json aside, rebuild it from the copies."""
        aside = recovery.set_aside(art, run_id, self.clock.now()) if raw is not None else ""
        ctx = self.context(run_id)
        entries = recovery.stored_entries(art, run_id, ctx, self._checksum)
        applied = rules.rebuild(run_id, entries, rules.salvage(raw), ctx, self.clock.now(),
                                self.config.retention)
        if applied.completed:
            log.info(events.RUN_COMPLETED, run_id=run_id, reason=f"run.json {ctx.status}")
        self.write_metadata(art, applied.meta)
        log.warning(events.METADATA_RECOVERED, run_id=run_id, reason=reason, set_aside=aside,
                    files=len(entries))
        return applied.meta

    def repair(self, run_id: str) -> bool:
        """After a crash: remove temps, list every stored file, drop entries without a copy."""
        check_run_id(run_id)
        with self.locked(run_id) as art:
            meta = self.load_for_update(art, run_id)
            if meta is None:
                return False
            recovery.remove_temps(art, run_id)
            fixed = recovery.relist(art, meta, lambda: self.context(run_id), self._checksum)
            if fixed is None:
                self.remember(run_id, meta)
                return False
            meta, relisted, dropped = fixed
            self.write_metadata(art, meta)
        log.warning(events.METADATA_RECOVERED, run_id=run_id, reason="repair after restart",
                    relisted=relisted, dropped=dropped)
        return True

    @property
    def _checksum(self) -> bool:
        return self.config.promote.checksum == "sha256"

    # -- deletion ------------------------------------------------------------------------

    def read_tombstone(self, run_id: str) -> Tombstone | None:
        raw = self.disk.read_tombstone(run_id)
        try:
            return Tombstone.model_validate_json(raw) if raw is not None else None
        except ValidationError:
            return None

    def tombstones(self) -> list[str]:
        return self.disk.tombstones()

    def drop_stale_tombstones(self) -> list[str]:
        """A tombstone is needed only while its session folder exists (DESIGN §1)."""
        dropped = []
        for run_id in self.tombstones():
            if not self.session_exists(run_id) and self.disk.drop_tombstone(run_id):
                dropped.append(run_id)
        return dropped

    def delete_run(self, run_id: str, reason: str = "rm",
                   created_before: datetime | None = None) -> DeleteReport:
        """Delete a run: tombstone first, then rename into the trash, then remove.

        `reason="expired"` re-checks expiry under the lock; `created_before` also expires
        an unkept run created before it (`sweep --older-than`, DESIGN §3).
        """
        self._require(run_id)
        with self.locked(run_id) as art:
            meta = self.load_for_update(art, run_id)
            if meta is None:
                raise NotFoundError(f"no run {run_id}")
            if reason == "expired" and not self.is_expired(meta, created_before=created_before):
                raise NotFoundError(f"run {run_id} is no longer expired")
            if reason == "budget" and not evictable(meta):
                raise NotFoundError(f"run {run_id} is kept or active now")
            tomb = Tombstone(run_id=run_id, deleted_at=self.clock.file_now(),
                             reason="rm" if reason == "rm" else "expired")
            self.disk.write_tombstone(art, run_id, tomb.model_dump_json().encode())
            self.disk.trash_run(art, run_id)
            self._cache.pop(run_id, None)
            self.total.drop(run_id)
        self.empty_trash()
        report = DeleteReport(run_id, len(meta.artifacts), meta.total_bytes)
        if reason == "rm":
            self.audit.one(events.RUN_DELETED, run_id=run_id, files=report.files,
                           size_bytes=report.size_bytes)
        else:  # "expired" (retention) or "budget" (retention.max_store_bytes, DESIGN §4)
            self.audit.one(events.RUN_EXPIRED, run_id=run_id, files=report.files,
                           size_bytes=report.size_bytes,
                           reason="budget" if reason == "budget" else "retention")
        return report

    def empty_trash(self) -> None:
        """Remove what deletions left in the trash."""
        self.disk.empty_trash()

    def delete_artifact(self, run_id: str, filename: str) -> ArtifactEntry:
        """Remove one artifact; its `removed` entry keeps this version from coming back."""
        self._require(run_id)
        split_relpath(filename)
        with self.locked(run_id) as art:
            meta = self.load_for_update(art, run_id)
            entry = meta.entry(filename) if meta is not None else None
            if meta is None or entry is None:
                raise NotFoundError(f"no artifact {filename} in run {run_id}")
            self.write_metadata(art, rules.remove_entry(meta, filename, self.clock.file_now()))
            self.disk.remove_file(art, run_id, filename)
        self.audit.one(events.ARTIFACT_DELETED, run_id=run_id, filename=filename,
                       size_bytes=entry.size_bytes)
        return entry

    # -- expiry --------------------------------------------------------------------------

    def is_expired(self, meta: RunMetadata, now: datetime | None = None,
                   created_before: datetime | None = None) -> bool:
        """rules.is_expired (DESIGN §2), with the lever `created_before` (`sweep --older-than`)."""
        return rules.is_expired(meta, now or self.clock.now(), created_before)

    def expired_runs(self, created_before: datetime | None = None) -> list[RunMetadata]:
        now = self.clock.now()
        return [m for m in self.list_runs() if self.is_expired(m, now, created_before)]

    # -- serving -------------------------------------------------------------------------

    def open_artifact(
        self, run_id: str, filename: str, meta: RunMetadata | None = None
    ) -> tuple[int, os.stat_result, ArtifactEntry]:
        """An open descriptor on a stored copy with its entry; links are never followed.

        `meta`: the run's metadata when the caller has a current copy (`cached_run`).
        """
        check_run_id(run_id)
        split_relpath(filename)
        if meta is None:
            meta = self.get_run(run_id)
        entry = meta.entry(filename)
        if entry is None:
            raise NotFoundError(f"no artifact {filename} in run {run_id}")
        try:
            fd, st = self.disk.open_file(run_id, filename)
        except (OSError, Refused) as exc:
            if out_of_descriptors(exc):
                raise StoreIOError("the server cannot open files now: too many open "
                                   "descriptors") from None
            raise NotFoundError(f"no artifact {filename} in run {run_id}") from None
        return fd, st, entry

    def promote_to_library(self, run_id: str, filename: str, as_name: str | None = None,
                           overwrite: bool = False) -> LibraryFile:
        """Copy a stored artifact into the library under its base name or `as_name`."""
        name = check_library_name(as_name if as_name else filename.rsplit("/", 1)[-1])
        if not overwrite and self.library.exists(name):
            raise ConflictError(f"library file {name} exists")
        src, st, _ = self.open_artifact(run_id, filename)
        try:
            def write(fd: int) -> None:
                offset = 0
                while offset < st.st_size:
                    sent = os.copy_file_range(src, fd, st.st_size - offset, offset, offset)
                    if sent == 0:
                        break
                    offset += sent

            added = self.library.add(name, write, overwrite, mtime_ns=st.st_mtime_ns)
        finally:
            os.close(src)
        self.audit.one(events.LIBRARY_PROMOTED, run_id=run_id, filename=filename, name=name,
                       size_bytes=added.size_bytes, overwrite=overwrite)
        return added

    def delete_library_file(self, name: str) -> LibraryFile:
        """Delete one library file (`library.deleted`)."""
        removed = self.library.remove(name)
        self.audit.one(events.LIBRARY_DELETED, name=removed.name, size_bytes=removed.size_bytes)
        return removed

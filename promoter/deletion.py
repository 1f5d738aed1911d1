"""Deleting runs and artifacts, and the tombstones that keep them deleted (DESIGN §1, §10).

The order is §10's on every backend: the tombstone first; then, where a run
cannot leave in one step (an object store), a conditional `"status": "deleting"`
mark, so a concurrent `keep` either wins (the run stays) or finds the run gone,
and two sweepers never both act; then the copies (batched) and the metadata. A
crash midway is finished by the next sweep (`finish_deletions`). On the local
disk the run's lock makes the same steps one rename into the trash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from promoter import events, rules
from promoter.budget import evictable
from promoter.errors import NotFoundError
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, Tombstone
from promoter.names import check_run_id, split_relpath
from promoter.storecore import StoreCore

__all__ = ["DeleteReport", "delete_artifact", "delete_run", "drop_stale_tombstones",
           "finish_deletions"]

log = get_logger()


@dataclass(frozen=True)
class DeleteReport:
    run_id: str
    files: int
    size_bytes: int


def delete_run(core: StoreCore, run_id: str, reason: str = "rm",
               created_before: datetime | None = None) -> DeleteReport:
    """Delete a run: tombstone, (mark), copies, metadata.

    `reason="expired"` re-checks expiry on the metadata just read; `created_before` also
    expires an unkept run created before it (`sweep --older-than`, DESIGN §3);
    `reason="budget"` re-checks that the run may be evicted (DESIGN §4).
    """
    core._require(run_id)
    written: list[Tombstone] = []

    def apply(handle: Any) -> DeleteReport:
        meta = core.load_for_update(handle, run_id)
        if meta is None or meta.status == "deleting":
            raise NotFoundError(f"no run {run_id}")
        if reason == "expired" and not rules.is_expired(meta, core.clock.now(), created_before):
            raise NotFoundError(f"run {run_id} is no longer expired")
        if reason == "budget" and not evictable(meta):
            raise NotFoundError(f"run {run_id} is kept or active now")
        report = DeleteReport(run_id, len(meta.artifacts), meta.total_bytes)
        tomb = Tombstone(run_id=run_id, deleted_at=core.clock.file_now(),
                         reason="rm" if reason == "rm" else "expired",
                         host=meta.host or core.host)
        core.disk.write_tombstone(handle, run_id, tomb.model_dump_json().encode())
        written.append(tomb)
        if core.disk.marks_deletion:
            meta.status = "deleting"
            core.write_metadata(handle, meta)  # conditional: a concurrent keep may win
        core.disk.trash_run(handle, run_id)
        core.cache.pop(run_id)
        core.total.drop(run_id)
        return report

    try:
        report = core.change(run_id, apply)
    except NotFoundError:
        _undo_tombstone(core, run_id, written)
        raise
    core.disk.empty_trash()
    if reason == "rm":
        core.audit.one(events.RUN_DELETED, run_id=run_id, files=report.files,
                       size_bytes=report.size_bytes)
    else:  # "expired" (retention) or "budget" (retention.max_store_bytes, DESIGN §4)
        core.audit.one(events.RUN_EXPIRED, run_id=run_id, files=report.files,
                       size_bytes=report.size_bytes,
                       reason="budget" if reason == "budget" else "retention")
    return report


def _undo_tombstone(core: StoreCore, run_id: str, written: list[Tombstone]) -> None:
    """A deletion that lost to a `keep` (or found the run no longer due) after it wrote its
    tombstone takes that tombstone back, if it is still the one it wrote."""
    if not written:
        return
    now = core.read_tombstone(run_id)
    if now is not None and now.deleted_at == written[-1].deleted_at:
        core.disk.drop_tombstone(run_id)


def finish_deletions(core: StoreCore) -> list[str]:
    """Finish deletions a crash cut short (runs marked `deleting`), and clean what crashes
    leave (the trash; stale multipart uploads). Returns the runs finished."""
    finished = []
    if core.disk.marks_deletion:
        core.deleting.clear()
        core.list_looks()  # one listing; only changed runs are read again (the cache, views)
        for run_id in sorted(core.deleting):
            with core.locked(run_id) as handle:
                raw = core._read_metadata_bytes(handle, run_id)
                meta = core._parse_bytes(run_id, raw) if raw is not None else None
                if meta is None or meta.status != "deleting":
                    continue
                core.disk.trash_run(handle, run_id)
            core.cache.pop(run_id)
            finished.append(run_id)
            log.info(events.RUN_DELETION_FINISHED, run_id=run_id)
    core.disk.clean_leftovers()
    return finished


def drop_stale_tombstones(core: StoreCore) -> list[str]:
    """A tombstone is needed only while its session folder exists (DESIGN §1); only the host
    it names drops it then, any host once it is 30 days old (DESIGN §10)."""
    dropped = []
    now = core.clock.now()
    for run_id in core.disk.tombstones():
        tomb = core.read_tombstone(run_id)
        gone = not core.session_exists(run_id)
        if rules.tombstone_droppable(tomb, core.host, gone, now) and \
                core.disk.drop_tombstone(run_id):
            dropped.append(run_id)
    return dropped


def delete_artifact(core: StoreCore, run_id: str, filename: str) -> ArtifactEntry:
    """Remove one artifact; its `removed` entry keeps this version from coming back."""
    core._require(run_id)
    split_relpath(filename)

    def apply(handle: Any) -> ArtifactEntry:
        meta = core.load_for_update(handle, run_id)
        entry = meta.entry(filename) if meta is not None else None
        if meta is None or entry is None or meta.status == "deleting":
            raise NotFoundError(f"no artifact {filename} in run {run_id}")
        core.disk.mark(handle, run_id)  # on disk before the entry goes (runmark.py)
        core.write_metadata(handle, rules.remove_entry(meta, filename, core.clock.file_now()))
        # after the entry: a copy is never listed without its bytes. An object replaced by
        # a newer upload meanwhile (another sha256) is that upload's and stays.
        core.disk.remove_file(handle, run_id, filename, entry.sha256)
        return entry

    entry = core.change(check_run_id(run_id), apply)
    core.audit.one(events.ARTIFACT_DELETED, run_id=run_id, filename=filename,
                   size_bytes=entry.size_bytes)
    return entry


"""Promotion of one session file into the store, and what became of it (DESIGN §2, §6).

Called by Store.promote_files under the run's lock, a batch at a time: opens each
source the safe way, asks `rules.verdict` about the tombstone, removed list and entry,
applies the limits, and hands it to the backend's batch (`put`), which makes the
batch's copies durable together before any entry names them. It knows no `Store`:
what it needs comes as arguments.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any, NamedTuple

from promoter import events, rules, stopcopy
from promoter.clock import Clock, file_time
from promoter.config import Config, PromoteConfig
from promoter.context import RunContext
from promoter.errors import DESCRIPTORS, QUIET, descriptor_episodes, host_limit
from promoter.layout import FILES, OUTPUT
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata, Tombstone, guess_content_type
from promoter.names import split_relpath
from promoter.recheck import same_bytes
from promoter.render import human_size
from promoter.rules import Verdict
from promoter.safeio import CopyResult, Refused, SourceChanged, open_dir_chain, open_regular

__all__ = ["READ_SAME", "RETRY", "Outcome", "PromoteResult", "SourceFolders", "copy_in",
           "failed_renames", "log_results", "promote_batch", "promote_one", "promote_parallel"]

log = get_logger()
PutFile = Callable[[str, int, os.stat_result], CopyResult]
"""(filename, open source, its stat) -> the stored copy: the backend's `put_file` for one
run, under its lock. Raises SourceChanged, Refused or OSError as copy_and_hash does."""
LARGE_COPY_BYTES = 64 << 20  # a copy this large logs its start (`artifact.copying`)
MAX_SOURCE_FOLDERS = 64  # source folder descriptors a batch holds at once
READ_SAME = "read: the same bytes"  # an UNCHANGED found by reading: its entry, ctime moved


class Outcome(Enum):
    """What became of one file offered for promotion."""

    PROMOTED = "promoted"
    UNCHANGED = "unchanged"  # already in the store with the same size and time
    SKIPPED = "skipped"  # deleted or removed by a person before this version was written
    REJECTED = "rejected"  # never promoted: a link, a FIFO, too large, ...
    LOST = "lost"  # vanished before it could be copied
    CHANGED = "changed"  # changed during the copy: try again once quiet
    DEFERRED = "deferred"  # a copy the stop gave up (stopcopy.py): the next start catches up
    FAILED = "failed"  # an I/O error in the store: try again later


RETRY = frozenset({Outcome.CHANGED, Outcome.FAILED})


class PromoteResult(NamedTuple):
    """What became of one file (a tuple: a frozen dataclass cost three times as much to make,
    once a file, issue 15)."""

    run_id: str
    filename: str
    outcome: Outcome
    reason: str = ""
    entry: ArtifactEntry | None = None
    source_mtime_ns: int = 0
    size_bytes: int | None = None  # of a refused file, when known


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


class SourceFolders:
    """The run's source folders under `output/`, each opened (the safe way) once per batch
    rather than once per file; at most MAX_SOURCE_FOLDERS held at a time."""

    def __init__(self, sessions: int, run_id: str) -> None:
        self._sessions = sessions
        self._run_id = run_id
        self._open: dict[tuple[str, ...], int] = {}

    def get(self, parts: tuple[str, ...]) -> int:
        fd = self._open.get(parts)
        if fd is None:
            if len(self._open) >= MAX_SOURCE_FOLDERS:
                self.close()
            fd = open_dir_chain(self._sessions, [self._run_id, OUTPUT, *parts])
            self._open[parts] = fd
        return fd

    def close(self) -> None:
        held, self._open = self._open, {}
        for fd in held.values():
            os.close(fd)


def promote_batch(config: Config, sessions: int, put: PutFile, meta: RunMetadata,
                  tomb: Tombstone | None, ctx: RunContext,
                  names: list[str]) -> tuple[list[PromoteResult], list[ArtifactEntry]]:
    """`promote_one` for each distinct name, sharing the source folders, the run's entries by
    name and its running size; the results and the new entries, for one `rules.upsert_many`
    once the copies are committed (per-file upserts and lookups made one big run cost the
    square of its size)."""
    entries = rules.by_filename(meta)
    run_bytes = meta.total_bytes
    fresh: list[ArtifactEntry] = []
    results: list[PromoteResult] = []
    folders = SourceFolders(sessions, meta.run_id)
    try:
        for name in names:
            r = promote_one(config, folders, put, meta, tomb, ctx, name, entries, run_bytes)
            results.append(r)
            if r.entry is not None:  # promoted, or read the same (READ_SAME: its ctime moved)
                old = entries.get(name)
                run_bytes += r.entry.size_bytes - (old.size_bytes if old is not None else 0)
                entries[name] = r.entry
                fresh.append(r.entry)
    finally:
        folders.close()
    return results, fresh


def promote_parallel(config: Config, sessions: int, put: PutFile, meta: RunMetadata,
                     tomb: Tombstone | None, ctx: RunContext, names: list[str],
                     workers: int) -> tuple[list[PromoteResult], list[ArtifactEntry]]:
    """`promote_batch` with `workers` files in flight, for a backend whose puts wait on the
    network (an object store). Each name is judged on the batch's starting metadata: names
    are distinct, and the caller has checked that the batch cannot pass max_run_bytes, the
    one limit the files judge together. Each thread holds its own source folders."""
    entries = rules.by_filename(meta)

    def decide(name: str) -> PromoteResult:
        folders = SourceFolders(sessions, meta.run_id)
        try:
            return promote_one(config, folders, put, meta, tomb, ctx, name, entries,
                               meta.total_bytes)
        finally:
            folders.close()

    with ThreadPoolExecutor(workers, thread_name_prefix="promoter-put") as pool:
        results = list(pool.map(stopcopy.carried(decide), names))  # the stop's watch too
    fresh = [r.entry for r in results if r.entry is not None]  # promoted, or READ_SAME
    return results, fresh


def promote_one(config: Config, folders: SourceFolders, put: PutFile, meta: RunMetadata,
                tomb: Tombstone | None, ctx: RunContext, filename: str,
                entries: dict[str, ArtifactEntry], run_bytes: int) -> PromoteResult:
    """Open `output/<filename>` of the run the safe way and, if the rules say so, `put` it."""
    def result(outcome: Outcome, reason: str = "") -> PromoteResult:
        return PromoteResult(meta.run_id, filename, outcome, reason)

    try:
        parts = split_relpath(filename)
    except Exception as exc:  # a bad name is a refusal, whatever it is
        return result(Outcome.REJECTED, str(exc))
    max_depth = config.watch.max_depth
    if len(parts) - 1 > max_depth:  # agents control depths (DESIGN §6)
        return result(Outcome.REJECTED, f"deeper than watch.max_depth ({max_depth} folders)")
    try:  # the agent's side: what goes wrong here is the file's
        src_dir = folders.get(tuple(parts[:-1]))
        src, st = open_regular(src_dir, parts[-1], config.promote.allow_hardlinks,
                               blocking=False)
    except Refused as exc:
        return result(Outcome.REJECTED, exc.reason)
    except (FileNotFoundError, NotADirectoryError):
        return result(Outcome.LOST, "vanished before it was copied")
    except PermissionError:
        return result(Outcome.REJECTED, "permission denied")
    except OSError as exc:
        return result(Outcome.FAILED, host_limit(exc) or exc.strerror or str(exc))
    try:  # the store's side: an error here is retried, never blamed on the file
        return copy_in(config.promote, put, meta, tomb, ctx, filename, src, st, entries,
                       run_bytes)
    except Refused as exc:
        return result(Outcome.REJECTED, exc.reason)
    except SourceChanged:
        return result(Outcome.CHANGED, "changed during the copy")
    except stopcopy.GivenUp as exc:  # stopping: nothing of it kept, not listed, not retried
        return result(Outcome.DEFERRED, f"{exc}: given up, the next start catches up")
    except OSError as exc:  # e.g. the run's mark or a temporary refused (EPERM, EROFS)
        where = f" ({exc.filename})" if exc.filename else ""
        return result(Outcome.FAILED, host_limit(exc) or f"{exc.strerror or exc}{where}")
    finally:
        _close(src)


def copy_in(limits: PromoteConfig, put: PutFile, meta: RunMetadata, tomb: Tombstone | None,
            ctx: RunContext, filename: str, src: int, st: os.stat_result,
            entries: dict[str, ArtifactEntry], run_bytes: int) -> PromoteResult:
    def result(outcome: Outcome, reason: str = "") -> PromoteResult:
        return PromoteResult(meta.run_id, filename, outcome, reason,
                             source_mtime_ns=st.st_mtime_ns)

    if st.st_size > limits.max_file_bytes:
        return result(Outcome.REJECTED, f"over the {human_size(limits.max_file_bytes)} "
                      "limit (max_file_bytes)")._replace(size_bytes=st.st_size)
    verdict = rules.verdict(meta, tomb, filename, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                            entries)
    if verdict is Verdict.DELETED:
        return result(Outcome.SKIPPED, "run was deleted after this file was written")
    if verdict is Verdict.BAD_TIME:
        return result(Outcome.REJECTED, "modification time out of range")
    if verdict is Verdict.REMOVED:
        return result(Outcome.SKIPPED, "artifact was removed after this file was written")
    old = entries.get(filename)
    # an entry from before `source_changed_at`, offered again (an event) with its mtime set
    # since it was written: new bytes under an old mtime? Read, as a RECHECK is, when there
    # is a digest to compare with (else every event on a renamed file would copy it again).
    # An entry that records its source's ctime has had its answer from `rules.verdict`
    if verdict is Verdict.UNCHANGED and (
            old is None or old.source_changed_at is not None or old.sha256 is None
            or not rules.times_set(st.st_mtime_ns, st.st_ctime_ns)):
        return result(Outcome.UNCHANGED)
    # the ctime of the descriptor read, from its fstat before any read: a change during
    # the read or after it shows as a later ctime at the next look, which reads it again
    seen = file_time(st.st_ctime_ns)
    if verdict is not Verdict.PROMOTE and old is not None \
            and same_bytes(src, st.st_size, old.sha256):
        # the same bytes (a chmod, a rename, a hard link, times put back on them): the entry
        # records this ctime (one metadata write, no copy, no `artifact.promoted`), so no
        # later look reads it again (no loop); with no digest (checksum "none") it is copied
        return PromoteResult(meta.run_id, filename, Outcome.UNCHANGED, READ_SAME,
                             old.model_copy(update={"source_changed_at": seen}),
                             st.st_mtime_ns)
    mtime = file_time(st.st_mtime_ns)
    assert mtime is not None  # BAD_TIME otherwise
    run_total = run_bytes - (old.size_bytes if old else 0) + st.st_size
    if run_total > limits.max_run_bytes:
        return result(Outcome.REJECTED, f"the run would pass its "
                      f"{human_size(limits.max_run_bytes)} limit (max_run_bytes)"
                      )._replace(size_bytes=st.st_size)
    if st.st_size > LARGE_COPY_BYTES:  # else a long copy would log nothing until it is done
        log.info(events.ARTIFACT_COPYING, run_id=meta.run_id, filename=filename,
                 size_bytes=st.st_size)
    copied = put(filename, src, st)
    # every field is ours and valid (a checked name, a UTC time, a hex digest): constructed,
    # not validated, which was a tenth of a 4 KiB file's cost
    entry = ArtifactEntry.trusted(
        filename=filename, path=f"{FILES}/{filename}", agent_id=rules.agent_for(ctx, filename),
        generated_at=mtime, size_bytes=copied.size,
        content_type=guess_content_type(filename), sha256=copied.sha256,
        source_changed_at=seen)
    return PromoteResult(meta.run_id, filename, Outcome.PROMOTED, entry=entry,
                         source_mtime_ns=st.st_mtime_ns)


def failed_renames(results: list[PromoteResult],
                   failed: dict[str, OSError]) -> list[PromoteResult]:
    """The batch's results with the files whose copy could not be renamed into place FAILED
    (tried again later, as any I/O error in the store); REJECTED when a stored folder holds
    the name (retrying would fail for ever)."""
    def why(r: PromoteResult, exc: OSError) -> PromoteResult:
        if exc.errno == errno.EISDIR:
            return PromoteResult(r.run_id, r.filename, Outcome.REJECTED, "name clash: the "
                                 f"store holds a folder {r.filename}/ of this name")
        return PromoteResult(r.run_id, r.filename, Outcome.FAILED,
                             host_limit(exc) or exc.strerror or str(exc))
    return [why(r, failed[r.filename]) if r.filename in failed else r for r in results]


def promoted_fields(r: PromoteResult, now_ns: int) -> dict[str, Any]:
    """An `artifact.promoted` event's fields (DESIGN §5); logged and journaled by the auditor."""
    assert r.entry is not None
    e = r.entry
    return {"run_id": r.run_id, "filename": r.filename, "agent_id": e.agent_id,
            "size_bytes": e.size_bytes, "sha256": e.sha256, "content_type": e.content_type,
            "latency_ms": round(max(now_ns - r.source_mtime_ns, 0) / 1e6, 1)}


_QUIET_EVENTS = {Outcome.SKIPPED: events.ARTIFACT_SKIPPED,
                 Outcome.CHANGED: events.ARTIFACT_CHANGED}


def log_results(clock: Clock, results: list[PromoteResult]) -> None:
    """Every outcome but promotions, which are audit events (Store._journal_promoted)."""
    for r in results:
        if r.outcome is Outcome.PROMOTED:
            continue
        if r.outcome is Outcome.REJECTED:
            log.warning(events.ARTIFACT_REJECTED, run_id=r.run_id, filename=r.filename,
                        reason=r.reason)
        elif r.outcome is Outcome.DEFERRED:
            log.info(events.ARTIFACT_DEFERRED, run_id=r.run_id, filename=r.filename,
                     reason=r.reason)
        elif r.outcome is Outcome.LOST:
            log.warning(events.ARTIFACT_LOST, run_id=r.run_id, filename=r.filename,
                        reason=r.reason)
        elif r.outcome is Outcome.FAILED:  # out of descriptors: one line an episode
            level = descriptor_episodes.failed(r.run_id, r.filename, r.reason)
            getattr(log, level)(events.ARTIFACT_FAILED, run_id=r.run_id, filename=r.filename,
                                reason=r.reason, **QUIET if level == "warning" else {})
        elif r.outcome is not Outcome.UNCHANGED:
            log.debug(_QUIET_EVENTS[r.outcome], run_id=r.run_id, filename=r.filename,
                      reason=r.reason)
    if descriptor_episodes.open and (ended := descriptor_episodes.settled(
            (r.run_id, r.filename) for r in results if r.outcome is not Outcome.FAILED)):
        log.info(events.LIMIT_RECOVERED, reason=DESCRIPTORS, quiet_failures=ended[0],
                 duration_s=round(ended[1], 1))

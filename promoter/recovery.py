"""Recovery after a crash or corruption (DESIGN §6): metadata is rebuilt, never emptied.

The file-system half of it: walk a run's stored copies, hash the ones that need an
entry, set a corrupt metadata.json aside, remove temporary files. What the run's
metadata becomes is decided by `rules.rebuild` and `rules.relist`; the store
holds the lock and writes the result. Nothing here knows a `Store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from datetime import datetime

from promoter import events, rules
from promoter.clock import EPOCH, MAX_US, MIN_US, ONE_US, UNREAD, from_timestamp_ns
from promoter.context import RunContext
from promoter.layout import FILES, MARK, METADATA
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata, guess_content_type
from promoter.names import TEMP_PREFIX
from promoter.safeio import Refused, describe_os_error, open_dir_chain, open_regular, remove_tree
from promoter.walk import Folder, walk_tree

__all__ = [
    "clean_metadata",
    "has_files",
    "hash_entry",
    "relist",
    "remove_temps",
    "set_aside",
    "stored_entries",
    "walk_files",
]

log = get_logger()


def walk_files(art: int, run_id: str) -> Iterator[tuple[str, int, os.stat_result]]:
    """(filename, folder fd, stat) for every regular file under files/; temps removed.
    The same walk as the catch-up's (walk.walk_tree)."""
    try:
        top = open_dir_chain(art, [run_id, FILES])
    except (FileNotFoundError, NotADirectoryError, Refused):
        return
    try:
        for folder in walk_tree(top):
            yield from _walk_folder(folder, run_id)
    finally:
        os.close(top)


def _walk_folder(folder: Folder, run_id: str) -> Iterator[tuple[str, int, os.stat_result]]:
    fd, prefix = folder.fd, folder.prefix
    for entry in folder.entries:
        if entry.name.startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):
                os.unlink(entry.name, dir_fd=fd)
                log.info(events.TEMP_REMOVED, run_id=run_id, name=prefix + entry.name)
                # gone for good before the run's mark may go (runmark.py): rare, so one flush each
                os.fsync(fd)
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                folder.enter.append(entry.name)
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield prefix + entry.name, fd, st


def _finish_removal(fd: int, filename: str, run_id: str) -> None:
    """Unlink a removed artifact's copy, flushed before the run's mark may go; one that
    cannot be removed stays unlisted, for the next walk."""
    try:
        os.unlink(filename.rsplit("/", 1)[-1], dir_fd=fd)
        os.fsync(fd)
    except OSError as exc:
        log.warning(events.REMOVAL_FINISHED, run_id=run_id, filename=filename, done=False,
                    reason=str(exc))
        return
    log.info(events.REMOVAL_FINISHED, run_id=run_id, filename=filename, done=True)


def has_files(art: int, run_id: str) -> bool:
    """Any stored copy under files/ (a first copy that never completed leaves none)."""
    return next(walk_files(art, run_id), None) is not None


def hash_entry(dir_fd: int, filename: str, ctx: RunContext, checksum: bool) -> ArtifactEntry:
    """An entry for a stored copy, hashing it (recovery only: promotion hashes as it copies).
    Its source's ctime is not known (`UNREAD`): the source, if any, is read once more."""
    fd, st = open_regular(dir_fd, filename.rsplit("/", 1)[-1], allow_hardlinks=True)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return ArtifactEntry(filename=filename, path=f"{FILES}/{filename}",
                         agent_id=rules.agent_for(ctx, filename),
                         generated_at=from_timestamp_ns(st.st_mtime_ns),
                         size_bytes=st.st_size, content_type=guess_content_type(filename),
                         sha256=digest.hexdigest() if checksum else None,
                         source_changed_at=UNREAD)


def stored_entries(art: int, run_id: str, ctx: RunContext, checksum: bool) -> list[ArtifactEntry]:
    """An entry for every stored copy of the run, each hashed."""
    return [hash_entry(fd, name, ctx, checksum) for name, fd, _ in walk_files(art, run_id)]


def clean_metadata(art: int, run_id: str,
                   limit: int) -> tuple[tuple[int, int, int, int], bytes] | None:
    """A run the start-up repair has nothing to do in, seen without its lock (issue 15): no
    temporary file and no mark (runmark.py) in its folder, one listing for both, and a
    metadata.json that is a regular file within `limit`. Its version tag (inode, times, size
    of what was read, as `LocalDisk.meta_version`) and bytes; None for anything else, which
    the repair looks at under the run's lock as before. A temporary file or a mark that
    appears after the listing is a live write session's, not a crash's leftover."""
    try:
        run_fd = open_dir_chain(art, [run_id])
    except (OSError, Refused):
        return None
    try:
        names = os.listdir(run_fd)
        if MARK in names or any(name.startswith(TEMP_PREFIX) for name in names):
            return None
        fd, st = open_regular(run_fd, METADATA, allow_hardlinks=True, blocking=False)
    except (OSError, Refused):
        return None
    finally:
        os.close(run_fd)
    try:
        if st.st_size > limit:
            return None
        raw = os.pread(fd, st.st_size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size), raw


def set_aside(art: int, run_id: str, now: datetime) -> str:
    """Rename a corrupt metadata.json out of the way; the name it now has ("" if none)."""
    aside = f"{METADATA}.corrupt-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    run_fd = open_dir_chain(art, [run_id])
    try:
        os.rename(METADATA, aside, src_dir_fd=run_fd, dst_dir_fd=run_fd)
    except FileNotFoundError:
        return ""
    finally:
        os.close(run_fd)
    return aside


def remove_temps(art: int, run_id: str) -> None:
    """Temporary files a crash left in the run folder (a metadata write cut short). Each
    name on its own: one that cannot go (a folder planted under the prefix is removed as a
    tree) never keeps the others."""
    with contextlib.suppress(OSError, Refused):
        run_fd = open_dir_chain(art, [run_id])
        try:
            for name in os.listdir(run_fd):
                if name.startswith(TEMP_PREFIX):
                    try:
                        remove_tree(run_fd, name)
                    except OSError as exc:
                        log.warning(events.TEMP_REMOVE_FAILED, run_id=run_id, name=name,
                                    error=describe_os_error(exc))
                        continue
                    log.info(events.TEMP_REMOVED, run_id=run_id, name=name)
        finally:
            os.close(run_fd)


def relist(art: int, meta: RunMetadata, context: Callable[[], RunContext],
           checksum: bool) -> tuple[RunMetadata, int, int] | None:
    """After a crash: the run with every stored copy listed and no entry without a copy,
    with the numbers relisted and dropped; None when it was right already. `context` is
    called only if some copy needs a new entry."""
    known = {a.filename: a for a in meta.artifacts}
    # (size, µs) a name, once: `rules.same_copy` a file built a datetime for each (issue 15)
    held = {name: (a.size_bytes, (a.generated_at - EPOCH) // ONE_US)  # clock.micros, inline
            for name, a in known.items()}
    # a removal (`rm RUN FILE`) cut short between its metadata write and the copy's unlink
    # leaves a copy no newer than its removal: finished here, not listed again (DESIGN §1)
    gone = {r.filename: (r.removed_at - EPOCH) // ONE_US for r in meta.removed}
    seen: set[str] = set()
    fresh: list[ArtifactEntry] = []
    ctx: RunContext | None = None
    for filename, fd, st in walk_files(art, meta.run_id):
        micros = min(max(st.st_mtime_ns // 1000, MIN_US), MAX_US)
        copy = held.get(filename)
        if copy is None and filename in gone and micros <= gone[filename]:
            _finish_removal(fd, filename, meta.run_id)
            continue
        seen.add(filename)
        if copy is None or copy[0] != st.st_size or copy[1] != micros:
            ctx = ctx or context()
            fresh.append(hash_entry(fd, filename, ctx, checksum))
    dropped = len(known.keys() - seen)
    if not fresh and not dropped:
        return None
    return rules.relist(meta, fresh, seen), len(fresh), dropped

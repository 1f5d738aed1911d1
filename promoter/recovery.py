"""Recovery after a crash or corruption (DESIGN §6): metadata is rebuilt, never emptied.

A corrupt metadata.json is set aside and rebuilt from the stored copies; at
start-up every run is repaired so that each file under `files/` is listed and
no temporary file is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from promoter import events
from promoter.clock import from_timestamp_ns
from promoter.context import RunContext
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata, guess_content_type
from promoter.names import TEMP_PREFIX, check_run_id
from promoter.promotion import FILES
from promoter.safeio import Refused, open_dir_chain, open_regular

if TYPE_CHECKING:
    from promoter.store import Store

__all__ = ["rebuild", "repair", "walk_files"]

log = get_logger()
METADATA = "metadata.json"


def walk_files(store: Store, art: int, run_id: str) -> Iterator[tuple[str, int, os.stat_result]]:
    """(filename, folder fd, stat) for every regular file under files/; temps removed."""
    try:
        top = open_dir_chain(art, [run_id, FILES])
    except (FileNotFoundError, NotADirectoryError, Refused):
        return
    stack = [""]  # names, not descriptors: thousands of sub-folders hold none open
    try:
        while stack:
            prefix = stack.pop()
            try:
                fd = open_dir_chain(top, prefix.split("/")[:-1])
            except (OSError, Refused):
                continue
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    if entry.name.startswith(TEMP_PREFIX):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.name, dir_fd=fd)
                            log.info(events.TEMP_REMOVED, run_id=run_id,
                                     name=prefix + entry.name)
                    elif stat.S_ISDIR(st.st_mode):
                        stack.append(f"{prefix}{entry.name}/")
                    elif stat.S_ISREG(st.st_mode):
                        yield prefix + entry.name, fd, st
            finally:
                os.close(fd)
    finally:
        os.close(top)


def hash_entry(
    store: Store, dir_fd: int, name: str, filename: str, ctx: RunContext
) -> ArtifactEntry:
    """An entry for a stored copy, hashing it (recovery only: promotion hashes as it copies)."""
    fd, st = open_regular(dir_fd, name, allow_hardlinks=True)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return ArtifactEntry(filename=filename, path=f"{FILES}/{filename}",
                         agent_id=store.agent_for(ctx, filename),
                         generated_at=from_timestamp_ns(st.st_mtime_ns),
                         size_bytes=st.st_size, content_type=guess_content_type(filename),
                         sha256=digest.hexdigest()
                         if store.config.promote.checksum == "sha256" else None)


def rebuild(store: Store, art: int, run_id: str, raw: bytes | None, reason: str) -> RunMetadata:
    """Set a corrupt metadata.json aside and rebuild it from the stored files."""
    salvage: dict[str, Any] = {}
    if raw:
        # RecursionError: json.loads recurses once per nested bracket
        with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
            data = json.loads(raw)
            if isinstance(data, dict):
                salvage = data
    run_fd = open_dir_chain(art, [run_id])
    aside = ""
    try:
        if raw is not None:
            aside = f"{METADATA}.corrupt-{store.clock.now().strftime('%Y%m%dT%H%M%S%fZ')}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(METADATA, aside, src_dir_fd=run_fd, dst_dir_fd=run_fd)
    finally:
        os.close(run_fd)
    ctx = store.context(run_id)
    entries = [hash_entry(store, fd, name.rsplit("/", 1)[-1], name, ctx)
               for name, fd, _ in walk_files(store, art, run_id)]
    now = store.clock.now()
    meta = RunMetadata(run_id=run_id, created_at=now, updated_at=now, expires_at=now)
    for key in ("workflow_id", "user_directive", "created_at", "keep", "status"):
        with contextlib.suppress(ValidationError, TypeError):
            if key in salvage:
                meta = RunMetadata.model_validate({**meta.model_dump(), key: salvage[key]})
    if "created_at" not in salvage and entries:
        meta.created_at = min(e.generated_at for e in entries)
    meta.artifacts = sorted(_salvage_agents(entries, salvage), key=lambda e: e.generated_at)
    meta.expires_at = store.expiry(meta.created_at, meta.workflow_id)
    store.apply_context(meta, ctx)
    store.write_metadata(art, meta)
    log.warning(events.METADATA_RECOVERED, run_id=run_id, reason=reason, set_aside=aside,
                files=len(entries))
    return meta


def _salvage_agents(entries: list[ArtifactEntry], salvage: dict[str, Any]) -> list[ArtifactEntry]:
    """Agents named by a readable part of the corrupt file, where context has none."""
    known: dict[str, str] = {}
    items = salvage.get("artifacts")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("filename"), str) \
                and isinstance(item.get("agent_id"), str):
            known[item["filename"]] = item["agent_id"]
    return [e.model_copy(update={"agent_id": known[e.filename]})
            if e.agent_id == "unknown" and e.filename in known else e for e in entries]


def repair(store: Store, run_id: str) -> bool:
    """After a crash: remove temps, list every stored file, drop entries without a copy."""
    check_run_id(run_id)
    with store.locked(run_id) as art:
        meta = store.load_for_update(art, run_id)
        if meta is None:
            return False
        with contextlib.suppress(OSError, Refused):
            run_fd = open_dir_chain(art, [run_id])
            try:
                for name in os.listdir(run_fd):
                    if name.startswith(TEMP_PREFIX):
                        os.unlink(name, dir_fd=run_fd)
                        log.info(events.TEMP_REMOVED, run_id=run_id, name=name)
            finally:
                os.close(run_fd)
        known = {a.filename: a for a in meta.artifacts}
        seen: set[str] = set()
        fixed: list[ArtifactEntry] = []
        ctx: RunContext | None = None
        for filename, fd, st in walk_files(store, art, run_id):
            seen.add(filename)
            entry = known.get(filename)
            if entry is None or entry.size_bytes != st.st_size or \
                    entry.generated_at != from_timestamp_ns(st.st_mtime_ns):
                ctx = ctx or store.context(run_id)
                fresh = hash_entry(store, fd, filename.rsplit("/", 1)[-1], filename, ctx)
                if entry is not None and fresh.agent_id == "unknown":
                    # the session may be gone: what the entry knew still holds
                    fresh = fresh.model_copy(update={"agent_id": entry.agent_id})
                fixed.append(fresh)
        missing = set(known) - seen
        if not fixed and not missing:
            store.remember(run_id, meta)
            return False
        meta.artifacts = [a for a in meta.artifacts if a.filename not in missing]
        for entry in fixed:
            store.upsert(meta, entry)
        store.write_metadata(art, meta)
        log.warning(events.METADATA_RECOVERED, run_id=run_id, reason="repair after restart",
                    relisted=len(fixed), dropped=len(missing))
        return True

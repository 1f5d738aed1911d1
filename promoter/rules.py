"""The store's rules, decided once for every backend (DESIGN §1, §2, §6; STYLE §19).

Pure: every function takes and returns `RunMetadata` (never changing the one it is
given) or answers a question about it. No file system, no clock, no logging: the
caller passes `now` and logs what a function reports. The event path
(`promotion.copy_in`) and the catch-up (`reconcile.find_pending`) ask the same
`verdict`, so they cannot disagree about what a deleted or removed file is.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

from pydantic import ValidationError

from promoter import events
from promoter.clock import MAX_US, MIN_US, file_micros, micros, written_at
from promoter.config import RetentionConfig
from promoter.context import RunContext
from promoter.metadata import ArtifactEntry, RejectedEntry, RemovedEntry, RunMetadata, Tombstone
from promoter.parsedruns import RunView

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "MAX_REJECTED",
    "MIN_BATCH",
    "Applied",
    "Verdict",
    "agent_for",
    "apply_context",
    "batch_limit",
    "by_filename",
    "byte_chunks",
    "expiry",
    "is_expired",
    "needs_promotion",
    "new_run",
    "note_rejection",
    "rebuild",
    "relist",
    "remove_entry",
    "salvage",
    "same_copy",
    "times_set",
    "upsert",
    "upsert_many",
    "verdict",
]

MIN_BATCH, MAX_BATCH = 256, 16_384  # files in a batch: small run, big run (SIGTERM waits)
MAX_BATCH_BYTES = 64 << 20  # a batch stages its copies as temps, and a SIGTERM waits for a
# chunk begun: 64 MiB on each of 3 threads (probe-cpu F4; no throughput cost measured vs 256)


def batch_limit(entries: int) -> int:
    """Half the run, within MIN_BATCH..MAX_BATCH: fixed batches made one run quadratic. The
    daemon's batches and the catch-up's alike (one batch of a whole run could not stop)."""
    return max(MIN_BATCH, min(entries // 2, MAX_BATCH))


def byte_chunks(sized: Iterable[tuple[str, int]], max_bytes: int | None = None,
                max_files: int = MAX_BATCH) -> list[list[str]]:
    """A batch's (name, size) cut in order into chunks of at most `max_files` files, each
    closed once its sizes sum past `max_bytes` (always at least one file: a huge file
    goes alone), so one copy batch never stages gigabytes of temps (probe-15 finding 6)."""
    cap = MAX_BATCH_BYTES if max_bytes is None else max_bytes  # read now: tests lower it
    chunks: list[list[str]] = []
    chunk: list[str] = []
    total = 0
    for name, size in sized:
        if chunk and (total + size > cap or len(chunk) >= max_files):
            chunks.append(chunk)
            chunk, total = [], 0
        chunk.append(name)
        total += max(size, 0)
    if chunk:
        chunks.append(chunk)
    return chunks


class Verdict(Enum):
    """What the store's rules say about one version of a session file."""

    PROMOTE = "promote"  # the store lacks it or holds another version
    UNCHANGED = "unchanged"  # the store holds this size and time already
    RECHECK = "recheck"  # this size and time, but changed since they were stored: read it
    DELETED = "deleted"  # the run was deleted after this version was written
    REMOVED = "removed"  # the artifact was removed after this version was written
    BAD_TIME = "bad_time"  # its mtime is outside datetime's range: refused once, when copied


def verdict(meta: RunMetadata | None, tomb: Tombstone | None, filename: str, size: int,
            mtime_ns: int, ctime_ns: int,
            entries: Mapping[str, ArtifactEntry] | None = None) -> Verdict:
    """The one decision about a session file (DESIGN §1). "After" is judged by the file's
    ctime as well as its mtime, which an agent sets at will. `entries`: the run's entries
    by filename (`by_filename`), so a batch of many files looks each up once, not by a walk
    of the whole run per file (issue 15: that made one big run quadratic)."""
    if tomb is not None and written_at(mtime_ns, ctime_ns) <= tomb.deleted_at:
        return Verdict.DELETED
    mtime_us = file_micros(mtime_ns)  # integers: no datetime built for every file (issue 15)
    if mtime_us is None:
        return Verdict.BAD_TIME
    if meta is None:
        return Verdict.PROMOTE
    removed_at = meta.removed_at(filename) if meta.removed else None
    if removed_at is not None and written_at(mtime_ns, ctime_ns) <= removed_at:
        return Verdict.REMOVED
    old = meta.entry(filename) if entries is None else entries.get(filename)
    if old is not None and old.size_bytes == size and micros(old.generated_at) == mtime_us:
        # the ctime, which nobody sets, says whether it changed since its copy read it (new
        # bytes under the old mtime: `cp -p`, `rsync -t`, `tar x`): to be read. An entry
        # written before `source_changed_at` existed has its run's last write instead, which
        # other writers move too (keep, rm, a sibling's promotion: probe r7-fidelity F1-F3).
        # A recorded ctime is trusted only when it is the file's: a later one (a hand edit,
        # a clock stepped back since the read, a JSON number) would hide every rewrite until
        # the clock passed it (probe r7-ctime N2), so any other ctime is read once
        seen = old.source_changed_at
        if seen is None:
            return Verdict.RECHECK if ctime_ns // 1000 > micros(meta.updated_at) \
                else Verdict.UNCHANGED
        return Verdict.RECHECK if ctime_ns // 1000 != micros(seen) else Verdict.UNCHANGED
    return Verdict.PROMOTE


def times_set(mtime_ns: int, ctime_ns: int) -> bool:
    """Whether a file's mtime was set after its last write (its ctime is later: `cp -p`,
    `rsync -t`, `tar x` put an old mtime on new bytes; a rename or a chmod does too,
    harmlessly). A file written plainly has ctime = mtime. The event path reads such a
    file of the stored size and mtime when its entry predates `source_changed_at`: the
    run may have been written since its change, which `verdict` alone could not tell."""
    return ctime_ns // 1000 > mtime_ns // 1000


def needs_promotion(meta: RunMetadata | None, tomb: Tombstone | None, filename: str, size: int,
                    mtime_ns: int, ctime_ns: int,
                    entries: Mapping[str, ArtifactEntry] | None = None) -> bool:
    """True when the file is to be offered for promotion (a bad time is offered, to be
    refused once by the promotion, DESIGN §6; a RECHECK, to be read by it)."""
    return verdict(meta, tomb, filename, size, mtime_ns, ctime_ns, entries) in (
        Verdict.PROMOTE, Verdict.BAD_TIME, Verdict.RECHECK)


def by_filename(meta: RunMetadata | None) -> dict[str, ArtifactEntry]:
    """The run's entries by filename, the first of any repeated name (as `meta.entry`)."""
    index: dict[str, ArtifactEntry] = {}
    for item in meta.artifacts if meta is not None else ():
        index.setdefault(item.filename, item)
    return index


def same_copy(entry: ArtifactEntry | None, size: int, mtime_ns: int) -> bool:
    """The entry describes a stored copy of this size and time (start-up repair)."""
    return entry is not None and entry.size_bytes == size \
        and micros(entry.generated_at) == min(max(mtime_ns // 1000, MIN_US), MAX_US)


def agent_for(ctx: RunContext, filename: str) -> str:
    return ctx.agents.get(filename) or ctx.agents.get(filename.rsplit("/", 1)[-1]) or "unknown"


def expiry(created_at: datetime, workflow_id: str, retention: RetentionConfig) -> datetime:
    return created_at + timedelta(days=retention.days_for(workflow_id))


def is_expired(meta: RunMetadata | RunView, now: datetime,
               created_before: datetime | None = None) -> bool:
    """At or past expires_at and not kept: nothing else decides it (DESIGN §2), but for the
    explicit lever `created_before` (`sweep --older-than`), which expires an unkept run
    created before it."""
    if meta.keep:
        return False
    if created_before is not None and meta.created_at < created_before:
        return True
    return now >= meta.expires_at


def new_run(run_id: str, ctx: RunContext, now: datetime,
            retention: RetentionConfig) -> RunMetadata:
    """The metadata of a run about to get its first file."""
    return RunMetadata(run_id=run_id, created_at=now, updated_at=now,
                       expires_at=expiry(now, ctx.workflow_id, retention))


def upsert(meta: RunMetadata, entry: ArtifactEntry) -> RunMetadata:
    """The run with `entry` in place of any older one; a promoted file is no longer removed
    nor rejected."""
    return meta.model_copy(update={
        "artifacts": [a for a in meta.artifacts if a.filename != entry.filename] + [entry],
        "removed": [r for r in meta.removed if r.filename != entry.filename],
        # a file later promoted leaves the rejected list (DESIGN §2)
        "rejected": [r for r in meta.rejected if r.filename != entry.filename]})


def upsert_many(meta: RunMetadata, entries: Sequence[ArtifactEntry]) -> RunMetadata:
    """`upsert` of a whole batch in one pass over the run (names distinct): the same run as
    upserting each in turn, at the cost of one."""
    if not entries:
        return meta
    new = {e.filename: e for e in entries}
    return meta.model_copy(update={
        "artifacts": [a for a in meta.artifacts if a.filename not in new] + list(new.values()),
        "removed": [r for r in meta.removed if r.filename not in new],
        "rejected": [r for r in meta.rejected if r.filename not in new]})


def remove_entry(meta: RunMetadata, filename: str, at: datetime) -> RunMetadata:
    """The run without the artifact, and with a `removed` entry that keeps this version out."""
    return meta.model_copy(update={
        "artifacts": [a for a in meta.artifacts if a.filename != filename],
        "removed": [r for r in meta.removed if r.filename != filename]
        + [RemovedEntry(filename=filename, removed_at=at)]})


MAX_REJECTED = 1000  # agents control how many files they refuse: the list stays bounded


def note_rejection(meta: RunMetadata, filename: str, reason: str, size: int | None,
                   now: datetime) -> RunMetadata:
    """The run with a refusal in its `rejected` list (DESIGN §2): one entry a filename, the
    latest reason. The very same run when the refusal says nothing new (nothing to write)."""
    # a name that is not UTF-8 is shown with replacement characters
    name = filename.encode("utf-8", "surrogateescape").decode("utf-8", "replace") or "(no name)"
    old = next((x for x in meta.rejected if x.filename == name), None)
    if old is not None and old.reason == reason and old.size_bytes == size:
        return meta
    kept = [x for x in meta.rejected if x.filename != name][-(MAX_REJECTED - 1):]
    return meta.model_copy(update={"rejected": [*kept, RejectedEntry(
        filename=name, reason=reason, size_bytes=size, rejected_at=now)]})


class Applied(NamedTuple):
    """apply_context's answer: the run, whether it changed, and whether run.json completed it."""

    meta: RunMetadata
    changed: bool
    completed: bool


def apply_context(meta: RunMetadata, ctx: RunContext, retention: RetentionConfig) -> Applied:
    """Fold run.json and attribution.jsonl into the run."""
    update: dict[str, Any] = {}
    if ctx.workflow_id and ctx.workflow_id != meta.workflow_id:
        update["workflow_id"] = ctx.workflow_id
        update["expires_at"] = expiry(meta.created_at, ctx.workflow_id, retention)
    if ctx.user_directive and ctx.user_directive != meta.user_directive:
        update["user_directive"] = ctx.user_directive
    completed = ctx.status in ("completed", "failed") and meta.status != "completed"
    if completed:
        update["status"] = "completed"
    if ctx.agents:  # else every entry's agent stays: a pass over a big run a batch (issue 15)
        items = [_with_agent(item, agent_for(ctx, item.filename)) for item in meta.artifacts]
        if any(new is not old for new, old in zip(items, meta.artifacts, strict=True)):
            update["artifacts"] = items
    if not update:
        return Applied(meta, False, False)
    return Applied(meta.model_copy(update=update), True, completed)


def _with_agent(item: ArtifactEntry, agent: str) -> ArtifactEntry:
    if agent == "unknown" or agent == item.agent_id:
        return item
    return item.model_copy(update={"agent_id": agent})


def salvage(raw: bytes | None) -> dict[str, Any]:
    """What can be read of a corrupt metadata.json: its top-level object, or nothing."""
    if not raw:
        return {}
    # RecursionError: json.loads recurses once per nested bracket
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
        data = json.loads(raw)
        if isinstance(data, dict):
            return data
    return {}


def rebuild(run_id: str, entries: Iterable[ArtifactEntry], salvaged: dict[str, Any],
            ctx: RunContext, now: datetime, retention: RetentionConfig) -> Applied:
    """A run's metadata from its stored copies and what was salvaged (DESIGN §6)."""
    found = list(entries)
    meta = RunMetadata(run_id=run_id, created_at=now, updated_at=now, expires_at=now)
    for key in ("workflow_id", "user_directive", "created_at", "keep", "status"):
        with contextlib.suppress(ValidationError, TypeError):
            if key in salvaged:
                meta = RunMetadata.model_validate({**meta.model_dump(), key: salvaged[key]})
    if "created_at" not in salvaged and found:
        meta.created_at = min(e.generated_at for e in found)
    meta.artifacts = sorted(_salvage_agents(found, salvaged), key=lambda e: e.generated_at)
    meta.expires_at = expiry(meta.created_at, meta.workflow_id, retention)
    return apply_context(meta, ctx, retention)


def _salvage_agents(entries: list[ArtifactEntry], salvaged: dict[str, Any]) -> list[ArtifactEntry]:
    """Agents named by a readable part of the corrupt file, where context has none."""
    known: dict[str, str] = {}
    items = salvaged.get("artifacts")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("filename"), str) \
                and isinstance(item.get("agent_id"), str):
            known[item["filename"]] = item["agent_id"]
    return [e.model_copy(update={"agent_id": known[e.filename]})
            if e.agent_id == "unknown" and e.filename in known else e for e in entries]


def relist(meta: RunMetadata, fresh: Iterable[ArtifactEntry], stored: set[str]) -> RunMetadata:
    """After a crash: entries without a stored copy dropped, `fresh` ones (copies that were
    not listed, or listed with another size or time) put in; an agent the old entry knew
    is kept when the context names none (the session may be gone)."""
    known = {a.filename: a for a in meta.artifacts}
    new: list[ArtifactEntry] = []
    for entry in fresh:
        old = known.get(entry.filename)
        if old is not None and entry.agent_id == "unknown":
            entry = entry.model_copy(update={"agent_id": old.agent_id})
        new.append(entry)
    names = {e.filename for e in new}
    return meta.model_copy(update={
        "artifacts": [a for a in meta.artifacts if a.filename in stored
                      and a.filename not in names] + new,
        "removed": [r for r in meta.removed if r.filename not in names],
        "rejected": [r for r in meta.rejected if r.filename not in names]})


FOREIGN_TOMBSTONE_DAYS = 30  # DESIGN §10: any host drops another host's tombstone this old


def tombstone_droppable(tomb: Tombstone | None, host: str, session_gone: bool,
                        now: datetime) -> bool:
    """Whether this host may drop a tombstone (DESIGN §1, §10): its own (or an unnamed one)
    once its session folder is gone; another host's once it is 30 days old. An unreadable
    tombstone is judged as this host's."""
    if tomb is None or tomb.host in ("", host):
        return session_gone
    return now - tomb.deleted_at >= timedelta(days=FOREIGN_TOMBSTONE_DAYS)


def raced_deletion(tomb: Tombstone | None, stored_at: datetime, margin: timedelta) -> bool:
    """A stored copy without an entry, stored before its run's deletion (or within `margin`
    after it: clocks differ) is a promotion that raced the deletion: never adopted, since
    deleted stays deleted (DESIGN §1); a file really written later is promoted again from
    its session."""
    return tomb is not None and stored_at <= tomb.deleted_at + margin


def recovered_events(old: RunMetadata | None,
                     new: RunMetadata) -> list[tuple[str, dict[str, Any]]]:
    """An `artifact.promoted` for each entry the repair listed (a copy placed, or its entry
    committed, by a process that died before its journal write): every copy in the store
    has its promotion in the audit journal (DESIGN §11), marked `recovered`. `old` None:
    every entry of `new` (a run rebuilt from copies no list was ever committed for)."""
    before = {(a.filename, a.size_bytes, a.generated_at, a.sha256)
              for a in (old.artifacts if old is not None else ())}
    return [(events.ARTIFACT_PROMOTED,
             {"run_id": new.run_id, "filename": a.filename, "agent_id": a.agent_id,
              "size_bytes": a.size_bytes, "sha256": a.sha256, "content_type": a.content_type,
              "recovered": True})
            for a in new.artifacts
            if (a.filename, a.size_bytes, a.generated_at, a.sha256) not in before]

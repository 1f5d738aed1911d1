"""The audit window after a crash (DESIGN §11): entries without their `artifact.promoted`.

A batch's metadata.json is committed, then its promotions are appended to the journal (the
other order would journal promotions whose commit then failed). A daemon killed between the
two leaves entries whose event is in no journal. Nothing is paid for this per batch: the
daemon keeps a marker of its own life beside the journal, `.audit/.daemon-<host>.json`,
`"clean": false` from its start (before the repair: `opening`) and `true` once a stop has
drained every batch; after a crash it keeps the crashed life's start until `began` has
compared. A start that finds `false` knows the last life ended in a
crash, and when that life began (`started_at`): the runs of this host written since are
compared with the journal, and each entry whose promotion is in no line is journaled now,
`"recovered": true`, as the repair does for copies it lists (`rules.recovered_events`).

Which entries: one whose key (run, filename, sha256, size) has an `artifact.promoted` line
has its event (a same-bytes recheck keeps its first promotion's line; a line without a
digest, checksum "none", matches any entry of that size). Of the others, one whose source
was read in that life (`source_changed_at` at or after `started_at`: its copy or its
recheck was made then), or whose run's whole life the journal covers (its first day file is
older than the run's creation), or whose source was read and whose promotion came after
the journal was known whole (`journal_from`, `_covered_from`: r8 probe F2, a file written
while the daemon was down and promoted by the next life's catch-up) lacks its event. Any
other is left (a day pruned, a store from before the journal): a miss, never an event for
a promotion that did not happen. A crash during the append leaves lines the next check
finds: never journaled twice.
Local backend only (a bucket's journal is one object a batch: left, README).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from promoter import events
from promoter.audit import LocalJournal, read_journal
from promoter.clock import UNREAD, format_time, parse_time
from promoter.errors import StoreIOError
from promoter.logs import get_logger
from promoter.safeio import atomic_write_bytes
from promoter.store import Store

__all__ = ["began", "stopped"]

log = get_logger()
_mine: set[Path] = set()  # markers this process wrote: only those are marked clean
# marker -> (the crashed last life's start or None, since when the journal is whole)
_lives: dict[Path, tuple[datetime | None, datetime]] = {}


def _marker(store: Store) -> Path | None:
    sink = store.audit.sink
    if not isinstance(sink, LocalJournal):
        return None
    return sink.folder / f".daemon-{store.host}.json"


def _write(path: Path, fields: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o750, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path.parent).st_mode):
        raise OSError(f"not a folder (a link?): {path.parent}")
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        atomic_write_bytes(fd, path.name, json.dumps(fields).encode() + b"\n")
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(4096))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _day(name: str) -> date | None:
    try:
        return date.fromisoformat(name[:10])
    except ValueError:  # 2026-13-45.jsonl: named like a day, but none (audit.read_journal)
        return None


def opening(store: Store) -> None:
    """Before the repair: this life's marker says `"clean": false` from here on, so a kill
    during the repair (whose relisting commits, then journals) is looked for at the next
    start. A crashed last life's start is kept in it until `began` has compared it."""
    store.audit.held.keep_retrying()  # lines a failed append held: tried on a timer too
    path = _marker(store)
    if path is None:
        return
    now = store.clock.now()
    since, journal_from = None, now
    last = _read(path)
    if last is not None:
        with contextlib.suppress(KeyError, ValueError):
            journal_from = min(parse_time(str(last["journal_from"])), now)
        if last.get("clean") is not True:
            try:
                since = parse_time(str(last.get("started_at")))
            except ValueError as exc:  # a naive time, a number: told, and replaced
                log.warning(events.AUDIT_FAILED, path=str(path), reason=str(exc),
                            action="the journal was not compared with the last life's "
                            "promotions")
    _lives[path] = (since, journal_from)
    if path.parent.parent.is_dir():  # else a new store, made by the repair: began() marks it
        _mark(path, since or now, journal_from)


def _mark(path: Path, started: datetime, journal_from: datetime) -> None:
    try:
        _write(path, {"pid": os.getpid(), "started_at": format_time(started), "clean": False,
                      "journal_from": format_time(journal_from)})
        _mine.add(path)
    except OSError as exc:
        log.warning(events.AUDIT_FAILED, path=str(path), reason=exc.strerror or str(exc),
                    action="a crash of this daemon will not be looked for at the next start")


def _covered_from(days: list[date], journal_from: datetime | None) -> datetime | None:
    """Since when every promotion of this host has its line unless a crash cut it: the
    markers' `journal_from` (their first life), or the oldest kept day's midnight when the
    retention has pruned days since. An entry's promotion came after its run's creation
    and after its source's read, so one of those at or after this is surely in the journal
    or lost to a crash."""
    if not days or journal_from is None:
        return None
    if days[0] <= journal_from.astimezone(UTC).date():
        return journal_from
    return max(journal_from, datetime.combine(days[0], time(), UTC))


def began(store: Store) -> int:
    """After the repair, before any promotion: the last life's entries a crash kept out of
    the journal are journaled (how many), and the marker is this life's alone. A failure
    is logged, never a failed start; the crashed life's start is then kept for the next."""
    path = _marker(store)
    if path is None:
        return 0
    if path not in _lives:
        opening(store)
    since, journal_from = _lives.pop(path, (None, store.clock.now()))
    if since is None:
        if path not in _mine:  # a new store: artifacts/ was made by the repair
            _mark(path, store.clock.now(), journal_from)
        return 0
    now = store.clock.now()  # every commit so far (the repair's) is journaled
    try:
        count = recover(store, since, journal_from)
    except (OSError, ValueError, TypeError, StoreIOError) as exc:  # TypeError: a naive time
        log.warning(events.AUDIT_FAILED, path=str(path), reason=str(exc),
                    action="the journal was not compared with the last life's promotions; "
                    "the next start tries again")
        return 0
    _mark(path, now, journal_from)
    return count


def stopped(store: Store | None, drained: bool) -> None:
    """At the end of a stop that drained every batch and journaled every event: this life
    ended cleanly (else the next start looks for the promotions not journaled)."""
    path = _marker(store) if store is not None else None
    journaled = store is None or store.audit.settle()  # lines a failed append held: last try
    if store is None or path is None or path not in _mine or not drained or not journaled:
        return
    last = _read(path) or {}
    with contextlib.suppress(OSError):
        _write(path, {**last, "clean": True, "stopped_at": format_time(store.clock.now())})


def recover(store: Store, since: datetime, journal_from: datetime | None = None) -> int:
    """Journal, `"recovered": true`, the promotions since `since` that no line records."""
    path = _marker(store)
    assert path is not None
    # the heads first (views of the runs the daemon let go: parsedruns.py), then the runs
    # written since parsed, one at a time: not every run's model at once
    heads = [m.run_id for m in store.list_looks()
             if m.host in ("", store.host) and m.updated_at >= since]
    runs = [m for m in map(store.read_run, heads) if m is not None]
    if not runs:
        return 0
    days = sorted(day for p in path.parent.glob("????-??-??.jsonl") if (day := _day(p.name)))
    cover = _covered_from(days, journal_from)
    lines = read_journal(path.parent, since=min(m.created_at for m in runs))
    seen = {(e.get("run_id"), e.get("filename"), e.get("sha256"), e.get("size_bytes"))
            for e in lines if e.get("event") == events.ARTIFACT_PROMOTED}
    missing = []
    for meta in runs:
        whole = bool(days) and days[0] < meta.created_at.date()
        for a in meta.artifacts:
            if (meta.run_id, a.filename, a.sha256, a.size_bytes) in seen \
                    or (meta.run_id, a.filename, None, a.size_bytes) in seen:
                continue
            read = a.source_changed_at  # None: older than the field; UNREAD: rebuilt from
            # its copy, whose run's created_at may be its files' (an agent's) mtimes
            if whole or (read is not None and read >= since) or (
                    cover is not None and read is not None and read != UNREAD
                    and max(read, meta.created_at) >= cover):
                missing.append((events.ARTIFACT_PROMOTED, {
                    "run_id": meta.run_id, "filename": a.filename, "agent_id": a.agent_id,
                    "size_bytes": a.size_bytes, "sha256": a.sha256,
                    "content_type": a.content_type, "recovered": True}))
    if missing:
        store.audit.record(missing)
        log.warning(events.AUDIT_RECOVERED, events=len(missing), since=format_time(since),
                    reason="the last run of the daemon ended between metadata and journal "
                    "writes")
    return len(missing)

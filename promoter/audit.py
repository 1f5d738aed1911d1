"""The audit journal: who changed what, whichever process did it (DESIGN §11).

Every change (a promotion, a deletion, a keep, a library write) is one event
with an `actor` and a `host`. It is logged as before and appended to the
journal, `<artifacts>/.audit/<YYYY-MM-DD>.jsonl`, so an event from a CLI in
someone's terminal outlives that terminal. A batch of events costs one
`write` (O_APPEND, whole lines) and one `fdatasync`, done before the caller
reports success. The sink is a small Protocol: the local folder is one
implementation; an object store supplies its own (one object a batch).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import pwd
import re
import socket
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from promoter import events
from promoter.clock import Clock, SystemClock, parse_time
from promoter.errors import StoreIOError
from promoter.journalhold import Held, PartlyWritten, unwritten
from promoter.journalwrite import GroupCommit, check_folder
from promoter.logs import get_logger, info_many, json_members

__all__ = [
    "AUDIT_DIR",
    "DAEMON",
    "Actor",
    "Auditor",
    "JournalSink",
    "LocalJournal",
    "PartlyWritten",
    "acting_as",
    "cli_actor",
    "events_in",
    "http_actor",
    "merged",
    "read_journal",
    "unjournaled",
]

log = get_logger()
AUDIT_DIR = ".audit"
MAX_CLIENT_CHARS = 64  # an IPv6 address with a zone fits
_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")


@dataclass(frozen=True)
class Actor:
    """Who acts: `daemon`, `uid:<uid>(<name>)` or `http:<client>`, with a few extra fields."""

    name: str
    extra: tuple[tuple[str, str], ...] = ()

    def fields(self) -> dict[str, str]:
        return {"actor": self.name, **dict(self.extra)}


DAEMON = Actor("daemon")


def cli_actor(env: Mapping[str, str] | None = None) -> Actor:
    """The invoking user, and the one behind `sudo` when SUDO_USER says so."""
    environ = os.environ if env is None else env
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        name = "?"
    extra = (("sudo_user", environ["SUDO_USER"]),) if environ.get("SUDO_USER") else ()
    return Actor(f"uid:{uid}({name})", extra)


def http_actor(client: str, token: bool) -> Actor:
    """A request's actor: the client address alone (no port), `auth` when a token was checked.

    Behind a trusted proxy the address is what its X-Forwarded-For said: bounded here, so a
    misbehaving proxy cannot write kilobytes into every journal line.
    """
    return Actor(f"http:{client[:MAX_CLIENT_CHARS]}", (("auth", "token"),) if token else ())


_current: ContextVar[Actor | None] = ContextVar("promoter_actor", default=None)


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    """Changes made in this context (a request, and the worker threads it calls) carry `actor`."""
    token = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(token)


class JournalSink(Protocol):
    """Where batches of journal lines go; a backend supplies its own."""

    def append(self, day: str, data: bytes) -> None:
        """Append whole lines (each ending in a newline) durably, or raise OSError."""
        ...

    def prune(self, before: str) -> list[str]:
        """Remove whole days earlier than `before` (YYYY-MM-DD); returns those removed."""
        ...


class LocalJournal:
    """`<artifacts>/.audit/<day>.jsonl`, appended with O_APPEND by every process.

    The file is opened for each append and closed after it: a Store never holds a
    descriptor between changes (tests and servers make many), and a day switch
    needs no bookkeeping. An append is one write and one flush; the batches that
    threads append at the same time share them (journalwrite.py).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writer = GroupCommit(folder)

    def append(self, day: str, data: bytes) -> None:
        self.writer.append(day, data)

    def prune(self, before: str) -> list[str]:
        removed = []
        try:
            check_folder(self.folder)
            names = sorted(os.listdir(self.folder))
        except (FileNotFoundError, NotADirectoryError):  # none yet, or a link: nothing pruned
            return []
        for name in names:
            match = _DAY_FILE.match(name)
            if match and match.group(1) < before:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / name)
                    removed.append(match.group(1))
        return removed


def _stamp(value: datetime) -> str:
    """`2026-11-30T12:00:00.000000Z`; isoformat is a few times cheaper than strftime (a batch
    stamps once, but the daemon stamps every batch)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


@functools.lru_cache(maxsize=64)
def _quoted(event: str) -> str:
    """An event's name as JSON: a few constants, encoded once each, not once a line."""
    return json.dumps(event)


def _journal_line(head: str, event: str, fields: dict[str, Any], members: str | None) -> str:
    """One journal line: `timestamp` and `event` first, then the event's fields (the actor's
    and host's among them) as the log line has them (`members`, from `json_members`)."""
    if members is not None and "timestamp" not in fields and "event" not in fields:
        return f'{head}{_quoted(event)}{", " if members else ""}{members}}}\n'
    line = json.loads(f"{head}{json.dumps(event)}}}")  # a field of those names wins, as before
    return json.dumps({**line, **fields}) + "\n"


class Auditor:
    """Logs each change and appends it to the journal, one write per batch. A batch the
    journal could not take is held and written late, in order (journalhold.py)."""

    def __init__(self, sink: JournalSink, host: str, actor: Actor,
                 clock: Clock | None = None) -> None:
        self.sink = sink
        self.host = host or socket.gethostname()
        self.actor = actor
        self.clock: Clock = clock or SystemClock()
        self.held = Held(sink)

    def record(self, batch: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Log and journal `batch` ((event, fields) pairs); StoreIOError if the journal failed
        (the lines are then held and written later: see the class)."""
        if not batch:
            return
        actor = _current.get() or self.actor
        now = self.clock.now()
        who = {**actor.fields(), "host": self.host}
        merged = [(event, {**fields, **who}) for event, fields in batch]
        encoded = [json_members(fields) for _, fields in merged]  # once: log and journal
        info_many(merged, encoded=encoded)  # one write; nothing rendered when info is off
        head = f'{{"timestamp": "{_stamp(now)}", "event": '
        data = "".join(_journal_line(head, event, fields, members)
                       for (event, fields), members in zip(merged, encoded, strict=True)
                       ).encode("utf-8", "surrogateescape")
        day = now.astimezone(UTC).date().isoformat()
        if self.held:
            error = self.held.write(day, data, len(batch))  # after the held lines, in order
            if error is None:
                return
        else:  # the hot path: nothing held, no lock
            try:
                self.sink.append(day, data)
                return
            except OSError as exc:
                error = exc
                self.held.keep(day, unwritten(exc, data), len(batch))
        log.error(events.AUDIT_FAILED, events=len(batch), reason=error.strerror or str(error),
                  path=str(error.filename or ""), held=self.held.events())
        where = f" {error.filename}" if error.filename else ""
        raise StoreIOError(f"audit journal{where} not written ({error.strerror or error}): "
                           f"{len(batch)} change(s) done but not journaled yet") from None

    def settle(self) -> bool:
        """One last try for the held lines (at a stop); False when an event is still not
        journaled (held, or dropped past the bound)."""
        return self.held.settle()

    def one(self, event: str, **fields: Any) -> None:
        self.record([(event, fields)])

    def prune(self, retention_days: int) -> list[str]:
        """Remove journal days older than `retention_days` (whole days only)."""
        cutoff = (self.clock.now().astimezone(UTC).date() - timedelta(days=retention_days))
        removed = self.sink.prune(cutoff.isoformat())
        if removed:
            log.info(events.AUDIT_PRUNED, days=removed)
        return removed


def unjournaled(auditor: Auditor, run_id: str, since: datetime,
                batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The promotions of `batch` (one run's) that no `artifact.promoted` line of the local
    journal since `since` records (a line without a digest matches any of that size); none
    when the journal is not a local folder (a bucket's is not read here)."""
    if not isinstance(auditor.sink, LocalJournal):
        return []
    seen = {(e.get("filename"), e.get("sha256"), e.get("size_bytes"))
            for e in read_journal(auditor.sink.folder, since, run_id)
            if e.get("event") == events.ARTIFACT_PROMOTED}
    return [(event, f) for event, f in batch
            if (f["filename"], f["sha256"], f["size_bytes"]) not in seen
            and (f["filename"], None, f["size_bytes"]) not in seen]


def read_journal(folder: Path, since: datetime | None = None,
                 run_id: str | None = None) -> list[dict[str, Any]]:
    """Every event of the local journal, merged in time order; bad lines skipped with a warning.

    A line torn by a crash (no newline, or not JSON) is never a failure: it is
    reported once (`audit.invalid`) and the rest of the journal is read.
    """
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreIOError(f"cannot read the audit journal {folder}: {exc.strerror}") from None
    first_day = since.astimezone(UTC).date() if since is not None else date.min
    found: list[tuple[datetime, dict[str, Any]]] = []
    for name in names:
        match = _DAY_FILE.match(name)
        if not match:
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:  # 2026-13-45.jsonl: named like a day, but none
            log.warning(events.AUDIT_INVALID, file=name, reason="not a day's name")
            continue
        if day < first_day:
            continue
        try:
            raw = _read_day(folder / name)
        except OSError as exc:
            log.warning(events.AUDIT_INVALID, file=name, reason=exc.strerror)
            continue
        found += events_in(raw, name, since, run_id)
    return merged(found)


def events_in(raw: bytes, name: str, since: datetime | None,
              run_id: str | None) -> list[tuple[datetime, dict[str, Any]]]:
    """The events of one journal file (a day, or one batch object), filtered; torn lines
    are reported (`audit.invalid`) and skipped."""
    found = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        item = _parse_line(line)
        if isinstance(item, str):
            log.warning(events.AUDIT_INVALID, file=name, line=number, reason=item)
            continue
        when, event = item
        if since is not None and when < since:
            continue
        if run_id is not None and event.get("run_id") != run_id:
            continue
        found.append((when, event))
    return found


def merged(found: list[tuple[datetime, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Events in time order; events of one instant keep the order they were read in."""
    order = sorted(range(len(found)), key=lambda i: (found[i][0], i))
    return [found[i][1] for i in order]


def _read_day(path: Path) -> bytes:
    """A day file's bytes; OSError for anything but a regular file (a FIFO would block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def _parse_line(line: bytes) -> tuple[datetime, dict[str, Any]] | str:
    """The line's time and event, or why it is none. Decoded with surrogateescape: older
    versions wrote a non-UTF-8 byte (a SUDO_USER's) raw, and such a line is still an event."""
    try:
        item = json.loads(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):  # RecursionError: `[[[[...` thousands deep
        return "not JSON (torn by a crash, or not written by promoter)"
    if not isinstance(item, dict) or not isinstance(item.get("event"), str) \
            or not isinstance(item.get("timestamp"), str):
        return "JSON, but not an event (no event or timestamp string)"
    try:
        return parse_time(item["timestamp"]), item
    except (ValueError, TypeError, OverflowError):
        return "an event whose timestamp is not a time"


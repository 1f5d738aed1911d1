"""The store's core: reading runs, their context, and every metadata change (DESIGN §1, §2, §6).

Every change to a run is one read-modify-write of its metadata through `change`:
on the local disk under the run's lock (a write never loses), on an object store
with a conditional write that may lose its race to another host and is then
read again and retried (DESIGN §10). Copies are made inside the same change, so an entry
always describes a stored copy. The backend keeps the bytes; `rules.py` decides what they say.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from promoter import events, rules
from promoter.audit import Actor, Auditor, cli_actor, unjournaled
from promoter.backend import Backend, LostRace, TooManyRaces
from promoter.budget import StoreTotal
from promoter.clock import Clock, SystemClock
from promoter.config import Config
from promoter.context import AttributionReader, RunContext, RunJsonReader, session_exists
from promoter.errors import NotFoundError, StoreIOError
from promoter.localdisk import LocalDisk, Oversized
from promoter.logs import get_logger
from promoter.metadata import RunMetadata, Tombstone, parse_metadata
from promoter.metatext import RunTexts
from promoter.names import check_run_id
from promoter.parsedruns import MODEL_ENTRIES, ParsedRuns, RunView
from promoter.safeio import CopyPools, folder
from promoter.storage import open_parts

__all__ = ["MAX_RACES", "StoreCore"]

log = get_logger()
T = TypeVar("T")
MAX_RACES = 50  # lost races in a row on one run before a change gives up (StoreIOError)


def _json_invalid(exc: Exception) -> bool:
    """Whether a parse failed on the JSON itself, from the error list, never str(exc)
    (which renders every error and every input: seconds on a planted file)."""
    if not isinstance(exc, ValidationError):
        return False
    return any(e["type"] == "json_invalid" for e in
               exc.errors(include_url=False, include_context=False, include_input=False))


class StoreCore:
    """Owns the artifacts (and, through `.library`, the library); reads `sessions/` only."""

    def __init__(self, config: Config, clock: Clock | None = None,
                 actor: Actor | None = None, bounded: bool = False) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.sessions_path = config.storage.sessions_dir
        self.artifacts_path = config.storage.artifacts_dir
        parts = open_parts(config, self.clock)
        # the backend (backend.py): bytes, metadata and tombstones; every rule is decided here
        self.disk: Backend[Any] = parts.backend
        self.library = parts.library
        self.audit = Auditor(parts.journal, config.storage.host, actor or cli_actor(),
                             self.clock)
        self.read_journal = parts.read_journal
        self.host = config.storage.host
        self.attribution = AttributionReader()
        self.cache = ParsedRuns()  # parsed runs by version; bounded in the daemon (§9):
        if bounded:  # a run the start parses and lets go leaves a view at once
            self.cache.bound(MODEL_ENTRIES)
        self.run_json = RunJsonReader()
        self.texts = RunTexts()  # each run's metadata text as last written (metatext.py)
        self.deleting: set[str] = set()  # runs seen marked "deleting" (DESIGN §10)
        self.total = StoreTotal()  # the store's size, kept as metadata is written (DESIGN §4)
        self.on_over_budget: Callable[[], None] | None = None  # the daemon kicks its sweeper
        self.pools: CopyPools | None = None  # the daemon's pipeline lends its copy threads

    # -- the store itself ------------------------------------------------------------------

    def ensure_folders(self, sessions: bool = True) -> None:
        """Create the store when missing (`promoter run`): folders, or the S3 probe."""
        self.disk.check(create=True)
        paths = [self.sessions_path] if sessions else []
        if self.config.storage.backend == "local":
            paths.append(self.config.storage.library_dir)
        try:
            for path in paths:
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreIOError(f"cannot create storage folder {exc.filename}: {exc.strerror}"
                               ) from None

    def require_store(self) -> None:
        """Commands other than `run` never create the store (DESIGN §3): a mistyped root must
        not look like an empty store, nor grow a new tree. On S3: the probe of §10."""
        self.disk.check(create=False)

    def _exists(self, run_id: str) -> bool:
        """A cheap look before a change, so asking about a missing run creates nothing."""
        return self.disk.is_run(run_id)

    def _require(self, run_id: str) -> None:
        if not self._exists(check_run_id(run_id)):
            raise NotFoundError(f"no run {run_id}")

    def locked(self, run_id: str, wait: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A write session on the run (the local run lock); yields the handle writes take."""
        return self.disk.locked(run_id, wait)

    def change(self, run_id: str, apply: Callable[[Any], T], wait: bool = True) -> T:
        """Run `apply(handle)` (read, modify, write the run's metadata) in a write session,
        again from its read whenever its write lost the race to another writer (DESIGN §10:
        no lost update on any number of hosts). `apply` must start from a fresh read."""
        for attempt in range(MAX_RACES):
            try:
                with self.locked(run_id, wait) as handle:
                    return apply(handle)
            except LostRace:
                self.cache.pop(run_id)
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** attempt)))  # noqa: S311 (jitter)
        raise TooManyRaces(f"run {run_id}: {MAX_RACES} writes in a row lost to other writers")

    # -- reading -------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """Every run in the store."""
        return self.disk.run_ids()

    def read_run(self, run_id: str) -> RunMetadata | None:
        """The run's metadata (shared, treat as read-only), or None if there is no such run.

        Parsed models are cached by the metadata's version tag, so listing many runs
        re-reads only the ones that changed. A run being deleted is gone.
        """
        return self._read_at(check_run_id(run_id), self.disk.meta_version(run_id))

    def _read_at(self, run_id: str, key: Hashable | None) -> RunMetadata | None:
        """`read_run` with the version tag taken (on an object store a tag may be a HEAD)."""
        if key is None:
            return self._recover_if_orphaned(run_id)
        cached = self.cache.model(run_id, key)
        if cached is not None:
            return cached
        with self.disk.reading() as art:
            meta = self._parse(art, run_id)
        if meta is None:
            return self._recover_if_orphaned(run_id)
        if meta.status == "deleting":
            self.deleting.add(run_id)  # for the sweep to finish (deletion.finish_deletions)
            return None
        self.cache.put(run_id, key, meta)
        return meta

    def cached_run(self, run_id: str) -> RunMetadata | None:
        """The run's metadata if the cached copy is current (one stat), else None. Never
        parses: the server calls it on its event loop and, on None, reads the run in a
        worker thread (DESIGN §7: metadata is never parsed on the loop)."""
        version = self.disk.meta_version(run_id)
        return self.cache.model(run_id, version) if version is not None else None

    def look(self, run_id: str) -> RunMetadata | RunView | None:
        """The run as the daemon's passes over every run need it (reconcile.py, sweep.py): its
        model when held, else the view the bounded cache left of it when current (no
        parse: parsedruns.py), else `read_run`."""
        key = self.disk.meta_version(check_run_id(run_id))
        view = self.cache.view(run_id, key) if key is not None else None
        return view if view is not None else self._read_at(run_id, key)

    def current(self, run_id: str) -> tuple[RunMetadata | None, RunView | None]:
        """The cached model if current, else the view if current (one version tag read)."""
        key = self.disk.meta_version(run_id)
        if key is None:
            return None, None
        cached = self.cache.model(run_id, key)
        return (cached, None) if cached is not None else (None, self.cache.view(run_id, key))

    def remember(self, run_id: str, meta: RunMetadata, version: Hashable | None = None) -> None:
        """In a write session: `meta` is what the metadata holds now, so readers need not
        parse it again (start-up repair reads every run once; the catch-up then reuses it).
        `version`: `write_metadata`'s (a later stat tagged others' changes as ours, probe-15)."""
        version = version if version is not None else self.disk.meta_version(run_id)
        if version is not None:
            self.cache.put(run_id, version, meta)

    def remember_local(self, run_id: str, meta: RunMetadata, version: Hashable | None) -> None:
        """`remember` on the local disk (its lock held, the version tag the file's own): a big
        run's next batch starts from it, not a parse (issue 15). An object store's write
        session needs the ETag of its own read."""
        if isinstance(self.disk, LocalDisk):
            self.remember(run_id, meta, version)

    def load_current(self, art: Any, run_id: str) -> RunMetadata | None:
        """In a write session: the metadata, the remembered model when current (shared)."""
        cached = self.cached_run(run_id) if isinstance(self.disk, LocalDisk) else None
        return cached if cached is not None else self.load_for_update(art, run_id)

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

    def list_looks(self) -> list[RunMetadata | RunView]:
        """`list_runs` as `look` gives each run: what a pass over every run's head needs,
        without parsing the runs the bounded cache let go (the sweep, the store's size)."""
        runs = [m for m in (self.look(r) for r in self.run_ids()) if m is not None]
        runs.sort(key=lambda m: (m.created_at, m.run_id), reverse=True)
        return runs

    def _parse(self, art: Any, run_id: str) -> RunMetadata | None:
        """Parse the metadata; None when absent or corrupt (corruption is recovered in a
        write session)."""
        try:
            raw = self._read_metadata_bytes(art, run_id)
        except Oversized:
            return None
        return None if raw is None else self._parse_bytes(run_id, raw)

    def _parse_bytes(self, run_id: str, raw: bytes) -> RunMetadata | None:
        try:
            meta = parse_metadata(raw)
        except ValidationError:
            return None
        return meta if meta.run_id == run_id else None

    def _read_metadata_bytes(self, art: Any, run_id: str) -> bytes | None:
        return self.disk.read_meta(art, run_id, self.config.promote.max_metadata_bytes)

    def _recover_if_orphaned(self, run_id: str) -> RunMetadata | None:
        """A run whose metadata is missing or corrupt is rebuilt, never dropped. A reader
        never waits for the run's lock: whoever holds it (the daemon copying the run's first
        batch, a rebuild) is writing the metadata; until then the run is not there. Waiting
        froze the HTTP server behind a copy (issue 11)."""
        if not self.disk.is_run(run_id):  # a link planted as a run folder is none (DESIGN §6)
            return None
        try:
            meta = self.change(run_id, lambda art: self.load_for_update(art, run_id),
                               wait=False)
        except BlockingIOError:
            return None
        return meta if meta is None or meta.status != "deleting" else None

    def load_for_update(self, art: Any, run_id: str) -> RunMetadata | None:
        """In a write session: a private copy of the metadata, recovered if corrupt."""
        try:
            raw = self._read_metadata_bytes(art, run_id)
        except Oversized as exc:  # set aside unread; nothing of it is salvaged
            return self._rebuild(art, run_id, b"", str(exc))
        if raw is None:
            if not self.disk.is_run(run_id):
                return None
            if not self.disk.has_files(art, run_id):
                # the run's first copy never completed (changed, failed, killed): there is
                # no run yet and nothing to recover; its promotion will create it
                return None
            if self.config.storage.backend == "s3" and self.read_tombstone(run_id) is not None:
                # objects a deletion raced with (an upload after its batch delete): a deleted
                # run is never rebuilt from them; files written after it start it afresh
                return None
            return self._rebuild(art, run_id, None, "metadata.json missing")
        try:
            meta = parse_metadata(raw)
            if meta.run_id != run_id:
                raise ValueError("run_id does not match its folder")
            return meta
        except (ValidationError, ValueError) as exc:
            reason = "not valid JSON" if _json_invalid(exc) else "does not match the schema"
            return self._rebuild(art, run_id, raw, reason)

    def read_tombstone(self, run_id: str) -> Tombstone | None:
        raw = self.disk.read_tombstone(run_id)
        try:
            return Tombstone.model_validate_json(raw) if raw is not None else None
        except ValidationError:
            return None

    # -- run context ---------------------------------------------------------------------

    def context(self, run_id: str, names: Iterable[str] = (), base: int | None = None
                ) -> RunContext:
        """What run.json and attribution.jsonl say about the run now. `names`: files about to
        be promoted; with the entries already known they are the lines worth keeping. `base`:
        sessions/ open already (a batch's), else opened here."""
        def known() -> set[str]:  # made only if the run has attribution lines to judge
            wanted = {*names, *self.cache.names(run_id)}
            return wanted | {n.rsplit("/", 1)[-1] for n in wanted}  # lines may name the base

        try:
            with contextlib.nullcontext(base) if base is not None \
                    else folder(self.sessions_path) as sessions:
                fields = self.run_json.read(sessions, run_id)
                agents = self.attribution.agents(sessions, run_id, known)
        except OSError:
            return RunContext()
        return RunContext(workflow_id=fields.get("workflow_id", ""),
                          user_directive=fields.get("user_directive", ""),
                          status=fields.get("status", ""), agents=agents)

    def session_exists(self, run_id: str) -> bool:
        """False only when the session is known to be gone (context.session_exists)."""
        return session_exists(self.sessions_path, run_id)

    # -- writing metadata ----------------------------------------------------------------

    def write_metadata(self, art: Any, meta: RunMetadata) -> Hashable | None:
        meta.updated_at = self.clock.now()
        meta.host = meta.host or self.host  # the run's own host: the first writer's
        # the run's text as last written is kept: a batch writes only its new entries' text
        rendered = self.texts.render(meta)
        version = self.disk.write_meta(art, meta.run_id, rendered.data)
        self.cache.pop(meta.run_id)
        total = self.total.set(meta.run_id, rendered.total_bytes)
        ceiling = self.config.retention.max_store_bytes
        if ceiling and total > ceiling and self.on_over_budget is not None:
            self.on_over_budget()  # sets an event: nothing waits on it under the run's lock
        return version

    @property
    def _checksum(self) -> bool:
        return self.config.promote.checksum == "sha256"

    # -- recovery (the backend walks the copies, rules.py decides) ------------------------

    def _rebuild(self, art: Any, run_id: str, raw: bytes | None, reason: str) -> RunMetadata:
        """In a write session: set corrupt metadata aside, rebuild it from the copies."""
        aside = self.disk.set_aside(art, run_id, self.clock.now()) if raw is not None else ""
        ctx = self.context(run_id)
        entries = self.disk.stored_entries(art, run_id, ctx, self._checksum)
        applied = rules.rebuild(run_id, entries, rules.salvage(raw), ctx, self.clock.now(),
                                self.config.retention)
        if applied.completed:
            log.info(events.RUN_COMPLETED, run_id=run_id, reason=f"run.json {ctx.status}")
        self.write_metadata(art, applied.meta)
        log.warning(events.METADATA_RECOVERED, run_id=run_id, reason=reason, set_aside=aside,
                    files=len(entries))
        if raw is None:  # no list was ever committed (a full disk at the run's first write,
            # a crash): its copies' promotions are in no journal line yet (DESIGN §11)
            since = min(applied.meta.created_at, self.clock.now()) - timedelta(days=1)
            batch = unjournaled(self.audit, run_id, since,
                                rules.recovered_events(None, applied.meta))
            with contextlib.suppress(StoreIOError):  # logged (audit.failed), held: audit.py
                self.audit.record(batch)
        return applied.meta

    def repair(self, run_id: str) -> bool:
        """After a crash: remove temps, list every stored file, drop entries without a copy."""
        check_run_id(run_id)

        def apply(art: Any) -> tuple[int, int, list[tuple[str, dict[str, Any]]]] | None:
            meta = self.load_for_update(art, run_id)
            if meta is None or meta.status == "deleting":
                return None
            self.disk.remove_temps(art, run_id)
            fixed = self.disk.relist(art, meta, lambda: self.context(run_id), self._checksum)
            if fixed is None:
                self.remember(run_id, meta)
                return None
            self.write_metadata(art, fixed[0])
            return fixed[1], fixed[2], rules.recovered_events(meta, fixed[0])

        done = self.change(run_id, apply)
        if done is None:
            return False
        log.warning(events.METADATA_RECOVERED, run_id=run_id, reason="repair after restart",
                    relisted=done[0], dropped=done[1])
        with contextlib.suppress(StoreIOError):  # logged (audit.failed) by the auditor
            self.audit.record(done[2])  # promotions a crash kept out of the journal (§11)
        return True

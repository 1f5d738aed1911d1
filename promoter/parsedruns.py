"""The store's cache of parsed runs, bounded in the daemon (DESIGN §9: idle memory).

Every run the store reads is kept parsed, tagged with its metadata's version, so a
catch-up or a listing re-reads only the runs that changed. A parsed entry costs about
1.2 KiB (a pydantic model, its dict, its set of fields, its strings and times): 1,000
runs of 100 promoted files held 124 MiB, and the idle daemon sat at 186 MiB (issue 15,
eighth round). The daemon bounds it from its start (`bound`): the models of the runs used
last are kept up to a number of entries; each run pushed out leaves a `RunView`, what the
daemon's passes over every run need of it (its head; each entry's name, size and times
packed into one zlib-compressed blob, unpacked where a pass reads it: ~14 bytes an entry
whatever the names' length, since a run's names share long prefixes; the names kept whole
held 25 MiB more over 1,000 x 100 files named by 250-character paths), until the run is
next read or written. The views the start makes are packed once the daemon is ready
(`pack_views`): packing costs ~0.07 s a 1,000 runs, and the start-up catch-up reads them all.
Bounded from the start, not after it: the start's models freed at its end left the heap's
arenas pinned by the small objects made between them (RSS stayed at 175 MiB); a model
freed as soon as its view is made is reused by the next parse. A command and the server
keep every model (no bound): they behave as before.
"""

from __future__ import annotations

import sys
import threading
import zlib
from array import array
from collections.abc import Hashable, Iterable
from datetime import datetime
from typing import Any

from promoter.clock import EPOCH, ONE_US
from promoter.context import RunContext
from promoter.metadata import RunMetadata

__all__ = ["KEEP_RUNS", "MODEL_ENTRIES", "ParsedRuns", "RunView", "give_back_memory"]

MODEL_ENTRIES = 5_000  # entries of parsed models the bounded cache keeps (~6 MiB)
KEEP_RUNS = 8  # runs used last always kept parsed, however big (a big run being written)
_NO_CHANGE = -(1 << 63)  # `_changes` of an entry without `source_changed_at` (none is so far)
_LEVEL = 1  # zlib's fastest: names within a run repeat their folders, any level packs them


class _Entries:
    """A view's entries: sizes, µs mtimes, ctime - mtime (µs) and the names '\\0'-joined,
    as made from the model (the start: packing 1,000 runs would cost it ~0.07 s) or as
    unpacked from the view's blob for one pass."""

    __slots__ = ("changes", "micros", "sizes", "text")

    def __init__(self, sizes: array[int], micros: array[int], changes: array[int],
                 text: str) -> None:
        self.sizes, self.micros, self.changes, self.text = sizes, micros, changes, text

    def names(self) -> list[str]:
        return self.text.split("\0") if self.sizes else []

    def pack(self) -> bytes:
        fields = self.sizes.tobytes() + self.micros.tobytes() + self.changes.tobytes()
        return zlib.compress(fields + self.text.encode("utf-8", "surrogatepass"), _LEVEL)

    @staticmethod
    def unpack(blob: bytes, count: int) -> _Entries:
        raw = memoryview(zlib.decompress(blob))
        width = 8 * count
        sizes, micros, changes = array("q"), array("q"), array("q")
        sizes.frombytes(raw[:width])
        micros.frombytes(raw[width:2 * width])
        changes.frombytes(raw[2 * width:3 * width])
        return _Entries(sizes, micros, changes, str(raw[3 * width:], "utf-8", "surrogatepass"))


class RunView:
    """What the daemon's passes over every run need of a run whose model was let go: the
    fields of its head, and its entries' names, sizes and times as `walk.known_copies` and
    `walk.known_changes` give them, and their agents (`context_changes`). Made from a
    model, never from a file: the model was validated. Its entries are packed (`pack`)
    once the start is over, unpacked by each pass that reads them."""

    __slots__ = ("_agents", "_ahead", "_count", "_entries", "created_at", "expires_at", "host",
                 "keep", "run_id", "status", "total_bytes", "updated_at", "user_directive",
                 "workflow_id")

    def __init__(self, meta: RunMetadata, names: str) -> None:
        self.run_id = meta.run_id
        self.created_at: datetime = meta.created_at
        self.updated_at: datetime = meta.updated_at
        self.expires_at: datetime = meta.expires_at
        self.keep = meta.keep
        self.status = meta.status
        self.host = meta.host
        self.workflow_id = meta.workflow_id
        self.user_directive = meta.user_directive
        items = meta.artifacts
        self._count = len(items)
        sizes = array("q", [item.size_bytes for item in items])
        self.total_bytes = sum(sizes)
        # one attribute, replaced whole by `pack`: a reader on another thread sees either
        self._entries: _Entries | bytes = _Entries(
            sizes, array("q", [(item.generated_at - EPOCH) // ONE_US for item in items]),
            array("q", [_NO_CHANGE if item.source_changed_at is None else
                        (item.source_changed_at - item.generated_at) // ONE_US
                        for item in items]), names)
        agents = [item.agent_id for item in items]
        # one agent for the whole run (often "unknown"): one string, not one an entry
        self._agents: str | tuple[str, ...] = agents[0] if len(set(agents)) == 1 else \
            tuple(sys.intern(agent) for agent in agents)
        self._ahead: list[Any] = []  # known copies and changes made ahead (`prepare`)

    @staticmethod
    def of(meta: RunMetadata) -> RunView | None:
        """The view of `meta`; None when one cannot hold it (a name with a NUL, which the
        joined names cannot split; a size or time beyond 64 bits): such a run is parsed
        when next looked at."""
        items = meta.artifacts
        names = "\0".join([item.filename for item in items])
        if names.count("\0") != max(len(items) - 1, 0):
            return None
        try:
            return RunView(meta, names)
        except OverflowError:
            return None

    def names(self) -> list[str]:
        """The entries' filenames, in the metadata's order."""
        return self._unpack().names()

    def _unpack(self) -> _Entries:
        held = self._entries
        return held if isinstance(held, _Entries) else _Entries.unpack(held, self._count)

    def held_bytes(self) -> int:
        """Bytes its entries hold, packed or not (tests)."""
        held = self._entries
        if isinstance(held, bytes):
            return sys.getsizeof(held)
        return sum(map(sys.getsizeof, (held.sizes, held.micros, held.changes, held.text)))

    def pack(self) -> None:
        """Pack the entries into one zlib blob (~14 bytes an entry however long the names,
        which share their folders; as made, ~45 bytes and every name's length)."""
        held = self._entries
        if isinstance(held, _Entries):
            self._entries = held.pack()

    def prepare(self) -> None:
        """Make `known_copies` and `known_changes` now, each taken once by its next call:
        the start-up catch-up waits for the listing of `sessions/` with nothing else to do
        (as `walk.prepare_known_copies` for models). `forget` drops what was not taken."""
        entries = self._unpack()
        self._ahead = [self._known_copies(entries), self._known_changes(entries)]

    def forget(self) -> None:
        self._ahead = []

    def known_copies(self) -> dict[str, tuple[int, int]]:
        """`walk.known_copies` of the model this view was made from (the same dict)."""
        if self._ahead and self._ahead[0] is not None:
            copies: dict[str, tuple[int, int]] = self._ahead[0]
            self._ahead[0] = None
            return copies
        return self._known_copies(self._unpack())

    @staticmethod
    def _known_copies(entries: _Entries) -> dict[str, tuple[int, int]]:
        return {name: (size, micros) for name, size, micros in zip(
            reversed(entries.names()), reversed(entries.sizes), reversed(entries.micros),
            strict=True)}

    def known_changes(self) -> dict[str, int]:
        """`walk.known_changes` of the model this view was made from (the same dict)."""
        if self._ahead and self._ahead[1] is not None:
            changes: dict[str, int] = self._ahead[1]
            self._ahead[1] = None
            return changes
        return self._known_changes(self._unpack())

    @staticmethod
    def _known_changes(entries: _Entries) -> dict[str, int]:
        return {name: change for name, change in zip(
            reversed(entries.names()), reversed(entries.changes), strict=True)
            if change != _NO_CHANGE}

    def context_changes(self, ctx: RunContext) -> bool:
        """Whether `rules.apply_context` would change the run (tests/test_parsedruns.py holds
        the two to the same answers)."""
        if ctx.workflow_id and ctx.workflow_id != self.workflow_id:
            return True
        if ctx.user_directive and ctx.user_directive != self.user_directive:
            return True
        if ctx.status in ("completed", "failed") and self.status != "completed":
            return True
        if ctx.agents:
            agents = ctx.agents
            names = self.names()
            each = self._agents if isinstance(self._agents, tuple) else (self._agents,) * len(names)
            for name, agent in zip(names, each, strict=True):
                new = agents.get(name) or agents.get(name.rsplit("/", 1)[-1]) or "unknown"
                if new != "unknown" and new != agent:  # rules.agent_for, rules._with_agent
                    return True
        return False


class ParsedRuns:
    """Parsed runs by run id, each with its metadata's version tag; `RunView`s of the runs
    pushed out once bounded. Any thread may call it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, tuple[Hashable, RunMetadata]] = {}  # least recently used first
        self._views: dict[str, tuple[Hashable, RunView]] = {}
        self._entries = 0  # entries of the models held
        self.limit: int | None = None  # None: every model is kept
        self._packing = False  # views are packed when made (`pack_views`)

    def model(self, run_id: str, version: Hashable | None = None) -> RunMetadata | None:
        """The run's model when held (and of `version`, when given)."""
        with self._lock:
            held = self._models.get(run_id)
            if held is None or (version is not None and held[0] != version):
                return None
            if self.limit is not None:  # the last used go last
                del self._models[run_id]
                self._models[run_id] = held
            return held[1]

    def get(self, run_id: str) -> tuple[Hashable, RunMetadata] | None:
        """The run's model and its version tag, when held; the order of use is kept."""
        with self._lock:
            return self._models.get(run_id)

    def view(self, run_id: str, version: Hashable) -> RunView | None:
        """The view of a run pushed out, when it is of `version`."""
        with self._lock:
            held = self._views.get(run_id)
        return held[1] if held is not None and held[0] == version else None

    def put(self, run_id: str, version: Hashable, meta: RunMetadata) -> None:
        with self._lock:
            old = self._models.pop(run_id, None)
            if old is not None:
                self._entries -= len(old[1].artifacts)
            self._views.pop(run_id, None)
            self._models[run_id] = (version, meta)
            self._entries += len(meta.artifacts)
            self._evict()

    def pop(self, run_id: str) -> None:
        """Forget the run (its metadata changed, or it was deleted)."""
        with self._lock:
            old = self._models.pop(run_id, None)
            if old is not None:
                self._entries -= len(old[1].artifacts)
            self._views.pop(run_id, None)

    def names(self, run_id: str) -> Iterable[str]:
        """The filenames of the run's entries as last read, model or view (none if neither)."""
        with self._lock:
            held = self._models.get(run_id)
            view = self._views.get(run_id)
        if held is not None:
            return [item.filename for item in held[1].artifacts]
        return view[1].names() if view is not None else ()

    def bound(self, limit: int | None) -> None:
        """Keep models of at most `limit` entries (but the KEEP_RUNS used last); the others
        leave their views. None: no bound."""
        with self._lock:
            self.limit = limit
            self._evict()

    def _evict(self) -> None:
        if self.limit is None:
            return
        while self._entries > self.limit and len(self._models) > KEEP_RUNS:
            run_id = next(iter(self._models))
            version, meta = self._models.pop(run_id)
            self._entries -= len(meta.artifacts)
            view = RunView.of(meta)
            if view is not None:
                if self._packing:
                    view.pack()
                self._views[run_id] = (version, view)

    def pack_views(self) -> None:
        """Pack every view's entries, and each view made from now on (the start is over)."""
        with self._lock:
            self._packing = True
            views = [view for _, view in self._views.values()]
        for view in views:
            view.pack()

    def sizes(self) -> tuple[int, int, int]:
        """Models held, their entries, views held (for tests and the bench)."""
        with self._lock:
            return len(self._models), self._entries, len(self._views)


def give_back_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's `malloc_trim`): the start-up's
    parse and listing leave freed blocks between live ones, which `free` keeps for reuse;
    nothing on another C library. The symbol is looked up in the libraries the process has
    (`CDLL(None)`): `ctypes.util.find_library` runs ldconfig, which out of descriptors
    raised EMFILE and failed the daemon right after READY."""
    import ctypes  # only here: the daemon calls it once, after its start

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)

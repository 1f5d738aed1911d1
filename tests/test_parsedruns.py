"""The bounded cache of parsed runs and the views it leaves (promoter/parsedruns.py)."""

from __future__ import annotations

import os
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from promoter import rules
from promoter.config import RetentionConfig
from promoter.context import RunContext
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.parsedruns import KEEP_RUNS, ParsedRuns, RunView
from promoter.reconcile import Rejections, find_pending, reconcile
from promoter.store import Store
from promoter.sweep import sweep
from promoter.walk import known_changes, known_copies
from tests.store_helpers import FakeClock, make_store, write_session_file

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _entry(name: str, size: int = 1, agent: str = "unknown",
           changed: datetime | None = None, at: datetime = AT) -> ArtifactEntry:
    return ArtifactEntry.trusted(name, f"files/{name}", agent, at, size, "text/plain", None,
                                 changed)


def _meta(run_id: str, entries: list[ArtifactEntry], **fields: object) -> RunMetadata:
    return RunMetadata.model_validate({"run_id": run_id, "created_at": AT, "updated_at": AT,
                                       "expires_at": AT + timedelta(days=7),
                                       "artifacts": entries, **fields})


EDGE_RUNS = [
    _meta("empty", []),
    _meta("plain", [_entry("a.txt", 3), _entry("sub/b.txt", 0, at=AT - timedelta(days=9000))]),
    _meta("far", [_entry("min", at=datetime.min.replace(tzinfo=UTC),
                         changed=datetime.max.replace(tzinfo=UTC)),
                  _entry("max", at=datetime.max.replace(tzinfo=UTC),
                         changed=datetime.min.replace(tzinfo=UTC))]),
    # a repeated name: the first entry is the one both keep; one with a ctime, one without
    _meta("repeated", [_entry("x", 1), _entry("x", 2, changed=AT + timedelta(seconds=3)),
                       _entry("y", 5, changed=AT), _entry("y", 6)]),
    _meta("odd", [_entry("new\nline", 7), _entry("ünï/çødé", 8, changed=AT - timedelta(1)),
                  _entry(" ", 9), _entry("lone\udc80surrogate", 10)]),
]


def test_a_views_cost_an_entry_stays_small_with_long_names() -> None:
    """A view of 100 entries named by ~250-character nested paths costs under 32 bytes an
    entry (the names kept whole cost ~280: idle memory grew with name length, probe F3)."""
    folder = "plots/2026-q3/analysis_" + "x" * 220
    meta = _meta("long", [_entry(f"{folder}/f{i:05}.txt", 4096 + i,
                                 changed=AT + timedelta(microseconds=i)) for i in range(100)])
    assert min(len(a.filename) for a in meta.artifacts) > 250
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        view = RunView.of(meta)
        assert view is not None
        view.pack()  # as every view is once the start is over
        cost = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert view.names() == [a.filename for a in meta.artifacts]
    assert view.known_copies() == known_copies(meta)
    assert cost / 100 < 32, f"{cost / 100:.0f} bytes an entry"


def test_views_are_packed_once_the_start_is_over_and_when_made_after() -> None:
    """Views made before `pack_views` (the start) are kept whole until it, then packed;
    a view made after it is packed at once; both answer the same."""
    folder = "deep/" * 50
    cache = ParsedRuns()
    cache.bound(0)
    runs = [_meta(f"r{i}", [_entry(f"{folder}f{j}") for j in range(20)])
            for i in range(KEEP_RUNS + 2)]
    for i, meta in enumerate(runs[:-1]):
        cache.put(meta.run_id, i, meta)
    first = cache.view("r0", 0)
    assert first is not None and first.held_bytes() > 20 * 250  # whole: the names' length
    cache.pack_views()
    assert first.held_bytes() < 20 * 32
    cache.put(runs[-1].run_id, 99, runs[-1])  # pushes r1 out: packed as it is made
    second = cache.view("r1", 1)
    assert second is not None and second.held_bytes() < 20 * 32
    for view, meta in ((first, runs[0]), (second, runs[1])):
        assert (view.known_copies(), view.known_changes(), view.names()) == (
            known_copies(meta), known_changes(meta), [a.filename for a in meta.artifacts])


@pytest.mark.parametrize("packed", [False, True], ids=["whole", "packed"])
@pytest.mark.parametrize("meta", EDGE_RUNS, ids=lambda m: m.run_id)
def test_view_gives_the_models_known_copies_and_changes(meta: RunMetadata, packed: bool
                                                        ) -> None:
    """A view's known copies and changes are the dicts walk.py makes of the model, its
    entries whole (the start) or packed."""
    view = RunView.of(meta)
    assert view is not None
    if packed:
        view.pack()
    assert view.known_copies() == known_copies(meta)
    assert view.known_changes() == known_changes(meta)
    assert view.names() == [a.filename for a in meta.artifacts]
    assert view.total_bytes == meta.total_bytes
    assert (view.run_id, view.created_at, view.updated_at, view.expires_at, view.keep,
            view.status, view.host) == (meta.run_id, meta.created_at, meta.updated_at,
                                        meta.expires_at, meta.keep, meta.status, meta.host)


def test_a_run_a_view_cannot_hold_has_none() -> None:
    """A NUL in a name (the joined names could not split) or a size past 64 bits: no view,
    the run is parsed when looked at; a time in another zone is viewed as in UTC."""
    assert RunView.of(_meta("nul", [_entry("a\0b")])) is None
    assert RunView.of(_meta("huge", [_entry("a", 1 << 63)])) is None
    # a time in another zone: the same µs (a parse converts every time to UTC; an entry put
    # in by model_copy keeps its zone)
    east = timezone(timedelta(hours=2))
    zoned = _meta("zone", []).model_copy(update={"artifacts": [
        _entry("a", at=AT.astimezone(east)), _entry("b", changed=AT.astimezone(east))]})
    view = RunView.of(zoned)
    assert view is not None
    assert (view.known_copies(), view.known_changes()) == (known_copies(zoned),
                                                           known_changes(zoned))

CONTEXTS = [
    RunContext(),
    RunContext(workflow_id="wf"), RunContext(workflow_id="other"),
    RunContext(user_directive="do"), RunContext(user_directive="else"),
    RunContext(status="completed"), RunContext(status="failed"), RunContext(status="running"),
    RunContext(agents={"a.txt": "agent-1"}), RunContext(agents={"b.txt": "agent-2"}),
    RunContext(agents={"sub/b.txt": "agent-2", "b.txt": "agent-3"}),
    RunContext(agents={"a.txt": "unknown"}), RunContext(agents={"zzz": "agent-9"}),
]
RUNS_FOR_CONTEXT = [
    _meta("r", [_entry("a.txt"), _entry("sub/b.txt", agent="agent-2")]),
    _meta("r", [_entry("a.txt", agent="agent-1")], workflow_id="wf", user_directive="do",
          status="completed"),
]


@pytest.mark.parametrize("ctx", CONTEXTS, ids=repr)
@pytest.mark.parametrize("meta", RUNS_FOR_CONTEXT, ids=["plain", "known"])
def test_view_says_whether_a_context_changes_the_run_as_the_rules_do(
        meta: RunMetadata, ctx: RunContext) -> None:
    """`context_changes` answers as `rules.apply_context(...).changed`, case by case, from a
    view whole and packed."""
    view = RunView.of(meta)
    assert view is not None
    assert view.context_changes(ctx) == rules.apply_context(meta, ctx, RetentionConfig()).changed
    view.pack()
    assert view.context_changes(ctx) == rules.apply_context(meta, ctx, RetentionConfig()).changed


def test_bounded_cache_keeps_the_runs_used_last_and_leaves_views() -> None:
    """Past the bound the least recently used model goes and leaves a view of its version;
    the KEEP_RUNS used last stay however big; a model put again replaces its view."""
    cache = ParsedRuns()
    cache.bound(10)
    runs = [_meta(f"r{i}", [_entry(f"f{j}") for j in range(5)]) for i in range(KEEP_RUNS + 2)]
    for i, meta in enumerate(runs):
        cache.put(meta.run_id, i, meta)
    assert cache.sizes() == (KEEP_RUNS, KEEP_RUNS * 5, 2)  # r0, r1 let go: views
    assert cache.model("r0") is None and cache.view("r0", 0) is not None
    assert cache.view("r0", 99) is None  # another version: nothing
    assert cache.model("r2", 2) is runs[2] and cache.model("r2", 3) is None
    cache.put("r0", 0, runs[0])  # read again: the least recently used goes (r3; r2 was used)
    assert cache.view("r0", 0) is None and cache.model("r0") is runs[0]
    assert cache.model("r3") is None and cache.model("r2") is runs[2]
    assert list(cache.names("r3")) == [f"f{j}" for j in range(5)]
    cache.pop("r3")
    assert cache.view("r3", 3) is None and list(cache.names("r3")) == []


def test_unbounded_cache_keeps_every_model() -> None:
    """Commands and the server keep every model, as before (no bound, no view)."""
    cache = ParsedRuns()
    for i in range(KEEP_RUNS * 3):
        cache.put(f"r{i}", i, _meta(f"r{i}", [_entry("a")] * 100))
    assert cache.sizes() == (KEEP_RUNS * 3, KEEP_RUNS * 300, 0)


def _bounded_store(tmp_path: Path, runs: int) -> tuple[Store, list[str]]:
    store = make_store(tmp_path, clock=FakeClock(AT + timedelta(days=1)))
    ids = [f"run-{i:02}" for i in range(runs)]
    for run_id in ids:
        write_session_file(tmp_path, run_id, "a.txt", b"first")
        store.promote_files(run_id, ["a.txt"])
    store.cache.bound(0)  # every run past the KEEP_RUNS used last is let go
    return store, ids


def test_catch_up_over_runs_let_go_finds_a_changed_file_and_nothing_else(tmp_path: Path
                                                                        ) -> None:
    """The catch-up compares a run let go from its view: nothing pending for runs as they
    were (and none parsed), a rewritten file found and promoted."""
    store, ids = _bounded_store(tmp_path, KEEP_RUNS + 4)
    let_go = ids[0]
    assert store.cache.model(let_go) is None
    assert find_pending(store, Rejections()) == {}
    assert store.cache.model(let_go) is None  # compared from its view: not parsed
    path = tmp_path / "sessions" / let_go / "output" / "a.txt"
    path.write_bytes(b"second!")
    old = path.stat().st_mtime - 60
    os.utime(path, (old, old))
    assert [f.filename for f in find_pending(store, Rejections())[let_go]] == ["a.txt"]
    report = reconcile(store)
    assert report.summary()["promoted"] == 1
    assert store.get_run(let_go).artifacts[0].size_bytes == 7


def test_context_refresh_of_a_run_let_go_updates_it_only_when_it_changes(tmp_path: Path
                                                                       ) -> None:
    """A run let go is refreshed from its view (no write session when nothing changes) and
    rewritten when its attribution names a new agent."""
    store, ids = _bounded_store(tmp_path, KEEP_RUNS + 2)
    run_id = ids[0]
    before = (tmp_path / "artifacts" / run_id / "metadata.json").stat().st_mtime_ns
    assert isinstance(store.refresh_context(run_id), RunView)
    assert (tmp_path / "artifacts" / run_id / "metadata.json").stat().st_mtime_ns == before
    (tmp_path / "sessions" / run_id / "attribution.jsonl").write_text(
        '{"filename": "a.txt", "agent_id": "agent-7"}\n')
    store.refresh_context(run_id)
    assert store.get_run(run_id).artifacts[0].agent_id == "agent-7"


def test_sweep_expires_runs_let_go_from_their_views(tmp_path: Path) -> None:
    """The sweep reads heads: runs let go expire as parsed ones do, with no parse."""
    store, ids = _bounded_store(tmp_path, KEEP_RUNS + 3)
    assert isinstance(store.clock, FakeClock)
    store.clock.advance(days=400)
    assert all(isinstance(m, RunMetadata | RunView) for m in store.list_looks())
    report = sweep(store)
    assert sorted(report.expired) == ids
    assert store.run_ids() == []


def test_known_copies_made_ahead_are_taken_once_then_made_again() -> None:
    """`prepare` makes both dicts ahead; each is taken once, then made anew (the same)."""
    meta = EDGE_RUNS[2]
    view = RunView.of(meta)
    assert view is not None
    view.prepare()
    first = view.known_copies()
    assert first == known_copies(meta) and view.known_changes() == known_changes(meta)
    assert view.known_copies() is not first and view.known_copies() == first
    view.prepare()
    view.forget()
    assert view.known_changes() == known_changes(meta)

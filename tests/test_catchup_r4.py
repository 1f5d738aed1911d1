"""The warm start-up, fourth round (issue 15): the fast metadata parse decides as the careful
one, a refresh that changes nothing takes no write session, the repair's thread count, and
the parsed runs kept out of the collector's sight."""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from promoter import metadata, startup
from promoter.metadata import RunMetadata, parse_metadata
from promoter.reconcile import complete_finished_runs
from promoter.startup import prepare
from promoter.store import Store
from tests.store_helpers import make_store, write_session_file

NOW = "2026-01-09T10:30:00Z"


def _doc(**entry: Any) -> dict[str, Any]:
    item = {"filename": "a", "path": "files/a", "generated_at": NOW, "size_bytes": 1} | entry
    return {"run_id": "r", "created_at": NOW, "updated_at": NOW, "expires_at": NOW,
            "artifacts": [item]}


_GOOD = {**_doc(generated_at="2026-01-09T23:30:00-02:00", sha256="a" * 64),
         "removed": [{"filename": "b", "removed_at": "2026-01-10T03:00:00+05:00"}],
         "rejected": [{"filename": "c", "reason": "r", "size_bytes": 3, "rejected_at": NOW}],
         "host": "h1", "status": "completed", "keep": True}
_DOCS = [
    json.dumps(_GOOD), json.dumps(_doc()), json.dumps(_doc(extra=1)),
    json.dumps({**_doc(), "other": True}),
    json.dumps({**_doc(), "removed": [{"filename": "a", "removed_at": NOW, "why": "x"}]}),
    json.dumps({**_doc(), "rejected": [{"filename": "a", "reason": "r", "rejected_at": NOW,
                                        "n": 1}]}),
    json.dumps(_doc(generated_at="2026-01-09T10:30:00")),  # naive
    json.dumps(_doc(generated_at="9999-12-31T23:59:59-23:59")),  # leaves the calendar in UTC
    json.dumps(_doc(size_bytes=-1)), json.dumps(_doc(sha256="X")),
    json.dumps(_doc(size_bytes=2**64)), json.dumps(_doc(size_bytes=(1 << 50) + 1)),
    json.dumps({**_doc(), "run_id": "../x"}), json.dumps({**_doc(), "schema_version": 2}),
    '{"run_id": "r", "artifacts": [' + ",".join(['{"x": 1}'] * 20_000) + "]}",
    '{"run_id": "r", ' + ",".join(f'"x{i}": 1' for i in range(20_000)) + "}",
    '{"run_id": "r", "artifacts": [{' + ",".join(f'"x{i}": 1' for i in range(20_000)) + "}]}",
    "{", "", "[]", "null", '{"run_id": "r"}',
]


def _outcome(parse: Any, raw: bytes) -> Any:
    try:
        return parse(raw)
    except ValidationError as exc:
        return [(e["type"], e["loc"], e["msg"]) for e in exc.errors(include_url=False)]


def test_the_fast_way_is_there_on_this_pydantic() -> None:
    """Else every document silently takes the careful (slower) way."""
    assert metadata._fast_validator() is not None


@pytest.mark.parametrize("limit", [metadata.FAST_MAX_BYTES, 0])
@pytest.mark.parametrize("raw", _DOCS)
def test_parse_metadata_says_what_model_validate_json_says(
        raw: str, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Good, planted, broken: the same model (every time in datetime.UTC) or the same errors
    (one for any number of unknown keys), on the fast way and past its size limit."""
    monkeypatch.setattr(metadata, "FAST_MAX_BYTES", limit)
    fast = _outcome(parse_metadata, raw.encode())
    careful = _outcome(RunMetadata.model_validate_json, raw.encode())
    assert fast == careful
    if isinstance(fast, RunMetadata):
        assert fast.model_dump() == careful.model_dump()
        times = [fast.created_at, *(a.generated_at for a in fast.artifacts),
                 *(r.removed_at for r in fast.removed), *(r.rejected_at for r in fast.rejected)]
        assert all(t.tzinfo is metadata.UTC for t in times)
        assert fast.to_json() == careful.to_json()
    else:
        assert len(fast) <= 5


def test_a_refresh_that_changes_nothing_takes_no_write_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """complete_finished_runs over unchanged runs locks none; a run.json that completes a
    run, an agent line and a session gone still change their runs."""
    store = make_store(tmp_path)
    for run in ("r1", "r2", "r3", "r4"):
        write_session_file(tmp_path, run, "a.txt", b"a")
        store.promote_files(run, ["a.txt"])
    sessions: list[str] = []
    real = Store.change

    def counted(self: Store, run_id: str, *args: Any, **kw: Any) -> Any:
        sessions.append(run_id)
        return real(self, run_id, *args, **kw)

    monkeypatch.setattr(Store, "change", counted)
    complete_finished_runs(store)
    assert sessions == []
    (tmp_path / "sessions/r2/run.json").write_text('{"status": "completed"}')
    (tmp_path / "sessions/r3/attribution.jsonl").write_text(
        '{"filename": "a.txt", "agent_id": "writer"}\n')
    (tmp_path / "sessions/r4/output/a.txt").unlink()
    (tmp_path / "sessions/r4/output").rmdir()
    (tmp_path / "sessions/r4").rmdir()
    complete_finished_runs(store)
    assert sorted(sessions) == ["r2", "r3", "r4"]
    assert store.get_run("r2").status == "completed"
    assert store.get_run("r3").artifacts[0].agent_id == "writer"
    assert store.get_run("r4").status == "completed"
    assert store.get_run("r1").status == "active"


def test_the_repair_walks_on_threads_only_while_the_marks_are_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first start walks every run on promote.workers threads; once the store is
    repaired whole, the runs are read in the calling thread (parsing holds the GIL)."""
    store = make_store(tmp_path, promote={"workers": 2})
    for run in ("r1", "r2", "r3"):
        write_session_file(tmp_path, run, "a.txt", b"a")
        store.promote_files(run, ["a.txt"])
    threads: set[str] = set()
    real = startup._repair

    def where(store: Store, run_id: str, *args: Any) -> bool:
        threads.add(threading.current_thread().name)
        return real(store, run_id, *args)

    monkeypatch.setattr(startup, "_repair", where)
    prepare(Store(store.config), create=False)
    assert all(name.startswith("promoter-repair") for name in threads), threads
    threads.clear()
    prepare(Store(store.config), create=False)
    assert threads == {threading.current_thread().name}


def test_the_runs_parsed_at_start_are_kept_out_of_the_collectors_sight(
        tmp_path: Path) -> None:
    """After the start-up repair the cached runs are frozen (gc.freeze): the first and every
    later full collection no longer walks them."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "a.txt", b"a")
    store.promote_files("r1", ["a.txt"])
    gc.unfreeze()
    fresh = Store(store.config)
    prepare(fresh, create=False)
    meta = fresh.cached_run("r1")
    assert meta is not None and gc.get_freeze_count() > 0
    assert not any(o is meta for o in gc.get_objects())


def test_entries_of_mixed_offsets_are_each_converted_to_utc() -> None:
    """The zone object a `Z` shares across a document is checked once; any other offset in
    between is still converted, whatever its place."""
    from datetime import UTC, datetime

    stamps = ["2026-01-09T10:00:00Z", "2026-01-09T12:00:00+02:00", "2026-01-09T10:00:00Z",
              "2026-01-09T10:00:00+00:00", "2026-01-09T04:30:00-05:30", "2026-01-09T10:00:00Z"]
    doc = _doc()
    doc["artifacts"] = [{"filename": f"f{i}", "path": f"files/f{i}", "generated_at": t,
                         "size_bytes": 1} for i, t in enumerate(stamps)]
    meta = parse_metadata(json.dumps(doc).encode())
    expected = datetime(2026, 1, 9, 10, 0, tzinfo=UTC)
    assert [a.generated_at for a in meta.artifacts] == [expected] * len(stamps)
    assert all(a.generated_at.tzinfo is UTC for a in meta.artifacts)

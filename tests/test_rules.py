"""The store's rules as pure functions over RunMetadata: no file system, no clock, no
threads (issue 11; STYLE §19). The store, the event path and the catch-up all ask these."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promoter import rules
from promoter.config import RetentionConfig
from promoter.context import RunContext
from promoter.metadata import ArtifactEntry, RemovedEntry, RunMetadata, Tombstone
from promoter.rules import Verdict

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
RETENTION = RetentionConfig(days=7, workflows={"short": 1})


def ns(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000 + at.microsecond * 1000


def entry(name: str, size: int = 4, at: datetime = T0, agent: str = "unknown") -> ArtifactEntry:
    return ArtifactEntry(filename=name, path=f"files/{name}", generated_at=at, size_bytes=size,
                         agent_id=agent)


def run(*entries: ArtifactEntry, **fields: object) -> RunMetadata:
    values: dict[str, object] = {"run_id": "r1", "created_at": T0, "updated_at": T0,
                                 "expires_at": T0 + timedelta(days=7)}
    return RunMetadata.model_validate({**values, **fields,
                                       "artifacts": [e.model_dump() for e in entries]})


# -- the promotion decision ----------------------------------------------------------------

def test_a_file_the_store_lacks_is_promoted() -> None:
    """No run yet, or no entry: promote."""
    assert rules.verdict(None, None, "a.txt", 4, ns(T0), ns(T0)) is Verdict.PROMOTE
    assert rules.verdict(run(), None, "a.txt", 4, ns(T0), ns(T0)) is Verdict.PROMOTE


def test_same_size_and_time_is_unchanged_and_another_version_is_promoted() -> None:
    """Size and time decide, never content."""
    meta = run(entry("a.txt", 4, T0))
    assert rules.verdict(meta, None, "a.txt", 4, ns(T0), ns(T0)) is Verdict.UNCHANGED
    assert rules.verdict(meta, None, "a.txt", 5, ns(T0), ns(T0)) is Verdict.PROMOTE
    later = T0 + timedelta(seconds=1)
    assert rules.verdict(meta, None, "a.txt", 4, ns(later), ns(later)) is Verdict.PROMOTE


def test_a_tombstone_keeps_older_versions_out_and_lets_newer_ones_in() -> None:
    """Deleted stays deleted: a file written before the deletion stays out (DESIGN §1)."""
    tomb = Tombstone(run_id="r1", deleted_at=T0, reason="rm")
    before, after = T0 - timedelta(seconds=1), T0 + timedelta(seconds=1)
    assert rules.verdict(None, tomb, "a", 4, ns(before), ns(before)) is Verdict.DELETED
    assert rules.verdict(None, tomb, "a", 4, ns(T0), ns(T0)) is Verdict.DELETED
    assert rules.verdict(None, tomb, "a", 4, ns(after), ns(after)) is Verdict.PROMOTE


def test_a_future_mtime_does_not_pass_a_tombstone_when_the_ctime_is_old() -> None:
    """The earlier of mtime and ctime decides "written after": agents set mtimes at will."""
    tomb = Tombstone(run_id="r1", deleted_at=T0, reason="rm")
    future = T0 + timedelta(days=365)
    assert rules.verdict(None, tomb, "a", 4, ns(future), ns(T0)) is Verdict.DELETED


def test_a_removed_artifact_stays_out_until_rewritten() -> None:
    """The removed list keeps the version a person removed out, not a newer one."""
    meta = run().model_copy(update={"removed": [RemovedEntry(filename="a", removed_at=T0)]})
    old, new = T0 - timedelta(seconds=1), T0 + timedelta(seconds=1)
    assert rules.verdict(meta, None, "a", 4, ns(old), ns(old)) is Verdict.REMOVED
    assert rules.verdict(meta, None, "a", 4, ns(new), ns(new)) is Verdict.PROMOTE
    assert rules.verdict(meta, None, "b", 4, ns(old), ns(old)) is Verdict.PROMOTE


def test_a_time_out_of_range_is_offered_to_be_refused_once() -> None:
    """needs_promotion offers it; verdict says why promotion will refuse it."""
    huge = 300_000_000_000 * 1_000_000_000
    assert rules.verdict(run(), None, "a", 4, huge, ns(T0)) is Verdict.BAD_TIME
    assert rules.needs_promotion(run(), None, "a", 4, huge, ns(T0))
    assert not rules.needs_promotion(run(entry("a")), None, "a", 4, ns(T0), ns(T0))


# -- per-run changes -------------------------------------------------------------------------

def test_upsert_replaces_the_entry_and_clears_its_removal_without_touching_the_input() -> None:
    """One entry a filename; a promoted file leaves the removed list; the input is unchanged."""
    meta = run(entry("a", 4), entry("b", 1)).model_copy(
        update={"removed": [RemovedEntry(filename="a", removed_at=T0)]})
    out = rules.upsert(meta, entry("a", 9))
    assert [(e.filename, e.size_bytes) for e in out.artifacts] == [("b", 1), ("a", 9)]
    assert out.removed == []
    assert [e.size_bytes for e in meta.artifacts] == [4, 1] and len(meta.removed) == 1


def test_remove_entry_records_the_removal() -> None:
    """A removed artifact leaves the list and is remembered with its time."""
    out = rules.remove_entry(run(entry("a"), entry("b")), "a", T0)
    assert [e.filename for e in out.artifacts] == ["b"]
    assert [(r.filename, r.removed_at) for r in out.removed] == [("a", T0)]


def test_apply_context_sets_workflow_expiry_directive_status_and_agents() -> None:
    """run.json and attribution fold in; the workflow's retention sets expires_at."""
    ctx = RunContext(workflow_id="short", user_directive="do it", status="failed",
                     agents={"a": "writer", "sub/b": "reviewer"})
    meta = run(entry("a"), entry("sub/b"), entry("c", agent="kept"))
    applied = rules.apply_context(meta, ctx, RETENTION)
    assert applied.changed and applied.completed
    out = applied.meta
    assert (out.workflow_id, out.user_directive, out.status) == ("short", "do it", "completed")
    assert out.expires_at == T0 + timedelta(days=1)
    assert [e.agent_id for e in out.artifacts] == ["writer", "reviewer", "kept"]
    assert meta.status == "active" and meta.artifacts[0].agent_id == "unknown"


def test_apply_context_with_nothing_new_changes_nothing() -> None:
    """An empty context, or one already applied, is no change (no metadata write)."""
    meta = run(entry("a", agent="w"), workflow_id="short", status="completed")
    assert rules.apply_context(meta, RunContext(), RETENTION) == (meta, False, False)
    ctx = RunContext(workflow_id="short", status="completed", agents={"a": "w"})
    assert rules.apply_context(meta, ctx, RETENTION) == (meta, False, False)


def test_apply_context_without_attribution_looks_at_no_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No attribution lines: no entry's agent is looked up (a pass over the whole run a
    batch was most of a small batch's cost in a big run); run.json still folds in."""
    calls: list[str] = []
    monkeypatch.setattr(rules, "agent_for", lambda ctx, name: calls.append(name) or "x")
    meta = run(*(entry(f"f{i}") for i in range(50)))
    applied = rules.apply_context(meta, RunContext(workflow_id="short"), RETENTION)
    assert applied.changed and applied.meta.workflow_id == "short"
    assert applied.meta.artifacts == meta.artifacts and calls == []
    rules.apply_context(meta, RunContext(agents={"f1": "w"}), RETENTION)
    assert len(calls) == 50


def test_agents_are_found_by_path_or_base_name() -> None:
    """attribution.jsonl may name a file by its path under output/ or its base name."""
    ctx = RunContext(agents={"x/y.txt": "one", "z.txt": "two"})
    assert rules.agent_for(ctx, "x/y.txt") == "one"
    assert rules.agent_for(ctx, "deep/z.txt") == "two"
    assert rules.agent_for(ctx, "none") == "unknown"


def test_expiry_by_workflow_and_kept_runs_never_expire() -> None:
    """expires_at = created_at + the workflow's days; keep wins over any date."""
    assert rules.expiry(T0, "short", RETENTION) == T0 + timedelta(days=1)
    assert rules.expiry(T0, "", RETENTION) == T0 + timedelta(days=7)
    meta = run(expires_at=T0)
    assert rules.is_expired(meta, T0) and not rules.is_expired(meta, T0 - timedelta(seconds=1))
    assert not rules.is_expired(run(expires_at=T0, keep=True), T0 + timedelta(days=99))


def test_new_run_expires_by_its_workflow() -> None:
    """A run's first metadata takes its expiry from run.json's workflow."""
    meta = rules.new_run("r9", RunContext(workflow_id="short"), T0, RETENTION)
    assert (meta.run_id, meta.created_at, meta.expires_at) == ("r9", T0, T0 + timedelta(days=1))


# -- recovery --------------------------------------------------------------------------------

def test_rebuild_from_stored_files_and_salvaged_fields() -> None:
    """What the stored copies and a readable part of the corrupt file say make the run."""
    raw = (b'{"workflow_id": "short", "keep": true, "status": "nonsense", '
           b'"artifacts": [{"filename": "b", "agent_id": "old-agent"}]')
    salvaged = rules.salvage(raw + b"}")
    later = T0 + timedelta(hours=1)
    applied = rules.rebuild("r1", [entry("b", at=later), entry("a", at=T0)], salvaged,
                            RunContext(agents={"a": "writer"}), later + timedelta(days=1),
                            RETENTION)
    meta = applied.meta
    assert (meta.workflow_id, meta.keep, meta.status) == ("short", True, "active")
    assert meta.created_at == T0  # none salvaged: the oldest copy's time
    assert meta.expires_at == T0 + timedelta(days=1)
    assert [(e.filename, e.agent_id) for e in meta.artifacts] == [("a", "writer"),
                                                                  ("b", "old-agent")]


def test_salvage_reads_nothing_from_garbage() -> None:
    """Bytes that are no JSON object, or nest too deep, salvage nothing."""
    for raw in (None, b"", b"\xff\xfe", b"[1, 2]", b"[" * 100_000, b'{"a": '):
        assert rules.salvage(raw) == {}


def test_relist_drops_missing_copies_and_keeps_known_agents() -> None:
    """After a crash: entries without a copy go; fresh entries come in, with the agent the
    old entry knew when the context names none."""
    meta = run(entry("a", 4, agent="writer"), entry("gone"), entry("same", agent="w2"))
    fresh = [entry("a", 8), entry("new", 1)]
    out = rules.relist(meta, fresh, stored={"a", "same", "new"})
    assert [(e.filename, e.size_bytes, e.agent_id) for e in out.artifacts] == [
        ("same", 4, "w2"), ("a", 8, "writer"), ("new", 1, "unknown")]


def test_same_copy_compares_size_and_time() -> None:
    """A stored copy of the entry's size and time needs no hashing at start-up."""
    assert rules.same_copy(entry("a", 4, T0), 4, ns(T0))
    assert not rules.same_copy(entry("a", 4, T0), 5, ns(T0))
    assert not rules.same_copy(None, 4, ns(T0))


def test_a_refusal_is_noted_once_with_its_latest_reason() -> None:
    """One rejected entry a filename; the same refusal again changes nothing (no write);
    a promotion takes the file off the list."""
    meta = rules.note_rejection(run(), "big.bin", "too large", 9, T0)
    assert [(r.filename, r.reason, r.size_bytes) for r in meta.rejected] == [
        ("big.bin", "too large", 9)]
    assert rules.note_rejection(meta, "big.bin", "too large", 9, T0) is meta
    again = rules.note_rejection(meta, "big.bin", "a link", None, T0)
    assert [(r.filename, r.reason) for r in again.rejected] == [("big.bin", "a link")]
    assert rules.upsert(again, entry("big.bin")).rejected == []


def test_the_rejected_list_stays_bounded() -> None:
    """Agents choose how many files they refuse: the list keeps the newest MAX_REJECTED."""
    meta = run()
    for i in range(rules.MAX_REJECTED + 5):
        meta = rules.note_rejection(meta, f"f{i}", "refused", None, T0)
    assert len(meta.rejected) == rules.MAX_REJECTED
    assert meta.rejected[-1].filename == f"f{rules.MAX_REJECTED + 4}"

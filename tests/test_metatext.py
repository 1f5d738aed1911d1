"""metadata.json's text kept between a run's writes (metatext.py, DESIGN §2): the same bytes
as pydantic's whole dump whatever happened to the run, and only new entries written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promoter import metadata, metatext, rules
from promoter.config import load_config
from promoter.context import RunContext
from promoter.layout import METADATA
from promoter.metadata import ArtifactEntry, RunMetadata, parse_metadata
from promoter.metatext import RunTexts, render_fresh
from tests.store_helpers import make_store, write_session_file

T0 = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
NAMES = ["a.txt", "d/b.csv", "é😀.bin", 'q"uote\\.md', "c.png", "deep/x/y.json", "z"]


def _entry(name: str, size: int, seconds: int) -> ArtifactEntry:
    at = T0 + timedelta(seconds=seconds)
    return ArtifactEntry.trusted(name, f"files/{name}", "agent-é" if size % 3 else "a", at,
                                 size, metadata.guess_content_type(name),
                                 None if size % 2 else f"{size:064x}", at if size % 5 else None)


def _pydantic(meta: RunMetadata) -> bytes:
    return (meta.model_dump_json(indent=2) + "\n").encode()


# one step on a run: (kind, name index, a number)
_STEPS = st.lists(st.tuples(st.sampled_from(["batch", "remove", "keep", "context", "reject",
                                             "reparse", "other_run", "same"]),
                            st.integers(0, len(NAMES) - 1), st.integers(0, 50)),
                  max_size=25)


@settings(max_examples=150, deadline=None)
@given(_STEPS)
def test_kept_text_is_the_fresh_text_after_any_change(steps: list[tuple[str, int, int]]) -> None:
    """Whatever happens between two writes of a run (a batch of new or promoted-again
    files, an artifact removed, keep, its context, a refusal, the file parsed again as if
    changed behind the daemon's back, another run written, the same run again), the bytes
    made from the kept text are pydantic's whole dump and `render_fresh`'s."""
    texts = RunTexts()
    meta = rules.new_run("r1", RunContext(), T0, _retention())
    other = meta.model_copy(update={"run_id": "r2"})
    for kind, at, n in steps:
        if kind == "batch":  # names from `at` on: some new, some promoted again
            picked = NAMES[at:at + 1 + n % 3]
            meta = rules.upsert_many(meta, [_entry(x, n + i, n) for i, x in enumerate(picked)])
        elif kind == "remove":
            meta = rules.remove_entry(meta, NAMES[at], T0)
        elif kind == "keep":
            meta = meta.model_copy(update={"keep": not meta.keep})
        elif kind == "context":
            meta = meta.model_copy(update={"workflow_id": f"wf-{n}-é", "user_directive": "a\nb"})
        elif kind == "reject":
            meta = rules.note_rejection(meta, NAMES[at], "fifo", n, T0)
        elif kind == "reparse":
            meta = parse_metadata(render_fresh(meta))
        elif kind == "other_run":
            other = rules.upsert_many(other, [_entry(NAMES[at], n, n)])
            assert texts.render(other).data == _pydantic(other)
        rendered = texts.render(meta)
        assert rendered.data == _pydantic(meta) == render_fresh(meta)
        assert rendered.total_bytes == meta.total_bytes


def _retention() -> Any:
    return load_config(None, {}, "/nonexistent-root").retention


class _Counter:
    """Entries whose text is made: by hand (both the old and the new module's), or inside a
    whole document's dump by pydantic."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made = 0
        real_text = metatext.ascii_entry_text
        real_dump = RunMetadata.model_dump_json

        def text(entry: Any) -> str | None:
            self.made += 1
            return real_text(entry)

        def dump(doc: RunMetadata, **kwargs: Any) -> str:
            self.made += len(doc.artifacts)
            return real_dump(doc, **kwargs)

        for module in (metadata, metatext):
            monkeypatch.setattr(module, "ascii_entry_text", text, raising=False)
        monkeypatch.setattr(RunMetadata, "model_dump_json", dump)


def test_a_batch_writes_the_text_of_its_entries_only(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 10 into a run of 10,000 entries makes the text of 10 entries, not of the
    run: the store keeps the run's text (before: a run past 8,192 entries was dumped whole
    by pydantic at each batch, 50 ms a batch). Counted, not timed."""
    store = make_store(tmp_path)
    meta = rules.new_run("big", RunContext(), T0, store.config.retention)
    meta = rules.upsert_many(meta, [_entry(f"f{i:05d}.txt", 4096, i) for i in range(10_000)])
    count = _Counter(monkeypatch)
    for step in range(3):
        count.made = 0
        store.change("big", lambda art, m=meta: store.write_metadata(art, m))
        assert count.made <= (10_000 if step == 0 else 10)
        meta = rules.upsert_many(meta, [_entry(f"n{step}-{i}.txt", 4096, i) for i in range(10)])
    raw = (tmp_path / "artifacts" / "big" / METADATA).read_bytes()
    assert raw == render_fresh(parse_metadata(raw))
    assert len(json.loads(raw)["artifacts"]) == 10_020


def test_the_stores_file_is_the_fresh_text_through_its_life(tmp_path: Path) -> None:
    """Through the store: batches, a file promoted again with new content, an artifact
    removed, keep, and metadata.json rewritten behind the store's back (its kept text is
    not written: the new file's entries are): each write is the fresh text of what it says."""
    store = make_store(tmp_path)
    path = tmp_path / "artifacts" / "r1" / METADATA

    def check() -> RunMetadata:
        raw = path.read_bytes()
        meta = parse_metadata(raw)
        assert raw == render_fresh(meta)
        return meta

    for i in range(3):
        for j in range(4):
            write_session_file(tmp_path, "r1", f"b{i}/f{j}.txt", f"{i}-{j}".encode())
        store.promote_files("r1", [f"b{i}/f{j}.txt" for j in range(4)])
        check()
    write_session_file(tmp_path, "r1", "b0/f1.txt", b"changed, and longer")
    store.promote_files("r1", ["b0/f1.txt"])
    assert check().entry("b0/f1.txt").size_bytes == len(b"changed, and longer")  # type: ignore[union-attr]
    store.delete_artifact("r1", "b1/f2.txt")
    assert check().entry("b1/f2.txt") is None
    store.set_keep("r1", True)
    assert check().keep
    edited = json.loads(path.read_bytes())  # a person's edit: an entry's agent changed
    edited["artifacts"][0]["agent_id"] = "edited-by-hand"
    path.write_text(json.dumps(edited))
    write_session_file(tmp_path, "r1", "late.txt", b"late")
    store.promote_files("r1", ["late.txt"])
    meta = check()
    assert meta.artifacts[0].agent_id == "edited-by-hand" and meta.entry("late.txt")


def test_the_kept_texts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most BLOCK_ENTRIES entries' text over all runs, the least recently written go
    first; the KEEP_BLOCKS runs written last stay whatever their size (a big run)."""
    monkeypatch.setattr(metatext, "BLOCK_ENTRIES", 10)
    monkeypatch.setattr(metatext, "KEEP_BLOCKS", 2)
    texts = RunTexts()
    base = rules.new_run("r0", RunContext(), T0, _retention())
    for r in range(6):
        meta = rules.upsert_many(base.model_copy(update={"run_id": f"r{r}"}),
                                 [_entry(f"f{i}", i, i) for i in range(4)])
        assert texts.render(meta).data == _pydantic(meta)
    assert texts.sizes() == (2, 8)
    huge = rules.upsert_many(base, [_entry(f"h{i}", i, i) for i in range(30)])
    assert texts.render(huge).data == _pydantic(huge)
    assert texts.sizes() == (2, 34)  # r0's 30 and the run written before it

"""A session file whose name is a stored folder (or the reverse) is refused, not retried."""

from __future__ import annotations

import shutil
from pathlib import Path

from promoter.metadata import RunMetadata
from promoter.store import RETRY, Outcome
from tests.store_helpers import make_store, write_session_file


def test_a_file_named_like_a_stored_folder_is_rejected_naming_the_clash(tmp_path: Path) -> None:
    """Stored x/y, then the agent replaces its folder x by a file x: x is rejected (not
    failed and retried for ever), listed in metadata.json's rejected, and x/y stays."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "x/y", b"inside")
    assert [r.outcome for r in store.promote_files("r1", ["x/y"])] == [Outcome.PROMOTED]
    shutil.rmtree(tmp_path / "sessions" / "r1" / "output" / "x")
    write_session_file(tmp_path, "r1", "x", b"a file now")
    [result] = store.promote_files("r1", ["x"])
    assert result.outcome is Outcome.REJECTED and result.outcome not in RETRY
    assert "name clash" in result.reason and "x/" in result.reason
    meta = RunMetadata.model_validate_json(
        (tmp_path / "artifacts" / "r1" / "metadata.json").read_text())
    assert [e.filename for e in meta.artifacts] == ["x/y"]
    assert [(e.filename, e.reason) for e in meta.rejected] == [("x", result.reason)]
    files = tmp_path / "artifacts" / "r1" / "files"
    assert (files / "x" / "y").read_bytes() == b"inside"
    assert sorted(p.name for p in files.rglob("*")) == ["x", "y"]  # no temp left


def test_a_path_through_a_stored_file_is_rejected(tmp_path: Path) -> None:
    """Stored file x, then the agent writes x/y: x/y is rejected (the safe folder walk
    refuses a file on the way), and the stored x is untouched."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "r1", "x", b"a file")
    assert [r.outcome for r in store.promote_files("r1", ["x"])] == [Outcome.PROMOTED]
    (tmp_path / "sessions" / "r1" / "output" / "x").unlink()
    write_session_file(tmp_path, "r1", "x/y", b"inside")
    [result] = store.promote_files("r1", ["x/y"])
    assert result.outcome is Outcome.REJECTED, result
    assert result.reason == "not a folder on the path"
    meta = RunMetadata.model_validate_json(
        (tmp_path / "artifacts" / "r1" / "metadata.json").read_text())
    assert [e.filename for e in meta.rejected] == ["x/y"]
    assert (tmp_path / "artifacts" / "r1" / "files" / "x").read_bytes() == b"a file"

"""metadata.json's version tag: a change behind the store's back is seen however it was
made (probe r9-meta F1: an in-place edit of the same size, its mtime put back, was
overwritten by the next batch with the model the store remembered)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.store_helpers import make_store, write_session_file


def test_an_in_place_edit_with_its_mtime_put_back_is_not_overwritten(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write_session_file(tmp_path, "run-1", "a.txt", b"one")
    store.promote_files("run-1", ["a.txt"])
    path = tmp_path / "artifacts" / "run-1" / "metadata.json"
    before = os.stat(path)
    raw = path.read_bytes()
    assert raw.count(b'"unknown"') >= 1  # agent_id of a run with no context
    edited = raw.replace(b'"unknown"', b'"UNKNOWN"', 1)
    with open(path, "r+b") as f:  # the same inode and size
        f.write(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # its mtime put back
    write_session_file(tmp_path, "run-1", "b.txt", b"two")
    store.promote_files("run-1", ["b.txt"])
    meta = json.loads(path.read_bytes())
    assert [a["filename"] for a in meta["artifacts"]] == ["a.txt", "b.txt"]
    assert meta["artifacts"][0]["agent_id"] == "UNKNOWN"  # the edit read, not overwritten


def test_the_store_own_write_is_not_read_back(tmp_path: Path) -> None:
    """The tag of what the store wrote is taken after the rename (which moves the ctime):
    the next batch uses the model it holds, without parsing the file again."""
    store = make_store(tmp_path)
    write_session_file(tmp_path, "run-1", "a.txt", b"one")
    store.promote_files("run-1", ["a.txt"])
    assert store.cached_run("run-1") is not None  # the tag kept matches the file's stat

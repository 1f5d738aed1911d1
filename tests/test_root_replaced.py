"""sessions/ itself deleted and made again, or moved away and replaced, while the daemon
runs (probe r9-watch F1): the watches went with the old folder and no event says so; the
daemon saw nothing written after it, without a word, until a rescan (300 s by default)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import Daemon, base_config, start_daemon, wait_until, write


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path / "root", base_config())  # no rescan: only the watch can see
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("how", ["deleted", "moved away"])
def test_a_sessions_folder_made_again_is_watched_again(daemon: Daemon, how: str) -> None:
    sessions = daemon.root / "sessions"
    write(sessions / "before" / "output" / "a.txt", b"a")
    wait_until(lambda: daemon.meta("before"), 10, what="the first file")
    if how == "deleted":
        shutil.rmtree(sessions)
    else:
        sessions.rename(daemon.root / "sessions.old")
    sessions.mkdir()
    write(sessions / "after" / "output" / "deep" / "b.txt", b"b")
    meta = wait_until(lambda: daemon.meta("after"), 15, what="a file in the new sessions/")
    assert [a["filename"] for a in meta["artifacts"]] == ["deep/b.txt"]
    restarted = daemon.events("watch.restarted")
    assert restarted and "sessions/" in restarted[0]["reason"]
    write(sessions / "after" / "output" / "c.txt", b"c")  # and watched again, not rescanned
    wait_until(lambda: len((daemon.meta("after") or {}).get("artifacts", [])) == 2, 10,
               what="a later file by the new watch")
    assert daemon.stop() == 0

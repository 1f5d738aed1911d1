"""Out of descriptors, the backoff retries every waiting file for ever (DESIGN §5), and each
attempt logged an `artifact.failed` error: one warning an episode now, each retry at debug,
and one `limit.recovered` with the count once the copies go through again."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

from promoter.errors import DESCRIPTORS, LimitEpisodes
from tests.daemon_helpers import Daemon, base_config, start_daemon, wait_until

REASON = DESCRIPTORS + " (Too many open files): raise the daemon's limit (LimitNOFILE=)"


def told(d: Daemon) -> list[dict[str, Any]]:
    """The failures told: a file's (`artifact.failed`), or a batch's or a file's that made
    the store raise (`worker.error`), whichever open ran out first."""
    return [e for e in d.logs() if e["event"] in ("artifact.failed", "worker.error")]


def test_out_of_descriptors_is_one_warning_then_quiet_then_a_count(tmp_path: Path) -> None:
    """The daemon's descriptor limit lowered to what it holds (never raised: LimitNOFILE=),
    three files written: one warning, the retries at debug (they go on), and once the limit
    is back, the files promoted and one `limit.recovered` counting the quiet retries."""
    d = start_daemon(tmp_path / "root", base_config(log={"level": "debug"}))
    try:
        d.wait_ready()
        out = d.sessions / "r1" / "output"
        out.mkdir(parents=True)
        (out / "first.txt").write_text("in")
        journal = d.artifacts / ".audit"
        wait_until(lambda: any(b'"first.txt"' in f.read_bytes() for f in journal.glob("*")),
                   what="first.txt in the journal")  # its append done: no descriptor waits
        held = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        soft, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (held, hard))
        names = [f"f{i}.txt" for i in range(3)]
        for name in names:
            (out / name).write_text(name)
        wait_until(lambda: len(told(d)) >= 8, timeout=30, what="retries of the waiting files")
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for name in names:
            d.wait_entry("r1", name, timeout=60)
        ended = d.wait_log("limit.recovered", timeout=30)
    finally:
        assert d.stop() == 0
    failed = told(d)
    assert not d.events("audit.failed")
    assert all(e["reason"] == REASON for e in failed)
    assert [e["level"] for e in failed] == ["warning"] + ["debug"] * (len(failed) - 1)
    assert "then" in failed[0]
    assert (ended["level"], ended["reason"], ended["quiet_failures"]) == (
        "info", DESCRIPTORS, len(failed) - 1)
    assert len(d.events("limit.recovered")) == 1


def test_an_episode_ends_when_its_files_are_done_or_gone() -> None:
    """Each file that failed is done otherwise since (not merely another file); a new
    failure after the end is a new episode; a file gone for good ends it at the next success
    once no failure came for `linger_s`; other failures are errors as before."""
    now = [0.0]
    ep = LimitEpisodes(linger_s=60, clock=lambda: now[0])
    assert ep.failed("r", "x", "disk full (No space left on device)") == "error"
    assert ep.failed("r", None, REASON) == "warning"  # a batch's: no file to wait for
    assert ep.settled([("r", "other")]) == (0, 0.0) and not ep.open
    assert not ep.open and ep.settled([("r", "x")]) is None
    assert [ep.failed("r", n, REASON) for n in ("a", "b", "a")] == ["warning", "debug", "debug"]
    now[0] = 5
    assert ep.settled([("r", "other")]) is None  # a and b still wait
    assert ep.settled([]) is None
    assert ep.settled([("r", "a")]) is None
    assert ep.settled([("r", "b")]) == (2, 5.0) and not ep.open
    assert ep.failed("r", "c", REASON) == "warning"  # a new episode
    now[0] = 30
    assert ep.settled([("r", "other")]) is None  # c gone meanwhile: not yet 60 s quiet
    now[0] = 66
    assert ep.settled([("r", "other")]) == (0, 61.0)

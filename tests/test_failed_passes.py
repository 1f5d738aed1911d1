"""A start-up pass whose copies fail on a host limit (file size, descriptors) hands its
files to the daemon's backoff, which never gives up (DESIGN §5), and says why plainly."""

from __future__ import annotations

import functools
import resource
import subprocess
from pathlib import Path

import pytest

from tests.daemon_helpers import start_daemon, wait_until

LIMIT = 200_000  # bytes a file of the daemon may reach (its log file too: well under)


def test_a_start_up_copy_failed_on_a_limit_is_retried_until_it_goes_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a file-size limit (LimitFSIZE=) the start-up copy of a larger file fails:
    the pass ends with a warning naming the limit, and the file is tried again with the
    backoff (no rescan configured) until, the limit raised, it is promoted."""
    root = tmp_path / "root"
    out = root / "sessions" / "r1" / "output"
    out.mkdir(parents=True)
    (out / "big.bin").write_bytes(b"x" * (LIMIT * 2))
    (out / "ok.txt").write_bytes(b"small")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
    monkeypatch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen,
                                                               preexec_fn=limited))
    d = start_daemon(root)
    try:
        done = d.wait_log("reconcile.finished", timeout=30)
        assert done["level"] == "warning" and done["failed"] == 1
        assert done["reason"].startswith("file size limit reached (File too large): "
                                         "raise the daemon's limit (LimitFSIZE=)")
        assert d.entry("r1", "ok.txt") is not None and d.entry("r1", "big.bin") is None
        before = len(d.events("artifact.failed", filename="big.bin"))
        failures = functools.partial(d.events, "artifact.failed", filename="big.bin")
        wait_until(lambda: len(failures()) > before, timeout=20, what="a retry by the backoff")
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert d.wait_entry("r1", "big.bin", timeout=60)["size_bytes"] == LIMIT * 2
        assert not [e for e in d.logs() if "exception" in e]
        assert d.stop() == 0
    finally:
        d.close()

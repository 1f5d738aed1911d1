"""A log line that cannot be written never stops promotion: stderr on a full disk (ENOSPC)
once ended every worker at its first log line, and the daemon watched on, promoting nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from promoter.logs import configure_logging, get_logger, info_many
from promoter.tomlout import dumps
from tests.daemon_helpers import NotifySocket, base_config, wait_until, write


class _FullDisk(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(28, "No space left on device")


def test_a_log_write_that_fails_is_dropped_not_raised() -> None:
    """Every way promoter logs (one event, a batch of events) survives a stream that fails."""
    try:
        configure_logging(stream=_FullDisk())
        get_logger().info("daemon.ready")
        get_logger().error("worker.error", run_id="r")
        info_many([("artifact.promoted", {"run_id": "r", "filename": "a"})] * 3)
    finally:
        configure_logging()


def test_the_daemon_promotes_with_its_stderr_on_a_full_disk(tmp_path: Path) -> None:
    """`promoter run` with stderr on /dev/full (every write ENOSPC): ready, every file of
    three runs promoted, SIGTERM exits 0."""
    root = tmp_path / "root"
    (root / "sessions").mkdir(parents=True)
    cfg = tmp_path / "promoter.toml"
    cfg.write_text(dumps(base_config()))
    notify = NotifySocket()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "NOTIFY_"))}
    environ["NOTIFY_SOCKET"] = notify.path
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(
            [sys.executable, "-m", "promoter", "run", "--root", str(root), "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=full, stdin=subprocess.DEVNULL, env=environ)
    try:
        notify.wait_for("READY=1", 20)
        names = {(f"r{r}", f"f{i}.txt") for r in range(3) for i in range(10)}
        for run, name in sorted(names):
            write(root / "sessions" / run / "output" / name, f"{run}/{name}")

        def listed() -> bool:
            found = set()
            for run in ("r0", "r1", "r2"):
                try:
                    meta = json.loads((root / "artifacts" / run / "metadata.json").read_text())
                except (FileNotFoundError, ValueError):
                    return False
                found |= {(run, a["filename"]) for a in meta["artifacts"]}
            return found == names

        wait_until(listed, 20, what="all 30 files promoted")
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()

"""A promoted file refused later (a hard link made to it) is listed in `rejected`; once the
link is gone again, the same bytes, the next look clears that entry (r8 probe)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.daemon_helpers import base_config, start_daemon, wait_until


def test_a_hard_link_removed_again_leaves_the_rejected_list(tmp_path: Path) -> None:
    """Linked: refused, listed, the copy kept; unlinked: the rescan reads the same bytes
    and the run's `rejected` list is empty again, no second promotion."""
    root = tmp_path / "root"
    d = start_daemon(root, base_config(watch={"rescan_interval_s": 1}))
    out = d.sessions / "r1" / "output"
    try:
        d.wait_ready()
        out.mkdir(parents=True)
        (out / "a.txt").write_text("promoted, then linked")
        first = d.wait_entry("r1", "a.txt")
        link = d.sessions / "r1" / "elsewhere"
        os.link(out / "a.txt", link)
        wait_until(lambda: [r["reason"] for r in (d.meta("r1") or {}).get("rejected", [])]
                   == ["hard link"], what="a.txt rejected", timeout=20)
        # the refusal is remembered just after its batch's metadata write: two rescans
        # later it surely is (a change in between is remembered as refused: noted)
        passes = len(d.events("reconcile.finished"))
        wait_until(lambda: len(d.events("reconcile.finished")) >= passes + 2,
                   what="two rescans", timeout=20)
        link.unlink()
        wait_until(lambda: not (d.meta("r1") or {}).get("rejected"),
                   what="a.txt out of rejected", timeout=30)
        entry = d.entry("r1", "a.txt")
        assert entry is not None and entry["sha256"] == first["sha256"]
        assert len(d.events("artifact.promoted")) == 1
    finally:
        assert d.stop() == 0

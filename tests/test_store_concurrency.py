"""Threads and processes writing one run's metadata at once lose no update (DESIGN §2)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from promoter.metadata import RunMetadata
from tests.store_helpers import make_store, write_session_file

CHILD = """
import sys
from promoter.config import load_config
from promoter.store import Store
root, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(load_config(None, {}, root))
for i in range(count):
    store.promote_files("r1", [f"{prefix}{i}.txt"])
    if i % 10 == 0:
        store.set_keep("r1", i % 20 == 0)
"""


def test_two_processes_promoting_into_one_run_lose_nothing(tmp_path: Path) -> None:
    """Two processes promoting different files of one run end with every entry listed."""
    store = make_store(tmp_path)
    count = 40
    for prefix in ("a", "b"):
        for i in range(count):
            write_session_file(tmp_path, "r1", f"{prefix}{i}.txt", f"{prefix}{i}".encode())
    store.promote_files("r1", ["a0.txt"])  # the run exists before the race
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), prefix, str(count)],
                              stderr=subprocess.DEVNULL) for prefix in ("a", "b")]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    meta = RunMetadata.model_validate_json((tmp_path / "artifacts/r1/metadata.json").read_text())
    names = sorted(a.filename for a in meta.artifacts)
    assert names == sorted(f"{p}{i}.txt" for p in ("a", "b") for i in range(count))


def test_threads_updating_keep_and_promoting_lose_nothing(tmp_path: Path) -> None:
    """Threads promoting and pinning at once: every file listed, metadata valid."""
    store = make_store(tmp_path)
    names = [f"t{i}.txt" for i in range(60)]
    for name in names:
        write_session_file(tmp_path, "r1", name, name.encode())
    store.promote_files("r1", names[:1])
    errors: list[BaseException] = []

    def promote(chunk: list[str]) -> None:
        try:
            for name in chunk:
                store.promote_files("r1", [name])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def pin() -> None:
        for i in range(30):
            store.set_keep("r1", i % 2 == 0)

    threads = [threading.Thread(target=promote, args=(names[i::3],)) for i in range(3)]
    threads.append(threading.Thread(target=pin))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    data = json.loads((tmp_path / "artifacts/r1/metadata.json").read_text())
    assert sorted(a["filename"] for a in data["artifacts"]) == sorted(names)

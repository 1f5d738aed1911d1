"""The start-up repair (startup.py, issue 15): once the marks are trusted, a clean run is read
once without its lock; anything else still goes through the locked repair and is found."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from promoter import walk
from promoter.layout import LOCKS, MARK, METADATA, REPAIRED
from promoter.localdisk import LocalDisk
from promoter.metadata import RunMetadata
from promoter.runlock import run_lock
from promoter.startup import prepare, prepare_store
from promoter.store import Outcome, Store
from tests.store_helpers import make_store, write_session_file

RUNS = ("r1", "r2", "r3")


@pytest.fixture
def trusted(tmp_path: Path) -> Iterator[Store]:
    """Three promoted runs, repaired whole once: the marks are trusted."""
    store = make_store(tmp_path)
    for run in RUNS:
        for name in ("a.txt", "b.txt"):
            write_session_file(tmp_path, run, name, f"{run}/{name}".encode())
        assert {r.outcome for r in store.promote_files(run, ["a.txt", "b.txt"])} \
            == {Outcome.PROMOTED}
    prepare_store(store.config)
    assert (tmp_path / "artifacts" / REPAIRED).exists()
    yield store


def _doc(root: Path, run: str) -> RunMetadata:
    return RunMetadata.model_validate_json((root / "artifacts" / run / METADATA).read_bytes())


def test_a_clean_run_is_remembered_as_read_without_waiting_for_its_lock(
        tmp_path: Path, trusted: Store) -> None:
    """Another writer holds r2's lock: the start-up repair still ends, and every run's model
    is the file's, remembered under the file's own version tag (no second parse)."""
    fresh = Store(trusted.config)
    locks_fd = os.open(tmp_path / "artifacts" / LOCKS, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with run_lock(locks_fd, "r2"):
            worker = threading.Thread(target=prepare, args=(fresh,), kwargs={"create": False})
            worker.start()
            worker.join(15)
            finished = not worker.is_alive()
        worker.join(15)
    finally:
        os.close(locks_fd)
    assert finished, "the repair waited for a clean run's lock"
    assert isinstance(fresh.disk, LocalDisk)
    for run in RUNS:
        cached = fresh.cached_run(run)
        assert cached is not None and cached == _doc(tmp_path, run)


@pytest.mark.parametrize("damage", ["temp", "mark", "corrupt", "other-run", "oversized", "link",
                                    "fifo", "folder"])
def test_a_run_that_is_not_clean_is_repaired_under_its_lock(
        tmp_path: Path, trusted: Store, damage: str) -> None:
    """A temporary file, a mark, a metadata.json that does not parse, names another run, or is
    over the limit: the locked repair deals with it as before (temp removed, copies relisted,
    the document set aside and rebuilt); the clean runs beside it are left as they are."""
    run_dir = tmp_path / "artifacts" / "r2"
    before = {run: (tmp_path / "artifacts" / run / METADATA).read_bytes() for run in RUNS}
    if damage == "temp":
        (run_dir / ".promoter-tmp-x").write_bytes(b"half")
    elif damage == "mark":
        (run_dir / MARK).write_bytes(b"")
        (run_dir / "files" / "c.txt").write_bytes(b"cut short")  # renamed in, never listed
    elif damage == "corrupt":
        (run_dir / METADATA).write_bytes(b'{"run_id": "r2", ')
    elif damage == "other-run":
        (run_dir / METADATA).write_bytes(before["r1"])
    elif damage == "link":
        (run_dir / METADATA).unlink()
        (run_dir / METADATA).symlink_to(tmp_path / "artifacts" / "r1" / METADATA)
    elif damage == "fifo":
        (run_dir / METADATA).unlink()
        os.mkfifo(run_dir / METADATA)
    elif damage == "folder":
        (run_dir / METADATA).unlink()
        (run_dir / METADATA).mkdir()
    else:
        (run_dir / METADATA).write_bytes(before["r2"] + b" " * 2048)
    config = trusted.config.model_copy(update={"promote": trusted.config.promote.model_copy(
        update={"max_metadata_bytes": len(before["r2"]) + 1024})})
    fresh = Store(config)
    prepare(fresh, create=False)
    listed = {a.filename for a in _doc(tmp_path, "r2").artifacts}
    assert listed == ({"a.txt", "b.txt", "c.txt"} if damage == "mark" else {"a.txt", "b.txt"})
    assert not list(run_dir.glob(".promoter-*")) and not (run_dir / MARK).exists()
    aside = list(run_dir.glob(f"{METADATA}.corrupt-*"))
    assert len(aside) == (damage in ("corrupt", "other-run", "oversized", "link", "fifo",
                                     "folder"))
    for run in ("r1", "r3"):
        assert (tmp_path / "artifacts" / run / METADATA).read_bytes() == before[run]


def last_line_of(script: str, cwd: Path) -> str:
    """The last line a fresh interpreter running `script` prints (outside the repository,
    so the installed package is imported)."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=cwd, check=True).stdout
    return out.splitlines()[-1]


def test_the_cli_is_imported_with_the_collector_off_and_it_is_back_on_after(
        tmp_path: Path) -> None:
    """`promoter.entry.main`: the CLI's imports run with gc disabled (3-15 % of their CPU),
    and the collector is enabled again before the command runs."""
    script = (
        "import gc, importlib.abc, sys\n"
        "seen = []\n"
        "class Spy(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name in ('promoter.cli', 'promoter.cli_commands', 'promoter.store'):\n"
        "            seen.append(gc.isenabled())\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from promoter.entry import main\n"
        "sys.argv = ['promoter', 'schema']\n"
        "code = main()\n"
        "print(seen, gc.isenabled(), code)\n"
    )
    assert last_line_of(script, tmp_path) == "[False, False, False] True 0"


def test_the_hosts_mime_types_are_read_at_the_first_guess_not_at_import(
        tmp_path: Path) -> None:
    """Importing the daemon reads no mime.types (a fifteenth of its imports); the first
    content type guessed does, and types as before."""
    script = (
        "import mimetypes\n"
        "made = []\n"
        "real = mimetypes.MimeTypes.__init__\n"
        "def spy(self, *a, **k):\n"
        "    made.append(1)\n"
        "    real(self, *a, **k)\n"
        "mimetypes.MimeTypes.__init__ = spy\n"
        "import promoter.daemon\n"
        "from promoter.metadata import guess_content_type\n"
        "before = len(made)\n"
        "print(before, guess_content_type('a.md'), guess_content_type('b.tar.gz'), len(made) > 0)\n"
    )
    assert last_line_of(script, tmp_path) == "0 text/markdown application/x-tar True"


def test_known_copies_made_ahead_are_taken_once_by_the_same_model(trusted: Store) -> None:
    """What the start-up catch-up prepares while the listing is made is what `known_copies`
    would compute, handed once to the very model it was made from; another model of the
    run is computed afresh, and what is not taken is dropped."""
    metas = [trusted.read_run(run) for run in RUNS]
    assert all(m is not None for m in metas)
    fresh = {m.run_id: walk._copies(m) for m in metas if m is not None}
    walk.prepare_known_copies([m for m in metas if m is not None], threading.Event())
    try:
        first = metas[0]
        assert first is not None
        taken = walk.known_copies(first)
        assert taken == fresh["r1"] and len(taken) == 2
        assert walk.known_copies(first) == taken and walk.known_copies(first) is not taken
        other = first.model_copy()
        assert walk.known_copies(other) == fresh["r1"]
        changes = walk.known_changes(first)  # the entries' ctimes, likewise (r7-ctime)
        assert changes == walk._changes(first) and len(changes) == 2
        assert walk.known_changes(first) == changes and walk.known_changes(first) is not changes
    finally:
        walk.forget_known_copies()
    assert not walk._prepared and not walk._prepared_changes


def test_nothing_is_made_ahead_once_stopped(trusted: Store) -> None:
    """A stop during the preparation ends it at once."""
    stop = threading.Event()
    stop.set()
    walk.prepare_known_copies([m for m in (trusted.read_run(r) for r in RUNS) if m], stop)
    assert not walk._prepared

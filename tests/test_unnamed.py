"""Issue 15, fifth round: copies are unnamed files (O_TMPFILE) linked into place once flushed,
named temporaries where the file system (or /proc) has none; a batch holds a bounded number
open, and a crash before the link leaves nothing in files/."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from promoter import batchcopy, placing
from promoter.names import TEMP_PREFIX
from promoter.safeio import folder, place, stage_copy
from promoter.store import Outcome
from tests.store_helpers import make_store, write_session_file
from tests.test_batching import IoTrace


def _files(root: Path, run: str = "r1") -> dict[str, bytes]:
    base = root / "artifacts" / run / "files"
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def _write(root: Path, names: list[str], tag: bytes = b"") -> dict[str, bytes]:
    data = {n: n.encode() * 50 + tag for n in names}
    for name, body in data.items():
        write_session_file(root, "r1", name, body)
    return data


@pytest.mark.parametrize("refusal", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
@pytest.mark.parametrize("count", [2, 30])
def test_a_file_system_without_unnamed_files_gets_named_temporaries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int, count: int) -> None:
    """open(O_TMPFILE) refused as each kernel/file system may (EOPNOTSUPP, EISDIR, EINVAL):
    every copy takes a named temporary, flushed before its rename, listed, none left."""
    store = make_store(tmp_path)
    names = [f"f{i:02d}.txt" if i % 3 else f"d/f{i:02d}.txt" for i in range(count)]
    data = _write(tmp_path, names)

    def refused(dir_fd: int) -> int:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(placing, "open_unnamed", refused)
    trace = IoTrace(monkeypatch)
    results = store.promote_files("r1", names)
    monkeypatch.undo()
    assert {r.outcome for r in results} == {Outcome.PROMOTED}
    assert trace.check_durable_before_listed() == count
    assert not any(item[0] == "link" for item in trace.log)
    assert _files(tmp_path) == data
    assert not list((tmp_path / "artifacts").rglob(f"{TEMP_PREFIX}*"))


def test_another_error_of_the_unnamed_open_fails_the_file_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC (or EACCES) from open(O_TMPFILE) is the store's error, not a missing feature:
    the file FAILED (retried later), nothing named in files/; promoted once it clears."""
    store = make_store(tmp_path)
    data = _write(tmp_path, ["a.txt", "b.txt"])

    def full(dir_fd: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(placing, "open_unnamed", full)
    assert {r.outcome for r in store.promote_files("r1", ["a.txt", "b.txt"])} \
        == {Outcome.FAILED}
    assert _files(tmp_path) == {}
    monkeypatch.undo()
    assert {r.outcome for r in store.promote_files("r1", ["a.txt", "b.txt"])} \
        == {Outcome.PROMOTED}
    assert _files(tmp_path) == data


def test_without_proc_fd_links_copies_are_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc/self/fd (an unnamed file could not be linked): named temporaries, at once."""
    monkeypatch.setattr(placing, "_FD_LINKS", str(tmp_path / "no-proc"))
    placing.unnamed_supported.cache_clear()
    try:
        assert not placing.unnamed_supported()
        store = make_store(tmp_path)
        data = _write(tmp_path, ["a.txt", "sub/b.txt"])
        trace = IoTrace(monkeypatch)
        assert {r.outcome for r in store.promote_files("r1", list(data))} == {Outcome.PROMOTED}
        assert trace.check_durable_before_listed() == 2
        assert not any(item[0] == "link" for item in trace.log)
    finally:
        monkeypatch.undo()
        placing.unnamed_supported.cache_clear()
    assert placing.unnamed_supported()
    assert _files(tmp_path) == data


def test_a_batch_holds_a_bounded_number_of_unnamed_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cap of 5: 23 files are committed 5 at a time (each step flushed before its links),
    never more than 5 unnamed copies open, every one listed once."""
    monkeypatch.setattr(batchcopy, "MAX_UNNAMED", 5)
    store = make_store(tmp_path)
    names = [f"f{i:02d}.txt" for i in range(23)]
    data = _write(tmp_path, names)
    files = tmp_path / "artifacts" / "r1" / "files"
    held: list[int] = []
    real_stage = batchcopy.stage_copy

    def unnamed_open() -> int:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        return sum(1 for link in links if link.startswith(f"{files}/#"))

    def counting(*args: Any, **kw: Any) -> Any:
        held.append(unnamed_open())
        return real_stage(*args, **kw)

    monkeypatch.setattr(batchcopy, "stage_copy", counting)
    trace = IoTrace(monkeypatch)
    results = store.promote_files("r1", names)
    monkeypatch.undo()
    assert {r.outcome for r in results} == {Outcome.PROMOTED}
    assert held == [0, 1, 2, 3, 4] * 4 + [0, 1, 2]  # before each copy: 5 staged, a commit
    assert trace.check_durable_before_listed() == len(names)
    assert sum(1 for item in trace.log if item[0] == "link") == len(names)
    assert _files(tmp_path) == data


@pytest.mark.parametrize(("soft", "caps"), [(64, (4, 4)), (15, (0, 1)),
                                           (1 << 20, (batchcopy.MAX_UNNAMED, batchcopy.MAX_HELD))])
def test_the_caps_are_a_sixteenth_of_the_descriptor_limit(
        monkeypatch: pytest.MonkeyPatch, soft: int, caps: tuple[int, int]) -> None:
    """RLIMIT_NOFILE 64: 4 unnamed copies and 4 folders a batch (several batches run at
    once); 15: no unnamed copy (named temporaries), one folder; large: 1,024 and 256."""
    monkeypatch.setattr(batchcopy.resource, "getrlimit", lambda _: (soft, soft))
    assert batchcopy._caps() == caps


def test_a_cap_of_zero_takes_named_temporaries(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A descriptor limit too small for any held copy: every copy named, all promoted."""
    monkeypatch.setattr(batchcopy, "_caps", lambda: (0, batchcopy.MAX_HELD))
    store = make_store(tmp_path)
    data = _write(tmp_path, [f"f{i}.txt" for i in range(20)])
    trace = IoTrace(monkeypatch)
    assert {r.outcome for r in store.promote_files("r1", list(data))} == {Outcome.PROMOTED}
    monkeypatch.undo()
    assert not any(item[0] == "link" for item in trace.log)
    assert _files(tmp_path) == data


def _staged(root: Path, body: bytes) -> tuple[int, str | None, int]:
    src = root / "src"
    src.write_bytes(body)
    dst = root / "dst"
    dst.mkdir(exist_ok=True)
    fd = os.open(src, os.O_RDONLY)
    try:
        dir_fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        out, tmp, _ = stage_copy(fd, os.fstat(fd), dir_fd, "x", checksum=False, max_bytes=1 << 20)
    finally:
        os.close(fd)
    return out, tmp, dir_fd


def test_place_replaces_a_copy_and_refuses_a_folder_leaving_no_name(tmp_path: Path) -> None:
    """A taken name is replaced whole (link to a temporary, renamed over); a folder of that
    name fails with EISDIR (the rename's error, as for a named temporary) and leaves no
    temporary; a name with a newline and non-ASCII is placed as it is."""
    for name, old in (("x", b"old"), ("é\nx", None)):
        out, tmp, dir_fd = _staged(tmp_path, b"new " + name.encode())
        assert tmp is None  # unnamed on this file system
        if old is not None:
            (tmp_path / "dst" / name).write_bytes(old)
        try:
            os.fsync(out)
            place(out, tmp, dir_fd, name)
        finally:
            os.close(out)
            os.close(dir_fd)
        assert (tmp_path / "dst" / name).read_bytes() == b"new " + name.encode()
    (tmp_path / "dst" / "taken").mkdir()
    (tmp_path / "dst" / "taken" / "inner").write_bytes(b"keep")
    out, tmp, dir_fd = _staged(tmp_path, b"body")
    try:
        with pytest.raises(OSError) as caught:
            place(out, tmp, dir_fd, "taken")
    finally:
        os.close(out)
        os.close(dir_fd)
    assert caught.value.errno in (errno.EISDIR, errno.ENOTEMPTY)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["taken", "x", "é\nx"]
    assert (tmp_path / "dst" / "taken" / "inner").read_bytes() == b"keep"


_KILLED = textwrap.dedent("""
    import os, signal, sys
    from promoter import batchcopy
    from promoter.config import load_config
    from promoter.store import Store
    root = sys.argv[1]
    def die(*args, **kw):
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9 with the copies staged
    batchcopy.flush_all = die
    names = [f"f{i:02d}.txt" for i in range(40)]
    Store(load_config(None, {}, root)).promote_files("r1", names)
""")


def test_a_kill_with_a_batch_staged_leaves_nothing_in_files(tmp_path: Path) -> None:
    """kill -9 of a process holding 40 staged unnamed copies (before their flush): files/ has
    no entry and no temporary; the next promotion stores and lists all 40."""
    store = make_store(tmp_path)
    names = [f"f{i:02d}.txt" for i in range(40)]
    data = _write(tmp_path, names)
    done = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path)], capture_output=True,
                          timeout=60)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    files = tmp_path / "artifacts" / "r1" / "files"
    assert list(files.rglob("*")) == []
    assert {r.outcome for r in store.promote_files("r1", names)} == {Outcome.PROMOTED}
    assert _files(tmp_path) == data
    listed = {a.filename: a.sha256 for a in store.get_run("r1").artifacts}
    assert listed == {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}
    with folder(files) as fd:
        assert sorted(os.listdir(fd)) == names


def test_the_daemon_raises_its_soft_descriptor_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Started with a soft limit of 256 under a hard one of 4,096, `promoter run` works
    with 4,096 (systemd's 1024:524288 is meant to be raised); a one-shot command does not
    raise it."""
    import signal
    import subprocess
    import sys

    from tests.daemon_helpers import wait_until

    (tmp_path / "sessions").mkdir()
    shell = ["sh", "-c", 'ulimit -S -n 256 && ulimit -H -n 4096 && exec "$@"', "sh",
             sys.executable, "-m", "promoter"]
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([*shell, "run", "--root", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        def raised() -> bool:
            with open(f"/proc/{proc.pid}/limits") as fh:
                line = next(x for x in fh if x.startswith("Max open files"))
            return line.split()[3:5] == ["4096", "4096"]  # soft, hard (sh's own: 20000)
        wait_until(raised, timeout=20, what="the soft limit raised to 4096")
        # the limit is raised before the signal handlers are set: SIGTERM once it is ready
        wait_until(lambda: b"daemon.ready" in log.read_bytes(), timeout=20, what="ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    done = subprocess.run([*shell, "config", "--root", str(tmp_path)], capture_output=True,
                          timeout=60)
    assert done.returncode == 0


@pytest.mark.parametrize(("limits", "raised"), [
    ((256, 4096), (256, 4096)), ((1024, 1 << 20), (1024, 65536)),
    ((70000, 1 << 20), (70000, 70000)), ((256, 256), (256, 256))])
def test_the_raise_stops_at_the_hard_limit_and_the_ceiling(
        monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], raised: tuple[int, int]) -> None:
    """Up to the hard limit, at most 65,536, and never down."""
    from promoter import limits as limits_module

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(limits_module.resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(limits_module.resource, "setrlimit", lambda _, value: calls.append(value))
    assert limits_module.raise_descriptor_limit() == raised
    assert calls == ([] if raised[0] == raised[1] else [(raised[1], limits[1])])


@pytest.mark.parametrize("by_descriptor", [True, False])
def test_an_unnamed_copy_is_linked_by_its_descriptor_or_through_proc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_descriptor: bool) -> None:
    """`link_unnamed` links by the descriptor alone where the kernel allows it (no /proc path
    is opened); where it refuses (ENOENT, as an older kernel answers an unprivileged caller),
    through /proc/self/fd, and from then on only so. A taken name is FileExistsError either
    way, and a vanished folder is ENOENT, not taken for a refusal."""
    monkeypatch.setattr(placing, "_by_descriptor", [True])
    if not by_descriptor:
        def refused(*args: Any) -> int:
            ctypes.set_errno(errno.ENOENT)
            return -1
        monkeypatch.setattr(placing, "libc_function", lambda name, *types: refused)
    links: list[str] = []
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda src, dst, **kw: (links.append(str(src)),
                                                            real_link(src, dst, **kw))[1])
    out, tmp, dir_fd = _staged(tmp_path, b"body")
    try:
        assert tmp is None
        placing.link_unnamed(out, "a", dir_fd)
        with pytest.raises(FileExistsError):
            placing.link_unnamed(out, "a", dir_fd)
        placing.link_unnamed(out, "b", dir_fd)
    finally:
        os.close(out)
    assert (tmp_path / "dst" / "a").read_bytes() == (tmp_path / "dst" / "b").read_bytes() == b"body"
    assert placing._by_descriptor[0] is by_descriptor
    assert len(links) == (0 if by_descriptor else 3)  # the path way's own errors are its
    (tmp_path / "dst" / "a").unlink()
    (tmp_path / "dst" / "b").unlink()
    (tmp_path / "dst").rmdir()  # the folder gone: an error, never a link elsewhere
    out = os.open(str(tmp_path), os.O_TMPFILE | os.O_WRONLY, 0o644)
    try:
        with pytest.raises(FileNotFoundError):
            placing.link_unnamed(out, "c", dir_fd)
    finally:
        os.close(out)
        os.close(dir_fd)

"""Hostile session trees against the real `promoter run` (DESIGN §6): links, special files,
hard links, huge sparse files, unreadable folders, strange names and bad run ids.

One daemon serves the module, each case in runs of its own; after every case
`Arena.check` proves the daemon kept out of `secrets/` and everything outside
the store (fanotify, as root), lost no finished file, kept metadata valid, and
still promotes (see tests/fault_helpers.py).
"""

from __future__ import annotations

import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from promoter.clock import format_time, from_timestamp_ns
from tests.daemon_helpers import Daemon, base_config, copy_under_way, wait_until, write
from tests.fault_helpers import (
    Arena,
    arena_at,
    exchange,
    file_time_in_range,
    hold_run_lock,
    is_root,
    remove_tree,
    sha,
    wait_blocked,
)

MAX_FILE = 64 << 20


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """The module's arena (a tmpfs with the access monitor, as root)."""
    with arena_at(tmp_path_factory.mktemp("hostile")) as a:
        yield a


@pytest.fixture(scope="module")
def d(arena: Arena) -> Iterator[Daemon]:
    """One daemon for every hostile tree, at settle_ms 50 and max_file_bytes 64 MiB."""
    daemon = arena.start(base_config(promote={"max_file_bytes": MAX_FILE}))
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture(autouse=True)
def log_mark(arena: Arena, d: Daemon) -> None:
    """Each case judges the log lines written since it began."""
    arena.since = len(d.logs())


def check(arena: Arena, d: Daemon, allow_errors: Iterable[str] = ()) -> None:
    arena.check(d, arena.finished_files(max_file_bytes=MAX_FILE), allow_errors)


def rejected(d: Daemon, run_id: str, filename: str, timeout: float = 10.0) -> str:
    """The reason of the artifact.rejected line for this file."""
    return str(d.wait_log("artifact.rejected", timeout, run_id=run_id,
                          filename=filename)["reason"])


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` became true within `timeout` (a bound, not a failure)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(0.001)
    return False


def watched_output(d: Daemon, out: Path) -> None:
    """Make `out` and wait until it is watched (a file in it promoted). watchdog's synthetic
    events for a folder made just before its watch skip links to folders, so such a link made
    at once is only found, and its refusal logged, by the next rescan."""
    write(out / "first.txt", "first")
    d.wait_entry(out.parent.name, "first.txt")


def replace_with_symlink(path: Path, target: Path) -> None:
    """Atomically turn `path` into a symbolic link to `target` (a hidden, excluded temp)."""
    tmp = path.with_name(f".swap-{path.name}")
    tmp.symlink_to(target)
    os.replace(tmp, path)


# -- symbolic links --------------------------------------------------------------------


def test_symlinks_at_the_last_name_are_refused(arena: Arena, d: Daemon) -> None:
    """Links at the last name (to a file, folder, nothing, relative) are refused, not followed."""
    # Links to a secret file, to a folder, dangling and relative are each refused with
    # artifact.rejected "symlink"; no entry, nothing of secrets/ opened.
    out = arena.out("link-last")
    write(out / "plain.txt", "plain")
    d.wait_entry("link-last", "plain.txt")  # output/ is watched (see watched_output)
    links = {"abs.txt": arena.secrets / "secret.txt", "dir": arena.secrets,
             "dangling.txt": arena.secrets / "nope", "rel.txt": Path("../../../secrets/f.txt")}
    for name, target in links.items():
        (out / name).symlink_to(target)
    for name in links:
        assert rejected(d, "link-last", name) == "symlink"
        assert d.entry("link-last", name) is None
    check(arena, d)


def test_a_file_swapped_for_a_symlink_before_its_copy_is_refused(arena: Arena, d: Daemon) -> None:
    """A file swapped for a link between its event and its copy is refused, not followed."""
    # A regular file replaced by a link to the secret after its event, while its worker waits for
    # the run's lock, is refused, not followed.
    out = arena.out("link-swap")
    with hold_run_lock(arena.artifacts, "link-swap") as lock:
        write(out / "x.txt", "regular")
        wait_blocked(lock, d.proc.pid)
        replace_with_symlink(out / "x.txt", arena.secrets / "secret.txt")
    assert rejected(d, "link-swap", "x.txt") == "symlink"
    assert d.entry("link-swap", "x.txt") is None
    check(arena, d)


def test_symlinked_folders_on_the_way_are_never_entered(arena: Arena, d: Daemon) -> None:
    """A linked folder under output/, made so or swapped in mid-promotion, is never entered."""
    # A link to secrets/ as a folder under output/ is refused as a whole, and a real folder
    # swapped for such a link while its file waits for the copy is refused on the path.
    out = arena.out("link-dir")
    watched_output(d, out)
    (out / "linkdir").symlink_to(arena.secrets)
    assert rejected(d, "link-dir", "linkdir") == "symlink"
    with hold_run_lock(arena.artifacts, "link-dir") as lock:
        write(out / "d" / "f.txt", "mine")
        wait_blocked(lock, d.proc.pid)
        os.rename(out / "d", out / ".d-away")
        (out / "d").symlink_to(arena.secrets)  # secrets/f.txt holds the secret
    assert rejected(d, "link-dir", "d/f.txt") == "symlink on the path"
    assert d.entry("link-dir", "d/f.txt") is None and d.entry("link-dir", "linkdir") is None
    check(arena, d)


def test_output_itself_as_a_symlink_is_never_entered(arena: Arena, d: Daemon) -> None:
    """An output/ (or a run folder) that is a link, made so or swapped in, is never entered."""
    # A run whose output/ is a link to secrets/ is never read (not watched through, not scanned),
    # and an output/ swapped for such a link under a pending copy is refused.
    (arena.sessions / "link-out").mkdir()
    (arena.sessions / "link-out" / "output").symlink_to(arena.secrets)
    (arena.sessions / "link-run").symlink_to(arena.secrets / "runlike")  # the run folder too
    write(arena.sessions / "link-out" / "run.json", '{"workflow_id": "w"}')
    out = arena.out("link-out2")
    with hold_run_lock(arena.artifacts, "link-out2") as lock:
        write(out / "f.txt", "mine")
        wait_blocked(lock, d.proc.pid)
        os.rename(out, out.with_name("output-away"))
        out.symlink_to(arena.secrets)
    assert rejected(d, "link-out2", "f.txt") == "symlink on the path"
    for run in ("link-out", "link-out2", "link-run"):
        meta = d.meta(run)
        assert meta is None or not meta["artifacts"]
    check(arena, d)


@pytest.mark.slow
def test_symlink_swapped_in_a_tight_loop_during_copies(arena: Arena, d: Daemon) -> None:
    """A file flipped to a link in a tight loop during its copies: only its own bytes stored."""
    # output/x flips atomically between an 8 MiB regular file and a link to the secret: in a tight
    # loop for as long as each copy of a new version lasts, and in short bursts around the
    # daemon's look, some leaving the link in place, for about 2 s. The secret is never opened,
    # the link is refused, and every copy promoted (and the one stored) is the regular file's
    # bytes, whole.
    out = arena.out("link-race")
    big = os.urandom(1 << 20) * 8
    write(out / "x", big)
    (out / ".alt").symlink_to(arena.secrets / "secret.txt")
    rng = random.Random(5)  # noqa: S311 - a reproducible schedule for the race, not a secret
    files = arena.artifacts / "link-race" / "files"
    flips = [0]

    def copying() -> bool:
        return copy_under_way(d.proc.pid, files)

    def swap(times: int = 1) -> None:
        for _ in range(times):
            exchange(out / "x", out / ".alt")
            flips[0] += 1

    def rejections() -> int:
        return len(d.events("artifact.rejected", run_id="link-race", filename="x"))
    copies = cycle = links_left = 0
    deadline = time.monotonic() + 8.0  # a bound, not a duration: it ends when enough happened
    while (copies < 3 or links_left < 2) and time.monotonic() < deadline:
        cycle += 1
        swap(flips[0] % 2)  # the regular file back at x
        now = time.time_ns()
        os.utime(out / "x", ns=(now, now), follow_symlinks=False)  # a new version to copy
        if cycle % 3 and poll(copying, 2.0):  # swap for as long as the copy lasts
            copies += 1
            flips_then = flips[0]
            while copying() and flips[0] - flips_then < 300:
                swap(10)
            poll(lambda: not copying(), 5.0)  # a new version now would void this copy
        elif not cycle % 3:  # a burst around the daemon's look and open, then the link stays
            poll(lambda: False, rng.uniform(0.03, 0.07))
            burst_end = time.monotonic() + 0.01
            while time.monotonic() < burst_end:
                swap()
            seen = rejections()
            swap(1 - flips[0] % 2)
            links_left += poll(lambda: rejections() > seen, 2.0)  # noqa: B023
    swap(flips[0] % 2)
    assert copies >= 3 and links_left >= 2, (flips, copies, links_left)
    assert flips[0] > 200 and not (out / "x").is_symlink()
    d.wait_entry("link-race", "x", check=lambda e: e["generated_at"] == format_time(
        from_timestamp_ns((out / "x").lstat().st_mtime_ns)))
    promoted = d.events("artifact.promoted", run_id="link-race", filename="x")
    assert len(promoted) >= 2 and {p["sha256"] for p in promoted} == {sha(big)}
    if arena.monitor is not None:
        assert arena.opened(arena.secrets / "secret.txt") == []
    check(arena, d)


# -- special files ---------------------------------------------------------------------


def test_fifo_socket_and_device_are_never_opened(arena: Arena, d: Daemon) -> None:
    """A FIFO, a UNIX socket and a device are refused by kind without being opened."""
    # A FIFO (which would block a reader), a UNIX socket and, as root, /dev/zero's device (which
    # never ends) are refused by kind without being opened; promotion goes on.
    out = arena.out("special")
    out.mkdir(parents=True)
    os.mkfifo(out / "pipe")
    folder = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"/proc/self/fd/{folder}/sock")  # short: sun_path is 108 bytes
        expected = {"pipe": "fifo", "sock": "socket"}
        if is_root():
            os.mknod(out / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
            expected["zero"] = "device"
        for name, reason in expected.items():
            assert rejected(d, "special", name) == reason
            if arena.monitor is not None:
                assert arena.opened(out / name) == []
        check(arena, d)
    finally:
        sock.close()
        os.close(folder)


def test_a_hard_link_to_a_file_outside_is_refused(arena: Arena, d: Daemon) -> None:
    """A hard link to a file outside is refused before it is opened."""
    # A hard link to secrets/secret.txt is refused ("hard link") before it is opened.
    out = arena.out("hardlink")
    out.mkdir(parents=True)
    os.link(arena.secrets / "secret.txt", out / "hl.txt")
    try:
        assert rejected(d, "hardlink", "hl.txt") == "hard link"
        assert d.entry("hardlink", "hl.txt") is None
        check(arena, d)
    finally:
        (out / "hl.txt").unlink()  # the secret's link count back, for the next snapshots


def test_a_sparse_file_over_max_file_bytes_is_never_read(arena: Arena, d: Daemon) -> None:
    """A sparse file over max_file_bytes is refused unread, and the daemon stays responsive."""
    # A sparse 8 GiB file (over max_file_bytes) is refused by its size without one byte read, and
    # the daemon answers a new file at once.
    out = arena.out("sparse")
    out.mkdir(parents=True)
    with (out / "huge.bin").open("wb") as fh:
        fh.truncate(8 << 30)
    reason = rejected(d, "sparse", "huge.bin")
    assert "max_file_bytes" in reason
    started = time.monotonic()
    write(out / "small.txt", "small")
    d.wait_entry("sparse", "small.txt", timeout=5)
    assert time.monotonic() - started < 3
    if arena.monitor is not None:
        reads = [a for a in arena.opened(out / "huge.bin") if a.mask & 0x1]
        assert reads == [], reads
    check(arena, d)


def test_mode_000_folder_and_file(arena: Arena, d: Daemon) -> None:
    """A mode-000 folder and file: promoted as root (modes bind no root), else refused once."""
    # A folder and a file with mode 000. As root the daemon reads them as `cp` would (root ignores
    # modes), so both are promoted; as another user each is refused once with "permission denied"
    # (the folder's watch failing too, a watch.error), and the rest of the run is promoted.
    out = arena.out("mode000")
    write(out / "closed" / "inside.txt", "inside")
    write(out / "locked.txt", "locked")
    write(out / "open.txt", "open")
    os.chmod(out / "locked.txt", 0)
    os.chmod(out / "closed", 0)  # left so: restored, it would be owed with no event to say so
    d.wait_entry("mode000", "open.txt")
    if is_root():
        d.wait_entry("mode000", "closed/inside.txt")
        d.wait_entry("mode000", "locked.txt")
        check(arena, d)
        return
    assert rejected(d, "mode000", "locked.txt") == "permission denied"
    # the folder is refused on the way to its file (events) or as a folder (catch-up)
    wait_until(lambda: [e for e in d.events("artifact.rejected", run_id="mode000")
                        if e["filename"].startswith("closed/")], what="closed/ refused")
    for line in d.events("artifact.rejected", run_id="mode000"):
        assert line["reason"] == "permission denied"
    check(arena, d, allow_errors={"watch.error"})


# -- names -----------------------------------------------------------------------------

NAMES = [
    "with space.txt", " leading and trailing ", "résumé 📊 данные.csv", "line\nbreak.txt",
    "tab\there", "x" * 251 + ".txt", "é" * 127 + "z", "d" * 255 + "/" + "f" * 255,
    "metadata.json", "a..b", "-rf", "back\\slash", "%2e%2e", "sub/metadata.json",
]


def test_strange_names_are_promoted_under_their_own_names(arena: Arena, d: Daemon) -> None:
    """Spaces, unicode, newlines, tabs and 255-byte names are promoted under their own names."""
    # Spaces, unicode, a newline, a tab, 255-byte components, names that look like the store's own
    # or like options are promoted byte for byte under those names.
    out = arena.out("names")
    for i, name in enumerate(NAMES):
        write(out / name, f"{i}:{name}")
    for i, name in enumerate(NAMES):
        entry = d.wait_entry("names", name)
        assert entry["sha256"] == sha(f"{i}:{name}".encode())
        assert (arena.artifacts / "names" / "files" / name).read_text() == f"{i}:{name}"
    check(arena, d)


def test_a_name_that_is_not_utf8_is_refused_and_harms_nothing(arena: Arena, d: Daemon) -> None:
    """A file name that is not UTF-8 is refused, and its batch-mates are promoted."""
    # A file name of bytes that are not UTF-8 cannot be a metadata.json string: it is refused
    # (artifact.rejected), its neighbours are promoted, and nothing is copied for it.
    out = arena.out("bad-bytes")
    out.mkdir(parents=True)
    bad = os.fsencode(out) + b"/caf\xe9-\xff.txt"
    with open(bad, "wb") as fh:
        fh.write(b"latin-1")
    write(out / "good.txt", "good")
    d.wait_entry("bad-bytes", "good.txt")
    reason = rejected(d, "bad-bytes", os.fsdecode(b"caf\xe9-\xff.txt"))
    assert "UTF-8" in reason
    check(arena, d)


BAD_RUN_IDS = ["bad run!", ".hidden", "-dash", "r" * 129, "ünïcode", "new\nline", "a:b"]


def test_invalid_run_ids_are_ignored_with_one_warning_each(arena: Arena, d: Daemon) -> None:
    """Folders under sessions/ that are not run ids are ignored, with one warning each."""
    # Folders under sessions/ whose names are not run ids are ignored, each with exactly one
    # run.ignored warning however many events they make, and no file in them is opened.
    for name in BAD_RUN_IDS:
        for i in range(3):
            write(arena.sessions / name / "output" / f"f{i}.txt", str(i))
    write(arena.out("after-bad") / "ok.txt", "ok")
    d.wait_entry("after-bad", "ok.txt")
    for name in BAD_RUN_IDS:
        d.wait_log("run.ignored", name=name)
        assert len(d.events("run.ignored", name=name)) == 1, name
        assert not (arena.artifacts / name).exists()
        if arena.monitor is not None:
            arena.monitor.settle()
            inside = str(arena.sessions / name) + "/"
            touched = [a for a in arena.monitor.accesses if a.pid in arena.pids
                       and a.path.startswith(inside) and not os.path.isdir(a.path)]
            assert touched == [], touched  # folders are listed by watchdog's walk of a new one
    check(arena, d)


# -- time stamps (issue 17) ---------------------------------------------------------------

FAR_FUTURE_NS = 300_000_000_000 * 10**9  # `touch -d @300000000000`: the year 11476
NEGATIVE_YEAR_NS = -100_000_000_000 * 10**9  # about the year -1200
YEAR_2100_NS = 4_102_444_800 * 10**9
YEAR_ONE_NS = -62_135_596_800 * 10**9  # 0001-01-01T00:00:00Z, datetime.min


def staged(arena: Arena, run_id: str, name: str, data: str, mtime_ns: int | None = None) -> Path:
    """Write a file beside output/, set its time, then rename it in (a rename counts as
    written and keeps the time): the daemon meets the file with its final time."""
    path = write(arena.sessions / run_id / "stage" / name, data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    target = arena.out(run_id) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    return target


def cli(arena: Arena, d: Daemon, *args: str,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `promoter ARGS` on the arena like an operator would, held to the same rules."""
    proc = subprocess.Popen([sys.executable, "-m", "promoter", *args, "--root", str(arena.root),
                             "--config", str(d.cfgfile)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    arena.pids.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"promoter {' '.join(args)} still running after {timeout} s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_out_of_range_time_stamps_cost_only_their_own_file(arena: Arena, d: Daemon) -> None:
    """A time stamp datetime cannot hold (the year 11476, a negative year) refuses that file
    alone; its run's other files are promoted, and `promoter reconcile` exits 0."""
    staged(arena, "far-times", "far.txt", "far", FAR_FUTURE_NS)
    staged(arena, "far-times", "ancient.txt", "ancient", NEGATIVE_YEAR_NS)
    staged(arena, "far-times", "good.txt", "good")
    d.wait_entry("far-times", "good.txt")
    for name in ("far.txt", "ancient.txt"):
        if not file_time_in_range(os.lstat(arena.out("far-times") / name).st_mtime_ns):
            assert rejected(d, "far-times", name) == "modification time out of range"
    done = cli(arena, d, "reconcile")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    check(arena, d)


def test_a_file_dated_before_the_year_1000_is_promoted_with_valid_metadata(
        arena: Arena, d: Daemon) -> None:
    """`touch -d @-62135596800` (the year 1, which tmpfs keeps): the file is promoted with
    a four-digit year, and its run's metadata is not set aside again at every read."""
    staged(arena, "year-one", "first.txt", "first", YEAR_ONE_NS)
    staged(arena, "year-one", "good.txt", "good")
    d.wait_entry("year-one", "good.txt")
    entry = d.wait_entry("year-one", "first.txt")
    if os.lstat(arena.out("year-one") / "first.txt").st_mtime_ns == YEAR_ONE_NS:
        assert entry["generated_at"] == "0001-01-01T00:00:00Z"
    assert cli(arena, d, "show", "year-one").returncode == 0
    assert d.events("metadata.recovered", run_id="year-one") == []
    assert [n for n in os.listdir(arena.artifacts / "year-one") if "corrupt" in n] == []
    check(arena, d)


def test_a_future_mtime_brings_no_deleted_run_or_artifact_back(arena: Arena, d: Daemon) -> None:
    """A file dated 2100 whose run (or artifact) a person deleted stays deleted: 'written
    after' is judged by ctime (DESIGN §1); `promoter reconcile` neither resurrects nor waits."""
    staged(arena, "fut-del", "f.txt", "f", YEAR_2100_NS)
    staged(arena, "fut-rm", "a.txt", "a", YEAR_2100_NS)
    staged(arena, "fut-rm", "b.txt", "b")
    d.wait_entry("fut-del", "f.txt")
    d.wait_entry("fut-rm", "a.txt")
    d.wait_entry("fut-rm", "b.txt")
    assert cli(arena, d, "rm", "fut-del").returncode == 0
    assert cli(arena, d, "rm", "fut-rm", "a.txt").returncode == 0
    started = time.monotonic()
    done = cli(arena, d, "reconcile", "--json")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20
    assert '"promoted": 0' in done.stdout, done.stdout
    assert not (arena.artifacts / "fut-del").exists()
    meta = d.meta("fut-rm")
    assert meta is not None and [a["filename"] for a in meta["artifacts"]] == ["b.txt"]
    check(arena, d)



# -- depth (issue 17) ----------------------------------------------------------------------


def deep_folder(arena: Arena, top: Path, levels: int, file: str = "") -> Path:
    """`top/d/d/...` `levels` folders deep, made by `mkdir -p` (os.makedirs recurses), with
    `file` at the bottom. Made by other processes and waited for by the access monitor, so
    that it knows every folder's path before promoter removes them."""
    path = top / "/".join(["d"] * levels)
    subprocess.run(["mkdir", "-p", str(path)], check=True)
    if file:
        subprocess.run(["touch", str(path / file)], check=True)
    if arena.monitor is not None:
        arena.monitor.settle()
    return path


def test_a_deep_folder_costs_only_its_own_run(arena: Arena, d: Daemon) -> None:
    """1,200 nested folders in one output: the folder past watch.max_depth (64) is refused
    with its reason, files down to 64 levels are promoted, and watching goes on for all."""
    out = arena.out("deep-watch")
    write(out / "top.txt", "top")
    d.wait_entry("deep-watch", "top.txt")
    try:
        write(deep_folder(arena, out, 1200) / "bottom.txt", "bottom")
        write(out / ("d/" * 64) / "at-64.txt", "64")
        reason = rejected(d, "deep-watch", "d/" * 65)
        assert reason == "deeper than watch.max_depth (64 folders)"
        d.wait_entry("deep-watch", "d/" * 64 + "at-64.txt")
        write(out / "later.txt", "later")  # the run itself is still watched
        d.wait_entry("deep-watch", "later.txt")
        check(arena, d)
    finally:
        remove_tree(arena.sessions / "deep-watch")


def test_a_deep_artifact_path_never_breaks_deletion_or_start_up(arena: Arena, d: Daemon) -> None:
    """A 1,000-level tree in a run's copy (from a store made with a larger bound) and one left
    in the trash: `promoter rm` and the start-up of a command empty them, exit 0."""
    write(arena.out("deep-rm") / "a.txt", "a")
    d.wait_entry("deep-rm", "a.txt")
    deep_folder(arena, arena.artifacts / "deep-rm" / "files", 1000, "x.txt")
    trash = arena.artifacts / ".trash"
    deep_folder(arena, trash / "left-over", 1000, "x.txt")
    try:
        done = cli(arena, d, "rm", "deep-rm")
        assert done.returncode == 0, done.stderr
        assert not (arena.artifacts / "deep-rm").exists()
        assert list(trash.iterdir()) == []
        deep_folder(arena, trash / "left-over-2", 1000, "x.txt")
        done = cli(arena, d, "reconcile")  # start-up: prepare_store empties the trash
        assert done.returncode == 0, done.stderr
        assert list(trash.iterdir()) == []
        check(arena, d)
    finally:
        remove_tree(arena.artifacts / "deep-rm")
        for leftover in trash.iterdir():
            remove_tree(leftover)


# -- what agents append (issue 17) ----------------------------------------------------------

FLOOD_NAMES = 200_000


def rss_bytes(pid: int) -> int:
    """The process's resident memory now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_attribution_of_many_made_up_names_is_held_in_bounded_memory(arena: Arena,
                                                                      d: Daemon) -> None:
    """200,000 distinct names in attribution.jsonl, none a file: the daemon's memory stays
    within a bound (only names of files or entries are kept), real lines still apply."""
    run = "attr-flood"
    write(arena.out(run) / "first.txt", "first")
    d.wait_entry(run, "first.txt")
    before = rss_bytes(d.proc.pid)
    lines = b"".join(b'{"filename": "ghost-%d.png", "agent_id": "agent-%d"}\n' % (i, i)
                     for i in range(FLOOD_NAMES))
    write(arena.sessions / run / "attribution.jsonl",
          lines + b'{"filename": "first.txt", "agent_id": "writer"}\n'
          + b'{"filename": "real.txt", "agent_id": "the-agent"}\n')
    write(arena.out(run) / "real.txt", "real")
    d.wait_entry(run, "real.txt", timeout=60, check=lambda e: e["agent_id"] == "the-agent")
    d.wait_entry(run, "first.txt", timeout=60, check=lambda e: e["agent_id"] == "writer")
    grown = rss_bytes(d.proc.pid) - before
    assert grown < 16 << 20, f"the daemon grew {grown >> 20} MiB"
    with (arena.sessions / run / "attribution.jsonl").open("ab") as fh:  # read from the offset
        fh.write(b'{"filename": "late.txt", "agent_id": "late-agent"}\n')
    write(arena.out(run) / "late.txt", "late")
    d.wait_entry(run, "late.txt", check=lambda e: e["agent_id"] == "late-agent")
    check(arena, d)

# -- last: a restart over everything above ------------------------------------------


def test_a_restart_catches_up_every_hostile_tree_safely(arena: Arena, d: Daemon) -> None:
    """A restart's catch-up walks every hostile tree above: nothing outside read, nothing new."""
    # Events brought the trees above to the first daemon; the start-up catch-up of a second
    # one meets them all at once by walking sessions/ (links, special files, bad names and
    # run ids, a run folder that is a link): it promotes nothing new, refuses each refused
    # entry once, and reads nothing outside.
    before = arena.listed()
    assert d.stop() == 0
    again = arena.start(base_config(promote={"max_file_bytes": MAX_FILE}))
    arena.since = 0  # a log of its own
    try:
        line = again.wait_log("reconcile.finished", trigger="startup")
        assert line["promoted"] == 0 and arena.listed() == before
        refused = [(e["run_id"], e["filename"]) for e in again.events("artifact.rejected")]
        assert len(refused) == len(set(refused)), refused
        if (arena.sessions / "link-out").exists():
            assert ("link-out", "output/") in refused
        check(arena, again)
    finally:
        assert again.stop() == 0

"""Helpers for the fault and hostile-input suite (tests/test_faults.py, test_hostile_input.py).

An `Arena` is a storage root for the real `promoter run`: on a tmpfs of its
own when the tests run as root, with a `secrets/` folder beside `sessions/`
that the daemon must never read, and, as root, a fanotify monitor that sees
every open, read, write, creation, deletion, rename and attribute change on
that file system together with the process that made it. `Arena.check()`
asserts the promises of DESIGN §6 after every case:

- contained: the daemon's process opened nothing under `secrets/` (no inode of
  it, whatever the name: hard links too), wrote, created, removed, renamed or
  changed nothing outside `artifacts/` and `library/`; the secret kept its
  bytes, times and access time; no file of the store is a link or a hard link,
  and the secret's bytes are in none of them;
- nothing lost: every regular file quietly finished under an `output/` is
  listed with the sha256 of its bytes; every file under `files/` is listed and
  every entry has its copy; no `.promoter-` temporary is left;
- every metadata.json parses with `promoter.metadata.RunMetadata`;
- the log is JSON lines without a traceback, and the daemon still promotes a
  canary file written at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import select
import stat
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promoter.layout import MARK
from promoter.metadata import RunMetadata
from promoter.names import TEMP_PREFIX, is_excluded, is_valid_run_id
from tests.daemon_helpers import Daemon, base_config, start_daemon, wait_until, write

__all__ = [
    "DEFAULT_EXCLUDE",
    "Access",
    "AccessMonitor",
    "Arena",
    "arena_at",
    "check_logs",
    "exchange",
    "hold_run_lock",
    "hook_env",
    "in_thread",
    "is_root",
    "lock_waiters",
    "remount",
    "remove_tree",
    "sha",
    "snapshot",
    "tmpfs",
    "wait_blocked",
    "walk_tree",
]

DEFAULT_EXCLUDE = (".*", "*.tmp", "*.part", "*.swp", "*~")
FAULT_SITE = Path(__file__).parent / "fault_site"
_libc = ctypes.CDLL(None, use_errno=True)


def walk_tree(top: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk without recursion (os.walk and Path.rglob recurse on Python 3.11, and the
    hostile trees are thousands of folders deep); links are listed, never entered."""
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        yield here, dirs, files
        stack.extend(here / name for name in dirs)


def remove_tree(top: Path) -> None:
    """Remove a tree of any depth without recursion (pytest's own cleanup recurses: a deep
    tree left behind would crash every later pytest run on the machine)."""
    if top.exists() or top.is_symlink():
        subprocess.run(["find", str(top), "-depth", "-delete"], check=False,
                       capture_output=True)


def file_time_in_range(ns: int) -> bool:
    """Whether Python's datetime can hold this file time (DESIGN §6: others are refused)."""
    from promoter.clock import file_time
    return file_time(ns) is not None


def is_root() -> bool:
    return os.geteuid() == 0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hook_env(**hooks: str | int | float) -> dict[str, str]:
    """Environment that loads tests/fault_site/sitecustomize.py into the daemon with these
    hooks (`stall_s=1` becomes FAULTSITE_STALL_S=1; see that file)."""
    path = os.pathsep.join(filter(None, [str(FAULT_SITE), os.environ.get("PYTHONPATH", "")]))
    env = {"PYTHONPATH": path}
    env.update({f"FAULTSITE_{k.upper()}": str(v) for k, v in hooks.items()})
    return env


# -- mounts ------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `path` (root only); unmounted at the end whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True,
                   capture_output=True)


# -- races -------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): neither is ever missing."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                       _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


@contextlib.contextmanager
def hold_run_lock(artifacts: Path, run_id: str) -> Iterator[int]:
    """Hold a run's lock as another promoter process would (`artifacts/.locks/<run_id>`):
    a worker that reaches this run waits until the block ends. Yields the lock's inode."""
    locks = artifacts / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / run_id, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield os.fstat(fd).st_ino
    finally:
        os.close(fd)


def lock_waiters(inode: int) -> set[int]:
    """Processes blocked in flock() on the file with this inode (from /proc/locks)."""
    found: set[int] = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields:
            continue
        rest = fields[fields.index("->") + 1:]  # FLOCK ADVISORY WRITE pid maj:min:inode ...
        if len(rest) >= 5 and rest[4].rsplit(":", 1)[-1] == str(inode):
            found.add(int(rest[3]))
    return found


# -- the fanotify monitor ----------------------------------------------------------------

FAN_ACCESS, FAN_MODIFY, FAN_ATTRIB, FAN_CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
FAN_OPEN, FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x20, 0x40, 0x80, 0x100, 0x200
FAN_Q_OVERFLOW, FAN_ONDIR = 0x4000, 0x40000000
_CONTENT = FAN_OPEN | FAN_ACCESS | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_ONDIR
_ENTRIES = FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_ATTRIB | FAN_ONDIR
_WRITES = FAN_MODIFY | FAN_CLOSE_WRITE | _ENTRIES & ~FAN_ONDIR
_REPORT_DFID_NAME = 0x400 | 0x800
_NOTIF_FLAGS = 0x0 | 0x1 | 0x2 | 0x10  # CLASS_NOTIF | CLOEXEC | NONBLOCK | UNLIMITED_QUEUE
_MARK_ADD_FILESYSTEM = 0x1 | 0x100
_META = struct.Struct("=IBBHQii")
_NAMES = {FAN_ACCESS: "read", FAN_MODIFY: "write", FAN_ATTRIB: "attrib", FAN_CLOSE_WRITE:
          "close_write", FAN_OPEN: "open", FAN_MOVED_FROM: "moved_from", FAN_MOVED_TO:
          "moved_to", FAN_CREATE: "create", FAN_DELETE: "delete"}

_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class Access:
    """One thing a process did to the monitored file system."""

    pid: int
    mask: int
    path: str  # what it was done to (for entries: the folder's path, "/", the name)
    ino: tuple[int, int] | None = None  # content events: (device, inode), whatever the name

    def __str__(self) -> str:
        kinds = "|".join(n for bit, n in _NAMES.items() if self.mask & bit)
        return f"pid {self.pid} {kinds} {self.path!r}"


class AccessMonitor:
    """fanotify over one whole file system, from a thread of its own (root only)."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = str(mountpoint)
        self.accesses: list[Access] = []
        self.overflowed = False
        self._me = os.getpid()
        self._known: dict[bytes, str] = {}  # folder handle -> last path seen, for gone folders
        self._content = self._group(0, _CONTENT)
        self._entries = self._group(_REPORT_DFID_NAME, _ENTRIES)
        self._mount_fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._marker = ""
        self._marked = [threading.Event(), threading.Event()]  # content, entries
        self._thread = threading.Thread(target=self._loop, name="fault-fanotify", daemon=True)
        self._thread.start()

    def _group(self, flags: int, mask: int) -> int:
        fd = int(_libc.fanotify_init(_NOTIF_FLAGS | flags, os.O_RDONLY | os.O_NONBLOCK
                                     | os.O_CLOEXEC | os.O_LARGEFILE))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        if _libc.fanotify_mark(fd, _MARK_ADD_FILESYSTEM, mask, _AT_FDCWD,
                               os.fsencode(self.mountpoint)) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, "fanotify_mark")
        return fd

    def _loop(self) -> None:
        fds = [self._content, self._entries, self._wake_r]
        while True:
            ready, _, _ = select.select(fds, [], [])
            for fd in (self._content, self._entries):
                if fd in ready or self._stopping:
                    self._drain(fd)
            if self._stopping:
                return

    def _drain(self, fd: int) -> None:
        while True:
            try:
                buf = os.read(fd, 1 << 18)
            except BlockingIOError:
                return
            self._parse(buf)

    def _parse(self, buf: bytes) -> None:
        off = 0
        while off + _META.size <= len(buf):
            length, _, _, meta_len, mask, fd, pid = _META.unpack_from(buf, off)
            if mask & FAN_Q_OVERFLOW:
                self.overflowed = True
            if fd >= 0:
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                    if pid != self._me:
                        st = os.fstat(fd)
                        self.accesses.append(Access(pid, mask, path, (st.st_dev, st.st_ino)))
                    elif self._marker and self._marker in path:
                        self._marked[0].set()
                finally:
                    os.close(fd)
            elif length > meta_len:
                # fanotify_event_info_fid: header (4), fsid (8), file_handle, name\0
                info = buf[off + meta_len:off + length]
                handle_bytes, _ = struct.unpack_from("=Ii", info, 12)
                handle = info[12:20 + handle_bytes]
                name = os.fsdecode(info[20 + handle_bytes:].split(b"\0", 1)[0])
                if pid != self._me:
                    self.accesses.append(Access(pid, mask, self._entry_path(handle, name)))
                elif self._marker and name == self._marker:
                    self._marked[1].set()
            off += length

    def _entry_path(self, handle: bytes, name: str) -> str:
        folder = self._known.get(handle, "<gone>")
        fd = int(_libc.open_by_handle_at(self._mount_fd, handle, os.O_PATH | os.O_CLOEXEC))
        if fd >= 0:
            try:
                folder = self._known[handle] = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        return os.path.join(folder, name) if name not in ("", ".") else folder

    def settle(self) -> None:
        """Wait until every event queued so far has been read: a file of our own made now is
        seen by both groups, and each group's queue is in order."""
        for marked in self._marked:
            marked.clear()
        self._marker = f".fault-marker-{os.urandom(4).hex()}"
        marker = Path(self.mountpoint) / self._marker
        marker.write_bytes(b"")
        marker.unlink()
        for marked in self._marked:
            assert marked.wait(10), "the fanotify monitor fell behind"

    def close(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(10)
        for fd in (self._content, self._entries, self._mount_fd, self._wake_r, self._wake_w):
            os.close(fd)


# -- snapshots ---------------------------------------------------------------------------


def _read_noatime(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `top` without following links: kind, mode, size, times (atime too:
    a read moves it, see Arena) and content digest or link target."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            what: str = ""
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = sha(_read_noatime(path))
            found[str(path.relative_to(top))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                 st.st_size, st.st_mtime_ns, st.st_atime_ns, what)
    return found


# -- the arena ---------------------------------------------------------------------------


@dataclass
class Arena:
    """A storage root with secrets beside sessions, for daemons that must keep out of them."""

    root: Path
    monitor: AccessMonitor | None = None
    secret: bytes = field(default_factory=lambda: b"SECRET-" + os.urandom(24).hex().encode())
    daemons: list[Daemon] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)  # processes held to the rules (daemons, CLIs)
    since: int = 0  # log lines before this one belong to earlier cases (a shared daemon)
    baseline: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # secrets/ at setup
    secret_inodes: set[tuple[int, int]] = field(default_factory=set)  # (device, inode)
    _canaries: int = 0

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def library(self) -> Path:
        return self.root / "library"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def setup(self) -> None:
        """secrets/ with a file whose access time is older than its modification time, so that
        any read moves it (relatime), and its inode noted for the monitor."""
        self.sessions.mkdir(parents=True, exist_ok=True)
        write(self.secrets / "secret.txt", self.secret * 64)
        write(self.secrets / "f.txt", self.secret)  # the same name as a session file
        write(self.secrets / "deeper" / "x.txt", self.secret)
        write(self.secrets / "runlike" / "output" / "f.txt", self.secret)  # a run's shape
        for path in self.secrets.rglob("*"):
            if path.is_file():
                st = path.stat()
                os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
        self.baseline = snapshot(self.secrets)
        self.secret_inodes = {_identity(p) for p in [self.secrets, *self.secrets.rglob("*")]}

    def out(self, run_id: str) -> Path:
        return self.sessions / run_id / "output"

    # -- daemons -------------------------------------------------------------------------

    def start(self, config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
              ready: bool = True) -> Daemon:
        d = start_daemon(self.root, config if config is not None else base_config(), env)
        self.daemons.append(d)
        self.pids.add(d.proc.pid)
        if ready:
            d.wait_ready()
        return d

    def close(self) -> None:
        for d in self.daemons:
            d.close()
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None

    def canary(self, d: Daemon, timeout: float = 15.0) -> None:
        """The daemon still promotes: a new file in a new run arrives."""
        self._canaries += 1
        run_id = f"canary-{self._canaries}"
        data = f"canary {self._canaries} {os.urandom(8).hex()}".encode()
        write(self.out(run_id) / "canary.txt", data)
        d.wait_entry(run_id, "canary.txt", timeout=timeout,
                     check=lambda e: e["sha256"] == sha(data))

    # -- what must hold ------------------------------------------------------------------

    def finished_files(self, max_file_bytes: int = 1 << 30,
                       exclude: Iterable[str] = DEFAULT_EXCLUDE,
                       max_depth: int = 64) -> dict[tuple[str, str], str]:
        """(run, filename) -> sha256 of every file promoter owes the store: regular, one link,
        within the size limit, with a UTF-8 name, not excluded, in a valid run, reached
        without a link and with permission to read, at most `max_depth` folders down, with a
        time stamp datetime can hold, and not deleted by a person (a tombstone, `removed`)."""
        owed: dict[tuple[str, str], str] = {}
        patterns = tuple(exclude)
        for run in sorted(os.listdir(self.sessions)):
            top = self.sessions / run / "output"
            if not is_valid_run_id(run) or not stat.S_ISDIR(_lmode(self.sessions / run)) \
                    or not stat.S_ISDIR(_lmode(top)) \
                    or (self.artifacts / ".tombstones" / run).exists():
                continue
            removed = self._removed(run)
            for dirpath, dirnames, filenames in walk_tree(top):  # never follows links
                depth = len(dirpath.relative_to(top).parts)
                if depth >= max_depth:
                    dirnames.clear()
                for name in filenames:
                    path = dirpath / name
                    rel = str(path.relative_to(top))
                    try:
                        rel.encode()
                        st = path.lstat()
                    except (UnicodeEncodeError, OSError):
                        continue
                    if (stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                            and st.st_size <= max_file_bytes and depth <= max_depth
                            and file_time_in_range(st.st_mtime_ns) and rel not in removed
                            and not is_excluded(rel.split("/"), patterns)
                            and os.access(path, os.R_OK)):
                        owed[(run, rel)] = sha(path.read_bytes())
        return owed

    def _removed(self, run: str) -> set[str]:
        with contextlib.suppress(OSError, ValueError):
            meta = RunMetadata.model_validate_json((self.artifacts / run / "metadata.json")
                                                   .read_bytes())
            return {r.filename for r in meta.removed}
        return set()

    def listed(self) -> dict[tuple[str, str], str | None]:
        found: dict[tuple[str, str], str | None] = {}
        for run in os.listdir(self.artifacts):
            path = self.artifacts / run / "metadata.json"
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                meta = RunMetadata.model_validate_json(path.read_bytes())
                for a in meta.artifacts:
                    found[(run, a.filename)] = a.sha256
        return found

    def wait_promoted(self, owed: dict[tuple[str, str], str], timeout: float = 30.0) -> None:
        """Every owed file listed with its digest."""
        def missing() -> list[tuple[str, str]]:
            have = self.listed()
            return [k for k, v in owed.items() if have.get(k) != v]
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not missing(), timeout, interval=0.05, what="owed files")
        assert not missing(), f"not promoted (or wrong digest): {missing()[:10]}"

    def check(self, d: Daemon | None, owed: dict[tuple[str, str], str] | None = None,
              allow_errors: Iterable[str] = (), canary: bool = True,
              tracebacks: bool = False) -> None:
        """Every promise of DESIGN §6 (see the module docstring), then a canary. `allow_errors`:
        error events the case provokes; `tracebacks`: the case injects an exception."""
        if owed is None:
            owed = self.finished_files()
        self.wait_promoted(owed)
        if canary and d is not None:
            self.canary(d)
        self.check_store()
        self.check_contained()
        if d is not None:
            check_logs(d, allow_errors, tracebacks, self.since)

    def check_store(self) -> None:
        """No link, hard link, temporary or secret in the store; metadata valid and complete."""
        for top in (self.artifacts, self.library):
            for dirpath, dirnames, filenames in walk_tree(top):
                for name in dirnames + filenames:
                    path = dirpath / name
                    try:
                        st = path.lstat()
                    except FileNotFoundError:
                        # a run's mark is removed once its entries are written: it may go
                        # between the listing and this look (any other name must stay)
                        if name == MARK:
                            continue
                        raise
                    assert not stat.S_ISLNK(st.st_mode), f"a link in the store: {path}"
                    assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), path
                    assert not name.startswith(TEMP_PREFIX), f"a temporary left: {path}"
                    assert os.path.realpath(path).startswith(str(top) + os.sep), path
                    if stat.S_ISREG(st.st_mode):
                        assert st.st_nlink == 1, f"a hard link in the store: {path}"
                        assert (st.st_dev, st.st_ino) not in self.secret_inodes, path
                        try:
                            body = _read_noatime(path)
                        except FileNotFoundError:
                            if name == MARK:  # gone between its lstat and this read
                                continue
                            raise
                        assert self.secret not in body, f"the secret in {path}"
        for run in os.listdir(self.artifacts):
            if run.startswith("."):
                continue
            path = self.artifacts / run / "metadata.json"
            if not path.exists():  # a first copy that never completed: no run, nothing stored
                assert not [f for _, _, fs in walk_tree(self.artifacts / run) for f in fs], run
                continue
            meta = RunMetadata.model_validate_json(path.read_bytes())
            assert meta.run_id == run
            names = [a.filename for a in meta.artifacts]
            assert len(names) == len(set(names)), f"duplicate entries in {run}"
            for a in meta.artifacts:
                copy = self.artifacts / run / a.path
                assert a.path == f"files/{a.filename}"
                data = copy.read_bytes()
                assert (len(data), sha(data)) == (a.size_bytes, a.sha256), copy
            files = self.artifacts / run / "files"
            stored = {str((here / f).relative_to(files)) for here, _, fs in walk_tree(files)
                      for f in fs}
            assert stored == set(names), f"unlisted copies in {run}: {stored - set(names)}"

    def check_contained(self) -> None:
        """Nothing outside artifacts/ and library/ read or written by the processes held to
        the rules; the secrets exactly as they were (access times included)."""
        assert snapshot(self.secrets) == self.baseline, "secrets/ changed or was read"
        if self.monitor is None:
            return
        self.monitor.settle()
        assert not self.monitor.overflowed, "the fanotify monitor overflowed: cannot tell"
        bad = [f"{a}: {why}" for a in self.monitor.accesses
               if a.pid in self.pids and (why := self._breaks_rules(a))]
        assert not bad, "outside artifacts/ and library/:\n" + "\n".join(bad[:20])

    def _breaks_rules(self, a: Access) -> str:
        """Why this access breaks DESIGN §6, or "" when it does not."""
        writable = (str(self.artifacts) + os.sep, str(self.library) + os.sep)
        readable = (*writable, str(self.sessions) + os.sep)
        made = (str(self.artifacts), str(self.library), str(self.sessions))  # created if missing
        if a.ino is not None and a.ino in self.secret_inodes:
            return "a secret's inode"
        if a.path.startswith(str(self.secrets)):
            return "in secrets/"
        if a.mask & _WRITES:
            if a.path.startswith(writable) or (a.mask & (FAN_CREATE | FAN_ATTRIB)
                                               and a.path in made):
                return ""
            return "a change outside the store"
        if a.path.startswith(readable) or a.path in (str(self.root), *made):
            return ""
        return "a read outside sessions/ and the store"

    def opened(self, path: Path) -> list[Access]:
        """What the processes held to the rules did to the file now at `path` (by inode)."""
        assert self.monitor is not None
        self.monitor.settle()
        ino = _identity(path)
        return [a for a in self.monitor.accesses if a.pid in self.pids and a.ino == ino]


def _identity(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def _lmode(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except OSError:
        return 0


TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def check_logs(d: Daemon, allow_errors: Iterable[str] = (), tracebacks: bool = False,
               since: int = 0) -> None:
    """Every line JSON, no traceback anywhere, no error beyond the ones the case expects
    (from line `since` on)."""
    text = d.stderr_path.read_text()
    assert tracebacks or not TRACEBACK.search(text), "a traceback in the log"
    allowed = set(allow_errors)
    for line in d.logs()[since:]:
        assert tracebacks or "exception" not in line, line
        if line.get("level") in ("error", "critical"):
            assert line["event"] in allowed, line


@contextlib.contextmanager
def arena_at(base: Path) -> Iterator[Arena]:
    """An arena on a tmpfs of its own with the monitor on (root), else a plain folder."""
    root = base / "storage"
    if not is_root():
        arena = Arena(root)
        arena.setup()
        try:
            yield arena
        finally:
            arena.close()
            remove_tree(root)  # deep trees: never left to pytest's recursive cleanup
        return
    with tmpfs(root, "512m"):
        arena = Arena(root, AccessMonitor(root))
        try:
            arena.setup()
            yield arena
        finally:
            arena.close()
            remove_tree(root)  # a deep tree also slows the unmount; and never a leftover


def wait_blocked(inode: int, pid: int, timeout: float = 10.0) -> None:
    """Until process `pid` waits for the run lock with this inode (a worker reached it)."""
    wait_until(lambda: pid in lock_waiters(inode), timeout, interval=0.005,
               what=f"pid {pid} waiting on the run lock")


def in_thread(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


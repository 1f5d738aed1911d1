"""Test-only hooks for a `promoter run` under test; nothing in promoter imports this.

`tests/fault_helpers.hook_env()` puts this folder first on the daemon's
PYTHONPATH, so Python runs it at start-up, before promoter is imported and
while the process has one thread. Each hook is asked for by an environment
variable (removed once read) and changes as little as it can:

- `FAULTSITE_USERNS_WATCHES=N`: move into a user namespace of our own (root
  mapped to root, so file access is unchanged) and set its inotify watch limit
  to N: `inotify_add_watch` then fails with the kernel's real ENOSPC for this
  process only, while the machine's limit stays as it is.
  `FAULTSITE_USERNS_INSTANCES=N`: the same for the inotify instance limit (EMFILE).
- `FAULTSITE_STALL_S=S`: the pipeline's stall bound (120 s in production) is S,
  so a test sees the systemd watchdog pings stop within seconds.
- `FAULTSITE_WORKER_RAISE=PREFIX`: `Store.promote_files` raises RuntimeError for
  any batch that holds a file whose base name starts with PREFIX.
- `FAULTSITE_WATCH_FAULTS=raise,kill,overflow,nowatch`: the watcher misbehaves for
  files named `fault-*` (see watch_faults.py beside this file).
- `FAULTSITE_LIST_PAUSE=PREFIX:DIR`: the first time the watcher's inotify reader thread
  lists a folder whose name starts with PREFIX, it writes DIR/<name>.listed once the
  listing is done and waits (10 s at most) for DIR/<name>.go: a test makes folders in
  that window, between a folder's listing and what the reader does next.
- `FAULTSITE_EXIT_HANG=1`: a non-daemon thread `faultsite-hang` that never ends, as a
  thread stuck in the kernel would hold the interpreter's exit; with
  `FAULTSITE_STOP_GUARD_S=S` the stop guard's bound is S (production: 25 s).
- `FAULTSITE_REPAIR_WAIT=PATH`: the start-up repair waits (30 s at most) until PATH
  exists, so a test can write files while it runs.
- `FAULTSITE_CATCHUP_WAIT=PATH`: the start-up catch-up waits (30 s at most, deaf to the
  stop as a long copy is) until PATH exists.
- `FAULTSITE_REPAIR_RUN_S=S`: the start-up repair takes S seconds more for each run, as a
  large store on a slow disk would.
- `FAULTSITE_LISTED=PATH`: the start-up child writes PATH once its listing is made, saying
  whether the daemon's module was imported when it was forked ("daemon" / "early").
- `FAULTSITE_WATCH_WAIT=PATH`: the watcher's start waits (30 s at most) until PATH exists.
- `FAULTSITE_CHILD_STOPS=1`: the start-up child stops itself (SIGSTOP) before it arranges
  to die with the daemon (PR_SET_PDEATHSIG).
- `FAULTSITE_IMPORT_WAIT=PATH`: the import of promoter.daemon waits (30 s at most) until
  PATH exists (a SIGTERM in that wait is one during the imports).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

CLONE_NEWUSER = 0x10000000


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _own_user_namespace(watches: int | None, instances: int | None = None) -> None:
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    if watches is not None:
        _write("/proc/sys/user/max_inotify_watches", str(watches))
    if instances is not None:
        _write("/proc/sys/user/max_inotify_instances", str(instances))


def _raise_on(prefix: str) -> None:
    from promoter.store import Store

    original = Store.promote_files

    def promote_files(self: Store, run_id: str, filenames: Iterable[str]) -> Any:
        names = list(filenames)
        if any(n.rsplit("/", 1)[-1].startswith(prefix) for n in names):
            raise RuntimeError(f"injected: a worker error on {prefix}*")
        return original(self, run_id, names)

    Store.promote_files = promote_files  # type: ignore[method-assign]


class _Listed:
    """What os.scandir returns, from a listing already made."""

    def __init__(self, entries: list[Any]) -> None:
        self._it = iter(entries)

    def __enter__(self) -> _Listed:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> _Listed:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def close(self) -> None:
        return None


def _pause_after_listing(prefix: str, folder: str) -> None:
    import threading
    import time

    real = os.scandir
    paused: set[str] = set()

    def scandir(path: Any = ".") -> Any:
        it = real(path)
        if threading.current_thread().name != "promoter-watch-inotify" or isinstance(path, int):
            return it  # (a folder's descriptor: the catch-up lists by descriptor)
        name = os.path.basename(os.fsdecode(path))
        if not name.startswith(prefix) or name in paused:
            return it
        paused.add(name)
        with it:
            entries = list(it)
        _write(os.path.join(folder, f"{name}.listed"), "")
        go = os.path.join(folder, f"{name}.go")
        deadline = time.monotonic() + 10
        while not os.path.exists(go) and time.monotonic() < deadline:
            threading.Event().wait(0.005)
        return _Listed(entries)

    os.scandir = scandir


def _hang_at_exit() -> None:
    import threading

    def hang_forever() -> None:
        threading.Event().wait()

    threading.Thread(target=hang_forever, name="faultsite-hang", daemon=False).start()


def _repair_waits(path: str) -> None:
    import time

    import promoter.startup

    original = promoter.startup._repair_all

    def _repair_all(store: Any, *args: Any) -> bool:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return original(store, *args)

    promoter.startup._repair_all = _repair_all


def _repair_slowly(seconds: float) -> None:
    import time

    from promoter.store import Store

    original = Store.repair

    def repair(self: Store, run_id: str, *args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return original(self, run_id, *args, **kwargs)

    Store.repair = repair  # type: ignore[method-assign]


def _catchup_waits(path: str) -> None:
    import time

    import promoter.loops

    original = promoter.loops.reconcile

    def reconcile(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return original(*args, **kwargs)

    promoter.loops.reconcile = reconcile


def _wait_for(path: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def _listed_marker(path: str) -> None:
    import promoter.prescan

    original = promoter.prescan._listing

    def _listing(*args: Any) -> Any:
        found = original(*args)
        _write(f"{path}.part", "daemon" if "promoter.daemon" in sys.modules else "early")
        os.rename(f"{path}.part", path)  # (whole when it appears)
        return found

    promoter.prescan._listing = _listing


def _watch_waits(path: str) -> None:
    import promoter.watch

    original = promoter.watch.Watcher.start

    def start(self: Any) -> None:
        _wait_for(path)
        original(self)

    promoter.watch.Watcher.start = start  # type: ignore[method-assign]


def _import_waits(path: str) -> None:
    import importlib.abc

    class Gate(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *_: Any) -> None:
            if name == "promoter.daemon":
                sys.meta_path.remove(self)
                _wait_for(path)
            return None  # the usual finders find it

    sys.meta_path.insert(0, Gate())


def _child_stops() -> None:
    import promoter.prescan

    original = promoter.prescan._die_with_parent

    def _die_with_parent(parent: int) -> None:
        os.kill(os.getpid(), 19)  # SIGSTOP before its prctl, as a stop in those microseconds
        original(parent)

    promoter.prescan._die_with_parent = _die_with_parent


def _hook(name: str, install: Callable[[str], None]) -> None:
    """Install one hook whose variable carries its argument (a gate or marker path)."""
    value = os.environ.pop(name, "")
    if value:
        install(value)


def _install() -> None:
    watches = os.environ.pop("FAULTSITE_USERNS_WATCHES", "")
    instances = os.environ.pop("FAULTSITE_USERNS_INSTANCES", "")
    if watches or instances:
        _own_user_namespace(int(watches) if watches else None,
                            int(instances) if instances else None)
    stall = os.environ.pop("FAULTSITE_STALL_S", "")
    if stall:
        import promoter.pipeline

        promoter.pipeline.STALL_S = float(stall)  # read by promoter.daemon when it is imported
    prefix = os.environ.pop("FAULTSITE_WORKER_RAISE", "")
    if prefix:
        _raise_on(prefix)
    _hook("FAULTSITE_CATCHUP_WAIT", _catchup_waits)
    slow = os.environ.pop("FAULTSITE_REPAIR_RUN_S", "")
    if slow:
        _repair_slowly(float(slow))
    _hook("FAULTSITE_REPAIR_WAIT", _repair_waits)
    faults = os.environ.pop("FAULTSITE_WATCH_FAULTS", "")
    if faults:
        from watch_faults import install  # this folder is first on the path

        install(set(faults.split(",")))
    pause = os.environ.pop("FAULTSITE_LIST_PAUSE", "")
    if pause:
        prefix, folder = pause.split(":", 1)
        _pause_after_listing(prefix, folder)
    if os.environ.pop("FAULTSITE_EXIT_HANG", ""):
        _hang_at_exit()
    _hook("FAULTSITE_LISTED", _listed_marker)
    _hook("FAULTSITE_WATCH_WAIT", _watch_waits)
    if os.environ.pop("FAULTSITE_CHILD_STOPS", ""):
        _child_stops()
    _hook("FAULTSITE_IMPORT_WAIT", _import_waits)
    guard = os.environ.pop("FAULTSITE_STOP_GUARD_S", "")
    if guard:
        import promoter.stopguard

        promoter.stopguard.STOP_GUARD_S = float(guard)  # read when the guard is armed


_install()

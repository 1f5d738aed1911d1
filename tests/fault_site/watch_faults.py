"""Test-only watcher faults, injected from outside promoter (nothing in promoter imports this).

`install(kinds)` makes the watcher misbehave for files named `fault-*`, as the
failures promoter works around would (DESIGN §5):

- `raise`: the handler raises for `fault-raise*` (caught by its guard: a catch-up);
- `kill`: the handler's error for `fault-kill*` escapes into the thread that calls it
  (watchdog's emitter) and ends it (the watcher restarts the observer);
- `overflow`: the events of `fault-overflow*` are lost and the kernel's queue
  overflow is reported in their place;
- `nowatch`: a folder named `fault-nowatch*` cannot be watched (ENOSPC).

In a daemon under test it is installed by sitecustomize.py (FAULTSITE_WATCH_FAULTS);
an in-process test passes pytest's `monkeypatch.setattr` so that it is undone.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Collection
from typing import Any

Setter = Callable[[Any, str, Any], None]


class InjectedDeath(BaseException):
    """Escapes the handler's guard, as an unguarded handler's error would."""


def install(kinds: Collection[str], setattr_: Setter = setattr) -> None:
    from promoter import observers, watch

    handler = watch._Handler
    dispatch, apply = handler.dispatch, handler._apply

    def faulty_dispatch(self: Any, event: Any) -> None:
        if "kill" in kinds and not event.is_directory and os.path.basename(
                str(event.src_path)).startswith("fault-kill"):
            self.seen += 1
            raise InjectedDeath("injected: the handler's error kills the dispatcher thread")
        dispatch(self, event)

    def faulty_apply(self: Any, kind: str, parts: list[str], is_dir: bool) -> None:
        if parts and "raise" in kinds and parts[-1].startswith("fault-raise"):
            raise RuntimeError("injected: a handler error")
        if parts and "overflow" in kinds and parts[-1].startswith("fault-overflow"):
            return  # injected: these events are lost (see the reader below)
        apply(self, kind, parts, is_dir)

    closed = handler.closed

    def faulty_closed(self: Any, path: str) -> None:  # the emitter's shortcut for a close
        if "kill" in kinds and os.path.basename(path).startswith("fault-kill"):
            self.seen += 1
            raise InjectedDeath("injected: the handler's error kills the dispatcher thread")
        closed(self, path)

    setattr_(handler, "dispatch", faulty_dispatch)
    setattr_(handler, "closed", faulty_closed)
    setattr_(handler, "_apply", faulty_apply)
    if "nowatch" in kinds:
        from watchdog.observers.inotify_c import InotifyFD

        add_callback = InotifyFD.add_callback

        def faulty_add(self: Any, path: bytes, *args: Any) -> Any:
            if os.path.basename(os.fsdecode(path)).startswith("fault-nowatch"):
                raise OSError(errno.ENOSPC, "inotify watch limit reached")
            return add_callback(self, path, *args)

        # below promoter's reader, where the kernel's refusal would come from
        setattr_(InotifyFD, "add_callback", faulty_add)
    if "overflow" in kinds:
        setattr_(observers, "_inotify_classes", _overflowing(observers._inotify_classes))


def _overflowing(original: Callable[[], tuple[Any, Any]]) -> Callable[[], tuple[Any, Any]]:
    """promoter's inotify reader, losing the events of fault-overflow* behind an overflow."""

    def classes() -> tuple[Any, Any]:
        from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

        fd_class, emitter_class = original()

        class OverflowingInotifyFD(fd_class):  # type: ignore[misc, valid-type]
            def handle_event(self, event: Any) -> None:
                if event.name.startswith(b"fault-overflow"):
                    # lose the file's events, then overflow as the kernel does; at its close,
                    # which is never superseded (its creation may be: inotify.superseded)
                    if event.is_close_write:
                        super().handle_event(InotifyEvent(WatchDescriptor(-1),
                                                          InotifyConstants.IN_Q_OVERFLOW, 0, b""))
                    return
                super().handle_event(event)

        return OverflowingInotifyFD, emitter_class

    return classes

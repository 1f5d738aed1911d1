"""One walk over a folder tree, for the catch-up and for recovery (DESIGN §6, issue 15).

`reconcile.scan_run` (a run's `output/`) and `recovery.walk_files` (a run's
`files/`) walked alike, each with its own code; this is the one walk both use.
It never follows a link (every folder is opened with `O_NOFOLLOW` relative to the
top), its stack is explicit and holds names, not descriptors (a folder of
thousands of sub-folders holds one descriptor open, not thousands), and each
folder is listed once with `os.scandir`, whose entries carry their type (no
system call to tell a folder) and cache the one `lstat` a caller asks for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from promoter.safeio import Refused, open_dir_chain

__all__ = ["Folder", "walk_tree"]


@dataclass
class Folder:
    """One folder of the walk: its path below the top ("" or "a/b/"), an open descriptor
    (valid until the walk resumes) and its entries. The caller names in `enter` the
    sub-folders to walk into (the walk enters none by itself)."""

    prefix: str
    fd: int
    entries: list[os.DirEntry[str]]
    enter: list[str] = field(default_factory=list)


def walk_tree(top: int,
              on_error: Callable[[str, OSError | Refused], None] | None = None,
              ) -> Iterator[Folder]:
    """Every folder from `top` down that the caller entered, depth first. A folder that
    cannot be opened or listed (gone, swapped for a link, permission denied) is passed to
    `on_error` with its prefix and skipped; the walk goes on."""
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            fd = open_dir_chain(top, prefix.split("/")[:-1])
        except (OSError, Refused) as exc:
            if on_error is not None:
                on_error(prefix, exc)
            continue
        try:
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
            except OSError as exc:
                if on_error is not None:
                    on_error(prefix, exc)
                continue
            folder = Folder(prefix, fd, entries)
            yield folder
            stack.extend(f"{prefix}{name}/" for name in reversed(folder.enter))
        finally:
            os.close(fd)

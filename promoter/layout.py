"""The names promoter gives things on the local disk (DESIGN §1), in one place.

    sessions/<run_id>/output/<relpath>          what agents write (read only)
    sessions/<run_id>/run.json, attribution.jsonl
    artifacts/<run_id>/metadata.json            one run's metadata, replaced atomically
    artifacts/<run_id>/files/<relpath>          the stored copies
    artifacts/<run_id>/.unlisted                a write into files/ under way or cut short
    artifacts/<run_id>/.listed                  the same empty file at rest (runmark.py)
    artifacts/.repaired                         the marks above are trusted (runmark.py)
    artifacts/.locks/<run_id>                   the run's lock (flock)
    artifacts/.tombstones/<run_id>              a deleted run that must not come back
    artifacts/.trash/                           runs being removed

The object store's keys are named in `s3layout.py`.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["CONTEXT_FILES", "FILES", "LOCKS", "MARK", "MARK_AT_REST", "METADATA", "OUTPUT",
           "REPAIRED", "TOMBSTONES", "TRASH", "session_file"]

METADATA: Final = "metadata.json"
FILES: Final = "files"
LOCKS: Final = ".locks"
MARK: Final = ".unlisted"
MARK_AT_REST: Final = ".listed"
REPAIRED: Final = ".repaired"
TRASH: Final = ".trash"
TOMBSTONES: Final = ".tombstones"
OUTPUT: Final = "output"
CONTEXT_FILES: Final = ("run.json", "attribution.jsonl")


def session_file(sessions: str | os.PathLike[str], run_id: str, filename: str) -> str:
    """The path of a session file (for a `stat`; copies go through descriptors)."""
    return f"{os.fspath(sessions)}/{run_id}/{OUTPUT}/{filename}"

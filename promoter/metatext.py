"""metadata.json's bytes, made in the time of a batch's new entries, not of its run's size
(issue 15, ninth round).

Every batch rewrites its run's whole metadata.json (DESIGN §2: one valid file, replaced).
Each entry's text was made once already (seventh round), but each batch still looked
every entry's text up, joined them and encoded the whole: O(run) a batch, and a run past
the text cache's 8,192 entries was dumped by pydantic whole, 50 ms a batch at 10,000.

So each run's last written list of entries is kept with the document written (`_Block`:
where each entry's text ends in it, the running total of their sizes). A new list that
starts with the same entry objects (`upsert_many` keeps the old ones first and adds the
batch's at the end) reuses that text whole (one C-speed identity pass, one copy), and only
its new entries are written; one that differs earlier (an entry replaced or removed)
reuses the text of each entry it still holds, found through a map of their ids. An
entry is never changed once made (the rules make new ones; the parse sets its zone before
anything is written), and the block holds the entry objects it was made from, so an
identity check is exact: a stale text can never be written, whatever the disk holds.
The head (every field but the entries) is pydantic's, made anew each time. The models are
`Any` here: metadata.py's `to_json` is made by this module (no import circle).
"""

from __future__ import annotations

import operator
import threading
from typing import Any, NamedTuple

from promoter.entrytext import ascii_entry_text

__all__ = ["BLOCK_ENTRIES", "KEEP_BLOCKS", "Rendered", "RunTexts", "entry_text", "render_fresh"]

BLOCK_ENTRIES = 8_192  # entries whose text is kept over every run (~3 MB of text)
KEEP_BLOCKS = 8  # the runs written last keep their text whatever their size (a big run)
_EMPTY_ARTIFACTS = '\n  "artifacts": [],\n'
_SEP = b",\n"


class Rendered(NamedTuple):
    """A document's bytes and the sum of its entries' sizes (`total_bytes`, without a
    second pass over the run)."""

    data: bytes
    total_bytes: int


class _Block(NamedTuple):
    """A run's entries as last written: the objects; the document written, in which their
    texts, joined by `_SEP`, start at `base`; the end of each text after `base`; and the
    running total of their sizes. The entries' text is not kept apart: a big run's document
    is made with one copy of its text, not two (each a fresh allocation whose pages fault
    in: 0.4 ms a batch at 1,000 entries)."""

    entries: tuple[Any, ...]
    data: bytes
    base: int
    ends: list[int]
    totals: list[int]


def entry_text(entry: Any) -> bytes:
    """`entry` as it stands in metadata.json's list (indented by two levels)."""
    text = ascii_entry_text(entry)
    if text is None:
        text = "    " + entry.model_dump_json(indent=2).replace("\n", "\n    ")
    return text.encode()


def _block(meta: Any, old: _Block | None) -> _Block:
    """The document of `meta`, reusing `old`'s text of every entry object it holds."""
    entries: list[Any] = meta.artifacts
    held = old.entries if old is not None else ()
    start = len(held) if len(held) <= len(entries) and all(map(operator.is_, entries, held)) \
        else 0  # the common case: the old entries first, in order (one C-speed pass)
    ends = old.ends[:start] if old is not None else []
    totals = old.totals[:start] if old is not None else []
    text = memoryview(old.data)[old.base:] if old is not None else memoryview(b"")
    pieces: list[bytes | memoryview] = [text[:ends[-1]]] if start else []
    # an entry's place in `old`, when the order changed (an entry replaced or removed):
    # `held` keeps each object, so an id is its own
    where = {id(e): i for i, e in enumerate(held)} if start < len(held) else {}
    pos = ends[-1] if ends else -len(_SEP)
    total = totals[-1] if totals else 0
    for entry in entries[start:]:
        i = where.get(id(entry))
        if i is not None and old is not None:
            piece: bytes | memoryview = text[old.ends[i - 1] + len(_SEP) if i else 0:
                                             old.ends[i]]
        else:
            piece = entry_text(entry)
        pieces.append(piece)
        pos += len(_SEP) + len(piece)
        ends.append(pos)
        total += entry.size_bytes
        totals.append(total)
    if not pieces:
        whole: str = meta.model_dump_json(indent=2)
        return _Block((), (whole + "\n").encode(), 0, [], [])
    head: str = meta.model_copy(update={"artifacts": []}).model_dump_json(indent=2)
    # a key is the only line that starts so: a value's newlines are escaped
    before, sep, after = head.partition(_EMPTY_ARTIFACTS)
    assert sep, "the artifacts key is always written"
    opening = before.encode() + b'\n  "artifacts": [\n'
    parts: list[bytes | memoryview] = [opening]
    for piece in pieces:  # one copy of it all (a join's separator needs a second)
        parts += (piece, _SEP)
    parts[-1] = b"\n  ],\n" + after.encode() + b"\n"
    data = b"".join(parts)
    return _Block(tuple(entries), data, len(opening), ends, totals)


def render_fresh(meta: Any) -> bytes:
    """The file's bytes, every entry written anew (what `RunMetadata.to_json` gives)."""
    return _block(meta, None).data


class RunTexts:
    """The runs' last written blocks, by run id (a store's; any thread may call it): at
    most BLOCK_ENTRIES entries over all, but the KEEP_BLOCKS runs written last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: dict[str, _Block] = {}  # least recently written first
        self._entries = 0

    def render(self, meta: Any) -> Rendered:
        """metadata.json's bytes for `meta` (as `render_fresh`), its run's text kept."""
        with self._lock:
            old = self._blocks.get(meta.run_id)
        block = _block(meta, old)
        self._keep(meta.run_id, block)
        return Rendered(block.data, block.totals[-1] if block.totals else 0)

    def _keep(self, run_id: str, block: _Block) -> None:
        with self._lock:
            old = self._blocks.pop(run_id, None)
            if old is not None:
                self._entries -= len(old.entries)
            self._blocks[run_id] = block
            self._entries += len(block.entries)
            while self._entries > BLOCK_ENTRIES and len(self._blocks) > KEEP_BLOCKS:
                gone = self._blocks.pop(next(iter(self._blocks)))
                self._entries -= len(gone.entries)

    def sizes(self) -> tuple[int, int]:
        """Runs held and their entries (tests)."""
        with self._lock:
            return len(self._blocks), self._entries

"""A run's files as one zip, produced as it is read (DESIGN §7 `/archive`, `promoter export`).

Built on the standard library's `zipfile`, writing to a stream: it writes to
an unseekable file object by putting each member's sizes and CRC in a data
descriptor after its data, switches to ZIP64 by itself when a member or the
archive needs it (we give it each member's size before its data, so the local
header is right from the start), and computes the CRC as the bytes pass. No
dependency is needed, and no temporary file: `iter_zip` yields the archive in
pieces of about `CHUNK` bytes, so memory stays bounded whatever the run's size.

Names are the entries' `filename`s, exactly as under `files/` (subfolders
kept, UTF-8 flagged by zipfile for non-ASCII names). Already-compressed types
are stored; the rest is deflated at a low level (fast; a higher level costs
much CPU for little gain on the text and data files agents write).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from datetime import UTC
from typing import Final

from promoter.backend import Shrank
from promoter.errors import NotFoundError
from promoter.metadata import ArtifactEntry
from promoter.store import Store

__all__ = ["CHUNK", "compress_type", "iter_zip"]

CHUNK: Final = 1 << 20
_DEFLATE_LEVEL: Final = 1
_ZIP_FIRST: Final = (1980, 1, 1, 0, 0, 0)
_ZIP_LAST: Final = (2107, 12, 31, 23, 59, 58)
# Already compressed: deflating them again costs CPU and saves nothing.
_STORED_TYPES: Final = frozenset({
    "application/zip", "application/gzip", "application/x-gzip", "application/x-bzip2",
    "application/x-xz", "application/zstd", "application/x-7z-compressed",
    "application/vnd.rar", "application/x-rar-compressed", "application/java-archive",
    "application/pdf", "application/vnd.apache.parquet", "application/x-tar+gzip",
    "font/woff", "font/woff2",
})
_STORED_SUFFIXES: Final = frozenset({
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".jar", ".whl", ".parquet",
    ".docx", ".xlsx", ".pptx", ".odt", ".ods", ".epub", ".npz", ".pdf", ".lz4", ".br",
})
_TEXTLIKE_IMAGES: Final = frozenset({"image/svg+xml", "image/bmp", "image/x-ms-bmp",
                                     "image/tiff", "image/x-portable-pixmap"})


def compress_type(entry: ArtifactEntry) -> int:
    """ZIP_STORED for types that are compressed already, ZIP_DEFLATED for the rest."""
    base = entry.content_type.split(";", 1)[0].strip().lower()
    major = base.split("/", 1)[0]
    if major in ("audio", "video") or (major == "image" and base not in _TEXTLIKE_IMAGES):
        return zipfile.ZIP_STORED
    if base in _STORED_TYPES or os.path.splitext(entry.filename)[1].lower() in _STORED_SUFFIXES:
        return zipfile.ZIP_STORED
    return zipfile.ZIP_DEFLATED


class _Pipe:
    """The unseekable file object zipfile writes into; `take()` hands the bytes on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._pos = 0

    def write(self, data: bytes, /) -> int:
        if data:
            self._parts.append(bytes(data))
            self._size += len(data)
            self._pos += len(data)
        return len(data)

    def tell(self) -> int:  # zipfile wraps unseekable streams and asks only for the position
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def pending(self) -> int:
        return self._size

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return data


def _zipinfo(entry: ArtifactEntry, size: int) -> zipfile.ZipInfo:
    # Agents set mtimes at will (DESIGN §6); the zip format holds 1980 to 2107 only.
    when = entry.generated_at.astimezone(UTC)
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    stamp = min(max(stamp, _ZIP_FIRST), _ZIP_LAST)
    info = zipfile.ZipInfo(entry.filename, date_time=stamp)
    info.compress_type = compress_type(entry)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        # what ZipFile.open reads: `_compresslevel` up to 3.12, `compress_level` since 3.13
        level = "compress_level" if hasattr(info, "compress_level") else "_compresslevel"
        setattr(info, level, _DEFLATE_LEVEL)
    info.file_size = size  # known before the data: ZIP64 decided in the local header
    info.external_attr = 0o644 << 16
    return info


def iter_zip(store: Store, run_id: str) -> Iterator[bytes]:
    """The run's archive in pieces of about CHUNK bytes; raises NotFoundError before the first.

    Entries whose copy vanished between listing and reading (a deletion racing
    the download) are left out rather than breaking the archive.
    """
    meta = store.get_run(run_id)
    entries = sorted(meta.artifacts, key=lambda e: e.filename)
    return _generate(store, run_id, entries)


def _generate(store: Store, run_id: str, entries: list[ArtifactEntry]) -> Iterator[bytes]:
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", allowZip64=True) as zf:
        for entry in entries:
            try:
                source, _ = store.read_artifact(run_id, entry.filename)
            except NotFoundError:
                continue
            with source, zf.open(_zipinfo(entry, source.size), "w") as member:
                try:
                    for data in source.chunks():  # the local disk's or the bucket's bytes
                        member.write(data)
                        # whatever the compressor gave for this piece of input goes out now:
                        # a download of very compressible data starts at once, and a client
                        # that leaves is noticed within one piece, not after 1 MiB of output
                        if pipe.pending:
                            yield pipe.take()
                except Shrank:
                    raise OSError(f"{entry.filename} shrank while being archived") from None
            if pipe.pending >= CHUNK:
                yield pipe.take()
    tail = pipe.take()
    if tail:
        yield tail

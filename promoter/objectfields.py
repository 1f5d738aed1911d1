"""What an object carries besides its bytes (DESIGN §10): the entry fields kept as user
metadata, so a copy whose entry was never written can be adopted, and the answers of a
listing, a HEAD and an upload. Pure data: no client is imported here.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass

__all__ = ["META_LIMIT", "EntryFields", "ObjectHead", "ObjectInfo", "StoredFile",
           "decode_fields"]

META_LIMIT = 2048  # S3: user metadata, keys and values, at most 2 KB


@dataclass(frozen=True)
class EntryFields:
    """The entry fields an object carries as user metadata, besides its sha256."""

    filename: str
    agent_id: str
    generated_at: str

    def as_metadata(self, sha256: str) -> dict[str, str]:
        """x-amz-meta-*: header values are ASCII, so free text is percent-encoded.

        S3 allows 2 KB of user metadata; a filename or agent id too long for it is left out
        (the key carries the filename; a missing agent id reads as "unknown", as in §1), and
        the entry in meta/ keeps both in full.
        """
        meta = {"sha256": sha256,
                "generated-at": urllib.parse.quote(self.generated_at, safe="")}
        for name, value in (("filename", urllib.parse.quote(self.filename, safe="/")),
                            ("agent-id", urllib.parse.quote(self.agent_id, safe=""))):
            if _meta_bytes({**meta, name: value}) <= META_LIMIT:
                meta[name] = value
        return meta


@dataclass(frozen=True)
class ObjectInfo:
    """One listed or inspected object."""

    key: str
    size: int
    etag: str
    last_modified: dt.datetime


@dataclass(frozen=True)
class ObjectHead:
    """An object's info and its user metadata, decoded (None where absent)."""

    info: ObjectInfo
    sha256: str | None
    fields: EntryFields | None


@dataclass(frozen=True)
class StoredFile:
    """What an upload stored: the new ETag, and the sha256 and size of the bytes sent."""

    etag: str
    sha256: str
    size: int


def _meta_bytes(meta: dict[str, str]) -> int:
    return sum(len(f"x-amz-meta-{k}") + len(v) for k, v in meta.items())


def decode_fields(meta: dict[str, str], key_relpath: str | None) -> EntryFields | None:
    """The fields of `as_metadata`; None when the object has none (not promoter's upload)."""
    unq = urllib.parse.unquote
    filename = unq(meta["filename"]) if "filename" in meta else key_relpath
    if "generated-at" not in meta or filename is None:
        return None
    return EntryFields(filename=filename, agent_id=unq(meta.get("agent-id", "unknown")),
                       generated_at=unq(meta["generated-at"]))

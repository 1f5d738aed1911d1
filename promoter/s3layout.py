"""The `[storage.s3]` settings and the key layout in the bucket (DESIGN §10).

Pure: no client, no network. Keys are built only from names that passed
promoter.names' checks, plus the few characters an S3 key cannot carry
faithfully, so no input can address a key outside the layout:

    <prefix>meta/<run_id>.json  <prefix>files/<run_id>/<relpath>
    <prefix>tombstones/<run_id> <prefix>library/<name>  <prefix>.promoter/...
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from promoter.errors import InvalidNameError
from promoter.names import check_library_name, check_run_id, split_relpath

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_PARTS",
    "MIN_PART_BYTES",
    "S3Settings",
    "file_key",
    "library_key",
    "meta_key",
    "part_size_for",
    "probe_key",
    "relpath_from_file_key",
    "run_id_from_meta_key",
    "tombstone_key",
]

MIN_PART_BYTES = 5 * 1024 * 1024  # S3: every part but the last is at least 5 MiB
MAX_PART_BYTES = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
MAX_KEY_BYTES = 1024  # S3's limit on a key, UTF-8
DEFAULT_PART_BYTES = 8 * 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# S3 keys are UTF-8 text in XML and headers: control characters do not survive every store, and
# SeaweedFS turns "\" into "/" (checked: "a\b" is listed as "a/b"), which would merge two names.
_UNSAFE_IN_KEY = re.compile(r"[\x00-\x1f\x7f\\]")


MAX_THRESHOLD_BYTES = 1024 * 1024 * 1024


class S3Settings(BaseModel):
    """`[storage.s3]`: where the bucket is; credentials never live here (standard AWS sources)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str = "promoter"
    prefix: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    allow_http: bool = False
    # a file up to the threshold is held whole in memory for its one PUT: at most 1 GiB
    multipart_threshold_bytes: int = Field(default=64 * 1024 * 1024, ge=MIN_PART_BYTES,
                                           le=MAX_THRESHOLD_BYTES)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET_RE.fullmatch(value) or ".." in value:
            raise ValueError("must be an S3 bucket name: 3-63 of a-z 0-9 . -")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value:
            return value
        if not value.endswith("/") or value.startswith("/"):
            raise ValueError('must be "" or end with "/" and not start with "/" (e.g. "prod/")')
        for part in value[:-1].split("/"):
            if part in ("", ".", "..") or _UNSAFE_IN_KEY.search(part):
                raise ValueError("has an empty, '.', '..' or control-character component")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/\s?#@]+/?", value):
            raise ValueError('must be "" (AWS) or http(s)://host[:port], no path or user')
        port = re.search(r":(\d+)/?$", value)
        if port and not 0 < int(port.group(1)) < 65536:  # else an "outage" at the first request
            raise ValueError(f"port {port.group(1)} is not a TCP port (1-65535)")
        return value.rstrip("/")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        # it is signed into every request's Authorization header
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError('must be a region name such as "us-east-1" (or "auto", "garage")')
        return value

    @model_validator(mode="after")
    def _http_allowed(self) -> Self:
        if self.endpoint.startswith("http://") and not self.allow_http:
            raise ValueError(
                f"endpoint {self.endpoint} is plain http: set allow_http = true to allow it"
            )
        return self


def _key_safe(text: str) -> str:
    if _UNSAFE_IN_KEY.search(text):
        raise InvalidNameError("invalid name for an object key: control character or '\\'")
    return text


def _fits(key: str) -> str:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidNameError(f"name too long for an object key (over {MAX_KEY_BYTES} bytes)")
    return key


def meta_key(prefix: str, run_id: str) -> str:
    """The run's metadata object."""
    return f"{prefix}meta/{check_run_id(run_id)}.json"


def file_key(prefix: str, run_id: str, relpath: str) -> str:
    """A promoted copy; `relpath` is the entry's filename (the path below `files/`)."""
    parts = split_relpath(relpath)
    return _fits(f"{prefix}files/{check_run_id(run_id)}/{_key_safe('/'.join(parts))}")


def tombstone_key(prefix: str, run_id: str) -> str:
    """A deleted run's tombstone."""
    return f"{prefix}tombstones/{check_run_id(run_id)}"


def library_key(prefix: str, name: str) -> str:
    """A library file."""
    return _fits(f"{prefix}library/{_key_safe(check_library_name(name))}")


def probe_key(prefix: str, token: str) -> str:
    """A key for the start-up probe; `token` is promoter's own (hex), never input."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", token):
        raise InvalidNameError("probe token must be hex")
    return f"{prefix}.promoter/probe-{token}"


def run_id_from_meta_key(prefix: str, key: str) -> str | None:
    """The run id of a listed `meta/` key, or None for a key that is not a run's metadata."""
    head = f"{prefix}meta/"
    if not key.startswith(head) or not key.endswith(".json"):
        return None
    run_id = key[len(head):-len(".json")]
    try:
        return check_run_id(run_id)
    except InvalidNameError:
        return None


def relpath_from_file_key(prefix: str, key: str) -> str | None:
    """The file name (`plots/a.png`) in a listed `files/<run_id>/` key, or None."""
    head = f"{prefix}files/"
    if not key.startswith(head):
        return None
    run_id, _, relpath = key[len(head):].partition("/")
    try:
        check_run_id(run_id)
        split_relpath(relpath)
    except InvalidNameError:
        return None
    return relpath


def part_size_for(size: int) -> int:
    """A multipart part size: 8 MiB, or larger so that `size` fits in 10,000 parts.

    5 GiB / 8 MiB is 640 parts, eight in flight (a 512 MiB file went up 1.2x faster than
    with 16 MiB x 4); the largest S3 object (5 TiB) needs ~525 MiB parts.
    """
    needed = -(-size // MAX_PARTS)
    mib = 1024 * 1024
    return min(MAX_PART_BYTES, max(DEFAULT_PART_BYTES, -(-needed // mib) * mib))

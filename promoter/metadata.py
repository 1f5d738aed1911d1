"""The models of metadata.json and of a tombstone (DESIGN §1, §2).

These models are the contract between promoter, the kernel and the UI: they
validate what is read, serialize what is written, and generate the JSON Schema
that `promoter schema` prints and the HTTP API documents.
"""

from __future__ import annotations

import functools
import itertools
import mimetypes
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import SchemaValidator, ValidationError

from promoter.clock import format_time
from promoter.config import MAX_BYTES
from promoter.metatext import render_fresh
from promoter.names import RUN_ID_RE

__all__ = ["SCHEMA_VERSION", "ArtifactEntry", "RejectedEntry", "RemovedEntry", "RunMetadata",
           "Tombstone", "UtcTime", "guess_content_type", "metadata_json_schema",
           "parse_metadata"]

SCHEMA_VERSION = 1


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("time must carry a zone (RFC 3339)")
    return value.astimezone(UTC)


UtcTime = Annotated[
    datetime,
    AfterValidator(_require_utc),
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""An aware datetime, written as RFC 3339 UTC with a `Z`."""

_FileTime = Annotated[
    AwareDatetime,
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""UtcTime for the models read from disk: the zone is required by pydantic-core (no Python
call a time), the conversion to UTC is done once a document (`_to_utc`): a Python validator
an entry was a third of parsing a 100,000-entry store at start-up (issue 15)."""


@functools.cache
def _field_names(cls: type[BaseModel]) -> frozenset[str]:
    """A model's field names, once: `model_fields` is a property that costs more than the
    check itself, paid for every entry of every metadata.json parsed (issue 15)."""
    return frozenset(cls.model_fields)


def _unknown_keys(cls: type[BaseModel], data: Any) -> None:
    """One error for any number of unknown keys: `extra="forbid"` alone reports each,
    and a planted 7 MB metadata.json of a million keys took 15 s and 450 MB to refuse."""
    if isinstance(data, dict):
        unknown = data.keys() - _field_names(cls)
        if unknown:
            shown = ", ".join(repr(k)[:40] for k in itertools.islice(unknown, 3))
            raise ValueError(f"{len(unknown)} unknown key(s): {shown}")


def _as_utc(value: datetime) -> datetime:
    """`value` with datetime.UTC as its zone (as `_require_utc` gives): pydantic-core's own
    zone object made every later subtraction call back into it (five times slower)."""
    try:
        return value.astimezone(UTC) if value.utcoffset() else value.replace(tzinfo=UTC)
    except OverflowError:  # "9999-12-31T23:59:59-23:59": a planted file, refused as such
        raise ValueError("time out of range in UTC") from None


def _in_utc(value: datetime) -> datetime:
    """`value.replace(tzinfo=UTC)` for a time at offset 0: `combine` of its date and time is
    4 times faster than `replace`, whose keywords are parsed at each call, and twice as fast
    as the constructor with seven fields read one by one, paid for 100,000 entries at
    start-up (issue 15). A parsed time's `fold` is always 0 (`time()` keeps it anyway)."""
    return datetime.combine(value.date(), value.time(), UTC)


class _Model(BaseModel):
    """Unknown keys refused in pydantic-core (`extra="forbid"`). The documents read from disk
    (RunMetadata, Tombstone) check theirs and their entries' first, in one Python call a
    document rather than one an entry (issue 15), so that a planted file of a million keys
    still costs one error (issue 17)."""

    model_config = ConfigDict(extra="forbid")


class _Document(_Model):
    """A file read from disk: metadata.json or a tombstone."""

    _ENTRY_LISTS: ClassVar[dict[str, type[BaseModel]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys(cls, data: Any) -> Any:
        _unknown_keys(cls, data)
        if isinstance(data, dict):
            for key, model in cls._ENTRY_LISTS.items():
                items = data.get(key)
                if isinstance(items, list):
                    for item in items:
                        _unknown_keys(model, item)
        return data


class ArtifactEntry(_Model):
    """One promoted file of a run."""

    filename: str = Field(min_length=1, description="Path relative to output/, '/'-separated")
    path: str = Field(min_length=1, description="Path of the copy relative to the run folder")
    agent_id: str = "unknown"
    generated_at: _FileTime = Field(description="The source file's modification time")
    # no configuration promotes a file over MAX_BYTES (max_file_bytes' bound): a size past it
    # is a lie that would count toward the run's and the store's limits (probe r8-memory F1)
    size_bytes: int = Field(ge=0, le=MAX_BYTES)
    content_type: str = "application/octet-stream"
    # absent, not null, when checksums are off (DESIGN §2)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               exclude_if=lambda v: v is None)
    source_changed_at: _FileTime | None = Field(  # absent in older entries (rules.verdict)
        default=None, exclude_if=lambda v: v is None, description="The source file's ctime "
        "as its copy read it: a file changed since (cp -p, rsync -t) is read again")

    @classmethod
    def trusted(cls, filename: str, path: str, agent_id: str, generated_at: datetime,
                size_bytes: int, content_type: str, sha256: str | None,
                source_changed_at: datetime | None = None) -> ArtifactEntry:
        """A promotion's entry, every field ours and valid (a checked name, a UTC time, a
        hex digest): what `model_construct` makes (tests/test_hotpath.py), without its
        generic walk over aliases and defaults (2.3 times as long, a 4 KiB file's path)."""
        entry = cls.__new__(cls)
        _set(entry, "__dict__", {"filename": filename, "path": path, "agent_id": agent_id,
                                 "generated_at": generated_at, "size_bytes": size_bytes,
                                 "content_type": content_type, "sha256": sha256,
                                 "source_changed_at": source_changed_at})
        _set(entry, "__pydantic_fields_set__", set(_ENTRY_FIELDS))
        _set(entry, "__pydantic_extra__", None)
        _set(entry, "__pydantic_private__", None)
        return entry


_set = object.__setattr__
_ENTRY_FIELDS = ("filename", "path", "agent_id", "generated_at", "size_bytes", "content_type",
                 "sha256", "source_changed_at")
# what `trusted` relies on: no hook runs after construction, and these are all the fields
assert not ArtifactEntry.__pydantic_post_init__ and not ArtifactEntry.__pydantic_root_model__
assert tuple(ArtifactEntry.model_fields) == _ENTRY_FIELDS


class RemovedEntry(_Model):
    """An artifact a person removed; kept out until its source is rewritten."""

    filename: str = Field(min_length=1)
    removed_at: _FileTime


class RejectedEntry(_Model):
    """A session file that was refused, and why: shown to people, not only in logs (§2)."""

    filename: str = Field(min_length=1)
    reason: str
    size_bytes: int | None = Field(default=None, ge=0)
    rejected_at: _FileTime


class RunMetadata(_Document):
    """metadata.json of one run."""

    schema_version: Literal[1] = 1
    run_id: str = Field(pattern=RUN_ID_RE.pattern)
    workflow_id: str = ""
    user_directive: str = ""
    created_at: _FileTime
    updated_at: _FileTime
    expires_at: _FileTime
    keep: bool = False
    # "deleting": a deletion on an object store is under way (DESIGN §10); never listed
    status: Literal["active", "completed", "deleting"] = "active"
    # fail_fast: the first bad entry is enough to call the file corrupt; reporting every one
    # of a million bad entries (8 MB of `{"x":1}`) took 65 s and 3.8 GB (issue 17)
    artifacts: list[ArtifactEntry] = Field(default_factory=list, fail_fast=True)
    removed: list[RemovedEntry] = Field(default_factory=list, fail_fast=True)
    rejected: list[RejectedEntry] = Field(default_factory=list, fail_fast=True)
    # written only when known, so a document without it (DESIGN §2's) round-trips
    host: str = Field(default="", exclude_if=lambda v: v == "",
                      description="storage.host_id of the host whose session folder the run "
                      "came from (DESIGN §10)")

    _ENTRY_LISTS: ClassVar[dict[str, type[BaseModel]]] = {
        "artifacts": ArtifactEntry, "removed": RemovedEntry, "rejected": RejectedEntry}

    @model_validator(mode="after")
    def _to_utc(self) -> RunMetadata:
        """Every time in UTC (a time written with another offset is converted)."""
        for name in ("created_at", "updated_at", "expires_at"):
            self.__dict__[name] = _as_utc(self.__dict__[name])
        zero: object = UTC  # a zone seen at offset 0: pydantic-core gives a document's `Z`
        for entry in self.artifacts:  # times one zone object, so one offset call, not 100,000
            fields = entry.__dict__  # no __setattr__
            if (at := fields["source_changed_at"]) is not None:  # absent in older entries
                fields["source_changed_at"] = _in_utc(at) if at.tzinfo is zero else _as_utc(at)
            value = fields["generated_at"]
            if value.tzinfo is not zero:
                if value.utcoffset():
                    fields["generated_at"] = _as_utc(value)
                    continue
                zero = value.tzinfo
            fields["generated_at"] = _in_utc(value)
        for removed in self.removed:
            removed.__dict__["removed_at"] = _as_utc(removed.removed_at)
        for rejected in self.rejected:
            rejected.__dict__["rejected_at"] = _as_utc(rejected.rejected_at)
        return self

    def entry(self, filename: str) -> ArtifactEntry | None:
        """The entry for `filename`, if any."""
        for item in self.artifacts:
            if item.filename == filename:
                return item
        return None

    def removed_at(self, filename: str) -> datetime | None:
        for item in self.removed:
            if item.filename == filename:
                return item.removed_at
        return None

    @property
    def total_bytes(self) -> int:
        return sum(item.size_bytes for item in self.artifacts)

    def to_json(self) -> str:
        """The file's text: pydantic's own serializer (the same bytes as `json.dumps(...,
        indent=2, ensure_ascii=False)`), each entry's text made by hand where it can be
        (metatext.py; the store's writes keep each run's text: `RunTexts`)."""
        return render_fresh(self).decode()


class Tombstone(_Document):
    """`artifacts/.tombstones/<run_id>`: a deleted run that must not come back."""

    run_id: str = Field(pattern=RUN_ID_RE.pattern)
    deleted_at: _FileTime
    reason: Literal["rm", "expired"]
    # the host whose session folder it guards (DESIGN §10)
    host: str = Field(default="", exclude_if=lambda v: v == "")

    @model_validator(mode="after")
    def _to_utc(self) -> Tombstone:
        self.__dict__["deleted_at"] = _as_utc(self.deleted_at)
        return self


# Markdown and a few common data types, whatever the host's mime.types holds.
_EXTRA_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".parquet": "application/vnd.apache.parquet",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".log": "text/plain",
}


@functools.cache
def _types() -> mimetypes.MimeTypes:
    """Python's built-in table with promoter's own on top (README: not the host's mime.types,
    so every host answers the same). Made at the first guess rather than at import, since the
    constructor has `mimetypes` read the host's files for its module table: a fifteenth of
    `promoter run`'s imports (issue 15), and most commands guess none."""
    types = mimetypes.MimeTypes()
    for ext, content_type in _EXTRA_TYPES.items():
        types.add_type(content_type, ext)
    return types


def guess_content_type(filename: str) -> str:
    """The type from the file name alone, never sniffed (DESIGN §2). A plain `stem.ext` name
    (one dot, no `:` that could read as a URL scheme) is typed by its extension alone, so the
    answer is kept per extension: 3.5 µs a file in a burst, now a dict look-up."""
    base = filename.rpartition("/")[2]
    if base.count(".") == 1 and not base.startswith(".") and ":" not in filename:
        return _type_of_extension(base[base.index("."):])
    # "./": a name is a path, never a URL, so `data:text/html,x.png` is typed by `.png`
    # (mimetypes reads a leading `scheme:` as a URL and a data URL's own type)
    guessed, _ = _types().guess_type("./" + filename, strict=False)
    return guessed or "application/octet-stream"


@functools.lru_cache(maxsize=1024)
def _type_of_extension(ext: str) -> str:
    guessed, _ = _types().guess_type("x" + ext, strict=False)
    return guessed or "application/octet-stream"


FAST_MAX_BYTES = 4 << 20  # larger documents go straight to the careful validation


@functools.cache
def _fast_validator() -> SchemaValidator | None:
    """RunMetadata's own validator without its key check (the before-validator, which has
    pydantic-core hand it the whole document as Python objects first): the same models,
    keys refused by `extra="forbid"` in pydantic-core, in half the time. None if pydantic
    lays the schema out otherwise (then every document takes the careful way)."""
    schema = RunMetadata.__pydantic_core_schema__
    model = schema.get("schema", {})
    check = model.get("schema", {}) if isinstance(model, dict) else {}
    if schema["type"] != "function-after" or model.get("type") != "model" \
            or check.get("type") != "function-before":
        return None
    return SchemaValidator({**schema, "schema": {**model, "schema": check["schema"]}})


def parse_metadata(raw: bytes) -> RunMetadata:
    """A metadata.json read from disk (every read of the store; 1,000 of them at start-up,
    issue 15): `RunMetadata.model_validate_json`, the same model and the same errors. A
    document the fast validation accepts passes the key check too (it has no unknown key),
    so the result is the same; any it refuses is validated again the careful way, whose
    errors are the ones raised (one for any number of unknown keys). A planted document
    costs both: at most FAST_MAX_BYTES is tried the fast way (its errors are one a key)."""
    fast = _fast_validator() if len(raw) <= FAST_MAX_BYTES else None
    if fast is not None:
        try:
            return cast(RunMetadata, fast.validate_json(raw))
        except ValidationError:
            pass  # the careful validation below says why
    return RunMetadata.model_validate_json(raw)


def metadata_json_schema() -> dict[str, Any]:
    """The JSON Schema of metadata.json."""
    schema = RunMetadata.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "promoter metadata.json"
    return schema

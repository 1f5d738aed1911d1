"""The JSON bodies of the HTTP API (DESIGN §7), for answers and for /openapi.json.

A run's metadata is `promoter.metadata.RunMetadata` itself, so the API and
`promoter schema` can never disagree about it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from promoter.library import LibraryFile
from promoter.metadata import RunMetadata, UtcTime

__all__ = [
    "ArtifactList",
    "ErrorDetail",
    "Health",
    "KeepBody",
    "LibraryEntry",
    "LibraryList",
    "LinkAnswer",
    "RunItem",
    "SweepResult",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Model):
    """Every error answer: one clear sentence, never a traceback or a path outside the store."""

    detail: str


class RunItem(_Model):
    """One run in the list, in the seed proposal's shape."""

    run_id: str
    metadata: RunMetadata


class ArtifactList(_Model):
    """`GET /runtime/artifacts`: runs, newest first."""

    artifacts: list[RunItem]


class KeepBody(_Model):
    """`PATCH /runtime/artifacts/{run_id}`: pin a run (true) or unpin it (false)."""

    keep: StrictBool


class SweepResult(_Model):
    """`POST /runtime/sweep`: the runs deleted (or, with dry_run, that would be)."""

    expired: list[str]
    dry_run: bool


class LibraryEntry(_Model):
    """One library file."""

    name: str
    size_bytes: int = Field(ge=0)
    content_type: str
    modified_at: UtcTime

    @classmethod
    def of(cls, item: LibraryFile) -> LibraryEntry:
        return cls(name=item.name, size_bytes=item.size_bytes, content_type=item.content_type,
                   modified_at=item.modified_at)


class LibraryList(_Model):
    """`GET /runtime/library`: every library file, sorted by name."""

    files: list[LibraryEntry]


class Health(_Model):
    """`GET /healthz`."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None


class LinkAnswer(_Model):
    """A signed link to one file (DESIGN §7): relative to this server."""

    url: str = Field(description="The file's path with `expires` (and `sig` under a token)")
    expires_at: UtcTime

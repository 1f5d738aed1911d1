"""Helpers for serving over a bucket: runs written straight into `meta/` and `files/` with the
object layer, the way the S3 backend lays them out (DESIGN §10). Plain functions."""

from __future__ import annotations

import hashlib
import mimetypes
import tempfile
from datetime import UTC, datetime, timedelta

from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.objectstore import EntryFields, ObjectStore
from promoter.s3layout import file_key, meta_key

__all__ = ["put_object", "put_run", "run_meta"]


def put_object(objects: ObjectStore, run_id: str, filename: str, data: bytes,
               when: datetime | None = None) -> ArtifactEntry:
    """Upload one file's object (with its sha256 and fields) and return its entry."""
    when = when or datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryFile() as tmp:
        tmp.write(data)
        tmp.flush()
        fields = EntryFields(filename=filename, agent_id="agent-1",
                             generated_at=when.isoformat().replace("+00:00", "Z"))
        stored = objects.put_file(file_key(objects.prefix, run_id, filename), tmp.fileno(),
                                  len(data), fields)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return ArtifactEntry(filename=filename, path=f"files/{filename}", agent_id="agent-1",
                         generated_at=when, size_bytes=len(data), content_type=kind,
                         sha256=stored.sha256)


def run_meta(run_id: str, entries: list[ArtifactEntry], created: datetime | None = None,
             **fields: object) -> RunMetadata:
    """A run's metadata as the store would write it."""
    created = created or datetime.now(UTC).replace(microsecond=0)
    values: dict[str, object] = {"run_id": run_id, "created_at": created,
                                 "updated_at": created, "expires_at": created + timedelta(days=7),
                                 "artifacts": entries}
    values.update(fields)
    return RunMetadata.model_validate(values)


def put_run(objects: ObjectStore, run_id: str, files: dict[str, bytes],
            created: datetime | None = None, **fields: object) -> RunMetadata:
    """Every file's object first, then the run's metadata (the backend's order, §10)."""
    entries = [put_object(objects, run_id, name, data) for name, data in files.items()]
    meta = run_meta(run_id, entries, created, **fields)
    objects.put(meta_key(objects.prefix, run_id), meta.to_json().encode())
    return meta

"""metadata.json models: times, content types, validation and the JSON Schema (DESIGN §2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from promoter.clock import format_time, from_timestamp_ns, parse_time
from promoter.metadata import (
    ArtifactEntry,
    RunMetadata,
    guess_content_type,
    metadata_json_schema,
)


@pytest.mark.parametrize(("name", "expected"), [
    ("plot.png", "image/png"), ("report.md", "text/markdown"), ("data.csv", "text/csv"),
    ("x.json", "application/json"), ("r.html", "text/html"), ("p.pdf", "application/pdf"),
    ("noext", "application/octet-stream"), ("weird.zzz", "application/octet-stream"),
    ("pic.svg", "image/svg+xml"), ("README.MD", "text/markdown"),
    ("data:text/html,x.png", "image/png"), ("data:x,report.csv", "text/csv"),
    ("data:image/svg+xml,a.b.txt", "text/plain"), ("http:x.tar.gz", "application/x-tar"),
    ("a/data:text/html,x.png", "image/png"),
])
def test_content_type_from_name(name: str, expected: str) -> None:
    """Types come from the name via mimetypes with a few additions, never from content."""
    assert guess_content_type(name) == expected


def test_times_are_utc_with_z_and_keep_subseconds() -> None:
    """Offsets are converted to UTC; sub-second precision survives a round trip."""
    t = datetime(2026, 1, 9, 12, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(t) == "2026-01-09T10:30:00.123456Z"
    assert format_time(t.replace(microsecond=0)) == "2026-01-09T10:30:00Z"
    assert parse_time("2026-01-09T10:30:00.123456Z") == t
    assert from_timestamp_ns(1_700_000_000_123_456_789).microsecond == 123456


def test_times_before_the_year_1000_keep_four_year_digits() -> None:
    """An agent may date a file the year 1 (tmpfs keeps it): glibc's %Y wrote "1-01-01",
    which no reader parses, and every read then set the metadata aside again (issue 17)."""
    first = datetime(1, 1, 1, tzinfo=UTC)
    assert format_time(first) == "0001-01-01T00:00:00Z"
    assert format_time(datetime(500, 6, 1, 0, 0, 0, 5, tzinfo=UTC)) == \
        "0500-06-01T00:00:00.000005Z"
    entry = ArtifactEntry(filename="a", path="files/a", generated_at=first, size_bytes=1)
    assert ArtifactEntry.model_validate_json(entry.model_dump_json()) == entry


@pytest.mark.parametrize("planted", [
    '{"run_id": "r", "artifacts": [' + ",".join(['{"x": 1}'] * 100_000) + "]}",
    '{"run_id": "r", "removed": [' + ",".join(['{"x": 1}'] * 100_000) + "]}",
    '{"run_id": "r", "rejected": [' + ",".join(['{"x": 1}'] * 100_000) + "]}",
    '{"run_id": "r", ' + ",".join(f'"x{i}": 1' for i in range(100_000)) + "}",
    '{"run_id": "r", "artifacts": [{' + ",".join(f'"x{i}": 1' for i in range(100_000)) + "}]}",
])
def test_a_planted_metadata_file_costs_a_few_errors_not_one_per_item(planted: str) -> None:
    """A million bad entries or unknown keys (8 MB, under max_metadata_bytes) took 65 s and
    3.8 GB to refuse, one error each: the first bad entry and one line for all unknown keys
    are enough to call the file corrupt (issue 17)."""
    with pytest.raises(ValidationError) as failed:
        RunMetadata.model_validate_json(planted)
    assert failed.value.error_count() <= 5


def test_naive_times_are_refused() -> None:
    """A time without a zone is not RFC 3339 and fails validation."""
    with pytest.raises(ValidationError):
        ArtifactEntry(filename="a", path="files/a", generated_at=datetime(2026, 1, 1),
                      size_bytes=1)


def test_seed_example_round_trips() -> None:
    """The DESIGN §2 example validates and serialises back field for field."""
    doc = {
        "schema_version": 1, "run_id": "f3b2a", "workflow_id": "data_analysis_v2",
        "user_directive": "Analyze Q3 financials and generate report",
        "created_at": "2026-01-09T10:30:00Z", "updated_at": "2026-01-09T10:32:15Z",
        "expires_at": "2026-01-16T10:30:00Z", "keep": False, "status": "active",
        "artifacts": [{"filename": "plot_f3b2a_0.png", "path": "files/plot_f3b2a_0.png",
                       "agent_id": "visualization_agent", "generated_at": "2026-01-09T10:32:15Z",
                       "size_bytes": 45120, "content_type": "image/png", "sha256": "a" * 64}],
        "removed": [{"filename": "draft.png", "removed_at": "2026-01-09T11:00:00Z"}],
        "rejected": [{"filename": "huge.bin", "reason": "over the 1 GiB limit (max_file_bytes)",
                      "size_bytes": 1181116006, "rejected_at": "2026-01-09T10:31:00Z"}],
    }
    assert RunMetadata.model_validate(doc).model_dump(mode="json") == doc


@pytest.mark.parametrize("patch", [
    {"schema_version": 2}, {"run_id": "../x"}, {"status": "running"}, {"unknown": 1},
    {"artifacts": [{"filename": "a"}]}, {"created_at": "yesterday"},
])
def test_broken_documents_are_refused(patch: dict[str, object]) -> None:
    """Wrong version, bad run id, unknown status or key, incomplete entries fail."""
    now = datetime.now(UTC).isoformat()
    base = {"run_id": "r", "created_at": now, "updated_at": now, "expires_at": now}
    with pytest.raises(ValidationError):
        RunMetadata.model_validate({**base, **patch})


def test_json_schema_names_every_field() -> None:
    """The schema lists every top-level field and the entry's required ones."""
    schema = metadata_json_schema()
    assert set(schema["properties"]) == set(RunMetadata.model_fields)
    entry = schema["$defs"]["ArtifactEntry"]
    assert {"filename", "path", "generated_at", "size_bytes"} <= set(entry["required"])


def test_the_file_text_is_pydantics_own() -> None:
    """to_json writes the same bytes as pydantic's model_dump_json (hostile names, a host,
    a workflow naming the artifacts key, removed and rejected entries); an entry replaced
    by a new one for the same name is written anew (a store's kept texts:
    tests/test_metatext.py)."""
    from promoter.metadata import ArtifactEntry, RejectedEntry, RemovedEntry, RunMetadata

    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def entry(name: str, size: int, sha: str | None = "ab" * 32) -> ArtifactEntry:
        return ArtifactEntry(filename=name, path=f"files/{name}", generated_at=t0,
                             size_bytes=size, sha256=sha)

    names = ["a.txt", 'q"uote\\back\nline\u2028é😀.bin', "d/e/f.csv", "  \"artifacts\": [],"]
    entries = [entry(n, i, None if i % 2 else "ab" * 32) for i, n in enumerate(names)]

    def doc(arts: list[ArtifactEntry], host: str) -> RunMetadata:
        return RunMetadata(run_id="r1", workflow_id='\n  "artifacts": [],\n', created_at=t0,
                           updated_at=t0, expires_at=t0 + timedelta(days=1), artifacts=arts,
                           removed=[RemovedEntry(filename="gone", removed_at=t0)],
                           rejected=[RejectedEntry(filename="x", reason="fifo",
                                                   rejected_at=t0)], host=host)

    for host in ("", "h1"):
        for arts in ([], entries[:1], entries):
            m = doc(arts, host)
            assert m.to_json() == m.model_dump_json(indent=2) + "\n"
    grown = [*entries[:-1], entry(names[-1], 999)]
    m = doc(grown, "")
    assert m.to_json() == m.model_dump_json(indent=2) + "\n"
    assert '"size_bytes": 999' in m.to_json()
    assert RunMetadata.model_validate_json(m.to_json()) == m


def test_an_ascii_entry_is_written_as_pydantic_writes_it() -> None:
    """The hand-made text of an all-ASCII entry is pydantic's, byte for byte: every control
    character, quotes and backslashes in every string, no digest, the first and last
    microsecond of datetime's range, a time on the second; others are pydantic's own."""
    from promoter.entrytext import ascii_entry_text as _ascii_entry_text
    from promoter.metadata import ArtifactEntry
    from promoter.metatext import entry_text

    odd = "".join(map(chr, range(0x20))) + '"\\/\x7f~'
    times = [datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC),
             datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, UTC)]
    for name in ("a.txt", f"d/{odd}.bin", '  "artifacts": [],'):
        for sha in (None, "ab" * 32):
            for when in times:
                for seen in (None, when):  # source_changed_at: absent in older entries
                    entry = ArtifactEntry.trusted(
                        filename=name, path=f"files/{name}", agent_id=odd, generated_at=when,
                        size_bytes=2**40, content_type="text/plain", sha256=sha,
                        source_changed_at=seen)
                    want = "    " + entry.model_dump_json(indent=2).replace("\n", "\n    ")
                    assert _ascii_entry_text(entry) == want
    wide = ArtifactEntry.trusted(filename="é😀", path="files/é😀", agent_id="a",
                                 generated_at=times[0], size_bytes=1, content_type="x/y",
                                 sha256=None)
    assert _ascii_entry_text(wide) is None
    assert entry_text(wide) == ("    " + wide.model_dump_json(indent=2).replace("\n", "\n    ")
                                ).encode()

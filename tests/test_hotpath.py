"""The per-file shortcuts of issue 15's sixth round give what the long ways gave."""

from __future__ import annotations

import io
import json
import mimetypes
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from promoter.audit import Actor, Auditor
from promoter.logs import configure_logging, info_many
from promoter.metadata import ArtifactEntry, guess_content_type


def _entry_fields() -> dict[str, Any]:
    return {"filename": "a/b.txt", "path": "files/a/b.txt", "agent_id": "agent-1",
            "generated_at": datetime(2026, 11, 30, 19, 0, 1, 5, UTC), "size_bytes": 4096,
            "content_type": "text/plain", "sha256": "ab" * 32,
            "source_changed_at": datetime(2026, 11, 30, 19, 0, 2, 7, UTC)}


def test_a_trusted_entry_is_what_model_construct_makes() -> None:
    """`ArtifactEntry.trusted` equals pydantic's `model_construct` of the same fields: the same
    value, fields set, JSON and copy; and validating its dump gives it back."""
    fast = ArtifactEntry.trusted(**_entry_fields())
    slow = ArtifactEntry.model_construct(**_entry_fields())
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump_json(indent=2) == slow.model_dump_json(indent=2)
    assert fast.model_copy(update={"size_bytes": 1}).size_bytes == 1
    assert ArtifactEntry.model_validate_json(fast.model_dump_json()) == fast
    other = ArtifactEntry.trusted(**{**_entry_fields(), "sha256": None})
    assert other.sha256 is None and other != fast
    other.model_fields_set.discard("sha256")  # each entry has its own set
    assert "sha256" in fast.model_fields_set


@pytest.mark.parametrize("name", [
    "f00001.bin", "a.txt", "A.TXT", "x.JSON", "dir.d/file.txt", "deep/er/pic.png",
    "arch.tgz", "arch.tar.gz", "notes", ".hidden", "a:b.txt", "data:text/plain,x.txt",
    "a.unknownextension", "trailing.", "a.b.c", "x.svgz", "report.html", "y.Z",
])
def test_content_types_are_mimetypes_own_answer(name: str) -> None:
    """The per-extension shortcut types every name as the full `guess_type` does, asked twice
    (the second from the cache)."""
    from promoter.metadata import _types

    guessed = _types().guess_type(name, strict=False)[0] or "application/octet-stream"
    assert guess_content_type(name) == guessed
    assert guess_content_type(name) == guessed
    assert mimetypes.guess_type("x.png")[0] == guess_content_type("pic.png")


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def append(self, day: str, data: bytes) -> None:
        self.data += data

    def prune(self, before: str) -> list[str]:
        return []


def test_an_audited_batch_logs_each_event_with_its_actor_and_host() -> None:
    """At info, each audited event is one log line with its own fields and the actor's and
    host's after them; at warning, none, and the journal has every event either way."""
    for level, lines in (("info", 2), ("warning", 0)):
        out = io.StringIO()
        configure_logging(level, "json", stream=out)
        try:
            sink = _Sink()
            Auditor(sink, "vm", Actor("daemon")).record(
                [("artifact.promoted", {"run_id": "r", "filename": "a"}),
                 ("artifact.promoted", {"run_id": "r", "filename": "b"})])
            logged = [json.loads(x) for x in out.getvalue().splitlines()]
            assert len(logged) == lines
            for got, name in zip(logged, "ab", strict=False):
                assert got["filename"] == name and got["actor"] == "daemon"
                assert got["host"] == "vm" and got["event"] == "artifact.promoted"
            journal = [json.loads(x) for x in sink.data.decode().splitlines()]
            assert [j["filename"] for j in journal] == ["a", "b"]
        finally:
            configure_logging("info", "json")


def test_info_many_puts_the_extra_fields_after_each_events_own() -> None:
    """`info_many(extra=...)`: the extra fields win over an event's own of the same name, as
    the auditor's merge did, and the caller's dicts are left as they were."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        fields = {"run_id": "r", "host": "mine"}
        info_many([("artifact.promoted", fields)], extra={"host": "vm"})
        assert json.loads(out.getvalue())["host"] == "vm"
        assert fields == {"run_id": "r", "host": "mine"}
    finally:
        configure_logging("info", "json")


def test_tune_gc_freezes_start_up_and_still_collects_cycles() -> None:
    """After `tune_gc` (in a fresh interpreter, as `promoter run` calls it) the start-up's
    objects are frozen, the young threshold is GC_YOUNG, and a new cycle is still freed."""
    code = (
        "import gc, weakref\n"
        "from promoter.limits import GC_YOUNG, tune_gc\n"
        "tune_gc()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold()[0] == GC_YOUNG\n"
        "class C: pass\n"
        "a = C(); a.me = a; dead = weakref.ref(a); del a\n"
        "gc.collect()\n"
        "assert dead() is None\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


_ODD = {"run_id": "r", "filename": "é/ü\n\"x\"\\\u2028😀", "size_bytes": 4096, "sha256": None,
        "latency_ms": 1.5, "nan": float("nan"), "list": [1, "a"], "actor": "daemon"}


def _without_time(line: str) -> dict[str, Any]:
    item = json.loads(line)
    assert item.pop("timestamp").endswith("Z")
    return item


def test_encoded_info_lines_are_the_processors_own() -> None:
    """`info_many(encoded=...)` writes, byte for byte but the time, the lines the JSON
    processors make of the same fields, in the same key order; with a context variable
    bound (the server's `client`) or a test's capture, the processors make them."""
    import structlog

    from promoter.logs import json_members

    items = [("artifact.promoted", _ODD), ("run.kept", {}), ("library.deleted", {"n": 1})]
    encoded = [json_members(fields) for _, fields in items]
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        info_many(items, encoded=encoded)
        info_many(items)
        lines = out.getvalue().splitlines()
        assert len(lines) == 6
        for fast, slow in zip(lines[:3], lines[3:], strict=True):
            cut = fast.index('"timestamp"')
            assert fast[:cut] == slow[:slow.index('"timestamp"')]
            assert list(json.loads(fast)) == list(json.loads(slow))
        with structlog.contextvars.bound_contextvars(client="10.0.0.1"):
            info_many(items[:1], encoded=encoded[:1])
        assert json.loads(out.getvalue().splitlines()[-1])["client"] == "10.0.0.1"
        with structlog.testing.capture_logs() as captured:
            info_many(items[:1], encoded=encoded[:1])
        assert captured[0]["filename"] == _ODD["filename"]
        info_many([("x.y", {"level": "mine"})], encoded=[json_members({"level": "mine"})])
        assert json.loads(out.getvalue().splitlines()[-1])["level"] == "info"  # as structlog
    finally:
        configure_logging("info", "json")


def test_a_journal_line_holds_the_fields_the_log_line_holds() -> None:
    """An audited event's journal line starts with its time and event and holds the same
    fields as its log line (encoded once for both); a field named `event` or `timestamp`,
    or a value JSON cannot hold, takes the long way as before."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        sink = _Sink()
        Auditor(sink, "vm", Actor("daemon")).record([("artifact.promoted", dict(_ODD)),
                                                     ("run.kept", {})])
        journal = sink.data.decode("ascii").splitlines()
        assert [list(json.loads(x))[:2] for x in journal] == [["timestamp", "event"]] * 2
        logged = [_without_time(x) for x in out.getvalue().splitlines()]
        for line, log_line in zip(journal, logged, strict=True):
            assert log_line.pop("level") == "info"
            item = _without_time(line)  # NaN is no value equal to itself: the texts compared
            assert json.dumps(item, sort_keys=True) == json.dumps(log_line, sort_keys=True)
        Auditor(sink, "vm", Actor("daemon")).record([("x.y", {"event": "mine", "n": 1})])
        assert json.loads(sink.data.splitlines()[-1])["event"] == "mine"
        with pytest.raises(TypeError):
            Auditor(sink, "vm", Actor("daemon")).one("x.y", when=object())
    finally:
        configure_logging("info", "json")


def test_a_utc_time_is_formatted_as_a_converted_one() -> None:
    """`format_time`'s shortcut for a time already in UTC gives what the conversion gives:
    years 1 and 9999, on the second and with microseconds, and another zone converted."""
    from datetime import timedelta, timezone

    from promoter.clock import format_time

    for year, micro in ((1, 0), (500, 1), (2026, 999999), (9999, 0)):
        value = datetime(year, 6, 1, 5, 6, 7, micro, UTC)
        naive = value.replace(tzinfo=None)
        want = naive.isoformat(timespec="microseconds" if micro else "seconds") + "Z"
        assert format_time(value) == want
        if year > 1:
            assert format_time(value.astimezone(timezone(timedelta(hours=-3)))) == want

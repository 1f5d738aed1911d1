"""Human CLI output shows agent-chosen text escaped, one line a row; old journal lines with
non-UTF-8 bytes still read (DESIGN §3, §11; r7 probe findings 2 and 3)."""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from pathlib import Path

import pytest

from promoter.audit import AUDIT_DIR, read_journal
from promoter.cli import main
from promoter.logs import configure_logging, get_logger
from promoter.render import printable
from tests.store_helpers import write_session_file
from tests.web_helpers import LogCapture

FORGED = ("a\n2026-11-30T00:00:00.000000Z  run.deleted        uid:1000(mallory)"
          "          victim-run\x1b[8m.txt")
HOSTILE = ["nl\nname.txt", "cr\rname.txt", "tab\tname.txt", "esc\x1b[31mname.txt",
           "del\x7fname.txt", "c1\x85name.txt", "ls\u2028ps\u2029.txt", "rtl\u202eexe.txt",
           "back\\nslash.txt", FORGED]
SUDO = "ev\x01\x1b]0;pwn\x07\udcffil"


def _unsafe(text: str) -> list[str]:
    """Characters a terminal acts on (other than the line ends the printer means)."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in
            ("Cc", "Cf", "Cs", "Zl", "Zp")]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def root(tmp_path: Path, capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run r1 holding every hostile name, an odd workflow and directive, one non-UTF-8 name;
    then one of its files removed under a SUDO_USER full of control characters."""
    for name in HOSTILE:
        write_session_file(tmp_path, "r1", name, b"x")
    odd = os.path.join(os.fsencode(tmp_path / "sessions/r1/output"), b"raw\xffname.txt")
    with open(odd, "wb") as fh:
        fh.write(b"x")
    (tmp_path / "sessions/r1/run.json").write_text(json.dumps(
        {"workflow_id": "wf\x1b[2J", "user_directive": "line1\nline2\x9b"}))
    (tmp_path / "artifacts").mkdir()
    assert main(["reconcile", "--root", str(tmp_path)]) == 0
    monkeypatch.setenv("SUDO_USER", SUDO)
    assert main(["rm", "--root", str(tmp_path), "r1", "tab\tname.txt"]) == 0
    capsys.readouterr()
    return tmp_path


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    """Controls, separators, format characters and surrogates become visible escapes, a
    backslash two; ordinary letters, accents, CJK and emoji stay."""
    assert printable("a\nb\r\t\x00\x1b\x7f\x85\x9b") == "a\\nb\\r\\t\\x00\\x1b\\x7f\\x85\\x9b"
    assert printable("\u2028\u2029\u202e\u200b\ufeff\udcff\U000e0041") == (
        "\\u2028\\u2029\\u202e\\u200b\\ufeff\\udcff\\U000e0041")
    assert printable("a\\nb") == "a\\\\nb" != printable("a\nb")  # unambiguous
    assert printable("plain é 漢字 🎉.txt") == "plain é 漢字 🎉.txt"


def test_audit_table_has_one_line_an_event_and_no_control_byte(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newline in a file name cannot forge an audit row; ESC and SUDO_USER's controls and
    non-UTF-8 byte come out escaped."""
    code, out, _ = _run(capsys, "audit", "--json", "--root", str(root))
    count = len(out.rstrip("\n").split("\n"))  # JSON Lines keep U+2028 and \x85 raw
    assert code == 0 and count == len(HOSTILE) + 1  # promotions and the removal
    code, out, _ = _run(capsys, "audit", "--root", str(root))
    assert code == 0 and not _unsafe(out)
    lines = out.splitlines()
    assert len(lines) == count + 1  # the header
    assert not any(line.startswith("2026-11-30T00:00:00") for line in lines)
    assert "a\\n2026-11-30T00:00:00.000000Z  run.deleted" in out
    assert "victim-run\\x1b[8m.txt" in out and "back\\\\nslash.txt" in out
    assert "sudo:ev\\x01\\x1b]0;pwn\\x07\\udcffil" in out


def test_show_ls_and_stats_rows_stay_one_line(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show's files and refusals, its workflow and directive, ls and stats rows: escaped,
    one line each."""
    code, out, _ = _run(capsys, "show", "--root", str(root), "r1")
    assert code == 0 and not _unsafe(out)
    assert "directive  line1\\nline2\\x9b" in out and "workflow   wf\\x1b[2J" in out
    files = out.split("\n\n")[1].splitlines()
    assert len(files) == 1 + len(HOSTILE) - 1  # header, every name but the one removed
    assert "raw\ufffdname.txt" in out  # refused as not UTF-8 (stored with U+FFFD)
    for name in HOSTILE:
        if name != "tab\tname.txt":
            assert sum(printable(name) in line for line in files) == 1
    code, out, _ = _run(capsys, "ls", "--root", str(root))
    assert code == 0 and not _unsafe(out) and len(out.splitlines()) == 3
    code, out, _ = _run(capsys, "stats", "--root", str(root))
    assert code == 0 and not _unsafe(out) and "wf\\x1b[2J" in out


def test_changing_commands_library_and_errors_escape_names(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rm's confirmation, promote and library listings, and an error that echoes a name show
    it escaped on one line."""
    code, out, _ = _run(capsys, "rm", "--root", str(root), "--dry-run", "r1", "nl\nname.txt")
    assert (code, out) == (0, "would delete nl\\nname.txt from run r1\n")
    code, out, _ = _run(capsys, "promote", "--root", str(root), "r1", "c1\x85name.txt",
                        "--as", "lib\u2028\x85\u202e.txt")
    assert (code, out) == (0, "library/lib\\u2028\\x85\\u202e.txt (1 B)\n")
    code, out, _ = _run(capsys, "library", "--root", str(root))
    assert code == 0 and "lib\\u2028\\x85\\u202e.txt" in out and not _unsafe(out)
    assert len(out.splitlines()) == 2
    code, _, err = _run(capsys, "rm", "--root", str(root), "r1", "gone\n\x1b[8m.txt")
    assert code == 1 and err == "promoter: no artifact gone\\n\\x1b[8m.txt in run r1\n"


def _journal_day(root: Path) -> Path:
    return next((root / "artifacts" / AUDIT_DIR).glob("*.jsonl"))


def test_an_old_line_with_a_raw_non_utf8_byte_is_read(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line an older version wrote with a raw 0xFF (a SUDO_USER's) is an event: listed by
    `audit` (escaped) and `audit --json` (valid UTF-8, as `\\udcff`); lines that are no event
    get a truthful reason, never "torn"."""
    day = _journal_day(root)
    with day.open("ab") as fh:
        fh.write(b'{"timestamp":"2099-01-01T00:00:00.000000Z","event":"artifact.deleted",'
                 b'"actor":"uid:0(root)","sudo_user":"ev\xffil","host":"h","run_id":"r1",'
                 b'"filename":"old\xfe.txt"}\n')
        fh.write(b"not json at all\n" + b"[" * 100_000 + b"\n" + b'{"event": 1}\n'
                 + b'{"event": "x", "timestamp": "soon"}\n')
    with LogCapture() as logs:
        found = read_journal(day.parent)
    assert found[-1]["sudo_user"] == "ev\udcffil" and found[-1]["filename"] == "old\udcfe.txt"
    reasons = [e["reason"] for e in logs.events("audit.invalid")]
    assert reasons == ["not JSON (torn by a crash, or not written by promoter)"] * 2 + [
        "JSON, but not an event (no event or timestamp string)",
        "an event whose timestamp is not a time"]
    code, out, _ = _run(capsys, "audit", "--root", str(root))
    assert code == 0 and out.splitlines()[-1].endswith(
        "r1 old\\udcfe.txt") and "uid:0(root) sudo:ev\\udcffil " in out
    code, out, _ = _run(capsys, "audit", "--json", "--root", str(root))
    last = out.rstrip("\n").split("\n")[-1]
    assert code == 0 and re.search(r'"sudo_user": "ev\\udcffil"', last)
    assert json.loads(last)["filename"] == "old\udcfe.txt"
    out.encode("utf-8")  # strict: jq gets UTF-8


def test_console_log_lines_show_values_escaped() -> None:
    """Under log.format = "console" a hostile file name stays on its log line, escaped;
    a JSON log line keeps the value itself."""
    stream = io.StringIO()
    try:
        configure_logging("info", "console", stream=stream)
        get_logger().warning("artifact.rejected", filename=FORGED, run_id="r1", size=3)
        console = stream.getvalue()
        stream = io.StringIO()
        configure_logging("info", "json", stream=stream)
        get_logger().warning("artifact.rejected", filename=FORGED)
    finally:
        configure_logging("info", "json")
    assert console.count("\n") == 1 and not _unsafe(console)
    assert "filename=" + repr(FORGED) in console and "run_id=r1 size=3" in console
    assert json.loads(stream.getvalue())["filename"] == FORGED
    spaceless = io.StringIO()  # structlog prints such a string raw: shown as its repr
    configure_logging("info", "console", stream=spaceless)
    try:
        get_logger().warning("artifact.rejected", filename="l\x1b[31m\u202eink")
    finally:
        configure_logging("info", "json")
    assert "filename='l\\x1b[31m\\u202eink'" in spaceless.getvalue()

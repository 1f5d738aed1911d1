"""The audit journal of DESIGN §11: actors, one write a batch, torn lines, `promoter audit`."""

from __future__ import annotations

import io
import json
import os
import pwd
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from promoter.audit import AUDIT_DIR, read_journal
from promoter.cli import main
from promoter.logs import configure_logging
from promoter.sweep import sweep
from tests.daemon_helpers import base_config, start_daemon, wait_until, write
from tests.store_helpers import FakeClock
from tests.test_web_server import _write_config, start, stop, wait_healthy
from tests.web_helpers import CSRF, LogCapture, make_store, populate, write_session_file

ME = f"uid:{os.getuid()}({pwd.getpwuid(os.getuid()).pw_name})"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("PROMOTER_") and k != "SUDO_USER"}


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`promoter ARGV` in a shell of its own, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "promoter", *argv], capture_output=True,
                          text=True, timeout=60, check=False, env={**_env(), **(env or {})})


def audit_json(root: Path, *extra: str) -> list[dict[str, Any]]:
    proc = cli("audit", "--json", "--root", str(root), *extra)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_rm_from_a_shell_is_journaled_with_its_user(tmp_path: Path) -> None:
    """`promoter rm` in an operator's shell (under sudo) appears in `audit --json` with uid and
    sudo_user, though its own terminal is gone."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a", "b.txt": b"bb"})
    proc = cli("rm", "r1", "a.txt", "--root", str(tmp_path), env={"SUDO_USER": "alice"})
    assert proc.returncode == 0, proc.stderr
    assert cli("rm", "r1", "--root", str(tmp_path)).returncode == 0
    found = audit_json(tmp_path)
    assert [e["event"] for e in found] == ["artifact.promoted", "artifact.promoted",
                                           "artifact.deleted", "run.deleted"]
    deleted = found[2]
    assert deleted["actor"] == ME and deleted["sudo_user"] == "alice"
    assert deleted["run_id"] == "r1" and deleted["filename"] == "a.txt"
    assert found[3]["actor"] == ME and "sudo_user" not in found[3]
    assert all(e["host"] and e["timestamp"].endswith("Z") for e in found)


def test_keep_over_http_names_the_client_only_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """A keep through a proxy on loopback is journaled as the forwarded client, with the token;
    without http.trusted_proxies, X-Forwarded-For from loopback is not believed."""
    store = make_store(tmp_path / "root")
    populate(store, tmp_path / "root", "r1", {"a.txt": b"a"})
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    headers = {"Host": "localhost", "X-Forwarded-For": "198.51.100.7",
               "Authorization": "Bearer s3cret"}
    for extra, keep in (("", True), ('trusted_proxies = ["127.0.0.1"]\n', False)):
        config = _write_config(tmp_path, f'[http]\ntoken_file = "{token}"\n{extra}')
        server, lines = start(config)
        try:
            wait_healthy(server)
            with httpx.Client(base_url=server.url, headers=headers) as client:
                r = client.patch("/runtime/artifacts/r1", json={"keep": keep})
                assert r.status_code == 200, r.text
            assert stop(server, lines) == 0
        finally:
            server.close()
    kept, unkept = [e for e in audit_json(tmp_path / "root") if e["event"].startswith("run.")]
    assert kept["event"] == "run.kept" and kept["actor"] == "http:127.0.0.1"
    assert unkept["event"] == "run.unkept" and unkept["actor"] == "http:198.51.100.7"
    assert kept["auth"] == unkept["auth"] == "token"


def test_a_daemon_promotion_is_journaled_as_daemon(tmp_path: Path) -> None:
    """A file promoted by the daemon is in `audit --json` with actor `daemon` once the entry
    is visible (the journal is flushed before the batch is reported)."""
    daemon = start_daemon(tmp_path)
    try:
        daemon.wait_ready()
        write(tmp_path / "sessions/r1/output/plot.png", b"png")
        daemon.wait_entry("r1", "plot.png")
        found = wait_until(lambda: audit_json(tmp_path, "--run", "r1"), 10)
        assert found[0]["event"] == "artifact.promoted" and found[0]["actor"] == "daemon"
        assert found[0]["filename"] == "plot.png" and len(found[0]["sha256"]) == 64
    finally:
        assert daemon.stop() == 0


def test_kill_9_during_a_burst_leaves_the_journal_parseable(tmp_path: Path) -> None:
    """kill -9 in the middle of a burst: `audit --json` still parses; a torn last line is
    skipped with a warning, and the next event starts on a line of its own."""
    daemon = start_daemon(tmp_path, base_config(promote={"workers": 2}))
    try:
        daemon.wait_ready()
        for i in range(600):
            write(tmp_path / f"sessions/r{i % 6}/output/f{i}.txt", b"x" * 100)
        journal = tmp_path / "artifacts" / AUDIT_DIR
        wait_until(lambda: sum(p.stat().st_size for p in journal.glob("*.jsonl")) > 2000, 20)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
    finally:
        daemon.close()
    found = audit_json(tmp_path)
    assert found and all(e["event"] == "artifact.promoted" for e in found)
    assert len({(e["run_id"], e["filename"]) for e in found}) == len(found)
    day = sorted(journal.glob("*.jsonl"))[-1]
    with day.open("ab") as fh:  # what a crash in the middle of a write leaves
        fh.write(b'{"timestamp": "2026-01-01T00:00:00Z", "event": "run.del')
    promoted_run = str(found[0]["run_id"])  # a run the killed daemon did create
    assert cli("keep", promoted_run, "--root", str(tmp_path)).returncode == 0
    proc = cli("audit", "--json", "--root", str(tmp_path))
    assert proc.returncode == 0
    after = [json.loads(line) for line in proc.stdout.splitlines()]
    assert after[:-1] == found and after[-1]["event"] == "run.kept"
    warnings = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [w["event"] for w in warnings] == ["audit.invalid"] and warnings[0]["file"] == day.name


def test_a_batch_costs_the_journal_one_write_and_one_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 200 promotions is one write and one fdatasync on the journal, no fsync."""
    store = make_store(tmp_path)
    names = [f"f{i}.txt" for i in range(200)]
    for name in names:
        write_session_file(tmp_path, "r1", name, b"x")
    calls: list[tuple[str, str]] = []

    def counted(name: str, real: Any) -> Any:
        def wrapper(fd: int, *args: Any) -> Any:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if f"/{AUDIT_DIR}/" in path:
                calls.append((name, path))
            return real(fd, *args)
        return wrapper

    for name in ("write", "fdatasync", "fsync"):
        monkeypatch.setattr(os, name, counted(name, getattr(os, name)))
    assert len(store.promote_files("r1", names)) == 200
    assert [c[0] for c in calls] == ["write", "fdatasync"]
    assert len(read_journal(tmp_path / "artifacts" / AUDIT_DIR)) == 200


def test_audit_filters_and_day_wise_retention(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--since and --run select events; the sweeper removes whole days past retention_days."""
    clock = FakeClock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    store = make_store(tmp_path, clock, audit={"retention_days": 30})
    populate(store, tmp_path, "old", {"a.txt": b"a"})
    clock.advance(days=40)
    populate(store, tmp_path, "new", {"b.txt": b"b"})
    store.set_keep("new", True)
    folder = tmp_path / "artifacts" / AUDIT_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["2026-01-01.jsonl", "2026-02-10.jsonl"]
    assert [e["event"] for e in read_journal(folder, run_id="new")] == ["artifact.promoted",
                                                                        "run.kept"]
    assert [e["run_id"] for e in read_journal(folder, since=clock.now())] == ["new", "new"]
    report = sweep(store, dry_run=True)
    assert len(list(folder.iterdir())) == 2 and report.audit_days_dropped == []
    report = sweep(store)
    assert report.audit_days_dropped == ["2026-01-01"]
    assert [p.name for p in folder.iterdir()] == ["2026-02-10.jsonl"]
    assert main(["audit", "--root", str(tmp_path), "--run", "new"]) == 0
    out = capsys.readouterr().out
    assert "run.kept" in out and ME in out and "artifact.promoted" in out


def test_audit_events_are_logged_with_actor_and_host(tmp_path: Path) -> None:
    """The log line of each change carries actor and host too (DESIGN §11)."""
    store = make_store(tmp_path, storage={"host_id": "web-1"})
    with LogCapture() as logs:
        populate(store, tmp_path, "r1", {"a.txt": b"a"})
        store.set_keep("r1", True)
    kept = logs.events("run.kept")[0]
    assert kept["actor"] == ME and kept["host"] == "web-1"
    assert logs.events("artifact.promoted")[0]["host"] == "web-1"


def test_http_changes_carry_the_client_and_reads_log_at_debug(tmp_path: Path) -> None:
    """In-process: a change is journaled as http:<peer> (no port); a successful GET is an
    http.request line at debug, a change at info."""
    from tests.web_helpers import client_for

    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    client = client_for(store)
    with LogCapture() as logs:
        assert client.get("/runtime/artifacts/r1").status_code == 200
        assert client.delete("/runtime/artifacts/r1/files/a.txt", headers=CSRF).status_code == 204
    levels = {(e["method"], e["level"]) for e in logs.events("http.request")}
    assert levels == {("GET", "debug"), ("DELETE", "info")}
    deleted = read_journal(tmp_path / "artifacts" / AUDIT_DIR)[-1]
    assert deleted["event"] == "artifact.deleted" and deleted["actor"] == "http:testclient"
    assert "auth" not in deleted  # no token configured, none checked


def test_odd_journal_lines_and_durations_never_crash(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Lines that are JSON but not events (a number for a timestamp, an array, bytes that are
    not UTF-8) are skipped with a warning; a --since beyond any date lists everything."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    day = next((tmp_path / "artifacts" / AUDIT_DIR).glob("*.jsonl"))
    with day.open("ab") as fh:
        fh.write(b'{"timestamp": 12, "event": "x"}\n[1, 2]\n\xff\xfe\n'
                 b'{"timestamp": "2026-13-45T00:00:00Z", "event": "x"}\n')
    for since in ("999999999d", "999999999w"):
        code = main(["audit", "--json", "--since", since, "--root", str(tmp_path)])
        out, err = capsys.readouterr()
        assert code in (0, 2) and "Traceback" not in err and "internal error" not in err
        if code == 0:
            assert [json.loads(line)["event"] for line in out.splitlines()] == [
                "artifact.promoted"]
            assert err.count("audit.invalid") == 4


def test_a_proxy_cannot_write_kilobytes_into_the_actor(tmp_path: Path) -> None:
    """Behind a trusted proxy, whatever its X-Forwarded-For holds, the actor stays short (text
    that is no address is not believed at all: the proxy's own address is the actor)."""
    from promoter.config import load_config
    from promoter.web import create_app
    from tests.web_helpers import WebClient

    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    config = load_config(None, {"PROMOTER_HTTP__TRUSTED_PROXIES": '["10.0.0.0/8"]'},
                         str(tmp_path))
    client = WebClient(create_app(config, store, list_ttl_s=0.0))
    client.transport = httpx.ASGITransport(app=client.app, client=("10.1.2.3", 40000))
    r = client.patch("/runtime/artifacts/r1", json={"keep": True},
                     headers={**CSRF, "X-Forwarded-For": "x" * 5000})
    assert r.status_code == 200
    kept = read_journal(tmp_path / "artifacts" / AUDIT_DIR)[-1]
    assert kept["event"] == "run.kept" and kept["actor"] == "http:10.1.2.3"


def test_a_forwarded_entry_that_is_no_address_leaves_the_proxys(tmp_path: Path) -> None:
    """Behind a trusted proxy the actor is an IP address alone: `unknown`, markup or kilobytes
    in X-Forwarded-For leave the proxy's address; an IPv6 entry with a port is the address."""
    from promoter.config import load_config
    from promoter.web import create_app
    from tests.web_helpers import WebClient

    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    config = load_config(None, {"PROMOTER_HTTP__TRUSTED_PROXIES": '["10.0.0.0/8"]'},
                         str(tmp_path))
    client = WebClient(create_app(config, store, list_ttl_s=0.0))
    client.transport = httpx.ASGITransport(app=client.app, client=("10.1.2.3", 40000))
    cases = [("198.51.100.7, unknown", "http:10.1.2.3"), ("<b>evil</b>", "http:10.1.2.3"),
             ("x" * 5000, "http:10.1.2.3"), ("[2001:db8::1]:443", "http:2001:db8::1"),
             ("203.0.113.9:8080, 10.9.9.9", "http:203.0.113.9")]
    for i, (forwarded, actor) in enumerate(cases):
        keep = i % 2 == 0  # a change each time, so each one is journaled
        r = client.patch("/runtime/artifacts/r1", json={"keep": keep},
                         headers={**CSRF, "X-Forwarded-For": forwarded})
        assert r.status_code == 200
        event = read_journal(tmp_path / "artifacts" / AUDIT_DIR)[-1]
        assert event["event"] == ("run.kept" if keep else "run.unkept"), forwarded
        assert event["actor"] == actor, forwarded


def test_a_journal_day_made_under_sudo_stays_the_daemons(tmp_path: Path) -> None:
    """Today's journal file created by root (`sudo promoter keep`) belongs to the owner of
    `.audit/` (the daemon's user), so the daemon can still append to it."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    folder = tmp_path / "artifacts" / AUDIT_DIR
    for day in folder.iterdir():
        day.unlink()
    daemon_user = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
    os.chown(folder, *daemon_user)
    assert cli("keep", "r1", "--root", str(tmp_path)).returncode == 0
    made = next(folder.iterdir()).stat()
    assert (made.st_uid, made.st_gid) == daemon_user


def test_journaling_holds_no_descriptor(tmp_path: Path) -> None:
    """After a change, no journal file stays open: processes make many Stores."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    store.set_keep("r1", True)
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [p for p in held if f"/{AUDIT_DIR}/" in p]


def test_odd_day_files_are_skipped_never_a_crash_nor_a_hang(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A day file named like a day that is none (2026-13-45) or a FIFO in .audit/ is skipped with
    a warning by `audit` (no internal error, no hang); appending to a FIFO day fails at once,
    naming the path, instead of blocking or feeding events to a pipe."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    folder = tmp_path / "artifacts" / AUDIT_DIR
    today = next(folder.glob("*.jsonl"))
    (folder / "2026-13-45.jsonl").write_bytes(today.read_bytes())
    os.mkfifo(folder / "2020-01-01.jsonl")
    code = main(["audit", "--json", "--root", str(tmp_path)])  # hung forever before
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["artifact.promoted"]
    assert err.count("audit.invalid") == 2 and "internal error" not in err
    today.rename(folder / "saved")
    os.mkfifo(today)
    assert main(["keep", "r1", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not a regular file" in err and str(today) in err


class _CountingStream(io.StringIO):
    """A log stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_batch_of_promotions_is_logged_in_one_write(tmp_path: Path, level: str) -> None:
    """A batch's artifact.promoted lines are rendered once each and written together (one
    write, not a write and a flush a line); each is whole JSON with actor and host; at
    warning nothing is written."""
    store = make_store(tmp_path)
    names = [f"f{i}.txt" for i in range(50)]
    for name in names:
        write_session_file(tmp_path, "r1", name, b"x")
    stream = _CountingStream()
    configure_logging(level, "json", stream=stream)
    try:
        store.promote_files("r1", names)
    finally:
        configure_logging()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    promoted = [e for e in lines if e["event"] == "artifact.promoted"]
    if level == "warning":
        assert promoted == [] and stream.writes == 0
        return
    assert sorted(e["filename"] for e in promoted) == sorted(names)
    assert all(e["actor"] == "daemon" or e["actor"].startswith("uid:") for e in promoted)
    assert all(e["level"] == "info" and "timestamp" in e and "host" in e for e in promoted)
    assert stream.writes <= 2 * (len(lines) - len(promoted)) + 2  # print: a line and a "\n"


def test_an_append_during_anothers_write_leaves_no_blank_or_torn_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """probe-cpu F2: an append that looks at the file while another's batch is half written
    waits for it (one lock over look and write): strict JSON Lines, no blank line. B is
    another journal object, as another process's (a process's own threads take turns)."""
    import fcntl
    import threading

    from promoter.audit import LocalJournal
    journal = LocalJournal(tmp_path / AUDIT_DIR)
    line = json.dumps({"event": "artifact.promoted", "pad": "y" * 300}) + "\n"
    journal.append("2026-11-30", line.encode())
    half, b_waits, b_done = threading.Event(), threading.Event(), threading.Event()
    real_write, real_flock = os.write, fcntl.flock

    def write_half(fd: int, data: Any) -> int:
        """Thread A's batch is a short write: half, then B's turn, then the rest."""
        if threading.current_thread().name == "A" and not half.is_set():
            n = real_write(fd, bytes(data[: len(data) // 2]))
            half.set()
            wait_until(lambda: b_done.is_set() or b_waits.is_set(), timeout=10)
            return n
        return real_write(fd, data)

    def flock(fd: int, op: int) -> None:
        if threading.current_thread().name == "B":
            b_waits.set()  # B is about to wait for A's lock: A may finish its write
        real_flock(fd, op)

    monkeypatch.setattr(os, "write", write_half)
    monkeypatch.setattr(fcntl, "flock", flock)
    a = threading.Thread(name="A", target=journal.append,
                         args=("2026-11-30", (line * 21).encode()))  # half: mid-line
    other = LocalJournal(tmp_path / AUDIT_DIR)
    b = threading.Thread(name="B", target=lambda: (half.wait(10), other.append(
        "2026-11-30", (line * 3).encode()), b_done.set()))
    a.start()
    b.start()
    a.join(20)
    b.join(20)
    raw = (tmp_path / AUDIT_DIR / "2026-11-30.jsonl").read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 26
    assert all(json.loads(x)["event"] == "artifact.promoted" for x in lines[:-1])


def test_old_and_new_journal_lines_are_read_alike(tmp_path: Path) -> None:
    """A day holding a line in the journal's former style (no spaces, UTF-8 as it is) and
    lines written now (the log line's style, `\\u` escapes) reads as the same events."""
    from promoter.audit import Actor, Auditor, LocalJournal

    folder = tmp_path / AUDIT_DIR
    folder.mkdir()
    clock = FakeClock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    old = {"timestamp": "2026-11-30T11:00:00.000000Z", "event": "artifact.promoted",
           "actor": "daemon", "host": "h", "run_id": "r", "filename": "é/ü.txt"}
    (folder / "2026-11-30.jsonl").write_bytes(
        (json.dumps(old, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    Auditor(LocalJournal(folder), "h", Actor("daemon"), clock).record(
        [("artifact.promoted", {"run_id": "r", "filename": "é/ü.txt"})])
    raw = (folder / "2026-11-30.jsonl").read_bytes().splitlines()
    assert raw[1].isascii() and b"\\u00e9" in raw[1]
    got = read_journal(folder)
    assert [e["filename"] for e in got] == ["é/ü.txt"] * 2
    assert got[1] == {**old, "timestamp": "2026-11-30T12:00:00.000000Z"}

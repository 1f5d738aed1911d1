"""Operator mistakes that used to fail silently, each reproduced (DESIGN §3, §5; issue 13)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from promoter.cli import main
from promoter.store import Store
from tests.daemon_helpers import start_daemon, write
from tests.web_helpers import make_store, populate


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROMOTER_")}


@pytest.mark.parametrize("argv", [
    ["ls"], ["ls", "--json"], ["show", "r1"], ["rm", "r1"], ["keep", "r1"],
    ["promote", "r1", "a.txt"], ["sweep"], ["reconcile"], ["library", "ls"], ["audit"],
    ["check"], ["serve", "--listen", "127.0.0.1:0"],
])
def test_a_mistyped_root_is_an_error_and_grows_no_tree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Pointed at a root without artifacts/, every command but `run` exits 1 naming the path,
    and creates nothing there (no "no runs", no new tree)."""
    typo = tmp_path / "typo"
    code, out, err = run_cli(capsys, *argv, "--root", str(typo))
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and str(typo / "artifacts") in err
    assert not typo.exists()


def test_an_unknown_promoter_variable_is_a_configuration_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PROMOTER_STORAGE_ROOT (one underscore) is exit 2 naming it, not silently ignored."""
    monkeypatch.setenv("PROMOTER_STORAGE_ROOT", str(tmp_path))
    code, _, err = run_cli(capsys, "config")
    assert code == 2 and "PROMOTER_STORAGE_ROOT" in err
    monkeypatch.delenv("PROMOTER_STORAGE_ROOT")
    monkeypatch.setenv("PROMOTER_STORAGE__ROOOT", str(tmp_path))
    code, _, err = run_cli(capsys, "config")
    assert code == 2 and "storage.rooot" in err


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` seen through a read-only view: a read-only bind mount (as root), else modes."""
    if os.getuid() == 0:
        view = path.parent / f"{path.name}-ro"
        view.mkdir()
        subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(view)], check=True)
        try:
            yield view
        finally:
            subprocess.run(["umount", str(view)], check=True)
            view.rmdir()
    else:
        folders = [p for p in [path, *path.rglob("*")] if p.is_dir()]
        for p in folders:
            p.chmod(0o555)
        try:
            yield path
        finally:
            for p in folders:
                p.chmod(0o755)


def test_a_read_only_root_ends_run_with_one_json_line(tmp_path: Path) -> None:
    """`run` on a read-only store exits 1 with one JSON log line naming the operation and
    the path; never plain text, never "internal error"."""
    store = make_store(tmp_path / "root")
    populate(store, tmp_path / "root", "f3b2a", {"a.txt": b"a"})
    with read_only(tmp_path / "root") as root:
        proc = subprocess.run([sys.executable, "-m", "promoter", "run", "--root", str(root)],
                              capture_output=True, text=True, timeout=60, env=_env(),
                              check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    failed = lines[-1]
    assert failed["event"] == "daemon.failed" and failed["level"] == "error"
    assert "internal error" not in failed["reason"]
    assert "cannot open the lock file of run f3b2a" in failed["reason"]
    assert str(root / "artifacts/.locks/f3b2a") in failed["reason"]


def test_a_second_daemon_on_the_same_sessions_refuses(tmp_path: Path) -> None:
    """A second `promoter run` on one sessions folder exits 1 naming the first one's PID."""
    daemon = start_daemon(tmp_path)
    try:
        daemon.wait_ready()
        proc = subprocess.run([sys.executable, "-m", "promoter", "run", "--root", str(tmp_path)],
                              capture_output=True, text=True, timeout=60, env=_env(),
                              check=False)
        assert proc.returncode == 1
        failed = json.loads(proc.stderr.splitlines()[-1])
        assert failed["event"] == "daemon.failed"
        assert f"PID {daemon.proc.pid}" in failed["reason"]
        write(tmp_path / "sessions/r1/output/a.txt", b"a")  # the first one goes on
        daemon.wait_entry("r1", "a.txt")
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("content", [None, "  \n"])
def test_config_checks_the_token_file_as_serve_will(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None) -> None:
    """`promoter config` refuses a missing or empty http.token_file (exit 2), as serve does."""
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\ntoken_file = "{token}"\n')
    code, _, err = run_cli(capsys, "config", "--config", str(cfg))
    assert code == 2 and str(token) in err


def test_check_is_cheap_whatever_the_number_of_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`promoter check` (the container health check) reads no run at all: O(1) in runs."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})

    def forbidden(*args: object) -> None:
        raise AssertionError("check read a run")

    monkeypatch.setattr(Store, "read_run", forbidden)
    monkeypatch.setattr(Store, "run_ids", forbidden)
    code, out, _ = run_cli(capsys, "check", "--json", "--root", str(tmp_path))
    assert code == 0 and json.loads(out) == {"status": "ok"}
    (tmp_path / "library").rmdir()
    code, _, err = run_cli(capsys, "check", "--root", str(tmp_path))
    assert code == 1 and "library" in err


def test_global_options_before_the_command(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`promoter --root X ls` works as `promoter ls --root X`; after the command wins."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "ls", "--json")
    assert code == 0 and json.loads(out)["runs"][0]["run_id"] == "r1"
    code, out, _ = run_cli(capsys, "--root", "/nowhere", "ls", "--root", str(tmp_path))
    assert code == 0 and "r1" in out


def test_changing_commands_take_json_and_ls_filters_current(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rm, keep and promote print JSON with --json; `ls --filter current` lists active runs;
    one file is "1 file"."""
    store = make_store(tmp_path)
    populate(store, tmp_path, "r1", {"a.txt": b"a"})
    populate(store, tmp_path, "r2", {"b.txt": b"bb", "c.txt": b"c"})
    store.mark_completed("r2")
    root = str(tmp_path)
    code, out, _ = run_cli(capsys, "ls", "--filter", "current", "--json", "--root", root)
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["r1"]
    code, out, _ = run_cli(capsys, "keep", "r1", "--json", "--root", root)
    assert code == 0 and json.loads(out)["keep"] is True
    code, out, _ = run_cli(capsys, "promote", "r1", "a.txt", "--json", "--root", root)
    assert code == 0 and json.loads(out)["name"] == "a.txt"
    code, out, _ = run_cli(capsys, "rm", "r1", "--root", root)
    assert out == "deleted run r1 (1 file, 1 B)\n"
    code, out, _ = run_cli(capsys, "rm", "r2", "b.txt", "--json", "--root", root)
    assert json.loads(out) == {"run_id": "r2", "filename": "b.txt", "size_bytes": 2,
                               "dry_run": False}


def test_help_explains_json_and_overwrite(capsys: pytest.CaptureFixture[str]) -> None:
    """--json and --overwrite have help text."""
    assert main(["promote", "--help"]) == 0
    out = capsys.readouterr().out
    assert "replace a library file" in out and "machine-readable JSON" in out


class _KeepFresh:
    """Touches a file every 0.1 s until `done`: it stays unsettled however long the program
    takes to start (under load that can pass settle_ms, and the work would not last)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keep-fresh", daemon=True)

    def _run(self) -> None:
        while not self.done.wait(0.1):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.done.set()
        self._thread.join(5)

    def __enter__(self) -> _KeepFresh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _on_a_terminal(argv: list[str], fresh: _KeepFresh | None = None,
                   shown: bytes = b"") -> tuple[int, str]:
    """Run `promoter ARGV` with stderr on a pseudo-terminal; returns its status and output.
    `fresh` stops touching its file once `shown` has appeared."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "promoter", *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=slave, env=_env())
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
            if fresh is not None and shown in b"".join(chunks):
                fresh.done.set()
        return proc.wait(60), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


def test_long_reconcile_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal, a reconcile lasting over a second shows files done of found, bytes and
    rate while it waits for a file to settle, and clears it at the end; with stderr not a
    terminal, nothing but log lines."""
    from tests.web_helpers import write_session_file

    make_store(tmp_path)
    write_session_file(tmp_path, "r1", "old.txt", b"o" * 100)
    fresh = write_session_file(tmp_path, "r1", "fresh.txt", b"f" * 100, age_s=0)
    with _KeepFresh(fresh) as keep:  # unsettled until old.txt is in: then 2 s to settle
        code, text = _on_a_terminal(["reconcile", "--root", str(tmp_path),
                                     "--config", str(_settle_config(tmp_path, 2000))],
                                    keep, b"artifact.promoted")
    assert code == 0
    assert "reconcile: files 1 of 2, 100 B," in text and "/s" in text
    assert "\r\x1b[K" in text[text.rindex("/s\x1b[K"):]  # the line cleared at the end
    from promoter.progress import terminal_progress

    assert terminal_progress("reconcile: files") is None  # stderr captured: not a terminal


def _settle_config(tmp_path: Path, settle_ms: int) -> Path:
    cfg = tmp_path / "settle.toml"
    cfg.write_text(f"[watch]\nsettle_ms = {settle_ms}\n")
    return cfg


def test_a_long_start_up_catch_up_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    """`promoter run` at a terminal shows its start-up catch-up's progress when it lasts."""
    import pty
    import select
    import signal
    import time

    from tests.web_helpers import write_session_file

    make_store(tmp_path)
    write_session_file(tmp_path, "r1", "old.txt", b"o" * 100)
    keep = _KeepFresh(write_session_file(tmp_path, "r1", "fresh.txt", b"f" * 100, age_s=0))
    keep.start()  # unsettled until the daemon has started: then 4 s to settle
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "promoter", "run", "--root", str(tmp_path),
                             "--config", str(_settle_config(tmp_path, 4000))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**_env(), "PYTHONFAULTHANDLER": "1"})  # SIGABRT: thread dump
    os.close(slave)
    text = ""
    stopped_in: float | None = None
    try:
        deadline = time.monotonic() + 60
        while "daemon.ready" not in text and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                text += os.read(master, 65536).decode(errors="replace")
            if "daemon.starting" in text:
                keep.done.set()  # before its watcher starts: a touch would be an event
    finally:
        keep.stop()
        proc.send_signal(signal.SIGTERM)
        # keep reading: a terminal nobody reads fills up, and the daemon's next write blocks
        signalled = time.monotonic()
        deadline = signalled + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):  # EIO once the daemon closed its side
                    text += os.read(master, 65536).decode(errors="replace")
        if proc.poll() is None:  # stuck: its threads' stacks say where, before it dies
            proc.send_signal(signal.SIGABRT)
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    with contextlib.suppress(OSError):
                        text += os.read(master, 65536).decode(errors="replace")
            proc.kill()
        else:
            stopped_in = time.monotonic() - signalled
        proc.wait(5)
        os.close(master)
    assert stopped_in is not None, f"no exit 30 s after SIGTERM:\n{text[-6000:]}"
    assert "start-up catch-up: files 1 of 2, 100 B," in text  # while fresh.txt settles


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose listings are more than a pipe holds (64 KiB); commands here only read."""
    root = tmp_path_factory.mktemp("big")
    names = [f"{'a-long-file-name-' * 5}{i:04d}.txt" for i in range(800)]  # 100+ B a line
    populate(make_store(root), root, "r1", dict.fromkeys(names, b"x"))
    return root


@pytest.mark.parametrize("argv", [["show", "r1"], ["show", "r1", "--json"], ["ls", "--json"],
                                  ["audit"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly_with_141(
        big_store: Path, argv: list[str]) -> None:
    """`promoter ls | head -1`: a reader gone ends the command without a word on stderr,
    with the status a tool ended by SIGPIPE has (141), never 0 and never a traceback."""
    with subprocess.Popen([sys.executable, "-m", "promoter", *argv, "--root", str(big_store)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(10)  # more than a pipe holds is coming: the reader leaves
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait(30)
    assert (code, err) == (141, b"")

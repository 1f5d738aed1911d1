"""The operations files: systemd units, sysusers/tmpfiles, Dockerfile, compose, CI, README.

These tests read files and run external tools (systemd-analyze, systemd-sysusers,
systemd-tmpfiles, hadolint); they never import the promoter package. A missing
tool skips its test with the reason on a developer machine; under CI (CI=true),
where .ci/run installs every tool, a missing tool fails the test instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAEMON_UNIT = ROOT / "systemd" / "promoter.service"
WEB_UNIT = ROOT / "systemd" / "promoter-web.service"
SYSUSERS = ROOT / "systemd" / "promoter.sysusers.conf"
TMPFILES = ROOT / "systemd" / "promoter.tmpfiles.conf"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.example.yaml"
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

BINARY = "/usr/local/bin/promoter"
CONFIG = "/etc/promoter/config.toml"
STORAGE = "/app/storage"


# --- helpers ------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine; fail under CI, where every tool must be present."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run is expected to provide it)")
    pytest.skip(reason)


def _tool(name: str) -> str:
    """Find a tool next to the running interpreter (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        _unavailable(f"{name} is not installed")
    return found


def _systemd_analyze() -> str:
    """systemd-analyze, new enough for `security --offline` (systemd 250)."""
    tool = _tool("systemd-analyze")
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"systemd (\d+)", out)
    if match is None or int(match.group(1)) < 250:
        _unavailable(f"systemd-analyze is older than 250: {out.splitlines()[0]!r}")
    return tool


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Parse a unit file into sections of (key, value) pairs, keeping repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def _values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in _unit(path).get(section, []) if k == key]


def _one(path: Path, key: str, section: str = "Service") -> str:
    values = _values(path, key, section)
    assert len(values) == 1, f"{path.name}: expected one {key}=, found {values}"
    return values[0]


def _paths(path: Path, key: str) -> set[str]:
    """All paths of a space-separated path setting, without the '-' or '+' prefixes."""
    return {p.lstrip("-+") for value in _values(path, key) for p in value.split()}


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure figure in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


def _verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Verify a copy whose ExecStart binary exists; everything else is as shipped.

    /usr/local/bin/promoter is not installed where the tests run, and verify
    would rightly report it missing; that one path is the only change.
    """
    fake = tmp_path / "bin" / "promoter"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(BINARY, str(fake)))
    return subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", "--recursive-errors=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
    return instructions


def _last(keyword: str) -> str:
    found = [args for kw, args in _dockerfile() if kw == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def _readme_section(heading: str) -> str:
    """The text of one `## heading` section of README.md."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def _compose() -> dict[str, object]:
    try:
        # PyYAML arrives with the test extra (schemathesis depends on it).
        import yaml
    except ImportError:
        _unavailable("PyYAML is not installed")
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


# --- systemd: the tools' verdicts -----------------------------------------------


def test_daemon_unit_exposure_is_at_most_1() -> None:
    """systemd-analyze rates the daemon's sandbox at exposure 1.0 or lower."""
    assert _exposure(DAEMON_UNIT) <= 1.0


def test_web_unit_exposure_is_at_most_2() -> None:
    """systemd-analyze rates the web service's sandbox at exposure 2.0 or lower."""
    assert _exposure(WEB_UNIT) <= 2.0


@pytest.mark.parametrize("unit", [DAEMON_UNIT, WEB_UNIT], ids=lambda p: p.name)
def test_unit_verifies_clean(unit: Path, tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit without a single message."""
    result = _verify(unit, tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == ""


def test_shipped_unit_verifies_but_for_the_missing_binary() -> None:
    """Verifying the shipped unit reports at most that /usr/local/bin/promoter is absent."""
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", "--recursive-errors=no", str(DAEMON_UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    if Path(BINARY).exists():
        assert result.returncode == 0, lines
        assert lines == []
    else:
        assert lines == [
            f"promoter.service: Command {BINARY} is not executable: No such file or directory"
        ]


def _syscalls(tool: str, group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd syscall-filter group, nested groups expanded."""
    seen = set() if seen is None else seen
    seen.add(group)
    out = subprocess.run(
        [tool, "syscall-filter", "--no-pager", group], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name.startswith("@"):
            if name not in seen:
                calls |= _syscalls(tool, name, seen)
        else:
            calls.add(name)
    return calls


def test_daemon_syscall_filter_allows_inotify_and_copying() -> None:
    """The daemon's syscall filter keeps inotify, copy_file_range and sendfile allowed."""
    tool = _systemd_analyze()
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in _values(DAEMON_UNIT, "SystemCallFilter"):
        deny = value.startswith("~")
        for group in value.lstrip("~").split():
            calls = _syscalls(tool, group) if group.startswith("@") else {group}
            (denied if deny else allowed).update(calls)
    needed = {
        "inotify_init1",
        "inotify_add_watch",
        "inotify_rm_watch",
        "copy_file_range",
        "sendfile",
        "openat",
        "fstat",
        "rename",
        "renameat2",
        "fsync",
        "epoll_wait",
        "futex",
    }
    assert needed <= allowed - denied, needed - (allowed - denied)


# --- systemd: what DESIGN §5 and §7 ask of the units ---------------------------


def test_daemon_unit_runs_the_daemon_as_design_5_needs() -> None:
    """The daemon unit starts `promoter run` with notify, watchdog, reload and stop as DESIGN §5."""
    assert _one(DAEMON_UNIT, "ExecStart") == f"{BINARY} run --config {CONFIG}"
    assert _one(DAEMON_UNIT, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _one(DAEMON_UNIT, "Type") == "notify"
    assert _one(DAEMON_UNIT, "NotifyAccess") == "main"
    assert _one(DAEMON_UNIT, "WatchdogSec") == "30"
    assert _one(DAEMON_UNIT, "Restart") == "on-failure"
    assert _one(DAEMON_UNIT, "TimeoutStopSec") == "30"
    assert _one(DAEMON_UNIT, "KillSignal") == "SIGTERM"
    assert _one(DAEMON_UNIT, "RestartPreventExitStatus") == "2"
    assert _one(DAEMON_UNIT, "WantedBy", "Install") == "multi-user.target"


@pytest.mark.parametrize("unit", [DAEMON_UNIT, WEB_UNIT], ids=lambda p: p.name)
def test_unit_runs_as_the_fixed_promoter_user(unit: Path) -> None:
    """Both units run as the sysusers-made user promoter, never as a dynamic user."""
    assert _one(unit, "User") == "promoter"
    assert _one(unit, "Group") == "promoter"
    assert _values(unit, "DynamicUser") in ([], ["no"])
    assert re.search(r"^u\s+promoter\s", SYSUSERS.read_text(), re.M)


def test_daemon_unit_reads_sessions_and_writes_only_the_store() -> None:
    """The daemon may write artifacts/ and library/ only, read sessions/, and has no network."""
    assert _one(DAEMON_UNIT, "ProtectSystem") == "strict"
    assert _paths(DAEMON_UNIT, "ReadWritePaths") == {
        f"{STORAGE}/artifacts",
        f"{STORAGE}/library",
    }
    assert _paths(DAEMON_UNIT, "ReadOnlyPaths") == {f"{STORAGE}/sessions"}
    assert _one(DAEMON_UNIT, "PrivateNetwork") == "yes"
    # AF_UNIX stays: sd_notify speaks over the NOTIFY_SOCKET path socket.
    assert _one(DAEMON_UNIT, "RestrictAddressFamilies") == "AF_UNIX"


def test_web_unit_serves_and_cannot_see_sessions() -> None:
    """The web unit starts `promoter serve`, may use TCP, and has no access to sessions/."""
    assert _one(WEB_UNIT, "ExecStart") == f"{BINARY} serve --config {CONFIG}"
    assert _one(WEB_UNIT, "Type") == "exec"
    assert _one(WEB_UNIT, "ProtectSystem") == "strict"
    assert _paths(WEB_UNIT, "ReadWritePaths") == {f"{STORAGE}/artifacts", f"{STORAGE}/library"}
    assert f"{STORAGE}/sessions" in _paths(WEB_UNIT, "InaccessiblePaths")
    assert _paths(WEB_UNIT, "ReadOnlyPaths") == set()
    families = set(_one(WEB_UNIT, "RestrictAddressFamilies").split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert _values(WEB_UNIT, "PrivateNetwork") in ([], ["no"])


def test_tmpfiles_creates_every_folder_the_units_mount() -> None:
    """Each path the units mount read-only or read-write is a folder tmpfiles.d creates."""
    created = {
        fields[1]
        for line in TMPFILES.read_text().splitlines()
        if (fields := line.split()) and fields[0] == "d"
    }
    mounted = set()
    for unit in (DAEMON_UNIT, WEB_UNIT):
        mounted |= _paths(unit, "ReadWritePaths") | _paths(unit, "ReadOnlyPaths")
    assert mounted <= created
    assert {f"{STORAGE}/sessions", "/etc/promoter"} <= created


def test_sysusers_and_tmpfiles_make_the_user_and_the_store(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles, run on an empty root, make the user and folders."""
    sysusers = _tool("systemd-sysusers")
    tmpfiles = _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        _unavailable("systemd-tmpfiles needs root to give the folders their owner")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_text(),
        capture_output=True,
        text=True,
        check=True,
    )
    entry = next(
        line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("promoter:")
    )
    uid, gid = int(entry[2]), int(entry[3])
    result = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", "-"],
        input=TMPFILES.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def mode(rel: str) -> tuple[int, int, int]:
        st = (tmp_path / rel).stat()
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    assert mode("app/storage/artifacts") == (0o750, uid, gid)
    assert mode("app/storage/library") == (0o750, uid, gid)
    assert mode("app/storage/sessions") == (0o2770, 0, gid)
    assert mode("etc/promoter/config.toml") == (0o640, 0, gid)
    # An empty file is a valid configuration: built-in defaults (DESIGN §3, §4).
    assert tomllib.loads((tmp_path / "etc/promoter/config.toml").read_text()) == {}


# --- the container image -------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing at all on the Dockerfile, infos included."""
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_every_hadolint_ignore_says_why() -> None:
    """Each `hadolint ignore` in the Dockerfile sits under a comment that explains it."""
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rules = line.split("=", 1)[1].split(",")
            above = lines[number - 1] if number else ""
            assert above.startswith("#"), f"line {number + 1}: no explanation above"
            for rule in rules:
                explained = "\n".join(lines[max(0, number - 4) : number])
                assert rule.strip() in explained, f"{rule} is ignored without a reason"


def test_dockerfile_builds_the_image_design_asks_for() -> None:
    """The image is python:3.11-slim, non-root uid 10001, with the store as a volume."""
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert "PROMOTER_STORAGE__ROOT=/app/storage" in " ".join(
        args for kw, args in instructions if kw == "ENV"
    )
    assert _last("VOLUME") == STORAGE
    assert _last("STOPSIGNAL") == "SIGTERM"
    assert any(
        kw == "RUN" and "--uid 10001" in args and "promoter" in args for kw, args in instructions
    )
    # the web extra by default; `--build-arg EXTRAS=web,s3` for the object store (README)
    assert ("ARG", "EXTRAS=web") in instructions
    assert any(
        kw == "RUN" and 'pip install --no-cache-dir ".[${EXTRAS}]"' in args
        for kw, args in instructions
    )
    assert json.loads(_last("HEALTHCHECK").split(" CMD ", 1)[1]) == ["promoter", "check"]


def test_dockerfile_cmd_and_user_match_the_readme() -> None:
    """The Dockerfile's CMD and USER are the ones README.md documents for the sidecar."""
    cmd = _last("CMD")
    user = _last("USER")
    assert json.loads(cmd) == ["promoter", "run"]
    assert user == "promoter"
    section = _readme_section("Running as a sidecar container")
    readme_lines = {line.strip() for line in section.splitlines()}
    assert 'CMD ["promoter", "run"]' in readme_lines
    assert "USER promoter" in readme_lines
    assert f"CMD {cmd}" in readme_lines
    assert f"USER {user}" in readme_lines


def test_dockerignore_keeps_what_the_build_needs() -> None:
    """.dockerignore leaves out caches and venvs but keeps the package and pyproject."""
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    # pyproject names README.md as the readme: hatchling needs it in the context.
    assert not ignored & {"promoter", "pyproject.toml", "README.md", "*.md", "*"}


# --- compose --------------------------------------------------------------------


def test_compose_runs_kernel_daemon_and_web_on_one_volume() -> None:
    """The compose example runs the kernel, the daemon and the web service on one volume."""
    data = _compose()
    services = data["services"]
    assert isinstance(services, dict)
    assert set(services) == {"kernel", "promoter", "promoter-web"}
    assert "storage" in data["volumes"]  # type: ignore[operator]
    for name in services:
        assert "storage:/app/storage" in services[name]["volumes"], name
    assert services["kernel"]["image"] == "example/kernel:latest"
    assert services["promoter"]["command"] == ["promoter", "run"]
    assert services["promoter"]["network_mode"] == "none"
    web = services["promoter-web"]
    assert web["command"] == ["promoter", "serve", "--listen", "0.0.0.0:8730"]
    assert web["ports"] == ["127.0.0.1:8730:8730"]
    # listening beyond loopback inside its container: the token is set up (issue 13)
    assert web["environment"]["PROMOTER_HTTP__TOKEN_FILE"] == "/run/secrets/promoter_token"
    assert web["secrets"] == ["promoter_token"]
    assert data["secrets"] == {"promoter_token": {"file": "./promoter-token"}}


def test_compose_environment_follows_design_4() -> None:
    """Compose variables are PROMOTER_<SECTION>__<KEY>; the allowed hosts are a TOML list."""
    services = _compose()["services"]
    assert isinstance(services, dict)
    for service in services.values():
        for key in service.get("environment", {}):
            assert re.fullmatch(r"PROMOTER_[A-Z]+__[A-Z_]+", key), key
    hosts = services["promoter-web"]["environment"]["PROMOTER_HTTP__ALLOWED_HOSTS"]
    parsed = tomllib.loads(f"v = {hosts}")["v"]
    assert isinstance(parsed, list)
    assert {"promoter-web", "localhost"} <= set(parsed)


# --- CI and the README -----------------------------------------------------------


def test_ci_script_is_valid_bash_and_executable() -> None:
    """.ci/run parses as bash, runs in strict mode and is executable."""
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    assert os.access(CI_RUN, os.X_OK)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    """The quick start's test instruction is the one command CI runs on a fresh machine,
    `bash .ci/run`, and no hand-made pytest line that could drift from it (issue 13)."""
    section = _readme_section("Quick start")
    commands = [line.strip() for line in section.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert "bash .ci/run" in commands
    assert not [c for c in commands if "pytest" in c]
    assert CI_RUN.is_file()

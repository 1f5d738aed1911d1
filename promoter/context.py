"""Run context written by the runtime: `run.json` and `attribution.jsonl` (DESIGN §1).

Both files are agent-side and untrusted: they are opened the safe way, and
anything malformed is a warning (`context.invalid`), never a failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from promoter import events
from promoter.logs import get_logger
from promoter.safeio import Refused, open_dir_chain, open_regular

__all__ = ["AttributionReader", "RunContext", "read_run_json"]

log = get_logger()
MAX_RUN_JSON_BYTES = 1 << 20
MAX_ATTRIBUTION_BYTES = 64 << 20


@dataclass(frozen=True)
class RunContext:
    """What the runtime told us about a run; empty fields when it said nothing."""

    workflow_id: str = ""
    user_directive: str = ""
    status: str = ""
    agents: dict[str, str] = field(default_factory=dict)


def _read_small(
    sessions_fd: int, run_id: str, name: str, limit: int, offset: int = 0
) -> bytes | None:
    """The bytes of a session file from `offset`, or None when it is absent or refused."""
    try:
        run_fd = open_dir_chain(sessions_fd, [run_id])
    except (FileNotFoundError, NotADirectoryError, Refused):
        return None
    try:
        fd, st = open_regular(run_fd, name, allow_hardlinks=True)
    except FileNotFoundError:
        return None
    except (Refused, OSError) as exc:
        reason = exc.reason if isinstance(exc, Refused) else exc.strerror
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file=name, reason=reason)
        return None
    finally:
        os.close(run_fd)
    try:
        if st.st_size - offset > limit:
            log.warning(events.CONTEXT_INVALID, run_id=run_id, file=name, reason="too large")
            return None
        return os.pread(fd, max(st.st_size - offset, 0), offset) if st.st_size > offset else b""
    finally:
        os.close(fd)


def read_run_json(sessions_fd: int, run_id: str) -> dict[str, str]:
    """`workflow_id`, `user_directive` and `status` from run.json, each only when valid."""
    raw = _read_small(sessions_fd, run_id, "run.json", MAX_RUN_JSON_BYTES)
    if raw is None:
        return {}
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json", reason="not JSON")
        return {}
    if not isinstance(data, dict):
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json", reason="not an object")
        return {}
    out: dict[str, str] = {}
    for key in ("workflow_id", "user_directive", "status"):
        value = data.get(key)
        if isinstance(value, str):
            out[key] = value
        elif value is not None:
            log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json",
                        reason=f"{key} is not a string")
    if out.get("status") not in (None, "running", "completed", "failed"):
        log.warning(events.CONTEXT_INVALID, run_id=run_id, file="run.json", reason="unknown status")
        out.pop("status")
    return out


class AttributionReader:
    """Reads attribution.jsonl incrementally: only the bytes appended since last time."""

    def __init__(self) -> None:
        self._offset: dict[str, int] = {}
        self._agents: dict[str, dict[str, str]] = {}

    def forget(self, run_id: str) -> None:
        self._offset.pop(run_id, None)
        self._agents.pop(run_id, None)

    def agents(self, sessions_fd: int, run_id: str) -> dict[str, str]:
        """filename → agent_id; a later line for the same filename wins."""
        offset = self._offset.get(run_id, 0)
        raw = _read_small(sessions_fd, run_id, "attribution.jsonl", MAX_ATTRIBUTION_BYTES, offset)
        if raw is None:
            return dict(self._agents.get(run_id, {}))
        if offset and not raw and self._file_shrank(sessions_fd, run_id, offset):
            self.forget(run_id)
            return self.agents(sessions_fd, run_id)
        complete = raw.rfind(b"\n") + 1  # a line still being appended waits for its newline
        mapping = self._agents.setdefault(run_id, {})
        for number, line in enumerate(raw[:complete].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                filename, agent = item["filename"], item["agent_id"]
                if not isinstance(filename, str) or not isinstance(agent, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                log.warning(events.CONTEXT_INVALID, run_id=run_id, file="attribution.jsonl",
                            reason=f"bad line {number} after byte {offset}")
                continue
            mapping[filename] = agent
        self._offset[run_id] = offset + complete
        return dict(mapping)

    @staticmethod
    def _file_shrank(sessions_fd: int, run_id: str, offset: int) -> bool:
        try:
            st = os.stat(f"{run_id}/attribution.jsonl", dir_fd=sessions_fd, follow_symlinks=False)
        except OSError:
            return False
        return st.st_size < offset

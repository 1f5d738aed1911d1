"""Helpers for the store tests: a store on tmp_path, a settable clock, session writers."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from promoter.config import Config, load_config
from promoter.store import Store


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime.now(UTC)
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.mono

    def file_now(self) -> datetime:
        return self.current

    def advance(self, **kwargs: float) -> None:
        delta = timedelta(**kwargs)
        self.current += delta
        self.mono += delta.total_seconds()


def make_config(root: Path, **sections: dict[str, object]) -> Config:
    """A configuration rooted at `root`, with section overrides."""
    env = {}
    for section, values in sections.items():
        for key, value in values.items():
            env[f"PROMOTER_{section.upper()}__{key.upper()}"] = _toml(value)
    return load_config(None, env, str(root))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def make_store(root: Path, clock: FakeClock | None = None, **sections: dict[str, object]) -> Store:
    store = Store(make_config(root, **sections), clock=clock)
    store.ensure_folders()
    return store


def write_session_file(root: Path, run_id: str, filename: str, data: bytes,
                       age_s: float = 10.0) -> Path:
    """An agent's finished file, with an mtime `age_s` seconds in the past."""
    path = root / "sessions" / run_id / "output" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path

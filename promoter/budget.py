"""A ceiling for the whole store: `retention.max_store_bytes` (DESIGN §4).

The store's size is the sum of the artifacts' `size_bytes`. `StoreTotal` keeps
it per run as metadata is written and runs are deleted, so a promotion learns
whether it pushed the store over without walking anything; the sweeper
re-counts from the metadata it reads anyway (`reset`), which also corrects for
deletions made by other processes (the CLI, the server).

`select_victims` is the pure rule: whole runs, oldest `created_at` first (ties:
run id), never a kept run, never an active one, until the store is under the
ceiling.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from promoter.metadata import RunMetadata
from promoter.parsedruns import RunView

__all__ = ["BudgetFigures", "StoreTotal", "evictable", "figures", "select_victims"]


class StoreTotal:
    """Bytes per run and their sum; thread-safe, updated in O(1) per metadata write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, int] = {}
        self._total = 0
        self.over_budget_said = False  # store.over_budget is logged once per episode

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def set(self, run_id: str, size_bytes: int) -> int:
        """Record a run's new size; returns the store's total."""
        with self._lock:
            self._total += size_bytes - self._runs.get(run_id, 0)
            self._runs[run_id] = size_bytes
            return self._total

    def drop(self, run_id: str) -> int:
        """Forget a deleted run; returns the store's total."""
        with self._lock:
            self._total -= self._runs.pop(run_id, 0)
            return self._total

    def reset(self, runs: Iterable[RunMetadata | RunView]) -> int:
        """Replace every figure with what the metadata says now; returns the total."""
        fresh = {m.run_id: m.total_bytes for m in runs}
        with self._lock:
            self._runs = fresh
            self._total = sum(fresh.values())
            return self._total


def evictable(meta: RunMetadata | RunView) -> bool:
    """The ceiling may take this run: neither kept nor still active (DESIGN §4)."""
    return not meta.keep and meta.status != "active"


_Run = TypeVar("_Run", bound=RunMetadata | RunView)  # a view: a run the daemon let go


def select_victims(runs: Iterable[_Run], ceiling: int,
                   busy: Callable[[str], bool] | None = None) -> list[_Run]:
    """Runs to expire so that the store is at or under `ceiling`, oldest first."""
    runs = list(runs)
    total = sum(m.total_bytes for m in runs)
    victims: list[_Run] = []
    if ceiling <= 0 or total <= ceiling:
        return victims
    for meta in sorted(runs, key=lambda m: (m.created_at, m.run_id)):
        if total <= ceiling:
            break
        if not evictable(meta) or (busy is not None and busy(meta.run_id)):
            continue
        victims.append(meta)
        total -= meta.total_bytes
    return victims


@dataclass(frozen=True)
class BudgetFigures:
    """What `store.over_budget` reports: where the bytes are that the ceiling cannot take."""

    total_bytes: int
    max_store_bytes: int
    kept_bytes: int
    active_bytes: int
    runs: int


def figures(runs: Iterable[RunMetadata | RunView], ceiling: int) -> BudgetFigures:
    runs = list(runs)
    return BudgetFigures(
        total_bytes=sum(m.total_bytes for m in runs),
        max_store_bytes=ceiling,
        kept_bytes=sum(m.total_bytes for m in runs if m.keep),
        active_bytes=sum(m.total_bytes for m in runs if not m.keep and m.status == "active"),
        runs=len(runs),
    )

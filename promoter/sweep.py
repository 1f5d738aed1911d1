"""Retention: delete expired runs, keep the store under its ceiling, drop tombstones
whose session is gone (DESIGN §1, §2, §4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from promoter import events
from promoter.budget import evictable, figures, select_victims
from promoter.errors import NotFoundError, PromoterError
from promoter.logs import get_logger
from promoter.store import Store

__all__ = ["SweepReport", "sweep"]

log = get_logger()


@dataclass
class SweepReport:
    expired: list[str] = field(default_factory=list)  # every run expired, budget's included
    budget: list[str] = field(default_factory=list)  # those expired for the ceiling
    skipped_busy: list[str] = field(default_factory=list)
    tombstones_dropped: list[str] = field(default_factory=list)
    audit_days_dropped: list[str] = field(default_factory=list)
    dry_run: bool = False


def sweep(store: Store, dry_run: bool = False,
          busy: Callable[[str], bool] | None = None,
          drop_tombstones: bool = True, older_than: timedelta | None = None,
          progress: Callable[[int, int, int], None] | None = None) -> SweepReport:
    """Delete every expired run not kept; a run with files still being promoted waits.

    Each deletion takes only that run's lock, so promotion of other runs goes on.
    `older_than` also expires unkept runs created longer ago (DESIGN §3).
    `drop_tombstones=False` is for a process that cannot see sessions/ (promoter
    serve, DESIGN §7): only one that sees them may decide a session is gone.
    """
    report = SweepReport(dry_run=dry_run)
    if not dry_run:  # deletions a crash cut short (DESIGN §10); stale uploads, the trash
        try:
            store.finish_deletions()
        except PromoterError as exc:
            log.error(events.SWEEP_FAILED, target="unfinished deletions", reason=str(exc))
    before = store.clock.now() - older_than if older_than is not None else None
    candidates = store.expired_runs(created_before=before)
    for number, meta in enumerate(candidates, start=1):
        if progress is not None:
            progress(number - 1, len(candidates), 0)
        if busy is not None and busy(meta.run_id):
            report.skipped_busy.append(meta.run_id)
            continue
        if _delete(store, meta.run_id, dry_run, reason="expired", created_before=before):
            report.expired.append(meta.run_id)
    if progress is not None:
        progress(len(candidates), len(candidates), 0)
    if store.config.retention.max_store_bytes:
        _budget(store, report, busy)
    if not dry_run and drop_tombstones:
        report.tombstones_dropped = store.drop_stale_tombstones()
    if not dry_run:
        try:  # whole days only; promoter never rewrites a journal line (DESIGN §11)
            report.audit_days_dropped = store.audit.prune(store.config.audit.retention_days)
        except OSError as exc:
            log.error(events.SWEEP_FAILED, target="audit journal", reason=exc.strerror or str(exc))
    return report


def _delete(store: Store, run_id: str, dry_run: bool, **how: Any) -> bool:
    """Delete one run the sweep chose (only say so on a dry run); False when it is no longer
    due (kept, extended, resumed or deleted meanwhile: re-checked under its lock) or failed."""
    if dry_run:
        return True
    try:
        store.delete_run(run_id, **how)
    except NotFoundError:
        return False
    except PromoterError as exc:
        log.error(events.SWEEP_FAILED, run_id=run_id, reason=str(exc))
        return False
    return True


def _budget(store: Store, report: SweepReport, busy: Callable[[str], bool] | None) -> None:
    """Expire whole unkept, finished runs, oldest first, until under the ceiling (DESIGN §4).

    Never refuses anything: when only kept or active runs remain over it, it says so
    once (`store.over_budget`) until the store is under the ceiling again.
    """
    ceiling = store.config.retention.max_store_bytes
    gone = set(report.expired)
    runs = [m for m in store.list_looks() if m.run_id not in gone]  # a dry run deleted nothing
    if not report.dry_run:
        store.total.reset(runs)
    passed_over: set[str] = set()  # busy when the choice was made: asked once, not twice

    def busy_now(run_id: str) -> bool:
        if busy is not None and busy(run_id):
            passed_over.add(run_id)
            return True
        return False

    for meta in select_victims(runs, ceiling, busy_now):
        if _delete(store, meta.run_id, report.dry_run, reason="budget"):
            report.expired.append(meta.run_id)
            report.budget.append(meta.run_id)
            gone.add(meta.run_id)
    left = [m for m in runs if m.run_id not in gone]
    now = figures(left, ceiling)
    if now.total_bytes <= ceiling:
        store.total.over_budget_said = False
        return
    # runs passed over while being promoted: the daemon sweeps again shortly. Asking `busy`
    # again here could find them finished and say store.over_budget while they remain.
    waiting = [m.run_id for m in left if evictable(m) and m.run_id in passed_over]
    if waiting:
        report.skipped_busy.extend(r for r in waiting if r not in report.skipped_busy)
    elif not report.dry_run and not store.total.over_budget_said:
        store.total.over_budget_said = True
        log.warning(events.STORE_OVER_BUDGET, total_bytes=now.total_bytes,
                    max_store_bytes=ceiling, kept_bytes=now.kept_bytes,
                    active_bytes=now.active_bytes, runs=now.runs)

"""Retention: delete expired runs, drop tombstones whose session is gone (DESIGN §1, §2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from promoter.errors import NotFoundError, PromoterError
from promoter.logs import get_logger
from promoter.store import Store

__all__ = ["SweepReport", "sweep"]

log = get_logger()


@dataclass
class SweepReport:
    expired: list[str] = field(default_factory=list)
    skipped_busy: list[str] = field(default_factory=list)
    tombstones_dropped: list[str] = field(default_factory=list)
    dry_run: bool = False


def sweep(store: Store, dry_run: bool = False,
          busy: Callable[[str], bool] | None = None,
          drop_tombstones: bool = True) -> SweepReport:
    """Delete every expired run not kept; a run with files still being promoted waits.

    Each deletion takes only that run's lock, so promotion of other runs goes on.
    `drop_tombstones=False` is for a process that cannot see sessions/ (promoter
    serve, DESIGN §7): only one that sees them may decide a session is gone.
    """
    report = SweepReport(dry_run=dry_run)
    for meta in store.expired_runs():
        if busy is not None and busy(meta.run_id):
            report.skipped_busy.append(meta.run_id)
            continue
        if dry_run:
            report.expired.append(meta.run_id)
            continue
        try:
            store.delete_run(meta.run_id, reason="expired")
        except NotFoundError:
            continue  # kept, extended or deleted meanwhile
        except PromoterError as exc:
            log.error("sweep.failed", run_id=meta.run_id, reason=str(exc))
            continue
        report.expired.append(meta.run_id)
    if not dry_run and drop_tombstones:
        report.tombstones_dropped = store.drop_stale_tombstones()
    return report

"""Stable log event names, for auditors (DESIGN §5). Never rename one."""

from __future__ import annotations

from typing import Final

DAEMON_READY: Final = "daemon.ready"
DAEMON_STOPPING: Final = "daemon.stopping"
DAEMON_STOPPED: Final = "daemon.stopped"
DAEMON_RELOADED: Final = "daemon.reloaded"
ARTIFACT_PROMOTED: Final = "artifact.promoted"
ARTIFACT_REJECTED: Final = "artifact.rejected"
ARTIFACT_FAILED: Final = "artifact.failed"
ARTIFACT_LOST: Final = "artifact.lost"
ARTIFACT_DELETED: Final = "artifact.deleted"
RUN_CREATED: Final = "run.created"
RUN_COMPLETED: Final = "run.completed"
RUN_EXPIRED: Final = "run.expired"
RUN_DELETED: Final = "run.deleted"
RUN_IGNORED: Final = "run.ignored"
LIBRARY_PROMOTED: Final = "library.promoted"
LIBRARY_UPLOADED: Final = "library.uploaded"
RECONCILE_FINISHED: Final = "reconcile.finished"
WATCH_OVERFLOW: Final = "watch.overflow"
WATCH_ERROR: Final = "watch.error"
METADATA_RECOVERED: Final = "metadata.recovered"
CONTEXT_INVALID: Final = "context.invalid"
TEMP_REMOVED: Final = "store.temp_removed"
HTTP_REQUEST: Final = "http.request"

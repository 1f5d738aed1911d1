"""`GET /runtime/artifacts/{run_id}/archive`: a run's files as one zip, streamed (DESIGN §7).

The zip is produced by `promoter.archive.iter_zip`, a plain generator that
reads and deflates in a worker thread one piece at a time, so the event loop
never blocks on the disk and memory holds one piece per download.

A client that goes away: starlette's `StreamingResponse` (uvicorn speaks ASGI
2.3 to it) listens for `http.disconnect` beside the body and cancels the body
task. Its own `iterate_in_threadpool` would then drop the generator without
closing it, leaving the file being read open until the garbage collector
comes; `_pieces` closes it at once instead, after the piece being made
(a thread cannot be interrupted, and `close()` must not run beside it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from promoter.archive import iter_zip
from promoter.errors import PromoterError
from promoter.names import check_run_id
from promoter.web.errors import StreamBroken
from promoter.web.files import FILE_CSP, content_disposition
from promoter.web.models import ErrorDetail
from promoter.web.routes import RunId, web_state

__all__ = ["archive_router"]

archive_router = APIRouter(prefix="/runtime")

_ZIP: Final[dict[int | str, dict[str, Any]]] = {
    200: {"description": "The run's files as one zip (ZIP64 when needed).",
          "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
    400: {"model": ErrorDetail}, 404: {"model": ErrorDetail}, 422: {"model": ErrorDetail},
}


async def _pieces(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The generator's pieces from a worker thread; closed (its file with it) however it ends."""
    try:
        while True:
            try:
                piece = await anyio.to_thread.run_sync(next, chunks, None)
            except OSError as exc:  # the reason only: a path may lie outside the store
                raise StreamBroken(exc.strerror or str(exc)) from None
            except PromoterError as exc:  # the bucket failed mid-way: a message of ours
                raise StreamBroken(str(exc)) from None
            if piece is None:
                return
            yield piece
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_close, chunks)


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


@archive_router.get("/artifacts/{run_id}/archive", response_class=Response, responses=_ZIP,
                    summary="Download a run's files as one zip")
def get_archive(request: Request, run_id: RunId) -> Response:
    """Names exactly as under files/; already-compressed types are stored, not deflated."""
    run_id = check_run_id(run_id)
    # on a bucket too: the store reads each object as it is archived (DESIGN §10)
    chunks = iter_zip(web_state(request).store, run_id)  # NotFoundError here: a clean 404
    headers = {
        "content-disposition": content_disposition("attachment", f"{run_id}.zip"),
        "content-security-policy": FILE_CSP,
        "x-content-type-options": "nosniff",
        "cache-control": "no-cache",
    }
    return StreamingResponse(_pieces(chunks), media_type="application/zip", headers=headers)

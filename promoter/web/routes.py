"""The `/runtime/*` routes of DESIGN §7: thin calls into the store the CLI uses.

A route checks its input, calls one store function (the same one as `promoter
rm`, `keep`, `promote`, `sweep`) and shapes the answer; errors are the store's
PromoterError kinds, mapped to statuses by the app's one handler. Access
rules live in `security.py`, file-answer headers in `files.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from starlette.routing import Route

from promoter import events
from promoter.clock import from_timestamp_ns
from promoter.config import Config
from promoter.errors import NotFoundError
from promoter.logs import get_logger
from promoter.metadata import ArtifactEntry, RunMetadata
from promoter.names import check_relpath, check_run_id
from promoter.signing import LinkSigner
from promoter.store import Store
from promoter.sweep import sweep
from promoter.web.bucket import Bucket
from promoter.web.fastpath import FileHandler
from promoter.web.files import etag_matches, file_response, stat_etag
from promoter.web.listing import Filter, Listing, RunLister, library_listing
from promoter.web.metrics import HttpMetrics
from promoter.web.models import (
    ArtifactList,
    ErrorDetail,
    KeepBody,
    LibraryEntry,
    LibraryList,
    SweepResult,
)
from promoter.web.upload import receive_upload

__all__ = ["WebState", "artifact_etag", "lean_file_routes", "router", "web_state"]

log = get_logger()


@dataclass(frozen=True)
class WebState:
    """Everything a request needs, built once per app by `create_app`."""

    config: Config
    store: Store
    lister: RunLister
    metrics: HttpMetrics
    signer: LinkSigner | None = None  # signed links (DESIGN §7): only with a token
    bucket: Bucket | None = None  # serving over a bucket (DESIGN §10): runs and objects there


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorDetail} for code in (*codes, 422)}


_FILE_BODY: Final[dict[str, Any]] = {
    "description": "The file (206: the requested range of it).",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_FILE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: _FILE_BODY, 206: _FILE_BODY,
    304: {"description": "Not modified: the If-None-Match tag is current."},
    416: {"model": ErrorDetail, "description": "The range is not inside the file."},
    **_errors(400, 404),
}
_NOT_MODIFIED: Final[dict[int | str, dict[str, Any]]] = {
    304: {"description": "Not modified: the If-None-Match tag is current."}}

RunId = Annotated[str, Path(description="A run id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
View = Annotated[bool, Query(description="Show HTML and SVG inline, under the sandbox policy.")]
Download = Annotated[bool, Query(description="Always answer as an attachment.")]
Overwrite = Annotated[bool, Query(description="Replace a library file of the same name.")]

router = APIRouter(prefix="/runtime")


def _listing_response(request: Request, listing: Listing) -> Response:
    headers = {"etag": listing.etag, "cache-control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), listing.etag):
        return Response(status_code=304, headers=headers)
    return Response(listing.body, media_type="application/json", headers=headers)


@router.get("/artifacts", response_model=ArtifactList, responses={**_NOT_MODIFIED, **_errors(400)},
            summary="List runs, newest first")
async def list_artifacts(
    request: Request,
    filter: Annotated[Filter, Query(description="current: the run named by run_id, or every "
                                    "active run; recent: created in the last 24 h; expiring: "
                                    "expires within 24 h and not kept")] = "all",
    run_id: Annotated[str | None, Query(description="The current run (filter=current)")] = None,
) -> Response:
    """The seed proposal's list, `{"artifacts": [{"run_id", "metadata"}]}`, with an ETag."""
    listing = await anyio.to_thread.run_sync(web_state(request).lister.render, filter, run_id)
    return _listing_response(request, listing)


@router.get("/artifacts/{run_id}", response_model=RunMetadata, responses=_errors(400, 404),
            summary="One run's metadata.json")
def get_run(request: Request, run_id: RunId) -> RunMetadata:
    web = web_state(request)
    if web.bucket is None:
        return web.store.get_run(check_run_id(run_id))
    meta = web.bucket.runs.read_run(check_run_id(run_id))
    if meta is None:
        raise NotFoundError(f"no run {run_id}")
    return meta


def artifact_etag(entry: ArtifactEntry, st: os.stat_result) -> str:
    """The quoted sha256 when the entry describes the open file, else the file's identity."""
    if entry.sha256 and entry.size_bytes == st.st_size and \
            entry.generated_at == from_timestamp_ns(st.st_mtime_ns):
        return f'"{entry.sha256}"'
    return stat_etag(st)  # checksums off, or the copy was replaced a moment ago


async def _artifact(request: Request, run_id: str, filename: str, view: bool,
                    download: bool) -> Response:
    # Opened on the event loop when the run's metadata is cached and current: a handful
    # of syscalls, cheaper than the hop to a thread and back (bench/http_bench.py). Else
    # in a worker thread: parsing (or rebuilding) metadata never blocks the loop.
    web = web_state(request)
    if web.bucket is not None:  # a HEAD and a GET of the object: in a worker thread
        return await anyio.to_thread.run_sync(web.bucket.answer, request, check_run_id(run_id),
                                              filename, view, download)
    store = web.store
    meta = store.cached_run(run_id)
    if meta is not None:
        fd, st, entry = store.open_artifact(run_id, filename, meta)
    else:
        fd, st, entry = await anyio.to_thread.run_sync(store.open_artifact, run_id, filename)
    return file_response(request, fd, st, filename=entry.filename,
                         content_type=entry.content_type, etag=artifact_etag(entry, st),
                         view=view, download=download)


@router.get("/artifacts/{run_id}/files/{filename:path}", response_class=Response,
            responses=_FILE_RESPONSES, summary="Download or view a stored file")
async def get_artifact(request: Request, run_id: RunId, filename: str, view: View = False,
                       download: Download = False) -> Response:
    return await _artifact(request, run_id, filename, view, download)


@router.head("/artifacts/{run_id}/files/{filename:path}", response_class=Response,
             responses=_FILE_RESPONSES, summary="A stored file's headers")
async def head_artifact(request: Request, run_id: RunId, filename: str, view: View = False,
                        download: Download = False) -> Response:
    return await _artifact(request, run_id, filename, view, download)


@router.delete("/artifacts/{run_id}", status_code=204, response_class=Response,
               responses=_errors(400, 403, 404), summary="Delete a run (as promoter rm)")
def delete_run(request: Request, run_id: RunId) -> Response:
    """Tombstoned: the run does not come back from its session (DESIGN §1)."""
    web = web_state(request)
    web.store.delete_run(check_run_id(run_id))
    web.lister.invalidate()
    return Response(status_code=204)


@router.patch("/artifacts/{run_id}", response_model=RunMetadata,
              responses=_errors(400, 403, 404), summary="Keep (pin) or unpin a run")
def patch_run(request: Request, run_id: RunId, body: KeepBody) -> RunMetadata:
    web = web_state(request)
    meta = web.store.set_keep(check_run_id(run_id), body.keep)
    web.lister.invalidate()
    return meta


@router.delete("/artifacts/{run_id}/files/{filename:path}", status_code=204,
               response_class=Response, responses=_errors(400, 403, 404),
               summary="Remove one artifact (as promoter rm RUN_ID FILENAME)")
def delete_artifact(request: Request, run_id: RunId, filename: str) -> Response:
    web = web_state(request)
    web.store.delete_artifact(check_run_id(run_id), check_relpath(filename))
    web.lister.invalidate()
    return Response(status_code=204)


def _created(entry: LibraryEntry) -> Response:
    return Response(entry.model_dump_json(), status_code=201, media_type="application/json",
                    headers={"location": "/runtime/library/" + quote(entry.name, safe="")})


@router.post("/artifacts/{run_id}/files/{filename:path}/promote", status_code=201,
             response_model=LibraryEntry, responses=_errors(400, 403, 404, 409),
             summary="Copy an artifact into the library")
def promote(request: Request, run_id: RunId, filename: str,
            as_name: Annotated[str | None, Query(alias="as", description="Library name "
                                                 "(default: the file's base name)")] = None,
            overwrite: Overwrite = False) -> Response:
    added = web_state(request).store.promote_to_library(
        check_run_id(run_id), check_relpath(filename), as_name, overwrite)
    return _created(LibraryEntry.of(added))


@router.post("/sweep", response_model=SweepResult, responses=_errors(403),
             summary="Delete expired runs now")
def sweep_now(request: Request, dry_run: Annotated[bool, Query(
        description="Only list the runs that would be deleted")] = False) -> SweepResult:
    # Tombstones stay: this process does not look at sessions/ (DESIGN §7), so it cannot
    # tell a gone session from a hidden one; the daemon's sweeper drops them.
    web = web_state(request)
    report = sweep(web.store, dry_run=dry_run, drop_tombstones=False)
    web.lister.invalidate()
    return SweepResult(expired=report.expired, dry_run=report.dry_run)


@router.get("/library", response_model=LibraryList, responses=_NOT_MODIFIED,
            summary="List the library, sorted by name")
async def list_library(request: Request) -> Response:
    listing = await anyio.to_thread.run_sync(library_listing, web_state(request).store)
    return _listing_response(request, listing)


async def _library_file(request: Request, name: str, view: bool, download: bool) -> Response:
    web = web_state(request)
    if web.bucket is not None:  # a HEAD and a GET of the object: in a worker thread
        return await anyio.to_thread.run_sync(web.bucket.library_answer, request, name, view,
                                              download)
    library = web.store.library
    fd, st, item = library.open(name)  # on the event loop, as for artifacts
    # Library files are only ever replaced by rename, so (inode, size, mtime) is a
    # strong validator; hashing each file on every request would not be.
    return file_response(request, fd, st, filename=item.name, content_type=item.content_type,
                         etag=stat_etag(st, "lib-"), view=view, download=download)


@router.get("/library/{name}", response_class=Response, responses=_FILE_RESPONSES,
            summary="Download or view a library file")
async def get_library_file(request: Request, name: str, view: View = False,
                           download: Download = False) -> Response:
    return await _library_file(request, name, view, download)


@router.head("/library/{name}", response_class=Response, responses=_FILE_RESPONSES,
             summary="A library file's headers")
async def head_library_file(request: Request, name: str, view: View = False,
                            download: Download = False) -> Response:
    return await _library_file(request, name, view, download)


_UPLOAD_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}},
        }}},
    },
}


@router.post("/library", status_code=201, response_model=LibraryEntry,
             responses=_errors(400, 403, 409, 413), openapi_extra=_UPLOAD_BODY,
             summary="Upload a file into the library")
async def upload(request: Request,
                 name: Annotated[str | None, Query(description="Library name (default: the "
                                                   "upload's file name)")] = None,
                 overwrite: Overwrite = False) -> Response:
    """Multipart field `file`; streamed to disk, refused whole over http.max_upload_bytes."""
    web = web_state(request)
    added = await receive_upload(request, web.store.library, name, overwrite,
                                 web.config.http.max_upload_bytes)
    await anyio.to_thread.run_sync(lambda: web.store.audit.one(
        events.LIBRARY_UPLOADED, name=added.name, size_bytes=added.size_bytes,
        overwrite=overwrite))
    return _created(LibraryEntry.of(added))


@router.delete("/library/{name}", status_code=204, response_class=Response,
               responses=_errors(400, 403, 404), summary="Delete a library file")
def delete_library_file(request: Request, name: str) -> Response:
    """As `promoter library rm NAME` (`library.deleted`)."""
    web_state(request).store.delete_library_file(name)
    return Response(status_code=204)


def lean_file_routes() -> list[tuple[Route, FileHandler]]:
    """The file routes and their handlers, for `LeanFiles` (the same functions as above)."""

    async def artifact(request: Request, params: dict[str, str], view: bool,
                       download: bool) -> Response:
        return await _artifact(request, params["run_id"], params["filename"], view, download)

    async def library_file(request: Request, params: dict[str, str], view: bool,
                           download: bool) -> Response:
        return await _library_file(request, params["name"], view, download)

    by_endpoint: dict[object, FileHandler] = {get_artifact: artifact,
                                               get_library_file: library_file}
    return [(r, by_endpoint[r.endpoint]) for r in router.routes
            if isinstance(r, Route) and r.endpoint in by_endpoint]

"""The app factory: `create_app(config) -> FastAPI`, no globals (STYLE §15).

Wires the `/runtime/*` routes, the page and its files, /healthz and /metrics,
the one exception handler that maps PromoterError kinds to statuses, and the
middlewares: the request observer (log line, metrics, client address)
outside the access guard (Host, token, Origin, CSRF header), outside the
bound on request bodies (64 KiB but for uploads).
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Final

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Scope

from promoter import __version__
from promoter.changes import ChangeSource, LocalChanges
from promoter.clock import format_time
from promoter.config import Config
from promoter.errors import InvalidNameError, NotFoundError, PromoterError
from promoter.names import split_relpath
from promoter.safeio import Refused, open_dir, open_dir_chain, open_regular, out_of_descriptors
from promoter.signing import LinkSigner
from promoter.store import Store
from promoter.web.archive import archive_router
from promoter.web.bodies import JSON_BODY_MAX, BodyLimit
from promoter.web.bucket import Bucket, BucketChanges
from promoter.web.errors import detail_response, error_response, sentence, store_io_error
from promoter.web.fastpath import LeanFiles
from promoter.web.files import asset_response
from promoter.web.insights import router as insights_router
from promoter.web.links import links_router
from promoter.web.listing import RunLister, RunSource
from promoter.web.live import EventHub, events_router
from promoter.web.metrics import HttpMetrics
from promoter.web.models import ErrorDetail, Health
from promoter.web.observe import ForwardedFor, RequestObserver
from promoter.web.routes import WebState, lean_file_routes, router, web_state
from promoter.web.security import AccessGuard, load_token
from promoter.web.upload import BadUpload

__all__ = ["STATIC_DIR", "create_app", "local_changes"]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
UPLOAD_PATH: Final = "/runtime/library"
_ASSET_TYPES: Final = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".woff2": "font/woff2", ".txt": "text/plain; charset=utf-8",
}


def _validation_sentence(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "The request is malformed."
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    where = {"query": "query parameter", "path": "path parameter", "body": "body field",
             "header": "header"}.get(loc[0], loc[0]) if loc else "request"
    name = ".".join(loc[1:])
    msg = str(first.get("msg", "is invalid"))
    return sentence(f"invalid {where}{' ' + name if name else ''}: {msg}")


def _install_handlers(app: FastAPI) -> None:
    """One mapping from error kinds to `{"detail": sentence}` answers (DESIGN §7)."""

    async def promoter_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PromoterError)
        return error_response(exc)

    async def bad_upload(request: Request, exc: Exception) -> Response:
        return detail_response(422, sentence(str(exc)))

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return detail_response(422, _validation_sentence(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return detail_response(exc.status_code, sentence(str(exc.detail)), exc.headers)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return detail_response(400, "The client went away during the request.")

    async def store_io(request: Request, exc: Exception) -> Response:
        return error_response(store_io_error(exc))

    app.add_exception_handler(PromoterError, promoter_error)
    app.add_exception_handler(BadUpload, bad_upload)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(OSError, store_io)


def _open_asset(root: Path, relpath: str) -> tuple[int, os.stat_result]:
    """A file of the page's folder, opened without following links; NotFoundError else."""
    try:
        parts = split_relpath(relpath)
    except InvalidNameError:
        raise NotFoundError(f"no page file {relpath}") from None
    if any(p.startswith(".") for p in parts):
        raise NotFoundError(f"no page file {relpath}")
    try:
        base = open_dir(root)
        try:
            dir_fd = open_dir_chain(base, parts[:-1])
        finally:
            os.close(base)
        try:
            return open_regular(dir_fd, parts[-1], allow_hardlinks=True)
        finally:
            os.close(dir_fd)
    except (OSError, Refused):
        raise NotFoundError(f"no page file {relpath}") from None


def _asset_type(relpath: str) -> str:
    suffix = os.path.splitext(relpath)[1].lower()
    guessed = _ASSET_TYPES.get(suffix) or mimetypes.guess_type(relpath)[0]
    return guessed or "application/octet-stream"


def _add_page_routes(app: FastAPI, static_dir: Path) -> None:
    """`GET /` and `/static/*`: the artifact browser (DESIGN §8), under the page's CSP."""

    async def asset(request: Request, relpath: str) -> Response:
        fd, st = await anyio.to_thread.run_sync(_open_asset, static_dir, relpath)
        return asset_response(request, fd, st, content_type=_asset_type(relpath))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page(request: Request) -> Response:
        return await asset(request, "index.html")

    @app.api_route("/static/{relpath:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(request: Request, relpath: str) -> Response:
        return await asset(request, relpath)


def _unusable(what: str, path: Path) -> str | None:
    """Why the folder cannot serve now, or None. Opening it proves descriptors are left:
    a server out of them answers every file as missing while its folders look fine."""
    try:
        fd = open_dir(path)
    except OSError as exc:
        return ("The server cannot open files: too many open descriptors."
                if out_of_descriptors(exc) else f"The {what} folder is not usable.")
    os.close(fd)
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return f"The {what} folder is not usable."
    return None


def _add_ops_routes(app: FastAPI) -> None:
    """`/healthz` and `/metrics`."""

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}},
             summary="200 while artifacts/ and library/ are usable")
    def healthz(request: Request) -> JSONResponse:
        web = web_state(request)
        store = web.store
        if web.bucket is not None:  # DESIGN §10: 503 while the bucket is unreachable
            why = web.bucket.unhealthy()
            if why is not None:
                return JSONResponse({"status": "unavailable",
                                     "detail": "The bucket is not reachable."},
                                    status_code=503)
            return JSONResponse({"status": "ok"})
        for what, path in (("artifacts", store.artifacts_path), ("library", store.library.path)):
            why = _unusable(what, path)
            if why is not None:
                return JSONResponse({"status": "unavailable", "detail": why}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response, summary="Prometheus text format",
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
                        401: {"model": ErrorDetail}})
    def metrics(request: Request) -> Response:
        data = generate_latest(web_state(request).metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)


def _is_upload(scope: Scope) -> bool:
    """The library upload streams its multipart body under http.max_upload_bytes."""
    return bool(scope["method"] == "POST" and scope["path"] == UPLOAD_PATH)


def local_changes(store: Store) -> LocalChanges:
    """The local backend's change source for the event stream (inotify, DESIGN §7)."""

    def updated_at(run_id: str) -> str | None:
        try:
            meta = store.read_run(run_id)
        except PromoterError:
            return None
        return format_time(meta.updated_at) if meta is not None else None

    return LocalChanges(store.artifacts_path, store.library.path, updated_at)


def create_app(config: Config, store: Store | None = None, *,
               static_dir: Path | None = None, list_ttl_s: float = 0.5,
               changes: ChangeSource | None = None, bucket: Bucket | None = None) -> FastAPI:
    """The HTTP API and the page over `store` (default: a Store on `config`).

    `bucket`: the store is in a bucket (DESIGN §10); runs, files, archives, health and
    the event stream are read from there (its run cache), changes still go through `store`.
    `static_dir` and `list_ttl_s` (how long a rendered run list is reused) are for
    tests and benchmarks.

    Raises ConfigError when `http.token_file` is set but unreadable or empty:
    a server that should need a token never starts without one.
    """
    store = store if store is not None else Store(config)
    token = load_token(config.http.token_file)
    runs: RunSource = bucket.runs if bucket is not None else store
    metrics = HttpMetrics(store, runs)
    app = FastAPI(
        title="promoter", version=__version__, docs_url=None, redoc_url=None,
        description="Artifacts promoted from agent sessions, and the curated library "
                    "(DESIGN §7). Changing requests need the X-Promoter-Request header "
                    "(or a bearer token when the server has one).")
    signer = LinkSigner(token) if token is not None else None
    app.state.web = WebState(config=config, store=store,
                             lister=RunLister(store, list_ttl_s, runs=runs),
                             metrics=metrics, signer=signer, bucket=bucket)
    app.include_router(router)
    app.include_router(archive_router)
    app.include_router(links_router)
    app.include_router(events_router)
    app.include_router(insights_router)
    lister: RunLister = app.state.web.lister
    if changes is None:
        changes = BucketChanges(bucket.runs) if bucket is not None else local_changes(store)
    hub = app.state.events = EventHub(changes,
                                      on_change=lambda change: lister.invalidate(runs=False))
    metrics.event_clients.set_function(lambda: hub.clients)
    _add_ops_routes(app)
    _add_page_routes(app, static_dir if static_dir is not None else STATIC_DIR)
    _install_handlers(app)
    # The last one added is the outermost: the observer sees every answer, even the guard's;
    # the lean file path runs only for requests the guard let through.
    app.add_middleware(LeanFiles, routes=lean_file_routes())
    app.add_middleware(BodyLimit, max_bytes=JSON_BODY_MAX, exempt=_is_upload)
    app.add_middleware(AccessGuard, http=config.http, token=token, signer=signer)
    templates = [(r.path_regex, r.path) for r in (*archive_router.routes, *links_router.routes,
                                                  *events_router.routes,
                                                  *router.routes, *app.router.routes)
                 if isinstance(r, Route)]
    app.add_middleware(RequestObserver, metrics=metrics, templates=templates,
                       token=token is not None)
    if config.http.trusted_proxies:  # X-Forwarded-For only from these peers (DESIGN §7, §11)
        app.add_middleware(ForwardedFor, trusted_hosts=list(config.http.trusted_proxies))
    return app

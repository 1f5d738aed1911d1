"""File answers: every byte of a stored file goes out through here (DESIGN §7).

Agent-written files reach a person's browser, so their headers are decided in
one function, `file_response`: the sandbox CSP, `nosniff`, inline or
attachment by type, an RFC 6266 file name, a strong ETag, `If-None-Match`,
a single `Range`, HEAD. The page's own files (`asset_response`) share the
streaming and the conditional logic but carry the page's policy.

The body is streamed from a descriptor the store opened the safe way (no link
followed, DESIGN §6); nothing here opens a file by path.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from promoter.errors import PromoterError
from promoter.web.errors import StreamBroken

__all__ = [
    "FILE_CSP",
    "PAGE_CSP",
    "FdResponse",
    "Plan",
    "StoredBody",
    "asset_response",
    "body_response",
    "content_disposition",
    "disposition_type",
    "etag_matches",
    "file_headers",
    "file_response",
    "parse_range",
    "plan_answer",
    "stat_etag",
]

FILE_CSP: Final = ("sandbox; default-src 'none'; img-src 'self' data:; "
                   "style-src 'self' 'unsafe-inline'; media-src 'self'")
# The page: only its own files run; previews come from this origin or from blob:
# URLs it made itself (a fetch with the bearer token, then URL.createObjectURL).
PAGE_CSP: Final = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                   "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
                   "frame-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

# Shown in place: what a browser displays without running anything (DESIGN §7).
_INLINE_TYPES: Final = frozenset({
    "application/pdf", "text/plain", "text/csv", "application/json", "text/markdown",
})
# Documents that can carry scripts: inline only when asked with ?view=1, and
# then under the same sandbox, so no script of theirs runs.
_VIEWABLE_TYPES: Final = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml"})
_SMALL: Final = 64 * 1024  # read at once on the event loop: page-cache reads of this size are µs
_CHUNK: Final = 256 * 1024  # larger files: read in a worker thread, chunk by chunk
_RFC5987_SAFE: Final = "!#$&+^`|"  # attr-chars beyond the letters, digits and -._~ quote keeps
_UNSATISFIABLE: Final = b'{"detail":"The requested range is not inside the file."}'


def disposition_type(content_type: str, view: bool = False, download: bool = False) -> str:
    """`inline` for what a browser shows without running anything, else `attachment`."""
    if download:
        return "attachment"
    base = content_type.split(";", 1)[0].strip().lower()
    if base in _VIEWABLE_TYPES:
        return "inline" if view else "attachment"
    major = base.split("/", 1)[0]
    if major in ("image", "audio", "video") or base in _INLINE_TYPES:
        return "inline"
    return "attachment"


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback plus `filename*` in UTF-8; the base name only."""
    name = filename.rsplit("/", 1)[-1]
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    encoded = quote(name.encode("utf-8", "replace"), safe=_RFC5987_SAFE)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def stat_etag(st: os.stat_result, prefix: str = "") -> str:
    """A strong validator from the file's identity: inode, size and modification time.

    Sound for files that are only ever replaced by rename (a new inode), as the
    library's and the page's are.
    """
    return f'"{prefix}{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """`If-None-Match`: weak comparison, `*` matches any current file (RFC 9110 §13.1.2)."""
    if not header:
        return False
    bare = etag.removeprefix("W/")
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == bare:
            return True
    return False


class Unsatisfiable(Exception):
    """A well-formed Range that asks for nothing inside the file: 416."""


_MAX_DIGITS: Final = 18  # more digits than any file's size: read as "past every end"
_PAST_END: Final = 1 << 63


def _position(text: str) -> int | None:
    """A byte position of a Range (ASCII digits only); None when it is not one.

    `str.isdigit` accepts "²" and other Unicode digits that `int` refuses, and
    `int` refuses more than 4,300 digits: both reached a 500 and leaked the
    open descriptor. A well-formed position longer than any file is past its end.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > _MAX_DIGITS:
        return _PAST_END
    return int(text)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range `(first, last)` inclusive, or None to serve the whole file.

    Malformed headers, other units and several ranges are ignored (RFC 9110
    §14.2 allows it; several ranges would need multipart/byteranges, which no
    client of this API needs). Raises Unsatisfiable for a well-formed range
    that starts past the end, or a zero-length suffix. Never raises anything else.
    """
    if not header:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text or last_text):
        return None
    first = _position(first_text) if first_text else None
    last = _position(last_text) if last_text else None
    if (first_text and first is None) or (last_text and last is None):
        return None
    if first is None:  # suffix: the last N bytes
        assert last is not None
        if last == 0 or size == 0:
            raise Unsatisfiable
        return max(size - last, 0), size - 1
    if last is not None and last < first:
        return None  # malformed: ignored
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1) if last is not None else size - 1


Headers = list[tuple[bytes, bytes]]


def _h(pairs: Sequence[tuple[str, str]]) -> Headers:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


class FdResponse(Response):
    """Streams `length` bytes from `offset` of an open descriptor, then closes it.

    The descriptor is owned from construction on: it is closed whether the
    answer is sent, the client goes away, or the answer is never sent at all
    (`close`, which the builders call on their own early exits).
    """

    def __init__(self, fd: int | None, status_code: int, headers: Headers,
                 offset: int = 0, length: int = 0, send_body: bool = True,
                 body: bytes = b"") -> None:
        self.fd = fd
        self.status_code = status_code
        self.raw_headers = headers
        self.offset = offset
        self.length = length
        self.send_body = send_body
        self.background = None
        self.body = body  # sent instead of the file when there is no descriptor

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if not self.send_body or self.fd is None or self.length == 0:
                body = self.body if self.send_body and self.fd is None else b""
                await send({"type": "http.response.body", "body": body})
                return
            if self.length <= _SMALL:
                data = os.pread(self.fd, self.length, self.offset)
                await send({"type": "http.response.body", "body": data})
                return
            await self._stream(send, self.fd)
        finally:
            self.close()

    async def _stream(self, send: Send, fd: int) -> None:
        pos, end = self.offset, self.offset + self.length
        while pos < end:
            data = await anyio.to_thread.run_sync(os.pread, fd, min(_CHUNK, end - pos), pos)
            if not data:  # the file shrank under us: stop; the server closes the connection
                break
            pos += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": pos < end})


@dataclass(frozen=True)
class Plan:
    """What to answer for a stored file of `size` bytes: status, headers, the byte span."""

    status: int
    headers: Headers
    first: int = 0
    length: int = 0
    send_body: bool = True
    body: bytes = b""  # sent instead of the file (416)

    @property
    def sends_file(self) -> bool:
        return self.status in (200, 206) and self.send_body and self.length > 0


def plan_answer(request: Request, size: int, etag: str, headers: list[tuple[str, str]],
                content_type: str) -> Plan:
    """304, 416, 206 or 200 (GET or HEAD) for a file of `size` bytes: one decision for
    every kind of stored file (a local descriptor, an object in a bucket)."""
    head = request.method == "HEAD"
    common = [*headers, ("etag", etag), ("cache-control", "no-cache")]
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Plan(304, _h(common))
    wanted: tuple[int, int] | None = None
    if_range = request.headers.get("if-range")
    if if_range is None or if_range.strip() == etag:  # a date or another tag: the whole file
        try:
            wanted = parse_range(request.headers.get("range"), size)
        except Unsatisfiable:
            return Plan(416, _h([
                *common, ("content-range", f"bytes */{size}"),
                ("content-type", "application/json"),
                ("content-length", str(len(_UNSATISFIABLE)))]),
                send_body=not head, body=_UNSATISFIABLE)
    typed = [*common, ("accept-ranges", "bytes"), ("content-type", content_type)]
    if wanted is None:
        return Plan(200, _h([*typed, ("content-length", str(size))]), 0, size,
                    send_body=not head)
    first, last = wanted
    length = last - first + 1
    return Plan(206, _h([*typed, ("content-range", f"bytes {first}-{last}/{size}"),
                         ("content-length", str(length))]), first, length, send_body=not head)


def _conditional(request: Request, fd: int, st: os.stat_result, etag: str,
                 headers: list[tuple[str, str]], content_type: str) -> FdResponse:
    """The answer for an open file with the headers given.

    Owns `fd`: it is in the answer, or closed here, whatever goes wrong.
    """
    try:
        plan = plan_answer(request, st.st_size, etag, headers, content_type)
    except BaseException:
        os.close(fd)
        raise
    if plan.status not in (200, 206):  # 304 or 416: the file is not sent
        os.close(fd)
        return FdResponse(None, plan.status, plan.headers, send_body=plan.send_body,
                          body=plan.body)
    return FdResponse(fd, plan.status, plan.headers, plan.first, plan.length,
                      send_body=plan.send_body)


def file_headers(filename: str, content_type: str, view: bool = False,
                 download: bool = False) -> list[tuple[str, str]]:
    """DESIGN §7's headers of every stored file's answer, wherever its bytes come from."""
    return [
        ("content-security-policy", FILE_CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("content-disposition",
         content_disposition(disposition_type(content_type, view, download), filename)),
    ]


def file_response(request: Request, fd: int, st: os.stat_result, *, filename: str,
                  content_type: str, etag: str, view: bool = False,
                  download: bool = False) -> FdResponse:
    """The answer for a stored file (an artifact or a library file): DESIGN §7's headers.

    Takes ownership of `fd`. `etag` is already quoted.
    """
    return _conditional(request, fd, st, etag,
                        file_headers(filename, content_type, view, download), content_type)


def asset_response(request: Request, fd: int, st: os.stat_result, *,
                   content_type: str) -> FdResponse:
    """One of the page's own files (HTML, script, style): the page's strict policy.

    Takes ownership of `fd`.
    """
    headers = [
        ("content-security-policy", PAGE_CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ]
    return _conditional(request, fd, st, stat_etag(st, "page-"), headers, content_type)


class StoredBody(Protocol):
    """A stored file that is not a local descriptor (an object in a bucket): its size, its own
    sha256 when known, and its bytes [start, end) as a blocking iterator of bounded chunks
    (errors surface from `next()`). The iterator is closed when the answer ends."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str | None: ...

    def chunks(self, start: int, end: int) -> Iterator[bytes]: ...


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


async def _relay(first: bytes, rest: Iterator[bytes], length: int) -> AsyncIterator[bytes]:
    """The chunks, each fetched in a worker thread; exactly `length` bytes or StreamBroken.

    Closed however it ends (the client gone: starlette cancels this on `http.disconnect`),
    so the object's connection is given back at once, not after the whole object.
    """
    sent = len(first)
    try:
        yield first
        while sent < length:
            try:
                piece = await anyio.to_thread.run_sync(next, rest, None)
            except (PromoterError, OSError) as exc:  # a message of ours: no credential, no path
                raise StreamBroken(str(exc)) from None
            if piece is None:
                raise StreamBroken(f"the stored file ended after {sent} of {length} bytes")
            sent += len(piece)
            yield piece
        if sent > length:
            raise StreamBroken("the stored file grew while it was sent")
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_close, rest)


class _BodyStream(StreamingResponse):
    """A planned answer whose bytes come from a `StoredBody`: the plan's headers exactly."""

    def __init__(self, plan: Plan, first: bytes, rest: Iterator[bytes]) -> None:
        super().__init__(_relay(first, rest, plan.length), status_code=plan.status)
        self.raw_headers = list(plan.headers)


def body_response(plan: Plan, body: StoredBody) -> Response:
    """The answer for a stored body, from a worker thread: the first chunk is fetched here,
    before the head is sent, so a failure to start is a clean error answer (a 404 for an
    object gone, a 412 PreconditionFailed for one replaced since it was looked at) and the
    head is sent only once the bytes are known to come."""
    if not plan.sends_file:
        return FdResponse(None, plan.status, plan.headers, send_body=plan.send_body,
                          body=plan.body)
    chunks = body.chunks(plan.first, plan.first + plan.length)
    try:
        first = next(chunks, b"")
    except BaseException:
        _close(chunks)
        raise
    return _BodyStream(plan, first, chunks)

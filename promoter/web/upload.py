"""`POST /runtime/library`: a multipart upload streamed into the library (DESIGN §7).

The body is parsed as it arrives and the `file` part goes straight into the
library's temporary file through `Library.add_stream` (one write, bounded
memory, published atomically by the library). `http.max_upload_bytes` is
checked twice: against `Content-Length` before anything is read, and against
the bytes of the part while they stream, so an upload over the limit is
refused with 413 and leaves nothing behind, whatever length it announced.
Every byte of the body counts, not only the `file` part's: another part (a
field of 256 MB, huge part headers) is refused against the same limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Final, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from promoter.errors import ConflictError, InvalidNameError, TooLargeError
from promoter.library import Library, LibraryFile
from promoter.names import check_library_name
from promoter.render import human_size

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["BadUpload", "receive_upload"]

FIELD: Final = "file"
# Content-Length covers the multipart framing too: part headers and boundaries.
FRAMING_ALLOWANCE: Final = 64 * 1024


def too_large(max_bytes: int) -> str:
    """What a person reads when an upload is refused for its size."""
    return f"larger than the {human_size(max_bytes)} upload limit (http.max_upload_bytes)"


class BadUpload(Exception):
    """The body is not the multipart form this route takes: 422."""


class _Aborted(Exception):
    """The upload was given up on the request side; the library removes its temporary file."""


class _Pipe:
    """Carries the file part's bytes from the event loop to the library's writer thread."""

    def __init__(self) -> None:
        self.send: MemoryObjectSendStream[bytes]
        self.recv: MemoryObjectReceiveStream[bytes]
        self.send, self.recv = anyio.create_memory_object_stream[bytes](8)
        self.aborted = False

    def read(self, size: int = -1) -> bytes:
        """Called by `Library.add_stream` in the worker thread; b"" at the end."""
        try:
            return anyio.from_thread.run(self.recv.receive)
        except anyio.EndOfStream:
            if self.aborted:
                raise _Aborted from None
            return b""

    def abort(self) -> None:
        self.aborted = True
        self.send.close()


@dataclass
class _Part:
    name: str = ""
    filename: bytes | None = None
    header_name: bytes = b""
    header_value: bytes = b""
    disposition: bytes = b""


@dataclass
class _Events:
    """What the parser's callbacks saw during one chunk, handled after it."""

    headers_done: list[_Part] = field(default_factory=list)
    data: list[tuple[_Part, bytes]] = field(default_factory=list)
    ended: list[_Part] = field(default_factory=list)


def _callbacks(events: _Events) -> MultipartCallbacks:
    part = _Part()

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        if part.header_name.lower() == b"content-disposition":
            part.disposition = part.header_value
        part.header_name = part.header_value = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part.disposition)
        part.name = options.get(b"name", b"").decode("latin-1")
        part.filename = options.get(b"filename")
        events.headers_done.append(part)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.data.append((part, bytes(data[start:end])))

    def on_part_end() -> None:
        events.ended.append(part)

    return {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
            "on_part_end": on_part_end}


def _target_name(name: str | None, part: _Part) -> str:
    if name:
        return check_library_name(name)
    if not part.filename:
        raise InvalidNameError("the upload has no file name: give one with name=")
    try:
        return check_library_name(part.filename.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidNameError("the upload's file name is not UTF-8") from None


def check_length(request: Request, max_bytes: int) -> None:
    """Refuse an upload whose announced length is over the limit before reading any of it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes + FRAMING_ALLOWANCE:
        raise TooLargeError(too_large(max_bytes))


async def receive_upload(request: Request, library: Library, name: str | None,
                         overwrite: bool, max_bytes: int) -> LibraryFile:
    """Stream the `file` part into the library; raises PromoterError kinds or BadUpload."""
    check_length(request, max_bytes)
    ctype, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadUpload("the body must be multipart/form-data with a file field")
    if name:
        check_library_name(name)
    events = _Events()
    parser = MultipartParser(boundary, _callbacks(events))
    upload = _Upload(library, name, overwrite, max_bytes)
    try:
        async with anyio.create_task_group() as tg:
            try:
                received = 0
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_bytes + FRAMING_ALLOWANCE:  # other parts count too
                        raise TooLargeError(f"upload over max_upload_bytes ({max_bytes})")
                    parser.write(chunk)
                    await upload.handle(events, tg)
                parser.finalize()
                await upload.handle(events, tg)
                upload.finish()
            except FormParserError:
                upload.abort()
                raise BadUpload("the multipart body is malformed") from None
            except BaseException:
                upload.abort()
                raise
    except BaseExceptionGroup as group:  # the writer never raises: only our own errors
        raise group.exceptions[0] from None
    return upload.result()


class _Upload:
    """The state of the one `file` part being written."""

    def __init__(self, library: Library, name: str | None, overwrite: bool,
                 max_bytes: int) -> None:
        self.library = library
        self.name = name
        self.overwrite = overwrite
        self.max_bytes = max_bytes
        self.part: _Part | None = None
        self.pipe: _Pipe | None = None
        self.size = 0
        self.done = False
        self.ended = False
        self.outcome: LibraryFile | BaseException | None = None

    async def handle(self, events: _Events, tg: TaskGroup) -> None:
        for part in events.headers_done:
            if self.part is None and part.name == FIELD:
                self._start(part, tg)
        for part, data in events.data:
            if part is self.part and not self.done and self.pipe is not None:
                self.size += len(data)
                if self.size > self.max_bytes:
                    raise TooLargeError(too_large(self.max_bytes))
                try:
                    await self.pipe.send.send(data)
                except anyio.BrokenResourceError:
                    self.done = True  # the writer stopped early; its error is the answer
        for part in events.ended:
            if part is self.part and self.pipe is not None:
                self.pipe.send.close()
                self.done = self.ended = True
        events.headers_done.clear()
        events.data.clear()
        events.ended.clear()

    def _start(self, part: _Part, tg: TaskGroup) -> None:
        target = _target_name(self.name, part)
        if not self.overwrite and self.library.exists(target):
            raise ConflictError(f"library file {target} exists")
        self.part = part
        self.pipe = _Pipe()
        tg.start_soon(self._write, target, self.pipe)

    async def _write(self, target: str, pipe: _Pipe) -> None:
        try:
            self.outcome = await anyio.to_thread.run_sync(
                self.library.add_stream, target, cast(BinaryIO, pipe), self.overwrite,
                self.max_bytes)
        except Exception as exc:  # kept for result(): the request side decides what to raise
            self.outcome = exc
        finally:
            pipe.recv.close()

    def finish(self) -> None:
        if self.part is None:
            raise BadUpload("the multipart body has no file field")
        if not self.ended:  # never publish a file cut short
            raise BadUpload("the multipart body ends inside the file")

    def abort(self) -> None:
        if self.pipe is not None:
            self.pipe.abort()

    def result(self) -> LibraryFile:
        if isinstance(self.outcome, LibraryFile):
            return self.outcome
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        raise BadUpload("the multipart body has no file field")

"""Bytes in an S3-compatible bucket: the layer below the S3 backend (DESIGN §10).

obstore (Rust `object_store`) carries the data path: metadata reads with their
ETag, conditional PUTs, file uploads (multipart above the threshold), ranged
streaming reads, batched deletes. boto3 carries what object_store has no call
for: the bucket check, the paginated listing with a page size, and the listing
and abort of stale multipart uploads; its session also supplies credentials to
both (environment, shared profile, instance role). Both come with the `s3`
extra and are imported only here, when a store is opened, so a local install
imports promoter without them. Choice and figures: docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from promoter import stopcopy
from promoter.errors import PromoterError
from promoter.objectfields import (
    EntryFields,
    ObjectHead,
    ObjectInfo,
    StoredFile,
    decode_fields,
)
from promoter.s3errors import (
    ObjectNotFound,
    ObjectRefused,
    PreconditionFailed,
    S3ConfigError,
    SourceChanged,
    classify,
)
from promoter.s3layout import S3Settings, part_size_for, probe_key, relpath_from_file_key

if TYPE_CHECKING:
    from obstore.store import S3Store

__all__ = ["EntryFields", "ObjectHead", "ObjectInfo", "ObjectStore", "StoredFile"]

T = TypeVar("T")
READ_BYTES = 1024 * 1024
STREAM_CHUNK = 256 * 1024
UPLOAD_CONCURRENCY = 8  # parts in flight: memory is about part size x this (64 MiB)
PAGE = 1000
PROBE_READ_S = 8  # the bucket check's read timeout (two tries)
_ETAG_RE = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


class ObjectStore:
    """One bucket and prefix. Thread-safe: the clients are; no state changes after init."""

    def __init__(self, settings: S3Settings, *, session: Any = None,
                 timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        try:
            import boto3
            from botocore.config import Config
            from obstore.auth.boto3 import Boto3CredentialProvider
            from obstore.store import S3Store
        except ImportError as exc:
            raise S3ConfigError("storage.backend = 's3' needs: pip install 'promoter[s3]'") from exc
        self._session = session or boto3.session.Session()
        where = {"endpoint": settings.endpoint, "bucket": settings.bucket}
        try:
            creds = Boto3CredentialProvider(self._session)
        except ValueError as exc:
            raise classify(exc, **where) from None
        endpoint = settings.endpoint or None
        self._store: S3Store = S3Store(
            settings.bucket, endpoint=endpoint, region=settings.region,
            credential_provider=creds,
            # a stall is a read waiting timeout_s; a whole request (a stream served to a slow
            # client, a big part) may take long: `timeout` is object_store's total per request
            client_options={"allow_http": settings.allow_http, "connect_timeout": "5s",
                            "read_timeout": f"{int(timeout_s * 1000)}ms", "timeout": "3600s",
                            "pool_max_idle_per_host": "64"},
            retry_config={"max_retries": 3,
                          "retry_timeout": dt.timedelta(seconds=min(20.0, timeout_s))},
        )
        self._boto = self._session.client(
            "s3", endpoint_url=endpoint, region_name=settings.region,
            config=Config(connect_timeout=5, read_timeout=timeout_s, max_pool_connections=16,
                          retries={"mode": "standard", "max_attempts": 3}),
        )

    # -- errors ---------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], key: str = "") -> T:
        """Run a client call; any failure leaves as promoter's error, without the client's text."""
        try:
            return fn()
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # obstore's PanicException is a BaseException
            raise classify(exc, endpoint=self.settings.endpoint, bucket=self.settings.bucket,
                           key=key) from None

    # -- metadata-sized objects: read with ETag, conditional write -------------------------------

    def get(self, key: str, max_bytes: int = 64 * 1024 * 1024) -> tuple[bytes, str]:
        """The object's bytes and ETag: for metadata and tombstones, so at most `max_bytes`."""
        import obstore

        def run() -> tuple[bytes, str]:
            result = obstore.get(self._store, key)
            if int(result.meta["size"]) > max_bytes:
                raise ObjectRefused(f"{key!r} is over {max_bytes} bytes: not metadata")
            return bytes(result.bytes()), str(result.meta["e_tag"])

        return self._call(run, key)

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> str:
        """Write `data` only if the object is still at `etag` (None: only if it does not exist).

        Raises PreconditionFailed when another writer got there first (HTTP 412); the caller
        reads again and retries (DESIGN §10). Returns the new ETag.
        """
        import obstore

        if etag is not None and not _ETAG_RE.fullmatch(etag):
            raise ValueError("not an ETag a header can carry")
        mode: Any = "create" if etag is None else {"e_tag": etag}
        result = self._call(lambda: obstore.put(self._store, key, data, mode=mode), key)
        return str(result["e_tag"])

    def put(self, key: str, data: bytes) -> str:
        """Write `data` whatever is there (objects whose key names their content)."""
        import obstore

        return str(self._call(lambda: obstore.put(self._store, key, data), key)["e_tag"])

    def copy(self, src: str, dst: str) -> None:
        """A server-side copy: no bytes through this host, so no size cap."""
        import obstore
        self._call(lambda: obstore.copy(self._store, src, dst), src)

    # -- files ----------------------------------------------------------------------------------

    def put_file(self, key: str, fd: int, size: int, fields: EntryFields) -> StoredFile:
        """Upload `size` bytes of the open file `fd` (from offset 0) with its sha256.

        Up to the threshold: one pass reads and hashes, then one PUT. Above it, S3 wants the
        user metadata (`sha256`) before the first part, so a first pass hashes, and the upload
        pass hashes again as it reads each part: bytes that differ from the first pass (the
        file changed) abort the multipart upload and raise SourceChanged, so no object is ever
        stored under a digest that is not its own. (rclone does the same for its MD5.)
        """
        look = stopcopy.carried(stopcopy.check)  # the caller's stop, in obstore's threads too
        if size <= self.settings.multipart_threshold_bytes:
            digest, data = hashlib.sha256(), bytearray()
            for chunk in _read_fd(fd, size, look):
                digest.update(chunk)
                data += chunk
            if len(data) != size:
                raise SourceChanged(f"file for {key!r} shrank while read ({len(data)} of {size})")
            return self._put_small(key, bytes(data), digest.hexdigest(), fields)
        first = hashlib.sha256()
        for chunk in _read_fd(fd, size, look):
            first.update(chunk)
        sha = first.hexdigest()
        return self._put_multipart(key, fd, size, sha, fields, look)

    def _put_small(self, key: str, data: bytes, sha: str, fields: EntryFields) -> StoredFile:
        import obstore

        attrs: Any = fields.as_metadata(sha)
        result = self._call(
            lambda: obstore.put(self._store, key, data, attributes=attrs, use_multipart=False),
            key)
        return StoredFile(etag=str(result["e_tag"]), sha256=sha, size=len(data))

    def _put_multipart(self, key: str, fd: int, size: int, sha: str,
                       fields: EntryFields, look: Callable[[], None] | None = None) -> StoredFile:
        import obstore

        part = part_size_for(size)
        second = hashlib.sha256()
        sent = 0
        given_up: list[stopcopy.GivenUp] = []

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            try:
                for chunk in _read_fd(fd, size, look):
                    second.update(chunk)
                    sent += len(chunk)
                    yield chunk
            except stopcopy.GivenUp as exc:  # obstore aborts the multipart upload
                given_up.append(exc)
                raise
            # raised inside the upload's input: obstore aborts the multipart upload
            if sent != size or second.hexdigest() != sha:
                raise SourceChanged(f"file for {key!r} changed while it was uploaded")

        attrs: Any = fields.as_metadata(sha)
        try:
            result = obstore.put(self._store, key, chunks(), attributes=attrs,
                                 use_multipart=True, chunk_size=part,
                                 max_concurrency=UPLOAD_CONCURRENCY)
        except Exception as exc:  # SourceChanged from chunks() included: the check below
            if given_up:
                raise given_up[0] from None
            if sent != size or second.hexdigest() != sha:
                raise SourceChanged(f"file for {key!r} changed while it was uploaded") from None
            raise classify(exc, endpoint=self.settings.endpoint,
                           bucket=self.settings.bucket, key=key) from None
        return StoredFile(etag=str(result["e_tag"]), sha256=sha, size=size)

    # -- reading --------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectHead:
        """Size, ETag and the user metadata of one object."""
        import obstore

        result = self._call(lambda: obstore.get(self._store, key, options={"head": True}), key)
        meta = {k.lower(): v for k, v in result.attributes.items()}
        relpath = relpath_from_file_key(self.prefix, key)
        return ObjectHead(info=_info(result.meta), sha256=meta.get("sha256"),
                          fields=decode_fields(meta, relpath))

    def stream(self, key: str, start: int = 0, end: int | None = None,
               chunk: int = STREAM_CHUNK, if_match: str | None = None) -> Iterator[bytes]:
        """The bytes [start, end) of an object (end None: to its end), a chunk at a time;
        `if_match`: of that version only (else PreconditionFailed), as a HEAD described it.
        The request is made at the first `next()`, so errors surface there, classified."""
        import obstore

        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"bad byte range [{start}, {end})")
        if if_match is not None and not _ETAG_RE.fullmatch(if_match):
            raise ValueError("not an ETag a header can carry")
        options: Any = {} if if_match is None else {"if_match": if_match}
        if end is not None:
            options["range"] = (start, end)
        elif start:
            options["range"] = {"offset": start}
        result = self._call(lambda: obstore.get(self._store, key, options=options), key)
        stream = iter(result.stream(min_chunk_size=chunk))
        while True:
            piece = self._call(lambda: next(stream, None), key)
            if piece is None:
                return
            yield bytes(piece)

    def list_pages(self, under: str = "", page_size: int = PAGE) -> Iterator[list[ObjectInfo]]:
        """Every object under `<prefix><under>`, one server page (default 1,000 keys) at a time."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.settings.bucket,
                                      "Prefix": self.prefix + under, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(lambda kw=kwargs: self._boto.list_objects_v2(**kw))  # type: ignore[misc]
            yield [ObjectInfo(key=o["Key"], size=int(o["Size"]), etag=o["ETag"],
                              last_modified=o["LastModified"]) for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return

    def list_fast(self, under: str = "") -> Iterator[list[ObjectInfo]]:
        """As `list_pages`, through obstore: S3's pages parsed in Rust, 1,000 keys in 0.06-0.10 s
        here against boto3's 0.32-0.60 s. object_store refuses a few keys boto3 lists (empty
        or dot segments): a caller that must see every key falls back to `list_pages`."""
        import obstore

        pages = iter(obstore.list(self._store, self.prefix + under, chunk_size=PAGE))
        while (page := self._call(lambda: next(pages, None))) is not None:
            yield [_info(m) for m in page]

    # -- deleting and cleaning up ---------------------------------------------------------------

    def delete_many(self, keys: Iterable[str], batch_size: int = PAGE) -> int:
        """Delete keys in batches of 1,000 (S3 DeleteObjects); a missing key is no error."""
        import obstore

        batch = list(keys)
        for i in range(0, len(batch), batch_size):
            part = batch[i:i + batch_size]
            self._call(lambda p=part: obstore.delete(self._store, p))  # type: ignore[misc]
        return len(batch)

    def abort_stale_uploads(self, older_than: dt.timedelta,
                            now: dt.datetime | None = None) -> list[str]:
        """Abort multipart uploads under the prefix started before `now - older_than`."""
        cutoff = (now or dt.datetime.now(dt.UTC)) - older_than
        aborted: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": self.prefix}
        while True:
            page = self._call(lambda kw=dict(kwargs):  # type: ignore[misc]
                              self._boto.list_multipart_uploads(**kw))
            for up in page.get("Uploads", []):
                if up["Initiated"] < cutoff:
                    self._call(lambda u=up: self._boto.abort_multipart_upload(  # type: ignore[misc]
                        Bucket=self.settings.bucket, Key=u["Key"], UploadId=u["UploadId"]))
                    aborted.append(up["Key"])
            if not page.get("IsTruncated"):
                return aborted
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")

    # -- start-up probe -------------------------------------------------------------------------

    def probe(self) -> None:
        """Check the bucket and that the store honours If-None-Match: * and If-Match.

        The bucket is checked first with a HEAD: SeaweedFS creates a missing bucket on the
        first PUT, so a write would hide the configuration error. Raises S3ConfigError for a
        missing bucket, refused credentials or a store that ignores conditions (DESIGN §10:
        refuse to run), StoreUnavailable when the store cannot be reached.
        """
        try:
            self._call(lambda: self._quick_client().head_bucket(Bucket=self.settings.bucket))
        except ObjectNotFound:  # HEAD has no body: a bare 404 on the bucket is its absence
            where = self.settings.endpoint or "AWS S3"
            raise S3ConfigError(f"no such bucket {self.settings.bucket!r} at {where}") from None
        key = probe_key(self.prefix, secrets.token_hex(8))
        try:
            first = self.put_if(key, b"1", etag=None)
            self._expect_412(lambda: self.put_if(key, b"2", etag=None), "If-None-Match: *")
            self._expect_412(lambda: self.put_if(key, b"3", etag='"0000"'), "If-Match")
            self.put_if(key, b"4", etag=first)
        except BaseException:
            with contextlib.suppress(PromoterError):  # the first failure is the one to report
                self.delete_many([key])
            raise
        self.delete_many([key])

    def _quick_client(self) -> Any:
        """boto3 with short timeouts for the probe's bucket check: a store that accepts
        connections and never answers held a one-shot command 250 s (3 x 60 s reads)."""
        from botocore.config import Config

        return self._session.client(
            "s3", endpoint_url=self.settings.endpoint or None, region_name=self.settings.region,
            config=Config(connect_timeout=5, read_timeout=PROBE_READ_S,
                          retries={"mode": "standard", "max_attempts": 2}))

    def _expect_412(self, write: Callable[[], str], header: str) -> None:
        try:
            write()
        except PreconditionFailed:
            return
        where = self.settings.endpoint or "AWS S3"
        raise S3ConfigError(f"the store at {where} ignores {header}: promoter needs "
                            "conditional writes to avoid lost updates (DESIGN §10)")


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(key=str(meta["path"]), size=int(meta["size"]), etag=str(meta["e_tag"]),
                      last_modified=meta["last_modified"])


def _read_fd(fd: int, size: int, look: Callable[[], None] | None = None) -> Iterator[bytes]:
    """The first `size` bytes of `fd` by pread (the fd's offset is left alone); `look()`
    before each read (stopcopy.check: a stop may give the upload up)."""
    offset = 0
    while offset < size:
        if look is not None:
            look()
        chunk = os.pread(fd, min(READ_BYTES, size - offset), offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk

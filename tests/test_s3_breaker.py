"""What an outside probe of the S3 backend found (notes/probe-s3.md), each pinned by a test."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from s3_helpers import settings_for
from s3_server import S3Server
from s3_store_helpers import s3_store
from store_helpers import write_session_file

from promoter.objectstore import ObjectStore
from promoter.reconcile import complete_finished_runs
from promoter.s3layout import S3Settings, meta_key

pytest_plugins = ("s3_fixtures",)


def _host(name: str) -> dict[str, str]:
    return {"PROMOTER_STORAGE__HOST_ID": f'"{name}"'}


def test_another_hosts_live_run_is_not_completed(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str) -> None:
    """A host without a run's session folder leaves its status alone; its own host completes it."""
    one = s3_store(tmp_path / "h1", s3_server, s3_bucket, s3_prefix, **_host("h1"))
    two = s3_store(tmp_path / "h2", s3_server, s3_bucket, s3_prefix, **_host("h2"))
    write_session_file(tmp_path / "h1", "live", "a.txt", b"a")
    one.promote_files("live", ["a.txt"])
    complete_finished_runs(two)
    assert two.get_run("live").status == "active"
    shutil.rmtree(tmp_path / "h1" / "sessions" / "live")
    complete_finished_runs(one)
    assert one.get_run("live").status == "completed"


def test_oversized_metadata_object_is_set_aside_before_the_rebuild(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_prefix: str,
        objstore: ObjectStore) -> None:
    """Metadata over max_metadata_bytes is kept under .promoter/corrupt/, as a local rename keeps
    it, not overwritten by the rebuilt one."""
    store = s3_store(tmp_path, s3_server, s3_bucket, s3_prefix)  # max_metadata_bytes 64 MiB
    write_session_file(tmp_path, "big", "a.txt", b"a")
    store.promote_files("big", ["a.txt"])
    junk = b" " * ((64 << 20) + 1)  # over the limit: the bug was a copy through `get`, capped
    objstore.put(meta_key(s3_prefix, "big"), junk)
    assert [a.filename for a in store.get_run("big").artifacts] == ["a.txt"]
    aside = [o for page in objstore.list_pages(".promoter/corrupt/") for o in page]
    assert len(aside) == 1 and aside[0].key.startswith(f"{s3_prefix}.promoter/corrupt/big.json.")
    assert aside[0].size == len(junk)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:99999", "http://127.0.0.1:0"])
def test_an_endpoint_port_out_of_range_is_a_configuration_error(endpoint: str) -> None:
    """A port no TCP socket has is refused by the config check (exit 2), not met as an outage."""
    with pytest.raises(ValidationError, match="not a TCP port"):
        S3Settings(endpoint=endpoint, allow_http=True)


def test_a_stream_read_slower_than_the_timeout_is_not_cut(
        s3_server: S3Server, s3_bucket: str, s3_prefix: str, s3_session: Any) -> None:
    """The timeout is for a stalled read, not the whole request: a file served to a slow client
    for longer than it was cut mid-stream (object_store's `timeout` is a request's total)."""
    objects = ObjectStore(settings_for(s3_server, s3_bucket, prefix=s3_prefix),
                          session=s3_session, timeout_s=1.0)
    data = bytes(range(256)) * 8192  # 2 MiB: 8 chunks of 256 KiB
    objects.put(f"{s3_prefix}slow", data)
    started, got = time.monotonic(), bytearray()
    for piece in objects.stream(f"{s3_prefix}slow", chunk=256 * 1024):
        got += piece
        time.sleep(0.2)  # a slow client: the whole read takes well over timeout_s
    assert bytes(got) == data and time.monotonic() - started > 1.0


def test_a_store_that_never_answers_is_an_outage_within_seconds(
        s3_session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that accepts and never answers: the probe gives up after two short reads (it
    took 3 x 60 s before), so a one-shot command exits 1 instead of hanging for minutes."""
    import socket

    from promoter import objectstore
    from promoter.s3errors import StoreUnavailable

    monkeypatch.setattr(objectstore, "PROBE_READ_S", 1)
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)  # the kernel accepts; nobody ever reads or answers
    try:
        port = mute.getsockname()[1]
        objects = ObjectStore(S3Settings(bucket="mute", endpoint=f"http://127.0.0.1:{port}",
                                         allow_http=True), session=s3_session)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            objects.probe()
        assert time.monotonic() - started < 15
    finally:
        mute.close()

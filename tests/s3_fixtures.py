"""pytest plugin: one SeaweedFS for the whole session, a fresh bucket per test (DESIGN §10).

A test module that needs S3 says `pytest_plugins = ("s3_fixtures",)`; the plugin is
registered once by name, so however many modules ask, the session starts one server.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from s3_helpers import admin_client, aws_env, settings_for
from s3_server import S3Server, running_server

from promoter.objectstore import ObjectStore

_counter = itertools.count()
SHARED_BUCKET = "promoter-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real SeaweedFS on loopback, stopped in `finally` at the end of the session."""
    with running_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_shared_bucket(s3_server: S3Server) -> str:
    """One bucket for the session: a test keeps to its own prefix (buckets are slow to make)."""
    admin_client(s3_server).create_bucket(Bucket=SHARED_BUCKET)
    return SHARED_BUCKET


@pytest.fixture(scope="session")
def s3_session(s3_server: S3Server) -> Any:
    """One boto3 session with the server's credentials: a client from it is quick to make."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
    )


@pytest.fixture
def s3_bucket(s3_server: S3Server, s3_shared_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's bucket, and the AWS environment pointing at the server."""
    aws_env(monkeypatch, s3_server)
    return s3_shared_bucket


@pytest.fixture
def s3_prefix() -> str:
    """A prefix of this test's own in the shared bucket."""
    return f"t{next(_counter):04d}-{secrets.token_hex(3)}/"


@pytest.fixture
def objstore(s3_server: S3Server, s3_bucket: str, s3_prefix: str, s3_session: Any) -> ObjectStore:
    """An ObjectStore on the shared bucket, under this test's prefix."""
    return ObjectStore(settings_for(s3_server, s3_bucket, prefix=s3_prefix), session=s3_session)

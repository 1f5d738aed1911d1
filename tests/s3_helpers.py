"""Helpers for tests that use the SeaweedFS of s3_fixtures (plain functions, no fixtures)."""

from __future__ import annotations

from typing import Any

import pytest
from s3_server import S3Server

from promoter.s3layout import S3Settings

__all__ = ["admin_client", "aws_env", "settings_for"]


def aws_env(monkeypatch: pytest.MonkeyPatch, server: S3Server, secret: str | None = None) -> None:
    """Credentials through the environment only; no profile file, no instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret or server.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    # never ask 169.254.169.254 for a role: only loopback is ever reached
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "HTTP_PROXY",
                 "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


def admin_client(server: S3Server) -> Any:
    """A plain boto3 client for setting up buckets, outside the code under test."""
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name=server.region,
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
    )


def settings_for(server: S3Server, bucket: str, **overrides: Any) -> S3Settings:
    """`[storage.s3]` for the test server."""
    values: dict[str, Any] = {"bucket": bucket, "endpoint": server.endpoint,
                              "region": server.region, "allow_http": True}
    values.update(overrides)
    return S3Settings(**values)

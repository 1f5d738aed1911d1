"""Helpers for store, CLI and daemon tests on the bucket of s3_fixtures (plain functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s3_server import S3Server

from promoter.config import Config, load_config
from promoter.objectstore import ObjectStore
from promoter.s3errors import ObjectNotFound
from promoter.s3layout import meta_key
from promoter.store import Store

__all__ = ["bucket_meta", "bucket_names", "s3_config", "s3_env", "s3_storage", "s3_store",
           "s3_toml"]


def s3_env(server: S3Server, bucket: str, prefix: str, **extra: str) -> dict[str, str]:
    """PROMOTER_* variables that put the store in the test bucket under `prefix`."""
    env = {"PROMOTER_STORAGE__BACKEND": '"s3"', "PROMOTER_STORAGE__S3__BUCKET": f'"{bucket}"',
           "PROMOTER_STORAGE__S3__PREFIX": f'"{prefix}"',
           "PROMOTER_STORAGE__S3__ENDPOINT": f'"{server.endpoint}"',
           "PROMOTER_STORAGE__S3__REGION": f'"{server.region}"',
           "PROMOTER_STORAGE__S3__ALLOW_HTTP": "true"}
    env.update(extra)
    return env


def s3_config(root: Path, server: S3Server, bucket: str, prefix: str, **extra: str) -> Config:
    """A configuration with sessions under `root` and the store in the bucket."""
    return load_config(None, s3_env(server, bucket, prefix, **extra), str(root))


def s3_toml(server: S3Server, bucket: str, prefix: str, **storage: Any) -> str:
    """The [storage] and [storage.s3] tables of a config file for the test bucket."""
    lines = ["[storage]", 'backend = "s3"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in storage.items()]
    lines += ["", "[storage.s3]", f'bucket = "{bucket}"', f'prefix = "{prefix}"',
              f'endpoint = "{server.endpoint}"', f'region = "{server.region}"',
              "allow_http = true", ""]
    return "\n".join(lines)


def s3_store(root: Path, server: S3Server, bucket: str, prefix: str, clock: Any = None,
             **extra: str) -> Store:
    """A Store on the bucket, created as `promoter run` creates it (probe included)."""
    store = Store(s3_config(root, server, bucket, prefix, **extra), clock=clock)
    store.ensure_folders()
    return store


def s3_storage(server: S3Server, bucket: str, prefix: str, host: str = "host-a") -> dict[str, Any]:
    """The `storage` table of a daemon's config (daemon_helpers.base_config) for the bucket."""
    return {"backend": "s3", "host_id": host,
            "s3": {"bucket": bucket, "prefix": prefix, "endpoint": server.endpoint,
                   "region": server.region, "allow_http": True}}


def bucket_meta(objects: ObjectStore, run_id: str) -> dict[str, Any] | None:
    """A run's metadata as stored in `<prefix>meta/<run>.json`; None while there is none."""
    try:
        data, _ = objects.get(meta_key(objects.prefix, run_id))
    except ObjectNotFound:
        return None
    parsed: dict[str, Any] = json.loads(data)
    return parsed


def bucket_names(objects: ObjectStore, run_id: str) -> set[str]:
    """The filenames of a run's entries in the bucket (empty while it has no metadata)."""
    return {a["filename"] for a in (bucket_meta(objects, run_id) or {"artifacts": []})["artifacts"]}

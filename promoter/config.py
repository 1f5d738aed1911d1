"""Configuration: frozen pydantic models, one per TOML section (DESIGN §4).

`load_config()` merges, in order: built-in defaults, the TOML file, environment
variables `PROMOTER_<SECTION>__<KEY>`, then `--root`. Any problem becomes a
ConfigError whose message names the key or the line.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promoter.errors import ConfigError
from promoter.names import split_host_port
from promoter.s3layout import S3Settings

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AuditConfig",
    "Config",
    "HttpConfig",
    "LogConfig",
    "MetricsConfig",
    "PromoteConfig",
    "Reloaded",
    "RetentionConfig",
    "StorageConfig",
    "WatchConfig",
    "load_config",
    "merge_reload",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = Path("/etc/promoter/config.toml")
ENV_PREFIX = "PROMOTER_"
# PROMOTER_CONFIG names the file; the TEST_FAULTS (watch.py) and UPDATE_SCREENSHOTS ones are
# test hooks
NOT_KEYS = frozenset({"PROMOTER_CONFIG", "PROMOTER_TEST_FAULTS", "PROMOTER_UPDATE_SCREENSHOTS"})

# Sane ranges for every number (DESIGN §4): a value that passes `promoter config` must not
# break the daemon (an expiry past year 9999, a timer that spins a core).
MIN_INTERVAL_S = 0.05  # timers faster than this only burn a core
MAX_INTERVAL_S = 7 * 86400.0
MAX_RETENTION_DAYS = 36_500.0  # 100 years: created_at + days stays far inside datetime's range
MAX_BYTES = 1 << 50  # 1 PiB
MAX_METADATA_BYTES = 4 << 30  # parsing more than this would freeze any reader
MAX_CONFIG_BYTES = 1 << 20  # a configuration file; more is a mistake (a link to /dev/zero)
MAX_DEPTH = 500  # folders below output/: the polling observer's snapshot recurses once a level


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StorageConfig(_Section):
    root: Path = Path("/app/storage")
    sessions: Path | None = None
    artifacts: Path | None = None
    library: Path | None = None
    backend: Literal["local", "s3"] = "local"  # DESIGN §10: "s3" keeps artifacts in a bucket
    # one key-safe name: it is part of audit object keys (DESIGN §11)
    host_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    s3: S3Settings = S3Settings()  # [storage.s3]; credentials only from the AWS sources

    @property
    def host(self) -> str:
        """This host's name in audit events (DESIGN §10, §11): `host_id`, else the hostname."""
        return self.host_id or socket.gethostname()

    @property
    def sessions_dir(self) -> Path:
        return self.sessions if self.sessions is not None else self.root / "sessions"

    @property
    def artifacts_dir(self) -> Path:
        return self.artifacts if self.artifacts is not None else self.root / "artifacts"

    @property
    def library_dir(self) -> Path:
        return self.library if self.library is not None else self.root / "library"


class WatchConfig(_Section):
    settle_ms: int = Field(default=300, ge=0, le=3_600_000)
    exclude: tuple[str, ...] = (".*", "*.tmp", "*.part", "*.swp", "*~")
    observer: Literal["auto", "inotify", "polling"] = "auto"
    rescan_interval_s: float = Field(default=300, ge=0, le=MAX_INTERVAL_S)
    max_depth: int = Field(default=64, ge=1, le=MAX_DEPTH)

    @field_validator("rescan_interval_s")
    @classmethod
    def _off_or_sane(cls, value: float) -> float:
        if 0 < value < MIN_INTERVAL_S:
            raise ValueError(f"must be 0 (off) or at least {MIN_INTERVAL_S}")
        return value


class PromoteConfig(_Section):
    workers: int = Field(default=2, ge=1, le=64)
    max_file_bytes: int = Field(default=1 << 30, ge=0, le=MAX_BYTES)
    max_run_bytes: int = Field(default=10 << 30, ge=0, le=MAX_BYTES)
    # metadata.json larger than this is corrupt (set aside, rebuilt), never parsed:
    # ~330 bytes an entry, so 64 MiB is about 200,000 entries.
    max_metadata_bytes: int = Field(default=64 << 20, ge=1 << 20, le=MAX_METADATA_BYTES)
    checksum: Literal["sha256", "none"] = "sha256"
    allow_hardlinks: bool = False


class RetentionConfig(_Section):
    days: float = Field(default=7, gt=0, le=MAX_RETENTION_DAYS)
    sweep_interval_s: float = Field(default=3600, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)
    max_store_bytes: int = Field(default=0, ge=0, le=MAX_BYTES)  # 0 = no ceiling (DESIGN §4)
    workflows: dict[str, float] = Field(default_factory=dict)

    @field_validator("workflows")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, days in value.items():
            if not 0 < days <= MAX_RETENTION_DAYS:
                raise ValueError(f"retention for workflow {name!r} must be more than 0 and at"
                                 f" most {MAX_RETENTION_DAYS:g} days")
        return value

    def days_for(self, workflow_id: str) -> float:
        """Retention in days for a run of `workflow_id`."""
        return self.workflows.get(workflow_id, self.days) if workflow_id else self.days


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class MetricsConfig(_Section):
    textfile: str = ""
    interval_s: float = Field(default=15, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)


class HttpConfig(_Section):
    listen: str = "127.0.0.1:8730"
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    token_file: str = ""
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_upload_bytes: int = Field(default=100 << 20, ge=0, le=MAX_BYTES)
    header_timeout_s: float = Field(default=10, ge=0.1, le=3600)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)  # a ValueError names the form
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return value


class AuditConfig(_Section):
    retention_days: int = Field(default=365, ge=1)


class Config(_Section):
    storage: StorageConfig = StorageConfig()
    watch: WatchConfig = WatchConfig()
    promote: PromoteConfig = PromoteConfig()
    retention: RetentionConfig = RetentionConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    http: HttpConfig = HttpConfig()
    audit: AuditConfig = AuditConfig()


def resolve_config_path(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: `--config`, then `$PROMOTER_CONFIG`, then the system file if present."""
    if explicit:
        return Path(explicit)
    if env.get("PROMOTER_CONFIG"):
        return Path(env["PROMOTER_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML: a regular file of at most MAX_CONFIG_BYTES. A reload must not read
    for ever (a link to /dev/zero) or wait on a FIFO: the main thread would never act on a
    signal again (probe r9-signals F3)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"config file {path} is not a regular file")
            data = os.read(fd, MAX_CONFIG_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
        return tomllib.loads(data.decode())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is unreadable: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _env_value(text: str) -> Any:
    """An environment value is read as a TOML value when it is one, else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_KEYS:
            continue
        if "__" not in name:
            # PROMOTER_STORAGE_ROOT (one underscore) must not be silently ignored (DESIGN §3)
            raise ConfigError(f"environment variable {name} names no key "
                              "(keys are PROMOTER_<SECTION>__<KEY>, e.g. PROMOTER_STORAGE__ROOT)")
        keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if any(not key for key in keys):
            raise ConfigError(f"environment variable {name}: empty key")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: {key} is not a section")
            node = child
        node[keys[-1]] = _env_value(text)


def _describe(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {key}{more}"
    return f"{source}: bad value for {key}: {first['msg']}{more}"


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    root: str | None = None,
) -> Config:
    """Build the effective configuration, or raise ConfigError naming the key."""
    environ = os.environ if env is None else env
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    _apply_env(data, environ)
    if root is not None:
        data.setdefault("storage", {})
        if not isinstance(data["storage"], dict):
            raise ConfigError("storage must be a table")
        data["storage"]["root"] = root
    source = str(path) if path is not None else "configuration"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


# What SIGHUP cannot change in a running daemon (DESIGN §5): they apply at the next start.
NEEDS_RESTART = ("storage.", "promote.workers", "watch.observer")


@dataclass(frozen=True)
class Reloaded:
    """What a reload makes of a new configuration."""

    config: Config  # the new one, but for the keys that need a restart
    changed: list[str]  # every key that differs, dotted (`watch.settle_ms`)
    restart: list[str]  # those of them that take effect only at the next start


def merge_reload(old: Config, new: Config) -> Reloaded:
    """Pure: the configuration a reload applies, and which keys changed (DESIGN §5)."""
    before, after = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    applied = new.model_copy(update={
        "storage": old.storage,
        "watch": new.watch.model_copy(update={"observer": old.watch.observer}),
        "promote": new.promote.model_copy(update={"workers": old.promote.workers}),
    })
    return Reloaded(applied, changed, [k for k in changed if k.startswith(NEEDS_RESTART)])


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "workflows":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out

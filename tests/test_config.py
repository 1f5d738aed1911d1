"""Configuration: TOML, environment overrides and --root, with errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from promoter.config import Config, load_config, merge_reload, resolve_config_path
from promoter.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_defaults_match_design() -> None:
    """Built-in defaults are DESIGN §4's."""
    c = Config()
    assert c.storage.root == Path("/app/storage")
    assert c.storage.sessions_dir == Path("/app/storage/sessions")
    assert c.watch.settle_ms == 300
    assert c.watch.exclude == (".*", "*.tmp", "*.part", "*.swp", "*~")
    assert c.promote.max_file_bytes == 1073741824
    assert c.promote.max_run_bytes == 10737418240
    assert c.retention.days == 7
    assert c.http.listen == "127.0.0.1:8730"
    assert c.http.max_upload_bytes == 104857600


def test_file_env_and_root_merge_in_order(tmp_path: Path) -> None:
    """The file sets, the environment overrides it, --root overrides both."""
    cfg = tmp_path / "p.toml"
    cfg.write_text('[watch]\nsettle_ms = 100\n[storage]\nroot = "/a"\n'
                   '[retention.workflows]\nlong_study = 30\n')
    c = load_config(cfg, {"PROMOTER_WATCH__SETTLE_MS": "250"}, None)
    assert c.watch.settle_ms == 250
    assert c.storage.root == Path("/a")
    assert c.retention.days_for("long_study") == 30
    assert c.retention.days_for("other") == 7
    c = load_config(cfg, {"PROMOTER_STORAGE__ROOT": "/b"}, "/c")
    assert c.storage.root == Path("/c")


def test_env_values_are_toml_or_strings() -> None:
    """Environment values parse as TOML values (lists, numbers) and fall back to strings."""
    c = load_config(None, {"PROMOTER_WATCH__EXCLUDE": '["*.bak"]',
                           "PROMOTER_STORAGE__LIBRARY": "/lib",
                           "PROMOTER_HTTP__ALLOWED_HOSTS": '["a", "b"]'})
    assert c.watch.exclude == ("*.bak",)
    assert c.storage.library_dir == Path("/lib")
    assert c.http.allowed_hosts == ("a", "b")


@pytest.mark.parametrize(("env", "needle"), [
    ({"PROMOTER_WATCH__BOGUS": "1"}, "unknown key watch.bogus"),
    ({"PROMOTER_WATCH__SETTLE_MS": "soon"}, "watch.settle_ms"),
    ({"PROMOTER_WATCH__OBSERVER": '"kqueue"'}, "watch.observer"),
    ({"PROMOTER_PROMOTE__WORKERS": "0"}, "promote.workers"),
    ({"PROMOTER_HTTP__LISTEN": '"nowhere"'}, "http.listen"),
    ({"PROMOTER_NOPE__X": "1"}, "unknown key nope"),
    ({"PROMOTER_RETENTION__WORKFLOWS__X": "-1"}, "retention.workflows"),
])
def test_bad_values_name_the_key(env: dict[str, str], needle: str) -> None:
    """An unknown key or bad value is a ConfigError naming it (exit status 2)."""
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        load_config(None, env)
    assert info.value.exit_code == 2


def test_toml_syntax_error_names_the_line(fs: FakeFilesystem) -> None:
    """A TOML syntax error says the file and the line."""
    fs.create_file("/p.toml", contents="[watch]\nsettle_ms = = 3\n")
    with pytest.raises(ConfigError, match=r"/p\.toml.*line 2"):
        load_config(Path("/p.toml"), {})


def test_missing_config_file_is_an_error(fs: FakeFilesystem) -> None:
    """A --config file that does not exist is a ConfigError."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path("/missing.toml"), {})


def test_config_path_resolution(fs: FakeFilesystem) -> None:
    """--config, then $PROMOTER_CONFIG, then /etc/promoter/config.toml if it exists."""
    assert resolve_config_path("/x.toml", {"PROMOTER_CONFIG": "/y"}) == Path("/x.toml")
    assert resolve_config_path(None, {"PROMOTER_CONFIG": "/y"}) == Path("/y")
    assert resolve_config_path(None, {}) is None
    fs.create_file("/etc/promoter/config.toml")
    assert str(resolve_config_path(None, {})) == "/etc/promoter/config.toml"


def test_example_config_equals_defaults() -> None:
    """config.example.toml holds every key of DESIGN §4 at its default."""
    data = tomllib.loads(EXAMPLE.read_text())
    example = load_config(EXAMPLE, {})
    assert example == Config()
    assert set(data) == set(Config.model_fields)
    for section, model in Config.model_fields.items():
        keys = set(data[section])
        expected = set(model.annotation.model_fields)  # type: ignore[union-attr]
        # storage.sessions/artifacts/library are commented out: they default from root.
        optional = {"sessions", "artifacts", "library", "workflows"}
        assert expected - keys <= optional, section


@pytest.mark.parametrize(("key", "value"), [
    ("retention.days", "10000000"),
    ("retention.days", "nan"),
    ("retention.workflows.x", "1e9"),
    ("retention.sweep_interval_s", "1e-6"),
    ("retention.sweep_interval_s", "1e12"),
    ("metrics.interval_s", "1e-6"),
    ("metrics.interval_s", "inf"),
    ("watch.rescan_interval_s", "1e-6"),
    ("watch.rescan_interval_s", "-1"),
    ("watch.settle_ms", "-1"),
    ("watch.max_depth", "0"),
    ("watch.max_depth", "501"),
    ("promote.workers", "100000"),
    ("promote.max_file_bytes", "9223372036854775807"),
    ("promote.max_run_bytes", "-1"),
    ("http.max_upload_bytes", "9223372036854775807"),
    ("http.header_timeout_s", "1e-6"),
    ("promote.max_metadata_bytes", "1e15"),
    ("promote.max_metadata_bytes", "9223372036854775807"),
])
def test_every_number_has_a_sane_range_named_in_the_error(key: str, value: str) -> None:
    """A number outside its sane range is a ConfigError naming the key, not a broken daemon."""
    env = {"PROMOTER_" + "__".join(key.upper().split(".")): value}
    needle = key.removesuffix(".x")  # a workflow's retention is named by its workflow too
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        load_config(None, env)
    assert info.value.exit_code == 2


def test_the_edges_of_the_ranges_are_accepted() -> None:
    """Zero turns the rescan off; the bounds themselves are valid values."""
    config = load_config(None, {"PROMOTER_WATCH__RESCAN_INTERVAL_S": "0",
                                "PROMOTER_RETENTION__DAYS": "36500",
                                "PROMOTER_METRICS__INTERVAL_S": "0.05",
                                "PROMOTER_WATCH__MAX_DEPTH": "500"})
    assert config.watch.rescan_interval_s == 0 and config.retention.days == 36500
    assert config.watch.max_depth == 500


def test_the_daemon_refuses_an_absurd_retention_with_exit_2(tmp_path: Path) -> None:
    """`promoter run` with retention.days = 10000000 exits 2 naming the key, before any work."""
    import subprocess
    import sys
    conf = tmp_path / "c.toml"
    conf.write_text(f'[storage]\nroot = "{tmp_path}"\n[retention]\ndays = 10000000\n')
    done = subprocess.run([sys.executable, "-m", "promoter", "run", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "retention.days" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "artifacts").exists()


# -- reload (SIGHUP): a pure merge, DESIGN §5 ------------------------------------------------

def test_reload_applies_what_can_change_and_lists_it() -> None:
    """A new settle time, log level and retention apply at once; nothing needs a restart."""
    old = Config()
    new = Config.model_validate({"watch": {"settle_ms": 900}, "log": {"level": "debug"},
                                 "retention": {"workflows": {"short": 1}}})
    reloaded = merge_reload(old, new)
    assert reloaded.config == new
    assert reloaded.changed == ["log.level", "retention.workflows", "watch.settle_ms"]
    assert reloaded.restart == []


def test_reload_keeps_what_needs_a_restart_and_names_it() -> None:
    """Storage, workers and observer keep their running values (named for a restart), while
    other keys of the same sections apply."""
    old = Config()
    new = Config.model_validate({"storage": {"root": "/elsewhere"},
                                 "watch": {"observer": "polling", "settle_ms": 10},
                                 "promote": {"workers": 7, "max_file_bytes": 1000}})
    reloaded = merge_reload(old, new)
    applied = reloaded.config
    assert applied.storage == old.storage
    assert (applied.watch.observer, applied.watch.settle_ms) == (old.watch.observer, 10)
    assert (applied.promote.workers, applied.promote.max_file_bytes) == (old.promote.workers,
                                                                         1000)
    assert set(reloaded.restart) == {"promote.workers", "watch.observer"} | {
        k for k in reloaded.changed if k.startswith("storage.")}
    assert "promote.max_file_bytes" in reloaded.changed
    assert "promote.max_file_bytes" not in reloaded.restart


def test_reload_of_the_same_configuration_changes_nothing() -> None:
    """An unchanged file: no key changed, the running configuration stays."""
    reloaded = merge_reload(Config(), Config())
    assert (reloaded.changed, reloaded.restart, reloaded.config) == ([], [], Config())

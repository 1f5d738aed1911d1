"""The command line: `main(argv) -> int` (DESIGN §3).

Data goes to stdout, logs to stderr; every error is one line on stderr and an
exit status (2 for usage and configuration, 1 for the rest), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from promoter import __version__
from promoter.config import Config, load_config, resolve_config_path
from promoter.errors import PromoterError, UsageError
from promoter.logs import configure_logging
from promoter.metadata import RunMetadata, metadata_json_schema
from promoter.names import check_relpath, check_run_id
from promoter.render import age, human_size, matches_filter, run_state, table

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns the exit status."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="TOML file (default: $PROMOTER_CONFIG, "
                        "then /etc/promoter/config.toml)")
    common.add_argument("--root", metavar="DIR", help="shortcut for storage.root")
    parser = _Parser(prog="promoter", description="Promote agent-generated files into a "
                     "persistent artifact store.")
    parser.add_argument("--version", action="version", version=f"promoter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    add("run", "run the daemon in the foreground")
    p = add("reconcile", "promote every finished file not yet in the store, then exit")
    p.add_argument("--json", action="store_true")
    p = add("sweep", "delete expired runs once, then exit")
    p.add_argument("--dry-run", action="store_true", help="only list the runs it would delete")
    p.add_argument("--json", action="store_true")
    p = add("ls", "list runs, newest first")
    p.add_argument("--filter", choices=["all", "recent", "expiring"], default="all")
    p.add_argument("--json", action="store_true")
    p = add("show", "one run's metadata and files")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true")
    p = add("rm", "delete a run's artifacts, or one artifact; deleted stays deleted")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("filename", metavar="FILENAME", nargs="?")
    p = add("keep", "pin a run so that it never expires")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--off", action="store_true", help="unpin it")
    p = add("promote", "copy an artifact into the library")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("filename", metavar="FILENAME")
    p.add_argument("--as", dest="as_name", metavar="NAME", help="library name (default: base name)")
    p.add_argument("--overwrite", action="store_true")
    p = add("export", "write a run's files as one zip (names as under files/)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="the zip to write, or - for stdout")
    p = add("serve", "serve the HTTP API and the artifact browser")
    p.add_argument("--listen", metavar="HOST:PORT", help="overrides http.listen")
    p = add("config", "check the configuration and print the effective one")
    p.add_argument("--json", action="store_true")
    add("schema", "print the JSON Schema of metadata.json")
    return parser


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _store(config: Config) -> Any:
    from promoter.store import Store

    return Store(config)


def _cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    from promoter.reconcile import reconcile
    from promoter.startup import prepare_store

    store = prepare_store(config)
    summary = reconcile(store).summary()
    if args.json:
        _print_json(summary)
    else:
        print(", ".join(f"{v} {k}" for k, v in summary.items()))
    return 0


def _cmd_sweep(args: argparse.Namespace, config: Config) -> int:
    from promoter.sweep import sweep

    report = sweep(_store(config), dry_run=args.dry_run)
    if args.json:
        _print_json({"expired": report.expired, "dry_run": report.dry_run})
    elif report.expired:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(report.expired)} expired run(s): " + " ".join(report.expired))
    else:
        print("no expired runs")
    return 0


def _agents(meta: RunMetadata) -> str:
    return ",".join(sorted({a.agent_id for a in meta.artifacts})) or "-"


def _cmd_ls(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    now = store.clock.now()
    every = store.list_runs()
    runs = [m for m in every if matches_filter(m, args.filter, now)]
    total, ceiling = sum(m.total_bytes for m in every), config.retention.max_store_bytes
    if args.json:
        _print_json({"runs": [m.model_dump(mode="json") for m in runs]})  # DESIGN §3 shape
        return 0
    if runs:
        rows = [[m.run_id, age(m.created_at, now), str(len(m.artifacts)),
                 human_size(m.total_bytes), _agents(m), run_state(m, now),
                 m.workflow_id or "-"] for m in runs]
        print(table(["RUN", "AGE", "FILES", "SIZE", "AGENTS", "STATE", "WORKFLOW"], rows))
    else:
        print("no runs")
    limit = f"of {human_size(ceiling)} ceiling" if ceiling else "(no ceiling)"
    print(f"store: {human_size(total)} {limit}, {len(every)} run(s)")
    return 0


def _cmd_show(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    meta = store.get_run(check_run_id(args.run_id))
    if args.json:
        _print_json(meta.model_dump(mode="json"))
        return 0
    now = store.clock.now()
    print(f"run        {meta.run_id}  ({run_state(meta, now)}, status {meta.status})")
    print(f"workflow   {meta.workflow_id or '-'}")
    print(f"directive  {meta.user_directive or '-'}")
    print(f"created    {age(meta.created_at, now)}  expires {meta.expires_at:%Y-%m-%d %H:%M}Z"
          f"{'  (kept)' if meta.keep else ''}")
    print()
    rows = [[a.filename, a.agent_id, human_size(a.size_bytes), a.content_type,
             age(a.generated_at, now), (a.sha256 or "-")[:12]] for a in meta.artifacts]
    print(table(["FILE", "AGENT", "SIZE", "TYPE", "WRITTEN", "SHA256"], rows) if rows
          else "no files")
    return 0


def _cmd_rm(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    run_id = check_run_id(args.run_id)
    if args.filename is not None:
        store.delete_artifact(run_id, check_relpath(args.filename))
        print(f"removed {args.filename} from run {run_id}")
    else:
        report = store.delete_run(run_id)
        print(f"deleted run {run_id} ({report.files} files, {human_size(report.size_bytes)})")
    return 0


def _cmd_keep(args: argparse.Namespace, config: Config) -> int:
    meta = _store(config).set_keep(check_run_id(args.run_id), not args.off)
    print(f"run {meta.run_id} {'is kept' if meta.keep else 'expires normally'}")
    return 0


def _cmd_promote(args: argparse.Namespace, config: Config) -> int:
    added = _store(config).promote_to_library(
        check_run_id(args.run_id), check_relpath(args.filename), args.as_name, args.overwrite)
    print(f"library/{added.name} ({human_size(added.size_bytes)})")
    return 0


def _cmd_export(args: argparse.Namespace, config: Config) -> int:
    from promoter.archive import iter_zip
    from promoter.errors import StoreIOError

    chunks = iter_zip(_store(config), check_run_id(args.run_id))  # a missing run: nothing written
    if args.output == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return 0
    target = Path(args.output)
    partial = target.with_name(f".{target.name}.promoter-export")
    try:  # written beside the target, then renamed: a failed export leaves no half zip
        with partial.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreIOError(f"cannot write {target}: {exc.strerror or exc}") from None
    print(f"wrote {target} ({human_size(target.stat().st_size)})")
    return 0


def _cmd_config(args: argparse.Namespace, config: Config) -> int:
    data = config.model_dump(mode="json")
    if args.json:
        _print_json(data)
        return 0
    from promoter.tomlout import dumps

    sys.stdout.write(dumps(data))
    return 0


def _cmd_schema(args: argparse.Namespace, config: Config) -> int:
    _print_json(metadata_json_schema())
    return 0


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    from promoter.daemon import run_daemon

    def reload() -> Config:
        return _load(args)

    return run_daemon(config, reload)


def _cmd_serve(args: argparse.Namespace, config: Config) -> int:
    try:
        from promoter.web.server import serve
    except ImportError as exc:
        raise UsageError(f"promoter serve needs the web extra (pip install 'promoter[web]'): "
                         f"{exc}") from None
    return serve(config, args.listen)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "run": _cmd_run, "reconcile": _cmd_reconcile, "sweep": _cmd_sweep, "ls": _cmd_ls,
    "show": _cmd_show, "rm": _cmd_rm, "keep": _cmd_keep, "promote": _cmd_promote,
    "serve": _cmd_serve, "config": _cmd_config, "export": _cmd_export, "schema": _cmd_schema,
}


def _load(args: argparse.Namespace) -> Config:
    path = resolve_config_path(args.config, os.environ)
    return load_config(path, os.environ, args.root)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        config = _load(args)
        configure_logging(config.log.level, config.log.format)
        return COMMANDS[args.command](args, config)
    except PromoterError as exc:
        sys.stderr.write(f"promoter: {exc}\n")
        return exc.exit_code
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:
        sys.stderr.write(f"promoter: internal error: {type(exc).__name__}: {exc}\n")
        return 1

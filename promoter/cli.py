"""The command line: `main(argv) -> int` (DESIGN §3).

Data goes to stdout, logs to stderr; every error is one line on stderr and an
exit status (2 for usage and configuration, 1 for the rest), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from promoter import __version__, events
from promoter.cli_commands import (
    cmd_audit,
    cmd_check,
    cmd_config,
    cmd_export,
    cmd_keep,
    cmd_library,
    cmd_ls,
    cmd_promote,
    cmd_reconcile,
    cmd_rm,
    cmd_schema,
    cmd_show,
    cmd_stats,
    cmd_sweep,
)
from promoter.clock import parse_duration
from promoter.config import Config, load_config, resolve_config_path
from promoter.errors import PromoterError, UsageError, host_limit
from promoter.logs import configure_logging, get_logger, stderr_line
from promoter.render import printable
from promoter.safeio import describe_os_error
from promoter.walk import gc_paused

if TYPE_CHECKING:
    from promoter.prescan import Prescan

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns the exit status."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


JSON_HELP = "print machine-readable JSON on stdout"


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: given before the command (`promoter --root X ls`), the value stays
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file (default: $PROMOTER_CONFIG, "
                        "then /etc/promoter/config.toml)")
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                        help="shortcut for storage.root")
    parser = _Parser(prog="promoter", description="Promote agent-generated files into a "
                     "persistent artifact store.")
    parser.add_argument("--version", action="version", version=f"promoter {__version__}")
    parser.add_argument("--config", metavar="FILE", help="as after the command")
    parser.add_argument("--root", metavar="DIR", help="as after the command")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def add(name: str, text: str, json: bool = False,
            dry_run: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        if json:
            p.add_argument("--json", action="store_true", help=JSON_HELP)
        if dry_run:
            p.add_argument("--dry-run", action="store_true", help=dry_run)
        return p

    _run_commands(add)
    _store_commands(add)
    return parser


_Add = Callable[..., argparse.ArgumentParser]


def _run_commands(add: _Add) -> None:
    """The daemon, and the commands on runs."""
    add("run", "run the daemon in the foreground")
    add("reconcile", "promote every finished file not yet in the store, then exit", json=True)
    p = add("sweep", "delete expired runs once, then exit", json=True,
            dry_run="only list the runs it would delete, one a line")
    p.add_argument("--older-than", metavar="DURATION", type=_duration,
                   help="also delete unkept runs created longer ago (e.g. 3d, 12h)")
    p = add("ls", "list runs, newest first", json=True)
    p.add_argument("--filter", choices=["all", "current", "recent", "expiring"], default="all",
                   help="current: active runs; recent: created in the last 24 h; "
                   "expiring: expires within 24 h and not kept")
    p = add("show", "one run's metadata and files", json=True)
    p.add_argument("run_id", metavar="RUN_ID")
    p = add("rm", "delete a run's artifacts, or one artifact; deleted stays deleted", json=True,
            dry_run="say what would be deleted, change nothing")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("filename", metavar="FILENAME", nargs="?")
    p = add("keep", "pin a run so that it never expires", json=True)
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--off", action="store_true", help="unpin it")


def _store_commands(add: _Add) -> None:
    """The library, the journal, export, the server and the store as a whole."""
    p = add("promote", "copy an artifact into the library", json=True)
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("filename", metavar="FILENAME")
    p.add_argument("--as", dest="as_name", metavar="NAME", help="library name (default: base name)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a library file of the same name")
    p = add("library", "list the library, or delete one library file", json=True,
            dry_run="rm: say what would be deleted, change nothing")
    p.add_argument("action", choices=["ls", "rm"], nargs="?", default="ls")
    p.add_argument("name", metavar="NAME", nargs="?", help="the file to delete (rm)")
    p = add("audit", "print the audit journal, oldest first", json=True)
    p.add_argument("--since", metavar="DURATION", type=_duration,
                   help="only events of the last DURATION (e.g. 7d, 12h)")
    p.add_argument("--run", metavar="RUN_ID", help="only events of this run")
    add("check", "a cheap health check: the store's folders are usable", json=True)
    p = add("export", "write a run's files as one zip (names as under files/)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="the zip to write, or - for stdout")
    p = add("serve", "serve the HTTP API and the artifact browser")
    p.add_argument("--listen", metavar="HOST:PORT", help="overrides http.listen")
    p = add("stats", "what the store holds, by agent, type, workflow and day", json=True)
    p.add_argument("--since", metavar="DURATION", default="30d",
                   help="count runs created within this long (default: 30d; e.g. 12h, 2w)")
    add("config", "check the configuration and print the effective one", json=True)
    add("schema", "print the JSON Schema of metadata.json")


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    prescan: Prescan | None = None
    try:
        with gc_paused():  # objects that live as long as the daemon (entry.py)
            from promoter.prescan import early

            prescan = early(config)  # its listing runs beside the imports below (prescan.py)
            from promoter.daemon import run_daemon
            from promoter.limits import raise_descriptor_limit, tune_gc

        raise_descriptor_limit()
        tune_gc()  # the imports are done: the collector leaves their objects (limits.py)

        def reload() -> Config:
            return _load(args)

        return run_daemon(config, reload, prescan)
    except BaseException:  # a stop during the imports (entry.py): the child is killed and
        if prescan is not None:  # reaped, even one stopped before it could arrange to die
            prescan.discard()  # with the daemon (r8 probe F6)
        raise


def _cmd_serve(args: argparse.Namespace, config: Config) -> int:
    try:
        from promoter.web.server import serve
    except ImportError as exc:
        raise UsageError(f"promoter serve needs the web extra (pip install 'promoter[web]'): "
                         f"{exc}") from None
    return serve(config, args.listen)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "run": _cmd_run, "reconcile": cmd_reconcile, "sweep": cmd_sweep, "ls": cmd_ls,
    "show": cmd_show, "rm": cmd_rm, "keep": cmd_keep, "promote": cmd_promote,
    "serve": _cmd_serve, "stats": cmd_stats, "config": cmd_config, "export": cmd_export,
    "schema": cmd_schema, "library": cmd_library, "audit": cmd_audit, "check": cmd_check,
}


def _load(args: argparse.Namespace) -> Config:
    path = resolve_config_path(getattr(args, "config", None), os.environ)
    return load_config(path, os.environ, getattr(args, "root", None))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    command = None
    try:
        if sys.stdout is None:  # started with stdout closed (`>&-`): the output is dropped
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
        args = _parser().parse_args(argv)
        command = args.command
        config = _load(args)
        configure_logging(config.log.level, config.log.format)
        code = COMMANDS[args.command](args, config)
        sys.stdout.flush()  # here, not at exit: a reader gone is told apart below
        return code
    except PromoterError as exc:
        return _fail(command, str(exc), exc.exit_code)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except OSError as exc:  # an I/O error is no bug: name the operation and the path
        return _fail(command, host_limit(exc) or describe_os_error(exc), 1)
    except Exception as exc:  # a host limit (threads, memory) is no bug either (r7 probe F10)
        return _fail(command, host_limit(exc) or f"internal error: {type(exc).__name__}: {exc}",
                     1)


def _reader_gone() -> int:
    """stdout's reader left early (`promoter ls | head -1`): stop quietly, with the status
    the shell gives a tool that SIGPIPE ended (`ls | head` in `set -o pipefail`: 141);
    stdout goes to /dev/null so that the exit's flush fails no more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


def _fail(command: str | None, message: str, code: int) -> int:
    """One line on stderr; for `run`, in the configured log format (one JSON line under
    `format = "json"`), so a `jq` pipeline over the daemon's output never breaks."""
    if command == "run":
        get_logger().error(events.DAEMON_FAILED, reason=message, exit_code=code)
    else:
        stderr_line(f"promoter: {printable(message)}")  # it may echo an agent's name
    return code

"""The `promoter` command's entry point (and `python -m promoter`'s): the CLI imported with
the cyclic garbage collector held off (issue 15), and a stop during those imports a clean
stop (r6 start probe 10).

Importing the CLI and the daemon makes some 65,000 objects the collector tracks (pydantic's
schemas and models, the modules), nearly all of which live as long as the process. Every
700 allocations the collector walked the young ones, and each older generation in turn:
3-15 % of the imports' CPU (more under load), paid at every start of the daemon and of
every command, for no cycle worth collecting.

`promoter run` imports for 0.4 s (1-3 s on a loaded host) before the daemon installs its
own signal handlers; a SIGTERM then (systemd stopping a unit just started) killed the
process with status -15 and not a line logged. Here, before the imports, a handler for
SIGTERM and SIGINT logs `daemon.stopping` and exits 0: nothing has started yet, so there
is nothing to finish. A SIGHUP (reload) is remembered: one from the configuration's read on
(it may have read the file before its change) is a reload the daemon makes once its own
handlers are in place (`promoter.earlyreload`; r7 probe F7: it was dropped), one before it is
forgotten (the file is read after it). The daemon's handlers replace these once it runs
(daemon.py). Only for `run`: the other commands keep Python's own behaviour.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from promoter import earlyreload
from promoter.events import DAEMON_STOPPING

__all__ = ["command_of", "main"]

VALUED = frozenset({"--config", "--root"})  # the options before a command that take a value


def main() -> int:
    """`promoter.cli.main`, once it is imported."""
    if command_of(sys.argv[1:]) == "run":
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _stop_early)
        # a reload: remembered (its default action, the end of the process, would be a
        # silent death), for the daemon to make once it handles SIGHUP itself
        signal.signal(signal.SIGHUP, earlyreload.remember)
    enabled = gc.isenabled()
    gc.disable()
    try:
        from promoter.cli import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C during the imports: as the CLI's own, no traceback
        return 130
    finally:
        if enabled:
            gc.enable()
    earlyreload.forget()  # the configuration is read from here on: one before is no reload
    return cli_main()


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` names (its first word that is neither an option nor its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _stop_early(signum: int, frame: FrameType | None) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    line = json.dumps({"signal": signal.Signals(signum).name, "phase": "starting",
                       "event": DAEMON_STOPPING, "level": "info", "timestamp": stamp})
    with contextlib.suppress(OSError):  # no stderr at all (2>&-): exit all the same
        os.write(2, f"{line}\n".encode())
    raise SystemExit(0)

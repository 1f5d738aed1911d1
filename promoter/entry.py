"""The `promoter` command's entry point (and `python -m promoter`'s): the CLI imported with
the cyclic garbage collector held off (issue 15).

Importing the CLI and the daemon makes some 65,000 objects the collector tracks (pydantic's
schemas and models, the modules), nearly all of which live as long as the process. Every
700 allocations the collector walked the young ones, and each older generation in turn:
3-15 % of the imports' CPU (more under load), paid at every start of the daemon and of
every command, for no cycle worth collecting.
"""

from __future__ import annotations

import gc

__all__ = ["main"]


def main() -> int:
    """`promoter.cli.main`, once it is imported."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from promoter.cli import main as cli_main
    finally:
        if enabled:
            gc.enable()
    return cli_main()

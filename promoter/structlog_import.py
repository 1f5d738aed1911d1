"""structlog, imported without rich (issue 15: the start of `promoter run`).

`import structlog` always loads `structlog.dev`, which imports rich whenever rich is
installed, for the pretty tracebacks of its ConsoleRenderer. promoter never shows those:
`format_exc_info` turns every exception into text before a renderer sees it (promoter.logs).
Yet rich, with pygments and attrs behind it, took 0.2 s of CPU at every start of the daemon
on a host that has rich (a development or test venv, or a tool that brought it; a plain
install of promoter has none), a tenth of the 2 s start-up target. So structlog is imported
here with rich hidden from it, and rich is importable again right after, for anyone else.
"""

from __future__ import annotations

import sys

__all__ = ["structlog"]

_hidden = "rich" not in sys.modules
if _hidden:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich`: ImportError
try:
    import structlog
finally:
    if _hidden and "rich" in sys.modules and sys.modules["rich"] is None:
        del sys.modules["rich"]

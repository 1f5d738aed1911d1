"""promoter's structure (issue 11): no import circle, the core never imports the shell, no
module over 400 lines, and every logged event is a constant of promoter/events.py."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import promoter

PACKAGE = Path(promoter.__file__).parent
# the threaded shell and the front ends: the core below them never imports them
SHELL = {"promoter.daemon", "promoter.loops", "promoter.pipeline", "promoter.watch",
         "promoter.observers", "promoter.inotify", "promoter.watchtree", "promoter.cli",
         "promoter.cli_commands", "promoter.startup", "promoter.web", "promoter.stopping",
         "promoter.prescan"}
CORE = {"promoter.rules", "promoter.layout", "promoter.metadata", "promoter.names",
        "promoter.clock", "promoter.config", "promoter.errors", "promoter.settle",
        "promoter.settle_state",
        "promoter.promotion", "promoter.recovery", "promoter.store", "promoter.reconcile",
        "promoter.sweep", "promoter.safeio", "promoter.context", "promoter.library",
        "promoter.budget", "promoter.s3layout", "promoter.objectstore", "promoter.objectfields",
        "promoter.audit", "promoter.recheck",
        "promoter.backend", "promoter.localdisk", "promoter.storecore", "promoter.deletion",
        "promoter.storage", "promoter.s3backend", "promoter.s3library", "promoter.s3errors"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every promoter module `path` imports, at any level (TYPE_CHECKING blocks included:
    a circle hidden from the interpreter is still one for a reader)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names
                       if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    names = set(found)
    # a package's __init__ imports what it re-exports; its children are not its dependants
    return {name: imports_of(path, names) - {name} for name, path in found.items()}


def test_the_import_graph_has_no_circle() -> None:
    """Sorting the modules by their imports succeeds: no module imports itself back."""
    try:
        tuple(graphlib.TopologicalSorter(graph()).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_the_walker_finds_a_planted_circle() -> None:
    """The check is real: a graph with a circle fails to sort."""
    planted = {**graph(), "promoter.metadata": {"promoter.store"}}
    try:
        tuple(graphlib.TopologicalSorter(planted).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("a planted circle went unnoticed")


def test_the_core_never_imports_the_shell() -> None:
    """Rules, store and catch-up import nothing of the daemon, the CLI or the server."""
    g = graph()
    assert not CORE - set(g), f"not modules any more: {sorted(CORE - set(g))}"
    for name in sorted(CORE):
        upward = {m for m in g[name] if any(m == s or m.startswith(f"{s}.") for s in SHELL)}
        assert not upward, f"{name} imports {sorted(upward)}"


MAX_LINES = 400  # STYLE.md: a module of 100-400 lines is comfortable
# modules allowed over the cap, each with the reason it is still there
OVER_THE_CAP: dict[str, str] = {}


def test_no_module_is_over_400_lines() -> None:
    """Every module of promoter/ stays within 400 lines; an exception names its reason."""
    lines = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in modules().items()}
    over = {name: n for name, n in lines.items() if n > MAX_LINES and name not in OVER_THE_CAP}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
    stale = {name for name in OVER_THE_CAP if lines.get(name, 0) <= MAX_LINES}
    assert not stale, f"no longer over the cap, drop the exception: {sorted(stale)}"


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def test_every_logged_event_is_a_constant_of_events_py() -> None:
    """No log call names its event with a literal: auditors rely on events.py (DESIGN §5)."""
    from promoter import events

    names = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)}
    literal: list[str] = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "log" and node.args
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
                literal.append(f"{name}:{node.lineno}")
    assert not literal, f"log events named by a literal: {literal}"
    assert len(names) == len([k for k in vars(events) if k.isupper()]), "two names, one event"

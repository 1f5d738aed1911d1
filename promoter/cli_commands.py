"""The one-shot commands' bodies (DESIGN §3): `cmd_NAME(args, config) -> int`.

`promoter.cli` parses argv and picks one of these; each reads or changes the store
through `Store`, prints data on stdout (a table, or JSON with `--json`) and raises a
`PromoterError` for `cli.main` to turn into one line on stderr. Every value in human
output goes through `printable` (a table does it for its cells): agents choose names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from promoter.clock import format_time
from promoter.config import Config
from promoter.errors import NotFoundError, StoreIOError, UsageError
from promoter.library import LibraryFile
from promoter.metadata import RunMetadata, metadata_json_schema
from promoter.names import check_library_name, check_relpath, check_run_id
from promoter.progress import terminal_progress
from promoter.render import age, human_size, matches_filter, printable, run_state, table
from promoter.store import Store

__all__ = ["cmd_audit", "cmd_check", "cmd_config", "cmd_export", "cmd_keep", "cmd_library",
           "cmd_ls", "cmd_promote", "cmd_reconcile", "cmd_rm", "cmd_schema", "cmd_show",
           "cmd_stats", "cmd_sweep"]


_SURROGATE = re.compile("[\ud800-\udfff]")
PIECE = 64 * 1024  # characters a write of _print_json


def _print_json(data: Any) -> None:
    """In pieces of at most PIECE characters: CPython's text layer loses a broken pipe in
    one big write that the pipe took in part (no error: a reader gone looked like success)."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    for start in range(0, len(text), PIECE):
        sys.stdout.write(text[start:start + PIECE])



def _store(config: Config) -> Store:
    """The store for a one-shot command: never created here (DESIGN §3)."""
    store = Store(config)
    store.require_store()
    return store


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    from promoter.reconcile import reconcile
    from promoter.startup import prepare_store

    store = prepare_store(config, create=False)
    shown = terminal_progress("reconcile: files")
    try:
        report = reconcile(store, progress=shown.update if shown else None)
    finally:
        if shown:
            shown.close()
    summary = report.summary()
    if args.json:
        _print_json(summary)
    else:
        print(", ".join(f"{v} {k}" for k, v in summary.items()))
    return 0


def cmd_sweep(args: argparse.Namespace, config: Config) -> int:
    from promoter.sweep import sweep

    shown = terminal_progress("sweep: runs")
    try:
        report = sweep(_store(config), dry_run=args.dry_run, older_than=args.older_than,
                       progress=shown.update if shown else None)
    finally:
        if shown:
            shown.close()
    if args.json:
        _print_json({"expired": report.expired, "dry_run": report.dry_run})
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for run_id in report.expired:  # one run a line, for a reader and for `xargs`
        print(f"{verb} {printable(run_id)}")
    if not report.expired:
        print("no expired runs")
    return 0


def _agents(meta: RunMetadata) -> str:
    return ",".join(sorted({a.agent_id for a in meta.artifacts})) or "-"


def cmd_ls(args: argparse.Namespace, config: Config) -> int:
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


def cmd_show(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    meta = store.get_run(check_run_id(args.run_id))
    if args.json:
        _print_json(meta.model_dump(mode="json"))
        return 0
    now = store.clock.now()
    print(f"run        {printable(meta.run_id)}  ({run_state(meta, now)}, "
          f"status {printable(meta.status)})")
    print(f"workflow   {printable(meta.workflow_id or '-')}")
    print(f"directive  {printable(meta.user_directive or '-')}")
    print(f"created    {age(meta.created_at, now)}  expires {meta.expires_at:%Y-%m-%d %H:%M}Z"
          f"{'  (kept)' if meta.keep else ''}")
    print()
    rows = [[a.filename, a.agent_id, human_size(a.size_bytes), a.content_type,
             age(a.generated_at, now), (a.sha256 or "-")[:12]] for a in meta.artifacts]
    print(table(["FILE", "AGENT", "SIZE", "TYPE", "WRITTEN", "SHA256"], rows) if rows
          else "no files")
    if meta.rejected:  # why a file the agent wrote is not there (DESIGN §2)
        print()
        rows = [[r.filename, r.reason, human_size(r.size_bytes) if r.size_bytes is not None
                 else "-", age(r.rejected_at, now)] for r in meta.rejected]
        print(table(["NOT KEPT", "WHY", "SIZE", "WHEN"], rows))
    return 0


def cmd_rm(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    run_id = check_run_id(args.run_id)
    verb = "would delete" if args.dry_run else "deleted"
    if args.filename is not None:
        filename = check_relpath(args.filename)
        if args.dry_run:
            entry = store.get_run(run_id).entry(filename)
            if entry is None:
                raise NotFoundError(f"no artifact {filename} in run {run_id}")
        else:
            entry = store.delete_artifact(run_id, filename)
        out: dict[str, Any] = {"run_id": run_id, "filename": filename,
                               "size_bytes": entry.size_bytes, "dry_run": args.dry_run}
        text = f"{verb} {printable(filename)} from run {printable(run_id)}"
    else:
        if args.dry_run:
            meta = store.get_run(run_id)
            files, size = len(meta.artifacts), meta.total_bytes
        else:
            report = store.delete_run(run_id)
            files, size = report.files, report.size_bytes
        out = {"run_id": run_id, "files": files, "size_bytes": size, "dry_run": args.dry_run}
        text = f"{verb} run {printable(run_id)} ({_plural(files, 'file')}, {human_size(size)})"
    if args.json:
        _print_json(out)
    else:
        print(text)
    return 0


def cmd_keep(args: argparse.Namespace, config: Config) -> int:
    meta = _store(config).set_keep(check_run_id(args.run_id), not args.off)
    if args.json:
        _print_json(meta.model_dump(mode="json"))
    else:
        print(f"run {printable(meta.run_id)} {'is kept' if meta.keep else 'expires normally'}")
    return 0


def _library_json(item: LibraryFile) -> dict[str, Any]:
    return {"name": item.name, "size_bytes": item.size_bytes,
            "content_type": item.content_type, "modified_at": format_time(item.modified_at)}


def cmd_promote(args: argparse.Namespace, config: Config) -> int:
    added = _store(config).promote_to_library(
        check_run_id(args.run_id), check_relpath(args.filename), args.as_name, args.overwrite)
    if args.json:
        _print_json(_library_json(added))
    else:
        print(f"library/{printable(added.name)} ({human_size(added.size_bytes)})")
    return 0


def cmd_library(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    if args.action == "ls":
        if args.name is not None or args.dry_run:
            raise UsageError("library ls takes no NAME and no --dry-run")
        files = store.library.list()
        if args.json:
            _print_json({"files": [_library_json(f) for f in files]})
        elif files:
            now = store.clock.now()
            print(table(["NAME", "SIZE", "TYPE", "MODIFIED"],
                        [[f.name, human_size(f.size_bytes), f.content_type,
                          age(f.modified_at, now)] for f in files]))
        else:
            print("the library is empty")
        return 0
    if args.name is None:
        raise UsageError("library rm needs the NAME of the file to delete")
    name = check_library_name(args.name)
    if args.dry_run:
        found, item = store.library.read(name)
        found.close()
    else:
        item = store.delete_library_file(name)
    if args.json:
        _print_json({**_library_json(item), "dry_run": args.dry_run})
    else:
        print(f"{'would delete' if args.dry_run else 'deleted'} library/{printable(item.name)} "
              f"({human_size(item.size_bytes)})")
    return 0


def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    since = None
    if args.since is not None:
        try:
            since = store.clock.now() - args.since
        except OverflowError:  # further back than datetime goes: everything
            since = None
    run_id = check_run_id(args.run) if args.run is not None else None
    found = store.read_journal(since, run_id)  # the local folder, or the bucket (§11)
    if args.json:  # JSON Lines, one event a line, for jq
        for item in found:
            line = json.dumps(item, ensure_ascii=False)
            if _SURROGATE.search(line):  # a raw non-UTF-8 byte an older version wrote:
                line = json.dumps(item)  # as `\udcff`, as the journal holds it today
            sys.stdout.write(line + "\n")
        return 0
    if not found:
        print("no audit events")
        return 0
    print(table(["TIME", "EVENT", "ACTOR", "WHAT"], [_audit_row(e) for e in found]))
    return 0


def _audit_row(item: dict[str, Any]) -> list[str]:
    what = " ".join(str(item[k]) for k in ("run_id", "filename", "name") if k in item)
    actor = str(item.get("actor", "-"))
    if item.get("sudo_user"):
        actor += f" sudo:{item['sudo_user']}"
    return [str(item.get("timestamp", "-")), str(item.get("event")), actor, what or "-"]


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    """O(1) in the number of runs: what /healthz checks, for a container's health check."""
    store = _store(config)  # on S3: the probe of DESIGN §10
    for what, path in (("artifacts", store.artifacts_path), ("library", store.library.path)):
        if config.storage.backend == "local" and not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise StoreIOError(f"the {what} folder {path} is not usable")
    if args.json:
        _print_json({"status": "ok"})
    else:
        print("ok")
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from promoter.archive import iter_zip
    chunks = iter_zip(_store(config), check_run_id(args.run_id))  # a missing run: nothing written
    if args.output == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        return 0
    target = Path(args.output)
    _refuse_store_target(target, config)
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
    print(f"wrote {printable(target)} ({human_size(target.stat().st_size)})")
    return 0


def _refuse_store_target(target: Path, config: Config) -> None:
    """`export -o` onto an artifact, a metadata.json or into library/ would overwrite what
    the store keeps (links resolved): refused before anything is written."""
    where = target.parent.resolve() / target.name
    for folder in (config.storage.artifacts_dir, config.storage.library_dir):
        if where.is_relative_to(folder.resolve()):
            raise StoreIOError(f"cannot write {target}: it is inside the store ({folder})")


def cmd_stats(args: argparse.Namespace, config: Config) -> int:
    from promoter.stats import compute_stats, format_stats, parse_duration

    window = parse_duration(args.since)
    store = _store(config)
    stats = compute_stats(store.list_runs(), store.clock.now(), window)
    if args.json:
        _print_json(stats.model_dump(mode="json"))
    else:
        print(format_stats(stats, printable(args.since.strip())))
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    # what `serve` will refuse, refused here too (DESIGN §3: config checks the configuration)
    from promoter.web.security import load_token

    load_token(config.http.token_file)
    data = config.model_dump(mode="json")
    if args.json:
        _print_json(data)
        return 0
    from promoter.tomlout import dumps

    sys.stdout.write(dumps(data))
    return 0


def cmd_schema(args: argparse.Namespace, config: Config) -> int:
    _print_json(metadata_json_schema())
    return 0

"""Helpers for the browser tests of the artifact page (DESIGN §8).

Deterministic store contents for screenshots, a tiny real PNG, the server and
daemon subprocesses, and the chromium launch with the flags DESIGN §8 names.
Run as a script to regenerate the screenshots outside pytest:

    python -m tests.page_helpers docs/screenshots
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from promoter.metadata import ArtifactEntry, RunMetadata, guess_content_type

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# --- small files --------------------------------------------------------------------


def png_bytes(width: int = 24, height: int = 16,
              rgb: tuple[int, int, int] = (68, 86, 199)) -> bytes:
    """A real PNG of one colour with a lighter diagonal, built with zlib alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            light = abs(x * height - y * width) < width * 2
            rows.extend(bytes(min(255, c + 90) for c in rgb) if light else bytes(rgb))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b""))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # a polling interval under a deadline, not a fixed wait


# --- a store written directly (deterministic screenshots) ----------------------------


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SeedFile:
    filename: str
    agent_id: str
    content: bytes
    minutes_ago: float


@dataclass(frozen=True)
class SeedRun:
    run_id: str
    workflow_id: str
    directive: str
    created_minutes_ago: float
    retention_days: float
    status: str
    keep: bool
    files: tuple[SeedFile, ...]


def _csv() -> bytes:
    lines = ["quarter,region,revenue,margin"]
    for i, region in enumerate(["EMEA", "Americas", "APAC", "LATAM"] * 3):
        lines.append(f"Q{i % 4 + 1},{region},{1200 + 37 * i},{0.21 + i / 100:.2f}")
    return ("\n".join(lines) + "\n").encode()


def demo_runs() -> list[SeedRun]:
    """Four runs that show every state: live, recent, expiring, kept."""
    report = (b"<!doctype html><title>Q3 report</title><h1>Q3 financials</h1>"
              b"<p>Revenue grew 12%.</p>")
    return [
        SeedRun("f3b2a7c41d9e4b0a", "data_analysis_v2",
                "Analyze Q3 financials and generate a report with revenue by region, margins "
                "and a short narrative for the board", 2, 7, "active", False, (
                    SeedFile("plot_revenue_by_region.png", "visualization_agent",
                             png_bytes(320, 200), 1),
                    SeedFile("plots/margin_trend.png", "visualization_agent",
                             png_bytes(320, 200, (15, 123, 120)), 1.5),
                    SeedFile("analysis.csv", "data_processor", _csv(), 2),
                    SeedFile("insights.json", "analysis_agent",
                             json.dumps({"growth": 0.12, "top_region": "EMEA",
                                         "notes": ["margins stable", "APAC up"]}).encode(), 2),
                    SeedFile("report.html", "document_writer", report, 0.5),
                )),
        SeedRun("a8d4c19e", "market_scan", "Summarise competitor pricing pages",
                185, 7, "completed", False, (
                    SeedFile("summary.md", "document_writer",
                             b"# Competitor pricing\n\n- Three vendors raised prices.\n", 182),
                    SeedFile("pricing.csv", "web_scraper", _csv(), 184),
                    SeedFile("raw_pages.zip", "web_scraper", b"PK\x05\x06" + bytes(18), 185),
                )),
        SeedRun("run-2026-01-03-nightly", "nightly_etl", "Nightly warehouse load",
                6 * 24 * 60 + 600, 7, "completed", False, (
                    SeedFile("load.log", "unknown", b"loaded 1,204,311 rows\n" * 40,
                             6 * 24 * 60 + 598),
                    SeedFile("manifest.json", "etl_agent", b'{"tables": 42}', 6 * 24 * 60 + 599),
                )),
        SeedRun("b71e02f5", "long_study", "Literature review on battery recycling",
                12 * 24 * 60, 7, "completed", True, (
                    SeedFile("review.pdf", "document_writer", b"%PDF-1.4\n%%EOF\n", 12 * 24 * 60),
                )),
    ]


def write_run(artifacts: Path, run: SeedRun, now: datetime) -> None:
    """Write one run as the store keeps it: files/ and a valid metadata.json."""
    folder = artifacts / run.run_id
    entries = []
    for f in run.files:
        target = folder / "files" / f.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        # Whole seconds: the stored copy's time must equal generated_at, or the
        # server's start-up repair (DESIGN §6) relists the file as if after a crash.
        when = (now - timedelta(minutes=f.minutes_ago)).replace(microsecond=0)
        stamp_ns = int(when.timestamp()) * 1_000_000_000
        os.utime(target, ns=(stamp_ns, stamp_ns))
        entries.append(ArtifactEntry(
            filename=f.filename, path=f"files/{f.filename}", agent_id=f.agent_id,
            generated_at=when, size_bytes=len(f.content),
            content_type=guess_content_type(f.filename),
            sha256=hashlib.sha256(f.content).hexdigest()))
    created = (now - timedelta(minutes=run.created_minutes_ago)).replace(microsecond=0)
    meta = RunMetadata(
        run_id=run.run_id, workflow_id=run.workflow_id, user_directive=run.directive,
        created_at=created, updated_at=max((e.generated_at for e in entries), default=created),
        expires_at=created + timedelta(days=run.retention_days), keep=run.keep,
        status="active" if run.status == "active" else "completed", artifacts=entries)
    (folder / "metadata.json").write_text(meta.to_json())


def seed_store(root: Path, now: datetime | None = None) -> None:
    """A store with the demo runs and a small library."""
    now = now or datetime.now(UTC)
    artifacts = root / "artifacts"
    library = root / "library"
    for path in (root / "sessions", artifacts, library):
        path.mkdir(parents=True, exist_ok=True)
    for run in demo_runs():
        write_run(artifacts, run, now)
    for name, content, days in [
        ("financials_Q3.csv", _csv() * 40, 20),
        ("safety_policy.json", b'{"policy": "v3"}' * 200, 41),
        ("brand_guidelines.pdf", b"%PDF-1.4\n" + bytes(180_000), 63),
    ]:
        (library / name).write_bytes(content)
        when = (now - timedelta(days=days)).timestamp()
        os.utime(library / name, (when, when))


# --- subprocesses -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def promoter_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "promoter", *args]


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a promoter subprocess with its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process at once, then wait for each (SIGKILL after 10 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a promoter subprocess for the duration of the block."""
    proc = spawn(argv, log)
    try:
        yield proc
    finally:
        stop_all([proc])


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 60) -> None:
    """Poll /healthz until the server answers 200; fail with its log if it exits. (60 s: a
    start once took over 20 s on the loaded 2 cores; a healthy start returns at once.)"""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"promoter serve exited with {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-4000:]}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, f"{base_url}/healthz")


# --- screenshots ----------------------------------------------------------------------

SHOTS = [
    ("desktop", 1280, 900),
    ("mobile", 360, 800),
]


def _pages(browser: Any, url: str) -> Iterator[tuple[str, int, str, Any]]:
    """A fresh page on `url` at each size of SHOTS, light and dark, its conn live:
    (size name, width, scheme, page); the context is closed when the caller moves on."""
    for name, width, height in SHOTS:
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport={"width": width, "height": height},
                                          color_scheme=scheme, locale="en-US",
                                          timezone_id="UTC")
            try:
                page = context.new_page()
                page.goto(url)
                page.locator('#conn[data-state="live"]').wait_for()
                yield name, width, scheme, page
            finally:
                context.close()


def _no_sideways_overflow(page: Any, what: str) -> None:
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    if overflow > 0:
        raise AssertionError(f"{what}: {overflow} px wider than the screen")


def take_screenshots(browser: Any, base_url: str, out_dir: Path) -> list[Path]:
    """Full-page screenshots at 1280 and 360 px, light and dark; fails on sideways overflow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, _, scheme, page in _pages(browser, base_url):
        page.locator('.lib-file').first.wait_for()
        page.locator("article.run").first.wait_for()
        _no_sideways_overflow(page, f"{name}-{scheme}")
        path = out_dir / f"{name}-{scheme}.png"
        # bytes, then our own write: Playwright's path= writes from a thread pool,
        # whose threads would outlive the test (conftest fails leaked threads)
        path.write_bytes(page.screenshot(full_page=True, animations="disabled", caret="hide"))
        written.append(path)
    return written


def take_part_screenshots(browser: Any, base_url: str, out_dir: Path) -> list[Path]:
    """The first run's header alone (its actions: Download all, Keep, Delete run), at 1280
    and 360 px, light and dark: the parts issue 14 added, large enough to look at."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, _, scheme, page in _pages(browser, base_url):
        # the kept run: its Unkeep is the widest set of actions
        head = page.locator("article.run .run-head").last
        head.wait_for()
        path = out_dir / f"run-actions-{name}-{scheme}.png"
        path.write_bytes(head.screenshot(animations="disabled", caret="hide"))
        written.append(path)
    return written


def take_insights_screenshots(browser: Any, base_url: str, out_dir: Path) -> list[Path]:
    """The Insights panel open, 1280 and 360 px, light and dark; fails on sideways overflow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, width, scheme, page in _pages(browser, f"{base_url}/?insights=1"):
        page.locator(".ins-body").wait_for()
        _no_sideways_overflow(page, f"insights {name}-{scheme}")
        path = out_dir / f"insights-{name}-{scheme}.png"
        # the panel's place in the whole page: an element shot would scroll it
        # under the sticky top bar
        box = page.locator(".panel-insights").evaluate(
            "el => { const r = el.getBoundingClientRect();"
            " return {x: r.x + scrollX - 8, y: r.y + scrollY - 8,"
            " width: r.width + 16, height: r.height + 16}; }")
        box["x"] = max(box["x"], 0)
        box["width"] = min(box["width"], width - box["x"])
        path.write_bytes(page.screenshot(full_page=True, clip=box,
                                         animations="disabled", caret="hide"))
        written.append(path)
    return written


def _main(argv: list[str]) -> int:
    """Seed a store in a temporary folder, serve it, and write the screenshots."""
    import tempfile

    from playwright.sync_api import sync_playwright

    out = Path(argv[0] if argv else "docs/screenshots").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        seed_store(root)
        port = free_port()
        log = Path(tmp) / "serve.log"
        argv_serve = promoter_argv("serve", "--root", str(root), "--listen", f"127.0.0.1:{port}")
        with running(argv_serve, log) as proc, sync_playwright() as pw:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, proc, log)
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for path in [*take_screenshots(browser, base, out),
                             *take_part_screenshots(browser, base, out),
                             *take_insights_screenshots(browser, base, out)]:
                    print(path)
            finally:
                browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))

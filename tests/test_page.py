"""The artifact browser page (DESIGN §8) in a real browser.

Debian's chromium, driven by Playwright's sync API, against a real `promoter
serve` and a real `promoter run` on temporary folders: files are written into
sessions the way agents write them, and the page must follow without a reload.
No fixed sleeps: Playwright's `expect` waits, and `wait_until` polls under a
deadline.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright

from tests.page_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    png_bytes,
    promoter_argv,
    seed_store,
    spawn,
    stop_all,
    take_screenshots,
    wait_healthy,
    wait_until,
)

DAEMON_READY = '"daemon.ready"'
SCREENSHOT_DIR = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

expect.set_options(timeout=5_000)


# --- the stack: promoter serve + promoter run on tmp_path --------------------------------


@dataclass
class Stack:
    """A store on disk, `promoter serve` over it and (usually) `promoter run` watching it."""

    root: Path
    base_url: str
    token: str | None = None
    logs: list[Path] = field(default_factory=list)
    serve: subprocess.Popen[bytes] | None = None

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def library(self) -> Path:
        return self.root / "library"

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the API as a script would; returns (status, decoded JSON or None)."""
        headers = {"X-Promoter-Request": "1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        res = httpx.request(method, f"{self.base_url}{path}", json=body, headers=headers,
                            timeout=5)
        return res.status_code, res.json() if res.content else None

    def runs(self) -> dict[str, dict[str, Any]]:
        status, data = self.api("GET", "/runtime/artifacts")
        assert status == 200, data
        return {r["run_id"]: r["metadata"] for r in data["artifacts"]}

    def run_json(self, run_id: str, **fields: str) -> None:
        folder = self.sessions / run_id
        (folder / "output").mkdir(parents=True, exist_ok=True)
        tmp = folder / ".run.json.tmp"
        tmp.write_text(json.dumps(fields))
        tmp.rename(folder / "run.json")

    def write(self, run_id: str, filename: str, data: bytes, agent: str | None = None,
              age_s: float | None = None) -> Path:
        """Write a file as an agent does, with its attribution line first."""
        folder = self.sessions / run_id
        target = folder / "output" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if agent is not None:
            with (folder / "attribution.jsonl").open("a") as fh:
                fh.write(json.dumps({"filename": filename, "agent_id": agent}) + "\n")
        # Written under an excluded name, dated, then renamed into place (as careful
        # agents do): the daemon never sees the file before its final time.
        part = target.with_name(f".{target.name}.part")
        part.write_bytes(data)
        if age_s is not None:
            stamp = time.time() - age_s
            os.utime(part, (stamp, stamp))
        part.rename(target)
        return target

    def wait_files(self, run_id: str, names: list[str], timeout: float = 30) -> dict[str, Any]:
        """Poll the API until the daemon has promoted every one of `names`."""

        def promoted() -> dict[str, Any] | None:
            meta = self.runs().get(run_id)
            have = {a["filename"] for a in meta["artifacts"]} if meta else set()
            return meta if set(names) <= have else None

        meta: dict[str, Any] = wait_until(promoted, timeout, f"{names} in run {run_id}")
        return meta


StackFactory = Callable[..., Stack]


def start_stack(base: Path, procs: list[subprocess.Popen[bytes]], *, daemon: bool = True,
                token: str | None = None, retention_days: float = 7,
                max_upload_bytes: int | None = None,
                seed: Callable[[Path], None] | None = None) -> Stack:
    """Write a config under `base`, start `promoter serve` (and `promoter run`), wait for both.

    Started processes are appended to `procs`, for the caller to stop.
    """
    root = base / "store"
    for sub in ("sessions", "artifacts", "library"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if seed is not None:
        seed(root)
    port = free_port()
    http = [f'listen = "127.0.0.1:{port}"']
    if max_upload_bytes is not None:
        http.append(f"max_upload_bytes = {max_upload_bytes}")
    if token is not None:
        (base / "token").write_text(f"  {token}\n")
        http.append(f'token_file = "{base / "token"}"')
    config = base / "config.toml"
    config.write_text("\n".join([
        "[storage]", f'root = "{root}"',
        "[watch]", "settle_ms = 50",
        "[retention]", f"days = {retention_days}", "sweep_interval_s = 3600",
        "[retention.workflows]", "short_lived = 0.5",
        "[log]", 'level = "info"',
        "[http]", *http, "",
    ]))
    result = Stack(root=root, base_url=f"http://127.0.0.1:{port}", token=token)
    serve_log = base / "serve.log"
    result.serve = spawn(promoter_argv("serve", "--config", str(config)), serve_log)
    procs.append(result.serve)
    result.logs.append(serve_log)
    if daemon:
        run_log = base / "run.log"
        run = spawn(promoter_argv("run", "--config", str(config)), run_log)
        procs.append(run)
        result.logs.append(run_log)

        def ready() -> bool:
            if run.poll() is not None:
                raise AssertionError(f"promoter run exited with {run.returncode}:\n"
                                     f"{run_log.read_text(errors='replace')[-4000:]}")
            return DAEMON_READY in run_log.read_text(errors="replace")

        wait_until(ready, 20, "promoter run to be ready")
    wait_healthy(result.base_url, result.serve, serve_log)
    return result


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """A stack of this test's own, for tests that need a clean store or another config."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield lambda **options: start_stack(tmp_path, procs, **options)
    finally:
        stop_all(procs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One default stack for the tests that only touch runs and names of their own.

    Starting serve and run costs a second or two; sharing keeps the suite short.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield start_stack(tmp_path_factory.mktemp("shared"), procs)
    finally:
        stop_all(procs)


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium with DESIGN §8's flags; a missing browser fails, never skips.

    Module-scoped: Playwright's sync API keeps an asyncio loop running in the
    main thread while it is started, which breaks later in-process ASGI tests.
    """
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(apt-get install -y chromium; .ci/run installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Watch:
    """What a page did that it must not: dialogs opened by script, script errors."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)


@pytest.fixture
def watch() -> Watch:
    return Watch()


def _observe(page: Page, seen: Watch) -> None:
    def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and "Content Security Policy" in msg.text:
            seen.csp.append(msg.text)

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
    page.on("console", on_console)


@pytest.fixture
def open_page(browser: Browser, watch: Watch) -> Iterator[Callable[..., Page]]:
    """A fresh browser context per call; no script error or stray dialog may happen in it."""
    contexts = []

    def opener(url: str, *, width: int = 1280, height: int = 900,
               scheme: str = "light", wait: bool = True) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme,  # type: ignore[arg-type]
            locale="en-US", timezone_id="UTC", accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        _observe(page, watch)
        page.goto(url)
        if wait:
            expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        return page

    yield opener
    for context in contexts:
        context.close()
    assert not watch.errors, f"script errors in the page: {watch.errors}"
    assert not watch.dialogs, f"unexpected browser dialogs: {watch.dialogs}"
    assert not watch.csp, f"content blocked by the page's CSP: {watch.csp}"


# --- page helpers ------------------------------------------------------------------------


def shown_runs(page: Page) -> list[str]:
    return [el.get_attribute("data-run") or "" for el in page.locator("article.run").all()]


def focused(page: Page) -> str:
    """A short description of the focused element: its accessible label, text or role."""
    return str(page.evaluate("""() => {
        const el = document.activeElement;
        if (!el || el === document.body) return "";
        return el.getAttribute("aria-label") || (el.labels && el.labels[0]
            && el.labels[0].textContent.trim()) || el.textContent.trim() || el.tagName;
    }"""))


def tab_to(page: Page, label: str, limit: int = 120) -> None:
    """Press Tab until the element labelled `label` has the focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if focused(page) == label:
            return
    raise AssertionError(f"Tab never reached {label!r}")


CSV = b"city,temp\nOslo,-3\nLima,19\n"


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_promoted_file_appears_without_reload(make_stack: StackFactory,
                                              open_page: Callable[..., Page]) -> None:
    """A file an agent writes shows in the open page within 2 s of promotion, no reload."""
    stack = make_stack()
    page = open_page(stack.base_url)
    expect(page.get_by_text("No artifacts yet")).to_be_visible()
    expect(page.get_by_text("The library is empty")).to_be_visible()
    expect(page.get_by_text("sessions/<run>/output/")).to_be_visible()
    page.evaluate("window.__sameDocument = true")

    stack.run_json("live1", workflow_id="wf_live", status="running")
    stack.write("live1", "first.csv", CSV, agent="loader")
    stack.wait_files("live1", ["first.csv"])
    expect(page.get_by_role("button", name="Preview first.csv")).to_be_visible(timeout=2_000)

    stack.write("live1", "plots/second.png", png_bytes(), agent="plotter")
    stack.wait_files("live1", ["plots/second.png"])
    expect(page.get_by_role("button", name="Preview plots/second.png")).to_be_visible(
        timeout=2_000)
    expect(page.locator("#announcer")).to_contain_text("second.png")
    header = page.locator('article[data-run="live1"] .run-head')
    expect(header).to_contain_text("2 files")
    expect(header.locator(".badge-live")).to_have_text("live")
    assert page.evaluate("window.__sameDocument") is True


@pytest.mark.browser
def test_filters_sort_and_search_change_what_is_shown(make_stack: StackFactory,
                                                      open_page: Callable[..., Page]) -> None:
    """All / Current / Last 24 h / Expiring, date / agent / type order and the search box."""
    stack = make_stack()
    stack.run_json("main", workflow_id="wf_main", user_directive="Main analysis",
                   status="running")
    stack.write("main", "b_chart.png", png_bytes(), agent="viz", age_s=30)
    stack.write("main", "a_table.csv", CSV, agent="zeta", age_s=10)
    stack.write("main", "c_notes.md", b"# notes\n", agent="alpha", age_s=20)
    stack.run_json("short", workflow_id="short_lived", user_directive="Quick look",
                   status="completed")
    stack.write("short", "quick.txt", b"quick\n", agent="scout")
    stack.wait_files("main", ["b_chart.png", "a_table.csv", "c_notes.md"])
    wait_until(lambda: stack.runs().get("short", {}).get("status") == "completed", 10,
               "run short to be completed")

    page = open_page(stack.base_url)
    expect(page.locator("article.run")).to_have_count(2)
    assert shown_runs(page)[0] in {"main", "short"}
    expect(page.locator('article[data-run="short"] .badge-expiring')).to_be_visible()

    page.get_by_role("button", name="Current run").click()
    expect(page.get_by_role("button", name="Current run")).to_have_attribute(
        "aria-pressed", "true")
    expect(page.locator("article.run")).to_have_count(1)
    assert shown_runs(page) == ["main"]
    page.get_by_role("button", name="Expiring").click()
    expect(page.locator('article[data-run="main"]')).to_have_count(0)
    expect(page.locator("article.run")).to_have_count(1)  # the list is rebuilt, not edited
    assert shown_runs(page) == ["short"]
    page.get_by_role("button", name="Last 24 h").click()
    expect(page.locator("article.run")).to_have_count(2)
    page.get_by_role("button", name="All runs").click()
    expect(page.locator("article.run")).to_have_count(2)

    main_files = page.locator('article[data-run="main"] .file-name')
    # date: newest first; agent: alpha, viz, zeta; type: image, table, text
    expect(main_files).to_have_text(["a_table.csv", "c_notes.md", "b_chart.png"])
    page.get_by_label("Sort by").select_option("agent")
    expect(main_files).to_have_text(["c_notes.md", "b_chart.png", "a_table.csv"])
    page.get_by_label("Sort by").select_option("type")
    expect(main_files).to_have_text(["b_chart.png", "a_table.csv", "c_notes.md"])

    search = page.get_by_role("searchbox", name="Search file names, agents and workflows")
    search.fill("zeta")
    expect(page.locator(".file-name")).to_have_count(1)
    expect(page.locator(".file-name")).to_have_text("a_table.csv")
    search.fill("short_lived")
    expect(page.locator("article.run")).to_have_count(1)
    assert shown_runs(page) == ["short"]
    search.fill("notes")
    expect(page.locator(".file-name")).to_have_text(["c_notes.md"])
    search.fill("nothing-like-this")
    expect(page.get_by_text("Nothing matches “nothing-like-this”")).to_be_visible()
    search.fill("")
    expect(page.locator(".file-name")).to_have_count(4)

    # ?run=ID makes that run the current one
    page.goto(f"{stack.base_url}/?run=short")
    expect(page.get_by_role("button", name="Current run")).to_have_attribute(
        "aria-pressed", "true")
    expect(page.get_by_text("Following run short")).to_be_visible()
    expect(page.locator("article.run")).to_have_count(1)
    assert shown_runs(page) == ["short"]


@pytest.mark.browser
def test_preview_png_and_csv(shared: Stack, open_page: Callable[..., Page]) -> None:
    """A PNG is shown as an image; a CSV as text, asked for with a 256 KiB Range."""
    stack = shared
    big = CSV + b"".join(b"row%06d,%d\n" % (i, i) for i in range(30_000))
    assert len(big) > 262_144
    stack.write("pv", "chart.png", png_bytes(24, 16), agent="viz")
    stack.write("pv", "table.csv", big, agent="proc")
    stack.wait_files("pv", ["chart.png", "table.csv"])
    page = open_page(stack.base_url)
    ranges: list[str | None] = []
    page.on("request", lambda r: ranges.append(r.headers.get("range"))
            if r.url.endswith("/files/table.csv") else None)

    page.get_by_role("button", name="Preview chart.png").click()
    dialog = page.get_by_role("dialog", name="chart.png")
    image = dialog.get_by_role("img", name="Preview of chart.png")
    expect(image).to_be_visible()
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 24, 5,
               "the PNG to decode")
    assert (image.get_attribute("src") or "").startswith("blob:")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    page.get_by_role("button", name="Preview table.csv").click()
    dialog = page.get_by_role("dialog", name="table.csv")
    text = dialog.locator("pre")
    expect(text).to_contain_text("city,temp\nOslo,-3")
    expect(dialog).to_contain_text("Showing the first 256 KiB of 458 KiB")
    assert ranges == ["bytes=0-262143"]
    shown = text.inner_text()
    assert "row000000,0" in shown
    assert len(shown.encode()) <= 262_144
    dialog.get_by_role("button", name="Close", exact=True).click()
    expect(dialog).to_be_hidden()
    assert focused(page) == "Preview table.csv"


@pytest.mark.browser
def test_download_gives_exact_bytes(shared: Stack, open_page: Callable[..., Page],
                                    tmp_path: Path) -> None:
    """Download links hand over the stored bytes exactly (artifact, library, preview)."""
    stack = shared
    payload = png_bytes(40, 30) + bytes(range(256))
    stack.write("dl", "pics/photo.png", payload, agent="cam")
    stack.wait_files("dl", ["pics/photo.png"])
    (stack.library / "kept.bin").write_bytes(b"\x00library\xff")
    page = open_page(stack.base_url)

    with page.expect_download() as info:
        page.get_by_role("link", name="Download pics/photo.png").click()
    download = info.value
    assert download.suggested_filename == "photo.png"
    assert Path(download.path()).read_bytes() == payload

    with page.expect_download() as info:
        page.get_by_role("link", name="Download kept.bin").click()
    assert Path(info.value.path()).read_bytes() == b"\x00library\xff"

    page.get_by_role("button", name="Preview pics/photo.png").click()
    with page.expect_download() as info:
        page.get_by_role("dialog").get_by_role("link", name="Download pics/photo.png").click()
    assert Path(info.value.path()).read_bytes() == payload


@pytest.mark.browser
def test_promote_conflict_then_overwrite(shared: Stack,
                                         open_page: Callable[..., Page]) -> None:
    """Promote asks a name; a taken name shows the conflict and offers Overwrite."""
    stack = shared
    stack.write("pr", "out/summary.md", b"# first\n", agent="writer")
    stack.write("pr", "draft.md", b"# second\n", agent="writer")
    stack.wait_files("pr", ["out/summary.md", "draft.md"])
    page = open_page(stack.base_url)
    library = page.get_by_role("list", name="Library files")

    page.get_by_role("button", name="Promote out/summary.md to the library").click()
    dialog = page.get_by_role("dialog", name="Promote to library")
    expect(dialog.get_by_label("Name in the library")).to_have_value("summary.md")
    dialog.get_by_role("button", name="Promote", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("status")).to_contain_text("as summary.md")
    expect(library.get_by_text("summary.md", exact=True)).to_be_visible()
    assert (stack.library / "summary.md").read_bytes() == b"# first\n"

    page.get_by_role("button", name="Promote draft.md to the library").click()
    dialog.get_by_label("Name in the library").fill("summary.md")
    dialog.get_by_role("button", name="Promote", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text(
        "already has a file named “summary.md”")
    assert (stack.library / "summary.md").read_bytes() == b"# first\n"
    dialog.get_by_role("button", name="Overwrite").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("status")).to_contain_text("Replaced library file summary.md")
    assert (stack.library / "summary.md").read_bytes() == b"# second\n"

    page.get_by_role("button", name="Promote draft.md to the library").click()
    dialog.get_by_label("Name in the library").fill(".hidden")
    dialog.get_by_role("button", name="Promote", exact=True).click()
    expect(dialog.locator("#promote-error")).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert not (stack.library / ".hidden").exists()


@pytest.mark.browser
def test_library_upload_with_name_and_overwrite(shared: Stack,
                                                open_page: Callable[..., Page]) -> None:
    """Upload under a chosen name; the same name again conflicts until Overwrite."""
    stack = shared
    page = open_page(stack.base_url)

    page.get_by_role("button", name="Upload").click()
    dialog = page.get_by_role("dialog", name="Upload to the library")
    dialog.get_by_label("File", exact=True).set_input_files(
        {"name": "local.txt", "mimeType": "text/plain", "buffer": b"one\n"})
    dialog.get_by_label("Name in the library").fill("policy.txt")
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("list", name="Library files").get_by_text("policy.txt")).to_be_visible()
    assert (stack.library / "policy.txt").read_bytes() == b"one\n"

    page.get_by_role("button", name="Upload").click()
    dialog.get_by_label("File", exact=True).set_input_files(
        {"name": "policy.txt", "mimeType": "text/plain", "buffer": b"two\n"})
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text("already has a file named “policy.txt”")
    dialog.get_by_role("button", name="Overwrite").click()
    expect(dialog).to_be_hidden()
    wait_until(lambda: (stack.library / "policy.txt").read_bytes() == b"two\n", 5,
               "the overwritten upload")


@pytest.mark.browser
def test_upload_shows_its_progress_and_the_limit_in_words(
        make_stack: StackFactory, open_page: Callable[..., Page]) -> None:
    """An upload shows a progress bar (bytes sent of the total); one over the limit says
    "larger than the … upload limit" in words."""
    # sizes of a few MiB: the page's buffers cross Playwright's protocol as base64 JSON
    stack = make_stack(daemon=False, max_upload_bytes=2 << 20)
    page = open_page(stack.base_url)
    page.evaluate("""() => {
        window.seenProgress = [];
        new MutationObserver(() => {
            const bar = document.getElementById("upload-progress");
            if (!bar.hidden) window.seenProgress.push([bar.value, bar.max]);
        }).observe(document.getElementById("upload-progress"), { attributes: true });
    }""")
    page.get_by_role("button", name="Upload").click()
    dialog = page.get_by_role("dialog", name="Upload to the library")
    dialog.get_by_label("File", exact=True).set_input_files(
        {"name": "big.bin", "mimeType": "application/octet-stream", "buffer": bytes(3 << 19)})
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog).to_be_hidden()
    seen = page.evaluate("window.seenProgress")
    assert seen and seen[-1][0] == seen[-1][1] and seen[-1][1] >= 3 << 19, seen
    assert (stack.library / "big.bin").stat().st_size == 3 << 19

    page.get_by_role("button", name="Upload").click()
    dialog.get_by_label("File", exact=True).set_input_files(
        {"name": "huge.bin", "mimeType": "application/octet-stream", "buffer": bytes(3 << 20)})
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog.get_by_role("alert")).to_contain_text("Larger than the 2 MiB upload limit")
    assert not (stack.library / "huge.bin").exists()


@pytest.mark.browser
def test_delete_artifact_and_run_after_confirmation(shared: Stack,
                                                    open_page: Callable[..., Page]) -> None:
    """Deleting asks first; Cancel keeps the file; confirming removes file, then run."""
    stack = shared
    stack.write("del", "keep.txt", b"k\n", agent="a")
    stack.write("del", "gone.txt", b"g\n", agent="a")
    stack.write("other", "x.txt", b"x\n", agent="b")
    stack.wait_files("del", ["keep.txt", "gone.txt"])
    stack.wait_files("other", ["x.txt"])
    page = open_page(stack.base_url)

    page.get_by_role("button", name="Delete gone.txt").click()
    dialog = page.get_by_role("dialog", name="Delete this file?")
    expect(dialog).to_contain_text("“gone.txt”")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert focused(page) == "Delete gone.txt"
    assert "gone.txt" in {a["filename"] for a in stack.runs()["del"]["artifacts"]}

    page.get_by_role("button", name="Delete gone.txt").click()
    dialog.get_by_role("button", name="Delete file").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Delete gone.txt")).to_have_count(0)
    assert {a["filename"] for a in stack.runs()["del"]["artifacts"]} == {"keep.txt"}

    page.get_by_role("button", name="Delete run del").click()
    dialog = page.get_by_role("dialog", name="Delete this run?")
    expect(dialog).to_contain_text("Run del and its 1 file")
    dialog.get_by_role("button", name="Delete run").click()
    expect(dialog).to_be_hidden()
    expect(page.locator('article[data-run="del"]')).to_have_count(0)
    expect(page.locator('article[data-run="other"]')).to_have_count(1)
    assert "del" not in stack.runs()
    assert not (stack.root / "artifacts" / "del").exists()


@pytest.mark.browser
def test_library_file_deleted_after_confirmation(shared: Stack,
                                                 open_page: Callable[..., Page]) -> None:
    """A library file has a delete button; Cancel keeps it, confirming deletes it (and the
    journal names the page's client)."""
    stack = shared
    (stack.library / "stale_notes.txt").write_bytes(b"old\n")
    page = open_page(stack.base_url)
    files = page.get_by_role("list", name="Library files")
    expect(files.get_by_text("stale_notes.txt")).to_be_visible()

    page.get_by_role("button", name="Delete stale_notes.txt from the library").click()
    dialog = page.get_by_role("dialog", name="Delete this library file?")
    expect(dialog).to_contain_text("“stale_notes.txt” (4 B)")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert (stack.library / "stale_notes.txt").exists()

    page.get_by_role("button", name="Delete stale_notes.txt from the library").click()
    dialog.get_by_role("button", name="Delete file").click()
    expect(dialog).to_be_hidden()
    expect(files.get_by_text("stale_notes.txt")).to_have_count(0)
    assert not (stack.library / "stale_notes.txt").exists()
    journal = "".join(p.read_text() for p in (stack.root / "artifacts/.audit").glob("*.jsonl"))
    deleted = [json.loads(line) for line in journal.splitlines() if '"library.deleted"' in line]
    assert deleted[-1]["name"] == "stale_notes.txt" and deleted[-1]["actor"] == "http:127.0.0.1"


@pytest.mark.browser
def test_refused_files_are_shown_under_their_run(shared: Stack,
                                                 open_page: Callable[..., Page]) -> None:
    """A file the daemon refused (here a symbolic link) is listed under its run with the
    reason, not only in the logs."""
    stack = shared
    stack.write("refusals", "fine.txt", b"ok\n", agent="a")
    stack.wait_files("refusals", ["fine.txt"])
    (stack.sessions / "refusals/output/sneaky.txt").symlink_to("/etc/hostname")
    wait_until(lambda: stack.runs()["refusals"]["rejected"], 10, "the refusal in metadata")
    page = open_page(stack.base_url)
    refused = page.get_by_role("list", name="Not kept in run refusals")
    expect(refused).to_contain_text("not kept: sneaky.txt, symlink")
    expect(page.get_by_role("list", name="Files of run refusals")).to_contain_text("fine.txt")


@pytest.mark.browser
def test_binary_preview_and_the_run_id_at_360_px(shared: Stack,
                                                 open_page: Callable[..., Page]) -> None:
    """A binary file's preview says so in words ("this type of file", never "file files"),
    and at 360 px a run's short id is shown whole, not squeezed to two characters."""
    stack = shared
    stack.write("narrow-run-7", "blob.bin", bytes(range(256)), agent="a")
    stack.wait_files("narrow-run-7", ["blob.bin"])
    assert stack.api("PATCH", "/runtime/artifacts/narrow-run-7", {"keep": True})[0] == 200
    page = open_page(stack.base_url, width=360, height=780)
    page.get_by_role("button", name="Preview blob.bin").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("No preview for this type of file.")
    dialog.get_by_role("button", name="Close").first.click()
    run_id = page.locator('article[data-run="narrow-run-7"] .run-id')
    expect(run_id).to_have_text("narrow-run-7")
    widths = run_id.evaluate("el => [el.scrollWidth, el.closest('.run-title').clientWidth]")
    assert widths[0] <= widths[1], widths


@pytest.mark.browser
def test_keep_and_unkeep(shared: Stack, open_page: Callable[..., Page]) -> None:
    """Keep pins a run (badge kept), Unkeep lets it expire again; the store follows."""
    stack = shared
    stack.write("pin", "a.txt", b"a\n")
    stack.wait_files("pin", ["a.txt"])
    page = open_page(stack.base_url)
    head = page.locator('article[data-run="pin"] .run-head')

    page.get_by_role("button", name="Keep run pin").click()
    expect(page.get_by_role("button", name="Unkeep run pin")).to_be_visible()
    expect(head.locator(".badge-kept")).to_have_text("kept")
    assert stack.runs()["pin"]["keep"] is True

    page.get_by_role("button", name="Unkeep run pin").click()
    expect(page.get_by_role("button", name="Keep run pin")).to_be_visible()
    expect(head.locator(".badge-kept")).to_have_count(0)
    assert stack.runs()["pin"]["keep"] is False


@pytest.mark.browser
def test_clear_expired_shows_runs_first_then_deletes_them(
        make_stack: StackFactory, open_page: Callable[..., Page]) -> None:
    """The sweep's dry run lists the expired run (not the kept one) before deleting it."""
    stack = make_stack(retention_days=0.00002)  # 1.7 s
    stack.write("old", "a.txt", b"a\n")
    stack.write("pinned", "b.txt", b"b\n")
    stack.wait_files("old", ["a.txt"])
    stack.wait_files("pinned", ["b.txt"])
    assert stack.api("PATCH", "/runtime/artifacts/pinned", {"keep": True})[0] == 200
    wait_until(lambda: stack.api("POST", "/runtime/sweep?dry_run=true")[1]["expired"] == ["old"],
               10, "run old to expire")
    page = open_page(stack.base_url)
    expect(page.locator('article[data-run="old"] .badge-expired')).to_be_visible()

    page.get_by_role("button", name="Clear expired runs").click()
    dialog = page.get_by_role("dialog", name="Clear expired runs")
    expect(dialog.get_by_role("listitem")).to_have_text(["old"])
    assert "old" in stack.runs()  # nothing deleted before the confirmation
    dialog.get_by_role("button", name="Delete 1 run").click()
    expect(dialog).to_be_hidden()
    expect(page.locator('article[data-run="old"]')).to_have_count(0)
    expect(page.locator('article[data-run="pinned"]')).to_have_count(1)
    assert set(stack.runs()) == {"pinned"}

    page.get_by_role("button", name="Clear expired runs").click()
    expect(dialog).to_contain_text("No run has expired")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


HOSTILE_DIRECTIVE = ('<script>window.__pwned = "directive"</script>'
                     '<img src=x onerror="window.__pwned = \'img\'">')
HOSTILE_FILE = '<img src=x onerror="window.__pwned=1">.txt'
HOSTILE_AGENT = "<script>window.__pwned = 'agent'</script>"


@pytest.mark.browser
def test_agent_text_is_shown_as_text_and_never_runs(shared: Stack,
                                                    open_page: Callable[..., Page],
                                                    watch: Watch) -> None:
    """Markup in a directive, workflow, file name or agent id is text, and runs nothing."""
    stack = shared
    stack.run_json("xss", workflow_id="<b>wf</b>", user_directive=HOSTILE_DIRECTIVE)
    stack.write("xss", HOSTILE_FILE, b"hello\n", agent=HOSTILE_AGENT)
    stack.write("xss", "<svg onload=alert(1)>.md", b"# hi\n", agent=HOSTILE_AGENT)
    meta = stack.wait_files("xss", [HOSTILE_FILE, "<svg onload=alert(1)>.md"])
    wait_until(lambda: stack.runs()["xss"]["user_directive"] == HOSTILE_DIRECTIVE, 10,
               "the directive in the metadata")
    assert meta["artifacts"]
    page = open_page(stack.base_url)

    run = page.locator('article[data-run="xss"]')
    expect(run.locator(".run-directive")).to_contain_text(HOSTILE_DIRECTIVE)
    expect(run.locator(".run-workflow")).to_contain_text("<b>wf</b>")
    expect(run.get_by_text(HOSTILE_FILE)).to_be_visible()
    expect(run.locator(".file-agent").first).to_contain_text(HOSTILE_AGENT)
    page.get_by_role("button", name=f"Preview {HOSTILE_FILE}").click()
    expect(page.get_by_role("dialog").locator("pre")).to_have_text("hello\n")
    page.keyboard.press("Escape")
    page.get_by_role("button", name=f"Promote {HOSTILE_FILE} to the library").click()
    expect(page.get_by_role("dialog", name="Promote to library")).to_contain_text(HOSTILE_FILE)
    page.keyboard.press("Escape")

    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src='x'], svg[onload], b").count() == 0
    assert page.locator("script").count() == 1  # app.js only
    assert page.evaluate("[...document.querySelectorAll('*')].some(el => "
                         "[...el.attributes].some(a => a.name.startsWith('on')))") is False
    assert not watch.csp  # nothing even tried to run


@pytest.mark.browser
def test_html_artifact_is_never_rendered_in_the_page(shared: Stack,
                                                     open_page: Callable[..., Page]) -> None:
    """HTML and SVG get "Open report" (new tab, ?view=1, sandbox CSP), never a preview."""
    stack = shared
    report = (b"<!doctype html><title>r</title><h1>Report</h1>"
              b"<script>window.__ran = 1; alert('report'); opener && (opener.__pwned = 1)</script>")
    stack.write("rep", "report.html", report, agent="writer")
    stack.write("rep", "figure.svg",
                b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>', agent="viz")
    stack.wait_files("rep", ["report.html", "figure.svg"])
    page = open_page(stack.base_url)
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/files/" in r.url else None)

    for name in ("report.html", "figure.svg"):
        expect(page.get_by_role("button", name=f"Preview {name}")).to_have_count(0)
        link = page.get_by_role("link", name=f"Open report {name} in a new tab")
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
        expect(link).to_have_attribute("href", re.compile(rf"/files/{re.escape(name)}\?view=1$"))
    assert page.locator("iframe, object, embed").count() == 0

    with page.context.expect_page() as info:
        page.get_by_role("link", name="Open report report.html in a new tab").click()
    tab = info.value
    tab.wait_for_load_state()
    assert tab.url.endswith("/runtime/artifacts/rep/files/report.html?view=1")
    headers = stack_file_headers(stack, "/runtime/artifacts/rep/files/report.html?view=1")
    assert headers["content-security-policy"].startswith("sandbox")
    assert "allow-scripts" not in headers["content-security-policy"]
    assert tab.evaluate("window.__ran") is None  # the report's script never ran
    assert tab.evaluate("window.opener") is None  # rel=noopener
    tab.close()
    assert page.evaluate("window.__pwned") is None
    assert not [u for u in fetched if "report.html" in u or "figure.svg" in u]


def stack_file_headers(stack: Stack, path: str) -> dict[str, str]:
    """The answer headers of a file URL, lower-cased."""
    res = httpx.get(f"{stack.base_url}{path}", timeout=5)
    assert res.status_code == 200, res.text
    return {k.lower(): v for k, v in res.headers.items()}


@pytest.mark.browser
def test_keyboard_alone_reaches_every_action(shared: Stack,
                                            open_page: Callable[..., Page]) -> None:
    """Tab reaches every control in order; Enter keeps a run and opens a preview."""
    stack = shared
    stack.run_json("kbd-run", workflow_id="wf_kb", user_directive="Directive for the keyboard test")
    stack.write("kbd-run", "data.csv", CSV, agent="proc")
    stack.write("kbd-run", "page.html", b"<h1>x</h1>", agent="writer", age_s=60)
    stack.wait_files("kbd-run", ["data.csv", "page.html"])
    (stack.library / "lib.txt").write_text("lib\n")
    # the search (kept in the address) leaves this test's run alone on the shared store
    page = open_page(f"{stack.base_url}/?q=kbd-run")
    expect(page.get_by_role("searchbox")).to_have_value("kbd-run")
    expect(page.locator("article.run")).to_have_count(1)
    expect(page.get_by_role("link", name="Download lib.txt")).to_be_visible()

    order: list[str] = []
    for _ in range(100):
        page.keyboard.press("Tab")
        label = focused(page)
        if not label or (order and label == order[0]):
            break
        order.append(label)
    wanted = [
        "Skip to generated artifacts", "Upload", "Download lib.txt", "Clear expired runs",
        "All runs", "Current run", "Last 24 h", "Expiring", "Sort by",
        "Search file names, agents and workflows", "Directive: Directive for the keyboard test",
        "Keep run kbd-run", "Delete run kbd-run",
        "Preview data.csv", "Download data.csv", "Promote data.csv to the library",
        "Delete data.csv",  # newest first
        "Open report page.html in a new tab", "Download page.html",
        "Promote page.html to the library", "Delete page.html",
    ]
    positions = [order.index(w) if w in order else -1 for w in wanted]
    assert -1 not in positions, f"not reachable with Tab: {wanted[positions.index(-1)]}; {order}"
    assert positions == sorted(positions), f"focus order: {order}"

    page.locator("body").focus()
    tab_to(page, "Keep run kbd-run")
    ring = page.evaluate("(() => { const s = getComputedStyle(document.activeElement); "
                         "return [s.outlineStyle, s.outlineWidth]; })()")
    assert ring == ["solid", "2px"], "a keyboard focus shows a visible ring"
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Unkeep run kbd-run")).to_be_focused()
    wait_until(lambda: stack.runs()["kbd-run"]["keep"] is True, 5, "the run to be kept")

    page.locator("body").focus()
    tab_to(page, "Preview data.csv")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="data.csv")
    expect(dialog.locator("pre")).to_contain_text("Oslo")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert focused(page) == "Preview data.csv"

    tab_to(page, "Delete data.csv")
    page.keyboard.press("Enter")
    confirm = page.get_by_role("dialog", name="Delete this file?")
    expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(confirm.get_by_role("button", name="Delete file")).to_be_focused()
    page.keyboard.press("Enter")
    expect(confirm).to_be_hidden()
    expect(page.get_by_role("button", name="Preview data.csv")).to_have_count(0)
    assert focused(page) != ""  # the focus went somewhere sensible, not to <body>


@pytest.mark.browser
def test_lost_server_is_said_in_words(make_stack: StackFactory,
                                      open_page: Callable[..., Page]) -> None:
    """When promoter serve goes away the page says so and keeps the last list shown."""
    stack = make_stack(daemon=False, seed=seed_store)
    page = open_page(stack.base_url)
    expect(page.locator("article.run")).to_have_count(4)
    assert stack.serve is not None
    stack.serve.terminate()
    stack.serve.wait(timeout=10)
    expect(page.locator("#conn")).to_have_attribute("data-state", "error")
    expect(page.locator("#conn")).to_have_text("Offline, retrying")
    expect(page.get_by_role("alert")).to_contain_text("Cannot reach promoter")
    expect(page.locator("article.run")).to_have_count(4)


@pytest.mark.browser
def test_token_is_asked_once_and_kept_for_the_tab(make_stack: StackFactory,
                                                  open_page: Callable[..., Page]) -> None:
    """With a token configured the page asks once (a labelled dialog), then just works."""
    stack = make_stack(token="s3cret-token")
    stack.write("tok", "t.txt", b"token bytes\n", agent="a")
    stack.wait_files("tok", ["t.txt"])
    page = open_page(stack.base_url, wait=False)

    dialog = page.get_by_role("dialog", name="Access token")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Token").fill("wrong")
    dialog.get_by_role("button", name="Continue").click()
    expect(dialog.get_by_role("alert")).to_contain_text("That token was refused")
    dialog.get_by_label("Token").fill("s3cret-token")
    dialog.get_by_role("button", name="Continue").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Preview t.txt")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")

    page.get_by_role("button", name="Keep run tok").click()
    expect(page.get_by_role("button", name="Unkeep run tok")).to_be_visible()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download t.txt").click()
    assert Path(info.value.path()).read_bytes() == b"token bytes\n"
    expect(dialog).to_be_hidden()

    page.reload()  # the same tab keeps the token: no second question
    expect(page.get_by_role("button", name="Unkeep run tok")).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(dialog).to_be_hidden()


@pytest.mark.browser
def test_screenshots_desktop_and_mobile_light_and_dark(make_stack: StackFactory,
                                                       browser: Browser,
                                                       tmp_path: Path) -> None:
    """1280 and 360 px wide, light and dark: nothing overflows sideways; PNGs are written."""
    stack = make_stack(daemon=False, seed=seed_store)
    out = SCREENSHOT_DIR if os.environ.get("PROMOTER_UPDATE_SCREENSHOTS") else tmp_path / "shots"
    shots = take_screenshots(browser, stack.base_url, out)
    assert sorted(p.name for p in shots) == [
        "desktop-dark.png", "desktop-light.png", "mobile-dark.png", "mobile-light.png"]
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


STATIC = Path(__file__).resolve().parent.parent / "promoter" / "web" / "static"


def test_static_files_have_no_html_sinks_and_nothing_external() -> None:
    """No script turns strings into markup or code, and nothing is loaded from elsewhere."""
    files = sorted(p for p in STATIC.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"index.html", "app.js", "style.css"}
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
                       r"new Function|setAttribute\(\s*[\"']on|\.srcdoc")
    external = re.compile(r"(?:https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}",
                          re.IGNORECASE)
    for path in files:
        text = path.read_text()
        assert not sinks.search(text), f"{path.name}: {sinks.search(text)}"
        for match in external.finditer(text):
            line = text[text.rfind("\n", 0, match.start()) + 1:match.end()]
            assert line.lstrip().startswith("//"), f"{path.name} loads {match.group()}"
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html, "no inline script (the page's CSP forbids it)"
    assert not re.search(r"<[^>]*\s(?:style|on[a-z]+)\s*=", html), "no inline style or handler"


# --- issue 14: the event stream, Download all, reports under a token ----------------------

REPORT = (b"<!doctype html><title>r</title><h1>Quarterly report</h1>"
          b"<script>window.__ran = 1; document.body.append('SCRIPT RAN')</script>")


def _enter_token(page: Page, token: str) -> None:
    dialog = page.get_by_role("dialog", name="Access token")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Token").fill(token)
    dialog.get_by_role("button", name="Continue").click()
    expect(dialog).to_be_hidden()


@pytest.mark.browser
def test_report_opens_under_a_token_with_scripts_blocked(
        make_stack: StackFactory, open_page: Callable[..., Page], tmp_path: Path) -> None:
    """With a token, "Open report" opens a signed link in a new tab: the report renders,
    its script does not run; "Download all" hands over the run as a zip."""
    stack = make_stack(token="s3cret-token")
    stack.write("rep", "report.html", REPORT, agent="writer")
    stack.write("rep", "plots/data.csv", b"a,b\n1,2\n", agent="etl")
    stack.wait_files("rep", ["report.html", "plots/data.csv"])
    page = open_page(stack.base_url, wait=False)
    _enter_token(page, "s3cret-token")
    link = page.get_by_role("link", name="Open report report.html in a new tab")
    expect(link).to_be_visible()
    with page.context.expect_page() as info:
        link.click()
    tab = info.value
    tab.wait_for_load_state()
    assert "/runtime/artifacts/rep/files/report.html?expires=" in tab.url
    assert "&sig=" in tab.url and tab.url.endswith("&view=1")
    expect(tab.get_by_role("heading", name="Quarterly report")).to_be_visible()
    assert tab.evaluate("window.__ran") is None  # the sandbox CSP: no script of its runs
    assert "SCRIPT RAN" not in tab.inner_text("body")
    tab.close()

    with page.expect_download() as download:
        page.get_by_role("link", name="Download all files of run rep as one zip").click()
    assert download.value.suggested_filename == "rep.zip"
    data = Path(download.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["plots/data.csv", "report.html"]
        assert zf.read("report.html") == REPORT


@pytest.mark.browser
def test_page_follows_the_stream_and_polls_only_while_it_is_down(
        make_stack: StackFactory, open_page: Callable[..., Page], tmp_path: Path) -> None:
    """The page opens the event stream (no polling); a promoted file shows at once; when
    the server goes away it falls back to polling, and back to the stream when it returns;
    "Download all" without a token is a plain link to the archive."""
    stack = make_stack()
    stack.write("s1", "first.txt", b"1\n", agent="a")
    stack.wait_files("s1", ["first.txt"])
    page = open_page(stack.base_url)
    expect(page.locator("html")).to_have_attribute("data-live", "stream")
    listed: list[str] = []
    page.on("request", lambda r: listed.append(r.url) if "/runtime/artifacts?" in r.url else None)
    stack.write("s1", "second.txt", b"2\n", agent="a")
    stack.wait_files("s1", ["second.txt"])
    expect(page.get_by_role("button", name="Preview second.txt")).to_be_visible(timeout=10_000)
    assert 1 <= len(listed) <= 4  # one refresh per change (a few when writes coalesce)
    archive = page.get_by_role("link", name="Download all files of run s1 as one zip")
    expect(archive).to_have_attribute("href", "/runtime/artifacts/s1/archive")

    assert stack.serve is not None
    stop_all([stack.serve])
    expect(page.locator("html")).to_have_attribute("data-live", "poll", timeout=10_000)
    config = stack.root.parent / "config.toml"
    log = stack.root.parent / "serve-again.log"
    again = spawn(promoter_argv("serve", "--config", str(config)), log)
    try:
        wait_healthy(stack.base_url, again, log)
        expect(page.locator("html")).to_have_attribute("data-live", "stream", timeout=40_000)
        stack.write("s1", "third.txt", b"3\n", agent="a")
        stack.wait_files("s1", ["third.txt"])
        expect(page.get_by_role("button", name="Preview third.txt")).to_be_visible(timeout=10_000)
    finally:
        stop_all([again])

"""The page's issue-14 parts in a real browser: the event stream, Download all, and reports
opened under a token through signed links (DESIGN §7, §8)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.page_helpers import promoter_argv, spawn, stop_all, wait_healthy
from tests.test_page import (  # noqa: F401  (fixtures, registered by import)
    StackFactory,
    browser,
    make_stack,
    open_page,
    watch,
)

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

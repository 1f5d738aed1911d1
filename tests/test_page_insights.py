"""The page's Insights panel (issue 16) in Debian's chromium, against a real `promoter serve`.

Values on screen are checked against `GET /runtime/stats`; the panel is worked
with the keyboard alone; nothing overflows sideways at 360 px, light or dark.
The browser, the stack and the page opener are test_page.py's fixtures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import test_page as base
from tests.page_helpers import (
    SeedFile,
    SeedRun,
    seed_store,
    stop_all,
    take_insights_screenshots,
    write_run,
)
from tests.test_page import SCREENSHOT_DIR, Stack, StackFactory, focused, shown_runs, tab_to

# test_page.py's fixtures, by name: the browser, the page opener and its watch, a stack
browser = base.browser
watch = base.watch
open_page = base.open_page
make_stack = base.make_stack

HOSTILE_AGENT = '<img src=x onerror="alert(1)">'
HOSTILE_FLOW = "<script>alert('flow')</script>"


def seed_with_hostile_names(root: Path) -> None:
    """The demo store, plus a run whose agent and workflow are markup (shown as text)."""
    seed_store(root)
    write_run(root / "artifacts", SeedRun(
        "hostile-run", HOSTILE_FLOW, "names that look like HTML", 30, 7, "completed", False,
        (SeedFile("x.txt", HOSTILE_AGENT, b"x" * 700, 29),
         # an agent's file with a source time long before its run: in the table, not drawn
         SeedFile("ancient.txt", "archivist", b"a" * 50, 400 * 24 * 60))), datetime.now(UTC))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `promoter serve` over the seeded store, shared by the tests that only read it."""
    procs: list[Any] = []
    try:
        yield base.start_stack(tmp_path_factory.mktemp("insights"), procs, daemon=False,
                          seed=seed_with_hostile_names)
    finally:
        stop_all(procs)


def open_insights(open_page: Callable[..., Page], stack: Stack, **options: Any) -> Page:
    page = open_page(f"{stack.base_url}/?insights=1", **options)
    expect(page.locator(".ins-body")).to_be_visible()
    return page


def table_rows(page: Page, caption: str) -> list[list[str]]:
    """The rows of the table alternative with this caption, as the cells' text."""
    table = page.locator("details.ins-table table", has=page.locator("caption", has_text=caption))
    return [[c.strip() for c in row.locator("th, td").all_text_contents()]
            for row in table.locator("tbody tr").all()]


def fmt_bytes(page: Page, n: int) -> str:
    """The page's own formatBytes, so a figure and its text are compared exactly."""
    return str(page.evaluate("n => import('/static/format.js').then(m => m.formatBytes(n))", n))


def count(n: int) -> str:
    return f"{n:,}"


@pytest.mark.browser
def test_values_on_screen_match_the_api(stack: Stack, open_page: Callable[..., Page]) -> None:
    """Tiles, ring, bar lists, largest runs and days show exactly GET /runtime/stats."""
    status, stats = stack.api("GET", "/runtime/stats")
    assert status == 200
    page = open_insights(open_page, stack)
    t = stats["totals"]
    tiles = {k: page.locator(f'[data-tile="{k}"] .ins-tile-value').inner_text()
             for k in ("bytes", "kept", "expiring24", "expiring7")}
    assert tiles == {"bytes": fmt_bytes(page, t["bytes"]),
                     "kept": fmt_bytes(page, t["kept_bytes"]),
                     "expiring24": fmt_bytes(page, t["expiring_24h_bytes"]),
                     "expiring7": fmt_bytes(page, t["expiring_7d_bytes"])}
    expect(page.locator('[data-tile="bytes"] .ins-tile-detail')).to_have_text(
        f"{t['artifacts']} files in {t['runs']} runs")
    other = t["bytes"] - t["kept_bytes"] - t["expiring_24h_bytes"]
    assert [r[2] for r in table_rows(page, "Stored bytes")] == [
        count(t["kept_bytes"]), count(t["expiring_24h_bytes"]), count(other)]
    assert table_rows(page, "Agents by bytes") == [
        [b["key"], count(b["artifacts"]), fmt_bytes(page, b["bytes"]), count(b["bytes"])]
        for b in stats["by_agent"]]
    assert [r[0] for r in table_rows(page, "Workflows by bytes")] == [
        b["key"] or "no workflow" for b in stats["by_workflow"]]
    assert [[r[0], r[2]] for r in table_rows(page, "The five largest runs")] == [
        [r["run_id"], count(r["bytes"])] for r in stats["largest_runs"][:5]]
    assert table_rows(page, "Bytes promoted per day") == [
        [d["day"], count(d["artifacts"]), fmt_bytes(page, d["bytes"]), count(d["bytes"])]
        for d in stats["per_day"]]
    # the chart draws one stacked bar for each of the window's days that has data
    first_day = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d")
    drawn = [d for d in stats["per_day"] if d["day"] >= first_day]
    assert len(drawn) == len(stats["per_day"]) - 1
    assert page.locator(".ins-bars-svg g").count() == len(drawn)
    ring = page.locator(".ins-ring").get_attribute("aria-label") or ""
    assert ring.startswith(f"Of {fmt_bytes(page, t['bytes'])} stored: Kept ")
    # agent-controlled names are text, never markup
    for kind, name in (("agent", HOSTILE_AGENT), ("workflow", HOSTILE_FLOW)):
        expect(page.get_by_role("button", name=f"Show the runs of {kind} {name}")).to_be_visible()
    assert page.locator(".ins-body img, .ins-body script").count() == 0


@pytest.mark.browser
def test_keyboard_opens_insights_and_filters_by_agent(stack: Stack,
                                                       open_page: Callable[..., Page]) -> None:
    """Tab and Enter alone: open the panel, pick an agent, get its files, then show all again."""
    page = open_page(stack.base_url)
    expect(page.locator("#insights-body")).to_be_hidden()
    tab_to(page, "Show insights")
    page.keyboard.press("Enter")
    expect(page.locator(".ins-body")).to_be_visible()
    assert "insights=1" in page.url
    tab_to(page, "Show the runs of agent web_scraper")
    page.keyboard.press("Enter")
    expect(page.locator("#facet-note")).to_contain_text("agent web_scraper")
    assert shown_runs(page) == ["a8d4c19e"]
    names = page.locator("article.run .file-name").all_inner_texts()
    assert sorted(names) == ["pricing.csv", "raw_pages.zip"]
    assert focused(page) == "Generated artifacts"
    assert re.search(r"[?&]agent=web_scraper", page.url)
    tab_to(page, "Show all")
    page.keyboard.press("Enter")
    expect(page.locator("#facet-note")).to_be_hidden()
    expect(page.locator("article.run")).to_have_count(5)
    assert "agent=" not in page.url


@pytest.mark.browser
def test_workflow_click_and_largest_run_link(stack: Stack,
                                             open_page: Callable[..., Page]) -> None:
    """A workflow narrows the list to its runs; a largest run's link opens that run."""
    page = open_insights(open_page, stack)
    page.get_by_role("button", name="Show the runs of workflow long_study").click()
    expect(page.locator("article.run")).to_have_count(1)
    assert shown_runs(page) == ["b71e02f5"]
    page.reload()  # the facet is in the address: a reload keeps it
    expect(page.locator("article.run")).to_have_count(1)
    page.get_by_role("link", name="Run f3b2a7c41d9e4b0a").click()
    expect(page.locator("#filter-note")).to_contain_text("Following run f3b2a7c41d9e4b0a")
    expect(page.locator("article.run")).to_have_count(1)


@pytest.mark.browser
def test_tables_open_with_the_keyboard_and_the_period_changes(
        stack: Stack, open_page: Callable[..., Page]) -> None:
    """'Show as a table' opens with Enter; the period select asks the API again."""
    page = open_insights(open_page, stack)
    summary = page.locator("details.ins-table summary").first
    summary.focus()
    page.keyboard.press("Enter")
    expect(page.locator("details.ins-table").first).to_have_attribute("open", "")
    page.locator("#insights-since").select_option("1d")
    _, day = stack.api("GET", "/runtime/stats?since=1d")
    expect(page.locator('[data-tile="bytes"] .ins-tile-detail')).to_have_text(
        f"{day['totals']['artifacts']} files in {day['totals']['runs']} runs")
    assert "since=1d" in page.url


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_sideways_overflow_at_360_px(stack: Stack, open_page: Callable[..., Page],
                                        scheme: str) -> None:
    """At 360 px, with every table open, nothing is wider than the screen."""
    page = open_insights(open_page, stack, width=360, height=800, scheme=scheme)
    for details in page.locator("details.ins-table").all():
        details.evaluate("el => { el.open = true; }")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow == 0
    wide = page.evaluate("""() => [...document.querySelectorAll('.panel-insights *')]
        .filter(el => el.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5
                      && !el.closest('.ins-table-scroll'))
        .map(el => el.className.baseVal ?? el.className)""")
    assert wide == []


@pytest.mark.browser
def test_insights_screenshots(make_stack: StackFactory, browser: Browser,
                              tmp_path: Path) -> None:
    """The open panel at 1280 and 360 px, light and dark, is written as PNGs."""
    stack = make_stack(daemon=False, seed=seed_store)
    out = SCREENSHOT_DIR if os.environ.get("PROMOTER_UPDATE_SCREENSHOTS") else tmp_path / "shots"
    shots = take_insights_screenshots(browser, stack.base_url, out)
    assert sorted(p.name for p in shots) == [
        "insights-desktop-dark.png", "insights-desktop-light.png",
        "insights-mobile-dark.png", "insights-mobile-light.png"]
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

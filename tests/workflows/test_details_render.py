"""The request's details table as the Temporal UI shows it: the markdown of ``workflows/details.py`` rendered by
the UI that ``temporal server start-dev`` ships (its ``/render`` page, the one the details panel embeds), in
headless Chromium (Debian's ``/usr/bin/chromium``; skipped without it unless ``DSR_REQUIRE_BROWSER`` is set)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from tests.harness import binary, free_port

if TYPE_CHECKING:
    from playwright.async_api import Browser
from workflows import details

CHROMIUM = Path(os.environ.get("DSR_CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()

ROWS = [["crm", "done", "1", "exported 3"], ["billing", "running", "12", "failing since 2026-12-01 09:00 UTC, "
                                                                          "retried: 503 | upstream"]]


def test_cells_end_with_a_gutter_and_a_pipe_in_a_note_stays_in_its_cell() -> None:
    lines = details.table(["system", "state", "attempts", "note"], ROWS, right=[2])
    assert lines[0] == "| system\u2003 | state\u2003 | attempts\u2003 | note |"
    assert lines[1] == "|:---|:---|---:|:---|"
    assert lines[3].endswith("retried: 503 \\| upstream |")
    multiline = details.table(["a", "b"], [["x", "line one\nline two"]])
    assert multiline[-1] == "| x\u2003 | line one line two |"


@pytest.fixture(scope="module")
def ui_url() -> Iterator[str]:
    """A dev server with its UI on free loopback ports."""
    port, ui = free_port(), free_port()
    process = subprocess.Popen(
        [binary("temporal"), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui),
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(150):
            try:
                socket.create_connection(("127.0.0.1", ui), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail("the Temporal dev server did not start")
                import time

                time.sleep(0.2)
        yield f"http://127.0.0.1:{ui}"
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        if os.environ.get("DSR_REQUIRE_BROWSER"):
            pytest.fail(f"DSR_REQUIRE_BROWSER is set but {CHROMIUM} is missing: run scripts/ensure-chromium")
        pytest.skip(f"{CHROMIUM} is not installed (scripts/ensure-chromium installs it)")
    from playwright.async_api import async_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield launched
        finally:
            await launched.close()


# The horizontal gap between the visible text of each cell (trailing white space left out) and the next one's,
# per row (pixels).
GAPS = r"""() => [...document.querySelectorAll('tr')].map(tr => {
  const boxes = [...tr.children].map(cell => {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const nodes = []; let node; while ((node = walker.nextNode())) nodes.push(node);
    while (nodes.length && nodes[nodes.length - 1].textContent.trim() === '') nodes.pop();
    if (!nodes.length) return null;
    const last = nodes[nodes.length - 1];
    const range = document.createRange();
    range.setStart(nodes[0], 0); range.setEnd(last, last.textContent.replace(/\s+$/u, '').length);
    const r = range.getBoundingClientRect(); return [r.left, r.right];
  }).filter(b => b !== null);
  return boxes.slice(1).map((b, i) => b[0] - boxes[i][1]);
})"""


async def _rendered_gaps(browser: Browser, ui_url: str, markdown: str) -> list[list[float]]:
    page = await browser.new_page()
    try:
        await page.goto(f"{ui_url}/render?content={urllib.parse.quote(markdown)}&theme=light")
        for _ in range(50):
            if await page.locator("td").count():
                break
            await asyncio.sleep(0.1)
        assert await page.locator("table").count() == 1, await page.content()
        return await page.evaluate(GAPS)
    finally:
        await page.close()


async def test_the_ui_shows_the_details_table_with_its_columns_apart(browser: Browser, ui_url: str) -> None:
    lines = details.table(["system", "state", "attempts", "note"], ROWS, right=[2])
    gaps = await _rendered_gaps(browser, ui_url, "\n".join(["**access** · stage `processing`", "", *lines]))
    assert len(gaps) == 3 and all(len(row) == 3 for row in gaps), gaps  # header and two rows, four cells each
    assert min(gap for row in gaps for gap in row) >= 8, gaps  # an em space at least, where it ran together
    # The same table without the gutter: what the UI showed before ("stateattempts", "running12").
    bare = "\n".join(["| system | state | attempts | note |", "|---|---|---|---|",
                      *("| " + " | ".join(row) + " |" for row in ROWS)])
    assert min(gap for row in await _rendered_gaps(browser, ui_url, bare) for gap in row) < 4

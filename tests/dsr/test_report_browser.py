"""The statistics report (`dsr report --html`) in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``)
via Playwright, with JavaScript off, on screen and as printed on A4.

Like tests/intake/test_form_browser.py: skipped without ``/usr/bin/chromium`` unless ``DSR_REQUIRE_BROWSER`` is set.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from dsr.domain.model import Language, RequestKind
from dsr.dpo.register import Statistics, compute_statistics, read_register
from dsr.dpo.report import render_html
from dsr.store.crypto import KeyRing
from dsr.store.ledger import Ledger
from tests.dsr.simulated_register import TIMEZONE, fill, plan_year

CHROMIUM = Path(os.environ.get("DSR_CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()

if not HAVE_CHROMIUM and not os.environ.get("DSR_REQUIRE_BROWSER"):
    pytest.skip(
        f"{CHROMIUM} is not installed (scripts/ensure-chromium installs it; set DSR_REQUIRE_BROWSER to fail instead)",
        allow_module_level=True,
    )

from playwright.async_api import Browser, Page, async_playwright  # noqa: E402

YEAR = 2025
AS_OF = date(2026, 2, 15)
A4_WIDTH_PX = 794  # 210 mm at 96 px per inch


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"DSR_REQUIRE_BROWSER is set but {CHROMIUM} is missing: run scripts/ensure-chromium")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses its sandbox as root (containers, CI)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def stats() -> Iterator[Statistics]:
    """300 requests of a simulated year, through the ledger (in memory) and the register."""
    plans = plan_year(300, YEAR, as_of=AS_OF)
    with Ledger("sqlite://", KeyRing.generate()) as ledger:
        fill(ledger, plans)
        entries = read_register(ledger, timezone=TIMEZONE, today=AS_OF)
    yield compute_statistics(entries, since=date(YEAR, 1, 1), until=date(YEAR, 12, 31), as_of=AS_OF)


WORDS = {
    "fr": {"title": "Demandes d'exercice des droits : statistiques", "received": "Demandes reçues",
           "legend": "effacement", "x_axis": "jours entre la réception et la réponse", "month": "janv. 2025",
           "one_month": "1 mois"},
    "en": {"title": "Data-subject requests: statistics", "received": "Requests received",
           "legend": "erasure", "x_axis": "days from receipt to answer", "month": "Jan 2025",
           "one_month": "1 month"},
}


async def open_report(browser: Browser, html: Path, width: int) -> tuple[object, Page]:
    context = await browser.new_context(java_script_enabled=False, viewport={"width": width, "height": 900})
    page = await context.new_page()
    await page.goto(html.as_uri())
    return context, page


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_the_report_reads_on_screen_with_its_charts_beside_the_tables(
        browser: Browser, stats: Statistics, tmp_path: Path, lang: str) -> None:
    words = WORDS[lang]
    html = tmp_path / f"report-{lang}.html"
    html.write_text(render_html(stats, Language(lang), timezone=TIMEZONE, generated_at=datetime(2026, 3, 1, tzinfo=UTC),
                                controller_name="Kestio SAS"), encoding="utf-8")
    context, page = await open_report(browser, html, 1100)
    try:
        assert await page.locator("h1").inner_text() == words["title"]
        assert await page.locator("#controller").inner_text() == "Kestio SAS"
        received = page.locator(".figure", has_text=words["received"]).locator("dd")
        assert await received.inner_text() == str(stats.received) == "300"

        main = await page.locator("main").bounding_box()
        assert main is not None
        boxes = []
        for chart in ("#chart-months svg", "#chart-days svg"):
            box = await page.locator(chart).bounding_box()
            assert box is not None, chart
            assert box["width"] > 600 and 150 < box["height"] < 500, (chart, box)  # drawn, and not squashed
            assert main["x"] <= box["x"] and box["x"] + box["width"] <= main["x"] + main["width"] + 1, chart
            boxes.append(box)
        assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"]  # one under the other, no overlap
        # The charts' words are text (searchable, sharp in print), in the report's language.
        months_chart = page.locator("#chart-months svg")
        assert await months_chart.get_attribute("role") == "img"
        assert words["legend"] in await months_chart.locator("text").all_text_contents()
        days_texts = await page.locator("#chart-days svg text").all_text_contents()
        assert words["x_axis"] in days_texts and words["one_month"] in days_texts

        # The month table under the first chart: twelve months and a total equal to the requests received.
        rows = page.locator("#months tbody tr")
        assert await rows.count() == 12
        assert (await rows.first.locator("td").first.inner_text()) == words["month"]
        total = await page.locator("#months tfoot td").all_inner_texts()
        assert total[1 + len(RequestKind)] == "300"  # after the month and one column per kind
        table = await page.locator("#months").bounding_box()
        assert table is not None and table["y"] > boxes[0]["y"] + boxes[0]["height"]
        # Nothing sticks out sideways.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1100

        shot = await page.screenshot(full_page=True, path=str(tmp_path / f"report-{lang}.png"))
        assert len(shot) > 50_000  # a page with charts, not a blank one
    finally:
        await context.close()  # type: ignore[attr-defined]


async def test_the_report_prints_on_a4_without_cutting_a_chart(browser: Browser, stats: Statistics,
                                                             tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text(render_html(stats, Language.FR, timezone=TIMEZONE, generated_at=datetime(2026, 3, 1, tzinfo=UTC)),
                    encoding="utf-8")
    context, page = await open_report(browser, html, A4_WIDTH_PX)
    try:
        await page.emulate_media(media="print")
        assert await page.evaluate("document.documentElement.scrollWidth") <= A4_WIDTH_PX
        for chart in ("#chart-months svg", "#chart-days svg"):
            box = await page.locator(chart).bounding_box()
            assert box is not None and box["width"] <= A4_WIDTH_PX
        rule = await page.evaluate(
            "getComputedStyle(document.querySelector('#chart-days')).breakInside")
        assert rule == "avoid"
        pdf = await page.pdf(format="A4", print_background=True)
        assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
        pages = len(re.findall(rb"/Type\s*/Page(?!s)", pdf))
        assert 2 <= pages <= 6, pages  # paginated, and not one chart per sheet
    finally:
        await context.close()  # type: ignore[attr-defined]

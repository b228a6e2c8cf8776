"""The export bundle's report.html in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``) via
Playwright, JavaScript off, on screen and printed on A4, in French and English.

Like tests/dsr/test_report_browser.py: skipped without ``/usr/bin/chromium`` unless ``DSR_REQUIRE_BROWSER`` is set.
``DSR_SCREENSHOTS=<folder>`` also writes the screenshots there (the README's docs/screenshots/export-report-*.png).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from dsr.store.exports import ExportStore
from tests.dsr.test_readable_exports import bundle, store  # noqa: F401  (the fixture)

CHROMIUM = Path(os.environ.get("DSR_CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()

if not HAVE_CHROMIUM and not os.environ.get("DSR_REQUIRE_BROWSER"):
    pytest.skip(
        f"{CHROMIUM} is not installed (scripts/ensure-chromium installs it; set DSR_REQUIRE_BROWSER to fail instead)",
        allow_module_level=True,
    )

from playwright.async_api import Browser, async_playwright  # noqa: E402

A4_WIDTH_PX = 794  # 210 mm at 96 px per inch
WORDS = {
    "fr": {"title": "Vos données personnelles", "payments": "Paiements", "amount": "Montant", "euros": "12,50\u00a0€",
           "created": "3 décembre 2026 à 07:53", "notes": "Notes de notre équipe", "empty": "Vide",
           "invoices": "Factures"},
    "en": {"title": "Your personal data", "payments": "Payments", "amount": "Amount", "euros": "€12.50",
           "created": "3 December 2026, 07:53", "notes": "Notes from our team", "empty": "Empty",
           "invoices": "Invoices"},
}


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


def report_file(exports: ExportStore, lang: str, folder: Path) -> Path:
    path = folder / f"report-{lang}.html"
    path.write_bytes(bundle(exports, lang).read("report.html"))
    return path


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_report_html_reads_as_a_document_in_the_subjects_language(
        browser: Browser, store: ExportStore, tmp_path: Path, lang: str) -> None:  # noqa: F811
    words = WORDS[lang]
    html = report_file(store, lang, tmp_path)
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(html.as_uri())
        assert await page.locator("h1").inner_text() == words["title"]

        # Datasets are titled with the reply email's words; the system's own name is only a small aside.
        payments = page.locator("section.dataset", has=page.locator("h3", has_text=re.compile(f"^{words['payments']}")))
        assert await payments.count() == 1
        # Stripe charges have many fields: one label/value table per record, amounts in euros, dates in Paris.
        record = payments.locator("table.record").first
        amount_row = record.locator("tr", has=page.locator("th", has_text=words["amount"])).first
        assert await amount_row.locator("td").inner_text() == words["euros"]
        assert words["created"] in await record.inner_text()
        assert "1796280788" not in await page.locator("main").inner_text()

        # HubSpot notes: a table whose header says "Note", not properties.hs_note_body.
        notes = page.locator("section.dataset", has=page.locator("h3", has_text=words["notes"]))
        headers = await notes.locator("thead th").all_inner_texts()
        assert "Note" in headers and not any("hs_" in h or "properties" in h for h in headers)

        # The empty dataset is said to be empty, with no file to open.
        empty = page.locator("section.dataset.empty")
        assert await empty.count() == 1
        assert words["invoices"] in await empty.locator("h3").inner_text()
        assert (await empty.locator(".meta").inner_text()).startswith(words["empty"])

        # Layout: every table within the page's column, nothing sticking out sideways.
        main = await page.locator("main").bounding_box()
        assert main is not None
        for table in await page.locator("main table").all():
            box = await table.bounding_box()
            assert box is not None
            assert main["x"] <= box["x"] and box["x"] + box["width"] <= main["x"] + main["width"] + 1
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1100

        shot = tmp_path / f"export-report-{lang}.png"
        data = await page.screenshot(full_page=True, path=str(shot))
        assert len(data) > 50_000  # a page of tables, not a blank one
        if os.environ.get("DSR_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["DSR_SCREENSHOTS"]) / shot.name)

        # Printed on A4: no page wider than the sheet, a PDF of a few pages.
        await page.set_viewport_size({"width": A4_WIDTH_PX, "height": 1123})
        await page.emulate_media(media="print")
        assert await page.evaluate("document.documentElement.scrollWidth") <= A4_WIDTH_PX
        pdf = await page.pdf(format="A4", print_background=True)
        assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    finally:
        await context.close()

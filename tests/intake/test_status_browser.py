"""The subject's status page in a real browser: headless Chromium (the system one, as in test_form_browser.py),
JavaScript off, at a phone's width and a laptop's, in French and English; screenshots for the README.

``DSR_SAVE_SCREENSHOTS=1`` also writes them to docs/status-page-<lang>.png (the README shows those).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.intake.test_form_browser import CHROMIUM, HAVE_CHROMIUM
from tests.intake.test_status_page import DOCUMENT, REASON, WAITING, serve_status

if not HAVE_CHROMIUM and not os.environ.get("DSR_REQUIRE_BROWSER"):
    pytest.skip(f"{CHROMIUM} is not installed (scripts/ensure-chromium)", allow_module_level=True)

from playwright.async_api import Browser, async_playwright

DOCS = Path(__file__).resolve().parents[2] / "docs"

WORDS = {
    "fr": {"title": f"Votre demande {WAITING}", "stage": "En attente de la confirmation de votre identité",
           "deadline": "22 février 2027", "waiting": "Ce que nous attendons",
           "button": "Renvoyer l’e-mail de confirmation d’identité",
           "resent": "nous avons renvoyé l’e-mail"},
    "en": {"title": f"Your request {DOCUMENT}", "stage": "Waiting for your identity to be confirmed",
           "deadline": "21 December 2026", "waiting": "What we are waiting for", "button": "",
           "resent": ""},
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


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_the_status_page_reads_well_on_a_phone_and_a_laptop(browser: Browser, tmp_path: Path,
                                                                   lang: str) -> None:
    words = WORDS[lang]
    reference = WAITING if lang == "fr" else DOCUMENT  # the page speaks the request's language, not the browser's
    async with serve_status(tmp_path) as site:
        url = site.url + site.link(reference)
        for width, height in ((390, 844), (1024, 768)):
            context = await browser.new_context(java_script_enabled=False, locale="de-DE",
                                                viewport={"width": width, "height": height})
            page = await context.new_page()
            try:
                response = await page.goto(url)
                assert response is not None and response.status == 200
                assert await page.title() == words["title"]
                main = await page.locator("main").bounding_box()
                facts = await page.locator("dl.facts").bounding_box()
                heading = await page.locator("h1").bounding_box()
                assert main is not None and facts is not None and heading is not None
                # Title, then the facts, inside the column; nothing runs off the side of a phone.
                assert heading["y"] + heading["height"] <= facts["y"]
                assert main["x"] - 1 <= facts["x"] and facts["x"] + facts["width"] <= main["x"] + main["width"] + 1
                assert await page.evaluate("document.documentElement.scrollWidth") <= width
                # Each label sits on the same line as its value, left of it.
                label, value = page.locator("dl.facts dt").nth(3), page.locator("dl.facts dd").nth(3)
                label_box, value_box = await label.bounding_box(), await value.bounding_box()
                assert label_box is not None and value_box is not None
                assert abs(label_box["y"] - value_box["y"]) < 4 and label_box["x"] < value_box["x"]
                assert await value.inner_text() == words["stage"]
                body = await page.locator("main").inner_text()
                assert words["deadline"] in body and words["waiting"] in body
                assert "camille" not in body.lower() and "durand" not in body.lower()
                if lang == "fr":
                    reason = await page.locator("blockquote").bounding_box()
                    assert reason is not None and reason["y"] > facts["y"] + facts["height"]
                    assert await page.locator("blockquote").inner_text() == REASON
                    button = page.get_by_role("button", name=words["button"])
                    box = await button.bounding_box()
                    assert box is not None and box["y"] > reason["y"] and box["x"] + box["width"] <= width
                else:
                    assert await page.locator("form").count() == 0
                shot = tmp_path / f"status-page-{lang}-{width}.png"
                await page.screenshot(full_page=True, path=str(shot))
                assert shot.stat().st_size > 10_000  # a drawn page, not a blank one
                if width == 1024 and os.environ.get("DSR_SAVE_SCREENSHOTS"):
                    DOCS.mkdir(exist_ok=True)
                    shutil.copyfile(shot, DOCS / f"status-page-{lang}.png")
                if lang == "fr" and width == 1024:
                    # The button works without JavaScript: the page comes back saying the email was sent again.
                    await page.get_by_role("button", name=words["button"]).click()
                    assert words["resent"] in await page.locator("p.notice").inner_text()
                    assert site.resender.calls == [WAITING]
            finally:
                await context.close()

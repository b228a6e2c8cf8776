"""The request form in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``) via Playwright,
with JavaScript turned off, so these tests prove the form works without it.

The browser is the system one (``scripts/ensure-chromium`` installs it); ``playwright install`` is never
needed. Without ``/usr/bin/chromium`` the tests are skipped, unless ``DSR_REQUIRE_BROWSER`` is set (CI):
then they fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.intake.test_form import FormApp, spoken_date

CHROMIUM = Path(os.environ.get("DSR_CHROMIUM", "/usr/bin/chromium"))
HAVE_CHROMIUM = CHROMIUM.exists()

if not HAVE_CHROMIUM and not os.environ.get("DSR_REQUIRE_BROWSER"):
    pytest.skip(
        f"{CHROMIUM} is not installed (scripts/ensure-chromium installs it; set DSR_REQUIRE_BROWSER to fail instead)",
        allow_module_level=True,
    )

from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect  # noqa: E402

LOCALES = {"fr": "fr-FR", "en": "en-GB"}


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"DSR_REQUIRE_BROWSER is set but {CHROMIUM} is missing: run scripts/ensure-chromium")
    # Chromium refuses to start its sandbox as root (containers, CI): only then is it turned off.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def _page(browser: Browser, lang: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(java_script_enabled=False, locale=LOCALES[lang])
    return context, await context.new_page()


TEXT = {
    "fr": {
        "kind": "Corriger vos données",
        "email": "Votre adresse électronique",
        "name": "Vos prénom et nom",
        "details": "Précisions",
        "submit": "Envoyer ma demande",
        "title": "Votre demande a bien été reçue",
        "inbox": "Vérifiez votre boîte de réception\u00a0: nous venons de vous écrire",
        "bad_email": "Saisissez une adresse électronique valide",
    },
    "en": {
        "kind": "Correct your data",
        "email": "Your email address",
        "name": "Your full name",
        "details": "Details",
        "submit": "Send my request",
        "title": "We have received your request",
        "inbox": "Check your inbox: we have just written to you",
        "bad_email": "Enter a valid email address",
    },
}


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_fill_in_and_send_without_javascript(browser: Browser, form_app: FormApp, lang: str) -> None:
    text = TEXT[lang]
    context, page = await _page(browser, lang)
    try:
        await page.goto(f"{form_app.base_url}/")
        await expect(page.locator("html")).to_have_attribute("lang", lang)  # chosen by the browser's language
        assert await page.locator("script").count() == 0
        # Fields are found by their labels: the labels are tied to them.
        await page.get_by_label(text["kind"]).check()
        await page.get_by_label(text["email"]).fill("camille.durand@example.org")
        await page.get_by_label(text["name"]).fill("Camille Durand")
        await page.get_by_label(text["details"]).fill("Nom\u00a0: Durant → Durand")
        await page.get_by_role("button", name=text["submit"]).click()

        await page.wait_for_url(re.compile(r"/submitted\?"))
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["title"])
        assert len(form_app.sink.accepted) == 1
        accepted = form_app.sink.accepted[0]
        submission, _ = form_app.sink.calls[0]
        assert (submission.kind, submission.language, submission.channel) == ("rectification", lang, "form")
        assert submission.details == "Nom\u00a0: Durant → Durand"
        body = page.locator("main")
        await expect(body).not_to_contain_text(accepted.reference)  # by email only (issue 12)
        await expect(body).to_contain_text(spoken_date(accepted.deadline, lang))
        await expect(body).to_contain_text(text["inbox"])

        await page.reload()  # Post/Redirect/Get: a reload shows the page, it does not send again
        await expect(page.locator("main")).to_contain_text(spoken_date(accepted.deadline, lang))
        assert len(form_app.sink.calls) == 1
    finally:
        await context.close()


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_invalid_email_shows_the_error_next_to_the_field(browser: Browser, form_app: FormApp, lang: str) -> None:
    text = TEXT[lang]
    context, page = await _page(browser, lang)
    try:
        await page.goto(f"{form_app.base_url}/")
        await page.get_by_label(text["kind"]).check()
        await page.get_by_label(text["email"]).fill("camille.durand@")
        await page.get_by_label(text["details"]).fill("<b>pas du HTML</b>")
        await page.get_by_role("button", name=text["submit"]).click()

        email = page.get_by_label(text["email"])
        await expect(email).to_have_attribute("aria-invalid", "true")
        await expect(email).to_have_value("camille.durand@")  # what was typed is kept
        await expect(page.get_by_label(text["kind"])).to_be_checked()
        await expect(page.get_by_label(text["details"])).to_have_value("<b>pas du HTML</b>")
        await expect(page.locator("#email-error")).to_contain_text(text["bad_email"])
        await expect(page.locator("#email-error")).to_be_visible()
        described = (await email.get_attribute("aria-describedby") or "").split()
        assert "email-error" in described
        # The summary at the top links to the field, and following the link lands on it.
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text(text["bad_email"])
        await alert.get_by_role("link").first.click()
        assert page.url.endswith("#email")
        assert form_app.sink.calls == []

        # Corrected, the same page sends the request.
        await email.fill("camille.durand@example.org")
        await page.get_by_role("button", name=text["submit"]).click()
        await page.wait_for_url(re.compile(r"/submitted\?"))
        assert len(form_app.sink.accepted) == 1
    finally:
        await context.close()


async def test_language_switch_in_the_browser(browser: Browser, form_app: FormApp) -> None:
    context, page = await _page(browser, "fr")
    try:
        await page.goto(f"{form_app.base_url}/")
        await page.get_by_role("link", name="English").click()
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await page.get_by_label("See your data").check()
        await page.get_by_label("Your email address").fill("hugo.bernard@example.net")
        await page.get_by_role("button", name="Send my request").click()
        await page.wait_for_url(re.compile(r"/submitted\?"))
        await expect(page.locator("main")).to_contain_text("We have received your request")
        assert form_app.sink.calls[0][0].language == "en"  # replies in the language the page was read in
    finally:
        await context.close()

"""The answer page of processors and internal owners in headless Chromium (JavaScript off), in both languages:
a real request waiting on the time-skipping server, the email through aiosmtpd, the page served by uvicorn, the
answer recorded in the ledger and handed to the waiting task. Bad token, expired link and double answer too."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from dsr.domain.model import AnswerStatus, Outcome, RecordAction
from dsr.store.guards import Guards
from dsr.store.links import DownloadLinks
from dsr.store.tasks import OutsideTasks
from dsr.web.serve import serve_app
from intake.server import outside_answers_router
from intake.web.app import intake_app
from tests.harness import TEST_KEYRING, exports_of, text_of
from tests.intake.test_form_browser import LOCALES, browser  # noqa: F401 - the fixture
from tests.servers import time_skipping_server
from tests.workflows.conftest import SUBJECT_EMAIL, Engine
from tests.workflows.test_outside import PROCESSOR, chat_tool, mail_to
from tests.workflows.test_request import submit

pytestmark = pytest.mark.browser

from playwright.async_api import Browser, BrowserContext, Page, expect  # noqa: E402


@pytest_asyncio.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    async with time_skipping_server() as env:
        yield env


@dataclass
class Clock:
    now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


@dataclass
class AnswerPages:
    url: str
    clock: Clock


@pytest_asyncio.fixture
async def pages(engine: Engine) -> AsyncIterator[AnswerPages]:
    clock = Clock()
    exports = exports_of(engine.settings)
    app = intake_app(
        links=DownloadLinks(TEST_KEYRING), bundle_opener=lambda _request_id: None,
        audit=lambda *_args: None, public_url="http://127.0.0.1", guards=Guards(engine.ledger.engine, TEST_KEYRING),
        routers=[outside_answers_router(TEST_KEYRING, engine.ledger, exports, engine.client,
                                        default_language="fr", public_path="", clock=clock)],
    )
    running = await serve_app(app, port=0)
    try:
        yield AnswerPages(running.url, clock)
    finally:
        await running.stop()


TEXT = {
    "fr": {"title": "Répondre à une demande d’exercice de droits",
           "kept": "Conservé\u00a0: une obligation légale impose de garder les données",
           "basis": "Base légale de la conservation", "until": "Conservé jusqu’au (date)",
           "submit": "Envoyer la réponse", "missing_basis": "Indiquez la base légale de la conservation.",
           "thanks": "Merci\u00a0: votre réponse est enregistrée", "already": "Une réponse a déjà été donnée",
           "invalid": "Ce lien n’est pas valide", "expired": "Ce lien a expiré",
           "done": "Fait\u00a0: réalisé comme demandé"},
    "en": {"title": "Answer a data-subject request", "kept": "Kept: a legal obligation requires keeping the data",
           "basis": "Legal basis for keeping it",
           "until": "Kept until (date)", "submit": "Send the answer",
           "missing_basis": "Give the legal basis for keeping the data.",
           "thanks": "Thank you: your answer is recorded", "already": "This request was already answered",
           "invalid": "This link is not valid", "expired": "This link has expired",
           "done": "Done: carried out as asked",
           "file": "Export file (optional: CSV, JSON or any other file, up to 10 MB)"},
}


async def asked_link(engine: Engine, pages: AnswerPages, count: int = 1) -> str:
    message = (await mail_to(engine, PROCESSOR, count))[count - 1]
    token = re.search(r"/answer/(\S+)", text_of(message))
    assert token is not None
    return f"{pages.url}/answer/{token.group(1)}"


def opened(chromium: Browser, lang: str) -> Callable[[], Awaitable[tuple[BrowserContext, Page]]]:
    async def page() -> tuple[BrowserContext, Page]:
        context = await chromium.new_context(java_script_enabled=False, locale=LOCALES[lang])
        return context, await context.new_page()
    return page


@pytest.mark.parametrize("connectors", [[chat_tool()]])
@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_a_processor_answers_kept_on_the_page_and_a_second_answer_is_refused(
        browser: Browser, engine: Engine, pages: AnswerPages, lang: str) -> None:  # noqa: F811
    text = TEXT[lang]
    request, handle = await submit(engine, "erasure", language="en")
    link = await asked_link(engine, pages)
    context, page = await opened(browser, lang)()
    context2, late = await opened(browser, lang)()
    try:
        response = await page.goto(link)
        assert response is not None and response.status == 200
        await expect(page.locator("html")).to_have_attribute("lang", lang)
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["title"])
        await expect(page.locator("main")).to_contain_text(request.request_id)
        assert await page.locator("script").count() == 0
        assert await page.locator("input[type=file]").count() == 0  # an erasure takes no file
        await late.goto(link)  # a second person opens the same link before the first answers

        # Kept without its legal basis: the form again, with the error and the choice kept.
        await page.get_by_label(text["kept"], exact=True).check()
        await page.get_by_label(text["until"], exact=True).fill("2036-12-31")
        await page.get_by_role("button", name=text["submit"]).click()
        await expect(page.get_by_role("alert")).to_have_text(text["missing_basis"])
        await expect(page.get_by_label(text["kept"], exact=True)).to_be_checked()
        await page.get_by_label(text["basis"], exact=True).fill("Art. 17(3)(b) GDPR; <b>invoices</b>")
        await page.get_by_role("button", name=text["submit"]).click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["thanks"])

        final = await handle.result()
        assert final.outcome == Outcome.FULFILLED
        [line] = final.connectors[0].outcome.report
        assert (line.action, line.legal_basis, line.retained_until.isoformat()) == (
            RecordAction.RETAINED, "Art. 17(3)(b) GDPR; <b>invoices</b>", "2036-12-31")
        task = OutsideTasks(engine.ledger.engine, TEST_KEYRING).get(request.request_id, "chat-tool")
        assert task is not None and task.answer is not None and task.answer.status == AnswerStatus.KEPT
        assert task.answer.answered_by == "processor"

        # The second person's answer, from the form loaded before: refused with a clear page (409).
        await late.get_by_label(text["done"], exact=True).check()
        async with late.expect_response(lambda r: r.request.method == "POST") as posted:
            await late.get_by_role("button", name=text["submit"]).click()
        assert (await posted.value).status == 409
        await expect(late.get_by_role("heading", level=1)).to_contain_text(text["already"])
        again = await page.goto(link)  # the link itself, once answered
        assert again is not None and again.status == 409

        # A tampered token and garbage: 403; the same link past its expiry: 410.
        tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        bad = await page.goto(tampered)
        assert bad is not None and bad.status == 403
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["invalid"])
        garbage = await page.goto(f"{pages.url}/answer/not-a-token")
        assert garbage is not None and garbage.status == 403
        pages.clock.now = datetime.now(UTC) + timedelta(days=90)
        expired = await page.goto(link)
        assert expired is not None and expired.status == 410
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["expired"])
    finally:
        await context.close()
        await context2.close()


@pytest.mark.parametrize("connectors", [[chat_tool()]])
async def test_an_export_file_uploaded_on_the_page_is_stored_encrypted(
        browser: Browser, engine: Engine, pages: AnswerPages, tmp_path: Path) -> None:  # noqa: F811
    text = TEXT["en"]
    request, handle = await submit(engine, "access", language="en")
    link = await asked_link(engine, pages)
    export = tmp_path / "chat-export.json"
    export.write_text(f'[{{"email": "{SUBJECT_EMAIL}", "message": "hello support"}}]', encoding="utf-8")
    context, page = await opened(browser, "en")()
    try:
        await page.goto(link)
        await page.get_by_label(text["done"], exact=True).check()
        await page.get_by_label(text["file"], exact=True).set_input_files(str(export))
        await page.get_by_role("button", name=text["submit"]).click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(text["thanks"])
    finally:
        await context.close()
    exports = exports_of(engine.settings)
    assert list(exports.read(request.request_id, "chat-tool", "upload")) == [
        {"email": SUBJECT_EMAIL, "message": "hello support"}]
    for key in exports.objects.list(exports.prefix(request.request_id)):  # the object store sees ciphertext only
        assert b"hello support" not in exports.objects.get(key)
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED
    assert final.connectors[0].outcome.datasets[0].records == 1

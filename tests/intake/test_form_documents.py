"""Documents sent with the web form for a request about a deceased person (art. 85 loi 78-17), over real HTTP
(uvicorn on 127.0.0.1) and in headless Chromium without JavaScript, sealed in a real :class:`AttachmentStore` on
files: judged by their first bytes, limited in size and number, deleted when the submission is refused, moved when
it joins a request under way, kept when the engine could not say whether the request started."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsr.domain.model import RequestKind
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.objects import FileStore
from intake.service import Accepted, IntakeUnavailable, RateLimited
from intake.submission import SubmissionError
from intake.web.uploads import MAX_FILE_BYTES
from tests.intake.test_form import FormApp, assert_field_error, serve_form

PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(32)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
DECEASED = {"kind": "post_mortem", "deceased_email": "henri.dupont@example.org", "deceased_name": "Henri Dupont",
            "quality": "heir"}
ERRORS = {
    "fr": {"type": "Chaque justificatif doit être un fichier PDF, JPEG ou PNG.",
           "large": "Chaque justificatif doit faire 10\u00a0Mo au plus.",
           "count": "Envoyez 5 justificatifs au plus.",
           "again": "vos justificatifs n’ont donc pas été conservés",
           "total": "Vos justificatifs sont trop volumineux"},
    "en": {"type": "Each document must be a PDF, JPEG or PNG file.",
           "large": "Each document must be 10 MB or smaller.",
           "count": "Send at most 5 documents.",
           "again": "so your documents were not kept",
           "total": "Your documents are too large"},
}


@contextlib.asynccontextmanager
async def serve_with_store(home: Path) -> AsyncIterator[tuple[FormApp, AttachmentStore, Path]]:
    objects = home / "objects"
    store = AttachmentStore(FileStore(objects), KeyRing.load_or_create(home / "keys.json"))
    async with serve_form(home, attachments=store) as app:
        yield app, store, objects


def stored_files(objects: Path) -> list[str]:
    root = objects / "attachments"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def post(app: FormApp, fields: dict[str, str], files: list[tuple[str, bytes]], *, lang: str = "fr",
               **kw: Any) -> httpx.Response:
    """The form filled in and sent as a browser sends it with files: multipart/form-data."""
    page, csrf = await app.form(lang)
    assert 'enctype="multipart/form-data"' in page.text and 'type="file" id="documents"' in page.text
    data = {"email": "camille.durand@example.org", "name": "Camille Durand", "details": "", **fields,
            "language": lang, "csrf": csrf}
    parts = [("documents", (name, content, "application/octet-stream")) for name, content in files]
    return await app.http.post(f"/?lang={lang}", data=data, files=parts or [("documents", ("", b"", "application/"
                                                                                         "octet-stream"))], **kw)


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_documents_are_sealed_under_the_request_and_counted(tmp_path: Path, lang: str) -> None:
    async with serve_with_store(tmp_path) as (app, store, objects):
        response = await post(app, DECEASED, [("acte-de-deces.pdf", PDF), ("notoriete.png", PNG)], lang=lang)
        assert response.status_code == 303, response.text
        submission, _ = app.sink.calls[-1]
        accepted = app.sink.accepted[-1]
        assert submission.documents == 2 and submission.request_id == accepted.reference
        listed = store.list(accepted.reference)
        assert [(i.filename, i.content_type, i.size) for i in listed] == [
            ("acte-de-deces.pdf", "application/pdf", len(PDF)), ("notoriete.png", "image/png", len(PNG))]
        assert store.read(accepted.reference, listed[0].index) == PDF
        # Sealed on the store: neither the content nor the name in clear.
        for path in (objects / "attachments").rglob("*"):
            if path.is_file():
                raw = path.read_bytes()
                assert b"%PDF" not in raw and b"acte-de-deces" not in raw and b"IHDR" not in raw
        # An empty file input (no file chosen) is no document.
        await post(app, DECEASED, [], lang=lang)
        assert app.sink.calls[-1][0].documents == 0 and app.sink.calls[-1][0].request_id is None


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_a_bad_file_is_a_400_next_to_the_field_and_nothing_is_stored_or_started(tmp_path: Path,
                                                                                    lang: str) -> None:
    words = ERRORS[lang]
    async with serve_with_store(tmp_path) as (app, _, objects):
        # Named and declared as a PDF, but an HTML page: judged by its first bytes.
        fake = await post(app, DECEASED, [("acte.pdf", PDF), ("acte2.pdf", b"<html><script>x</script>")], lang=lang)
        assert fake.status_code == 400
        assert_field_error(fake.text, "documents", words["type"])
        large = await post(app, DECEASED, [("big.pdf", b"%PDF-" + bytes(MAX_FILE_BYTES))], lang=lang)
        assert large.status_code == 400 and words["large"] in large.text
        many = await post(app, DECEASED, [(f"{n}.png", PNG) for n in range(6)], lang=lang)
        assert many.status_code == 400 and words["count"] in many.text
        # Another field wrong: the documents were not kept either, and the page says so.
        other = await post(app, {**DECEASED, "deceased_email": "not-an-address"}, [("a.pdf", PDF)], lang=lang)
        assert other.status_code == 400 and words["again"] in other.text
        assert 'id="deceased_email-error"' in other.text
        assert app.sink.calls == [] and stored_files(objects) == []


async def test_too_much_in_all_is_a_413_and_nothing_is_stored(tmp_path: Path) -> None:
    async with serve_with_store(tmp_path) as (app, _, objects):
        three = [(f"{n}.jpg", JPEG + bytes(8 * 1024 * 1024)) for n in range(3)]  # 24 MiB: each one allowed
        response = await post(app, DECEASED, three, lang="en")
        assert response.status_code == 413 and ERRORS["en"]["total"] in response.text
        assert "Traceback" not in response.text
        assert app.sink.calls == [] and stored_files(objects) == []


async def test_files_sent_with_another_kind_go_nowhere(tmp_path: Path) -> None:
    async with serve_with_store(tmp_path) as (app, _, objects):
        response = await post(app, {**DECEASED, "kind": "erasure"}, [("a.pdf", PDF)])
        assert response.status_code == 303
        assert app.sink.calls[-1][0].documents == 0 and stored_files(objects) == []


@pytest.mark.parametrize("failure", [SubmissionError("deceased_email is the sender's own address"),
                                     RateLimited("subject", 120)])
async def test_a_refused_submission_deletes_its_documents(tmp_path: Path, failure: Exception) -> None:
    async with serve_with_store(tmp_path) as (app, _, objects):
        app.sink.fail_with = failure
        response = await post(app, DECEASED, [("a.pdf", PDF)])
        assert response.status_code in (400, 429)
        assert app.sink.calls[-1][0].documents == 1  # they were stored before the submission...
        assert stored_files(objects) == []  # ...and are gone with it


async def test_an_engine_out_of_reach_keeps_the_documents_of_a_request_that_may_have_started(tmp_path: Path) -> None:
    async with serve_with_store(tmp_path) as (app, store, _):
        app.sink.fail_with = IntakeUnavailable("the request engine is unavailable; try again in a minute")
        response = await post(app, DECEASED, [("a.pdf", PDF), ("b.jpg", JPEG)])
        assert response.status_code == 503 and response.headers["retry-after"] == "60"
        submission, _ = app.sink.calls[-1]
        assert submission.request_id is not None
        assert [i.filename for i in store.list(submission.request_id)] == ["a.pdf", "b.jpg"]


async def test_documents_joining_a_request_under_way_move_to_it(tmp_path: Path) -> None:
    async with serve_with_store(tmp_path) as (app, store, _):
        under_way = "dsr-2026-11-UNDERW"
        app.sink.fixed = Accepted(reference=under_way, kind=RequestKind.POST_MORTEM, received_on=date(2026, 11, 23),
                                  deadline=date(2026, 12, 23), extended_deadline=date(2027, 2, 23), attached=True)
        response = await post(app, DECEASED, [("a.pdf", PDF)])
        assert response.status_code == 303
        reserved = app.sink.calls[-1][0].request_id
        assert reserved is not None and reserved != under_way
        assert store.list(reserved) == [] and [i.filename for i in store.list(under_way)] == ["a.pdf"]
        assert store.read(under_way, store.list(under_way)[0].index) == PDF


async def test_without_a_store_the_form_offers_no_file_and_stays_urlencoded(form_app: FormApp) -> None:
    page, _ = await form_app.form("en")
    assert "multipart" not in page.text and 'type="file"' not in page.text


# --- in a browser, without JavaScript -------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("DSR_CHROMIUM", "/usr/bin/chromium"))
LABELS = {
    "fr": {"kind": "Les données d’une personne décédée", "email": "Votre adresse électronique",
           "deceased": "Son adresse électronique", "documents": "Justificatifs", "submit": "Envoyer ma demande",
           "title": "Votre demande a bien été reçue"},
    "en": {"kind": "The data of a person who has died", "email": "Your email address",
           "deceased": "Their email address", "documents": "Documents", "submit": "Send my request",
           "title": "We have received your request"},
}


@pytest.mark.browser  # it launches Chromium itself, without the browser fixture that marks the others
@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("DSR_REQUIRE_BROWSER"),
                    reason=f"{CHROMIUM} is not installed")
@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_documents_sent_from_chromium_without_javascript(tmp_path: Path, lang: str) -> None:
    from playwright.async_api import async_playwright, expect

    words, labels = ERRORS[lang], LABELS[lang]
    (tmp_path / "acte.pdf").write_bytes(PDF)
    (tmp_path / "faux.pdf").write_bytes(b"MZ\x90\x00 not a pdf")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with serve_with_store(tmp_path) as (app, store, objects), async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            context = await browser.new_context(java_script_enabled=False,
                                                locale={"fr": "fr-FR", "en": "en-GB"}[lang])
            page = await context.new_page()
            await page.goto(f"{app.base_url}/")

            async def fill(files: list[Path]) -> None:
                await page.get_by_label(labels["kind"]).check()
                await page.get_by_label(labels["email"]).fill("camille.durand@example.org")
                await page.get_by_label(labels["deceased"]).fill("henri.dupont@example.org")
                await page.get_by_label(labels["documents"]).set_input_files(files)
                await page.get_by_role("button", name=labels["submit"]).click()

            await fill([tmp_path / "acte.pdf", tmp_path / "faux.pdf"])
            await expect(page.locator("#documents-error")).to_contain_text(words["type"])
            await expect(page.get_by_label(labels["documents"])).to_have_attribute("aria-invalid", "true")
            await expect(page.get_by_role("alert")).to_contain_text(words["type"])
            assert app.sink.calls == [] and stored_files(objects) == []

            await fill([tmp_path / "acte.pdf"])
            await page.wait_for_url(re.compile(r"/submitted\?"))
            await expect(page.get_by_role("heading", level=1)).to_have_text(labels["title"])
            submission, _ = app.sink.calls[-1]
            assert submission.documents == 1 and submission.request_id is not None
            assert [(i.filename, i.content_type) for i in store.list(submission.request_id)] == [
                ("acte.pdf", "application/pdf")]
            await context.close()
        finally:
            await browser.close()

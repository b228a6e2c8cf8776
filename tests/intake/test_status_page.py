"""Issue 18, point 7: the subject's status page over real HTTP (uvicorn on 127.0.0.1), read from a real ledger,
its resend button counted in the ledger's database; the engine's update is the neighbour (recorded here)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from dsr.domain.model import (
    AuditEvent,
    Channel,
    Language,
    Outcome,
    RequestKind,
    RequestRecordInput,
    Stage,
    Subject,
)
from dsr.store.crypto import KeyRing
from dsr.store.guards import AnswerThrottle, Guards
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks, IdentityLinks, StatusLinks
from dsr.web.serve import serve_app
from intake.service import IntakeUnavailable
from intake.web.pages import CSP
from intake.web.status import RESENDS_PER_DAY, status_router, status_view
from intake.web.wording import STATUS
from tests.harness import http_client, migrated

TIMEZONE = "Europe/Paris"
EMAIL, NAME = "camille.durand@example.org", "Camille Durand"
WAITING = "dsr-2026-11-AAAAAA"  # fr, access, identity by email awaited, extended with a reason
WORKING = "dsr-2026-11-BBBBBB"  # en, erasure, being processed
ANSWERED = "dsr-2026-11-CCCCCC"  # fr, closed, fulfilled
DOCUMENT = "dsr-2026-11-DDDDDD"  # en, identity by document awaited
# Art. 85 loi 78-17: requests about a deceased person, whose sender proves the death and their quality.
PM_ASKED = "dsr-2026-11-PMAAAA"  # fr, documents asked for, none received
PM_MAILED = "dsr-2026-11-PMBBBB"  # en, two files came by email
PM_UPLOADED = "dsr-2026-11-PMCCCC"  # fr, one file uploaded with the form
PM_LATE = "dsr-2026-11-PMDDDD"  # en, closed: no documents in time
DOCUMENT_SENT = "dsr-2026-11-EEEEEE"  # en, identity by document, one copy sent by email
REASON = "Votre demande couvre dix ans de commandes dans trois systèmes."


def fill(ledger: Ledger) -> None:
    received = datetime(2026, 11, 20, 9, tzinfo=UTC)
    n = 0

    def event(ref: str, name: str, **fields: object) -> None:
        nonlocal n
        n += 1
        ledger.append_event(AuditEvent(ref, name, **fields), key=f"{ref}/{n}",  # type: ignore[arg-type]
                            at=received + timedelta(minutes=n))

    for ref, kind, language in ((WAITING, RequestKind.ACCESS, Language.FR), (WORKING, RequestKind.ERASURE, Language.EN),
                                (ANSWERED, RequestKind.ACCESS, Language.FR),
                                (DOCUMENT, RequestKind.PORTABILITY, Language.EN),
                                (PM_ASKED, RequestKind.POST_MORTEM, Language.FR),
                                (PM_MAILED, RequestKind.POST_MORTEM, Language.EN),
                                (PM_UPLOADED, RequestKind.POST_MORTEM, Language.FR),
                                (PM_LATE, RequestKind.POST_MORTEM, Language.EN),
                                (DOCUMENT_SENT, RequestKind.ACCESS, Language.EN)):
        ledger.record_request(RequestRecordInput(
            request_id=ref, kind=kind, channel=Channel.FORM, subject=Subject(EMAIL, NAME), received_at=received,
            deadline=date(2026, 12, 21), language=language), now=received)
        details = {"channel": "form", **({"documents": "1"} if ref == PM_UPLOADED else {})}
        event(ref, "received", stage=Stage.RECEIVED, details=details)
    event(WAITING, "identity_requested", stage=Stage.AWAITING_IDENTITY, details={"method": "email"})
    event(WAITING, "extended", actor="alice", deadline=date(2027, 2, 22), extended=True, note=REASON,
          details={"previous_deadline": "2026-12-21", "deadline": "2027-02-22"})
    event(WORKING, "identity_confirmed", details={"method": "email", "proof": "link"})
    event(WORKING, "processing", stage=Stage.PROCESSING)
    event(ANSWERED, "processing", stage=Stage.PROCESSING)
    event(ANSWERED, "closed", stage=Stage.CLOSED, outcome=Outcome.FULFILLED)
    event(DOCUMENT, "identity_requested", stage=Stage.AWAITING_IDENTITY, details={"method": "document"})
    for ref in (PM_ASKED, PM_MAILED, PM_UPLOADED, PM_LATE, DOCUMENT_SENT):
        event(ref, "identity_requested", stage=Stage.AWAITING_IDENTITY, details={"method": "document"})
    event(PM_MAILED, "subject_wrote", actor="subject", details={"attachments": "2"})
    event(DOCUMENT_SENT, "subject_wrote", actor="subject", details={"attachments": "0"})
    event(DOCUMENT_SENT, "subject_wrote", actor="subject", details={"attachments": "1"})
    event(PM_LATE, "closed", stage=Stage.CLOSED, outcome=Outcome.UNVERIFIED)


@dataclass
class Resender:
    """The engine's side of the button (the ``resend_identity_email`` update): the neighbour, recorded."""

    calls: list[str] = field(default_factory=list)
    unavailable: bool = False

    async def __call__(self, request_id: str) -> bool:
        if self.unavailable:
            raise IntakeUnavailable("the request engine is unavailable")
        self.calls.append(request_id)
        return True


@dataclass
class StatusApp:
    http: httpx.AsyncClient
    url: str
    links: StatusLinks
    ledger: Ledger
    resender: Resender

    def link(self, request_id: str, *, now: datetime | None = None) -> str:
        return f"/status/{self.links.issue(request_id, now=now or datetime.now(UTC)).token}"


@contextlib.asynccontextmanager
async def serve_status(home: Path, *, throttle: AnswerThrottle | None = None) -> AsyncIterator[StatusApp]:
    keyring = KeyRing.load_or_create(home / "keys.json")
    with Ledger(migrated(f"sqlite:///{home / 'ledger.sqlite3'}"), keyring) as ledger:
        fill(ledger)
        links, resender = StatusLinks(keyring), Resender()
        app = FastAPI()
        app.include_router(status_router(links, lambda ref: status_view(ledger, ref, TIMEZONE), resender,
                                         guards=Guards(ledger.engine, keyring), throttle=throttle or AnswerThrottle()))
        running = await serve_app(app, port=0)
        try:
            async with http_client(base_url=running.url, timeout=30) as http:
                yield StatusApp(http, running.url, links, ledger, resender)
        finally:
            await running.stop()


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[StatusApp]:
    async with serve_status(tmp_path) as served:
        yield served


def visible(html: str) -> str:
    """The page's words, tags removed and entities that matter here decoded."""
    text = re.sub(r"<[^>]+>", " ", html).replace("&#x27;", "'").replace("&quot;", '"').replace("&amp;", "&")
    return " ".join(text.split())


async def test_a_request_awaiting_identity_shows_its_extension_and_what_we_wait_for(site: StatusApp) -> None:
    page = await site.http.get(site.link(WAITING), headers={"Accept-Language": "en"})  # the request's language wins
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP and page.headers["cache-control"] == "no-store"
    assert page.headers["x-robots-tag"] == "noindex, nofollow" and page.headers["referrer-policy"] == "no-referrer"
    text = visible(page.text)
    assert '<html lang="fr">' in page.text
    assert f"Votre demande {WAITING}" in text
    assert "Demande Accès à vos données personnelles (article 15 du RGPD)" in text
    assert "Reçue le 20 novembre 2026" in text
    assert "Où elle en est En attente de la confirmation de votre identité" in text
    assert "Réponse au plus tard le 22 février 2027" in text
    assert "prolongé de deux mois (l’échéance était le 21 décembre 2026)" in text and REASON in text
    assert "ouvrez le lien de l’e-mail" in text
    assert "Renvoyer l’e-mail de confirmation d’identité" in text
    # No personal data beyond the reference: neither the address nor the name the request came with.
    assert EMAIL not in page.text and "Camille" not in page.text and "Durand" not in page.text


@pytest.mark.parametrize(("ref", "lang", "words", "button"), [
    (WORKING, "en", ["Where it stands In progress: we are searching our systems", "Reply by 21 December 2026",
                     "Nothing from you: we are working on your request"], False),
    (ANSWERED, "fr", ["Où elle en est Traitée : réponse envoyée", "Nous vous avons répondu par e-mail"], False),
    (DOCUMENT, "en", ["Waiting for your identity to be confirmed", "The document we asked you for"], False),
])
async def test_each_stage_says_where_it_stands_in_the_requests_language(
        site: StatusApp, ref: str, lang: str, words: list[str], button: bool) -> None:
    page = await site.http.get(site.link(ref))
    assert page.status_code == 200 and f'<html lang="{lang}">' in page.text
    text = visible(page.text)
    for expected in words:
        assert expected in text.replace("\u00a0", " ")
    assert ("<form" in page.text) is button  # a resend only where an identity email is awaited
    if ref == ANSWERED:
        assert "Réponse au plus tard" not in text  # a closed request has no date to wait for


@pytest.mark.parametrize(("ref", "lang", "words"), [
    (PM_ASKED, "fr", ["Où elle en est En attente de la vérification des justificatifs du décès et de votre qualité",
                      "une copie de l’acte de décès, et la preuve que vous êtes son héritier",
                      "Répondez à cet e-mail en les joignant"]),
    (PM_MAILED, "en", ["Where it stands Waiting for the documents proving the death and your quality to be checked",
                       "we received 2 files from you, and our team is checking that what you sent proves the death"]),
    (PM_UPLOADED, "fr", ["nous avons reçu un fichier de votre part, et notre équipe vérifie que ce que vous avez "
                         "envoyé établit le décès"]),
    (PM_LATE, "en", ["Closed: the documents proving the death and your quality did not reach us in time",
                     "did not reach us in time; you may make a new request"]),
    (DOCUMENT_SENT, "en", ["Waiting for your identity to be confirmed",
                           "we received one file from you and our team is checking what you sent"]),
])
async def test_a_request_about_a_deceased_person_waits_for_the_senders_quality_not_their_identity(
        site: StatusApp, ref: str, lang: str, words: list[str]) -> None:
    page = await site.http.get(site.link(ref))
    assert page.status_code == 200 and f'<html lang="{lang}">' in page.text
    text = visible(page.text).replace("\u00a0", " ")
    for expected in words:
        assert expected in text
    # Never the sender's own request: no word says the request is theirs, nor asks for their identity.
    if ref != DOCUMENT_SENT:
        for wrong in ("request is yours", "demande est bien la vôtre", "your identity", "votre identité"):
            assert wrong not in text
    if ref in (PM_MAILED, PM_UPLOADED, DOCUMENT_SENT):  # documents came: nothing is asked for again
        assert "Reply to that email" not in text and "Répondez à cet e-mail" not in text
    assert "<form" not in page.text


@pytest.mark.parametrize("lang", [Language.FR, Language.EN])
async def test_every_way_a_request_can_close_has_its_words_on_the_page(site: StatusApp, lang: Language) -> None:
    # The page is read from the ledger: an outcome without words (a declined objection, a request terminated in
    # Temporal and reconciled) would be a 500 for the subject.
    received = datetime(2026, 11, 20, 9, tzinfo=UTC)
    for n, outcome in enumerate(Outcome):
        ref = f"dsr-2026-11-{lang.value.upper()}{n:04d}"
        site.ledger.record_request(RequestRecordInput(
            request_id=ref, kind=RequestKind.OBJECTION, channel=Channel.FORM, subject=Subject(EMAIL, NAME),
            received_at=received, deadline=date(2026, 12, 21), language=lang), now=received)
        site.ledger.append_event(AuditEvent(ref, "closed", stage=Stage.CLOSED, outcome=outcome), key=f"{ref}/closed",
                                 at=received + timedelta(days=3))
        page = await site.http.get(site.link(ref))
        assert page.status_code == 200, (outcome, page.text[:200])
        words = STATUS[lang.value]
        text = visible(page.text).replace("\u00a0", " ")
        assert visible(words[f"outcome_{outcome.value}"]) in text
        assert visible(words[f"closed_{outcome.value}"]) in text


async def test_bad_expired_and_foreign_links_are_pages_with_4xx(site: StatusApp) -> None:
    good = site.link(WAITING)
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    expired = site.link(WAITING, now=datetime.now(UTC) - timedelta(days=400))
    keyring = KeyRing.load_or_create(Path(site.ledger.url.database or "").parent / "keys.json")
    download = DownloadLinks(keyring).issue(WAITING, now=datetime.now(UTC)).token
    identity = IdentityLinks(keyring, ttl=timedelta(days=30)).issue(WAITING, now=datetime.now(UTC)).token
    unknown = site.link("dsr-2026-11-ZZZZZZ")
    for path, status, words in ((tampered, 403, "Ce lien n’est pas valide"), ("/status/" + "x" * 800, 403, "lien"),
                                (expired, 410, "Ce lien a expiré"), (f"/status/{download}", 403, "pas valide"),
                                (f"/status/{identity}", 403, "pas valide"),
                                (unknown, 404, "Cette demande est introuvable")):
        page = await site.http.get(path)
        assert page.status_code == status, path
        assert page.headers["content-type"].startswith("text/html") and words in page.text
        assert WAITING not in page.text
    english = await site.http.get(tampered, headers={"Accept-Language": "en-GB"})
    assert english.status_code == 403 and "This link is not valid" in english.text


async def test_the_button_sends_the_identity_email_again_within_the_limits(site: StatusApp) -> None:
    link = site.link(WAITING)
    page = await site.http.get(link)
    token = re.search(r'name="form" value="([^"]+)"', page.text)
    assert token is not None
    forged = await site.http.post(link, data={"form": "not-the-field"})
    assert forged.status_code == 403 and site.resender.calls == []
    for _ in range(RESENDS_PER_DAY):
        sent = await site.http.post(link, data={"form": token.group(1)})
        assert sent.status_code == 200
        assert "nous avons renvoyé l’e-mail" in visible(sent.text)
    assert site.resender.calls == [WAITING] * RESENDS_PER_DAY
    # A fourth press the same day: refused in the ledger's database (shared by every intake replica).
    again = await site.http.post(link, data={"form": token.group(1)})
    assert again.status_code == 429 and int(again.headers["retry-after"]) > 0
    assert "L’e-mail vient d’être renvoyé" in again.text and len(site.resender.calls) == RESENDS_PER_DAY
    # Not a form at all: a 4xx page, nothing sent.
    raw = await site.http.post(link, content=b"\xff\xfe", headers={"content-type": "text/plain"})
    assert raw.status_code == 415 and len(site.resender.calls) == RESENDS_PER_DAY


async def test_a_press_where_no_email_is_awaited_sends_nothing_and_says_the_same(site: StatusApp) -> None:
    link = site.link(DOCUMENT)
    # The page shows no button there; a press made by hand (with the field signed for this link) changes nothing.
    assert "<form" not in (await site.http.get(link)).text
    field_of = site.links.form_token(link.removeprefix("/status/"))
    answer = await site.http.post(link, data={"form": field_of})
    assert answer.status_code == 200 and "we have sent the email again" in visible(answer.text)
    assert site.resender.calls == []


async def test_the_client_throttle_is_the_pages_shared_one(tmp_path: Path) -> None:
    async with serve_status(tmp_path, throttle=AnswerThrottle(per_client=2, overall=100)) as site:
        links = [site.link(ref) for ref in (WAITING, DOCUMENT, WORKING)]
        answers = []
        for link in links:
            answers.append((await site.http.post(
                link, data={"form": site.links.form_token(link.removeprefix("/status/"))})).status_code)
        assert answers == [200, 200, 429]


async def test_an_engine_out_of_reach_is_a_503_page(site: StatusApp) -> None:
    site.resender.unavailable = True
    link = site.link(WAITING)
    answer = await site.http.post(link, data={"form": site.links.form_token(link.removeprefix("/status/"))})
    assert answer.status_code == 503 and "Impossible pour le moment" in answer.text

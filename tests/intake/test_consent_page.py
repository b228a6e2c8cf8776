"""Withdrawal of consent in one click (Art. 7(3)) over real HTTP (uvicorn on 127.0.0.1): the page of the signed
link, the RFC 8058 one-click POST, idempotence through a real ledger; the intake service is the neighbour
(recorded here)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from dsr.domain.model import ConsentAction, ConsentPurpose
from dsr.store.crypto import KeyRing
from dsr.store.guards import Guards
from dsr.store.ledger import Ledger
from dsr.store.links import ConsentLinks, StatusLinks
from dsr.store.suppressions import SuppressionList
from dsr.web.serve import serve_app
from intake.submission import Submission
from intake.web.consent import consent_router, press_index
from tests.harness import http_client, migrated

EMAIL = "Camille.Durand@example.org"
PURPOSES = [
    ConsentPurpose("newsletter", "Lettre d'information", "Newsletter", marketing=True,
                   actions={"hubspot": ConsentAction(purpose="newsletter", subscriptions=["Newsletter"])}),
    ConsentPurpose("partner_offers", "Offres des partenaires", "Partner offers", marketing=True,
                   actions={"hubspot": ConsentAction(purpose="partner_offers", subscriptions=["Partner offers"])}),
    ConsentPurpose("analytics", "Mesure d'audience", "Audience measurement", marketing=False,
                   actions={"app": ConsentAction(purpose="analytics", residual="turn off the tracker")}),
]


@dataclass
class Sink:
    """The intake service's side: the submissions the page hands over."""

    submitted: list[Submission] = field(default_factory=list)

    async def submit(self, submission: Submission, *, client: str | None = None) -> Any:
        self.submitted.append(submission)

    async def triage(self, item: Any) -> str:
        raise AssertionError("a withdrawal is never triaged")


@dataclass
class Site:
    http: httpx.AsyncClient
    links: ConsentLinks
    keyring: KeyRing
    withdrawals: SuppressionList
    sink: Sink

    def link(self, *, language: str = "fr", now: datetime | None = None) -> str:
        return f"/consent/{self.links.issue_for(EMAIL, language, now=now or datetime.now(UTC))}"

    def form_token(self, link: str) -> str:
        return self.links.form_token(link.removeprefix("/consent/"))


@contextlib.asynccontextmanager
async def serve(home: Path) -> AsyncIterator[Site]:
    keyring = KeyRing.load_or_create(home / "keys.json")
    with Ledger(migrated(f"sqlite:///{home / 'ledger.sqlite3'}"), keyring) as ledger:
        links, sink, withdrawals = ConsentLinks(keyring), Sink(), SuppressionList(ledger)
        app = FastAPI()
        app.include_router(consent_router(links, sink, lambda: PURPOSES,
                                          lambda email: set(withdrawals.withdrawn(email)),
                                          guards=Guards(ledger.engine, keyring),
                                          press_key=press_index(ledger.subject_key)))
        running = await serve_app(app, port=0)
        try:
            async with http_client(base_url=running.url, timeout=30) as http:
                yield Site(http, links, keyring, withdrawals, sink)
        finally:
            await running.stop()


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with serve(tmp_path) as served:
        yield served


def visible(html: str) -> str:
    text = re.sub(r"<[^>]+>", " ", html).replace("&#x27;", "'").replace("&quot;", '"').replace("&amp;", "&")
    return " ".join(text.split())


ONE_CLICK = {"content": b"List-Unsubscribe=One-Click",
             "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


async def test_the_page_offers_one_button_per_purpose_in_the_language_of_the_email(site: Site) -> None:
    page = await site.http.get(site.link(language="en"), headers={"Accept-Language": "fr"})
    assert page.status_code == 200 and page.headers["x-robots-tag"] == "noindex, nofollow"
    text = visible(page.text)
    assert "Withdraw your consent" in text and "as easy as giving it" in text and "Article 7(3) GDPR" in text
    assert "Newsletter Withdraw" in text and "Partner offers Withdraw" in text
    assert "Audience measurement Withdraw" in text and "Withdraw every consent listed here" in text
    assert EMAIL.lower() not in page.text.lower()  # the address never shows
    site.withdrawals.withdraw(EMAIL.upper(), ["newsletter"], now=datetime.now(UTC))  # any case of the address
    text = visible((await site.http.get(site.link())).text)
    assert "Lettre d'information Déjà retiré" in text and "Offres des partenaires Retirer" in text


async def test_a_one_click_post_withdraws_every_marketing_purpose_once(site: Site) -> None:
    link = site.link(language="en")
    answer = await site.http.post(link, **ONE_CLICK)  # type: ignore[arg-type]
    assert answer.status_code == 200
    assert answer.json() == {"status": "withdrawn", "purposes": ["newsletter", "partner_offers"]}
    [submission] = site.sink.submitted
    assert (submission.kind, submission.email, submission.language, submission.channel) == (
        "consent_withdrawal", EMAIL, "en", "form")
    assert submission.purposes == ["newsletter", "partner_offers"]  # analytics is not marketing: left alone
    # The mail client retries, or the person clicks again while the request runs: no second request.
    again = await site.http.post(link, **ONE_CLICK)  # type: ignore[arg-type]
    assert again.json()["status"] == "already_withdrawn" and len(site.sink.submitted) == 1
    # Once the ledger records it (the request ran), a click an hour later still starts nothing.
    site.withdrawals.withdraw(EMAIL, ["newsletter", "partner_offers"], now=datetime.now(UTC))
    multipart = await site.http.post(link, files={"List-Unsubscribe": (None, "One-Click")})
    assert multipart.status_code == 200 and multipart.json()["status"] == "already_withdrawn"
    assert len(site.sink.submitted) == 1


async def test_a_multipart_one_click_post_is_understood(site: Site) -> None:
    answer = await site.http.post(site.link(), files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200 and answer.json()["status"] == "withdrawn"
    assert [s.purposes for s in site.sink.submitted] == [["newsletter", "partner_offers"]]


async def test_a_button_withdraws_one_purpose_and_a_second_press_says_already(site: Site) -> None:
    link = site.link()
    form = {"form": site.form_token(link), "purpose": "analytics"}
    done = await site.http.post(link, data=form)
    assert done.status_code == 200 and "Votre consentement est retiré" in visible(done.text)
    assert [s.purposes for s in site.sink.submitted] == [["analytics"]]
    again = await site.http.post(link, data=form)
    assert again.status_code == 200 and "Déjà retiré" in visible(again.text) and len(site.sink.submitted) == 1
    # A press without the page's signed field (a forged form elsewhere) withdraws nothing.
    forged = await site.http.post(link, data={"purpose": "newsletter"})
    assert forged.status_code == 403 and len(site.sink.submitted) == 1
    unknown = await site.http.post(link, data={"form": site.form_token(link), "purpose": "nope"})
    assert unknown.status_code == 400 and len(site.sink.submitted) == 1


async def test_bad_and_expired_links_are_refused_with_a_page_or_json(site: Site) -> None:
    other_family = f"/consent/{StatusLinks(site.keyring).issue('dsr-2026-11-AAAAAA', now=datetime.now(UTC)).token}"
    for path in ("/consent/not-a-token", other_family):
        page = await site.http.get(path, headers={"Accept-Language": "en"})
        assert page.status_code == 403 and "This link is not valid" in visible(page.text)
        answer = await site.http.post(path, **ONE_CLICK)  # type: ignore[arg-type]
        assert answer.status_code == 403 and answer.json() == {"detail": "This link is not valid"}
    old = site.link(now=datetime.now(UTC) - timedelta(days=401))
    page = await site.http.get(old, headers={"Accept-Language": "fr"})
    assert page.status_code == 410 and "Ce lien a expiré" in visible(page.text)
    answer = await site.http.post(old, **ONE_CLICK)  # type: ignore[arg-type]
    assert answer.status_code == 410 and site.sink.submitted == []

"""The subject's one-click withdrawal of consent (Art. 7(3)): ``/consent/{token}``, the link in every email the
engine sends to a subject and the ``List-Unsubscribe`` URI of its headers (:class:`ConsentLinks`).

* ``GET`` shows, in the email's language, every purpose of the controller profile based on consent, each with
  one button (and one for all of them), or "already withdrawn". The token proves control of the address, which
  is all Art. 7(3) lets the controller ask: withdrawing is as easy as giving.
* ``POST`` with a button's form (signed for the token) withdraws that purpose (or all); ``POST`` with the body
  ``List-Unsubscribe=One-Click`` (RFC 8058, sent by the mail client's own unsubscribe button, with no cookie and
  no page) withdraws every *marketing* consent purpose at once and answers JSON.
* Idempotent: the purposes the ledger already records as withdrawn for the address (blind index), or that a press
  of the last hour already asked for (a shared guard, so a double click on two replicas counts once), start no
  request: the answer says "already withdrawn". Otherwise one ``consent_withdrawal`` request starts, carried out
  the same day, and its reply says what each system did.
* A bad token answers 403, an expired one 410: a page for a browser, JSON for the one-click POST.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from dsr.domain.model import Channel, ConsentPurpose
from dsr.store.guards import Guards
from dsr.store.links import MAX_TOKEN_LENGTH, ConsentLinks, ExpiredLink, InvalidLink
from dsr.web.body import BodyTooLarge, read_limited_body
from intake.service import IntakeSink, IntakeUnavailable, RateLimited
from intake.submission import Submission, SubmissionError
from intake.web.pages import FormRefused, choose_language, first_values, read_form, render, security_headers

__all__ = ["ONE_CLICK", "consent_router"]

ONE_CLICK = "List-Unsubscribe=One-Click"
"""The body a mail client POSTs to a List-Unsubscribe URI (RFC 8058 section 3.1)."""
PRESS_KEEP = timedelta(hours=1)
"""A press is remembered this long, so a second click while the first request runs starts nothing."""
_MAX_FORM_BYTES = 1024
_MAX_FIELDS = 4

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Withdraw your consent",
        "intro": "Withdrawing your consent is as easy as giving it: one button, no other proof. We stop, today, "
                 "using your data for the purpose you choose, in every system where we use it for that purpose, "
                 "and email you what was done. What was done before stays lawful (Article 7(3) GDPR).",
        "withdraw": "Withdraw",
        "withdraw_all": "Withdraw every consent listed here",
        "already": "Already withdrawn",
        "done_title": "Your consent is withdrawn",
        "done_body": "We are stopping it now in every system concerned; our email will tell you, system by system, "
                     "what was done.",
        "already_title": "Already withdrawn",
        "already_body": "You had already withdrawn this consent: there is nothing more to do.",
        "none_title": "Nothing to withdraw",
        "none_body": "We use none of your data on the basis of your consent.",
        "invalid_title": "This link is not valid",
        "invalid_body": "Use the link of one of our emails as it was sent, or write to us.",
        "expired_title": "This link has expired",
        "expired_body": "Use the link of a more recent email of ours, or write to us: withdrawing stays as easy.",
        "form_title": "This page has expired",
        "form_body": "Open the link of our email again and press the button.",
        "busy_title": "Please try again in a few minutes",
        "busy_body": "We cannot take your withdrawal right now.",
    },
    "fr": {
        "title": "Retirer votre consentement",
        "intro": "Retirer votre consentement est aussi simple que de le donner : un bouton, aucun autre "
                 "justificatif. Nous cessons dès aujourd'hui d'utiliser vos données pour la finalité choisie, dans "
                 "chacun des systèmes où nous les utilisons à cette fin, et vous écrivons ce qui a été fait. Ce qui "
                 "a été fait avant reste licite (article 7, paragraphe 3, du RGPD).",
        "withdraw": "Retirer",
        "withdraw_all": "Retirer tous les consentements ci-dessus",
        "already": "Déjà retiré",
        "done_title": "Votre consentement est retiré",
        "done_body": "Nous y mettons fin maintenant dans chacun des systèmes concernés ; notre courriel vous "
                     "indiquera, système par système, ce qui a été fait.",
        "already_title": "Déjà retiré",
        "already_body": "Vous aviez déjà retiré ce consentement : il n'y a rien de plus à faire.",
        "none_title": "Rien à retirer",
        "none_body": "Nous n'utilisons aucune de vos données sur le fondement de votre consentement.",
        "invalid_title": "Ce lien n'est pas valide",
        "invalid_body": "Utilisez le lien de l'un de nos courriels tel qu'il a été envoyé, ou écrivez-nous.",
        "expired_title": "Ce lien a expiré",
        "expired_body": "Utilisez le lien d'un courriel plus récent, ou écrivez-nous : le retrait reste aussi simple.",
        "form_title": "Cette page a expiré",
        "form_body": "Ouvrez de nouveau le lien de notre courriel et appuyez sur le bouton.",
        "busy_title": "Merci de réessayer dans quelques minutes",
        "busy_body": "Nous ne pouvons pas enregistrer votre retrait pour le moment.",
    },
}

Purposes = Callable[[], list[ConsentPurpose]]
"""The consent purposes of the controller profile (read at each request: an edited dsr.toml is followed)."""
Withdrawn = Callable[[str], set[str]]
"""``withdrawn(email)``: the purposes the ledger records as withdrawn for the address (synchronous)."""


def consent_router(
    links: ConsentLinks,
    sink: IntakeSink,
    purposes: Purposes,
    withdrawn: Withdrawn,
    *,
    guards: Guards,
    press_key: Callable[[str], str],
    default_language: str = "fr",
    public_path: str = "",
    clock: Callable[[], datetime] | None = None,
) -> APIRouter:
    """``press_key(email)``: the address's blind index, naming its presses in the shared guard."""
    router = APIRouter()
    now_fn = clock or (lambda: datetime.now(UTC))

    def page(request: Request, status: int, lang: str, key: str = "", **context: Any) -> HTMLResponse:
        words = WORDS[lang]
        title = words[f"{key}_title"] if key else words["title"]
        paragraphs = [words[f"{key}_body"]] if key else [words["intro"]]
        return render(request, "consent.html", {"lang": lang, "text": words, "title": title,
                                                "paragraphs": paragraphs, "purposes": [], **context},
                      status=status, headers=security_headers(noindex=True))

    def opened(request: Request, token: str) -> tuple[str, str] | tuple[int, str]:
        """``(email, language)``, or ``(status, key)`` of the refusal."""
        if len(token) > MAX_TOKEN_LENGTH:
            return 403, "invalid"
        try:
            email, lang = links.open(token, now=now_fn())
        except ExpiredLink:
            return 410, "expired"
        except InvalidLink:
            return 403, "invalid"
        return email, lang if lang in WORDS else default_language

    def refused(request: Request, status: int, key: str, *, as_json: bool) -> Response:
        if as_json:
            return JSONResponse({"detail": WORDS["en"][f"{key}_title"]}, status_code=status)
        lang = choose_language(request.headers.get("accept-language"), default_language)
        return page(request, status, lang, key)

    async def withdraw(email: str, lang: str, keys: list[str], client: str | None) -> str:
        """Start one withdrawal of ``keys`` not already withdrawn: ``done``, ``already``; raises for busy."""
        already = await run_in_threadpool(withdrawn, email)
        pending = sorted(set(keys) - already)
        if not pending:
            return "already"
        press = f"consent-press:{press_key(email)}:{','.join(pending)}".encode()
        if not await run_in_threadpool(guards.first_delivery, press, now_fn(), keep=PRESS_KEEP):
            return "already"  # the same press a moment ago: its request is under way
        await sink.submit(Submission(kind="consent_withdrawal", email=email, language=lang,
                                     channel=Channel.FORM.value, purposes=pending), client=client)
        return "done"

    def show(request: Request, token: str, lang: str, email_withdrawn: set[str], known: list[ConsentPurpose],
             status: int = 200, notice: str = "") -> HTMLResponse:
        if not known:
            return page(request, status, lang, "none")
        rows = [{"key": p.key, "name": p.name(lang), "withdrawn": p.key in email_withdrawn} for p in known]
        return page(request, status, lang, purposes=rows, notice=notice,
                    action=f"{public_path}/consent/{quote(token, safe='')}", form_token=links.form_token(token),
                    any_left=any(not row["withdrawn"] for row in rows))

    @router.get("/consent/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def consent_page(request: Request, token: str) -> Response:
        checked = opened(request, token)
        if isinstance(checked[0], int):
            return refused(request, checked[0], checked[1], as_json=False)
        email, lang = checked
        known = await run_in_threadpool(purposes)
        return show(request, token, lang, await run_in_threadpool(withdrawn, email), known)

    @router.post("/consent/{token}", include_in_schema=False)
    async def consent_press(request: Request, token: str) -> Response:
        try:
            fields = await _fields(request)
        except FormRefused as err:
            return JSONResponse({"detail": "not a form"}, status_code=err.status)
        one_click = fields.get("List-Unsubscribe") == "One-Click"
        checked = opened(request, token)
        if isinstance(checked[0], int):
            return refused(request, checked[0], checked[1], as_json=one_click)
        email, lang = checked
        known = await run_in_threadpool(purposes)
        client = request.client.host if request.client else None
        if one_click:
            keys = [p.key for p in known if p.marketing]
            if not keys:
                return JSONResponse({"status": "nothing_to_withdraw", "purposes": []})
        else:
            if not links.check_form_token(token, fields.get("form")):
                return refused(request, 403, "form", as_json=False)
            chosen = fields.get("purpose", "")
            keys = [p.key for p in known] if chosen == "all" else [p.key for p in known if p.key == chosen]
            if not keys:
                return show(request, token, lang, await run_in_threadpool(withdrawn, email), known, status=400)
        try:
            result = await withdraw(email, lang, keys, client)
        except RateLimited as err:
            if one_click:
                return JSONResponse({"detail": str(err)}, status_code=429,
                                    headers={"Retry-After": str(err.retry_after)})
            return page(request, 429, lang, "busy")
        except (IntakeUnavailable, SubmissionError):
            if one_click:
                return JSONResponse({"detail": "unavailable, try again later"}, status_code=503)
            return page(request, 503, lang, "busy")
        if one_click:
            return JSONResponse({"status": "withdrawn" if result == "done" else "already_withdrawn",
                                 "purposes": keys})
        return page(request, 200, lang, "done" if result == "done" else "already")

    return router


_MULTIPART_ONE_CLICK = re.compile(rb'name="?List-Unsubscribe"?\r?\n(?:[^\r\n]+\r?\n)*\r?\nOne-Click\r?\n')


async def _fields(request: Request) -> dict[str, str]:
    """The posted fields: an urlencoded form (the page's buttons, most mail clients), or the multipart/form-data
    body RFC 8058 also allows, from which only ``List-Unsubscribe=One-Click`` is read."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "multipart/form-data":
        return first_values(await read_form(request, max_bytes=_MAX_FORM_BYTES, max_fields=_MAX_FIELDS))
    try:
        body = await read_limited_body(request, _MAX_FORM_BYTES)
    except BodyTooLarge:
        raise FormRefused(413) from None
    return {"List-Unsubscribe": "One-Click"} if _MULTIPART_ONE_CLICK.search(body) else {}


def press_index(index: Callable[[str], str]) -> Callable[[str], str]:
    """The blind index of an address, shortened: the guard's key never holds the address itself."""
    return lambda email: hashlib.sha256(index(email.strip().lower()).encode()).hexdigest()[:32]

"""Identity confirmation pages: ``/verify/{token}`` (the link) and ``/verify`` (reference + code).

The identity email of a request whose policy is ``email`` carries a signed link and, unless the request is an
erasure or a rectification (link only: :data:`dsr.domain.model.LINK_ONLY_KINDS`), an 8-character code such as
``K7QM-4XPD`` (:class:`dsr.store.links.IdentityLinks`). Opening the link never confirms by itself: mail scanners and
link previews open links too. It shows a button; pressing it (a POST carrying a form value bound to the token)
sends the ``confirm_identity`` update. ``/verify`` is the same without the link: the reference and the
code, typed. Wrong codes count against the request (:data:`MAX_ATTEMPTS`, then a lockout; and
``max_wrong`` in all, :data:`dsr.store.guards.MAX_WRONG_ANSWERS` by default, after which the request's code is
closed for good, only the link works, and the operator is told once through ``on_locked``) and against the
client address (:data:`intake.app.MAX_CLIENT_ATTEMPTS`); every answer, right or wrong, is throttled per client
and overall (:class:`dsr.store.guards.AnswerThrottle`). All of it in the ledger's database, so every replica counts
the same; comparisons are constant-time, and the pages say nothing about whether a reference exists, whether
a code was offered for it, or whether its code is closed: all of those answer "does not match".

Only references the ledger knows are counted per request: a made-up reference is counted for the client that
typed it (per client and reference, so that client sees the same lock as for a real one), which keeps
floods of made-up references from filling the table or locking anyone else out.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from dsr.store.guards import DEFAULT_THROTTLE, MAX_WRONG_ANSWERS, AnswerThrottle, AttemptLimits, Guards, Verdict
from dsr.store.links import MAX_TOKEN_LENGTH, ExpiredLink, IdentityLinks, InvalidLink
from dsr.web.body import BodyTooLarge, read_limited_body
from intake.app import (
    CSP,
    MAX_CLIENT_ATTEMPTS,
    _page,
    _parse_form,
    choose_language,
)
from intake.service import IdentityOutcome, IntakeUnavailable
from templates import format_date

MAX_ATTEMPTS = 5
LOCKOUT = timedelta(minutes=15)
VERIFY_SCOPE = "verify"
_REFERENCE = re.compile(r"^dsr-\d{4}-\d{2}-[0-9A-Z]{6}$")

CodeLockedHook = Callable[[str, str, int], Awaitable[None]]
"""``on_locked(request_id, page, wrong)``: the answer just counted closed the request's code for good (called once
per request and page): record it and tell the operator."""
Confirmer = Callable[[str, str], Awaitable[IdentityOutcome]]
"""``confirm(request_id, proof)`` with proof ``link`` or ``code``."""
Exists = Callable[[str], bool]
"""``exists(request_id)``: the ledger knows the request (synchronous; runs in a worker thread)."""
LinkOnly = Callable[[str], bool]
"""``link_only(request_id)``: no code was offered for the request (an erasure or a rectification,
:data:`dsr.domain.model.LINK_ONLY_KINDS`): a code typed for it is wrong, whatever it is (synchronous)."""

_TEXT = {
    "en": {
        "title": "Confirm your request",
        "intro": "To protect your data, we check that the request really comes from the owner of the email "
        "address it was sent from. Press the button to confirm that you made request {reference}.",
        "button": "I confirm this request",
        "code_title": "Confirm your request with a code",
        "code_intro": "Enter the reference of your request and the 8-character code from our email.",
        "reference": "Request reference",
        "reference_hint": "For example dsr-2026-11-7KQ3FJ.",
        "code": "Confirmation code",
        "code_hint": "Letters and digits, for example K7QM-4XPD, with or without the dash.",
        "wrong": "This reference and code do not match. Check our email and try again, or use the link in it.",
        "confirmed_title": "Thank you: your request is confirmed",
        "confirmed_body": "We are now handling it and will reply by {deadline} at the latest.",
        "already_title": "This request was already confirmed",
        "already_body": "There is nothing more to do. We will reply by email.",
        "closed_title": "This request is closed",
        "closed_body": "It can no longer be confirmed. You can make a new request at any time.",
        "invalid_title": "This link is not valid",
        "invalid_body": "Check that you copied the whole link from our email, or enter the code on the "
        "confirmation page.",
        "expired_title": "This link has expired",
        "expired_body": "You can make a new request at any time.",
        "locked_title": "Too many attempts",
        "locked_body": "For your security, confirmation is locked for {minutes} minutes. Try again later.",
        "form_invalid_title": "This form is not valid",
        "form_invalid_body": "Open the link from our email again.",
        "error_title": "A temporary problem prevented the confirmation",
        "error_body": "Please try again in a few minutes.",
        "bad_form_title": "The form could not be read",
    },
    "fr": {
        "title": "Confirmez votre demande",
        "intro": "Pour protéger vos données, nous vérifions que la demande vient bien du titulaire de l’adresse "
        "électronique qui l’a envoyée. Appuyez sur le bouton pour confirmer que vous avez fait la demande "
        "{reference}.",
        "button": "Je confirme cette demande",
        "code_title": "Confirmez votre demande avec un code",
        "code_intro": "Saisissez la référence de votre demande et le code de 8\u00a0caractères de notre courriel.",
        "reference": "Référence de la demande",
        "reference_hint": "Par exemple dsr-2026-11-7KQ3FJ.",
        "code": "Code de confirmation",
        "code_hint": "Lettres et chiffres, par exemple K7QM-4XPD, avec ou sans le tiret.",
        "wrong": "Cette référence et ce code ne correspondent pas. Vérifiez notre courriel et réessayez, ou "
        "utilisez le lien qu’il contient.",
        "confirmed_title": "Merci\u00a0: votre demande est confirmée",
        "confirmed_body": "Nous la traitons et vous répondrons au plus tard le {deadline}.",
        "already_title": "Cette demande était déjà confirmée",
        "already_body": "Vous n’avez plus rien à faire. Nous vous répondrons par courriel.",
        "closed_title": "Cette demande est clôturée",
        "closed_body": "Elle ne peut plus être confirmée. Vous pouvez faire une nouvelle demande à tout moment.",
        "invalid_title": "Ce lien n’est pas valide",
        "invalid_body": "Vérifiez que vous avez copié le lien complet de notre courriel, ou saisissez le code "
        "sur la page de confirmation.",
        "expired_title": "Ce lien a expiré",
        "expired_body": "Vous pouvez faire une nouvelle demande à tout moment.",
        "locked_title": "Trop de tentatives",
        "locked_body": "Pour votre sécurité, la confirmation est bloquée pendant {minutes}\u00a0minutes. "
        "Réessayez plus tard.",
        "form_invalid_title": "Ce formulaire n’est pas valide",
        "form_invalid_body": "Ouvrez de nouveau le lien de notre courriel.",
        "error_title": "Un problème temporaire a empêché la confirmation",
        "error_body": "Veuillez réessayer dans quelques minutes.",
        "bad_form_title": "Le formulaire n’a pas pu être lu",
    },
}


def verify_router(
    links: IdentityLinks,
    confirm: Confirmer,
    *,
    guards: Guards,
    exists: Exists,
    link_only: LinkOnly = lambda _request_id: False,
    max_wrong: int = MAX_WRONG_ANSWERS,
    throttle: AnswerThrottle = DEFAULT_THROTTLE,
    on_locked: CodeLockedHook | None = None,
    default_language: str = "fr",
    public_path: str = "",
    clock: Callable[[], datetime] | None = None,
) -> APIRouter:
    router = APIRouter()
    now_fn = clock or (lambda: datetime.now(UTC))
    limits = AttemptLimits(max_attempts=MAX_ATTEMPTS, lockout=LOCKOUT, max_client_attempts=MAX_CLIENT_ATTEMPTS,
                           max_wrong=max_wrong)

    def respond(request: Request, status: int, title: str, paragraphs: list[str], body: str = "",
                headers: dict[str, str] | None = None) -> HTMLResponse:
        lang = choose_language(request.headers.get("accept-language"), default_language)
        page = _page(lang, title, paragraphs, body)
        return HTMLResponse(page, status_code=status, headers={
            "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Vary": "Accept-Language",
            **(headers or {}),
        })

    def text(request: Request) -> dict[str, str]:
        return _TEXT[choose_language(request.headers.get("accept-language"), default_language)]

    def message(request: Request, key: str, status: int = 200, **fmt: str) -> HTMLResponse:
        t = text(request)
        return respond(request, status, t[f"{key}_title"], [t[f"{key}_body"].format(**fmt)])

    async def outcome_page(request: Request, request_id: str, proof: str, reference: str = "") -> HTMLResponse:
        try:
            outcome = await confirm(request_id, proof)
        except IntakeUnavailable:
            return message(request, "error", 503)
        if outcome.state == "refused":
            # The request's policy takes no such proof (a document request, an erasure typed by code): the same
            # answer as a wrong code or a bad link, so the page tells nothing about the request.
            if proof == "code":
                return code_form(request, status=403, wrong=True, reference=reference)
            return message(request, "invalid", 403)
        lang = choose_language(request.headers.get("accept-language"), default_language)
        if outcome.state == "confirmed":
            deadline = format_date(outcome.deadline, lang) if outcome.deadline else ""
            return message(request, "confirmed", deadline=deadline)
        if outcome.state == "already":
            return message(request, "already")
        return message(request, "closed", 410)

    def check_token(request: Request, token: str) -> str | HTMLResponse:
        if len(token) > MAX_TOKEN_LENGTH:
            return message(request, "invalid", 403)
        try:
            return links.verify(token, now=now_fn())
        except ExpiredLink:
            return message(request, "expired", 410)
        except InvalidLink:
            return message(request, "invalid", 403)

    def locked(request: Request, left: timedelta) -> HTMLResponse:
        seconds = max(1, math.ceil(left.total_seconds()))
        t = text(request)
        minutes = max(1, math.ceil(seconds / 60))
        return respond(request, 429, t["locked_title"], [t["locked_body"].format(minutes=minutes)],
                       headers={"Retry-After": str(seconds)})

    async def read_form(request: Request) -> dict[str, str] | HTMLResponse:
        try:
            raw = await read_limited_body(request, 4096)
        except BodyTooLarge:
            return respond(request, 413, text(request)["bad_form_title"], [], headers={"Connection": "close"})
        if request.headers.get("content-type", "").partition(";")[0].strip().lower() != \
                "application/x-www-form-urlencoded":
            return respond(request, 415, text(request)["bad_form_title"], [])
        try:
            return _parse_form(raw)
        except ValueError:
            return respond(request, 400, text(request)["bad_form_title"], [])

    @router.get("/verify/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def show_link(request: Request, token: str) -> Response:
        checked = check_token(request, token)
        if isinstance(checked, HTMLResponse):
            return checked
        t = text(request)
        action = html.escape(f"{public_path}/verify/{quote(token, safe='')}")
        body = (
            f'<form method="post" action="{action}">\n'
            f'<input type="hidden" name="form" value="{html.escape(links.form_token(token))}">\n'
            f'<button type="submit">{html.escape(t["button"])}</button>\n</form>'
        )
        return respond(request, 200, t["title"], [t["intro"].format(reference=checked)], body)

    @router.post("/verify/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def confirm_link(request: Request, token: str) -> Response:
        checked = check_token(request, token)
        if isinstance(checked, HTMLResponse):
            return checked
        fields = await read_form(request)
        if isinstance(fields, HTMLResponse):
            return fields
        if not links.check_form_token(token, fields.get("form")):
            return message(request, "form_invalid", 403)
        return await outcome_page(request, checked, "link")

    def code_form(request: Request, *, status: int = 200, wrong: bool = False, reference: str = "") -> HTMLResponse:
        t = text(request)
        error = f'<p id="verify-error" class="error" role="alert">{html.escape(t["wrong"])}</p>' if wrong else ""
        invalid = ' aria-invalid="true"' if wrong else ""
        described = " verify-error" if wrong else ""
        body = (
            f'{error}<form method="post" action="{html.escape(public_path)}/verify">\n'
            f'<label for="reference">{html.escape(t["reference"])}</label>\n'
            f'<p id="reference-hint" class="hint">{html.escape(t["reference_hint"])}</p>\n'
            f'<input type="text" id="reference" name="reference" required maxlength="40" autocomplete="off" '
            f'value="{html.escape(reference)}" aria-describedby="reference-hint{described}"{invalid}>\n'
            f'<label for="code">{html.escape(t["code"])}</label>\n'
            f'<p id="code-hint" class="hint">{html.escape(t["code_hint"])}</p>\n'
            f'<input type="text" id="code" name="code" required maxlength="20" autocapitalize="characters" '
            f'spellcheck="false" autocomplete="one-time-code" aria-describedby="code-hint{described}"{invalid}>\n'
            f'<button type="submit">{html.escape(t["button"])}</button>\n</form>'
        )
        return respond(request, status, t["code_title"], [t["code_intro"]], body)

    @router.get("/verify", response_class=HTMLResponse, include_in_schema=False)
    async def show_code_form(request: Request) -> Response:
        return code_form(request)

    @router.post("/verify", response_class=HTMLResponse, include_in_schema=False)
    async def confirm_code(request: Request) -> Response:
        client = request.client.host if request.client else None
        # Every answer counts against this client and against everyone, before it is even read: guesses spread
        # over many references or many addresses are bounded too.
        refused = await run_in_threadpool(
            guards.hit, throttle.windows(VERIFY_SCOPE, guards.client_key(client)), now_fn())
        if refused is not None:
            return locked(request, timedelta(seconds=refused.retry_after))
        fields = await read_form(request)
        if isinstance(fields, HTMLResponse):
            return fields
        reference = fields.get("reference", "").strip()[:40]
        # References are read out on the phone: accept any case; ids are "dsr-" + upper-case digits/letters.
        request_id = "dsr-" + reference[4:].upper() if reference.lower().startswith("dsr-") else reference
        if not _REFERENCE.match(request_id):
            return code_form(request, status=400, wrong=True, reference=reference)
        typed_right = links.check_request_code(request_id, fields.get("code", ""))

        def judge() -> Verdict:
            # Whether the request exists decides only where the answer is counted, never what the page says; a
            # request no code was offered for takes none (the right one included: it can only have been guessed),
            # and neither does a reference the ledger does not know (nothing to confirm: the same page).
            tracked = exists(request_id)
            right = typed_right and tracked and not link_only(request_id)
            return guards.judge(VERIFY_SCOPE, request_id, client, now_fn(), right=right, limits=limits,
                                tracked=tracked)

        verdict = await run_in_threadpool(judge)
        if verdict.wait is not None:
            return locked(request, verdict.wait)
        if verdict.capped_now and on_locked is not None:
            await on_locked(request_id, VERIFY_SCOPE, max_wrong)
        if verdict.outcome in ("wrong", "closed"):  # a closed code answers like a wrong one: the link still works
            return code_form(request, status=403, wrong=True, reference=reference)
        return await outcome_page(request, request_id, "code", reference)

    return router

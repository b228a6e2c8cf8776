"""Identity confirmation pages: ``/verify/{token}`` (the link) and ``/verify`` (reference + code).

The identity email of a request whose policy is ``email`` carries a signed link and, unless the request is an
erasure or a rectification (link only: :data:`dsr.domain.model.LINK_ONLY_KINDS`), an 8-character code such as
``K7QM-4XPD`` (:class:`dsr.store.links.IdentityLinks`). Opening the link never confirms by itself: mail scanners and
link previews open links too. It shows a button; pressing it (a POST carrying a form value bound to the token)
sends the ``confirm_identity`` update. ``/verify`` is the same without the link: the reference and the
code, typed. Wrong codes count as on the download page (:class:`intake.web.attempts.Attempts`): against the
request (:data:`~intake.web.attempts.MAX_ATTEMPTS`, then a lockout; and ``max_wrong`` in all,
:data:`dsr.store.guards.MAX_WRONG_ANSWERS` by default, after which the request's code is closed for good, only the
link works, and the operator is told once through ``on_locked``) and against the client address; every
answer, right or wrong, is throttled per client and overall. All of it in the ledger's database, so every
replica counts the same; comparisons are constant-time, and the pages say nothing about whether a reference
exists, whether a code was offered for it, or whether its code is closed: all of those answer "does not
match".

Only references the ledger knows are counted per request: a made-up reference is counted for the client that
typed it (per client and reference, so that client sees the same lock as for a real one), which keeps
floods of made-up references from filling the table or locking anyone else out.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dsr.store.guards import DEFAULT_THROTTLE, MAX_WRONG_ANSWERS, AnswerThrottle, AttemptLimits, Guards
from dsr.store.links import MAX_TOKEN_LENGTH, ExpiredLink, IdentityLinks, InvalidLink
from intake.service import IdentityOutcome, IntakeUnavailable
from intake.web.attempts import LOCKOUT, MAX_ATTEMPTS, MAX_CLIENT_ATTEMPTS, Attempts, CodeLockedHook, wait_in_minutes
from intake.web.pages import FormRefused, choose_language, first_values, read_form, render, security_headers
from intake.web.wording import VERIFY
from templates import format_date

__all__ = ["VERIFY_SCOPE", "verify_router"]

VERIFY_SCOPE = "verify"
MAX_FORM_BYTES = 4096
_MAX_FIELDS = 10
_REFERENCE = re.compile(r"^dsr-\d{4}-\d{2}-[0-9A-Z]{6}$")

Confirmer = Callable[[str, str], Awaitable[IdentityOutcome]]
"""``confirm(request_id, proof)`` with proof ``link`` or ``code``."""
Exists = Callable[[str], bool]
"""``exists(request_id)``: the ledger knows the request (synchronous; runs in a worker thread)."""
LinkOnly = Callable[[str], bool]
"""``link_only(request_id)``: no code was offered for the request (an erasure or a rectification,
:data:`dsr.domain.model.LINK_ONLY_KINDS`): a code typed for it is wrong, whatever it is (synchronous)."""


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
    controller_name: str = "",
) -> APIRouter:
    """``/verify`` pages; ``controller_name`` (the profile's legal name) heads every page."""
    router = APIRouter()
    now_fn = clock or (lambda: datetime.now(UTC))
    attempts = Attempts(
        scope=VERIFY_SCOPE,
        guards=guards,
        limits=AttemptLimits(max_attempts=MAX_ATTEMPTS, lockout=LOCKOUT, max_client_attempts=MAX_CLIENT_ATTEMPTS,
                             max_wrong=max_wrong),
        throttle=throttle,
        clock=now_fn,
        on_locked=on_locked,
    )

    def language(request: Request) -> str:
        return choose_language(request.headers.get("accept-language"), default_language)

    def respond(request: Request, status: int, template: str, context: dict[str, Any],
                headers: dict[str, str] | None = None) -> HTMLResponse:
        lang = language(request)
        return render(request, template, {"lang": lang, "text": VERIFY[lang], "paragraphs": [],
                                          "controller_name": controller_name, **context},
                      status=status, headers=security_headers(extra=headers))

    def message(request: Request, key: str, status: int = 200, **fmt: str) -> HTMLResponse:
        text = VERIFY[language(request)]
        return respond(request, status, "message.html", {
            "title": text[f"{key}_title"], "paragraphs": [text[f"{key}_body"].format(**fmt)]})

    def title_only(request: Request, status: int, key: str, headers: dict[str, str] | None = None) -> HTMLResponse:
        return respond(request, status, "message.html", {"title": VERIFY[language(request)][key]}, headers)

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
        if outcome.state == "confirmed":
            deadline = format_date(outcome.deadline, language(request)) if outcome.deadline else ""
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
        seconds, minutes = wait_in_minutes(left)
        text = VERIFY[language(request)]
        return respond(request, 429, "message.html", {
            "title": text["locked_title"], "paragraphs": [text["locked_body"].format(minutes=minutes)],
        }, headers={"Retry-After": str(seconds)})

    async def posted_form(request: Request) -> dict[str, str] | HTMLResponse:
        try:
            return first_values(await read_form(request, max_bytes=MAX_FORM_BYTES, max_fields=_MAX_FIELDS))
        except FormRefused as refused:
            return title_only(request, refused.status, "bad_form_title",
                              {"Connection": "close"} if refused.status == 413 else None)

    @router.get("/verify/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def show_link(request: Request, token: str) -> Response:
        checked = check_token(request, token)
        if isinstance(checked, HTMLResponse):
            return checked
        text = VERIFY[language(request)]
        return respond(request, 200, "verify_link.html", {
            "title": text["title"],
            "paragraphs": [text["intro"].format(reference=checked)],
            "action": f"{public_path}/verify/{quote(token, safe='')}",
            "form_token": links.form_token(token),
        })

    @router.post("/verify/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def confirm_link(request: Request, token: str) -> Response:
        checked = check_token(request, token)
        if isinstance(checked, HTMLResponse):
            return checked
        fields = await posted_form(request)
        if isinstance(fields, HTMLResponse):
            return fields
        if not links.check_form_token(token, fields.get("form")):
            return message(request, "form_invalid", 403)
        return await outcome_page(request, checked, "link")

    def code_form(request: Request, *, status: int = 200, wrong: bool = False, reference: str = "") -> HTMLResponse:
        text = VERIFY[language(request)]
        return respond(request, status, "verify_code.html", {
            "title": text["code_title"],
            "paragraphs": [text["code_intro"]],
            "wrong": wrong,
            "reference": reference,
            "public_path": public_path,
        })

    @router.get("/verify", response_class=HTMLResponse, include_in_schema=False)
    async def show_code_form(request: Request) -> Response:
        return code_form(request)

    @router.post("/verify", response_class=HTMLResponse, include_in_schema=False)
    async def confirm_code(request: Request) -> Response:
        client = request.client.host if request.client else None
        # Every answer counts against this client and against everyone, before it is even read: guesses spread
        # over many references or many addresses are bounded too.
        left = await attempts.throttled(client)
        if left is not None:
            return locked(request, left)
        fields = await posted_form(request)
        if isinstance(fields, HTMLResponse):
            return fields
        reference = fields.get("reference", "").strip()[:40]
        # References are read out on the phone: accept any case; ids are "dsr-" + upper-case digits/letters.
        request_id = "dsr-" + reference[4:].upper() if reference.lower().startswith("dsr-") else reference
        if not _REFERENCE.match(request_id):
            return code_form(request, status=400, wrong=True, reference=reference)
        typed_right = links.check_request_code(request_id, fields.get("code", ""))

        def answer() -> tuple[bool, bool]:
            # Whether the request exists decides only where the answer is counted, never what the page says; a
            # request no code was offered for takes none (the right one included: it can only have been guessed),
            # and neither does a reference the ledger does not know (nothing to confirm: the same page).
            tracked = exists(request_id)
            return typed_right and tracked and not link_only(request_id), tracked

        verdict = await attempts.judge(request_id, client, answer)
        if verdict.wait is not None:
            return locked(request, verdict.wait)
        if verdict.outcome in ("wrong", "closed"):  # a closed code answers like a wrong one: the link still works
            return code_form(request, status=403, wrong=True, reference=reference)
        return await outcome_page(request, request_id, "code", reference)

    return router

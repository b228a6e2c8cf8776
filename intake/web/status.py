"""The subject's status page: ``/status/{token}``, the link of the acknowledgement (:class:`StatusLinks`).

It shows where the request stands, in the request's own language: its stage, the day it was received, the day
the reply is due, an extension and its reason (the words the subject was sent), and what we are waiting for (their
identity confirmation, a document, our team, nothing). A request about a deceased person (art. 85 loi 78-17) is
never the sender's own: what it waits for is the proof of the death and of the sender's *quality* (heir, executor,
person designated in the directives), and, once documents arrived, our team's review of them. No personal data
beyond the reference: no name, no address, nothing the subject wrote. It is read from the ledger, so it keeps
working after the request's workflow has closed and Temporal has forgotten it.

While identity is awaited by email, a button sends the identity email again (the ``resend_identity_email``
update: the reminder with a fresh link). The button's form carries a field signed for the token (no cookie
needed), and every press counts in the ledger's database, shared by every replica: per request (three a day),
and per client address and overall with the answer throttle of the other pages (``DSR_ANSWERS_PER_CLIENT_HOUR``,
``DSR_ANSWERS_PER_HOUR``); beyond, 429. The answer is the same whether an email went or not: nothing to learn.
A bad token answers 403, an expired one 410, each with a page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from dsr.domain.model import Outcome, RequestKind, Stage
from dsr.store.guards import DEFAULT_THROTTLE, AnswerThrottle, Guards, RateWindow
from dsr.store.ledger import Ledger
from dsr.store.links import MAX_TOKEN_LENGTH, ExpiredLink, InvalidLink, StatusLinks
from intake.service import IntakeUnavailable
from intake.web.attempts import wait_in_minutes
from intake.web.pages import FormRefused, choose_language, first_values, read_form, render, security_headers
from intake.web.wording import STATUS
from templates import format_date

__all__ = ["STATUS_SCOPE", "StatusView", "status_router", "status_view"]

STATUS_SCOPE = "status"
RESENDS_PER_DAY = 3
"""Identity emails a request's status page sends again per day."""
_MAX_FORM_BYTES = 1024
_MAX_FIELDS = 4


@dataclass(frozen=True)
class StatusView:
    """What the status page shows of a request: nothing that names the subject."""

    reference: str
    kind: RequestKind
    language: str
    stage: Stage
    outcome: Outcome | None
    received: date  # in the controller's zone
    deadline: date
    extended: bool
    previous_deadline: date | None  # before the extension
    extension_reason: str
    waiting_for: str  # identity_email | identity_document | identity_review | quality_document | quality_review |
    # team | us | "" (closed)
    documents: int = 0  # files received (form, email) since proof was last asked for


def status_view(ledger: Ledger, request_id: str, timezone: str) -> StatusView | None:
    """The request as its status page shows it, from the ledger alone; None if the ledger does not know it."""
    row = ledger.get_request(request_id)
    if row is None:
        return None
    events = ledger.events(request_id)
    extension = next((e for e in reversed(events) if e.event == "extended"), None)
    previous = extension.details.get("previous_deadline") if extension else None
    return StatusView(
        reference=row.request_id, kind=row.kind, language=row.language.value, stage=row.stage, outcome=row.outcome,
        received=row.received_at.astimezone(ZoneInfo(timezone)).date(), deadline=row.deadline,
        extended=row.extended, previous_deadline=date.fromisoformat(previous) if previous else None,
        extension_reason=extension.note if extension else "", waiting_for=_waiting_for(row.kind, row.stage, events),
        documents=documents_received(events))


def _count(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def documents_received(events: list[Any]) -> int:
    """Files the sender sent as proof since it was last asked for: uploaded with the form (``received`` or
    ``duplicate_attached``: ``documents``) or attached to an email (``subject_wrote``: ``attachments``); a doubt
    asks anew."""
    count = 0
    for e in events:
        if e.event == "identity_doubt":
            count = 0
        elif e.event == "received":
            count += _count(e.details.get("documents", 0))
        elif e.event == "subject_wrote":
            count += _count(e.details.get("attachments", 0))
        elif e.event == "duplicate_attached":  # the form's documents of a submission that joined this request
            count += _count(e.details.get("documents", 0))
    return count


def _waiting_for(kind: RequestKind, stage: Stage, events: list[Any]) -> str:
    if stage == Stage.CLOSED:
        return ""
    if stage == Stage.AWAITING_IDENTITY:
        if kind == RequestKind.POST_MORTEM:
            # Art. 85: the sender proves the death and their quality by documents an operator reviews.
            return "quality_review" if documents_received(events) else "quality_document"
        asked = next((e for e in reversed(events) if e.event in ("identity_requested", "identity_doubt")), None)
        # A doubt asks for a document whatever the policy; else the policy's method, recorded when identity was asked.
        if asked is not None and asked.event == "identity_requested" and asked.details.get("method") == "email":
            return "identity_email"
        return "identity_review" if documents_received(events) else "identity_document"
    if stage == Stage.NEEDS_ATTENTION:
        return "team"
    return "us"


def _word(text: dict[str, str], key: str, own: str) -> str:
    """The kind's own wording for ``key`` where it has one (``key + own``), else the common one."""
    return text.get(key + own) or text[key]


Reader = Callable[[str], StatusView | None]
"""``read(request_id)``: the request's view (synchronous; runs in a worker thread)."""
Resender = Callable[[str], Awaitable[bool]]
"""``resend(request_id)``: send the identity email again; False when the request takes none now. Raises
:class:`IntakeUnavailable` when the engine cannot be reached."""


def status_router(
    links: StatusLinks,
    read: Reader,
    resend: Resender,
    *,
    guards: Guards,
    throttle: AnswerThrottle = DEFAULT_THROTTLE,
    default_language: str = "fr",
    public_path: str = "",
    clock: Callable[[], datetime] | None = None,
) -> APIRouter:
    router = APIRouter()
    now_fn = clock or (lambda: datetime.now(UTC))

    def page(request: Request, status: int, lang: str, context: dict[str, Any],
             headers: dict[str, str] | None = None) -> HTMLResponse:
        return render(request, "status.html", {"lang": lang, "text": STATUS[lang], "paragraphs": [], "view": None,
                                               **context},
                      status=status, headers=security_headers(noindex=True, extra=headers))

    def message(request: Request, status: int, key: str, lang: str | None = None,
                headers: dict[str, str] | None = None, **fmt: str) -> HTMLResponse:
        lang = lang or choose_language(request.headers.get("accept-language"), default_language)
        text = STATUS[lang]
        return page(request, status, lang, {"title": text[f"{key}_title"],
                                            "paragraphs": [text[f"{key}_body"].format(**fmt)]}, headers)

    def opened(request: Request, token: str) -> str | HTMLResponse:
        if len(token) > MAX_TOKEN_LENGTH:
            return message(request, 403, "invalid")
        try:
            return links.verify(token, now=now_fn())
        except ExpiredLink:
            return message(request, 410, "expired")
        except InvalidLink:
            return message(request, 403, "invalid")

    async def view_of(request: Request, token: str) -> StatusView | HTMLResponse:
        checked = opened(request, token)
        if isinstance(checked, HTMLResponse):
            return checked
        view = await run_in_threadpool(read, checked)
        if view is None:  # an authentic link to a request the ledger lost: as if the link were bad
            return message(request, 404, "unknown")
        return view

    def show(request: Request, token: str, view: StatusView, *, notice: str = "", status: int = 200,
             headers: dict[str, str] | None = None) -> HTMLResponse:
        lang = view.language if view.language in STATUS else default_language
        text = STATUS[lang]
        # A post_mortem request waits for the sender's quality, not their identity: its own words where they differ.
        own = "_quality" if view.kind == RequestKind.POST_MORTEM else ""
        facts = [
            (text["reference"], view.reference),
            (text["request"], text[f"kind_{view.kind.value}"]),
            (text["received"], format_date(view.received, lang)),
            (text["stage"], _word(text, f"outcome_{view.outcome.value}", own)
             if view.outcome and view.stage == Stage.CLOSED else _word(text, f"stage_{view.stage.value}", own)),
        ]
        if view.stage != Stage.CLOSED:
            facts.append((text["deadline"], format_date(view.deadline, lang)))
        files = (text["files_one"] if view.documents == 1 else text["files_many"]).format(count=view.documents)
        extension = ""
        if view.extended:
            before = format_date(view.previous_deadline, lang) if view.previous_deadline else ""
            extension = text["extended_body"].format(previous=before) if before else text["extended_plain"]
        return page(request, status, lang, {
            "title": text["title"].format(reference=view.reference),
            "view": view,
            "facts": facts,
            "extension": extension,
            "extension_reason": view.extension_reason,
            "waiting": text[f"waiting_{view.waiting_for}"].format(files=files) if view.waiting_for
            else _word(text, f"closed_{(view.outcome or Outcome.FULFILLED).value}", own),
            "can_resend": view.waiting_for == "identity_email",
            "action": f"{public_path}/status/{quote(token, safe='')}",
            "form_token": links.form_token(token),
            "notice": notice,
        }, headers)

    @router.get("/status/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def status_page(request: Request, token: str) -> Response:
        view = await view_of(request, token)
        return view if isinstance(view, HTMLResponse) else show(request, token, view)

    @router.post("/status/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def resend_identity(request: Request, token: str) -> Response:
        view = await view_of(request, token)
        if isinstance(view, HTMLResponse):
            return view
        lang = view.language if view.language in STATUS else default_language
        try:
            fields = first_values(await read_form(request, max_bytes=_MAX_FORM_BYTES, max_fields=_MAX_FIELDS))
        except FormRefused as refused:
            return message(request, refused.status, "bad_form", lang)
        if not links.check_form_token(token, fields.get("form")):
            return message(request, 403, "form_invalid", lang)
        client = guards.client_key(request.client.host if request.client else None)
        windows = [RateWindow("request", f"{STATUS_SCOPE}-resend:request:{view.reference}", RESENDS_PER_DAY,
                              timedelta(days=1)), *throttle.windows(STATUS_SCOPE, client)]
        refused_hit = await run_in_threadpool(guards.hit, windows, now_fn())
        if refused_hit is not None:
            seconds, minutes = wait_in_minutes(timedelta(seconds=refused_hit.retry_after))
            return message(request, 429, "locked", lang, {"Retry-After": str(seconds)}, minutes=str(minutes))
        if view.waiting_for == "identity_email":
            try:
                await resend(view.reference)
            except IntakeUnavailable:
                return message(request, 503, "error", lang)
        # The same answer whether an email went or not (the request moved on meanwhile): the page says what holds.
        fresh = await run_in_threadpool(read, view.reference) or view
        return show(request, token, fresh, notice=STATUS[lang]["resent"])

    return router

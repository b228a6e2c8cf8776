"""The answer page of systems reached by a person: ``/answer/{token}``.

The email to a processor's privacy contact (or to an internal owner) links here; the token is signed, names the
request and the system (encrypted: :func:`activities.outside.task_token_id`) and expires
(:data:`activities.outside.LINK_GRACE` after the answer-by date). The page shows the request's reference, kind and
date, and takes one answer: done, no data, kept (legal basis and date), cannot (reason), with an export file for an
access or portability request. The form is bound to its token (a stateless form value, like the other pages)
and sent as ``multipart/form-data`` (read within :data:`MAX_BODY` by the standard library's MIME parser).

Pages: a bad or tampered token 403, an expired link 410, a task the ledger does not know 404, an answer already
recorded 409 (also when two answers race: the ledger lets one win), a form missing what the chosen answer
needs 400 (the form again, with what was typed), thanks 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dsr.domain.deadlines import receipt_date
from dsr.domain.model import AnswerStatus, OutsideAnswer, RequestKind
from dsr.domain.outside import AnswerRefused
from dsr.store.links import MAX_TOKEN_LENGTH, DownloadLinks, ExpiredLink, InvalidLink, last_valid_day
from dsr.store.tasks import OutsideTask
from dsr.web.body import BodyTooLarge, read_limited_body
from intake.answers import MAX_UPLOAD_BYTES, AnswerResult, ExportFile, UploadRefused
from intake.web.pages import choose_language, render, security_headers
from intake.web.wording import ANSWER
from templates import format_date, kind_label

__all__ = ["MAX_BODY", "answers_router"]

MAX_BODY = MAX_UPLOAD_BYTES + 64 * 1024
"""The form with its file: the file's limit and room for the other fields and the MIME framing."""
_MAX_PARTS = 10
_TAKES_FILE = (RequestKind.ACCESS, RequestKind.PORTABILITY)

TaskOf = Callable[[str, str], OutsideTask | None]
"""``task_of(request_id, system)`` from the ledger (synchronous; runs in a worker thread)."""
KindOf = Callable[[str], RequestKind | None]
Take = Callable[[str, str, OutsideAnswer, ExportFile | None], Awaitable[AnswerResult]]
"""``take(request_id, system, answer, file)``: :func:`intake.answers.record_answer`, bound to its parts."""


class _Unreadable(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], ExportFile | None]:
    if content_type.partition(";")[0].strip().lower() != "multipart/form-data":
        raise _Unreadable(415)
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _Unreadable(400)
    fields: dict[str, str] = {}
    upload: ExportFile | None = None
    for count, part in enumerate(message.iter_parts()):
        if count >= _MAX_PARTS:
            raise _Unreadable(400)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            if name == "file" and data:
                upload = ExportFile(name=filename[-200:], content_type=part.get_content_type(), data=data)
            continue
        try:
            fields.setdefault(name, data.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Unreadable(400) from None
    return fields, upload


def answers_router(
    links: DownloadLinks,
    *,
    task_of: TaskOf,
    kind_of: KindOf,
    take: Take,
    default_language: str = "fr",
    public_path: str = "",
    clock: Callable[[], datetime] | None = None,
    timezone: str = "UTC",
) -> APIRouter:
    router = APIRouter()
    now_fn = clock or (lambda: datetime.now(UTC))

    def language(request: Request) -> str:
        return choose_language(request.headers.get("accept-language"), default_language)

    def respond(request: Request, status: int, template: str, context: dict[str, Any]) -> HTMLResponse:
        lang = language(request)
        return render(request, template, {"lang": lang, "text": ANSWER[lang], "paragraphs": [], **context},
                      status=status, headers=security_headers(noindex=True))

    def message(request: Request, key: str, status: int, **fmt: str) -> HTMLResponse:
        text = ANSWER[language(request)]
        return respond(request, status, "message.html", {
            "title": text[f"{key}_title"], "paragraphs": [text[f"{key}_body"].format(**fmt)]})

    async def checked(request: Request, token: str) -> tuple[OutsideTask, RequestKind | None] | HTMLResponse:
        if len(token) > MAX_TOKEN_LENGTH:
            return message(request, "invalid", 403)
        try:
            carried = links.verify(token, now=now_fn())
        except ExpiredLink:
            return message(request, "expired", 410)
        except InvalidLink:
            return message(request, "invalid", 403)
        request_id, _, system = carried.rpartition(".")
        task = await asyncio.to_thread(task_of, request_id, system)
        if task is None:
            return message(request, "invalid", 404)
        if task.answer is not None and task.answer.status != AnswerStatus.NO_ANSWER:
            # An operator's no_answer (the request went on without it) still takes the system's own answer.
            return already(request, task)
        return task, await asyncio.to_thread(kind_of, request_id)

    def already(request: Request, task: OutsideTask) -> HTMLResponse:
        answered = task.answer.answered_at if task.answer is not None else None
        on = format_date(receipt_date(answered, timezone), language(request)) if answered else ""
        return message(request, "already", 409, answered_on=on)

    def form(request: Request, token: str, task: OutsideTask, kind: RequestKind | None, *, status: int = 200,
             error: str = "", typed: dict[str, str] | None = None) -> HTMLResponse:
        lang = language(request)
        text = ANSWER[lang]
        typed = typed or {}
        answer_by = last_valid_day(task.answer_by, timezone)  # the instant is the end of that day, the controller's
        kind_words = kind_label({"lang": lang}, kind.value, lang) if kind else ""
        return respond(request, status, "answer.html", {
            "title": text["title"],
            "paragraphs": [text["intro"].format(reference=task.request_id, kind=kind_words, system=task.system,
                                                answer_by=format_date(answer_by, lang))],
            "action": f"{public_path}/answer/{quote(token, safe='')}",
            "form_token": links.form_token(token),
            "takes_file": kind in _TAKES_FILE,
            "error": error,
            "chosen": typed.get("status", ""),
            "legal_basis": typed.get("legal_basis", "")[:300],
            "until": typed.get("until", "")[:10],
            "reason": typed.get("reason", "")[:2000],
        })

    @router.get("/answer/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def show(request: Request, token: str) -> Response:
        found = await checked(request, token)
        if isinstance(found, HTMLResponse):
            return found
        task, kind = found
        return form(request, token, task, kind)

    @router.post("/answer/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def answer(request: Request, token: str) -> Response:
        found = await checked(request, token)
        if isinstance(found, HTMLResponse):
            return found
        task, kind = found
        text = ANSWER[language(request)]
        try:
            body = await read_limited_body(request, MAX_BODY)
            fields, upload = _parse_multipart(request.headers.get("content-type", ""), body)
        except BodyTooLarge:
            return respond(request, 413, "message.html", {"title": text["too_large_title"]})
        except _Unreadable as unreadable:
            return respond(request, unreadable.status, "message.html", {"title": text["bad_form_title"]})
        if not links.check_form_token(token, fields.get("form")):
            return message(request, "form_invalid", 403)

        def again(key: str) -> HTMLResponse:
            return form(request, token, task, kind, status=400, error=text[key], typed=fields)

        try:
            status = AnswerStatus(fields.get("status", ""))
        except ValueError:
            return again("missing_status")
        if status == AnswerStatus.NO_ANSWER:  # the operator's, not the page's
            return again("missing_status")
        until: date | None = None
        if status == AnswerStatus.KEPT:
            if not fields.get("legal_basis", "").strip():
                return again("missing_basis")
            try:
                until = date.fromisoformat(fields.get("until", "").strip())
            except ValueError:
                return again("missing_until")
            if until <= receipt_date(now_fn(), timezone):  # a future day of the controller's calendar
                return again("missing_until")
        if status == AnswerStatus.CANNOT and not fields.get("reason", "").strip():
            return again("missing_reason")
        answer = OutsideAnswer(
            status=status, legal_basis=fields.get("legal_basis", "").strip()[:300] if until else "",
            kept_until=until, reason=fields.get("reason", "").strip()[:2000] if status == AnswerStatus.CANNOT else "",
            answered_by=task.type if task.type == "processor" else "owner", answered_at=now_fn())
        try:
            result = await take(task.request_id, task.system, answer,
                                upload if kind in _TAKES_FILE else None)
        except UploadRefused:
            return again("file_refused")
        except AnswerRefused:
            return again("missing_status")
        if result.state == "already":
            fresh = await asyncio.to_thread(task_of, task.request_id, task.system)
            return already(request, fresh or task)
        if result.state == "unknown":
            return message(request, "invalid", 404)
        return message(request, "thanks", 200, reference=task.request_id)

    return router

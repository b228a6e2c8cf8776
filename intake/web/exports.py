"""The download page of export bundles: ``/exports/{token}``.

Flow
----
1. ``GET /exports/{token}``: the token is checked (:class:`dsr.store.links.DownloadLinks`). Tampered: 403 page
   "This link is not valid"; expired: 410 page "This link has expired; ask for a new one". Neither page
   says anything else (no reference, no expiry, no hint which check failed). A valid token gets a small
   form (French or English by ``?lang``, which the reply's link carries, else ``Accept-Language``), headed by
   the company's name and naming the link's last day as the email does (in the controller's time zone),
   asking for the code sent in the same email (8 characters, ``K7QM-4XPD``; never the request reference,
   which is in every email subject): a forwarded link alone is not enough.
2. ``POST /exports/{token}`` (``application/x-www-form-urlencoded``, at most 4 KiB, else 413) with fields
   ``answer`` (the code) and ``form`` (a stateless CSRF value, HMAC of the token, written into
   the form; missing or wrong: 403). A wrong answer: 403 page with the form again. The answers are counted
   by :class:`intake.web.attempts.Attempts` (429 with ``Retry-After`` when locked or throttled; after
   ``max_wrong`` wrong answers in all the request's download is closed for good: 403 page "ask for a new
   copy", the operator told once through ``on_locked``).
   A right answer streams the bundle as ``application/zip`` (``attachment; filename="<reference>.zip"``,
   ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``) after recording the audit event
   ``export_downloaded`` with ``{"ip_hash": <keyed hash of the client address>, "proof": "code"}``
   (never the address itself). A bundle already deleted: 410 page.

The client address is ``request.client.host``: the socket's peer, or the ``X-Forwarded-For`` address a
trusted proxy gives (``DSR_TRUSTED_PROXIES``; none by default, so a client cannot pick its own address).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse

from dsr.store.links import MAX_TOKEN_LENGTH, DownloadLinks, ExpiredLink, InvalidLink, last_valid_day
from intake.web.attempts import Attempts, wait_in_minutes
from intake.web.pages import FormRefused, choose_language, first_values, read_form, render, security_headers
from intake.web.wording import DOWNLOAD, LANGUAGES, zone_words
from templates import format_date

__all__ = ["EXPORTS_SCOPE", "MAX_FORM_BYTES", "AuditHook", "BundleOpener", "exports_router"]

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 4 * 1024
EXPORTS_SCOPE = "exports"
ANSWER_FIELD = "answer"
FORM_FIELD = "form"
_MAX_FIELDS = 10
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

AuditHook = Callable[[str, str, dict[str, str]], None]
"""``audit(request_id, event, details)``; the integrator binds it to ``Ledger.append_event``."""
BundleOpener = Callable[[str], Iterator[bytes] | None]
"""``opener(request_id)``: the decrypted zip in chunks, or None (or FileNotFoundError) when it is gone."""


class DownloadPages:
    """The pages of ``/exports``, and the app's own error pages, in the visitor's language, headed by the
    controller's name; dates in the controller's ``timezone`` (the reply email's)."""

    def __init__(self, *, default_language: str, hsts: bool, controller_name: str = "",
                 timezone: str = "UTC") -> None:
        self._default_language = default_language
        self._hsts = hsts
        self.controller_name = controller_name
        ZoneInfo(timezone)  # a wrong zone fails at start, not on a subject's page
        self.timezone = timezone

    def language(self, request: Request) -> str:
        """The reply's language when the link says it (``?lang=fr``: the email's link does), else the browser's."""
        asked = request.query_params.get("lang", "")
        if asked in LANGUAGES:
            return asked
        return choose_language(request.headers.get("accept-language"), self._default_language)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return security_headers(hsts=self._hsts, noindex=True, extra=extra)

    def message(self, request: Request, status: int, title_key: str, body_keys: tuple[str, ...] = (), *,
                extra_headers: dict[str, str] | None = None, **fmt: Any) -> HTMLResponse:
        lang = self.language(request)
        text = DOWNLOAD[lang]
        return render(request, "message.html", {
            "lang": lang, "title": text[title_key], "paragraphs": [text[k].format(**fmt) for k in body_keys],
            "controller_name": self.controller_name,
        }, status=status, headers=self.headers(extra_headers))

    def locked(self, request: Request, left: timedelta) -> HTMLResponse:
        seconds, minutes = wait_in_minutes(left)
        return self.message(request, 429, "locked_title", ("locked_body",),
                            extra_headers={"Retry-After": str(seconds)}, minutes=minutes)

    def refused_form(self, request: Request, refused: FormRefused) -> HTMLResponse:
        if refused.status == 413:
            return self.message(request, 413, "too_large_title", ("retry_body",), extra_headers={"Connection": "close"})
        return self.message(request, refused.status, "bad_form_title", ("retry_body",))


def exports_router(
    *,
    links: DownloadLinks,
    bundle_opener: BundleOpener,
    audit: AuditHook,
    attempts: Attempts,
    pages: DownloadPages,
    public_path: str,
    hsts: bool,
    max_form_bytes: int = MAX_FORM_BYTES,
) -> APIRouter:
    """``GET`` and ``POST /exports/{token}``. ``bundle_opener`` and ``audit`` are synchronous; they run in a
    worker thread. ``public_path`` prefixes the form action (a reverse proxy's prefix)."""
    router = APIRouter()
    clock = attempts.clock

    def form_page(request: Request, token: str, *, status: int = 200, wrong: bool = False) -> HTMLResponse:
        lang = pages.language(request)
        text = DOWNLOAD[lang]
        try:
            # The last day it works, in the controller's time zone: the very words of the reply email.
            expiry = format_date(last_valid_day(links.expires_at(token), pages.timezone), lang)
        except InvalidLink:  # pragma: no cover - the token was verified just before
            expiry = ""
        return render(request, "download.html", {
            "lang": lang,
            "text": text,
            "title": text["form_title"],
            "paragraphs": [text["form_intro"]],
            "wrong": wrong,
            "action": f"{public_path}/exports/{quote(token, safe='')}?lang={lang}",
            "form_token": links.form_token(token),
            "expiry_note": text["form_expiry"].format(expiry=expiry, zone=zone_words(pages.timezone, lang)),
            "controller_name": pages.controller_name,
        }, status=status, headers=pages.headers())

    def check_token(request: Request, token: str) -> str | HTMLResponse:
        """The request id, or the 403/410 page."""
        if len(token) > MAX_TOKEN_LENGTH:
            return pages.message(request, 403, "invalid_title", ("invalid_body",))
        try:
            return links.verify(token, now=clock())
        except ExpiredLink:
            return pages.message(request, 410, "expired_title", ("expired_body",))
        except InvalidLink:
            return pages.message(request, 403, "invalid_title", ("invalid_body",))

    async def show_form(request: Request) -> Response:
        token = request.path_params["token"]
        checked = check_token(request, token)
        if isinstance(checked, Response):
            return checked
        return form_page(request, token)

    async def download(request: Request) -> Response:
        token = request.path_params["token"]
        request_id = check_token(request, token)
        if isinstance(request_id, Response):
            return request_id
        client = request.client.host if request.client else None
        left = await attempts.throttled(client)
        if left is not None:
            return pages.locked(request, left)
        # A cheap look first (a locked request is not worth reading the body of); judge() decides below.
        left = await attempts.locked(request_id, client)
        if left is not None:
            return pages.locked(request, left)
        try:
            fields = first_values(await read_form(request, max_bytes=max_form_bytes, max_fields=_MAX_FIELDS))
        except FormRefused as refused:
            return pages.refused_form(request, refused)
        if not links.check_form_token(token, fields.get(FORM_FIELD)):
            return pages.message(request, 403, "form_invalid_title", ("form_invalid_body",))
        # The lock is checked again and the answer counted in one transaction: requests that passed the first
        # look together (on any replica), sending their bodies slowly, are judged one after the other.
        answer = fields.get(ANSWER_FIELD, "")
        verdict = await attempts.judge(request_id, client, lambda: (links.check_code(token, answer), True))
        if verdict.wait is not None:
            return pages.locked(request, verdict.wait)
        if verdict.outcome == "closed":
            return pages.message(request, 403, "closed_title", ("closed_body",))
        if verdict.outcome == "wrong":  # the next attempt gets 429 once the limit is reached
            return form_page(request, token, status=403, wrong=True)

        try:
            chunks = await run_in_threadpool(bundle_opener, request_id)
            first = None if chunks is None else await run_in_threadpool(next, chunks, None)
        except FileNotFoundError:
            chunks, first = None, None
        except Exception:
            logger.exception("intake: cannot open the export bundle of %s", request_id)
            return pages.message(request, 500, "error_title", ("error_body",))
        if chunks is None:
            return pages.message(request, 410, "gone_title", ("gone_body",))

        details = {"ip_hash": links.ip_hash(client), "proof": "code"}
        try:
            await run_in_threadpool(audit, request_id, "export_downloaded", details)
        except Exception:
            # Accountability first: a download that cannot be recorded does not happen.
            logger.exception("intake: cannot record the download of %s; refusing it", request_id)
            _close(chunks)
            return pages.message(request, 503, "error_title", ("error_body",), extra_headers={"Retry-After": "60"})

        filename = request_id if _SAFE_FILENAME.match(request_id) else "export"
        headers = {
            "Content-Disposition": f'attachment; filename="{filename}.zip"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        if hsts:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        return StreamingResponse(_stream(first, chunks, request_id), media_type="application/zip", headers=headers)

    # Plain routes (not FastAPI's): GET answers HEAD too, and nothing here belongs in the API's schema.
    router.add_route("/exports/{token}", show_form, methods=["GET"], include_in_schema=False)
    router.add_route("/exports/{token}", download, methods=["POST"], include_in_schema=False)
    return router


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # pragma: no cover - best effort
            logger.exception("intake: closing an export bundle failed")


async def _stream(first: bytes | None, chunks: Iterator[bytes], request_id: str) -> AsyncIterator[bytes]:
    """The bundle's chunks; the iterator is closed however the response ends (client gone included)."""
    try:
        if first:
            yield first
        async for chunk in iterate_in_threadpool(chunks):
            if chunk:
                yield chunk
    except Exception:
        # Headers are sent: all we can do is cut the response short, so the client sees a broken download.
        logger.exception("intake: streaming the export bundle of %s failed", request_id)
        raise
    finally:
        await run_in_threadpool(_close, chunks)

"""The public intake HTTP app: the download page of export bundles (``/exports/{token}``).

Flow
----
1. ``GET /exports/{token}``: the token is checked (:class:`dsr.store.links.DownloadLinks`). Tampered: 403 page
   "This link is not valid"; expired: 410 page "This link has expired; ask for a new one". Neither page
   says anything else (no reference, no expiry, no hint which check failed). A valid token gets a small
   form (French or English by ``Accept-Language``) asking for the code sent in the same email (8 characters,
   ``K7QM-4XPD``; never the request reference, which is in every email subject): a forwarded link alone is
   not enough.
2. ``POST /exports/{token}`` (``application/x-www-form-urlencoded``, at most 4 KiB, else 413) with fields
   ``answer`` (the code) and ``form`` (a stateless CSRF value, HMAC of the token, written into
   the form; missing or wrong: 403). A wrong answer: 403 page with the form again. After
   :data:`MAX_ATTEMPTS` wrong answers the request is locked for :data:`LOCKOUT` (429, ``Retry-After``), and
   so is a client address after :data:`MAX_CLIENT_ATTEMPTS` wrong answers, whatever the links; after
   ``max_wrong`` wrong answers in all the request's download is closed for good (403 page "ask for a new
   copy"; the operator is told once through ``on_locked``). Every answer is throttled per client address and
   overall (``throttle``, 429) before it is read.
   A right answer streams the bundle as ``application/zip`` (``attachment; filename="<reference>.zip"``,
   ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``) after recording the audit event
   ``export_downloaded`` with ``{"ip_hash": <keyed hash of the client address>, "proof": "code"}``
   (never the address itself). A bundle already deleted: 410 page.
3. ``GET /health``: ``{"status": "ok"}``.

Every page carries ``Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action
'self'; frame-ancestors 'none'; base-uri 'none'``, ``Referrer-Policy: no-referrer`` (the token is in the
URL), ``Cache-Control: no-store``, ``X-Frame-Options: DENY``, ``X-Robots-Tag: noindex`` and, when the
public URL is https, ``Strict-Transport-Security``. User input never causes a 500.

Deployment notes
----------------
* The attempt counters live in the ledger's database (:class:`dsr.store.guards.Guards`), keyed by request (so
  every link of one request shares them) and by client address (hashed): every intake replica counts the
  same attempts, and the check of an answer and its count are one transaction.
* The client address is ``request.client.host``: the socket's peer, or the ``X-Forwarded-For`` address a
  trusted proxy gives (``DSR_TRUSTED_PROXIES``; none by default, so a client cannot pick its own address).
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dsr.store.guards import DEFAULT_THROTTLE, MAX_WRONG_ANSWERS, AnswerThrottle, AttemptLimits, Guards
from dsr.store.links import MAX_TOKEN_LENGTH, DownloadLinks, ExpiredLink, InvalidLink
from dsr.web.body import BodyTooLarge, read_limited_body

__all__ = [
    "LOCKOUT",
    "MAX_ATTEMPTS",
    "MAX_CLIENT_ATTEMPTS",
    "MAX_FORM_BYTES",
    "AuditHook",
    "BundleOpener",
    "intake_app",
]

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 4 * 1024
MAX_ATTEMPTS = 5
LOCKOUT = timedelta(minutes=15)
MAX_CLIENT_ATTEMPTS = 30
"""Wrong answers one client address may give per :data:`LOCKOUT` window, whatever the requests (then it is
locked for :data:`LOCKOUT`): a bound on guesses spread over many links or references."""
EXPORTS_SCOPE = "exports"

CodeLockedHook = Callable[[str, str, int], Awaitable[None]]
"""``on_locked(request_id, page, wrong)``: the answer just counted closed the request's code for good."""
AuditHook = Callable[[str, str, dict[str, str]], None]
"""``audit(request_id, event, details)``; the integrator binds it to ``Ledger.append_event``."""
BundleOpener = Callable[[str], Iterator[bytes] | None]
"""``opener(request_id)``: the decrypted zip in chunks, or None (or FileNotFoundError) when it is gone."""

ANSWER_FIELD = "answer"
FORM_FIELD = "form"
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LANG_RE = re.compile(r"^\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*$")
_LANGUAGES = ("fr", "en")

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "form_title": "Download your data",
        "form_intro": (
            "Your data is ready. To protect it, enter the code from the email we sent you with this link."
        ),
        "form_label": "Download code",
        "form_hint": "Letters and digits, for example K7QM-4XPD, with or without the dash.",
        "form_button": "Download (ZIP file)",
        "form_expiry": "This link is valid until {expiry} (UTC).",
        "wrong_answer": "This code is not correct. Check the email we sent you and try again.",
        "invalid_title": "This link is not valid",
        "invalid_body": "Check that you copied the whole link from our email.",
        "expired_title": "This link has expired; ask for a new one",
        "expired_body": "For your security, download links only work for a limited time. Reply to our email to get "
        "a new one.",
        "gone_title": "This download is no longer available; ask for a new one",
        "gone_body": "The files were deleted. Reply to our email to get a new copy of your data.",
        "locked_title": "Too many attempts",
        "locked_body": "For your security, this download is locked for {minutes} minutes. Try again later.",
        "closed_title": "This download is locked after too many wrong codes",
        "closed_body": "For your security, this link no longer works. Reply to our email to get a new copy of "
        "your data.",
        "form_invalid_title": "This form is not valid",
        "form_invalid_body": "Open the link from our email again and fill in the form on that page.",
        "too_large_title": "The form sent is too large",
        "bad_form_title": "The form could not be read",
        "retry_body": "Open the link from our email again and try once more.",
        "not_found_title": "Page not found",
        "not_allowed_title": "Method not allowed",
        "error_title": "A temporary problem prevented the download",
        "error_body": "Please try again later.",
    },
    "fr": {
        "form_title": "Télécharger vos données",
        "form_intro": (
            "Vos données sont prêtes. Pour les protéger, saisissez le code reçu avec ce lien dans notre courriel."
        ),
        "form_label": "Code de téléchargement",
        "form_hint": "Lettres et chiffres, par exemple K7QM-4XPD, avec ou sans le tiret.",
        "form_button": "Télécharger (fichier ZIP)",
        "form_expiry": "Ce lien est valable jusqu’au {expiry} (UTC).",
        "wrong_answer": "Ce code n’est pas correct. Vérifiez notre courriel et réessayez.",
        "invalid_title": "Ce lien n’est pas valide",
        "invalid_body": "Vérifiez que vous avez copié le lien complet depuis notre courriel.",
        "expired_title": "Ce lien a expiré\u00a0; demandez-en un nouveau",
        "expired_body": "Pour votre sécurité, les liens de téléchargement ne fonctionnent qu’un temps limité. "
        "Répondez à notre courriel pour en obtenir un nouveau.",
        "gone_title": "Ce téléchargement n’est plus disponible\u00a0; demandez-en un nouveau",
        "gone_body": "Les fichiers ont été supprimés. Répondez à notre courriel pour obtenir une nouvelle copie "
        "de vos données.",
        "locked_title": "Trop de tentatives",
        "locked_body": "Pour votre sécurité, ce téléchargement est bloqué pendant {minutes}\u00a0minutes. "
        "Réessayez plus tard.",
        "closed_title": "Ce téléchargement est bloqué après trop de codes erronés",
        "closed_body": "Pour votre sécurité, ce lien ne fonctionne plus. Répondez à notre courriel pour obtenir une "
        "nouvelle copie de vos données.",
        "form_invalid_title": "Ce formulaire n’est pas valide",
        "form_invalid_body": "Ouvrez de nouveau le lien de notre courriel et remplissez le formulaire de cette page.",
        "too_large_title": "Le formulaire envoyé est trop volumineux",
        "bad_form_title": "Le formulaire n’a pas pu être lu",
        "retry_body": "Ouvrez de nouveau le lien de notre courriel et réessayez.",
        "not_found_title": "Page introuvable",
        "not_allowed_title": "Méthode non autorisée",
        "error_title": "Un problème temporaire a empêché le téléchargement",
        "error_body": "Veuillez réessayer plus tard.",
    },
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;line-height:1.5;max-width:36rem;margin:2rem auto;padding:0 1rem;"
    "color:#1a1a1a;background:#fff}"
    "h1{font-size:1.5rem}label{display:block;font-weight:600;margin-top:1rem}"
    "input[type=text]{font-size:1.25rem;padding:.5rem;width:100%;box-sizing:border-box;border:2px solid #555}"
    "input[type=text]:focus,button:focus{outline:3px solid #1d4ed8;outline-offset:2px}"
    "button{font-size:1.1rem;margin-top:1rem;padding:.6rem 1.2rem;background:#1d4ed8;color:#fff;border:0}"
    ".hint{color:#444;font-size:.95rem}.error{color:#b00020;font-weight:600}"
)


def choose_language(accept_language: str | None, default: str = "fr") -> str:
    """``fr`` or ``en`` from an ``Accept-Language`` header (highest q wins, header order breaks ties)."""
    best: tuple[float, int, str] | None = None
    for position, item in enumerate((accept_language or "")[:500].split(",")[:20]):
        match = _LANG_RE.match(item)
        if not match:
            continue
        primary = match.group(1).lower()
        try:
            q = float(match.group(2)) if match.group(2) else 1.0
        except ValueError:
            continue
        if primary not in _LANGUAGES or not 0 < q <= 1:
            continue
        if best is None or (q, -position) > (best[0], best[1]):
            best = (q, -position, primary)
    return best[2] if best else (default if default in _LANGUAGES else "fr")


def _page(lang: str, title: str, paragraphs: list[str] | None = None, body_html: str = "") -> str:
    parts = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs or [])
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{html.escape(title)}</h1>\n{parts}{body_html}\n</main>\n</body>\n</html>\n"
    )


def _parse_form(body: bytes) -> dict[str, str]:
    """Fields of an urlencoded body (first value of each); ValueError if it is not one."""
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=10, errors="strict")
    return {name: values[0] for name, values in fields.items() if values}


def intake_app(
    *,
    links: DownloadLinks,
    bundle_opener: BundleOpener,
    audit: AuditHook,
    public_url: str,
    guards: Guards,
    clock: Callable[[], datetime] | None = None,
    default_language: str = "fr",
    max_attempts: int = MAX_ATTEMPTS,
    lockout: timedelta = LOCKOUT,
    max_client_attempts: int = MAX_CLIENT_ATTEMPTS,
    max_wrong: int = MAX_WRONG_ANSWERS,
    throttle: AnswerThrottle = DEFAULT_THROTTLE,
    on_locked: CodeLockedHook | None = None,
    max_form_bytes: int = MAX_FORM_BYTES,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The intake app. ``public_url`` is ``DSR_PUBLIC_URL`` (its path, if any, prefixes the form action;
    https turns on HSTS). ``clock`` (default: now in UTC) decides expiry and lockouts.

    ``bundle_opener(request_id)`` and ``audit(...)`` are synchronous; they run in a worker thread.
    ``guards`` counts wrong answers in the ledger's database, shared by every replica.
    """
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public_url must look like https://privacy.example.org, got {public_url!r}")
    prefix = parts.path.rstrip("/")
    hsts = parts.scheme == "https"
    now_fn = clock or (lambda: datetime.now(UTC))
    limits = AttemptLimits(max_attempts=max_attempts, lockout=lockout, max_client_attempts=max_client_attempts,
                           max_wrong=max_wrong)

    def security_headers() -> dict[str, str]:
        headers = {
            "Content-Security-Policy": CSP,
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "X-Robots-Tag": "noindex, nofollow",
        }
        if hsts:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        return headers

    def page(
        request: Request,
        status: int,
        title_key: str,
        body_keys: tuple[str, ...] = (),
        *,
        extra_headers: dict[str, str] | None = None,
        **fmt: Any,
    ) -> HTMLResponse:
        lang = choose_language(request.headers.get("accept-language"), default_language)
        text = _TEXT[lang]
        headers = security_headers()
        headers["Vary"] = "Accept-Language"
        headers.update(extra_headers or {})
        content = _page(lang, text[title_key], [text[k].format(**fmt) for k in body_keys])
        return HTMLResponse(content, status_code=status, headers=headers)

    def form_page(request: Request, token: str, *, status: int = 200, wrong: bool = False) -> HTMLResponse:
        lang = choose_language(request.headers.get("accept-language"), default_language)
        text = _TEXT[lang]
        try:
            expiry = links.expires_at(token).strftime("%Y-%m-%d %H:%M")
        except InvalidLink:  # pragma: no cover - the token was verified just before
            expiry = ""
        action = html.escape(f"{prefix}/exports/{quote(token, safe='')}")
        described = "answer-hint answer-error" if wrong else "answer-hint"
        error = (
            f'<p id="answer-error" class="error" role="alert">{html.escape(text["wrong_answer"])}</p>' if wrong else ""
        )
        invalid = ' aria-invalid="true"' if wrong else ""
        body = (
            f"{error}"
            f'<form method="post" action="{action}">\n'
            f'<input type="hidden" name="{FORM_FIELD}" value="{html.escape(links.form_token(token))}">\n'
            f'<label for="answer">{html.escape(text["form_label"])}</label>\n'
            f'<p id="answer-hint" class="hint">{html.escape(text["form_hint"])}</p>\n'
            f'<input type="text" id="answer" name="{ANSWER_FIELD}" required maxlength="20" autocomplete="off" '
            f'autocapitalize="characters" spellcheck="false" autofocus aria-describedby="{described}"{invalid}>\n'
            f'<button type="submit">{html.escape(text["form_button"])}</button>\n'
            "</form>\n"
            f'<p class="hint">{html.escape(text["form_expiry"].format(expiry=expiry))}</p>'
        )
        headers = security_headers()
        headers["Vary"] = "Accept-Language"
        content = _page(lang, text["form_title"], [text["form_intro"]], body)
        return HTMLResponse(content, status_code=status, headers=headers)

    def check_token(request: Request) -> tuple[str, str] | HTMLResponse:
        """``(token, request_id)`` or the 403/410 page."""
        token = request.path_params.get("token", "")
        if len(token) > MAX_TOKEN_LENGTH:
            return page(request, 403, "invalid_title", ("invalid_body",))
        try:
            return token, links.verify(token, now=now_fn())
        except ExpiredLink:
            return page(request, 410, "expired_title", ("expired_body",))
        except InvalidLink:
            return page(request, 403, "invalid_title", ("invalid_body",))

    def locked_page(request: Request, left: timedelta) -> HTMLResponse:
        seconds = max(1, math.ceil(left.total_seconds()))
        return page(
            request,
            429,
            "locked_title",
            ("locked_body",),
            extra_headers={"Retry-After": str(seconds)},
            minutes=max(1, math.ceil(seconds / 60)),
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def show_form(request: Request) -> Response:
        checked = check_token(request)
        if isinstance(checked, Response):
            return checked
        token, _ = checked
        return form_page(request, token)

    async def download(request: Request) -> Response:
        checked = check_token(request)
        if isinstance(checked, Response):
            return checked
        token, request_id = checked
        client = request.client.host if request.client else None
        refused = await run_in_threadpool(
            guards.hit, throttle.windows(EXPORTS_SCOPE, guards.client_key(client)), now_fn())
        if refused is not None:
            return locked_page(request, timedelta(seconds=refused.retry_after))
        # A cheap look first (a locked request is not worth reading the body of); judge() decides below.
        left = await run_in_threadpool(guards.wait, EXPORTS_SCOPE, request_id, client, now_fn())
        if left is not None:
            return locked_page(request, left)
        try:
            body = await read_limited_body(request, max_form_bytes)
        except BodyTooLarge:
            return page(request, 413, "too_large_title", ("retry_body",), extra_headers={"Connection": "close"})
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return page(request, 415, "bad_form_title", ("retry_body",))
        try:
            fields = _parse_form(body)
        except ValueError:
            return page(request, 400, "bad_form_title", ("retry_body",))
        if not links.check_form_token(token, fields.get(FORM_FIELD)):
            return page(request, 403, "form_invalid_title", ("form_invalid_body",))
        # The lock is checked again and the answer counted in one transaction: requests that passed the first
        # look together (on any replica), sending their bodies slowly, are judged one after the other.
        answer = fields.get(ANSWER_FIELD, "")
        verdict = await run_in_threadpool(lambda: guards.judge(
            EXPORTS_SCOPE, request_id, client, now_fn(), right=links.check_code(token, answer), limits=limits))
        if verdict.wait is not None:
            return locked_page(request, verdict.wait)
        if verdict.capped_now and on_locked is not None:
            await on_locked(request_id, EXPORTS_SCOPE, max_wrong)
        if verdict.outcome == "closed":
            return page(request, 403, "closed_title", ("closed_body",))
        if verdict.outcome == "wrong":  # the next attempt gets 429 once the limit is reached
            return form_page(request, token, status=403, wrong=True)
        proof = "code"

        try:
            chunks = await run_in_threadpool(bundle_opener, request_id)
            first = None if chunks is None else await run_in_threadpool(next, chunks, None)
        except FileNotFoundError:
            chunks, first = None, None
        except Exception:
            logger.exception("intake: cannot open the export bundle of %s", request_id)
            return page(request, 500, "error_title", ("error_body",))
        if chunks is None:
            return page(request, 410, "gone_title", ("gone_body",))

        details = {"ip_hash": links.ip_hash(client), "proof": proof}
        try:
            await run_in_threadpool(audit, request_id, "export_downloaded", details)
        except Exception:
            # Accountability first: a download that cannot be recorded does not happen.
            logger.exception("intake: cannot record the download of %s; refusing it", request_id)
            _close(chunks)
            return page(request, 503, "error_title", ("error_body",), extra_headers={"Retry-After": "60"})

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

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/webhooks/", "/openapi"))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if wants_json(request):
            message = {404: "no such endpoint", 405: "method not allowed"}.get(status, "request refused")
            return JSONResponse({"error": message}, status_code=status if 400 <= status < 600 else 500,
                                headers=dict(getattr(exc, "headers", None) or {}))
        if status == 405:
            return page(request, 405, "not_allowed_title", extra_headers=dict(getattr(exc, "headers", None) or {}))
        if status == 404:
            return page(request, 404, "not_found_title")
        return page(request, status if 400 <= status < 600 else 500, "error_title", ("error_body",))

    async def server_error(request: Request, exc: Exception) -> Response:
        # The path only up to a token: tokens never reach the logs.
        where = re.sub(r"/(exports|verify)/.*", r"/\1/…", request.url.path)
        logger.error("intake: unexpected %s on %s", type(exc).__name__, where)
        if wants_json(request):
            return JSONResponse({"error": "internal error"}, status_code=500)
        return page(request, 500, "error_title", ("error_body",))

    async def validation_error(request: Request, exc: Exception) -> Response:
        if wants_json(request):
            return JSONResponse({"error": "the request could not be read"}, status_code=422)
        return page(request, 400, "bad_form_title", ("retry_body",))

    app = FastAPI(
        title="DSR intake",
        summary="Data-subject requests in; export downloads and identity confirmation out.",
        version="1",
        docs_url=None,  # the Swagger page loads scripts from a CDN: not on a page the public can reach
        redoc_url=None,
        routes=[
            Route("/health", health, methods=["GET"], include_in_schema=False),
            Route("/exports/{token}", show_form, methods=["GET"], include_in_schema=False),
            Route("/exports/{token}", download, methods=["POST"], include_in_schema=False),
        ],
        exception_handlers={
            HTTPException: http_error,
            RequestValidationError: validation_error,
            Exception: server_error,
        },
    )
    for router in routers:
        app.include_router(router)
    return app


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


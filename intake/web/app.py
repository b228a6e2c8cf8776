"""The public intake HTTP app, assembled from its routers: what ``dsr intake`` and ``dsr up`` serve.

* ``/exports/{token}``: export downloads (:mod:`intake.web.exports`), always there;
* the routers given (``routers``; :func:`intake.server.build_intake_app` gives them all): ``/api/requests`` and
  the desk webhooks (:mod:`intake.web.api`), ``/verify`` (:mod:`intake.web.verify`), the form ``/``
  (:mod:`intake.web.form`);
* ``GET /health``: ``{"status": "ok"}``.

Every HTML page carries the security headers of :func:`intake.web.pages.security_headers` (and, when the
public URL is https, ``Strict-Transport-Security``). User input never causes a 500: an unknown path is a 404
page, a method a route does not take a 405 page, and under ``/api/``, ``/webhooks/`` and ``/openapi`` those are
JSON ``{"error": ...}`` instead. An unexpected error is logged by its type and path (up to a token: tokens
never reach the logs) and answered with a 500 page that says nothing more.

Deployment notes
----------------
* The attempt counters live in the ledger's database (:class:`dsr.store.guards.Guards`), keyed by request (so
  every link of one request shares them) and by client address (hashed): every intake replica counts the
  same attempts, and the check of an answer and its count are one transaction.
* The client address is ``request.client.host``: the socket's peer, or the ``X-Forwarded-For`` address a
  trusted proxy gives (``DSR_TRUSTED_PROXIES``; none by default, so a client cannot pick its own address).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dsr.store.guards import DEFAULT_THROTTLE, MAX_WRONG_ANSWERS, AnswerThrottle, AttemptLimits, Guards
from dsr.store.links import DownloadLinks
from intake.web.attempts import LOCKOUT, MAX_ATTEMPTS, MAX_CLIENT_ATTEMPTS, Attempts, CodeLockedHook
from intake.web.exports import EXPORTS_SCOPE, MAX_FORM_BYTES, AuditHook, BundleOpener, DownloadPages, exports_router

__all__ = ["intake_app"]

logger = logging.getLogger(__name__)


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
    controller_name: str = "",
    timezone: str = "UTC",
) -> FastAPI:
    """The intake app. ``public_url`` is ``DSR_PUBLIC_URL`` (its path, if any, prefixes the form action;
    https turns on HSTS). ``clock`` (default: now in UTC) decides expiry and lockouts.

    The download page's parts: ``links``, ``bundle_opener(request_id)`` and ``audit(...)`` (synchronous; they
    run in a worker thread); ``guards`` counts its wrong answers in the ledger's database, shared by every
    replica, under the limits given. ``controller_name`` heads the pages; ``timezone`` (``DSR_TIMEZONE``)
    dates the link's last day as the reply email does.
    """
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public_url must look like https://privacy.example.org, got {public_url!r}")
    hsts = parts.scheme == "https"
    pages = DownloadPages(default_language=default_language, hsts=hsts, controller_name=controller_name,
                          timezone=timezone)
    attempts = Attempts(
        scope=EXPORTS_SCOPE,
        guards=guards,
        limits=AttemptLimits(max_attempts=max_attempts, lockout=lockout, max_client_attempts=max_client_attempts,
                             max_wrong=max_wrong),
        throttle=throttle,
        clock=clock or (lambda: datetime.now(UTC)),
        on_locked=on_locked,
    )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/webhooks/", "/openapi"))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if wants_json(request):
            message = {404: "no such endpoint", 405: "method not allowed"}.get(status, "request refused")
            return JSONResponse({"error": message}, status_code=status if 400 <= status < 600 else 500,
                                headers=dict(getattr(exc, "headers", None) or {}))
        if status == 405:
            return pages.message(request, 405, "not_allowed_title",
                                 extra_headers=dict(getattr(exc, "headers", None) or {}))
        if status == 404:
            return pages.message(request, 404, "not_found_title")
        return pages.message(request, status if 400 <= status < 600 else 500, "error_title", ("error_body",))

    async def server_error(request: Request, exc: Exception) -> Response:
        # The path only up to a token: tokens never reach the logs.
        where = re.sub(r"/(exports|verify|answer)/.*", r"/\1/…", request.url.path)
        logger.error("intake: unexpected %s on %s", type(exc).__name__, where)
        if wants_json(request):
            return JSONResponse({"error": "internal error"}, status_code=500)
        return pages.message(request, 500, "error_title", ("error_body",))

    async def validation_error(request: Request, exc: Exception) -> Response:
        if wants_json(request):
            return JSONResponse({"error": "the request could not be read"}, status_code=422)
        return pages.message(request, 400, "bad_form_title", ("retry_body",))

    app = FastAPI(
        title="DSR intake",
        summary="Data-subject requests in; export downloads and identity confirmation out.",
        version="1",
        docs_url=None,  # the Swagger page loads scripts from a CDN: not on a page the public can reach
        redoc_url=None,
        routes=[Route("/health", health, methods=["GET"], include_in_schema=False)],
        exception_handlers={
            HTTPException: http_error,
            RequestValidationError: validation_error,
            Exception: server_error,
        },
    )
    app.include_router(exports_router(
        links=links, bundle_opener=bundle_opener, audit=audit, attempts=attempts, pages=pages,
        public_path=parts.path.rstrip("/"), hsts=hsts, max_form_bytes=max_form_bytes,
    ))
    for router in routers:
        app.include_router(router)
    return app

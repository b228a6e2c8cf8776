"""The codec server: lets the Temporal Web UI (and CLI) show decrypted payloads to staff.

It implements the Temporal remote codec protocol: ``POST .../decode`` and ``POST .../encode`` take and
return the protobuf JSON of ``temporal.api.common.v1.Payloads``::

    {"payloads": [{"metadata": {"encoding": "<base64>", ...}, "data": "<base64>"}]}

Only the last path segment is looked at, so ``/decode`` and ``/default/decode`` (a per-namespace URL, as
the CLI's ``--codec-endpoint http://127.0.0.1:8234/{namespace}`` produces) both work.

How clients call it
-------------------
* The Web UI calls it *from the browser*: ``fetch(endpoint + "/decode", {method: "POST", headers:
  {"Content-Type": "application/json", "X-Namespace": ns}})``, so a CORS preflight comes first and the
  response needs ``Access-Control-Allow-Origin`` set to the UI's origin (both ``127.0.0.1`` and
  ``localhost`` spellings of the configured origin are accepted). The UI adds ``Authorization: Bearer <its
  OIDC access token>`` only when "pass access token" is enabled *and* the endpoint is https; it cannot send
  a static token. So the token is also accepted as the first path segment: the UI's endpoint is
  ``http://127.0.0.1:8234/<token>`` (it then calls ``/<token>/decode``). ``dsr up`` makes a random token
  (``DSR_HOME/codec-token``, mode 0600) and prints that endpoint once, for the UI's "Codec Server" setting
  (kept in the browser). It is never given to the UI server on its command line, which every local user
  can read (``ps``), nor served by the UI's settings API. The CLI sends it as a header (``--codec-auth
  "Bearer TOKEN"``).
* Requests carrying an ``Origin`` other than the allowed one are refused (403) even though CORS alone
  would only hide the answer from the page.

Errors are JSON ``{"error": "..."}``: 400 for a malformed body or a payload that cannot be decrypted,
401 for a missing or wrong bearer token, 413 over the body size limit. Error messages never echo the
body (on ``/encode`` it is plaintext). Responses carry ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from dsr.errors import ConfigurationError
from dsr.store.codec import EncryptionCodec
from dsr.store.crypto import KeyRing, KeyRingError
from dsr.web.body import BodyTooLarge, read_limited_body

__all__ = [
    "DEFAULT_CODEC_PORT",
    "MAX_BODY_BYTES",
    "CodecTokenError",
    "codec_app",
    "load_or_create_token",
]

logger = logging.getLogger(__name__)

DEFAULT_CODEC_PORT = 8234
"""Same default as ``Settings.codec_port`` (``DSR_CODEC_PORT``)."""
MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body accepted (4 MiB); Temporal's own payload limit is 2 MiB by default."""

ALLOW_METHODS = "POST, OPTIONS"
ALLOW_HEADERS = "content-type, x-namespace, authorization"
_ALLOWED_HEADER_SET = frozenset(h.strip() for h in ALLOW_HEADERS.split(","))
_DRAIN_LIMIT = 64 * 1024 * 1024  # bytes read and thrown away from an oversize body before giving up
_LOOPBACK_NAMES = ("127.0.0.1", "localhost")


_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


class CodecTokenError(ConfigurationError, ValueError):
    """The codec token file is unsafe or malformed; the message never contains the token."""


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The codec server's token kept in ``path``, made if absent; returns ``(token, created)``.

    A new token is 32 random bytes, URL-safe (it travels in a URL path for the UI), written with mode 0600
    (O_EXCL: of two starters, one writes it and the other reads it). An existing file readable by group or
    others is refused, like the key file.
    """
    path = Path(path)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (token + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return token, True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o077:
            raise CodecTokenError(
                f"codec token file {path} is readable or writable by group or others (mode {mode & 0o777:o}); "
                f"refusing to use it. Run: chmod 600 {path}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            text = handle.read(4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not _TOKEN_RE.match(text):
        raise CodecTokenError(f"codec token file {path} is malformed; delete it and start `dsr up` again")
    return text, False


def _origin_variants(allowed_origin: str) -> frozenset[str]:
    """The allowed origin, normalised, plus its ``localhost``/``127.0.0.1`` twin."""
    parts = urlsplit(allowed_origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"allowed_origin must look like http://127.0.0.1:8233, got {allowed_origin!r}")
    host = parts.hostname.lower()
    port = f":{parts.port}" if parts.port is not None else ""
    hosts = {host}
    if host in _LOOPBACK_NAMES:
        hosts.update(_LOOPBACK_NAMES)
    return frozenset(f"{parts.scheme}://{h}{port}" for h in hosts)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _parse_payloads(body: bytes) -> Payloads:
    """Parse the proto JSON of Payloads; ValueError with a message that never echoes the body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("body is not valid JSON") from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("payloads"), list)
        or not all(isinstance(p, dict) for p in doc["payloads"])
    ):
        raise ValueError('body must be a JSON object {"payloads": [{"metadata": {...}, "data": ...}, ...]}')
    try:
        return json_format.ParseDict(doc, Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError):
        raise ValueError(
            'body is not Payloads JSON: each payload is {"metadata": {key: base64}, "data": base64}'
        ) from None


def _payloads_json(payloads: Sequence[Payload]) -> dict[str, Any]:
    doc = json_format.MessageToDict(Payloads(payloads=payloads))
    doc.setdefault("payloads", [])
    return doc


def codec_app(
    keyring: KeyRing,
    *,
    allowed_origin: str,
    token: str | None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The codec server as a Starlette app.

    ``allowed_origin`` is the Web UI's origin (``Settings.ui_url``, e.g. ``http://127.0.0.1:8233``);
    ``token`` (``Settings.codec_token``), when set, is required as ``Authorization: Bearer <token>`` on
    ``/encode`` and ``/decode`` (never on the CORS preflight, which browsers send without credentials, nor
    on ``GET /health``).
    """
    if token is not None and not token.strip():
        raise ValueError("codec token must not be empty; pass None to disable authentication")
    origins = _origin_variants(allowed_origin)
    codec = EncryptionCodec(keyring)
    expected = token.encode("utf-8") if token is not None else None
    actions: dict[str, Callable[[Sequence[Payload]], Awaitable[list[Payload]]]] = {
        "decode": codec.decode,
        "encode": codec.encode,
    }

    def cors_headers(origin: str | None) -> dict[str, str]:
        if origin is None or origin not in origins:
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def authorised(request: Request, segments: list[str]) -> bool:
        if expected is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode("utf-8"), expected):
            return True
        # The token as the first path segment: what the Web UI can send (it has no static header).
        return len(segments) >= 2 and hmac.compare_digest(segments[0].encode("utf-8"), expected)

    def preflight(request: Request, origin: str | None) -> Response:
        if origin is None or origin not in origins:
            return _error(403, "origin not allowed", {"Vary": "Origin"})
        method = request.headers.get("access-control-request-method", "POST").upper()
        requested = {
            h.strip().lower() for h in request.headers.get("access-control-request-headers", "").split(",") if h.strip()
        }
        if method not in ("POST", "OPTIONS") or not requested <= _ALLOWED_HEADER_SET:
            return _error(403, "method or headers not allowed", {"Vary": "Origin"})
        headers = cors_headers(origin)
        headers.update(
            {
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
        if request.headers.get("access-control-request-private-network", "").lower() == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return Response(status_code=204, headers=headers)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def codec_endpoint(request: Request) -> Response:
        origin = request.headers.get("origin")
        segments = [part for part in request.path_params.get("path", "").split("/") if part]
        action = segments[-1] if segments else ""
        handler = actions.get(action)
        if handler is None:
            return _error(404, "not found; use POST /encode or POST /decode", cors_headers(origin))
        if request.method == "OPTIONS":
            return preflight(request, origin)
        if request.method != "POST":
            headers = cors_headers(origin) | {"Allow": ALLOW_METHODS}
            return _error(405, f"use POST /{action}", headers)
        headers = cors_headers(origin)
        if origin is not None and origin not in origins:
            return _error(403, "origin not allowed", headers)
        if not authorised(request, segments):
            headers["WWW-Authenticate"] = "Bearer"
            return _error(401, "missing or invalid bearer token", headers)
        try:
            body = await read_limited_body(request, max_body_bytes, drain_limit=_DRAIN_LIMIT)
        except BodyTooLarge:
            return _error(413, f"body larger than {max_body_bytes} bytes", headers)
        try:
            payloads = _parse_payloads(body)
        except ValueError as exc:
            return _error(400, str(exc), headers)
        try:
            result = await handler(payloads.payloads)
        except KeyRingError as exc:  # unknown key, tampered data: messages name key ids only
            return _error(400, f"cannot {action} payloads: {exc}", headers)
        except Exception:
            logger.exception("codec server: unexpected error during %s", action)
            return _error(500, "internal error", headers)
        headers["Cache-Control"] = "no-store"
        return JSONResponse(_payloads_json(result), headers=headers)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/{path:path}", codec_endpoint, methods=["GET", "POST", "OPTIONS"]),
        ]
    )

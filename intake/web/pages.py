"""What every HTML page of the intake shares: its language, its security headers, its rendering, its form body.

Pages are Jinja2 templates in ``templates/pages/`` (``_layout.html`` and the pages that extend it), rendered
with autoescaping on: every value a page shows -- a typed reference, a value kept in the form, a word of
:mod:`intake.web.wording` -- is escaped by the template, never by hand. The templates hold no words of their
own: the routers pass the words of the page's language.

Every page carries ``Content-Security-Policy`` (:data:`CSP`: no script, no request to anyone but this site's
own form action), ``Referrer-Policy: no-referrer`` (tokens are in URLs), ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff`` and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from dsr.errors import InvalidInputError
from dsr.web.body import BodyTooLarge, read_limited_body
from intake.web.wording import LANGUAGES
from templates import TEMPLATE_DIR

__all__ = ["CSP", "FormRefused", "choose_language", "parse_form", "read_form", "render", "security_headers"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
FORM_TYPE = "application/x-www-form-urlencoded"
_LANG_RE = re.compile(r"^\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]{1,5}))?\s*$")


def _escaped(value: Any) -> Any:
    """Every printed value escaped as :func:`html.escape` spells it (``&quot;``, ``&#x27;``: the spelling these
    pages always had), unless the template made it markup (a macro, ``|safe`` on a literal of its own)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return Markup(html.escape(value))  # noqa: S704 - escaped on this very line
    return value


PAGES = Jinja2Templates(env=Environment(
    loader=FileSystemLoader(TEMPLATE_DIR / "pages"),
    autoescape=True,  # every page is HTML: nothing reaches it unescaped
    finalize=_escaped,
    undefined=StrictUndefined,  # a word missing from the context fails loudly instead of showing a blank
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
))


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
        if primary not in LANGUAGES or not 0 < q <= 1:
            continue
        if best is None or (q, -position) > (best[0], best[1]):
            best = (q, -position, primary)
    return best[2] if best else (default if default in LANGUAGES else "fr")


def security_headers(*, vary: str = "Accept-Language", hsts: bool = False, noindex: bool = False,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers of a page. ``hsts`` when it is served over https; ``noindex`` for pages reached by a
    link from an email (a download), which search engines must never list."""
    headers = {
        "Content-Security-Policy": CSP,
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }
    if noindex:
        headers["X-Robots-Tag"] = "noindex, nofollow"
    if hsts:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    headers["Vary"] = vary
    headers.update(extra or {})
    return headers


def render(request: Request, template: str, context: dict[str, Any], *, status: int = 200,
           headers: Mapping[str, str]) -> HTMLResponse:
    """The page ``templates/pages/<template>`` as an HTML response."""
    return PAGES.TemplateResponse(request, template, context, status_code=status, headers=headers)


class FormRefused(InvalidInputError):
    """A form body the page cannot read: ``status`` 413 (too large), 415 (not a form) or 400 (not urlencoded
    UTF-8, or too many fields). Nothing in it was used."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def parse_form(body: bytes, *, max_fields: int) -> dict[str, list[str]]:
    """Every value of every field of an urlencoded body; ValueError when it is not one (bad UTF-8, raw or
    percent-encoded, or more than ``max_fields`` fields)."""
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields, errors="strict"):
        fields.setdefault(name, []).append(value)
    return fields


async def read_form(request: Request, *, max_bytes: int, max_fields: int) -> dict[str, list[str]]:
    """The posted form's fields, read within ``max_bytes``; :class:`FormRefused` when it cannot be read."""
    try:
        body = await read_limited_body(request, max_bytes)
    except BodyTooLarge:
        raise FormRefused(413) from None
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() != FORM_TYPE:
        raise FormRefused(415)
    try:
        return parse_form(body, max_fields=max_fields)
    except ValueError:
        raise FormRefused(400) from None


def first_values(fields: Mapping[str, list[str]]) -> dict[str, str]:
    """The first value of each field: for pages whose fields are each sent once."""
    return {name: values[0] for name, values in fields.items() if values}

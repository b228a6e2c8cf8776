"""The public web form through which data subjects send their requests (French or English, no JavaScript).

Flow
----
1. ``GET /`` (``?lang=fr|en`` wins over ``Accept-Language``): the form. It asks for the kind of request
   (radio buttons, each right explained in plain words), the email address, the name, for a rectification up
   to :data:`CHANGE_ROWS` corrections (a field from the list of those the connectors can correct, and its
   correct value: the request's ``changes``, with which it runs without staff), and details; the language of
   the replies is the page's (hidden field). Every page carries the same security headers
   as every page of the app (:mod:`intake.web.pages`) and no script at all.
2. ``POST /`` (``application/x-www-form-urlencoded``, at most :data:`MAX_FORM_BYTES`, else 413; or, when the
   router has an attachment store, ``multipart/form-data`` with up to five documents for a request about a deceased
   person, see "Documents" below; any other content type 415): the CSRF value is checked first (403 page, nothing
   created), then every field (all errors at once, each next to its field and summarised at the top: 400, typed
   values kept), then the :class:`~intake.submission.Submission` goes to :meth:`IntakeSink.submit`, which validates
   again (it is the authority: a :class:`~intake.submission.SubmissionError` it raises is shown the same way).
   :class:`~intake.service.RateLimited` gives 429 with ``Retry-After``; any other failure of the sink 503,
   with the form and its values kept so nothing typed is lost.
3. Success: ``303 See Other`` to ``GET /submitted?kind=…&due=…&sig=…&lang=…`` (Post/Redirect/Get: reloading
   the confirmation never submits twice). The parameters are signed with ``csrf_key`` so nobody can make this
   site display a confirmation of their own wording; ``lang`` is not signed (it only picks one of our two
   translations). The confirmation is the same neutral receipt for every submission: no reference (it goes
   to the address given, by email) and the deadline of this submission's own receipt, so that typing someone
   else's address never reveals whether they have a request under way (it is attached to theirs, and they are
   told by email). It repeats the address given, so a typo is seen while the person can still send the form
   again: the address travels in the redirect as ``to``, sealed (AES-GCM under a key derived from
   ``csrf_key``, never readable in a URL, a proxy's log or the history) and shown for
   :data:`ADDRESS_SHOWN_FOR` only; after that, or if it does not open, the page shows the rest without it.

Documents (a request about a deceased person)
---------------------------------------------
Given an :class:`~dsr.store.attachments.AttachmentStore`, the form is ``multipart/form-data`` and its deceased
person's part offers a file input: the death certificate and the proof of the sender's quality, judged by
:mod:`intake.web.uploads` (PDF, JPEG or PNG by their first bytes, 10 MiB each, five at most, 20 MiB in all). Files
sent with another kind go nowhere, like the deceased person's fields. A bad file is a 400 with its error next to
the input, nothing stored or started; too much in all, a 413 page. Good files are sealed in the store under a
request id reserved for the submission before it is submitted (the workflow deletes them with the request's other
documents, once reviewed or when it closes), then: deleted if the submission is refused (400, 429); re-filed under
the request under way it was attached to; kept when the engine could not be reached (503: the request may have
started, and its files must not vanish under it; the log names the reserved id for staff).

CSRF, stateless and without JavaScript
--------------------------------------
The form carries ``csrf = b64url(issued_at ‖ nonce) "." b64url(HMAC-SHA256(csrf_key, …))`` and the
response sets the cookie :data:`CSRF_COOKIE` ``= b64url(nonce)`` (``HttpOnly; SameSite=Strict; Path=/``,
``Secure`` over https). A POST is accepted only when the MAC is right, the value is younger than
:data:`CSRF_LIFETIME`, and its nonce equals the cookie's (double submit): a page on another site can
neither read the value nor, thanks to ``SameSite=Strict``, make the browser send the cookie. A browser
that already holds a well-formed cookie keeps its nonce, so two tabs of the form both work.

Mounting
--------
``app.include_router(form_router(sink, csrf_key=…, public_path="/demande"), prefix="/demande")``:
``public_path`` is the path at which browsers reach the router (reverse-proxy prefix included); it
prefixes the form action, the language links and the redirect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dsr.domain.model import (
    CANONICAL_FIELDS,
    Channel,
    ConsentPurpose,
    ObjectionScope,
    Quality,
    RequestKind,
    RestrictionGround,
    is_valid_email,
)
from dsr.store.attachments import AttachmentStore
from intake.service import Accepted, IntakeSink, RateLimited
from intake.submission import MAX_DETAILS, MAX_NAME, Submission, SubmissionError, new_request_id
from intake.web.pages import FormRefused, choose_language, read_form, render, security_headers
from intake.web.uploads import MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, MULTIPART_TYPE, Upload, read_multipart
from intake.web.wording import FORM, LANGUAGES
from templates import format_date

__all__ = ["ADDRESS_SHOWN_FOR", "CSRF_COOKIE", "CSRF_FIELD", "CSRF_LIFETIME", "MAX_FORM_BYTES", "form_router"]

logger = logging.getLogger(__name__)

# Details may hold MAX_DETAILS characters; percent-encoded, an accented or Cyrillic character takes 6
# bytes, so 16 KiB would turn a legitimate long message into a 413. 64 KiB fits 10,000 such characters.
MAX_FORM_BYTES = 64 * 1024
"""Oversize bodies up to this size are read and thrown away, so the browser shows our 413 page."""
_MAX_FIELDS = 30  # the consent purposes' checkboxes included
CSRF_FIELD = "csrf"
CSRF_COOKIE = "dsr_form"
CSRF_LIFETIME = timedelta(hours=2)
_CLOCK_SKEW = timedelta(minutes=5)
_NONCE_BYTES = 16
_CSRF_CONTEXT = b"dsr/intake-form/csrf/v1\x00"
_CONFIRMATION_CONTEXT = b"dsr/intake-form/confirmation/v1\x00"
_ADDRESS_CONTEXT = b"dsr/intake-form/confirmation-address/v1\x00"
ADDRESS_SHOWN_FOR = timedelta(hours=1)
"""How long the confirmation page repeats the address given (a reload later shows the page without it)."""
_MAX_SEALED = 512
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")
# C0 controls (tab, line feed and carriage return excepted) and DEL: never typed by a person, and NUL
# cannot even be stored in PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CHANGE_ROWS = 3
"""Corrections the form offers at once (field + correct value each); more go in the details, or in a second
request, or staff add them with ``dsr rectify``."""
RECTIFIABLE_FIELDS = (
    "first_name", "last_name", "email", "phone",
    "address_line1", "address_line2", "postcode", "city", "state", "country",
)
"""The canonical fields (:data:`dsr.domain.model.CANONICAL_FIELDS`) in the order a person reads an address."""
MAX_CHANGE_VALUE = 500  # as the API's ``changes``
_CHANGE_FIELDS = tuple(f"change_{part}_{row}" for row in range(1, CHANGE_ROWS + 1) for part in ("field", "value"))
_DECEASED_FIELDS = ("deceased_email", "deceased_name", "quality")
"""A request about a deceased person (kind post_mortem, art. 85 loi 78-17): who died, and who the sender is."""
_QUALITIES = tuple(quality.value for quality in Quality)
_FIELDS = ("kind", "email", "name", *_DECEASED_FIELDS, *_CHANGE_FIELDS, "ground", "details")
_ERROR_ORDER = ("kind", "email", "name", *_DECEASED_FIELDS, "documents", *_CHANGE_FIELDS, "ground", "details")
"""The fields in the order of the page (the documents' file input follows the deceased person's fields)."""
DOCUMENTS_FIELD = "documents"
GROUNDS = tuple(ground.value for ground in RestrictionGround)
"""A restriction's Art. 18(1) grounds, each a choice of the form's own (its words in the wording)."""
_KINDS = tuple(kind.value for kind in RequestKind)
STOP_MARKETING = "stop_marketing"
"""The form's own choice for an objection to direct marketing (kind objection, scope marketing): a person who
wants no more newsletters does not think "objection", and a choice of its own makes the absolute case one click."""
_CHOICES = (*(k for k in _KINDS if k not in (RequestKind.OBJECTION.value, RequestKind.POST_MORTEM.value)),
            STOP_MARKETING, RequestKind.OBJECTION.value, RequestKind.POST_MORTEM.value)
"""The choices the form offers, in its order: the objection to other processing, then a deceased person's data,
last (the one choice about someone else's data)."""

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    if not text or len(text) > 256 or not _B64.match(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None


def _format_date(day: date, lang: str) -> str:
    """``23 décembre 2026`` (``1er`` for the first: French usage) or ``23 December 2026``."""
    return format_date(day, lang).replace(" ", "\u00a0", 1)  # on a page, the day never ends a line


def _minutes(count: int, lang: str) -> str:
    """``1 minute``, ``2 minutes`` (a non-breaking space in French)."""
    space = "\u00a0" if lang == "fr" else " "
    return f"{count}{space}minute{'s' if count > 1 else ''}"


class _AddressSeal:
    """The address given, sealed for the confirmation page's URL: ``b64url(nonce ‖ AES-GCM(issued_at ‖ email))``."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hmac.new(key, _ADDRESS_CONTEXT + b"enc", hashlib.sha256).digest())
        self._nonce_key = hmac.new(key, _ADDRESS_CONTEXT + b"nonce", hashlib.sha256).digest()

    def seal(self, email: str, now: datetime) -> str:
        plain = int(now.timestamp()).to_bytes(8, "big") + email.encode("utf-8")
        # Synthetic nonce (keyed hash of the plaintext): the same submission gives the same URL whatever the
        # outcome, so the redirect never tells a new request from one attached to a request under way.
        nonce = hmac.new(self._nonce_key, plain, hashlib.sha256).digest()[:12]
        return _b64(nonce + self._aead.encrypt(nonce, plain, _ADDRESS_CONTEXT))

    def open(self, sealed: str, now: datetime) -> str | None:
        """The address, while :data:`ADDRESS_SHOWN_FOR` lasts; None for anything else."""
        if not sealed or len(sealed) > _MAX_SEALED or not _B64.match(sealed):
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], _ADDRESS_CONTEXT)
            issued = datetime.fromtimestamp(int.from_bytes(plain[:8], "big"), UTC)
            email = plain[8:].decode("utf-8")
        except (ValueError, InvalidTag, OverflowError):
            return None
        return email if timedelta(0) - _CLOCK_SKEW <= now - issued <= ADDRESS_SHOWN_FOR else None


@dataclass(frozen=True)
class _Csrf:
    """The stateless double-submit CSRF value (see the module docstring)."""

    key: bytes

    def issue(self, now: datetime, nonce: bytes) -> str:
        payload = int(now.timestamp()).to_bytes(8, "big") + nonce
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def check(self, value: str | None, cookie: str | None, now: datetime) -> bool:
        if not value or not cookie or value.count(".") != 1:
            return False
        encoded, _, mac_text = value.partition(".")
        payload, mac = _unb64(encoded), _unb64(mac_text)
        if payload is None or mac is None or len(payload) != 8 + _NONCE_BYTES:
            return False
        if not hmac.compare_digest(mac, self._mac(payload)):
            return False
        issued = datetime.fromtimestamp(int.from_bytes(payload[:8], "big"), UTC)
        if not now - CSRF_LIFETIME <= issued <= now + _CLOCK_SKEW:
            return False
        return hmac.compare_digest(cookie.encode("ascii", "replace"), _b64(payload[8:]).encode("ascii"))

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, _CSRF_CONTEXT + payload, hashlib.sha256).digest()


def _cookie_nonce(request: Request) -> bytes | None:
    """The nonce of a well-formed cookie already held by the browser (reused, so several tabs work)."""
    nonce = _unb64(request.cookies.get(CSRF_COOKIE, ""))
    return nonce if nonce is not None and len(nonce) == _NONCE_BYTES else None


def _field_for(error: SubmissionError, values: dict[str, str]) -> tuple[str, str]:
    """``(field, text key)`` for an error message of :func:`intake.submission.prepare`; field ``""`` is the
    top of the form."""
    message = str(error)
    if message.startswith("kind"):
        return "kind", "err_kind"
    if message.startswith("the new email"):
        return _row_of(values, "email"), "err_change_email"
    if message.startswith("changes:"):
        return "", "err_rejected"
    if message.startswith("email"):
        return "email", "err_email_invalid" if values["email"].strip() else "err_email_missing"
    if message.startswith("name"):
        return "name", "err_name_long"
    if message.startswith("details"):
        return "details", "err_details_long"
    if message.startswith("a rectification request"):
        return "details", "err_details_rectification"
    if message.startswith(("purposes", "no purpose", "no such purpose")):
        return "kind", "err_kind"
    if message.startswith("deceased_email is the sender's"):
        return "deceased_email", "err_deceased_self"
    if message.startswith("deceased_email"):
        return "deceased_email", "err_deceased_invalid"
    if message.startswith("quality"):
        return "quality", "err_quality"
    return "", "err_rejected"


def _check_documents(documents: list[Upload], *, stored: bool) -> str | None:
    """The text key of what is wrong with the documents sent (the first thing found), or None."""
    if not stored:
        return "err_documents_off"
    if len(documents) > MAX_FILES:
        return "err_files_count"
    if any(len(u.data) > MAX_FILE_BYTES for u in documents):
        return "err_file_large"
    if any(u.content_type is None for u in documents):
        return "err_file_type"
    return None


def _store(attachments: AttachmentStore, request_id: str, documents: list[Upload]) -> None:
    for part, upload in enumerate(documents, start=1):
        attachments.save(request_id, upload.filename or f"document-{part}", upload.content_type or "", upload.data,
                         source="form", part=part)


def _discard(attachments: AttachmentStore | None, request_id: str) -> None:
    """Delete the documents of a submission that created nothing (refused, or never submitted)."""
    if attachments is None:
        return
    try:
        attachments.delete_all(request_id)
    except Exception as exc:
        logger.error("intake form: documents under %s could not be deleted (%s)", request_id, type(exc).__name__)


def _row_of(values: dict[str, str], field: str) -> str:
    """The value box of the correction row that names ``field`` (else the top of the form)."""
    for row in range(1, CHANGE_ROWS + 1):
        if values[f"change_field_{row}"] == field:
            return f"change_value_{row}"
    return ""


def _changes(values: dict[str, str]) -> dict[str, str]:
    """The corrections asked for, ``{canonical field: correct value}`` (rows left empty are skipped); only for a
    rectification: values typed before the person chose another kind are not sent anywhere."""
    if values["kind"] != RequestKind.RECTIFICATION.value:
        return {}
    return {
        values[f"change_field_{row}"]: values[f"change_value_{row}"].strip()
        for row in range(1, CHANGE_ROWS + 1)
        if values[f"change_field_{row}"]
    }


def _check_changes(values: dict[str, str], offered: Collection[str]) -> dict[str, str]:
    """Each correction row is empty, or a field of the list with a value (a valid address for the email)."""
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for row in range(1, CHANGE_ROWS + 1):
        field, value = values[f"change_field_{row}"], values[f"change_value_{row}"]
        field_key, value_key = f"change_field_{row}", f"change_value_{row}"
        if field and field not in offered:
            errors[field_key] = "err_change_field"
        elif field in seen:
            errors[field_key] = "err_change_twice"
        elif value.strip() and not field:
            errors[field_key] = "err_change_field_missing"
        elif field and not value.strip():
            errors[value_key] = "err_change_value_missing"
        elif _CONTROL.search(value):
            errors[value_key] = "err_control"
        elif len(value.strip()) > MAX_CHANGE_VALUE:
            errors[value_key] = "err_change_value_long"
        elif field == "email" and not is_valid_email(value.strip()):
            errors[value_key] = "err_change_email"
        if field:
            seen.add(field)
    return errors


def _check(values: dict[str, str], offered: Collection[str] = CANONICAL_FIELDS) -> dict[str, str]:
    """Every error at once (field -> text key), by the rules of ``prepare``, so the person fixes the form in
    one go; the sink checks again and stays the authority."""
    errors: dict[str, str] = {}
    if values["kind"] not in _CHOICES:
        errors["kind"] = "err_kind"
    email = values["email"].strip()
    if not email:
        errors["email"] = "err_email_missing"
    elif not is_valid_email(email):
        errors["email"] = "err_email_invalid"
    if _CONTROL.search(values["name"]):
        errors["name"] = "err_control"
    elif len(" ".join(values["name"].split())) > MAX_NAME:
        errors["name"] = "err_name_long"
    if _CONTROL.search(values["details"]):
        errors["details"] = "err_control"
    elif len(values["details"]) > MAX_DETAILS:
        errors["details"] = "err_details_long"
    if values["kind"] == RequestKind.POST_MORTEM.value:
        deceased = values["deceased_email"].strip()
        if not deceased:
            errors["deceased_email"] = "err_deceased_missing"
        elif not is_valid_email(deceased):
            errors["deceased_email"] = "err_deceased_invalid"
        elif deceased.lower() == email.lower():
            errors["deceased_email"] = "err_deceased_self"
        if _CONTROL.search(values["deceased_name"]):
            errors["deceased_name"] = "err_control"
        elif len(" ".join(values["deceased_name"].split())) > MAX_NAME:
            errors["deceased_name"] = "err_name_long"
        if values["quality"] not in ("", *_QUALITIES):
            errors["quality"] = "err_quality"
    if values["kind"] == RequestKind.RESTRICTION.value and values["ground"] not in GROUNDS:
        errors["ground"] = "err_ground"
    if values["kind"] == RequestKind.RECTIFICATION.value:
        row_errors = _check_changes(values, offered)
        errors.update(row_errors)
        if not row_errors and not _changes(values) and not values["details"].strip() and "details" not in errors:
            errors["details"] = "err_details_rectification"
    return errors


def form_router(
    sink: IntakeSink,
    *,
    csrf_key: bytes,
    default_language: str = "fr",
    public_path: str = "",
    clock: Callable[[], datetime] | None = None,
    controller_name: str = "",
    rectifiable: Collection[str] = CANONICAL_FIELDS,
    consent_purposes: Callable[[], list[ConsentPurpose]] = list,
    attachments: AttachmentStore | None = None,
    timezone: str = "Europe/Paris",
) -> APIRouter:
    """The public form: ``GET /``, ``POST /`` and ``GET /submitted`` (see the module docstring).

    ``csrf_key`` (at least 16 random bytes) signs the CSRF values and the confirmation links; keep it
    stable across restarts and replicas, or forms opened before a restart are refused. ``clock`` (default:
    now in UTC) dates and expires the CSRF values. ``rectifiable``: the fields a correction may name, those the
    connectors can correct (:func:`connectors.config.rectifiable_fields`); the form offers only these.
    ``attachments``: where the documents of a request about a deceased person are sealed; without it the form
    offers no file input and stays urlencoded. ``timezone``: the controller's, whose month names a reserved request
    id (``DSR_TIMEZONE``).
    """
    if len(csrf_key) < 16:
        raise ValueError("csrf_key must be at least 16 random bytes")
    if public_path and not public_path.startswith("/"):
        raise ValueError(f"public_path must start with '/', got {public_path!r}")
    prefix = public_path.rstrip("/")
    default = default_language if default_language in LANGUAGES else "fr"
    now_fn = clock or (lambda: datetime.now(UTC))
    csrf = _Csrf(csrf_key)
    address_seal = _AddressSeal(csrf_key)
    offered = [f for f in RECTIFIABLE_FIELDS if f in rectifiable]
    router = APIRouter()

    def form_url(lang: str) -> str:
        return f"{prefix}/?lang={lang}"

    def request_language(request: Request, posted: str | None = None) -> str:
        """The posted page language, else ``?lang``, else ``Accept-Language``, else the default."""
        if posted is not None and posted in LANGUAGES:
            return posted
        asked = request.query_params.get("lang", "")
        if asked in LANGUAGES:
            return asked
        return choose_language(request.headers.get("accept-language"), default)

    def headers_for(request: Request, extra: dict[str, str] | None = None) -> dict[str, str]:
        return security_headers(vary="Accept-Language, Cookie", hsts=request.url.scheme == "https", extra=extra)

    def page(request: Request, lang: str, template: str, context: dict[str, Any], *, status: int = 200,
             href: Callable[[str], str] = form_url, extra: dict[str, str] | None = None) -> HTMLResponse:
        """A page of the form in ``lang``, with the language switch (``href(other)``: the same page in another)."""
        switch = [{"lang": other, "name": FORM[other]["language_name"], "url": href(other)} for other in LANGUAGES]
        return render(request, template, {"lang": lang, "text": FORM[lang], "switch": switch, **context},
                      status=status, headers=headers_for(request, extra))

    def message_page(
        request: Request, lang: str, status: int, title_key: str, body_key: str, *, extra: dict[str, str] | None = None
    ) -> HTMLResponse:
        text = FORM[lang]
        return page(request, lang, "form_message.html", {
            "title": text[title_key], "paragraph": text[body_key], "form_url": form_url(lang),
        }, status=status, extra=extra)

    def form_page(
        request: Request,
        lang: str,
        *,
        status: int = 200,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        top: str = "",
        extra: dict[str, str] | None = None,
        ticked: list[str] | None = None,
        **fmt: object,
    ) -> HTMLResponse:
        text = FORM[lang]
        errors = errors or {}
        purposes = consent_purposes()
        summary = [{"target": None, "text": text[top].format(**fmt)}] if top else []
        summary += [  # in the order of the page
            {"target": "kind-access" if name == "kind" else name, "text": text[errors[name]]}
            for name in _ERROR_ORDER if name in errors
        ]
        controller = controller_name.strip()
        nonce = _cookie_nonce(request) or secrets.token_bytes(_NONCE_BYTES)
        response = page(request, lang, "form.html", {
            "title": text["error_prefix"] + text["title"] if summary else text["title"],
            "summary": summary,
            "errors": errors,
            "values": values or dict.fromkeys(_FIELDS, ""),
            "intro": text["intro_named"].format(controller=controller) if controller else text["intro_generic"],
            "form_url": form_url(lang),
            "csrf_token": csrf.issue(now_fn(), nonce),
            "kinds": [k for k in _CHOICES if k != RequestKind.CONSENT_WITHDRAWAL.value or purposes],
            # Withdrawal of consent: one checkbox per consent purpose of the profile (none ticked: all of them).
            "purposes": [{"key": p.key, "name": p.name(lang)} for p in purposes],
            "ticked": set(ticked or []),
            "grounds": GROUNDS,
            "max_name": MAX_NAME,
            "max_details": MAX_DETAILS,
            "change_rows": range(1, CHANGE_ROWS + 1),
            "rectifiable": [{"value": f, "label": text[f"field_{f}"]} for f in offered],
            "max_change_value": MAX_CHANGE_VALUE,
            "qualities": [{"value": q, "label": text[f"quality_{q}"]} for q in _QUALITIES],
            "uploads": attachments is not None,
        }, status=status, extra=extra)
        response.set_cookie(
            CSRF_COOKIE,
            _b64(nonce),
            max_age=int(CSRF_LIFETIME.total_seconds()),
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    def confirmation_signature(kind: str, due: str) -> str:
        message = "\x00".join((kind, due)).encode()
        return _b64(hmac.new(csrf_key, _CONFIRMATION_CONTEXT + message, hashlib.sha256).digest())

    def confirmation_query(accepted: Accepted, lang: str, email: str, choice: str = "") -> dict[str, str]:
        # The neutral receipt: never the reference, nor whether the submission was attached to a request under
        # way (``accepted`` dates are the submission's own either way); the address given, sealed. Named as the
        # person chose it.
        kind = choice if choice == STOP_MARKETING else RequestKind(accepted.kind).value
        params = {"kind": kind, "due": accepted.deadline.isoformat(), "to": address_seal.seal(email, now_fn())}
        params["sig"] = confirmation_signature(params["kind"], params["due"])
        params["lang"] = lang
        return params

    @router.get("/", include_in_schema=False)
    async def show_form(request: Request) -> Response:
        return form_page(request, request_language(request))

    @router.post("/", include_in_schema=False)
    async def submit(request: Request) -> Response:
        lang = request_language(request)  # the form's action carries ?lang, so even a 413 page is right
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        uploads: list[Upload] = []
        try:
            if content_type == MULTIPART_TYPE and attachments is not None:  # else 415, as any other type
                fields, uploads = await read_multipart(request, max_fields=_MAX_FIELDS, max_field_bytes=MAX_FORM_BYTES)
            else:
                fields = await read_form(request, max_bytes=MAX_FORM_BYTES, max_fields=_MAX_FIELDS)
        except FormRefused as refused:
            if refused.status == 413 and content_type == MULTIPART_TYPE and attachments is not None:
                return message_page(request, lang, 413, "files_too_large_title", "files_too_large_body",
                                    extra={"Connection": "close"})
            if refused.status == 413:
                return message_page(request, lang, 413, "too_large_title", "too_large_body",
                                    extra={"Connection": "close"})
            if refused.status == 415:
                return message_page(request, lang, 415, "bad_form_title", "unsupported_body")
            return form_page(request, lang, status=400, top="err_unreadable")

        posted_language = fields.get("language", [""])
        lang = request_language(request, posted_language[0] if len(posted_language) == 1 else None)
        token = fields.get(CSRF_FIELD, [])
        if len(token) != 1 or not csrf.check(token[0], request.cookies.get(CSRF_COOKIE), now_fn()):
            return message_page(request, lang, 403, "csrf_title", "csrf_body")

        values = {name: (fields.get(name) or [""])[0] for name in _FIELDS}
        # Browsers send a textarea's line breaks as CRLF; one character each is what maxlength counted.
        values["details"] = values["details"].replace("\r\n", "\n")
        errors = {name: "err_duplicate" for name in _FIELDS if len(fields.get(name, [])) > 1}
        for name, key in _check(values, offered).items():
            errors.setdefault(name, key)
        post_mortem = values["kind"] == RequestKind.POST_MORTEM.value
        # Files sent with another kind go nowhere (a browser sends what was chosen before the kind changed).
        documents = [u for u in uploads if u.field == DOCUMENTS_FIELD] if post_mortem else []
        if documents:
            if sum(len(u.data) for u in documents) > MAX_TOTAL_BYTES:
                return message_page(request, lang, 413, "files_too_large_title", "files_too_large_body")
            if document_error := _check_documents(documents, stored=attachments is not None):
                errors[DOCUMENTS_FIELD] = document_error
        if errors:
            if documents and DOCUMENTS_FIELD not in errors:
                errors[DOCUMENTS_FIELD] = "err_files_again"  # nothing was kept: a browser forgets chosen files
            return form_page(request, lang, status=400, values=values, errors=errors,
                             ticked=fields.get("purpose", []))

        marketing = values["kind"] == STOP_MARKETING
        submission = Submission(
            kind=RequestKind.OBJECTION.value if marketing else values["kind"],
            scope=ObjectionScope.MARKETING.value if marketing else "",
            # Chosen for a restriction only: a ground left selected before the person chose another kind goes nowhere.
            ground=values["ground"] if values["kind"] == RequestKind.RESTRICTION.value else "",
            email=values["email"],
            name=values["name"],
            details=values["details"],
            changes=_changes(values),
            # Only for a request about a deceased person: what was typed before choosing another kind goes nowhere.
            deceased_email=values["deceased_email"].strip() if post_mortem else "",
            deceased_name=values["deceased_name"].strip() if post_mortem else "",
            quality=values["quality"].strip() if post_mortem else "",
            channel=Channel.FORM.value,
            language=lang,
            purposes=fields.get("purpose", []) if values["kind"] == RequestKind.CONSENT_WITHDRAWAL.value else [],
        )
        reserved = ""
        if documents and attachments is not None:
            # Sealed first, under the id the request will have: once it starts, its files are there.
            reserved = new_request_id(now_fn().astimezone(ZoneInfo(timezone)).date())
            try:
                await run_in_threadpool(_store, attachments, reserved, documents)
            except Exception as exc:
                logger.error("intake form: documents could not be stored (%s)", type(exc).__name__)
                await run_in_threadpool(_discard, attachments, reserved)  # nothing was submitted: nothing kept
                return form_page(request, lang, status=503, values=values, top="err_unavailable",
                                 extra={"Retry-After": "60"})
            submission = replace(submission, request_id=reserved, documents=len(documents))
        try:
            accepted = await sink.submit(submission, client=request.client.host if request.client else None)
        except SubmissionError as exc:
            if reserved:
                await run_in_threadpool(_discard, attachments, reserved)
            field, key = _field_for(exc, values)
            errors = {DOCUMENTS_FIELD: "err_files_again"} if reserved else {}
            if not field:
                return form_page(request, lang, status=400, values=values, top=key, errors=errors,
                                 ticked=fields.get("purpose", []))
            return form_page(request, lang, status=400, values=values, errors={**errors, field: key},
                             ticked=fields.get("purpose", []))
        except RateLimited as exc:
            if reserved:
                await run_in_threadpool(_discard, attachments, reserved)
            seconds = max(1, int(exc.retry_after))
            return form_page(
                request,
                lang,
                status=429,
                values=values,
                top="err_rate_limited",
                extra={"Retry-After": str(seconds)},
                duration=_minutes(max(1, math.ceil(seconds / 60)), lang),
            )
        except Exception as exc:
            # No message: it could carry what the person typed. The traceback is for debug logs only.
            logger.error("intake form: the request could not be recorded (%s)", type(exc).__name__)
            logger.debug("intake form: sink failure", exc_info=True)
            if reserved:
                # The request may have started (a start whose answer was lost): its files stay where it expects
                # them; if it never started, staff delete them (dsr attachments delete-orphans).
                logger.warning("intake form: documents kept under %s, whose request may have started", reserved)
            return form_page(
                request, lang, status=503, values=values, top="err_unavailable", extra={"Retry-After": "60"}
            )

        if reserved and accepted.reference != reserved:
            # Attached to the request under way of the same sender and kind: the documents go with it.
            try:
                await run_in_threadpool(attachments.transfer, reserved, accepted.reference)  # type: ignore[union-attr]
            except Exception as exc:
                logger.error("intake form: documents under %s could not be moved to %s (%s)", reserved,
                             accepted.reference, type(exc).__name__)
        query = confirmation_query(accepted, lang, submission.email, values["kind"])
        location = f"{prefix}/submitted?{urlencode(query)}"
        return RedirectResponse(location, status_code=303, headers=headers_for(request))

    @router.get("/submitted", include_in_schema=False)
    async def confirmation(request: Request) -> Response:
        lang = request_language(request)
        query = request.query_params
        kind, due = (query.get(k, "") for k in ("kind", "due"))
        signature = query.get("sig", "")
        expected = confirmation_signature(kind, due)
        try:
            deadline = date.fromisoformat(due)
        except ValueError:
            deadline = None
        if (
            not hmac.compare_digest(signature.encode("ascii", "replace"), expected.encode("ascii"))
            or deadline is None
            or kind not in _CHOICES
        ):
            return message_page(request, lang, 403, "invalid_confirmation_title", "invalid_confirmation_body")

        text = FORM[lang]

        def same_page(other: str) -> str:
            params = {k: query.get(k, "") for k in ("kind", "due", "to", "sig")}
            return f"{prefix}/submitted?{urlencode({**params, 'lang': other})}"

        return page(request, lang, "submitted.html", {
            "title": text["confirm_title"],
            "kind_label": text[f"kind_{kind}"],
            "deadline": _format_date(deadline, lang),
            "address": address_seal.open(query.get("to", ""), now_fn()) or "",
            "controller_name": controller_name.strip(),
        }, href=same_page)

    return router

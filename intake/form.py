"""The public web form through which data subjects send their requests (French or English, no JavaScript).

Flow
----
1. ``GET /`` (``?lang=fr|en`` wins over ``Accept-Language``): the form. It asks for the kind of request
   (radio buttons, each right explained in plain words), the email address, the name and details; the
   language of the replies is the page's (hidden field). Every page carries the same security headers
   as the download pages of :mod:`intake.app` and no script at all.
2. ``POST /`` (``application/x-www-form-urlencoded``, at most :data:`MAX_FORM_BYTES`, else 413; any other
   content type 415): the CSRF value is checked first (403 page, nothing created), then every field
   (all errors at once, each next to its field and summarised at the top: 400, typed values kept), then
   the :class:`~intake.submission.Submission` goes to :meth:`IntakeSink.submit`, which validates again
   (it is the authority: a :class:`~intake.submission.SubmissionError` it raises is shown the same way).
   :class:`~intake.service.RateLimited` gives 429 with ``Retry-After``; any other failure of the sink 503,
   with the form and its values kept so nothing typed is lost.
3. Success: ``303 See Other`` to ``GET /submitted?kind=…&due=…&sig=…&lang=…`` (Post/Redirect/Get: reloading
   the confirmation never submits twice). The parameters are signed with ``csrf_key`` so nobody can make this
   site display a confirmation of their own wording; ``lang`` is not signed (it only picks one of our two
   translations). The confirmation is the same neutral receipt for every submission: no reference (it goes
   to the address given, by email) and the deadline of this submission's own receipt, so that typing someone
   else's address never reveals whether they have a request under way (it is attached to theirs, and they are
   told by email).

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
import html
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dsr.domain.model import Channel, RequestKind, is_valid_email
from dsr.web.body import BodyTooLarge, read_limited_body
from intake.app import CSP, choose_language
from intake.service import Accepted, IntakeSink, RateLimited
from intake.submission import MAX_DETAILS, MAX_NAME, Submission, SubmissionError
from templates import format_date

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "CSRF_LIFETIME", "MAX_FORM_BYTES", "form_router"]

logger = logging.getLogger(__name__)

# Details may hold MAX_DETAILS characters; percent-encoded, an accented or Cyrillic character takes 6
# bytes, so 16 KiB would turn a legitimate long message into a 413. 64 KiB fits 10,000 such characters.
MAX_FORM_BYTES = 64 * 1024
"""Oversize bodies up to this size are read and thrown away, so the browser shows our 413 page."""
_MAX_FIELDS = 20
CSRF_FIELD = "csrf"
CSRF_COOKIE = "dsr_form"
CSRF_LIFETIME = timedelta(hours=2)
_CLOCK_SKEW = timedelta(minutes=5)
_NONCE_BYTES = 16
_CSRF_CONTEXT = b"dsr/intake-form/csrf/v1\x00"
_CONFIRMATION_CONTEXT = b"dsr/intake-form/confirmation/v1\x00"
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")
# C0 controls (tab, line feed and carriage return excepted) and DEL: never typed by a person, and NUL
# cannot even be stored in PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LANGUAGES = ("fr", "en")
_FIELDS = ("kind", "email", "name", "details")
_KINDS = tuple(kind.value for kind in RequestKind)

_TEXT: dict[str, dict[str, str]] = {
    "fr": {
        "language_name": "Français",
        "switch_label": "Langue",
        "title": "Faire une demande sur vos données personnelles",
        "error_prefix": "Erreur\u00a0: ",
        "intro_named": "Ce formulaire vous permet d’exercer vos droits sur les données personnelles que "
        "{controller} détient sur vous, comme le prévoit le Règlement général sur la protection des "
        "données (RGPD). C’est gratuit.",
        "intro_generic": "Ce formulaire vous permet d’exercer vos droits sur les données personnelles que "
        "nous détenons sur vous, comme le prévoit le Règlement général sur la protection des données "
        "(RGPD). C’est gratuit.",
        "required_note": "Les champs marqués «\u00a0obligatoire\u00a0» doivent être remplis.",
        "required": "obligatoire",
        "optional": "facultatif",
        "kind_legend": "Que souhaitez-vous faire\u00a0?",
        "kind_access": "Accéder à vos données",
        "kind_access_hint": "Obtenir une copie de vos données et savoir comment elles sont utilisées.",
        "kind_rectification": "Corriger vos données",
        "kind_rectification_hint": "Faire corriger des données fausses ou incomplètes. Dites-nous ce qui est "
        "faux et la bonne valeur dans le champ «\u00a0Précisions\u00a0».",
        "kind_erasure": "Effacer vos données",
        "kind_erasure_hint": "Faire supprimer vos données. Nous ne gardons que ce que la loi nous oblige à "
        "conserver (les factures, par exemple), et nous vous dirons quoi et jusqu’à quand.",
        "kind_portability": "Récupérer vos données pour les réutiliser ailleurs",
        "kind_portability_hint": "Recevoir les données que vous nous avez fournies dans un format lisible par "
        "un ordinateur, pour les transmettre à un autre service.",
        "email_label": "Votre adresse électronique",
        "email_hint": "Nous vous écrirons à cette adresse pour vérifier qu’elle est bien la vôtre, puis pour "
        "vous répondre. Utilisez celle que vous utilisez chez nous.",
        "name_label": "Vos prénom et nom",
        "name_hint": "Ils nous aident à retrouver vos données, par exemple si vous avez changé d’adresse.",
        "details_label": "Précisions",
        "details_hint": "Pour une correction, dites-nous ce qui est faux et la bonne valeur (obligatoire dans "
        "ce cas). Sinon, vous pouvez préciser les services ou les comptes concernés.",
        "reply_language": "Nous vous répondrons en français.",
        "submit": "Envoyer ma demande",
        "next_title": "Et ensuite\u00a0?",
        "next_confirm": "Nous vous envoyons un courriel pour confirmer votre adresse électronique\u00a0: "
        "cliquez sur le lien qu’il contient.",
        "next_deadline": "Nous vous répondons dans un délai d’un mois à compter de la réception de votre "
        "demande. Si elle est complexe, ce délai peut être prolongé de deux mois\u00a0; nous vous le dirions "
        "alors avant la fin du premier mois, en expliquant pourquoi.",
        "privacy_title": "Ce que nous faisons des informations de ce formulaire",
        "privacy_body": "Nous les utilisons uniquement pour traiter votre demande et pouvoir prouver que nous y "
        "avons répondu, comme la loi nous y oblige. Nous ne les utilisons pas à d’autres fins, par exemple "
        "commerciales. L’adresse IP de votre connexion sert seulement à empêcher les abus (trop de demandes "
        "envoyées). Ce formulaire dépose un seul cookie, nécessaire à sa sécurité\u00a0: il ne contient "
        "aucune donnée personnelle et expire après deux heures.",
        "summary_title": "Votre demande n’a pas été envoyée",
        "err_kind": "Choisissez ce que vous souhaitez faire.",
        "err_email_missing": "Saisissez votre adresse électronique.",
        "err_email_invalid": "Saisissez une adresse électronique valide, par exemple nom@exemple.fr.",
        "err_name_long": f"Votre nom doit faire au plus {MAX_NAME}\u00a0caractères.",
        "err_details_long": f"Les précisions doivent faire au plus {MAX_DETAILS:,}\u00a0caractères.".replace(
            ",", "\u00a0"
        ),
        "err_details_rectification": "Pour une correction, dites-nous ce qui est faux et la bonne valeur.",
        "err_control": "Ce champ contient des caractères non autorisés.",
        "err_duplicate": "Ce champ a été envoyé plusieurs fois. Remplissez-le de nouveau.",
        "err_unreadable": "Le formulaire n’a pas pu être lu. Remplissez-le de nouveau.",
        "err_rejected": "Votre demande n’a pas pu être enregistrée. Vérifiez vos réponses et réessayez.",
        "err_rate_limited": "Trop de demandes ont été envoyées depuis votre connexion ou pour cette adresse. "
        "Réessayez dans {duration}.",
        "err_unavailable": "Un problème temporaire nous a empêchés d’enregistrer votre demande. Vos réponses "
        "sont conservées ci-dessous\u00a0; réessayez dans quelques minutes.",
        "csrf_title": "Ce formulaire a expiré",
        "csrf_body": "Pour votre sécurité, le formulaire n’est valable que deux heures et seulement dans le "
        "navigateur où il a été ouvert. Rechargez le formulaire et envoyez votre demande de nouveau\u00a0: "
        "rien n’a été enregistré.",
        "too_large_title": "Le formulaire envoyé est trop volumineux",
        "too_large_body": "Raccourcissez vos précisions et envoyez votre demande de nouveau\u00a0: rien n’a été "
        "enregistré.",
        "unsupported_title": "Le formulaire n’a pas pu être lu",
        "unsupported_body": "Envoyez votre demande depuis le formulaire de cette page\u00a0: rien n’a été enregistré.",
        "back_to_form": "Revenir au formulaire",
        "confirm_title": "Votre demande a bien été reçue",
        "confirm_reference": "La référence de votre demande figure dans le courriel que nous envoyons à l’adresse "
        "indiquée\u00a0: rappelez-la si vous nous contactez.",
        "confirm_kind": "Votre demande\u00a0:",
        "confirm_deadline": "Réponse au plus tard le\u00a0:",
        "confirm_inbox": "Vérifiez votre boîte de réception\u00a0: nous venons de vous écrire. Si nous devons "
        "confirmer votre adresse électronique, le courriel contient un lien, et nous ne pouvons traiter votre "
        "demande qu’après cette confirmation. Pensez à regarder dans vos courriels indésirables.",
        "confirm_extension": "Si votre demande est complexe, ce délai peut être prolongé de deux mois\u00a0; "
        "nous vous le dirions avant cette date, en expliquant pourquoi.",
        "invalid_confirmation_title": "Cette page n’est pas valide",
        "invalid_confirmation_body": "Si vous venez d’envoyer une demande, vérifiez votre boîte de réception"
        "\u00a0: nous vous avons écrit. Sinon, remplissez le formulaire.",
    },
    "en": {
        "language_name": "English",
        "switch_label": "Language",
        "title": "Make a request about your personal data",
        "error_prefix": "Error: ",
        "intro_named": "Use this form to exercise your rights over the personal data {controller} holds about "
        "you, as the General Data Protection Regulation (GDPR) provides. It is free of charge.",
        "intro_generic": "Use this form to exercise your rights over the personal data we hold about you, as "
        "the General Data Protection Regulation (GDPR) provides. It is free of charge.",
        "required_note": "Fields marked “required” must be filled in.",
        "required": "required",
        "optional": "optional",
        "kind_legend": "What would you like to do?",
        "kind_access": "See your data",
        "kind_access_hint": "Get a copy of your data and know how it is used.",
        "kind_rectification": "Correct your data",
        "kind_rectification_hint": "Have wrong or incomplete data corrected. Tell us what is wrong and the "
        "correct value in the “Details” box.",
        "kind_erasure": "Erase your data",
        "kind_erasure_hint": "Have your data deleted. We keep only what the law requires us to keep (invoices, "
        "for example), and we will tell you what and until when.",
        "kind_portability": "Take your data elsewhere",
        "kind_portability_hint": "Receive the data you gave us in a format a computer can read, to pass it on "
        "to another service.",
        "email_label": "Your email address",
        "email_hint": "We will write to this address to check that it is yours, then to answer you. Use the "
        "one you use with us.",
        "name_label": "Your full name",
        "name_hint": "It helps us find your data, for example if you changed your email address.",
        "details_label": "Details",
        "details_hint": "For a correction, tell us what is wrong and the correct value (required in that case). "
        "Otherwise you may say which services or accounts are concerned.",
        "reply_language": "We will reply in English.",
        "submit": "Send my request",
        "next_title": "What happens next?",
        "next_confirm": "We send you an email to confirm your email address: click the link in it.",
        "next_deadline": "We reply within one month of receiving your request. If it is complex, this can be "
        "extended by two months; we would tell you so, and why, before the first month ends.",
        "privacy_title": "What we do with the information in this form",
        "privacy_body": "We use it only to handle your request and to be able to prove that we answered it, as "
        "the law requires. We do not use it for anything else, such as marketing. The IP address of your "
        "connection is used only to prevent abuse (too many requests). This form sets a single cookie, needed "
        "for its security: it holds no personal data and expires after two hours.",
        "summary_title": "Your request was not sent",
        "err_kind": "Choose what you would like to do.",
        "err_email_missing": "Enter your email address.",
        "err_email_invalid": "Enter a valid email address, like name@example.com.",
        "err_name_long": f"Your name must be {MAX_NAME} characters or fewer.",
        "err_details_long": f"Details must be {MAX_DETAILS:,} characters or fewer.",
        "err_details_rectification": "For a correction, tell us what is wrong and the correct value.",
        "err_control": "This field contains characters that are not allowed.",
        "err_duplicate": "This field was sent more than once. Fill it in again.",
        "err_unreadable": "The form could not be read. Fill it in again.",
        "err_rejected": "Your request could not be recorded. Check your answers and try again.",
        "err_rate_limited": "Too many requests were sent from your connection or for this address. Try again "
        "in {duration}.",
        "err_unavailable": "A temporary problem prevented us from recording your request. Your answers are kept "
        "below; try again in a few minutes.",
        "csrf_title": "This form has expired",
        "csrf_body": "For your security, the form is valid for two hours and only in the browser where it was "
        "opened. Reload the form and send your request again: nothing was recorded.",
        "too_large_title": "The form sent is too large",
        "too_large_body": "Shorten your details and send your request again: nothing was recorded.",
        "unsupported_title": "The form could not be read",
        "unsupported_body": "Send your request from the form on this page: nothing was recorded.",
        "back_to_form": "Back to the form",
        "confirm_title": "We have received your request",
        "confirm_reference": "Your request’s reference is in the email we send to the address you gave: quote it "
        "if you contact us.",
        "confirm_kind": "Your request:",
        "confirm_deadline": "Answer by:",
        "confirm_inbox": "Check your inbox: we have just written to you. If we need to confirm your email address, "
        "the email has a link, and we can only handle your request once you confirm it. Look in your spam folder "
        "too.",
        "confirm_extension": "If your request is complex, this can be extended by two months; we would tell "
        "you so, and why, before that date.",
        "invalid_confirmation_title": "This page is not valid",
        "invalid_confirmation_body": "If you have just sent a request, check your inbox: we have written to "
        "you. Otherwise, fill in the form.",
    },
}

# Contrast: text #1a1a1a, links #1d4ed8 and errors #b00020 on white all exceed WCAG AA (4.5:1). Focus is
# a thick outline on every control and link, never removed.
_STYLE = (
    "body{font-family:system-ui,sans-serif;line-height:1.5;max-width:40rem;margin:2rem auto;padding:0 1rem;"
    "color:#1a1a1a;background:#fff}"
    "h1{font-size:1.75rem;line-height:1.2}h2{font-size:1.25rem;margin-top:2rem}"
    "a{color:#1d4ed8}"
    "a:focus,input:focus,textarea:focus,button:focus{outline:3px solid #1d4ed8;outline-offset:2px}"
    ".lang ul{list-style:none;margin:0;padding:0;display:flex;gap:1rem;justify-content:flex-end}"
    ".lang [aria-current]{font-weight:600;text-decoration:none;color:#1a1a1a}"
    "fieldset{border:0;padding:0;margin:1.5rem 0 0}legend{font-weight:600;font-size:1.1rem}"
    ".field{margin-top:1.5rem}.field>label{display:block;font-weight:600}"
    ".choice{display:flex;gap:.6rem;align-items:flex-start;margin-top:.75rem}"
    ".choice input{width:1.4rem;height:1.4rem;margin:.15rem 0 0;flex:none}"
    ".choice label{font-weight:600}.choice .hint{margin:0}"
    "input[type=email],input[type=text],textarea{font:inherit;font-size:1.1rem;padding:.5rem;width:100%;"
    "box-sizing:border-box;border:2px solid #555;background:#fff;color:#1a1a1a}"
    "textarea{min-height:8rem}"
    "[aria-invalid=true]{border-color:#b00020}"
    "button{font:inherit;font-size:1.1rem;margin-top:1.5rem;padding:.6rem 1.2rem;background:#1d4ed8;color:#fff;"
    "border:0;cursor:pointer}"
    ".hint{color:#444;font-size:.95rem;margin:.25rem 0}"
    ".error{color:#b00020;font-weight:600;margin:.25rem 0}"
    ".summary{border:4px solid #b00020;padding:1rem;margin:1rem 0}.summary h2{margin-top:0}"
    ".summary a{color:#b00020;font-weight:600}"
    ".ref{font-size:1.4rem;font-family:ui-monospace,monospace;letter-spacing:.05em}"
    "dt{font-weight:600;margin-top:.75rem}dd{margin:0}"
)


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


def _parse_form(body: bytes) -> dict[str, list[str]]:
    """Every value of every field of an urlencoded body; ValueError when it is not one (bad UTF-8, raw or
    percent-encoded, or too many fields)."""
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS, errors="strict"):
        fields.setdefault(name, []).append(value)
    return fields


def _field_for(error: SubmissionError, values: dict[str, str]) -> tuple[str, str]:
    """``(field, text key)`` for an error message of :func:`intake.submission.prepare`; field ``""`` is the
    top of the form."""
    message = str(error)
    if message.startswith("kind"):
        return "kind", "err_kind"
    if message.startswith(("email", "the new email")):
        return "email", "err_email_invalid" if values["email"].strip() else "err_email_missing"
    if message.startswith("name"):
        return "name", "err_name_long"
    if message.startswith("details"):
        return "details", "err_details_long"
    if message.startswith("a rectification request"):
        return "details", "err_details_rectification"
    return "", "err_rejected"


def _check(values: dict[str, str]) -> dict[str, str]:
    """Every error at once (field -> text key), by the rules of ``prepare``, so the person fixes the form in
    one go; the sink checks again and stays the authority."""
    errors: dict[str, str] = {}
    if values["kind"] not in _KINDS:
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
    elif values["kind"] == RequestKind.RECTIFICATION.value and not values["details"].strip():
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
) -> APIRouter:
    """The public form: ``GET /``, ``POST /`` and ``GET /submitted`` (see the module docstring).

    ``csrf_key`` (at least 16 random bytes) signs the CSRF values and the confirmation links; keep it
    stable across restarts and replicas, or forms opened before a restart are refused. ``clock`` (default:
    now in UTC) dates and expires the CSRF values.
    """
    if len(csrf_key) < 16:
        raise ValueError("csrf_key must be at least 16 random bytes")
    if public_path and not public_path.startswith("/"):
        raise ValueError(f"public_path must start with '/', got {public_path!r}")
    prefix = public_path.rstrip("/")
    default = default_language if default_language in _LANGUAGES else "fr"
    now_fn = clock or (lambda: datetime.now(UTC))
    csrf = _Csrf(csrf_key)
    router = APIRouter()

    def form_url(lang: str) -> str:
        return f"{prefix}/?lang={lang}"

    def request_language(request: Request, posted: str | None = None) -> str:
        """The posted page language, else ``?lang``, else ``Accept-Language``, else the default."""
        if posted is not None and posted in _LANGUAGES:
            return posted
        asked = request.query_params.get("lang", "")
        if asked in _LANGUAGES:
            return asked
        return choose_language(request.headers.get("accept-language"), default)

    def headers_for(request: Request, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {
            "Content-Security-Policy": CSP,
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Vary": "Accept-Language, Cookie",
        }
        if request.url.scheme == "https":
            headers["Strict-Transport-Security"] = "max-age=31536000"
        headers.update(extra or {})
        return headers

    def switch(lang: str, href: Callable[[str], str]) -> str:
        items = []
        for other in _LANGUAGES:
            name = html.escape(_TEXT[other]["language_name"])
            url = html.escape(href(other))
            current = ' aria-current="true"' if other == lang else ""
            items.append(f'<li><a href="{url}" lang="{other}" hreflang="{other}"{current}>{name}</a></li>')
        label = html.escape(_TEXT[lang]["switch_label"])
        return f'<nav class="lang" aria-label="{label}"><ul>{"".join(items)}</ul></nav>\n'

    def document(lang: str, title: str, body: str, *, nav: str = "") -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{nav}<main>\n{body}\n</main>\n</body>\n</html>\n"
        )

    def message_page(
        request: Request, lang: str, status: int, title_key: str, body_key: str, *, extra: dict[str, str] | None = None
    ) -> HTMLResponse:
        text = _TEXT[lang]
        body = (
            f"<h1>{html.escape(text[title_key])}</h1>\n<p>{html.escape(text[body_key])}</p>\n"
            f'<p><a href="{html.escape(form_url(lang))}">{html.escape(text["back_to_form"])}</a></p>'
        )
        content = document(lang, text[title_key], body, nav=switch(lang, form_url))
        return HTMLResponse(content, status_code=status, headers=headers_for(request, extra))

    def form_page(
        request: Request,
        lang: str,
        *,
        status: int = 200,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        top: str = "",
        extra: dict[str, str] | None = None,
        **fmt: object,
    ) -> HTMLResponse:
        text = _TEXT[lang]
        values = values or dict.fromkeys(_FIELDS, "")
        errors = errors or {}
        esc = html.escape

        def error_of(name: str) -> str:
            if name not in errors:
                return ""
            return f'<p id="{name}-error" class="error">{esc(text[errors[name]])}</p>\n'

        def described(name: str, *ids: str) -> str:
            refs = [*ids, f"{name}-error"] if name in errors else list(ids)
            invalid = ' aria-invalid="true"' if name in errors else ""
            return f' aria-describedby="{" ".join(refs)}"{invalid}' if refs else invalid

        summary = ""
        if errors or top:
            links = []
            if top:
                links.append(f"<li>{esc(text[top].format(**fmt))}</li>")
            for name in _FIELDS:  # in the order of the page
                if name in errors:
                    target = "kind-access" if name == "kind" else name
                    links.append(f'<li><a href="#{target}">{esc(text[errors[name]])}</a></li>')
            # role="alert" makes screen readers announce it; autofocus (no script) brings the keyboard here.
            summary = (
                '<div class="summary" role="alert" aria-labelledby="summary-title" tabindex="-1" autofocus>\n'
                f'<h2 id="summary-title">{esc(text["summary_title"])}</h2>\n<ul>{"".join(links)}</ul>\n</div>\n'
            )

        controller = controller_name.strip()
        intro = text["intro_named"].format(controller=controller) if controller else text["intro_generic"]
        required = f' <span class="marker">({esc(text["required"])})</span>'
        optional = f' <span class="marker">({esc(text["optional"])})</span>'

        choices = []
        for kind in _KINDS:
            checked = " checked" if values["kind"] == kind else ""
            choices.append(
                '<div class="choice">'
                f'<input type="radio" id="kind-{kind}" name="kind" value="{kind}" required{checked}'
                f"{described('kind', f'kind-{kind}-hint')}>"
                f'<div><label for="kind-{kind}">{esc(text[f"kind_{kind}"])}</label>'
                f'<p id="kind-{kind}-hint" class="hint">{esc(text[f"kind_{kind}_hint"])}</p></div></div>\n'
            )
        kind_error_ref = ' aria-describedby="kind-error"' if "kind" in errors else ""

        nonce = _cookie_nonce(request) or secrets.token_bytes(_NONCE_BYTES)
        token = csrf.issue(now_fn(), nonce)
        # novalidate: the browser's own bubbles would pre-empt the server's messages, which are in the
        # page's language, next to each field and in the summary.
        body = (
            f"<h1>{esc(text['title'])}</h1>\n{summary}"
            f"<p>{esc(intro)}</p>\n<p>{esc(text['required_note'])}</p>\n"
            f'<form method="post" action="{esc(form_url(lang))}" novalidate>\n'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(token)}">\n'
            f'<input type="hidden" name="language" value="{lang}">\n'
            f"<fieldset{kind_error_ref}>\n<legend>{esc(text['kind_legend'])}{required}</legend>\n"
            f"{error_of('kind')}{''.join(choices)}</fieldset>\n"
            '<div class="field">\n'
            f'<label for="email">{esc(text["email_label"])}{required}</label>\n'
            f'<p id="email-hint" class="hint">{esc(text["email_hint"])}</p>\n{error_of("email")}'
            f'<input type="email" id="email" name="email" value="{esc(values["email"])}" required maxlength="254" '
            f'autocomplete="email" spellcheck="false"{described("email", "email-hint")}>\n</div>\n'
            '<div class="field">\n'
            f'<label for="name">{esc(text["name_label"])}{optional}</label>\n'
            f'<p id="name-hint" class="hint">{esc(text["name_hint"])}</p>\n{error_of("name")}'
            f'<input type="text" id="name" name="name" value="{esc(values["name"])}" maxlength="{MAX_NAME}" '
            f'autocomplete="name"{described("name", "name-hint")}>\n</div>\n'
            '<div class="field">\n'
            f'<label for="details">{esc(text["details_label"])}{optional}</label>\n'
            f'<p id="details-hint" class="hint">{esc(text["details_hint"])}</p>\n{error_of("details")}'
            f'<textarea id="details" name="details" rows="6" maxlength="{MAX_DETAILS}"'
            f"{described('details', 'details-hint')}>\n{esc(values['details'])}</textarea>\n</div>\n"
            f'<p class="hint">{esc(text["reply_language"])}</p>\n'
            f'<button type="submit">{esc(text["submit"])}</button>\n</form>\n'
            f"<h2>{esc(text['next_title'])}</h2>\n"
            f"<ol><li>{esc(text['next_confirm'])}</li><li>{esc(text['next_deadline'])}</li></ol>\n"
            f"<h2>{esc(text['privacy_title'])}</h2>\n<p>{esc(text['privacy_body'])}</p>"
        )
        title = text["title"] if not (errors or top) else text["error_prefix"] + text["title"]
        response = HTMLResponse(
            document(lang, title, body, nav=switch(lang, form_url)),
            status_code=status,
            headers=headers_for(request, extra),
        )
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

    def confirmation_query(accepted: Accepted, lang: str) -> dict[str, str]:
        # The neutral receipt: never the reference, nor whether the submission was attached to a request under
        # way (``accepted`` dates are the submission's own either way).
        params = {"kind": RequestKind(accepted.kind).value, "due": accepted.deadline.isoformat()}
        params["sig"] = confirmation_signature(params["kind"], params["due"])
        params["lang"] = lang
        return params

    @router.get("/", include_in_schema=False)
    async def show_form(request: Request) -> Response:
        return form_page(request, request_language(request))

    @router.post("/", include_in_schema=False)
    async def submit(request: Request) -> Response:
        lang = request_language(request)  # the form's action carries ?lang, so even a 413 page is right
        try:
            body = await read_limited_body(request, MAX_FORM_BYTES)
        except BodyTooLarge:
            return message_page(request, lang, 413, "too_large_title", "too_large_body", extra={"Connection": "close"})
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return message_page(request, lang, 415, "unsupported_title", "unsupported_body")
        try:
            fields = _parse_form(body)
        except ValueError:
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
        for name, key in _check(values).items():
            errors.setdefault(name, key)
        if errors:
            return form_page(request, lang, status=400, values=values, errors=errors)

        submission = Submission(
            kind=values["kind"],
            email=values["email"],
            name=values["name"],
            details=values["details"],
            channel=Channel.FORM.value,
            language=lang,
        )
        try:
            accepted = await sink.submit(submission, client=request.client.host if request.client else None)
        except SubmissionError as exc:
            field, key = _field_for(exc, values)
            if not field:
                return form_page(request, lang, status=400, values=values, top=key)
            return form_page(request, lang, status=400, values=values, errors={field: key})
        except RateLimited as exc:
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
            return form_page(
                request, lang, status=503, values=values, top="err_unavailable", extra={"Retry-After": "60"}
            )

        location = f"{prefix}/submitted?{urlencode(confirmation_query(accepted, lang))}"
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
            or kind not in _KINDS
        ):
            return message_page(request, lang, 403, "invalid_confirmation_title", "invalid_confirmation_body")

        text = _TEXT[lang]
        esc = html.escape
        body = (
            f"<h1>{esc(text['confirm_title'])}</h1>\n"
            "<dl>\n"
            f"<dt>{esc(text['confirm_kind'])}</dt>\n<dd>{esc(text[f'kind_{kind}'])}</dd>\n"
            f"<dt>{esc(text['confirm_deadline'])}</dt>\n<dd>{esc(_format_date(deadline, lang))}</dd>\n"
            "</dl>\n"
            f"<p><strong>{esc(text['confirm_inbox'])}</strong></p>\n"
            f"<p>{esc(text['confirm_reference'])}</p>\n"
            f"<p>{esc(text['confirm_extension'])}</p>"
        )

        def same_page(other: str) -> str:
            params = {k: query.get(k, "") for k in ("kind", "due", "sig")}
            return f"{prefix}/submitted?{urlencode({**params, 'lang': other})}"

        content = document(lang, text["confirm_title"], body, nav=switch(lang, same_page))
        return HTMLResponse(content, headers=headers_for(request))

    return router

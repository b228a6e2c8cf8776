"""Notice emails, one folder per language (``fr/``, ``en/``), rendered with Jinja2.

Each :class:`~dsr.domain.model.NoticeTemplate` has three files per language: ``<name>.subject`` (one line),
``<name>.txt`` and ``<name>.html``. Shared layout and macros live in ``_shared/``; files whose name starts
with ``_`` are partials, never rendered on their own.

Context values are strings and any key but ``reference`` and ``kind`` may be missing: templates test
optional keys with ``{% if key %}``, and printing a missing key is an error (a typo fails loudly instead
of sending a blank). Operator notices only ever see :data:`OPERATOR_KEYS`, so the subject's name or
confirmation link cannot leak into a shared mailbox even if the caller passes them.

Prose shared by a ``.txt`` and an ``.html`` body lives in ``.txt`` macros (``_phrases.txt``,
``_reply_phrases.txt``...). A macro keeps the escaping of the file that defines it: one from a ``.txt`` file
returns plain text, which an ``.html`` template that prints it escapes exactly once, context values included
(see :class:`_ImportedMacro`); an ``.html`` macro cannot be printed into a ``.txt`` template at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateRuntimeError,
    pass_context,
    pass_eval_context,
    select_autoescape,
)
from jinja2.nodes import EvalContext
from jinja2.runtime import Macro
from markupsafe import Markup, escape

from dsr.config.profile import SupervisoryAuthority
from dsr.domain.model import OPERATOR_TEMPLATES, Language, NoticeTemplate, RequestKind, Stage, strip_controls

__all__ = ["CONTEXT_KEYS", "OPERATOR_KEYS", "PRE_IDENTITY_TEMPLATES", "RenderedNotice", "render_notice"]

TEMPLATE_DIR = Path(__file__).resolve().parent

CONTEXT_KEYS = frozenset({
    "reference", "kind", "received", "deadline", "previous_deadline", "reason", "subject_name",
    "controller_name", "verify_url", "verify_code", "days", "label", "days_left", "stage", "ui_url",
    "connector", "error", "residuals", "reminder", "attachments", "sender_check", "failing_minutes",
    "authority_name", "authority_postal_address", "authority_website", "ground", "identity", "late",
    "suspended", "suspended_on", "resumed_on", "document_reason", "status_url", "by_staff", "refused", "page", "wrong",
    "consent_url",
    "lift_on", "lift_why",
    "documents",  # post_mortem: how many files came with the form (a count)
    "source",  # operator_correspondence: "form" when the files came with the web form
})
"""Every key a template may use; other keys are ignored."""

OPERATOR_KEYS = frozenset({
    "reference", "kind", "received", "deadline", "label", "days_left", "stage", "ui_url", "connector", "error",
    "residuals", "reminder", "attachments", "sender_check", "failing_minutes", "refused", "page", "wrong",
    "source",
})
"""The only keys operator notices receive: nothing that names or reaches the data subject."""

PRE_IDENTITY_TEMPLATES = frozenset({
    NoticeTemplate.ACKNOWLEDGEMENT, NoticeTemplate.IDENTITY_REQUEST, NoticeTemplate.IDENTITY_REMINDER,
    NoticeTemplate.UNVERIFIED, NoticeTemplate.DUPLICATE, NoticeTemplate.IDENTITY_DOUBT,
})
"""Notices that go out before identity is confirmed, to an address anyone may have typed: they never carry the
name given with the request (the workflow also leaves it out of every other notice until identity is confirmed)."""

_MULTILINE_KEYS = frozenset({"reason", "error", "residuals"})
_URL_KEYS = frozenset({"verify_url", "ui_url", "status_url", "consent_url"})
_EMAIL_LIKE = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")
_SPACES = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class RenderedNotice:
    """A notice ready to be put in an email: a one-line subject, a plain-text and an HTML body."""

    subject: str
    text: str
    html: str


class _OptionalUndefined(StrictUndefined):
    """A missing key is falsy, so ``{% if key %}`` works, but printing it is an error."""

    def __bool__(self) -> bool:  # type: ignore[override]  # jinja2 types it as returning Never
        return False


# --- words per language ---------------------------------------------------------------------------

_MONTHS = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"),
}

# Full phrase for bodies ("your <kind_words>"), short one for subject lines, label for operators.
_KIND_WORDS = {
    "fr": {
        RequestKind.ACCESS: "demande d'accès à vos données personnelles (article 15 du RGPD)",
        RequestKind.RECTIFICATION: "demande de rectification de vos données personnelles (article 16 du RGPD)",
        RequestKind.ERASURE: "demande d'effacement de vos données personnelles (article 17 du RGPD)",
        RequestKind.PORTABILITY: "demande de portabilité de vos données personnelles (article 20 du RGPD)",
        RequestKind.OBJECTION: "opposition au traitement de vos données personnelles (article 21 du RGPD)",
        RequestKind.CONSENT_WITHDRAWAL: "retrait du consentement (article 7, paragraphe 3, du RGPD)",
        RequestKind.POST_MORTEM: "demande relative aux données d'une personne décédée "
                                 "(article 85 de la loi Informatique et Libertés)",
        RequestKind.RESTRICTION: "demande de limitation du traitement de vos données personnelles (article 18 du RGPD)",
    },
    "en": {
        RequestKind.ACCESS: "request for access to your personal data (Article 15 GDPR)",
        RequestKind.RECTIFICATION: "request to rectify your personal data (Article 16 GDPR)",
        RequestKind.ERASURE: "request to erase your personal data (Article 17 GDPR)",
        RequestKind.PORTABILITY: "request to receive your personal data in a portable format (Article 20 GDPR)",
        RequestKind.OBJECTION: "objection to the processing of your personal data (Article 21 GDPR)",
        RequestKind.CONSENT_WITHDRAWAL: "withdrawal of your consent (Article 7(3) GDPR)",
        RequestKind.POST_MORTEM: "request about the data of a deceased person "
                                 "(Article 85 of the French loi Informatique et Libertés)",
        RequestKind.RESTRICTION: "request to restrict the processing of your personal data (Article 18 GDPR)",
    },
}
_KIND_SHORT = {
    "fr": {
        RequestKind.ACCESS: "demande d'accès",
        RequestKind.RECTIFICATION: "demande de rectification",
        RequestKind.ERASURE: "demande d'effacement",
        RequestKind.PORTABILITY: "demande de portabilité",
        RequestKind.OBJECTION: "opposition",
        RequestKind.CONSENT_WITHDRAWAL: "retrait du consentement",
        RequestKind.POST_MORTEM: "demande post mortem",
        RequestKind.RESTRICTION: "demande de limitation du traitement",
    },
    "en": {
        RequestKind.ACCESS: "access request",
        RequestKind.RECTIFICATION: "rectification request",
        RequestKind.ERASURE: "erasure request",
        RequestKind.PORTABILITY: "portability request",
        RequestKind.OBJECTION: "objection",
        RequestKind.CONSENT_WITHDRAWAL: "withdrawal of consent",
        RequestKind.POST_MORTEM: "post-mortem request",
        RequestKind.RESTRICTION: "restriction request",
    },
}
_KIND_LABEL = {
    "fr": {
        RequestKind.ACCESS: "Accès (art. 15)",
        RequestKind.RECTIFICATION: "Rectification (art. 16)",
        RequestKind.ERASURE: "Effacement (art. 17)",
        RequestKind.PORTABILITY: "Portabilité (art. 20)",
        RequestKind.OBJECTION: "Opposition (art. 21)",
        RequestKind.CONSENT_WITHDRAWAL: "Retrait du consentement (art. 7(3))",
        RequestKind.POST_MORTEM: "Personne décédée (art. 85 LIL)",
        RequestKind.RESTRICTION: "Limitation (art. 18)",
    },
    "en": {
        RequestKind.ACCESS: "Access (Art. 15)",
        RequestKind.RECTIFICATION: "Rectification (Art. 16)",
        RequestKind.ERASURE: "Erasure (Art. 17)",
        RequestKind.PORTABILITY: "Portability (Art. 20)",
        RequestKind.OBJECTION: "Objection (Art. 21)",
        RequestKind.CONSENT_WITHDRAWAL: "Withdrawal of consent (Art. 7(3))",
        RequestKind.POST_MORTEM: "Deceased person (Art. 85 LIL)",
        RequestKind.RESTRICTION: "Restriction (Art. 18)",
    },
}
_STAGE_WORDS = {
    "fr": {
        Stage.RECEIVED: "reçue",
        Stage.AWAITING_IDENTITY: "en attente de la confirmation d'identité",
        Stage.PROCESSING: "en cours de traitement",
        Stage.NEEDS_ATTENTION: "bloquée, intervention nécessaire",
        Stage.REPLYING: "réponse en cours d'envoi",
        Stage.CLOSED: "clôturée",
    },
    "en": {
        Stage.RECEIVED: "received",
        Stage.AWAITING_IDENTITY: "waiting for identity confirmation",
        Stage.PROCESSING: "being processed",
        Stage.NEEDS_ATTENTION: "blocked, needs attention",
        Stage.REPLYING: "reply being sent",
        Stage.CLOSED: "closed",
    },
}


def _lang(ctx: Any, lang: str | None) -> str:
    return lang or ctx.get("lang") or "en"


def _parse_date(value: str) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).date()
    except ValueError:
        return None


@pass_context
def date_words(ctx: Any, value: str, lang: str | None = None) -> str:
    """``2026-12-01`` -> ``1er décembre 2026`` / ``1 December 2026``; anything else is shown as given."""
    day = _parse_date(str(value))
    if day is None:
        return str(value)
    return format_date(day, _lang(ctx, lang))


def format_date(day: date, language: str) -> str:
    """``1er décembre 2026`` / ``1 December 2026``: dates as the notices and the intake pages write them."""
    month = _MONTHS[language][day.month - 1]
    if language == "fr":
        return f"{'1er' if day.day == 1 else day.day} {month} {day.year}"
    return f"{day.day} {month} {day.year}"


@pass_context
def kind_words(ctx: Any, value: str, lang: str | None = None) -> str:
    return _KIND_WORDS[_lang(ctx, lang)][RequestKind(value)]


@pass_context
def kind_short(ctx: Any, value: str, lang: str | None = None) -> str:
    return _KIND_SHORT[_lang(ctx, lang)][RequestKind(value)]


@pass_context
def kind_label(ctx: Any, value: str, lang: str | None = None) -> str:
    return _KIND_LABEL[_lang(ctx, lang)][RequestKind(value)]


@pass_context
def stage_words(ctx: Any, value: str, lang: str | None = None) -> str:
    """Stage in words, followed by its value as searched in the UI's ``DsrStage`` column."""
    try:
        return f"{_STAGE_WORDS[_lang(ctx, lang)][Stage(value)]} ({value})"
    except ValueError:
        return str(value)


@pass_context
def days_words(ctx: Any, value: str, lang: str | None = None) -> str:
    """``7`` -> ``7 jours`` / ``7 days``; French keeps 0 and 1 singular."""
    language = _lang(ctx, lang)
    try:
        n = int(str(value).strip())
    except ValueError:
        return f"{value} {'jours' if language == 'fr' else 'days'}"
    if language == "fr":
        return f"{n} jour" if abs(n) <= 1 else f"{n} jours"
    return f"{n} day" if abs(n) == 1 else f"{n} days"


def paragraphs(value: str) -> Markup:
    """Free text (a reason, an error) as escaped HTML: blank lines make paragraphs, newlines ``<br>``."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", str(value)) if b.strip()]
    style = Markup(' style="margin:0 0 12px 0;"')
    html = [
        Markup("<p{}>{}</p>").format(style, Markup("<br>\n").join(escape(line) for line in block.split("\n")))
        for block in blocks
    ]
    return Markup("\n").join(html)


class _ImportedMacro:
    """A macro reached through ``{% import %}`` / ``{% from %}``: it keeps the escaping of the file defining it.

    Jinja decides a macro's escaping where it is *called*: a macro from a ``.txt`` file (no autoescape) called
    from an ``.html`` template prints its arguments and context values unescaped, then returns the result as
    ``Markup``, so it reaches the HTML raw and even ``|escape`` leaves it alone. Here a ``.txt`` macro always
    renders as plain text, and an HTML caller receives that text escaped once; the ``.txt`` output is untouched.
    The reverse, HTML printed into plain text, is always a mistake and fails loudly.
    """

    __slots__ = ("_html", "_macro", "_template")

    def __init__(self, macro: Macro, html: bool, template: str | None) -> None:
        self._macro = macro
        self._html = html
        self._template = template

    @pass_eval_context
    def __call__(self, *args: Any, **kwargs: Any) -> str:
        if not args or not isinstance(args[0], EvalContext):
            return self._macro(*args, **kwargs)  # called from Python: Jinja's own behaviour
        caller, *rest = args
        if caller.autoescape == self._html:
            return self._macro(caller, *rest, **kwargs)
        name = f"{self._template}: {self._macro.name}()"
        if self._html:
            raise TemplateRuntimeError(f"{name} is an HTML macro: it cannot be printed in a plain-text template")
        if any(isinstance(value, Markup) for value in (*rest, *kwargs.values())):
            raise TemplateRuntimeError(f"{name} is a plain-text macro: pass it text, not HTML (Markup)")
        text = self._macro(EvalContext(caller.environment, self._template), *rest, **kwargs)
        return escape(text)

    def __getattr__(self, name: str) -> Any:  # name, arguments, caller... as on the macro itself
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._macro, name)


class _Template(Template):
    """Templates whose imported macros are :class:`_ImportedMacro`: ``{% import "x.txt" %}`` is safe in HTML."""

    def make_module(self, vars: Any = None, shared: bool = False, locals: Any = None) -> Any:
        module = super().make_module(vars, shared, locals)  # also builds the cached module of a plain import
        autoescape = self.environment.autoescape
        html = bool(autoescape(self.name) if callable(autoescape) else autoescape)
        for key, value in list(module.__dict__.items()):
            if isinstance(value, Macro):
                setattr(module, key, _ImportedMacro(value, html, self.name))
        return module


def _build_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=_OptionalUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters.update(
        date_words=date_words,
        kind_words=kind_words,
        kind_short=kind_short,
        kind_label=kind_label,
        stage_words=stage_words,
        days_words=days_words,
        paragraphs=paragraphs,
    )
    env.template_class = _Template
    return env


ENVIRONMENT = _build_environment()
"""The one Jinja environment; templates are compiled once per process and cached."""


# --- context hygiene ------------------------------------------------------------------------------


def one_line(value: str) -> str:
    """Collapse every run of whitespace or control characters (CR, LF, U+2028...) to one space; bidi controls
    and other invisible format characters are dropped (a U+202E would make the text read backwards)."""
    return _SPACES.sub(" ", strip_controls(value)).strip()


def _is_http_url(value: str) -> bool:
    if _SPACES.search(value):
        return False
    parts = urlsplit(value)
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def _clean_context(template: NoticeTemplate, context: Mapping[str, str]) -> dict[str, str]:
    allowed = OPERATOR_KEYS if template in OPERATOR_TEMPLATES else CONTEXT_KEYS
    clean: dict[str, str] = {}
    for key, raw in context.items():
        if key not in allowed or raw is None:
            continue
        value = str(raw)
        if key == "subject_name" and template in PRE_IDENTITY_TEMPLATES:
            continue  # whoever typed the name may not be the owner of the address: greet without it
        if key in _MULTILINE_KEYS:
            text = value.replace("\r\n", "\n").replace("\r", "\n")
            value = "\n".join(strip_controls(line) for line in _CONTROL.sub("", text).split("\n")).strip()
        else:
            value = one_line(value)
        if key in _URL_KEYS and not _is_http_url(value):
            continue  # a link we would not click ourselves is treated as absent
        if template in OPERATOR_TEMPLATES and key == "error":
            value = _EMAIL_LIKE.sub("[address removed]", value)  # belt and braces: errors carry no PII
        if value:
            clean[key] = value
    # A message waiting for triage has no kind yet: that is the point of triage.
    required = ("reference",) if template == NoticeTemplate.OPERATOR_TRIAGE else ("reference", "kind")
    for key in required:
        if key not in clean:
            raise ValueError(f"notice context must include a non-empty {key!r}")
    if "kind" not in clean:
        return clean
    try:
        clean["kind"] = RequestKind(clean["kind"]).value
    except ValueError:
        allowed_kinds = ", ".join(k.value for k in RequestKind)
        raise ValueError(f"notice context 'kind' must be one of {allowed_kinds}") from None
    return clean


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def render_notice(template: NoticeTemplate, language: Language, context: Mapping[str, str]) -> RenderedNotice:
    """Render one notice in ``language``.

    Raises ``ValueError`` when ``reference`` or ``kind`` is missing or ``kind`` is not a
    :class:`~dsr.domain.model.RequestKind`, and ``jinja2.TemplateError`` when a template is broken.
    """
    template = NoticeTemplate(template)
    lang = Language(language).value
    values: dict[str, Any] = _clean_context(template, context)
    values["lang"] = lang
    if template not in OPERATOR_TEMPLATES and "authority_name" not in values:
        # The profile's authority is filled in by the worker (activities/notices.py); without one, the
        # profile's own default (the CNIL) is named, never an empty "the supervisory authority, ."
        default = SupervisoryAuthority()
        values.update(authority_name=default.name, authority_postal_address=default.postal_address,
                      authority_website=default.website)
    name = f"{lang}/{template.value}"
    subject = one_line(ENVIRONMENT.get_template(f"{name}.subject").render(values))
    values["email_subject"] = subject
    text = _tidy_text(ENVIRONMENT.get_template(f"{name}.txt").render(values))
    html = ENVIRONMENT.get_template(f"{name}.html").render(values).strip() + "\n"
    return RenderedNotice(subject=subject, text=text, html=html)

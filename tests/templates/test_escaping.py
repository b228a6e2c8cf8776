"""Escaping across the .txt/.html boundary: hostile text is escaped exactly once in HTML, never in plain text.

The prose shared by a notice's two bodies lives in ``.txt`` macros. Jinja decides a macro's escaping where it
is called, so a ``.txt`` macro printed by an ``.html`` template used to hand back its raw text marked safe:
``<script>`` in a context value it prints reached the HTML as is, and ``|escape`` could not help.
``templates._ImportedMacro`` makes imported macros keep the escaping of their own file instead.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date

import pytest
from jinja2 import ChoiceLoader, DictLoader, Environment, TemplateRuntimeError
from pydantic import BaseModel

from dsr.config.profile import ControllerProfile, Localized
from dsr.domain.model import ConnectorOutcome, DatasetSummary, Language, NoticeTemplate, RecordAction, RecordReport
from dsr.mail.replies import ReplyContext, ReplyKind, render_reply
from templates import CONTEXT_KEYS, ENVIRONMENT, TEMPLATE_DIR, render_notice
from tests.templates.test_replies import CONTEXTS, PROFILE

# Every way out of a text node or an attribute, plus characters escaping turns into entities.
HOSTILE = "<script>alert(1)</script>\"><img src=x onerror=alert(1)> Tom & Jerry's\r\nBcc: x@evil.test"
HOSTILE_URL = "https://evil.example/?a=\"><img/src=x/onerror=alert(1)>&b=<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt; Tom &amp; Jerry&#39;s"
RAW = "<script>alert(1)</script>\"><img src=x onerror=alert(1)> Tom & Jerry's"

_RAW_TAG = re.compile(r"<\s*/?\s*(script|img)\b", re.IGNORECASE)
_DOUBLE = re.compile(r"&amp;(lt|gt|amp|quot|apos|#\d+|#x[0-9a-f]+);", re.IGNORECASE)
_ENTITY = re.compile(r"&(lt|gt|amp|quot|apos|#\d+|#x[0-9a-f]+);", re.IGNORECASE)


def _check_html(html: str) -> None:
    assert not _RAW_TAG.search(html), _RAW_TAG.search(html)
    assert "onerror=alert(1)>" not in html
    assert not _DOUBLE.search(html), f"escaped twice: {_DOUBLE.search(html)}"
    assert "\r" not in html


def _check_text(text: str) -> None:
    assert not _ENTITY.search(text), f"HTML entity in plain text: {_ENTITY.search(text)}"
    assert "\r" not in text


# --- the mechanism, on small templates -------------------------------------------------------------------

_PHRASES = (
    "{% macro arg(x) %}Hello {{ x }}{% endmacro %}"
    "{% macro ctx() %}Hello {{ subject_name }}{% endmacro %}"
    "{% macro nested(x) %}[{{ arg(x) }}]{% endmacro %}"
)
_SMALL = {
    "t/phrases.txt": _PHRASES,
    "t/more.txt": '{% import "t/phrases.txt" as p with context %}{% macro via() %}<{{ p.ctx() }}>{% endmacro %}',
    "t/blocks.html": "{% macro bold(x) %}<b>{{ x }}</b>{% endmacro %}",
    "t/page.html": (
        '{% import "t/phrases.txt" as p with context %}{% import "t/more.txt" as q with context %}'
        "{{ p.arg(subject_name) }}|{{ p.ctx() }}|{{ p.nested(subject_name) }}|{{ q.via() }}|{{ p.ctx()|e }}"
    ),
    "t/no_context.html": '{% import "t/phrases.txt" as p %}{{ p.arg(subject_name) }}',
    "t/from.html": '{% from "t/phrases.txt" import arg %}{{ arg(subject_name) }}',
    "t/set.html": '{% import "t/phrases.txt" as p %}{% set f = p.arg %}{{ f(subject_name) }}',
    "t/page.txt": '{% import "t/phrases.txt" as p with context %}{{ p.arg(subject_name) }}|{{ p.ctx() }}',
    "t/html_in_text.txt": '{% import "t/blocks.html" as h %}{{ h.bold(subject_name) }}',
    "t/markup_arg.html": '{% import "t/phrases.txt" as p %}{% import "t/blocks.html" as h %}{{ p.arg(h.bold("x")) }}',
    "t/same_mode.html": '{% import "t/blocks.html" as h %}{{ h.bold(subject_name) }}',
}


@pytest.fixture(scope="module")
def small() -> Environment:
    assert ENVIRONMENT.loader is not None
    return ENVIRONMENT.overlay(loader=ChoiceLoader([DictLoader(_SMALL), ENVIRONMENT.loader]))


def _esc(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("'", "&#39;"))


def test_txt_macro_printed_in_html_is_escaped_once(small: Environment) -> None:
    html = small.get_template("t/page.html").render(subject_name=RAW)
    e = _esc(RAW)
    assert html == f"Hello {e}|Hello {e}|[Hello {e}]|{_esc('<Hello ' + RAW + '>')}|Hello {e}"
    for name in ("t/no_context.html", "t/from.html", "t/set.html"):
        assert small.get_template(name).render(subject_name=RAW) == f"Hello {e}", name


def test_txt_macro_printed_in_text_is_left_alone(small: Environment) -> None:
    assert small.get_template("t/page.txt").render(subject_name=RAW) == f"Hello {RAW}|Hello {RAW}"


def test_html_macros_in_html_behave_as_usual(small: Environment) -> None:
    assert small.get_template("t/same_mode.html").render(subject_name=RAW) == f"<b>{_esc(RAW)}</b>"


def test_crossing_the_other_way_fails_loudly(small: Environment) -> None:
    with pytest.raises(TemplateRuntimeError, match="HTML macro"):
        small.get_template("t/html_in_text.txt").render(subject_name=RAW)
    with pytest.raises(TemplateRuntimeError, match="not HTML"):  # it would be escaped twice
        small.get_template("t/markup_arg.html").render()


def test_no_html_template_includes_or_extends_a_text_one() -> None:
    """``include``/``extends`` are not macro calls: a .txt body pulled into HTML would be printed raw."""
    pulls = re.compile(r"""{%-?\s*(include|extends)\s+["']([^"']+)["']""")
    for path in TEMPLATE_DIR.rglob("*.html"):
        for _, target in pulls.findall(path.read_text(encoding="utf-8")):
            assert target.endswith(".html"), f"{path.relative_to(TEMPLATE_DIR)} pulls in {target}"


# --- every notice ----------------------------------------------------------------------------------------

NOTICES = [(t, lang) for t in NoticeTemplate for lang in Language]


def _hostile_notice_context() -> dict[str, str]:
    context = {key: HOSTILE for key in CONTEXT_KEYS}
    context.update(kind="erasure", verify_url=HOSTILE_URL, ui_url=HOSTILE_URL)
    return context


@pytest.mark.parametrize("case", NOTICES, ids=lambda c: f"{c[0].value}-{c[1].value}")
def test_every_notice_with_hostile_values(case: tuple[NoticeTemplate, Language]) -> None:
    template, language = case
    rendered = render_notice(template, language, _hostile_notice_context())
    _check_html(rendered.html)
    _check_text(rendered.text)
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    assert ESCAPED in rendered.html  # the values did reach the HTML: escaped, once
    assert RAW in rendered.text
    if template in {NoticeTemplate.IDENTITY_REQUEST, NoticeTemplate.IDENTITY_REMINDER}:
        assert f'href="{_esc(HOSTILE_URL)}"' in rendered.html and HOSTILE_URL in rendered.text


# --- every reply -----------------------------------------------------------------------------------------


_CHECKED_ON_LOAD = frozenset({"country", "legal_basis", "safeguard", "language"})  # codes, not texts


def _hostilise(model: BaseModel) -> None:
    """Every free text of a profile, however deep, set to ``HOSTILE`` (a link to ``HOSTILE_URL``)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Localized) or name == "automated_decisions":
            setattr(model, name, Localized(fr=HOSTILE, en=HOSTILE))
        elif isinstance(value, BaseModel):
            _hostilise(value)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Localized):
                    value[i] = Localized(fr=HOSTILE, en=HOSTILE)
                elif isinstance(item, BaseModel):
                    _hostilise(item)
        elif isinstance(value, dict):
            for key in value:
                value[key] = Localized(fr=HOSTILE, en=HOSTILE)
        elif isinstance(value, str) and name not in _CHECKED_ON_LOAD:
            setattr(model, name, HOSTILE_URL if name.endswith(("website", "url")) else HOSTILE)


def _hostile_profile() -> ControllerProfile:
    assert PROFILE is not None
    profile = PROFILE.model_copy(deep=True)
    _hostilise(profile)
    return profile


def _hostile_reply_context(kind: ReplyKind) -> ReplyContext:
    report = [
        RecordReport(HOSTILE, "1", RecordAction.RETAINED, legal_basis=HOSTILE, retained_until=date(2035, 1, 1)),
        RecordReport(HOSTILE, "2", RecordAction.ANONYMISED, legal_basis=HOSTILE, fields=[HOSTILE]),
        RecordReport(HOSTILE, "3", RecordAction.DELETED, note=HOSTILE),
        RecordReport(HOSTILE, "*", RecordAction.RESIDUAL, fields=[HOSTILE], note=f"2 {HOSTILE}"),
        RecordReport(HOSTILE, "4", RecordAction.CHANGED, fields=[HOSTILE], note=HOSTILE),
        RecordReport(HOSTILE, "5", RecordAction.UNCHANGED, fields=[HOSTILE]),
    ]
    systems = [*CONTEXTS[kind].systems,
               ConnectorOutcome(HOSTILE, found=2, report=report, datasets=[DatasetSummary(HOSTILE, 1, True),
                                                                           DatasetSummary(HOSTILE, 1, False)])]
    return replace(CONTEXTS[kind], reference=HOSTILE, subject_name=HOSTILE, profile=_hostile_profile(),
                   systems=systems, download_url=HOSTILE_URL, download_code=HOSTILE, extended=True,
                   extension_reason=HOSTILE, recipients_notified=[HOSTILE, HOSTILE], recipient_name=HOSTILE)


REPLIES = [(k, lang) for k in ReplyKind for lang in Language]


@pytest.mark.parametrize("case", REPLIES, ids=lambda c: f"{c[0].value}-{c[1].value}")
@pytest.mark.parametrize("code", [True, False], ids=["code", "no-code"])
def test_every_reply_with_hostile_values(case: tuple[ReplyKind, Language], code: bool) -> None:
    kind, language = case
    context = _hostile_reply_context(kind)
    if not code:  # the download paragraph then names the code without quoting it
        context = replace(context, download_code="")
    rendered = render_reply(kind, language, context)
    _check_html(rendered.html)
    _check_text(rendered.text)
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    assert not any(line.lstrip().lower().startswith("bcc:") for line in rendered.text.splitlines())
    assert rendered.html.count(ESCAPED) >= 5
    assert rendered.text.count(RAW) >= 5


@pytest.mark.parametrize("language", list(Language))
def test_values_printed_by_txt_macros_are_escaped_in_html(language: Language) -> None:
    """Spot checks on sentences only a .txt macro writes: the value sits escaped inside the sentence."""
    fr = language == Language.FR
    access = render_reply(ReplyKind.ACCESS, language, _hostile_reply_context(ReplyKind.ACCESS)).html
    # download_how(): "... you will be asked for this code: <code>."
    assert (f"code suivant : {ESCAPED}" if fr else f"this code: {ESCAPED}") in access
    # complaint(): the supervisory authority's name
    assert (f"de contrôle : {ESCAPED}" if fr else f"supervisory authority: {ESCAPED}") in access
    art19 = render_reply(ReplyKind.ART19_NOTICE, language, _hostile_reply_context(ReplyKind.ART19_NOTICE)).html
    # confirm(): "... quoting reference <reference>, that this is done"
    assert (f"référence {ESCAPED}" if fr else f"reference {ESCAPED}") in art19
    erasure = render_reply(ReplyKind.ERASURE, language, _hostile_reply_context(ReplyKind.ERASURE)).html
    assert (f"<li>Effacé : {ESCAPED}" if fr else f"<li>Erased: {ESCAPED}") in erasure  # lines()
    told = f"{ESCAPED} Bcc: x@evil.test{' ;' if fr else ';'} {ESCAPED} Bcc: x@evil.test."
    assert told in erasure  # notified(): the recipients told of the erasure


"""Every notice renders in both languages, says what the law requires, and is safe with hostile input."""

from __future__ import annotations

import email
import email.policy
import html
import re
from html.parser import HTMLParser

import pytest
from jinja2 import UndefinedError

from activities.notices import build_message
from dsr.domain.model import OPERATOR_TEMPLATES, Language, Notice, NoticeTemplate, RequestKind
from templates import ENVIRONMENT, PRE_IDENTITY_TEMPLATES, render_notice

CNIL = (
    "Commission nationale de l'informatique et des libertés (CNIL), 3 Place de Fontenoy, TSA 80715, "
    "75334 Paris Cedex 07, https://www.cnil.fr"
)
HOSTILE_NAME = "<script>alert(1)</script>\r\nBcc: x@evil.test"

FULL = {
    "reference": "dsr-2026-11-7KQ3FJ",
    "kind": "access",
    "received": "2026-11-23",
    "deadline": "2026-12-23",
    "previous_deadline": "2026-12-23",
    "reason": "Your request covers six systems,\nincluding archived invoices.",
    "subject_name": "Zoé Martin",
    "controller_name": "Kestio SAS",
    "verify_url": "https://privacy.example.com/verify?token=abc&x=1",
    "verify_code": "K7QM-4XPD",
    "days": "30",
    "label": "D-7",
    "days_left": "7",
    "stage": "processing",
    "ui_url": "http://127.0.0.1:8233/namespaces/default/workflows/dsr-2026-11-7KQ3FJ",
    "connector": "hubspot",
    "error": "AuthenticationError: token rejected (401)",
}
MINIMAL = {"reference": "dsr-2026-11-MIN001", "kind": "erasure"}

ALL = [(t, lang) for t in NoticeTemplate for lang in Language]


def _ids(case: tuple[NoticeTemplate, Language]) -> str:
    return f"{case[0].value}-{case[1].value}"


class _TagBalance(HTMLParser):
    """Fails on a closing tag that does not match the open one: cheap well-formedness check."""

    VOID = frozenset({"br", "hr", "meta", "img", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else ''}>"
        self.stack.pop()


def _check_clean(rendered_text: str) -> None:
    for leftover in ("{{", "}}", "{%", "%}", "None", "Undefined"):
        assert leftover not in rendered_text


@pytest.mark.parametrize("context", [FULL, MINIMAL], ids=["full", "minimal"])
@pytest.mark.parametrize("case", ALL, ids=_ids)
def test_every_template_renders(case: tuple[NoticeTemplate, Language], context: dict[str, str]) -> None:
    template, language = case
    rendered = render_notice(template, language, context)

    assert rendered.subject and "\n" not in rendered.subject and "\r" not in rendered.subject
    assert rendered.subject == rendered.subject.strip() and "  " not in rendered.subject
    assert context["reference"] in rendered.subject
    for part in (rendered.subject, rendered.text, rendered.html):
        _check_clean(part)
    assert context["reference"] in rendered.text
    assert rendered.text.endswith("\n") and "\n\n\n" not in rendered.text

    assert rendered.html.startswith("<!DOCTYPE html>")
    assert f'<html lang="{language.value}"' in rendered.html
    assert "<title>" in rendered.html and "<script" not in rendered.html
    assert not re.search(r"""(src|href)=["'](?!https?://)""", rendered.html), "no relative or odd links"
    checker = _TagBalance()
    checker.feed(rendered.html)
    checker.close()
    assert checker.stack == []


@pytest.mark.parametrize("kind", list(RequestKind))
@pytest.mark.parametrize("language", list(Language))
def test_kind_is_rendered_in_words(kind: RequestKind, language: Language) -> None:
    rendered = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, {"reference": "R", "kind": kind.value})
    words = {
        (Language.FR, RequestKind.ACCESS): "demande d'accès",
        (Language.FR, RequestKind.RECTIFICATION): "demande de rectification",
        (Language.FR, RequestKind.ERASURE): "demande d'effacement",
        (Language.FR, RequestKind.PORTABILITY): "demande de portabilité",
        (Language.EN, RequestKind.ACCESS): "access request",
        (Language.EN, RequestKind.RECTIFICATION): "rectification request",
        (Language.EN, RequestKind.ERASURE): "erasure request",
        (Language.EN, RequestKind.PORTABILITY): "portability request",
        (Language.FR, RequestKind.OBJECTION): "opposition",
        (Language.EN, RequestKind.OBJECTION): "objection",
        (Language.FR, RequestKind.CONSENT_WITHDRAWAL): "retrait du consentement",
        (Language.EN, RequestKind.CONSENT_WITHDRAWAL): "withdrawal of consent",
        (Language.FR, RequestKind.POST_MORTEM): "demande post mortem",
        (Language.EN, RequestKind.POST_MORTEM): "post-mortem request",
        (Language.FR, RequestKind.RESTRICTION): "demande de limitation du traitement",
        (Language.EN, RequestKind.RESTRICTION): "restriction request",
    }[(language, kind)]
    assert words in rendered.subject
    assert words in rendered.text.lower()


@pytest.mark.parametrize(
    ("language", "received", "deadline"),
    [(Language.FR, "23 novembre 2026", "23 décembre 2026"), (Language.EN, "23 November 2026", "23 December 2026")],
)
def test_acknowledgement_golden(language: Language, received: str, deadline: str) -> None:
    rendered = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, FULL)
    for part in (rendered.text, html.unescape(rendered.html)):
        assert "dsr-2026-11-7KQ3FJ" in part
        assert received in part
        assert deadline in part
        assert "12(6)" in part or "article 12, paragraphe 6" in part  # identity only on reasonable doubt
        assert "Zoé Martin" not in part  # sent before identity is confirmed: whoever typed the name is unknown
    assert rendered.text.startswith("Bonjour,\n" if language is Language.FR else "Hello,\n")
    assert "2026-12-23" not in rendered.text


@pytest.mark.parametrize(("language", "text_words", "button"), [
    (Language.FR, "Suivez votre demande à tout moment (son étape, son échéance, ce que nous attendons) :",
     "Voir où en est votre demande"),
    (Language.EN, "Follow your request at any time (its stage, its deadline, what we are waiting for):",
     "See where your request stands"),
])
def test_the_acknowledgement_links_to_the_status_page(language: Language, text_words: str, button: str) -> None:
    url = "https://privacy.example.com/status/v2.k1.abc.def"
    rendered = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, {**FULL, "status_url": url})
    assert f"{text_words}\n{url}\n" in rendered.text
    assert f'<a href="{url}"' in rendered.html and f">{button}</a>" in rendered.html
    # Without a public URL (no intake), no link and no sentence about one.
    bare = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, FULL)
    assert "/status/" not in bare.text and text_words not in bare.text and button not in bare.html


def test_dates_in_words() -> None:
    fr = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, Language.FR, {**MINIMAL, "deadline": "2027-02-01"})
    en = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, Language.EN, {**MINIMAL, "deadline": "2027-02-01"})
    assert "1er février 2027" in fr.text
    assert "1 February 2027" in en.text


@pytest.mark.parametrize(
    ("language", "new", "old"),
    [(Language.FR, "23 février 2027", "23 décembre 2026"), (Language.EN, "23 February 2027", "23 December 2026")],
)
def test_extension_golden(language: Language, new: str, old: str) -> None:
    context = {**FULL, "deadline": "2027-02-23", "previous_deadline": "2026-12-23"}
    rendered = render_notice(NoticeTemplate.EXTENSION, language, context)
    for part in (rendered.text, html.unescape(rendered.html)):
        assert "Your request covers six systems," in part
        assert "including archived invoices." in part
        assert new in part and old in part
        assert "12(3)" in part or "article 12, paragraphe 3" in part
    assert "<br>" in rendered.html  # the reason keeps its line breaks


@pytest.mark.parametrize(("language", "judicial"), [(Language.FR, "recours juridictionnel"),
                                                     (Language.EN, "judicial remedy")])
def test_refusal_golden(language: Language, judicial: str) -> None:
    context = {**FULL, "reason": "Fourth identical request this month."}
    rendered = render_notice(NoticeTemplate.REFUSAL, language, context)
    for part in (rendered.text, html.unescape(rendered.html)):
        assert CNIL in part
        assert judicial in part
        assert "Fourth identical request this month." in part
        assert "12(4)" in part or "article 12, paragraphe 4" in part


@pytest.mark.parametrize("language", list(Language))
def test_refusal_without_reason_states_the_legal_ground(language: Language) -> None:
    rendered = render_notice(NoticeTemplate.REFUSAL, language, MINIMAL)
    assert "12(5)" in rendered.text or "article 12, paragraphe 5" in rendered.text
    assert CNIL in rendered.text


@pytest.mark.parametrize("language", list(Language))
def test_unverified_says_how_to_start_again(language: Language) -> None:
    rendered = render_notice(NoticeTemplate.UNVERIFIED, language, {**MINIMAL, "days": "30"})
    assert ("30 jours" if language is Language.FR else "30 days") in rendered.text
    assert ("nouvelle demande" if language is Language.FR else "new request") in rendered.text
    assert CNIL in rendered.text


@pytest.mark.parametrize("language", list(Language))
def test_unverified_post_mortem_speaks_of_the_quality_documents_not_of_identity(language: Language) -> None:
    """Art. 85 loi 78-17: the sender proved neither the death nor their quality; the request was never theirs."""
    rendered = render_notice(NoticeTemplate.UNVERIFIED, language, {**MINIMAL, "kind": "post_mortem", "days": "30"})
    for text in (rendered.text, html.unescape(re.sub(r"<[^>]+>", "", rendered.html))):
        flat = " ".join(text.split())
        if language is Language.FR:
            assert "les justificatifs du décès et de votre qualité" in flat and "30 jours" in flat
            assert "aucune donnée de la personne décédée" in flat
            assert "nous supprimons les documents que vous avez pu nous envoyer" in flat
            assert "votre identité" not in flat and "vous concernant" not in flat
        else:
            assert "the documents proving the death and your quality" in flat and "30 days" in flat
            assert "none of the deceased person's data" in flat
            assert "we are deleting the documents you may have sent" in flat
            assert "your identity" not in flat and "data about you" not in flat
        assert CNIL in flat


@pytest.mark.parametrize(("language", "documents", "words"), [
    (Language.EN, "2", "With your request, we received 2 files from you. We will check that they include a copy of "
                       "the death certificate"),
    (Language.EN, "1", "With your request, we received one file from you. We will check that it includes"),
    (Language.FR, "2", "Avec votre demande, nous avons reçu 2 fichiers de votre part. Nous vérifierons qu'ils "
                       "contiennent une copie de l'acte de décès"),
    (Language.FR, "1", "Avec votre demande, nous avons reçu un fichier de votre part. Nous vérifierons qu'il "
                       "contient"),
])
def test_a_post_mortem_request_sent_with_documents_asks_for_nothing_more(
        language: Language, documents: str, words: str) -> None:
    """Documents uploaded with the form: the letter says how many came and asks only for what may be missing."""
    context = {**MINIMAL, "kind": "post_mortem", "identity": "quality", "days": "30", "documents": documents}
    rendered = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, context)
    for text in (rendered.text, html.unescape(re.sub(r"<[^>]+>", "", rendered.html))):
        flat = " ".join(text.split())
        assert words in flat
        assert "Please reply to this message attaching" not in flat and "Répondez à ce message en joignant" not in flat
        assert "30 days" not in flat and "30 jours" not in flat  # nothing is awaited from the sender
    without = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, {**context, "documents": ""})
    assert ("Please reply to this message attaching" in without.text
            or "Répondez à ce message en joignant" in without.text)


@pytest.mark.parametrize(("language", "documents", "words"), [
    (Language.EN, "3", "we received 3 files with your request, and our team will check that they prove the death"),
    (Language.EN, "1", "we received one file with your request, and our team will check that it proves the death"),
    (Language.FR, "3", "nous avons reçu 3 fichiers avec votre demande, et notre équipe vérifiera qu'ils établissent"),
    (Language.FR, "1", "nous avons reçu un fichier avec votre demande, et notre équipe vérifiera qu'il établit"),
])
def test_the_acknowledgement_of_a_post_mortem_request_with_documents_says_they_came(
        language: Language, documents: str, words: str) -> None:
    context = {**MINIMAL, "kind": "post_mortem", "identity": "quality", "documents": documents}
    rendered = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, context)
    for text in (rendered.text, html.unescape(re.sub(r"<[^>]+>", "", rendered.html))):
        flat = " ".join(text.split())
        assert words in flat
        assert "which documents to send us" not in flat and "les justificatifs à nous envoyer" not in flat


@pytest.mark.parametrize("language", list(Language))
def test_the_operator_is_told_of_form_documents_and_of_the_quality_to_confirm(language: Language) -> None:
    context = {**MINIMAL, "kind": "post_mortem", "stage": "awaiting_identity", "attachments": "2", "source": "form"}
    rendered = render_notice(NoticeTemplate.OPERATOR_CORRESPONDENCE, language, context)
    flat = " ".join(rendered.text.split())
    assert "The sender of request dsr-2026-11-MIN001 sent documents with the web form." in flat
    assert "L'expéditeur de la demande dsr-2026-11-MIN001 a envoyé des justificatifs avec le formulaire web." in flat
    assert "privacy mailbox" not in flat and "boîte de protection" not in flat  # no email to look for
    assert "dsr confirm-quality dsr-2026-11-MIN001 --quality heir|executor|designated" in flat
    assert "confirm-identity" not in flat and "confirm-identity" not in rendered.html
    assert rendered.subject.endswith("2 document(s) sent with the web form to review" if language is Language.EN
                                     else "2 justificatif(s) envoyé(s) avec le formulaire web à examiner")


@pytest.mark.parametrize("language", list(Language))
def test_identity_request_ways_to_confirm(language: Language) -> None:
    link_only = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, {**MINIMAL, "verify_url": FULL["verify_url"]})
    assert FULL["verify_url"] in link_only.text
    assert 'href="https://privacy.example.com/verify?token=abc&amp;x=1"' in link_only.html

    code_only = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, {**MINIMAL, "verify_code": "K7QM-4XPD"})
    assert "K7QM-4XPD" in code_only.text and "K7QM-4XPD" in code_only.html

    neither = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, MINIMAL)
    contact = "vous contactera" if language is Language.FR else "will contact you"
    assert contact in neither.text
    assert "12(6)" in neither.text or "article 12, paragraphe 6" in neither.text
    deleted = "supprimée" if language is Language.FR else "deleted"
    assert deleted in neither.text  # a document, if asked for, is deleted once checked

    hostile = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, {**MINIMAL, "verify_url": "javascript:alert(1)"})
    assert "javascript:" not in hostile.html and "javascript:" not in hostile.text


@pytest.mark.parametrize("case", ALL, ids=_ids)
def test_hostile_name_is_escaped_and_cannot_inject_headers(case: tuple[NoticeTemplate, Language]) -> None:
    template, language = case
    rendered = render_notice(template, language, {**FULL, "subject_name": HOSTILE_NAME})
    assert "<script" not in rendered.html
    assert "\r" not in rendered.subject and "\n" not in rendered.subject
    if template not in OPERATOR_TEMPLATES | PRE_IDENTITY_TEMPLATES:  # those never show the name at all
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
        assert "\r" not in rendered.text

    notice = Notice(request_id="dsr-2026-11-7KQ3FJ", template=template, to="zoe@example.com", language=language)
    message = build_message(
        notice, rendered, mail_from="privacy@example.com", from_name=HOSTILE_NAME, message_id="<abc@example.com>"
    )
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert parsed["To"] == "zoe@example.com"
    assert [k for k in parsed if k.lower() == "bcc"] == []


@pytest.mark.parametrize("template", sorted(OPERATOR_TEMPLATES))
@pytest.mark.parametrize("language", list(Language))
def test_operator_notices_carry_no_personal_data(template: NoticeTemplate, language: Language) -> None:
    context = {**FULL, "subject_name": "Zoé Martin", "error": "rejected contact zoe@example.com"}
    rendered = render_notice(template, language, context)
    for part in (rendered.subject, rendered.text, rendered.html):
        assert "Zoé" not in part and "Martin" not in part
        assert "zoe@example.com" not in part
        assert "privacy.example.com/verify" not in part and "K7QM-4XPD" not in part
    # bilingual: both languages, the notice's own first
    first, second = ("[FR]", "[EN]") if language is Language.FR else ("[EN]", "[FR]")
    assert rendered.text.index(first) < rendered.text.index(second)


def test_operator_reminder_golden() -> None:
    rendered = render_notice(NoticeTemplate.OPERATOR_REMINDER, Language.EN, FULL)
    assert rendered.subject == "[DSR D-7] dsr-2026-11-7KQ3FJ: due 23 December 2026, in 7 days"
    assert FULL["ui_url"] in rendered.text
    assert f'href="{FULL["ui_url"]}"' in rendered.html
    assert "being processed (processing)" in rendered.text
    assert "en cours de traitement (processing)" in rendered.text


def test_operator_escalation_and_attention_golden() -> None:
    overdue = render_notice(NoticeTemplate.OPERATOR_ESCALATION, Language.FR, FULL)
    assert "EN RETARD" in overdue.subject and "23 décembre 2026" in overdue.subject
    assert "OVERDUE" in overdue.text
    attention = render_notice(NoticeTemplate.OPERATOR_ATTENTION, Language.EN, FULL)
    assert "hubspot" in attention.subject
    assert "AuthenticationError: token rejected (401)" in attention.text


@pytest.mark.parametrize(
    ("language", "subject", "by_staff", "not_by_staff"),
    [(Language.FR, "Clôture de votre demande d'effacement par notre équipe (réf. dsr-2026-11-7KQ3FJ)",
      "retirée par notre personnel", "Comme vous nous l'avez demandé"),
     (Language.EN, "Your erasure request was withdrawn by our staff (ref. dsr-2026-11-7KQ3FJ)",
      "withdrawn by our staff", "As you asked")],
)
def test_withdrawn_by_staff_golden(language: Language, subject: str, by_staff: str, not_by_staff: str) -> None:
    # A cancellation from the Temporal UI: the subject is told staff withdrew it, never "as you asked".
    context = {**FULL, "kind": "erasure"}
    staff = render_notice(NoticeTemplate.WITHDRAWN, language, {**context, "by_staff": "yes"})
    assert staff.subject == subject
    for part in (staff.text, html.unescape(staff.html)):
        assert by_staff in part and not_by_staff not in part
        assert "23 novembre 2026" in part or "23 November 2026" in part
    own = render_notice(NoticeTemplate.WITHDRAWN, language, context)
    assert not_by_staff in own.text and by_staff not in own.text and own.subject != subject


def test_operator_cancellation_golden() -> None:
    taken = render_notice(NoticeTemplate.OPERATOR_CANCELLATION, Language.EN, FULL)
    assert taken.subject == "[DSR] dsr-2026-11-7KQ3FJ: cancelled from Temporal, closed as withdrawn"
    assert "taken as a withdrawal by our staff" in taken.text and "prise comme un retrait" in taken.text
    why = "dsr-2026-11-7KQ3FJ is processing; it can be withdrawn only before processing starts"
    refused = render_notice(NoticeTemplate.OPERATOR_CANCELLATION, Language.FR, {**FULL, "refused": why})
    assert refused.subject == "[DSR] dsr-2026-11-7KQ3FJ : annulation refusée"
    assert why in refused.text and why in html.unescape(refused.html)
    assert "It is refused and the request goes on" in refused.text


def test_required_keys_and_kind_are_checked() -> None:
    with pytest.raises(ValueError, match="reference"):
        render_notice(NoticeTemplate.ACKNOWLEDGEMENT, Language.FR, {"kind": "access"})
    with pytest.raises(ValueError, match="kind"):
        render_notice(NoticeTemplate.ACKNOWLEDGEMENT, Language.FR, {"reference": "R"})
    with pytest.raises(ValueError, match="kind"):
        render_notice(NoticeTemplate.ACKNOWLEDGEMENT, Language.FR, {"reference": "R", "kind": "complaint"})


def test_printing_a_missing_key_fails_but_testing_it_does_not() -> None:
    assert ENVIRONMENT.from_string("{% if nope %}x{% endif %}ok").render() == "ok"
    with pytest.raises(UndefinedError):
        ENVIRONMENT.from_string("{{ nope }}").render()


def test_autoescape_is_on_for_html_only() -> None:
    assert ENVIRONMENT.trim_blocks
    rendered = render_notice(NoticeTemplate.COMPLETED, Language.FR, {"reference": "<R&D>", "kind": "access"})
    assert "&lt;R&amp;D&gt;" in rendered.html and "<R&D>" not in rendered.html
    assert "<R&D>" in rendered.text and "<R&D>" in rendered.subject


@pytest.mark.parametrize(("ground", "kind", "fr", "en"), [
    ("identity", "access", "article 11, paragraphe 2, et article 12, paragraphe 2", "Articles 11(2) and 12(2)"),
    ("others_rights", "access", "article 15, paragraphe 4", "Article 15(4)"),
    ("others_rights", "portability", "article 20, paragraphe 4", "Article 20(4)"),
    ("erasure_exception", "erasure", "article 17, paragraphe 3", "Article 17(3)"),
    ("legal_restriction", "erasure", "article 23", "Article 23"),
])
def test_each_refusal_ground_has_its_own_words_and_article(ground: str, kind: str, fr: str, en: str) -> None:
    """Before, every refusal said 'manifestly unfounded or excessive (Art. 12(5))', whatever the ground."""
    for language, article in ((Language.FR, fr), (Language.EN, en)):
        context = {**MINIMAL, "kind": kind, "ground": ground, "reason": "Détail du motif."}
        rendered = render_notice(NoticeTemplate.REFUSAL, language, context)
        for part in (rendered.text, html.unescape(rendered.html)):
            assert article in part and "Détail du motif." in part
            assert "12(5)" not in part and "paragraphe 5" not in part


@pytest.mark.parametrize(("identity", "fr", "en"), [
    ("email", "lien de confirmation", "confirmation link"),
    ("document", "justificatif à nous envoyer", "which document to send us"),
    ("trusted", "vous n'avez rien à faire de plus", "nothing more for you to do"),
])
def test_the_acknowledgement_says_how_identity_will_be_checked(identity: str, fr: str, en: str) -> None:
    """Before: 'if needed ... we will write to you separately', then the identity request came 0.2 s later."""
    for language, words in ((Language.FR, fr), (Language.EN, en)):
        rendered = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, {**FULL, "identity": identity})
        assert words in rendered.text and words in html.unescape(rendered.html)
        assert "si nécessaire" not in rendered.text and "only if needed" not in rendered.text


# --- what a stranger types: the name ---------------------------------------------------------------------

# Up to 200 characters on the form: a link, and U+202E turning the rest around ("moc.evil" reads "live.com").
STRANGER_NAME = "Zoé Martin \u202eMoc.evil.www//:sptth\u202c call +33 1 23 45 67 89 http://evil.example/x"
PRE_IDENTITY = [NoticeTemplate.ACKNOWLEDGEMENT, NoticeTemplate.IDENTITY_REQUEST, NoticeTemplate.IDENTITY_REMINDER,
                NoticeTemplate.UNVERIFIED, NoticeTemplate.DUPLICATE]
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"


@pytest.mark.parametrize("template", PRE_IDENTITY)
@pytest.mark.parametrize(("language", "greeting", "html_greeting"), [
    (Language.FR, "Bonjour,\n", ">Bonjour,</p>"), (Language.EN, "Hello,\n", ">Hello,</p>"),
])
def test_notices_before_identity_greet_without_the_name(
    template: NoticeTemplate, language: Language, greeting: str, html_greeting: str
) -> None:
    rendered = render_notice(template, language, {**FULL, "subject_name": STRANGER_NAME})
    assert rendered.text.startswith(greeting)
    assert html_greeting in rendered.html
    for part in (rendered.subject, rendered.text, html.unescape(rendered.html)):
        assert "Zoé" not in part and "evil" not in part and "\u202e" not in part


@pytest.mark.parametrize(("language", "greeting", "html_greeting"), [
    (Language.FR, "Bonjour Zoé Martin,\n", ">Bonjour Zoé Martin,</p>"),
    (Language.EN, "Dear Zoé Martin,\n", ">Dear Zoé Martin,</p>"),
])
def test_a_confirmed_subjects_name_is_written_without_bidi_or_control_characters(
    language: Language, greeting: str, html_greeting: str
) -> None:
    name = "\u202eZo\u200bé\u2066\x07Martin\u2069\u200f"  # a control character parts words, as a space
    for template in (NoticeTemplate.COMPLETED, NoticeTemplate.EXTENSION, NoticeTemplate.WITHDRAWN):
        rendered = render_notice(template, language, {**FULL, "subject_name": name})
        assert rendered.text.startswith(greeting), template
        assert html_greeting in html.unescape(rendered.html)
        for part in (rendered.text, rendered.html):
            assert not set(BIDI + "\u200b\x07") & set(part)


def test_display_name_strips_bidi_and_control_characters_and_keeps_joiners() -> None:
    from dsr.domain.model import display_name

    assert display_name(f"  Zoé{BIDI}\u00ad\ufeff\U000e0041 \r\n\u2028 Martin\x00 ") == "Zoé Martin"
    assert display_name("\u0645\u06cc\u200c\u0631\u0636\u0627") == "\u0645\u06cc\u200c\u0631\u0636\u0627"
    assert display_name("Ελένη Παπαδοπούλου-Ōsaka 李") == "Ελένη Παπαδοπούλου-Ōsaka 李"


@pytest.mark.parametrize(("language", "subject", "asked", "ack"), [
    (Language.FR, "Action requise : envoyez-nous les justificatifs de votre demande post mortem",
     "une copie de l'acte de décès ; et la preuve de votre qualité",
     "Vérification de votre qualité : vous agissez pour une personne décédée"),
    (Language.EN, "Action needed: please send us the documents for your post-mortem request",
     "a copy of the death certificate; and proof of your quality",
     "Checking your quality: you act for a deceased person"),
])
def test_a_post_mortem_request_asks_for_the_death_and_the_senders_quality_golden(
    language: Language, subject: str, asked: str, ack: str,
) -> None:
    """The sender is never asked to prove they are the person whose data it is: the death and their quality."""
    context = {"reference": "R", "kind": "post_mortem", "received": "2026-11-23", "deadline": "2026-12-23",
               "identity": "quality", "days": "30"}
    rendered = render_notice(NoticeTemplate.IDENTITY_REQUEST, language, context)
    text = " ".join(rendered.text.split())
    assert rendered.subject.startswith(subject) and asked in text and "85" in text
    assert ("confirmer que vous en êtes bien l'auteur" not in text and "really comes from you" not in text)
    reminder = render_notice(NoticeTemplate.IDENTITY_REMINDER, language, context)
    assert asked in " ".join(reminder.text.split()) and "<p" in reminder.html
    acknowledgement = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, language, context)
    assert ack in " ".join(acknowledgement.text.split())
    refusal = render_notice(NoticeTemplate.REFUSAL, language, {**context, "ground": "quality", "reason": "x"})
    refused = " ".join(refusal.text.split())
    assert ("seuls la personne désignée dans ses directives" if language == Language.FR
            else "only the person designated in their directives") in refused
    assert ("recours juridictionnel" if language == Language.FR else "judicial remedy") in refused


@pytest.mark.parametrize(("language", "subject", "why", "day"), [
    (Language.FR, "La limitation du traitement de vos données sera levée le 20 décembre 2026",
     "la rectification qu'attendait la limitation est faite", "Limitation levée le: 20 décembre 2026"),
    (Language.EN, "The restriction of processing of your data will be lifted on 20 December 2026",
     "the rectification the restriction was waiting for is done", "Restriction lifted on: 20 December 2026"),
])
def test_the_subject_is_told_before_a_restriction_is_lifted(
    language: Language, subject: str, why: str, day: str,
) -> None:
    context = {**FULL, "kind": "restriction", "lift_on": "2026-12-20", "lift_why": "rectification", "reason": ""}
    rendered = render_notice(NoticeTemplate.RESTRICTION_LIFT, language, context)
    text = " ".join(rendered.text.split())
    assert rendered.subject.startswith(subject) and why in text and " ".join(day.split()) in text
    assert ("18, paragraphe 3" if language == Language.FR else "Article 18(3) GDPR") in text
    assert "CNIL" in text
    by_operator = render_notice(NoticeTemplate.RESTRICTION_LIFT, language,
                                {**context, "lift_why": "operator", "reason": "The claim is settled."})
    assert "The claim is settled." in by_operator.text and why not in " ".join(by_operator.text.split())

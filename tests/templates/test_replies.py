"""Final replies: every kind in both languages, the law's content present, hostile input inert."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dsr.config.profile import ControllerProfile, Localized, check_profile, load_profile
from dsr.domain.model import ConnectorOutcome, DatasetSummary, Language, RecordAction, RecordReport, RequestKind
from dsr.mail.replies import IncompleteProfileError, ReplyContext, ReplyKind, legal_basis_wording, render_reply

DEMO = Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml"


def _demo_profile() -> ControllerProfile:
    profile = load_profile(DEMO)
    assert profile is not None, f"{DEMO} has no [controller] table"
    return profile


PROFILE = _demo_profile()
BASIS = "Art. 17(3)(b) GDPR; Code de commerce L123-22 (accounting records, 10 years)"
HOSTILE = "<script>alert(1)</script>\r\nBcc: x@evil.test"
URL = "https://privacy.example.com/exports/tok123?sig=a&v=1"

ACCESS_SYSTEMS = [
    ConnectorOutcome("woocommerce", found=3, datasets=[DatasetSummary("customer", 1, True),
                                                       DatasetSummary("orders", 2, True)]),
    ConnectorOutcome("hubspot", found=4, datasets=[DatasetSummary("contact", 1, True),
                                                   DatasetSummary("notes", 3, False)]),
    ConnectorOutcome("stripe", found=0),
]
ERASURE_SYSTEMS = [
    ConnectorOutcome("woocommerce", report=[
        RecordReport("orders", "101", RecordAction.ANONYMISED, legal_basis=BASIS, retained_until=date(2035, 3, 1)),
        RecordReport("orders", "102", RecordAction.ANONYMISED, legal_basis=BASIS, retained_until=date(2036, 5, 2)),
        RecordReport("orders", "*", RecordAction.RESIDUAL, fields=["customer_ip_address", "customer_user_agent"],
                     note="2 anonymised order(s): read-only fields"),
        RecordReport("customer", "7", RecordAction.DELETED),
    ]),
    ConnectorOutcome("stripe", report=[
        RecordReport("charges", "ch_1", RecordAction.RETAINED, legal_basis=BASIS, retained_until=date(2035, 1, 31)),
        RecordReport("customer", "cus_1", RecordAction.DELETED),
    ]),
    ConnectorOutcome("hubspot", report=[RecordReport("contact", "", RecordAction.ALREADY_GONE)]),
]
RECTIFICATION_SYSTEMS = [
    ConnectorOutcome("woocommerce", report=[
        RecordReport("customer", "7", RecordAction.CHANGED, fields=["last_name", "city"],
                     note="was Durand, Lyon"),  # a careless note: replies never print notes
    ]),
    ConnectorOutcome("stripe", report=[
        RecordReport("customer", "cus_1", RecordAction.UNCHANGED, fields=["last_name"]),
    ]),
    ConnectorOutcome("hubspot"),
]


def _context(**changes: object) -> ReplyContext:
    base = ReplyContext(
        reference="dsr-2026-11-7KQ3FJ", received=date(2026, 11, 23), deadline=date(2026, 12, 23),
        subject_name="Zoé Martin", profile=PROFILE, systems=ACCESS_SYSTEMS, download_url=URL,
        download_code="K7QM-4XPD", link_expires=date(2026, 12, 1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


CONTEXTS = {
    ReplyKind.ACCESS: _context(),
    ReplyKind.PORTABILITY: _context(),
    ReplyKind.ERASURE: _context(systems=ERASURE_SYSTEMS,
                                recipients_notified=["Cabinet comptable Exemple", "Logistique Exemple SARL"]),
    ReplyKind.RECTIFICATION: _context(systems=RECTIFICATION_SYSTEMS, recipients_notified=["Cabinet comptable Exemple"]),
    ReplyKind.OBJECTION: _context(systems=[
        ConnectorOutcome("hubspot", found=2, report=[
            RecordReport("subscriptions", "7001", RecordAction.UNSUBSCRIBED, note="Newsletter"),
            RecordReport("subscriptions", "7002", RecordAction.UNCHANGED, note="Offers: already unsubscribed")]),
        ConnectorOutcome("stripe", report=[RecordReport("marketing", "*", RecordAction.RESIDUAL)]),
    ], scope="marketing", suppressed_until=date(2029, 11, 23)),
    ReplyKind.CONSENT_WITHDRAWAL: _context(systems=[
        ConnectorOutcome("hubspot", found=2, report=[
            RecordReport("consent", "newsletter", RecordAction.WITHDRAWN, note="Newsletter: unsubscribed"),
            RecordReport("consent", "newsletter", RecordAction.UNCHANGED, note="Offers: already unsubscribed"),
            RecordReport("consent", "partner_offers", RecordAction.UNCHANGED, note="Partner offers: already")]),
        ConnectorOutcome("app", found=1, report=[
            RecordReport("consent", "newsletter", RecordAction.WITHDRAWN, note="newsletter_subscriptions: 1 row")]),
        ConnectorOutcome("woocommerce", report=[RecordReport("consent", "partner_offers", RecordAction.RESIDUAL)]),
    ], consent_purposes=PROFILE.consent_purposes() if PROFILE else [], consent_earlier=["partner_offers"]),
    ReplyKind.POST_MORTEM: _context(systems=ERASURE_SYSTEMS, quality="heir", action="closed",
                                    suppressed_until=date(2029, 11, 23)),
    ReplyKind.RESTRICTION: _context(systems=[
        ConnectorOutcome("hubspot", found=1, report=[
            RecordReport("contact", "101", RecordAction.RESTRICTED, fields=["dsr_restricted"])]),
        ConnectorOutcome("stripe", found=2, report=[
            RecordReport("customer", "cus_1", RecordAction.RESTRICTED, fields=["metadata.dsr_restricted"]),
            RecordReport("customer", "cus_2", RecordAction.UNCHANGED, note="already marked restricted")]),
        ConnectorOutcome("woocommerce", report=[RecordReport("restriction", "*", RecordAction.RESIDUAL)]),
        ConnectorOutcome("app"),
    ], ground="c", lift_notice_days=3, recipients_notified=["Logistique Exemple SARL"]),
    ReplyKind.NO_DATA: _context(systems=[ConnectorOutcome(n) for n in ("woocommerce", "stripe", "hubspot")],
                                request_kind=RequestKind.ERASURE),
    ReplyKind.ART19_NOTICE: _context(systems=RECTIFICATION_SYSTEMS, request_kind=RequestKind.RECTIFICATION,
                                     subject_email="zoe.martin@example.org",
                                     recipient_name="Cabinet comptable Exemple"),
}
SUBJECT_REPLIES = [k for k in ReplyKind if k != ReplyKind.ART19_NOTICE]
ALL = [(k, lang) for k in ReplyKind for lang in Language]
WORDS = {
    Language.FR: {"received": "23 novembre 2026", "deadline": "23 décembre 2026", "expires": "1er décembre 2026",
                  "not_extended": "non prolongé", "extended": "après prolongation de deux mois"},
    Language.EN: {"received": "23 November 2026", "deadline": "23 December 2026", "expires": "1 December 2026",
                  "not_extended": "not extended", "extended": "after an extension of two months"},
}
CNIL = ("Commission nationale de l'informatique et des libertés (CNIL), 3 Place de Fontenoy, TSA 80715, "
        "75334 Paris Cedex 07")


class _TagBalance(HTMLParser):
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


def _visible(rendered_html: str) -> str:
    """The HTML's text as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", rendered_html)).split())


def _parts(kind: ReplyKind, language: Language, context: ReplyContext | None = None) -> tuple[str, str, str]:
    rendered = render_reply(kind, language, context or CONTEXTS[kind])
    return rendered.subject, " ".join(rendered.text.split()), _visible(rendered.html)


@pytest.mark.parametrize("case", ALL, ids=lambda c: f"{c[0].value}-{c[1].value}")
def test_every_reply_renders(case: tuple[ReplyKind, Language]) -> None:
    kind, language = case
    rendered = render_reply(kind.value, language, CONTEXTS[kind])
    assert rendered.subject and "\n" not in rendered.subject and "\r" not in rendered.subject
    assert "dsr-2026-11-7KQ3FJ" in rendered.subject
    for part in (rendered.subject, rendered.text, rendered.html):
        for leftover in ("{{", "}}", "{%", "%}", "None", "Undefined", "&amp;#"):
            assert leftover not in part
    assert rendered.text.endswith("\n") and "\n\n\n" not in rendered.text
    assert rendered.html.startswith("<!DOCTYPE html>") and f'<html lang="{language.value}"' in rendered.html
    assert "<script" not in rendered.html
    assert not re.search(r"""(src|href)=["'](?!https?://)""", rendered.html)
    checker = _TagBalance()
    checker.feed(rendered.html)
    checker.close()
    assert checker.stack == []
    words = WORDS[language]
    for part in (" ".join(rendered.text.split()), _visible(rendered.html)):
        assert "dsr-2026-11-7KQ3FJ" in part
        assert words["received"] in part
        if kind != ReplyKind.ART19_NOTICE:
            assert words["deadline"] in part and words["not_extended"] in part
            assert CNIL in part and "https://www.cnil.fr" in part  # Art. 15(1)(f), 77
    assert "2026-11-23" not in rendered.text  # dates in words


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("kind", SUBJECT_REPLIES)
def test_extension_is_stated(kind: ReplyKind, language: Language) -> None:
    context = replace(CONTEXTS[kind], extended=True, deadline=date(2027, 2, 23),
                      extension_reason="Six systems to search\r\nincluding archives")
    _, text, visible = _parts(kind, language, context)
    for part in (text, visible):
        assert WORDS[language]["extended"] in part and "12" in part
        assert ("23 février 2027" if language == Language.FR else "23 February 2027") in part
        assert "Six systems to search including archives" in part  # one line: the CRLF cannot forge a line
        assert WORDS[language]["not_extended"] not in part


@pytest.mark.parametrize("language", list(Language))
def test_access_reply_carries_article_15_information(language: Language) -> None:
    assert PROFILE is not None
    _, text, visible = _parts(ReplyKind.ACCESS, language)
    lang = language.value
    for part in (text, visible):
        for purpose in PROFILE.purposes:
            assert purpose.name.text(lang) in part  # (a)
            for category in purpose.categories:
                assert category.text(lang) in part  # (b)
            for recipient in purpose.recipients or []:
                assert recipient.name.text(lang) in part  # (c)
            assert purpose.retention.text(lang) in part  # (d)
            assert purpose.source.text(lang) in part  # (g)
        assert "Stripe Radar" in part  # (h), where there is some
        assert ("article 16" if lang == "fr" else "Article 16") in part  # (e)
        assert ("article 21" if lang == "fr" else "Article 21") in part
        assert CNIL in part  # (f)
        assert ("article 15, paragraphe 2" if lang == "fr" else "Article 15(2)") in part
        assert ("clauses contractuelles types" if lang == "fr" else "standard contractual clauses") in part
        assert ("décision d'adéquation" if lang == "fr" else "adequacy decision") in part
        assert ("États-Unis" if lang == "fr" else "the United States") in part
        assert ("l'exécution d'un contrat" if lang == "fr" else "performance of a contract") in part  # Art. 6
        assert URL in part and "K7QM-4XPD" in part and WORDS[language]["expires"] in part
        assert ("commandes : 2" if lang == "fr" else "orders: 2") in part
        assert "privacy@kestio.example" in part
    assert f'href="{html.escape(URL)}"' in render_reply("reply_access", language, CONTEXTS[ReplyKind.ACCESS]).html


@pytest.mark.parametrize("language", list(Language))
def test_download_never_asks_for_the_reference(language: Language) -> None:
    # The reference is in every email subject: the download page takes only the code (issue 12).
    for code in ("", "K7QM-4XPD"):
        _, text, _ = _parts(ReplyKind.ACCESS, language, _context(download_code=code))
        assert "demandé la référence" not in text and "asked for your request reference" not in text
        without = "le code envoyé avec ce lien" if language == Language.FR else "the code sent with this link"
        assert (code or without) in text


@pytest.mark.parametrize("language", list(Language))
def test_portability_reply(language: Language) -> None:
    _, text, visible = _parts(ReplyKind.PORTABILITY, language)
    for part in (text, visible):
        assert "JSON" in part and "CSV" in part and URL in part
        assert ("article 20, paragraphe 2" if language == Language.FR else "Article 20(2)") in part
        provided = "fiche contact : 1" if language == Language.FR else "contact record: 1"
        excluded = "notes de notre équipe : 3" if language == Language.FR else "notes from our team: 3"
        assert provided in part
        # derived data is named as left out, not as included
        assert excluded in part.split("JSON (data.json", 1)[1]


@pytest.mark.parametrize("language", list(Language))
def test_erasure_reply_says_what_was_kept_why_and_until_when(language: Language) -> None:
    _, text, visible = _parts(ReplyKind.ERASURE, language)
    fr = language == Language.FR
    worded = ("article 17, paragraphe 3, point b), du RGPD ; article L123-22 du Code de commerce "
              "(pièces comptables, 10 ans)") if fr else \
        "Article 17(3)(b) GDPR; Article L123-22 of the French Commercial Code (accounting records, 10 years)"
    for part in (text, visible):
        assert worded in part  # the basis in the letter's language, never the connector's English
        assert BASIS not in part
        assert ("31 janvier 2035" if fr else "31 January 2035") in part
        assert ("1er mars 2035" if fr else "1 March 2035") in part and ("2 mai 2036" if fr else "2 May 2036") in part
        # Orders keep items, amounts and the request's reference: pseudonymised, and the letter says what stays.
        assert ("Pseudonymisé" if fr else "Pseudonymised") in part
        assert "Anonymis" not in part
        assert ("articles, montants, dates" if fr else "items, amounts, dates") in part
        # Only the connected systems were searched, and the letter names them instead of "every system".
        assert ("chacun des systèmes" if fr else "each of the systems") not in part
        assert ("Effacé : compte client : 1" if fr else "Erased: customer account: 1") in part
        assert ("adresse IP, informations sur le navigateur" if fr else "IP address, browser information") in part
        assert ("article 17, paragraphe 3" if fr else "Article 17(3)") in part
        assert "Cabinet comptable Exemple" in part and "Logistique Exemple SARL" in part
        assert ("article 19" if fr else "Article 19") in part
        # HubSpot found nothing: said as such, without guessing why (the journal knows what this request did).
        assert ("Aucune donnée vous concernant n'a été trouvée dans ce système." if fr
                else "No data about you was found in this system.") in part
        assert ("jamais enregistrée" if fr else "never recorded") not in part


@pytest.mark.parametrize("language", list(Language))
def test_erasure_reply_tells_erased_by_this_request_from_gone_before_it(language: Language) -> None:
    systems = [
        # An earlier attempt of this request deleted the account; its retry found it gone: the journal says "deleted".
        ConnectorOutcome("woocommerce", found=1, report=[RecordReport("customer", "7", RecordAction.DELETED)]),
        # Found when the request searched, deleted by someone else before the request reached it.
        ConnectorOutcome("hubspot", found=1, report=[RecordReport("contact", "501", RecordAction.ALREADY_GONE)]),
        ConnectorOutcome("stripe", found=0, report=[RecordReport("customer", "-", RecordAction.ALREADY_GONE)]),
    ]
    _, text, visible = _parts(ReplyKind.ERASURE, language, _context(systems=systems))
    fr = language == Language.FR
    for part in (text, visible):
        section = re.split(r"Ce que nous avons fait, système par système|What we did, system by system", part)[1]
        woo, hubspot, stripe = (section[section.index(f"({n})"):] for n in ("WooCommerce", "HubSpot", "Stripe"))
        assert woo.split("(HubSpot)")[0].count("Effacé : compte client : 1" if fr
                                                else "Erased: customer account: 1") == 1
        assert ("Déjà supprimé avant que cette demande ne l'atteigne (pas par cette demande) : fiche contact : 1"
                if fr else "Already deleted before this request reached it (not by this request): contact record: 1"
                ) in hubspot.split("(Stripe)")[0]
        assert ("Aucune donnée vous concernant n'a été trouvée dans ce système." if fr
                else "No data about you was found in this system.") in stripe
        assert ("Effacé :" if fr else "Erased:") not in hubspot


@pytest.mark.parametrize("language", list(Language))
def test_rectification_reply_names_fields_never_values(language: Language) -> None:
    _, text, visible = _parts(ReplyKind.RECTIFICATION, language)
    fr = language == Language.FR
    for part in (text, visible):
        assert ("compte client : ville, nom" if fr else "customer account: city, last name") in part
        assert ("Déjà à jour" if fr else "Already up to date") in part
        assert "Durand" not in part and "Lyon" not in part
        assert "Cabinet comptable Exemple" in part


@pytest.mark.parametrize("language", list(Language))
def test_rectification_reply_says_up_to_date_only_for_what_was_read_equal(language: Language) -> None:
    # HubSpot found the contact but holds none of the fields to correct; Stripe found nothing at all.
    systems = [
        ConnectorOutcome("woocommerce", found=1, report=[
            RecordReport("customer", "7", RecordAction.UNCHANGED, fields=["city"])]),
        ConnectorOutcome("hubspot", found=1, notes=["no HubSpot contact property for: address_line2"]),
        ConnectorOutcome("stripe", found=0),
    ]
    _, text, visible = _parts(ReplyKind.RECTIFICATION, language, _context(systems=systems))
    fr = language == Language.FR
    for part in (text, visible):
        blocks = _system_blocks(part, ["WooCommerce", "HubSpot", "Stripe"])
        assert ("Déjà à jour, aucune modification nécessaire — compte client : ville" if fr
                else "Already up to date, no change needed — customer account: city") in blocks[0]
        assert ("Ce système ne contient pas les informations à corriger : rien n" if fr
                else "The information to correct is not held in this system: nothing was changed there.") in blocks[1]
        assert ("Déjà à jour" if fr else "Already up to date") not in blocks[1]
        assert ("Aucune donnée vous concernant" if fr else "No data about you") not in blocks[1]
        assert ("Aucune donnée vous concernant dans ce système : rien à corriger." if fr
                else "No data about you in this system: nothing to correct.") in blocks[2]


def _system_blocks(text: str, labels: list[str]) -> list[str]:
    """The text of each system's part of the system-by-system section, in order."""
    section = re.split(r"Ce que nous avons corrigé, système par système|What we corrected, system by system",
                       text)[1]
    starts = [section.index(f"({label})") for label in labels]
    return [section[start:end] for start, end in zip(starts, [*starts[1:], len(section)], strict=True)]


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("request_kind", list(RequestKind))
def test_no_data_reply(language: Language, request_kind: RequestKind) -> None:
    subject, text, visible = _parts(ReplyKind.NO_DATA, language, replace(CONTEXTS[ReplyKind.NO_DATA],
                                                                         request_kind=request_kind))
    fr = language == Language.FR
    assert ("Aucune donnée" if fr else "No data") in subject
    for part in (text, visible):
        assert ("aucune donnée personnelle vous concernant" if fr else "no personal data about you") in part
        assert ("notre prestataire de paiement (Stripe)" if fr else "our payment provider (Stripe)") in part


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("request_kind", [RequestKind.RECTIFICATION, RequestKind.ERASURE])
def test_art19_notice(language: Language, request_kind: RequestKind) -> None:
    context = replace(CONTEXTS[ReplyKind.ART19_NOTICE], request_kind=request_kind)
    subject, text, visible = _parts(ReplyKind.ART19_NOTICE, language, context)
    fr = language == Language.FR
    assert ("Article 19 du RGPD" if fr else "Article 19 GDPR") in subject
    for part in (text, visible):
        assert "zoe.martin@example.org" in part and "dsr-2026-11-7KQ3FJ" in part
        assert "Zoé" not in part and "Martin," not in part  # the recipient never learns the name
        assert "Durand" not in part
        if request_kind == RequestKind.RECTIFICATION:
            assert ("ville, nom" if fr else "city, last name") in part
        else:
            assert ("effac" if fr else "erase") in part


OTHER_STAFF = {
    Language.FR: "La messagerie du service client (les courriels échangés avec vous) : notre outil n'y fait pas de "
                 "recherche ; votre demande y est traitée par notre service client.",
    Language.EN: "The customer service mailbox (emails exchanged with you): not searched by that tool; your request "
                 "is handled there by our customer service team.",
}


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("kind", SUBJECT_REPLIES)
def test_every_reply_names_the_systems_outside_the_search(language: Language, kind: ReplyKind) -> None:
    _, text, visible = _parts(kind, language)
    fr = language == Language.FR
    for part in (text, visible):
        assert ("Systèmes en dehors de cette recherche" if fr else "Systems outside this search") in part
        assert OTHER_STAFF[language] in part
    # A system left out of the replies altogether says so, with why; a profile without any has no such section.
    from dsr.config.profile import OtherSystem

    backups = OtherSystem.model_validate({
        "name": {"fr": "Les sauvegardes", "en": "Backups"}, "holds": {"fr": "une copie des bases", "en": "a copy of "
                                                                     "the databases"},
        "handling": "not_covered", "how": {"fr": "effacées d'elles-mêmes après 30 jours",
                                           "en": "overwritten after 30 days"}})
    profile = PROFILE.model_copy(update={"other_systems": [backups]})
    _, text, visible = _parts(kind, language, replace(CONTEXTS[kind], profile=profile))
    for part in (text, visible):
        assert ("Les sauvegardes (une copie des bases) : hors du champ de cette réponse : effacées d'elles-mêmes "
                "après 30 jours." if fr else "Backups (a copy of the databases): outside the scope of this reply: "
                "overwritten after 30 days.") in part
        assert OTHER_STAFF[language] not in part
    bare = PROFILE.model_copy(update={"other_systems": []})
    _, text, _ = _parts(kind, language, replace(CONTEXTS[kind], profile=bare))
    assert ("Systèmes en dehors" if fr else "Systems outside") not in text


def test_the_art19_notice_does_not_list_other_systems() -> None:
    for language in Language:
        _, text, _ = _parts(ReplyKind.ART19_NOTICE, language)
        assert "Systems outside" not in text and "Systèmes en dehors" not in text


def test_art19_notice_needs_kind_email_and_a_change() -> None:
    base = CONTEXTS[ReplyKind.ART19_NOTICE]
    with pytest.raises(ValueError, match="a rectification, an erasure or a restriction"):
        render_reply("art19_notice", "en", replace(base, request_kind=RequestKind.ACCESS))
    with pytest.raises(ValueError, match="subject_email"):
        render_reply("art19_notice", "en", replace(base, subject_email="a@b.example\r\nBcc: c@d.example"))
    with pytest.raises(ValueError, match="no rectification to notify"):
        render_reply("art19_notice", "en", replace(base, systems=[ConnectorOutcome("stripe")]))


def test_incomplete_profile_refuses_the_access_reply() -> None:
    assert PROFILE is not None
    broken = PROFILE.model_copy(deep=True)
    broken.purposes[1].retention = Localized()
    broken.purposes[2].recipients[1].safeguard = None  # type: ignore[index]
    expected = check_profile(broken)
    assert expected == [
        "controller.purposes[1].retention: missing (Art. 15(1)(d): the period, or the criteria used to set it)",
        "controller.purposes[2].recipients[1].safeguard: missing (Art. 15(2): transfer to US, outside the EEA)",
    ]
    for language in Language:
        with pytest.raises(IncompleteProfileError) as caught:
            render_reply("reply_access", language, _context(profile=broken))
        assert caught.value.missing == expected
        assert "controller.purposes[1].retention" in str(caught.value)
    with pytest.raises(IncompleteProfileError) as caught:
        render_reply("reply_access", "fr", _context(profile=None))
    assert caught.value.missing[0].startswith("controller: missing")
    # other replies do not need the Art. 15 information
    render_reply("reply_erasure", "fr", replace(CONTEXTS[ReplyKind.ERASURE], profile=broken))
    render_reply("reply_no_data", "en", replace(CONTEXTS[ReplyKind.NO_DATA], profile=None))


@pytest.mark.parametrize("kind", [ReplyKind.ACCESS, ReplyKind.PORTABILITY])
def test_bundle_replies_need_a_valid_link(kind: ReplyKind) -> None:
    for bad in ("", "javascript:alert(1)", "https://x.example/a\r\nBcc: y@z.example", "/exports/relative"):
        with pytest.raises(ValueError, match="download_url"):
            render_reply(kind, "fr", _context(download_url=bad))
    with pytest.raises(ValueError, match="link_expires"):
        render_reply(kind, "fr", _context(link_expires=None))


def test_unknown_kind_and_missing_reference() -> None:
    with pytest.raises(ValueError, match="unknown reply kind"):
        render_reply("reply_everything", "fr", _context())
    with pytest.raises(ValueError, match="reference"):
        render_reply("reply_access", "fr", _context(reference=" \r\n"))
    with pytest.raises(ValueError, match="request_kind"):
        render_reply("reply_no_data", "fr", _context())


def _hostile_profile() -> ControllerProfile:
    assert PROFILE is not None
    profile = PROFILE.model_copy(deep=True)
    profile.legal_name = HOSTILE
    profile.purposes[0].name = Localized(fr=HOSTILE, en=HOSTILE)
    profile.purposes[0].categories = [Localized(fr=HOSTILE, en=HOSTILE)]
    profile.purposes[1].recipients[1].safeguard_detail = Localized(fr=HOSTILE, en=HOSTILE)  # type: ignore[index]
    profile.systems = {"woocommerce": Localized(fr=HOSTILE, en=HOSTILE)}
    return profile


@pytest.mark.parametrize("case", ALL, ids=lambda c: f"{c[0].value}-{c[1].value}")
def test_hostile_values_are_inert(case: tuple[ReplyKind, Language]) -> None:
    kind, language = case
    hostile_report = [RecordReport("orders", "1", RecordAction.RETAINED, legal_basis=HOSTILE,
                                   retained_until=date(2035, 1, 1)),
                      RecordReport(HOSTILE, "2", RecordAction.CHANGED, fields=[HOSTILE])]
    systems = [*CONTEXTS[kind].systems, ConnectorOutcome(HOSTILE, found=1, report=hostile_report,
                                                         datasets=[DatasetSummary(HOSTILE, 1, True)])]
    context = replace(CONTEXTS[kind], subject_name=HOSTILE, profile=_hostile_profile(), systems=systems,
                      reference="dsr-2026-11-7KQ3FJ\r\nBcc: x@evil.test", download_code=HOSTILE,
                      recipients_notified=[HOSTILE], extension_reason=HOSTILE, extended=True,
                      recipient_name=HOSTILE)
    if kind == ReplyKind.ACCESS:
        context = replace(context, profile=PROFILE)  # the access reply is the one checked in full below
    rendered = render_reply(kind, language, context)
    assert "\r" not in rendered.subject and "\n" not in rendered.subject
    assert "<script" not in rendered.html and "</script" not in rendered.html
    assert "\r" not in rendered.text
    assert not any(line.lstrip().lower().startswith("bcc:") for line in rendered.text.splitlines())
    if kind != ReplyKind.ART19_NOTICE:
        assert "&lt;script&gt;alert(1)&lt;/script&gt; Bcc: x@evil.test" in rendered.html
        assert "<script>alert(1)</script> Bcc: x@evil.test" in rendered.text


@pytest.mark.parametrize("language", list(Language))
def test_hostile_profile_in_access_reply_is_escaped(language: Language) -> None:
    profile = _hostile_profile()
    rendered = render_reply("reply_access", language, _context(profile=profile))
    assert "<script" not in rendered.html
    assert rendered.html.count("&lt;script&gt;") >= 5  # signature, purpose, category, safeguard, system
    assert "<script>alert(1)</script> Bcc: x@evil.test" in rendered.text


@pytest.mark.parametrize(("basis", "fr", "en"), [
    ("Art. 17(3)(b) GDPR", "article 17, paragraphe 3, point b), du RGPD", "Article 17(3)(b) GDPR"),
    ("Art. 17(3)(e) GDPR; Code de commerce L123-22", "article 17, paragraphe 3, point e), du RGPD ; "
     "article L123-22 du Code de commerce", "Article 17(3)(e) GDPR; Article L123-22 of the French Commercial Code"),
    ("LPF L102 B", "LPF L102 B", "LPF L102 B"),  # unknown: shown as written, until the profile words it
])
def test_legal_bases_are_worded_in_the_letter_s_language(basis: str, fr: str, en: str) -> None:
    assert legal_basis_wording(basis, "fr") == fr
    assert legal_basis_wording(basis, "en") == en


def test_the_profile_words_a_basis_the_engine_does_not_know() -> None:
    profile = PROFILE.model_copy(update={"legal_bases": {
        "LPF L102 B": Localized(fr="article L102 B du Livre des procédures fiscales (6 ans)",
                                en="Article L102 B of the French Tax Procedures Book (6 years)")}})
    assert legal_basis_wording("LPF L102 B", "fr", profile) == "article L102 B du Livre des procédures fiscales (6 ans)"
    assert legal_basis_wording("LPF L102 B", "en", profile).startswith("Article L102 B of the French Tax")


@pytest.mark.parametrize(("language", "kept"), [
    (Language.FR, "notre liste d'opposition conserve une empreinte de votre adresse électronique"),
    (Language.EN, "our suppression list keeps a fingerprint of your email address"),
])
def test_an_erasure_reply_says_what_it_keeps_of_a_marketing_objection(language: Language, kept: str) -> None:
    _, text, visible = _parts(ReplyKind.ERASURE, language,
                              replace(CONTEXTS[ReplyKind.ERASURE], suppressed_until=date(2029, 11, 23)))
    for part in (text, visible):
        assert kept in part and ("23 novembre 2029" if language == Language.FR else "23 November 2029") in part
    _, text, _ = _parts(ReplyKind.ERASURE, language)
    assert kept not in text  # no objection, nothing said


@pytest.mark.parametrize(("language", "words"), [
    (Language.FR, ["Désabonnement effectué — Newsletter", "Déjà désabonné — Offers", "vérifie à la main",
                   "jusqu'au 23 novembre 2029", "article 21, paragraphes 2 et 3"]),
    (Language.EN, ["Unsubscribed — Newsletter", "Already unsubscribed — Offers", "checks by hand",
                   "until 23 November 2029", "Article 21(2) and (3)"]),
])
def test_marketing_objection_reply_golden(language: Language, words: list[str]) -> None:
    subject, text, visible = _parts(ReplyKind.OBJECTION, language)
    assert subject.startswith("Réponse à votre opposition à la prospection" if language == Language.FR
                              else "Reply to your objection to direct marketing")
    for part in (text, visible):
        for word in words:
            assert word in part


@pytest.mark.parametrize(("language", "decision", "remedy"), [
    (Language.FR, "Opposition non retenue", "comme le prévoit l'article 12, paragraphe 4, du RGPD"),
    (Language.EN, "Objection not accepted", "as Article 12(4) GDPR provides"),
])
def test_rejected_objection_reply_golden(language: Language, decision: str, remedy: str) -> None:
    context = _context(systems=[], scope="other", decision="rejected",
                       grounds="Fraud checks protect every customer.\r\nBcc: x@evil.test")
    subject, text, visible = _parts(ReplyKind.OBJECTION, language, context)
    assert subject.startswith("Notre décision sur votre opposition" if language == Language.FR
                              else "Our decision on your objection")
    for part in (text, visible):
        assert decision in part and remedy in part and CNIL in part
        assert "Fraud checks protect every customer. Bcc: x@evil.test" in part  # one line: no header forged
    with pytest.raises(ValueError, match="grounds"):
        render_reply("reply_objection", language, replace(context, grounds=" "))
    with pytest.raises(ValueError, match="decision"):
        render_reply("reply_objection", language, replace(context, decision=""))
    _, upheld, _ = _parts(ReplyKind.OBJECTION, language, replace(context, decision="upheld", grounds=""))
    assert ("Opposition acceptée" if language == Language.FR else "Objection accepted") in upheld


@pytest.mark.parametrize(("language", "subject_line", "words"), [
    (Language.FR, "Votre consentement est retiré", [
        "Nous faisons suite à votre retrait du consentement (article 7, paragraphe 3, du RGPD), reçu le "
        "23 novembre 2026",
        "aussi simple que de le donner",
        "Envoi de notre lettre d'information et d'offres promotionnelles",
        "Envoi des offres de nos partenaires (vous aviez déjà retiré ce consentement avant cette demande)",
        "Envoi de notre lettre d'information et d'offres promotionnelles : fait, votre consentement est retiré "
        "dans ce système",
        "Envoi des offres de nos partenaires : plus rien à faire, ce système n'utilisait plus vos données à cette "
        "fin",
        "Envoi des offres de nos partenaires : ce système n'offre pas de réglage que nous puissions modifier "
        "automatiquement : notre équipe y met fin manuellement",
        "Le retrait du consentement ne compromet pas la licéité du traitement fondé sur le consentement effectué "
        "avant ce retrait (article 7, paragraphe 3, du RGPD)",
        "seulement une empreinte calculée avec une clé secrète",
    ]),
    (Language.EN, "Your consent is withdrawn", [
        "We are replying to your withdrawal of your consent (Article 7(3) GDPR), received on 23 November 2026",
        "as easy as giving it",
        "Sending offers from our partners (you had already withdrawn this consent before this request)",
        "Sending our newsletter and promotional offers: done, your consent is withdrawn in this system",
        "Sending offers from our partners: nothing left to do, this system no longer used your data for it",
        "Sending offers from our partners: this system has no setting we can change automatically: our team "
        "stops it by hand",
        "Withdrawing consent does not affect the lawfulness of the processing carried out on the basis of that "
        "consent before its withdrawal (Article 7(3) GDPR)",
        "only a fingerprint of it computed with a secret key",
    ]),
])
def test_consent_withdrawal_reply_golden(language: Language, subject_line: str, words: list[str]) -> None:
    subject, text, visible = _parts(ReplyKind.CONSENT_WITHDRAWAL, language)
    assert subject.startswith(subject_line) and "dsr-2026-11-7KQ3FJ" in subject
    for part in (text, visible):
        flat = " ".join(part.split())
        for word in words:
            assert word in flat
    # The newsletter purpose is new here: it is not said to be withdrawn before.
    assert "Envoi de notre lettre d'information et d'offres promotionnelles (vous aviez" not in text
    with pytest.raises(ValueError, match="purposes withdrawn"):
        render_reply("reply_consent_withdrawal", language,
                     replace(CONTEXTS[ReplyKind.CONSENT_WITHDRAWAL], consent_purposes=[]))


@pytest.mark.parametrize(("language", "words"), [
    (Language.FR, ["Réponse à votre demande relative aux données d'une personne décédée",
                   "vous agissez en qualité d'héritier du défunt", "Ces pièces ont été supprimées une fois examinées",
                   "aucune directive", "article 85, II", "nous avons clôturé les comptes de la personne décédée",
                   "Effacé", "dix ans (article L123-22 du Code de commerce)", "jusqu'au 23 novembre 2029",
                   "elle ne montre pas les données de la personne décédée",
                   "informations utiles au règlement de la succession", CNIL]),
    (Language.EN, ["Reply to your request about the data of a deceased person",
                   "you act as an heir of the deceased person", "Those documents were deleted once checked",
                   "no directives", "Article 85-II", "we have closed the deceased person's accounts", "Erased",
                   "ten years under French law (Article L123-22", "until 23 November 2029",
                   "it does not show the deceased person's data", "information useful to settle the estate", CNIL]),
])
def test_post_mortem_closure_reply_golden(language: Language, words: list[str]) -> None:
    subject, text, visible = _parts(ReplyKind.POST_MORTEM, language)
    assert subject.startswith(words[0]) and "dsr-2026-11-7KQ3FJ" in subject
    for part in (text, visible):
        for word in words[1:]:
            assert word in part, word
        # The erasure's words for the subject's own data are not the heir's.
        assert "vos données ont été" not in part and "your data was" not in part


@pytest.mark.parametrize(("language", "kept", "hand_over", "estate"), [
    (Language.FR, "Nous n'avons donc rien effacé", "demandent que ses données vous soient communiquées",
     "informations utiles à la liquidation et au partage de la succession"),
    (Language.EN, "We have therefore erased nothing", "ask that their data be handed over to you",
     "information useful to the settlement and division of the estate"),
])
def test_post_mortem_replies_per_directive_golden(language: Language, kept: str, hand_over: str, estate: str) -> None:
    _, text, visible = _parts(ReplyKind.POST_MORTEM, language, _context(
        systems=[], quality="designated", action="kept", directives="keep"))
    assert kept in text and kept in visible
    assert ("personne désignée par le défunt" if language == Language.FR else "the person the deceased designated") \
        in text
    _, text, visible = _parts(ReplyKind.POST_MORTEM, language, _context(
        systems=[], quality="designated", action="staff", directives="hand_over"))
    assert hand_over in text and hand_over in visible
    _, text, visible = _parts(ReplyKind.POST_MORTEM, language, _context(systems=[], quality="executor",
                                                                       action="staff"))
    assert estate in text and estate in visible and "Effacé" not in text and "Erased" not in text


def test_a_post_mortem_reply_is_only_written_with_what_was_checked_and_done() -> None:
    base = CONTEXTS[ReplyKind.POST_MORTEM]
    with pytest.raises(ValueError, match="quality"):
        render_reply("reply_post_mortem", Language.FR, replace(base, quality=""))
    with pytest.raises(ValueError, match="what was done"):
        render_reply("reply_post_mortem", Language.EN, replace(base, action="erased"))
    with pytest.raises(ValueError, match="no system"):
        render_reply("reply_post_mortem", Language.EN, replace(base, systems=[]))


@pytest.mark.parametrize(("language", "words"), [
    (Language.FR, ["article 18, paragraphe 1, point c), du RGPD", "Marqué comme limité — fiche contact (1)",
                   "notre équipe y limite à la main", "Aucune donnée vous concernant dans ce système : rien à limiter",
                   "article 18, paragraphe 2, du RGPD", "au moins 3 jours à l'avance",
                   "informé de la limitation du traitement de vos données le destinataire suivant",
                   "Logistique Exemple SARL"]),
    (Language.EN, ["Article 18(1)(c) GDPR", "Marked as restricted — contact record (1)",
                   "our team restricts the use of your data in it by hand",
                   "No data about you in this system: nothing to restrict", "Article 18(2) GDPR",
                   "at least 3 days in advance",
                   "of the restriction of processing of your data: Logistique Exemple SARL"]),
])
def test_restriction_reply_golden(language: Language, words: list[str]) -> None:
    subject, text, visible = _parts(ReplyKind.RESTRICTION, language)
    assert subject.startswith("Réponse à votre demande de limitation du traitement" if language == Language.FR
                              else "Reply to your request to restrict the processing of your data")
    for part in (text, visible):
        for word in words:
            assert word in part, word
        assert CNIL in part
    with pytest.raises(ValueError, match="ground"):
        render_reply("reply_restriction", language, replace(CONTEXTS[ReplyKind.RESTRICTION], ground=""))


@pytest.mark.parametrize(("ground", "fr", "en"), [
    ("a", "Le temps de la vérifier", "For the time we need to verify it"),
    ("b", "plutôt que de les effacer", "rather than erase it"),
    ("d", "jusqu'à notre décision sur votre opposition", "until we have decided on your objection"),
])
def test_each_restriction_ground_has_its_words(ground: str, fr: str, en: str) -> None:
    context = replace(CONTEXTS[ReplyKind.RESTRICTION], ground=ground)
    assert fr in _parts(ReplyKind.RESTRICTION, Language.FR, context)[1]
    assert en in _parts(ReplyKind.RESTRICTION, Language.EN, context)[1]


@pytest.mark.parametrize(("language", "words"), [
    (Language.FR, ["limitation du traitement", "article 18 du RGPD", "nous ne faisons que les conserver",
                   "jusqu'à ce que nous vous informions de la levée"]),
    (Language.EN, ["restriction of processing", "Article 18 GDPR", "we only store it",
                   "until we tell you the restriction is lifted"]),
])
def test_art19_notice_of_a_restriction(language: Language, words: list[str]) -> None:
    context = _context(systems=CONTEXTS[ReplyKind.RESTRICTION].systems, request_kind=RequestKind.RESTRICTION,
                       subject_email="zoe.martin@example.org", recipient_name="Logistique Exemple SARL")
    subject, text, visible = _parts(ReplyKind.ART19_NOTICE, language, context)
    assert ("limitation du traitement" if language == Language.FR else "restriction of processing") in subject
    for part in (text, visible):
        for word in words:
            assert word in part, word

"""The supplementary letter (how the systems pending at the reply answered since): golden texts in French and
English, each answer's wording for each kind, the Art. 12(4) remedies only where something was not done, and no
letter that cannot be true."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from dsr.config.profile import ControllerProfile, load_profile
from dsr.domain.model import Language, RequestKind
from dsr.mail.supplement import STATUSES, SupplementLine, render_supplement
from templates import RenderedNotice

DEMO = Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml"


def _profile() -> ControllerProfile:
    profile = load_profile(DEMO)
    assert profile is not None
    return profile


PROFILE = _profile()
ASKED = date(2026, 11, 3)


def render(language: str, kind: RequestKind, lines: list[SupplementLine], name: str = "Zoé Martin") -> RenderedNotice:
    return render_supplement(Language(language), reference="DSR-2026-0042", kind=kind, received=date(2026, 11, 2),
                             lines=lines, profile=PROFILE, subject_name=name, controller_name="Kestio SAS")


ERASURE_LINES = [
    SupplementLine("support-chat", "kept", True, ASKED, legal_basis="Art. 17(3)(b) GDPR",
                   kept_until=date(2036, 12, 31)),
    SupplementLine("backups", "no_answer", False, ASKED),
]

GOLDEN_EN = """\
Dear Zoé Martin,

In our reply to your request to erase your personal data (Article 17 GDPR) of 2 November 2026, we told you that \
the systems below had not yet confirmed what we asked of them, and that we would write to you again. Each has now \
answered, or we have stopped waiting for its answer: here is where each one stands.

Where each system stands

our support chat tool (a processor)
  Kept: our processor, who runs this system on our behalf, keeps the data concerned until 31 December 2036, on \
this legal basis: Article 17(3)(b) GDPR.

our backups
  No answer: we asked the member of our team in charge of this system on 3 November 2026, and have had no answer. \
Our team is following it up by other means and checks that it is done; you may ask us at any time where this stands.

Your remedies
Where a system above has not done what you asked, you may ask us at any time where this stands, by replying to \
this message. If you consider that we have not respected your rights, you have the right to lodge a complaint with \
the supervisory authority: Commission nationale de l'informatique et des libertés (CNIL), 3 Place de Fontenoy, TSA \
80715, 75334 Paris Cedex 07, https://www.cnil.fr (Article 77 GDPR). You also have the right to seek a judicial \
remedy (Article 79 GDPR).

Kind regards,
Kestio SAS

---
Your request reference: DSR-2026-0042
Please quote it whenever you contact us. If you have any question, simply reply to this message.
"""

GOLDEN_FR = """\
Bonjour Zoé Martin,

Dans notre réponse à votre demande d'effacement de vos données personnelles (article 17 du RGPD) du 2 novembre \
2026, nous vous avions indiqué que les systèmes ci-dessous n'avaient pas encore confirmé ce que nous leur avions \
demandé, et que nous vous écririons de nouveau. Chacun a maintenant répondu, ou nous avons cessé d'attendre sa \
réponse : voici où en est chacun.

Où en est chaque système

notre outil de messagerie du support (un sous-traitant)
  Conservé : notre sous-traitant, qui gère ce système pour notre compte, conserve les données concernées jusqu'au \
31 décembre 2036, sur ce fondement : article 17, paragraphe 3, point b), du RGPD.

nos sauvegardes
  Pas de réponse : nous avons sollicité le membre de notre équipe chargé de ce système le 3 novembre 2026, sans \
obtenir de réponse. Notre équipe assure le suivi par d'autres moyens et vérifie que c'est fait ; vous pouvez à tout \
moment nous demander où cela en est.

Vos recours
Si un système ci-dessus n'a pas fait ce que vous avez demandé, vous pouvez à tout moment nous demander où cela en \
est, en répondant à ce message. Si vous estimez que nous n'avons pas respecté vos droits, vous pouvez introduire une \
réclamation auprès de l'autorité de contrôle : Commission nationale de l'informatique et des libertés (CNIL), 3 \
Place de Fontenoy, TSA 80715, 75334 Paris Cedex 07, https://www.cnil.fr (article 77 du RGPD). Vous pouvez \
également former un recours juridictionnel (article 79 du RGPD).

Cordialement,
Kestio SAS

---
Référence de votre demande : DSR-2026-0042
Merci de la rappeler dans tout échange avec nous. Pour toute question, répondez simplement à ce message.
"""


@pytest.mark.parametrize(("language", "subject", "golden"), [
    ("en", "What the remaining systems answered (ref. DSR-2026-0042)", GOLDEN_EN),
    ("fr", "Les réponses des systèmes restants (réf. DSR-2026-0042)", GOLDEN_FR),
])
def test_supplement_golden(language: str, subject: str, golden: str) -> None:
    letter = render(language, RequestKind.ERASURE, ERASURE_LINES)
    assert letter.subject == subject
    assert letter.text == golden
    assert f'<html lang="{language}"' in letter.html and "DSR-2026-0042" in letter.html


@pytest.mark.parametrize(("kind", "en", "fr"), [
    (RequestKind.ERASURE, "the data concerned by the request is erased there",
     "les données visées par la demande y sont effacées"),
    (RequestKind.POST_MORTEM, "the data concerned by the request is erased there",
     "les données visées par la demande y sont effacées"),
    (RequestKind.RECTIFICATION, "the data concerned is corrected there", "les données concernées y sont corrigées"),
    (RequestKind.RESTRICTION, "the processing of the data concerned is restricted there",
     "le traitement des données concernées y est limité"),
    (RequestKind.OBJECTION, "no more marketing is sent to you from there",
     "plus aucune prospection ne vous est adressée depuis ce système"),
    (RequestKind.CONSENT_WITHDRAWAL, "your data is no longer used there for Newsletter, Partner offers",
     "vos données n'y sont plus utilisées pour : Newsletter, Partner offers"),
    (RequestKind.ACCESS, "if you would like a copy of what they hold about you, simply reply to this message",
     "si vous souhaitez une copie de ce qu'il détient sur vous, répondez simplement à ce message"),
    (RequestKind.PORTABILITY, "if you would like a copy of what they hold about you, simply reply to this message",
     "si vous souhaitez une copie de ce qu'il détient sur vous, répondez simplement à ce message"),
])
def test_a_confirmation_says_what_was_done_in_the_kinds_words_without_remedies(kind: RequestKind, en: str,
                                                                               fr: str) -> None:
    for language, words in (("en", en), ("fr", fr)):
        line = SupplementLine("support-chat", "done", True, ASKED, purposes=["Newsletter", "Partner offers"])
        text = " ".join(render(language, kind, [line]).text.split())
        assert words in text
        # Everything asked was done: no remedies section (Art. 12(4) is for a request not acted on).
        assert "Your remedies" not in text and "Vos recours" not in text
        assert "complaint" not in text and "réclamation" not in text


@pytest.mark.parametrize(("status", "en", "fr"), [
    ("no_data", "Nothing to do: our processor, who runs this system on our behalf, checked that this system holds "
     "no data about you.", "Rien à faire : notre sous-traitant, qui gère ce système pour notre compte, a vérifié que "
     "ce système ne détient aucune donnée vous concernant."),
    ("cannot", "Not done there: our processor, who runs this system on our behalf, told us that it cannot be done in "
     "this system. Our team is doing it by other means", "Non fait dans ce système : notre sous-traitant, qui gère ce "
     "système pour notre compte, nous a indiqué que ce n'était pas possible dans ce système. Notre équipe s'en charge"),
    ("staff", "Done by our team: our team saw to it by other means and checked that it was done.",
     "Fait par notre équipe : notre équipe s'en est chargée par d'autres moyens et a vérifié que c'était fait."),
])
def test_each_answer_is_told_as_the_ledger_holds_it(status: str, en: str, fr: str) -> None:
    for language, words in (("en", en), ("fr", fr)):
        text = " ".join(render(language, RequestKind.ERASURE,
                               [SupplementLine("support-chat", status, True, ASKED)]).text.split())
        assert words in text
        remedies = "Your remedies" in text or "Vos recours" in text
        assert remedies == (status == "cannot")


def test_a_withdrawal_kept_on_another_basis_is_confirmed_and_says_what_is_kept() -> None:
    line = SupplementLine("support-chat", "kept", True, ASKED, legal_basis="Art. 17(3)(b) GDPR",
                          kept_until=date(2036, 12, 31), purposes=["Newsletter"])
    text = " ".join(render("en", RequestKind.CONSENT_WITHDRAWAL, [line], name="").text.split())
    assert ("Done: our processor, who runs this system on our behalf, confirmed it: your data is no longer used "
            "there for Newsletter. The data itself is kept there until 31 December 2036, on another legal basis: "
            "Article 17(3)(b) GDPR.") in text
    assert text.startswith("Hello,")  # no name: a withdrawal asks no proof of identity


def test_values_from_outside_are_escaped_in_the_html() -> None:
    line = SupplementLine("support-chat", "done", True, ASKED, purposes=["<b>News</b>\r\nBcc: x@example.com"])
    letter = render("en", RequestKind.CONSENT_WITHDRAWAL, [line])
    assert "<b>News</b>" not in letter.html and "&lt;b&gt;News&lt;/b&gt;" in letter.html
    assert "\nBcc:" not in letter.text


@pytest.mark.parametrize(("lines", "kind", "error"), [
    ([], RequestKind.ERASURE, "at least one system"),
    ([SupplementLine("backups", "maybe", False)], RequestKind.ERASURE, "not 'maybe'"),
    ([SupplementLine("backups", "kept", False, legal_basis="Art. 17(3)(b) GDPR")], RequestKind.ERASURE,
     "legal basis and the date"),
    ([SupplementLine("backups", "done", False)], RequestKind.CONSENT_WITHDRAWAL, "names the purposes"),
])
def test_a_letter_that_cannot_be_true_is_refused(lines: list[SupplementLine], kind: RequestKind, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        render("en", kind, lines)


def test_every_status_renders_in_both_languages() -> None:
    for status in STATUSES:
        line = SupplementLine("backups", status, False, ASKED, legal_basis="Art. 17(3)(b) GDPR",
                              kept_until=date(2036, 12, 31))
        for language, label in (("en", "our backups"), ("fr", "nos sauvegardes")):
            letter = render(language, RequestKind.ERASURE, [line])
            assert f"\n{label}\n  " in letter.text and label in letter.html

"""The letter telling a recipient (Art. 19), a processor or a system's owner that a restriction is lifted: in
French and English, one version per audience, naming the person by address only, and making no claim that the
subject was told (that notice can fail)."""

from __future__ import annotations

from datetime import date

import pytest

from dsr.domain.model import Language
from dsr.mail.lifted import AUDIENCES, render_restriction_lifted
from templates import RenderedNotice

LIFTED_ON = date(2026, 12, 1)


def render(language: str, audience: str, label: str = "Chat Tool") -> RenderedNotice:
    return render_restriction_lifted(Language(language), audience=audience,  # type: ignore[arg-type]
                                     reference="DSR-2026-0042", subject_email="jeanne.martin@example.org",
                                     label=label, controller="Komin SAS", lifted_on=LIFTED_ON)


@pytest.mark.parametrize(("language", "subject", "day", "person"), [
    ("fr", "Article 18 du RGPD : levée de la limitation du traitement (réf. DSR-2026-0042)", "1er décembre 2026",
     "Personne : jeanne.martin@example.org"),
    ("en", "Article 18 GDPR: restriction of processing lifted (ref. DSR-2026-0042)", "1 December 2026",
     "Person: jeanne.martin@example.org"),
])
@pytest.mark.parametrize("audience", AUDIENCES)
def test_each_audience_is_told_the_lift_in_its_language(language: str, subject: str, day: str, person: str,
                                                        audience: str) -> None:
    letter = render(language, audience)
    assert letter.subject == subject
    assert person in letter.text and day in letter.text and "DSR-2026-0042" in letter.text
    assert letter.text.rstrip().endswith("Komin SAS")
    assert "Jeanne" not in letter.text  # the address of the request only, never the name
    # No claim about the subject: their notice may have failed.
    for claim in ("the person was told", "the person has been", "we told the person", "informed the person",
                  "la personne a été informée", "nous avons informé la personne", "personne concernée a été"):
        assert claim not in letter.text.lower()
    assert f'<html lang="{language}">' in letter.html and "jeanne.martin@example.org" in letter.html


@pytest.mark.parametrize(("language", "recipient", "processor", "manual"), [
    ("fr", "comme le prévoit l'article 19 du RGPD", "en tant que sous-traitant (Chat Tool)",
     "Merci de retirer la limitation mise en place dans Chat Tool"),
    ("en", "as required by Article 19 GDPR", "as our processor (Chat Tool)",
     "Please remove the restriction you set in Chat Tool"),
])
def test_the_three_versions_say_what_each_was_asked_and_may_now_do(language: str, recipient: str, processor: str,
                                                                   manual: str) -> None:
    texts = {audience: " ".join(render(language, audience).text.split()) for audience in AUDIENCES}
    assert recipient in texts["recipient"] and recipient not in texts["processor"]
    assert processor in texts["processor"] and processor not in texts["manual"]
    assert manual in texts["manual"] and manual not in texts["recipient"]
    # The recipient's version does not name a system of ours; the others name theirs.
    assert "Chat Tool" not in texts["recipient"]


def test_a_label_is_escaped_in_html_and_kept_on_one_line_in_text() -> None:
    letter = render("en", "manual", label="<b>Backups</b>\nBcc: x@y")
    assert "<b>Backups</b>" not in letter.html and "&lt;b&gt;Backups&lt;/b&gt;" in letter.html
    assert "\nBcc:" not in letter.text


def test_an_unknown_audience_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="a lift letter goes to one of recipient, processor, manual"):
        render("en", "subject")

"""The letter to a processor or an internal owner asks for what the request is, and its "done" answer is read.

A kind without its own paragraph fell back on "send us a copy": a marketing objection asked a processor for an
export of the person's data, and its "done" answer raised (no action for an objection)."""

from __future__ import annotations

from datetime import date

import pytest

from dsr.domain.model import AnswerStatus, Language, OutsideAnswer, RecordAction, RequestKind, Subject
from dsr.domain.outside import answer_outcome
from dsr.mail.outside import render_outside_request

COPY = {Language.EN: "send us a copy", Language.FR: "transmettre une copie"}
ASKED = {
    RequestKind.OBJECTION: {Language.EN: "objects to the use of their personal data for direct marketing",
                            Language.FR: "s'oppose à l'utilisation de ses données personnelles à des fins de "
                                         "prospection"},
    RequestKind.ERASURE: {Language.EN: "Please erase", Language.FR: "Merci d'effacer"},
    RequestKind.RESTRICTION: {Language.EN: "Please restrict", Language.FR: "Merci de limiter"},
    RequestKind.RECTIFICATION: {Language.EN: "Please correct", Language.FR: "Merci de corriger"},
}
# What reaches a system reached by a person: every kind but post_mortem (which asks in the kind of its work, an
# erasure or an access) and consent_withdrawal (which names its purposes: tests/workflows/test_consent_outside.py).
REACHING = [k for k in RequestKind if k not in (RequestKind.POST_MORTEM, RequestKind.CONSENT_WITHDRAWAL)]


def letter(kind: RequestKind, language: Language) -> str:
    rendered = render_outside_request(
        language, reference="dsr-2026-12-ABCDEF", kind=kind, subject=Subject("ada@example.org", "Ada"),
        label="Mailjet", controller="K-Inventory", processor=True, answer_by=date(2026, 12, 20),
        answer_url="https://privacy.example/answer/x", link_expires=date(2027, 1, 20),
        changes={"city": "Lyon"} if kind == RequestKind.RECTIFICATION else None)
    assert "Mailjet" in rendered.html and rendered.html.startswith("<!DOCTYPE html>")
    return rendered.text


@pytest.mark.parametrize("language", [Language.EN, Language.FR])
@pytest.mark.parametrize("kind", REACHING)
def test_each_kind_asks_its_own_action_and_only_a_copy_asks_for_a_copy(kind: RequestKind, language: Language) -> None:
    text = letter(kind, language)
    person = {Language.EN: "Person: ", Language.FR: "Personne : "}[language]
    # The person stands in a paragraph of their own, between the introduction and what is asked.
    assert f"answering it.\n\n{person}" in text or f"y répondre.\n\n{person}" in text, text
    assert "(Ada)\n\n" in text, text
    assert (COPY[language] in text) == (kind in (RequestKind.ACCESS, RequestKind.PORTABILITY)), text
    if kind in ASKED:
        assert ASKED[kind][language] in text


@pytest.mark.parametrize("kind", REACHING)
def test_a_done_answer_is_read_for_every_kind_that_reaches_a_system(kind: RequestKind) -> None:
    outcome = answer_outcome("mailjet", kind, OutsideAnswer(status=AnswerStatus.DONE, answered_by="processor"))
    assert [line.note for line in outcome.report] == ["done by them"]
    if kind == RequestKind.OBJECTION:
        assert outcome.report[0].action == RecordAction.UNSUBSCRIBED

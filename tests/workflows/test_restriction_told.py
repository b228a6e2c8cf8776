"""Art. 19 at the lift of a restriction: once the marks are off, the recipients the reply named and the processors
and manual systems that did not answer "no data" are told, each once, in its own language (French and English);
whoever could not be told is listed to the operator. On the time-skipping server, with a real SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest

from connectors.outside import OutsideSystem
from dsr.config.profile import Art19Recipient, ControllerProfile
from dsr.domain.model import AnswerStatus, Language, Lift, Outcome, Stage
from dsr.store.tasks import OutsideTasks
from intake.answers import record_answer
from tests.harness import TEST_KEYRING, ScriptedConnector
from tests.workflows.support import OPERATOR_EMAIL, SUBJECT_EMAIL, SUBJECT_NAME, Engine, demo_profile, readable
from tests.workflows.test_outside import answer, mail_to
from tests.workflows.test_restriction import (
    MarkingConnector,
    eventually,
    held,
    restriction_status,
    submit,
    time_runs_free,
)
from workflows.request import DataSubjectRequest
from workflows.restriction import LIFTED, RestrictionInForce

PROCESSOR = "privacy@chat-tool.example"
OWNER = "backup-admin@example.com"
OTHER_OWNER = "archive-admin@example.com"
FR_RECIPIENT = Art19Recipient(name="Cabinet comptable Exemple", email="rgpd@cabinet-comptable.example",
                              language=Language.FR, receives=["crm"])
EN_RECIPIENT = Art19Recipient(name="Partner Analytics Ltd", email="privacy@partner.example", language=Language.EN,
                              receives=["crm.contact"])
UNRELATED = Art19Recipient(name="Logistique Exemple SARL", email="privacy@logistique.example", language=Language.FR,
                           receives=["woocommerce.orders"])


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    return [MarkingConnector("crm"),
            OutsideSystem(name="chat-tool", type="processor", contact=PROCESSOR, language=Language.EN,
                          label="Chat Tool"),  # type: ignore[list-item]
            OutsideSystem(name="backups", type="manual", contact=OWNER, language=Language.FR,
                          label="Sauvegardes"),  # type: ignore[list-item]
            OutsideSystem(name="archive", type="manual", contact=OTHER_OWNER, language=Language.FR)]  # type: ignore[list-item]


class Profiles:
    """The controller profile the worker reads, swappable mid-flight (an operator editing the file)."""

    def __init__(self) -> None:
        base = demo_profile()
        assert base is not None
        self.current: ControllerProfile = base.model_copy(
            update={"art19_recipients": [FR_RECIPIENT, EN_RECIPIENT, UNRELATED]})

    def __call__(self) -> ControllerProfile:
        return self.current


@pytest.fixture
def profiles() -> Profiles:
    return Profiles()


@pytest.fixture
def profile(profiles: Profiles) -> Callable[[], ControllerProfile | None]:
    return profiles


def lift_letters(engine: Engine, address: str) -> list:
    return [m for m in engine.mail.to(address) if "18" in str(m["Subject"]) and (
        "lifted" in str(m["Subject"]) or "levée" in str(m["Subject"]))]


@pytest.mark.slow
async def test_recipients_and_outside_systems_are_told_of_the_lift_each_once_in_their_language(
    engine: Engine, profiles: Profiles,
) -> None:
    tasks = OutsideTasks(engine.ledger.engine, TEST_KEYRING)
    request, handle = await submit(engine, "restriction", ground="c", language="en")
    await mail_to(engine, PROCESSOR, 1)
    await mail_to(engine, OWNER, 1)
    await mail_to(engine, OTHER_OWNER, 1)
    for system, status in (("chat-tool", AnswerStatus.DONE), ("backups", AnswerStatus.DONE),
                           ("archive", AnswerStatus.NO_DATA)):
        await record_answer(tasks, engine.client, request.request_id, system, answer(status))
    # Not handle.result(): the time-skipping server would skip, while it waits, past the restriction's end (no
    # timer runs while it is in force: the next event is its 10-year execution timeout).
    final = await eventually(lambda: handle.query(DataSubjectRequest.status), lambda s: s.stage == Stage.CLOSED)
    assert final.outcome == Outcome.FULFILLED
    # The reply named the two recipients of the crm's contacts, not the one receiving orders.
    [reply_sent] = await eventually(  # the last batch of the request's events trails its stage
        lambda: asyncio.sleep(0, [e for e in engine.ledger.events(request.request_id) if e.event == "reply_sent"]),
        bool)
    assert reply_sent.details["recipients_notified"] == "2"

    restriction = held(engine, request)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == "in force")
    # The English recipient leaves the profile before the lift: it cannot be told, and the operator is.
    profiles.current = profiles.current.model_copy(update={"art19_recipients": [FR_RECIPIENT, UNRELATED]})
    scheduled = await restriction.execute_update(RestrictionInForce.lift,
                                                 Lift(reason="The claim is settled.", requested_by="operator:alice"))
    assert scheduled.lift_at is not None
    # Told only once the marks are off: nothing before the lift's day.
    await engine.env.sleep(timedelta(days=1))
    assert lift_letters(engine, FR_RECIPIENT.email) == [] and lift_letters(engine, PROCESSOR) == []
    await time_runs_free(engine)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFTED)
    await restriction.result()

    [french] = lift_letters(engine, FR_RECIPIENT.email)
    text = " ".join(readable(french).split())
    assert str(french["Subject"]).strip().startswith("Article 18 du RGPD : levée de la limitation du traitement")
    assert "comme le prévoit l'article 19 du RGPD" in text and SUBJECT_EMAIL in text and SUBJECT_NAME not in text
    assert request.request_id in text
    [processor] = lift_letters(engine, PROCESSOR)
    text = " ".join(readable(processor).split())
    assert str(processor["Subject"]).strip().startswith("Article 18 GDPR: restriction of processing lifted")
    assert "as our processor (Chat Tool)" in text and SUBJECT_EMAIL in text
    [owner] = lift_letters(engine, OWNER)
    assert "Merci de retirer la limitation mise en place dans Sauvegardes" in " ".join(readable(owner).split())
    # Held nothing: not told (that would disclose the person). Never named by the reply: not told either.
    assert lift_letters(engine, OTHER_OWNER) == [] and lift_letters(engine, UNRELATED.email) == []
    assert lift_letters(engine, EN_RECIPIENT.email) == []

    trail = [e.event for e in engine.ledger.events(request.request_id)]
    assert trail.index("restriction_lifted") < trail.index("restriction_lift_told")
    [told] = [e for e in engine.ledger.events(request.request_id) if e.event == "restriction_lift_told"]
    assert told.details == {"told": "3", "not_told": "1"}
    assert "not told: Partner Analytics Ltd" in told.note
    await asyncio.sleep(0.3)
    listing = " ".join(" ".join(readable(m).split()) for m in engine.mail.to(OPERATOR_EMAIL))
    assert "Partner Analytics Ltd: could not be told that the restriction is lifted" in listing
    # The systems told by letter are not the operator's to lift by hand; nothing sent twice.
    assert "chat-tool: restriction - lift it by hand" not in listing
    assert "archive" not in listing  # it held nothing: nothing to lift there
    assert len(lift_letters(engine, PROCESSOR)) == 1 and len(lift_letters(engine, FR_RECIPIENT.email)) == 1

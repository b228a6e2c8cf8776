"""Withdrawals of consent reaching systems no API reaches (Art. 7(3) with Art. 28(3)(e)): a processor answering by
email and a manual system's owner are told the same day, by the outside-task machinery, to stop processing for the
purposes mapping them; the subject's reply says, per system, what the engine knows (told, not confirmed yet), the
unconfirmed systems are followed up as residuals, and their answer, when it comes, lands in the ledger. On the
time-skipping server, with the emails through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus

from connectors.outside import OutsideSystem
from dsr.config.settings import Settings
from dsr.domain.model import (
    AnswerStatus,
    ConnectorOutcome,
    Language,
    Outcome,
    OutsideAnswer,
    RecordAction,
    RequestKind,
    Stage,
)
from dsr.domain.outside import outside_workflow_id
from dsr.store.tasks import OutsideTasks
from intake.answers import record_answer
from intake.submission import Submission, prepare, start
from tests.harness import TEST_KEYRING, ScriptedConnector, text_of
from tests.workflows.support import SUBJECT_EMAIL, SUBJECT_NAME, Engine, wait_for_event
from tests.workflows.test_consent import ConsentConnector, bodies, submit, until

PROCESSOR = "privacy@mailer.example"
OWNER = "crm-admin@example.com"

PROFILE = '''
[controller]
legal_name = "Kestio SAS"

[controller.systems]
mailer = { fr = "Outil d'emailing", en = "Mailing tool" }
paper = { fr = "Fichier papier du salon", en = "Trade-fair paper file" }

[[controller.purposes]]
key = "newsletter"
marketing = true
name = { fr = "Lettre d'information", en = "Newsletter" }
legal_basis = "consent"
[controller.purposes.withdrawal]
crm = { subscriptions = ["Newsletter"] }
mailer = { task = { fr = "retirer l'adresse de « Lettre »", en = "remove the address from the Letter audience" } }
paper = { task = "strike the person from the invitation list" }

[[controller.purposes]]
key = "partner_offers"
marketing = true
name = { fr = "Offres des partenaires", en = "Partner offers" }
legal_basis = "consent"
[controller.purposes.withdrawal]
crm = { subscriptions = ["Partner offers"] }
'''


def mailer() -> OutsideSystem:
    return OutsideSystem(name="mailer", type="processor", contact=PROCESSOR, language=Language.EN,
                         answer_within_days=10, reminder_days=(3, 1), label="Mailing tool")


def paper() -> OutsideSystem:
    return OutsideSystem(name="paper", type="manual", contact=OWNER, language=Language.FR, answer_within_days=7,
                         reminder_days=(2,))


@pytest.fixture
def connectors() -> list:
    return [ConsentConnector("crm"), mailer(), paper(), ScriptedConnector("shop")]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    Path(settings.config_file).write_text(PROFILE, encoding="utf-8")
    return settings


def tasks_of(engine: Engine) -> OutsideTasks:
    return OutsideTasks(engine.ledger.engine, TEST_KEYRING)


async def mail_to(engine: Engine, address: str, count: int) -> list[EmailMessage]:
    for _ in range(100):
        if len(engine.mail.to(address)) >= count:
            break
        await asyncio.sleep(0.1)
    return engine.mail.to(address)


def flat(message: EmailMessage) -> str:
    return " ".join(text_of(message).split())


@pytest.mark.slow
@pytest.mark.parametrize(("language", "told_processor", "told_owner", "pending"), [
    ("en", "Newsletter: we asked our processor, who runs this system on our behalf, on ",
     "Newsletter: we asked the member of our team in charge of this system on ",
     "From today we stop using your personal data for the purposes below"),
    ("fr", "Lettre d'information : nous avons demandé le ",
     "à notre sous-traitant, qui gère ce système pour notre compte, de ne plus utiliser vos données à cette fin",
     "nous cessons d'utiliser vos données personnelles pour les finalités ci-dessous"),
])
async def test_a_processor_and_a_manual_system_are_told_the_same_day_and_followed_up(
    engine: Engine, language: str, told_processor: str, told_owner: str, pending: str,
) -> None:
    request, handle = await submit(engine, ["newsletter"], language=language)
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.outcome == Outcome.FULFILLED
    # Mapped: crm (API), mailer (processor), paper (manual); shop is mapped by no purpose and takes no part.
    assert {c.connector for c in current.connectors} == {"crm", "mailer", "paper"}
    assert engine.connectors[3].calls == []

    # The processor is asked in its language, for the purpose withdrawn, in the profile's words, with Art. 28(3)(e)
    # and the signed answer link; the manual owner in French.
    [asked] = await mail_to(engine, PROCESSOR, 1)
    text = flat(asked)
    assert request.request_id in str(asked["Subject"]) and "Withdrawal of consent" in str(asked["Subject"])
    assert "This person has withdrawn their consent (Article 7(3) GDPR)" in text
    lines = text_of(asked).replace("\r\n", "\n")  # one line per purpose, then a paragraph
    assert "\n- Newsletter: remove the address from the Letter audience\n\nWhat was done" in lines
    assert "Partner offers" not in text  # withdrawn by no purpose mapping this system
    assert "Article 28(3)(e) GDPR" in text and SUBJECT_EMAIL in text
    assert re.search(r"https?://\S+/answer/\S+", text_of(asked))
    [owner] = await mail_to(engine, OWNER, 1)
    assert "Cette personne a retiré son consentement (article 7, paragraphe 3, du RGPD)" in flat(owner)
    lines = text_of(owner).replace("\r\n", "\n")
    assert "\n- Lettre d'information : strike the person from the invitation list\n\nCe qui" in lines

    # The ledger holds a task per system, open; each is followed by its own workflow, which outlives the request.
    for system, kind in (("mailer", "processor"), ("paper", "manual")):
        task = tasks_of(engine).get(request.request_id, system)
        assert task is not None and task.answer is None and task.type == kind
        described = await engine.client.get_workflow_handle(
            outside_workflow_id(request.request_id, system)).describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
    await wait_for_event(engine, request, "reply_sent")
    trail = [(e.event, e.details) for e in engine.ledger.events(request.request_id)]
    told = [d for e, d in trail if e == "outside_told"]
    assert told == [{"connector": "mailer", "purposes": "newsletter", "answer": "no_answer"},
                    {"connector": "paper", "purposes": "newsletter", "answer": "no_answer"}]

    # The reply is true: crm done; the processor and the owner told today, not confirmed yet; the intro does not
    # claim the processing has stopped everywhere.
    _, reply = bodies(engine)[-1]
    assert pending in reply
    if language == "en":
        assert "Newsletter: done, your consent is withdrawn in this system" in reply
        assert told_processor in reply and told_owner in reply
        assert "this is not confirmed yet, and we follow it up until it is" in reply
    else:
        assert "Lettre d'information : fait, votre consentement est retiré dans ce système" in reply
        assert told_processor in reply and told_owner in reply
        assert "au membre de notre équipe chargé de ce système de ne plus utiliser vos données" in reply
        assert "ce n'est pas encore confirmé, et nous relançons jusqu'à confirmation" in reply
    assert "no longer use your personal data" not in reply and "n'utilisons plus vos données" not in reply
    # Not confirmed: a residual line each, followed up by the aftercare until an operator clears them.
    today = request.received_on.isoformat()  # the controller's day (Paris), as the request's receipt
    assert sorted(current.residuals) == [
        f"mailer: consent newsletter - told on {today}, not confirmed yet: check they stopped (dsr tasks)",
        f"paper: consent newsletter - told on {today}, not confirmed yet: check they stopped (dsr tasks)"]

    # The processor answers later, through the one door of the answer page and `dsr tasks complete`: its task
    # takes it and ends with the withdrawal confirmed.
    result = await record_answer(tasks_of(engine), engine.client, request.request_id, "mailer",
                                 OutsideAnswer(status=AnswerStatus.DONE, answered_by="processor",
                                               answered_at=datetime.now(UTC)))
    assert result.state == "recorded" and result.delivered
    outcome = await engine.client.get_workflow_handle(outside_workflow_id(request.request_id, "mailer"),
                                                     result_type=ConnectorOutcome).result()
    assert [(line.record_id, line.action) for line in outcome.report] == [("newsletter", RecordAction.WITHDRAWN)]
    assert len(engine.mail.to(PROCESSOR)) == 1  # told once: the task did not send its first email again


async def test_a_system_already_answered_is_told_as_confirmed(engine: Engine) -> None:
    """What the engine knows when the reply is written: a task the ledger holds an answer for (a request re-run
    after its tasks were answered) is not asked again; the reply says it is confirmed, or that the system held
    nothing, and leaves no residual."""
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind="consent_withdrawal", email=SUBJECT_EMAIL, name=SUBJECT_NAME, language="en",
                                 purposes=["newsletter"]), engine.settings, now=now)
    tasks = tasks_of(engine)
    for system, status in (("mailer", AnswerStatus.DONE), ("paper", AnswerStatus.NO_DATA)):
        tasks.open(request.request_id, system, "processor" if system == "mailer" else "manual",
                   answer_by=datetime(2099, 1, 1, tzinfo=UTC), now=now,
                   asked_on=request.received_on)
        assert tasks.record_answer(request.request_id, system, OutsideAnswer(
            status=status, answered_by="operator:alice", answered_at=now))
    assert request.kind == RequestKind.CONSENT_WITHDRAWAL
    handle = await start(engine.client, request, task_queue=engine.task_queue)
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.residuals == []
    assert engine.mail.to(PROCESSOR) == [] and engine.mail.to(OWNER) == []
    _, reply = bodies(engine)[-1]
    assert ("Newsletter: done, our processor, who runs this system on our behalf, confirmed that your consent is "
            "withdrawn there") in reply
    assert "Newsletter: nothing left to do, this system no longer used your data for it" in reply
    assert "From today we no longer use your personal data for the purposes below" in reply


@pytest.mark.parametrize("connectors", [[ConsentConnector("crm"), mailer(), paper()]])
async def test_a_system_that_cannot_be_told_is_left_to_our_team_and_said_so(engine: Engine, connectors: list) -> None:
    """An address the engine will not write to (the contact is no single valid address): the withdrawal goes on,
    the operator gets a residual line, and the reply says our team stops it by hand, not that it was told."""
    connectors[1].contact = "not an address"
    request, handle = await submit(engine, ["newsletter"], language="en")
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.outcome == Outcome.FULFILLED
    assert any(r.startswith("mailer: consent newsletter - could not be told by email") for r in current.residuals)
    await wait_for_event(engine, request, "reply_sent")
    failed = [e.details for e in engine.ledger.events(request.request_id) if e.event == "connector_failed"]
    assert failed == [{"connector": "mailer", "error_type": "NoticeInvalidAddress"}]
    _, reply = bodies(engine)[-1]
    assert "Newsletter: this system has no setting we can change automatically: our team stops it by hand" in reply
    assert "we asked our processor" not in reply
    assert "we asked the member of our team in charge of this system on " in reply  # paper was told

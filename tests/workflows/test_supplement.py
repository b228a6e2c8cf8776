"""The supplementary letter: the subject, told in the reply that a processor or a system's owner had not confirmed
yet, learns how each answered. Once every system pending at the reply has answered (or the follow-up gives up on
it), the request's aftercare sends ONE letter, in the reply's language and thread, written from the ledger; nothing
when nothing was pending; ``supplement_sent`` in the ledger; the operator told when the mail server refuses it.
On the time-skipping server, with the emails through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from dsr.config.profile import ControllerProfile, load_profile
from dsr.config.settings import Settings
from dsr.domain.aftercare import AftercareStatus, OutsideSettled, aftercare_id
from dsr.domain.model import AnswerStatus, OutsideAnswer, RequestInput, ResidualsCleared, Retry, Stage
from dsr.domain.outside import outside_workflow_id
from dsr.store.guards import Guards
from dsr.store.links import DownloadLinks
from dsr.web.serve import serve_app
from intake.answers import AnswerResult, record_answer
from intake.server import outside_answers_router
from intake.submission import Submission, prepare, start
from intake.web.app import intake_app
from tests.harness import TEST_KEYRING, ScriptedConnector, exports_of, http_client, text_of
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    SUBJECT_NAME,
    Engine,
    clear_residuals,
    wait_for_stage,
)
from tests.workflows.support import submit as submit_request
from tests.workflows.test_consent import ConsentConnector, submit, until
from tests.workflows.test_consent_outside import PROFILE, mailer, paper, tasks_of
from tests.workflows.test_outside import PROCESSOR as CHAT_TOOL
from tests.workflows.test_outside import chat_tool, mail_to
from tests.workflows.test_restriction import skipping_again
from workflows.aftercare import RequestAftercare
from workflows.request import DataSubjectRequest


@pytest.fixture
def connectors() -> list:
    return [ConsentConnector("crm"), mailer(), paper(), ScriptedConnector("shop")]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    Path(settings.config_file).write_text(PROFILE, encoding="utf-8")
    return settings


@pytest.fixture
def profile(settings: Settings) -> Callable[[], ControllerProfile | None]:
    """The test's profile (the systems' labels in both languages, the default supervisory authority)."""
    return lambda: load_profile(Path(settings.config_file))


def events(engine: Engine, request: RequestInput, name: str) -> list[dict[str, str]]:
    return [e.details for e in engine.ledger.events(request.request_id) if e.event == name]


async def ledger_event(engine: Engine, request: RequestInput, name: str, seconds: float = 20) -> dict[str, str]:
    for _ in range(int(seconds * 10)):
        found = events(engine, request, name)
        if found:
            return found[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never recorded: {[e.event for e in engine.ledger.events(request.request_id)]}")


async def subject_mail(engine: Engine, count: int) -> list[EmailMessage]:
    for _ in range(200):
        if len(engine.mail.to(SUBJECT_EMAIL)) >= count:
            break
        await asyncio.sleep(0.1)
    return engine.mail.to(SUBJECT_EMAIL)


async def skip(engine: Engine, days: int) -> None:
    """Let ``days`` pass on the time-skipping server, a day at a time (one long skip outlives its RPC deadline
    while the timers on its way run their activities)."""
    for _ in range(days):
        await engine.env.sleep(timedelta(days=1))


def flat(message: EmailMessage, kind: str = "plain") -> str:
    return " ".join(text_of(message, kind).split())


def answer(status: AnswerStatus, **fields: object) -> OutsideAnswer:
    return OutsideAnswer(status=status, answered_by="processor", answered_at=datetime.now(UTC), **fields)  # type: ignore[arg-type]


async def answered(engine: Engine, request: RequestInput, system: str, given: OutsideAnswer) -> AnswerResult:
    """The answer through the one door (answer page, ``dsr tasks complete``). An update that ends its workflow (the
    told task) leaves the time-skipping test server holding a time-skipping lock: given back (see
    tests/workflows/test_restriction.py, ``skipping_again``)."""
    result = await record_answer(tasks_of(engine), engine.client, request.request_id, system, given)
    assert result.state == "recorded"
    if result.delivered:
        await skipping_again(engine)
        await engine.client.get_workflow_handle(outside_workflow_id(request.request_id, system)).result()
    return result


async def aftercare_status(engine: Engine, request: RequestInput) -> AftercareStatus:
    handle = engine.client.get_workflow_handle(aftercare_id(request.request_id))
    return await handle.query(RequestAftercare.status)


async def answered_reply(engine: Engine, language: str) -> tuple[RequestInput, EmailMessage]:
    """A withdrawal whose reply told the processor (mailer) and the owner (paper) as not confirmed yet."""
    request, handle = await submit(engine, ["newsletter"], language=language)
    await until(handle, lambda s: s.stage == Stage.CLOSED)
    await ledger_event(engine, request, "aftercare_started")
    [*_, reply] = await subject_mail(engine, 2)  # the acknowledgement, then the reply
    assert request.request_id in str(reply["Subject"])
    for _ in range(100):  # the aftercare has read the ledger: both systems are awaited
        try:
            if (await aftercare_status(engine, request)).supplement == "waiting":
                break
        except RPCError:  # not started yet
            pass
        await asyncio.sleep(0.1)
    return request, reply


@pytest.mark.parametrize(("language", "subject_line", "done", "cannot", "complaint"), [
    ("en", "What the remaining systems answered", "Done: our processor, who runs this system on our behalf, "
     "confirmed it: your data is no longer used there for Newsletter.",
     "Not done there: the member of our team in charge of this system told us that it cannot be done in this system. "
     "Our team is doing it by other means and checks that it is done",
     "you have the right to lodge a complaint with the supervisory authority"),
    ("fr", "Les réponses des systèmes restants", "Fait : notre sous-traitant, qui gère ce système pour notre "
     "compte, l'a confirmé : vos données n'y sont plus utilisées pour : Lettre d'information.",
     "Non fait dans ce système : le membre de notre équipe chargé de ce système nous a indiqué que ce n'était "
     "pas possible dans ce système. Notre équipe s'en charge par d'autres moyens et vérifie que c'est fait",
     "vous pouvez introduire une réclamation auprès de l'autorité de contrôle"),
])
async def test_one_letter_when_every_pending_system_has_answered(
    engine: Engine, language: str, subject_line: str, done: str, cannot: str, complaint: str,
) -> None:
    request, reply = await answered_reply(engine, language)
    assert (await aftercare_status(engine, request)).supplement_pending == ["mailer", "paper"]

    # The processor confirms: one system still pending, no letter yet.
    result = await answered(engine, request, "mailer", answer(AnswerStatus.DONE))
    assert result.state == "recorded" and result.delivered
    for _ in range(50):
        if (await aftercare_status(engine, request)).supplement_pending == ["paper"]:
            break
        await asyncio.sleep(0.1)
    assert (await aftercare_status(engine, request)).supplement_pending == ["paper"]
    assert len(engine.mail.to(SUBJECT_EMAIL)) == 2 and events(engine, request, "supplement_sent") == []

    # The owner cannot: now every pending system has answered, and the subject gets one letter.
    reason = "the paper file is archived off site"
    result = await answered(engine, request, "paper", answer(AnswerStatus.CANNOT, reason=reason))
    assert result.state == "recorded"
    sent = await ledger_event(engine, request, "supplement_sent")
    assert sent["told"] == "mailer:done,paper:cannot" and sent["gave_up"] == ""
    [*_, letter] = await subject_mail(engine, 3)
    assert subject_line in str(letter["Subject"]) and request.request_id in str(letter["Subject"])
    assert letter["In-Reply-To"] == reply["Message-ID"]  # in the reply's thread
    assert letter["Message-ID"] == sent["message_id"]
    text = flat(letter)
    assert done in text and cannot in text
    assert complaint in text and ("Article 79" in text or "article 79" in text)  # Art. 12(4): a right not satisfied
    assert reason not in text  # what the owner typed is for the operator, not a promise to the subject
    assert SUBJECT_NAME not in text  # a withdrawal asks no proof of identity: no name in the greeting
    assert ("Mailing tool" if language == "en" else "Outil d'emailing") in text  # the profile's label
    html = flat(letter, "html")
    assert f'<html lang="{language}"' in html

    # Exactly once: a late signal (the door retried) and weeks of timers send nothing more.
    handle = engine.client.get_workflow_handle(aftercare_id(request.request_id))
    await handle.signal(RequestAftercare.outside_settled, OutsideSettled(system="mailer", status="done"))
    await skip(engine, 40)
    await asyncio.sleep(0.5)
    assert len(engine.mail.to(SUBJECT_EMAIL)) == 3
    assert len(events(engine, request, "supplement_sent")) == 1
    assert (await aftercare_status(engine, request)).supplement == "sent"
    # No personal data in plain text in Temporal: the subject travels in encrypted payloads only.
    history = (await handle.fetch_history()).to_json()
    assert "supplement" in history and SUBJECT_EMAIL not in history and SUBJECT_NAME not in history
    await clear_residuals(engine.client, request.request_id,
                          ResidualsCleared(cleared_by="operator:alice", note="paper file struck by hand"))


async def test_the_follow_up_gives_up_when_the_answer_page_closes(engine: Engine) -> None:
    """No answer by the last day the answer page takes one (answer-by date and its grace): the letter says so,
    with what our team does about it and the 12(4) remedies; the one that did answer is told as it answered."""
    request, reply = await answered_reply(engine, "en")
    await answered(engine, request, "paper", answer(AnswerStatus.NO_DATA))
    await asyncio.sleep(0.5)
    assert events(engine, request, "supplement_sent") == []
    waiting = await ledger_event(engine, request, "supplement_waiting")
    assert waiting["systems"] == "mailer,paper"  # when the aftercare read the ledger
    # The operator goes on without the processor's answer (``dsr tasks complete --no-answer``): that is no answer,
    # and the letter still waits, until the last day the processor's answer page takes one.
    await answered(engine, request, "mailer", answer(AnswerStatus.NO_ANSWER))
    await asyncio.sleep(0.5)
    assert (await aftercare_status(engine, request)).supplement_pending == ["mailer"]
    await skip(engine, 10)
    assert events(engine, request, "supplement_sent") == []
    await skip(engine, 20)
    sent = await ledger_event(engine, request, "supplement_sent")
    # Not before the answer page closed (the server's clock; the ledger's times are the machine's).
    assert await engine.env.get_current_time() >= datetime.fromisoformat(waiting["until"])
    assert sent["told"] == "mailer:no_answer,paper:no_data" and sent["gave_up"] == "mailer"
    [*_, letter] = engine.mail.to(SUBJECT_EMAIL)
    assert letter["In-Reply-To"] == reply["Message-ID"]
    text = flat(letter)
    today = request.received_on
    assert (f"No answer: we asked our processor, who runs this system on our behalf, on {today.day} "
            f"{today.strftime('%B')} {today.year}, and have had no answer. Our team is following it up by other "
            "means") in text
    assert ("Nothing to do: the member of our team in charge of this system checked that this system holds no data "
            "about you for these purposes.") in text
    assert "right to lodge a complaint" in text
    await clear_residuals(engine.client, request.request_id,
                          ResidualsCleared(cleared_by="operator:alice", note="asked by phone"))


async def test_the_operator_clearing_the_residuals_ends_the_wait(engine: Engine) -> None:
    """The operator saw to the unconfirmed systems by other means (``dsr clear-residuals``): the letter goes at
    once, and says our team saw to them, without remedies (nothing left undone)."""
    request, _ = await answered_reply(engine, "fr")
    await answered(engine, request, "mailer", answer(AnswerStatus.DONE))
    await clear_residuals(engine.client, request.request_id,
                          ResidualsCleared(cleared_by="operator:alice", note="owner struck the name by hand"))
    sent = await ledger_event(engine, request, "supplement_sent")
    assert sent["told"] == "mailer:done,paper:staff"
    text = flat(engine.mail.to(SUBJECT_EMAIL)[-1])
    assert ("Fait par notre équipe : notre équipe s'en est chargée par d'autres moyens et a vérifié que c'était "
            "fait.") in text
    assert "réclamation" not in text


async def test_nothing_is_sent_when_nothing_was_pending(engine: Engine) -> None:
    """Both systems answered before the reply (the ledger held their answers): the reply said so, there is
    nothing to add, and no letter follows."""
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind="consent_withdrawal", email=SUBJECT_EMAIL, name=SUBJECT_NAME, language="en",
                                 purposes=["newsletter"]), engine.settings, now=now)
    tasks = tasks_of(engine)
    for system, type_ in (("mailer", "processor"), ("paper", "manual")):
        tasks.open(request.request_id, system, type_, answer_by=datetime(2099, 1, 1, tzinfo=UTC), now=now,
                   asked_on=request.received_on)
        assert tasks.record_answer(request.request_id, system, answer(AnswerStatus.DONE))
    handle = await start(engine.client, request, task_queue=engine.task_queue)
    await until(handle, lambda s: s.stage == Stage.CLOSED)
    await handle.result()
    await skip(engine, 40)
    assert len(engine.mail.to(SUBJECT_EMAIL)) == 2  # the acknowledgement and the reply
    names = [e.event for e in engine.ledger.events(request.request_id)]
    assert "supplement_sent" not in names and "supplement_waiting" not in names


async def test_a_letter_the_mail_server_refuses_is_told_to_the_operator(engine: Engine) -> None:
    request, _ = await answered_reply(engine, "en")
    engine.mail.refused.add(SUBJECT_EMAIL)
    await answered(engine, request, "mailer", answer(AnswerStatus.DONE))
    await answered(engine, request, "paper", answer(AnswerStatus.DONE))
    failed = await ledger_event(engine, request, "notice_failed")
    assert failed["template"] == "supplement"
    assert events(engine, request, "supplement_sent") == []
    for _ in range(100):
        told = [m for m in engine.mail.to(OPERATOR_EMAIL) if "supplementary letter" in text_of(m)]
        if told:
            break
        await asyncio.sleep(0.1)
    assert told, "the operator was not told"
    assert "could not be sent: tell them by other means" in " ".join(text_of(told[-1]).split())
    assert SUBJECT_EMAIL not in text_of(told[-1])
    assert (await aftercare_status(engine, request)).supplement == "failed"
    await clear_residuals(engine.client, request.request_id,
                          ResidualsCleared(cleared_by="operator:alice", note="phoned"))



@pytest.mark.parametrize("connectors", [[chat_tool(), ScriptedConnector("crm", permanent_failures=1)]])
async def test_an_erasure_that_went_on_without_the_processor_writes_again_with_its_answer(engine: Engine) -> None:
    """Any kind: the operator went on without the processor (``--no-answer``) while another system needed
    attention; the processor's own answer then replaces that no_answer (the request goes on without it), the reply
    still says none had come, and the letter follows it at once with what the ledger now holds."""
    request, handle = await submit_request(engine, "erasure", language="en")
    for _ in range(100):
        if engine.mail.to(CHAT_TOOL):
            break
        await asyncio.sleep(0.1)
    await answered(engine, request, "chat-tool", answer(AnswerStatus.NO_ANSWER))
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)  # crm: bad credentials
    late = await answered(engine, request, "chat-tool", answer(AnswerStatus.DONE))
    assert late.replaced and not late.delivered and not late.aftercare
    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    await wait_for_stage(engine, handle, Stage.CLOSED)
    sent = await ledger_event(engine, request, "supplement_sent")
    assert sent["told"] == "chat-tool:done"
    [*_, reply, letter] = engine.mail.to(SUBJECT_EMAIL)
    assert "No answer yet from this processor" in " ".join(text_of(reply).split())
    assert letter["In-Reply-To"] == reply["Message-ID"]
    assert ("Done: our processor, who runs this system on our behalf, confirmed it: the data concerned by the "
            "request is erased there.") in flat(letter)
    assert "right to lodge a complaint" not in flat(letter)  # done: nothing left undone
    # Completed, read with describe: result() on the time-skipping server unlocks and relocks its clock around the
    # wait, and its lock count once went negative there ("Unbalanced lock and unlock calls", the server's own
    # bookkeeping, in 1 of 4 CI runs of stop 30), failing a test whose request had closed. (It failed once more in a
    # fast run of stop 31, its message not kept.)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


@pytest.mark.parametrize("connectors", [[chat_tool()]])
async def test_the_answer_page_still_takes_the_processors_answer_after_the_operators_no_answer(
    engine: Engine,
) -> None:
    """The reply said "no answer yet; we will write to you again when it answers": the processor's link (still valid
    for its grace) takes its answer over the operator's no_answer, and the subject gets the letter."""
    exports = exports_of(engine.settings)
    app = intake_app(
        links=DownloadLinks(TEST_KEYRING), bundle_opener=lambda _request_id: None, audit=lambda *_args: None,
        public_url="http://127.0.0.1", guards=Guards(engine.ledger.engine, TEST_KEYRING),
        routers=[outside_answers_router(TEST_KEYRING, engine.ledger, exports, engine.client, default_language="en",
                                        public_path="")],
    )
    running = await serve_app(app, port=0)
    try:
        request, handle = await submit_request(engine, "erasure", language="fr")
        [asked] = await mail_to(engine, CHAT_TOOL, 1)
        token = re.search(r"/answer/(\S+)", text_of(asked))
        assert token is not None
        await answered(engine, request, "chat-tool", answer(AnswerStatus.NO_ANSWER))
        await wait_for_stage(engine, handle, Stage.CLOSED)
        async with http_client(base_url=running.url) as web:
            page = await web.get(f"/answer/{token.group(1)}")
            assert page.status_code == 200, page.text  # a form, not "already answered"
            form = re.search(r'name="form" value="([^"]+)"', page.text)
            assert form is not None
            posted = await web.post(f"/answer/{token.group(1)}", files={"status": (None, "done"),
                                                                        "form": (None, form.group(1))})
            assert posted.status_code == 200, posted.text
            again = await web.get(f"/answer/{token.group(1)}")
            assert again.status_code == 409  # once
        sent = await ledger_event(engine, request, "supplement_sent")
        assert sent["told"] == "chat-tool:done"
        letter = engine.mail.to(SUBJECT_EMAIL)[-1]
        assert "Les réponses des systèmes restants" in str(letter["Subject"])
        assert ("Fait : notre sous-traitant, qui gère ce système pour notre compte, l'a confirmé : les données "
                "visées par la demande y sont effacées.") in flat(letter)
    finally:
        await running.stop()

"""Systems reached by a person (a processor by email, a manual task) in the request's lifecycle, on the
time-skipping server, with the emails through a real SMTP server (aiosmtpd) and the answers through the one door
the answer page and ``dsr tasks complete`` use (intake/answers.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from connectors.outside import OutsideSystem
from dsr.config.settings import Settings
from dsr.domain.model import (
    AnswerStatus,
    Language,
    Outcome,
    OutsideAnswer,
    RecordAction,
    ResidualsCleared,
    Retry,
    Stage,
)
from dsr.domain.outside import outside_workflow_id
from dsr.store.links import last_valid_day
from dsr.store.tasks import OutsideTasks
from intake.answers import ExportFile, record_answer
from tests.harness import TEST_KEYRING, ScriptedConnector, exports_of, keep_history, text_of
from tests.workflows.support import (
    SUBJECT_EMAIL,
    SUBJECT_NAME,
    Engine,
    clear_residuals,
    readable,
    status,
    submit,
    templates_sent,
    wait_for_event,
    wait_for_stage,
)
from workflows.request import DataSubjectRequest

PROCESSOR = "privacy@chat-tool.example"
OWNER = "backup-admin@example.com"


def chat_tool(*, language: Language = Language.EN) -> OutsideSystem:
    return OutsideSystem(name="chat-tool", type="processor", contact=PROCESSOR, language=language,
                         answer_within_days=10, reminder_days=(3, 1), label="Chat Tool")


def backups() -> OutsideSystem:
    return OutsideSystem(name="backups", type="manual", contact=OWNER, language=Language.FR,
                         answer_within_days=7, reminder_days=(2,))


def tasks_of(engine: Engine) -> OutsideTasks:
    return OutsideTasks(engine.ledger.engine, TEST_KEYRING)


async def mail_to(engine: Engine, address: str, count: int) -> list:
    for _ in range(100):
        if len(engine.mail.to(address)) >= count:
            break
        await asyncio.sleep(0.1)
    return engine.mail.to(address)


def answer(status: AnswerStatus, *, legal_basis: str = "", kept_until: date | None = None, reason: str = "",
           ) -> OutsideAnswer:
    return OutsideAnswer(status=status, answered_by="processor", answered_at=datetime.now(UTC),
                         legal_basis=legal_basis, kept_until=kept_until, reason=reason)


@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm"), chat_tool()]])
async def test_a_processor_is_asked_by_email_and_its_answer_kept_with_basis_closes_the_erasure(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", language="en")
    [asked] = await mail_to(engine, PROCESSOR, 1)
    text = readable(asked)
    # The processor's contact is told the kind, the subject's identifiers, our reference, the date, Art. 28(3)(e),
    # and gets a signed link to the answer page.
    assert request.request_id in str(asked["Subject"]) and SUBJECT_EMAIL in text and SUBJECT_NAME in text
    assert "Article 28(3)(e) GDPR" in text and "Chat Tool" in text
    link = re.search(r"https?://\S+/answer/(\S+)", text_of(asked))
    assert link is not None
    task = tasks_of(engine).get(request.request_id, "chat-tool")
    assert task is not None and task.answer is None and task.type == "processor"
    # The crm's erasure is in the ledger while the processor's answer is awaited (days): the batching of a
    # fan-out's events waits for the request's own systems only (DataSubjectRequest._batch_may_wait).
    await wait_for_event(engine, request, "connector_done")
    assert (await status(handle)).stage == Stage.PROCESSING
    due = (task.answer_by - timedelta(seconds=1)).date()
    assert f"{due.day} {due.strftime('%B')} {due.year}" in text
    # The processor never sees the request's own workflow id in the task's id beyond the reference: no email.
    described = await engine.client.get_workflow_handle(outside_workflow_id(request.request_id, "chat-tool")).describe()
    assert SUBJECT_EMAIL not in described.id and described.status is not None

    result = await record_answer(tasks_of(engine), engine.client, request.request_id, "chat-tool",
                                 answer(AnswerStatus.KEPT, legal_basis="Art. 17(3)(b) GDPR; invoices",
                                        kept_until=date(2036, 12, 31)))
    assert result.state == "recorded" and result.delivered
    final = await handle.result()
    await keep_history(handle, "processor_answered_kept")
    await keep_history(engine.client.get_workflow_handle(outside_workflow_id(request.request_id, "chat-tool")),
                       "processor_answered_kept")
    assert final.outcome == Outcome.FULFILLED
    chat = next(c for c in final.connectors if c.connector == "chat-tool")
    assert chat.outcome is not None and chat.outcome.answer is not None
    [line] = chat.outcome.report
    assert (line.action, line.legal_basis, line.retained_until) == (
        RecordAction.RETAINED, "Art. 17(3)(b) GDPR; invoices", date(2036, 12, 31))
    # The reply names the system truthfully: kept by the processor, with its basis and date.
    reply = readable(engine.mail.to(SUBJECT_EMAIL)[-1])
    assert "Chat Tool" in reply or "chat-tool" in reply
    assert "2036-12-31" in reply or "31 December 2036" in reply
    # A second answer is refused, in the ledger as in the workflow.
    again = await record_answer(tasks_of(engine), engine.client, request.request_id, "chat-tool",
                                answer(AnswerStatus.DONE))
    assert again.state == "already"


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[chat_tool()]])
async def test_reminders_go_before_the_date_then_the_answer_is_taken(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", language="en")
    await mail_to(engine, PROCESSOR, 1)
    task = tasks_of(engine).get(request.request_id, "chat-tool")
    assert task is not None
    # Past the first reminder (answer-by minus 3 days), not the second.
    await engine.env.sleep(task.answer_by - timedelta(days=3) - await engine.env.get_current_time()
                           + timedelta(hours=1))
    reminded = await mail_to(engine, PROCESSOR, 2)
    assert len(reminded) == 2 and str(reminded[1]["Subject"]).startswith("Reminder:")
    assert "We have not yet received your answer" in readable(reminded[1])
    assert (await status(handle)).stage == Stage.PROCESSING

    result = await record_answer(tasks_of(engine), engine.client, request.request_id, "chat-tool",
                                 answer(AnswerStatus.DONE))
    assert result.delivered
    final = await handle.result()
    await keep_history(handle, "processor_reminded_then_done")
    await keep_history(engine.client.get_workflow_handle(outside_workflow_id(request.request_id, "chat-tool")),
                       "processor_reminded_then_done")
    assert final.outcome == Outcome.FULFILLED
    assert len(engine.mail.to(PROCESSOR)) == 2  # no reminder after the answer
    [line] = final.connectors[0].outcome.report
    assert line.action == RecordAction.DELETED


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[backups()]])
@pytest.mark.parametrize("settings", ["Europe/Paris", "America/Los_Angeles"], indirect=True)
async def test_no_answer_by_the_date_needs_attention_and_a_late_answer_resumes_the_request(
        engine: Engine, settings: Settings) -> None:
    request, handle = await submit(engine, "erasure")
    [asked] = await mail_to(engine, OWNER, 1)
    assert "Vous êtes désigné comme la personne pouvant agir" in readable(asked)  # the owner's language: French
    task = tasks_of(engine).get(request.request_id, "backups")
    assert task is not None and task.type == "manual"
    await engine.env.sleep(task.answer_by - await engine.env.get_current_time() + timedelta(hours=1))
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    current = await status(handle)
    [backup] = current.connectors
    # The last day to answer where the controller is (in Los Angeles its end falls on the next UTC date).
    day = last_valid_day(task.answer_by, settings.policy.timezone)
    assert backup.state.value == "failed" and f"no answer by {day.isoformat()}" in backup.error
    assert "operator_attention" in templates_sent(engine, request)
    assert len(engine.mail.to(OWNER)) == 2  # the request and one reminder

    # The owner answers late: the ledger takes it; the task no longer waits, the request is told and goes on
    # with it, without an operator's retry.
    late = await record_answer(tasks_of(engine), engine.client, request.request_id, "backups",
                               answer(AnswerStatus.CANNOT, reason="the tape is offsite until March"))
    assert late.state == "recorded" and not late.delivered and late.resumed
    await wait_for_stage(engine, handle, Stage.CLOSED)
    current = await status(handle)
    assert current.outcome == Outcome.FULFILLED
    assert [e.actor for e in engine.ledger.events(request.request_id) if e.event == "retried"] == ["late-answer"]
    [line] = current.connectors[0].outcome.report  # type: ignore[union-attr]
    assert line.action == RecordAction.RESIDUAL
    assert len(engine.mail.to(OWNER)) == 2  # the retry found the answer: nobody asked again
    # "Cannot" is followed up with the operator like residual data, and the reply says it is not done yet.
    assert current.residuals == ["backups: answer - they cannot carry it out"]
    reply = readable(engine.mail.to(SUBJECT_EMAIL)[-1])
    assert "Pas encore fait : notre équipe n'a pas encore pu le faire" in reply
    await clear_residuals(engine.client, handle.id, ResidualsCleared(cleared_by="operator:alice", note="tape erased"))
    await handle.result()
    await keep_history(handle, "manual_no_answer_then_answered_late")
    # The task's next run: it found the late answer in the ledger.
    await keep_history(engine.client.get_workflow_handle(outside_workflow_id(request.request_id, "backups")),
                       "manual_answer_found_on_retry")


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[backups(), ScriptedConnector("crm", permanent_failures=1)]])
async def test_a_late_answer_waits_for_the_retry_when_another_system_needs_attention(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure")
    await mail_to(engine, OWNER, 1)
    task = tasks_of(engine).get(request.request_id, "backups")
    assert task is not None
    await engine.env.sleep(task.answer_by - await engine.env.get_current_time() + timedelta(hours=1))
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    late = await record_answer(tasks_of(engine), engine.client, request.request_id, "backups",
                               answer(AnswerStatus.DONE))
    assert late.state == "recorded" and late.resumed
    await asyncio.sleep(1)  # the signal is taken: the crm still needs an operator, so the request still waits
    assert (await status(handle)).stage == Stage.NEEDS_ATTENTION
    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    await wait_for_stage(engine, handle, Stage.CLOSED)
    current = await status(handle)
    assert current.outcome == Outcome.FULFILLED and all(c.state.value == "done" for c in current.connectors)
    assert [e.actor for e in engine.ledger.events(request.request_id) if e.event == "retried"] == ["operator:alice"]
    assert len(engine.mail.to(OWNER)) == 2  # the request and one reminder: the retry found the answer
    await handle.result()


@pytest.mark.parametrize("connectors", [[chat_tool(language=Language.FR)]])
async def test_an_uploaded_export_is_stored_encrypted_and_reaches_the_access_bundle(engine: Engine) -> None:
    request, handle = await submit(engine, "access", language="en")
    await mail_to(engine, PROCESSOR, 1)
    exports = exports_of(engine.settings)
    upload = ExportFile("export.csv", "text/csv", f"email,message\n{SUBJECT_EMAIL},bonjour\n".encode())
    result = await record_answer(tasks_of(engine), engine.client, request.request_id, "chat-tool",
                                 answer(AnswerStatus.DONE), exports=exports, upload=upload)
    assert result.delivered
    # Stored through the storage layer, encrypted: no object holds the plaintext.
    for key in exports.objects.list(exports.prefix(request.request_id)):
        assert SUBJECT_EMAIL.encode() not in exports.objects.get(key) and b"bonjour" not in exports.objects.get(key)
    assert list(exports.read(request.request_id, "chat-tool", "upload")) == [
        {"email": SUBJECT_EMAIL, "message": "bonjour"}]
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED
    [chat] = final.connectors
    assert chat.outcome is not None and chat.outcome.datasets[0].records == 1
    sent = templates_sent(engine, request)
    assert "reply_access" in sent


@pytest.mark.slow  # the verbs as processes
@pytest.mark.parametrize("connectors", [[chat_tool()]])
async def test_dsr_tasks_lists_the_waiting_task_and_completes_it_without_an_answer(engine: Engine) -> None:
    env = {**os.environ, "DSR_HOME": str(engine.settings.home), "DSR_KEYS": TEST_KEYRING.to_env_value(),
           "TEMPORAL_ADDRESS": engine.client.service_client.config.target_host}

    async def dsr(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "dsr"), *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        return process.returncode or 0, out.decode(), err.decode()

    request, handle = await submit(engine, "erasure", language="en")
    await mail_to(engine, PROCESSOR, 1)
    code, out, err = await dsr("tasks", "list", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert (row["request"], row["system"], row["type"], row["answer"]) == (request.request_id, "chat-tool",
                                                                           "processor", "")
    assert SUBJECT_EMAIL not in out
    # `dsr status` shows the system waiting for its answer, with its date, not "running".
    code, out, err = await dsr("status", request.request_id)
    assert code == 0, err
    assert f"  chat-tool: waiting for an answer (due {row['answer_by']})" in out.splitlines(), out
    code, out, err = await dsr("status", request.request_id, "--json")
    assert code == 0 and json.loads(out)["outside"][0]["answer_by"] == row["answer_by"], err

    for args, message in [
        (["--kept"], "error: --kept needs --basis (the legal basis) and --until (YYYY-MM-DD)"),
        (["--done", "--cannot"], "error: give exactly one of --done, --no-data, --kept, --cannot, --no-answer"),
        (["--kept", "--basis", "Art. 17(3)(b) GDPR", "--until", "31/12/2036"],
         "error: --until must be a date YYYY-MM-DD, got '31/12/2036'"),
    ]:
        code, out, err = await dsr("tasks", "complete", request.request_id, "chat-tool", *args)
        assert code == 1 and err.strip() == message and "Traceback" not in err
    code, _, err = await dsr("tasks", "complete", request.request_id, "nowhere", "--done")
    assert code == 1 and "has no task for system 'nowhere'" in err

    code, out, err = await dsr("tasks", "complete", request.request_id, "chat-tool", "--no-answer",
                               "--by", "operator:alice")
    assert code == 0, err
    assert out.strip() == f"{request.request_id} chat-tool: no_answer recorded"
    await wait_for_stage(engine, handle, Stage.CLOSED)
    current = await status(handle)
    assert current.outcome == Outcome.FULFILLED
    assert current.residuals == ["chat-tool: answer - no answer yet"]
    reply = readable(engine.mail.to(SUBJECT_EMAIL)[-1])
    assert "No answer yet from this processor" in reply
    code, out, err = await dsr("status", request.request_id)
    assert code == 0 and "  supplementary letter to the subject: waiting for chat-tool" in out.splitlines(), out
    # The reply promised to write again when the processor answers: an operator's no_answer is no answer, so the
    # processor's own answer still goes in (once), and the subject gets the supplementary letter in the reply's
    # thread.
    code, out, err = await dsr("tasks", "complete", request.request_id, "chat-tool", "--done")
    assert code == 0, err
    assert out.strip() == (f"{request.request_id} chat-tool: done recorded; the request is answered: its aftercare "
                           "was told (the subject's supplementary letter)")
    code, _, err = await dsr("tasks", "complete", request.request_id, "chat-tool", "--done")
    assert code == 1 and err.strip() == f"error: chat-tool of {request.request_id} was already answered"
    await wait_for_event(engine, request, "supplement_sent")
    letter = engine.mail.to(SUBJECT_EMAIL)[-1]
    assert letter["In-Reply-To"] == engine.mail.to(SUBJECT_EMAIL)[-2]["Message-ID"]
    assert "Done: our processor, who runs this system on our behalf, confirmed it: the data concerned by the " \
           "request is erased there." in " ".join(readable(letter).split())
    code, out, _ = await dsr("status", request.request_id)
    assert code == 0 and "  supplementary letter to the subject: sent" in out.splitlines(), out
    code, out, _ = await dsr("tasks", "list")
    assert code == 0 and out.strip() == "no task waits for an answer"
    await clear_residuals(engine.client, handle.id,
                          ResidualsCleared(cleared_by="operator:alice", note="asked again by phone"))
    await handle.result()


@pytest.mark.slow  # the verbs as processes
@pytest.mark.parametrize("connectors", [[chat_tool()]])
async def test_a_processors_cannot_reason_is_shown_to_the_operator_by_status_and_tasks_list(engine: Engine) -> None:
    env = {**os.environ, "DSR_HOME": str(engine.settings.home), "DSR_KEYS": TEST_KEYRING.to_env_value(),
           "TEMPORAL_ADDRESS": engine.client.service_client.config.target_host}

    async def dsr(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "dsr"), *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, err.decode()
        return out.decode()

    request, handle = await submit(engine, "erasure", language="en")
    await mail_to(engine, PROCESSOR, 1)
    reason = "Our logs are on a legal hold until the audit ends"
    result = await record_answer(tasks_of(engine), engine.client, request.request_id, "chat-tool",
                                 answer(AnswerStatus.CANNOT, reason=reason))
    assert result.delivered
    await wait_for_stage(engine, handle, Stage.CLOSED)
    # Sealed in the ledger, opened for the operator's CLI only.
    row = tasks_of(engine).get(request.request_id, "chat-tool")
    assert row is not None and row.answer is not None
    listed = await dsr("tasks", "list", "--all")
    assert f"cannot: {reason}" in listed, listed
    [entry] = json.loads(await dsr("tasks", "list", "--all", "--json"))
    assert (entry["answer"], entry["reason"]) == ("cannot", reason)
    shown = await dsr("status", request.request_id)
    assert f"  chat-tool: done, answered: cannot: {reason}" in shown.splitlines(), shown
    assert json.loads(await dsr("status", request.request_id, "--json"))["outside"][0]["reason"] == reason
    await clear_residuals(engine.client, handle.id, ResidualsCleared(cleared_by="operator:alice", note="asked again"))
    await handle.result()

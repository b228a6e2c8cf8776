"""The request lifecycle on the time-skipping server: month-long flows run in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace
from datetime import UTC, date, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

import activities.ledger
import activities.subjects
from dsr.domain.aftercare import AftercareStatus, aftercare_id
from dsr.domain.deadlines import response_deadline
from dsr.domain.model import (
    ClockPolicy,
    Correspondence,
    Doubt,
    Extension,
    IdentityConfirmation,
    IdentityMethod,
    Outcome,
    Rectification,
    Refusal,
    RefusalGround,
    RequestStatus,
    ResidualsCleared,
    Retry,
    Stage,
    Withdrawal,
)
from intake.submission import Submission, prepare, start
from tests.harness import ScriptedConnector, attachments_of, exports_of, keep_history, text_of
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    SUBJECT_NAME,
    Engine,
    SwitchableProfile,
    events,
    readable,
    status,
    submit,
    templates_sent,
    wait_for_event,
    wait_for_notice,
    wait_for_stage,
)
from workflows import search_attributes as sa
from workflows.aftercare import RequestAftercare
from workflows.audit import instant
from workflows.request import UNVERIFIED_LEAD, DataSubjectRequest


async def test_trusted_access_request_is_fulfilled_by_every_connector(engine: Engine) -> None:
    request, handle = await submit(engine, "access")
    final: RequestStatus = await handle.result()
    await keep_history(handle, "trusted_access_fulfilled")

    assert final.stage == Stage.CLOSED and final.outcome == Outcome.FULFILLED
    assert final.deadline == request.deadlines.normal.due
    assert [(c.connector, c.state.value, c.outcome.counts if c.outcome else None) for c in final.connectors] == [
        ("billing", "done", {"exported": 3}),
        ("crm", "done", {"exported": 3}),
    ]
    for connector in engine.connectors:
        assert connector.calls == [("access", request.request_id)]
    # The ledger's events in three batches, not five, and only one an activity of its own: the connectors' events
    # wait for the reply's while the request's own systems work, and the reply's first try writes them; the closing
    # ones go with ``aftercare_started`` in the local activity that starts the aftercare, in the run's last task.
    history = await handle.fetch_history()

    async def summary(event: HistoryEvent) -> str:
        return str((await engine.client.data_converter.decode([event.user_metadata.summary]))[0])

    scheduled = {name: [await summary(e) for e in history.events
                        if e.activity_task_scheduled_event_attributes.activity_type.name == name]
                 for name in ("record_events", "send_reply", "record_event_batch")}
    assert scheduled == {"record_events": ["ledger: identity_confirmed, processing"],
                         "send_reply": ["reply: access; ledger: connector_done, connector_done, replying"],
                         "record_event_batch": []}  # nothing noted while the reply ran: written by it alone
    # The request's row in its first workflow task (a local activity: no activity task, no second workflow task).
    assert [await summary(e) for e in history.events if e.HasField("marker_recorded_event_attributes")] == [
        "ledger: request recorded", "plan access", "start aftercare; ledger: reply_sent, closed, aftercare_started"]
    assert "record_request" not in [e.activity_task_scheduled_event_attributes.activity_type.name
                                    for e in history.events]
    # The closing's local activity started the aftercare (no child: no start command, no task awaiting its answer),
    # and the run ended in that workflow task.
    kinds = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED not in kinds
    last_task = max(n for n, kind in enumerate(kinds) if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    assert kinds[last_task:].count(EventType.EVENT_TYPE_MARKER_RECORDED) == 1  # the closing, in the last task
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    written = events(engine, request)
    assert written.count("connector_done") == 2 and written.count("replying") == 1
    assert written.index("processing") < written.index("connector_done") < written.index("replying") < written.index(
        "reply_sent") < written.index("closed") < written.index("aftercare_started")
    # The acknowledgement goes beside identity and the fan-out (an SMTP outage holds nothing), before the reply.
    assert events(engine, request)[0] == "received" and "identity_confirmed" in events(engine, request)
    # The request's workflow ends with the answer (Completed in the UI); its download link lives on in the
    # aftercare, a workflow of its own, until it expires (7 days, skipped): then the exports are deleted.
    assert events(engine, request)[-3:] == ["reply_sent", "closed", "aftercare_started"]
    assert templates_sent(engine, request) == ["acknowledgement", "reply_access"]
    assert final.aftercare == aftercare_id(request.request_id) and final.link_expires_at is not None
    answered = await handle.describe()
    assert answered.status == WorkflowExecutionStatus.COMPLETED
    assert answered.close_time is not None and answered.close_time < final.link_expires_at - timedelta(days=6)
    aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = engine.client.get_workflow_handle_for(
        RequestAftercare.run, aftercare_id(request.request_id))
    # Started with what the UI's dashboard filters on, and what it is for.
    started = await aftercare.describe()
    assert started.typed_search_attributes.get(sa.DSR_KIND) == "access"
    assert started.typed_search_attributes.get(sa.DSR_STAGE) == Stage.CLOSED.value
    assert started.typed_search_attributes.get(sa.DSR_OUTCOME) == Outcome.FULFILLED.value
    assert started.typed_search_attributes.get(sa.DSR_RESIDUAL) is False
    assert await started.static_summary() == "aftercare · access · download link"
    async with engine.env.time_skipping_unlocked():  # type: ignore[attr-defined]
        care = await aftercare.result()  # the test server skips to the link's expiry
    await keep_history(aftercare, "link_expired")
    assert care.exports_deleted and care.link_expires_at == final.link_expires_at
    expired = await aftercare.describe()
    assert expired.close_time is not None and expired.close_time >= final.link_expires_at
    assert events(engine, request)[-1] == "exports_deleted"
    assert not exports_of(engine.settings).holds(request.request_id)
    row = engine.ledger.get_request(request.request_id)
    assert row is not None and row.stage == Stage.CLOSED and row.outcome == Outcome.FULFILLED
    assert row.subject.email == SUBJECT_EMAIL
    # The subject got two mails, in French, with the reference.
    inbox = engine.mail.to(SUBJECT_EMAIL)
    assert len(inbox) == 2 and all(request.request_id in text_of(m) for m in inbox)


@pytest.mark.slow  # the local activities' 2 x 15 s of tries are the worker's own time, not skipped
@pytest.mark.parametrize(("kind", "closing", "last"), [
    ("access", "start_aftercare", "aftercare_started"),  # a download link: the aftercare's start carries them
    ("erasure", "record_event_batch", "closed"),  # nothing outlives the answer: a batch of their own
])
async def test_a_ledger_the_worker_cannot_reach_from_local_tries_gets_their_writes_by_activities_the_server_retries(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, kind: str, closing: str, last: str) -> None:
    """The row (in the first workflow task) and the closing events (a request without a subject key: no give-back to
    carry them) are tried five times as local activities, then as activities: a ledger the worker cannot reach is not
    retried for ever inside a workflow task held open. The row's local tries fail before writing; the closing
    events' after (committed, not known to be): the activity finds them written, under the same key."""
    record_request = engine.ledger.record_request
    record_batch = activities.ledger.record_batch
    local_tries: dict[str, list[int]] = {}

    def unreachable_from_local_tries(*args: Any, **kwargs: Any) -> bool:
        if activity.info().is_local:
            local_tries.setdefault("record_request", []).append(activity.info().attempt)
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("ledger unreachable"))
        return record_request(*args, **kwargs)

    def lost_after_the_commit(*args: Any, **kwargs: Any) -> int:
        written = record_batch(*args, **kwargs)
        if activity.info().is_local:
            local_tries.setdefault(activity.info().activity_type, []).append(activity.info().attempt)
            raise OperationalError("COMMIT", {}, ConnectionResetError("connection lost after the commit"))
        return written

    monkeypatch.setattr(engine.ledger, "record_request", unreachable_from_local_tries)
    monkeypatch.setattr(activities.ledger, "record_batch", lost_after_the_commit)
    monkeypatch.setattr(activities.subjects, "record_batch", lost_after_the_commit)
    request, handle = await submit(engine, kind)
    final: RequestStatus = await asyncio.wait_for(handle.result(), timeout=120)  # unbounded tries would never end

    assert final.outcome == Outcome.FULFILLED
    # Tried, with backoff, before giving the write to the server.
    assert local_tries == {"record_request": [1, 2, 3, 4, 5], closing: [1, 2, 3, 4, 5]}
    history = await handle.fetch_history()
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events]
    assert scheduled.count("record_request") == scheduled.count(closing) == 1
    written = events(engine, request)
    assert written[0] == "received" and written.count("received") == 1
    assert written[-1] == last and written.index("reply_sent") < written.index("closed")
    assert written.count("reply_sent") == written.count("closed") == written.count(last) == 1


async def test_an_event_noted_while_the_reply_carries_a_batch_does_not_wait_for_the_reply(engine: Engine) -> None:
    """The reply's first try may take minutes (a large bundle, a slow mail server): an event noted meanwhile (here an
    extension) is written at once, after the batch the reply carries, which the writer writes itself (under the
    batch's key: the reply's own write then finds it written)."""
    engine.mail.hold_from = len(engine.mail.messages) + 1  # the acknowledgement goes; the reply waits at DATA
    engine.mail.data_open.clear()
    engine.mail.data_held.clear()
    try:
        request, handle = await submit(engine, "access")
        assert await asyncio.to_thread(engine.mail.data_held.wait, 20), "the reply never reached DATA"
        assert (await status(handle)).stage == Stage.REPLYING
        assert templates_sent(engine, request) == ["acknowledgement"]
        extension = asyncio.create_task(handle.execute_update(DataSubjectRequest.extend_deadline, Extension(
            reason="the systems of a processor answer slowly", requested_by="operator:alice")))
        for _ in range(200):
            if "extended" in events(engine, request):
                break
            await asyncio.sleep(0.05)
        written = events(engine, request)
        assert "extended" in written and "reply_sent" not in written, written
        assert written.index("replying") < written.index("extended")
        assert "reply_access" not in templates_sent(engine, request)  # the reply still waits at DATA
    finally:
        engine.mail.data_open.set()
        engine.mail.hold_from = None
    await extension
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED
    written = events(engine, request)
    assert written.count("replying") == 1 and written.count("connector_done") == len(engine.connectors)
    history = (await handle.fetch_history()).events
    steps = [e.activity_task_scheduled_event_attributes.activity_type.name
             if e.HasField("activity_task_scheduled_event_attributes") else EventType.Name(e.event_type)
             for e in history]
    # The writer wrote the carried batch once the extension was noted, while the reply's only try still ran.
    assert steps.count("send_reply") == 1 and steps.count("record_event_batch") == 1
    assert steps.index("send_reply") < steps.index("EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED") < steps.index(
        "record_event_batch") < steps.index("EVENT_TYPE_ACTIVITY_TASK_COMPLETED", steps.index("record_event_batch"))


async def test_unconfirmed_identity_gets_a_reminder_then_closes_as_unverified(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    final = await handle.result()  # the test server skips the 30 days
    await keep_history(handle, "identity_unverified")

    assert final.outcome == Outcome.UNVERIFIED
    sent = templates_sent(engine, request)
    assert [t for t in sent if not t.startswith("operator_")] == [
        "acknowledgement", "identity_request", "identity_reminder", "unverified",
    ]
    # The clock ran from receipt (the default policy), so operators were reminded meanwhile.
    assert "operator_reminder" in sent
    assert all(not c.calls for c in engine.connectors), "nothing is erased for an unverified person"
    timeline = {e.event: e.at for e in engine.ledger.events(request.request_id)}
    waited = timeline["identity_reminder_sent"] - timeline["identity_requested"]
    # Ledger times are the worker's wall clock, not the skipped server clock; so check the workflow's.
    history = await handle.fetch_history()
    timers = [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
              for e in history.events if e.HasField("timer_started_event_attributes")]
    # 30 days in all (7, then 23), unless the deadline comes first: the closure is the answer due by then.
    total = min(timedelta(days=30), request.deadlines.normal.overdue_at - UNVERIFIED_LEAD - request.received_at)
    assert timedelta(days=7) in timers
    assert any(abs(timedelta(days=7) + t - total) < timedelta(minutes=5) for t in timers), timers
    assert waited >= timedelta(0)


@pytest.mark.slow
async def test_an_unverified_request_is_closed_by_its_deadline_not_after(engine: Engine) -> None:
    """Before: 30 days of identity wait from the request; a letter recorded 10 days late (or a request of
    31 January, due 28 February) was closed after its deadline."""
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL, received_days_ago=10)
    final = await handle.result()
    assert final.outcome == Outcome.UNVERIFIED and not final.overdue
    history = await handle.fetch_history()
    closed_at = history.events[-1].event_time.ToDatetime(tzinfo=UTC)
    assert closed_at <= request.deadlines.normal.overdue_at - UNVERIFIED_LEAD + timedelta(minutes=5)
    overdue = [e for e in engine.ledger.events(request.request_id) if e.event == "overdue"]
    assert overdue == []
    notice = [text_of(m) for m in engine.mail.to(SUBJECT_EMAIL)][-1]
    assert "30 jours" not in notice and "jours" in notice  # the wait actually given, not the policy's


async def test_identity_confirmed_by_update_then_processed(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    result = await handle.execute_update(
        DataSubjectRequest.confirm_identity,
        IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject"),
    )
    assert result.deadline == request.deadlines.normal.due
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED and final.identity_confirmed
    assert {c.connector: c.outcome.counts for c in final.connectors if c.outcome} == {
        "billing": {"deleted": 3}, "crm": {"deleted": 3},
    }
    # A closed workflow takes no updates at all; `dsr` turns this into "is closed (fulfilled)".
    with pytest.raises(RPCError, match="not found"):
        await handle.execute_update(
            DataSubjectRequest.confirm_identity, IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="x")
        )
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.DSR_OUTCOME) == "fulfilled"
    assert described.typed_search_attributes.get(sa.DSR_STAGE) == "closed"


@pytest.mark.slow
async def test_reply_with_an_id_copy_on_a_form_request_is_recorded_once_and_deleted_on_confirmation(
    engine: Engine,
) -> None:
    request, handle = await submit(engine, "access", identity=IdentityMethod.DOCUMENT, channel="form",
                                   language="en")
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    # What the mailbox does for a reply from the subject: the file under the request, then the update.
    store = attachments_of(engine.settings)
    key = "5f" * 32  # the mailbox's keyed hash of the message
    store.save(request.request_id, "passport.pdf", "application/pdf", b"%PDF-1.4 passport", source=key, part=1)
    letter = Correspondence(message_key=key, received_at=await engine.env.get_current_time(), attachments=1,
                            message_id="<reply-1@mail.example.org>")
    first = await handle.execute_update(DataSubjectRequest.record_correspondence, letter)
    assert first.stage == Stage.AWAITING_IDENTITY
    # The mailbox crashed before recording it had told the request, and sends the same message again.
    await handle.execute_update(DataSubjectRequest.record_correspondence, letter)

    wrote = [e for e in engine.ledger.events(request.request_id) if e.event == "subject_wrote"]
    assert [(e.actor, e.details, e.note) for e in wrote] == [(
        "subject", {"attachments": "1", "message_key": key, "received_at": instant(letter.received_at)},
        "message-id: <reply-1@mail.example.org>")]
    assert templates_sent(engine, request).count("operator_correspondence") == 1
    [notice] = [m for m in engine.mail.to(OPERATOR_EMAIL) if "subject wrote" in str(m["Subject"])]
    text = readable(notice)
    assert request.request_id in str(notice["Subject"])
    assert f"dsr attachments list {request.request_id}" in text
    assert f"dsr confirm-identity {request.request_id} --method document" in text
    for secret in (SUBJECT_EMAIL, SUBJECT_NAME, "passport.pdf", "reply-1@mail.example.org"):
        assert secret not in text
    assert notice["In-Reply-To"] is None  # the subject's Message-ID may name them: not in operator mail

    await handle.execute_update(
        DataSubjectRequest.confirm_identity,
        IdentityConfirmation(method=IdentityMethod.DOCUMENT, confirmed_by="operator:alice"),
    )
    final = await handle.result()
    await keep_history(handle, "correspondence_form_document_identity")
    assert final.outcome == Outcome.FULFILLED
    # A form request, yet its ID copy is deleted once identity is confirmed (whatever the channel).
    assert store.list(request.request_id) == []
    [deleted] = [e for e in engine.ledger.events(request.request_id) if e.event == "identity_documents_deleted"]
    assert deleted.details == {"count": "1"}
    # Later mail to the subject (the final reply) answers in the thread of their reply.
    assert templates_sent(engine, request)[-1] == "reply_access"
    assert engine.mail.to(SUBJECT_EMAIL)[-1]["In-Reply-To"] == "<reply-1@mail.example.org>"


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1)]])
async def test_files_a_reply_brings_after_identity_is_settled_are_deleted_at_closure(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure")  # trusted: no identity step, no deletion there
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    store = attachments_of(engine.settings)
    key = "7c" * 32
    store.save(request.request_id, "invoice.pdf", "application/pdf", b"%PDF-1.4 invoice", source=key, part=1)
    await handle.execute_update(DataSubjectRequest.record_correspondence, Correspondence(
        message_key=key, received_at=await engine.env.get_current_time(), attachments=1))
    [notice] = [m for m in engine.mail.to(OPERATOR_EMAIL) if "message du demandeur" in str(m["Subject"])]
    assert "confirm-identity" not in readable(notice)  # nothing to confirm: identity is settled
    assert [a.filename for a in store.list(request.request_id)] == ["invoice.pdf"]  # kept for the operator

    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED
    trail = events(engine, request)
    assert trail.index("closed") < trail.index("attachments_deleted")
    [deleted] = [e for e in engine.ledger.events(request.request_id) if e.event == "attachments_deleted"]
    assert deleted.details == {"count": "1"} and store.list(request.request_id) == []

@pytest.mark.slow
async def test_a_link_alone_never_suspends_the_clock(engine: Engine) -> None:
    """Décret 2019-536 suspends the period on a reasonable doubt, not for every request (before: every request
    under suspend_during_identity stood still until an operator confirmed identity, then a month restarted)."""
    request, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL,
                                   clock=ClockPolicy.SUSPEND_DURING_IDENTITY)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    assert not (await status(handle)).clock_suspended
    await engine.env.sleep(timedelta(days=10))
    await handle.execute_update(DataSubjectRequest.confirm_identity,
                                IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject"))
    final = await handle.result()
    assert final.deadline == request.deadlines.normal.due  # from receipt, as if never suspended
    assert "clock_started" not in events(engine, request) and "clock_resumed" not in events(engine, request)


@pytest.mark.slow
async def test_a_doubt_suspends_until_the_subject_answers_and_the_time_left_resumes(engine: Engine) -> None:
    request, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL,
                                   clock=ClockPolicy.SUSPEND_DURING_IDENTITY)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await engine.env.sleep(timedelta(days=3))
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.doubt, Doubt(reason=" "))
    asked = "Une copie de votre pièce d'identité : le nom du compte diffère de celui de la demande."
    await handle.execute_update(DataSubjectRequest.doubt, Doubt(reason=asked, requested_by="operator:alice"))
    assert (await status(handle)).clock_suspended
    suspended_on = (await engine.env.get_current_time()).date()

    await engine.env.sleep(timedelta(days=10))  # the subject takes ten days to send the document
    await handle.execute_update(DataSubjectRequest.record_correspondence, Correspondence(
        message_key="k" * 64, received_at=await engine.env.get_current_time(), attachments=1))
    resumed = await status(handle)
    assert not resumed.clock_suspended
    resumed_on = (await engine.env.get_current_time()).date()
    days = (resumed_on - suspended_on).days
    assert 9 <= days <= 11  # the server clock moved ten days, give or take the test's minutes around midnight
    expected = response_deadline(request.received_on, suspended_days=days)
    assert resumed.deadline == expected and expected > request.deadlines.normal.due

    await engine.env.sleep(timedelta(days=4))  # the operator's own review time is not the subject's
    await handle.execute_update(DataSubjectRequest.confirm_identity,
                                IdentityConfirmation(method=IdentityMethod.DOCUMENT, confirmed_by="operator:alice"))
    final = await handle.result()
    await keep_history(handle, "suspended_clock_doubt_resumed")
    assert final.deadline == expected
    trail = engine.ledger.events(request.request_id)
    [doubt] = [e for e in trail if e.event == "identity_doubt"]
    assert doubt.note == asked and doubt.actor == "operator:alice" and doubt.details == {"clock_suspended": "true"}
    [back] = [e for e in trail if e.event == "clock_resumed"]
    assert back.details["suspended_days"] == str(days)
    sent = templates_sent(engine, request)
    assert "identity_doubt" in sent and "clock_resumed" in sent
    told = [text_of(m) for m in engine.mail.to(SUBJECT_EMAIL)
            if str(m["Subject"]).endswith("le délai de réponse reprend")]
    assert len(told) == 1 and "reprend pour la durée qui restait" in told[0]


async def test_a_document_policy_that_says_why_suspends_from_the_identity_request(engine: Engine) -> None:
    settings = replace(engine.settings, policy=replace(
        engine.settings.policy, identity=IdentityMethod.DOCUMENT, clock=ClockPolicy.SUSPEND_DURING_IDENTITY,
        document_reason="nos comptes ne sont liés qu'à une adresse e-mail partagée par plusieurs personnes"))
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind="erasure", email=SUBJECT_EMAIL, name=SUBJECT_NAME, channel="api",
                                 language="fr"), settings, now=now)
    handle = await start(engine.client, request, task_queue=engine.task_queue)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    assert (await status(handle)).clock_suspended
    for _ in range(100):
        if "identity_request" in templates_sent(engine, request):
            break
        await asyncio.sleep(0.1)
    [asked] = [text_of(m) for m in engine.mail.to(SUBJECT_EMAIL)
               if "confirmez votre identité" in str(m["Subject"])]
    assert "en joignant une copie d'un justificatif" in asked and "adresse e-mail partagée" in asked
    assert "Vous n'avez rien à faire" not in asked and "est suspendu" in asked
    await handle.terminate("test over")
    await keep_history(handle, "suspended_clock_document_policy")


@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1),
                                         ScriptedConnector("billing")]])
async def test_permanent_failure_needs_attention_and_deadline_alarms_fire(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    current = await status(handle)
    assert {c.connector: c.state.value for c in current.connectors} == {"crm": "failed", "billing": "done"}
    assert "check the credentials of connector crm" in next(c.error for c in current.connectors if c.connector == "crm")

    # Nobody acts: the month passes. D-7, D-2, then overdue and an escalation reach the operator.
    await engine.env.sleep(request.deadlines.normal.overdue_at - await engine.env.get_current_time()
                           + timedelta(hours=1))
    current = await status(handle)
    assert current.overdue and current.stage == Stage.NEEDS_ATTENTION
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.DSR_OVERDUE) is True
    assert described.typed_search_attributes.get(sa.DSR_STAGE) == "needs_attention"
    sent = templates_sent(engine, request)
    assert sent.count("operator_reminder") == 2 and sent.count("operator_escalation") == 1
    assert "operator_attention" in sent
    labels = [e.details.get("label") for e in engine.ledger.events(request.request_id)
              if e.event == "deadline_reminder"]
    assert labels == ["D-7", "D-2"]
    operator_mail = engine.mail.to(OPERATOR_EMAIL)
    for message in operator_mail:
        text = readable(message)
        assert SUBJECT_EMAIL not in text and SUBJECT_NAME not in text

    # The operator fixes the credentials and retries: only the failed connector runs again.
    result = await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    assert result.stage != Stage.NEEDS_ATTENTION
    final = await handle.result()
    await keep_history(handle, "needs_attention_overdue_retried")
    assert final.outcome == Outcome.FULFILLED and final.overdue
    crm, billing = engine.connectors
    assert len(crm.calls) == 2 and len(billing.calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1)]])
async def test_extended_request_is_overdue_only_after_three_months(engine: Engine) -> None:
    request, handle = await submit(engine, "access")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    await handle.execute_update(DataSubjectRequest.extend_deadline, Extension(reason="Eleven years of orders."))

    # Past the first month: the original deadline no longer counts.
    await engine.env.sleep(request.deadlines.normal.overdue_at - await engine.env.get_current_time()
                           + timedelta(days=1))
    assert not (await status(handle)).overdue
    # Past the extended deadline (receipt + 3 months, Regulation 1182/71): overdue and escalated.
    await engine.env.sleep(request.deadlines.extended.overdue_at - await engine.env.get_current_time()
                           + timedelta(hours=1))
    current = await status(handle)
    assert current.overdue and current.extended and current.deadline == request.deadlines.extended.due
    reminders = [e for e in engine.ledger.events(request.request_id) if e.event == "deadline_reminder"]
    assert [e.details["label"] for e in reminders] == ["D-7", "D-2"], "reminded before the new deadline only"
    overdue = [e for e in engine.ledger.events(request.request_id) if e.event == "overdue"]
    assert [e.details["deadline"] for e in overdue] == [request.deadlines.extended.due.isoformat()]
    # The reason told to the subject is the ledger's too (Art. 12(3)-(4) proof after Temporal forgets).
    [extended] = [e for e in engine.ledger.events(request.request_id) if e.event == "extended"]
    assert extended.note == "Eleven years of orders."
    to_operator = [m for m in engine.mail.to(OPERATOR_EMAIL) if request.request_id in m["Subject"]]
    assert len(to_operator) == 4  # needs attention, D-7, D-2, escalation
    # A week later the escalation is repeated, for as long as nobody acts.
    await engine.env.sleep(timedelta(days=7, hours=1))
    assert templates_sent(engine, request).count("operator_escalation") == 2
    await keep_history(handle, "extended_then_overdue")
    await handle.terminate("test over")


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", transient_failures=3, retry_after=2.0)]])
async def test_transient_errors_are_retried_without_operator(engine: Engine) -> None:
    request, handle = await submit(engine, "access")
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED
    assert len(engine.connectors[0].calls) == 4
    # The retries happened inside one activity execution (server-side retry), not as new activities.
    history = await handle.fetch_history()
    attempts = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
    assert max(e.activity_task_started_event_attributes.attempt for e in attempts) == 4
    assert "needs_attention" not in events(engine, request)


async def test_extension_once_with_reason_inside_the_first_month(engine: Engine) -> None:
    request, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL, language="en")
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await wait_for_notice(engine, request, "identity_request")  # else the extension may not be the last mail

    with pytest.raises(WorkflowUpdateFailedError) as empty:
        await handle.execute_update(DataSubjectRequest.extend_deadline, Extension(reason="   "))
    assert "needs a reason" in str(empty.value.cause)

    reason = "Your request covers eleven years of orders across three systems."
    result = await handle.execute_update(DataSubjectRequest.extend_deadline, Extension(reason=reason))
    assert result.extended and result.deadline == request.deadlines.extended.due
    assert result.deadline == response_deadline(request.received_on, extended=True)
    notice = engine.mail.to(SUBJECT_EMAIL)[-1]
    assert reason in text_of(notice)
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.DSR_EXTENDED) is True
    deadline = described.typed_search_attributes.get(sa.DSR_DEADLINE)
    assert deadline is not None and deadline.date() == request.deadlines.extended.due

    with pytest.raises(WorkflowUpdateFailedError) as second:
        await handle.execute_update(DataSubjectRequest.extend_deadline, Extension(reason="again"))
    assert "already extended" in str(second.value.cause)
    await handle.execute_update(DataSubjectRequest.withdraw, Withdrawal(requested_by="subject"))
    await handle.result()
    await keep_history(handle, "extended_then_withdrawn")
    ledger_row = engine.ledger.get_request(request.request_id)
    assert ledger_row is not None and ledger_row.extended and ledger_row.deadline == request.deadlines.extended.due


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1)]])
async def test_extension_refused_after_the_first_month(engine: Engine) -> None:
    request, handle = await submit(engine, "access")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    await engine.env.sleep(request.deadlines.normal.overdue_at - await engine.env.get_current_time()
                           + timedelta(minutes=5))
    with pytest.raises(WorkflowUpdateFailedError) as late:
        await handle.execute_update(DataSubjectRequest.extend_deadline, Extension(reason="too complex"))
    assert "first month" in str(late.value.cause) and "ended" in str(late.value.cause)
    assert not (await status(handle)).extended
    await handle.terminate("test over")


@pytest.mark.slow
async def test_the_name_typed_on_the_form_is_written_only_once_identity_is_confirmed(engine: Engine) -> None:
    # Anyone can type any name beside someone else's address: a link, and U+202E to turn text around.
    typed = "Jeanne \u202eMartin\u202c http://evil.example/x"
    request, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL, name=typed)
    assert request.subject.name == "Jeanne Martin http://evil.example/x"  # bidi controls never even stored
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await wait_for_notice(engine, request, "identity_request")
    # An extension is no pre-identity template: the workflow itself leaves the name out until confirmation.
    await handle.execute_update(DataSubjectRequest.extend_deadline, Extension(reason="Six systems to search."))
    before = engine.mail.to(SUBJECT_EMAIL)
    assert len(before) == 3 and "extension" in templates_sent(engine, request)  # ack, identity, extension
    for message in before:
        text = readable(message)
        assert "Jeanne" not in text and "evil.example" not in text
        assert text_of(message).startswith("Bonjour,\r\n")

    await handle.execute_update(DataSubjectRequest.confirm_identity,
                                IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject"))
    final = await handle.result()

    assert final.outcome == Outcome.FULFILLED
    after = engine.mail.to(SUBJECT_EMAIL)[len(before):]
    assert after and all(
        text_of(m).startswith("Bonjour Jeanne Martin http://evil.example/x,") for m in after)


async def test_refusal_records_reason_and_tells_of_the_cnil(engine: Engine) -> None:
    request, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason=""))
    reason = "Cinquième demande identique en deux semaines (Art. 12(5))."
    result = await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason=reason))
    assert result.stage == Stage.CLOSED
    final = await handle.result()
    await keep_history(handle, "refused")
    assert final.outcome == Outcome.REFUSED and final.refusal_reason == reason
    body = text_of(engine.mail.to(SUBJECT_EMAIL)[-1])
    assert reason in body and "CNIL" in body and "Fontenoy" in body
    assert templates_sent(engine, request)[-1] == "refusal"
    # Art. 12(5): the controller bears the burden of proof; the reason is kept in the ledger, sealed.
    [refused] = [e for e in engine.ledger.events(request.request_id) if e.event == "refused"]
    assert refused.note == reason and refused.details["ground"] == "excessive"
    with Session(engine.ledger.engine) as session:
        stored = session.execute(text("SELECT note_sealed FROM event_notes")).scalars().all()
    assert stored and not any("Cinquième" in sealed for sealed in stored)
    described = await handle.describe()
    assert described.typed_search_attributes.get(sa.DSR_OUTCOME) == "refused"


@pytest.mark.slow
async def test_a_refusal_ground_must_fit_the_request_and_is_told_and_kept(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    with pytest.raises(WorkflowUpdateFailedError):  # Art. 15(4) limits a copy, not an erasure
        await handle.execute_update(DataSubjectRequest.refuse, Refusal(
            reason="x", ground=RefusalGround.OTHERS_RIGHTS))
    reason = "Litige en cours sur la commande 1042 : conservation pour la défense de nos droits."
    await handle.execute_update(DataSubjectRequest.refuse, Refusal(
        reason=reason, ground=RefusalGround.ERASURE_EXCEPTION))
    await handle.result()
    body = text_of(engine.mail.to(SUBJECT_EMAIL)[-1])
    assert "article 17, paragraphe 3" in body and reason in body and "paragraphe 5" not in body
    [refused] = [e for e in engine.ledger.events(request.request_id) if e.event == "refused"]
    assert refused.details["ground"] == "erasure_exception" and refused.note == reason


@pytest.mark.slow
async def test_a_letter_recorded_after_its_month_is_acknowledged_without_a_future_promise(engine: Engine) -> None:
    """Before: the acknowledgement announced a reply 'by' a date already past and an extension 'before the end of
    the first month'."""
    request, handle = await submit(engine, "access", received_days_ago=45, identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    for _ in range(100):  # the acknowledgement goes beside the identity step (ack-nonblocking)
        if "acknowledgement" in templates_sent(engine, request):
            break
        await asyncio.sleep(0.1)
    [body] = [text_of(m) for m in engine.mail.to(SUBJECT_EMAIL)
              if str(m["Subject"]).startswith("Nous avons bien reçu")]
    assert "a expiré le" in body and "excuser de ce retard" in body
    assert "prolongé de deux mois" not in body and "Réponse au plus tard le" not in body
    # The identity step says what will happen (a link follows), not "if needed ... we will write separately".
    assert "lien de confirmation" in body and "si nécessaire" not in body
    await handle.terminate("test over")


async def test_withdrawal_closes_without_touching_systems(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await handle.execute_update(DataSubjectRequest.withdraw, Withdrawal(requested_by="subject"))
    final = await handle.result()
    assert final.outcome == Outcome.WITHDRAWN
    assert all(not c.calls for c in engine.connectors)
    assert templates_sent(engine, request)[-1] == "withdrawn"
    row = engine.ledger.get_request(request.request_id)
    assert row is not None and row.outcome == Outcome.WITHDRAWN


async def test_a_rectification_without_corrections_waits_for_an_operator_and_touches_nothing(
        engine: Engine) -> None:
    """Before: it ran with no changes, every system was 'already up to date', and the reply said so."""
    # The form's free text, no structured changes.
    request, handle = await submit(engine, "rectification", details="J'ai déménagé à Lille, merci de corriger.")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    current = await status(handle)
    assert current.awaiting_changes and all(c.calls == [] for c in engine.connectors)
    await wait_for_event(engine, request, "changes_needed")
    assert await handle.query(DataSubjectRequest.subject_text) == request.details
    with pytest.raises(WorkflowUpdateFailedError):  # nothing to retry: corrections are missing
        await handle.execute_update(DataSubjectRequest.retry, Retry())
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.rectify, Rectification(changes={"shoe_size": "42"}))
    await handle.execute_update(DataSubjectRequest.rectify, Rectification(changes={"city": "Lille"},
                                                                          requested_by="operator:alice"))
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED and not final.awaiting_changes
    assert all(c.calls == [("rectify", request.request_id)] for c in engine.connectors)
    [given] = [e for e in engine.ledger.events(request.request_id) if e.event == "changes_given"]
    assert given.actor == "operator:alice" and given.details == {"fields": "city"}
    assert "operator_changes_needed" in templates_sent(engine, request)


async def test_no_personal_data_in_plain_sight(engine: Engine) -> None:
    request, handle = await submit(engine, "rectification", changes={"last_name": "Martin-Durand"})
    await handle.result()
    described = await handle.describe()
    raw_history = (await handle.fetch_history()).to_json()
    visible = " ".join([
        request.request_id,
        str(described.typed_search_attributes),
        raw_history,  # fetched through the codec client but to_json() shows the stored (encrypted) payloads
    ])
    for secret in (SUBJECT_EMAIL, SUBJECT_NAME, "Martin-Durand", "jeanne"):
        assert secret.lower() not in visible.lower()
    assert date.fromisoformat(request.request_id[4:11] + "-01").month == request.received_on.month


@pytest.mark.parametrize("profile", [SwitchableProfile()])
async def test_incomplete_profile_holds_the_reply_until_an_operator_retries(
    engine: Engine, profile: SwitchableProfile
) -> None:
    request, handle = await submit(engine, "access")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    current = await status(handle)
    assert current.reply_held.startswith("IncompleteProfile:") and "controller.legal_name" in current.reply_held
    assert {c.state.value for c in current.connectors} == {"done"}, "the systems were processed"
    for _ in range(50):  # the operator notice follows the stage change
        if "operator_reply_held" in templates_sent(engine, request):
            break
        await asyncio.sleep(0.1)
    assert templates_sent(engine, request) == ["acknowledgement", "operator_reply_held"], "no reply to the subject"
    [notice] = [m for m in engine.mail.to(OPERATOR_EMAIL) if request.request_id in m["Subject"]]
    text = text_of(notice)
    assert "controller.legal_name" in text and f"dsr retry {request.request_id}" in text
    assert SUBJECT_EMAIL not in readable(notice) and SUBJECT_NAME not in readable(notice)
    # The reply was not retried blindly: one attempt, then the operator was asked.
    history = await handle.fetch_history()
    scheduled = [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
                 and e.activity_task_scheduled_event_attributes.activity_type.name == "send_reply"]
    started = [e for e in history.events if e.HasField("activity_task_started_event_attributes")
               and e.activity_task_started_event_attributes.scheduled_event_id == scheduled[0].event_id]
    assert len(scheduled) == 1 and started[0].activity_task_started_event_attributes.attempt == 1
    # The systems have been changed: the request can be answered, not refused; nor has it residual data.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason="too late"))

    profile.complete = True  # the operator completed dsr.toml
    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    final = await handle.result()
    await keep_history(handle, "reply_held_then_retried")
    assert final.outcome == Outcome.FULFILLED and final.reply_held == ""
    assert templates_sent(engine, request)[-1] == "reply_access"
    trail = events(engine, request)
    assert trail.index("reply_held") < trail.index("retried") < trail.index("reply_sent")
    # The events before the reply were carried by its first try and handed to the writer when it was held (it had
    # written them: the writer's write found their keys); the operator's retry carried none. Each once, in order.
    assert trail.count("connector_done") == len(engine.connectors) and trail.count("replying") == 1
    assert trail.index("replying") < trail.index("reply_held")
    history = await handle.fetch_history()
    keyed = ("send_reply", "record_event_batch")
    summaries = [(await engine.client.data_converter.decode([e.user_metadata.summary]))[0] for e in history.events
                 if e.activity_task_scheduled_event_attributes.activity_type.name in keyed]
    kinds = [e.activity_task_scheduled_event_attributes.activity_type.name
             if e.HasField("activity_task_scheduled_event_attributes") else EventType.Name(e.event_type)
             for e in history.events]
    # Handed back once the first try had failed (held), not written beside it.
    assert kinds.index("send_reply") < kinds.index("EVENT_TYPE_ACTIVITY_TASK_FAILED") < kinds.index(
        "record_event_batch")
    assert summaries[0].startswith("reply: access; ledger: ") and summaries[0].endswith("replying")
    assert summaries[1].startswith("ledger: ") and summaries[1].endswith("replying")  # the batch handed back
    assert summaries[2:] == ["reply: access"]


@pytest.mark.slow  # real time: the worker's blocked steps are released by the test
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", residual=True), ScriptedConnector("billing")]])
async def test_the_closing_events_the_aftercare_start_could_not_carry_wait_for_the_start(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An erasure's ``reply_sent`` is still being written when it closes (its batch on its way): the aftercare's start
    carries nothing, and ``closed`` and ``aftercare_started`` are written once the aftercare is started, not beside its
    start (the ledger would say it started while nothing runs, should the start fail its local tries)."""
    reply_batch_held, reply_batch_go = threading.Event(), threading.Event()
    start_held, start_go = asyncio.Event(), asyncio.Event()
    record_batch = activities.ledger.record_batch

    def reply_batch_slow(ledger: Any, events: list[Any], **kwargs: Any) -> int:
        if activity.info().activity_type == "record_events" and "reply_sent" in [e.event for e in events]:
            reply_batch_held.set()
            assert reply_batch_go.wait(timeout=60)
        return record_batch(ledger, events, **kwargs)

    start_workflow = Client.start_workflow

    async def start_slow(client: Client, workflow: Any, *args: Any, **kwargs: Any) -> Any:
        if str(kwargs.get("id", "")).startswith("aftercare-"):
            start_held.set()
            await start_go.wait()
        return await start_workflow(client, workflow, *args, **kwargs)

    monkeypatch.setattr(activities.ledger, "record_batch", reply_batch_slow)
    monkeypatch.setattr(Client, "start_workflow", start_slow)
    request, handle = await submit(engine, "erasure")
    for _ in range(600):  # real time: nothing is skipped while no result is awaited
        if reply_batch_held.is_set() and start_held.is_set():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("never: the reply's batch on its way and the aftercare's start held together")
    reply_batch_go.set()  # reply_sent written; the start still held: closed and aftercare_started must wait
    for _ in range(40):
        await asyncio.sleep(0.05)
        written = events(engine, request)
        if "reply_sent" in written:
            break
    assert "reply_sent" in written
    # Time for a batch not waiting for the start to be written: the workflow task held open by the start (a local
    # activity) is renewed after ~8 s, and the reply's batch is then heard of.
    await asyncio.sleep(12)
    assert "aftercare_started" not in events(engine, request) and "closed" not in events(engine, request)
    start_go.set()
    assert (await handle.result()).outcome == Outcome.FULFILLED
    written = events(engine, request)
    assert written.index("reply_sent") < written.index("closed") < written.index("aftercare_started")
    assert written.count("closed") == written.count("aftercare_started") == 1
    assert (await engine.client.get_workflow_handle(aftercare_id(request.request_id)).describe()).status == (
        WorkflowExecutionStatus.RUNNING)
    markers = [(await engine.client.data_converter.decode([e.user_metadata.summary]))[0]
               for e in (await handle.fetch_history()).events if e.HasField("marker_recorded_event_attributes")]
    assert markers[-2:] == ["start aftercare", "ledger: closed, aftercare_started"]


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", residual=True), ScriptedConnector("billing")]])
async def test_residual_data_is_followed_up_with_the_operator_until_cleared(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure")
    answered = await handle.result()  # the request ends with its answer; the residual data goes to its aftercare
    assert answered.outcome == Outcome.FULFILLED and answered.aftercare == aftercare_id(request.request_id)
    assert answered.residuals == ["crm: records (ip_address) - the API cannot clear it"]
    aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = engine.client.get_workflow_handle_for(
        RequestAftercare.run, aftercare_id(request.request_id))
    for _ in range(50):
        if "operator_residual" in templates_sent(engine, request):
            break
        await asyncio.sleep(0.1)
    described = await aftercare.describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert described.typed_search_attributes.get(sa.DSR_RESIDUAL) is True
    assert described.typed_search_attributes.get(sa.DSR_KIND) == "erasure"
    assert (await aftercare.query(RequestAftercare.status)).residuals == answered.residuals
    sent = templates_sent(engine, request)
    assert sent.index("reply_erasure") < sent.index("operator_residual")
    reply = text_of(engine.mail.to(SUBJECT_EMAIL)[-1])
    # The subject is told what was not erased automatically, and that our team erases it by other means.
    assert "Non effacé automatiquement : records — données concernées : ip address" in reply
    assert "Notre équipe en a été informée" in reply
    notice = next(m for m in engine.mail.to(OPERATOR_EMAIL) if request.request_id in m["Subject"])
    text = text_of(notice)
    assert "crm: records (ip_address)" in text and f"dsr clear-residuals {request.request_id}" in text
    assert SUBJECT_EMAIL not in readable(notice) and SUBJECT_NAME not in readable(notice)

    # Nobody acts for a week: the operator is reminded, and again every week. Counted in weeks of the server's
    # clock since the aftercare began: when the request's result() wait ended, the test server may already
    # have skipped to the first reminder (see the ``time_skipping`` fixture), and CI once saw three notices.
    await engine.env.sleep(timedelta(days=7, hours=1))
    weeks = (await engine.env.get_current_time() - described.start_time) // timedelta(days=7)
    assert weeks in (1, 2)
    assert templates_sent(engine, request).count("operator_residual") == 1 + weeks
    assert "residuals_reminded" in events(engine, request)

    await aftercare.execute_update(RequestAftercare.clear_residuals,
                                   ResidualsCleared(cleared_by="operator:alice", note="IP column emptied by SQL"))
    final = await aftercare.result()
    await keep_history(aftercare, "residuals_cleared")
    assert final.residuals == [] and final.residuals_cleared
    [cleared] = [e for e in engine.ledger.events(request.request_id) if e.event == "residuals_cleared"]
    assert cleared.actor == "operator:alice" and cleared.details == {"note_length": "24"}
    assert (await aftercare.describe()).typed_search_attributes.get(sa.DSR_RESIDUAL) is False


@pytest.mark.slow
async def test_notices_are_signed_with_the_profiles_legal_name_when_no_controller_name_is_set(
    engine: Engine,
) -> None:
    _, handle = await submit(engine, "access")
    await handle.result()
    acknowledgement, reply = engine.mail.to(SUBJECT_EMAIL)
    for message in (acknowledgement, reply):  # signed alike, the notice by the worker, the reply by the profile
        assert "Kestio SAS" in text_of(message)
        assert message["From"].addresses[0].display_name == "Kestio SAS"


# --- what a request stored on the object storage, deleted when it no longer has a purpose -------------


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1), ScriptedConnector("billing")]])
async def test_a_refused_request_deletes_its_partial_export_and_its_attachments(engine: Engine) -> None:
    request, handle = await submit(engine, "access")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    exports, attachments = exports_of(engine.settings), attachments_of(engine.settings)
    assert [d.system for d in exports.datasets(request.request_id)] == ["billing"]  # half an export
    attachments.save(request.request_id, "id.pdf", "application/pdf", b"%PDF-1.4 identity card")

    await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason="Demande manifestement infondée."))
    final = await handle.result()
    assert final.outcome == Outcome.REFUSED
    assert not exports.holds(request.request_id) and attachments.list(request.request_id) == []
    assert events(engine, request)[-3:] == ["exports_deleted", "attachments_deleted", "closed"]


@pytest.mark.slow
async def test_a_fulfilled_erasure_deletes_the_subjects_earlier_downloadable_exports(engine: Engine) -> None:
    access, access_handle = await submit(engine, "access")
    await wait_for_stage(engine, access_handle, Stage.CLOSED)  # replied; its link works for 7 more days
    exports = exports_of(engine.settings)
    assert exports.objects.exists(exports.bundle_key(access.request_id))
    other, other_handle = await submit(engine, "rectification", changes={"city": "Lyon"})  # not an export: kept
    await wait_for_stage(engine, other_handle, Stage.CLOSED)
    exports.for_request(other.request_id).open("crm", "report", provided=False).close()

    erasure, erasure_handle = await submit(engine, "erasure")
    await wait_for_stage(engine, erasure_handle, Stage.CLOSED)
    assert not exports.holds(access.request_id), "the bundle and the records went with the erasure"
    assert exports.holds(other.request_id)
    assert not (await status(access_handle)).exports_deleted  # its own link had not expired: the erasure did it
    [deleted] = [e for e in engine.ledger.events(access.request_id) if e.event == "exports_deleted"]
    assert deleted.details == {"erasure": erasure.request_id}
    [earlier] = [e for e in engine.ledger.events(erasure.request_id) if e.event == "earlier_exports_deleted"]
    assert earlier.details == {"requests": "1"}
    for handle in (access_handle, other_handle):
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")


@pytest.mark.slow
async def test_confirmation_must_be_one_the_identity_policy_allows(engine: Engine) -> None:
    """Issue 12 finding 1: a document request is never confirmed by the emailed link or code (none was sent),
    an erasure never by a code; the operator's review (``dsr confirm-identity``) still confirms."""
    from dsr.domain.model import IdentityProof

    def by_subject(proof: IdentityProof) -> IdentityConfirmation:
        return IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject", proof=proof)

    request, handle = await submit(engine, "erasure", identity=IdentityMethod.DOCUMENT)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    for refused in (by_subject(IdentityProof.CODE), by_subject(IdentityProof.LINK),
                    IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="operator:alice"),
                    IdentityConfirmation(method=IdentityMethod.TRUSTED, confirmed_by="operator:alice")):
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update(DataSubjectRequest.confirm_identity, refused)
        cause = caught.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "IdentityNotAllowed", refused
    assert not (await status(handle)).identity_confirmed
    await handle.execute_update(DataSubjectRequest.confirm_identity, IdentityConfirmation(
        method=IdentityMethod.DOCUMENT, confirmed_by="operator:alice"))
    assert (await status(handle)).identity_confirmed
    await handle.result()
    [confirmed] = [e for e in engine.ledger.events(request.request_id) if e.event == "identity_confirmed"]
    assert confirmed.details == {"method": "document", "proof": "review"} and confirmed.actor == "operator:alice"

    # An erasure under the email policy: the link confirms, a code never does.
    _, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(DataSubjectRequest.confirm_identity, by_subject(IdentityProof.CODE))
    assert "signed link only" in str(caught.value.cause)
    await handle.execute_update(DataSubjectRequest.confirm_identity, by_subject(IdentityProof.LINK))
    assert (await handle.result()).identity_confirmed

    # An access request under the email policy takes the code.
    _, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await handle.execute_update(DataSubjectRequest.confirm_identity, by_subject(IdentityProof.CODE))
    assert (await status(handle)).identity_confirmed

"""An SMTP outage on the time-skipping server: requests go on without their acknowledgement, which is shown as
pending and delivered once when the mail server is back; mail steps heartbeat, so a lost worker costs seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, time, timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import ActivityTaskScheduledEventAttributes
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from dsr.domain.aftercare import aftercare_id
from dsr.domain.model import IdentityMethod, Outcome, RequestStatus, Retry, Stage
from tests.harness import ScriptedConnector, keep_history
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    Engine,
    events,
    status,
    submit,
    templates_sent,
    until,
    wait_for_event,
    wait_for_stage,
)
from workflows import search_attributes as sa
from workflows.contract import STEP_HEARTBEAT
from workflows.request import ACK_LEAD, DataSubjectRequest


async def mail_pending_attribute(handle: WorkflowHandle) -> int | None:
    return (await handle.describe()).typed_search_attributes.get(sa.DSR_MAIL_PENDING)


async def test_smtp_down_at_submission_does_not_hold_the_request(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="activities.notices")
    engine.mail.stop()  # nothing listens on the SMTP port
    request, handle = await submit(engine, "access")

    # Identity (trusted) and the fan-out run; the reply waits for the acknowledgement to go first.
    waiting = await until(handle, lambda s: s.stage == Stage.REPLYING and s.mail_pending == ["acknowledgement"],
                          "replying with the acknowledgement pending")
    assert [c.state.value for c in waiting.connectors] == ["done", "done"]
    assert await mail_pending_attribute(handle) == 1
    await wait_for_event(engine, request, "notice_deferred")  # the ledger's events trail the workflow's steps
    assert engine.mail.messages == []

    engine.mail.start()
    final: RequestStatus = await handle.result()  # time skips: the retry finds the server back
    await keep_history(handle, "acknowledgement_after_smtp_outage")

    assert final.stage == Stage.CLOSED and final.mail_pending == []
    assert await mail_pending_attribute(handle) == 0
    # Delivered once, and before the reply.
    assert templates_sent(engine, request) == ["acknowledgement", "reply_access"]
    to_subject = engine.mail.to(SUBJECT_EMAIL)
    assert len(to_subject) == 2
    assert to_subject[0]["Message-ID"] != to_subject[1]["Message-ID"]
    assert request.request_id in to_subject[0]["Subject"] and "bien reçu" in to_subject[0]["Subject"]

    # The worker said it once per outage, whatever the number of attempts, without personal data.
    down = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(down) == 1 and len(back) == 1, (down, back)
    assert f"127.0.0.1:{engine.mail.port}" in down[0]
    assert SUBJECT_EMAIL not in down[0] and OPERATOR_EMAIL not in down[0]


async def test_identity_is_asked_while_the_acknowledgement_waits_for_smtp(engine: Engine) -> None:
    engine.mail.stop()
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)

    state = await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY and "acknowledgement" in s.mail_pending,
                        "awaiting identity with the acknowledgement pending")
    assert not state.identity_confirmed
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "mail not delivered yet" in metadata.current_details and "acknowledgement" in metadata.current_details

    engine.mail.start()
    # Skip the retry backoff; both emails go, the acknowledgement first and once.
    for _ in range(50):
        await engine.env.sleep(timedelta(minutes=1))
        if len(engine.mail.to(SUBJECT_EMAIL)) >= 2 and not (await status(handle)).mail_pending:
            break
    sent = templates_sent(engine, request)
    assert sent[:2] == ["acknowledgement", "identity_request"], sent
    assert sent.count("acknowledgement") == 1
    assert len(engine.mail.to(SUBJECT_EMAIL)) == 2
    assert (await status(handle)).mail_pending == []
    assert await mail_pending_attribute(handle) == 0
    await handle.terminate("test done")


@pytest.mark.slow
async def test_mail_steps_heartbeat_so_a_lost_worker_costs_seconds(engine: Engine) -> None:
    _, handle = await submit(engine, "access")
    await handle.result()
    history = await handle.fetch_history()
    scheduled: dict[str, list[ActivityTaskScheduledEventAttributes]] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            scheduled.setdefault(attrs.activity_type.name, []).append(attrs)
    for name in ("send_reply", "send_notice"):
        assert scheduled[name], name
        for attrs in scheduled[name]:
            assert attrs.heartbeat_timeout.ToTimedelta() == STEP_HEARTBEAT, name
    for attrs in scheduled["record_events"]:
        assert attrs.start_to_close_timeout.ToTimedelta() == timedelta(seconds=10)


@pytest.mark.slow
async def test_the_final_reply_counts_as_pending_mail_until_the_smtp_server_takes_it(engine: Engine) -> None:
    engine.mail.stop()
    request, handle = await submit(engine, "access")
    await until(handle, lambda s: s.stage == Stage.REPLYING and s.mail_pending == ["acknowledgement"],
                "replying with the acknowledgement pending")
    # Past ACK_LEAD the reply goes on its own; its first try fails too, so it counts like a notice.
    await engine.env.sleep(ACK_LEAD + timedelta(minutes=1))
    state = await until(handle, lambda s: sorted(s.mail_pending) == ["acknowledgement", "reply_access"],
                        "the reply pending beside the acknowledgement")
    assert state.stage == Stage.REPLYING
    assert await mail_pending_attribute(handle) == 2
    deferred = [e.details["template"] for e in engine.ledger.events(request.request_id) if e.event == "notice_deferred"]
    assert sorted(deferred) == ["acknowledgement", "reply_access"]

    engine.mail.start()
    final: RequestStatus = await handle.result()
    assert final.stage == Stage.CLOSED and final.mail_pending == []
    assert await mail_pending_attribute(handle) == 0
    # Once each: the retried reply is the same email (one key, one Message-ID).
    assert sorted(templates_sent(engine, request)) == ["acknowledgement", "reply_access"]
    assert len(engine.mail.to(SUBJECT_EMAIL)) == 2


@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1),
                                         ScriptedConnector("billing")]])
async def test_a_deadline_notice_held_by_the_mail_server_does_not_hold_the_closing_events(engine: Engine) -> None:
    """The closing events go with the aftercare's start (one local activity), at the close, not behind a deadline
    notice the mail server is holding back (it may do so for hours); the aftercare starts then too, while the run
    still waits for that notice before it ends."""
    request, handle = await submit(engine, "access")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    await until(handle, lambda s: "operator_attention" not in s.mail_pending
                and "operator_attention" in templates_sent(engine, request), "the operator told of the failure")

    # The operator's mailbox is full from now on: the D-7 reminder is deferred, and retried.
    engine.mail.deferred.add(OPERATOR_EMAIL)
    reminder_due = datetime.combine(request.deadlines.normal.due - timedelta(days=5), time(12), tzinfo=UTC)
    await engine.env.sleep(reminder_due - await engine.env.get_current_time())
    await until(handle, lambda s: "operator_reminder" in s.mail_pending, "the D-7 reminder deferred")

    # The operator retries: the request is answered and closes while the reminder is still on its way.
    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    await wait_for_event(engine, request, "closed")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert "operator_reminder" in (await status(handle)).mail_pending
    written = events(engine, request)
    assert written.index("reply_sent") < written.index("closed") < written.index("aftercare_started")
    # The aftercare runs already (the test server may even have skipped to the link's expiry meanwhile: the
    # reminder's retries are timers on the server).
    aftercare = engine.client.get_workflow_handle(aftercare_id(request.request_id))
    for _ in range(200):  # started before the events were written: listed by the server a moment later, at most
        with contextlib.suppress(RPCError):
            if (await aftercare.describe()).status in (WorkflowExecutionStatus.RUNNING,
                                                       WorkflowExecutionStatus.COMPLETED):
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the aftercare never started while the reminder was on its way")

    # The mailbox is emptied: the reminder goes, then the run ends.
    engine.mail.deferred.clear()
    final: RequestStatus = await handle.result()
    assert final.stage == Stage.CLOSED and final.outcome == Outcome.FULFILLED and final.mail_pending == []
    written = events(engine, request)
    assert written.count("closed") == written.count("aftercare_started") == 1
    assert templates_sent(engine, request).count("operator_reminder") == 1


@pytest.mark.slow
async def test_a_reply_failing_after_writing_the_events_it_carried_leaves_each_in_the_ledger_once(
    engine: Engine,
) -> None:
    # The acknowledgement goes out while a connector waits out a 429; the mail server stops before the fan-out
    # ends, so the reply's first try (carrying the events noted before it) fails on SMTP after writing them.
    late = engine.connectors[0]
    assert isinstance(late, ScriptedConnector)
    late.transient_failures, late.retry_after = 1, 3.0
    request, handle = await submit(engine, "access")
    for _ in range(200):
        if "acknowledgement" in templates_sent(engine, request):
            break
        await asyncio.sleep(0.05)
    assert "acknowledgement" in templates_sent(engine, request), "the acknowledgement was not sent within 10 s"
    engine.mail.stop()
    state = await until(handle, lambda s: "reply_access" in s.mail_pending, "the reply's first try failed")
    assert state.stage == Stage.REPLYING
    engine.mail.start()
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED and templates_sent(engine, request).count("reply_access") == 1

    # It could not know whether the first try wrote them: the request handed the batch to its writer, which wrote it
    # under the batch's own key (so nothing twice), before the reply's deferral.
    history = (await handle.fetch_history()).events
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history]
    assert scheduled.count("record_event_batch") == 1
    # Handed back after the first try failed, not written beside it.
    failed = next(n for n, e in enumerate(history) if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
                  and e.activity_task_failed_event_attributes.scheduled_event_id == next(
                      x.event_id for x in history
                      if x.activity_task_scheduled_event_attributes.activity_type.name == "send_reply"))
    assert failed < scheduled.index("record_event_batch")
    carried = next(e for e in history if e.activity_task_scheduled_event_attributes.activity_type.name == "send_reply")
    summary = (await engine.client.data_converter.decode([carried.user_metadata.summary]))[0]
    assert summary.startswith("reply: access; ledger: ") and summary.endswith("replying")
    written = [e.event if e.event != "notice_deferred" else f"deferred {e.details['template']}"
               for e in engine.ledger.events(request.request_id)]
    assert written.count("connector_done") == len(engine.connectors) and written.count("replying") == 1
    assert written.index("replying") < written.index("deferred reply_access") < written.index("reply_sent")

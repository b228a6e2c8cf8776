"""One subject, one thing at a time: requests of one person take turns in their systems, in order of receipt.

Real Temporal (the time-skipping test server, fresh per test), the real intake service (which sets the
subject's blind index), the real worker; the connectors are the neighbours: each call waits at a gate the
test opens, and records when it started and ended, so overlap and order are observed, not assumed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from temporalio import activity, workflow
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import activities.subjects
from connectors.base import ExportJob, OperationJob
from dsr.config.settings import Settings
from dsr.domain.aftercare import aftercare_id
from dsr.domain.model import (
    ConnectorOutcome,
    IdentityMethod,
    Outcome,
    RequestStatus,
    Retry,
    Stage,
    SubjectQueueStatus,
    SubjectTurn,
    TurnAsk,
    TurnRelease,
    Withdrawal,
    subject_queue_id,
)
from dsr.store.turns import SubjectTurns
from intake.service import IntakeService
from intake.submission import Submission, prepare, start
from tests.harness import ScriptedConnector, keep_history
from tests.workflows.support import SUBJECT_EMAIL, SUBJECT_NAME, Engine, status
from workflows.request import DataSubjectRequest

OTHER_EMAIL = "paul.durand@example.org"


@dataclass
class Span:
    request_id: str
    connector: str
    started: float
    ended: float | None = None


@dataclass
class GatedConnector(ScriptedConnector):
    """A scripted connector whose calls wait until the test opens the request's gate (shared by connectors)."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    held: asyncio.Event | None = None  # when set by a test, this connector's calls also wait for it

    async def _through_gate(self, request_id: str) -> Span:
        span = Span(request_id, self.name, time.monotonic())
        self.spans.append(span)
        await self.gates.setdefault(request_id, asyncio.Event()).wait()
        if self.held is not None:
            await self.held.wait()
        return span

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        span = await self._through_gate(job.request_id)
        try:
            return await super().export(job)
        finally:
            span.ended = time.monotonic()

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        span = await self._through_gate(job.request_id)
        try:
            return await super().erase(job)
        finally:
            span.ended = time.monotonic()


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    gates: dict[str, asyncio.Event] = {}
    return [GatedConnector("crm", gates=gates), GatedConnector("billing", gates=gates)]


def gate(engine: Engine, request_id: str) -> asyncio.Event:
    first = engine.connectors[0]
    assert isinstance(first, GatedConnector)
    return first.gates.setdefault(request_id, asyncio.Event())


def spans(engine: Engine, request_id: str) -> list[Span]:
    return [s for c in engine.connectors if isinstance(c, GatedConnector) for s in c.spans
            if s.request_id == request_id]


def trusted(engine: Engine) -> Settings:
    """The engine's settings, with identity taken as proven (the API's authenticated callers)."""
    return replace(engine.settings, task_queue=engine.task_queue,
                   policy=replace(engine.settings.policy, identity=IdentityMethod.TRUSTED))


async def intake(engine: Engine, kind: str, *, email: str = SUBJECT_EMAIL,
                 received_at: datetime | None = None) -> WorkflowHandle:
    """Submit through the intake service, the one door every channel takes (it sets the subject key)."""
    service = IntakeService(engine.client, trusted(engine), engine.ledger)
    accepted = await service.submit(Submission(kind=kind, email=email, name=SUBJECT_NAME, channel="api",
                                               language="fr", received_at=received_at), rate_limit=False)
    assert not accepted.attached
    return engine.client.get_workflow_handle_for(DataSubjectRequest.run, accepted.reference)


async def result(engine: Engine, handle: WorkflowHandle) -> RequestStatus:
    """The request's final status; the test server skips time meanwhile (link expiry, deadlines). Through a
    plain handle: one from ``start_workflow`` unlocks time skipping by itself, and twice is one too many."""
    plain = engine.client.get_workflow_handle_for(DataSubjectRequest.run, handle.id)
    async with engine.env.time_skipping_unlocked():  # type: ignore[attr-defined]
        return await plain.result()


async def eventually(check: Callable[[], Awaitable[object]], what: str, *, tries: int = 200) -> None:
    """Poll in real time (no time is skipped while the test does not wait on a result)."""
    for _ in range(tries):
        try:
            if await check():
                return
        except RPCError:
            pass  # the workflow's first task has not run yet
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def holding(engine: Engine, handle: WorkflowHandle) -> None:
    """Until every connector of the request has started (it holds the subject's turn)."""
    async def started() -> bool:
        return len(spans(engine, handle.id)) == len(engine.connectors)
    try:
        await eventually(started, f"{handle.id} in the systems")
    except AssertionError:
        for e in (await handle.fetch_history()).events:
            print("DEBUG", e.event_type, str(e)[:600].replace("\n", " "))
        raise


async def waiting_for(handle: WorkflowHandle, holder: str) -> None:
    async def says() -> bool:
        return (await status(handle)).waiting_for == holder
    await eventually(says, f"{handle.id} waiting for {holder}")


def queue_id(engine: Engine, email: str = SUBJECT_EMAIL) -> str:
    return subject_queue_id(engine.ledger.subject_key(email))


async def queue_status(engine: Engine, email: str = SUBJECT_EMAIL) -> SubjectQueueStatus:
    """The person's line as the ledger's database holds it (what every worker reads)."""
    return SubjectTurns(engine.ledger.engine).status(queue_id(engine, email))


def stored_lines(engine: Engine) -> list[tuple[str, str]]:
    """The rows of ``subject_turns``: (key, line)."""
    with engine.ledger.engine.connect() as connection:
        return [(key, line) for key, line in connection.execute(text("SELECT key, line FROM subject_turns"))]


async def details(handle: WorkflowHandle) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


def one_after_the_other(engine: Engine, first: str, second: str) -> None:
    done = spans(engine, first)
    later = spans(engine, second)
    assert done and later
    assert all(s.ended is not None for s in done)
    assert max(s.ended for s in done if s.ended is not None) <= min(s.started for s in later), \
        "the two requests worked in the person's systems at the same time"


async def test_an_erasure_waits_for_the_access_of_the_same_person_and_says_so(engine: Engine) -> None:
    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)

    # While it waits: still processing, nothing done in the systems, and staff are told whom it waits for.
    waiting = await status(erasure)
    assert waiting.stage == Stage.PROCESSING and not spans(engine, erasure.id)
    assert f"waiting for {access.id}** of the same person" in await details(erasure)
    assert await queue_status(engine) == SubjectQueueStatus(holder=access.id, waiting=[erasure.id])
    shown = await dsr_status(engine, erasure.id)
    assert f"waiting for {access.id} of the same person" in shown

    gate(engine, access.id).set()
    await holding(engine, erasure)
    gate(engine, erasure.id).set()
    assert (await result(engine, erasure)).outcome == Outcome.FULFILLED
    assert (await result(engine, access)).outcome == Outcome.FULFILLED
    one_after_the_other(engine, access.id, erasure.id)
    # The export was made before the erasure: it holds the records (the erasure then deleted them).
    assert all(c.outcome and c.outcome.counts == {"exported": 3} for c in (await status(access)).connectors)

    turns = {r: e.details for r in (access.id, erasure.id) for e in engine.ledger.events(r)
             if e.event == "turn_taken"}
    assert turns == {access.id: {"waited_for": ""}, erasure.id: {"waited_for": access.id}}
    # The ask and the give-back are local activities (markers in the history, no activity task); the events noted
    # before the ask were written by it (no ledger activity of their own), in their place.
    locals_of: dict[str, list[str]] = {}
    for handle in (access, erasure):
        history = (await handle.fetch_history()).events
        scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history]
        assert "ask_subject_turn" not in scheduled and "release_subject_turn" not in scheduled
        locals_of[handle.id] = [(await engine.client.data_converter.decode([e.user_metadata.summary]))[0]
                                for e in history if e.HasField("marker_recorded_event_attributes")]
        assert locals_of[handle.id][:2] == ["ledger: request recorded",
                                            "subject's turn: ask; ledger: identity_confirmed, processing"]
        written = [e.event for e in engine.ledger.events(handle.id)]
        assert written[:3] == ["received", "identity_confirmed", "processing"]
        assert written.count("processing") == 1 and written.index("turn_taken") > 2
    # Granted at once, the access had its fan-out's plan with the answer; the erasure, granted later by signal,
    # planned in a local activity when its turn came.
    # The access's closing events go with its give-back (one local activity), in the task
    # starting its aftercare.
    assert locals_of[access.id][2:] == [
        "subject's turn: give back; ledger: reply_sent, closed, aftercare_started; start aftercare"]
    # The erasure's give-back carries its ``closed`` (its ``reply_sent`` went while it deleted earlier exports).
    assert locals_of[erasure.id][2:] == ["plan erasure", "subject's turn: give back; ledger: closed"]
    assert {c.connector for c in (await status(access)).connectors} == {c.name for c in engine.connectors}
    # Idle again: nobody is in the person's line.
    assert stored_lines(engine) == []
    await keep_history(erasure, "subject_order_waited")


@pytest.mark.slow
async def test_the_earliest_received_goes_first_whatever_asked_first(engine: Engine) -> None:
    now = datetime.now(UTC)
    first = await intake(engine, "access")
    await holding(engine, first)
    later = await intake(engine, "erasure")
    await waiting_for(later, first.id)
    # A letter received an hour before, entered now by staff: it asks last but was received earlier.
    earlier = await intake(engine, "portability", received_at=now - timedelta(hours=1))
    await waiting_for(earlier, first.id)
    assert (await queue_status(engine)).waiting == [earlier.id, later.id]

    gate(engine, first.id).set()
    await holding(engine, earlier)
    await waiting_for(later, earlier.id)
    gate(engine, earlier.id).set()
    await holding(engine, later)
    gate(engine, later.id).set()
    for handle in (first, earlier, later):
        assert (await result(engine, handle)).outcome == Outcome.FULFILLED
    one_after_the_other(engine, first.id, earlier.id)
    one_after_the_other(engine, earlier.id, later.id)


@pytest.mark.slow
async def test_two_people_are_served_at_the_same_time(engine: Engine) -> None:
    jeanne = await intake(engine, "erasure")
    paul = await intake(engine, "erasure", email=OTHER_EMAIL)
    await holding(engine, jeanne)
    await holding(engine, paul)  # both in the systems while neither gate is open
    assert queue_id(engine) != queue_id(engine, OTHER_EMAIL)
    assert len(stored_lines(engine)) == 2
    gate(engine, jeanne.id).set()
    gate(engine, paul.id).set()
    assert (await result(engine, jeanne)).outcome == (await result(engine, paul)).outcome == Outcome.FULFILLED


@pytest.mark.slow
async def test_a_request_waiting_for_its_turn_can_be_withdrawn_and_leaves_the_queue(engine: Engine) -> None:
    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)

    await erasure.execute_update(DataSubjectRequest.withdraw, Withdrawal(requested_by="operator"))
    assert (await result(engine, erasure)).outcome == Outcome.WITHDRAWN
    async def left() -> bool:
        return await queue_status(engine) == SubjectQueueStatus(holder=access.id, waiting=[])
    await eventually(left, "the withdrawn request left the queue")
    gate(engine, access.id).set()
    assert (await result(engine, access)).outcome == Outcome.FULFILLED
    assert not spans(engine, erasure.id), "a withdrawn request never touched the systems"


@pytest.mark.slow
async def test_an_erasure_needing_an_operator_gives_the_turn_back_and_asks_again_on_retry(engine: Engine) -> None:
    crm = engine.connectors[0]
    assert isinstance(crm, GatedConnector)
    crm.permanent_failures = 1  # the erasure fails in the CRM: needs_attention until an operator retries
    # The CRM fails once the billing system's erasure is done and in the history: otherwise the billing's
    # ``connector_done`` may come while ``connector_failed`` is being written, in a batch of its own still on its way
    # when the turn is given back (which then carries nothing: the events come after that batch).
    crm.held = asyncio.Event()
    erasure = await intake(engine, "erasure")
    gate(engine, erasure.id).set()

    async def billing_done() -> bool:
        events = (await erasure.fetch_history()).events
        scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name for e in events
                     if e.HasField("activity_task_scheduled_event_attributes")}
        return any(scheduled[e.activity_task_completed_event_attributes.scheduled_event_id] == "run_connector"
                   for e in events if e.HasField("activity_task_completed_event_attributes"))
    await eventually(billing_done, "the billing system's erasure done")
    crm.held.set()
    crm.held = None

    async def needs_attention() -> bool:
        return (await status(erasure)).stage == Stage.NEEDS_ATTENTION
    await eventually(needs_attention, "erasure needs attention")
    # Meanwhile the person's access request is not blocked for the days an operator may take.
    access = await intake(engine, "access")
    await holding(engine, access)
    await erasure.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator"))
    await waiting_for(erasure, access.id)  # the retry asks again, behind the access now in the systems
    gate(engine, access.id).set()
    assert (await result(engine, access)).outcome == Outcome.FULFILLED
    assert (await result(engine, erasure)).outcome == Outcome.FULFILLED
    crm_calls = [s for s in spans(engine, erasure.id) if s.connector == "crm"]
    access_spans = spans(engine, access.id)
    assert max(s.ended or 0 for s in access_spans) <= crm_calls[-1].started
    # The give-back at needs_attention carried the event noted before it (a local activity already on its way: no
    # batch of its own), written after the line was released; the ledger keeps each event once, in order.
    markers = [(await engine.client.data_converter.decode([e.user_metadata.summary]))[0]
               for e in (await erasure.fetch_history()).events if e.HasField("marker_recorded_event_attributes")]
    assert "subject's turn: give back; ledger: needs_attention" in markers
    written = [e.event for e in engine.ledger.events(erasure.id)]
    assert written.count("needs_attention") == written.count("retried") == written.count("closed") == 1
    assert written.count("turn_taken") == 2
    assert written.index("connector_failed") < written.index("needs_attention") < written.index("retried") < (
        len(written) - 1 - written[::-1].index("turn_taken")) < written.index("reply_sent") < written.index("closed")


async def late_commit_after_release(engine: Engine) -> tuple[WorkflowHandle, SubjectTurn]:
    """An erasure that gave its turn back (needs_attention: it asks for nothing), then the late commit of its first
    ask (a timed-out attempt's transaction) puts it back as holder; answers the erasure and that grant."""
    crm = engine.connectors[0]
    crm.permanent_failures = 1
    erasure = await intake(engine, "erasure")
    gate(engine, erasure.id).set()

    async def needs_attention() -> bool:
        return (await status(erasure)).stage == Stage.NEEDS_ATTENTION and not stored_lines(engine)
    await eventually(needs_attention, "erasure needs attention, the line empty")
    stored = engine.ledger.get_request(erasure.id)
    assert stored is not None
    answer, _ = SubjectTurns(engine.ledger.engine).ask(
        queue_id(engine), TurnAsk(request_id=erasure.id, received_at=stored.received_at, round=1))
    assert answer == SubjectTurn(holder=erasure.id, round=1)
    return erasure, answer


async def test_a_turn_granted_after_its_release_is_given_back(engine: Engine) -> None:
    """An ask's late retry can commit after the request gave its turn back (a timed-out attempt's transaction): the
    line then names a holder that no longer asks. Told it holds, the request gives that round back."""
    erasure, answer = await late_commit_after_release(engine)
    await erasure.signal(DataSubjectRequest.subject_turn, answer)  # the grant its activity then signals

    async def given_back() -> bool:
        return not stored_lines(engine)
    await eventually(given_back, "the stray turn given back")
    # The person's next request is not held back by it.
    access = await intake(engine, "access")
    await holding(engine, access)
    gate(engine, access.id).set()
    assert (await result(engine, access)).outcome == Outcome.FULFILLED


async def test_a_turn_granted_after_its_release_and_never_told_is_given_back_when_the_next_one_asks(
        engine: Engine) -> None:
    """The same late commit, with nobody told (the attempt that committed it had timed out, so its signal never
    went): the person's next request finds the turn held by a request still running, which is told that it holds
    and gives it back at once, rather than at the next request's hourly check."""
    await late_commit_after_release(engine)

    access = await intake(engine, "access")
    await holding(engine, access)  # no hour passes here: without the reminder this waits for ever
    gate(engine, access.id).set()
    assert (await result(engine, access)).outcome == Outcome.FULFILLED


async def test_a_run_told_it_holds_a_later_round_than_it_asked_keeps_the_place(engine: Engine) -> None:
    """A run reset to before its asks asks round 1 again while the line keeps the request's place under the earlier
    run's later round (an ask of an earlier round changes nothing, and is answered: held). Told by the next ask that
    it holds that later round, the run takes the place as its own: it keeps the turn while it works, and gives back
    that round at the end."""
    access = await intake(engine, "access")
    await holding(engine, access)
    stored = engine.ledger.get_request(access.id)
    assert stored is not None
    turns = SubjectTurns(engine.ledger.engine)
    # The state a reset leaves: the line holds the request under round 3; this run asked round 1.
    turns.ask(queue_id(engine), TurnAsk(request_id=access.id, received_at=stored.received_at, round=3))
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    assert await queue_status(engine) == SubjectQueueStatus(holder=access.id, waiting=[erasure.id])
    gate(engine, access.id).set()
    await holding(engine, erasure)
    gate(engine, erasure.id).set()
    assert (await result(engine, erasure)).outcome == Outcome.FULFILLED
    one_after_the_other(engine, access.id, erasure.id)
    assert stored_lines(engine) == []


@pytest.mark.slow
async def test_an_access_needing_an_operator_keeps_the_turn_until_its_reply(engine: Engine) -> None:
    """A later erasure would delete what the access exported before its bundle is built: it waits."""
    crm = engine.connectors[0]
    crm.permanent_failures = 1
    access = await intake(engine, "access")
    gate(engine, access.id).set()

    async def needs_attention() -> bool:
        return (await status(access)).stage == Stage.NEEDS_ATTENTION
    await eventually(needs_attention, "access needs attention")
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    await access.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator"))

    async def answered() -> bool:
        return (await status(access)).stage == Stage.CLOSED
    await eventually(answered, "access answered")
    await holding(engine, erasure)  # only once the access reply is out
    gate(engine, erasure.id).set()
    assert (await result(engine, erasure)).outcome == Outcome.FULFILLED
    assert (await result(engine, access)).outcome == Outcome.FULFILLED
    access_spans, erasure_spans = spans(engine, access.id), spans(engine, erasure.id)
    assert max(s.ended or 0 for s in access_spans) <= min(s.started for s in erasure_spans)


@pytest.mark.slow
async def test_a_cancellation_of_the_holder_at_work_in_the_systems_is_refused_and_it_keeps_the_turn(
    engine: Engine,
) -> None:
    # Cancelling from the UI while connectors run would leave the systems half-changed: refused, so the person's
    # next request still waits for this one's answer.
    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    await access.cancel()
    async def refused() -> bool:
        return bool((await status(access)).cancellation_refused)
    await eventually(refused, "the cancellation refused")
    assert await queue_status(engine) == SubjectQueueStatus(holder=access.id, waiting=[erasure.id])
    gate(engine, access.id).set()
    await holding(engine, erasure)
    gate(engine, erasure.id).set()
    assert (await result(engine, erasure)).outcome == Outcome.FULFILLED
    assert (await result(engine, access)).outcome == Outcome.FULFILLED
    one_after_the_other(engine, access.id, erasure.id)


@pytest.mark.slow
async def test_a_request_waiting_for_its_turn_cancelled_from_the_ui_is_withdrawn_and_leaves_the_queue(
    engine: Engine,
) -> None:
    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    await erasure.cancel()  # nothing done in the systems yet: taken as a withdrawal by staff
    assert (await result(engine, erasure)).outcome == Outcome.WITHDRAWN
    assert (await erasure.describe()).status == WorkflowExecutionStatus.COMPLETED
    async def left() -> bool:
        return await queue_status(engine) == SubjectQueueStatus(holder=access.id, waiting=[])
    await eventually(left, "the withdrawn request left the queue")
    gate(engine, access.id).set()
    assert (await result(engine, access)).outcome == Outcome.FULFILLED
    assert not spans(engine, erasure.id)


@pytest.mark.slow
async def test_the_next_request_of_the_person_waits_for_the_answer_not_for_the_download_link(
    engine: Engine,
) -> None:
    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    gate(engine, access.id).set()
    gate(engine, erasure.id).set()
    erased = await result(engine, erasure)
    answered = await status(access)
    assert erased.outcome == answered.outcome == Outcome.FULFILLED and answered.link_expires_at is not None
    # The access request ended with its answer and released the turn; its link (7 days) lives in its aftercare:
    # the erasure ran and ended long before that link expired.
    access_run, erasure_run = await access.describe(), await erasure.describe()
    assert access_run.status == erasure_run.status == WorkflowExecutionStatus.COMPLETED
    assert erasure_run.close_time is not None
    assert erasure_run.close_time < answered.link_expires_at - timedelta(days=6)
    one_after_the_other(engine, access.id, erasure.id)


@pytest.mark.slow
async def test_a_terminated_holder_is_released_by_the_hourly_check(engine: Engine) -> None:
    # The holder is terminated between two attempts of its connectors (rate limited, retry in 10 minutes):
    # the test server skips no time while an activity task of a terminated workflow is still out.
    for connector in engine.connectors:
        connector.transient_failures, connector.retry_after = 1, 600.0
    access = await intake(engine, "access")
    gate(engine, access.id).set()

    async def between_attempts() -> bool:
        pending = (await access.describe()).raw_description.pending_activities
        return len(pending) == len(engine.connectors) and all(p.attempt == 2 for p in pending)
    await eventually(between_attempts, "the access rate limited, between attempts")
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    await access.terminate(reason="test: killed by hand")  # no finally block runs: nothing is released

    await engine.env.sleep(timedelta(minutes=30))
    assert (await queue_status(engine)).holder == access.id  # not checked yet: the check is hourly
    assert (await status(erasure)).waiting_for == access.id
    assert not spans(engine, erasure.id)
    # Open from now on: its connector calls end at once (time is skipped only while no call is open).
    gate(engine, erasure.id).set()
    await engine.env.sleep(timedelta(minutes=45))
    # The check found the holder gone and granted the next.
    assert (await result(engine, erasure)).outcome == Outcome.FULFILLED
    assert len(spans(engine, erasure.id)) == len(engine.connectors)
    turns = [e.details for e in engine.ledger.events(erasure.id) if e.event == "turn_taken"]
    assert turns == [{"waited_for": access.id}]
    await keep_history(erasure, "waited_for_a_terminated_holder")


async def test_the_line_carries_no_personal_data_and_goes_once_nobody_is_in_it(engine: Engine) -> None:
    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    key = engine.ledger.subject_key(SUBJECT_EMAIL)
    [(row_key, line)] = stored_lines(engine)
    assert row_key == f"subject-{key[:32]}"
    assert access.id in line and erasure.id in line
    for personal in (SUBJECT_EMAIL, SUBJECT_NAME, "jeanne", "martin", "example.org"):
        assert personal.lower() not in (row_key + line).lower()
    gate(engine, access.id).set()
    gate(engine, erasure.id).set()
    await result(engine, access)
    await result(engine, erasure)
    assert stored_lines(engine) == []


async def test_a_request_without_a_subject_key_does_not_queue(engine: Engine) -> None:
    # An input made without the ledger's blind index carries none.
    request = prepare(Submission(kind="erasure", email=SUBJECT_EMAIL, name=SUBJECT_NAME, channel="api"),
                      trusted(engine), now=await engine.env.get_current_time())
    assert request.subject_key == ""
    handle = await start(engine.client, request, task_queue=engine.task_queue)
    await holding(engine, handle)
    gate(engine, handle.id).set()
    assert (await result(engine, handle)).outcome == Outcome.FULFILLED
    assert "turn_taken" not in [e.event for e in engine.ledger.events(handle.id)]
    assert stored_lines(engine) == []


# --- the activities alone, with stand-in requests ---------------------------------------------------------


@workflow.defn(name="TurnTaker")
class TurnTaker:
    """Stands in for a request: records what it is told of the turn (runs until the test ends it)."""

    def __init__(self) -> None:
        self.told: list[str] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal
    def subject_turn(self, turn: SubjectTurn) -> None:
        self.told.append(f"{turn.holder}#{turn.round}")

    @workflow.query
    def heard(self) -> list[str]:
        return self.told


async def heard(taker: WorkflowHandle, expected: list[str]) -> None:
    async def check() -> bool:
        return await taker.query(TurnTaker.heard) == expected
    await eventually(check, f"{taker.id} heard {expected}")


async def test_an_ask_is_answered_at_once_and_only_a_later_change_by_a_signal(
        time_skipping: WorkflowEnvironment, engine: Engine) -> None:
    """The ``ask_subject_turn`` activity: the answer says who holds the turn, so the asker is not signalled for it
    (one workflow task less per request), with the fan-out's plan when granted at once; a later grant comes by
    signal from the release. The events noted before the ask are written by it, once however often it is
    retried."""
    from activities.subjects import SubjectActivities
    from dsr.domain.model import (
        AuditEvent,
        Channel,
        FanOutPlan,
        Language,
        PlanInput,
        QueueAsk,
        QueueRelease,
        RequestKind,
        RequestRecordInput,
        Subject,
        TurnAnswer,
    )

    def plan(asked: PlanInput) -> FanOutPlan:
        return FanOutPlan(connectors=["crm", asked.kind.value])

    activities = SubjectActivities(engine.ledger, SubjectTurns(engine.ledger.engine), plan)
    client = engine.client
    line = "subject-" + "cd" * 16
    async with Worker(client, task_queue="askers", workflows=[TurnTaker], workflow_runner=UnsandboxedWorkflowRunner()):
        takers = [await client.start_workflow(TurnTaker.run, id=f"asker-{n}", task_queue="askers") for n in range(2)]
        t0 = datetime(2026, 1, 5, tzinfo=UTC)
        asks = [TurnAsk(request_id=t.id, received_at=t0 + timedelta(minutes=n)) for n, t in enumerate(takers)]
        env = ActivityEnvironment(client=client)
        engine.ledger.record_request(RequestRecordInput(
            request_id="asker-0", kind=RequestKind.ACCESS, channel=Channel.FORM,
            subject=Subject(email="asker@example.com", name="Asker"), received_at=t0, deadline=date(2026, 2, 5),
            language=Language.EN), now=t0)
        noted = [AuditEvent(request_id="asker-0", event="identity_confirmed"),
                 AuditEvent(request_id="asker-0", event="processing", stage=Stage.PROCESSING)]
        # Nobody holds: granted in the answer, with the fan-out's plan asked for; the events written.
        access = PlanInput(kind=RequestKind.ACCESS)
        assert await env.run(activities.ask_subject_turn,
                             QueueAsk(queue_id=line, ask=asks[0], events=noted, plan=access)) == \
            TurnAnswer(SubjectTurn(holder="asker-0", round=1), FanOutPlan(connectors=["crm", "access"]))
        # Asked again (a retried attempt): the same answer, and no event twice.
        assert await env.run(activities.ask_subject_turn, QueueAsk(queue_id=line, ask=asks[0], events=noted)) == \
            TurnAnswer(SubjectTurn(holder="asker-0", round=1))
        assert [e.event for e in engine.ledger.events("asker-0")] == ["identity_confirmed", "processing"]
        written = engine.ledger.get_request("asker-0")
        assert written is not None and written.stage == Stage.PROCESSING
        # Another request of the person: told whom it waits for, in the answer; no plan while it waits.
        assert await env.run(activities.ask_subject_turn, QueueAsk(queue_id=line, ask=asks[1], plan=access)) == \
            TurnAnswer(SubjectTurn(holder="asker-0", round=1))
        turns = SubjectTurns(engine.ledger.engine)
        assert turns.status(line) == SubjectQueueStatus(holder="asker-0", waiting=["asker-1"])
        await env.run(activities.release_subject_turn, QueueRelease(line, TurnRelease(request_id="asker-0")))
        await heard(takers[1], ["asker-1#1"])
        # Its answer came with its ask (no signal for it); asker-1's ask, finding it holding, told it that it holds
        # (a holder no longer asking would give the turn back).
        await heard(takers[0], ["asker-0#1"])
        await env.run(activities.release_subject_turn, QueueRelease(line, TurnRelease(request_id="asker-1")))
        assert turns.status(line) == SubjectQueueStatus(holder="", waiting=[])
        for taker in takers:
            await taker.terminate()


async def test_a_request_gone_is_passed_over_a_retried_release_tells_everyone_and_the_check_frees_the_turn(
        time_skipping: WorkflowEnvironment, engine: Engine) -> None:
    """A grant to a request that has ended goes to the next one (its signal is refused: it leaves the line); a
    release retried after its change was committed tells everyone in line again; the waiting request's hourly
    check takes a holder that no longer runs out of the line."""
    from activities.subjects import SubjectActivities
    from dsr.domain.model import FanOutPlan, QueueAsk, QueueRelease

    activities = SubjectActivities(engine.ledger, SubjectTurns(engine.ledger.engine), lambda _: FanOutPlan([]))
    turns = SubjectTurns(engine.ledger.engine)
    client = engine.client
    line = "subject-" + "ef" * 16
    async with Worker(client, task_queue="gone", workflows=[TurnTaker], workflow_runner=UnsandboxedWorkflowRunner()):
        takers = [await client.start_workflow(TurnTaker.run, id=f"taker-{n}", task_queue="gone") for n in range(4)]
        t0 = datetime(2026, 1, 5, tzinfo=UTC)
        # taker-2 was received before taker-1: it goes next, but it has ended by then.
        received = {0: 0, 1: 30, 2: 10, 3: 40}
        asks = [TurnAsk(request_id=t.id, received_at=t0 + timedelta(minutes=received[n])) for n, t in enumerate(takers)]
        env = ActivityEnvironment(client=client)
        for ask in asks[:3]:
            await env.run(activities.ask_subject_turn, QueueAsk(queue_id=line, ask=ask))
        assert turns.status(line) == SubjectQueueStatus(holder="taker-0", waiting=["taker-2", "taker-1"])
        await takers[2].terminate()
        await env.run(activities.release_subject_turn, QueueRelease(line, TurnRelease(request_id="taker-0")))
        await heard(takers[1], ["taker-1#1"])  # granted; never told of taker-2, passed over
        assert turns.status(line) == SubjectQueueStatus(holder="taker-1", waiting=[])

        # The same release retried (its first attempt failed after the commit): the holder is told again.
        retried = ActivityEnvironment(client=client)
        retried.info = replace(retried.info, attempt=2)
        await retried.run(activities.release_subject_turn, QueueRelease(line, TurnRelease(request_id="taker-0")))
        await heard(takers[1], ["taker-1#1", "taker-1#1"])

        # taker-3 waits; the holder is terminated by hand (nothing released): the check frees the turn.
        assert (await env.run(activities.ask_subject_turn, QueueAsk(queue_id=line, ask=asks[3]))).turn == \
            SubjectTurn(holder="taker-1", round=1)
        assert await env.run(activities.check_subject_turn, QueueAsk(queue_id=line, ask=asks[3])) == \
            SubjectTurn(holder="taker-1", round=1)  # still running: nothing changes
        await takers[1].terminate()
        assert await env.run(activities.check_subject_turn, QueueAsk(queue_id=line, ask=asks[3])) == \
            SubjectTurn(holder="taker-3", round=1)
        assert turns.status(line) == SubjectQueueStatus(holder="taker-3", waiting=[])

        # The holder terminated before anyone else asks: the next ask finds it gone and is granted at once.
        await takers[3].terminate()
        again = replace(asks[0], round=2)
        assert (await env.run(activities.ask_subject_turn, QueueAsk(queue_id=line, ask=again))).turn == \
            SubjectTurn(holder="taker-0", round=2)
        await env.run(activities.release_subject_turn, QueueRelease(line, TurnRelease(request_id="taker-0", round=2)))
        assert stored_lines(engine) == []
        await takers[0].terminate()


# --- helpers needing more than the client ---------------------------------------------------------------




async def dsr_status(engine: Engine, request_id: str) -> str:
    """``dsr status`` as an operator runs it, against this test's server and keys (a real subprocess; the
    event loop keeps serving the in-process worker meanwhile)."""
    keys = "test-1:" + base64.b64encode(bytes(range(32))).decode()
    env = {**os.environ, "DSR_KEYS": keys, "DSR_HOME": str(engine.settings.home),
           "TEMPORAL_ADDRESS": engine.client.service_client.config.target_host}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "dsr"), "status", request_id, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()



@pytest.mark.slow  # three times five local tries (15 s each), the worker's own time: not skipped
async def test_local_steps_refused_five_times_go_to_the_server_and_write_nothing_twice(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request's row, the turn's ask and its give-back (each with the events it carries: the give-back at the
    answer carries the closing ones) are local activities, tried five times, then activities the server retries: a
    ledger the worker cannot reach is not retried for ever inside a workflow task held open. Each local try of the
    first request here does its work, then fails (the worst case: committed, and not known to be): the activity after
    them finds it done, under the same keys, and the next request of the person, waiting, is still told its turn
    came."""
    local_tries: dict[str, list[int]] = {}
    target: list[str] = []  # the first request seen: only its local tries are refused

    def failing_when_local(step: Callable[..., Any], request_of: Callable[..., str | None],
                           only_in: str = "") -> Callable[..., Any]:
        def done_then_refused(*args: Any, **kwargs: Any) -> Any:
            answer = step(*args, **kwargs)
            info, request_id = activity.info(), request_of(*args, **kwargs)
            target[:] = target or ([request_id] if request_id else [])
            if info.is_local and request_id and request_id == target[0] and info.activity_type == (
                    only_in or info.activity_type):
                local_tries.setdefault(info.activity_type, []).append(info.attempt)
                raise OperationalError("COMMIT", {}, ConnectionResetError("connection lost after the commit"))
            return answer
        return done_then_refused

    monkeypatch.setattr(engine.ledger, "append_event", failing_when_local(
        engine.ledger.append_event, lambda event, **_: event.request_id if event.event == "received" else None))
    monkeypatch.setattr(SubjectTurns, "ask", failing_when_local(
        SubjectTurns.ask, lambda turns, queue, ask: ask.request_id))
    # The give-back at the answer releases, tells the next, starts the aftercare, then writes its events: refused once
    # they are written.
    monkeypatch.setattr(activities.subjects, "record_batch", failing_when_local(
        activities.subjects.record_batch, lambda ledger, events, **_: events[0].request_id,
        only_in="start_aftercare"))

    async def answered(handle: WorkflowHandle) -> bool:
        return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

    # In real time (the local tries' backoff is the worker's own), polled: the test server answers a wait for a result
    # that outlasts its long poll (~20 s) with no event. Unbounded local tries would never get anywhere.
    access = await intake(engine, "access")

    async def in_the_systems() -> bool:
        return len(spans(engine, access.id)) == len(engine.connectors)
    await eventually(in_the_systems, "the access holding the turn (its row and its ask: 30 s)", tries=2400)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    gate(engine, access.id).set()
    gate(engine, erasure.id).set()
    for handle in (access, erasure):
        await eventually(functools.partial(answered, handle), f"{handle.id} answered", tries=2400)

    assert target == [access.id]
    assert local_tries == {step: [1, 2, 3, 4, 5] for step in (
        "record_request", "ask_subject_turn", "start_aftercare")}
    history = (await access.fetch_history()).events
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history
                 if e.HasField("activity_task_scheduled_event_attributes")]
    for step in ("record_request", "ask_subject_turn", "start_aftercare"):
        assert scheduled.count(step) == 1, step
    # Six tries started the aftercare (the five local ones each started it or found it started).
    assert (await engine.client.get_workflow_handle(aftercare_id(access.id)).describe()).status == (
        WorkflowExecutionStatus.RUNNING)
    written = [e.event for e in engine.ledger.events(access.id)]
    for event in ("received", "identity_confirmed", "processing", "turn_taken", "reply_sent", "closed",
                  "aftercare_started"):
        assert written.count(event) == 1, (event, written)
    assert written.index("processing") < written.index("turn_taken") < written.index("closed")
    assert (await access.result()).outcome == (await erasure.result()).outcome == Outcome.FULFILLED
    # The give-back's first local try released the line and told the erasure; its events, written by every try, are
    # in the ledger once.
    assert [e.details for e in engine.ledger.events(erasure.id) if e.event == "turn_taken"] == [
        {"waited_for": access.id}]
    one_after_the_other(engine, access.id, erasure.id)
    assert await queue_status(engine) == SubjectQueueStatus(holder="", waiting=[])


@pytest.mark.slow  # local tries in real time, not skipped
async def test_a_ledger_refusing_the_events_a_give_back_carries_holds_that_request_not_the_next(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The give-back writes the events it carries after the line and its signals: the person's next request gets its
    turn while the one giving it back retries its events; once the ledger takes them, it ends, each written once."""
    refusing = True

    def closing_refused(ledger: Any, events: list[Any], **kwargs: Any) -> int:
        if refusing and activity.info().activity_type == "start_aftercare" and events[0].request_id == access.id:
            raise OperationalError("INSERT", {}, ConnectionResetError("the ledger refuses the events"))
        return record_batch(ledger, events, **kwargs)

    access = await intake(engine, "access")
    await holding(engine, access)
    erasure = await intake(engine, "erasure")
    await waiting_for(erasure, access.id)
    record_batch = activities.subjects.record_batch
    monkeypatch.setattr(activities.subjects, "record_batch", closing_refused)
    gate(engine, access.id).set()
    gate(engine, erasure.id).set()

    async def answered(handle: WorkflowHandle) -> bool:
        return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    await eventually(functools.partial(answered, erasure), "the erasure answered", tries=1200)
    assert (await access.describe()).status == WorkflowExecutionStatus.RUNNING  # still writing its closing events
    assert "closed" not in [e.event for e in engine.ledger.events(access.id)]
    # The aftercare was started before the events (``aftercare_started`` is written once true).
    assert (await engine.client.get_workflow_handle(aftercare_id(access.id)).describe()).status == (
        WorkflowExecutionStatus.RUNNING)
    assert [e.details for e in engine.ledger.events(erasure.id) if e.event == "turn_taken"] == [
        {"waited_for": access.id}]

    refusing = False  # the ledger takes them again: the give-back's activity, retried by the server, writes them
    async with engine.env.time_skipping_unlocked():  # type: ignore[attr-defined]
        await eventually(functools.partial(answered, access), "the access answered", tries=1200)
    written = [e.event for e in engine.ledger.events(access.id)]
    assert written.count("reply_sent") == written.count("closed") == written.count("aftercare_started") == 1
    assert written.index("reply_sent") < written.index("closed") < written.index("aftercare_started")

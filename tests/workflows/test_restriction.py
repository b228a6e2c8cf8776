"""Restriction of processing (Art. 18) on the time-skipping server: marked in every system that can, answered,
held in force by ``RestrictionInForce``, lifted by an operator or at the end of its ground, the subject told
before the lift (18(3)) and the marks removed only after the notice period."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.api.testservice.v1 import UnlockTimeSkippingRequest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from connectors.base import ExportJob, OperationJob, PermanentConnectorError
from dsr.cli.requests import _show_restriction
from dsr.config.settings import Settings
from dsr.domain.model import (
    ConnectorOutcome,
    IdentityMethod,
    Lift,
    ObjectionDecision,
    Outcome,
    RecordAction,
    RecordReport,
    RequestInput,
    RequestStatus,
    ResidualsCleared,
    RestrictionStatus,
    Retry,
    Stage,
    SubjectInformed,
    restriction_id,
    told_words,
)
from intake.service import IntakeService
from intake.submission import Submission, SubmissionError, prepare, start
from tests.harness import ScriptedConnector, keep_history, text_of
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    SUBJECT_NAME,
    Engine,
    clear_residuals,
    events,
    wait_for_event,
)
from workflows.request import DataSubjectRequest
from workflows.restriction import IN_FORCE, LIFT_SCHEDULED, LIFTED, RestrictionInForce


@dataclass
class MarkingConnector(ScriptedConnector):
    """A scripted system that can mark a record restricted (like a HubSpot property or Stripe metadata)."""

    marked: set[str] = field(default_factory=set)
    lifts: int = 0

    async def restrict(self, job: OperationJob) -> ConnectorOutcome:
        self._fail_if_scripted("restrict", job.request_id)
        action = RecordAction.UNCHANGED if job.subject.email in self.marked else RecordAction.RESTRICTED
        self.marked.add(job.subject.email)
        report = [RecordReport("contact", "101", action, fields=["dsr_restricted"])]
        return ConnectorOutcome(connector=self.name, found=1, counts={action.value: 1}, report=report)

    async def lift_restriction(self, job: OperationJob) -> ConnectorOutcome:
        self._fail_if_scripted("lift", job.request_id)
        self.lifts += 1
        self.marked.discard(job.subject.email)
        report = [RecordReport("contact", "101", RecordAction.LIFTED, fields=["dsr_restricted"])]
        return ConnectorOutcome(connector=self.name, found=1, counts={"lifted": 1}, report=report)


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    return [MarkingConnector("crm"), ScriptedConnector("billing")]



async def submit(engine: Engine, kind: str, *, ground: str = "", language: str = "fr",
                 changes: dict[str, str] | None = None) -> tuple[RequestInput, WorkflowHandle]:
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=IdentityMethod.TRUSTED))
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind=kind, email=SUBJECT_EMAIL, name=SUBJECT_NAME, language=language,
                                 ground=ground, changes=changes or {}), settings, now=now)
    return request, await start(engine.client, request, task_queue=engine.task_queue)


async def eventually(read: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], tries: int = 150) -> Any:
    last: Any = None
    for _ in range(tries):
        try:
            last = await read()
            if check(last):
                return last
        except RPCError:  # the workflow's first task has not run yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached the expected state: {last}")


async def skipping_again(engine: Engine) -> None:
    """After an update that ends a child workflow (a told task's answer, tests/workflows/test_supplement.py), the
    time-skipping test server keeps one time-skipping lock (found here: env.sleep and result() then wait in real time,
    not server time); giving it back lets timers be skipped again. (Not after ``clear_residuals``, since the aftercare
    is no longer its request's child: unlocking then let time run during the next update.)"""
    await engine.client.test_service.unlock_time_skipping(UnlockTimeSkippingRequest())


async def time_runs_free(engine: Engine) -> None:
    """Let the server skip time on its own from here (the restriction's workflow ends at its lift, and an env.sleep
    across a workflow's end waits in real time on the time-skipping test server)."""
    await skipping_again(engine)


def held(engine: Engine, request: RequestInput) -> WorkflowHandle:
    return engine.client.get_workflow_handle_for(RestrictionInForce.run, restriction_id(request.request_id))


async def restriction_status(handle: WorkflowHandle) -> RestrictionStatus:
    return await handle.query(RestrictionInForce.status)


def bodies(engine: Engine, to: str) -> list[tuple[str, str]]:
    return [(str(m["Subject"]), " ".join(text_of(m).split())) for m in engine.mail.to(to)]


def test_a_restriction_needs_its_ground_and_only_a_restriction_takes_one(settings: Settings) -> None:
    with pytest.raises(SubmissionError, match="ground is required for a restriction"):
        prepare(Submission(kind="restriction", email=SUBJECT_EMAIL), settings)
    with pytest.raises(SubmissionError, match="ground must be one of a, b, c, d"):
        prepare(Submission(kind="restriction", email=SUBJECT_EMAIL, ground="e"), settings)
    with pytest.raises(SubmissionError, match="only for restriction"):
        prepare(Submission(kind="erasure", email=SUBJECT_EMAIL, ground="a"), settings)
    assert prepare(Submission(kind="restriction", email=SUBJECT_EMAIL, ground="C"), settings).ground == "c"


@pytest.mark.parametrize(("language", "marked_words", "by_hand_words", "lift_words"), [
    ("fr", "Marqué comme limité — fiche contact (1)", "notre équipe y limite à la main",
     "La limitation du traitement de vos données sera levée le"),
    ("en", "Marked as restricted — contact record (1)", "our team restricts the use of your data in it by hand",
     "The restriction of processing of your data will be lifted on"),
])
async def test_a_restriction_is_marked_answered_then_lifted_only_after_the_subject_was_told(
    engine: Engine, language: str, marked_words: str, by_hand_words: str, lift_words: str,
) -> None:
    request, handle = await submit(engine, "restriction", ground="c", language=language)
    final: RequestStatus = await handle.result()
    # Answered within the month; the request's workflow ends, the restriction stays in force in its own.
    assert final.outcome == Outcome.FULFILLED and final.ground == "c"
    assert final.restriction == restriction_id(request.request_id)
    crm, billing = engine.connectors
    assert isinstance(crm, MarkingConnector) and crm.marked == {SUBJECT_EMAIL}
    assert billing.calls == []  # it cannot mark: a residual line, nothing called
    subject, reply = bodies(engine, SUBJECT_EMAIL)[-1]
    assert request.request_id in subject and marked_words in reply and by_hand_words in reply
    assert "18(1)(c)" in reply or "paragraphe 1, point c)" in reply
    await keep_history(handle, f"restriction_answered_{language}")

    restriction = held(engine, request)
    current = await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    assert current.ground == "c" and current.lift_at is None
    # Weeks pass: nothing lifts a restriction on ground (c) but an operator. (Slept before any update: the
    # time-skipping server stops skipping for env.sleep once an update was sent.)
    await engine.env.sleep(timedelta(days=40))
    assert (await restriction_status(restriction)).state == IN_FORCE and crm.marked == {SUBJECT_EMAIL}
    await clear_residuals(engine.client, handle.id, ResidualsCleared(cleared_by="operator:alice"))
    for wrong in (Lift(reason="  "),):
        with pytest.raises(WorkflowUpdateFailedError):
            await restriction.execute_update(RestrictionInForce.lift, wrong)

    reason = "The legal proceedings you needed the data for are closed."
    scheduled = await restriction.execute_update(RestrictionInForce.lift,
                                                 Lift(reason=reason, requested_by="operator:alice"))
    assert scheduled.state == LIFT_SCHEDULED and scheduled.lift_at is not None
    assert scheduled.lifted_by == "operator:alice" and scheduled.subject_told is True
    with pytest.raises(WorkflowUpdateFailedError):  # one lift
        await restriction.execute_update(RestrictionInForce.lift, Lift(reason="again"))
    # Art. 18(3): the subject is told before the lift, with its day and the reason, in their language.
    subject, notice = bodies(engine, SUBJECT_EMAIL)[-1]
    assert subject.startswith(lift_words) and request.request_id in subject and reason in notice
    [entry] = [e for e in engine.ledger.events(request.request_id) if e.event == "restriction_lift_scheduled"]
    assert entry.actor == "operator:alice" and entry.note == reason  # sealed, opened for the operator
    assert entry.details["why"] == "operator" and entry.details["reason_length"] == str(len(reason))

    # The durable timer really waits: nothing is unmarked at the notice, and the lift comes only once the
    # server's clock reached the day the notice named, at least three days on.
    assert crm.marked == {SUBJECT_EMAIL} and crm.lifts == 0
    assert scheduled.lift_at - await engine.env.get_current_time() >= timedelta(days=3)
    await engine.env.sleep(timedelta(days=2))
    assert (await restriction_status(restriction)).state == LIFT_SCHEDULED and crm.lifts == 0
    await engine.env.sleep(scheduled.lift_at - await engine.env.get_current_time() - timedelta(minutes=1))
    assert (await restriction_status(restriction)).state == LIFT_SCHEDULED and crm.lifts == 0
    await time_runs_free(engine)
    lifted = await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFTED)
    assert lifted.failed == [] and crm.marked == set() and crm.lifts == 1
    await restriction.result()
    await keep_history(restriction, f"restriction_lifted_by_operator_{language}")
    trail = events(engine, request)
    assert trail.index("reply_sent") < trail.index("restriction_in_force") < trail.index(
        "restriction_lift_scheduled") < trail.index("restriction_lifted")


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["Europe/Paris", "Australia/Sydney"], indirect=True)
async def test_a_lift_notice_the_mail_server_refuses_is_never_called_told(engine: Engine, settings: Settings) -> None:
    request, handle = await submit(engine, "restriction", ground="c", language="en")
    await handle.result()
    restriction = held(engine, request)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    await clear_residuals(engine.client, handle.id, ResidualsCleared(cleared_by="operator:alice"))
    engine.mail.refused.add(SUBJECT_EMAIL)  # the person's mailbox is gone
    scheduled = await restriction.execute_update(RestrictionInForce.lift,
                                                 Lift(reason="Proceedings closed.", requested_by="operator:alice"))
    assert scheduled.state == LIFT_SCHEDULED and scheduled.subject_told is False
    assert scheduled.lift_at is not None
    assert scheduled.lift_at - await engine.env.get_current_time() >= timedelta(days=3)  # the notice period
    assert not any(str(m["Subject"]).startswith("The restriction") for m in engine.mail.to(SUBJECT_EMAIL))
    await wait_for_event(engine, request, "notice_failed")
    [failed] = [e for e in engine.ledger.events(request.request_id) if e.event == "notice_failed"]
    assert failed.details == {"template": "restriction_lift"}
    # The operator is told to tell the subject by other means before the day, and so are the UI and the CLI.
    operator = await eventually(
        lambda: asyncio.sleep(0, [text_of(m) for m in engine.mail.to(OPERATOR_EMAIL)]),
        lambda texts: any("could not be told by email" in t for t in texts))
    local = ZoneInfo(settings.policy.timezone)  # the day is the controller's (in Sydney, not the UTC date)
    assert any(f"lifted on {scheduled.lift_at.astimezone(local):%Y-%m-%d}" in t and "Art. 18(3)" in t
               and "--subject-told" in t for t in operator)
    assert told_words(scheduled.subject_told).startswith("the notice to the subject FAILED")
    assert "was told" not in await current_details(restriction)

    # Art. 18(3): no lift before the subject knows. Past the day the notice named, the marks are still on.
    crm = engine.connectors[0]
    assert isinstance(crm, MarkingConnector)
    assert scheduled.lift_at is not None
    await engine.env.sleep(scheduled.lift_at - await engine.env.get_current_time() + timedelta(days=1))
    assert (await restriction_status(restriction)).state == LIFT_SCHEDULED and crm.marked == {SUBJECT_EMAIL}
    with pytest.raises(WorkflowUpdateFailedError):  # saying how is required
        await restriction.execute_update(RestrictionInForce.subject_informed, SubjectInformed(how=" "))
    informed = await restriction.execute_update(RestrictionInForce.subject_informed, SubjectInformed(
        how="Registered letter of 7 December", informed_by="operator:bob"))
    assert informed.subject_told is True and informed.lift_at is not None
    assert informed.lift_at - await engine.env.get_current_time() >= timedelta(days=3)  # the notice period again
    await wait_for_event(engine, request, "restriction_subject_informed")
    [record] = [e for e in engine.ledger.events(request.request_id) if e.event == "restriction_subject_informed"]
    assert record.actor == "operator:bob" and record.note == "Registered letter of 7 December"
    # The day the lift falls on where the controller is (in Sydney, 09:00 is the day before in UTC).
    assert record.details["lift_on"] == informed.lift_at.astimezone(local).date().isoformat()
    assert informed.lift_at.astimezone(local).hour == 9
    with pytest.raises(WorkflowUpdateFailedError):  # once
        await restriction.execute_update(RestrictionInForce.subject_informed, SubjectInformed(how="again"))
    await time_runs_free(engine)  # a timer is pending again: the server skips to it
    lifted = await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFTED, tries=300)
    assert lifted.failed == [] and crm.marked == set()


@pytest.mark.slow
async def test_a_restriction_on_contested_accuracy_ends_with_the_rectification(engine: Engine) -> None:
    request, handle = await submit(engine, "restriction", ground="a", language="en")
    await handle.result()
    restriction = held(engine, request)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    await clear_residuals(engine.client, handle.id, ResidualsCleared())
    # The same person's rectification, once answered, ends the ground: the accuracy is verified.
    rectification, rectification_handle = await submit(engine, "rectification", language="en",
                                                       changes={"city": "Lyon"})
    assert (await rectification_handle.result()).outcome == Outcome.FULFILLED
    scheduled = await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFT_SCHEDULED)
    assert scheduled.lifted_by == f"ground_ended:{rectification.request_id}"
    assert "restriction_ground_ended" in events(engine, rectification)
    async def lift_notices() -> list[str]:
        return [body for subject, body in bodies(engine, SUBJECT_EMAIL) if subject.startswith("The restriction of")]

    notices = await eventually(lift_notices, bool)
    assert len(notices) == 1 and "the rectification the restriction was waiting for is done" in notices[0]
    crm = engine.connectors[0]
    assert isinstance(crm, MarkingConnector) and crm.marked == {SUBJECT_EMAIL} and crm.lifts == 0  # told first
    assert scheduled.lift_at is not None
    assert scheduled.lift_at - await engine.env.get_current_time() >= timedelta(days=3)
    # The durable timer: the lift comes only once the server's clock reached the day the notice named.
    await engine.env.sleep(scheduled.lift_at - await engine.env.get_current_time() - timedelta(minutes=1))
    assert (await restriction_status(restriction)).state == LIFT_SCHEDULED and crm.lifts == 0
    await time_runs_free(engine)
    lifted = await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFTED)
    assert lifted.failed == [] and crm.marked == set() and crm.lifts == 1
    await restriction.result()
    trail = events(engine, request)
    assert trail.index("restriction_lift_scheduled") < trail.index("restriction_lifted")
    # The system restricted by hand is the operator's to lift, and they are told so.
    assert any("billing: restriction - lift it by hand" in body for _, body in bodies(engine, OPERATOR_EMAIL))
    await keep_history(restriction, "restriction_ended_by_rectification")


@pytest.mark.slow
async def test_a_restriction_pending_an_objection_ends_with_its_decision_and_no_other(engine: Engine) -> None:
    pending, pending_handle = await submit(engine, "restriction", ground="d", language="fr")
    accuracy, accuracy_handle = await submit(engine, "restriction", ground="a", language="fr")
    for handle in (pending_handle, accuracy_handle):
        await handle.result()
        await clear_residuals(engine.client, handle.id, ResidualsCleared())
    objection, objection_handle = await submit(engine, "objection", language="fr")
    await eventually(lambda: objection_handle.query(DataSubjectRequest.status),
                     lambda s: s.awaiting_decision)
    await objection_handle.execute_update(DataSubjectRequest.decide, ObjectionDecision(uphold=True))
    decided: RequestStatus = await eventually(lambda: objection_handle.query(DataSubjectRequest.status),
                                              lambda s: s.stage == Stage.CLOSED)
    assert decided.decision == "upheld"
    on_objection = await eventually(lambda: restriction_status(held(engine, pending)),
                                    lambda s: s.state == LIFT_SCHEDULED)
    assert on_objection.lifted_by == f"ground_ended:{objection.request_id}"
    # The restriction on another ground (a) is not ended by an objection's decision.
    await asyncio.sleep(0.5)
    assert (await restriction_status(held(engine, accuracy))).state == IN_FORCE
    async def lift_notices() -> list[str]:
        return [body for subject, body in bodies(engine, SUBJECT_EMAIL) if subject.startswith("La limitation")]

    [notice] = await eventually(lift_notices, bool)
    assert "Nous avons statué sur votre opposition" in notice


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[MarkingConnector("crm", permanent_failures=1), ScriptedConnector("billing")]])
async def test_a_rectification_answered_while_the_restriction_is_answered_ends_it_once_in_force(
    engine: Engine,
) -> None:
    request, handle = await submit(engine, "restriction", ground="a", language="en")
    # The CRM refuses the mark: the restriction waits for an operator (and gives the person's turn back).
    await eventually(lambda: handle.query(DataSubjectRequest.status), lambda s: s.stage == Stage.NEEDS_ATTENTION)
    rectification, rectification_handle = await submit(engine, "rectification", language="en",
                                                       changes={"city": "Lyon"})
    assert (await rectification_handle.result()).outcome == Outcome.FULFILLED
    # No restriction in force to signal yet: the end of the ground is in the ledger, before any signal.
    trail = events(engine, rectification)
    assert "restriction_ground_end" in trail and "restriction_ground_ended" not in trail
    [end] = [e for e in engine.ledger.events(rectification.request_id) if e.event == "restriction_ground_end"]
    assert end.details == {"ground": "a"}

    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    assert (await handle.result()).outcome == Outcome.FULFILLED
    # In force, it reads the ledger: its ground ended while it was being answered; the subject is told first.
    scheduled = await eventually(lambda: restriction_status(held(engine, request)),
                                 lambda s: s.state == LIFT_SCHEDULED)
    assert scheduled.lifted_by == f"ground_ended:{rectification.request_id}"
    [entry] = await eventually(  # the state is set just before the ledger's write
        lambda: asyncio.sleep(0, [e for e in engine.ledger.events(request.request_id)
                                  if e.event == "restriction_lift_scheduled"]), bool)
    assert entry.details["why"] == "rectification" and entry.details["by_request"] == rectification.request_id


@pytest.mark.slow
async def test_a_rectification_answered_before_the_restriction_was_received_does_not_end_it(engine: Engine) -> None:
    rectification, rectification_handle = await submit(engine, "rectification", language="fr",
                                                       changes={"city": "Lyon"})
    assert (await rectification_handle.result()).outcome == Outcome.FULFILLED
    assert "restriction_ground_end" in events(engine, rectification)
    request, handle = await submit(engine, "restriction", ground="a", language="fr")
    assert (await handle.result()).outcome == Outcome.FULFILLED
    restriction = held(engine, request)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    await eventually(lambda: asyncio.sleep(0, events(engine, request)), lambda t: "restriction_in_force" in t)
    await asyncio.sleep(1.0)  # time for the start's ledger read: it finds nothing that ends it
    current = await restriction_status(restriction)
    assert current.state == IN_FORCE and current.lifted_by == "" and current.lift_at is None


@dataclass
class ExportRefusingConnector(MarkingConnector):
    """A marking system whose exports fail (bad credentials) while ``refuse_exports``: an access request then waits
    for an operator, and keeps the person's turn (a later erasure must not delete what it exported)."""

    refuse_exports: bool = False
    exporting: list[str] = field(default_factory=list)

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        self.exporting.append(job.request_id)
        if self.refuse_exports:
            raise PermanentConnectorError(f"check the credentials of connector {self.name}")
        return await super().export(job)


async def through_intake(engine: Engine, kind: str, *, ground: str = "") -> WorkflowHandle:
    """Through the intake service, the one door every channel takes: it sets the subject's key (their queue)."""
    settings = replace(engine.settings, task_queue=engine.task_queue,
                       policy=replace(engine.settings.policy, identity=IdentityMethod.TRUSTED))
    accepted = await IntakeService(engine.client, settings, engine.ledger).submit(
        Submission(kind=kind, email=SUBJECT_EMAIL, name=SUBJECT_NAME, channel="api", language="en", ground=ground),
        rate_limit=False)
    return engine.client.get_workflow_handle_for(DataSubjectRequest.run, accepted.reference)


async def current_details(handle: WorkflowHandle) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ExportRefusingConnector("crm")]])
async def test_the_marks_come_off_in_the_persons_turn_once_their_access_request_gives_it_back(
    engine: Engine, capsys: pytest.CaptureFixture[str],
) -> None:
    handle = await through_intake(engine, "restriction", ground="c")
    # Polled, not result(): waiting on a result, the server would skip past the restriction's end (no timer runs
    # while it is in force: the next event is its 10-year execution timeout).
    answered = await eventually(lambda: handle.query(DataSubjectRequest.status), lambda s: s.stage == Stage.CLOSED)
    assert answered.outcome == Outcome.FULFILLED
    restriction = engine.client.get_workflow_handle(restriction_id(handle.id))
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    scheduled = await restriction.execute_update(RestrictionInForce.lift,
                                                 Lift(reason="Claim settled.", requested_by="operator:alice"))
    assert scheduled.lift_at is not None
    crm = engine.connectors[0]
    assert isinstance(crm, ExportRefusingConnector) and crm.marked == {SUBJECT_EMAIL}

    # The same person's access request holds their turn (its export waits for an operator) on the lift's day.
    crm.refuse_exports = True
    access = await through_intake(engine, "access")
    await eventually(lambda: access.query(DataSubjectRequest.status), lambda s: s.stage == Stage.NEEDS_ATTENTION)
    await engine.env.sleep(scheduled.lift_at - await engine.env.get_current_time() + timedelta(hours=1))
    waiting = await eventually(lambda: restriction_status(restriction), lambda s: s.waiting_for == access.id)
    assert waiting.state == LIFT_SCHEDULED and crm.lifts == 0 and crm.marked == {SUBJECT_EMAIL}
    assert f"the lift waits for the person's turn, held by **{access.id}**" in await current_details(restriction)
    capsys.readouterr()
    await _show_restriction(engine.client, handle.id, restriction_id(handle.id))  # what `dsr status ID` prints
    assert f"the lift waits for the person's turn, held by {access.id}" in capsys.readouterr().out

    # The operator fixes the credentials: the access request exports, answers, gives the turn back; the marks go.
    crm.refuse_exports = False
    await access.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    lifted = await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFTED)
    assert lifted.waiting_for == "" and crm.lifts == 1 and crm.marked == set()
    assert crm.exporting == [access.id, access.id]
    # The request's own turn (its marks), then the lift's, taken after the access request's.
    taken = await eventually(lambda: asyncio.sleep(0, [e for e in engine.ledger.events(handle.id)
                                                       if e.event == "turn_taken"]), lambda t: len(t) == 2)
    assert taken[-1].details == {"waited_for": access.id}
    await eventually(lambda: asyncio.sleep(0, [e.event for e in engine.ledger.events(access.id)]),
                     lambda trail: "reply_sent" in trail)  # answered before the marks came off


async def test_a_restriction_refuses_a_cancellation_and_writes_its_events_in_batches(engine: Engine) -> None:
    request, handle = await submit(engine, "restriction", ground="b", language="fr")
    await handle.result()
    restriction = held(engine, request)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    await restriction.cancel()  # the UI's "Request Cancellation": lifting untold is what 18(3) forbids
    refused = await eventually(
        lambda: asyncio.sleep(0, [e for e in engine.ledger.events(request.request_id)
                                  if e.event == "cancellation_refused"]), bool)
    assert refused[0].actor == "temporal" and refused[0].details == {"workflow": "restriction"}
    assert (await restriction_status(restriction)).state == IN_FORCE
    assert "cancellation refused" in await current_details(restriction)
    # Its events go through the batched record_events (workflows/follow_up.py), as the request's do.
    history = await restriction.fetch_history()
    activities = {e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                  if e.HasField("activity_task_scheduled_event_attributes")}
    assert "record_events" in activities and "record_event" not in activities

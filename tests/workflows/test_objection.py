"""Objections (Art. 21) on the time-skipping server: marketing stopped at once and remembered, other processing
decided by an operator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from connectors.base import OperationJob
from dsr.domain.model import (
    ConnectorOutcome,
    IdentityMethod,
    ObjectionDecision,
    Outcome,
    RecordAction,
    RecordReport,
    RequestInput,
    RequestStatus,
    ResidualsCleared,
    Retry,
    Stage,
)
from dsr.store.suppressions import SuppressionList
from intake.submission import Submission, prepare, start
from tests.harness import ScriptedConnector, keep_history, text_of
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    SUBJECT_NAME,
    Engine,
    clear_residuals,
    events,
    status,
    wait_for_event,
)
from workflows.request import DataSubjectRequest


@dataclass
class NewsletterConnector(ScriptedConnector):
    """A scripted system that sends marketing and can stop it (like HubSpot's subscriptions)."""

    stopped: list[str] = field(default_factory=list)

    async def stop_marketing(self, job: OperationJob) -> ConnectorOutcome:
        self._fail_if_scripted("stop_marketing", job.request_id)
        self.stopped.append(job.subject.email)
        report = [RecordReport("subscriptions", "7001", RecordAction.UNSUBSCRIBED, note="Newsletter")]
        return ConnectorOutcome(connector=self.name, found=1, counts={"unsubscribed": 1}, report=report)


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    return [NewsletterConnector("crm"), ScriptedConnector("billing")]


async def submit(engine: Engine, kind: str, *, scope: str = "", language: str = "fr",
                 identity: IdentityMethod = IdentityMethod.EMAIL) -> tuple[RequestInput, WorkflowHandle]:
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=identity))
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind=kind, email=SUBJECT_EMAIL, name=SUBJECT_NAME, language=language, scope=scope,
                                 details="Stop profiling me for your partner studies."), settings, now=now)
    return request, await start(engine.client, request, task_queue=engine.task_queue)


async def until(handle: WorkflowHandle, check: Callable[[RequestStatus], object], tries: int = 150,
                ) -> RequestStatus:
    for _ in range(tries):
        try:
            current = await status(handle)
            if check(current):
                return current
        except RPCError:  # the first workflow task has not run yet
            await asyncio.sleep(0.1)
            continue
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached the expected state: {await status(handle)}")


def bodies(engine: Engine, to: str) -> list[tuple[str, str]]:
    return [(str(m["Subject"]), text_of(m)) for m in engine.mail.to(to)]


@pytest.mark.slow
@pytest.mark.parametrize(("language", "subject_line", "unsubscribed", "by_hand"), [
    ("fr", "Réponse à votre opposition à la prospection", "Désabonnement effectué — Newsletter",
     "notre équipe vérifie à la main"),
    ("en", "Reply to your objection to direct marketing", "Unsubscribed — Newsletter", "our team checks by hand"),
])
async def test_a_marketing_objection_stops_marketing_at_once_and_outlives_an_erasure(
    engine: Engine, language: str, subject_line: str, unsubscribed: str, by_hand: str,
) -> None:
    request, handle = await submit(engine, "objection", scope="marketing", language=language)
    # No identity check (the policy is email): the same day, every system is done and the subject answered.
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.outcome == Outcome.FULFILLED and current.scope == "marketing"
    assert current.identity_confirmed is False  # not asked, not pretended
    crm, billing = engine.connectors
    assert isinstance(crm, NewsletterConnector) and crm.stopped == [SUBJECT_EMAIL]
    assert billing.calls == []  # no opt-out of its own: a residual line, nothing called
    assert current.residuals == [
        "billing: marketing - this system's API offers no marketing opt-out to set: check that no campaign or "
        "export to a marketing tool uses its data for this person (the suppression list holds the objection)"]
    await wait_for_event(engine, request, "reply_sent")  # the ledger's last batch may trail the stage
    trail = events(engine, request)
    assert "identity_requested" not in trail and "identity_not_required" in trail
    assert trail.index("suppressed") < trail.index("connector_done") < trail.index("reply_sent")
    suppressions = SuppressionList(engine.ledger)
    entry = suppressions.entry(SUBJECT_EMAIL.upper())  # the activity stamps it with the machine's clock
    assert entry is not None and entry.until.year == entry.since.year + 3

    to_subject = bodies(engine, SUBJECT_EMAIL)
    assert len(to_subject) == 2  # the acknowledgement and the reply: no identity request
    subject, reply = to_subject[-1]
    assert subject.startswith(subject_line) and request.request_id in subject
    assert unsubscribed in reply and by_hand in reply
    assert entry.until.strftime("%Y") in reply and "CNIL" in reply
    assert SUBJECT_NAME not in reply  # greeted without the name: identity was never confirmed

    await clear_residuals(engine.client, handle.id, ResidualsCleared(cleared_by="operator:alice"))
    await handle.result()
    await keep_history(handle, f"objection_marketing_{language}")

    # The person then has everything erased: the suppression list keeps the objection.
    erasure, erasure_handle = await submit(engine, "erasure", identity=IdentityMethod.TRUSTED, language=language)
    final = await erasure_handle.result()
    assert final.outcome == Outcome.FULFILLED and "closed" in events(engine, erasure)
    assert suppressions.is_suppressed(SUBJECT_EMAIL)
    # ...and the erasure reply says what it keeps of the objection, and until when.
    subject, erased = bodies(engine, SUBJECT_EMAIL)[-1]
    assert erasure.request_id in subject
    kept = "liste d'opposition conserve une empreinte" if language == "fr" else "suppression list keeps a fingerprint"
    assert kept in " ".join(erased.split()) and entry.until.strftime("%Y") in erased


@pytest.mark.parametrize(("language", "decision_words", "remedies"), [
    ("fr", "Opposition non retenue", "former un recours juridictionnel"),
    ("en", "Objection not accepted", "seek a judicial remedy"),
])
async def test_an_objection_to_other_processing_waits_for_a_reasoned_decision(
    engine: Engine, language: str, decision_words: str, remedies: str,
) -> None:
    request, handle = await submit(engine, "objection", language=language, identity=IdentityMethod.TRUSTED)
    assert request.scope == "other"  # no scope given: a person decides
    current = await until(handle, lambda s: s.awaiting_decision)
    assert current.stage == Stage.NEEDS_ATTENTION and current.connectors == []  # no system touched
    for _ in range(100):  # the notice follows the stage
        told = [b for b in bodies(engine, OPERATOR_EMAIL) if request.request_id in b[0]]
        if told:
            break
        await asyncio.sleep(0.1)
    [(_, notice)] = told
    assert f"dsr decide {request.request_id} --uphold" in notice and SUBJECT_EMAIL not in notice

    for wrong in (ObjectionDecision(uphold=False, grounds="  "),):
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(DataSubjectRequest.decide, wrong)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.retry, Retry())

    grounds = "Keeping login records is needed to detect fraud on the accounts of our customers."
    await handle.execute_update(DataSubjectRequest.decide,
                                ObjectionDecision(uphold=False, grounds=grounds, decided_by="operator:alice"))
    final = await handle.result()
    await keep_history(handle, f"objection_rejected_{language}")
    assert final.outcome == Outcome.DECLINED and final.decision == "rejected" and final.residuals == []
    [rejected] = [e for e in engine.ledger.events(request.request_id) if e.event == "objection_rejected"]
    assert rejected.actor == "operator:alice" and rejected.note == grounds  # sealed, opened for the operator
    assert rejected.details == {"upheld": "False", "grounds_length": str(len(grounds))}
    subject, reply = bodies(engine, SUBJECT_EMAIL)[-1]
    assert request.request_id in subject
    assert decision_words in reply and grounds in reply and remedies in reply
    assert "Commission nationale de l'informatique et des libertés (CNIL)" in reply


@pytest.mark.slow
async def test_an_upheld_objection_leaves_the_operator_the_processing_to_stop(engine: Engine) -> None:
    request, handle = await submit(engine, "objection", scope="other", language="en",
                                   identity=IdentityMethod.TRUSTED)
    await until(handle, lambda s: s.awaiting_decision)
    await handle.execute_update(DataSubjectRequest.decide, ObjectionDecision(uphold=True))
    # A second decision is refused.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.decide, ObjectionDecision(uphold=False, grounds="x"))
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.decision == "upheld" and len(current.residuals) == 1
    assert current.residuals[0].startswith("operator: the objected processing")
    _, reply = bodies(engine, SUBJECT_EMAIL)[-1]
    assert "Objection accepted: we stop the processing you objected to." in reply
    await wait_for_event(engine, request, "objection_upheld")
    await engine.env.sleep(timedelta(hours=1))
    await clear_residuals(engine.client, handle.id, ResidualsCleared())
    await handle.result()


async def test_a_marketing_objection_takes_no_decision(engine: Engine) -> None:
    _, handle = await submit(engine, "objection", scope="marketing")
    await until(handle, lambda s: s.stage == Stage.CLOSED)
    # Refused by the validator while the workflow runs, or by Temporal once it ended with the answer.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await handle.execute_update(DataSubjectRequest.decide, ObjectionDecision(uphold=True))
    await clear_residuals(engine.client, handle.id, ResidualsCleared())
    await handle.result()

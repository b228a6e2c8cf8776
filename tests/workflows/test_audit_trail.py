"""Issue 18, point 5: the audit trail keeps every field an operator (or a channel) gives with an update.

The test walks the contract itself: every update of every workflow must have been sent below, and every field of
what was sent must be found in the ledger (who and which choice in plain sight, the words sealed in the event's
note). A new update, or a new field, that never reaches the ledger fails here."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.testservice.v1 import UnlockTimeSkippingRequest

from connectors.outside import OutsideSystem
from dsr.domain.model import (
    AnswerStatus,
    Channel,
    ClockPolicy,
    Correspondence,
    Doubt,
    DuplicateAttached,
    Extension,
    IdentityConfirmation,
    IdentityMethod,
    IdentityProof,
    IdentityResend,
    Language,
    Lift,
    ObjectionDecision,
    Outcome,
    OutsideAnswer,
    Quality,
    QualityConfirmation,
    Rectification,
    Refusal,
    RefusalGround,
    RequestKind,
    ResidualsCleared,
    Retry,
    Stage,
    SubjectInformed,
    TriageDecision,
    TriageDismissal,
    TriageInput,
    Withdrawal,
)
from dsr.store.links import StatusLinks
from dsr.store.tasks import OutsideTasks
from intake.answers import ExportFile, record_answer
from intake.submission import Submission, new_request_id, prepare, start
from tests.harness import TEST_KEYRING, ScriptedConnector, exports_of, text_of
from tests.workflows.support import SUBJECT_EMAIL, Engine, clear_residuals, submit, wait_for_stage
from tests.workflows.test_restriction import MarkingConnector, eventually, held, restriction_status
from tests.workflows.test_restriction import submit as submit_restriction
from workflows.aftercare import RequestAftercare
from workflows.audit import instant
from workflows.outside import OutsideSystemTask
from workflows.request import DataSubjectRequest
from workflows.restriction import IN_FORCE, LIFTED, RestrictionInForce
from workflows.triage import TriageMessageWorkflow

# OutsideSystemTask's `answer`: its fields are recorded in the ledger's outside_tasks row (the words sealed) by the
# one door that takes an answer before the update is sent (intake/answers.py); the walk reads them back from there.
WORKFLOWS = (DataSubjectRequest, TriageMessageWorkflow, RequestAftercare, OutsideSystemTask, RestrictionInForce)
PROCESSOR = OutsideSystem(name="chat-tool", type="processor", contact="privacy@chat-tool.example",
                          kinds=frozenset({RequestKind.ERASURE}))


@dataclasses.dataclass
class Trail:
    """What the ledger kept where an update's fields should be: plain values (actors, details) and texts."""

    exact: set[str]
    texts: list[str]

    def holds(self, value: Any) -> bool:
        if isinstance(value, str):  # free text: in a note (sealed) or a detail
            return any(value in text for text in self.texts)
        if isinstance(value, dict):  # corrections: every field=value, sealed
            return all(any(f"{k}={v}" in text for text in self.texts) for k, v in value.items())
        if isinstance(value, Enum):
            return value.value in self.exact
        if isinstance(value, datetime):
            return instant(value) in self.exact
        if isinstance(value, date):
            return value.isoformat() in self.exact
        if isinstance(value, bool | int):
            return str(value) in self.exact
        if isinstance(value, list):  # keys (a withdrawal's purposes): each in a detail
            return all(any(str(v) in text for text in self.texts) for v in value)
        raise AssertionError(f"no rule for a {type(value).__name__} field: add one")


def request_trail(engine: Engine, request_id: str) -> Callable[[], Trail]:
    def read() -> Trail:
        events = engine.ledger.events(request_id)
        exact = {e.actor for e in events} | {v for e in events for v in e.details.values()}
        return Trail(exact, [e.actor for e in events] + [v for e in events for v in e.details.values()]
                     + [e.note for e in events if e.note])
    return read


def answer_trail(engine: Engine, request_id: str, system: str) -> Callable[[], Trail]:
    """The task's row in the ledger, its answer unsealed."""
    def read() -> Trail:
        task = OutsideTasks(engine.ledger.engine, TEST_KEYRING).get(request_id, system)
        assert task is not None and task.answer is not None
        answer = task.answer
        assert answer.answered_at is not None and answer.kept_until is not None
        answered_at = answer.answered_at if answer.answered_at.tzinfo else answer.answered_at.replace(tzinfo=UTC)
        exact = {answer.status.value, answer.answered_by, instant(answered_at), str(answer.export_records),
                 answer.kept_until.isoformat(), task.asked_on.isoformat(), task.type}
        return Trail(exact, [*exact, answer.legal_basis, answer.reason])
    return read


def dismissal_trail(engine: Engine, triage_id: str) -> Callable[[], Trail]:
    def read() -> Trail:
        kept = engine.ledger.triage_dismissal(triage_id)
        assert kept is not None
        values = {str(v) for v in dataclasses.asdict(kept).values()}
        return Trail(values, list(values))
    return read


def demo_consent_profile(config_file: str | Path) -> None:
    """The demo's controller profile as dsr.toml: the intake reads a withdrawal's consent purposes from it."""
    demo = Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml"
    Path(config_file).write_text(demo.read_text(encoding="utf-8"), encoding="utf-8")


def triage_item(engine: Engine, sender: str, reason: str) -> TriageInput:
    received = datetime.now(UTC).replace(microsecond=0)  # the intake refuses a receipt in its own future
    today = received.date()
    request_id = new_request_id(today)
    return TriageInput(
        triage_id=f"triage-{request_id}", request_id=request_id, received_at=received, received_on=today,
        deadline=today + timedelta(days=30), email=sender, name="Claire Durand", subject_line="Mes données",
        body="Bonjour, je voudrais corriger mon nom.", reason=reason, policy=engine.settings.policy)


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", permanent_failures=1, residual=True),
                                         ScriptedConnector("billing"), PROCESSOR,
                                         MarkingConnector("marks", kinds=frozenset({RequestKind.RESTRICTION}))]])
async def test_every_field_of_every_update_reaches_the_ledger(engine: Engine) -> None:
    # Each update with what was sent and where to read it back; an update may be sent in several scenarios (a
    # field that belongs to one kind, e.g. an objection's scope, is empty in the others).
    sent: dict[tuple[str, str], list[tuple[Any, Callable[[], Trail]]]] = {}
    now = (await engine.env.get_current_time()).replace(microsecond=0)

    # A restriction lifted by an operator: one system refuses to remove its mark, and the operator retries. First,
    # on a fresh server: its timer is skipped by env.sleep, which the time-skipping locks later scenarios leave
    # (updates that end their workflow) would hold back.
    restricted, handle = await submit_restriction(engine, "restriction", ground="c")
    trail = request_trail(engine, restricted.request_id)
    await wait_for_stage(engine, handle, Stage.CLOSED)
    restriction = held(engine, restricted)
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    lift = Lift(reason="La procédure judiciaire est close", requested_by="op:lift")
    sent["RestrictionInForce", "lift"] = [(lift, trail)]
    engine.mail.refused.add(SUBJECT_EMAIL)  # the notice of the lift is refused: staff tell the subject by letter
    scheduled = await restriction.execute_update(RestrictionInForce.lift, lift)
    engine.mail.refused.clear()
    assert scheduled.subject_told is False
    informed = SubjectInformed(how="Lettre recommandée AR n° 1A 234 567 8901 2", informed_by="op:informed")
    sent["RestrictionInForce", "subject_informed"] = [(informed, trail)]
    scheduled = await restriction.execute_update(RestrictionInForce.subject_informed, informed)
    assert scheduled.lift_at is not None and scheduled.subject_told is True
    marks = engine.connectors[-1]
    assert isinstance(marks, MarkingConnector) and marks.marked == {SUBJECT_EMAIL}
    marks.permanent_failures = 1  # the system refuses to remove the mark once
    await engine.env.sleep(scheduled.lift_at - await engine.env.get_current_time() + timedelta(hours=1))
    await eventually(lambda: restriction_status(restriction), lambda s: s.failed == ["marks"])
    retry = Retry(requested_by="op:retry-lift")
    sent["RestrictionInForce", "retry"] = [(retry, trail)]
    retried = await restriction.execute_update(RestrictionInForce.retry, retry)
    # Answered after the retried round, with its result; the retry is the operator's, not the engine's.
    assert retried.failed == [] and retried.state == LIFTED and marks.lifts == 1 and marks.marked == set()
    assert [e.actor for e in engine.ledger.events(restricted.request_id) if e.event == "retried"] == ["op:retry-lift"]

    # An erasure, identity by email: the operator doubts, the subject writes and submits again, the deadline is
    # extended, identity confirmed by a document; a system fails, is retried, leaves data to clear by hand.
    erasure, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL, clock=ClockPolicy.RECEIPT)
    trail = request_trail(engine, erasure.request_id)

    async def update(name: str, argument: Any) -> Any:
        sent.setdefault(("DataSubjectRequest", name), []).append((argument, trail))
        return await handle.execute_update(getattr(DataSubjectRequest, name), argument)

    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await update("doubt", Doubt(reason="Le nom ne correspond pas au compte", requested_by="op:doubt"))
    await update("record_correspondence", Correspondence(
        message_key="mk-3f9a1c", received_at=now - timedelta(hours=3), attachments=7,
        message_id="<CAF=reply-42@mail.example.net>", sender_check="dmarc=pass dkim=pass (mx.example.com)"))
    await update("attach_duplicate", DuplicateAttached(
        channel=Channel.FORM, received_at=now - timedelta(hours=2), in_reply_to="<dup-77@mail.example.net>",
        ticket="zendesk:98765"))
    # The subject, on the status page the acknowledgement links to, asks for the identity email again.
    [acknowledgement] = [m for m in engine.mail.to(SUBJECT_EMAIL)
                         if "/status/" in text_of(m) and erasure.request_id in str(m["Subject"])]
    found = re.search(r"/status/(\S+)", text_of(acknowledgement))
    assert found is not None
    assert StatusLinks(TEST_KEYRING).verify(found.group(1), now=datetime.now(UTC)) == erasure.request_id
    await update("resend_identity_email", IdentityResend(via="status_page"))
    assert len([e for e in engine.ledger.events(erasure.request_id) if e.event == "notice_sent"
                and e.details.get("template") == "identity_reminder"]) == 1
    extended = await update("extend_deadline", Extension(reason="Dix ans de commandes", requested_by="op:extend"))
    confirmed = await update("confirm_identity", IdentityConfirmation(
        method=IdentityMethod.DOCUMENT, confirmed_by="op:confirm", note="Passeport vu au guichet",
        proof=IdentityProof.REVIEW))
    # `dsr confirm-identity` prints the stage the confirmation led to, never the one it ended.
    assert confirmed.stage not in (Stage.RECEIVED, Stage.AWAITING_IDENTITY)
    # The processor answers on its page, with an export file: the door records it, then sends the update.
    tasks = OutsideTasks(engine.ledger.engine, TEST_KEYRING)
    for _ in range(100):
        if (task := tasks.get(erasure.request_id, PROCESSOR.name)) is not None:
            break
        await asyncio.sleep(0.1)
    assert task is not None
    answer = OutsideAnswer(status=AnswerStatus.KEPT, legal_basis="Art. 17(3)(e) GDPR; litige en cours",
                           kept_until=date(2031, 6, 30), reason="Conservé pour le litige prud'homal",
                           answered_by="processor", answered_at=datetime.now(UTC), asked_on=task.asked_on,
                           system_type="processor")
    sent["OutsideSystemTask", "answer"] = [(answer, answer_trail(engine, erasure.request_id, PROCESSOR.name))]
    delivered = await record_answer(tasks, engine.client, erasure.request_id, PROCESSOR.name, answer,
                                    exports=exports_of(engine.settings),
                                    upload=ExportFile("chat.csv", "text/csv", b"message\nbonjour\n"))
    assert delivered.delivered and answer.export_records == 1
    # An update that ends a child workflow (the answer ends the told task, the request's child) leaves the
    # time-skipping test server holding one time-skipping lock: result() would then wait in real time for what the
    # later scenarios need (see tests/workflows/test_restriction.py, skipping_again). Give it back.
    await engine.client.test_service.unlock_time_skipping(UnlockTimeSkippingRequest())
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    await update("retry", Retry(requested_by="op:retry"))
    await wait_for_stage(engine, handle, Stage.CLOSED)
    for _ in range(50):  # the follow-up of residual data starts after closure
        if (await handle.query(DataSubjectRequest.status)).residuals:
            break
        await asyncio.sleep(0.1)
    # Answered, the request's workflow ended: its residual data is followed up by its aftercare.
    cleared = ResidualsCleared(cleared_by="op:clear", note="Colonne IP vidée en SQL")
    sent["RequestAftercare", "clear_residuals"] = [(cleared, trail)]
    await clear_residuals(engine.client, erasure.request_id, cleared)
    assert (await handle.result()).outcome == Outcome.FULFILLED
    [extension] = [e for e in engine.ledger.events(erasure.request_id) if e.event == "extended"]
    assert extension.details["deadline"] == extended.deadline.isoformat()  # the new date, beside the old
    assert [e.actor for e in engine.ledger.events(erasure.request_id) if e.event == "retried"] == ["op:retry"]

    # A rectification that came as free text: the operator gives the corrections.
    rectification, handle = await submit(engine, "rectification", details="J'ai déménagé à Lille.")
    trail = request_trail(engine, rectification.request_id)
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    await update("rectify", Rectification(changes={"city": "Lille"}, requested_by="op:rectify"))
    await handle.result()

    # An objection to processing other than marketing, rejected with its grounds.
    objection, handle = await submit(engine, "objection")
    trail = request_trail(engine, objection.request_id)
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)
    await update("decide", ObjectionDecision(uphold=False, grounds="Détection de la fraude sur les comptes",
                                             decided_by="op:decide"))
    await handle.result()

    # A request about a deceased person: the operator confirms the sender's quality.
    post_mortem = prepare(Submission(kind="post_mortem", email=SUBJECT_EMAIL, deceased_email="henri.roux@example.org",
                                     quality="heir"), engine.settings, now=await engine.env.get_current_time())
    handle = await start(engine.client, post_mortem, task_queue=engine.task_queue)
    trail = request_trail(engine, post_mortem.request_id)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await update("confirm_quality", QualityConfirmation(quality=Quality.EXECUTOR, confirmed_by="op:quality",
                                                        note="Attestation du notaire, acte de décès"))
    # The processor is asked too, about the deceased person's data; since a late answer resumes a request, the
    # request waits for one: it answers that it holds none.
    for _ in range(100):
        if (task := tasks.get(post_mortem.request_id, PROCESSOR.name)) is not None:
            break
        await asyncio.sleep(0.1)
    assert task is not None
    none_held = OutsideAnswer(status=AnswerStatus.NO_DATA, answered_by="processor", answered_at=datetime.now(UTC),
                              asked_on=task.asked_on, system_type="processor")
    assert (await record_answer(tasks, engine.client, post_mortem.request_id, PROCESSOR.name, none_held,
                                exports=exports_of(engine.settings))).delivered
    await handle.result()
    assert any(e.note == "deceased: <henri.roux@example.org>" for e in engine.ledger.events(post_mortem.request_id))

    # Refused, and withdrawn, while identity is awaited.
    refused, handle = await submit(engine, "access", identity=IdentityMethod.EMAIL)
    trail = request_trail(engine, refused.request_id)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await update("refuse", Refusal(reason="Les données d'un tiers", requested_by="op:refuse",
                                   ground=RefusalGround.OTHERS_RIGHTS))
    withdrawn, handle = await submit(engine, "portability", identity=IdentityMethod.EMAIL)
    trail = request_trail(engine, withdrawn.request_id)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await update("withdraw", Withdrawal(requested_by="op:withdraw", reason="Retirée par téléphone"))

    # Triage: one email classified by hand, one dismissed as a refused request.
    item = triage_item(engine, "claire.durand@example.org", "unsure: no clear request")
    triage = await engine.client.start_workflow(TriageMessageWorkflow.run, item, id=item.triage_id,
                                                task_queue=engine.task_queue)
    decision = TriageDecision(kind=RequestKind.RECTIFICATION, decided_by="op:classify", language=Language.EN,
                              changes={"last_name": "Durand-Morel"})
    sent["TriageMessage", "classify"] = [(decision, request_trail(engine, item.request_id))]
    await triage.execute_update(TriageMessageWorkflow.classify, decision)
    item = triage_item(engine, "lucie.morel@example.org", "unsure: objection or unsubscribe")
    triage = await engine.client.start_workflow(TriageMessageWorkflow.run, item, id=item.triage_id,
                                                task_queue=engine.task_queue)
    objecting = TriageDecision(kind=RequestKind.OBJECTION, decided_by="op:classify-objection", scope="other")
    sent["TriageMessage", "classify"].append((objecting, request_trail(engine, item.request_id)))
    await triage.execute_update(TriageMessageWorkflow.classify, objecting)
    item = triage_item(engine, "marc.roux@example.org", "unsure: about a deceased person")
    triage = await engine.client.start_workflow(TriageMessageWorkflow.run, item, id=item.triage_id,
                                                task_queue=engine.task_queue)
    heir = TriageDecision(kind=RequestKind.POST_MORTEM, decided_by="op:classify-death", scope="estate",
                          deceased_email="anne.roux@example.org", deceased_name="Anne Roux", quality="executor")
    sent["TriageMessage", "classify"].append((heir, request_trail(engine, item.request_id)))
    await triage.execute_update(TriageMessageWorkflow.classify, heir)
    item = triage_item(engine, "marc.petit@example.org", "unsure: restriction of processing (no ground stated)")
    triage = await engine.client.start_workflow(TriageMessageWorkflow.run, item, id=item.triage_id,
                                                task_queue=engine.task_queue)
    restricting = TriageDecision(kind=RequestKind.RESTRICTION, decided_by="op:classify-restriction", ground="c")
    sent["TriageMessage", "classify"].append((restricting, request_trail(engine, item.request_id)))
    await triage.execute_update(TriageMessageWorkflow.classify, restricting)
    demo_consent_profile(engine.settings.config_file)  # the intake's consent purposes
    item = triage_item(engine, "nina.roux@example.org", "unsure: which consent is withdrawn")
    triage = await engine.client.start_workflow(TriageMessageWorkflow.run, item, id=item.triage_id,
                                                task_queue=engine.task_queue)
    withdrawing = TriageDecision(kind=RequestKind.CONSENT_WITHDRAWAL, decided_by="op:classify-consent",
                                 purposes=["partner_offers"])
    sent["TriageMessage", "classify"].append((withdrawing, request_trail(engine, item.request_id)))
    await triage.execute_update(TriageMessageWorkflow.classify, withdrawing)
    item = triage_item(engine, "paul.roux@example.org", "unsure: about a deceased person")
    triage = await engine.client.start_workflow(TriageMessageWorkflow.run, item, id=item.triage_id,
                                                task_queue=engine.task_queue)
    dismissal = TriageDismissal(reason="Sixième demande identique", decided_by="op:dismiss",
                                refused_as=RequestKind.ACCESS, ground=RefusalGround.EXCESSIVE)
    sent["TriageMessage", "dismiss"] = [(dismissal, dismissal_trail(engine, item.triage_id))]
    await triage.execute_update(TriageMessageWorkflow.dismiss, dismissal)
    await triage.result()

    # The walk: every update of the contract was sent, and every field of what was sent is in the ledger.
    missing: list[str] = []
    for cls in WORKFLOWS:
        definition = workflow._Definition.must_from_class(cls)
        for name, declared in definition.updates.items():
            key = (definition.name or cls.__name__, name)
            assert key in sent, f"{key}: no scenario above sends this update; add one"
            given = [(argument, read()) for argument, read in sent[key]]
            assert declared.arg_types is not None
            assert all(isinstance(argument, declared.arg_types[0]) for argument, _ in given)
            for f in dataclasses.fields(given[0][0]):
                valued = [(getattr(argument, f.name), kept) for argument, kept in given
                          if getattr(argument, f.name) not in (None, "", {})]
                assert valued, f"{key}.{f.name}: give the field a value to look for in some scenario"
                if not all(kept.holds(value) for value, kept in valued):
                    missing.append(f"{key[0]}.{name}: {f.name}")
    assert missing == [], "fields that never reach the ledger:\n" + "\n".join(missing)

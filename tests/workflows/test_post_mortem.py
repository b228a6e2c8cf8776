"""Requests about a deceased person (loi 78-17 art. 85) on the time-skipping server: the sender's quality is
confirmed by an operator before anything is touched, then the deceased person's data is erased (never the
sender's); a refused quality ends with the 12(4) remedies; directives recorded while alive are found and applied."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from connectors.base import OperationJob
from dsr.domain.model import (
    Channel,
    ConnectorOutcome,
    DirectiveInstruction,
    DuplicateAttached,
    IdentityConfirmation,
    IdentityMethod,
    Outcome,
    Quality,
    QualityConfirmation,
    Refusal,
    RefusalGround,
    RequestInput,
    RequestStatus,
    ResidualsCleared,
    Stage,
)
from dsr.store.directives import DirectivesRegister
from dsr.store.suppressions import SuppressionList
from intake.submission import Submission, SubmissionError, prepare, start
from intake.web.status import status_view
from tests.harness import ScriptedConnector, keep_history, text_of
from tests.workflows.support import SUBJECT_EMAIL, SUBJECT_NAME, Engine, clear_residuals, events, status, wait_for_event
from workflows.request import DataSubjectRequest

DECEASED = "henri.dupont@example.org"


@dataclass
class RecordingConnector(ScriptedConnector):
    """A scripted system that remembers whose data it was asked to erase."""

    erased_for: list[str] = field(default_factory=list)

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        self.erased_for.append(job.subject.email)
        return await super().erase(job)


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    return [RecordingConnector("crm"), RecordingConnector("billing", found=0)]


async def submit(engine: Engine, *, language: str = "fr", scope: str = "", quality: str = "heir",
                 identity: IdentityMethod = IdentityMethod.TRUSTED, documents: int = 0,
                 ) -> tuple[RequestInput, WorkflowHandle]:
    # Even a channel that authenticated the sender (trusted) does not prove their quality: it is reviewed.
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=identity))
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind="post_mortem", email=SUBJECT_EMAIL, name=SUBJECT_NAME, language=language,
                                 scope=scope, deceased_email=DECEASED, deceased_name="Henri Dupont",
                                 quality=quality, details="Mon père est décédé le 2 novembre.",
                                 documents=documents), settings, now=now)
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


async def mail_to(engine: Engine, to: str, count: int) -> list[tuple[str, str]]:
    for _ in range(100):
        found = bodies(engine, to)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} emails expected, got {len(bodies(engine, to))}")


@pytest.mark.parametrize(("language", "quality_words", "closed_words"), [
    ("fr", "en qualité d'héritier du défunt", "nous avons clôturé les comptes de la personne décédée"),
    ("en", "you act as an heir of the deceased person", "we have closed the deceased person's accounts"),
])
async def test_once_the_quality_is_confirmed_the_deceased_persons_data_is_erased(
    engine: Engine, language: str, quality_words: str, closed_words: str,
) -> None:
    request, handle = await submit(engine, language=language)
    assert request.deceased is not None and request.deceased.email == DECEASED and request.scope == "closure"
    current = await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    assert current.identity == IdentityMethod.DOCUMENT and current.directives == ""
    crm, billing = engine.connectors
    assert isinstance(crm, RecordingConnector) and crm.calls == []  # nothing touched before the review
    # The identity path is closed to this kind: an operator confirms the sender's quality instead.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.confirm_identity, IdentityConfirmation(
            method=IdentityMethod.DOCUMENT, confirmed_by="operator:alice"))
    # Without directives designating them, nobody is "designated".
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(
            quality=Quality.DESIGNATED))
    await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(
        quality=Quality.HEIR, confirmed_by="operator:alice", note="acte de notoriété du 10/11, acte de décès"))

    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.outcome == Outcome.FULFILLED and current.quality == "heir"
    assert isinstance(billing, RecordingConnector)
    assert crm.erased_for == [DECEASED] and billing.erased_for == [DECEASED]  # never the sender's data
    await wait_for_event(engine, request, "reply_sent")  # the ledger's last batch may trail the stage
    trail = events(engine, request)
    assert trail.index("directives_none") < trail.index("quality_confirmed") < trail.index("suppressed") \
        < trail.index("connector_done") < trail.index("reply_sent")
    [confirmed] = [e for e in engine.ledger.events(request.request_id) if e.event == "quality_confirmed"]
    assert confirmed.details == {"quality": "heir"} and confirmed.note.startswith("acte de notoriété")
    # The register's case (art. 85): the sender's aim is kept on receipt, with no personal data.
    [received] = [e for e in engine.ledger.events(request.request_id) if e.event == "received"]
    assert received.details["scope"] == "closure"
    assert SuppressionList(engine.ledger).is_suppressed(DECEASED)  # the opposition to further processing

    sent = await mail_to(engine, SUBJECT_EMAIL, 3)  # acknowledgement, request for documents, reply
    assert engine.mail.to(DECEASED) == []  # nothing is ever sent to the deceased person's address
    subject, reply = sent[-1]
    assert request.request_id in subject
    flat = " ".join(reply.split())
    assert quality_words in flat and closed_words in flat
    assert "85" in flat and DECEASED not in reply and "Henri" not in reply  # no more than the systems and acts
    asked = " ".join(sent[1][1].split())
    assert ("acte de décès" if language == "fr" else "death certificate") in asked
    await handle.result()
    await keep_history(handle, f"post_mortem_closure_{language}")


@pytest.mark.slow
@pytest.mark.parametrize(("language", "words"), [
    ("fr", "Avec votre demande, nous avons reçu 2 fichiers de votre part."),
    ("en", "With your request, we received 2 files from you."),
])
async def test_documents_sent_with_the_form_are_counted_and_not_asked_for_again(
        engine: Engine, language: str, words: str) -> None:
    request, handle = await submit(engine, language=language, documents=2)
    assert request.documents == 2
    await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    acknowledged, asked = (" ".join(body.split()) for _, body in (await mail_to(engine, SUBJECT_EMAIL, 2))[:2])
    assert words in asked
    assert ("2 fichiers avec votre demande" if language == "fr" else "2 files with your request") in acknowledged
    assert "Répondez à ce message en joignant" not in asked and "Please reply to this message attaching" not in asked
    [received] = [e for e in engine.ledger.events(request.request_id) if e.event == "received"]
    assert received.details["documents"] == "2"
    # The operator is told there are documents to review, and how to confirm the quality (not the identity).
    for _ in range(100):
        told = [m for m in engine.mail.to(engine.settings.policy.operator_email)
                if " ".join(str(m["Subject"]).split()).endswith((
                    "2 document(s) sent with the web form to review",
                    "2 justificatif(s) envoyé(s) avec le formulaire web à examiner"))]
        if told:
            break
        await asyncio.sleep(0.1)
    assert told, [str(m["Subject"]) for m in engine.mail.to(engine.settings.policy.operator_email)]
    assert f"dsr confirm-quality {request.request_id}" in text_of(told[0])
    # Past the reminder's day and the identity wait: nothing is asked again of a sender who sent the documents,
    # and the request is not closed for want of them (our review is what it waits for).
    await engine.env.sleep(timedelta(days=engine.settings.policy.identity_timeout_days + 1))
    assert "identity_reminder_sent" not in events(engine, request) and len(bodies(engine, SUBJECT_EMAIL)) == 2
    current = await status(handle)
    assert current.stage == Stage.AWAITING_IDENTITY and current.outcome is None
    await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(
        quality=Quality.HEIR, confirmed_by="operator:alice"))
    assert (await handle.result()).outcome == Outcome.FULFILLED


@pytest.mark.slow
async def test_documents_of_a_submission_joining_the_request_are_counted_on_it(engine: Engine) -> None:
    request, handle = await submit(engine, language="en")
    await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    await wait_for_event(engine, request, "identity_requested")  # the ledger's events trail the stage
    asked = status_view(engine.ledger, request.request_id, "Europe/Paris")
    assert asked is not None and asked.waiting_for == "quality_document"
    await handle.execute_update(DataSubjectRequest.attach_duplicate, DuplicateAttached(
        channel=Channel.FORM, received_at=await engine.env.get_current_time(), documents=3))
    await wait_for_event(engine, request, "duplicate_attached")
    [joined] = [e for e in engine.ledger.events(request.request_id) if e.event == "duplicate_attached"]
    assert joined.details["documents"] == "3"
    view = status_view(engine.ledger, request.request_id, "Europe/Paris")
    assert view is not None and (view.waiting_for, view.documents) == ("quality_review", 3)
    await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason="test over", ground=RefusalGround.QUALITY))
    await handle.result()


async def test_a_sender_who_cannot_show_their_quality_is_refused_with_the_remedies(engine: Engine) -> None:
    request, handle = await submit(engine, language="en")
    await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    await handle.execute_update(DataSubjectRequest.refuse, Refusal(
        reason="The document sent is not a death certificate.", ground=RefusalGround.QUALITY,
        requested_by="operator:alice"))
    final = await handle.result()
    assert final.outcome == Outcome.REFUSED
    crm, _ = engine.connectors
    assert crm.calls == []
    _, letter = (await mail_to(engine, SUBJECT_EMAIL, 3))[-1]
    flat = " ".join(letter.split())
    assert "only the person designated in their directives or, failing that, their heirs" in flat
    assert "The document sent is not a death certificate." in flat
    assert "judicial remedy" in flat and "lodge a complaint" in flat
    [refused] = [e for e in engine.ledger.events(request.request_id) if e.event == "refused"]
    assert refused.details["ground"] == "quality" and "quality_confirmed" not in events(engine, request)


async def test_the_quality_ground_is_for_post_mortem_requests_only(engine: Engine) -> None:
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=IdentityMethod.DOCUMENT))
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind="erasure", email=SUBJECT_EMAIL), settings, now=now)
    handle = await start(engine.client, request, task_queue=engine.task_queue)
    await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason="x", ground=RefusalGround.QUALITY))
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(quality=Quality.HEIR))
    await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason="test over"))
    await handle.result()


@pytest.mark.slow
@pytest.mark.parametrize("language", ["fr", "en"])
async def test_directives_recorded_while_alive_decide_who_acts_and_what_is_done(engine: Engine, language: str) -> None:
    register = DirectivesRegister(engine.ledger)
    register.record(DECEASED, instruction=DirectiveInstruction.KEEP, text="Gardez mes photos pour mes enfants.",
                    designee_email=SUBJECT_EMAIL, designee_name=SUBJECT_NAME)
    request, handle = await submit(engine, language=language, quality="designated")
    current = await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    assert current.directives == "keep"
    [found] = [e for e in engine.ledger.events(request.request_id) if e.event == "directives_found"]
    assert found.details == {"instruction": "keep", "designates": "true", "sender_designated": "true"}
    # The directives designate the sender: an heir's quality is not what they act as.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(quality=Quality.HEIR))
    await handle.execute_update(DataSubjectRequest.confirm_quality,
                                QualityConfirmation(quality=Quality.DESIGNATED, confirmed_by="operator:bob"))
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.outcome == Outcome.FULFILLED and current.connectors == []  # kept: no system touched
    crm, _ = engine.connectors
    assert crm.calls == [] and not SuppressionList(engine.ledger).is_suppressed(DECEASED)
    assert len(current.residuals) == 1 and "erase nothing" in current.residuals[0]
    shown = register.show(DECEASED)
    assert shown is not None and shown.applied_by == request.request_id
    _, reply = (await mail_to(engine, SUBJECT_EMAIL, 3))[-1]
    flat = " ".join(reply.split())
    kept = "Nous n'avons donc rien effacé" if language == "fr" else "We have therefore erased nothing"
    assert kept in flat and "Gardez" not in flat  # the directives' words stay sealed, for staff
    await clear_residuals(engine.client, handle.id, ResidualsCleared())
    await handle.result()
    await keep_history(handle, f"post_mortem_directives_keep_{language}")


@pytest.mark.slow
async def test_directives_naming_someone_else_keep_the_sender_from_acting(engine: Engine) -> None:
    DirectivesRegister(engine.ledger).record(DECEASED, instruction="erase", designee_email="notaire@example.net")
    _, handle = await submit(engine, language="en")
    current = await until(handle, lambda s: s.stage == Stage.AWAITING_IDENTITY)
    assert current.directives == "erase"
    for quality in (Quality.HEIR, Quality.DESIGNATED):
        with pytest.raises(WorkflowUpdateFailedError, match="update"):
            await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(quality=quality))
    await handle.execute_update(DataSubjectRequest.refuse, Refusal(reason="Not the designated person.",
                                                                   ground=RefusalGround.QUALITY))
    assert (await handle.result()).outcome == Outcome.REFUSED
    await keep_history(handle, "post_mortem_refused_not_designated")


@pytest.mark.parametrize(("fields", "error"), [
    ({"deceased_email": ""}, "deceased_email is not a valid address"),
    ({"deceased_email": SUBJECT_EMAIL.upper()}, "the sender's own address"),
    ({"quality": "cousin"}, "quality must be one of heir, executor, designated"),
    ({"scope": "marketing"}, "scope must be one of closure, estate"),
    ({"documents": 6}, "documents: at most 5 files"),
])
def test_a_post_mortem_submission_names_someone_else(engine: Engine, fields: dict[str, Any], error: str) -> None:
    base = Submission(kind="post_mortem", email=SUBJECT_EMAIL, deceased_email=DECEASED)
    with pytest.raises(SubmissionError, match=error):
        prepare(replace(base, **fields), engine.settings)
    with pytest.raises(SubmissionError, match="only for post_mortem"):
        prepare(Submission(kind="erasure", email=SUBJECT_EMAIL, deceased_email=DECEASED), engine.settings)

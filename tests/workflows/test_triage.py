"""The triage workflow on the time-skipping server: a dismissed email leaves a record and no files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dsr.model import RefusalGround, RequestKind, TriageDismissal, TriageInput
from tests.harness import attachments_of
from tests.workflows.conftest import OPERATOR_EMAIL, Engine
from workflows.triage import TriageMessageWorkflow

SENDER = "claire.durand@example.org"
TODAY = datetime.now(UTC).date()  # the test server's clock starts at the real time


async def test_a_dismissed_email_deletes_its_files_and_is_kept_in_the_ledger(engine: Engine) -> None:
    """Before: the reason lived only in the workflow's history (gone after the retention period) and an ID
    copy sent with the email stayed on the store for ever."""
    request_id = "dsr-2026-03-TRIAG1"
    files = attachments_of(engine.settings)
    files.save(request_id, "passeport.pdf", "application/pdf", b"%PDF scan of an identity document")
    item = TriageInput(
        triage_id=f"triage-{request_id}", request_id=request_id,
        received_at=datetime.now(UTC), received_on=TODAY, deadline=TODAY + timedelta(days=30),
        email=SENDER, name="Claire Durand", subject_line="Question",
        body="Mon père est décédé, que faire de son compte ?", reason="unsure: about a deceased person",
        policy=engine.settings.policy,
    )
    handle = await engine.client.start_workflow(
        TriageMessageWorkflow.run, item, id=item.triage_id, task_queue=engine.task_queue)
    await handle.execute_update(TriageMessageWorkflow.dismiss,
                                TriageDismissal("handled by post with the family", "dpo@example.com"))
    await handle.result()
    status = await handle.query(TriageMessageWorkflow.status)

    assert status.state == "dismissed"
    kept = engine.ledger.triage_dismissal(item.triage_id)
    assert kept is not None
    assert (kept.reason, kept.decided_by, kept.classifier_reason) == (
        "handled by post with the family", "dpo@example.com", "unsure: about a deceased person")
    assert kept.attachments_deleted == 1 and kept.deadline == TODAY + timedelta(days=30)
    assert files.list(request_id) == []
    # The operator heard of the message once; nothing went to the sender, and the record names nobody.
    assert len(engine.mail.to(OPERATOR_EMAIL)) == 1 and engine.mail.to(SENDER) == []


async def test_a_refusal_from_triage_answers_the_sender_with_the_ground_and_the_remedies(engine: Engine) -> None:
    """Before: a dismissal answered nobody, even when it was a request the controller would not act on."""
    request_id = "dsr-2026-03-TRIAG2"
    item = TriageInput(
        triage_id=f"triage-{request_id}", request_id=request_id,
        received_at=datetime.now(UTC), received_on=TODAY, deadline=TODAY + timedelta(days=30),
        email=SENDER, name="Claire Durand", subject_line="Encore", body="Envoyez-moi tout, encore.",
        reason="unsure: no clear request", policy=engine.settings.policy,
    )
    handle = await engine.client.start_workflow(
        TriageMessageWorkflow.run, item, id=item.triage_id, task_queue=engine.task_queue)
    reason = "Sixième demande identique ce mois-ci ; la copie vous a été envoyée le 2 mars."
    await handle.execute_update(TriageMessageWorkflow.dismiss, TriageDismissal(
        reason, "dpo@example.com", refused_as=RequestKind.ACCESS, ground=RefusalGround.EXCESSIVE))
    await handle.result()
    [answer] = engine.mail.to(SENDER)
    body = answer.get_body(("plain",)).get_content()
    assert reason in body and "article 12, paragraphe 5" in body and "réclamation" in body
    kept = engine.ledger.triage_dismissal(item.triage_id)
    assert kept is not None and (kept.refused_as, kept.ground) == ("access", "excessive")

"""The triage workflow on the time-skipping server: a dismissed email leaves a record and no files."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dsr.domain.model import RefusalGround, RequestKind, TriageDecision, TriageDismissal, TriageInput
from intake.submission import new_request_id
from tests.harness import attachments_of, keep_history, text_of
from tests.workflows.support import OPERATOR_EMAIL, Engine
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
    await keep_history(handle, "dismissed")
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
    await keep_history(handle, "dismissed_as_refused_request")
    [answer] = engine.mail.to(SENDER)
    body = text_of(answer)
    assert reason in body and "article 12, paragraphe 5" in body and "réclamation" in body
    kept = engine.ledger.triage_dismissal(item.triage_id)
    assert kept is not None and (kept.refused_as, kept.ground) == ("access", "excessive")


async def test_a_classified_email_becomes_the_request_it_would_have_been(engine: Engine) -> None:
    """``dsr triage classify``: the request is submitted under the reserved id, with the email's receipt time;
    the operator was reminded at 09:00 in the controller's zone a week before the deadline."""
    zone = ZoneInfo(engine.settings.policy.timezone)
    # The intake refuses a receipt time in the future of its own (real) clock: a fresh server starts at it.
    received = datetime.now(UTC)
    today = received.astimezone(zone).date()
    request_id = new_request_id(today)  # reserved by the mailbox when the email came in
    item = TriageInput(
        triage_id=f"triage-{request_id}", request_id=request_id,
        received_at=received, received_on=today, deadline=today + timedelta(days=8),
        email=SENDER, name="Claire Durand", subject_line="Mes données",
        body="Que savez-vous de moi ?", reason="unsure: no clear request", policy=engine.settings.policy,
    )
    handle = await engine.client.start_workflow(
        TriageMessageWorkflow.run, item, id=item.triage_id, task_queue=engine.task_queue)
    # Past the reminder (09:00 local on deadline - 7, tomorrow) with nobody deciding.
    await engine.env.sleep(timedelta(days=2))
    reminded = [m for m in engine.mail.to(OPERATOR_EMAIL) if "reminder" in text_of(m)]
    assert len(reminded) == 1

    status = await handle.execute_update(TriageMessageWorkflow.classify, TriageDecision(kind=RequestKind.ACCESS))
    assert (status.state, status.request_id, status.kind) == ("classified", request_id, RequestKind.ACCESS)
    await handle.result()
    await keep_history(handle, "classified_after_reminder")
    row = engine.ledger.get_request(request_id)
    assert row is not None and row.kind == RequestKind.ACCESS and row.channel.value == "email"
    # The reminder's instant came from the local activity: 09:00 in the policy's zone, not 09:00 UTC.
    history = await handle.fetch_history()
    [timer] = [e.timer_started_event_attributes for e in history.events if e.HasField("timer_started_event_attributes")]
    [set_at] = [e.event_time.ToDatetime(tzinfo=UTC) for e in history.events
                if e.HasField("timer_started_event_attributes")]
    fires = set_at + timer.start_to_fire_timeout.ToTimedelta()
    nine_local = datetime.combine(today + timedelta(days=1), time(9), zone)
    assert abs(fires - nine_local) < timedelta(seconds=5)  # (at 09:00 UTC it would be an hour or two off)


async def test_a_withdrawal_classified_from_triage_names_its_purposes(engine: Engine) -> None:
    """``dsr triage classify ID --kind consent_withdrawal --purpose KEY``: the request withdraws those purposes
    only, and the triage_classified event records them."""
    from tests.workflows.test_audit_trail import demo_consent_profile

    demo_consent_profile(engine.settings.config_file)
    received = datetime.now(UTC)
    today = received.astimezone(ZoneInfo(engine.settings.policy.timezone)).date()
    request_id = new_request_id(today)
    item = TriageInput(
        triage_id=f"triage-{request_id}", request_id=request_id,
        received_at=received, received_on=today, deadline=today + timedelta(days=30),
        email=SENDER, name="Claire Durand", subject_line="Partenaires",
        body="Je retire mon consentement aux offres des partenaires.", reason="unsure: which consent",
        policy=engine.settings.policy,
    )
    handle = await engine.client.start_workflow(
        TriageMessageWorkflow.run, item, id=item.triage_id, task_queue=engine.task_queue)
    # (Refusals, an unknown key or a purpose on another kind: tests/intake/test_intake_http.py, on a dev server.)
    await engine.env.sleep(timedelta(minutes=1))  # the operator's notice sent, the triage waits for a decision
    decided = await handle.execute_update(TriageMessageWorkflow.classify, TriageDecision(
        kind=RequestKind.CONSENT_WITHDRAWAL, decided_by="op:alice", purposes=["partner_offers"]))
    assert (decided.state, decided.request_id) == ("classified", request_id)
    await handle.result()
    [event] = [e for e in engine.ledger.events(request_id) if e.event == "triage_classified"]
    assert event.actor == "op:alice" and event.details["purposes"] == "partner_offers"
    row = engine.ledger.get_request(request_id)
    assert row is not None and row.kind == RequestKind.CONSENT_WITHDRAWAL
    # (The request it started withdraws only that purpose: tests/intake/test_intake_http.py, on a dev server.)

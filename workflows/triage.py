"""An email the classifier was unsure about, waiting durably for a human to say what it is.

Never guessed, never dropped: the message sits in stage ``needs_attention`` on the dashboards (with the
deadline it would have as a request, since the month runs from receipt whatever the triage takes), the
operators get a notice, and the workflow waits for one of two updates:

* ``classify`` (``dsr triage classify``): the request is submitted through the intake service, under the
  reserved request id and with the email's receipt time, so it is the same request it would have been had
  the classifier been sure (duplicates of an open request are attached to it as usual);
* ``dismiss`` (``dsr triage dismiss``): not a request (spam, a newsletter unsubscribe...); the files that came
  with the email are deleted, and the reason is kept in the ledger (sealed) as the record of why nothing was
  done, after Temporal has forgotten this workflow.

A reminder goes to the operators a week before the deadline (09:00 in the controller's zone) if nobody has decided
by then.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.search_attributes as sa
    from dsr.domain.model import (
        CANONICAL_FIELDS,
        AuditEvent,
        LocalMoment,
        Notice,
        NoticeTemplate,
        RefusalGround,
        RequestKind,
        Stage,
        TriageDecision,
        TriageDismissal,
        TriageDismissed,
        TriageInput,
        TriageMessage,
        TriageStatus,
    )
    from workflows.contract import (
        DEADLINES,
        LEDGER,
        NOTICE,
        STORAGE,
        SUBMIT,
        IntakeActivities,
        LedgerActivities,
        NoticeActivities,
        local_instant,
        summarised,
    )
from workflows.audit import triage_details, triage_note
from workflows.request import RequestRejected


@workflow.defn(name="TriageMessage")
class TriageMessageWorkflow:
    @workflow.init
    def __init__(self, item: TriageInput) -> None:
        self._item = item
        self._decision: TriageDecision | None = None
        self._dismissal: TriageDismissal | None = None
        self._request_id = ""
        self._attached = False
        self._deciding = False  # a classify update is submitting the request

    @workflow.run
    async def run(self, item: TriageInput) -> TriageStatus:
        workflow.set_current_details(self._details())
        await self._notify(reminder=False)
        # A week before the deadline, at 09:00 in the controller's zone: a local activity, so that tzdata never
        # changes a replayed history.
        remind_at = await workflow.execute_local_activity(
            local_instant, LocalMoment(day=item.deadline - timedelta(days=7), hour=9, timezone=item.policy.timezone),
            **DEADLINES)
        wait = remind_at - workflow.now()
        decided = await self._wait(wait) if wait > timedelta(0) else False
        if not decided:
            await self._notify(reminder=True)
            await workflow.wait_condition(lambda: self._decision is not None or self._dismissal is not None)
        if self._dismissal is not None:
            await self._record_dismissal(self._dismissal)
            if self._dismissal.refused_as is not None:
                await self._tell_refusal(self._dismissal)
        workflow.upsert_search_attributes([sa.DSR_STAGE.value_set(Stage.CLOSED.value)])
        workflow.set_current_details(self._details())
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    async def _wait(self, timeout: timedelta) -> bool:
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None or self._dismissal is not None,
                timeout=timeout,
                timeout_summary="triage reminder",
            )
        except TimeoutError:
            return False
        return True

    async def _record_dismissal(self, dismissal: TriageDismissal) -> None:
        # An ID copy sent with a message that is no request has no purpose left (CNIL: delete once used).
        deleted = await workflow.execute_activity_method(
            IntakeActivities.delete_identity_documents, self._item.request_id,
            **summarised(STORAGE, "delete the email's files"))
        await workflow.execute_activity_method(
            LedgerActivities.record_triage_dismissal,
            TriageDismissed(
                triage_id=self._item.triage_id, received_at=self._item.received_at, deadline=self._item.deadline,
                classifier_reason=self._item.reason, reason=dismissal.reason.strip(),
                decided_by=dismissal.decided_by, attachments_deleted=deleted, dismissed_at=workflow.now(),
                refused_as=RequestKind(dismissal.refused_as).value if dismissal.refused_as else "",
                ground=RefusalGround(dismissal.ground).value if dismissal.refused_as else ""),
            **summarised(LEDGER, "record the dismissal"))

    async def _tell_refusal(self, dismissal: TriageDismissal) -> None:
        """Art. 12(4): a request the controller does not act on is answered, with the reasons and remedies."""
        assert dismissal.refused_as is not None  # only refusals are told (see run)
        kind = RequestKind(dismissal.refused_as)
        await workflow.execute_activity_method(
            NoticeActivities.send_notice,
            Notice(
                # Under the triage id: the reserved request id has no ledger row to log the notice against.
                request_id=self._item.triage_id,
                template=NoticeTemplate.REFUSAL,
                to=self._item.email,
                language=self._item.language,
                context={
                    "reference": self._item.request_id,
                    "kind": kind.value,
                    "received": self._item.received_on.isoformat(),
                    "reason": dismissal.reason.strip(),
                    "ground": RefusalGround(dismissal.ground).value,
                },
                in_reply_to=self._item.in_reply_to,
            ),
            **summarised(NOTICE, "notice: refusal to the sender"),
        )

    async def _notify(self, *, reminder: bool) -> None:
        reason = self._item.reason + (" (reminder: the deadline is in a week)" if reminder else "")
        await workflow.execute_activity_method(
            NoticeActivities.send_notice,
            Notice(
                request_id=self._item.triage_id,
                template=NoticeTemplate.OPERATOR_TRIAGE,
                to=self._item.policy.operator_email,
                language=self._item.language,
                context={
                    "reference": self._item.triage_id,
                    "received": self._item.received_on.isoformat(),
                    "deadline": self._item.deadline.isoformat(),
                    "error": reason,
                },
            ),
            **summarised(NOTICE, "notice: operator triage"),
        )

    # --- updates and queries ---------------------------------------------------------------------

    @workflow.update
    async def classify(self, decision: TriageDecision) -> TriageStatus:
        self._deciding = True
        try:
            submitted = await workflow.execute_activity_method(
                IntakeActivities.submit_triaged,
                args=[self._item, decision],
                **summarised(SUBMIT, f"submit as {decision.kind.value}"),
            )
        except ActivityError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else "the request could not be started"
            raise RequestRejected(f"{self._item.triage_id}: {message}") from None
        finally:
            self._deciding = False
        self._request_id, self._attached = submitted.request_id, submitted.attached
        self._decision = decision
        # Who decided what the email was, on the request it became: the record outlives this workflow. (A new
        # request records itself first; until then the ledger refuses the event and the activity retries.)
        await workflow.execute_activity_method(
            LedgerActivities.record_event,
            AuditEvent(request_id=submitted.request_id, event="triage_classified", actor=decision.decided_by,
                       details=triage_details(self._item.triage_id, decision, submitted.attached),
                       note=triage_note(decision)),
            **summarised(LEDGER, "ledger: triage_classified"))
        return self.status()

    @classify.validator
    def _validate_classify(self, decision: TriageDecision) -> None:
        self._reject_if_decided()
        RequestKind(decision.kind)
        if decision.changes and decision.kind != RequestKind.RECTIFICATION:
            raise RequestRejected("changes are only for rectification requests")
        if decision.scope and (decision.kind != RequestKind.OBJECTION or decision.scope not in ("marketing", "other")) \
                and (decision.kind != RequestKind.POST_MORTEM or decision.scope not in ("closure", "estate")):
            raise RequestRejected("a scope is marketing or other for objections, closure or estate for post_mortem")
        if decision.kind == RequestKind.POST_MORTEM and not decision.deceased_email.strip():
            raise RequestRejected("a post_mortem request names the deceased person (their email address)")
        if decision.kind != RequestKind.POST_MORTEM and (decision.deceased_email or decision.quality):
            raise RequestRejected("the deceased person and the sender's quality are only for post_mortem requests")
        if decision.purposes and decision.kind != RequestKind.CONSENT_WITHDRAWAL:
            raise RequestRejected("purposes are only for consent_withdrawal requests")
        if (decision.kind == RequestKind.RESTRICTION) != (decision.ground in ("a", "b", "c", "d")):
            raise RequestRejected("a restriction needs its Art. 18(1) ground (a, b, c or d), and only a restriction "
                                  "takes one")
        unknown = sorted(set(decision.changes) - CANONICAL_FIELDS)
        if unknown:
            fields = ", ".join(sorted(CANONICAL_FIELDS))
            raise RequestRejected(f"cannot rectify {', '.join(unknown)}; fields are {fields}")

    @workflow.update
    def dismiss(self, dismissal: TriageDismissal) -> TriageStatus:
        self._dismissal = dismissal
        return self.status()

    @dismiss.validator
    def _validate_dismiss(self, dismissal: TriageDismissal) -> None:
        self._reject_if_decided()
        if not dismissal.reason.strip():
            raise RequestRejected("a dismissal needs a reason (kept as the record of why nothing was done)")
        if dismissal.refused_as is not None:
            kind, ground = RequestKind(dismissal.refused_as), RefusalGround(dismissal.ground)
            if ground == RefusalGround.OTHERS_RIGHTS and kind not in (RequestKind.ACCESS, RequestKind.PORTABILITY):
                raise RequestRejected("the rights of others (Art. 15(4), 20(4)) limit a copy: access or portability")
            if ground == RefusalGround.ERASURE_EXCEPTION and kind != RequestKind.ERASURE:
                raise RequestRejected("the exceptions of Art. 17(3) apply to erasure requests only")

    def _reject_if_decided(self) -> None:
        if self._deciding:
            raise RequestRejected(f"{self._item.triage_id} is being submitted right now")
        if self._decision is not None:
            raise RequestRejected(f"{self._item.triage_id} was already classified as {self._decision.kind.value}")
        if self._dismissal is not None:
            raise RequestRejected(f"{self._item.triage_id} was already dismissed")

    @workflow.query
    def status(self) -> TriageStatus:
        state = "classified" if self._decision else "dismissed" if self._dismissal else "waiting"
        return TriageStatus(
            triage_id=self._item.triage_id,
            request_id=self._request_id or self._item.request_id,
            received=self._item.received_on,
            deadline=self._item.deadline,
            reason=self._item.reason,
            state=state,
            kind=self._decision.kind if self._decision else None,
            dismissal_reason=self._dismissal.reason if self._dismissal else "",
            attached_to=self._request_id if self._attached else "",
        )

    @workflow.query
    def message(self) -> TriageMessage:
        return TriageMessage(
            email=self._item.email,
            name=self._item.name,
            subject_line=self._item.subject_line,
            body=self._item.body,
            language=self._item.language,
        )

    def _details(self) -> str:
        status = self.status()
        lines = [
            f"**Triage** {status.triage_id} · {status.state}",
            f"received {status.received.isoformat()} · deadline if a request {status.deadline.isoformat()}",
            f"why: {status.reason or '—'}",
        ]
        if status.kind:
            lines.append(f"classified as {status.kind.value}: request {status.request_id}")
        if status.dismissal_reason:
            lines.append(f"dismissed: {status.dismissal_reason}")
        return "\n\n".join(lines)

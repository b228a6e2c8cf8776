"""What outlives the answer to a request, as a short workflow of its own: ``RequestAftercare``.

The request's workflow (``DataSubjectRequest``) ends when the request is answered or closed; if its reply left a
download link, or data a system's API could not clear, its closing's local activity starts this one
(``start_aftercare``, id ``aftercare-<reference>``, see :func:`dsr.domain.aftercare.aftercare_id`: started once,
whatever the retries), and the request's run ends in that same workflow task. Not a child: a child's start is
answered by the server in one workflow task more of the request (the largest step left between the answer and the
run's end, bench/throughput.py), and an abandoned child is started only once that answer came. What that costs: no
parent-child link in the UI (the request's details name this workflow; the ids share the reference). The subject's
turn (per-subject order) is released by the same activity, before: a later request of the same person never waits
for a link to expire.

- The download link: a durable timer to its expiry, then the exports and the bundle are deleted
  (``exports_deleted`` in the ledger).
- Residual data: the operator is told what and where (``residuals_reported``), reminded every
  ``escalation_repeat_days`` until the ``clear_residuals`` update (``dsr clear-residuals``); ``DsrResidual`` is
  true meanwhile.

- The supplementary letter: systems reached by a person that the reply told as not answered yet (a withdrawal of
  consent answers before they confirm; any kind goes on when an operator records ``--no-answer``). The answer's
  door (``intake/answers.py``) records each answer in the ledger, then signals ``outside_settled`` here; this
  workflow first reads the ledger (an answer given before it started), then waits for the others until the last
  day their answer page takes one (``pending_answers``: a durable timer), or until the operator clears the residual
  data (our team saw to them). Then the subject gets one letter, in the reply's thread, written from the ledger
  (``send_supplement``, its Message-ID derived from the reference: never two): ``supplement_sent`` in the ledger,
  or ``notice_failed`` and the operator told when the mail server refuses it.

All are obligations, so a cancellation from the UI is refused (the reason in the details and the ledger; what
the two follow-up workflows share is ``workflows/follow_up.py``, events written in batches by ``record_events``);
``code_locked`` (the download page closed its code) tells the operator, as the request did while it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.search_attributes as sa
    from dsr.domain.aftercare import (
        AFTERCARE_WORKFLOW,
        SUPPLEMENT_SIGNAL,
        AftercareInput,
        AftercareStatus,
        OutsideSettled,
        PendingAnswers,
        SupplementInput,
    )
    from dsr.domain.model import (
        AnswerStatus,
        CodeLocked,
        ExportsDeletion,
        NoticeTemplate,
        ResidualsCleared,
        Stage,
        UpdateResult,
    )
    from workflows.contract import (
        LEDGER,
        NOTICE,
        REQUEST_REJECTED,
        STORAGE,
        OutsideActivities,
        ReplyActivities,
        summarised,
    )
from workflows.follow_up import FollowUp


@workflow.defn(name=AFTERCARE_WORKFLOW)
class RequestAftercare(FollowUp):
    @workflow.init
    def __init__(self, care: AftercareInput) -> None:
        self._follow_up(request_id=care.request_id, operator_email=care.operator_email, language=care.language,
                        notice_context=care.notice_context)
        self._care = care
        self._exports_deleted = False
        self._residuals: list[str] = list(care.residuals)
        self._cleared: ResidualsCleared | None = None
        self._cleared_recorded = False  # in the ledger: the update answers only then
        self._codes_locked: set[str] = set()
        # The supplementary letter: the systems it still waits for, those the answer's door said were answered
        # (a signal may come before the ledger is read), and where it stands ("", waiting, sent, failed).
        self._supplement_pending: set[str] = set()
        self._settled: set[str] = set()
        self._supplement = ""

    @workflow.run
    async def run(self, care: AftercareInput) -> AftercareStatus:
        self._update_details()
        # Refused: the bundle must be deleted when its link expires, residual data cleared by hand.
        await self._run_follow_up(self._work, workflow_name="aftercare", refusal=(
            "cancellation refused: the request is answered; this workflow deletes the export when its link "
            "expires and follows up the residual data, which no one may skip (terminating it would leave them)"))
        return self.status()

    async def _work(self) -> None:
        await asyncio.gather(self._expire_link(), self._follow_up_residuals(), self._send_supplement())

    async def _expire_link(self) -> None:
        expires_at = self._care.link_expires_at
        if expires_at is None:
            return
        await workflow.sleep(max(expires_at - workflow.now(), timedelta(0)), summary="download link expiry")
        await workflow.execute_activity_method(
            ReplyActivities.delete_exports, ExportsDeletion(self._care.request_id),
            **summarised(STORAGE, "delete exports"))
        self._exports_deleted = True
        self._note("exports_deleted")
        self._update_details()

    async def _follow_up_residuals(self) -> None:
        """Data a system's API could not clear: the reply told the subject our team erases it by other means,
        so the operator is told what and where, and reminded until they confirm it is done."""
        if not self._residuals:
            return
        workflow.upsert_search_attributes([sa.DSR_RESIDUAL.value_set(True)])
        self._note("residuals_reported", details={
            "connectors": ",".join(sorted({line.split(":", 1)[0] for line in self._residuals})),
            "lines": str(len(self._residuals)),
        })
        listing = "\n".join(f"- {line}" for line in self._residuals)
        await self._notify_operator(NoticeTemplate.OPERATOR_RESIDUAL, residuals=listing)
        repeat = timedelta(days=self._care.escalation_repeat_days)
        while True:
            try:
                await workflow.wait_condition(lambda: self._cleared is not None, timeout=repeat,
                                              timeout_summary="residual reminder")
                break
            except TimeoutError:
                await self._notify_operator(NoticeTemplate.OPERATOR_RESIDUAL, residuals=listing, reminder="yes")
                self._note("residuals_reminded")
        cleared = self._cleared
        assert cleared is not None
        self._residuals = []
        workflow.upsert_search_attributes([sa.DSR_RESIDUAL.value_set(False)])
        await self._audit("residuals_cleared", actor=cleared.cleared_by,
                          details={"note_length": str(len(cleared.note))}, note=cleared.note)
        self._cleared_recorded = True
        self._update_details()

    async def _send_supplement(self) -> None:
        """One letter to the subject once every system the reply told as not answered yet has answered, or the
        follow-up gave up on it (its answer page closed, or the operator cleared the residual data)."""
        plan = self._care.supplement
        if plan is None or not plan.systems:
            return
        self._supplement = "waiting"
        self._supplement_pending = set(plan.systems) - self._settled
        found = await workflow.execute_activity_method(
            OutsideActivities.pending_answers, PendingAnswers(self._care.request_id, list(plan.systems)),
            **summarised(LEDGER, "ledger: answers of the systems pending at the reply"))
        self._supplement_pending -= set(found.answered)
        self._update_details()
        if self._supplement_pending and found.give_up_at is not None:
            self._note("supplement_waiting", details={"systems": ",".join(sorted(self._supplement_pending)),
                                                      "until": found.give_up_at.isoformat()})
            with contextlib.suppress(TimeoutError):  # the last day came: the follow-up gives up on the others
                await workflow.wait_condition(
                    lambda: not self._supplement_pending or self._cleared is not None,
                    timeout=max(found.give_up_at - workflow.now(), timedelta(0)),
                    timeout_summary="supplementary letter: the last day their answer is taken")
        waited_for = sorted(self._supplement_pending)
        try:
            sent = await workflow.execute_activity_method(
                OutsideActivities.send_supplement,
                SupplementInput(request_id=self._care.request_id, language=self._care.language, plan=plan,
                                cleared=self._cleared is not None),
                **summarised(NOTICE, "supplementary letter to the subject"))
        except ActivityError as err:
            # Refused for good (the address, a 5xx) or not writable: no one may claim the subject was told.
            cause = err.cause
            self._supplement = "failed"
            self._update_details()
            await self._audit("notice_failed", details={
                "template": "supplement", "error_type": getattr(cause, "type", None) or ""})
            await self._notify_operator(NoticeTemplate.OPERATOR_RESIDUAL, residuals=(
                "- the supplementary letter to the subject (how the systems not answered at the reply answered "
                f"since: {', '.join(plan.systems)}) could not be sent: tell them by other means "
                f"(`dsr tasks list --all` shows the answers)"))
            return
        self._supplement = "sent"
        self._supplement_pending = set()
        self._update_details()
        self._note("supplement_sent", details={
            "systems": ",".join(plan.systems),
            "told": ",".join(f"{name}:{status}" for name, status in sorted(sent.told.items())),
            "gave_up": ",".join(waited_for), "message_id": sent.message_id})

    # --- updates, signals, queries ------------------------------------------------------------------

    @workflow.update
    async def clear_residuals(self, cleared: ResidualsCleared) -> UpdateResult:
        self._cleared = cleared
        await workflow.wait_condition(lambda: self._cleared_recorded)
        return UpdateResult(stage=Stage.CLOSED, deadline=self._care.deadline, extended=self._care.extended)

    @clear_residuals.validator
    def _validate_clear_residuals(self, cleared: ResidualsCleared) -> None:
        if not self._residuals or self._cleared is not None:
            raise ApplicationError(f"{self._care.request_id} has no residual data waiting to be cleared",
                                   type=REQUEST_REJECTED, non_retryable=True)

    @workflow.signal(name=SUPPLEMENT_SIGNAL)
    def outside_settled(self, settled: OutsideSettled) -> None:
        """The answer's door recorded a system's answer in the ledger (an operator's ``no_answer`` is none)."""
        if settled.status != AnswerStatus.NO_ANSWER.value:
            self._settled.add(settled.system)
            self._supplement_pending.discard(settled.system)

    @workflow.signal
    async def code_locked(self, locked: CodeLocked) -> None:
        """The download page closed this request's code after too many wrong answers: the operator is told,
        once per page (the ledger has it already)."""
        if locked.page in self._codes_locked:
            return
        self._codes_locked.add(locked.page)
        await self._notify_operator(NoticeTemplate.OPERATOR_CODE_LOCKED, page=locked.page, wrong=str(locked.wrong))

    @workflow.query
    def status(self) -> AftercareStatus:
        return AftercareStatus(
            request_id=self._care.request_id,
            link_expires_at=self._care.link_expires_at,
            exports_deleted=self._exports_deleted,
            residuals=list(self._residuals),
            residuals_cleared=self._cleared_recorded,
            cancellation_refused=self._cancellation_refused,
            supplement_pending=sorted(self._supplement_pending),
            supplement=self._supplement,
        )

    # --- helpers ---------------------------------------------------------------------------------------

    def _update_details(self) -> None:
        """Markdown for the UI's "current details" (encrypted by the codec, decoded for staff)."""
        care = self._care
        lines = [f"aftercare of **{care.request_id}** (answered; the request's workflow has ended)"]
        if care.link_expires_at is not None:
            lines.append(
                f"- download link: {'expired, export deleted' if self._exports_deleted else 'valid until'} "
                f"{care.link_expires_at:%Y-%m-%d %H:%M} UTC")
        if self._residuals:
            lines += ["", "**residual data to clear by hand** (then `dsr clear-residuals`):",
                      *(f"- {line}" for line in self._residuals)]
        elif care.residuals:
            lines.append("- residual data: cleared")
        if self._supplement == "waiting":
            lines.append("- supplementary letter to the subject: waiting for "
                         + (", ".join(sorted(self._supplement_pending)) or "the ledger"))
        elif self._supplement:
            lines.append(f"- supplementary letter to the subject: {self._supplement}")
        if self._cancellation_refused:
            lines += ["", f"**{self._cancellation_refused}**"]
        workflow.set_current_details("\n".join(lines))

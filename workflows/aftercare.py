"""What outlives the answer to a request, as a short workflow of its own: ``RequestAftercare``.

The request's workflow (``DataSubjectRequest``) ends when the request is answered or closed; if its reply left a
download link, or data a system's API could not clear, it starts this one as a child workflow with
``ParentClosePolicy.ABANDON`` (id ``aftercare-<reference>``, see :func:`dsr.domain.aftercare.aftercare_id`), and
ends. A child rather than a workflow started by an activity: the start is a command in the request's own history
(deterministic, replayed, exactly once, no extra activity), the UI links the two, and ABANDON lets the child
outlive its parent. The subject's turn (per-subject order) was released before, at the answer: a later request of
the same person never waits for a link to expire.

- The download link: a durable timer to its expiry, then the exports and the bundle are deleted
  (``exports_deleted`` in the ledger).
- Residual data: the operator is told what and where (``residuals_reported``), reminded every
  ``escalation_repeat_days`` until the ``clear_residuals`` update (``dsr clear-residuals``); ``DsrResidual`` is
  true meanwhile.

Both are obligations, so a cancellation from the UI is refused (the reason in the details and the ledger; what
the two follow-up workflows share is ``workflows/follow_up.py``, events written in batches by ``record_events``);
``code_locked`` (the download page closed its code) tells the operator, as the request did while it ran.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from dsr.domain.aftercare import AftercareInput, AftercareStatus
    from dsr.domain.model import (
        CodeLocked,
        ExportsDeletion,
        NoticeTemplate,
        ResidualsCleared,
        Stage,
        UpdateResult,
    )
    from workflows import search_attributes as sa
from workflows.contract import REQUEST_REJECTED, STORAGE, ReplyActivities, summarised
from workflows.follow_up import FollowUp


@workflow.defn(name="RequestAftercare")
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

    @workflow.run
    async def run(self, care: AftercareInput) -> AftercareStatus:
        self._update_details()
        # Refused: the bundle must be deleted when its link expires, residual data cleared by hand.
        await self._run_follow_up(self._work, workflow_name="aftercare", refusal=(
            "cancellation refused: the request is answered; this workflow deletes the export when its link "
            "expires and follows up the residual data, which no one may skip (terminating it would leave them)"))
        return self.status()

    async def _work(self) -> None:
        await asyncio.gather(self._expire_link(), self._follow_up_residuals())

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
        if self._cancellation_refused:
            lines += ["", f"**{self._cancellation_refused}**"]
        workflow.set_current_details("\n".join(lines))

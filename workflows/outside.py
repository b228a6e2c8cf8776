"""One request's part in one system reached by a person (``processor`` by email, ``manual``): ask, remind, wait.

``OutsideSystemTask`` is a child of the request's workflow, one per such system, with the id
``<reference>--<system>`` (:func:`dsr.domain.outside.outside_workflow_id`: nothing personal). It opens the task in
the ledger (which may already hold an answer: a late one, taken after an earlier run found none), emails the
contact with a signed link to the answer page, reminds them on the days the activity computed, and waits for the
``answer`` update (sent by the answer page or ``dsr tasks complete``, after they recorded the answer in the
ledger). It returns the system's report like a connector does; with no answer by the date it fails with
``OutsideNoAnswer``, which the request treats as a connector needing attention (an operator's ``retry`` asks
again, or takes the answer given meanwhile).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import ConnectorOutcome, OutsideAnswer
    from dsr.domain.outside import (
        ANSWER_UPDATE,
        NO_ANSWER_ERROR,
        AnswerRefused,
        OutsideMail,
        OutsideTaskInput,
        answer_outcome,
        check_answer,
    )
    from workflows.contract import LEDGER, NOTICE, REQUEST_REJECTED, OutsideActivities, summarised

__all__ = ["OutsideSystemTask"]


@workflow.defn(name="OutsideSystemTask")
class OutsideSystemTask:
    @workflow.init
    def __init__(self, task: OutsideTaskInput) -> None:
        self._task = task
        self._answer: OutsideAnswer | None = None

    @workflow.run
    async def run(self, task: OutsideTaskInput) -> ConnectorOutcome:
        opened = await workflow.execute_activity_method(
            OutsideActivities.open_outside_task, task, **summarised(LEDGER, f"{task.system}: open the task"))
        answer = opened.answer
        if answer is None:
            assert opened.answer_by is not None
            if self._answer is None and not task.told:
                await self._mail(opened.answer_by, 0)
            for number, at in enumerate(opened.reminders, start=1):
                if await self._answered_before(at, f"{task.system}: reminder {number}"):
                    break
                await self._mail(opened.answer_by, number)
            if not await self._answered_before(opened.answer_by, f"{task.system}: answer-by date"):
                # The controller's day (west of UTC, the instant it ends falls on the next UTC date).
                day = opened.answer_by_day or opened.answer_by.date()
                raise ApplicationError(f"{task.system}: no answer by {day.isoformat()}",
                                       type=NO_ANSWER_ERROR, non_retryable=True)
            answer = self._answer
        assert answer is not None
        answer.asked_on = answer.asked_on or opened.asked_on
        answer.system_type = opened.system_type
        return answer_outcome(task.system, task.kind, answer, changes=task.changes,
                              purposes=[purpose.key for purpose in task.purposes])

    async def _answered_before(self, at: datetime, summary: str) -> bool:
        if self._answer is not None:
            return True
        left = at - workflow.now()
        if left <= timedelta(0):
            return False
        try:
            await workflow.wait_condition(lambda: self._answer is not None, timeout=left, timeout_summary=summary)
        except TimeoutError:
            return False
        return True

    async def _mail(self, answer_by: datetime, reminder: int) -> None:
        task = self._task
        await workflow.execute_activity_method(
            OutsideActivities.send_outside_mail,
            OutsideMail(request_id=task.request_id, system=task.system, kind=task.kind, subject=task.subject,
                        answer_by=answer_by, reminder=reminder, changes=dict(task.changes),
                        purposes=list(task.purposes)),
            **summarised(NOTICE, f"{task.system}: " + (f"reminder {reminder}" if reminder else "request sent")))

    @workflow.update(name=ANSWER_UPDATE)
    def answer(self, answer: OutsideAnswer) -> None:
        """The answer, already recorded in the ledger by whoever took it."""
        self._answer = answer

    @answer.validator
    def _validate_answer(self, answer: OutsideAnswer) -> None:
        if self._answer is not None:
            raise ApplicationError(f"{self._task.system} was already answered", type=REQUEST_REJECTED,
                                   non_retryable=True)
        try:
            check_answer(answer)
        except AnswerRefused as refused:
            raise ApplicationError(str(refused), type=REQUEST_REJECTED, non_retryable=True) from None

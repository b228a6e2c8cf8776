"""The request workflow's side of its child workflows: the code that starts them, run in the request's sandbox.

``DataSubjectRequest`` starts two kinds of child: a restriction held in force (``workflows/restriction.py``,
:func:`hold`; and a request that ends a ground of one, :func:`end_grounds`), and the task of each system reached by a
person (``workflows/outside.py``, :func:`run_outside_task`, :func:`start_told_task`). (Its aftercare,
``workflows/aftercare.py``, is not a child: the closing's local activity starts it, see ``_start_aftercare``.) The
request needs of those children only their classes, as references naming the workflow type and its input and result;
so it imports them passed through (loaded once by the worker, as the activity references of ``workflows/contract.py``
are) and not executed again in each request's sandbox: a workflow class is validated by the SDK whenever its module
is executed, and the child modules were 40% of the 12 ms of CPU it took to make a request's sandbox (measured by
``prepare_workflow``, 40 sandboxes). Each child's own runs still import its module in a sandbox of their own.

Deterministic workflow code, run by :class:`workflows.request.DataSubjectRequest` (passed in as ``flow``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    import workflows.search_attributes as sa
    from dsr.domain.model import (
        AnswerStatus,
        ConnectorOutcome,
        GroundEnd,
        Outcome,
        RecordAction,
        RequestKind,
        RestrictionGround,
        RestrictionInput,
        Stage,
        restriction_id,
    )
    from dsr.domain.outside import OutsideTaskInput, outside_workflow_id
    from workflows.contract import LEDGER, RestrictionActivities, summarised
    from workflows.outside import OutsideSystemTask
    from workflows.restriction import RestrictionInForce

if TYPE_CHECKING:
    from workflows.request import DataSubjectRequest


async def hold(flow: DataSubjectRequest) -> None:
    """An answered restriction is held in force by its own workflow until it is lifted."""
    request = flow._request
    if request.kind != RequestKind.RESTRICTION or flow._outcome != Outcome.FULFILLED:
        return
    marked, by_hand, outside = [], [], []
    for progress in flow._progress.values():
        outcome = progress.outcome
        if outcome is None:
            continue
        actions = {line.action for line in outcome.report}
        held_nothing = outcome.answer is not None and outcome.answer.status == AnswerStatus.NO_DATA
        if (outcome.answer is not None or RecordAction.RESIDUAL in actions) and not held_nothing:
            by_hand.append(progress.connector)  # a system answering "no data" restricted nothing: nothing to lift
        if outcome.answer is not None and outcome.answer.status != AnswerStatus.NO_DATA:
            outside.append(progress.connector)  # asked to restrict, and holding data: told of the lift
        if RecordAction.RESTRICTED in actions:
            marked.append(progress.connector)
    held = RestrictionInput(
        request_id=request.request_id, subject=request.subject, language=request.language, ground=request.ground,
        operator_email=request.policy.operator_email, marked=sorted(marked), by_hand=sorted(by_hand),
        notice_days=request.policy.restriction_lift_notice_days,
        escalation_repeat_days=request.policy.escalation_repeat_days, in_reply_to=flow._thread(),
        timezone=request.policy.timezone, notice_context=flow._notice_context(stage=Stage.CLOSED.value),
        recipients=list(flow._recipients_notified), outside=sorted(outside), subject_key=request.subject_key,
    )
    child = restriction_id(request.request_id)
    with contextlib.suppress(WorkflowAlreadyStartedError):  # a run reset after the start finds it running
        await workflow.start_child_workflow(
            RestrictionInForce.run, held, id=child, parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            static_summary=f"restriction in force · Art. 18(1)({request.ground})",
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(sa.DSR_KIND, RequestKind.RESTRICTION.value),
                SearchAttributePair(sa.DSR_STAGE, Stage.CLOSED.value),
            ]),
        )
    flow._restriction = child
    await flow._audit("restriction_held", details={"workflow": child, "ground": request.ground,
                                                   "marked": ",".join(sorted(marked))})


async def end_grounds(flow: DataSubjectRequest, ground: RestrictionGround) -> None:
    """This request (a rectification answered, an objection decided) may end restrictions of the same person."""
    told = await workflow.execute_activity_method(
        RestrictionActivities.end_restriction_grounds,
        GroundEnd(request_id=flow._request.request_id, ground=ground.value, at=workflow.now()),
        **summarised(LEDGER, "restrictions: ground ended"))
    if told:
        await flow._audit("restriction_ground_ended", details={"ground": ground.value, "restrictions": str(told)})


async def run_outside_task(task: OutsideTaskInput) -> ConnectorOutcome:
    """Run the task as a child of the calling workflow; an operator's retry after a failure starts a new run
    under the same id."""
    return await workflow.execute_child_workflow(
        OutsideSystemTask.run, task, id=outside_workflow_id(task.request_id, task.system),
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"{task.system}: {task.kind.value} (answered by a person)",
    )


async def start_told_task(task: OutsideTaskInput) -> None:
    """Start the task of a system already told (``task.told``: its first email went), to remind its contact and
    take the answer; it outlives the calling workflow (ABANDON): a withdrawal of consent answers the subject the
    same day, and the answer, when it comes, is recorded in the ledger (``dsr tasks``)."""
    with contextlib.suppress(WorkflowAlreadyStartedError):  # a run reset after the start: it follows up already
        await workflow.start_child_workflow(
            OutsideSystemTask.run, task, id=outside_workflow_id(task.request_id, task.system),
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            static_summary=f"{task.system}: {task.kind.value} (answered by a person)",
        )

"""Activities of per-subject order: asking a subject's queue for the turn, checking that a holder lives.

A workflow can signal another workflow but cannot start one; the request's first ask may find no queue
(nobody of that person is in their systems), so the ask is a signal-with-start on the worker's own client.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from dsr.domain.model import QueueAsk, SubjectQueueState

QUEUE_WORKFLOW = "SubjectQueue"


@activity.defn(name="ask_subject_turn")
async def ask_subject_turn(ask: QueueAsk) -> bool:
    """Signal ``ask`` to the subject's queue, starting it if it is not running. Idempotent: the queue
    answers a request asking twice (a retried attempt) as it answered the first time."""
    await activity.client().start_workflow(
        QUEUE_WORKFLOW,
        SubjectQueueState(),
        id=ask.queue_id,
        task_queue=activity.info().task_queue,
        start_signal="ask",
        start_signal_args=[ask.ask],
        # No personal data: the id is a blind index, the summary says what the workflow is for.
        static_summary="subject queue · one request at a time in this person's systems",
    )
    return True


@activity.defn(name="subject_request_running")
async def subject_request_running(request_id: str) -> bool:
    """Whether the request holding a subject's turn still runs (a workflow terminated by hand never
    releases it)."""
    try:
        described = await activity.client().get_workflow_handle(request_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING

"""Activities of per-subject order: asking a subject's queue for the turn, checking that a holder lives.

A workflow can signal another workflow but cannot start one; the request's first ask may find no queue
(nobody of that person is in their systems), so the ask is an update-with-start on the worker's own client. The
update answers who holds the turn: a request granted at once goes on when the activity returns, without waiting
for a signal (one workflow task less on its critical path).

The ask also writes the request's ledger events noted before it (``identity_confirmed``, ``processing``), beside
the update, in one transaction of their own: the activity doing the step records it, instead of a ledger activity
next to it (one activity and one workflow task less per request, ``bench/throughput.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import record_batch
from dsr.domain.model import QueueAsk, SubjectQueueState, SubjectTurn
from dsr.store.ledger import Ledger

QUEUE_WORKFLOW = "SubjectQueue"
QUEUE_UPDATE = "ask_turn"


class SubjectActivities:
    """The subject's queue, asked from the worker's client; the events leading to the ask, in the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @activity.defn(name="ask_subject_turn")
    async def ask_subject_turn(self, ask: QueueAsk) -> SubjectTurn:
        """Ask the subject's queue for the turn (update ``ask_turn``), starting it if it is not running; answers
        who holds it now; and write ``ask.events`` to the ledger meanwhile. Idempotent: the queue answers a request
        asking twice (a retried attempt) as it answered the first time, and a retry writes no event twice (their
        keys are the activity's, as ``record_events``'s are: ``record_batch``)."""
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            QUEUE_WORKFLOW,
            SubjectQueueState(),
            id=ask.queue_id,
            task_queue=activity.info().task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # No personal data: the id is a blind index, the summary says what the workflow is for.
            static_summary="subject queue · one request at a time in this person's systems",
        )
        asking = activity.client().execute_update_with_start_workflow(
            QUEUE_UPDATE, ask.ask, start_workflow_operation=start, result_type=SubjectTurn)
        if not ask.events:
            turn: SubjectTurn = await asking
            return turn
        # The database's round trip beside the server's (a thread, which keeps the activity's context: the ledger is
        # synchronous); both must succeed for the activity to, and a retry redoes whichever did not.
        turn, _ = await asyncio.gather(asking, asyncio.to_thread(record_batch, self._ledger, ask.events))
        return turn


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

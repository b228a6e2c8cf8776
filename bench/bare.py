"""The bare workflow of bench/throughput.py: a light access request's useful work and nothing else.

The same activities and HTTP calls as the engine's ``DataSubjectRequest`` for a request whose identity is trusted
(the request's row, the acknowledgement, every connector at once, the final reply with its bundle), with the
engine's own activity options and the engine's way of calling them (the row in a local activity in the first
workflow task, as the engine writes it), but without the rest: no audit events, no subject's turn, no plan, no deadline
watcher, no aftercare. What the engine costs beyond it is the price of its bookkeeping.

Loaded by the worker that bench/throughput.py starts (``throughput.py --serve-bare``), beside the engine's
activities; kept apart from throughput.py so that the workflow sandbox imports only this.
"""

from __future__ import annotations

import asyncio
import dataclasses

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import (
        ConnectorOutcome,
        ConnectorTask,
        Notice,
        NoticeTemplate,
        ReplyInput,
        RequestInput,
        RequestRecordInput,
    )
    from workflows.contract import (
        CONNECTOR,
        LEDGER_LOCAL,
        NOTICE,
        REPLY,
        ConnectorActivities,
        LedgerActivities,
        NoticeActivities,
        ReplyActivities,
    )


@dataclasses.dataclass
class BareInput:
    request: RequestInput
    connectors: list[str]


@workflow.defn(name="BareRequest", sandboxed=True)
class BareRequest:
    @workflow.run
    async def run(self, bare: BareInput) -> int:
        request = bare.request
        await workflow.execute_local_activity_method(
            LedgerActivities.record_request,
            RequestRecordInput(request_id=request.request_id, kind=request.kind, channel=request.channel,
                               subject=request.subject, received_at=request.received_at,
                               deadline=request.deadlines.normal.due, language=request.language),
            **LEDGER_LOCAL,
        )
        context = {"reference": request.request_id, "kind": request.kind.value,
                   "received": request.received_on.isoformat(), "deadline": request.deadlines.normal.due.isoformat(),
                   "stage": "received", "identity": "trusted"}
        acknowledgement = asyncio.create_task(workflow.execute_activity_method(
            NoticeActivities.send_notice,
            Notice(request_id=request.request_id, template=NoticeTemplate.ACKNOWLEDGEMENT, to=request.subject.email,
                   language=request.language, context=context, key="mail-1"),
            **NOTICE,
        ))
        outcomes: list[ConnectorOutcome] = await asyncio.gather(*(
            workflow.execute_activity_method(
                ConnectorActivities.run_connector,
                ConnectorTask(request_id=request.request_id, connector=name, kind=request.kind,
                              subject=request.subject, schedule=1),
                **CONNECTOR,
            ) for name in bare.connectors))
        await acknowledgement
        await workflow.execute_activity_method(
            ReplyActivities.send_reply,
            ReplyInput(request_id=request.request_id, kind=request.kind, language=request.language,
                       subject=request.subject, received=request.received_on, deadline=request.deadlines.normal.due,
                       extended=False, extension_reason="", outcomes=outcomes, in_reply_to=None,
                       key="final-reply"),
            **REPLY,
        )
        return len(outcomes)

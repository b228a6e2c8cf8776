"""Withdrawals of consent (Art. 7(3)), the part of a ``DataSubjectRequest`` that differs from the other kinds.

"It shall be as easy to withdraw as to give consent": no identity check beyond control of the address (the
request came from it, or from a signed link sent to it), carried out the same day. The purposes withdrawn were
frozen into the request from the controller profile when it started (``RequestInput.purposes``), each with what
withdrawing means in each system. First the ledger records the withdrawal (blind index and purpose keys only,
outliving a later erasure), then every system mapped to those purposes runs in one fan-out that does not wait for
the person's turn (a withdrawal conflicts with nothing another request does), then the reply says per system what
was done, and that the processing before the withdrawal stays lawful (Art. 7(3), second sentence).

Systems reached by a person (a ``processor`` by email, a ``manual`` system's owner) that a withdrawn purpose maps
are **told** first, the same day: their task is opened in the ledger and its first email sent here, then an
``OutsideSystemTask`` that outlives the request (ABANDON) reminds them and takes their answer. The reply does not
wait for it: it says per system what the engine knows when it is written (told on that day and not confirmed yet,
or, when the ledger already holds an answer, confirmed / nothing to stop / our team stops it), and a system not
confirmed yet leaves a residual line that the request's aftercare follows up until an operator clears it. Once
every such system has answered (or the follow-up gave up on it), the aftercare writes to the subject again: one
supplementary letter saying how each answered (``workflows/aftercare.py``).

Deterministic workflow code, run by :class:`workflows.request.DataSubjectRequest` (passed in as ``flow``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import (
        AnswerStatus,
        ConnectorOutcome,
        ConnectorProgress,
        ConnectorState,
        ConsentAction,
        ConsentPurpose,
        ConsentRecord,
        OutsideAnswer,
        RecordAction,
        RecordReport,
        RequestKind,
        Stage,
    )
    from dsr.domain.outside import CONSENT_DATASET, OutsideMail, OutsideTaskInput, answer_outcome
    from workflows.contract import LEDGER, NOTICE, LedgerActivities, OutsideActivities, summarised
from workflows.children import start_told_task

if TYPE_CHECKING:
    from workflows.request import DataSubjectRequest


def is_consent_withdrawal(flow: DataSubjectRequest) -> bool:
    return flow._request.kind == RequestKind.CONSENT_WITHDRAWAL


def mapped(flow: DataSubjectRequest, connectors: list[str]) -> list[str]:
    """The connectors at least one withdrawn purpose maps: the others hold nothing for these purposes."""
    wanted = {name for purpose in flow._request.purposes for name in purpose.actions}
    return [name for name in connectors if name in wanted]


def actions_for(flow: DataSubjectRequest, connector: str) -> list[ConsentAction]:
    return [purpose.actions[connector] for purpose in flow._request.purposes if connector in purpose.actions]


def purposes_for(flow: DataSubjectRequest, connector: str) -> list[ConsentPurpose]:
    """The withdrawn purposes that map ``connector``, each with that connector's action only."""
    return [dataclasses.replace(purpose, actions={connector: purpose.actions[connector]})
            for purpose in flow._request.purposes if connector in purpose.actions]


async def tell_outside(flow: DataSubjectRequest, systems: list[str]) -> None:
    """Tell each system reached by a person to stop processing for the purposes mapping it, and record what the
    engine knows of it as the system's (done) progress: the reply reads it like a connector's report."""
    request = flow._request
    for name in systems:
        purposes = purposes_for(flow, name)
        keys = [purpose.key for purpose in purposes]
        task = OutsideTaskInput(request_id=request.request_id, system=name, kind=RequestKind.CONSENT_WITHDRAWAL,
                                subject=request.subject, deadline=flow._deadline.due, now=workflow.now(),
                                purposes=purposes, told=True)
        progress = flow._progress.setdefault(name, ConnectorProgress(connector=name))
        progress.state = ConnectorState.RUNNING
        progress.attempts += 1
        flow._update_details()
        try:
            opened = await workflow.execute_activity_method(
                OutsideActivities.open_outside_task, task, **summarised(LEDGER, f"{name}: open the task"))
            answer = opened.answer
            if answer is None:
                assert opened.answer_by is not None
                await workflow.execute_activity_method(
                    OutsideActivities.send_outside_mail,
                    OutsideMail(request_id=request.request_id, system=name, kind=RequestKind.CONSENT_WITHDRAWAL,
                                subject=request.subject, answer_by=opened.answer_by, purposes=purposes),
                    **summarised(NOTICE, f"{name}: request sent"))
                answer = OutsideAnswer(status=AnswerStatus.NO_ANSWER, asked_on=opened.asked_on)
                await start_told_task(task)
            answer.asked_on = answer.asked_on or opened.asked_on
            answer.system_type = opened.system_type
            outcome = answer_outcome(name, RequestKind.CONSENT_WITHDRAWAL, answer, purposes=keys)
            flow._note("outside_told", details={"connector": name, "purposes": ",".join(keys),
                                                "answer": answer.status.value})
        except ActivityError as err:
            # Not told (its contact is no valid address, the mail server refuses it): our team does it by hand.
            cause = err.cause
            error_type = cause.type if isinstance(cause, ApplicationError) and cause.type else ""
            report = [RecordReport(CONSENT_DATASET, key, RecordAction.RESIDUAL,
                                   note=f"could not be told by email ({error_type or 'error'}): tell them to stop "
                                        "processing the person's data for this purpose")
                      for key in keys]
            outcome = ConnectorOutcome(connector=name, report=report, counts={"residual": len(report)})
            await flow._audit("connector_failed", details={"connector": name, "error_type": error_type})
        progress.state = ConnectorState.DONE
        progress.outcome = outcome
        progress.error = ""
        flow._update_details()


async def carry_out(flow: DataSubjectRequest) -> None:
    """The withdrawal's work between intake and closure; sets the outcome when answered."""
    request = flow._request
    flow._set_stage(Stage.PROCESSING)
    await flow._audit("processing", stage=Stage.PROCESSING)
    keys = [purpose.key for purpose in request.purposes]
    record = ConsentRecord(request_id=request.request_id, subject=request.subject, purposes=keys)
    # Read first, then record: what an earlier request withdrew is told as such, even if the recording is retried.
    earlier = await workflow.execute_activity_method(
        LedgerActivities.consent_already_withdrawn, record, **summarised(LEDGER, "consent withdrawals: read"))
    await workflow.execute_activity_method(
        LedgerActivities.record_consent_withdrawal, record, **summarised(LEDGER, "consent withdrawals: record"))
    flow._consent_earlier = list(earlier)
    await flow._audit("consent_withdrawn", details={"purposes": ",".join(keys),
                                                    "already_withdrawn": ",".join(earlier)})
    if await flow._fan_out(False):
        await flow._reply()

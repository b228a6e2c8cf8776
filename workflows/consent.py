"""Withdrawals of consent (Art. 7(3)), the part of a ``DataSubjectRequest`` that differs from the other kinds.

"It shall be as easy to withdraw as to give consent": no identity check beyond control of the address (the
request came from it, or from a signed link sent to it), carried out the same day. The purposes withdrawn were
frozen into the request from the controller profile when it started (``RequestInput.purposes``), each with what
withdrawing means in each system. First the ledger records the withdrawal (blind index and purpose keys only,
outliving a later erasure), then every system mapped to those purposes runs in one fan-out that does not wait for
the person's turn (a withdrawal conflicts with nothing another request does), then the reply says per system what
was done, and that the processing before the withdrawal stays lawful (Art. 7(3), second sentence).

Deterministic workflow code, run by :class:`workflows.request.DataSubjectRequest` (passed in as ``flow``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import ConsentAction, ConsentRecord, RequestKind, Stage
from workflows.contract import LEDGER, LedgerActivities, summarised

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

"""Objections (Art. 21), the part of a ``DataSubjectRequest`` that differs from the other kinds.

* **Direct marketing** (21(2)-(3)): absolute, no balancing, no identity check (stopping marketing to an address
  harms no one, and every day of waiting is another campaign). The subject goes on the suppression list first
  (blind index only; it outlives a later erasure), then every system stops marketing in the same fan-out as the
  other kinds, without waiting for the person's turn behind a long export: an opt-out conflicts with nothing
  another request does. Systems with no opt-out of their own leave residual lines for the operator.
* **Other processing** (21(1)): the processing stops unless the controller demonstrates compelling legitimate
  grounds, which only a person can weigh: the request waits in ``needs_attention`` for ``decide`` (uphold, or
  reject with the grounds, kept sealed in the ledger), and the reply tells the subject the decision, its
  reasons and the 12(4) remedies. An upheld objection leaves the operator a residual line: stop the processing.

Deterministic workflow code, run by :class:`workflows.request.DataSubjectRequest` (passed in as ``flow``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import (
        NoticeTemplate,
        ObjectionScope,
        RequestKind,
        RestrictionGround,
        Stage,
        Suppression,
        objection_scope,
    )
    from workflows.contract import LEDGER, LedgerActivities, summarised
from workflows import children

if TYPE_CHECKING:
    from workflows.request import DataSubjectRequest

UPHELD_RESIDUAL = ("operator: the objected processing - stop it for this person in every system and tool that "
                   "does it, as the subject described it (dsr status, subject_text)")
"""The residual line an upheld objection leaves: only a person knows which processing the subject meant."""


def is_marketing_objection(flow: DataSubjectRequest) -> bool:
    return objection_scope(flow._request.kind, flow._request.scope) == ObjectionScope.MARKETING


async def carry_out(flow: DataSubjectRequest) -> None:
    """The objection's work between identity and closure; sets the outcome when answered."""
    flow._set_stage(Stage.PROCESSING)
    await flow._audit("processing", stage=Stage.PROCESSING)
    if is_marketing_objection(flow):
        await _stop_marketing(flow)
    elif await _decided(flow):
        await flow._reply()
        decision = flow._decision
        if decision is not None and decision.uphold:
            flow._residuals.append(UPHELD_RESIDUAL)
        # Art. 18(1)(d): a restriction pending the verification of this objection ends with its decision.
        await children.end_grounds(flow, RestrictionGround.OBJECTION)


async def _stop_marketing(flow: DataSubjectRequest) -> None:
    request = flow._request
    # First the list: from this moment every system and export that asks ``is_suppressed`` leaves the person out,
    # whatever the connectors then take.
    until = await workflow.execute_activity_method(
        LedgerActivities.suppress_marketing,
        Suppression(request_id=request.request_id, subject=request.subject, years=request.policy.suppression_years),
        **summarised(LEDGER, "suppression list: add"),
    )
    flow._suppressed_until = until
    await flow._audit("suppressed", details={"until": until.date().isoformat(),
                                              "years": str(request.policy.suppression_years)})
    if await flow._fan_out(False):
        await flow._reply()


async def _decided(flow: DataSubjectRequest) -> bool:
    """Wait for the operator's decision; False when the request is withdrawn or refused meanwhile."""
    flow._awaiting_decision = True
    flow._set_stage(Stage.NEEDS_ATTENTION)
    await flow._audit("decision_needed", stage=Stage.NEEDS_ATTENTION)
    await flow._notify_operator(NoticeTemplate.OPERATOR_DECISION_NEEDED)
    await workflow.wait_condition(lambda: flow._decision is not None or flow._ending())
    flow._awaiting_decision = False
    decision = flow._decision
    if flow._ending() or decision is None:
        return False
    await flow._audit("objection_upheld" if decision.uphold else "objection_rejected", actor=decision.decided_by,
                      details={"upheld": str(decision.uphold), "grounds_length": str(len(decision.grounds))},
                      note=decision.grounds)
    flow._set_stage(Stage.PROCESSING)
    return True


def decision_refused(flow: DataSubjectRequest, uphold: bool, grounds: str) -> str | None:
    """Why ``decide`` cannot be applied now (a sentence for the operator), or None."""
    request_id = flow._request.request_id
    if flow._request.kind != RequestKind.OBJECTION:
        return f"{request_id} is a {flow._request.kind.value} request: only objections are decided"
    if is_marketing_objection(flow):
        return f"{request_id} objects to direct marketing, which is absolute (Art. 21(3)): nothing to decide"
    if flow._decision is not None or not flow._awaiting_decision:
        return f"{request_id} is not waiting for a decision"
    if not uphold and not grounds.strip():
        return ("a rejection needs the compelling legitimate grounds (Art. 21(1)): the subject is told them "
                "(--grounds)")
    return None

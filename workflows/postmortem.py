"""Requests about the data of a deceased person (loi n° 78-17 du 6 janvier 1978, art. 85), the part of a
``DataSubjectRequest`` that differs from the other kinds.

The rule implemented (LEGAL.md, "data of a deceased person"; the article's text where LEGAL.md summarises it):

* **Never the sender's own request.** The sender (``RequestInput.subject``: every email goes to them, in their
  language) names the deceased person (``RequestInput.deceased``: the systems are searched for them) and their
  own quality. Whatever the identity policy, the sender proves that quality, and the death, by a document
  (certificate of inheritance or notarial deed, death certificate, the directives naming them), reviewed by an
  operator who confirms it (``confirm_quality``) or refuses the request (``refuse``, ground ``quality``, with the
  12(4) remedies). The document is deleted once reviewed, like an identity document.
* **Directives first (85-I).** Before anything, the ledger is asked for directives the person recorded while
  alive (``dsr directives record``). If they designate someone, only that person may act (the operator confirms
  the quality ``designated``, and the sender's address must be the one the directives name); the directives'
  instruction is applied: ``erase`` (accounts closed, data erased), ``keep`` (nothing erased: a contrary mention
  that the heirs' request cannot override, 85-II), ``hand_over`` (the data communicated to the designated person:
  done by staff, the engine leaves them a residual line).
* **Without directives (85-II), heirs (or the estate's executor) may act only as far as needed**
  - to have the death taken into account (2°): accounts closed, processing stopped, data updated. This is the
    default aim (``closure``): every connector runs the erasure of the deceased person's data, with the same
    verification and the same retention of what the law obliges us to keep (accounting, art. L123-22 C. com.),
    and the address goes on the suppression list (the opposition to further processing, 85-II: no marketing
    reaches it again, even from a later import);
  - to settle the estate (1°: information useful to the estate, digital goods, family memories): aim
    ``estate``. Which records are "useful to the estate" is a judgement on their content, so the engine does
    not build a bundle: staff send what qualifies, and the request keeps a residual line until they say so.
    Nothing of the deceased person's data is ever put in the reply: it names the systems and what was done.

Deterministic workflow code, run by :class:`workflows.request.DataSubjectRequest` (passed in as ``flow``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import (
        DirectiveInstruction,
        DirectivesFound,
        DirectivesLookup,
        PostMortemAim,
        Quality,
        RequestKind,
        Stage,
        Subject,
        Suppression,
        post_mortem_aim,
    )
    from workflows.contract import LEDGER, LedgerActivities, summarised
from workflows.audit import deceased_note

if TYPE_CHECKING:
    from workflows.request import DataSubjectRequest

HAND_OVER_RESIDUAL = ("operator: the deceased person's directives ask that their data be handed over to the person "
                      "they designated (the sender): send it to them (dsr directives show, dsr status)")
ESTATE_RESIDUAL = ("operator: an heir asks for the information useful to settle the estate (art. 85-II 1°): "
                   "send them only that (contracts, orders and payments, digital goods, family memories), "
                   "never the rest of the deceased person's data")
KEEP_RESIDUAL = ("operator: the deceased person's directives ask that their data be kept: record the death in each "
                 "system (no further marketing), erase nothing")

ACTION_CLOSED = "closed"  # the accounts closed and the data erased (what the law does not oblige us to keep)
ACTION_KEPT = "kept"  # the directives ask to keep the data
ACTION_STAFF = "staff"  # a hand-over or the estate's information: sent by staff


def is_post_mortem(flow: DataSubjectRequest) -> bool:
    return flow._request.kind == RequestKind.POST_MORTEM


def deceased(flow: DataSubjectRequest) -> Subject:
    """The person whose data the systems are searched for: the deceased person of a post_mortem request."""
    request = flow._request
    return request.deceased if request.kind == RequestKind.POST_MORTEM and request.deceased else request.subject


def work_kind(flow: DataSubjectRequest) -> RequestKind:
    """The kind the systems run for this request: a post_mortem request closes the accounts (an erasure)."""
    return RequestKind.ERASURE if is_post_mortem(flow) else flow._request.kind


async def find_directives(flow: DataSubjectRequest) -> None:
    """Look the deceased person's directives up in the ledger (85-I); recorded without personal data."""
    request = flow._request
    found: DirectivesFound = await workflow.execute_activity_method(
        LedgerActivities.find_directives,
        DirectivesLookup(request_id=request.request_id, deceased=deceased(flow), sender=request.subject),
        **summarised(LEDGER, "directives: look up"),
    )
    flow._directives = found
    # The ledger keeps whose data this request is about (the burden of proof outlives Temporal's history): sealed.
    person = deceased(flow)
    await flow._audit("directives_found" if found.found else "directives_none", details={
        "instruction": found.instruction, "designates": str(found.designates).lower(),
        "sender_designated": str(found.sender_designated).lower(),
    } if found.found else {}, note=deceased_note(person.email, person.name))


def quality_refused(flow: DataSubjectRequest, quality: Quality | str) -> str | None:
    """Why ``confirm_quality`` cannot be applied (a sentence for the operator), or None."""
    request_id = flow._request.request_id
    if not is_post_mortem(flow):
        return f"{request_id} is a {flow._request.kind.value} request: only post_mortem requests have a quality"
    try:
        chosen = Quality(quality)
    except ValueError:
        return "quality must be one of " + ", ".join(q.value for q in Quality)
    if flow._identity_confirmed:
        return f"the quality of the sender of {request_id} is already confirmed"
    if flow._stage != Stage.AWAITING_IDENTITY:
        return f"{request_id} is not waiting for the sender's quality to be confirmed"
    found = flow._directives
    if found is not None and found.designates:
        # 85-I: the person the deceased designated has quality to have their directives carried out.
        if chosen != Quality.DESIGNATED or not found.sender_designated:
            return ("the deceased person's directives designate someone, and the sender is not that person: only "
                    "they may act (art. 85-I); if they died first, refuse this request (--ground quality) and ask "
                    "the heirs to write again with the proof")
        return None
    if chosen == Quality.DESIGNATED:
        return ("no directives designating the sender were recorded: confirm them as heir or executor, or record the "
                "directives first (dsr directives record)")
    return None


async def carry_out(flow: DataSubjectRequest) -> None:
    """The request's work once the sender's quality is confirmed; sets the outcome when answered."""
    found = flow._directives
    aim = post_mortem_aim(flow._request.kind, flow._request.scope) or PostMortemAim.CLOSURE
    instruction = DirectiveInstruction(found.instruction) if found is not None and found.found else None
    if instruction is not None:
        await workflow.execute_activity_method(
            LedgerActivities.mark_directives_applied,
            DirectivesLookup(request_id=flow._request.request_id, deceased=deceased(flow),
                             sender=flow._request.subject),
            **summarised(LEDGER, "directives: applied"),
        )
    if instruction == DirectiveInstruction.ERASE or (instruction is None and aim == PostMortemAim.CLOSURE):
        flow._post_mortem_action = ACTION_CLOSED
        # The opposition to further processing (85-II 2°) first: no campaign reaches the address from now on,
        # whatever the connectors then take (the suppression list holds a blind index only, and outlives them).
        until = await workflow.execute_activity_method(
            LedgerActivities.suppress_marketing,
            Suppression(request_id=flow._request.request_id, subject=deceased(flow),
                        years=flow._request.policy.suppression_years),
            **summarised(LEDGER, "suppression list: add"),
        )
        flow._suppressed_until = until
        await flow._audit("suppressed", details={"until": until.date().isoformat(),
                                                  "years": str(flow._request.policy.suppression_years)})
        await flow._carry_out_in_systems()
        return
    flow._set_stage(Stage.PROCESSING)
    await flow._audit("processing", stage=Stage.PROCESSING)
    if instruction == DirectiveInstruction.KEEP:
        flow._post_mortem_action = ACTION_KEPT
        residual = KEEP_RESIDUAL
    else:
        flow._post_mortem_action = ACTION_STAFF
        residual = HAND_OVER_RESIDUAL if instruction == DirectiveInstruction.HAND_OVER else ESTATE_RESIDUAL
    await flow._reply()
    flow._residuals.append(residual)

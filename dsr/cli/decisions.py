"""An operator's decisions on an open request, each a workflow update: confirm identity, extend, refuse,
withdraw, retry, doubt, rectify, clear residual data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from temporalio.workflow import UpdateMethodMultiParam

    from dsr.domain.model import UpdateResult
    from workflows.request import DataSubjectRequest

from dsr.cli.common import (
    Actor,
    JsonOption,
    RequestId,
    UserError,
    check_reference,
    emit_json,
    parse_changes,
    plain,
    request_handle,
    run,
    temporal_client,
)

Change = TypeVar("Change")


async def _update(
    request_id: str,
    update: UpdateMethodMultiParam[[DataSubjectRequest, Change], UpdateResult],
    argument: Change,
    as_json: bool,
) -> None:
    """Send ``update`` (a ``DataSubjectRequest`` update method) with ``argument``; print the result."""
    from temporalio.client import WorkflowExecutionStatus

    from workflows import search_attributes as sa

    check_reference(request_id)
    _, client = await temporal_client()
    handle = request_handle(client, request_id)
    # A clear "no such request" or "closed" before any update is attempted: a closed workflow takes none.
    described = await handle.describe()
    if described.status != WorkflowExecutionStatus.RUNNING:
        outcome = described.typed_search_attributes.get(sa.DSR_OUTCOME)
        if outcome:
            raise UserError(f"{request_id} is closed ({outcome})")
        if described.status is None:  # the SDK's None: Temporal sent no status (unspecified); say so, not guess
            raise UserError(f"{request_id} is not running (Temporal gave no status)")
        raise UserError(f"{request_id} is closed ({described.status.name.lower()})")
    result = await handle.execute_update(update, argument)
    if as_json:
        emit_json({"id": request_id, **plain(result)})
    else:
        typer.echo(f"{request_id}: {result.stage.value}, due {result.deadline.isoformat()}"
                   + (" (extended)" if result.extended else ""))


@run
async def confirm_identity(
    request_id: RequestId,
    method: Annotated[str, typer.Option(help="How identity was checked: email or document.")] = "document",
    by: Actor = "operator",
    note: Annotated[str, typer.Option(help="What was checked (no copy of the document).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Confirm the subject's identity (e.g. after reviewing a document, which is then deleted)."""
    from dsr.domain.model import IdentityConfirmation, IdentityMethod

    try:
        chosen = IdentityMethod(method)
    except ValueError:
        chosen = IdentityMethod.TRUSTED
    if chosen == IdentityMethod.TRUSTED:  # only the channel, at the start, makes a request trusted
        raise UserError(f"--method must be email or document, got {method!r}")
    from workflows.request import DataSubjectRequest

    await _update(request_id, DataSubjectRequest.confirm_identity,
                  IdentityConfirmation(method=chosen, confirmed_by=by, note=note), as_json)


@run
async def extend(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why (told to the subject, Art. 12(3)).")],
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Extend the deadline by two months, once, within the first month; the subject is told why."""
    from dsr.domain.model import Extension
    from workflows.request import DataSubjectRequest

    await _update(request_id, DataSubjectRequest.extend_deadline, Extension(reason=reason, requested_by=by), as_json)


@run
async def refuse(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="The facts behind the ground, told to the subject and kept.")],
    ground: Annotated[str, typer.Option(
        help="excessive (Art. 12(5)), identity (11(2)), others_rights (15(4), 20(4)), "
             "erasure_exception (17(3)) or legal_restriction (23).")] = "excessive",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Refuse a request on a ground of the GDPR; the subject is told which, why, and of the right to complain."""
    from dsr.domain.model import Refusal, RefusalGround

    try:
        chosen = RefusalGround(ground)
    except ValueError:
        raise UserError(f"--ground must be one of {', '.join(g.value for g in RefusalGround)} (got {ground!r})") \
            from None
    from workflows.request import DataSubjectRequest

    await _update(request_id, DataSubjectRequest.refuse, Refusal(reason=reason, requested_by=by, ground=chosen),
                  as_json)


@run
async def withdraw(
    request_id: RequestId,
    by: Actor = "subject",
    reason: Annotated[str, typer.Option(help="Optional note.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Close a request the subject withdrew."""
    from dsr.domain.model import Withdrawal
    from workflows.request import DataSubjectRequest


    await _update(request_id, DataSubjectRequest.withdraw, Withdrawal(requested_by=by, reason=reason), as_json)


@run
async def retry(request_id: RequestId, by: Actor = "operator", as_json: JsonOption = False) -> None:
    """Go on with a request in needs_attention: run its failed connectors again, or write its held reply."""
    from dsr.domain.model import Retry
    from workflows.request import DataSubjectRequest


    await _update(request_id, DataSubjectRequest.retry, Retry(requested_by=by), as_json)


@run
async def doubt(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="What the subject must provide and why (told to them, kept).")],
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record a reasonable doubt about the requester's identity (Art. 12(6)): the subject is asked for what you
    need; with DSR_CLOCK=suspend_during_identity the time limit stands still until they provide it."""
    from dsr.domain.model import Doubt
    from workflows.request import DataSubjectRequest


    await _update(request_id, DataSubjectRequest.doubt, Doubt(reason=reason, requested_by=by), as_json)


@run
async def rectify(
    request_id: RequestId,
    change: Annotated[list[str], typer.Option(help="field=value (repeatable): a correction the subject asked for.")],
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Give a rectification that came as free text the corrections to make (read them with `dsr status`)."""
    from dsr.domain.model import CANONICAL_FIELDS, Rectification

    changes = parse_changes(change)
    unknown = sorted(set(changes) - CANONICAL_FIELDS)
    if unknown:
        raise UserError(f"cannot rectify {', '.join(unknown)}; fields are {', '.join(sorted(CANONICAL_FIELDS))}")
    from workflows.request import DataSubjectRequest

    await _update(request_id, DataSubjectRequest.rectify, Rectification(changes=changes, requested_by=by), as_json)


@run
async def clear_residuals(
    request_id: RequestId,
    note: Annotated[str, typer.Option(help="How the data was cleared (no personal data).")] = "",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record that the residual data of a request (what a system's API could not erase) was cleared by hand."""
    from dsr.cli.lifecycle import clear_residuals_of
    from dsr.domain.model import ResidualsCleared

    # The request ended with its answer: its residual data waits in its aftercare.
    await clear_residuals_of(request_id, ResidualsCleared(cleared_by=by, note=note), as_json)



@run
async def decide(
    request_id: RequestId,
    uphold: Annotated[bool, typer.Option("--uphold", help="Accept the objection: the processing stops.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Reject it on compelling legitimate grounds.")] = False,
    grounds: Annotated[str, typer.Option(
        help="With --reject: the compelling legitimate grounds (Art. 21(1)), told to the subject and kept sealed.")
    ] = "",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Decide an objection to processing other than direct marketing (Art. 21(1)); the subject gets the decision,
    its reasons and the remedies."""
    from dsr.domain.model import ObjectionDecision

    if uphold == reject:
        raise UserError("give exactly one of --uphold or --reject")
    if reject and not grounds.strip():
        raise UserError("--reject needs --grounds: the subject is told the compelling legitimate grounds")
    if uphold and grounds.strip():
        raise UserError("--grounds goes with --reject (an upheld objection needs no grounds)")
    from workflows.request import DataSubjectRequest

    await _update(request_id, DataSubjectRequest.decide,
                  ObjectionDecision(uphold=uphold, grounds=grounds, decided_by=by), as_json)


@run
async def confirm_quality(
    request_id: RequestId,
    quality: Annotated[str, typer.Option(
        help="What the documents show the sender to be: heir, executor, or designated (in the deceased person's "
             "directives).")],
    by: Actor = "operator",
    note: Annotated[str, typer.Option(help="What was checked (death certificate, deed...; no copy). Kept sealed.")]
    = "",
    as_json: JsonOption = False,
) -> None:
    """Confirm the quality of the sender of a request about a deceased person (loi 78-17 art. 85), after
    reviewing the death certificate and their proof (deleted once reviewed); the request then runs on the
    deceased person's data. Refuse it instead with: dsr refuse ID --ground quality --reason "..."."""
    from dsr.domain.model import Quality, QualityConfirmation

    try:
        chosen = Quality(quality.strip().lower())
    except ValueError:
        raise UserError(f"--quality must be one of {', '.join(q.value for q in Quality)}, got {quality!r}") from None
    from workflows.request import DataSubjectRequest

    await _update(request_id, DataSubjectRequest.confirm_quality,
                  QualityConfirmation(quality=chosen, confirmed_by=by, note=note), as_json)


@run
async def lift(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why the restriction ends (kept sealed in the ledger, told to the "
                                             "subject).")] = "",
    retry: Annotated[bool, typer.Option("--retry", help="Retry removing the marks a system refused.")] = False,
    subject_told: Annotated[str, typer.Option(
        "--subject-told", help="How staff told the subject of the lift after the mail server refused the notice "
                               "(kept sealed in the ledger); the marks stay until this is recorded.")] = "",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Lift a restriction of processing (Art. 18): the subject is told first (18(3)), the marks go after
    DSR_RESTRICTION_LIFT_NOTICE_DAYS days."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
    from temporalio.service import RPCError, RPCStatusCode

    from dsr.domain.model import Lift, RestrictionStatus, Retry, SubjectInformed, restriction_id, told_words
    from workflows.restriction import RestrictionInForce

    if [retry, bool(reason.strip()), bool(subject_told.strip())].count(True) != 1:
        raise UserError("give --reason \"...\" to lift, --retry alone to retry the marks a system refused, or "
                        "--subject-told \"...\" alone once the subject was told by other means")
    check_reference(request_id)
    _, client = await temporal_client()
    handle: WorkflowHandle[RestrictionInForce, RestrictionStatus] = client.get_workflow_handle_for(
        RestrictionInForce.run, restriction_id(request_id))
    try:
        described = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise UserError(f"{request_id} holds no restriction in force (not a restriction, not answered yet, "
                            "or forgotten by Temporal; see `dsr history`)") from None
        raise
    if described.status != WorkflowExecutionStatus.RUNNING:
        raise UserError(f"{request_id}: the restriction was lifted already")
    if retry:
        held = await handle.execute_update(RestrictionInForce.retry, Retry(requested_by=by))
    elif subject_told.strip():
        held = await handle.execute_update(RestrictionInForce.subject_informed,
                                           SubjectInformed(how=subject_told, informed_by=by))
    else:
        held = await handle.execute_update(RestrictionInForce.lift, Lift(reason=reason, requested_by=by))
    if as_json:
        emit_json({"id": request_id, **plain(held)})
    elif held.lift_at is not None:
        typer.echo(f"{request_id}: {held.state}, lift on {held.lift_at:%Y-%m-%d %H:%M} UTC "
                   f"({told_words(held.subject_told)})")
    else:
        typer.echo(f"{request_id}: {held.state}")

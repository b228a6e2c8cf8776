"""The end of a request, as the operator sees it: what its aftercare still follows (``dsr status``,
``dsr clear-residuals``), what Temporal says of a run stopped by hand (``dsr reconcile``), and the Temporal UI's
views as of today (``dsr dashboard``)."""

from __future__ import annotations

import webbrowser
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dsr.cli.common import (
    Actor,
    JsonOption,
    UserError,
    check_reference,
    emit_json,
    open_ledger,
    plain,
    run,
    temporal_client,
)

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from dsr.domain.aftercare import AftercareStatus
    from dsr.domain.model import RequestStatus

ENDED_BY_HAND = ("TERMINATED", "CANCELED", "FAILED", "TIMED_OUT")
"""Temporal states in which a request's run ended without closing the request (no code of the request ran)."""


async def with_aftercare(client: Client, state: RequestStatus, *, wait: timedelta) -> RequestStatus:
    """The request's status as of now: once answered, the download link and residual data are followed by its
    aftercare workflow, whose state replaces what the request's run knew when it ended (a worker answers, within
    ``wait``, or this says so in one line: what the run knew may be stale)."""
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.aftercare import RequestAftercare

    if not state.aftercare:
        return state
    try:
        # Handles are annotated: mypy's inference of get_workflow_handle_for alone depends on the order it checks
        # modules in, and fails in some.
        aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = client.get_workflow_handle_for(
            RequestAftercare.run, state.aftercare)
        care = await aftercare.query(RequestAftercare.status, rpc_timeout=wait)
    except RPCError as err:
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise UserError(f"{state.request_id} is answered, and its aftercare (download link, residual data) did "
                            f"not answer within {wait.total_seconds():g} s: is `dsr worker` running?") from None
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return state  # past Temporal's retention: the ledger has its events (dsr history)
    return replace(state, exports_deleted=care.exports_deleted, residuals=list(care.residuals),
                   supplement=care.supplement, supplement_pending=list(care.supplement_pending))


async def temporal_state(client: Client, request_id: str) -> str:
    """``terminated``, ``canceled``, ``failed`` or ``timed_out`` when the request's run ended that way (the
    request itself could not record it); empty while it runs or once it completed."""
    from workflows.request import DataSubjectRequest

    handle: WorkflowHandle[DataSubjectRequest, RequestStatus] = client.get_workflow_handle_for(
        DataSubjectRequest.run, request_id)
    described = await handle.describe()
    name = described.status.name if described.status is not None else ""
    return name.lower() if name in ENDED_BY_HAND else ""


async def clear_residuals_of(request_id: str, cleared: Any, as_json: bool) -> None:
    """Send ``clear_residuals`` to the request's aftercare (the request itself ended with its answer)."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    from dsr.domain.aftercare import aftercare_id
    from dsr.domain.model import UpdateResult
    from workflows.aftercare import RequestAftercare

    check_reference(request_id)
    _, client = await temporal_client()
    handle: WorkflowHandle[RequestAftercare, AftercareStatus] = client.get_workflow_handle_for(
        RequestAftercare.run, aftercare_id(request_id))
    try:
        described = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise UserError(f"{request_id} has no residual data waiting to be cleared (no aftercare: not answered "
                            "yet, answered without residual data, or forgotten by Temporal; see `dsr history`)"
                            ) from None
        raise
    if described.status != WorkflowExecutionStatus.RUNNING:
        raise UserError(f"{request_id} has no residual data waiting to be cleared (its aftercare has ended)")
    result: UpdateResult = await handle.execute_update(RequestAftercare.clear_residuals, cleared)
    if as_json:
        emit_json({"id": request_id, **plain(result), "residuals_cleared": True})
    else:
        typer.echo(f"{request_id}: residual data recorded as cleared")


@run
async def reconcile(
    request_id: Annotated[str | None, typer.Argument(help="One request; all open ones when left out.")] = None,
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record in the ledger the requests whose workflow was terminated (or otherwise ended) in Temporal without
    closing them: closed as terminated, unanswered. Termination runs no code of the request, so only this tells
    the ledger, the register and `dsr status` the truth; the subject was not told, the operator must answer."""
    from temporalio.service import RPCError, RPCStatusCode

    from dsr.domain.model import AuditEvent, Outcome, Stage

    if request_id is not None:
        check_reference(request_id)
    _, ledger = open_ledger()
    try:
        _, client = await temporal_client()
        if request_id is not None:
            row = ledger.get_request(request_id)
            if row is None:
                raise UserError(f"no request {request_id!r} in the ledger")
            candidates = [row] if row.stage != Stage.CLOSED else []
        else:
            candidates = [r for r in ledger.requests() if r.stage != Stage.CLOSED]
        recorded: list[dict[str, str]] = []
        for row in candidates:
            try:
                state = await temporal_state(client, row.request_id)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                state = "gone"  # forgotten by Temporal (retention) while the ledger still had it open
            if not state:
                continue
            ledger.append_event(
                AuditEvent(request_id=row.request_id, event="terminated", actor=by, stage=Stage.CLOSED,
                           outcome=Outcome.TERMINATED,
                           details={"temporal_state": state, "previous_stage": row.stage.value}),
                key=f"reconciled-{row.request_id}", at=datetime.now(UTC))
            recorded.append({"id": row.request_id, "temporal_state": state, "previous_stage": row.stage.value})
    finally:
        ledger.close()
    if as_json:
        emit_json({"reconciled": recorded})
        return
    if not recorded:
        typer.echo("nothing to reconcile: every open request in the ledger runs in Temporal")
    for r in recorded:
        typer.echo(f"{r['id']}: {r['temporal_state']} in Temporal at {r['previous_stage']}; recorded as closed "
                   "(terminated, unanswered). The subject was not told: answer them, or submit the request again.")


@run
async def dashboard(
    view: Annotated[str | None, typer.Argument(help="A view to open in the browser, e.g. due, overdue.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The Temporal UI's views as of today (the "due within 7 days" one moves every day): printed, or VIEW opened
    in the browser. Bookmark this command rather than a link with a date in it."""
    from dsr.config.settings import Settings
    from dsr.runtime.stack import dashboard_links

    links = dashboard_links(Settings.from_env())
    if view is None:
        if as_json:
            emit_json(links)
        else:
            for label, url in links.items():
                typer.echo(f"{label:<24} {url}")
        return
    chosen = [label for label in links if label.replace(" ", "-").startswith(view.strip().lower())]
    if len(chosen) != 1:
        names = ", ".join(label.replace(" ", "-") for label in links)
        raise UserError(f"view {view!r} is {'ambiguous' if chosen else 'unknown'}; views are {names}")
    url = links[chosen[0]]
    typer.echo(url)
    webbrowser.open(url)

"""Verbs about requests: submit one, see where it stands, what is due, its audit trail."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from temporalio.client import Client

    from dsr.config.settings import Settings

from dsr.cli.common import (
    JsonOption,
    RequestId,
    UserError,
    check_reference,
    connect_deployment,
    emit_json,
    fail,
    parse_changes,
    plain,
    request_handle,
    run,
    temporal_client,
)

# How long `dsr status` waits for a worker to answer its query (a request evicted from every worker's cache is
# replayed first: a median of 0.25-0.3 s and a 90th percentile of 2.5-4.4 s, of the queries answered, with 10 at once
# and 10,000 requests open, bench/idle.py) before it says what the ledger knows.
STATUS_WAIT = timedelta(seconds=10)


def _parse_received(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--received must be a date (2026-11-20) or an ISO time, got {value!r}") from None
    if parsed.tzinfo is None:
        from zoneinfo import ZoneInfo

        from dsr.config.settings import Settings

        # A bare date or time is the controller's local time: that is how a letter's stamp reads.
        parsed = parsed.replace(tzinfo=ZoneInfo(Settings.from_env().policy.timezone))
    return parsed


@run
async def submit(
    kind: Annotated[str, typer.Option(
        help="access, rectification, erasure, portability, objection, consent_withdrawal, post_mortem or "
             "restriction.")],
    email: Annotated[str, typer.Option(help="The subject's email address (post_mortem: the sender's).")],
    name: Annotated[str, typer.Option(help="The subject's name.")] = "",
    channel: Annotated[str, typer.Option(
        help="api, email, form, support_desk, operator or letter (a letter needs --received).")] = "operator",
    language: Annotated[str | None, typer.Option(help="fr or en (default: DSR_LANGUAGE).")] = None,
    details: Annotated[str, typer.Option(help="What the subject wrote.")] = "",
    received: Annotated[
        str | None, typer.Option(help="When it was received, if earlier than now (YYYY-MM-DD or ISO time).")
    ] = None,
    change: Annotated[
        list[str] | None, typer.Option(help="Rectification: field=value (repeatable).")
    ] = None,
    scope: Annotated[str, typer.Option(
        help="Objection: marketing (direct marketing, stopped at once) or other (an operator decides). "
             "Post_mortem: closure (the default: accounts closed) or estate (information for the estate).")] = "",
    deceased_email: Annotated[str, typer.Option(help="Post_mortem: the deceased person's email address.")] = "",
    deceased_name: Annotated[str, typer.Option(help="Post_mortem: the deceased person's name.")] = "",
    quality: Annotated[str, typer.Option(
        help="Post_mortem: what the sender says they are: heir (default), executor or designated.")] = "",
    customer_id: Annotated[str, typer.Option(
        "--customer-id", help="The subject's customer id, as checked by staff: an application database's map may "
                              "locate them by it too.")] = "",
    phone: Annotated[str, typer.Option(
        help="The subject's telephone number, as checked by staff: compared by its digits (+33 6…, 06…).")] = "",
    purpose: Annotated[list[str] | None, typer.Option(
        help="Withdrawal of consent: a purpose's key from the controller profile (repeatable; default: all).")
    ] = None,
    ground: Annotated[str, typer.Option(
        help="Restriction, Art. 18(1): a (accuracy contested), b (unlawful, no erasure wanted), c (needed for legal "
             "claims) or d (objection being verified).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Record a request received by any channel and start its workflow (or attach it to the open request of
    the same subject and kind, as every channel does)."""
    from dsr.config.settings import Settings
    from dsr.store.ledger import LedgerUnavailableError
    from intake.service import IntakeService, IntakeUnavailable
    from intake.submission import Submission, prepare

    # Validate everything before connecting, so bad input never meets Temporal.
    if channel.strip().lower() == "letter" and received is None:
        # The month runs from the day the letter arrived, not from the day it is typed in.
        raise UserError("--channel letter needs --received: the day the letter arrived (YYYY-MM-DD)")
    settings = Settings.from_env()
    submission = Submission(kind=kind, email=email, name=name, channel=channel, language=language, details=details,
                            received_at=_parse_received(received), changes=parse_changes(change or []),
                            scope=scope, customer_id=customer_id, phone=phone,
                            purposes=list(purpose or []), deceased_email=deceased_email, deceased_name=deceased_name,
                            quality=quality, ground=ground)
    prepare(submission, settings)
    deployment, client = await connect_deployment()
    settings = deployment.settings
    try:
        ledger = deployment.ledger
    except (LedgerUnavailableError, ValueError) as err:
        raise UserError(str(err)) from None
    try:
        # The one door every channel goes through (duplicates decided in the ledger); staff are not rate-limited.
        accepted = await IntakeService(client, settings, ledger).submit(submission, rate_limit=False)
    except IntakeUnavailable as err:
        raise UserError(str(err)) from None
    finally:
        deployment.close()
    if as_json:
        emit_json({"id": accepted.reference, "kind": accepted.kind, "received": accepted.received_on,
                   "deadline": accepted.deadline, "extended_deadline": accepted.extended_deadline,
                   "attached": accepted.attached})
    elif accepted.attached:
        typer.echo(f"{accepted.reference}  {accepted.kind.value}  due {accepted.deadline.isoformat()}  "
                   "(attached: this subject already has an open request of this kind)")
    else:
        typer.echo(f"{accepted.reference}  {accepted.kind.value}  due {accepted.deadline.isoformat()}")
    _warn_if_late(accepted.deadline, settings.policy.timezone)


def _warn_if_late(deadline: date, timezone: str) -> None:
    """A letter recorded late (``--received``) may have little or no time left: say so at once, on stderr."""
    from zoneinfo import ZoneInfo

    from intake.submission import late_receipt_warning

    warning = late_receipt_warning(deadline, datetime.now(ZoneInfo(timezone)).date())
    if warning:
        typer.echo(f"warning: {warning}", err=True)


@run
async def status(request_id: RequestId, as_json: JsonOption = False) -> None:
    """Where a request stands: stage, deadline, connectors."""
    from temporalio.service import RPCError, RPCStatusCode

    from dsr.cli.lifecycle import temporal_state, with_aftercare
    from workflows.request import DataSubjectRequest

    check_reference(request_id)
    settings, client = await temporal_client()
    asked = time.monotonic()
    try:
        state = await request_handle(client, request_id).query(DataSubjectRequest.status, rpc_timeout=STATUS_WAIT)
    except RPCError as err:
        # Temporal forgets closed workflows after its retention period; the ledger does not.
        if err.status == RPCStatusCode.NOT_FOUND and _status_from_ledger(settings, request_id, as_json,
                                                                         unread="Temporal does not hold it"):
            return
        # A query is answered by a worker: with none running (or all of them swamped), what the ledger knows,
        # said as such, rather than an on-call operator waiting on a timeout. The client's own timeout comes back
        # as CANCELLED, the server's as DEADLINE_EXCEEDED; either before the wait is over is something else.
        waited = time.monotonic() - asked
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            why = (f"no worker answered within {STATUS_WAIT.total_seconds():g} s: is `dsr worker` running, or "
                   f"are the workers swamped?" if waited >= STATUS_WAIT.total_seconds() * 0.9
                   else "Temporal did not answer: " + " ".join(err.message.split()))
            if _status_from_ledger(settings, request_id, as_json, why=why, unread=why):
                return
            fail(f"{request_id}: {why}")
        raise
    # Answered: the link and residual data live in the aftercare. Terminated: the run could not say so itself.
    state = await with_aftercare(client, state, wait=STATUS_WAIT)
    state.temporal_state = await temporal_state(client, request_id)
    outside = _outside_tasks(request_id)
    if as_json:
        data = plain(state)
        data["id"] = data.pop("request_id")
        data["outside"] = [_outside_row(task, settings.policy.timezone) for task in outside.values()]
        emit_json(data)
        return
    flags = [f for f, on in (("extended", state.extended), ("OVERDUE", state.overdue)) if on]
    if state.temporal_state:
        typer.echo(f"{state.request_id}  {state.kind.value}  {state.temporal_state.upper()} in Temporal, "
                   f"stopped at {state.stage.value}: never closed nor answered (record it: `dsr reconcile "
                   f"{state.request_id}`)")
    else:
        qualifier = state.scope or (f"Art. 18(1)({state.ground})" if state.ground else "")
        typer.echo(f"{state.request_id}  {state.kind.value}" + (f" ({qualifier})" if qualifier else "")
                   + (f" ({', '.join(state.purposes)})" if state.purposes else "")
                   + f"  {state.stage.value}" + (f" ({state.outcome.value})" if state.outcome else "")
                   + (f", objection {state.decision}" if state.decision else ""))
    typer.echo(f"  received {state.received.isoformat()}, due {state.deadline.isoformat()}"
               + (f" [{', '.join(flags)}]" if flags else ""))
    typer.echo(f"  identity: {state.identity.value}, {'confirmed' if state.identity_confirmed else 'waiting'}")
    if state.kind.value == "post_mortem":
        # About a deceased person (art. 85): the sender's quality stands for the identity check.
        typer.echo("  about a deceased person: sender's quality "
                   + (f"{state.quality} (confirmed)" if state.quality else
                      f"waiting (`dsr confirm-quality {state.request_id} --quality heir|executor|designated`, or "
                      f"`dsr refuse {state.request_id} --ground quality --reason \"...\"`)")
                   + (f"; directives: {state.directives}" if state.directives else "; no directives"))
    for c in state.connectors:
        shown = "degraded" if c.degraded else c.state.value
        if c.failing_since is not None and c.state.value == "running":
            shown += f", failing since {c.failing_since:%Y-%m-%d %H:%M} UTC (retried)"
        if c.resumed:
            shown += f", resumed {c.resumed} times after progress"
        task = outside.get(c.connector)
        if task is not None:  # a processor or an owner answers: what they said, or the date they answer by
            shown = _outside_state(task, c.state.value, settings.policy.timezone)
        typer.echo(f"  {c.connector}: {shown}" + (f" - {c.error}" if c.error else ""))
    if state.degraded:
        typer.echo(f"  connector degraded (failing too long, still retried; the operator was told): "
                   f"{', '.join(state.degraded)}")
    if state.waiting_for:
        typer.echo(f"  waiting for {state.waiting_for} of the same person (one request at a time in their systems)")
    if state.awaiting_changes:
        # The person's own words (personal data, shown to the operator only): what to correct, in their terms.
        text = await request_handle(client, request_id).query(DataSubjectRequest.subject_text)
        typer.echo(f"  waiting for the corrections to make (`dsr rectify {state.request_id} --change field=value`);"
                   " the person wrote:")
        for line in (text or "(nothing)").splitlines():
            typer.echo(f"    {line}")
    if state.awaiting_decision:
        # What the person objects to, in their words (personal data, shown to the operator only).
        text = await request_handle(client, request_id).query(DataSubjectRequest.subject_text)
        typer.echo(f"  waiting for a decision on the objection (`dsr decide {state.request_id} --uphold`, or "
                   "`--reject --grounds \"...\"`); the person wrote:")
        for line in (text or "(nothing)").splitlines():
            typer.echo(f"    {line}")
    if state.reply_held:
        typer.echo(f"  reply held (fix the cause, then `dsr retry {state.request_id}`):")
        for line in state.reply_held.splitlines():
            typer.echo(f"    {line}")
    for line in state.correspondence:
        typer.echo(f"  the subject wrote: {line}")
    if state.mail_pending:
        typer.echo(f"  mail not delivered yet (retried until the SMTP server takes it): "
                   f"{', '.join(state.mail_pending)}")
    if state.residuals:
        typer.echo(f"  residual data to clear by hand (then `dsr clear-residuals {state.request_id}`):")
        for line in state.residuals:
            typer.echo(f"    - {line}")
    if state.link_expires_at is not None:
        typer.echo(f"  download link {'expired, export deleted' if state.exports_deleted else 'valid until'} "
                   f"{state.link_expires_at:%Y-%m-%d %H:%M} UTC")
    if state.supplement:
        typer.echo("  supplementary letter to the subject: " + {
            "waiting": f"waiting for {', '.join(state.supplement_pending) or 'the ledger'}",
            "failed": "REFUSED by the mail server: tell the subject by other means"}.get(state.supplement,
                                                                                          state.supplement))
    if state.cancellation_refused:
        typer.echo(f"  a cancellation from the Temporal UI was refused: {state.cancellation_refused}")
    if state.restriction:
        await _show_restriction(client, state.request_id, state.restriction)


async def _show_restriction(client: Client, request_id: str, workflow_id: str) -> None:
    """An answered restriction: in force, lift scheduled (the subject told, the day), or lifted."""
    from temporalio.client import WorkflowHandle
    from temporalio.service import RPCError

    from dsr.domain.model import RestrictionStatus, told_words
    from workflows.restriction import IN_FORCE, RestrictionInForce

    try:
        handle: WorkflowHandle[RestrictionInForce, RestrictionStatus] = client.get_workflow_handle_for(
            RestrictionInForce.run, workflow_id)
        held = await handle.query(RestrictionInForce.status)
    except RPCError:
        typer.echo("  restriction: its workflow is no longer in Temporal (see `dsr history`)")
        return
    line = f"  restriction: {'RESTRICTED, in force' if held.state == IN_FORCE else held.state}"
    if held.lift_at is not None and held.state != "lifted":
        line += f", lift on {held.lift_at:%Y-%m-%d %H:%M} UTC ({told_words(held.subject_told)}; by {held.lifted_by})"
    typer.echo(line)
    if held.state == IN_FORCE:
        typer.echo(f"    lift it with `dsr lift {request_id} --reason \"...\"` (the subject is told first)")
    if held.waiting_for:
        typer.echo(f"    the lift waits for the person's turn, held by {held.waiting_for} (one thing at a time in "
                   "their systems)")
    if held.failed:
        typer.echo(f"    mark not removed in {', '.join(held.failed)}: `dsr lift {request_id} --retry`")


def _outside_tasks(request_id: str) -> dict[str, Any]:
    """The request's tasks of systems reached by a person, by system, from the ledger (their answers unsealed:
    the operator's CLI only); none when the ledger cannot be read (the status still shows the workflow's view)."""
    from sqlalchemy.exc import SQLAlchemyError

    from dsr.config.settings import ConfigError
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.crypto import KeyRingError
    from dsr.store.ledger import LedgerUnavailableError
    from dsr.store.tasks import OutsideTasks

    try:
        deployment = Deployment.from_env()
        try:
            return {t.system: t for t in OutsideTasks(deployment.ledger.engine, deployment.keyring)
                    .tasks(request_id=request_id)}
        finally:
            deployment.close()
    except (ConfigError, KeyRingError, ValueError, LedgerUnavailableError, SQLAlchemyError):
        return {}  # an added view: the workflow's status is shown anyway


def _outside_state(task: Any, state: str, timezone: str) -> str:
    """``waiting for an answer (due 2026-12-14)``, or the answer: ``cannot: <the reason they gave>``."""
    from dsr.cli.tasks import answer_text, due_day

    if task.answer is None:
        if state == "running":
            return f"waiting for an answer (due {due_day(task, timezone).isoformat()})"
        return f"{state}, no answer (due {due_day(task, timezone).isoformat()})"
    return f"{state}, answered: {answer_text(task.answer)}"


def _outside_row(task: Any, timezone: str) -> dict[str, Any]:
    from dsr.cli.tasks import due_day

    answer = task.answer
    return {"system": task.system, "type": task.type, "asked_on": task.asked_on, "answer_by": due_day(task, timezone),
            "answer": answer.status.value if answer else "", "reason": answer.reason if answer else "",
            "legal_basis": answer.legal_basis if answer else "",
            "kept_until": answer.kept_until if answer and answer.kept_until else None}


def _status_from_ledger(settings: Settings, request_id: str, as_json: bool, *, why: str = "",
                        unread: str) -> bool:
    """The request's row in the ledger, printed as ``dsr status`` does, marked as read from there (and ``why``,
    when Temporal holds the request but did not answer); False when the ledger has no such request. A ledger that
    cannot be read is one line, saying ``unread`` (why Temporal could not answer) and what the ledger said."""
    from zoneinfo import ZoneInfo

    from sqlalchemy.exc import SQLAlchemyError

    from dsr.config.settings import ConfigError
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.crypto import KeyRingError
    from dsr.store.ledger import LedgerUnavailableError

    try:
        deployment = Deployment.from_settings(settings)
        try:
            row = deployment.ledger.get_request(request_id)
        finally:
            deployment.close()
    except (ConfigError, KeyRingError, ValueError, LedgerUnavailableError) as err:
        said = " ".join(str(err).split())
        raise UserError(f"{request_id}: {unread}, and the ledger cannot be read: {said}") from None
    except SQLAlchemyError as err:  # its message may quote the statement: its kind only
        raise UserError(f"{request_id}: {unread}, and the ledger cannot be read ({type(err).__name__})") from None
    if row is None:
        return False
    received = row.received_at.astimezone(ZoneInfo(settings.policy.timezone)).date()
    data = {"id": request_id, "kind": row.kind, "stage": row.stage, "outcome": row.outcome,
            "channel": row.channel, "received": received, "deadline": row.deadline, "extended": row.extended,
            "source": "ledger"} | ({"why": why} if why else {})
    if as_json:
        emit_json(data)
    else:
        typer.echo(f"{request_id}  {row.kind.value}  {row.stage.value}"
                   + (f" ({row.outcome.value})" if row.outcome else "")
                   + (f"  [from the ledger: {why}]" if why else "  [from the ledger]"))
        typer.echo(f"  received {received.isoformat()}, due {row.deadline.isoformat()}"
                   + (" [extended]" if row.extended else ""))
    return True


def due(
    within: Annotated[int, typer.Option(help="Days ahead (0: today and overdue).", min=0)] = 7,
    as_json: JsonOption = False,
) -> None:
    """Open requests due within DAYS, overdue first."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from dsr.config.settings import ConfigError
    from dsr.dpo.register import RegisterFilter, read_register
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.ledger import LedgerUnavailableError

    # From the ledger, not Temporal's visibility: one indexed query whatever the number of open requests (a
    # visibility listing took 8.6 s at 10,000), and the answer does not depend on Temporal being up. The
    # ledger's request row takes each event's stage and deadline in the event's own transaction.
    try:
        deployment = Deployment.from_env()
        ledger = deployment.ledger  # closed below
    except (ConfigError, ValueError, LedgerUnavailableError) as err:
        fail(str(err))
    timezone = deployment.settings.policy.timezone
    today = datetime.now(ZoneInfo(timezone)).date()
    try:
        entries = read_register(ledger, timezone=timezone, today=today,
                                filters=RegisterFilter(due_by=today + timedelta(days=within)))
    finally:
        ledger.close()
    entries.sort(key=lambda e: (e.deadline, e.reference))
    if as_json:
        emit_json([{"id": e.reference, "kind": e.kind, "stage": e.stage, "deadline": e.deadline,
                    "extended": e.extended, "overdue": e.overdue, "suspended_since": e.suspended_since}
                   for e in entries])
        return
    if not entries:
        typer.echo(f"nothing due within {within} days")
        return
    # One write: a line per echo took a third of the verb's time at 10,000 open requests.
    typer.echo("\n".join(
        f"{e.deadline.isoformat()}  {e.reference}  {e.kind:<13} {e.stage}"
        + ("  OVERDUE" if e.overdue else "") + ("  (extended)" if e.extended else "")
        + (f"  (clock stopped since {e.suspended_since.isoformat()})" if e.suspended_since else "")
        for e in entries))


def history(request_id: RequestId, as_json: JsonOption = False) -> None:
    """The request's audit trail from the ledger (kept after Temporal forgets the workflow)."""
    from dsr.config.settings import ConfigError
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.ledger import LedgerUnavailableError

    try:
        ledger = Deployment.from_env().ledger  # closed below
    except (ConfigError, ValueError, LedgerUnavailableError) as err:
        fail(str(err))
    try:
        row = ledger.get_request(request_id)
        if row is None:
            fail(f"no request {request_id!r} in the ledger")
        events = ledger.events(request_id)
    finally:
        ledger.close()
    if as_json:
        emit_json({"id": request_id, "kind": row.kind, "stage": row.stage, "outcome": row.outcome,
                   "deadline": row.deadline, "extended": row.extended,
                   "events": [{"at": e.at, "event": e.event, "actor": e.actor, "details": e.details,
                               "note": e.note} for e in events]})
        return
    typer.echo(f"{request_id}  {row.kind.value}  {row.stage.value}"
               + (f" ({row.outcome.value})" if row.outcome else "") + f"  due {row.deadline.isoformat()}")
    for e in events:
        details = ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()))
        typer.echo(f"  {e.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z  {e.event:<20} {e.actor}"
                   + (f"  {details}" if details else ""))
        if e.note:  # the sealed words of the record: a reason, a note, the new values, for operators' eyes
            label = _NOTE_LABELS.get(e.event, "note")
            lines = [line.strip() for line in e.note.splitlines() if line.strip()]
            typer.echo(f"      {label}: {lines[0] if lines else ''}")
            for line in lines[1:]:
                typer.echo(f"      {' ' * len(label)}  {line}")


# What an event's sealed note is, as `dsr history` names it (other events: "note").
_NOTE_LABELS = {
    "extended": "reason", "refused": "reason", "withdrawn": "reason", "identity_doubt": "reason",
    "clock_suspended": "reason", "changes_given": "changes", "triage_classified": "changes",
}


"""``dsr``: the operator's command line.

Every verb either succeeds or prints one line saying what is wrong and exits non-zero; no traceback
reaches the operator. Read verbs take ``--json`` for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

app = typer.Typer(
    name="dsr",
    help="A durable engine for GDPR data-subject requests, on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RequestId = Annotated[str, typer.Argument(help="The request reference, e.g. dsr-2026-11-7KQ3FJ.")]
Actor = Annotated[str, typer.Option("--by", help="Who acts (an operator login), kept in the ledger.")]


class UserError(Exception):
    """A problem the operator can fix; printed as one line."""


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _plain(value: Any) -> Any:
    """JSON-ready form of dataclasses, enums and dates."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(_plain(value), ensure_ascii=False, indent=2, sort_keys=True))


def run(coroutine_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command and turn every expected failure into one line and a non-zero exit."""

    @functools.wraps(coroutine_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from temporalio.client import WorkflowUpdateFailedError
        from temporalio.service import RPCError, RPCStatusCode

        from connectors.config import ConfigFileError
        from dsr.config import ConfigError
        from dsr.crypto import KeyRingError
        from intake.submission import SubmissionError

        try:
            return asyncio.run(coroutine_fn(*args, **kwargs))
        except (UserError, ConfigError, ConfigFileError, SubmissionError, KeyRingError) as err:
            fail(str(err))
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            fail(getattr(cause, "message", None) or str(cause) or "the request refused the change")
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                fail("no such request (check the reference)")
            if err.status == RPCStatusCode.UNAVAILABLE:
                fail("cannot reach Temporal: is `dsr up` running, or TEMPORAL_ADDRESS right?")
            fail(f"Temporal refused the call: {err.message}")
        except RuntimeError as err:
            if "Failed client connect" in str(err) or "connection" in str(err).lower():
                fail("cannot reach Temporal: is `dsr up` running, or TEMPORAL_ADDRESS right?")
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


async def _client():
    from dsr.config import Settings
    from dsr.crypto import KeyRing
    from dsr.temporal import connect

    settings = Settings.from_env()
    keyring = KeyRing.from_settings(settings)
    try:
        return settings, await connect(settings, keyring)
    except RuntimeError as err:
        raise UserError(
            f"cannot reach Temporal at {settings.temporal_address}: is `dsr up` running?"
        ) from err


def _check_reference(request_id: str) -> None:
    if not re.fullmatch(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}", request_id):
        raise UserError(f"{request_id!r} is not a request reference (they look like dsr-2026-11-7KQ3FJ)")


def _handle(client, request_id: str):
    from workflows.request import DataSubjectRequest

    _check_reference(request_id)
    return client.get_workflow_handle_for(DataSubjectRequest.run, request_id)


def _parse_received(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--received must be a date (2026-11-20) or an ISO time, got {value!r}") from None
    if parsed.tzinfo is None:
        from zoneinfo import ZoneInfo

        from dsr.config import Settings

        # A bare date or time is the controller's local time: that is how a letter's stamp reads.
        parsed = parsed.replace(tzinfo=ZoneInfo(Settings.from_env().policy.timezone))
    return parsed


def _parse_changes(values: list[str]) -> dict[str, str]:
    changes: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--change must look like field=value, got {item!r}")
        changes[key.strip()] = value
    return changes


@app.command()
@run
async def submit(
    kind: Annotated[str, typer.Option(help="access, rectification, erasure or portability.")],
    email: Annotated[str, typer.Option(help="The subject's email address.")],
    name: Annotated[str, typer.Option(help="The subject's name.")] = "",
    channel: Annotated[str, typer.Option(help="api, email, form, support_desk or operator.")] = "operator",
    language: Annotated[str | None, typer.Option(help="fr or en (default: DSR_LANGUAGE).")] = None,
    details: Annotated[str, typer.Option(help="What the subject wrote.")] = "",
    received: Annotated[
        str | None, typer.Option(help="When it was received, if earlier than now (YYYY-MM-DD or ISO time).")
    ] = None,
    change: Annotated[
        list[str] | None, typer.Option(help="Rectification: field=value (repeatable).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Record a request received by any channel and start its workflow (or attach it to the open request of
    the same subject and kind, as every channel does)."""
    from dsr.config import Settings
    from dsr.crypto import KeyRing
    from dsr.ledger import Ledger, LedgerUnavailableError
    from intake.service import IntakeService, IntakeUnavailable
    from intake.submission import Submission, prepare

    # Validate everything before connecting, so bad input never meets Temporal.
    settings = Settings.from_env()
    submission = Submission(kind=kind, email=email, name=name, channel=channel, language=language, details=details,
                            received_at=_parse_received(received), changes=_parse_changes(change or []))
    prepare(submission, settings)
    settings, client = await _client()
    try:
        ledger = Ledger(settings.database_url, KeyRing.from_settings(settings))
    except (LedgerUnavailableError, ValueError) as err:
        raise UserError(str(err)) from None
    try:
        # The one door every channel goes through (duplicates decided in the ledger); staff are not rate-limited.
        accepted = await IntakeService(client, settings, ledger).submit(submission, rate_limit=False)
    except IntakeUnavailable as err:
        raise UserError(str(err)) from None
    finally:
        ledger.close()
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

    today = datetime.now(ZoneInfo(timezone)).date()
    if deadline < today:
        typer.echo(f"warning: the one-month deadline passed on {deadline.isoformat()}: reply at once and record "
                   "the reasons for the delay; it can no longer be extended (Art. 12(3))", err=True)
    elif (deadline - today).days < 7:
        typer.echo(f"warning: only {(deadline - today).days} day(s) left before the deadline "
                   f"({deadline.isoformat()}); an extension must be decided and told before then", err=True)


@app.command()
@run
async def status(request_id: RequestId, as_json: JsonOption = False) -> None:
    """Where a request stands: stage, deadline, connectors."""
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.request import DataSubjectRequest

    _check_reference(request_id)
    settings, client = await _client()
    try:
        state = await _handle(client, request_id).query(DataSubjectRequest.status)
    except RPCError as err:
        # Temporal forgets closed workflows after its retention period; the ledger does not.
        if err.status != RPCStatusCode.NOT_FOUND or not _status_from_ledger(settings, request_id, as_json):
            raise
        return
    if as_json:
        data = _plain(state)
        data["id"] = data.pop("request_id")
        emit_json(data)
        return
    flags = [f for f, on in (("extended", state.extended), ("OVERDUE", state.overdue)) if on]
    typer.echo(f"{state.request_id}  {state.kind.value}  {state.stage.value}"
               + (f" ({state.outcome.value})" if state.outcome else ""))
    typer.echo(f"  received {state.received.isoformat()}, due {state.deadline.isoformat()}"
               + (f" [{', '.join(flags)}]" if flags else ""))
    typer.echo(f"  identity: {state.identity.value}, {'confirmed' if state.identity_confirmed else 'waiting'}")
    for c in state.connectors:
        shown = "degraded" if c.degraded else c.state.value
        if c.failing_since is not None and c.state.value == "running":
            shown += f", failing since {c.failing_since:%Y-%m-%d %H:%M} UTC (retried)"
        if c.resumed:
            shown += f", resumed {c.resumed} times after progress"
        typer.echo(f"  {c.connector}: {shown}" + (f" - {c.error}" if c.error else ""))
    if state.degraded:
        typer.echo(f"  connector degraded (failing too long, still retried; the operator was told): "
                   f"{', '.join(state.degraded)}")
    if state.waiting_for:
        typer.echo(f"  waiting for {state.waiting_for} of the same person (one request at a time in their systems)")
    if state.awaiting_changes:
        # The person's own words (personal data, shown to the operator only): what to correct, in their terms.
        text = await _handle(client, request_id).query(DataSubjectRequest.subject_text)
        typer.echo(f"  waiting for the corrections to make (`dsr rectify {state.request_id} --change field=value`);"
                   " the person wrote:")
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


def _status_from_ledger(settings, request_id: str, as_json: bool) -> bool:
    from zoneinfo import ZoneInfo

    from dsr.crypto import KeyRing
    from dsr.ledger import Ledger

    ledger = Ledger(settings.database_url, KeyRing.from_settings(settings))
    try:
        row = ledger.get_request(request_id)
    finally:
        ledger.close()
    if row is None:
        return False
    received = row.received_at.astimezone(ZoneInfo(settings.policy.timezone)).date()
    data = {"id": request_id, "kind": row.kind, "stage": row.stage, "outcome": row.outcome,
            "channel": row.channel, "received": received, "deadline": row.deadline, "extended": row.extended,
            "source": "ledger"}
    if as_json:
        emit_json(data)
    else:
        typer.echo(f"{request_id}  {row.kind.value}  {row.stage.value}"
                   + (f" ({row.outcome.value})" if row.outcome else "") + "  [from the ledger]")
        typer.echo(f"  received {received.isoformat()}, due {row.deadline.isoformat()}"
                   + (" [extended]" if row.extended else ""))
    return True


async def _update(request_id: str, update: str, argument: Any, as_json: bool) -> None:
    from temporalio.client import WorkflowExecutionStatus

    from dsr import search_attributes as sa
    from dsr.model import UpdateResult

    _check_reference(request_id)
    _, client = await _client()
    handle = _handle(client, request_id)
    # A clear "no such request" or "closed" before any update is attempted: a closed workflow takes none.
    described = await handle.describe()
    if described.status != WorkflowExecutionStatus.RUNNING:
        outcome = described.typed_search_attributes.get(sa.DSR_OUTCOME) or described.status.name.lower()
        raise UserError(f"{request_id} is closed ({outcome})")
    result = await handle.execute_update(update, argument, result_type=UpdateResult)
    if as_json:
        emit_json({"id": request_id, **_plain(result)})
    else:
        typer.echo(f"{request_id}: {result.stage.value}, due {result.deadline.isoformat()}"
                   + (" (extended)" if result.extended else ""))


@app.command("confirm-identity")
@run
async def confirm_identity(
    request_id: RequestId,
    method: Annotated[str, typer.Option(help="How identity was checked: email or document.")] = "document",
    by: Actor = "operator",
    note: Annotated[str, typer.Option(help="What was checked (no copy of the document).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Confirm the subject's identity (e.g. after reviewing a document, which is then deleted)."""
    from dsr.model import IdentityConfirmation, IdentityMethod

    try:
        chosen = IdentityMethod(method)
    except ValueError:
        chosen = IdentityMethod.TRUSTED
    if chosen == IdentityMethod.TRUSTED:  # only the channel, at the start, makes a request trusted
        raise UserError(f"--method must be email or document, got {method!r}")
    await _update(request_id, "confirm_identity",
                  IdentityConfirmation(method=chosen, confirmed_by=by, note=note), as_json)


@app.command()
@run
async def extend(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="Why (told to the subject, Art. 12(3)).")],
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Extend the deadline by two months, once, within the first month; the subject is told why."""
    from dsr.model import Extension

    await _update(request_id, "extend_deadline", Extension(reason=reason, requested_by=by), as_json)


@app.command()
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
    from dsr.model import Refusal, RefusalGround

    try:
        chosen = RefusalGround(ground)
    except ValueError:
        raise UserError(f"--ground must be one of {', '.join(g.value for g in RefusalGround)} (got {ground!r})") \
            from None
    await _update(request_id, "refuse", Refusal(reason=reason, requested_by=by, ground=chosen), as_json)


@app.command()
@run
async def withdraw(
    request_id: RequestId,
    by: Actor = "subject",
    reason: Annotated[str, typer.Option(help="Optional note.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Close a request the subject withdrew."""
    from dsr.model import Withdrawal

    await _update(request_id, "withdraw", Withdrawal(requested_by=by, reason=reason), as_json)


@app.command()
@run
async def retry(request_id: RequestId, by: Actor = "operator", as_json: JsonOption = False) -> None:
    """Go on with a request in needs_attention: run its failed connectors again, or write its held reply."""
    from dsr.model import Retry

    await _update(request_id, "retry", Retry(requested_by=by), as_json)


@app.command()
@run
async def doubt(
    request_id: RequestId,
    reason: Annotated[str, typer.Option(help="What the subject must provide and why (told to them, kept).")],
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record a reasonable doubt about the requester's identity (Art. 12(6)): the subject is asked for what you
    need; with DSR_CLOCK=suspend_during_identity the time limit stands still until they provide it."""
    from dsr.model import Doubt

    await _update(request_id, "doubt", Doubt(reason=reason, requested_by=by), as_json)


@app.command()
@run
async def rectify(
    request_id: RequestId,
    change: Annotated[list[str], typer.Option(help="field=value (repeatable): a correction the subject asked for.")],
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Give a rectification that came as free text the corrections to make (read them with `dsr status`)."""
    from dsr.model import CANONICAL_FIELDS, Rectification

    changes = _parse_changes(change)
    unknown = sorted(set(changes) - CANONICAL_FIELDS)
    if unknown:
        raise UserError(f"cannot rectify {', '.join(unknown)}; fields are {', '.join(sorted(CANONICAL_FIELDS))}")
    await _update(request_id, "rectify", Rectification(changes=changes, requested_by=by), as_json)


@app.command("clear-residuals")
@run
async def clear_residuals(
    request_id: RequestId,
    note: Annotated[str, typer.Option(help="How the data was cleared (no personal data).")] = "",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record that the residual data of a request (what a system's API could not erase) was cleared by hand."""
    from dsr.model import ResidualsCleared

    await _update(request_id, "clear_residuals", ResidualsCleared(cleared_by=by, note=note), as_json)


@app.command()
@run
async def due(
    within: Annotated[int, typer.Option(help="Days ahead (0: today and overdue).", min=0)] = 7,
    as_json: JsonOption = False,
) -> None:
    """Open requests due within DAYS, overdue first."""
    from zoneinfo import ZoneInfo

    from dsr.dashboard import list_due

    settings, client = await _client()
    today = datetime.now(ZoneInfo(settings.policy.timezone)).date()
    rows = await list_due(client, today, within)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo(f"nothing due within {within} days")
    for r in rows:
        typer.echo(f"{r.deadline.isoformat()}  {r.id}  {r.kind:<13} {r.stage}"
                   + ("  OVERDUE" if r.overdue else "") + ("  (extended)" if r.extended else ""))


@app.command()
def history(request_id: RequestId, as_json: JsonOption = False) -> None:
    """The request's audit trail from the ledger (kept after Temporal forgets the workflow)."""
    from dsr.config import ConfigError, Settings
    from dsr.crypto import KeyRing
    from dsr.ledger import Ledger, LedgerUnavailableError

    try:
        settings = Settings.from_env()
        ledger = Ledger(settings.database_url, KeyRing.from_settings(settings))
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
        if e.note:  # the operator's reason (extension, refusal): the Art. 12(4)-(5) record
            typer.echo(f"      reason: {' '.join(e.note.split())}")


def _open_ledger():
    """Settings and the ledger, for the verbs that read the ledger alone (no Temporal needed)."""
    from dsr.config import ConfigError, Settings
    from dsr.crypto import KeyRing, KeyRingError
    from dsr.ledger import Ledger, LedgerUnavailableError

    try:
        settings = Settings.from_env()
        return settings, Ledger(settings.database_url, KeyRing.from_settings(settings))
    except (ConfigError, KeyRingError, ValueError, LedgerUnavailableError) as err:
        fail(str(err))


def _parse_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option} must be a date YYYY-MM-DD, got {value!r}")


def _parse_language(value: str | None, default: Any) -> Any:
    from dsr.model import Language

    if value is None:
        return default
    try:
        return Language(value.strip().lower())
    except ValueError:
        fail(f"--language must be fr or en, got {value!r}")


def _parse_period(since: str | None, until: str | None) -> tuple[date | None, date | None]:
    first, last = _parse_day(since, "--since"), _parse_day(until, "--until")
    if first is not None and last is not None and last < first:
        fail(f"--until ({last.isoformat()}) is before --since ({first.isoformat()})")
    return first, last


CSV_SEPARATORS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t"}


@app.command("list")
def list_requests(
    open_only: Annotated[bool, typer.Option("--open", help="Open requests only.")] = False,
    closed_only: Annotated[bool, typer.Option("--closed", help="Closed requests only.")] = False,
    kind: Annotated[str | None, typer.Option(metavar="KIND",
                                             help="access, rectification, erasure or portability.")] = None,
    since: Annotated[str | None, typer.Option(metavar="DATE",
                                              help="Received on or after this date (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(metavar="DATE",
                                              help="Received on or before this date (YYYY-MM-DD).")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Open requests past their deadline only.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV for a spreadsheet (UTF-8 with BOM).")] = False,
    sep: Annotated[str | None, typer.Option(
        "--sep", metavar="SEP",
        help="CSV separator: ';', ',' or 'tab' (default ';' when DSR_LANGUAGE is fr, else ',').")] = None,
    language: Annotated[str | None, typer.Option(
        metavar="fr|en", help="Words of the table and CSV: fr or en (DSR_LANGUAGE).")] = None,
    with_subject: Annotated[bool, typer.Option(
        "--with-subject", help="Add the subject's email and name, decrypted (for the DPO; personal data).")] = False,
    as_json: JsonOption = False,
) -> None:
    """The register of requests from the ledger: one line per request, oldest first (kept after Temporal forgets)."""
    import csv
    import io
    from zoneinfo import ZoneInfo

    from dsr.bundle import _csv_safe
    from dsr.model import Language, RequestKind
    from dsr.register import (
        COLUMNS,
        HEADERS,
        SUBJECT_COLUMNS,
        RegisterFilter,
        RequestState,
        entry_cells,
        entry_json,
        read_register,
    )

    if open_only and closed_only:
        fail("--open and --closed exclude each other")
    if overdue and closed_only:
        fail("--overdue lists open requests; it excludes --closed")
    if as_csv and as_json:
        fail("--csv and --json exclude each other")
    if sep is not None and not as_csv:
        fail("--sep goes with --csv")
    if sep is not None and sep not in CSV_SEPARATORS:
        fail(f"--sep must be ';', ',' or 'tab', got {sep!r}")
    wanted_kind = None
    if kind is not None:
        try:
            wanted_kind = RequestKind(kind.strip().lower())
        except ValueError:
            fail(f"unknown kind {kind!r}: access, rectification, erasure or portability")
    first, last = _parse_period(since, until)
    settings, ledger = _open_ledger()
    words = _parse_language(language, settings.default_language)
    state = RequestState.OPEN if open_only else RequestState.CLOSED if closed_only else RequestState.ALL
    today = datetime.now(ZoneInfo(settings.policy.timezone)).date()
    try:
        entries = read_register(ledger, timezone=settings.policy.timezone, today=today, with_subject=with_subject,
                                filters=RegisterFilter(state=state, kind=wanted_kind, since=first, until=last,
                                                       overdue=overdue))
    finally:
        ledger.close()
    columns = list(COLUMNS) + (list(SUBJECT_COLUMNS) if with_subject else [])
    if as_json:
        typer.echo(json.dumps([entry_json(e, with_subject=with_subject) for e in entries], ensure_ascii=False,
                              indent=2))
        return
    headers = [HEADERS[words][c] for c in columns]
    rows = [entry_cells(e, words, with_subject=with_subject) for e in entries]
    if as_csv:
        # A French spreadsheet splits on ';' (',' is its decimal mark); the BOM tells any spreadsheet it is UTF-8.
        delimiter = CSV_SEPARATORS[sep] if sep else (";" if settings.default_language == Language.FR else ",")
        out = io.StringIO()
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
        writer.writerow(headers)
        writer.writerows([_csv_safe(cell) for cell in row] for row in rows)
        sys.stdout.flush()
        sys.stdout.buffer.write(("\ufeff" + out.getvalue()).encode("utf-8"))
        sys.stdout.buffer.flush()
        return
    if not rows:
        typer.echo("no request matches")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@app.command()
def report(
    year: Annotated[str | None, typer.Option(
        metavar="YEAR", help="Requests received in this calendar year (default: this year).")] = None,
    since: Annotated[str | None, typer.Option(
        metavar="DATE", help="Received on or after this date (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(
        metavar="DATE", help="Received on or before this date (YYYY-MM-DD; default today).")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE",
        help="Also write the report with its charts as one self-contained HTML page to FILE.")] = None,
    language: Annotated[str | None, typer.Option(metavar="fr|en", help="fr or en (default DSR_LANGUAGE).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Statistics of the register: counts per kind, channel, outcome and month, time to answer, share on time,
    extensions, refusals and their grounds."""
    from zoneinfo import ZoneInfo

    from dsr.profile import ProfileError, load_profile
    from dsr.register import compute_statistics, read_register
    from dsr.report import render_html, statistics_json, summary_lines, year_period

    first, last = _parse_period(since, until)
    if year is not None and (first is not None or last is not None):
        fail("--year excludes --since and --until")
    settings, ledger = _open_ledger()
    words = _parse_language(language, settings.default_language)
    now = datetime.now(ZoneInfo(settings.policy.timezone))
    today = now.date()
    if year is not None:
        if not re.fullmatch(r"\s*\d{4}\s*", year) or not 1970 <= int(year) <= 9999:
            ledger.close()
            fail(f"--year must be a year such as {today.year}, got {year!r}")
        first, last = year_period(int(year))
    elif first is None and last is None:
        first, last = year_period(today.year)
    elif first is None:
        assert last is not None
        first = date(last.year, 1, 1)
    elif last is None:
        last = max(today, first)
    assert first is not None and last is not None
    try:
        entries = read_register(ledger, timezone=settings.policy.timezone, today=today)
    finally:
        ledger.close()
    stats = compute_statistics(entries, since=first, until=last, as_of=today)
    if html is not None:
        controller = settings.controller_name
        if not controller:
            with contextlib.suppress(ProfileError, OSError):
                profile = load_profile(settings.config_file)
                controller = profile.legal_name if profile is not None else ""
        page = render_html(stats, words, timezone=settings.policy.timezone, generated_at=now,
                           controller_name=controller)
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as err:
            fail(f"cannot write {html}: {err.strerror}")
    if as_json:
        emit_json(statistics_json(stats))
    else:
        for line in summary_lines(stats, words):
            typer.echo(line)
    if html is not None and not as_json:
        typer.echo(f"report written to {html}")


def _probe_storage(objects) -> None:
    """Write, read and delete a probe object, and check that a conditional write of an existing key is refused:
    attachments rely on it (``If-None-Match: *``) so that two mailbox pollers never overwrite each other's file."""
    import uuid

    from dsr.store import ObjectExists, StorageError

    objects.check()
    probe = f"setup/probe-{uuid.uuid4().hex}"
    objects.put(probe, b"dsr setup probe", if_absent=True)
    try:
        try:
            objects.put(probe, b"a second writer", if_absent=True)
        except ObjectExists:
            pass
        else:
            raise StorageError(f"{objects.url}: the storage ignores conditional writes (If-None-Match: *); use one "
                               "that honours them (AWS S3, MinIO), or two mailbox pollers may overwrite a file")
        if objects.get(probe) != b"dsr setup probe":
            raise StorageError(f"{objects.url}: an object read back differs from what was written")
    finally:
        objects.delete(probe)


@app.command()
@run
async def setup(as_json: JsonOption = False) -> None:
    """Prepare a new deployment, once, from any machine (it is idempotent): the ledger's schema, Temporal's search
    attributes, and a check that the object storage is reachable and writable."""
    from temporalio.service import RPCError, RPCStatusCode

    from dsr import migrations
    from dsr import search_attributes as sa
    from dsr.ledger import Ledger, LedgerUnavailableError
    from dsr.store import StorageError, open_store
    from dsr.temporal import register_search_attributes

    settings, client = await _client()
    from dsr.crypto import KeyRing

    keyring = KeyRing.from_settings(settings)
    done: dict[str, str] = {}
    try:
        ledger = Ledger(settings.database_url, keyring)
    except (LedgerUnavailableError, ValueError) as err:
        raise UserError(str(err)) from None
    # Opening the ledger upgraded its database (the intake's shared counters included) to this release's schema.
    done["ledger"] = f"schema {migrations.head()} in {ledger.url.render_as_string(hide_password=True)}"
    ledger.close()
    names = ", ".join(key.name for key in sa.TEMPORAL_TYPE_NAMES)
    try:
        await register_search_attributes(client)
    except RPCError as err:
        if err.status != RPCStatusCode.PERMISSION_DENIED:
            raise
        # Temporal Cloud registers them in its UI or with tcld, not through the API a worker may call.
        wanted = ", ".join(f"{key.name} ({kind})" for key, kind in sa.TEMPORAL_TYPE_NAMES.items())
        raise UserError(f"Temporal refused to register the search attributes ({err.message}); create them in the "
                        f"namespace's settings: {wanted}") from None
    done["temporal"] = f"search attributes {names} registered in namespace {settings.temporal_namespace}"
    objects = open_store(settings)
    try:
        await asyncio.to_thread(_probe_storage, objects)
    except StorageError as err:
        raise UserError(str(err)) from None
    done["storage"] = f"{objects.url} reachable, writable, with conditional writes"
    if as_json:
        emit_json(done)
        return
    for part, what in done.items():
        typer.echo(f"{part}: {what}")


@app.command()
def worker() -> None:
    """Run a worker against TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (production)."""
    from dsr.config import ConfigError, Settings
    from worker import run_worker

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        fail(str(err))
    from connectors.config import ConfigFileError
    from dsr.crypto import KeyRingError
    from dsr.store import StorageError

    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        return
    except (KeyRingError, ConfigFileError, StorageError) as err:
        fail(str(err))
    except RuntimeError as err:
        fail(f"worker stopped: {err}")


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Also start the sandboxes with sample customers.")] = False,
    no_worker: Annotated[bool, typer.Option(
        "--no-worker", help="Start no worker: run `dsr worker` processes yourself.")] = False,
) -> None:
    """Start everything locally: Temporal dev server and UI, codec server, worker, SMTP sink."""
    from dsr.config import ConfigError, Settings
    from dsr.stack import StackError, run_stack

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        fail(str(err))
    from connectors.config import ConfigFileError

    try:
        asyncio.run(run_stack(settings, demo=demo, worker=not no_worker))
    except (StackError, ConfigFileError, ConfigError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        pass


@app.command()
def intake() -> None:
    """Run the intake app alone (form, API, webhooks, /verify, downloads; mailbox if configured)."""
    from dsr.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        fail(str(err))
    from dsr.crypto import KeyRingError
    from dsr.store import StorageError

    try:
        asyncio.run(_serve_intake(settings))
    except KeyboardInterrupt:
        return
    except (KeyRingError, ConfigError, UserError, StorageError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot serve on {settings.intake_host}:{settings.intake_port}: {err.strerror or err}")


async def _serve_intake(settings) -> None:
    import signal

    from dsr.codec_server import serve_codec
    from dsr.crypto import KeyRing
    from dsr.ledger import Ledger
    from dsr.store import open_store
    from dsr.store.attachments import AttachmentStore
    from dsr.store.exports import ExportStore
    from intake.server import build_intake_app, run_mailbox

    objects = open_store(settings)
    await asyncio.to_thread(objects.check)
    _, client = await _client()
    keyring = KeyRing.from_settings(settings)
    ledger = Ledger(settings.database_url, keyring)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app, service = build_intake_app(settings, keyring, ledger, ExportStore(objects, keyring), client)
    server = await serve_codec(app, host=settings.intake_host, port=settings.intake_port,
                               trusted_proxies=settings.trusted_proxies)
    typer.echo(f"intake on {settings.intake_url} (Ctrl-C stops)")
    try:
        if settings.imap is not None:
            await run_mailbox(settings, keyring, ledger, service, stop, AttachmentStore(objects, keyring))
        await stop.wait()
    finally:
        await server.stop()
        ledger.close()


triage_app = typer.Typer(help="Emails the classifier was unsure about, waiting for a human.", no_args_is_help=True)
app.add_typer(triage_app, name="triage")
TriageId = Annotated[str, typer.Argument(help="The triage reference, e.g. triage-dsr-2026-11-7KQ3FJ.")]


def _triage_handle(client, triage_id: str):
    from workflows.triage import TriageMessageWorkflow

    if not re.fullmatch(r"triage-dsr-\d{4}-\d{2}-[0-9A-Z]{6}", triage_id):
        raise UserError(f"{triage_id!r} is not a triage reference (they look like triage-dsr-2026-11-7KQ3FJ)")
    return client.get_workflow_handle_for(TriageMessageWorkflow.run, triage_id)


@triage_app.command("list")
@run
async def triage_list(as_json: JsonOption = False) -> None:
    """Messages waiting for a decision, oldest deadline first."""
    _, client = await _client()
    rows = []
    query = "WorkflowType = 'TriageMessage' AND ExecutionStatus = 'Running'"
    async for execution in client.list_workflows(query):
        rows.append({"id": execution.id, "since": execution.start_time})
    rows.sort(key=lambda r: r["id"])
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("nothing to triage")
    for row in rows:
        typer.echo(f"{row['id']}  since {row['since']:%Y-%m-%d %H:%M}")


@triage_app.command("show")
@run
async def triage_show(triage_id: TriageId, as_json: JsonOption = False) -> None:
    """The message itself (personal data: for the operator's eyes) and why it was not classified."""
    from dsr.model import display_name
    from workflows.triage import TriageMessageWorkflow

    _, client = await _client()
    handle = _triage_handle(client, triage_id)
    status = await handle.query(TriageMessageWorkflow.status)
    message = await handle.query(TriageMessageWorkflow.message)
    if as_json:
        emit_json({"status": _plain(status), "message": _plain(message)})
        return
    typer.echo(f"{status.triage_id}  {status.state}  received {status.received.isoformat()}, "
               f"due {status.deadline.isoformat()} if it is a request")
    typer.echo(f"  why: {status.reason}")
    typer.echo(f"  from: {display_name(message.name)} <{message.email}>  ({message.language.value})")
    typer.echo(f"  subject: {message.subject_line}")
    typer.echo("")
    typer.echo(message.body)


@triage_app.command("classify")
@run
async def triage_classify(
    triage_id: TriageId,
    kind: Annotated[str, typer.Option(help="access, rectification, erasure or portability.")],
    language: Annotated[str | None, typer.Option(help="fr or en, if the detected one is wrong.")] = None,
    change: Annotated[list[str] | None, typer.Option(help="Rectification: field=value (repeatable).")] = None,
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Make the message the request it is; it keeps the email's receipt date."""
    from dsr.model import Language, RequestKind, TriageDecision

    try:
        chosen = RequestKind(kind)
        lang = Language(language) if language else None
    except ValueError:
        raise UserError(f"--kind must be one of access, rectification, erasure, portability; --language fr or en"
                        f" (got {kind!r}, {language!r})") from None
    decision = TriageDecision(kind=chosen, decided_by=by, language=lang, changes=_parse_changes(change or []))
    _, client = await _client()
    from dsr.model import TriageStatus

    status = await _triage_handle(client, triage_id).execute_update("classify", decision, result_type=TriageStatus)
    if as_json:
        emit_json(_plain(status))
    else:
        attached = f" (attached to the open request {status.attached_to})" if status.attached_to else ""
        typer.echo(f"{triage_id}: {chosen.value} request {status.request_id}{attached}")


@triage_app.command("dismiss")
@run
async def triage_dismiss(
    triage_id: TriageId,
    reason: Annotated[str, typer.Option(help="Why nothing is done (kept as the record; told to the sender "
                                                 "with --refuse).")],
    refuse: Annotated[str | None, typer.Option(
        help="It is a request of this kind (access, rectification, erasure, portability) that is refused: the "
             "sender is told why and of the right to complain (Art. 12(4)).")] = None,
    ground: Annotated[str, typer.Option(help="With --refuse: the ground, as for `dsr refuse`.")] = "excessive",
    by: Actor = "operator",
) -> None:
    """Not a request (spam...): close it with the reason; or a request refused (--refuse KIND): the sender is told."""
    from dsr.model import RefusalGround, RequestKind, TriageDismissal

    if not reason.strip():
        raise UserError("--reason must not be empty")
    try:
        refused_as = RequestKind(refuse) if refuse else None
        chosen = RefusalGround(ground)
    except ValueError:
        raise UserError(f"--refuse must be one of access, rectification, erasure, portability and --ground one of "
                        f"{', '.join(g.value for g in RefusalGround)} (got {refuse!r}, {ground!r})") from None
    _, client = await _client()
    await _triage_handle(client, triage_id).execute_update(
        "dismiss", TriageDismissal(reason=reason, decided_by=by, refused_as=refused_as, ground=chosen),
        result_type=None)
    typer.echo(f"{triage_id}: dismissed" + (f"; the sender is told the {refused_as.value} request is refused"
                                           if refused_as else ""))


attachments_app = typer.Typer(help="Files that came with email requests (ID documents).", no_args_is_help=True)
app.add_typer(attachments_app, name="attachments")


def _attachments():
    from dsr.config import Settings
    from dsr.crypto import KeyRing
    from dsr.store import open_store
    from dsr.store.attachments import AttachmentStore

    settings = Settings.from_env()
    return AttachmentStore(open_store(settings), KeyRing.from_settings(settings))


@attachments_app.command("list")
def attachments_list(request_id: RequestId, as_json: JsonOption = False) -> None:
    """What a request came with (deleted automatically once identity is confirmed)."""
    from dsr.config import ConfigError
    from dsr.crypto import KeyRingError
    from dsr.store import StorageError

    try:
        _check_reference(request_id)
        found = _attachments().list(request_id)
    except (UserError, ConfigError, KeyRingError, ValueError, StorageError) as err:
        fail(str(err))
    if as_json:
        emit_json([_plain(a) for a in found])
        return
    if not found:
        typer.echo(f"{request_id}: no attachments")
    for item in found:
        typer.echo(f"  {item.index}  {item.filename}  {item.content_type}  {item.size} bytes")
        if item.sender_check:  # what our mail server said of the email's sender: a forged From shows here
            typer.echo(f"     sender: {item.sender_check}")


@attachments_app.command("get")
def attachments_get(
    request_id: RequestId,
    index: Annotated[int, typer.Argument(help="The attachment's number (from `dsr attachments list`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write it (created 0600).")],
) -> None:
    """Decrypt one attachment to a file, to review a document; delete your copy after."""
    import os

    from dsr.config import ConfigError
    from dsr.crypto import KeyRingError
    from dsr.store import StorageError

    try:
        _check_reference(request_id)
        data = _attachments().read(request_id, index)
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{output} exists; choose another path")
    except (UserError, ConfigError, KeyRingError, ValueError, LookupError, FileNotFoundError, StorageError) as err:
        fail(str(err) or f"{request_id} has no attachment {index}")
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    typer.echo(f"{output}: {len(data)} bytes (delete it once reviewed)")


connectors_app = typer.Typer(help="The systems holding personal data (dsr.toml).", no_args_is_help=True)
app.add_typer(connectors_app, name="connectors")


@connectors_app.command("check")
@run
async def connectors_check(as_json: JsonOption = False) -> None:
    """Call each configured system once: reachable, credentials accepted; non-zero exit on any failure."""
    from connectors.base import ConnectorError
    from connectors.config import build_connector, load_config
    from dsr.config import Settings

    settings = Settings.from_env()
    config = load_config(settings.config_file)
    if not config.connectors:
        raise UserError(f"no connectors configured in {settings.config_file}")
    environment = settings.connector_environment()
    results = []
    for entry in config.connectors:
        result = {"name": entry.display_name, "type": entry.type, "ok": False, "detail": ""}
        try:
            connector = build_connector(entry, environment)
        except ValueError as err:  # a missing secret: report it with the others
            result["detail"] = str(err)
            results.append(result)
            continue
        try:
            result["detail"] = await asyncio.wait_for(connector.check(), timeout=entry.timeout_seconds)
            result["ok"] = True
        except ConnectorError as err:
            result["detail"] = str(err)
        except TimeoutError:
            result["detail"] = f"no answer within {entry.timeout_seconds:.0f}s"
        finally:
            await connector.aclose()
        results.append(result)
    if as_json:
        emit_json(results)
    else:
        for r in results:
            typer.echo(f"{'ok  ' if r['ok'] else 'FAIL'}  {r['name']:<16} {r['type']:<12} {r['detail']}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


config_app = typer.Typer(help="The configuration file (dsr.toml).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(as_json: JsonOption = False) -> None:
    """Check dsr.toml: connectors and the controller profile (every Art. 15(1) item); exit 1 if incomplete."""
    from connectors.config import ConfigFileError, load_config
    from dsr.config import ConfigError, Settings
    from dsr.profile import check_profile, load_profile

    try:
        settings = Settings.from_env()
        config = load_config(settings.config_file)
        profile = load_profile(settings.config_file)
    except (ConfigError, ConfigFileError) as err:
        fail(str(err))
    missing = check_profile(profile)
    if as_json:
        emit_json({"file": str(settings.config_file), "connectors": [c.display_name for c in config.connectors],
                   "profile_complete": not missing, "missing": missing})
    else:
        typer.echo(f"{settings.config_file}: {len(config.connectors)} connector(s)"
                   + (f" ({', '.join(c.display_name for c in config.connectors)})" if config.connectors else ""))
        if missing:
            typer.echo("controller profile incomplete; access replies are held until it is complete:")
            for line in missing:
                typer.echo(f"  {line}")
        else:
            typer.echo("controller profile complete (Art. 15(1)(a)-(h), 15(2))")
    if missing:
        raise typer.Exit(1)


keys_app = typer.Typer(help="The key ring: what encrypts payloads, ledger fields and objects, and signs links.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(as_json: JsonOption = False) -> None:
    """Add a new current key; old keys keep decrypting. Restart every process afterwards."""
    from dsr.config import ConfigError, Settings
    from dsr.crypto import ENV_VAR, KeyRing, KeyRingError

    try:
        settings = Settings.from_env()
        if os.environ.get(ENV_VAR, "").strip():
            # Keys given by the environment live in the operator's secret store, not here: print the new value.
            ring = KeyRing.from_env_value(os.environ[ENV_VAR]).with_new_key()
            where = ENV_VAR
        else:
            ring = KeyRing.rotate(settings.key_file)
            where = str(settings.key_file)
    except (ConfigError, KeyRingError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot rotate the key file {settings.key_file}: {err.strerror or err}")
    summary = {"current": ring.current_key_id, "keys": list(ring.key_ids), "index": ring.index_key_id,
               "where": where}
    if where == ENV_VAR:
        summary["env_value"] = ring.to_env_value()
    if as_json:
        emit_json(summary)
        return
    if where == ENV_VAR:
        typer.echo(f"new {ENV_VAR} (newest first; put it in the secret store of EVERY worker, intake replica and "
                   "codec server, then restart each):", err=True)
        typer.echo(summary["env_value"])
    else:
        typer.echo(f"new current key {ring.current_key_id} in {where} (keys: {', '.join(ring.key_ids)}); "
                   "restart `dsr up` (and any `dsr worker` / `dsr intake` using this DSR_HOME)")


@keys_app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """The key ids (never the keys): which is current, which the blind index uses."""
    from dsr.config import ConfigError, Settings
    from dsr.crypto import KeyRing, KeyRingError

    try:
        ring = KeyRing.from_settings(Settings.from_env())
    except (ConfigError, KeyRingError) as err:
        fail(str(err))
    if as_json:
        emit_json({"current": ring.current_key_id, "index": ring.index_key_id, "keys": list(ring.key_ids)})
        return
    for key_id in ring.key_ids:
        marks = [m for m, on in (("current", key_id == ring.current_key_id), ("index", key_id == ring.index_key_id))
                 if on]
        typer.echo(f"{key_id}{'  (' + ', '.join(marks) + ')' if marks else ''}")


demo_app = typer.Typer(help="The demo started by `dsr up --demo`.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("customers")
def demo_customers(as_json: JsonOption = False) -> None:
    """The sample customers of the demo: email, the systems holding each, record counts."""
    from dsr.config import ConfigError, Settings
    from sandbox.demo import DemoError, load_customers

    try:
        customers = load_customers(Settings.from_env().home)
    except (ConfigError, DemoError) as err:
        fail(str(err))
    if as_json:
        emit_json(customers)
        return
    for c in customers:
        systems = ", ".join(f"{system} ({sum(counts.values())})" for system, counts in c["systems"].items())
        typer.echo(f"{c['email']:<30} {c['name']:<16} {systems}")


@app.command("codec-server")
def codec_server(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default DSR_CODEC_PORT).")] = None,
    origin: Annotated[str | None, typer.Option(help="The Temporal UI's origin allowed by CORS.")] = None,
) -> None:
    """Decode payloads for the Temporal UI, for staff holding DSR_CODEC_TOKEN."""
    from dsr.codec_server import codec_app, serve_codec
    from dsr.config import ConfigError, Settings
    from dsr.crypto import KeyRing

    try:
        settings = Settings.from_env()
        keyring = KeyRing.from_settings(settings)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if not settings.codec_token:
        fail("set DSR_CODEC_TOKEN: outside `dsr up` the codec server only answers with a bearer token")
    application = codec_app(keyring, allowed_origin=origin or settings.ui_url, token=settings.codec_token)

    async def serve() -> None:
        server = await serve_codec(application, port=port or settings.codec_port)
        await server.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# `dsr db` lives in its own module, which uses this one's helpers: imported once they exist.
from dsr.cli_db import db_app  # noqa: E402

app.add_typer(db_app, name="db")


def main() -> NoReturn:  # pragma: no cover - console script entry point
    """Run a verb, then leave without interpreter teardown.

    The Temporal client's Rust threads can abort a short-lived process while CPython finalises
    ("PyGILState_Release: thread state must be current", temporalio/sdk-python#300), turning a
    successful `dsr submit` into a crash. Everything is flushed first, so nothing is lost.
    """
    # Every file a verb creates holds personal data or keys, or may (the SQLite ledger, Temporal's database, logs,
    # the outbox, decrypted attachments): private to the user whatever the shell's umask, and whether or not
    # DSR_HOME is 0700 (only `dsr up` makes it so). Set before anything, for every verb: up, intake, worker,
    # codec-server and the rest; the Temporal dev server started by `dsr up` inherits it.
    os.umask(0o077)
    code: int = 0
    try:
        app(prog_name="dsr")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()

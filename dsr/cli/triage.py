"""`dsr triage`: emails the classifier was unsure about, waiting for a human."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from dsr.domain.model import TriageStatus
    from workflows.triage import TriageMessageWorkflow

from dsr.cli.common import (
    Actor,
    JsonOption,
    UserError,
    emit_json,
    normalise_reference,
    parse_changes,
    plain,
    run,
    temporal_client,
)

app = typer.Typer(help="Emails the classifier was unsure about, waiting for a human.", no_args_is_help=True)


TriageId = Annotated[str, typer.Argument(help="The triage reference, e.g. triage-dsr-2026-11-7KQ3FJ (any case).",
                                         callback=normalise_reference)]


def _triage_handle(client: Client, triage_id: str) -> WorkflowHandle[TriageMessageWorkflow, TriageStatus]:
    from workflows.triage import TriageMessageWorkflow

    if not re.fullmatch(r"triage-dsr-\d{4}-\d{2}-[0-9A-Z]{6}", triage_id):
        raise UserError(f"{triage_id!r} is not a triage reference (they look like triage-dsr-2026-11-7KQ3FJ)")
    return client.get_workflow_handle_for(TriageMessageWorkflow.run, triage_id)


@app.command("list")
@run
async def triage_list(as_json: JsonOption = False) -> None:
    """Messages waiting for a decision, oldest deadline first."""
    _, client = await temporal_client()
    rows: list[dict[str, Any]] = []
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


@app.command("show")
@run
async def triage_show(triage_id: TriageId, as_json: JsonOption = False) -> None:
    """The message itself (personal data: for the operator's eyes) and why it was not classified."""
    from dsr.domain.model import display_name
    from workflows.triage import TriageMessageWorkflow

    _, client = await temporal_client()
    handle = _triage_handle(client, triage_id)
    status = await handle.query(TriageMessageWorkflow.status)
    message = await handle.query(TriageMessageWorkflow.message)
    if as_json:
        emit_json({"status": plain(status), "message": plain(message)})
        return
    typer.echo(f"{status.triage_id}  {status.state}  received {status.received.isoformat()}, "
               f"due {status.deadline.isoformat()} if it is a request")
    typer.echo(f"  why: {status.reason}")
    typer.echo(f"  from: {display_name(message.name)} <{message.email}>  ({message.language.value})")
    typer.echo(f"  subject: {message.subject_line}")
    typer.echo("")
    typer.echo(message.body)


@app.command("classify")
@run
async def triage_classify(
    triage_id: TriageId,
    kind: Annotated[str, typer.Option(
        help="access, rectification, erasure, portability, objection or post_mortem.")],
    language: Annotated[str | None, typer.Option(help="fr or en, if the detected one is wrong.")] = None,
    change: Annotated[list[str] | None, typer.Option(help="Rectification: field=value (repeatable).")] = None,
    scope: Annotated[str, typer.Option(
        help="Objection: marketing or other (the default). Post_mortem: closure (the default) or estate.")] = "",
    deceased_email: Annotated[str, typer.Option(help="Post_mortem: the deceased person's email address.")] = "",
    deceased_name: Annotated[str, typer.Option(help="Post_mortem: the deceased person's name.")] = "",
    quality: Annotated[str, typer.Option(help="Post_mortem: heir (default), executor or designated.")] = "",
    ground: Annotated[str, typer.Option(help="Restriction: its Art. 18(1) ground, a, b, c or d.")] = "",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Make the message the request it is; it keeps the email's receipt date."""
    from dsr.domain.model import Language, RequestKind, TriageDecision

    try:
        chosen = RequestKind(kind)
        lang = Language(language) if language else None
    except ValueError:
        raise UserError(f"--kind must be one of {', '.join(k.value for k in RequestKind)}; --language fr or en"
                        f" (got {kind!r}, {language!r})") from None
    if scope and (chosen != RequestKind.OBJECTION or scope not in ("marketing", "other")) \
            and (chosen != RequestKind.POST_MORTEM or scope not in ("closure", "estate")):
        raise UserError("--scope is marketing or other for --kind objection, closure or estate for post_mortem")
    if (chosen == RequestKind.POST_MORTEM) != bool(deceased_email.strip()) or (quality and not deceased_email):
        raise UserError("--kind post_mortem needs --deceased-email (and only it takes --deceased-name, --quality)")
    if (chosen == RequestKind.RESTRICTION) != (ground in ("a", "b", "c", "d")):
        raise UserError("--ground a, b, c or d (Art. 18(1)) is required for --kind restriction, and only there")
    decision = TriageDecision(kind=chosen, decided_by=by, language=lang, changes=parse_changes(change or []),
                              scope=scope, deceased_email=deceased_email.strip(),
                              deceased_name=deceased_name.strip(), quality=quality.strip().lower(), ground=ground)
    _, client = await temporal_client()
    from workflows.triage import TriageMessageWorkflow

    status = await _triage_handle(client, triage_id).execute_update(TriageMessageWorkflow.classify, decision)
    if as_json:
        emit_json(plain(status))
    else:
        attached = f" (attached to the open request {status.attached_to})" if status.attached_to else ""
        typer.echo(f"{triage_id}: {chosen.value} request {status.request_id}{attached}")


@app.command("dismiss")
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
    from dsr.domain.model import RefusalGround, RequestKind, TriageDismissal

    if not reason.strip():
        raise UserError("--reason must not be empty")
    try:
        refused_as = RequestKind(refuse) if refuse else None
        chosen = RefusalGround(ground)
    except ValueError:
        raise UserError(f"--refuse must be one of access, rectification, erasure, portability and --ground one of "
                        f"{', '.join(g.value for g in RefusalGround)} (got {refuse!r}, {ground!r})") from None
    _, client = await temporal_client()
    from workflows.triage import TriageMessageWorkflow

    await _triage_handle(client, triage_id).execute_update(
        TriageMessageWorkflow.dismiss,
        TriageDismissal(reason=reason, decided_by=by, refused_as=refused_as, ground=chosen))
    typer.echo(f"{triage_id}: dismissed" + (f"; the sender is told the {refused_as.value} request is refused"
                                           if refused_as else ""))


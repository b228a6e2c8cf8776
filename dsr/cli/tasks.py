"""`dsr tasks`: the systems reached by a person (``processor``, ``manual``) waiting for an answer, and the answer
an operator records for them (the same door as the answer page: ledger first, then the waiting task)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from dsr.cli.common import Actor, JsonOption, RequestId, UserError, check_reference, emit_json, fail, open_ledger, run

if TYPE_CHECKING:
    from dsr.domain.model import OutsideAnswer
    from dsr.store.tasks import OutsideTask

app = typer.Typer(help="Systems reached by a person (processors by email, manual tasks) and their answers.",
                  no_args_is_help=True)


@app.command("list")
def tasks_list(
    all_tasks: Annotated[bool, typer.Option("--all", help="Answered tasks too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Tasks waiting for an answer, the most urgent first (no personal data is shown)."""
    from dsr.store.tasks import OutsideTasks

    settings, ledger = open_ledger()
    try:
        tasks = OutsideTasks(ledger.engine, ledger.sealer).tasks(open_only=not all_tasks)
    finally:
        ledger.close()
    # The answers' words (a "cannot" reason, a legal basis) are sealed in the ledger: opened for the operator here.
    rows = [{
        "request": t.request_id, "system": t.system, "type": t.type, "asked_on": t.asked_on.isoformat(),
        "answer_by": due_day(t, settings.policy.timezone).isoformat(), "rounds": t.rounds,
        "answer": t.answer.status.value if t.answer else "",
        "reason": t.answer.reason if t.answer else "",
        "legal_basis": t.answer.legal_basis if t.answer else "",
        "kept_until": t.answer.kept_until.isoformat() if t.answer and t.answer.kept_until else None,
        "overdue": t.answer is None and t.answer_by <= datetime.now(UTC),
        "text": answer_text(t.answer) if t.answer else "",
    } for t in tasks]
    if as_json:
        emit_json([{k: v for k, v in row.items() if k != "text"} for row in rows])
        return
    if not rows:
        typer.echo("no task waits for an answer" if not all_tasks else "no task")
        return
    for row in rows:
        state = row["text"] or ("NO ANSWER (past its date)" if row["overdue"] else "waiting")
        typer.echo(f"{row['request']}  {row['system']:<20} {row['type']:<9} asked {row['asked_on']}  "
                   f"answer by {row['answer_by']}  {state}")


def due_day(task: OutsideTask, timezone: str) -> date:
    """The answer-by date: the stored instant is the end of that day in the controller's time zone."""
    from dsr.store.links import last_valid_day

    return last_valid_day(task.answer_by, timezone)


def answer_text(answer: OutsideAnswer) -> str:
    """An answer as the operator reads it: ``cannot: <their reason>``, ``kept: <basis> until <date>``, ``done``."""
    text = answer.status.value
    if answer.reason:
        text += f": {answer.reason}"
    if answer.legal_basis or answer.kept_until:
        text += f": {answer.legal_basis}" + (f" until {answer.kept_until.isoformat()}" if answer.kept_until else "")
    return text


@app.command("complete")
@run
async def tasks_complete(
    request_id: RequestId,
    system: Annotated[str, typer.Argument(help="The system's name in dsr.toml.")],
    done: Annotated[bool, typer.Option("--done", help="Carried out as asked.")] = False,
    no_data: Annotated[bool, typer.Option("--no-data", help="They hold no data about the subject.")] = False,
    kept: Annotated[bool, typer.Option("--kept", help="Kept under a legal basis (--basis, --until).")] = False,
    cannot: Annotated[bool, typer.Option("--cannot", help="It cannot be carried out (--reason).")] = False,
    no_answer: Annotated[bool, typer.Option(
        "--no-answer", help="Go on without their answer: the reply says none came yet, and you are reminded.")] = False,
    basis: Annotated[str, typer.Option(help="--kept: the legal basis.")] = "",
    until: Annotated[str, typer.Option(help="--kept: kept until, YYYY-MM-DD.")] = "",
    reason: Annotated[str, typer.Option(help="--cannot: why.")] = "",
    by: Actor = "operator",
    as_json: JsonOption = False,
) -> None:
    """Record the answer of a processor or an owner (e.g. given by phone) and hand it to the waiting request."""
    from dsr.domain.model import AnswerStatus, OutsideAnswer
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.tasks import OutsideTasks
    from intake.answers import AnswerRefused, record_answer

    check_reference(request_id)
    chosen = [status for flag, status in ((done, AnswerStatus.DONE), (no_data, AnswerStatus.NO_DATA),
                                          (kept, AnswerStatus.KEPT), (cannot, AnswerStatus.CANNOT),
                                          (no_answer, AnswerStatus.NO_ANSWER)) if flag]
    if len(chosen) != 1:
        raise UserError("give exactly one of --done, --no-data, --kept, --cannot, --no-answer")
    status = chosen[0]
    if (basis or until) and status != AnswerStatus.KEPT:
        raise UserError("--basis and --until go with --kept")
    if reason and status != AnswerStatus.CANNOT:
        raise UserError("--reason goes with --cannot")
    kept_until = None
    if status == AnswerStatus.KEPT:
        if not basis.strip() or not until:
            raise UserError("--kept needs --basis (the legal basis) and --until (YYYY-MM-DD)")
        try:
            kept_until = datetime.strptime(until.strip(), "%Y-%m-%d").date()
        except ValueError:
            raise UserError(f"--until must be a date YYYY-MM-DD, got {until!r}") from None
    if status == AnswerStatus.CANNOT and not reason.strip():
        raise UserError("--cannot needs --reason")
    answer = OutsideAnswer(status=status, legal_basis=basis.strip(), kept_until=kept_until, reason=reason.strip(),
                           answered_by=by, answered_at=datetime.now(UTC))
    deployment = Deployment.from_env()
    try:
        client = await deployment.client()
        tasks = OutsideTasks(deployment.ledger.engine, deployment.keyring)
        try:
            result = await record_answer(tasks, client, request_id, system, answer)
        except AnswerRefused as refused:
            raise UserError(str(refused)) from None
    finally:
        deployment.close()
    if result.state == "unknown":
        fail(f"{request_id} has no task for system {system!r} (see `dsr tasks list --all`)")
    if result.state == "already":
        fail(f"{system} of {request_id} was already answered")
    if as_json:
        emit_json({"request": request_id, "system": system, "answer": status.value, "delivered": result.delivered,
                   "resumed": result.resumed, "supplement": result.aftercare,
                   "replaced": result.replaced})
        return
    typer.echo(f"{request_id} {system}: {status.value} recorded" + (
        "" if result.delivered else
        "; the request is answered: its aftercare was told (the subject's supplementary letter)"
        if result.aftercare else
        "; it replaces the --no-answer recorded before: the subject's supplementary letter tells it, unless that "
        "letter went already" if result.replaced else
        "; after its date: the request goes on with it (unless another system needs attention: "
        f"`dsr retry {request_id}` then)" if result.resumed else
        f"; the request is not waiting for it: `dsr retry {request_id}` takes it"))


__all__ = ["app"]

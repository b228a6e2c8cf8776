"""``dsr directives``: a person's directives on the fate of their data after their death (loi 78-17 art. 85-I),
kept by :mod:`dsr.store.directives` (blind indexes, the content sealed).

``record`` takes them from the person while alive (an operator types them in from the signed form, letter or
account page that carried the person's specific consent); a new record replaces the one in force, as the law lets
the person change them at any time, and ``revoke`` withdraws them. ``show`` opens them for staff (personal data).
When a death is reported (a ``post_mortem`` request), the engine finds them by itself and applies them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dsr.cli.common import JsonOption, emit_json, fail, open_ledger

app = typer.Typer(help="Directives on a person's data after their death (art. 85 loi 78-17), kept sealed.",
                  no_args_is_help=True)


@app.command("record")
def record(
    email: Annotated[str, typer.Argument(help="The person's email address (the one our systems know).")],
    instruction: Annotated[str, typer.Option(
        help="After their death: erase (close the accounts), keep, or hand_over (to the designated person).")],
    designee_email: Annotated[str, typer.Option(help="The person designated to carry them out (85-I).")] = "",
    designee_name: Annotated[str, typer.Option(help="Their name.")] = "",
    text: Annotated[str, typer.Option(help="The person's own words (kept sealed, shown to staff only).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Record (or replace) the directives of EMAIL; prints the directive's id, never an address."""
    from dsr.store.directives import DirectivesError, DirectivesRegister

    _, ledger = open_ledger()
    try:
        directive_id = DirectivesRegister(ledger).record(
            email, instruction=instruction, text=text, designee_email=designee_email, designee_name=designee_name)
    except DirectivesError as err:
        fail(str(err))
    finally:
        ledger.close()
    if as_json:
        emit_json({"directive_id": directive_id, "instruction": instruction.strip().lower()})
    else:
        typer.echo(f"recorded {directive_id}: {instruction.strip().lower()}"
                   + (" (a designated person)" if designee_email.strip() else ""))


@app.command("show")
def show(email: str, as_json: JsonOption = False) -> None:
    """The directives of EMAIL in force, opened (personal data: for staff handling a death)."""
    from dsr.domain.model import is_valid_email
    from dsr.store.directives import DirectivesRegister

    if not is_valid_email(email.strip()):
        fail("not a valid email address")
    _, ledger = open_ledger()
    try:
        found = DirectivesRegister(ledger).show(email)
    finally:
        ledger.close()
    if as_json:
        emit_json(found.__dict__ if found else None)
        return
    if found is None:
        typer.echo("no directives in force")
        return
    typer.echo(f"{found.directive_id}: {found.instruction.value}, recorded {found.recorded_at.date().isoformat()}"
               + (f", applied by {found.applied_by}" if found.applied_by else ""))
    if found.designee_email:
        typer.echo(f"  designated: {found.designee_name} <{found.designee_email}>".replace("  <", " <"))
    if found.text:
        typer.echo(f"  words: {found.text}")


@app.command("revoke")
def revoke(email: str) -> None:
    """Withdraw the directives of EMAIL (the person may at any time, art. 85-I)."""
    from dsr.domain.model import is_valid_email
    from dsr.store.directives import DirectivesRegister

    if not is_valid_email(email.strip()):
        fail("not a valid email address")
    _, ledger = open_ledger()
    try:
        count = DirectivesRegister(ledger).revoke(email)
    finally:
        ledger.close()
    typer.echo("revoked" if count else "no directives in force")

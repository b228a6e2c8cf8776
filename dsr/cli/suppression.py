"""``dsr suppression``: the suppression list of marketing objections (:mod:`dsr.store.suppressions`).

Both verbs read the ledger alone. ``check`` answers for one address (its blind index is computed, the address
is not stored); ``list`` shows counts and dates only, never an index or an address.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import typer

from dsr.cli.common import JsonOption, emit_json, fail, open_ledger

app = typer.Typer(help="The suppression list: who objected to direct marketing (blind indexes only).",
                  no_args_is_help=True)


@app.command("check")
def check(email: str, as_json: JsonOption = False) -> None:
    """Whether marketing must not reach EMAIL (exit 0 either way), and until when."""
    from dsr.domain.model import is_valid_email
    from dsr.store.suppressions import SuppressionList

    if not is_valid_email(email.strip()):
        fail("not a valid email address")
    _, ledger = open_ledger()
    try:
        entry = SuppressionList(ledger).entry(email.strip(), now=datetime.now(UTC))
    finally:
        ledger.close()
    if as_json:
        emit_json({"suppressed": entry is not None, "since": entry.since.date() if entry else None,
                   "until": entry.until.date() if entry else None})
    elif entry is None:
        typer.echo("not suppressed")
    else:
        typer.echo(f"suppressed since {entry.since.date().isoformat()} until {entry.until.date().isoformat()}")


@app.command("list")
def list_entries(as_json: JsonOption = False) -> None:
    """How many addresses are on the list, and when they were added and leave it (per month): no address."""
    from dsr.store.suppressions import SuppressionList

    _, ledger = open_ledger()
    try:
        entries = SuppressionList(ledger).entries(now=datetime.now(UTC))
    finally:
        ledger.close()
    added = Counter(f"{e.since:%Y-%m}" for e in entries)
    leaving = Counter(f"{e.until:%Y-%m}" for e in entries)
    if as_json:
        emit_json({"count": len(entries), "added": dict(sorted(added.items())),
                   "leaving": dict(sorted(leaving.items()))})
        return
    typer.echo(f"{len(entries)} address(es) on the suppression list")
    for month, count in sorted(added.items()):
        typer.echo(f"  added {month}: {count}")
    for month, count in sorted(leaving.items()):
        typer.echo(f"  leaving {month}: {count}")

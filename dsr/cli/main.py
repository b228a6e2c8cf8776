"""The `dsr` command: every verb and sub-app, in the order `dsr --help` lists them; the verbs live in the
modules named here."""

from __future__ import annotations

import os
import sys
from typing import Annotated, NoReturn

import typer

from dsr.cli import (
    attachments,
    config,
    connectors,
    db,
    decisions,
    demo,
    directives,
    keys,
    lifecycle,
    register,
    requests,
    services,
    suppression,
    tasks,
    triage,
)

app = typer.Typer(
    name="dsr",
    help="A durable engine for GDPR data-subject requests, on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help, as click writes it: the rich panels of recent typer label every flag `<bool>`.
    rich_markup_mode=None,
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"dsr {version('dsr-engine')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("dsr (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True, callback=_print_version)] = False,
) -> None:
    """A durable engine for GDPR data-subject requests, on Temporal."""


# One request: record it, see where it stands, decide on it.
app.command("submit")(requests.submit)
app.command("status")(requests.status)
app.command("confirm-identity")(decisions.confirm_identity)
app.command("extend")(decisions.extend)
app.command("refuse")(decisions.refuse)
app.command("withdraw")(decisions.withdraw)
app.command("retry")(decisions.retry)
app.command("doubt")(decisions.doubt)
app.command("rectify")(decisions.rectify)
app.command("clear-residuals")(decisions.clear_residuals)
app.command("decide")(decisions.decide)
app.command("confirm-quality")(decisions.confirm_quality)
app.command("lift")(decisions.lift)
# All requests: what is due, the audit trail, the register and its statistics.
app.command("due")(requests.due)
app.command("history")(requests.history)
app.command("list")(register.list_requests)
app.command("report")(register.report)
app.command("reconcile")(lifecycle.reconcile)
app.command("dashboard")(lifecycle.dashboard)
# Running the engine.
app.command("setup")(services.setup)
app.command("worker")(services.worker)
app.command("up")(services.up)
app.command("intake")(services.intake)
app.command("codec-server")(services.codec_server)
# Sub-apps.
app.add_typer(triage.app, name="triage")
app.add_typer(tasks.app, name="tasks")
app.add_typer(attachments.app, name="attachments")
app.add_typer(connectors.app, name="connectors")
app.add_typer(config.app, name="config")
app.add_typer(keys.app, name="keys")
app.add_typer(demo.app, name="demo")
app.add_typer(db.db_app, name="db")
app.add_typer(suppression.app, name="suppression")
app.add_typer(directives.app, name="directives")


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

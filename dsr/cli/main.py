"""The `dsr` command: every verb and sub-app, in the order `dsr --help` lists them; the verbs live in the
modules named here."""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

# Each verb's module is imported only when the verb is asked for (`dsr due` does not load the Temporal SDK of the
# verbs that signal workflows, nor their modules); `dsr --help`, and `app` (the tests' CliRunner), build them all.
VERBS: tuple[tuple[str, str, str], ...] = (
    # One request: record it, see where it stands, decide on it.
    ("submit", "requests", "submit"),
    ("status", "requests", "status"),
    ("confirm-identity", "decisions", "confirm_identity"),
    ("extend", "decisions", "extend"),
    ("refuse", "decisions", "refuse"),
    ("withdraw", "decisions", "withdraw"),
    ("retry", "decisions", "retry"),
    ("doubt", "decisions", "doubt"),
    ("rectify", "decisions", "rectify"),
    ("clear-residuals", "decisions", "clear_residuals"),
    ("decide", "decisions", "decide"),
    ("confirm-quality", "decisions", "confirm_quality"),
    ("lift", "decisions", "lift"),
    # All requests: what is due, the audit trail, the register and its statistics.
    ("due", "requests", "due"),
    ("history", "requests", "history"),
    ("list", "register", "list_requests"),
    ("report", "register", "report"),
    ("reconcile", "lifecycle", "reconcile"),
    ("dashboard", "lifecycle", "dashboard"),
    # Running the engine.
    ("setup", "services", "setup"),
    ("worker", "services", "worker"),
    ("up", "services", "up"),
    ("intake", "services", "intake"),
    ("codec-server", "services", "codec_server"),
)
"""``dsr NAME``: the module of :mod:`dsr.cli` and the function, in the order `dsr --help` lists them."""

SUB_APPS: tuple[tuple[str, str, str], ...] = (
    ("triage", "triage", "app"),
    ("tasks", "tasks", "app"),
    ("attachments", "attachments", "app"),
    ("connectors", "connectors", "app"),
    ("config", "config", "app"),
    ("keys", "keys", "app"),
    ("demo", "demo", "app"),
    ("db", "db", "db_app"),
    ("suppression", "suppression", "app"),
    ("directives", "directives", "app"),
)
"""``dsr NAME VERB``: the module of :mod:`dsr.cli` and its Typer app."""


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"dsr {version('dsr-engine')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("dsr (not installed: no version)")
        raise typer.Exit()


def _options(
    show_version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True, callback=_print_version)] = False,
) -> None:
    """A durable engine for GDPR data-subject requests, on Temporal."""


def build_app(only: str | None = None) -> typer.Typer:
    """The `dsr` app with every verb and sub-app, or with only the verb or sub-app named ``only`` (and the
    top-level options), importing only its module."""
    app = typer.Typer(
        name="dsr",
        help="A durable engine for GDPR data-subject requests, on Temporal.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Plain help, as click writes it: the rich panels of recent typer label every flag `<bool>`.
        rich_markup_mode=None,
    )
    app.callback()(_options)
    for name, module, function in VERBS:
        if only is None or only == name:
            app.command(name)(getattr(import_module(f"dsr.cli.{module}"), function))
    for name, module, attribute in SUB_APPS:
        if only is None or only == name:
            app.add_typer(getattr(import_module(f"dsr.cli.{module}"), attribute), name=name)
    return app


def _named(argv: list[str]) -> str | None:
    """The verb or sub-app the arguments start with, if they start with one (not with an option, such as
    ``--help`` before the verb, which needs every verb)."""
    if argv and argv[0] in _NAMES:
        return argv[0]
    return None


_NAMES = frozenset(name for name, _, _ in (*VERBS, *SUB_APPS))

if TYPE_CHECKING:
    app: typer.Typer
    """The whole `dsr` app (every verb and sub-app), built on first use."""


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        whole = build_app()
        globals()["app"] = whole
        return whole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        build_app(_named(sys.argv[1:]))(prog_name="dsr")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()

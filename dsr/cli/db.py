"""``dsr db``: the ledger database's schema (:mod:`dsr.migrations`).

Every process opening the ledger upgrades it to its release's schema anyway; these verbs let an operator do it
ahead of a rollout (say, a job run before the new workers start) and see where a database stands.
"""

from __future__ import annotations

import typer

from dsr.cli.common import JsonOption, emit_json, fail

db_app = typer.Typer(help="The ledger database's schema: its migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOption = False) -> None:
    """Upgrade the ledger database (DSR_DATABASE_URL) to this release's schema; safe to run on every start."""
    from dsr.config.settings import ConfigError, Settings
    from dsr.store.ledger import LedgerUnavailableError, schema_revision, upgrade_database

    try:
        settings = Settings.from_env()
        before = schema_revision(settings.database_url)
        after = upgrade_database(settings.database_url)
    except (ConfigError, ValueError, LedgerUnavailableError) as err:
        fail(str(err))
    summary = {"from": before, "to": after}
    if as_json:
        emit_json(summary)
    elif before == summary["to"]:
        typer.echo(f"the ledger database is at the newest schema ({before}): nothing to do")
    else:
        typer.echo(f"upgraded the ledger database from {before or 'no revision'} to {summary['to']}")


@db_app.command("status")
def db_status(as_json: JsonOption = False) -> None:
    """The ledger database's schema revision and this release's, without changing anything."""
    from dsr import migrations
    from dsr.config.settings import ConfigError, Settings
    from dsr.store.ledger import LedgerUnavailableError, schema_revision

    try:
        found = schema_revision(Settings.from_env().database_url)
    except (ConfigError, ValueError, LedgerUnavailableError) as err:
        fail(str(err))
    summary = {"current": found, "head": migrations.head(), "up_to_date": found == migrations.head()}
    if as_json:
        emit_json(summary)
    elif summary["up_to_date"]:
        typer.echo(f"schema {found}: up to date")
    else:
        typer.echo(f"schema {found or 'none'}; this release's is {summary['head']}: `dsr db upgrade` (or any "
                   "`dsr` process opening the ledger) upgrades it")

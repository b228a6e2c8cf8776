"""`dsr demo`: the demo started by `dsr up --demo`."""

from __future__ import annotations

import typer

from dsr.cli.common import (
    JsonOption,
    emit_json,
    fail,
)

app = typer.Typer(help="The demo started by `dsr up --demo`.", no_args_is_help=True)


@app.command("customers")
def demo_customers(as_json: JsonOption = False) -> None:
    """The sample customers of the demo: email, the systems holding each, record counts."""
    from dsr.config.settings import ConfigError, Settings
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


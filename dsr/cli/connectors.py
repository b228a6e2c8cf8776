"""`dsr connectors`: the systems holding personal data (dsr.toml)."""

from __future__ import annotations

import asyncio

import typer

from dsr.cli.common import (
    JsonOption,
    UserError,
    emit_json,
    run,
)

app = typer.Typer(help="The systems holding personal data (dsr.toml).", no_args_is_help=True)


@app.command("check")
@run
async def connectors_check(as_json: JsonOption = False) -> None:
    """Call each configured system once: reachable, credentials accepted; non-zero exit on any failure."""
    from connectors.base import ConnectorError
    from connectors.config import build_connector, load_config
    from dsr.config.settings import Settings

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


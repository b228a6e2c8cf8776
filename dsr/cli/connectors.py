"""`dsr connectors`: the systems holding personal data (dsr.toml)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from dsr.cli.common import (
    JsonOption,
    UserError,
    emit_json,
    fail,
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



@app.command("map")
def connectors_map(
    kind: Annotated[str, typer.Argument(metavar="TYPE", help="The kind of system to map: sql.")],
    url: Annotated[str, typer.Option("--url", help="The database's SQLAlchemy URL (postgresql://…, mysql://…, "
                                                   "sqlite:///path).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the draft there (default: print it).")] = None,
    name: Annotated[str, typer.Option("--name", help="The connector's name in the draft.")] = "app",
    url_env: Annotated[str, typer.Option("--url-env", help="The environment variable the draft names for "
                                                           "the URL (the URL itself is never written).")]
    = "APP_DATABASE_URL",
) -> None:
    """Reflect a database's schema and write a draft [[connectors]] map for a person to review (# REVIEW)."""
    import re

    from connectors.config import ConfigFileError, parse_config
    from connectors.sql.draft import DraftError, draft_map

    if kind != "sql":
        fail(f"only sql databases are mapped (got {kind!r})")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name):
        fail(f"--name {name!r}: lower-case letters, digits, - and _ (at most 40)")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", url_env):
        fail(f"--url-env {url_env!r} is not an environment variable's name")
    if out is not None and out.exists():
        fail(f"{out} exists: choose another file (the draft never overwrites one)")
    try:
        draft, schema = draft_map(url, name=name, url_env=url_env)
    except DraftError as err:
        fail(str(err))
    try:
        parse_config(draft, source="the draft")
    except ConfigFileError as err:  # a guess the map refuses: still written, for the person to fix
        draft += f"\n# REVIEW: as written, this draft does not load: {err}\n"
    if out is None:
        typer.echo(draft, nl=False)
        return
    try:
        out.write_text(draft, encoding="utf-8")
    except OSError as err:
        fail(f"{out}: cannot be written ({err.strerror})")
    reviews = draft.count("REVIEW")
    typer.echo(f"wrote {out}: {len(schema.tables)} table(s) reflected, {reviews} line(s) marked REVIEW; "
               "check them, copy the entry into dsr.toml, then `dsr config check` and `dsr connectors check`")

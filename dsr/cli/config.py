"""`dsr config`: the configuration file (dsr.toml)."""

from __future__ import annotations

import typer

from dsr.cli.common import (
    JsonOption,
    emit_json,
    fail,
)

app = typer.Typer(help="The configuration file (dsr.toml).", no_args_is_help=True)


@app.command("check")
def config_check(as_json: JsonOption = False) -> None:
    """Check dsr.toml: connectors and the controller profile (every Art. 15(1) item); exit 1 if incomplete."""
    from connectors.config import load_config
    from dsr.config.profile import check_consent, check_profile, load_profile
    from dsr.config.settings import Settings
    from dsr.errors import ConfigurationError

    try:
        settings = Settings.from_env()
        config = load_config(settings.config_file)
        profile = load_profile(settings.config_file)
    except ConfigurationError as err:  # the settings, the connectors or the profile of dsr.toml
        fail(str(err))
    missing = check_profile(profile)
    others = profile.other_systems if profile else []
    connected = {name.lower() for c in config.connectors for name in (c.name, c.display_name) if name}
    for i, other in enumerate(others):
        # A system cannot be both searched by a connector and declared outside the engine: the replies would
        # name it twice, once as searched and once as not.
        if {other.name.fr.strip().lower(), other.name.en.strip().lower()} - {""} & connected:
            fail(f"{settings.config_file}: controller.other_systems[{i}].name: {other.name.text('en')!r} is also a "
                 "connector: list it in one place only")
    consent = check_consent(profile, {c.display_name: c.type for c in config.connectors})
    outside = [f"{o.name.text('en')} ({'staff: ' + o.by.text('en') if o.handling == 'staff' else 'not covered'})"
               for o in others]
    if as_json:
        emit_json({"file": str(settings.config_file), "connectors": [c.display_name for c in config.connectors],
                   "other_systems": outside, "profile_complete": not missing, "missing": missing,
                   "consent": consent})
    else:
        typer.echo(f"{settings.config_file}: {len(config.connectors)} connector(s)"
                   + (f" ({', '.join(c.display_name for c in config.connectors)})" if config.connectors else ""))
        if outside:
            typer.echo(f"{len(outside)} system(s) outside the engine, named in every reply: {'; '.join(outside)}")
        if consent:
            typer.echo("warning: a withdrawal of consent (Art. 7(3)) would not be carried out everywhere:")
            for line in consent:
                typer.echo(f"  {line}")
        if missing:
            typer.echo("controller profile incomplete; access replies are held until it is complete:")
            for line in missing:
                typer.echo(f"  {line}")
        else:
            typer.echo("controller profile complete (Art. 15(1)(a)-(h), 15(2))")
    if missing:
        raise typer.Exit(1)


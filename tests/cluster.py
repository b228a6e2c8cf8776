"""A small cluster on one machine, for the multi-node test and bench/scale.py: the shared services (an S3 API
over HTTP, the vendor sandboxes) and "machines" that share no disk, each running ``dsr worker`` and ``dsr intake``
as processes of their own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx

from dsr.web.serve import RunningServer, serve_app
from sandbox.faults import FaultRates, Faults
from sandbox.hubspot import HubSpotState, hubspot_app
from sandbox.stripe import StripeSandbox, seed_customer, stripe_app
from sandbox.woocommerce import WooState, woocommerce_app
from tests.harness import MailSink, S3Server, free_port, http_client, text_of

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
DEMO_PROFILE = (ROOT / "sandbox" / "demo_profile.toml").read_text(encoding="utf-8")
HUBSPOT_TOKEN, WOO_KEY, WOO_SECRET, STRIPE_KEY = "pat-multinode", "ck_multinode", "cs_multinode", "sk_test_multinode"


# --- the shared services -----------------------------------------------------------------------------------


@dataclass
class Holding:
    """What one person holds in the sandboxes, as seeded: (system, dataset) -> records."""

    email: str
    name: str
    records: dict[tuple[str, str], int]


@dataclass
class Sandboxes:
    hubspot: HubSpotState
    woo: WooState
    faults: Faults  # WooCommerce's
    servers: list[RunningServer]  # HubSpot, WooCommerce, then Stripe with its faults
    stripe: StripeSandbox  # seeded directly, without faults; the connectors reach its state through servers[2]
    people: dict[str, Holding] = field(default_factory=dict)
    hubspot_faults: Faults = field(default_factory=Faults)
    stripe_faults: Faults = field(default_factory=Faults)

    @property
    def stripe_url(self) -> str:
        return self.servers[2].url

    @property
    def every_fault(self) -> dict[str, Faults]:
        return {"hubspot": self.hubspot_faults, "woocommerce": self.faults, "stripe": self.stripe_faults}

    def set_rates(self, rates: FaultRates, seed: int | None = None) -> None:
        """Random faults on every system from now on (seeding is over)."""
        import random

        for n, faults in enumerate(self.every_fault.values()):
            faults.rates = rates
            faults.rng = random.Random(None if seed is None else seed + n)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        await asyncio.to_thread(self.stripe.stop)


async def start_sandboxes() -> Sandboxes:
    hubspot, woo, faults, hubspot_faults, stripe_faults = HubSpotState(), WooState(), Faults(), Faults(), Faults()
    servers = [
        await serve_app(hubspot_app(hubspot, token=HUBSPOT_TOKEN, faults=hubspot_faults), port=0),
        await serve_app(woocommerce_app(woo, consumer_key=WOO_KEY, consumer_secret=WOO_SECRET, faults=faults),
                        port=0),
    ]
    stripe = StripeSandbox(api_key=STRIPE_KEY)
    await asyncio.to_thread(stripe.start)
    servers.append(await serve_app(stripe_app(stripe.state, api_key=STRIPE_KEY, faults=stripe_faults), port=0))
    return Sandboxes(hubspot, woo, faults, servers, stripe, hubspot_faults=hubspot_faults,
                     stripe_faults=stripe_faults)


async def seed_person(boxes: Sandboxes, email: str, name: str, *, notes: int, orders: int, charges: int) -> Holding:
    first, last = name.split(" ", 1)
    contact = boxes.hubspot.add_contact(email, firstname=first, lastname=last, city="Lyon")
    for i in range(notes):
        boxes.hubspot.add_note(contact, f"Call #{i + 1} about an order.")
    customer = boxes.woo.add_customer(email, first, last, billing={"email": email, "first_name": first,
                                                                     "last_name": last, "city": "Lyon"})
    if orders:
        boxes.woo.bulk_orders(customer["id"], orders)
    await seed_customer(boxes.stripe.url, STRIPE_KEY, email=email, name=name, charges=charges)
    holding = Holding(email, name, {
        ("hubspot", "contact"): 1, ("hubspot", "notes"): notes,
        ("woocommerce", "customer"): 1, ("woocommerce", "orders"): orders,
        ("stripe", "customer"): 1, ("stripe", "charges"): charges,
    })
    boxes.people[email] = holding
    return holding


def connectors_toml(boxes: Sandboxes) -> str:
    hubspot, woo = (server.url for server in boxes.servers[:2])
    return f"""[[connectors]]
type = "hubspot"
base_url = "{hubspot}"
credentials = {{ token = "MN_HUBSPOT_TOKEN" }}
rate_limit = {{ requests = 1000, per_seconds = 1 }}

[[connectors]]
type = "woocommerce"
base_url = "{woo}"
credentials = {{ consumer_key = "MN_WOO_KEY", consumer_secret = "MN_WOO_SECRET" }}
rate_limit = {{ requests = 1000, per_seconds = 1 }}

[[connectors]]
type = "stripe"
base_url = "{boxes.stripe_url}"
credentials = {{ api_key = "MN_STRIPE_KEY" }}
rate_limit = {{ requests = 1000, per_seconds = 1 }}
"""


# --- the machines -------------------------------------------------------------------------------------------


class Machine:
    """One machine: its own DSR_HOME (its own disk), a ``dsr worker`` and a ``dsr intake`` process."""

    def __init__(self, name: str, root: Path, shared: dict[str, str], config: str) -> None:
        self.name = name
        self.home = root / name
        self.home.mkdir(mode=0o700)
        # The deployment's files, copied to each machine as configuration management would.
        (self.home / "dsr.toml").write_text(config + "\n" + DEMO_PROFILE, encoding="utf-8")
        self.intake_port = free_port()
        self.env = {**os.environ, **shared, "DSR_HOME": str(self.home), "DSR_INTAKE_PORT": str(self.intake_port)}
        self.worker: subprocess.Popen[bytes] | None = None
        self.intake: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.intake_port}"

    def _spawn(self, verb: str) -> subprocess.Popen[bytes]:
        log = (self.home / f"{verb}.log").open("ab")
        return subprocess.Popen([str(BIN / "dsr"), verb], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def start_worker(self) -> None:
        self.worker = self._spawn("worker")

    def start_intake(self) -> None:
        self.intake = self._spawn("intake")

    async def wait_for_intake(self) -> None:
        async with http_client(timeout=2) as http:
            for _ in range(240):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        return
                if self.intake is not None and self.intake.poll() is not None:
                    break
                await asyncio.sleep(0.25)
        raise AssertionError(f"intake on {self.name} did not start:\n{self.log('intake')}")

    def log(self, verb: str) -> str:
        path = self.home / f"{verb}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill_worker(self) -> None:
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def stop(self) -> None:
        for process in (self.worker, self.intake):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def shared_environment(*, temporal: str, task_queue: str, keys: str, database_url: str, s3: S3Server,
                       prefix: str, mail: MailSink, public_url: str) -> dict[str, str]:
    """What every machine of the cluster is configured with: the services they share, and the keys."""
    return {
        "TEMPORAL_ADDRESS": temporal,
        "DSR_TASK_QUEUE": task_queue,
        "DSR_KEYS": keys,
        "DSR_DATABASE_URL": database_url,
        "DSR_STORAGE_URL": f"s3://{s3.bucket}/{prefix}",
        **s3.env,
        "DSR_SMTP_HOST": "127.0.0.1",
        "DSR_SMTP_PORT": str(mail.port),
        "DSR_MAIL_FROM": "privacy@example.com",
        "DSR_OPERATOR_EMAIL": "dpo@example.com",
        "DSR_PUBLIC_URL": public_url,
        "DSR_IDENTITY_METHOD": "email",
        "DSR_CONNECTOR_HEARTBEAT_SECONDS": "5",
        # Every subject of the scenario sends from 127.0.0.1: the per-client limits would count them as one.
        "DSR_RATE_PER_CLIENT_HOUR": "1000",
        "DSR_ANSWERS_PER_CLIENT_HOUR": "1000",
        "DSR_RATE_PER_SUBJECT_DAY": "50",
        "MN_HUBSPOT_TOKEN": HUBSPOT_TOKEN, "MN_WOO_KEY": WOO_KEY, "MN_WOO_SECRET": WOO_SECRET,
        "MN_STRIPE_KEY": STRIPE_KEY,
    }


def new_keys() -> str:
    return f"k{uuid.uuid4().hex[:6]}:" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- what a subject receives -------------------------------------------------------------------------------

FINAL_REPLY = re.compile(r"(Reply to your|Your data in a portable format|No data about you)")
"""The English subject lines of the final replies (``templates/en/reply_*.subject``)."""
PORTABLE_DATASETS = frozenset({("hubspot", "contact"), ("woocommerce", "customer"), ("woocommerce", "orders"),
                               ("stripe", "customer"), ("stripe", "charges")})
"""The seeded datasets a portability bundle holds (what the subject provided)."""


def reference_in(text: str) -> str | None:
    found = re.search(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}", text)
    return found.group(0) if found else None


def acknowledged_reference(mail: MailSink, email: str, kind: str) -> str | None:
    """The reference our (English) acknowledgement of ``email``'s ``kind`` request gave them, or None yet: the
    intake's receipt carries none (issue 12), the subject reads it in our emails."""
    for rcpt, message in list(mail.messages):
        subject = str(message["Subject"])
        if email in rcpt and f"received your {kind} request" in subject:
            return reference_in(subject)
    return None


def plain_text(message: EmailMessage) -> str:
    return text_of(message)


def plain_bodies(mail: MailSink, to: str) -> list[str]:
    return [plain_text(m) for rcpt, m in list(mail.messages) if to in rcpt]


def final_reply_references(mail: MailSink) -> list[str | None]:
    """The reference of every final reply sent, once per reply (Python folds a long Subject before its first word,
    so it is stripped)."""
    return [reference_in(str(m["Subject"])) for _, m in list(mail.messages)
            if FINAL_REPLY.match(str(m["Subject"]).strip())]


def download_code_in(text: str) -> str:
    """The download code a reply gives (``K7QM-4XPD``); "" when it has none."""
    found = re.search(r"code\D{0,20}?([2-9A-Z]{4}-[2-9A-Z]{4})\b", text)
    return found.group(1) if found else ""


async def download(http: httpx.AsyncClient, intake_url: str, token: str, code: str) -> httpx.Response:
    """Fill in the download page as the subject would (the form value, the code from the reply: the reference is
    no answer since issue 12); the page itself when it offers no form (expired, gone)."""
    page = await http.get(f"{intake_url}/exports/{token}")
    form = re.search(r'name="form" value="([^"]+)"', page.text)
    if page.status_code != 200 or form is None:
        return page
    return await http.post(f"{intake_url}/exports/{token}", data={"form": form.group(1), "answer": code})


def manifest_counts(zipped: bytes) -> dict[tuple[str, str], int]:
    """Records per (system, dataset) of a downloaded bundle; AssertionError when the manifest's counts are not
    those of the records really in data.json."""
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        data = json.loads(archive.read("data.json"))
    counts = {(d["system"], d["dataset"]): d["records"] for d in manifest["datasets"]}
    really = {(system, dataset): len(records) for system, datasets in data.items()
              for dataset, records in datasets.items()}
    if counts != really:
        raise AssertionError(f"the manifest says {counts}, data.json holds {really}")
    return counts


def expected_in_bundle(holding: Holding, kind: str) -> dict[tuple[str, str], int]:
    """What a bundle of ``kind`` must hold for ``holding``: everything for access, what was provided for
    portability."""
    return {key: n for key, n in holding.records.items() if kind == "access" or key in PORTABLE_DATASETS}

"""The world an end-to-end request runs in, for tests/workflows/test_replies_e2e.py.

Everything is real and local: the time-skipping Temporal test server, the HubSpot and WooCommerce
sandboxes over HTTP, the Stripe sandbox, the SMTP sink of the test's ``mail`` fixture, the intake app (download
pages) under uvicorn, and one worker running every workflow and activity. Each :func:`open_world` has its
own Temporal test server and its own Stripe sandbox: a workflow left waiting on a timer by one test can never
keep another test's server from skipping time, and no test sees another's Stripe customers.

Two people are seeded in each of the three systems: the subject of the requests and another customer,
whose data must never reach the subject and must survive the subject's erasure untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import html
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from connectors.base import Connector
from connectors.http import RateLimiter
from connectors.hubspot import HubSpotConnector
from connectors.stripe import StripeConnector
from connectors.woocommerce import WooCommerceConnector
from dsr.config.settings import Settings
from dsr.domain.aftercare import aftercare_id
from dsr.domain.model import AuditEvent, IdentityMethod, RequestInput
from dsr.store.exports import ExportStore
from dsr.store.guards import Guards
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks
from dsr.web.serve import serve_app
from intake.server import bundle_opener
from intake.submission import Submission, prepare, start
from intake.web.app import intake_app
from sandbox.hubspot import HubSpotState, hubspot_app
from sandbox.stripe import StripeSandbox, seed_customer
from sandbox.woocommerce import WooState, woocommerce_app
from tests.harness import TEST_KEYRING, MailSink, exports_of, http_client, text_of
from tests.servers import start_time_skipping_server, validated_once
from tests.workflows.support import demo_profile
from worker import build_worker

HUBSPOT_TOKEN, WOO_KEY, WOO_SECRET, STRIPE_KEY = "pat-e2e", "ck_e2e", "cs_e2e", "sk_test_replies_e2e"
STRIPE_AUTH = {"Authorization": f"Bearer {STRIPE_KEY}"}


@dataclass(frozen=True)
class Person:
    first_name: str
    last_name: str
    email: str
    phone: str
    street: str
    city: str
    postcode: str

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def identifiers(self) -> list[str]:
        """What would identify this person in any file or email (ids of their records come on top)."""
        return [self.email, self.first_name, self.last_name, self.phone, self.street, self.city, self.postcode]


SUBJECT = Person("Nadia", "Haddad", "nadia.haddad@example.org", "+33612345678", "3 rue Nationale", "Lille", "59000")
OTHER = Person("Paul", "Girard", "paul.girard@example.net", "+33698765432", "27 rue des Tanneurs", "Strasbourg",
               "67000")
UNKNOWN = Person("Zoé", "Inconnue", "zoe.inconnue@example.com", "", "", "", "")  # in no system at all


@dataclass
class Holdings:
    """The records one person has in the sandboxes, by id, as seeded (Stripe's as the sandbox lists them)."""

    hubspot_contact: str
    hubspot_notes: list[str]
    woo_customer: int
    woo_orders: list[int]  # the account's orders and the guest orders billed to the address
    stripe_customer: str
    stripe_charges: list[str]
    stripe_payment_methods: list[str]

    @property
    def stripe_ids(self) -> list[str]:
        return [self.stripe_customer, *self.stripe_charges, *self.stripe_payment_methods]


@dataclass
class Sandboxes:
    hubspot: HubSpotState
    woo: WooState
    stripe_url: str
    connectors: list[Connector]
    held: dict[str, Holdings] = field(default_factory=dict)  # by email

    async def stripe_list(self, path: str, **params: str) -> list[dict[str, Any]]:
        """Every object of a Stripe sandbox listing (the sandbox's own answer, not the connector's)."""
        found: list[dict[str, Any]] = []
        async with http_client(base_url=self.stripe_url, headers=STRIPE_AUTH) as http:
            while True:
                page = (await http.get(path, params={**params, "limit": "100",
                                                     **({"starting_after": found[-1]["id"]} if found else {})}))
                page.raise_for_status()
                body = page.json()
                found += body["data"]
                if not body.get("has_more") or not body["data"]:
                    return found

    async def stripe_customer(self, customer_id: str) -> dict[str, Any] | None:
        async with http_client(base_url=self.stripe_url, headers=STRIPE_AUTH) as http:
            answer = await http.get(f"/v1/customers/{customer_id}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        customer = answer.json()
        return None if customer.get("deleted") else customer

    async def snapshot(self, person: Person) -> dict[str, Any]:
        """Everything the three systems hold about ``person``, to compare before and after a request."""
        held = self.held[person.email]
        return copy.deepcopy({
            "hubspot": self.hubspot.contact(held.hubspot_contact),
            "hubspot_notes": [self.hubspot.objects["notes"][n].properties for n in held.hubspot_notes
                              if n in self.hubspot.objects["notes"]],
            "woo_customer": self.woo.customers.get(held.woo_customer),
            "woo_orders": [self.woo.orders.get(i) for i in held.woo_orders],
            "stripe_customer": await self.stripe_customer(held.stripe_customer),
            "stripe_charges": await self.stripe_list("/v1/charges", customer=held.stripe_customer),
        })


async def seed(systems: Sandboxes, person: Person, *, orders: int, guest_orders: int, charges: int,
               notes: int) -> Holdings:
    """``person`` as a customer of all three systems: a CRM contact with notes, a shop account with orders
    (and guest orders under the same address), a Stripe customer with a card and charges."""
    contact = systems.hubspot.add_contact(person.email, firstname=person.first_name, lastname=person.last_name,
                                          phone=person.phone, address=person.street, city=person.city,
                                          zip=person.postcode, lifecyclestage="customer")
    note_ids = [systems.hubspot.add_note(contact, f"Call {i + 1}: asked about delivery times.")
                for i in range(notes)]
    address = {"first_name": person.first_name, "last_name": person.last_name, "email": person.email,
               "phone": person.phone, "address_1": person.street, "city": person.city, "postcode": person.postcode,
               "country": "FR"}
    customer = systems.woo.add_customer(person.email, person.first_name, person.last_name, billing=address,
                                        shipping={k: v for k, v in address.items() if k not in ("email", "phone")})
    order_ids = systems.woo.bulk_orders(customer["id"], orders)
    order_ids += [systems.woo.add_guest_order(person.email, person.first_name, person.last_name,
                                              billing={"city": person.city})["id"] for _ in range(guest_orders)]
    stripe_customer = await seed_customer(
        systems.stripe_url, STRIPE_KEY, email=person.email, name=person.name, charges=charges, phone=person.phone,
        address={"line1": person.street, "city": person.city, "postal_code": person.postcode, "country": "FR"})
    held = Holdings(
        hubspot_contact=contact,
        hubspot_notes=note_ids,
        woo_customer=customer["id"],
        woo_orders=order_ids,
        stripe_customer=stripe_customer,
        stripe_charges=[c["id"] for c in await systems.stripe_list("/v1/charges", customer=stripe_customer)],
        stripe_payment_methods=[m["id"] for m in await systems.stripe_list(
            "/v1/payment_methods", customer=stripe_customer, type="card")],
    )
    assert len(held.stripe_charges) == charges and len(held.woo_orders) == orders + guest_orders
    systems.held[person.email] = held
    return held


class WorldClock:
    """The intake app's clock: wall time plus what the Temporal test server has skipped, so a download link
    expires for the intake app when the workflow's expiry timer fires."""

    def __init__(self) -> None:
        self.skipped = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.skipped

    async def follow(self, env: WorkflowEnvironment) -> None:
        self.skipped = max(await env.get_current_time() - datetime.now(UTC), timedelta(0))


@dataclass
class World:
    env: WorkflowEnvironment
    settings: Settings
    ledger: Ledger
    exports: ExportStore
    mail: MailSink
    systems: Sandboxes
    intake_url: str
    clock: WorldClock
    handles: list[WorkflowHandle] = field(default_factory=list)

    async def submit(self, kind: str, person: Person = SUBJECT, *, language: str = "fr",
                     changes: dict[str, str] | None = None) -> tuple[RequestInput, WorkflowHandle]:
        """A request as the intake service starts it (identity trusted: the channel authenticated the person)."""
        request = prepare(Submission(kind=kind, email=person.email, name=person.name, language=language,
                                     changes=changes or {}), self.settings, now=await self.env.get_current_time())
        # The handle from start_workflow is the one whose result() lets the test server skip time.
        handle = await start(self.env.client, request, task_queue=self.settings.task_queue)
        self.handles.append(handle)
        return request, handle

    def events(self, request: RequestInput) -> list[str]:
        return [e.event for e in self.ledger.events(request.request_id)]

    def templates_sent(self, request: RequestInput) -> list[str]:
        return [e.details["template"] for e in self.ledger.events(request.request_id) if e.event == "notice_sent"]

    def sent(self, request: RequestInput, template: str) -> list[Mail]:
        """The emails the ledger says were sent for ``request`` with ``template``, as they reached the sink."""
        ids = {e.details["message_id"] for e in self.ledger.events(request.request_id)
               if e.event == "notice_sent" and e.details["template"] == template}
        return [Mail.of(m) for _, m in self.mail.messages if m["Message-ID"] in ids]

    def mails_to(self, address: str) -> list[Mail]:
        return [Mail.of(m) for m in self.mail.to(address)]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Polls in real time (nothing awaits the workflow's result, so no time is skipped meanwhile)."""
        for _ in range(400):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"still waiting for {what}")

    async def until_event(self, request: RequestInput, event: str) -> None:
        await self.until(lambda: event in self.events(request), f"{event!r} in the ledger")

    async def terminate_running(self) -> None:
        """Leave no workflow waiting on a timer (download link, residual reminder) behind the test."""
        for request in self.handles:
            # The request, and its aftercare once answered (the link and the residual data outlive it).
            for handle in (request, self.env.client.get_workflow_handle(aftercare_id(request.id))):
                with contextlib.suppress(RPCError):
                    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                        await handle.terminate("test over")


@contextlib.asynccontextmanager
async def open_sandboxes(stripe_sandbox: StripeSandbox) -> AsyncIterator[Sandboxes]:
    hubspot, woo = HubSpotState(), WooState()
    crm = await serve_app(hubspot_app(hubspot, token=HUBSPOT_TOKEN), port=0)
    shop = await serve_app(woocommerce_app(woo, consumer_key=WOO_KEY, consumer_secret=WOO_SECRET), port=0)
    connectors: list[Connector] = [
        HubSpotConnector("hubspot", token=HUBSPOT_TOKEN, base_url=crm.url, rate_limit=RateLimiter(100, 11)),
        StripeConnector("stripe", api_key=STRIPE_KEY, base_url=stripe_sandbox.url, rate_limit=RateLimiter(25, 1.1)),
        WooCommerceConnector("woocommerce", consumer_key=WOO_KEY, consumer_secret=WOO_SECRET, base_url=shop.url),
    ]
    try:
        yield Sandboxes(hubspot, woo, stripe_sandbox.url, connectors)
    finally:
        for connector in connectors:
            await connector.aclose()
        await crm.stop()
        await shop.stop()


@contextlib.asynccontextmanager
async def open_world(settings: Settings, ledger: Ledger, mail: MailSink) -> AsyncIterator[World]:
    """A whole controller: its own Temporal test server, the sandboxes, the intake app and a worker."""
    env = await start_time_skipping_server()
    stripe_sandbox = StripeSandbox(api_key=STRIPE_KEY).start()
    try:
        exports = exports_of(settings)
        clock = WorldClock()
        await clock.follow(env)

        def audit(request_id: str, event: str, details: dict[str, str]) -> None:  # as intake/server.py does
            ledger.append_event(AuditEvent(request_id=request_id, event=event, actor="subject", details=details),
                                key=f"download-{uuid.uuid4()}", at=datetime.now(UTC))

        # The app takes only the scheme and path of its public URL (the port is known once it listens).
        app = intake_app(links=DownloadLinks(TEST_KEYRING, ttl=timedelta(days=settings.link_days)),
                         bundle_opener=bundle_opener(TEST_KEYRING, exports), audit=audit,
                         public_url="http://127.0.0.1", clock=clock, guards=Guards(ledger.engine, TEST_KEYRING))
        intake = await serve_app(app, port=0)
        # The download links in the replies point at this intake app: the test follows them as a subject would.
        settings = replace(settings, public_url=intake.url, task_queue=f"e2e-replies-{uuid.uuid4()}",
                           policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
        try:
            async with open_sandboxes(stripe_sandbox) as systems:
                with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
                    async with build_worker(env.client, settings, ledger, systems.connectors, exports=exports,
                                            profile=demo_profile, task_queue=settings.task_queue,
                                            executor=executor, workflow_runner=validated_once()):
                        world = World(env, settings, ledger, exports, mail, systems, intake.url, clock)
                        try:
                            yield world
                        finally:
                            await world.terminate_running()
        finally:
            await intake.stop()
    finally:
        stripe_sandbox.stop()
        await env.shutdown()


# --- what the subject receives and does with it ------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One email as its reader sees it: decoded headers, the text part, and the HTML part as text."""

    subject: str
    text: str
    html_text: str  # the HTML part without tags and entities, whitespace collapsed
    html: str

    @classmethod
    def of(cls, message: EmailMessage) -> Mail:
        markup = text_of(message, "html")
        readable = html.unescape(re.sub(r"<[^>]+>", " ", markup))
        return cls(subject=str(message["Subject"]), text=text_of(message),
                   html_text=" ".join(readable.replace("\xa0", " ").split()), html=markup)

    @property
    def everything(self) -> str:
        """Subject, text and HTML (markup and readable text): where nothing personal may hide."""
        return "\n".join((self.subject, self.text, self.html, self.html_text))

    def download_link(self) -> tuple[str, str]:
        """The link and the code (``K7QM-4XPD``) the reply gives, read from the text part (the HTML part must agree)."""
        link = re.search(r"https?://\S+/exports/[A-Za-z0-9._~%-]+(?:\?lang=(?:fr|en))?", self.text)
        code = re.search(r"code\D{0,20}?([2-9A-Z]{4}-[2-9A-Z]{4})\b", self.text)
        assert link is not None and code is not None, "the reply has no download link and code"
        assert f'href="{link.group(0)}"' in self.html and code.group(1) in self.html_text
        return link.group(0), code.group(1)


def mentions(text: str, identifier: str) -> bool:
    """Whether ``identifier`` appears in ``text`` as a whole token (a postcode inside a timestamp does not count)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(identifier)}(?![0-9A-Za-z])", text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class DownloadForm:
    """The download page's form, as the subject's browser holds it once the link is opened."""

    action: str
    fields: dict[str, str]

    async def send(self, answer: str) -> httpx.Response:
        async with http_client() as http:
            return await http.post(self.action, data={**self.fields, "answer": answer})


async def open_link(link: str) -> DownloadForm:
    async with http_client() as http:
        page = await http.get(link)
    assert page.status_code == 200, page.status_code
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
    assert action is not None and hidden, "the download page has no form"
    return DownloadForm(str(httpx.URL(link).join(html.unescape(action.group(1)))),
                        {name: html.unescape(value) for name, value in hidden})


async def download(link: str, code: str) -> httpx.Response:
    """What a subject does with the reply: open the link, type the code in the page's form, send it."""
    return await (await open_link(link)).send(code)

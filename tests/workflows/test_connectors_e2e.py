"""A request of each kind, end to end: the workflow on the time-skipping server, the three real
connectors over real HTTP to the HubSpot and WooCommerce sandboxes and to localstripe."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from connectors.http import RateLimiter
from connectors.hubspot import HubSpotConnector
from connectors.stripe import StripeConnector
from connectors.woocommerce import WooCommerceConnector
from dsr.codec_server import serve_codec
from dsr.config import Settings
from dsr.exports import ExportStore
from dsr.ledger import Ledger
from dsr.model import IdentityMethod, Outcome, RequestStatus
from intake.submission import Submission, prepare, start
from sandbox.hubspot import HubSpotState, hubspot_app
from sandbox.stripe import LocalStripe, seed_customer
from sandbox.woocommerce import WooState, woocommerce_app
from tests.harness import TEST_KEYRING, MailSink
from worker import build_worker

EMAIL = "Nadia.Haddad@example.org"  # the subject writes it capitalised; every system must still match
TOKEN, KEY, SECRET, STRIPE_KEY = "pat-test", "ck_test", "cs_test", "sk_test_e2e"


@dataclass
class Systems:
    hubspot: HubSpotState
    woo: WooState
    stripe_url: str
    connectors: list


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe(api_key=STRIPE_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def systems(localstripe: LocalStripe) -> AsyncIterator[Systems]:
    hubspot, woo = HubSpotState(), WooState()
    contact = hubspot.add_contact(EMAIL.lower(), firstname="Nadia", lastname="Haddad", city="Lille")
    hubspot.add_note(contact, "Asked for a refund.")
    customer = woo.add_customer(EMAIL.lower(), "Nadia", "Haddad",
                                billing={"first_name": "Nadia", "last_name": "Haddad", "email": EMAIL.lower(),
                                         "address_1": "3 rue Nationale", "city": "Lille", "postcode": "59000"})
    woo.bulk_orders(customer["id"], 250)
    woo.add_guest_order(EMAIL.lower(), "Nadia", "Haddad")
    # A fresh address per test: localstripe is shared by the module.
    # The Stripe customer carries the subject's address too (fresh per test: localstripe is shared).
    await seed_customer(localstripe.url, STRIPE_KEY, email=EMAIL.lower(), name="Nadia Haddad", charges=120)
    crm = await serve_codec(hubspot_app(hubspot, token=TOKEN), port=0)
    shop = await serve_codec(woocommerce_app(woo, consumer_key=KEY, consumer_secret=SECRET), port=0)
    connectors = [
        HubSpotConnector("hubspot", token=TOKEN, base_url=crm.url, rate_limit=RateLimiter(100, 11)),
        StripeConnector("stripe", api_key=STRIPE_KEY, base_url=localstripe.url, rate_limit=RateLimiter(25, 1.1)),
        WooCommerceConnector("woocommerce", consumer_key=KEY, consumer_secret=SECRET, base_url=shop.url),
    ]
    try:
        yield Systems(hubspot, woo, localstripe.url, connectors)
    finally:
        for connector in connectors:
            await connector.aclose()
        await crm.stop()
        await shop.stop()


async def run_request(env: WorkflowEnvironment, settings: Settings, ledger: Ledger, exports: ExportStore,
                      systems: Systems, kind: str, *, email: str = EMAIL,
                      changes: dict[str, str] | None = None) -> RequestStatus:
    task_queue = f"e2e-{uuid.uuid4()}"
    settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
    request = prepare(Submission(kind=kind, email=email, name="Nadia Haddad", changes=changes or {}), settings,
                      now=await env.get_current_time())
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(env.client, settings, ledger, systems.connectors, exports=exports,
                                task_queue=task_queue, executor=executor):
            handle = await start(env.client, request, task_queue=task_queue)
            return await handle.result()


async def test_access_exports_every_system_into_the_encrypted_store(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    exports = ExportStore(settings.exports_dir, TEST_KEYRING)
    final = await run_request(time_skipping, settings, ledger, exports, systems, "access")
    assert final.outcome == Outcome.FULFILLED
    by_system = {c.connector: c for c in final.connectors}
    assert {name: c.state.value for name, c in by_system.items()} == {
        "hubspot": "done", "stripe": "done", "woocommerce": "done"}
    stored = {(d.system, d.dataset): d.records for d in exports.datasets(final.request_id)}
    assert stored[("woocommerce", "orders")] == 251  # 250 of the account and the guest order
    assert stored[("woocommerce", "customer")] == 1
    assert stored[("hubspot", "contact")] == 1 and stored[("hubspot", "notes")] == 1
    orders = list(exports.read(final.request_id, "woocommerce", "orders"))
    assert len({o["id"] for o in orders}) == 251


async def test_erasure_deletes_anonymises_retains_and_verifies(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    exports = ExportStore(settings.exports_dir, TEST_KEYRING)
    final = await run_request(time_skipping, settings, ledger, exports, systems, "erasure")
    assert final.outcome == Outcome.FULFILLED  # verification (locate again) found nothing undeclared
    outcomes = {c.connector: c.outcome for c in final.connectors}
    assert outcomes["hubspot"] is not None and outcomes["hubspot"].counts.get("deleted") == 1
    woo = outcomes["woocommerce"]
    assert woo is not None and woo.counts.get("anonymised") == 251 and woo.counts.get("deleted") == 1
    assert any(r.action == "residual" for r in woo.report)
    assert all(o["billing"]["email"] == "" for o in systems.woo.orders.values())
    assert len(systems.woo.orders) == 251, "orders are accounting records: anonymised, never deleted"
    contact_events = [e for e in ledger.events(final.request_id) if e.event == "connector_done"]
    assert {e.details["connector"] for e in contact_events} == {"hubspot", "stripe", "woocommerce"}

    again = await run_request(time_skipping, settings, ledger, exports, systems, "erasure")
    assert again.outcome == Outcome.FULFILLED, "a repeated erasure is a success"


async def test_stripe_erasure_retains_charges_with_legal_basis(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems,
    localstripe: LocalStripe,
) -> None:
    exports = ExportStore(settings.exports_dir, TEST_KEYRING)
    stripe_email = await _stripe_customer(localstripe)
    final = await run_request(time_skipping, settings, ledger, exports, systems, "erasure", email=stripe_email)
    stripe = next(c.outcome for c in final.connectors if c.connector == "stripe")
    assert stripe is not None and stripe.counts.get("deleted", 0) >= 1 and stripe.counts.get("retained") == 30
    retained = [r for r in stripe.report if r.action == "retained"]
    assert all("L123-22" in r.legal_basis and r.retained_until is not None for r in retained)


async def test_rectification_and_portability(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    exports = ExportStore(settings.exports_dir, TEST_KEYRING)
    final = await run_request(time_skipping, settings, ledger, exports, systems, "rectification",
                              changes={"city": "Roubaix"})
    assert final.outcome == Outcome.FULFILLED
    contact_id = systems.hubspot.find_contacts(EMAIL.lower())[0]
    assert (systems.hubspot.contact(contact_id) or {}).get("city") == "Roubaix"
    customer = systems.woo.customer_by_email(EMAIL.lower())
    assert customer is not None and customer["billing"]["city"] == "Roubaix"

    portable = await run_request(time_skipping, settings, ledger, exports, systems, "portability")
    datasets = {(d.system, d.dataset): d.provided for d in exports.datasets(portable.request_id)}
    assert datasets[("woocommerce", "orders")] and datasets[("hubspot", "contact")]
    assert ("hubspot", "notes") not in datasets, "derived CRM activity is not portable data"


async def _stripe_customer(localstripe: LocalStripe) -> str:
    email = f"nadia.stripe+{uuid.uuid4().hex[:8]}@example.org"
    await seed_customer(localstripe.url, STRIPE_KEY, email=email, name="Nadia Haddad", charges=30)
    return email

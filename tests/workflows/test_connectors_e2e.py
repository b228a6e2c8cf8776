"""A request of each kind, end to end: the workflow on the time-skipping server, the three real
connectors over real HTTP to the HubSpot, WooCommerce and Stripe sandboxes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

import pytest
import pytest_asyncio
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from connectors.base import Connector
from connectors.http import RateLimiter
from connectors.hubspot import HubSpotConnector
from connectors.stripe import StripeConnector
from connectors.woocommerce import WooCommerceConnector
from dsr.config.settings import Settings
from dsr.domain.aftercare import aftercare_id
from dsr.domain.model import IdentityMethod, Outcome, RequestStatus, Stage
from dsr.store.exports import ExportStore
from dsr.store.guards import Guards
from dsr.store.ledger import Ledger
from dsr.web.serve import serve_app
from intake.submission import Submission, prepare, start
from sandbox.hubspot import HubSpotState, hubspot_app
from sandbox.stripe import StripeSandbox, seed_customer
from sandbox.woocommerce import WooState, woocommerce_app
from tests.harness import TEST_KEYRING, MailSink, S3Server, exports_of, http_client, text_of
from tests.servers import time_skipping_server, validated_once
from tests.workflows.support import demo_profile
from worker import build_worker
from workflows.request import DataSubjectRequest

pytestmark = pytest.mark.slow  # every system end to end

EMAIL = "Nadia.Haddad@example.org"  # the subject writes it capitalised; every system must still match
TOKEN, KEY, SECRET, STRIPE_KEY = "pat-test", "ck_test", "cs_test", "sk_test_e2e"


@dataclass
class Systems:
    hubspot: HubSpotState
    woo: WooState
    stripe_url: str
    connectors: list[Connector]


@pytest_asyncio.fixture(scope="module")
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """This module's own test server: its workflows (waiting on download links) must not keep the shared
    one from skipping time for the lifecycle tests."""
    async with time_skipping_server() as env:
        yield env


@pytest.fixture(scope="module")
def stripe_sandbox() -> Iterator[StripeSandbox]:
    server = StripeSandbox(api_key=STRIPE_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def systems(stripe_sandbox: StripeSandbox) -> AsyncIterator[Systems]:
    hubspot, woo = HubSpotState(), WooState()
    contact = hubspot.add_contact(EMAIL.lower(), firstname="Nadia", lastname="Haddad", city="Lille")
    hubspot.add_note(contact, "Asked for a refund.")
    customer = woo.add_customer(EMAIL.lower(), "Nadia", "Haddad",
                                billing={"first_name": "Nadia", "last_name": "Haddad", "email": EMAIL.lower(),
                                         "address_1": "3 rue Nationale", "city": "Lille", "postcode": "59000"})
    woo.bulk_orders(customer["id"], 250)
    woo.add_guest_order(EMAIL.lower(), "Nadia", "Haddad")
    # The Stripe customer carries the subject's address too (the Stripe sandbox is shared by the module).
    await seed_customer(stripe_sandbox.url, STRIPE_KEY, email=EMAIL.lower(), name="Nadia Haddad", charges=120)
    crm = await serve_app(hubspot_app(hubspot, token=TOKEN), port=0)
    shop = await serve_app(woocommerce_app(woo, consumer_key=KEY, consumer_secret=SECRET), port=0)
    connectors: list[Connector] = [
        HubSpotConnector("hubspot", token=TOKEN, base_url=crm.url, rate_limit=RateLimiter(100, 11)),
        StripeConnector("stripe", api_key=STRIPE_KEY, base_url=stripe_sandbox.url, rate_limit=RateLimiter(25, 1.1)),
        WooCommerceConnector("woocommerce", consumer_key=KEY, consumer_secret=SECRET, base_url=shop.url),
    ]
    try:
        yield Systems(hubspot, woo, stripe_sandbox.url, connectors)
    finally:
        for connector in connectors:
            await connector.aclose()
        await crm.stop()
        await shop.stop()


async def run_request(env: WorkflowEnvironment, settings: Settings, ledger: Ledger, exports: ExportStore,
                      systems: Systems, kind: str, *, email: str = EMAIL,
                      changes: dict[str, str] | None = None, scope: str = "", ground: str = "") -> RequestStatus:
    task_queue = f"e2e-{uuid.uuid4()}"
    settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
    request = prepare(Submission(kind=kind, email=email, name="Nadia Haddad", changes=changes or {}, scope=scope,
                                 ground=ground), settings, now=await env.get_current_time())
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(env.client, settings, ledger, systems.connectors, exports=exports,
                                profile=demo_profile, task_queue=task_queue, executor=executor,
                                workflow_runner=validated_once()):
            handle = await start(env.client, request, task_queue=task_queue)
            # Not handle.result(): that would skip to the download link's expiry, which deletes the exports.
            with env.auto_time_skipping_disabled():
                for _ in range(300):
                    status = await handle.query(DataSubjectRequest.status)
                    if status.stage == Stage.CLOSED:
                        # Leave no workflow waiting on a timer with no worker: it would stall time skipping.
                        with contextlib.suppress(RPCError):  # erasures complete at once: nothing to stop
                            await handle.terminate("test over: the exports are checked before the link expires")
                        return status
                    await asyncio.sleep(0.1)
            raise AssertionError(f"request still {status.stage}")


async def test_access_exports_every_system_into_the_encrypted_store(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    exports = exports_of(settings)
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
    exports = exports_of(settings)
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
    stripe_sandbox: StripeSandbox,
) -> None:
    exports = exports_of(settings)
    stripe_email = await _stripe_customer(stripe_sandbox)
    final = await run_request(time_skipping, settings, ledger, exports, systems, "erasure", email=stripe_email)
    stripe = next(c.outcome for c in final.connectors if c.connector == "stripe")
    # 30 charges and the 30 payment intents that made them
    assert stripe is not None and stripe.counts.get("deleted", 0) >= 1 and stripe.counts.get("retained") == 60
    retained = [r for r in stripe.report if r.action == "retained"]
    assert all("L123-22" in r.legal_basis and r.retained_until is not None for r in retained)


async def test_rectification_and_portability(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    exports = exports_of(settings)
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


async def _stripe_customer(stripe_sandbox: StripeSandbox) -> str:
    email = f"nadia.stripe+{uuid.uuid4().hex[:8]}@example.org"
    await seed_customer(stripe_sandbox.url, STRIPE_KEY, email=email, name="Nadia Haddad", charges=30)
    return email


async def test_access_reply_link_downloads_the_bundle_from_s3_through_another_intake_replica(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems,
    s3_url: str, s3_server: S3Server,
) -> None:
    # Deletion at the link's expiry is checked by test_request (skipped 7 days) and the 410 by tests/intake;
    # waiting for it here stalled the shared test server behind other tests' pending workflows.
    # The worker and the intake app are given separate stores on the same bucket, as two machines would be.
    import asyncio
    import hashlib
    import io
    import json
    import re
    import zipfile

    from dsr.domain.model import AuditEvent
    from dsr.store.links import DownloadLinks
    from intake.server import bundle_opener
    from intake.web.app import intake_app

    settings = replace(settings, storage_url=s3_url)
    exports = exports_of(settings)
    # Another subject's data must never leak into this subject's bundle.
    systems.woo.add_customer("someone.else@example.org", "Someone", "Else")
    task_queue = f"e2e-{uuid.uuid4()}"
    trusted = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
    request = prepare(Submission(kind="access", email=EMAIL, name="Nadia Haddad"), trusted,
                      now=await time_skipping.get_current_time())

    def audit(request_id: str, event: str, details: dict[str, str]) -> None:
        from datetime import UTC, datetime

        ledger.append_event(AuditEvent(request_id=request_id, event=event, actor="subject", details=details),
                            key=f"download-{uuid.uuid4()}", at=datetime.now(UTC))

    app = intake_app(links=DownloadLinks(TEST_KEYRING), bundle_opener=bundle_opener(TEST_KEYRING, exports_of(settings)),
                     audit=audit, public_url=settings.intake_url, guards=Guards(ledger.engine, TEST_KEYRING))
    intake = await serve_app(app, port=0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(time_skipping.client, trusted, ledger, systems.connectors, exports=exports,
                                profile=demo_profile, task_queue=task_queue, executor=executor,
                                workflow_runner=validated_once()):
            await start(time_skipping.client, request, task_queue=task_queue)
            for _ in range(200):  # real time, no skipping: until the reply is out and the aftercare keeps the link
                if "aftercare_started" in [e.event for e in ledger.events(request.request_id)]:
                    break
                await asyncio.sleep(0.1)
            reply = mail.to(EMAIL)[-1]
            body = text_of(reply)
            assert request.request_id in body and "CNIL" in body
            token = re.search(r"/exports/([A-Za-z0-9._~-]+)", body).group(1)  # type: ignore[union-attr]
            code = re.search(r"\b([2-9A-Z]{4}-[2-9A-Z]{4})\b", body).group(1)  # type: ignore[union-attr]
            links = DownloadLinks(TEST_KEYRING)
            async with http_client(base_url=intake.url) as http:
                assert (await http.get(f"/exports/{token}")).status_code == 200  # the form
                wrong = await http.post(f"/exports/{token}",
                                        data={"answer": request.request_id, "form": links.form_token(token)})
                assert wrong.status_code == 403
                got = await http.post(f"/exports/{token}", data={"answer": code, "form": links.form_token(token)})
                assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
                bundle = zipfile.ZipFile(io.BytesIO(got.content))
                manifest = json.loads(bundle.read("manifest.json"))
                listed = {f["name"]: f["sha256"] for f in manifest["files"]}
                assert listed and all(hashlib.sha256(bundle.read(n)).hexdigest() == h for n, h in listed.items())
                data = json.loads(bundle.read("data.json"))
                assert len(data["woocommerce"]["orders"]) == 251
                assert "someone.else" not in bundle.read("data.json").decode()
                assert "export_downloaded" in [e.event for e in ledger.events(request.request_id)]
                stored = s3_server.raw_objects(s3_url.split("/", 3)[3])
                assert any(key.endswith("/bundle.zip.enc") for key in stored)
                # Ciphertext is stored as base64 text, where "nadia" in any case can turn up by chance (CI met a
                # match once): look for what plaintext would hold, with characters base64 has not (space, @, quotes).
                plain = (b"Nadia Haddad", EMAIL.encode(), b'"Nadia"', b'"Haddad"', b'"orders"')
                assert not [key for key, body in stored.items() if any(p in body for p in plain)]

                # The request ended with its answer; its aftercare keeps the link until it expires.
                await time_skipping.client.get_workflow_handle(aftercare_id(request.request_id)).terminate(
                    "test over: the download was checked")
                exports.delete(request.request_id)  # what the aftercare's expiry timer does
                gone = await http.post(f"/exports/{token}", data={"answer": code, "form": links.form_token(token)})
                assert gone.status_code == 410
    await intake.stop()


async def test_marketing_objection_unsubscribes_in_hubspot_and_leaves_the_others_to_the_operator(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    from dsr.store.suppressions import SuppressionList

    exports = exports_of(settings)
    systems.hubspot.subscribe(EMAIL, "7001")
    systems.hubspot.subscribe(EMAIL, "7003")
    final = await run_request(time_skipping, settings, ledger, exports, systems, "objection", scope="marketing")
    assert final.outcome == Outcome.FULFILLED and final.scope == "marketing"
    outcomes = {c.connector: c.outcome for c in final.connectors}
    assert outcomes["hubspot"] is not None and outcomes["hubspot"].counts == {"unsubscribed": 3}
    for sub_id in ("7001", "7002", "7003"):  # every type, the ones never opted in to included
        assert systems.hubspot.subscription_status(EMAIL, sub_id) == "NOT_SUBSCRIBED"
    assert systems.hubspot.patches == []  # never by editing a property
    assert sorted(line.split(":")[0] for line in final.residuals) == ["stripe", "woocommerce"]
    suppressions = SuppressionList(ledger)
    assert suppressions.is_suppressed(EMAIL)

    # The person then has everything erased: the contact goes, the objection stays, HubSpot's statuses too.
    erased = await run_request(time_skipping, settings, ledger, exports, systems, "erasure")
    assert erased.outcome == Outcome.FULFILLED
    assert suppressions.is_suppressed(EMAIL.lower())
    assert systems.hubspot.subscription_status(EMAIL, "7001") == "NOT_SUBSCRIBED"


async def test_a_deceased_persons_accounts_are_closed_in_every_system_once_the_heirs_quality_is_confirmed(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:
    """Art. 85 loi 78-17: Nadia's daughter writes; the sandboxes' data of Nadia is erased, never the daughter's."""
    from dsr.domain.model import Quality, QualityConfirmation
    from dsr.store.suppressions import SuppressionList

    heir = "sofia.haddad@example.org"
    exports = exports_of(settings)
    task_queue = f"e2e-{uuid.uuid4()}"
    request = prepare(Submission(kind="post_mortem", email=heir, name="Sofia Haddad", deceased_email=EMAIL,
                                 deceased_name="Nadia Haddad", quality="heir"),
                      settings, now=await time_skipping.get_current_time())
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(time_skipping.client, settings, ledger, systems.connectors, exports=exports,
                                profile=demo_profile, task_queue=task_queue, executor=executor,
                                workflow_runner=validated_once()):
            handle = await start(time_skipping.client, request, task_queue=task_queue)
            with time_skipping.auto_time_skipping_disabled():
                for _ in range(300):
                    status = await handle.query(DataSubjectRequest.status)
                    if status.stage == Stage.AWAITING_IDENTITY:
                        break
                    await asyncio.sleep(0.1)
                assert status.connectors == [] and systems.woo.customer_by_email(EMAIL.lower()) is not None
                await handle.execute_update(DataSubjectRequest.confirm_quality, QualityConfirmation(
                    quality=Quality.HEIR, confirmed_by="operator:alice", note="acte de notoriété"))
                for _ in range(300):
                    final = await handle.query(DataSubjectRequest.status)
                    if final.stage == Stage.CLOSED:
                        break
                    await asyncio.sleep(0.1)
                with contextlib.suppress(RPCError):  # an erasure completes at once: nothing to stop
                    await handle.terminate("test over")
    assert final.outcome == Outcome.FULFILLED and final.quality == "heir"
    outcomes = {c.connector: c.outcome for c in final.connectors}
    assert outcomes["hubspot"] is not None and outcomes["hubspot"].counts.get("deleted") == 1
    woo = outcomes["woocommerce"]
    assert woo is not None and woo.counts.get("anonymised") == 251 and woo.counts.get("deleted") == 1
    assert systems.woo.customer_by_email(EMAIL.lower()) is None
    assert all(o["billing"]["email"] == "" for o in systems.woo.orders.values())
    assert SuppressionList(ledger).is_suppressed(EMAIL)
    [reply] = [m for m in mail.to(heir) if request.request_id in str(m["Subject"])
               and "personne décédée" in str(m["Subject"]) and "Réponse" in str(m["Subject"])]
    text = " ".join(text_of(reply).split())
    assert "nous avons clôturé les comptes de la personne décédée" in text and EMAIL.lower() not in text.lower()
    assert mail.to(EMAIL) == [] and mail.to(EMAIL.lower()) == []  # nothing is sent to the deceased person


async def test_a_restriction_marks_each_demo_system_and_the_engine_still_exports(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems
) -> None:

    from dsr.domain.model import restriction_id

    exports = exports_of(settings)
    final = await run_request(time_skipping, settings, ledger, exports, systems, "restriction", ground="b")
    # Its workflow holds the restriction in force, waiting for a lift with no worker here: stopped, so that it does
    # not hold the module's test server.
    with contextlib.suppress(RPCError):
        await time_skipping.client.get_workflow_handle(restriction_id(final.request_id)).terminate("test over")
    assert final.outcome == Outcome.FULFILLED and final.ground == "b"
    outcomes = {c.connector: c.outcome for c in final.connectors}
    # The module's Stripe sandbox keeps the customer each earlier test's `systems` seeded with her address: every
    # one of them is marked (how many depends on which tests ran before in this process: xdist shares them out).
    async with http_client(base_url=systems.stripe_url, auth=(STRIPE_KEY, "")) as client:
        found = (await client.get("/v1/customers", params={"email": EMAIL.lower()})).json()["data"]
    assert found, "this test's own Stripe customer"
    expected = {"hubspot": 1, "woocommerce": 1, "stripe": len(found)}
    assert {name: o.counts.get("restricted") if o else None for name, o in outcomes.items()} == expected, {
        name: (o.counts, o.notes) if o else None for name, o in outcomes.items()}  # short enough to be read whole
    assert [c["metadata"].get("dsr_restricted") for c in found] == [final.request_id] * len(found)
    [contact] = systems.hubspot.find_contacts(EMAIL)
    assert (systems.hubspot.contact(contact) or {})["dsr_restricted"] == final.request_id
    [customer] = [c for c in systems.woo.customers.values() if c["email"] == EMAIL.lower()]
    assert {m["key"]: m["value"] for m in customer["meta_data"]}["dsr_restricted"] == final.request_id
    [reply] = [m for m in mail.to(EMAIL) if final.request_id in str(m["Subject"])
               and str(m["Subject"]).startswith("Réponse à votre demande de limitation")]
    assert "Marqué comme limité" in text_of(reply)
    # While restricted, the engine's own exports still work: storage is what a restriction allows.
    access = await run_request(time_skipping, settings, ledger, exports, systems, "access")
    assert access.outcome == Outcome.FULFILLED and all(c.outcome and c.outcome.found for c in access.connectors)

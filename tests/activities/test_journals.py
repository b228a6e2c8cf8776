"""Erasure and rectification journals: an activity that failed after the vendor acted, retried on another
worker, reports exactly what a clean run reports, and nothing is done twice.

Real components: the fan-out activity (Temporal's activity environment), the sandboxes over HTTP (HubSpot,
WooCommerce with their fault injection; Stripe), and the object storage on files and on S3 over HTTP.
Each retry builds a new connector and a new activity holder on a new store object from the same URL: what it
knows of the first attempt comes from the object storage only, as on another machine.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.connectors import ConnectorActivities
from connectors.base import Connector, OperationJob, TransientConnectorError
from connectors.http import RateLimiter
from connectors.hubspot import HubSpotConnector
from connectors.stripe import StripeConnector
from connectors.woocommerce import WooCommerceConnector
from dsr.domain.model import (
    ConnectorOutcome,
    ConnectorTask,
    Language,
    RecordAction,
    RecordReport,
    RequestKind,
    Subject,
)
from dsr.store import store_at
from dsr.store.crypto import DecryptionError
from dsr.store.exports import ExportStore
from dsr.store.journals import JournalEntry, JournalStore
from sandbox.stripe import StripeSandbox, seed_customer
from tests.connectors.test_hubspot import EMAIL as HUBSPOT_EMAIL
from tests.connectors.test_hubspot import TOKEN, Portal, seeded, start_portal, stop_portal
from tests.connectors.test_woocommerce import KEY, LEA, SECRET, Shop, seed_lea, start_shop
from tests.harness import TEST_KEYRING

REQUEST = "dsr-2026-11-JRNL01"
WOO_WRITES = ("POST /wp-json/wc/v3/orders/batch", "DELETE /wp-json/wc/v3/customers/", "PUT /wp-json/wc/v3/customers/")


def worker(storage_url: str, connector: Connector) -> ConnectorActivities:
    """What one worker holds: its own connector, its own store object on the shared storage."""
    return ConnectorActivities([connector], ExportStore(store_at(storage_url), TEST_KEYRING))


async def run(storage_url: str, connector: Connector, task: ConnectorTask) -> ConnectorOutcome:
    return await ActivityEnvironment().run(worker(storage_url, connector).run_connector, task)


def erasure(connector: str, subject: Subject, request_id: str = REQUEST) -> ConnectorTask:
    return ConnectorTask(request_id=request_id, connector=connector, kind=RequestKind.ERASURE, subject=subject)


def woo(shop: Shop) -> WooCommerceConnector:
    return WooCommerceConnector(consumer_key=KEY, consumer_secret=SECRET, base_url=shop.server.url)


def writes(shop: Shop) -> list[str]:
    return [r for r in shop.faults.log if r.startswith(WOO_WRITES)]


@pytest.fixture
async def shops() -> Any:
    """Two identical shops: one erased cleanly, one erased under faults."""
    clean, faulted = await start_shop(), await start_shop()
    for shop in (clean, faulted):
        seed_lea(shop.state)
    try:
        yield clean, faulted
    finally:
        for shop in (clean, faulted):
            await shop.connector.aclose()
            await shop.server.stop()


async def test_journal_entries_are_sealed_numbered_objects_outside_the_exports(storage_url: str) -> None:
    objects = store_at(storage_url)
    journals = JournalStore(objects, TEST_KEYRING)
    journal = journals.journal(REQUEST, "shop")
    line = RecordReport("orders", "1001", RecordAction.ANONYMISED, note="kept")
    await journal.intend([JournalEntry(line)])
    await journal.record([JournalEntry(line)])
    keys = objects.list("journals/")
    folder = f"journals/{REQUEST.lower()}/shop/"
    assert keys == [f"{folder}00000000.entry", f"{folder}00000001.entry"]
    assert all(b"1001" not in objects.get(key) and b"orders" not in objects.get(key) for key in keys)
    # Another worker reads the same journal; an entry moved to another position does not open.
    state = await JournalStore(store_at(storage_url), TEST_KEYRING).journal(REQUEST, "shop").state()
    assert list(state.done) == [("orders", "1001")] and not state.pending
    objects.put(keys[0] + ".x", b"")  # not an entry: ignored
    objects.put(f"{folder}00000005.entry", objects.get(keys[0]))
    with pytest.raises(DecryptionError):
        await JournalStore(store_at(storage_url), TEST_KEYRING).journal(REQUEST, "shop").state()
    # Deleting a request's exports (link expiry, refusal) leaves its journals: they are the proof.
    ExportStore(objects, TEST_KEYRING).delete(REQUEST)
    assert journals.holds(REQUEST)


async def test_woocommerce_customer_deletion_whose_answer_is_lost(shops: tuple[Shop, Shop], storage_url: str) -> None:
    clean_shop, shop = shops
    clean = await run(storage_url.rstrip("/") + "-clean/", woo(clean_shop), erasure("woocommerce", LEA))

    # Orders anonymised, then DELETE /customers/{id} takes effect and its answer never arrives.
    shop.faults.lose_answers.append("DELETE /wp-json/wc/v3/customers/")
    with pytest.raises(ApplicationError) as failed:
        await run(storage_url, woo(shop), erasure("woocommerce", LEA))
    assert failed.value.type == "TransientConnectorError" and not failed.value.non_retryable
    assert shop.state.customer_by_email("lea.petit@example.org") is None  # the deletion took effect

    retried = await run(storage_url, woo(shop), erasure("woocommerce", LEA))  # another worker
    assert retried == clean
    assert retried.found == 4 and "already_gone" not in retried.counts  # the reply is not "no data"
    assert retried.counts == {"anonymised": 3, "residual": 1, "deleted": 1}
    [residual] = [r for r in retried.report if r.action == RecordAction.RESIDUAL]
    assert residual.fields == ["customer_ip_address", "customer_user_agent"]
    assert writes(shop) == writes(clean_shop)  # one batch, one deletion: nothing asked twice


def erasure_reply(outcome: ConnectorOutcome, language: Language) -> str:
    """The erasure reply's text (whitespace folded) for this one system, as the subject would read it."""
    from dsr.config.profile import load_profile
    from dsr.mail.replies import ReplyContext, ReplyKind, render_reply
    from tests.templates.test_replies import DEMO

    context = ReplyContext(reference=REQUEST, received=date(2026, 11, 23), deadline=date(2026, 12, 23),
                           profile=load_profile(DEMO), systems=[outcome])
    return " ".join(render_reply(ReplyKind.ERASURE, language, context).text.split())


@pytest.mark.parametrize("language", list(Language))
async def test_the_reply_says_erased_for_what_an_earlier_attempt_erased_and_no_data_for_what_was_never_there(
    shops: tuple[Shop, Shop], storage_url: str, language: Language
) -> None:
    clean_shop, shop = shops
    fr = language == Language.FR
    erased, gone_before, nothing = (("Effacé : compte client : 1", "Déjà supprimé avant que cette demande",
                                     "Aucune donnée vous concernant n'a été trouvée dans ce système.") if fr else
                                    ("Erased: customer account: 1", "Already deleted before this request",
                                     "No data about you was found in this system."))
    # The account's deletion took effect, its answer was lost; the retry (another worker) finds it gone.
    shop.faults.lose_answers.append("DELETE /wp-json/wc/v3/customers/")
    with pytest.raises(ApplicationError):
        await run(storage_url, woo(shop), erasure("woocommerce", LEA))
    retried = erasure_reply(await run(storage_url, woo(shop), erasure("woocommerce", LEA)), language)
    assert erased in retried and gone_before not in retried and nothing not in retried

    # A later request of the same person: nothing of hers is left in the shop but the pseudonymised orders,
    # and her account was never there for that request: it is not "erased" by it, nor "deleted before it".
    later = erasure_reply(await run(storage_url, woo(shop), erasure("woocommerce", LEA, "dsr-2026-12-JRNL02")),
                          language)
    assert erased not in later and gone_before not in later

    # Someone else deletes the account between this request's search and its deletion: gone before it reached it.
    class DeletedMeanwhile(WooCommerceConnector):
        async def _delete_customer(self, job: OperationJob, journal: Any, customer_id: int, found: bool) -> Any:
            clean_shop.state.customers.pop(customer_id, None)
            return await super()._delete_customer(job, journal, customer_id, found)

    meanwhile = DeletedMeanwhile(consumer_key=KEY, consumer_secret=SECRET, base_url=clean_shop.server.url)
    try:
        text = erasure_reply(await run(storage_url, meanwhile, erasure("woocommerce", LEA, "dsr-2026-12-JRNL03")),
                             language)
    finally:
        await meanwhile.aclose()
    assert gone_before in text and erased not in text and nothing not in text

    # Never in the shop: found nothing, said as such.
    absent = erasure_reply(await run(storage_url, woo(clean_shop), erasure(
        "woocommerce", Subject(email="nobody@example.org"), "dsr-2026-12-JRNL04")), language)
    assert nothing in absent and erased not in absent and gone_before not in absent


async def test_woocommerce_429_on_the_verifying_search(shops: tuple[Shop, Shop], storage_url: str) -> None:
    clean_shop, shop = shops
    clean = await run(storage_url.rstrip("/") + "-clean/", woo(clean_shop), erasure("woocommerce", LEA))

    class LimitedWhileVerifying(WooCommerceConnector):
        """The shop answers 429 to the first call of the verification, once, with a Retry-After too long to
        wait in place (READ_WAIT_MAX): the attempt fails after the erasure took effect."""

        async def locate(self, subject: Subject) -> Any:
            shop.faults.statuses.append(429)
            shop.faults.retry_after = "30"
            return await super().locate(subject)

    limited = LimitedWhileVerifying(consumer_key=KEY, consumer_secret=SECRET, base_url=shop.server.url)
    with pytest.raises(ApplicationError) as failed:
        await run(storage_url, limited, erasure("woocommerce", LEA))
    assert failed.value.next_retry_delay is not None and failed.value.next_retry_delay.total_seconds() == 30
    await limited.aclose()
    shop.faults.clear()

    retried = await run(storage_url, woo(shop), erasure("woocommerce", LEA))
    assert retried == clean and "already_gone" not in retried.counts
    assert writes(shop) == writes(clean_shop)


async def test_woocommerce_killed_between_batches_resumes_without_redoing_one(storage_url: str) -> None:
    """150 orders: two batches. The attempt dies after the first batch (the worker killed: the next call
    never happens); the retry anonymises the other 50 and deletes the account, and says 150."""
    shops = [await start_shop(), await start_shop()]
    try:
        for shop in shops:
            lea = seed_lea(shop.state)
            for _ in range(147):
                shop.state.add_order(customer_id=lea["id"])
        clean_shop, shop = shops
        clean = await run(storage_url.rstrip("/") + "-clean/", woo(clean_shop), erasure("woocommerce", LEA))

        class Killed(WooCommerceConnector):
            async def _batch(self, operation: str, items: list[Any]) -> set[int]:
                await super()._batch(operation, items)
                raise TransientConnectorError("worker lost")  # after the shop acted, before the journal's "done"

        killed = Killed(consumer_key=KEY, consumer_secret=SECRET, base_url=shop.server.url, itemise_up_to=1000)
        with pytest.raises(ApplicationError):
            await run(storage_url, killed, erasure("woocommerce", LEA))
        await killed.aclose()
        assert len(writes(shop)) == 1

        retried = await run(storage_url, woo(shop), erasure("woocommerce", LEA))
        assert retried == clean and retried.counts == {"anonymised": 150, "residual": 1, "deleted": 1}
        assert writes(shop) == writes(clean_shop)  # 2 batches and 1 deletion in all, as in one clean run
    finally:
        for shop in shops:
            await shop.connector.aclose()
            await shop.server.stop()


@pytest.fixture
async def portals() -> Any:
    started = []
    for _ in range(2):
        state, ids = seeded()
        portal = await start_portal(state)
        portal.ids = ids
        started.append(portal)
    try:
        yield started
    finally:
        for portal in started:
            await stop_portal(portal)


def hubspot(portal: Portal) -> HubSpotConnector:
    return portal.connector(token=TOKEN, search_rate_limit=RateLimiter(4, 1.25))


SUBJECT = Subject(email=HUBSPOT_EMAIL)


async def test_hubspot_gdpr_delete_whose_answer_is_lost(portals: list[Portal], storage_url: str) -> None:
    clean_portal, portal = portals
    clean = await run(storage_url.rstrip("/") + "-clean/", hubspot(clean_portal), erasure("hubspot", SUBJECT))
    portal.faults.lose_answers.append("POST /crm/v3/objects/contacts/gdpr-delete")
    with pytest.raises(ApplicationError):
        await run(storage_url, hubspot(portal), erasure("hubspot", SUBJECT))
    assert portal.state.was_gdpr_deleted(portal.ids["contact"])

    retried = await run(storage_url, hubspot(portal), erasure("hubspot", SUBJECT))
    assert retried == clean and retried.counts == {"deleted": 1} and retried.found == 1
    assert [p for _, p in portal.state.requests if p.endswith("gdpr-delete")] == [
        "/crm/v3/objects/contacts/gdpr-delete"]  # asked once


async def test_hubspot_rectification_whose_answer_is_lost(portals: list[Portal], storage_url: str) -> None:
    clean_portal, portal = portals
    changes = {"city": "Paris", "postcode": "75011"}
    task = ConnectorTask(request_id=REQUEST, connector="hubspot", kind=RequestKind.RECTIFICATION,
                         subject=SUBJECT, changes=changes)
    clean = await run(storage_url.rstrip("/") + "-clean/", hubspot(clean_portal), task)
    contact = portal.ids["contact"]
    portal.faults.lose_answers.append(f"PATCH /crm/v3/objects/contacts/{contact}")
    with pytest.raises(ApplicationError):
        await run(storage_url, hubspot(portal), task)
    retried = await run(storage_url, hubspot(portal), task)
    assert retried == clean and retried.counts == {"changed": 1}  # not "unchanged: already up to date"
    assert retried.report[0].fields == ["city", "postcode"] and len(portal.state.patches) == 1


# --- Stripe (the sandbox: the answer is lost in the client, after the sandbox acted) ------------------------


@pytest.fixture(scope="module")
def stripe_sandbox() -> Iterator[StripeSandbox]:
    with StripeSandbox().start() as running:
        yield running


def _normalised(outcome: ConnectorOutcome) -> dict[str, Any]:
    """The outcome with Stripe's random ids replaced by their order of appearance (two servers' ids differ)."""
    names: dict[str, str] = {}
    data = asdict(outcome)
    for line in data["report"]:
        line["record_id"] = names.setdefault(line["record_id"], f"id{len(names)}")
    return data


class LosesFirstDeletionAnswer(StripeConnector):
    deletions: int = 0

    async def _delete_customer(self, job: OperationJob, cid: str) -> bool:
        answer = await super()._delete_customer(job, cid)
        type(self).deletions += 1
        if type(self).deletions == 1:
            raise TransientConnectorError("stripe: connection failed (ReadError)")  # deleted; answer lost
        return answer


async def test_stripe_two_customers_first_deletion_answer_lost(stripe_sandbox: StripeSandbox, storage_url: str) -> None:
    async def seed() -> str:
        email = f"lea.petit+{uuid.uuid4().hex[:8]}@example.org"
        await seed_customer(stripe_sandbox.url, stripe_sandbox.api_key, email=email, name="Léa Petit", charges=2)
        await seed_customer(stripe_sandbox.url, stripe_sandbox.api_key, email=email, name="Léa Petit", charges=1)
        return email

    def connector(cls: type[StripeConnector] = StripeConnector) -> StripeConnector:
        return cls(api_key=stripe_sandbox.api_key, base_url=stripe_sandbox.url, rate_limit=RateLimiter(1000, 1.0))

    LosesFirstDeletionAnswer.deletions = 0
    clean_email, email = await seed(), await seed()
    clean = await run(storage_url.rstrip("/") + "-clean/", connector(), erasure("stripe", Subject(email=clean_email)))
    with pytest.raises(ApplicationError):
        await run(storage_url, connector(LosesFirstDeletionAnswer), erasure("stripe", Subject(email=email)))
    counted = connector(LosesFirstDeletionAnswer)
    retried = await run(storage_url, counted, erasure("stripe", Subject(email=email)))
    assert _normalised(retried) == _normalised(clean)
    # Two customers and their payment methods deleted, the three charges and their payment intents retained
    # (listed before the deletion, so the first customer's come from the journal).
    assert retried.counts == clean.counts == {"retained": 6, "deleted": 4}
    assert [r.action for r in retried.report if r.dataset == "customer"] == [RecordAction.DELETED] * 2
    assert "already_gone" not in retried.counts
    assert LosesFirstDeletionAnswer.deletions == 2  # the first customer was not asked again
    assert not re.search(r"lea\.petit", repr(retried))

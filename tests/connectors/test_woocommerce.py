"""The WooCommerce connector over real HTTP against the local WooCommerce sandbox (OAuth 1.0a over http)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.base import (
    ExportJob,
    Located,
    OperationJob,
    PermanentConnectorError,
    TransientConnectorError,
    unexpected_remains,
)
from connectors.http import READ_TRIES, RateLimiter
from connectors.woocommerce import PAGES_AT_ONCE, WooCommerceConnector
from dsr.domain.model import RecordAction, Subject
from dsr.store.exports import ExportStore
from dsr.web.serve import RunningServer, serve_app
from sandbox.faults import Faults
from sandbox.woocommerce import WooState, woocommerce_app
from tests.gatekeeper import Gatekeeper, Query
from tests.harness import file_exports, raw_dataset

KEY = "ck_" + "4" * 40
SECRET = "cs_" + "9" * 40
REQUEST = "dsr-2026-11-WOOCOM"


@dataclass
class Shop:
    state: WooState
    faults: Faults
    server: RunningServer
    connector: WooCommerceConnector

    def connect(self, **kwargs: Any) -> WooCommerceConnector:
        options = {"consumer_key": KEY, "consumer_secret": SECRET, "base_url": self.server.url, **kwargs}
        return WooCommerceConnector(**options)


async def start_shop(rate_limit: tuple[int, float] | None = None) -> Shop:
    state = WooState(now=lambda: datetime(2025, 6, 1, 12, 0, 0))
    faults = Faults()
    app = woocommerce_app(state, consumer_key=KEY, consumer_secret=SECRET, rate_limit=rate_limit, faults=faults)
    server = await serve_app(app, port=0)
    connector = WooCommerceConnector(consumer_key=KEY, consumer_secret=SECRET, base_url=server.url)
    return Shop(state, faults, server, connector)


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    running = await start_shop()
    try:
        yield running
    finally:
        await running.connector.aclose()
        await running.server.stop()


@pytest.fixture
def store(tmp_path: Path) -> ExportStore:
    return file_exports(tmp_path / "storage")


LEA = Subject(email="Lea.Petit@Example.org", name="Léa Petit")


def seed_lea(state: WooState) -> dict[str, Any]:
    """Léa has an account (stored lower-case), two orders, a guest order, and neighbours that are not her."""
    lea = state.add_customer("lea.petit@example.org", "Léa", "Petit",
                             billing={"address_1": "12 rue des Lilas", "city": "Nantes", "postcode": "44000",
                                      "country": "FR", "phone": "+33 6 12 34 56 78"},
                             shipping={"first_name": "Léa", "last_name": "Petit", "address_1": "12 rue des Lilas",
                                       "city": "Nantes", "postcode": "44000", "country": "FR"})
    state.add_order(customer_id=lea["id"], date_created=datetime(2024, 2, 29, 10, 0), customer_note="Leave at door")
    state.add_order(customer_id=lea["id"], date_created=datetime(2025, 1, 15, 9, 30))
    state.add_guest_order("LEA.PETIT@example.org", "Léa", "Petit", date_created=datetime(2023, 5, 2, 8, 0))
    # Decoys: the substring search finds them, exact filtering must not.
    state.add_guest_order("paulea.petit@example.org", "Paul", "Eapetit")
    state.add_guest_order("lea.petit@example.org.invalid", "Mallory", "X")
    other = state.add_customer("marc.durand@example.org", "Marc", "Durand")
    state.add_order(customer_id=other["id"])
    return lea


async def test_check_reports_auth_ok(shop: Shop) -> None:
    shop.state.add_customer("someone@example.org")
    assert await shop.connector.check() == "auth OK (OAuth 1.0a), 1 customer(s)"


async def test_locate_is_case_insensitive_and_finds_guest_orders_by_exact_billing_email(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    found = await shop.connector.locate(LEA)
    own = [str(o["id"]) for o in shop.state.orders_of(lea["id"])]
    guest = [str(o["id"]) for o in shop.state.orders_billed_to("lea.petit@example.org") if o["customer_id"] == 0]
    assert len(guest) == 1
    assert found == [Located("customer", str(lea["id"])), *(Located("orders", i) for i in own + guest)]


async def test_locate_finds_a_mixed_case_account_through_search(shop: Shop) -> None:
    customer = shop.state.add_customer("Marc.Durand@Example.ORG", "Marc", "Durand")
    order = shop.state.add_order(customer_id=customer["id"])
    found = await shop.connector.locate(Subject(email="marc.durand@example.org"))
    assert found == [Located("customer", str(customer["id"])), Located("orders", str(order["id"]))]


async def test_signed_queries_survive_characters_that_need_encoding(shop: Shop) -> None:
    tagged = shop.state.add_customer("ana+shop@example.org", "Ana María", "Lopes")
    guest = shop.state.add_guest_order("Ana+Shop@example.org", "Ana María", "Lopes")
    assert await shop.connector.locate(Subject(email="ana+shop@example.org")) == [
        Located("customer", str(tagged["id"])), Located("orders", str(guest["id"]))]


async def test_locate_finds_nothing_for_a_stranger(shop: Shop) -> None:
    seed_lea(shop.state)
    assert await shop.connector.locate(Subject(email="nobody@example.org")) == []


def heavy_customer(state: WooState, orders: int) -> dict[str, Any]:
    customer = state.add_customer("heavy.buyer@example.org", "Hélène", "Lourd",
                                  billing={"address_1": "1 place Bellecour", "city": "Lyon", "country": "FR"})
    state.bulk_orders(customer["id"], orders, start=datetime(2020, 1, 1))
    state.add_guest_order("heavy.buyer@example.org", "Hélène", "Lourd")  # one more, as a guest
    state.add_guest_order("not-heavy.buyer@example.org", "Decoy", "Decoy")
    return customer


async def test_export_streams_every_order_once_into_the_store(shop: Shop, store: ExportStore) -> None:
    customer = heavy_customer(shop.state, 1234)
    cursors: list[Mapping[str, Any]] = []
    outcome = await shop.connector.export(ExportJob(REQUEST, Subject(email="heavy.buyer@example.org"),
                                                    store.sink(REQUEST), checkpoint=cursors.append))
    assert outcome.counts == {"exported": 1 + 1235} and outcome.found == 1236
    assert [(d.dataset, d.records, d.provided) for d in outcome.datasets] == [("customer", 1, True),
                                                                              ("orders", 1235, True)]
    stored = list(store.read(REQUEST, "woocommerce", "orders"))
    expected = [o["id"] for o in shop.state.orders_billed_to("heavy.buyer@example.org")]
    assert [o["id"] for o in stored] == expected and len(set(expected)) == 1235
    assert stored[0]["billing"]["city"] == "Lyon" and "_links" not in stored[0]
    assert [c["id"] for c in store.read(REQUEST, "woocommerce", "customer")] == [customer["id"]]
    # a checkpoint for the profile, after each of the 13 pages of her orders, and after each page of the search for
    # orders billed to her address from guests or other accounts: it pages through her own 1,234 orders too (13)
    assert len(cursors) == 1 + 13 + 13
    assert cursors[5]["page"] == 5 and cursors[5]["written"] == {"customer": 1, "orders": 500}
    raw = b"".join(raw_dataset(store, REQUEST, "woocommerce", "orders"))
    assert b"heavy.buyer" not in raw  # encrypted at rest



async def test_a_billed_search_failing_ahead_is_taken_up_where_it_stopped(shop: Shop, store: ExportStore) -> None:
    # The search for orders billed to her address runs beside the listing of her own orders; the network fails it
    # after two pages: its stage searches again from the third page, and every order is exported once, in order.
    heavy_customer(shop.state, 1234)
    searches: list[tuple[int, int]] = []
    search = shop.connector._billed_search

    async def failing_ahead(email: str, own: Any, *, first_page: int = 1, after_id: int = 0) -> AsyncIterator[Any]:
        searches.append((first_page, after_id))
        async for page in search(email, own, first_page=first_page, after_id=after_id):
            yield page
            if len(searches) == 1 and page[0] == 2:
                raise TransientConnectorError("woocommerce: connection failed (ReadError)")

    shop.connector._billed_search = failing_ahead  # type: ignore[method-assign,assignment]
    cursors: list[Mapping[str, Any]] = []
    outcome = await shop.connector.export(ExportJob(REQUEST, Subject(email="heavy.buyer@example.org"),
                                                    store.sink(REQUEST), checkpoint=cursors.append))
    expected = [o["id"] for o in shop.state.orders_billed_to("heavy.buyer@example.org")]
    assert [o["id"] for o in store.read(REQUEST, "woocommerce", "orders")] == expected
    assert outcome.counts == {"exported": 1 + 1235}
    own_ids = sorted(o for o in expected if shop.state.orders[o]["customer_id"] != 0)
    assert searches == [(1, 0), (3, own_ids[199])]  # the first two pages (200 of her orders) were not asked again
    assert [c["page"] for c in cursors if c["stage"] == 1] == list(range(1, 14))


def _order_listing(method: str, path: str, query: Query) -> bool:
    """Her orders and the billed search: the listings an export pages ahead."""
    return path.endswith("/orders") and ("customer" in query or "search" in query)


@pytest.fixture
async def gated_shop() -> AsyncIterator[tuple[Shop, Gatekeeper]]:
    state = WooState(now=lambda: datetime(2025, 6, 1, 12, 0, 0))
    gatekeeper = Gatekeeper(woocommerce_app(state, consumer_key=KEY, consumer_secret=SECRET), _order_listing)
    server = await serve_app(gatekeeper, port=0)
    connector = WooCommerceConnector(consumer_key=KEY, consumer_secret=SECRET, base_url=server.url)
    try:
        yield Shop(state, Faults(), server, connector), gatekeeper
    finally:
        for gate in gatekeeper.gates.values():
            gate.set()
        await connector.aclose()
        await server.stop()


def tasks_asking() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "WooCommerceConnector._ask"]


async def test_an_export_asks_for_pages_ahead_never_more_than_its_bound_and_writes_them_in_order(
        gated_shop: tuple[Shop, Gatekeeper], store: ExportStore) -> None:
    shop, gatekeeper = gated_shop
    gatekeeper.together, gatekeeper.hold = PAGES_AT_ONCE, 0.5  # as if each page took the shop a while
    heavy_customer(shop.state, 1234)
    cursors: list[Mapping[str, Any]] = []
    await shop.connector.export(ExportJob(REQUEST, Subject(email="heavy.buyer@example.org"), store.sink(REQUEST),
                                          checkpoint=cursors.append))
    # Her 13 pages and the 13 of the search beside them: PAGES_AT_ONCE asked at once, across both listings.
    assert gatekeeper.most == PAGES_AT_ONCE
    expected = [o["id"] for o in shop.state.orders_billed_to("heavy.buyer@example.org")]
    assert [o["id"] for o in store.read(REQUEST, "woocommerce", "orders")] == expected
    assert [c["page"] for c in cursors if c["stage"] == 0] == list(range(14))  # 0: her profile


async def test_a_listing_left_after_its_first_page_cancels_the_pages_asked_ahead(
        gated_shop: tuple[Shop, Gatekeeper]) -> None:
    shop, gatekeeper = gated_shop
    customer = heavy_customer(shop.state, 1234)
    async with shop.connector._listing("/orders", {"customer": customer["id"]}) as listing:
        async for page, pages, items in listing:
            assert (page, pages, len(items)) == (1, 13, 100)
            gatekeeper.gates.update({n: asyncio.Event() for n in range(2, 14)})  # the pages ahead stay on their way
            await gatekeeper.until_holding(PAGES_AT_ONCE)
            break
    asking = tasks_asking()
    assert len(asking) == PAGES_AT_ONCE
    await asyncio.wait(asking, timeout=5)
    assert all(t.cancelled() for t in asking)


async def test_a_listing_stops_at_the_total_the_latest_page_tells(gated_shop: tuple[Shop, Gatekeeper]) -> None:
    # Orders deleted while she is listed: the pages asked for when the total was larger are not waited for.
    shop, gatekeeper = gated_shop
    customer = heavy_customer(shop.state, 450)  # 5 pages
    gatekeeper.gates.update({n: asyncio.Event() for n in range(2, 6)})
    seen: list[tuple[int, int]] = []
    async with asyncio.timeout(10), shop.connector._listing("/orders", {"customer": customer["id"]}) as listing:
        async for page, pages, _items in listing:
            seen.append((page, pages))
            if page == 1:
                await gatekeeper.until_holding(PAGES_AT_ONCE)  # pages 2-5 have reached the shop
                for order_id in sorted(o["id"] for o in shop.state.orders_of(customer["id"]))[-300:]:
                    shop.state.delete_order(order_id)
                gatekeeper.gates[2].set()  # pages 3-5 stay held: the listing must end without them
    assert seen == [(1, 5), (2, 2)]
    asking = tasks_asking()
    assert len(asking) == 3
    await asyncio.wait(asking, timeout=5)
    assert all(t.cancelled() for t in asking)


class WorkerKilled(Exception):
    pass


async def test_export_resumes_after_a_crash_with_every_order_exactly_once(shop: Shop, store: ExportStore) -> None:
    heavy_customer(shop.state, 1234)
    subject = Subject(email="heavy.buyer@example.org")
    heartbeats: list[Mapping[str, Any]] = []

    def crash_after_page_5(cursor: Mapping[str, Any]) -> None:
        if cursor["stage"] == 0 and cursor["page"] == 6:
            raise WorkerKilled  # page 6 is written, but its checkpoint never reached Temporal
        heartbeats.append(cursor)

    with pytest.raises(WorkerKilled):
        await shop.connector.export(ExportJob(REQUEST, subject, store.sink(REQUEST),
                                              checkpoint=crash_after_page_5))
    last = heartbeats[-1]
    assert last["page"] == 5 and last["written"]["orders"] == 500
    assert next(d for d in store.datasets(REQUEST) if d.dataset == "orders").records == 600

    shop.state.add_guest_order("heavy.buyer@example.org")  # an order arriving meanwhile is exported too
    resumed: list[Mapping[str, Any]] = []
    outcome = await shop.connector.export(ExportJob(REQUEST, subject, store.sink(REQUEST),
                                                    resume=last, checkpoint=resumed.append))
    assert resumed[0]["page"] == 6  # continued after the checkpoint, not from the start
    ids = [o["id"] for o in store.read(REQUEST, "woocommerce", "orders")]
    expected = [o["id"] for o in shop.state.orders_billed_to("heavy.buyer@example.org")]
    assert ids == expected and len(ids) == len(set(ids)) == 1236
    assert outcome.counts == {"exported": 1237}
    assert [c["email"] for c in store.read(REQUEST, "woocommerce", "customer")] == ["heavy.buyer@example.org"]


async def test_a_fresh_export_drops_records_of_an_attempt_that_never_checkpointed(shop: Shop,
                                                                                 store: ExportStore) -> None:
    seed_lea(shop.state)
    sink = store.sink(REQUEST)
    with store.for_request(REQUEST).open("woocommerce", "orders", provided=True) as stale:
        stale.write({"id": 999999})
    await shop.connector.export(ExportJob(REQUEST, LEA, sink))
    assert len(list(store.read(REQUEST, "woocommerce", "orders"))) == 3


async def test_portability_marks_profile_and_orders_as_provided(shop: Shop, store: ExportStore) -> None:
    seed_lea(shop.state)
    outcome = await shop.connector.export(ExportJob(REQUEST, LEA, store.sink(REQUEST), provided_only=True))
    assert {(d.dataset, d.records, d.provided) for d in outcome.datasets} == {("customer", 1, True),
                                                                              ("orders", 3, True)}
    assert {(d.dataset, d.provided) for d in store.datasets(REQUEST)} == {("customer", True), ("orders", True)}


async def test_erase_deletes_the_account_and_anonymises_orders(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    order_ids = [o["id"] for o in shop.state.orders_billed_to("lea.petit@example.org")]
    decoys = [o for o in shop.state.orders.values() if o["id"] not in order_ids]
    # Another plugin's meta on an order: tagging the order for the operator must not drop it.
    shop.state.orders[order_ids[0]]["meta_data"] = [{"id": 7, "key": "_wc_points_earned", "value": "12"}]
    outcome = await shop.connector.erase(OperationJob(REQUEST, LEA))

    assert lea["id"] not in shop.state.customers
    for order_id in order_ids:
        order = shop.state.orders[order_id]  # kept: accounting record
        assert not any(order["billing"].values()) and not any(order["shipping"].values())
        assert order["customer_note"] == "" and order["total"] and order["line_items"]
        assert order["customer_ip_address"]  # read-only over REST: reported as residual below
        # ...so the order is tagged with the request, the only way left to find it (its email is blank).
        assert {"key": "dsr_erasure", "value": REQUEST} in [
            {"key": m["key"], "value": m["value"]} for m in order["meta_data"]]
    assert {"id": 7, "key": "_wc_points_earned", "value": "12"} in shop.state.orders[order_ids[0]]["meta_data"]
    assert all(o["billing"]["email"] for o in decoys)
    assert not any(m["key"] == "dsr_erasure" for o in decoys for m in o["meta_data"])

    by_action: dict[RecordAction, list[Any]] = {}
    for line in outcome.report:
        by_action.setdefault(line.action, []).append(line)
    assert [r.record_id for r in by_action[RecordAction.DELETED]] == [str(lea["id"])]
    anonymised = {r.record_id: r for r in by_action[RecordAction.ANONYMISED]}
    assert sorted(anonymised) == sorted(str(i) for i in order_ids)
    # Ten years from the close of the order's financial year (31 December), leap day or not.
    leap_day = next(r for r in anonymised.values() if r.note == "" and r.retained_until == date(2034, 12, 31))
    assert "L123-22" in leap_day.legal_basis
    [residual] = by_action[RecordAction.RESIDUAL]
    assert residual.fields == ["customer_ip_address", "customer_user_agent"]
    assert "dsr_erasure" in residual.note and "wp_wc_orders" in residual.note
    assert outcome.counts == {"anonymised": 3, "residual": 1, "deleted": 1}
    text = repr(outcome).lower()
    assert "lea.petit" not in text and "petit" not in text and "nantes" not in text

    # verification (what the fan-out activity does): locating again finds nothing undeclared
    found_again = await shop.connector.locate(LEA)
    assert found_again == [] and unexpected_remains(outcome, found_again) == []


def order_billed_from_another_account(state: WooState) -> tuple[dict[str, Any], dict[str, Any]]:
    """Marc's account, an order he placed for Léa: billed to her (her address typed with capitals), shipped
    to him."""
    marc = state.add_customer("marc.leblanc@example.org", "Marc", "Leblanc")
    order = state.add_order(customer_id=marc["id"], billing={
        "first_name": "Léa", "last_name": "Petit", "email": "Lea.Petit@example.org", "address_1": "12 rue des Lilas",
        "city": "Nantes", "country": "FR", "phone": "+33 6 12 34 56 78"}, shipping={
        "first_name": "Marc", "last_name": "Leblanc", "address_1": "4 quai Nord", "city": "Brest", "country": "FR"},
        customer_note="Gift for Léa")
    return marc, order


async def test_orders_placed_from_another_account_with_the_billing_email_are_found_and_exported(
        shop: Shop, store: ExportStore) -> None:
    lea = seed_lea(shop.state)
    _, order = order_billed_from_another_account(shop.state)
    found = await shop.connector.locate(LEA)
    assert Located("orders", str(order["id"])) in found
    assert Located("customer", str(lea["id"])) in found and len(found) == 1 + 2 + 1 + 1  # the decoys are not
    outcome = await shop.connector.export(ExportJob(REQUEST, LEA, store.sink(REQUEST)))
    stored = {o["id"]: o for o in store.read(REQUEST, "woocommerce", "orders")}
    assert sorted(stored) == sorted(o["id"] for o in shop.state.orders_billed_to("lea.petit@example.org"))
    assert stored[order["id"]]["billing"]["city"] == "Nantes" and outcome.counts == {"exported": 1 + 4}


@pytest.mark.parametrize("retention", [True, False])
async def test_erasure_anonymises_the_billing_of_another_accounts_order_and_leaves_it_with_that_account(
        shop: Shop, retention: bool) -> None:
    seed_lea(shop.state)
    marc, order = order_billed_from_another_account(shop.state)
    if not retention:
        shop.connector.retention = ()
    job = OperationJob(REQUEST, LEA)
    outcome = await shop.connector.erase(job)
    kept = shop.state.orders[order["id"]]  # never deleted, even where Léa's own orders are
    assert not any(kept["billing"].values())
    assert kept["shipping"]["first_name"] == "Marc" and kept["customer_note"] == "Gift for Léa"
    assert kept["customer_id"] == marc["id"] and marc["id"] in shop.state.customers
    [line] = [r for r in outcome.report if r.record_id == str(order["id"])]
    assert line.action == RecordAction.ANONYMISED and line.note.startswith("placed from another customer account")
    assert ("L123-22" in (line.legal_basis or "")) is retention
    assert any(n.startswith("1 order(s) placed from other customer accounts") for n in outcome.notes)
    # Its IP address and user agent are Marc's: the residual line counts only her own and her guest orders.
    residual = [r.note for r in outcome.report if r.action == RecordAction.RESIDUAL]
    assert [n.split(":")[0] for n in residual] == (["3 anonymised order(s)"] if retention else [])
    found_again = await shop.connector.locate(LEA)
    assert found_again == [] and unexpected_remains(outcome, found_again) == []
    again = await shop.connector.erase(job)  # a retry (its journal): the same line, nothing redone
    assert [r for r in again.report if r.record_id == str(order["id"])] == [line]


async def test_repeated_erase_is_idempotent(shop: Shop) -> None:
    seed_lea(shop.state)
    await shop.connector.erase(OperationJob(REQUEST, LEA))
    again = await shop.connector.erase(OperationJob(REQUEST, LEA))
    assert again.counts == {"already_gone": 1}
    assert [(r.dataset, r.action) for r in again.report] == [("customer", RecordAction.ALREADY_GONE)]


async def test_erase_retried_after_a_partial_attempt_reports_what_was_already_done(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    first, second = shop.state.orders_of(lea["id"])
    for part in ("billing", "shipping"):  # an earlier attempt anonymised one order, then the worker died
        first[part] = dict.fromkeys(first[part], "")
    first["customer_note"] = ""
    outcome = await shop.connector.erase(OperationJob(REQUEST, LEA))
    lines = {r.record_id: r for r in outcome.report if r.action == RecordAction.ANONYMISED}
    assert lines[str(first["id"])].note == "already anonymised" and lines[str(second["id"])].note == ""
    assert lines[str(first["id"])].retained_until == date(2034, 12, 31)
    assert outcome.counts["anonymised"] == 3 and outcome.counts["deleted"] == 1


async def test_erase_deletes_orders_when_no_retention_rule_covers_them(shop: Shop) -> None:
    seed_lea(shop.state)
    connector = shop.connect(retention=())
    try:
        outcome = await connector.erase(OperationJob(REQUEST, LEA))
    finally:
        await connector.aclose()
    assert outcome.counts == {"deleted": 4}
    assert shop.state.orders_billed_to("lea.petit@example.org") == []


async def test_a_large_erasure_reports_orders_by_month_to_keep_the_outcome_small(shop: Shop) -> None:
    seed_lea(shop.state)
    connector = shop.connect(itemise_up_to=2)
    try:
        outcome = await connector.erase(OperationJob(REQUEST, LEA))
    finally:
        await connector.aclose()
    grouped = [(r.record_id, r.retained_until, r.note) for r in outcome.report if r.action == RecordAction.ANONYMISED]
    assert grouped == [("*", date(2033, 12, 31), "1 order(s) placed in 2023-05"),
                       ("*", date(2034, 12, 31), "1 order(s) placed in 2024-02"),
                       ("*", date(2035, 12, 31), "1 order(s) placed in 2025-01")]
    assert outcome.counts == {"anonymised": 3, "residual": 1, "deleted": 1}
    assert await shop.connector.locate(LEA) == []


async def test_rectify_changes_only_differing_fields_and_reports_names_not_values(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    changes = {"last_name": "Martin", "city": "Rennes", "postcode": "35000", "phone": "+33 6 12 34 56 78"}
    outcome = await shop.connector.rectify(OperationJob(REQUEST, LEA, changes=changes))
    customer = shop.state.customers[lea["id"]]
    assert customer["last_name"] == customer["billing"]["last_name"] == customer["shipping"]["last_name"] == "Martin"
    assert customer["billing"]["city"] == customer["shipping"]["city"] == "Rennes"
    assert customer["billing"]["phone"] == "+33 6 12 34 56 78"  # unchanged value
    [line] = outcome.report
    assert line.action == RecordAction.CHANGED and line.fields == ["city", "last_name", "postcode"]
    assert "Martin" not in repr(outcome) and "Rennes" not in repr(outcome)
    # orders are accounting records: not rewritten
    assert all(o["billing"]["city"] == "Nantes" for o in shop.state.orders_of(lea["id"]))

    again = await shop.connector.rectify(OperationJob(REQUEST, LEA, changes=changes))
    assert [r.action for r in again.report] == [RecordAction.UNCHANGED] and again.counts == {"unchanged": 1}


async def test_already_up_to_date_only_for_fields_the_account_holds_exactly(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    equal = await shop.connector.rectify(OperationJob(REQUEST, LEA, changes={"city": "Nantes", "last_name": "Petit"}))
    assert [(r.action, r.fields) for r in equal.report] == [(RecordAction.UNCHANGED, ["city", "last_name"])]
    # Spaces and case count: a value differing only by them is corrected.
    spaced = await shop.connector.rectify(OperationJob(REQUEST + "2", LEA, changes={"city": "Nantes "}))
    cased = await shop.connector.rectify(OperationJob(REQUEST + "3", LEA, changes={"last_name": "PETIT"}))
    assert [(r.action, r.fields) for r in (*spaced.report, *cased.report)] == [
        (RecordAction.CHANGED, ["city"]), (RecordAction.CHANGED, ["last_name"])]
    # A field the account does not hold at all is neither corrected nor "already up to date".
    for part in ("billing", "shipping"):
        shop.state.customers[lea["id"]][part].pop("phone", None)
    missing = await shop.connector.rectify(OperationJob(REQUEST + "4", LEA, changes={"phone": "+33 6 00 00 00 00"}))
    assert missing.report == []


async def test_rectifying_the_email_is_idempotent(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    job = OperationJob(REQUEST, LEA, changes={"email": "lea.martin@example.org"})
    first = await shop.connector.rectify(job)
    assert first.report[0].fields == ["email"]
    customer = shop.state.customers[lea["id"]]
    assert customer["email"] == customer["billing"]["email"] == "lea.martin@example.org"
    assert await shop.connector.rectify(job) == first  # a retry, from its journal
    # Without the journal: the old address finds nothing any more, the new one does.
    again = await shop.connector.rectify(OperationJob(REQUEST, LEA, changes=job.changes))
    assert [(r.record_id, r.action) for r in again.report] == [(str(lea["id"]), RecordAction.UNCHANGED)]


async def test_wrong_consumer_secret_is_permanent(shop: Shop) -> None:
    connector = shop.connect(consumer_secret="cs_wrong")
    try:
        with pytest.raises(PermanentConnectorError, match="check the credentials of connector woocommerce") as err:
            await connector.locate(LEA)
    finally:
        await connector.aclose()
    assert "woocommerce_rest_authentication_error" in str(err.value) and "lea" not in str(err.value).lower()


async def test_injected_429_is_transient_with_retry_after(shop: Shop) -> None:
    shop.faults.statuses.append(429)
    shop.faults.retry_after = "17"
    with pytest.raises(TransientConnectorError) as err:
        await shop.connector.locate(LEA)
    assert err.value.retry_after == 17


@pytest.mark.slow
async def test_the_shops_own_rate_limit_is_waited_out_and_the_connector_limit_avoids_it() -> None:
    shop = await start_shop(rate_limit=(5, 1.0))
    try:
        seed_lea(shop.state)
        calls = len(shop.faults.log)
        assert len(await shop.connector.locate(LEA)) == 4
        per_locate = len(shop.faults.log) - calls
        # Without a limit of its own, the connector bursts into the shop's 429s (Retry-After under a second),
        # which a read waits out in place: every locate still answers, with more calls than it needs.
        calls = len(shop.faults.log)
        for _ in range(3):
            assert len(await shop.connector.locate(LEA)) == 4
        assert len(shop.faults.log) - calls > 3 * per_locate
        polite = shop.connect(rate_limit=RateLimiter(4, 1.0))
        try:
            await asyncio.sleep(1.0)
            calls = len(shop.faults.log)
            for _ in range(3):
                assert len(await polite.locate(LEA)) == 4
            assert len(shop.faults.log) - calls == 3 * per_locate  # never throttled
        finally:
            await polite.aclose()
    finally:
        await shop.connector.aclose()
        await shop.server.stop()


async def test_a_429_that_outlasts_the_tries_is_transient_with_its_retry_after(shop: Shop) -> None:
    shop.faults.statuses.extend([429] * READ_TRIES)
    shop.faults.retry_after = "0"
    with pytest.raises(TransientConnectorError, match="HTTP 429") as err:
        await shop.connector.locate(LEA)
    assert err.value.retry_after == 0
    assert len(shop.faults.log) == READ_TRIES


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(shop: Shop, status: int) -> None:
    shop.faults.statuses.extend([status] * READ_TRIES)  # the first call is a read: tried READ_TRIES times
    with pytest.raises(TransientConnectorError, match=f"HTTP {status}"):
        await shop.connector.erase(OperationJob(REQUEST, LEA))


async def test_a_dropped_connection_is_transient(shop: Shop) -> None:
    shop.faults.drop_next = READ_TRIES
    with pytest.raises(TransientConnectorError, match="connection failed"):
        await shop.connector.locate(LEA)
    assert await shop.connector.locate(Subject(email="nobody@example.org")) == []  # and then it works again


async def test_one_dropped_read_is_retried_in_place(shop: Shop) -> None:
    seed_lea(shop.state)
    shop.faults.drop_next = READ_TRIES - 1
    assert len(await shop.connector.locate(LEA)) == 4


async def test_a_slow_shop_times_out_as_transient(shop: Shop) -> None:
    connector = shop.connect(timeout=0.2)
    shop.faults.delay_seconds = 0.5
    try:
        with pytest.raises(TransientConnectorError, match="timed out"):
            await connector.check()
    finally:
        shop.faults.delay_seconds = 0.0
        await connector.aclose()


async def test_a_base_url_that_is_not_a_shop_is_permanent(shop: Shop) -> None:
    connector = WooCommerceConnector(consumer_key=KEY, consumer_secret=SECRET, base_url=shop.server.url + "/blog")
    try:
        with pytest.raises(PermanentConnectorError, match="rest_no_route"):
            await connector.check()
    finally:
        await connector.aclose()


async def test_a_read_whose_answer_was_lost_is_signed_anew_when_tried_again(shop: Shop) -> None:
    # The shop took the request (and its OAuth nonce) before the answer was lost: the same signed request sent
    # again is a replay it refuses (401), so each try carries a fresh nonce and timestamp.
    seed_lea(shop.state)
    shop.faults.lose_answers.append("GET /wp-json/wc/v3/customers")
    assert len(await shop.connector.locate(LEA)) == 4
    assert shop.faults.log.count("GET /wp-json/wc/v3/customers") >= 2


# --- restriction (Art. 18) ---------------------------------------------------------------------------------


async def test_restrict_adds_the_customer_meta_and_lifting_empties_it(shop: Shop) -> None:
    lea = seed_lea(shop.state)
    shop.state.customers[lea["id"]]["meta_data"].append({"id": 7, "key": "loyalty_tier", "value": "gold"})
    outcome = await shop.connector.restrict(OperationJob(REQUEST, LEA))
    assert [(r.record_id, r.action, r.fields) for r in outcome.report] == [
        (str(lea["id"]), RecordAction.RESTRICTED, ["meta_data.dsr_restricted"])]
    meta = {m["key"]: m["value"] for m in shop.state.customers[lea["id"]]["meta_data"]}
    assert meta == {"loyalty_tier": "gold", "dsr_restricted": REQUEST}  # other plugins' meta untouched
    assert (await shop.connector.restrict(OperationJob(REQUEST, LEA))).counts == {"unchanged": 1}
    orders_before = [dict(o) for o in shop.state.orders_of(lea["id"])]

    lifted = await shop.connector.lift_restriction(OperationJob(REQUEST, LEA))
    assert [(r.record_id, r.action) for r in lifted.report] == [(str(lea["id"]), RecordAction.LIFTED)]
    meta = {m["key"]: m["value"] for m in shop.state.customers[lea["id"]]["meta_data"]}
    assert meta == {"loyalty_tier": "gold", "dsr_restricted": ""}  # the REST API cannot delete a meta: emptied
    assert (await shop.connector.lift_restriction(OperationJob(REQUEST, LEA))).counts == {"unchanged": 1}
    assert [dict(o) for o in shop.state.orders_of(lea["id"])] == orders_before  # orders only kept

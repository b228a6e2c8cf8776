"""The Stripe connector over real HTTP: against the Stripe sandbox (sandbox.stripe, on 127.0.0.1) for locating
by search and by listing, access, portability, erasure and verification, rectification; against tiny local
servers for scripted failures (429/5xx, refusals). Every request and sandbox answer is checked against Stripe's
OpenAPI description (tests/apispec)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.base import (
    Connector,
    DatasetWriter,
    ExportJob,
    OperationJob,
    PermanentConnectorError,
    RetentionRule,
    TransientConnectorError,
    unexpected_remains,
)
from connectors.http import READ_TRIES, RateLimiter
from connectors.stripe import DATASETS, DATASETS_AT_ONCE, GUEST_CASE, LEGAL_BASIS, StripeConnector
from dsr.domain.model import RecordAction, Subject
from dsr.web.serve import serve_app
from sandbox.demo import seed_stripe
from sandbox.faults import Faults
from sandbox.stripe import StripeSandbox, StripeState, seed_customer, stripe_app
from tests.apispec import SpecCheck, Tally, stripe_contract
from tests.gatekeeper import Gatekeeper, Query
from tests.harness import (
    counted_beyond_the_store,
    file_exports,
    free_port,
    raw_dataset,
    stored_slowly,
    sync_http_client,
)

KEY = "sk_test_dsr_sandbox"
STORE = file_exports(Path(tempfile.mkdtemp(prefix="dsr-stripe-exports-")))


@pytest.fixture(scope="module")
def server() -> Iterator[StripeSandbox]:
    with StripeSandbox().start() as running:  # in memory, 127.0.0.1 only
        yield running


@pytest.fixture(scope="module")
async def checked(server: StripeSandbox) -> AsyncIterator[tuple[str, Tally]]:
    """The same sandbox behind middleware checking every request and answer against Stripe's OpenAPI
    description: the connectors talk to this URL (the seeding helpers go straight to the sandbox)."""
    app = SpecCheck(server.app, stripe_contract())
    running = await serve_app(app, host="127.0.0.1", port=0)
    try:
        yield running.url, app.tally
    finally:
        await running.stop()


@pytest.fixture
async def stripe_url(checked: tuple[str, Tally]) -> AsyncIterator[str]:
    url, tally = checked
    before = len(tally.violations)
    yield url
    tally.assert_clean(since=before)  # this test's traffic fits Stripe's description (or a listed exception)


@pytest.fixture
async def stripe_(server: StripeSandbox, stripe_url: str) -> AsyncIterator[StripeConnector]:
    connector = StripeConnector(api_key=server.api_key, base_url=stripe_url, rate_limit=RateLimiter(1000, 1.0))
    yield connector
    await connector.aclose()


def unique_email(local: str = "Lea.Petit") -> str:
    return f"{local}+{uuid.uuid4().hex[:10]}@Example.org"


def request_id() -> str:
    return f"dsr-2026-11-{uuid.uuid4().hex[:6]}"


def api(server: StripeSandbox) -> httpx.Client:
    return sync_http_client(base_url=server.url, auth=(server.api_key, ""), timeout=10)


def charge_ids(server: StripeSandbox, customer: str, listing: str = "/v1/charges") -> list[str]:
    """The customer's charges (or what ``listing`` lists by customer), in the order Stripe lists them."""
    ids: list[str] = []
    after: str | None = None
    with api(server) as client:
        while True:
            params: dict[str, str | int] = {"customer": customer, "limit": 100,
                                            **({"starting_after": after} if after else {})}
            page = client.get(listing, params=params).json()
            ids += [c["id"] for c in page["data"]]
            if not page["has_more"]:
                return ids
            after = ids[-1]


def test_implements_the_connector_protocol() -> None:
    assert isinstance(StripeConnector(api_key="sk_test_x", base_url="http://127.0.0.1:1"), Connector)


async def test_check_reports_auth_ok(stripe_: StripeConnector) -> None:
    assert await stripe_.check() == "auth OK"


async def test_wrong_api_key_asks_to_check_the_credentials(stripe_url: str) -> None:
    connector = StripeConnector("stripe-eu", api_key="not-a-secret-key", base_url=stripe_url)
    try:
        with pytest.raises(PermanentConnectorError, match="check the credentials of connector stripe-eu"):
            await connector.check()
        with pytest.raises(PermanentConnectorError, match="check the credentials"):
            await connector.locate(Subject(email="lea@example.org"))
    finally:
        await connector.aclose()


# --- locate ---------------------------------------------------------------------------------------


async def test_locate_matches_the_email_case_insensitively(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()  # stored with capitals
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit")
    await seed_customer(server.url, server.api_key, email=unique_email("someone.else"), name="Other")
    for written in (email, email.lower(), email.upper()):
        located = await stripe_.locate(Subject(email=written))
        assert [(loc.dataset, loc.record_id) for loc in located] == [("customer", customer)]


@contextlib.asynccontextmanager
async def another_sandbox(state: StripeState, *, search: bool = True) -> AsyncIterator[StripeConnector]:
    """A connector to a sandbox of its own over ``state`` (e.g. without search, or with a search delay),
    checked against Stripe's description like the module's."""
    app = SpecCheck(stripe_app(state, api_key=KEY, search=search), stripe_contract())
    running = await serve_app(app, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=KEY, base_url=running.url)
    try:
        yield connector
    finally:
        await connector.aclose()
        await running.stop()
    app.tally.assert_clean()


def searched(state: StripeState) -> int:
    return sum(1 for method, path in state.requests if path == "/v1/customers/search")


def scanned(state: StripeState) -> int:
    """Customer listings without an email filter: the scan a server without search gets."""
    return state.scans


def demo_stripe() -> tuple[StripeState, str]:
    """The demo's Stripe, seeded as ``dsr up --demo`` seeds it, and the id of Lucas Petit, registered as
    ``Lucas.Petit@example.org``."""
    state = StripeState(search_delay=60)  # as the demo's (DSR_DEMO_STRIPE_SEARCH_DELAY); seeded an hour back
    seed_stripe(state)
    [lucas] = [c["id"] for c in state.objects["customer"].values() if c["email"] == "Lucas.Petit@example.org"]
    return state, lucas


async def test_the_demo_customer_registered_with_capitals_is_found_by_search() -> None:
    state, lucas = demo_stripe()
    async with another_sandbox(state) as connector:
        rid = request_id()
        outcome = await connector.export(ExportJob(rid, Subject(email="lucas.petit@example.org"),
                                                   STORE.sink(rid)))
    assert [r["id"] for r in STORE.read(rid, "stripe", "customer")] == [lucas]
    assert {d.dataset: d.records for d in outcome.datasets}["charges"] == 1
    assert searched(state) == 1 and scanned(state) == 0  # found by the search, no scan
    assert not any("search" in note for note in outcome.notes)


async def test_without_search_the_listing_path_finds_it_and_says_so() -> None:
    state, lucas = demo_stripe()
    async with another_sandbox(state, search=False) as connector:
        outcome = await connector.export(ExportJob(rid := request_id(), Subject(email="lucas.petit@example.org"),
                                                   STORE.sink(rid)))
        assert [r["id"] for r in STORE.read(rid, "stripe", "customer")] == [lucas]
        assert "customer search: not supported by this server" in outcome.notes
        assert any("by listing every customer instead" in note for note in outcome.notes)
        assert searched(state) == 1 and scanned(state) >= 1  # asked once, then remembered as unsupported
        # Against api.stripe.com a scan is never made: only the exact lookups remain, and the notes say what
        # that misses.
        connector._scan_without_search = False
        outcome = await connector.export(ExportJob(rid := request_id(), Subject(email="lucas.petit@example.org"),
                                                   STORE.sink(rid)))
        assert outcome.counts == {"exported": 0}
        assert any("exact email only" in note and "other capitals" in note for note in outcome.notes)
        assert [loc.record_id for loc in await connector.locate(Subject(email="Lucas.Petit@example.org"))] == [
            lucas]  # as registered: the exact lookup finds it
        lower = f"lea.petit+{uuid.uuid4().hex[:8]}@example.org"
        other = state.seed_customer(lower, "Léa Petit")
        assert [loc.record_id for loc in await connector.locate(Subject(email=lower.upper()))] == [other]


async def test_search_and_listing_follow_their_pages() -> None:
    """More than a page of customers under one address (a shop that creates one per guest checkout): the
    search's ``next_page`` and the listing's ``starting_after`` are both followed to the end."""
    state = StripeState()
    made = [state.add_customer("Many.Times@example.org", f"Guest {i}") for i in range(130)]
    made += [state.add_customer("many.times@example.org", "Lower") for _ in range(3)]
    async with another_sandbox(state) as connector:
        located = await connector.locate(Subject(email="many.times@example.org"))
    assert sorted(loc.record_id for loc in located) == sorted(made)
    assert searched(state) == 2  # two pages of 100


async def test_search_lags_and_the_connector_says_so() -> None:
    """Stripe's search is eventually consistent: the sandbox's search sees customers as they were a minute
    ago. The exact lookups made beside it still find an exact address; a customer registered with other
    capitals is found once the index has caught up, and until then the outcome says the search found no one."""
    clock = [1_800_000_000.0]
    state = StripeState(search_delay=60, now=lambda: clock[0])
    registered = "Lucas.Petit@example.org"
    customer = state.seed_customer(registered, "Lucas Petit", charges=1)
    async with another_sandbox(state) as connector:
        rid = request_id()
        outcome = await connector.export(ExportJob(rid, Subject(email="lucas.petit@example.org"),
                                                   STORE.sink(rid)))
        assert outcome.counts == {"exported": 0}
        assert any(note.startswith("customer search found no one") and "a minute" in note
                   for note in outcome.notes)
        rid = request_id()
        cursors: list[Mapping[str, Any]] = []
        outcome = await connector.export(ExportJob(rid, Subject(email=registered), STORE.sink(rid),
                                                   checkpoint=cursors.append))
        assert [r["id"] for r in STORE.read(rid, "stripe", "customer")] == [customer]  # the exact lookup
        assert any("had not yet indexed 1 customer(s)" in note for note in outcome.notes)
        assert not any("@" in note or "lucas" in note.lower() for note in outcome.notes)  # no one named
        # A retry resumed from a checkpoint does not look her up again, and still says what the lookup found.
        resumed = await connector.export(ExportJob(rid, Subject(email=registered), STORE.sink(rid),
                                                   resume=cursors[0]))
        assert any("had not yet indexed 1 customer(s)" in note for note in resumed.notes)
        assert "lucas" not in repr(cursors).lower()
        clock[0] += 61  # the index has caught up
        assert [loc.record_id for loc in await connector.locate(Subject(email="lucas.petit@example.org"))] == [
            customer]
        # A deletion reaches the index a minute late too: the hit is read back, and the stub says deleted.
        state.delete_customer(customer)
        assert state.search_view(customer) is not None
        assert await connector.locate(Subject(email="lucas.petit@example.org")) == []


async def test_locate_finds_nothing_for_an_unknown_address(stripe_: StripeConnector) -> None:
    assert await stripe_.locate(Subject(email=unique_email("nobody"))) == []


# --- export ---------------------------------------------------------------------------------------


async def test_export_streams_every_record_once_into_the_encrypted_store(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=250,
                                   subscription=True)
    rid = request_id()
    cursors: list[Mapping[str, Any]] = []
    outcome = await stripe_.export(ExportJob(rid, Subject(email=email.lower()), STORE.sink(rid),
                                             checkpoint=cursors.append))
    expected = charge_ids(server, customer)
    assert len(expected) == 251  # 250 and the subscription's first invoice
    exported = [r["id"] for r in STORE.read(rid, "stripe", "charges")]
    assert sorted(exported) == sorted(expected) and len(set(exported)) == 251
    by_name = {d.dataset: d for d in outcome.datasets}
    assert {name: d.records for name, d in by_name.items()} == {
        "customer": 1, "charges": 251, "payment_intents": 251, "invoices": 1, "credit_notes": 0, "quotes": 0,
        "subscriptions": 1, "payment_methods": 1, "setup_intents": 0, "checkout_sessions": 0,
    }
    assert by_name["customer"].provided and by_name["payment_methods"].provided
    assert not by_name["invoices"].provided and not by_name["payment_intents"].provided
    assert outcome.counts == {"exported": 506}
    assert not any("not supported" in note for note in outcome.notes)  # every endpoint answered
    assert not any("@" in note for note in outcome.notes)
    charge = next(iter(STORE.read(rid, "stripe", "charges")))
    assert charge["billing_details"]["name"] == "Léa Petit" and charge["shipping"]["address"]["city"] == "Lyon"
    [record] = STORE.read(rid, "stripe", "customer")
    assert record["id"] == customer and record["shipping"]["address"]["city"] == "Lyon"
    # a checkpoint after every page, holding ids and counts only
    assert len(cursors) >= 4 and cursors[-1]["written"]["charges"] == 251
    assert email.lower() not in repr(cursors).lower()
    raw = b"".join(raw_dataset(STORE, rid, "stripe", "customer"))
    assert b"Lea.Petit" not in raw and b"Lyon" not in raw


def lanes_running() -> list[asyncio.Task[Any]]:
    """The datasets' lanes still running (``connectors.base.side_by_side``)."""
    lanes = "side_by_side.<locals>.gated"
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == lanes]


def _dataset_listing(method: str, path: str, query: Query) -> bool:
    """The export's calls for her datasets: by customer, her profile, guest sessions (not the lookups finding her)."""
    return method == "GET" and ("customer" in query or "customer_details[email]" in query
                                or path.startswith("/v1/customers/cus_"))


@contextlib.asynccontextmanager
async def behind_a_gatekeeper(server: StripeSandbox, app: Any, watched: Callable[[str, str, Query], bool], *,
                              together: int, hold: float) -> AsyncIterator[tuple[StripeConnector, Gatekeeper]]:
    """A connector to ``app`` (the sandbox's, or one wrapping it) behind a :class:`Gatekeeper` holding the ``watched``
    calls until ``together`` are in (or ``hold`` seconds passed): a vendor slow enough for calls made side by side
    to overlap. Both closed on the way out."""
    gatekeeper = Gatekeeper(app, watched)
    gatekeeper.together, gatekeeper.hold = together, hold
    running = await serve_app(gatekeeper, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=server.api_key, base_url=running.url, rate_limit=RateLimiter(1000, 1.0))
    try:
        yield connector, gatekeeper
    finally:
        await connector.aclose()
        await running.stop()


async def test_an_export_pages_its_datasets_side_by_side_never_more_than_its_bound(server: StripeSandbox) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=250)
    rid = request_id()
    cursors: list[Mapping[str, Any]] = []
    # as if each call took Stripe a while
    async with behind_a_gatekeeper(server, server.app, _dataset_listing, together=DATASETS_AT_ONCE,
                                   hold=0.3) as (connector, gatekeeper):
        outcome = await connector.export(ExportJob(rid, Subject(email=email), STORE.sink(rid),
                                                   checkpoint=cursors.append))
    assert gatekeeper.most == DATASETS_AT_ONCE
    assert not lanes_running()
    # each dataset in its listing's order, once
    assert [r["id"] for r in STORE.read(rid, "stripe", "charges")] == charge_ids(server, customer)
    intents = charge_ids(server, customer, "/v1/payment_intents")
    assert [r["id"] for r in STORE.read(rid, "stripe", "payment_intents")] == intents and len(intents) == 250
    assert {d.dataset: d.records for d in outcome.datasets}["charges"] == 250
    # side by side: the payment intents' first page was checkpointed before the charges' last one
    charges_moved = [i for i, c in enumerate(cursors) if c["written"]["charges"] != (cursors[i - 1]["written"][
        "charges"] if i else 0)]
    intents_moved = [i for i, c in enumerate(cursors) if c["written"]["payment_intents"] != (cursors[i - 1][
        "written"]["payment_intents"] if i else 0)]
    assert len(charges_moved) == len(intents_moved) == 3 and intents_moved[0] < charges_moved[-1]
    # each dataset's place in the cursor only moves on
    for dataset in DATASETS:
        assert [c["written"][dataset] for c in cursors] == sorted(c["written"][dataset] for c in cursors)
    assert cursors[-1]["lanes"]["charges"] == [1, None]  # her one listing, done
    assert email.lower() not in repr(cursors).lower()


def _lookup(method: str, path: str, query: Query) -> bool:
    """The calls finding her: the search and the exact listings by email."""
    return path == "/v1/customers/search" or (path == "/v1/customers" and "email" in query)


async def test_the_search_and_both_exact_lookups_go_at_once(server: StripeSandbox) -> None:
    email = unique_email()  # with capitals: listed as given and lower-cased
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=1)
    async with behind_a_gatekeeper(server, server.app, _lookup, together=3, hold=0.5) as (connector, gatekeeper):
        located = await connector.locate(Subject(email=email))
    assert gatekeeper.most == 3
    assert [item.record_id for item in located if item.dataset == "customer"] == [customer]


@pytest.mark.slow
async def test_a_crashed_export_resumes_without_duplicates(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=250)
    rid = request_id()
    cursors: list[Mapping[str, Any]] = []

    def dies_after_the_second_charges_page(cursor: Mapping[str, Any]) -> None:
        cursors.append(dict(cursor))
        if cursor["written"].get("charges", 0) >= 200:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid),
                                       checkpoint=dies_after_the_second_charges_page))
    assert not lanes_running()  # the datasets paged beside the one that failed were cancelled
    # The heartbeat of the last page never reached Temporal: resume from the one before it, whose
    # 100 charges are followed in the file by 100 more the retry must drop. (A dataset paged beside may have
    # checkpointed once more before it was cancelled: the "crash" here is an exception, not a dead process.)
    fatal = next(i for i, cursor in enumerate(cursors) if cursor["written"].get("charges", 0) >= 200)
    last_heartbeat = cursors[fatal - 1]
    assert last_heartbeat["written"]["charges"] == 100
    assert sum(1 for _ in STORE.read(rid, "stripe", "charges")) == 200
    outcome = await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid),
                                             resume=last_heartbeat))
    exported = [r["id"] for r in STORE.read(rid, "stripe", "charges")]
    assert len(exported) == len(set(exported)) == 250
    assert set(exported) == set(charge_ids(server, customer))
    # the payment intents, paged beside the charges, resumed from their own place
    intents = [r["id"] for r in STORE.read(rid, "stripe", "payment_intents")]
    assert intents == charge_ids(server, customer, "/v1/payment_intents") and len(intents) == 250
    assert [r["id"] for r in STORE.read(rid, "stripe", "customer")] == [customer]
    assert {d.dataset: d.records for d in outcome.datasets}["charges"] == 250


@pytest.mark.slow
async def test_a_fresh_export_replaces_what_a_crashed_attempt_left(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=120)
    rid = request_id()

    def dies(cursor: Mapping[str, Any]) -> None:
        if cursor["written"].get("charges"):
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError):
        await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), checkpoint=dies))
    await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid)))  # no cursor survived
    exported = [r["id"] for r in STORE.read(rid, "stripe", "charges")]
    assert len(exported) == len(set(exported)) == 120


async def test_a_customer_deleted_before_a_resumed_export_is_skipped_with_a_note(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=3)
    with api(server) as client:
        assert client.delete(f"/v1/customers/{customer}").status_code == 200
    rid = request_id()
    cursor = {"v": 3, "provided_only": False, "customers": [customer], "lanes": {d: [0, None] for d in DATASETS},
              "written": dict.fromkeys(DATASETS, 0)}
    outcome = await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), resume=cursor))
    # The customer is gone; its payments stay in Stripe (accounting records), so they are still the subject's data.
    counts = {d.dataset: d.records for d in outcome.datasets}
    assert counts["customer"] == 0 and counts["charges"] == counts["payment_intents"] == 3
    assert any("deleted in Stripe while this request ran" in note for note in outcome.notes)


async def test_no_checkpoint_counts_a_record_not_yet_stored(
        server: StripeSandbox, stripe_: StripeConnector, tmp_path: Path) -> None:
    # The charges' chunks take a while to store; the datasets paged beside them checkpoint meanwhile, and what
    # their cursors count of the charges must already be on the store (a retry on another machine trusts it).
    store = file_exports(tmp_path)
    stored_slowly(store, "charges")
    email = unique_email()
    await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=250)
    rid = request_id()
    behind, checkpoint = counted_beyond_the_store(store, rid)
    outcome = await stripe_.export(ExportJob(rid, Subject(email=email), store.sink(rid), checkpoint=checkpoint))
    assert {d.dataset: d.records for d in outcome.datasets}["charges"] == 250
    assert behind == []


async def test_a_cursor_without_a_dataset_s_place_starts_over_rather_than_export_twice(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=150)
    rid = request_id()
    cursors: list[Mapping[str, Any]] = []
    await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), checkpoint=cursors.append))
    first_page = next(c for c in cursors if c["written"]["charges"] == 100)
    without_place = {**first_page, "lanes": {d: p for d, p in first_page["lanes"].items() if d != "charges"}}
    without_count = {**first_page, "written": {d: n for d, n in first_page["written"].items() if d != "charges"}}
    for damaged in (without_place, without_count):
        outcome = await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), resume=damaged))
        assert [r["id"] for r in STORE.read(rid, "stripe", "charges")] == charge_ids(server, customer)
        assert {d.dataset: d.records for d in outcome.datasets}["charges"] == 150


async def test_portability_exports_what_the_subject_provided(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=3, subscription=True)
    rid = request_id()
    outcome = await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), provided_only=True))
    assert {d.dataset for d in outcome.datasets if d.provided} == {
        "customer", "charges", "subscriptions", "payment_methods", "checkout_sessions"}
    # Invoices and payment intents are Stripe's records, not the subject's: counted for the reply, not exported.
    excluded = {d.dataset: d.records for d in outcome.datasets if not d.provided}
    assert set(excluded) == {"invoices", "payment_intents", "credit_notes", "quotes", "setup_intents"}
    assert excluded["invoices"] >= 1 and excluded["payment_intents"] == 4
    assert {d.dataset for d in STORE.datasets(rid)} == {
        "customer", "charges", "subscriptions", "payment_methods", "checkout_sessions"}
    [method] = STORE.read(rid, "stripe", "payment_methods")
    assert method["billing_details"]["address"]["city"] == "Lyon" and method["card"]["last4"] == "4242"
    charge = next(iter(STORE.read(rid, "stripe", "charges")))
    assert {"amount", "currency", "created"} <= set(charge)
    assert not {"balance_transaction", "outcome", "fraud_details", "payment_method"} & set(charge)
    [customer] = STORE.read(rid, "stripe", "customer")
    assert customer["email"] == email and "metadata" not in customer


LEFT_OUT = {"payment_intents": "payment_intent", "invoices": "invoice", "credit_notes": "credit_note",
            "quotes": "quote", "setup_intents": "setup_intent"}
"""The datasets portability counts without exporting them, and the sandbox's kind of each."""


def _left_out_listing(method: str, path: str, query: Query) -> bool:
    """A portability export's listings of what it counts only (it pages none of these)."""
    return method == "GET" and path in {f"/v1/{dataset}" for dataset in LEFT_OUT}


async def test_portability_counts_what_it_leaves_out_side_by_side(server: StripeSandbox) -> None:
    email = unique_email()
    customers = [server.state.seed_customer(email, "Léa Petit", charges=2, subscription=True, extras=True),
                 server.state.seed_customer(email, "Léa Petit", charges=1)]  # 5 datasets x 2 customers: 10 listings
    rid = request_id()
    # as if each call took Stripe a while
    async with behind_a_gatekeeper(server, server.app, _left_out_listing, together=DATASETS_AT_ONCE,
                                   hold=0.3) as (connector, gatekeeper):
        outcome = await connector.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), provided_only=True))
    assert gatekeeper.most == DATASETS_AT_ONCE
    assert not lanes_running()
    held = {dataset: sum(1 for record in server.state.objects[kind].values() if record["customer"] in customers)
            for dataset, kind in LEFT_OUT.items()}
    assert all(held.values())  # every count has something to count, from both customers for some
    assert [(d.dataset, d.records) for d in outcome.datasets if not d.provided] == list(held.items())


# --- erase and verify -------------------------------------------------------------------------------


async def test_erase_deletes_the_customer_and_retains_payments_with_their_legal_basis(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=12,
                                   subscription=True)
    with api(server) as client:
        charges = {c["id"]: c["created"] for c in
                   client.get("/v1/charges", params={"customer": customer, "limit": 100}).json()["data"]}
    sent: list[tuple[str, str, str | None]] = []

    async def record(request: httpx.Request) -> None:
        sent.append((request.method, request.url.path, request.headers.get("Idempotency-Key")))

    stripe_._http._client_async.event_hooks["request"].append(record)
    rid = request_id()
    subject = Subject(email=email.lower())
    outcome = await stripe_.erase(OperationJob(rid, subject))

    by_dataset: dict[str, list] = {}
    for line in outcome.report:
        by_dataset.setdefault(line.dataset, []).append(line)
    assert [(r.record_id, r.action) for r in by_dataset["customer"]] == [(customer, RecordAction.DELETED)]
    retained = {r.record_id: r for r in by_dataset["charges"]}
    assert set(retained) == set(charges) and len(charges) == 13
    for charge_id, created in charges.items():
        line = retained[charge_id]
        assert line.action == RecordAction.RETAINED and line.legal_basis == LEGAL_BASIS
        day = datetime.fromtimestamp(created, UTC).date()
        # L123-22: ten years from the close of the financial year (31 December by default).
        assert line.retained_until == date(day.year + 10, 12, 31)
    assert [r.action for r in by_dataset["invoices"]] == [RecordAction.RETAINED]
    assert len(by_dataset["payment_intents"]) == 13 and all(r.action == RecordAction.RETAINED
                                                            for r in by_dataset["payment_intents"])
    assert [r.action for r in by_dataset["payment_methods"]] == [RecordAction.DELETED]
    assert [r.action for r in by_dataset["subscriptions"]] == [RecordAction.RESIDUAL]
    assert outcome.counts["deleted"] == 2 and outcome.counts["retained"] == 13 + 1 + 13
    # the deletion carries an idempotency key derived from the request, operation and customer
    assert ("DELETE", f"/v1/customers/{customer}", f"{rid}:erase:{customer}") in sent
    # verification: nothing is found again but what the report declares kept
    found_again = await stripe_.locate(subject)
    assert found_again == [] and unexpected_remains(outcome, found_again) == []
    with api(server) as client:
        assert client.get(f"/v1/customers/{customer}").json() == {"id": customer, "object": "customer",
                                                                  "deleted": True}
        charge = client.get(f"/v1/charges/{next(iter(charges))}").json()  # the charge is kept, as it was
        assert charge["billing_details"]["name"] == "Léa Petit"


async def test_a_repeated_erase_is_already_done(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=1)
    rid = request_id()
    await stripe_.erase(OperationJob(rid, Subject(email=email)))
    again = await stripe_.erase(OperationJob(rid, Subject(email=email)))
    assert [(r.dataset, r.action) for r in again.report] == [("customer", RecordAction.ALREADY_GONE)]
    assert again.counts == {"already_gone": 1} and again.found == 0


async def test_a_customer_deleted_meanwhile_is_already_gone(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit")
    job = OperationJob(request_id(), Subject(email=email))
    with api(server) as client:
        assert client.delete(f"/v1/customers/{customer}").status_code == 200
    assert await stripe_._delete_customer(job, customer) is False  # between locating and deleting


_CUSTOMER_LISTINGS = ("/v1/charges", "/v1/invoices", "/v1/payment_intents", "/v1/credit_notes", "/v1/quotes",
                      "/v1/setup_intents", "/v1/subscriptions")
"""What an erasure lists by ``customer=`` (beside her Checkout Sessions and ``/v1/customers/{id}/payment_methods``)."""


def _customer_listing(method: str, path: str, query: Query) -> bool:
    """An erasure's listings of one customer's records (not the lookups finding her, nor the guest passes)."""
    return method == "GET" and ("customer" in query or path.endswith("/payment_methods"))


async def test_an_erasure_lists_the_customer_s_records_side_by_side_then_writes_one_after_the_other(
        server: StripeSandbox) -> None:
    email = unique_email().lower()  # one spelling, one guest pass
    customer = server.state.seed_customer(email, "Léa Petit", charges=2, subscription=True, extras=True)
    shipped = {pi["id"] for pi in server.state.objects["payment_intent"].values()
               if pi["customer"] == customer and pi["shipping"]}
    [method] = [m["id"] for m in server.state.objects["payment_method"].values() if m["customer"] == customer]
    before = len(server.state.requests)
    # as if each call took Stripe a while
    async with behind_a_gatekeeper(server, server.app, _customer_listing, together=DATASETS_AT_ONCE,
                                   hold=0.3) as (connector, gatekeeper):
        outcome = await connector.erase(OperationJob(request_id(), Subject(email=email)))
    assert gatekeeper.most == DATASETS_AT_ONCE  # nine listings, never more than the bound at once
    assert not lanes_running()
    sent = server.state.requests[before:]
    writes = [i for i, (verb, _) in enumerate(sent) if verb != "GET"]
    listings = [i for i, (verb, path) in enumerate(sent)
                if verb == "GET" and (path in _CUSTOMER_LISTINGS or path.endswith("/payment_methods"))]
    assert len(listings) == 8 and max(listings) < min(writes)  # every listing before the first write
    # The writes in their order, one after the other: the intents' shipping unset, the card blanked, the deletion.
    written = [sent[i] for i in writes]
    assert sorted(written[:-2]) == sorted(("POST", f"/v1/payment_intents/{pi}") for pi in shipped)
    assert written[-2:] == [("POST", f"/v1/payment_methods/{method}"), ("DELETE", f"/v1/customers/{customer}")]
    assert len(shipped) >= 2 and customer in server.state.deleted
    assert {line.dataset for line in outcome.report} == {
        "customer", "charges", "invoices", "payment_intents", "credit_notes", "quotes", "setup_intents",
        "checkout_sessions", "subscriptions", "payment_methods"}
    # in the report, the datasets in the order they were listed one after the other, the customer's lines last
    order = list(dict.fromkeys(line.dataset for line in outcome.report))
    assert order == ["charges", "invoices", "payment_intents", "credit_notes", "quotes", "setup_intents",
                     "checkout_sessions", "subscriptions", "customer", "payment_methods"]


async def test_a_listing_refused_fails_the_erasure_before_any_write_with_nothing_left_running(
        server: StripeSandbox) -> None:
    email = unique_email().lower()
    customer = server.state.seed_customer(email, "Léa Petit", charges=2, subscription=True, extras=True)
    before = len(server.state.requests)
    # The subscriptions refused: listed one after the other, they came after the intents' shipping was unset
    # (writes); side by side, the refusal comes while the other listings are out, before any write.
    async with behind_a_gatekeeper(
            server, refusing(server.app, "GET", "/v1/subscriptions", 403, "secret_key_required"),
            _customer_listing, together=DATASETS_AT_ONCE, hold=0.3) as (connector, gatekeeper):
        with pytest.raises(PermanentConnectorError, match="check the credentials"):  # raised as it is
            await connector.erase(OperationJob(request_id(), Subject(email=email)))
    assert gatekeeper.most == DATASETS_AT_ONCE
    assert not lanes_running()
    assert [verb for verb, _ in server.state.requests[before:] if verb != "GET"] == []
    assert customer not in server.state.deleted


class Unsupporting:
    """A server without some listings (404, as an older Stripe-like server answers an unknown URL), answering the
    credit notes' refusal only once the setup intents' was sent: the listing started first finishes last."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.refused: list[str] = []
        self._setup_refused: asyncio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in ("/v1/credit_notes", "/v1/quotes", "/v1/setup_intents"):
            await self.inner(scope, receive, send)
            return
        if self._setup_refused is None:
            self._setup_refused = asyncio.Event()  # made on the server's loop
        if path == "/v1/credit_notes":
            with contextlib.suppress(TimeoutError):  # listed one after the other, it would wait for ever
                await asyncio.wait_for(self._setup_refused.wait(), timeout=2.0)
        await stripe_error(404, None)(scope, receive, send)
        self.refused.append(path)
        if path == "/v1/setup_intents":
            self._setup_refused.set()


async def test_notes_keep_the_listings_order_whichever_finishes_first(server: StripeSandbox) -> None:
    email = unique_email().lower()
    server.state.seed_customer(email, "Léa Petit", charges=1, subscription=True, extras=True)
    unsupporting = Unsupporting(server.app)
    running = await serve_app(unsupporting, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=server.api_key, base_url=running.url, rate_limit=RateLimiter(1000, 1.0))
    try:
        outcome = await connector.erase(OperationJob(request_id(), Subject(email=email)))
    finally:
        await connector.aclose()
        await running.stop()
    # the credit notes' listing, started first, answered last (quotes and setup intents in either order)
    assert unsupporting.refused[-1] == "/v1/credit_notes"
    assert sorted(unsupporting.refused) == ["/v1/credit_notes", "/v1/quotes", "/v1/setup_intents"]
    # as when listed one after the other: credit notes, quotes, setup intents, then the guest pass
    assert outcome.notes == ["credit notes: not supported by this server", "quotes: not supported by this server",
                             "setup intents: not supported by this server", GUEST_CASE]
    assert outcome.counts["deleted"] == 2  # the customer and her card; the rest reported kept
    assert not {"credit_notes", "quotes", "setup_intents"} & {line.dataset for line in outcome.report}


def _guest_pass(method: str, path: str, query: Query) -> bool:
    return method == "GET" and "customer_details[email]" in query


async def test_the_guest_passes_go_at_once(server: StripeSandbox) -> None:
    email = unique_email()  # with capitals: a pass for the address as given, one lower-cased
    given = server.state.add_checkout_session(email=email, name="Léa Petit")
    lower = server.state.add_checkout_session(email=email.lower(), name="Léa Petit")
    async with behind_a_gatekeeper(server, server.app, _guest_pass, together=2, hold=0.5) as (connector, gatekeeper):
        located = await connector.locate(Subject(email=email))
    assert gatekeeper.most == 2
    assert [(item.dataset, item.record_id) for item in located] == [
        ("checkout_sessions", given), ("checkout_sessions", lower)]  # in the passes' order


async def test_retention_rules_are_configuration(server: StripeSandbox, stripe_url: str) -> None:
    connector = StripeConnector(api_key=server.api_key, base_url=stripe_url,
                                retention=(RetentionRule("charges", "Art. 17(3)(e) GDPR: legal claims", 5),))
    email = unique_email()
    try:
        await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=2)
        outcome = await connector.erase(OperationJob(request_id(), Subject(email=email)))
    finally:
        await connector.aclose()
    charges = [r for r in outcome.report if r.dataset == "charges"]
    assert len(charges) == 2 and all(r.legal_basis == "Art. 17(3)(e) GDPR: legal claims" for r in charges)
    assert all(r.retained_until is not None and r.retained_until.year == datetime.now(UTC).year + 5
               for r in charges)
    assert all(r.action == RecordAction.RESIDUAL and r.note  # no rule: reported, not hidden
               for r in outcome.report if r.dataset == "payment_intents")


# --- rectify --------------------------------------------------------------------------------------


async def test_rectify_changes_only_what_differs(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", phone="+33611111111")
    rid = request_id()
    changes = {"last_name": "Martin", "first_name": "Léa", "city": "Paris", "postcode": "75011",
               "phone": "+33611111111"}
    keys: list[str] = []

    async def record(request: httpx.Request) -> None:
        if request.method == "POST":
            keys.append(request.headers.get("Idempotency-Key", ""))

    stripe_._http._client_async.event_hooks["request"].append(record)
    outcome = await stripe_.rectify(OperationJob(rid, Subject(email=email), changes))
    assert len(keys) == 1 and keys[0].startswith(f"{rid}:rectify:{customer}:")
    [line] = outcome.report
    assert (line.record_id, line.action) == (customer, RecordAction.CHANGED)
    assert line.fields == ["last_name", "city", "postcode"]  # first name and phone were already right
    with api(server) as client:
        stored = client.get(f"/v1/customers/{customer}").json()
    assert stored["name"] == "Léa Martin" and stored["phone"] == "+33611111111"
    assert stored["address"] == {"line1": "12 rue des Lilas", "line2": None, "city": "Paris", "postal_code": "75011",
                                 "state": None, "country": "FR"}
    assert stored["shipping"]["name"] == "Léa Martin" and stored["shipping"]["address"]["city"] == "Paris"
    again = await stripe_.rectify(OperationJob(rid, Subject(email=email), changes))
    assert [r.action for r in again.report] == [RecordAction.UNCHANGED] and again.counts == {"unchanged": 1}
    assert len(keys) == 1  # nothing sent the second time


async def test_rectifying_the_email_is_idempotent(server: StripeSandbox, stripe_: StripeConnector) -> None:
    email, new_email = unique_email(), unique_email("lea.martin").lower()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit")
    job = OperationJob(request_id(), Subject(email=email), {"email": new_email})
    first = await stripe_.rectify(job)
    assert [(r.action, r.fields) for r in first.report] == [(RecordAction.CHANGED, ["email"])]
    assert await stripe_.rectify(job) == first  # a retry, from its journal
    # Without the journal: the old address finds nothing any more, the new one does.
    again = await stripe_.rectify(OperationJob(job.request_id, job.subject, job.changes))
    assert [(r.record_id, r.action) for r in again.report] == [(customer, RecordAction.UNCHANGED)]


async def test_already_up_to_date_only_when_stripe_holds_exactly_the_new_value(
    server: StripeSandbox, stripe_: StripeConnector
) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", phone="+33611111111")
    subject = Subject(email=email)
    equal = await stripe_.rectify(OperationJob(request_id(), subject, {"first_name": "Léa", "city": "Lyon"}))
    assert [(r.record_id, r.action, r.fields) for r in equal.report] == [
        (customer, RecordAction.UNCHANGED, ["city", "first_name"])]
    spaced = await stripe_.rectify(OperationJob(request_id(), subject, {"phone": "+33 6 11 11 11 11"}))
    assert [(r.action, r.fields) for r in spaced.report] == [(RecordAction.CHANGED, ["phone"])]
    cased = await stripe_.rectify(OperationJob(request_id(), subject, {"city": "LYON"}))
    assert [(r.action, r.fields) for r in cased.report] == [(RecordAction.CHANGED, ["city"])]


async def test_rectify_refuses_unknown_fields(stripe_: StripeConnector) -> None:
    with pytest.raises(PermanentConnectorError, match="unknown field"):
        await stripe_.rectify(OperationJob(request_id(), Subject(email="lea@example.org"), {"iban": "FR76"}))


# --- scripted answers: faults and refusals --------------------------------------------------------------


def stripe_error(status: int, code: str | None, *, headers: Mapping[str, str] | None = None) -> Response:
    error: dict[str, Any] = {"type": "invalid_request_error",
                             "message": "No such customer: lea.petit@example.org"}  # Stripe echoes input
    if code:
        error["code"] = code
    return JSONResponse({"error": error}, status_code=status, headers=dict(headers or {}))


class Scripted:
    """A tiny server on 127.0.0.1: each request takes the next scripted answer."""

    def __init__(self, *answers: Callable[[Request], Response]) -> None:
        self.answers = list(answers)
        self.requests: list[Request] = []

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        return self.answers.pop(0)(request)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "DELETE"])])


SCRIPTED = Tally("stripe")


@pytest.fixture(autouse=True)
def _scripted_requests_fit() -> Iterator[None]:
    before = len(SCRIPTED.violations)
    yield
    SCRIPTED.assert_clean(since=before)


class CountingLimiter(RateLimiter):
    def __init__(self) -> None:
        super().__init__(100, 1.0)
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1
        await super().acquire()


async def scripted_connector(script: Scripted) -> tuple[Any, StripeConnector, CountingLimiter]:
    # The connector's requests are checked against Stripe's description; the scripted answers are not a
    # sandbox's (partial objects and error bodies made up for one test), so they are not.
    running = await serve_app(SpecCheck(script.app(), stripe_contract(), SCRIPTED, answers=False),
                                port=0)
    limiter = CountingLimiter()
    return running, StripeConnector("stripe-eu", api_key="sk_test_x", base_url=running.url, rate_limit=limiter), limiter


@pytest.mark.parametrize(("answer", "retry_after", "tries"), [
    # A Retry-After longer than READ_WAIT_MAX fails the attempt at once, for Temporal to wait it out.
    (lambda r: stripe_error(429, "rate_limit", headers={"Retry-After": "70"}), 70.0, 1),
    (lambda r: Response("Too Many Requests", status_code=429, headers={"Retry-After": "30"}), 30.0, 1),
    # Without one, a read is tried READ_TRIES times in place before the attempt fails.
    (lambda r: stripe_error(503, None), None, READ_TRIES),
    (lambda r: Response("upstream down", status_code=502), None, READ_TRIES),
    (lambda r: stripe_error(409, "lock_timeout"), None, READ_TRIES),
])
async def test_rate_limits_and_server_errors_are_transient(answer: Callable, retry_after: float | None,
                                                           tries: int) -> None:
    script = Scripted(*[answer] * READ_TRIES)
    running, connector, limiter = await scripted_connector(script)
    try:
        with pytest.raises(TransientConnectorError) as raised:
            await connector.check()
    finally:
        await connector.aclose()
        await running.stop()
    assert raised.value.retry_after == retry_after
    # No retry by the SDK: every try is the connector's own, through the rate limiter.
    assert len(script.requests) == tries and limiter.acquired == tries
    assert "lea.petit" not in str(raised.value)


async def test_a_read_that_fails_once_is_tried_again_in_place() -> None:
    script = Scripted(lambda r: stripe_error(503, None),
                      lambda r: Response('{"object": "list", "data": [], "has_more": false}',
                                         media_type="application/json"))
    running, connector, limiter = await scripted_connector(script)
    try:
        assert await connector.check() == "auth OK"
    finally:
        await connector.aclose()
        await running.stop()
    assert len(script.requests) == 2 and limiter.acquired == 2 and not script.answers


@pytest.mark.parametrize(("answer", "message"), [
    (lambda r: stripe_error(401, None), "check the credentials of connector stripe-eu (HTTP 401"),
    (lambda r: stripe_error(403, "secret_key_required"), "check the credentials of connector stripe-eu"),
    (lambda r: stripe_error(400, "parameter_invalid_empty"), "stripe-eu: request refused (HTTP 400 parameter_inv"),
    (lambda r: stripe_error(404, "resource_missing"), "stripe-eu: request refused (HTTP 404 resource_missing)"),
])
async def test_refusals_are_permanent_and_quote_only_the_stripe_code(answer: Callable, message: str) -> None:
    running, connector, _ = await scripted_connector(Scripted(answer))
    try:
        with pytest.raises(PermanentConnectorError) as raised:
            await connector.check()
    finally:
        await connector.aclose()
        await running.stop()
    assert str(raised.value).startswith(message)
    assert "lea.petit" not in str(raised.value) and "No such" not in str(raised.value)


async def test_an_unreachable_server_is_transient() -> None:
    connector = StripeConnector(api_key="sk_test_x", base_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TransientConnectorError, match="connection failed"):
            await connector.check()
    finally:
        await connector.aclose()


@pytest.mark.slow
async def test_a_server_error_in_the_middle_of_an_export_is_transient(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    # An export interrupted by a 503 raises transiently; its checkpoints let the retry resume.
    email = unique_email()
    await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=150)
    rid = request_id()
    cursors: list[Mapping[str, Any]] = []
    calls = 0

    async def fail_the_second_charges_page(request: httpx.Request) -> None:
        nonlocal calls
        if request.url.path == "/v1/charges" and "starting_after" in request.url.params:
            calls += 1
            if calls <= READ_TRIES:  # every try in place fails: the attempt does
                raise httpx.ConnectError("connection reset by peer")

    stripe_._http._client_async.event_hooks["request"].append(fail_the_second_charges_page)
    with pytest.raises(TransientConnectorError):
        await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), checkpoint=cursors.append))
    await stripe_.export(ExportJob(rid, Subject(email=email), STORE.sink(rid), resume=cursors[-1]))
    exported = [r["id"] for r in STORE.read(rid, "stripe", "charges")]
    assert len(exported) == len(set(exported)) == 150


async def test_search_quotes_the_address_and_reads_back_what_only_the_search_found() -> None:
    """Stripe's query language quoting, and a search hit the exact lookup did not confirm read back."""
    empty_list = {"object": "list", "data": [], "has_more": False, "url": "/v1/customers"}

    def search(request: Request) -> Response:
        assert request.url.path == "/v1/customers/search"
        assert request.query_params["query"] == "email:'lea.o\\'brien@example.org'"
        return JSONResponse({"object": "search_result", "url": "/v1/customers/search", "has_more": False,
                             "next_page": None, "data": [
                                 {"id": "cus_1", "object": "customer", "email": "Lea.O'Brien@Example.org"},
                                 {"id": "cus_2", "object": "customer", "email": "lea.obrien@example.org"}]})

    def customers(request: Request) -> Response:
        assert request.url.path == "/v1/customers" and request.query_params["email"] == "lea.o'brien@example.org"
        return JSONResponse(empty_list)

    def retrieve(request: Request) -> Response:
        assert request.url.path == "/v1/customers/cus_1"
        return JSONResponse({"id": "cus_1", "object": "customer", "email": "Lea.O'Brien@Example.org"})

    def sessions(request: Request) -> Response:
        assert request.url.path == "/v1/checkout/sessions"
        assert request.query_params["customer_details[email]"] == "lea.o'brien@example.org"
        return JSONResponse({"object": "list", "url": "/v1/checkout/sessions", "has_more": False, "data": [
            {"id": "cs_guest", "object": "checkout.session", "customer": None, "created": 1700000000},
            {"id": "cs_known", "object": "checkout.session", "customer": "cus_1", "created": 1700000000},
        ]})

    script = Scripted(search, customers, retrieve, sessions)
    running, connector, limiter = await scripted_connector(script)
    try:
        located = await connector.locate(Subject(email="lea.o'brien@example.org"))
    finally:
        await connector.aclose()
        await running.stop()
    assert [(loc.dataset, loc.record_id) for loc in located] == [("customer", "cus_1"),
                                                                 ("checkout_sessions", "cs_guest")]
    assert limiter.acquired == len(script.requests) == 4


# --- every dataset: exported, and accounted for on erasure --------------------------------------------


async def test_every_dataset_is_exported_with_billing_details_and_shipping(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = server.state.seed_customer(email, "Léa Petit", charges=2, subscription=True, extras=True)
    guest = server.state.add_checkout_session(email=email.lower(), name="Léa Petit",
                                              address={"line1": "3 rue Neuve", "city": "Lille", "country": "FR"})
    server.state.add_checkout_session(email=unique_email("someone.else"), name="Someone Else")
    rid = request_id()
    outcome = await stripe_.export(ExportJob(rid, Subject(email=email.lower()), STORE.sink(rid)))
    counts = {d.dataset: d.records for d in outcome.datasets}
    assert counts == {"customer": 1, "charges": 4, "payment_intents": 4, "invoices": 1, "credit_notes": 1,
                      "quotes": 1, "subscriptions": 1, "payment_methods": 1, "setup_intents": 1,
                      "checkout_sessions": 2}
    sessions = {r["id"]: r for r in STORE.read(rid, "stripe", "checkout_sessions")}
    assert guest in sessions and sessions[guest]["customer"] is None
    assert sessions[guest]["customer_details"]["address"]["city"] == "Lille"
    assert {s["customer"] for s in sessions.values()} == {None, customer}
    charges = list(STORE.read(rid, "stripe", "charges"))
    assert all(c["billing_details"]["email"] == email for c in charges if c["customer"] == customer)
    assert all(c["shipping"]["name"] == "Léa Petit" for c in charges)
    [note] = STORE.read(rid, "stripe", "credit_notes")
    [quote] = STORE.read(rid, "stripe", "quotes")
    [setup] = STORE.read(rid, "stripe", "setup_intents")
    assert note["customer"] == quote["customer"] == setup["customer"] == customer


async def test_erasure_blanks_payment_methods_and_reports_every_dataset_kept_with_why(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = server.state.seed_customer(email, "Léa Petit", charges=1, subscription=True, extras=True)
    guest = server.state.add_checkout_session(email=email.lower(), name="Léa Petit")  # typed at checkout
    [method] = [m for m in server.state.objects["payment_method"].values() if m["customer"] == customer]
    rid = request_id()
    subject = Subject(email=email.lower())
    outcome = await stripe_.erase(OperationJob(rid, subject))
    lines = {(r.dataset, r.record_id): r for r in outcome.report}
    by_dataset: dict[str, list[Any]] = {}
    for line in outcome.report:
        by_dataset.setdefault(line.dataset, []).append(line)
    assert lines[("customer", customer)].action == RecordAction.DELETED
    pm_line = lines[("payment_methods", method["id"])]
    assert pm_line.action == RecordAction.DELETED and pm_line.note.startswith("billing details blanked")
    # Stripe updates only an attached method, and a detached one keeps its billing details: blanked first.
    assert method["customer"] is None and method["billing_details"] == {
        "address": dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state")),
        "email": None, "name": None, "phone": None}
    for dataset in ("charges", "invoices", "payment_intents", "credit_notes"):
        assert by_dataset[dataset] and all(r.action == RecordAction.RETAINED and r.legal_basis == LEGAL_BASIS
                                           for r in by_dataset[dataset]), dataset
    assert all("billing_details and shipping" in r.note for r in by_dataset["charges"])
    for dataset in ("quotes", "setup_intents", "subscriptions", "checkout_sessions"):
        assert by_dataset[dataset] and all(r.action == RecordAction.RESIDUAL and r.note
                                           for r in by_dataset[dataset]), dataset
    assert ("checkout_sessions", guest) in lines
    # Verification: the guest session is still found by its email, and the report declared it.
    found_again = await stripe_.locate(subject)
    assert [(loc.dataset, loc.record_id) for loc in found_again] == [("checkout_sessions", guest)]
    assert unexpected_remains(outcome, found_again) == []


async def test_a_planted_fault_in_a_sandbox_answer_is_reported() -> None:
    """The check really runs over the sandbox: a charge stripped of a required field is a violation."""
    state = StripeState()
    customer = state.seed_customer("planted@example.org", "Planted Fault", charges=1)
    [charge] = [c for c in state.objects["charge"].values() if c["customer"] == customer]
    del charge["billing_details"]
    tally = Tally("stripe", session=False)
    app = SpecCheck(stripe_app(state, api_key=KEY), stripe_contract(), tally)
    running = await serve_app(app, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=KEY, base_url=running.url)
    try:
        await connector.locate(Subject(email="planted@example.org"))
        await connector.export(ExportJob(rid := request_id(), Subject(email="planted@example.org"),
                                         STORE.sink(rid)))
    finally:
        await connector.aclose()
        await running.stop()
    assert tally.requests >= 10 and tally.responses == tally.requests
    assert [v.rule for v in tally.unexcused()] == [
        "stripe response GET /v1/charges 200 data[].billing_details: required"]


# --- writes: one idempotency key per parameter set, refusals named by method and path ---------------------


def refusing(inner: Any, method: str, prefix: str, status: int, code: str) -> Any:
    """An ASGI app answering ``method`` requests under ``prefix`` with a Stripe error, the rest from ``inner``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == method and scope["path"].startswith(prefix):
            await stripe_error(status, code)(scope, receive, send)
            return
        await inner(scope, receive, send)

    return app


async def test_a_blanking_retried_after_the_method_changed_is_not_refused_for_its_idempotency_key() -> None:
    """The chaos run's ``idempotency_error``: a write whose parameters follow what it read, retried after its
    answer was lost, sends other parameters; under the same key Stripe (and the sandbox) refuses it."""
    faults = Faults()
    with StripeSandbox(faults=faults).start() as box:
        email = unique_email()
        customer = box.state.seed_customer(email, "Léa Petit", charges=1)
        [method] = [m for m in box.state.objects["payment_method"].values() if m["customer"] == customer]
        method["billing_details"]["phone"] = None  # the card holds name, email and address
        connector = StripeConnector(api_key=box.api_key, base_url=box.url)
        job = OperationJob(request_id(), Subject(email=email))
        try:
            faults.lose_answers = ["POST /v1/payment_methods/"]
            with pytest.raises(TransientConnectorError):
                await connector.erase(job)  # the blanking took effect, its answer was lost
            assert method["billing_details"]["name"] is None and method["customer"] == customer
            method["billing_details"]["phone"] = "+33600000000"  # given meanwhile (e.g. in the customer portal)
            outcome = await connector.erase(job)
        finally:
            await connector.aclose()
    lines = {(r.dataset, r.record_id): r for r in outcome.report}
    assert lines[("customer", customer)].action == RecordAction.DELETED
    assert method["billing_details"]["phone"] is None and method["customer"] is None
    assert lines[("payment_methods", method["id"])].note.startswith("billing details blanked")
    sent = [(m, p) for m, p in box.state.requests if m == "POST" and p.startswith("/v1/payment_methods/")]
    assert len(sent) == 2  # the first blanking, then the phone alone under a key of its own
    assert not [k for k in box.state.idempotency if k.endswith(f":redact:{method['id']}")]  # digests in keys


async def test_erasure_unsets_the_payment_intents_shipping_and_keeps_the_charges(
        server: StripeSandbox, stripe_: StripeConnector) -> None:
    email = unique_email()
    customer = server.state.seed_customer(email, "Léa Petit", charges=2)
    intents = [pi for pi in server.state.objects["payment_intent"].values() if pi["customer"] == customer]
    charges = [c for c in server.state.objects["charge"].values() if c["customer"] == customer]
    assert len(intents) == 2 and all(pi["shipping"]["name"] == "Léa Petit" for pi in intents)
    outcome = await stripe_.erase(OperationJob(request_id(), Subject(email=email)))
    lines = {(r.dataset, r.record_id): r for r in outcome.report}
    for intent in intents:
        assert intent["shipping"] is None
        line = lines[("payment_intents", intent["id"])]
        assert line.action == RecordAction.RETAINED and line.legal_basis == LEGAL_BASIS
        assert line.note.endswith("its shipping details (name, phone, address) unset")
    # A charge's shipping and billing details cannot be unset through the API: kept, and the report says so.
    assert all(c["shipping"]["name"] == "Léa Petit" and c["billing_details"]["email"] == email for c in charges)
    assert all("billing_details and shipping" in lines[("charges", c["id"])].note for c in charges)


async def test_a_refused_unsetting_keeps_the_shipping_and_says_so() -> None:
    state = StripeState()
    email = unique_email()
    customer = state.seed_customer(email, "Léa Petit", charges=1)
    [intent] = [pi for pi in state.objects["payment_intent"].values() if pi["customer"] == customer]
    app = refusing(stripe_app(state, api_key=KEY), "POST", "/v1/payment_intents/", 400,
                   "payment_intent_unexpected_state")
    running = await serve_app(app, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=KEY, base_url=running.url)
    try:
        outcome = await connector.erase(OperationJob(request_id(), Subject(email=email)))
    finally:
        await connector.aclose()
        await running.stop()
    line = {(r.dataset, r.record_id): r for r in outcome.report}[("payment_intents", intent["id"])]
    assert line.action == RecordAction.RETAINED
    assert line.note.endswith("its shipping details stay (Stripe refused to unset them: HTTP 400 "
                              "payment_intent_unexpected_state)")
    assert intent["shipping"] is not None and customer in state.deleted


async def test_a_refused_write_is_named_by_method_and_path_without_ids(caplog: pytest.LogCaptureFixture) -> None:
    state = StripeState()
    email = unique_email()
    customer = state.seed_customer(email, "Léa Petit")
    [method] = [m for m in state.objects["payment_method"].values() if m["customer"] == customer]
    app = refusing(stripe_app(state, api_key=KEY), "POST", "/v1/payment_methods/", 400, "idempotency_error")
    running = await serve_app(app, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=KEY, base_url=running.url)
    try:
        with caplog.at_level("WARNING", logger="connectors.stripe"), pytest.raises(PermanentConnectorError) as raised:
            await connector.erase(OperationJob(request_id(), Subject(email=email)))
    finally:
        await connector.aclose()
        await running.stop()
    assert str(raised.value) == "stripe: request refused (HTTP 400 idempotency_error) on POST /v1/payment_methods/{id}"
    assert caplog.messages == ["stripe: write refused: POST /v1/payment_methods/{id}: request refused (HTTP 400 "
                               "idempotency_error)"]
    for text in (str(raised.value), *caplog.messages):
        assert method["id"] not in text and customer not in text and "lea" not in text.lower()
    assert customer not in state.deleted  # nothing deleted after a refused blanking


@pytest.mark.parametrize("ignores_case", [False, True])
async def test_guest_sessions_are_found_once_whatever_case_the_filter_honours(ignores_case: bool) -> None:
    """``customer_details[email]`` is exact in the sandbox (Stripe's description says nothing of case); a filter
    that ignored case would answer the connector's two lookups (as given, lower-cased) alike: no session twice."""
    state = StripeState()
    state.sessions_email_ignores_case = ignores_case
    local = f"lea.petit+{uuid.uuid4().hex[:8]}"
    given, lower, other = f"{local}@Example.org", f"{local}@example.org", f"{local.upper()}@EXAMPLE.ORG"
    sessions = {spelling: state.add_checkout_session(email=spelling, name="Léa Petit") for spelling in
                (given, lower, other)}
    check = SpecCheck(stripe_app(state, api_key=KEY), stripe_contract())
    running = await serve_app(check, host="127.0.0.1", port=0)
    connector = StripeConnector(api_key=KEY, base_url=running.url)
    try:
        found = await connector.locate(Subject(email=given))
        rid = request_id()
        outcome = await connector.export(ExportJob(rid, Subject(email=given), STORE.sink(rid)))
    finally:
        await connector.aclose()
        await running.stop()
    expected = {sessions[given], sessions[lower]} | ({sessions[other]} if ignores_case else set())
    assert sorted(loc.record_id for loc in found) == sorted(expected)  # each once
    exported = [r["id"] for r in STORE.read(rid, "stripe", "checkout_sessions")]
    assert sorted(exported) == sorted(expected)
    assert any(n.startswith("guest Checkout Sessions are looked up by the address as given and lower-cased")
               for n in outcome.notes)
    assert check.tally.requests > 0
    check.tally.assert_clean()


# --- restriction (Art. 18) ---------------------------------------------------------------------------------


async def test_restrict_marks_the_customer_metadata_and_lifting_unsets_it(
    server: StripeSandbox, stripe_: StripeConnector,
) -> None:
    email = unique_email()
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit")
    rid = request_id()
    job = OperationJob(rid, Subject(email=email))
    outcome = await stripe_.restrict(job)
    assert [(r.record_id, r.action, r.fields) for r in outcome.report] == [
        (customer, RecordAction.RESTRICTED, ["metadata.dsr_restricted"])]
    with api(server) as client:
        assert client.get(f"/v1/customers/{customer}").json()["metadata"]["dsr_restricted"] == rid
    assert (await stripe_.restrict(job)).counts == {"unchanged": 1}  # a retry sets nothing twice
    # Marked, the engine's own exports still work: storage is what a restriction allows.
    exported = await stripe_.locate(Subject(email=email))
    assert ("customer", customer) in [(loc.dataset, loc.record_id) for loc in exported]

    lifted = await stripe_.lift_restriction(job)
    assert [(r.record_id, r.action) for r in lifted.report] == [(customer, RecordAction.LIFTED)]
    with api(server) as client:
        assert "dsr_restricted" not in client.get(f"/v1/customers/{customer}").json()["metadata"]
    assert (await stripe_.lift_restriction(job)).counts == {"unchanged": 1}
    nobody = await stripe_.restrict(OperationJob(rid, Subject(email=unique_email("nobody"))))
    assert nobody.report == [] and nobody.found == 0


async def test_the_export_opens_its_datasets_at_once(server: StripeSandbox, stripe_: StripeConnector) -> None:
    """Each opening is a round trip or two to the object store: a dozen datasets opened one after the other
    waited a dozen round trips before the first call to Stripe. Here every opening waits until all are asked:
    opened one at a time, the first would wait for ever (the test gives up after 10 s)."""
    email = unique_email()
    await seed_customer(server.url, server.api_key, email=email, name="Inès Moreau", charges=2)
    rid = request_id()
    store_sink = STORE.sink(rid)
    asked: list[str] = []
    everyone_asked = asyncio.Event()

    class Gathered:
        async def open(self, system: str, dataset: str, *, provided: bool) -> DatasetWriter:
            asked.append(dataset)
            if len(asked) == len(DATASETS):
                everyone_asked.set()
            await everyone_asked.wait()
            return await store_sink.open(system, dataset, provided=provided)

    outcome = await asyncio.wait_for(stripe_.export(ExportJob(rid, Subject(email=email), Gathered())), 10)
    assert sorted(asked) == sorted(DATASETS)
    assert {d.dataset: d.records for d in outcome.datasets}["charges"] == 2
    assert [d.dataset for d in outcome.datasets][: len(DATASETS)] == list(DATASETS)  # the connector's order kept

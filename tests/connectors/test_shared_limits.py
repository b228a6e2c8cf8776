"""A vendor's rate limit is per account: connectors on two workers count in one window, in the ledger's
database (``dsr.store.guards.Guards.reserve``), wired by ``build_connectors(..., shared=...)``."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import ClassVar

import pytest
from sqlalchemy import text

from connectors.config import build_connectors, parse_config
from connectors.http import FIRST_LEAD, RateLimiter, acquire_all
from connectors.woocommerce import WooCommerceConnector
from dsr.store.crypto import KeyRing
from dsr.store.guards import Guards
from dsr.store.ledger import Ledger
from tests.connectors.test_woocommerce import KEY, SECRET, Shop, seed_lea, start_shop

LIMIT = 4
"""Calls per second of the shop's account in dsr.toml."""


def configuration(url: str) -> str:
    return f"""
[[connectors]]
type = "woocommerce"
name = "shop"
base_url = "{url}"
credentials = {{ consumer_key = "WOO_KEY", consumer_secret = "WOO_SECRET" }}
rate_limit = {{ requests = {LIMIT}, per_seconds = 1 }}
"""


@pytest.fixture
def workers(database_url: str) -> Iterator[tuple[Guards, Guards]]:
    """Two workers' windows: two ledgers (two engines, two connection pools) on one database."""
    ring = KeyRing.generate()
    with Ledger(database_url, ring) as one, Ledger(database_url, ring) as other:
        yield Recording(one.engine, ring), Recording(other.engine, ring)


class Recording(Guards):
    """Guards that remember the slot each reservation got (as the database decided it, whatever the load), and the
    windows it was taken in."""

    slots: ClassVar[list[float]] = []
    taken: ClassVar[list[tuple[tuple[str, ...], float]]] = []

    def reserve_together(self, windows: Sequence[tuple[str, int, float]], *, lead: float = 0.0,
                         now: float | None = None) -> float:
        slot = super().reserve_together(windows, lead=lead, now=now)
        Recording.slots.append(slot)
        Recording.taken.append((tuple(key for key, _, _ in windows), slot))
        return slot


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    running = await start_shop()
    seed_lea(running.state)
    try:
        yield running
    finally:
        await running.connector.aclose()
        await running.server.stop()


async def test_two_workers_count_in_one_window(shop: Shop, workers: tuple[Guards, Guards]) -> None:
    env = {"WOO_KEY": KEY, "WOO_SECRET": SECRET}
    config = parse_config(configuration(shop.server.url))
    Recording.slots = []
    built = [build_connectors(config, env, shared=guards)[0] for guards in workers]
    try:
        assert all(isinstance(c, WooCommerceConnector) for c in built)
        calls = len(shop.faults.log)
        # Three calls on each worker at once: one account, so only LIMIT may go in the first window.
        answers = await asyncio.gather(*(c.check() for c in built for _ in range(3)))
        assert all(a.startswith("auth OK") for a in answers)
        assert len(shop.faults.log) - calls == 6
    finally:
        for connector in built:
            await connector.aclose()
    # Both workers' slots together: any LIMIT + 1 of them span at least the window (1.1 s: 1 s, 5% and 50 ms). A
    # call woken more than 50 ms after its slot (the machine loaded) took another: one slot more per such call.
    slots = sorted(Recording.slots)
    taken_again = 0
    for connector in built:
        assert isinstance(connector, WooCommerceConnector) and connector._limiter is not None
        taken_again += connector._limiter.rereserved
    assert len(slots) == 6 + taken_again
    assert all(later - earlier >= 1.1 - 1e-6 for earlier, later in zip(slots, slots[LIMIT:], strict=False))
    assert recorded_slots(workers[0], "vendor:shop") == slots[-LIMIT:]  # the database's window holds the last ones


def recorded_slots(guards: Guards, key: str) -> list[float]:
    with guards.engine.connect() as connection:
        hits = connection.execute(text("SELECT hits FROM rate_limits WHERE key = :key"), {"key": key}).scalar_one()
    return sorted(json.loads(hits))


async def test_without_shared_windows_nothing_is_recorded(shop: Shop, workers: tuple[Guards, Guards]) -> None:
    config = parse_config(configuration(shop.server.url))
    connector = build_connectors(config, {"WOO_KEY": KEY, "WOO_SECRET": SECRET})[0]
    try:
        assert (await connector.check()).startswith("auth OK")
    finally:
        await connector.aclose()
    with workers[0].engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM rate_limits WHERE key LIKE 'vendor:%'")).scalar_one() == 0


class _Windows:
    """Shared windows answering a slot a fixed wait from now, counting the reservations."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.reservations = 0

    def reserve(self, key: str, limit: int, span: float, *, lead: float = 0.0) -> float:
        self.reservations += 1
        return time.time() + self.wait


@pytest.mark.parametrize("tolerance", [0.05, 0.25, None])
async def test_a_call_woken_too_late_for_its_slot_reserves_again(tolerance: float | None) -> None:
    """A worker starved of CPU wakes after its slot: its call would leave within a window of the calls reserved one
    window later, and the vendor would answer 429. It takes a new slot instead (``None``: the slot is kept; 0.25:
    a tolerance of 250 ms keeps a slot woken 100 ms late)."""
    windows = _Windows(wait=0.05)
    limiter = RateLimiter(5, 1.0, shared=windows, key="shop", late_tolerance=tolerance)

    async def starve() -> None:
        await asyncio.sleep(0.01)
        time.sleep(0.15)  # noqa: ASYNC251 - the event loop held on purpose: the limiter's sleep ends 0.1 s late

    await asyncio.gather(limiter.acquire(), starve())
    assert 0.05 < limiter.latest < 0.25
    if tolerance is None or tolerance > 0.2:
        assert (windows.reservations, limiter.rereserved) == (1, 0)
    else:
        assert (windows.reservations, limiter.rereserved) == (2, 1)
    # On time: one reservation, nothing taken again.
    on_time = _Windows(wait=0.0)
    await RateLimiter(5, 1.0, shared=on_time, key="shop").acquire()
    assert on_time.reservations == 1


class _Slow(_Windows):
    """Shared windows taking 0.1 s to answer, remembering the lead each reservation asked for."""

    def __init__(self) -> None:
        super().__init__(wait=0.0)
        self.leads: list[float] = []

    def reserve(self, key: str, limit: int, span: float, *, lead: float = 0.0) -> float:
        self.leads.append(lead)
        time.sleep(0.1)  # the commit of a loaded database
        return super().reserve(key, limit, span, lead=lead)


async def test_a_reservation_asks_for_a_slot_as_far_ahead_as_the_last_one_took() -> None:
    """A free slot is taken when the database reads its clock; the call leaves when the answer is back. The
    limiter asks for the next slot that far ahead, so it does not leave late (the vendor counts arrivals)."""
    windows = _Slow()
    limiter = RateLimiter(5, 1.0, shared=windows, key="shop")
    await limiter.acquire()
    await limiter.acquire()
    assert windows.leads[0] == FIRST_LEAD
    assert 0.1 <= windows.leads[-1] <= 0.5  # the first reservation's time (the limiter's cap: half its window)


async def test_a_search_leaves_on_time_for_both_of_its_limits(workers: tuple[Guards, Guards]) -> None:
    """A search counts against HubSpot's search limit and the account's: one reservation takes one time free in
    both windows. Taken one after the other, the call left at its search slot, late for its general one, and the
    general window, kept on the slot, let later calls crowd HubSpot's."""
    general = [RateLimiter(3, 1.0, shared=w, key="crm") for w in workers]
    search = [RateLimiter(1, 0.5, shared=w, key="crm:search") for w in workers]
    Recording.slots, Recording.taken = [], []
    left: list[tuple[bool, float]] = []

    async def call(worker: int, searching: bool) -> None:
        await acquire_all((general[worker], search[worker]) if searching else (general[worker],))
        left.append((searching, time.time()))

    # Two searches and two plain calls on each worker, at once.
    await asyncio.gather(*(call(w, searching) for w in (0, 1) for searching in (True, False, True, False)))
    # One reservation per call, and per slot woken too late for: every call counts against the general limit.
    assert len(Recording.taken) == 8 + sum(limiter.rereserved for limiter in general)
    joint = [slot for keys, slot in Recording.taken if keys == ("crm", "crm:search")]
    assert len(joint) == 4 + sum(limiter.rereserved for limiter in search)
    assert recorded_slots(workers[0], "vendor:crm:search") == sorted(joint)[-1:]  # the search window: the same times
    assert set(recorded_slots(workers[0], "vendor:crm")) <= set(Recording.slots)
    every = sorted(Recording.slots)
    assert all(later - earlier >= 1.0 - 1e-6 for earlier, later in zip(every, every[3:], strict=False))
    assert all(later - earlier >= 0.5 - 1e-6 for earlier, later in itertools.pairwise(sorted(joint)))
    # Each call left at (or just after) a slot it took in every limit it counts against.
    assert all(any(0 <= at - slot <= 0.1 for slot in (joint if searching else every)) for searching, at in left)

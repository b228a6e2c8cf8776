"""``connectors.base.together`` and ``side_by_side``: what an export's datasets, and the listings an erasure or a count
reads, paged at once rely on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from connectors.base import PermanentConnectorError, TransientConnectorError, side_by_side, together


async def test_together_answers_in_the_calls_order_and_nothing_for_no_calls() -> None:
    async def after(seconds: float, value: str) -> str:
        await asyncio.sleep(seconds)
        return value

    assert await together([after(0.02, "first"), after(0, "second")]) == ["first", "second"]
    assert await together([]) == []


async def test_a_failure_is_raised_as_it_is_and_cancels_the_others() -> None:
    waiting = asyncio.Event()
    outcomes: list[str] = []

    async def waits_for_ever() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    async def fails() -> None:
        await waiting.wait()
        raise TransientConnectorError("HTTP 503")

    with pytest.raises(TransientConnectorError, match="HTTP 503"):  # not an exception group: the type decides
        await together([waits_for_ever(), fails()])
    assert outcomes == ["cancelled"]  # cancelled and finished before together returned


async def test_of_two_failures_the_earlier_in_order_is_raised() -> None:
    async def fails(error: Exception) -> None:
        raise error

    with pytest.raises(PermanentConnectorError):
        await together([fails(PermanentConnectorError("refused")), fails(TransientConnectorError("503"))])


async def test_cancelled_it_cancels_them_all() -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def runs(n: int) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    task = asyncio.create_task(together([runs(1), runs(2)]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == [1, 2]


async def test_side_by_side_runs_at_most_its_bound_at_once_in_their_order() -> None:
    running, most, order = 0, 0, []

    def run(n: int) -> Callable[[], Awaitable[None]]:
        async def one() -> None:
            nonlocal running, most
            order.append(n)
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01 * (n % 3))
            running -= 1
        return one

    await side_by_side([run(n) for n in range(10)], at_once=4)
    assert most == 4
    assert order[:4] == [0, 1, 2, 3] and sorted(order) == list(range(10))


async def test_side_by_side_answers_in_the_runs_order_whichever_finished_first() -> None:
    def after(seconds: float, value: str) -> Callable[[], Awaitable[str]]:
        async def one() -> str:
            await asyncio.sleep(seconds)
            return value
        return one

    assert await side_by_side([after(0.03, "first"), after(0, "second"), after(0.01, "third")],
                              at_once=2) == ["first", "second", "third"]

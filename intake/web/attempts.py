"""How many answers a code page takes: the one attempt limiter of ``/verify`` and ``/exports/{token}``.

Both pages ask for a code a stranger could try to guess, so both count the same way, in the ledger's database
(:class:`dsr.store.guards.Guards`: every replica counts the same attempts, a check and its count are one
transaction). Every answer, right or wrong, is first throttled per client address and overall
(:class:`dsr.store.guards.AnswerThrottle`); then each wrong answer counts against the request (:data:`MAX_ATTEMPTS`
within :data:`LOCKOUT` lock it for :data:`LOCKOUT`, and ``max_wrong`` in all close its code for good) and
against the client address (:data:`MAX_CLIENT_ATTEMPTS` per :data:`LOCKOUT` window, whatever the requests).
The two pages count apart (their ``scope``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.concurrency import run_in_threadpool

from dsr.store.guards import AnswerThrottle, AttemptLimits, Guards, Verdict

__all__ = ["LOCKOUT", "MAX_ATTEMPTS", "MAX_CLIENT_ATTEMPTS", "Attempts", "CodeLockedHook", "wait_in_minutes"]

MAX_ATTEMPTS = 5
LOCKOUT = timedelta(minutes=15)
MAX_CLIENT_ATTEMPTS = 30
"""Wrong answers one client address may give per :data:`LOCKOUT` window, whatever the requests (then it is
locked for :data:`LOCKOUT`): a bound on guesses spread over many links or references."""

CodeLockedHook = Callable[[str, str, int], Awaitable[None]]
"""``on_locked(request_id, page, wrong)``: the answer just counted closed the request's code for good (called
once per request and page): record it and tell the operator."""


@dataclass(frozen=True)
class Attempts:
    """The answers of one page (``scope``), counted by ``guards`` under ``limits`` and ``throttle``."""

    scope: str
    guards: Guards
    limits: AttemptLimits
    throttle: AnswerThrottle
    clock: Callable[[], datetime]
    on_locked: CodeLockedHook | None = None

    async def throttled(self, client: str | None) -> timedelta | None:
        """Count one answer from ``client`` before it is even read; the wait when too many came (429)."""
        refused = await run_in_threadpool(
            self.guards.hit, self.throttle.windows(self.scope, self.guards.client_key(client)), self.clock())
        return None if refused is None else timedelta(seconds=refused.retry_after)

    async def locked(self, request_id: str, client: str | None) -> timedelta | None:
        """A cheap look (reads only) at a lock of the request or the client: :meth:`judge` decides."""
        return await run_in_threadpool(self.guards.wait, self.scope, request_id, client, self.clock())

    async def judge(self, request_id: str, client: str | None, answer: Callable[[], tuple[bool, bool]]) -> Verdict:
        """Decide one answer in one transaction. ``answer()`` says, in a worker thread, whether it is right and
        whether the request is tracked (known to the ledger: only those are counted per request). The
        operator is told through ``on_locked`` when this answer closed the request's code."""

        def decide() -> Verdict:
            right, tracked = answer()
            return self.guards.judge(self.scope, request_id, client, self.clock(), right=right, limits=self.limits,
                                     tracked=tracked)

        verdict = await run_in_threadpool(decide)
        if verdict.wait is None and verdict.capped_now and self.on_locked is not None:
            await self.on_locked(request_id, self.scope, self.limits.max_wrong or 0)
        return verdict


def wait_in_minutes(left: timedelta) -> tuple[int, int]:
    """``(seconds, minutes)`` of a wait, each at least 1: ``Retry-After`` and the words of the locked page."""
    seconds = max(1, math.ceil(left.total_seconds()))
    return seconds, max(1, math.ceil(seconds / 60))

"""HTTP plumbing shared by connectors: rate limits, and vendor errors turned into retry decisions.

Messages name the connector, the HTTP status and the vendor's error *code* — never the vendor's
message text or the URL, which can quote the subject's email (``/customers?email=...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx

from connectors.base import PermanentConnectorError, TransientConnectorError

T = TypeVar("T")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every connector's HTTP client verifies vendors with, built once per process.

    What httpx builds for ``verify=True`` (certifi's CA bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set),
    but shared: httpx otherwise reads and parses the whole bundle again for each client (about 20 ms of CPU, each
    time a connector is configured or checked). An ``SSLContext`` is safe to share between clients and threads.
    """
    return httpx.create_ssl_context()


class SharedWindows(Protocol):
    """Sliding windows that every worker shares (``dsr.store.guards.Guards``, on the ledger's database)."""

    def reserve(self, key: str, limit: int, span: float, *, lead: float = 0.0) -> float:
        """Take the earliest slot in the window ``key`` (at most ``limit`` per ``span`` seconds) at least ``lead``
        seconds away and answer its time (Unix seconds); one transaction, so two workers never take the same slot."""
        ...


@runtime_checkable
class JointWindows(SharedWindows, Protocol):
    """Shared windows that also take one slot in several windows at once (``Guards.reserve_together``)."""

    def reserve_together(self, windows: Sequence[tuple[str, int, float]], *, lead: float = 0.0) -> float:
        """The earliest time free in every ``(key, limit, span)`` window, recorded in each; one transaction."""
        ...


_RESERVE_TRIES = 3
"""At most this many reservations per call: under a long CPU starvation the call then goes (the margin's turn)."""
LATE_TOLERANCE = 0.05
"""Seconds a shared slot's call may leave after its reserved time: later (a worker starved of CPU, a thread pool
busy), it reserves again. A late call would otherwise leave closer to the calls reserved one window after it than
the window allows, and the vendor, counting arrivals, would answer 429. Measured (bench/shared_limits.py, HubSpot's
real 100 per 10 s, margin 550 ms): 250 or 350 ms instead kept more slots (share median 0.91 against 0.88, 0.94-0.95
in quiet rounds) but got 429s in 4 rounds of 8 (0.7 to 4.9 per 100 calls), 50 ms none in 8: the vendor's arrival
times, on the same starved machine, moved as much as the departures."""
FIRST_LEAD = 0.1
"""Seconds ahead a process's first shared slot is taken, before any reservation has said how long one takes."""


def with_margin(per_seconds: float) -> float:
    """The window a limiter keeps for a vendor's ``per_seconds``: 5% longer plus 50 ms. The limiter stamps a call
    when it leaves and the vendor counts it when it arrives, so a fast call after a slow one can land in the vendor's
    window early; the margin absorbs that jitter (late departures are re-reserved: LATE_TOLERANCE). At most 95% of
    the vendor's rate can be used (HubSpot, 100 per 10 s: 94.8%; 10% on a 1 s window), where a flat 10% left 90.9%."""
    return per_seconds * 1.05 + 0.05


class RateLimiter:
    """At most ``requests`` calls per ``per_seconds`` (a sliding window), shared by all calls of a connector.

    With ``shared`` (and a ``key`` naming the vendor account's limit), the window lives in a store every
    worker shares: N workers on N machines together stay under the vendor's limit, as one does. Without it,
    the window is this process's (tests, a single worker)."""

    def __init__(self, requests: int, per_seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 shared: SharedWindows | None = None, key: str = "",
                 late_tolerance: float | None = LATE_TOLERANCE) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per_seconds > 0")
        if shared is not None and not key:
            raise ValueError("a shared rate limit needs the key of its window")
        self.requests = requests
        self.per_seconds = per_seconds
        self._clock = clock
        self._shared = shared
        self._key = key
        self._sent: list[float] = []
        self._lock = asyncio.Lock()
        # Shared: this process's calls reserve one after another. Sixty calls reserving at once in the thread pool
        # made sixty transactions wait on the database's write lock (SQLite's busy handler sleeps up to 100 ms at a
        # time), some for a second, and a slot taken then was left late.
        self._reserving = asyncio.Lock()
        # How long the last reservation took to answer: the next slot is taken that far ahead. Before the first
        # answer, FIRST_LEAD: a process's first call (the row created, the connection opened) was late for its slot.
        self._lead = FIRST_LEAD
        self._late_tolerance = late_tolerance  # None: a late slot is kept (how it was before; for bench/)
        self.rereserved = 0
        """Slots reserved again because their call would have left too late (shared windows only)."""
        self.latest = 0.0
        """The longest a call woke after its shared slot, in seconds (what the late tolerance is measured against)."""

    async def acquire(self) -> None:
        await acquire_all((self,))

    async def _acquire_here(self) -> None:
        """This process's own window (no shared store)."""
        async with self._lock:
            while True:
                now = self._clock()
                self._sent = [t for t in self._sent if now - t < self.per_seconds]
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return
                await asyncio.sleep(self.per_seconds - (now - self._sent[0]))


async def acquire_all(limiters: Sequence[RateLimiter]) -> None:
    """A slot in each of ``limiters`` for one call. Shared ones on one store that can (:class:`JointWindows`) take
    one time in all their windows at once: a call leaves once, so it must be on time for every limit it counts
    against (HubSpot's search: the search limit and the account's)."""
    for limiter in limiters:
        if limiter._shared is None:
            await limiter._acquire_here()
    shared = [limiter for limiter in limiters if limiter._shared is not None]
    store = shared[0]._shared if shared else None
    if len(shared) > 1 and isinstance(store, JointWindows) and all(each._shared is store for each in shared):
        await _acquire_shared(shared, store)
        return
    for limiter in shared:
        assert limiter._shared is not None
        await _acquire_shared([limiter], limiter._shared)


async def _acquire_shared(limiters: Sequence[RateLimiter], store: SharedWindows) -> None:
    # The slot is reserved at once (a database transaction in a thread), then waited for here: callers on every
    # worker queue in the order they reserved, none holding a lock while it sleeps.
    tolerances = [each._late_tolerance for each in limiters if each._late_tolerance is not None]
    tolerance = min(tolerances) if len(tolerances) == len(limiters) else None
    for _ in range(_RESERVE_TRIES):
        async with contextlib.AsyncExitStack() as reserving:
            for each in sorted(limiters, key=lambda limiter: limiter._key):  # one order: no two calls deadlock
                await reserving.enter_async_context(each._reserving)
            asked = time.time()
            lead = max(each._lead for each in limiters)
            if len(limiters) == 1:
                one = limiters[0]
                slot = await asyncio.to_thread(store.reserve, one._key, one.requests, one.per_seconds, lead=lead)
            else:
                assert isinstance(store, JointWindows)
                slot = await asyncio.to_thread(
                    store.reserve_together, [(each._key, each.requests, each.per_seconds) for each in limiters],
                    lead=lead)
            took = time.time() - asked
            for each in limiters:
                each._lead = min(took, each.per_seconds / 2)
        wait = slot - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        # Late for the slot itself (the clock the slot was taken on), whatever delayed the call: the
        # reservation's commit and return, the event loop.
        late = time.time() - slot
        for each in limiters:
            each.latest = max(each.latest, late)
        if tolerance is None or late <= tolerance:
            return
        # Woken too late: the slot recorded is in the past, and the calls reserved a window after it may
        # already be on their way. Its slot stays taken (the safe side); the call takes a new one.
        for each in limiters:
            each.rereserved += 1


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` value as seconds to wait from ``now`` (Unix time, default the clock): delay-seconds or an
    HTTP date (RFC 9110 10.2.3); never negative; ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta or HTTP date); HubSpot's interval header as a fallback."""
    value = response.headers.get("Retry-After")
    if value:
        return parse_retry_after(value)
    interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
    if interval and response.headers.get("X-HubSpot-RateLimit-Remaining") == "0":
        try:
            return float(interval) / 1000
        except ValueError:
            return None
    return None


def _vendor_code(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("code", "category", "type"):  # WooCommerce, HubSpot, Stripe (error.type)
            value = body.get(key)
            if isinstance(value, str):
                return value[:80]
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error.get("code") or error["type"])[:80]
    return ""


def raise_for_vendor(response: httpx.Response, system: str) -> None:
    """Raise the connector error matching a non-2xx response."""
    status = response.status_code
    if status < 400:
        return
    code = _vendor_code(response)
    detail = f"HTTP {status}" + (f" {code}" if code else "")
    if status == 429 or status >= 500 or status == 408:
        raise TransientConnectorError(f"{system}: {detail}", retry_after=retry_after_seconds(response))
    if status in (401, 403):
        raise PermanentConnectorError(f"check the credentials of connector {system} ({detail})")
    raise PermanentConnectorError(f"{system}: request refused ({detail})")


READ_TRIES = 3
"""A read is tried up to three times in place before its transient error fails the activity's attempt.

Why: a step that reads ten pages before its first checkpoint (an erasure's verifying ``locate``, a
WooCommerce lookup) fails as a whole when any one call fails, and Temporal's backoff then grows without the
checkpoint ever advancing: at 15% faulted calls, 0.85^10 = 20% of such attempts got through, and a chaos run
left two requests waiting 30 minutes between attempts. Reads have no effect to repeat; writes are never
retried here (the activity's retry and the journal decide what a write did)."""

READ_BACKOFF = 0.5
"""Seconds before the second try of a read (doubled for the third, jittered), when the vendor names no wait."""

READ_WAIT_MAX = 10.0
"""A longer Retry-After is not waited out in place: the attempt fails and Temporal waits (visibly)."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def send(
    client: httpx.AsyncClient,
    limiter: RateLimiter | Sequence[RateLimiter] | None,
    system: str,
    method: str,
    url: str,
    *,
    allow: tuple[int, ...] = (),
    safe: bool | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP call through the rate limiter(s); statuses in ``allow`` (e.g. 404 on delete) are returned.

    A read (``GET``, or a ``POST`` the caller marks ``safe``, such as a search) is retried in place on a
    transient error, after the vendor's Retry-After when it names one (see :data:`READ_TRIES`)."""
    read = method.upper() in SAFE_METHODS if safe is None else safe
    return await tried_in_place(
        lambda: _send_once(client, limiter, system, method, url, allow=allow, **kwargs),
        tries=READ_TRIES if read else 1)


async def tried_in_place(call: Callable[[], Awaitable[T]], *, tries: int = READ_TRIES) -> T:
    """``call()``, called again on a transient error up to ``tries`` times in all, after the vendor's
    Retry-After when it names one no longer than :data:`READ_WAIT_MAX`, else after a short jittered backoff.
    Only for calls that change nothing (see :data:`READ_TRIES`)."""
    for attempt in range(1, tries + 1):
        try:
            return await call()
        except TransientConnectorError as err:
            wait = err.retry_after
            if wait is None:
                wait = READ_BACKOFF * 2 ** (attempt - 1) * random.uniform(0.75, 1.25)
            if attempt >= tries or wait > READ_WAIT_MAX:
                raise
            await asyncio.sleep(wait)
    raise ValueError("tries must be at least 1")


async def _send_once(
    client: httpx.AsyncClient,
    limiter: RateLimiter | Sequence[RateLimiter] | None,
    system: str,
    method: str,
    url: str,
    *,
    allow: tuple[int, ...],
    **kwargs: Any,
) -> httpx.Response:
    # Every try takes its slot in each limit (a search takes the search limit's and the general one's, together).
    await acquire_all(() if limiter is None else (limiter,) if isinstance(limiter, RateLimiter) else limiter)
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise TransientConnectorError(f"{system}: timed out") from None
    except httpx.TransportError as err:
        raise TransientConnectorError(f"{system}: connection failed ({type(err).__name__})") from None
    if response.status_code not in allow:
        raise_for_vendor(response, system)
    return response

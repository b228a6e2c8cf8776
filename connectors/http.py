"""HTTP plumbing shared by connectors: rate limits, and vendor errors turned into retry decisions.

Messages name the connector, the HTTP status and the vendor's error *code* — never the vendor's
message text or the URL, which can quote the subject's email (``/customers?email=...``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from connectors.base import PermanentConnectorError, TransientConnectorError


class RateLimiter:
    """At most ``requests`` calls per ``per_seconds`` (a sliding window), shared by all calls of a connector."""

    def __init__(self, requests: int, per_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per_seconds > 0")
        self.requests = requests
        self.per_seconds = per_seconds
        self._clock = clock
        self._sent: list[float] = []
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._sent = [t for t in self._sent if now - t < self.per_seconds]
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return
                await asyncio.sleep(self.per_seconds - (now - self._sent[0]))


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


async def send(
    client: httpx.AsyncClient,
    limiter: RateLimiter | None,
    system: str,
    method: str,
    url: str,
    *,
    allow: tuple[int, ...] = (),
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP call through the rate limiter; statuses in ``allow`` (e.g. 404 on delete) are returned."""
    if limiter is not None:
        await limiter.acquire()
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise TransientConnectorError(f"{system}: timed out") from None
    except httpx.TransportError as err:
        raise TransientConnectorError(f"{system}: connection failed ({type(err).__name__})") from None
    if response.status_code not in allow:
        raise_for_vendor(response, system)
    return response

"""Retry-After, read once for every connector (connectors/http.py): delay-seconds or an HTTP date."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from connectors.http import parse_retry_after, retry_after_seconds
from connectors.stripe import _retry_after as stripe_retry_after

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("value", "seconds"), [
    ("3", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0),  # never a negative wait
    (format_datetime(datetime(2026, 12, 3, 10, 0, 30, tzinfo=UTC), usegmt=True), 30.0),  # an HTTP date
    ("Thu, 03 Dec 2026 09:59:00 GMT", 0.0),  # a date already past
    ("soon", None), ("", None), (None, None),
])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW.timestamp()) == seconds


def test_the_http_connectors_and_stripe_read_it_alike() -> None:
    assert retry_after_seconds(httpx.Response(429, headers={"retry-after": "7"})) == 7.0
    assert stripe_retry_after({"Retry-After": "7"}) == 7.0  # the SDK keeps the server's spelling
    assert stripe_retry_after({"retry-after": "later"}) is None
    assert stripe_retry_after(None) is None
    # HubSpot's interval header counts only when no Retry-After is given and the window is spent.
    hubspot = {"X-HubSpot-RateLimit-Interval-Milliseconds": "10000", "X-HubSpot-RateLimit-Remaining": "0"}
    assert retry_after_seconds(httpx.Response(429, headers=hubspot)) == 10.0
    assert retry_after_seconds(httpx.Response(429, headers={**hubspot, "Retry-After": "2"})) == 2.0

"""The connector tests' summary: how many requests and answers were checked against the vendors' API
descriptions, and every violation not excused by tests/apispec/exceptions.py (each also fails its test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.apispec import SESSION


@pytest.fixture(autouse=True)
def _short_read_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A read failing without a Retry-After is tried again after connectors.http.READ_BACKOFF (0.5 s, then 1 s): real
    sleeps, 1.5 s a test, that no test here measures (they count the tries). A hundredth of a second instead."""
    monkeypatch.setattr("connectors.http.READ_BACKOFF", 0.01)
    yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = SESSION.summary()
    if lines:
        terminalreporter.section("vendor API descriptions")
        for line in lines:
            terminalreporter.write_line(line)

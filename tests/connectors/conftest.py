"""The connector tests' summary: how many requests and answers were checked against the vendors' API
descriptions, and every violation not excused by tests/apispec/exceptions.py (each also fails its test)."""

from __future__ import annotations

from typing import Any

from tests.apispec import SESSION


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = SESSION.summary()
    if lines:
        terminalreporter.section("vendor API descriptions")
        for line in lines:
            terminalreporter.write_line(line)

"""Fixtures shared by the intake's test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.intake.test_form import FormApp, serve_form


@pytest_asyncio.fixture
async def form_app(tmp_path: Path) -> AsyncIterator[FormApp]:
    """The web form under uvicorn on 127.0.0.1, its submissions recorded (tests/intake/test_form.py)."""
    async with serve_form(tmp_path) as running:
        yield running

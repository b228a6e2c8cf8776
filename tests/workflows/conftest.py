"""Fixtures of the workflow tests: a real Temporal (the time-skipping test server of tests/servers.py, one per test
here), a real SMTP sink, a ledger and a worker on a fresh task queue. Plain helpers (submit, waits, ledger
readers) are in ``support.py``."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dsr.config.profile import ControllerProfile
from dsr.config.settings import Settings, SmtpSettings
from dsr.store.ledger import Ledger
from tests.harness import TEST_KEYRING, MailSink, ScriptedConnector, exports_of, migrated
from tests.servers import time_skipping_server, validated_once
from tests.workflows.support import (  # noqa: F401  (names other branches import from here)
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    SUBJECT_NAME,
    Engine,
    clear_residuals,
    demo_profile,
)
from worker import build_worker


@pytest_asyncio.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test, instead of tests/conftest.py's one per session.

    When a ``handle.result()`` wait ends, the test server now and then skips about ten years (its clock,
    briefly unlocked and idle, runs to some far timer). Shared by a module's tests, eight such skips took
    its clock past 2100, where the holidays package has no data, and every later ``submit`` failed. A fresh
    server starts at today's date, in a fifth of a second (a twentieth of a second of CPU).
    """
    async with time_skipping_server() as env:
        yield env


@pytest.fixture
def settings(tmp_path: Path, mail: MailSink, request: pytest.FixtureRequest) -> Settings:
    """The worker's settings; parametrized indirectly with a zone, the controller's (DSR_TIMEZONE)."""
    env = {"DSR_HOME": str(tmp_path), "DSR_OPERATOR_EMAIL": OPERATOR_EMAIL, "DSR_MAIL_FROM": "privacy@example.com"}
    if zone := getattr(request, "param", None):
        env["DSR_TIMEZONE"] = zone
    return replace(Settings.from_env(env), smtp=SmtpSettings(host="127.0.0.1", port=mail.port))


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    ledger = Ledger(migrated(settings.database_url), TEST_KEYRING)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    return [ScriptedConnector("crm"), ScriptedConnector("billing")]


@pytest.fixture
def profile() -> Callable[[], ControllerProfile | None]:
    """What the worker reads as the controller profile at each reply (tests may swap it mid-flight)."""
    return demo_profile


@pytest_asyncio.fixture
async def engine(
    time_skipping: WorkflowEnvironment,
    settings: Settings,
    ledger: Ledger,
    mail: MailSink,
    connectors: list[ScriptedConnector],
    profile: Callable[[], ControllerProfile | None],
) -> AsyncIterator[Engine]:
    task_queue = f"test-{uuid.uuid4()}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        worker: Worker = build_worker(
            time_skipping.client, settings, ledger, connectors, task_queue=task_queue, executor=executor,
            exports=exports_of(settings), profile=profile, workflow_runner=validated_once(),
        )
        async with worker:
            yield Engine(time_skipping, time_skipping.client, task_queue, settings, ledger, mail, connectors)

"""A real Temporal for workflow tests: the time-skipping test server (months in seconds), ``time_skipping`` of
tests/servers.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dsr.config.profile import ControllerProfile, load_profile
from dsr.config.settings import Settings, SmtpSettings
from dsr.domain.model import ResidualsCleared
from dsr.store.ledger import Ledger
from tests.harness import TEST_KEYRING, MailSink, ScriptedConnector, exports_of
from worker import build_worker


def demo_profile() -> ControllerProfile | None:
    """The demo's complete controller profile: access replies need every Art. 15(1) item."""
    return load_profile(Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml")


SUBJECT_EMAIL = "jeanne.martin@example.org"
SUBJECT_NAME = "Jeanne Martin"
OPERATOR_EMAIL = "dpo@example.com"


@pytest.fixture
def settings(tmp_path: Path, mail: MailSink) -> Settings:
    base = Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_OPERATOR_EMAIL": OPERATOR_EMAIL,
                              "DSR_MAIL_FROM": "privacy@example.com"})
    return replace(base, smtp=SmtpSettings(host="127.0.0.1", port=mail.port))


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    ledger = Ledger(settings.database_url, TEST_KEYRING)
    try:
        yield ledger
    finally:
        ledger.close()


@dataclass
class Engine:
    """A running worker on a fresh task queue, and what a test needs to drive and observe it."""

    env: WorkflowEnvironment
    client: Client
    task_queue: str
    settings: Settings
    ledger: Ledger
    mail: MailSink
    connectors: list[ScriptedConnector]


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
            exports=exports_of(settings), profile=profile,
        )
        async with worker:
            yield Engine(time_skipping, time_skipping.client, task_queue, settings, ledger, mail, connectors)


async def clear_residuals(client: Client, request_id: str, cleared: ResidualsCleared) -> None:
    """`dsr clear-residuals`: once the request is answered its residual data is followed up by its aftercare
    workflow (workflows/aftercare.py), which takes the update as soon as it holds the residual lines."""
    from dsr.domain.aftercare import aftercare_id
    from workflows.aftercare import RequestAftercare

    aftercare = client.get_workflow_handle_for(RequestAftercare.run, aftercare_id(request_id))
    for _ in range(200):
        with contextlib.suppress(RPCError):
            if (await aftercare.query(RequestAftercare.status)).residuals:
                break
        await asyncio.sleep(0.1)
    await aftercare.execute_update(RequestAftercare.clear_residuals, cleared)

"""Plain helpers the workflow tests share (fixtures are in ``conftest.py``): what a test submits and how it waits.

Every wait here polls in real time (no time is skipped while it runs): the query or the ledger, every
:data:`POLL` seconds, for at most ``tries`` polls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from dsr.config.profile import ControllerProfile, load_profile
from dsr.config.settings import Settings
from dsr.domain.model import ClockPolicy, IdentityMethod, RequestInput, RequestStatus, ResidualsCleared, Stage
from dsr.store.ledger import Ledger
from intake.submission import Submission, prepare, start
from tests.harness import MailSink, ScriptedConnector
from workflows.request import DataSubjectRequest

SUBJECT_EMAIL = "jeanne.martin@example.org"
SUBJECT_NAME = "Jeanne Martin"
OPERATOR_EMAIL = "dpo@example.com"

# How often a wait polls: a workflow step takes a few milliseconds on the test server, so a tenth of a second
# wasted per wait added up (hundreds of waits in the fast loop); the tries of each wait are scaled to keep its
# bound in seconds.
POLL = 0.05
_PER_TENTH = round(0.1 / POLL)


def demo_profile() -> ControllerProfile | None:
    """The demo's complete controller profile: access replies need every Art. 15(1) item."""
    return load_profile(Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml")


class SwitchableProfile:
    """The demo profile without the controller's legal name until an operator "fixes dsr.toml"."""

    def __init__(self) -> None:
        self.complete = False

    def __call__(self) -> ControllerProfile | None:
        profile = demo_profile()
        assert profile is not None
        return profile if self.complete else profile.model_copy(update={"legal_name": ""})


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


async def submit(engine: Engine, kind: str = "access", *, identity: IdentityMethod = IdentityMethod.TRUSTED,
                 clock: ClockPolicy = ClockPolicy.RECEIPT, language: str = "fr",
                 changes: dict[str, str] | None = None, channel: str = "api", received_days_ago: int = 0,
                 details: str = "", name: str = SUBJECT_NAME) -> tuple[RequestInput, WorkflowHandle]:
    """A request of Jeanne Martin received now (the server's clock), started on the engine's task queue."""
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=identity, clock=clock))
    now = await engine.env.get_current_time()
    request = prepare(
        Submission(kind=kind, email=SUBJECT_EMAIL, name=name, channel=channel, language=language,
                   changes=changes or {}, details=details,
                   received_at=now - timedelta(days=received_days_ago) if received_days_ago else None),
        settings,
        now=now,
    )
    # The handle from start_workflow is the one that lets the test server skip time while awaited.
    return request, await start(engine.client, request, task_queue=engine.task_queue)


def events(engine: Engine, request: RequestInput) -> list[str]:
    return [e.event for e in engine.ledger.events(request.request_id)]


def templates_sent(engine: Engine, request: RequestInput) -> list[str]:
    return [e.details["template"] for e in engine.ledger.events(request.request_id) if e.event == "notice_sent"]


def readable(message: EmailMessage) -> str:
    """Headers and the decoded text and HTML parts: a raw quoted-printable body may split an address."""
    parts = [message.get_body((kind,)) for kind in ("plain", "html")]
    return "\n".join([str(message["Subject"]), str(message["To"]),
                      *(part.get_content() for part in parts if part is not None)])


async def status(handle: WorkflowHandle) -> RequestStatus:
    return await handle.query(DataSubjectRequest.status)


async def wait_for_stage(engine: Engine, handle: WorkflowHandle, stage: Stage, *, tries: int = 100) -> None:
    """Polls the query until the workflow reaches ``stage`` (``tries`` tenths of a second at most)."""
    for _ in range(tries * _PER_TENTH):
        try:
            if (await status(handle)).stage == stage:
                return
        except RPCError:
            pass  # the first workflow task has not run yet
        await asyncio.sleep(POLL)
    raise AssertionError(f"request never reached {stage}; it is {(await status(handle)).stage}")


async def wait_for_event(engine: Engine, request: RequestInput, event: str, *, tries: int = 100) -> None:
    """Polls the ledger until ``event`` is recorded (``tries`` tenths of a second at most). A stage shows in the
    query as soon as the workflow task that set it completes; the ledger event of the same step is written by an
    activity after it (start, then record), so a test reading the ledger right after :func:`wait_for_stage` may
    be early."""
    for _ in range(tries * _PER_TENTH):
        if event in events(engine, request):
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"{event} never recorded; the ledger holds {events(engine, request)}")


async def wait_for_notice(engine: Engine, request: RequestInput, template: str, *, tries: int = 100) -> None:
    """Polls the ledger until the notice ``template`` was sent: the stage that follows a notice in the workflow
    may show before the notice's activity ran (see :func:`wait_for_event`)."""
    for _ in range(tries * _PER_TENTH):
        if template in templates_sent(engine, request):
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"{template} never sent; sent: {templates_sent(engine, request)}")


async def until(handle: WorkflowHandle, check: Callable[[RequestStatus], object], what: str, seconds: float = 20,
                ) -> RequestStatus:
    """Polls the status until ``check`` holds, for ``seconds`` at most."""
    last: RequestStatus | None = None
    for _ in range(int(seconds / POLL)):
        try:
            last = await status(handle)
        except Exception:  # the first workflow task may not have run yet
            last = None
        if last is not None and check(last):
            return last
        await asyncio.sleep(POLL)
    raise AssertionError(f"never {what}; status: {last}")


async def clear_residuals(client: Client, request_id: str, cleared: ResidualsCleared) -> None:
    """`dsr clear-residuals`: once the request is answered its residual data is followed up by its aftercare
    workflow (workflows/aftercare.py), which takes the update as soon as it holds the residual lines."""
    from dsr.domain.aftercare import aftercare_id
    from workflows.aftercare import RequestAftercare

    aftercare = client.get_workflow_handle_for(RequestAftercare.run, aftercare_id(request_id))
    for _ in range(20 * _PER_TENTH):
        with contextlib.suppress(RPCError):
            if (await aftercare.query(RequestAftercare.status)).residuals:
                break
        await asyncio.sleep(POLL)
    await aftercare.execute_update(RequestAftercare.clear_residuals, cleared)

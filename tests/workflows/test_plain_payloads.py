"""Issue 12, finding 3: whoever reaches Temporal without the keys cannot make the engine act.

A hand-made ``temporal workflow start`` with plain JSON (``policy.identity=trusted``) used to run an erasure with
no key: the codec passed unencrypted payloads through. The worker's codec now refuses them; and a payload copied
from one request's history into another workflow is refused too (it is bound to its workflow id).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError, FailureError

from dsr.domain.model import IdentityConfirmation, IdentityMethod, RequestKind, Stage
from dsr.store.crypto import data_converter
from intake.submission import Submission, prepare
from tests.harness import TEST_KEYRING
from tests.workflows.support import SUBJECT_EMAIL, SUBJECT_NAME, Engine, status, submit, wait_for_stage
from workflows.request import DataSubjectRequest


def _without_keys(engine: Engine) -> Client:
    """What any local user of `dsr up` has: the Temporal frontend, and no codec."""
    return Client(engine.client.service_client, namespace=engine.client.namespace,
                  data_converter=DataConverter(payload_converter_class=PydanticPayloadConverter))


async def _task_failures(handle: WorkflowHandle, *, at_least: int = 1, tries: int = 100) -> list[tuple[str, str]]:
    """``(type, message)`` of the workflow task failures: the type is plain in the history, the message is
    encrypted like every failure message (decoded here with the engine's keys)."""
    converter = data_converter(TEST_KEYRING)
    for _ in range(tries):
        history = await handle.fetch_history()
        failures = [e.workflow_task_failed_event_attributes.failure for e in history.events
                    if e.HasField("workflow_task_failed_event_attributes")]
        if len(failures) >= at_least:
            found: list[tuple[str, str]] = []
            for failure in failures:
                assert SUBJECT_EMAIL not in failure.SerializeToString().decode("latin-1")
                error: BaseException | None = await converter.decode_failure(failure)
                while error is not None:  # "Failed decoding arguments", caused by the refusal
                    found.append((type(error).__name__ if not isinstance(error, ApplicationError) else error.type or "",
                                  str(error)))
                    error = error.cause if isinstance(error, FailureError) else None
            return found
        await asyncio.sleep(0.1)
    return []


async def test_a_plain_trusted_erasure_started_without_keys_does_nothing(engine: Engine) -> None:
    now = await engine.env.get_current_time()
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=IdentityMethod.TRUSTED))
    request = prepare(Submission(kind="erasure", email=SUBJECT_EMAIL, name=SUBJECT_NAME, channel="api"),
                      settings, now=now)
    assert request.kind == RequestKind.ERASURE and request.policy.identity == IdentityMethod.TRUSTED

    handle = await _without_keys(engine).start_workflow(
        "DataSubjectRequest", request, id=request.request_id, task_queue=engine.task_queue)
    try:
        failures = await _task_failures(handle)
        assert failures, "the workflow task should have been refused"
        assert "UnencryptedPayloadError" in {kind for kind, _ in failures}
        assert any("unencrypted payload" in m for _, m in failures)
        assert all(SUBJECT_EMAIL not in m and "Jeanne" not in m for _, m in failures)
        await asyncio.sleep(1.0)  # give a (wrongly) accepting worker time to schedule something
        history = await handle.fetch_history()
        assert not [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]
        assert all(not c.calls for c in engine.connectors), "nothing is erased"
        assert engine.ledger.get_request(request.request_id) is None
    finally:
        with contextlib.suppress(Exception):
            await handle.terminate("test over")


async def test_a_plain_identity_update_is_refused_and_the_request_goes_on(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)

    forged = _without_keys(engine).get_workflow_handle(request.request_id)
    with contextlib.suppress(Exception):  # refused by the worker: an error, or no answer in time
        await asyncio.wait_for(forged.execute_update(
            "confirm_identity", IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="stranger")), 5)
    current = await status(handle)
    assert current.stage == Stage.AWAITING_IDENTITY and not current.identity_confirmed
    assert all(not c.calls for c in engine.connectors)

    # The engine's own (encrypted) confirmation still works afterwards: the refusal stalled nothing.
    await handle.execute_update(DataSubjectRequest.confirm_identity,
                                IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject"))
    assert (await status(handle)).identity_confirmed
    await handle.terminate("test over")


@pytest.mark.slow
async def test_an_input_copied_from_another_request_is_refused(engine: Engine) -> None:
    """Someone who reads one request's history starts a new workflow with its (encrypted) input."""
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL)
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    started = (await handle.fetch_history()).events[0].workflow_execution_started_event_attributes
    copied = list(started.input.payloads)

    raw = Client(engine.client.service_client, namespace=engine.client.namespace)  # no codec: sent as copied
    other = await raw.start_workflow("DataSubjectRequest", *map(RawValue, copied), id=f"{request.request_id}-copy",
                                     task_queue=engine.task_queue)
    try:
        failures = await _task_failures(other)
        assert "ForeignPayloadError" in {kind for kind, _ in failures}
        assert any("another workflow" in m for _, m in failures)
        assert all(SUBJECT_EMAIL not in m for _, m in failures)
    finally:
        with contextlib.suppress(Exception):
            await other.terminate("test over")
        await handle.terminate("test over")

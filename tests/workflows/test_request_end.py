"""The end of a request on the time-skipping server: it ends when answered (what outlives the answer runs in its
aftercare), and a cancellation from the Temporal UI is caught: taken as a withdrawal by staff, or refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from dsr.domain.aftercare import AftercareStatus, aftercare_id
from dsr.domain.model import IdentityMethod, Outcome, Retry, Stage
from tests.harness import ScriptedConnector, keep_history
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    Engine,
    SwitchableProfile,
    events,
    readable,
    status,
    submit,
    templates_sent,
    wait_for_stage,
)
from workflows.aftercare import RequestAftercare
from workflows.request import CANCELLED_BY, DataSubjectRequest


async def details(handle: WorkflowHandle) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def until(check: Callable[[], object], what: str, *, tries: int = 100) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def ended(handle: WorkflowHandle, *, tries: int = 100) -> None:
    """Until the workflow has completed, polled in real time (no time skipped)."""
    for _ in range(tries):
        if (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} never completed")


async def test_a_cancellation_from_the_ui_while_identity_is_awaited_withdraws_the_request(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure", identity=IdentityMethod.EMAIL, language="en")
    await wait_for_stage(engine, handle, Stage.AWAITING_IDENTITY)
    await handle.cancel()  # what the UI's "Request Cancellation" button sends
    final = await handle.result()
    await keep_history(handle, "cancelled_from_the_ui")

    # Not CANCELED without a trace: completed, closed as withdrawn, and every place says so.
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert final.stage == Stage.CLOSED and final.outcome == Outcome.WITHDRAWN
    [withdrawn] = [e for e in engine.ledger.events(request.request_id) if e.event == "withdrawn"]
    assert withdrawn.actor == CANCELLED_BY and withdrawn.details == {"via": "cancellation"}
    assert events(engine, request)[-1] == "closed"
    row = engine.ledger.get_request(request.request_id)
    assert row is not None and row.stage == Stage.CLOSED and row.outcome == Outcome.WITHDRAWN
    assert "**withdrawn by staff**" in await details(handle)
    # The subject is told staff withdrew it (not "as you asked"), the operator is told it was taken.
    await until(lambda: "operator_cancellation" in templates_sent(engine, request), "the operator's notice")
    told = engine.mail.to(SUBJECT_EMAIL)[-1]
    assert "withdrawn by our staff" in str(told["Subject"]) and "As you asked" not in readable(told)
    [notice] = [m for m in engine.mail.to(OPERATOR_EMAIL) if "cancelled from Temporal" in str(m["Subject"])]
    assert request.request_id in str(notice["Subject"]) and SUBJECT_EMAIL not in readable(notice)
    assert not any(c.calls for c in engine.connectors), "nothing was done in the systems"


@pytest.mark.slow
@pytest.mark.parametrize("profile", [SwitchableProfile()])
async def test_a_cancellation_after_the_systems_were_changed_is_refused_and_the_request_goes_on(
    engine: Engine, profile: SwitchableProfile
) -> None:
    request, handle = await submit(engine, "access")
    await wait_for_stage(engine, handle, Stage.NEEDS_ATTENTION)  # the reply is held: the systems were processed
    await handle.cancel()
    await until(lambda: "cancellation_refused" in events(engine, request), "the refusal in the ledger")
    current = await status(handle)
    assert current.stage == Stage.NEEDS_ATTENTION and current.outcome is None
    assert "can be withdrawn only before processing starts" in current.cancellation_refused
    assert f"**cancellation refused**: {current.cancellation_refused}" in await details(handle)
    [refused] = [e for e in engine.ledger.events(request.request_id) if e.event == "cancellation_refused"]
    assert refused.actor == CANCELLED_BY and refused.details["why"] == current.cancellation_refused
    await until(lambda: "operator_cancellation" in templates_sent(engine, request), "the operator's notice")
    [notice] = [m for m in engine.mail.to(OPERATOR_EMAIL) if "annulation refusée" in str(m["Subject"])]
    assert current.cancellation_refused in readable(notice)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    profile.complete = True
    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    final = await handle.result()
    await keep_history(handle, "cancellation_refused_then_answered")
    assert final.outcome == Outcome.FULFILLED
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED, "never CANCELED"
    assert templates_sent(engine, request)[-1] in ("reply_access", "operator_cancellation")
    assert "withdrawn" not in events(engine, request)


async def test_the_aftercare_refuses_a_cancellation_and_still_deletes_the_export(engine: Engine) -> None:
    request, handle = await submit(engine, "access")
    await ended(handle)  # in real time: awaiting the result would let the test server skip past the expiry
    final = await status(handle)
    assert final.link_expires_at is not None
    aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = engine.client.get_workflow_handle_for(
        RequestAftercare.run, aftercare_id(request.request_id))
    assert (await aftercare.describe()).status == WorkflowExecutionStatus.RUNNING
    await aftercare.cancel()
    await until(lambda: "cancellation_refused" in events(engine, request), "the refusal in the ledger")
    care = await aftercare.query(RequestAftercare.status)
    assert care.cancellation_refused.startswith("cancellation refused: the request is answered")
    assert "cancellation refused" in await details(aftercare)
    async with engine.env.time_skipping_unlocked():  # type: ignore[attr-defined]
        done = await aftercare.result()  # the test server skips to the link's expiry
    assert await engine.env.get_current_time() >= final.link_expires_at
    assert done.exports_deleted
    assert (await aftercare.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert events(engine, request)[-1] == "exports_deleted"


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm")]])
async def test_a_request_without_a_link_or_residual_data_has_no_aftercare(engine: Engine) -> None:
    request, handle = await submit(engine, "erasure")
    final = await handle.result()
    assert final.outcome == Outcome.FULFILLED and final.aftercare == "" and final.link_expires_at is None
    assert "aftercare_started" not in events(engine, request)


@pytest.mark.slow
async def test_a_code_closed_on_the_download_page_reaches_the_aftercare_and_the_operator(engine: Engine) -> None:
    from intake.server import code_locked_hook

    request, handle = await submit(engine, "access")
    await ended(handle)  # answered: the request's workflow is over, its aftercare keeps the link
    await code_locked_hook(engine.ledger, engine.client)(request.request_id, "exports", 5)
    await until(lambda: "operator_code_locked" in templates_sent(engine, request), "the operator's notice")
    assert "code_locked" in events(engine, request)
    [notice] = [m for m in engine.mail.to(OPERATOR_EMAIL) if request.request_id in str(m["Subject"])]
    assert "la page de téléchargement" in readable(notice) and SUBJECT_EMAIL not in readable(notice)

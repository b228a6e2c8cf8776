"""List filters need real visibility: these run on the Temporal dev server (SQLite), not the test server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dsr.config.settings import Settings
from dsr.domain.aftercare import AftercareStatus, aftercare_id
from dsr.domain.model import IdentityMethod, RequestKind, ResidualsCleared, Stage
from dsr.runtime.dashboard import RUNNING, ended_by_hand, in_stage, list_due, open_requests, residual_data
from dsr.store.ledger import Ledger
from intake.submission import Submission, prepare, start
from tests.harness import MailSink, ScriptedConnector, exports_of
from tests.servers import validated_once
from worker import build_worker
from workflows import search_attributes as sa
from workflows.aftercare import RequestAftercare
from workflows.request import DataSubjectRequest


async def test_due_and_stage_filters_find_the_right_requests(
    dev_server: WorkflowEnvironment, settings: Settings, mail: MailSink, ledger: Ledger
) -> None:
    task_queue = f"dash-{uuid.uuid4()}"
    policy = replace(settings.policy, identity=IdentityMethod.EMAIL)
    settings = replace(settings, policy=policy)
    now = datetime.now(UTC)
    # Received 40, 26 and 0 days ago: overdue, due within the week, due in a month.
    ids = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(dev_server.client, settings, ledger, task_queue=task_queue, executor=executor,
                                exports=exports_of(settings), workflow_runner=validated_once()):
            for label, days_ago in (("overdue", 40), ("this_week", 26), ("later", 0)):
                request = prepare(
                    Submission(kind="access", email=f"{label}@example.org", received_at=now - timedelta(days=days_ago)),
                    settings, now=now,
                )
                await start(dev_server.client, request, task_queue=task_queue)
                ids[label] = request

            today = datetime.now(ZoneInfo(policy.timezone)).date()
            found = {}
            for _ in range(50):  # visibility is eventually consistent, even on the dev server
                found = {r.id: r for r in await list_due(dev_server.client, today, 7)}
                if {ids["overdue"].request_id, ids["this_week"].request_id} <= found.keys():
                    break
                import asyncio

                await asyncio.sleep(0.2)
            assert ids["overdue"].request_id in found and ids["this_week"].request_id in found
            assert ids["later"].request_id not in found
            listed = [r.id for r in found.values() if r.id in {v.request_id for v in ids.values()}]
            assert listed == [ids["overdue"].request_id, ids["this_week"].request_id], "soonest first"
            assert found[ids["overdue"].request_id].overdue
            assert found[ids["this_week"].request_id].deadline == ids["this_week"].deadlines.normal.due

            # The query from the issue, with a literal one day after the deadline.
            target = ids["later"]
            literal = (target.deadlines.normal.due + timedelta(days=1)).isoformat() + "T00:00:00Z"
            matched = [wf.id async for wf in dev_server.client.list_workflows(
                f'{sa.DSR_DEADLINE.name} < "{literal}" AND WorkflowId = "{target.request_id}"')]
            assert matched == [target.request_id]

            waiting = []
            for _ in range(50):
                waiting = [wf.id async for wf in dev_server.client.list_workflows(in_stage(Stage.AWAITING_IDENTITY))]
                if all(r.request_id in waiting for r in ids.values()):
                    break
                import asyncio

                await asyncio.sleep(0.2)
            assert all(r.request_id in waiting for r in ids.values())
            for request in ids.values():
                await dev_server.client.get_workflow_handle(request.request_id).terminate("test over")
            # Terminated by hand: listed for `dsr reconcile`, no longer among the open requests.
            ours = {r.request_id for r in ids.values()}
            stopped: set[str] = set()
            for _ in range(50):
                stopped = {wf.id async for wf in dev_server.client.list_workflows(ended_by_hand())} & ours
                if stopped == ours:
                    break
                await asyncio.sleep(0.2)
            assert stopped == ours
            assert not {wf.id async for wf in dev_server.client.list_workflows(open_requests())} & ours


@pytest.mark.slow
async def test_residual_filter_lists_answered_requests_until_their_residual_data_is_cleared(
    dev_server: WorkflowEnvironment, settings: Settings, mail: MailSink, ledger: Ledger
) -> None:

    task_queue = f"dash-{uuid.uuid4()}"
    settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
    connectors = [ScriptedConnector("shop", residual=True)]

    async def listed() -> list[str]:
        return [wf.id async for wf in dev_server.client.list_workflows(residual_data())]

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(dev_server.client, settings, ledger, connectors, task_queue=task_queue,
                                executor=executor, exports=exports_of(settings), workflow_runner=validated_once()):
            erasure = prepare(Submission(kind="erasure", email="left.behind@example.org"), settings)
            plain = prepare(Submission(kind="access", email="nothing.left@example.org"), settings)
            # The access request first: the erasure empties the scripted system, and an access request with
            # nothing found would be answered "no data" and end at once. Without a controller profile its
            # reply is held (needs_attention): still running, never residual.
            waiting = await start(dev_server.client, plain, task_queue=task_queue)
            for _ in range(100):
                if (await waiting.query(DataSubjectRequest.status)).reply_held:
                    break
                await asyncio.sleep(0.1)
            handle = await start(dev_server.client, erasure, task_queue=task_queue)
            found: list[str] = []
            for _ in range(100):  # the reply, then the aftercare and its search attribute, then eventual visibility
                found = await listed()
                if aftercare_id(erasure.request_id) in found:
                    break
                await asyncio.sleep(0.2)
            # Listed: the answered erasure's aftercare (the request itself has ended, Completed).
            assert aftercare_id(erasure.request_id) in found and aftercare_id(plain.request_id) not in found
            # The aftercare is started, and may be listed, before its request's last task completes (it is started
            # in that task, by a local activity): wait for the request's result before reading its status.
            await handle.result()
            assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
            running: list[str] = []
            for _ in range(50):  # visibility follows the close, eventually
                running = [wf.id async for wf in dev_server.client.list_workflows(RUNNING)]
                if erasure.request_id not in running:
                    break
                await asyncio.sleep(0.2)
            assert erasure.request_id not in running

            aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = dev_server.client.get_workflow_handle_for(
                RequestAftercare.run, aftercare_id(erasure.request_id))
            await aftercare.execute_update(RequestAftercare.clear_residuals, ResidualsCleared(note="done by hand"))
            await aftercare.result()
            for _ in range(50):
                found = await listed()
                if aftercare_id(erasure.request_id) not in found:
                    break
                await asyncio.sleep(0.2)
            assert aftercare_id(erasure.request_id) not in found
            await dev_server.client.get_workflow_handle(plain.request_id).terminate("test over")


@pytest.mark.slow
async def test_degraded_filter_lists_requests_whose_connector_fails_too_long(
    dev_server: WorkflowEnvironment, settings: Settings, mail: MailSink, ledger: Ledger
) -> None:

    from dsr.runtime.dashboard import connectors_degraded, ui_links
    from tests.harness import ScriptedConnector

    task_queue = f"dash-{uuid.uuid4()}"
    # Degraded from the first failure (0 minutes), so that the dev server, without time skipping, shows it
    # at once; the scripted connector then keeps failing (5 s backoff) well past the test.
    policy = replace(settings.policy, identity=IdentityMethod.TRUSTED, connector_degraded_minutes=0)
    settings = replace(settings, policy=policy)
    connectors = [ScriptedConnector("crm", transient_failures=100)]

    async def listed() -> list[str]:
        return [wf.id async for wf in dev_server.client.list_workflows(connectors_degraded())]

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(dev_server.client, settings, ledger, connectors, task_queue=task_queue,
                                executor=executor, exports=exports_of(settings), workflow_runner=validated_once()):
            failing = prepare(Submission(kind="erasure", email="stuck@example.org"), settings)
            handle = await start(dev_server.client, failing, task_queue=task_queue)
            found: list[str] = []
            for _ in range(100):  # the failure, the signal, the search attribute, then eventual visibility
                found = await listed()
                if failing.request_id in found:
                    break
                await asyncio.sleep(0.2)
            assert failing.request_id in found
            assert (await handle.describe()).typed_search_attributes.get(sa.DSR_DEGRADED) == 1
            await handle.terminate("test over")
    assert "connector degraded" in ui_links("http://127.0.0.1:8233", "default", datetime.now(UTC).date())


@pytest.mark.slow
async def test_objection_filters_find_objections_and_those_waiting_for_a_decision(
    dev_server: WorkflowEnvironment, settings: Settings, mail: MailSink, ledger: Ledger
) -> None:
    import asyncio

    from dsr.runtime.dashboard import decisions_needed, of_kind, ui_links

    task_queue = f"dash-{uuid.uuid4()}"
    settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))

    async def listed(query: str) -> set[str]:
        return {wf.id async for wf in dev_server.client.list_workflows(query)}

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(dev_server.client, settings, ledger, [], task_queue=task_queue,
                                executor=executor, exports=exports_of(settings), workflow_runner=validated_once()):
            objection = prepare(Submission(kind="objection", scope="other", email="objects@example.org"), settings)
            access = prepare(Submission(kind="access", email="reads@example.org",
                                        received_at=datetime.now(UTC) - timedelta(days=1)), settings)
            handles = [await start(dev_server.client, r, task_queue=task_queue) for r in (objection, access)]
            deciding: set[str] = set()
            for _ in range(100):  # the stage, then eventual visibility
                deciding = await listed(decisions_needed())
                if objection.request_id in deciding:
                    break
                await asyncio.sleep(0.2)
            assert objection.request_id in deciding and access.request_id not in deciding
            objections = await listed(of_kind(RequestKind.OBJECTION))
            assert objection.request_id in objections and access.request_id not in objections
            for handle in handles:
                with contextlib.suppress(Exception):  # the access request may have ended already
                    await handle.terminate("test over")
    assert "objections to decide" in ui_links("http://127.0.0.1:8233", "default", datetime.now(UTC).date())


def test_withdrawals_of_consent_have_their_view() -> None:
    import urllib.parse

    from dsr.runtime.dashboard import of_kind, ui_links

    links = ui_links("http://127.0.0.1:8233", "default", datetime.now(UTC).date())
    query = urllib.parse.unquote(links["withdrawals of consent under way"].split("?query=", 1)[1])
    assert query == of_kind(RequestKind.CONSENT_WITHDRAWAL)
    assert "DsrKind = 'consent_withdrawal'" in query and "ExecutionStatus = 'Running'" in query


async def test_a_request_upserts_only_the_attributes_its_start_did_not_set(
    dev_server: WorkflowEnvironment, settings: Settings, mail: MailSink, ledger: Ledger
) -> None:
    """The intake sets every dashboard attribute at start: the request does not write them again (a history event
    and a visibility write for nothing). A request started without them (by another client) still gets them."""
    from temporalio.api.enums.v1 import EventType

    task_queue = f"dash-{uuid.uuid4()}"
    settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.EMAIL))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(dev_server.client, settings, ledger, task_queue=task_queue, executor=executor,
                                exports=exports_of(settings), workflow_runner=validated_once()):
            by_intake = prepare(Submission(kind="access", email="intake@example.org"), settings)
            started = await start(dev_server.client, by_intake, task_queue=task_queue)
            plain = prepare(Submission(kind="erasure", email="plain@example.org"), settings)
            other = await dev_server.client.start_workflow(DataSubjectRequest.run, plain, id=plain.request_id,
                                                           task_queue=task_queue)
            for handle in (started, other):
                for _ in range(100):
                    if (await handle.describe()).typed_search_attributes.get(sa.DSR_STAGE) == \
                            Stage.AWAITING_IDENTITY.value:
                        break
                    await asyncio.sleep(0.1)
            upserted = [set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
                        for e in (await started.fetch_history()).events
                        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES]
            assert upserted == [{sa.DSR_STAGE.name}]  # awaiting identity: the one change since the start
            described = (await other.describe()).typed_search_attributes
            assert described.get(sa.DSR_KIND) == "erasure" and described.get(sa.DSR_CHANNEL) == "api"
            assert described.get(sa.DSR_STAGE) == Stage.AWAITING_IDENTITY.value
            for handle in (started, other):
                await handle.terminate("test over")

"""Progress-aware retries and degraded connectors, on the time-skipping server.

A connector attempt that fails after advancing its checkpoint (an export's page, an erasure's journal) is
resumed at once by a fresh activity from that checkpoint, its attempts and backoff reset; each record is still
exported, or erased, exactly once. A connector that fails without progress keeps Temporal's growing backoff,
and past the policy's ``connector_degraded_minutes`` shows as degraded (status, UI details, ``DsrDegraded``),
the operator told once, until it succeeds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle

from connectors.base import ExportJob, Located, OperationJob, TransientConnectorError, tally
from dsr.domain.model import (
    ConnectorOutcome,
    DatasetSummary,
    IdentityMethod,
    RecordAction,
    RecordReport,
    RequestInput,
    RequestKind,
    RequestStatus,
    Retry,
    Stage,
    Subject,
)
from dsr.store.journals import JournalEntry
from intake.submission import Submission, prepare, start
from tests.harness import ScriptedConnector, exports_of, keep_history
from tests.workflows.support import (
    OPERATOR_EMAIL,
    SUBJECT_EMAIL,
    Engine,
    events,
    readable,
    status,
    templates_sent,
    until,
)
from workflows import search_attributes as sa
from workflows.request import DataSubjectRequest

INITIAL_BACKOFF = timedelta(seconds=5)  # contract.CONNECTOR's initial interval


@dataclass
class Call:
    """What the activity told the connector about the call (``activity.info()``), recorded by the test."""

    attempt: int
    scheduled: datetime  # when this schedule began (its first attempt)
    started: datetime  # when this attempt started: after the backoff, if any


def record_call(calls: list[Call]) -> None:
    info = activity.info()
    calls.append(Call(info.attempt, info.scheduled_time, info.started_time))


@dataclass
class PagingShop:
    """A connector exporting ``pages`` pages of ``per_page`` orders, checkpointing after each page like the
    real ones (flush, then checkpoint); the vendor fails (a 503) after ``pages_per_call`` pages of each call."""

    name: str = "shop"
    kinds: frozenset[RequestKind] = frozenset({RequestKind.ACCESS})
    pages: int = 10
    per_page: int = 7
    pages_per_call: int = 2
    retry_after: float | None = None  # the vendor's Retry-After on its 503
    down_for: int = 0  # the first calls fail at once, before any page (no progress)
    calls: list[Call] = field(default_factory=list)
    served: Counter[int] = field(default_factory=Counter)  # page -> times fetched from the vendor

    async def check(self) -> str:
        return "paging"

    async def locate(self, subject: Subject) -> list[Located]:
        return []

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        record_call(self.calls)
        if self.down_for > 0:
            self.down_for -= 1
            raise TransientConnectorError("service unavailable (503)")
        orders = await job.sink.open(self.name, "orders", provided=True)
        try:
            page = int(job.resume["page"]) if job.resume else 0
            await orders.truncate(page * self.per_page)  # what an attempt wrote after its last checkpoint goes
            for _ in range(self.pages_per_call):
                if page == self.pages:
                    break
                self.served[page] += 1
                for i in range(self.per_page):
                    orders.write({"id": page * self.per_page + i, "email": job.subject.email})
                await orders.flush()
                page += 1
                job.checkpoint({"page": page})
            if page < self.pages:
                raise TransientConnectorError("service unavailable (503)", retry_after=self.retry_after)
        finally:
            await orders.close()
        total = self.pages * self.per_page
        return ConnectorOutcome(connector=self.name, found=total, counts={"exported": total},
                                datasets=[DatasetSummary("orders", total, provided=True)])

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        raise NotImplementedError

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@dataclass
class BatchEraser:
    """A connector erasing ``records`` one by one through its request's journal (intent, vendor call,
    confirmation), as the real ones do; the vendor rate-limits after ``per_call`` deletions of each call."""

    name: str = "crm"
    kinds: frozenset[RequestKind] = frozenset({RequestKind.ERASURE})
    records: int = 10
    per_call: int = 3
    calls: list[Call] = field(default_factory=list)
    deleted: Counter[str] = field(default_factory=Counter)  # record id -> vendor deletions

    def _ids(self) -> list[str]:
        return [f"contact-{i}" for i in range(self.records)]

    async def check(self) -> str:
        return "erasing"

    async def locate(self, subject: Subject) -> list[Located]:
        return [Located("contacts", rid) for rid in self._ids() if not self.deleted[rid]]

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        raise NotImplementedError

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        record_call(self.calls)
        state = await job.journal.state()
        budget = self.per_call
        for rid in self._ids():
            if state.is_done("contacts", rid):
                continue
            if budget == 0:
                raise TransientConnectorError("rate limited (429)")
            entry = JournalEntry(RecordReport("contacts", rid, RecordAction.DELETED))
            await job.journal.intend([entry])
            self.deleted[rid] += 1  # the vendor's DELETE
            await job.journal.record([entry])
            budget -= 1
        report = [e.line for e in (await job.journal.state()).done.values()]
        return ConnectorOutcome(connector=self.name, found=len(report), counts=tally(report), report=report)

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@dataclass
class RecordingScripted(ScriptedConnector):
    """The scripted connector, recording ``activity.info()`` of each call."""

    infos: list[Call] = field(default_factory=list)

    def _fail_if_scripted(self, operation: str, request_id: str) -> None:
        record_call(self.infos)
        super()._fail_if_scripted(operation, request_id)


async def submit(engine: Engine, kind: str, *, degraded_minutes: int = 60) -> tuple[RequestInput, WorkflowHandle]:
    policy = replace(engine.settings.policy, identity=IdentityMethod.TRUSTED,
                     connector_degraded_minutes=degraded_minutes)
    request = prepare(Submission(kind=kind, email=SUBJECT_EMAIL), replace(engine.settings, policy=policy),
                      now=await engine.env.get_current_time())
    return request, await start(engine.client, request, task_queue=engine.task_queue)


async def connector_schedules(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
               and e.activity_task_scheduled_event_attributes.activity_type.name == "run_connector")


async def degraded_attribute(handle: WorkflowHandle) -> int | None:
    return (await handle.describe()).typed_search_attributes.get(sa.DSR_DEGRADED)


@pytest.mark.parametrize("connectors", [[PagingShop()]])
async def test_an_export_failing_after_progress_is_resumed_at_once_from_its_checkpoint(engine: Engine) -> None:
    shop: PagingShop = engine.connectors[0]  # type: ignore[assignment]
    request, handle = await submit(engine, "access")
    # Real time, no skipping: the resumptions need no timer, and the exports must be read before the download
    # link expires (which deletes them).
    final = await until(handle, lambda s: s.stage == Stage.CLOSED, "closed")
    assert final.outcome is not None and final.outcome.value == "fulfilled"

    # Five calls of two pages each; every failure came after progress, so each next call is a fresh activity
    # (attempt 1, attempts reset) scheduled at once: no backoff, let alone a growing one.
    assert len(shop.calls) == 5
    assert [c.attempt for c in shop.calls] == [1] * 5
    assert await connector_schedules(handle) == 5
    gaps = [b.started - a.started for a, b in zip(shop.calls, shop.calls[1:], strict=False)]
    assert all(gap < INITIAL_BACKOFF for gap in gaps), gaps
    assert final.connectors[0].resumed == 4 and final.degraded == []

    # Resumed from the checkpoint, not restarted: each page fetched once, each order in the export once.
    assert set(shop.served.values()) == {1} and len(shop.served) == shop.pages
    ids = [o["id"] for o in exports_of(engine.settings).read(request.request_id, "shop", "orders")]
    assert ids == list(range(shop.pages * shop.per_page))
    assert events(engine, request).count("connector_done") == 1
    assert "needs_attention" not in events(engine, request)


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[RecordingScripted("crm", transient_failures=4, found=2)]])
async def test_without_progress_the_backoff_grows_within_one_activity(engine: Engine) -> None:
    crm: RecordingScripted = engine.connectors[0]  # type: ignore[assignment]
    _, handle = await submit(engine, "access")
    await handle.result()
    # The contrast: no checkpoint advanced, so Temporal retries one activity with its growing backoff.
    assert [c.attempt for c in crm.infos] == [1, 2, 3, 4, 5]
    assert await connector_schedules(handle) == 1
    gaps = [b.started - a.started for a, b in zip(crm.infos, crm.infos[1:], strict=False)]
    assert [round(g.total_seconds()) for g in gaps] == [5, 10, 20, 40], gaps


@pytest.mark.parametrize("connectors", [[BatchEraser()]])
async def test_an_erasure_failing_after_journaled_deletions_resumes_at_once_without_deleting_twice(
    engine: Engine,
) -> None:
    crm: BatchEraser = engine.connectors[0]  # type: ignore[assignment]
    request, handle = await submit(engine, "erasure")
    final: RequestStatus = await handle.result()
    await keep_history(handle, "erasure_resumed_from_its_journal")
    assert final.outcome is not None and final.outcome.value == "fulfilled"

    # 10 records, 3 per call: four calls, each a fresh activity resumed from the journal at once.
    assert [c.attempt for c in crm.calls] == [1, 1, 1, 1]
    assert await connector_schedules(handle) == 4
    assert set(crm.deleted.values()) == {1} and len(crm.deleted) == crm.records  # none deleted twice
    # The outcome merges every call: all ten deleted by this request, none "already gone".
    done = [e for e in engine.ledger.events(request.request_id) if e.event == "connector_done"]
    assert len(done) == 1 and done[0].details["found"] == "10" and done[0].details["deleted"] == "10"
    assert "already_gone" not in done[0].details


@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", transient_failures=13),
                                         ScriptedConnector("billing")]])
async def test_a_connector_failing_past_the_setting_is_degraded_told_once_and_cleared_on_success(
    engine: Engine,
) -> None:
    request, handle = await submit(engine, "erasure", degraded_minutes=45)

    # Backoff 5 s, 10 s, ... 30 min: still failing after 40 minutes, not yet degraded.
    await engine.env.sleep(timedelta(minutes=40))
    early = await status(handle)
    assert early.stage == Stage.PROCESSING and early.degraded == []
    assert early.connectors[1].failing_since is not None  # crm (sorted: billing, crm)
    assert await degraded_attribute(handle) in (None, 0)

    await engine.env.sleep(timedelta(minutes=10))  # past 45 minutes of failing
    state = await status(handle)
    assert state.degraded == ["crm"]
    assert [c.degraded for c in state.connectors] == [False, True]
    assert await degraded_attribute(handle) == 1
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "connector degraded" in metadata.current_details and "**degraded**" in metadata.current_details
    assert templates_sent(engine, request).count("operator_degraded") == 1
    alert = [m for m in engine.mail.to(OPERATOR_EMAIL) if "dégradé" in m["Subject"]]
    assert len(alert) == 1 and "crm" in alert[0]["Subject"] and request.request_id in alert[0]["Subject"]
    assert "rate limited (429)" in readable(alert[0])  # the latest error, as the activity told it
    assert SUBJECT_EMAIL not in readable(alert[0])

    # An hour on, still failing: told once per episode, not again.
    await engine.env.sleep(timedelta(hours=1))
    assert (await status(handle)).degraded == ["crm"]
    assert templates_sent(engine, request).count("operator_degraded") == 1

    final: RequestStatus = await handle.result()  # the 14th attempt succeeds, about 2.7 hours in
    await keep_history(handle, "connector_degraded_then_succeeded")
    assert final.outcome is not None and final.outcome.value == "fulfilled"
    assert final.degraded == [] and not any(c.degraded for c in final.connectors)
    assert await degraded_attribute(handle) == 0
    ledger = engine.ledger.events(request.request_id)
    degraded = [e for e in ledger if e.event == "connector_degraded"]
    cleared = [e for e in ledger if e.event == "connector_degraded_cleared"]
    assert [e.details["connector"] for e in degraded] == ["crm"]
    assert [(e.details["connector"], e.details["by"]) for e in cleared] == [("crm", "success")]
    assert templates_sent(engine, request).count("operator_degraded") == 1
    assert "needs_attention" not in [e.event for e in ledger]


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[ScriptedConnector("crm", transient_failures=50)]])
async def test_a_connector_that_never_progresses_asks_an_operator_after_about_a_day_and_a_retry_starts_afresh(
    engine: Engine,
) -> None:
    request, handle = await submit(engine, "erasure")
    started = await engine.env.get_current_time()
    # 50 attempts on the growing backoff, as before progress-aware retries: about 21 hours, then an operator.
    for _ in range(60):
        await engine.env.sleep(timedelta(hours=1))
        if (await status(handle)).stage == Stage.NEEDS_ATTENTION:
            break
    waited = await engine.env.get_current_time() - started
    assert timedelta(hours=20) < waited < timedelta(hours=23), waited
    assert len(engine.connectors[0].calls) == 50 and await connector_schedules(handle) == 1
    attention = await status(handle)
    assert attention.degraded == [] and attention.connectors[0].state.value == "failed"
    assert [(e.event, e.details.get("by")) for e in engine.ledger.events(request.request_id)
            if e.event.startswith("connector_degraded")] == [("connector_degraded", None),
                                                            ("connector_degraded_cleared", "needs_attention")]
    assert await degraded_attribute(handle) == 0

    # The operator's retry starts a new run: not degraded at once for the old episode, and it succeeds.
    await handle.execute_update(DataSubjectRequest.retry, Retry(requested_by="operator:alice"))
    final: RequestStatus = await handle.result()
    assert final.outcome is not None and final.outcome.value == "fulfilled"
    assert events(engine, request).count("connector_degraded") == 1
    assert templates_sent(engine, request).count("operator_degraded") == 1


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[PagingShop(pages=40, pages_per_call=1, retry_after=3600)]])
async def test_a_connector_progressing_forever_is_resumed_for_a_day_at_most(engine: Engine) -> None:
    """One page per call, each followed by a 503 asking for an hour's pause (honoured before the fresh
    activity): resumed for a day (RESUME_WINDOW), then an operator is asked instead of looping on."""
    shop: PagingShop = engine.connectors[0]  # type: ignore[assignment]
    request, handle = await submit(engine, "access")
    for _ in range(40):
        await engine.env.sleep(timedelta(hours=1))
        if (await status(handle)).stage == Stage.NEEDS_ATTENTION:
            break
    state = await status(handle)
    assert state.stage == Stage.NEEDS_ATTENTION
    assert len(shop.calls) == 25 and [c.attempt for c in shop.calls] == [1] * 25  # 24 resumptions in 24 hours
    gaps = {b.started - a.started for a, b in zip(shop.calls, shop.calls[1:], strict=False)}
    assert all(timedelta(hours=1) <= gap < timedelta(hours=1, seconds=5) for gap in gaps), gaps  # Retry-After
    [crm] = state.connectors
    assert crm.state.value == "failed" and crm.resumed == 24 and "resumed 24 times and still failing" in crm.error
    assert "needs_attention" in events(engine, request)
    await handle.terminate("test over")


@pytest.mark.slow
@pytest.mark.parametrize("connectors", [[PagingShop(pages=4, pages_per_call=1, down_for=6)]])
async def test_a_degraded_connector_is_cleared_when_it_progresses(engine: Engine) -> None:
    """Down for six attempts (5 s, 10 s, ... 160 s of backoff: past the 2-minute setting), then a page per call:
    the first page clears the episode, before the export is done."""
    shop: PagingShop = engine.connectors[0]  # type: ignore[assignment]
    request, handle = await submit(engine, "access", degraded_minutes=2)
    await engine.env.sleep(timedelta(minutes=3))
    assert (await status(handle)).degraded == ["shop"]
    await engine.env.sleep(timedelta(minutes=3))  # the seventh attempt, at 315 s, writes a page
    final = await until(handle, lambda s: s.stage == Stage.CLOSED, "closed")
    assert final.degraded == [] and final.connectors[0].resumed == 3
    assert [c.attempt for c in shop.calls] == [1, 2, 3, 4, 5, 6, 7, 1, 1, 1]
    trail = engine.ledger.events(request.request_id)
    assert [(e.event, e.details.get("by")) for e in trail if e.event.startswith("connector_degraded")] == [
        ("connector_degraded", None), ("connector_degraded_cleared", "progress")]
    assert templates_sent(engine, request).count("operator_degraded") == 1
    assert [e.event for e in trail].index("connector_degraded_cleared") < [e.event for e in trail].index(
        "connector_done")

"""The fan-out activity: how connector errors become retry decisions, and liveness heartbeats."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import threading
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.connectors as fan_out
from activities.connectors import PERMANENT_ERROR, PROGRESSED, ConnectorActivities
from connectors.base import ExportJob, OperationJob
from dsr.domain.model import (
    ConnectorOutcome,
    ConnectorTask,
    PlanInput,
    RecordAction,
    RecordReport,
    RequestKind,
    Subject,
)
from dsr.mail.replies import _count
from dsr.store.exports import ExportStore
from tests.harness import ScriptedConnector, file_exports, raw_dataset

STORE = file_exports(Path(tempfile.mkdtemp(prefix="dsr-exports-")))
SUBJECT = Subject(email="lea.petit@example.org", name="Léa Petit")


def fan_out_with(connectors: list[ScriptedConnector]) -> ConnectorActivities:
    return ConnectorActivities(connectors, STORE)


def task(connector: str, kind: RequestKind = RequestKind.ERASURE) -> ConnectorTask:
    return ConnectorTask(request_id="dsr-2026-11-AAAAAA", connector=connector, kind=kind, subject=SUBJECT)


class Exploding(ScriptedConnector):
    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        raise KeyError(f"no customer {job.subject.email}")  # a careless library error quoting the subject


class Slow(ScriptedConnector):
    async def export(self, job: ExportJob) -> ConnectorOutcome:
        await asyncio.sleep(0.3)
        return await super().export(job)


async def test_plan_lists_connectors_taking_part_in_the_kind() -> None:
    activities = fan_out_with([
        ScriptedConnector("stripe"),
        ScriptedConnector("crm", kinds=frozenset({RequestKind.ACCESS})),
    ])
    env = ActivityEnvironment()
    assert (await env.run(activities.plan_fanout, PlanInput(kind=RequestKind.ERASURE))).connectors == ["stripe"]
    assert (await env.run(activities.plan_fanout, PlanInput(kind=RequestKind.ACCESS))).connectors == ["crm", "stripe"]


def test_connector_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="two connectors are named 'crm'"):
        fan_out_with([ScriptedConnector("crm"), ScriptedConnector("crm")])


async def test_transient_error_honours_retry_after() -> None:
    activities = fan_out_with([ScriptedConnector("crm", transient_failures=1, retry_after=42)])
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.run_connector, task("crm"))
    assert not raised.value.non_retryable and raised.value.next_retry_delay == timedelta(seconds=42)


async def test_permanent_error_is_not_retried_and_names_the_connector() -> None:
    activities = fan_out_with([ScriptedConnector("crm", permanent_failures=1)])
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.run_connector, task("crm"))
    assert raised.value.non_retryable and raised.value.type == PERMANENT_ERROR
    assert "credentials of connector crm" in raised.value.message


async def test_unknown_connector_is_permanent() -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(fan_out_with([]).run_connector, task("ghost"))
    assert raised.value.non_retryable and "not configured" in raised.value.message


async def test_unexpected_error_keeps_its_type_but_not_its_personal_data() -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(fan_out_with([Exploding("crm")]).run_connector, task("crm"))
    assert raised.value.message == "crm: unexpected KeyError" and raised.value.__cause__ is None
    assert "lea.petit" not in str(raised.value)


async def test_erasure_is_verified_by_locating_again() -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(fan_out_with([ScriptedConnector("crm", leaves_behind=1)]).run_connector,
                                        task("crm"))
    assert raised.value.non_retryable
    assert raised.value.message == "crm: erasure verification failed: 1 record(s) still present (records)"


async def test_access_streams_records_to_the_encrypted_export_store() -> None:
    outcome = await ActivityEnvironment().run(fan_out_with([ScriptedConnector("crm", found=5)]).run_connector,
                                              task("crm", RequestKind.ACCESS))
    assert outcome.counts == {"exported": 5}
    stored = list(STORE.read("dsr-2026-11-AAAAAA", "crm", "records"))
    assert [r["id"] for r in stored] == [f"crm-{i}" for i in range(5)]
    [raw] = raw_dataset(STORE, "dsr-2026-11-AAAAAA", "crm", "records")  # one sealed chunk
    assert b"lea.petit" not in raw


async def test_a_running_connector_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fan_out, "HEARTBEAT_EVERY", 0.05)
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    outcome = await env.run(fan_out_with([Slow("crm")]).run_connector, task("crm", RequestKind.ACCESS))
    assert outcome.counts == {"exported": 3}
    assert len(beats) >= 3


class Bulky(ScriptedConnector):
    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        report = [RecordReport("orders", f"o{i}", RecordAction.ANONYMISED, legal_basis="L123-22",
                               retained_until=date(2035, 1, 1 + i % 28)) for i in range(1000)]
        report.append(RecordReport("customer", "c1", RecordAction.DELETED))
        self.found = 0
        return ConnectorOutcome(connector=self.name, found=1001, counts={"anonymised": 1000, "deleted": 1},
                                report=report)

    async def locate(self, subject: Subject) -> list:
        return []


async def test_a_long_report_is_stored_encrypted_and_summarised_in_history() -> None:
    request_id = "dsr-2026-11-BULKY1"
    outcome = await ActivityEnvironment().run(
        fan_out_with([Bulky("shop")]).run_connector,
        ConnectorTask(request_id=request_id, connector="shop", kind=RequestKind.ERASURE, subject=SUBJECT),
    )
    # Summary lines ("*") lead their note with the records they stand for, as the replies count them.
    assert [(r.dataset, r.record_id, r.action, r.retained_until, r.note) for r in outcome.report] == [
        ("orders", "*", "anonymised", date(2035, 1, 28), "1000 records"),
        ("customer", "*", "deleted", None, "1 records"),
    ]
    assert [_count([line]) for line in outcome.report] == ["1000", "1"]
    stored = list(STORE.read(request_id, "shop", "report"))
    assert len(stored) == 1001 and stored[0]["record_id"] == "o0"


async def test_an_attempt_after_a_lost_worker_that_had_progressed_asks_for_a_fresh_schedule_at_once() -> None:
    """The previous attempt advanced its checkpoint (heartbeat ``[cursor, started_from]``) and its worker died:
    the next attempt gives its cursor back at once, without calling the vendor, so the workflow resumes from
    it with attempts and backoff reset (patch ``connector-progress``)."""
    crm = ScriptedConnector("crm")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=3, heartbeat_details=[{"page": 9}, {"page": 4}])
    watched = dataclasses.replace(task("crm", RequestKind.ACCESS), schedule=2, resume={"page": 4})
    with pytest.raises(ApplicationError) as raised:
        await env.run(fan_out_with([crm]).run_connector, watched)
    assert raised.value.type == PROGRESSED and raised.value.non_retryable
    assert list(raised.value.details) == [{"page": 9}, None]
    assert crm.calls == []


async def test_an_attempt_after_a_lost_worker_that_had_not_progressed_runs_normally() -> None:
    crm = ScriptedConnector("crm")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=3, heartbeat_details=[{"page": 4}, {"page": 4}])
    watched = dataclasses.replace(task("crm", RequestKind.ACCESS), schedule=2, resume={"page": 4})
    outcome = await env.run(fan_out_with([crm]).run_connector, watched)
    assert outcome.counts == {"exported": 3} and len(crm.calls) == 1


async def test_before_the_patch_a_failure_after_progress_is_an_ordinary_retryable_one() -> None:
    """Workflows from before ``connector-progress`` (schedule 0) cannot handle ``ConnectorProgressed``."""

    class Paging(ScriptedConnector):
        async def export(self, job: ExportJob) -> ConnectorOutcome:
            job.checkpoint({"page": 1})
            raise fan_out.TransientConnectorError("service unavailable (503)")

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(fan_out_with([Paging("crm")]).run_connector, task("crm", RequestKind.ACCESS))
    assert raised.value.type == "TransientConnectorError" and not raised.value.non_retryable
    watched = dataclasses.replace(task("crm", RequestKind.ACCESS), schedule=1)
    with pytest.raises(ApplicationError) as progressed:
        await ActivityEnvironment().run(fan_out_with([Paging("crm")]).run_connector, watched)
    assert progressed.value.type == PROGRESSED and list(progressed.value.details) == [{"page": 1}, None]


class Paging(ScriptedConnector):
    """Three pages of 100 records, each flushed and checkpointed as the real connectors do."""

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        writer = await job.sink.open(self.name, "records", provided=True)
        try:
            for page in range(3):
                for i in range(100):
                    writer.write({"id": page * 100 + i})
                await writer.flush()
                job.checkpoint({"page": page + 1, "written": writer.count})
                await asyncio.sleep(0.01)  # the next page's request
        finally:
            await writer.close()
        return ConnectorOutcome(connector=self.name, found=300, counts={"exported": 300})


async def test_an_export_fetches_on_while_its_chunks_are_stored_and_heartbeats_only_stored_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = file_exports(tmp_path)
    folder = store.dataset_prefix("dsr-2026-11-AAAAAA", "crm", "records")
    third_page_written, put = threading.Event(), store.objects.put
    waited: list[bool] = []

    def slow_first_chunk(key: str, data: bytes, **options: object) -> None:
        if key.endswith("00000000-100.chunk"):  # held until the connector has written its third page
            waited.append(third_page_written.wait(10))
        put(key, data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(store.objects, "put", slow_first_chunk)
    beats: list[tuple[dict, int]] = []

    def heartbeat(*details: object) -> None:
        if details and details[0] is not None:
            cursor = dict(details[0])  # type: ignore[call-overload]
            stored = sum(int(k.rsplit("-", 1)[1].split(".")[0]) for k in store.objects.list(folder)
                         if k.endswith(".chunk"))
            beats.append((cursor, stored))  # what the store held when the cursor reached Temporal

    class Connector(Paging):
        async def export(self, job: ExportJob) -> ConnectorOutcome:
            checkpoint = job.checkpoint

            def counting(cursor: Mapping[str, Any]) -> None:
                checkpoint(cursor)
                if cursor["page"] == 3:
                    third_page_written.set()

            return await super().export(dataclasses.replace(job, checkpoint=counting))

    env = ActivityEnvironment()
    env.on_heartbeat = heartbeat
    outcome = await env.run(ConnectorActivities([Connector("crm")], store).run_connector,
                            task("crm", RequestKind.ACCESS))
    assert outcome.counts == {"exported": 300}
    assert waited == [True]  # the connector wrote pages 2 and 3 while page 1 was still being stored
    assert [cursor["page"] for cursor, _ in beats] == [1, 2, 3]  # in order, each once its chunks were stored
    assert all(stored >= cursor["written"] for cursor, stored in beats)
    assert [r["id"] for r in ExportStore(store.objects, store.sealer).read(
        "dsr-2026-11-AAAAAA", "crm", "records")] == list(range(300))

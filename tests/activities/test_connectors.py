"""The fan-out activity: how connector errors become retry decisions, and liveness heartbeats."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.connectors as fan_out
from activities.connectors import PERMANENT_ERROR, ConnectorActivities
from dsr.model import ConnectorTask, PlanInput, RequestKind, Subject
from tests.harness import ScriptedConnector

SUBJECT = Subject(email="lea.petit@example.org", name="Léa Petit")


def task(connector: str, kind: RequestKind = RequestKind.ERASURE) -> ConnectorTask:
    return ConnectorTask(request_id="dsr-2026-11-AAAAAA", connector=connector, kind=kind, subject=SUBJECT)


class Exploding(ScriptedConnector):
    async def erase(self, request_id: str, subject: Subject):
        raise KeyError(f"no customer {subject.email}")  # a careless library error quoting the subject


class Slow(ScriptedConnector):
    async def access(self, request_id: str, subject: Subject):
        await asyncio.sleep(0.3)
        return await super().access(request_id, subject)


async def test_plan_lists_connectors_taking_part_in_the_kind() -> None:
    activities = ConnectorActivities([
        ScriptedConnector("stripe"),
        ScriptedConnector("crm", kinds=frozenset({RequestKind.ACCESS})),
    ])
    env = ActivityEnvironment()
    assert (await env.run(activities.plan_fanout, PlanInput(kind=RequestKind.ERASURE))).connectors == ["stripe"]
    assert (await env.run(activities.plan_fanout, PlanInput(kind=RequestKind.ACCESS))).connectors == ["crm", "stripe"]


def test_connector_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="two connectors are named 'crm'"):
        ConnectorActivities([ScriptedConnector("crm"), ScriptedConnector("crm")])


async def test_transient_error_honours_retry_after() -> None:
    activities = ConnectorActivities([ScriptedConnector("crm", transient_failures=1, retry_after=42)])
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.run_connector, task("crm"))
    assert not raised.value.non_retryable and raised.value.next_retry_delay == timedelta(seconds=42)


async def test_permanent_error_is_not_retried_and_names_the_connector() -> None:
    activities = ConnectorActivities([ScriptedConnector("crm", permanent_failures=1)])
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.run_connector, task("crm"))
    assert raised.value.non_retryable and raised.value.type == PERMANENT_ERROR
    assert "credentials of connector crm" in raised.value.message


async def test_unknown_connector_is_permanent() -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(ConnectorActivities([]).run_connector, task("ghost"))
    assert raised.value.non_retryable and "not configured" in raised.value.message


async def test_unexpected_error_keeps_its_type_but_not_its_personal_data() -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(ConnectorActivities([Exploding("crm")]).run_connector, task("crm"))
    assert raised.value.message == "crm: unexpected KeyError" and raised.value.__cause__ is None
    assert "lea.petit" not in str(raised.value)


async def test_a_running_connector_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fan_out, "HEARTBEAT_EVERY", 0.05)
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    outcome = await env.run(ConnectorActivities([Slow("crm")]).run_connector, task("crm", RequestKind.ACCESS))
    assert outcome.counts == {"exported": 3}
    assert len(beats) >= 3

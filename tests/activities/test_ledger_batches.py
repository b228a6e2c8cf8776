"""The ledger's batch activity, run as an activity and as a local activity of the same run."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from activities.ledger import LedgerActivities
from dsr.domain.model import AuditEvent, Channel, Language, RequestKind, RequestRecordInput, Subject
from dsr.store.ledger import Ledger
from tests.harness import TEST_KEYRING


def test_a_local_activity_and_an_activity_with_the_same_id_both_write(tmp_path: Path) -> None:
    """A local activity's id is its sequence number, counted apart from the activities': local 3 and activity 3 of one
    run are two writes (neither taken for a retry of the other), and each, run again, writes nothing twice."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING)
    try:
        activities = LedgerActivities(ledger)
        ledger.record_request(RequestRecordInput(
            request_id="dsr-batches", kind=RequestKind.ACCESS, channel=Channel.FORM,
            subject=Subject(email="ada@example.org", name="Ada"), received_at=datetime(2026, 1, 5, tzinfo=UTC),
            deadline=date(2026, 2, 5), language=Language.EN), now=datetime(2026, 1, 5, tzinfo=UTC))
        env = ActivityEnvironment()
        env.info = dataclasses.replace(env.info, workflow_id="dsr-batches", workflow_run_id="run-1", activity_id="3")
        local = ActivityEnvironment()
        local.info = dataclasses.replace(env.info, is_local=True)

        def batch(event: str) -> list[AuditEvent]:
            return [AuditEvent(request_id="dsr-batches", event=event)]

        assert env.run(activities.record_events, batch("turn_taken")) == 1
        assert local.run(activities.record_events, batch("connector_done")) == 1
        assert local.run(activities.record_events, batch("connector_done")) == 0  # replayed after a lost task
        assert env.run(activities.record_events, batch("turn_taken")) == 0  # a retried attempt
        assert [e.event for e in ledger.events("dsr-batches")] == ["turn_taken", "connector_done"]
    finally:
        ledger.close()

"""The ``sql`` connector run by the fan-out activity, as a worker runs it: exports sealed into the object storage,
erasures verified by locating again, long reports stored and summarised. PostgreSQL; storage on files and S3.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.connectors import REPORT_LINES_IN_HISTORY, ConnectorActivities
from connectors.sql import SqlConnector
from dsr.domain.model import ConnectorOutcome, ConnectorTask, RecordAction, RequestKind, Subject
from dsr.store import store_at
from dsr.store.exports import ExportStore
from sandbox.appdb import HEAVY, PEOPLE, rows_of, seed
from tests.connectors.test_sql import connector
from tests.harness import TEST_KEYRING

CAMILLE = Subject(PEOPLE[0].email)


@pytest.fixture
def app_db(postgres_url: str) -> Iterator[str]:
    engine = create_engine(postgres_url)
    seed(engine, fillers=20)
    engine.dispose()
    yield postgres_url


async def run(storage_url: str, sql: SqlConnector, task: ConnectorTask) -> ConnectorOutcome:
    activities = ConnectorActivities([sql], ExportStore(store_at(storage_url), TEST_KEYRING))
    try:
        return await ActivityEnvironment().run(activities.run_connector, task)
    finally:
        await sql.aclose()


def task(kind: RequestKind, subject: Subject, request_id: str = "dsr-2026-12-SQLACT") -> ConnectorTask:
    return ConnectorTask(request_id=request_id, connector="app", kind=kind, subject=subject)


async def test_access_is_sealed_in_the_storage_one_dataset_per_table(app_db: str, storage_url: str) -> None:
    outcome = await run(storage_url, connector(app_db), task(RequestKind.ACCESS, CAMILLE))
    store = ExportStore(store_at(storage_url), TEST_KEYRING)
    documents = list(store.read("dsr-2026-12-SQLACT", "app", "documents"))
    users = list(store.read("dsr-2026-12-SQLACT", "app", "users"))
    assert [u["email"] for u in users] == [CAMILLE.email] and len(documents) == 2
    organisations = list(store.read("dsr-2026-12-SQLACT", "app", "organisations"))  # of her two memberships
    assert 1 <= len(organisations) <= 2
    assert outcome.counts == {"exported": rows_of(PEOPLE[0]) + len(organisations)}
    assert outcome.notes == ["categories of data: connection data, contact, content, identity, professional life"]
    objects = store_at(storage_url)
    for key in objects.list("exports/"):
        assert CAMILLE.email.encode() not in objects.get(key)  # ciphertext only


async def test_the_heavy_erasure_is_verified_and_its_long_report_stored(app_db: str, storage_url: str) -> None:
    outcome = await run(storage_url, connector(app_db), task(RequestKind.ERASURE, Subject(HEAVY.email)))
    assert sum(outcome.counts.values()) == rows_of(HEAVY)
    assert len(outcome.report) < REPORT_LINES_IN_HISTORY  # summarised in history, in full in the storage
    kept = [line for line in outcome.report if line.legal_basis]
    assert {line.dataset for line in kept} == {"invoices", "login_events"}
    assert all(line.action == RecordAction.ANONYMISED and line.retained_until for line in kept)
    stored = list(ExportStore(store_at(storage_url), TEST_KEYRING).read("dsr-2026-12-SQLACT", "app", "report"))
    assert len(stored) == rows_of(HEAVY)


async def test_rows_the_database_still_references_stop_the_erasure_for_an_operator(
        app_db: str, storage_url: str) -> None:
    class ForgetsDocumentVersions(SqlConnector):
        """A faulty erasure (or a table the map misses): the versions stay, referencing their documents."""

        def _apply(self, t: Any, batch: Any) -> None:
            if t.name != "document_versions":
                super()._apply(t, batch)

    faulty = connector(app_db)
    faulty.__class__ = ForgetsDocumentVersions
    # The versions are then found again through their document, which cannot be deleted: the database refuses.
    with pytest.raises(ApplicationError) as err:
        await run(storage_url, faulty, task(RequestKind.ERASURE, CAMILLE))
    assert err.value.non_retryable and "refused to erase rows of documents" in str(err.value)
    assert CAMILLE.email not in str(err.value)

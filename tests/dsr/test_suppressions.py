"""The suppression list: a marketing objection remembered by blind index only, for its period, then forgotten."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from dsr.store.ledger import Ledger
from dsr.store.suppressions import SuppressionList
from tests.harness import TEST_KEYRING

EMAIL = "Camille.Durand@example.org"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING) as ledger:
        yield ledger


def test_a_suppressed_address_is_recognised_in_any_case_and_stored_as_no_address(ledger: Ledger) -> None:
    suppressions = SuppressionList(ledger)
    entry = suppressions.suppress(EMAIL, years=3, now=T0)
    assert entry.until == datetime(2029, 11, 23, 10, 0, tzinfo=UTC)
    assert suppressions.is_suppressed("camille.durand@EXAMPLE.org", now=T0 + timedelta(days=1))
    assert not suppressions.is_suppressed("hugo.bernard@example.net", now=T0)
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM suppressions")).all()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0]).lower()
    assert "camille" not in stored and "example.org" not in stored
    assert rows[0][0] == ledger.subject_key(EMAIL)  # the ledger's own blind index, nothing else


def test_the_entry_runs_from_the_latest_objection_and_ends_with_its_period(ledger: Ledger) -> None:
    suppressions = SuppressionList(ledger)
    suppressions.suppress(EMAIL, years=3, now=T0)
    later = T0 + timedelta(days=400)
    assert suppressions.suppress(EMAIL, years=3, now=later).since == later
    assert suppressions.is_suppressed(EMAIL, now=T0 + timedelta(days=365 * 3 + 10))
    gone = later + timedelta(days=365 * 3 + 1)
    assert not suppressions.is_suppressed(EMAIL, now=gone)
    assert suppressions.entries(now=gone) == []
    # Expired rows are purged at the next write.
    suppressions.suppress("other@example.com", years=1, now=gone)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM suppressions")).scalar() == 1


def test_a_shorter_later_setting_never_shortens_an_entry(ledger: Ledger) -> None:
    suppressions = SuppressionList(ledger)
    first = suppressions.suppress(EMAIL, years=5, now=T0)
    assert suppressions.suppress(EMAIL, years=1, now=T0 + timedelta(days=1)) == first
    with pytest.raises(ValueError):
        suppressions.suppress(EMAIL, years=0, now=T0)

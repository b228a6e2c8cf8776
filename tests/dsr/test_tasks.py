"""The tasks of systems reached by a person, on SQLite and PostgreSQL: one answer wins, sealed at rest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from dsr.domain.model import AnswerStatus, OutsideAnswer
from dsr.store.ledger import Ledger
from dsr.store.tasks import OutsideTasks, UnknownTask
from tests.harness import TEST_KEYRING

NOW = datetime(2026, 12, 3, 10, tzinfo=UTC)
REQUEST = "dsr-2026-12-AAAAAA"


def answer(status: AnswerStatus, *, legal_basis: str = "", kept_until: date | None = None) -> OutsideAnswer:
    return OutsideAnswer(status=status, answered_by="processor", answered_at=NOW, legal_basis=legal_basis,
                         kept_until=kept_until)


def test_of_many_racing_answers_exactly_one_is_recorded_and_its_text_is_sealed(database_url: str) -> None:
    ledger = Ledger(database_url, TEST_KEYRING)
    try:
        tasks = OutsideTasks(ledger.engine, TEST_KEYRING)
        opened = tasks.open(REQUEST, "chat-tool", "processor", answer_by=NOW + timedelta(days=10), now=NOW,
                            asked_on=NOW.date())
        assert (opened.rounds, opened.asked_on, opened.answer) == (1, NOW.date(), None)
        # Asked again (an operator's retry after no answer): a later date, one more round; never an earlier one.
        again = tasks.open(REQUEST, "chat-tool", "processor", answer_by=NOW + timedelta(days=20), now=NOW,
                           asked_on=NOW.date())
        assert again.rounds == 2 and again.answer_by == NOW + timedelta(days=20)
        assert tasks.open(REQUEST, "chat-tool", "processor", answer_by=NOW, now=NOW, asked_on=NOW.date()).rounds == 2

        answers = [answer(AnswerStatus.KEPT, legal_basis=f"basis {i}", kept_until=date(2036, 12, 31))
                   for i in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            won = list(pool.map(lambda a: tasks.record_answer(REQUEST, "chat-tool", a), answers))
        assert won.count(True) == 1
        recorded = tasks.get(REQUEST, "chat-tool")
        assert recorded is not None and recorded.answer is not None
        assert recorded.answer.legal_basis == answers[won.index(True)].legal_basis
        assert recorded.answer.kept_until == date(2036, 12, 31)
        with ledger.engine.connect() as conn:
            sealed = conn.execute(text("SELECT answer_sealed FROM outside_tasks")).scalar_one()
        assert "basis" not in sealed
        assert tasks.tasks(open_only=True) == [] and len(tasks.tasks()) == 1
        # An answered task stays answered when asked again.
        assert tasks.open(REQUEST, "chat-tool", "processor", answer_by=NOW + timedelta(days=30),
                          now=NOW, asked_on=NOW.date()).answer is not None
        with pytest.raises(UnknownTask):
            tasks.record_answer(REQUEST, "nowhere", answer(AnswerStatus.DONE))
    finally:
        ledger.close()

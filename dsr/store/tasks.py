"""Tasks of systems reached by a person (``processor`` by email, ``manual``): one row per request and system.

The row is the record of what was asked and what was answered, kept after Temporal forgets, and the one place
the answer is written: :meth:`OutsideTasks.record_answer` is a conditional update (``WHERE status IS NULL``), so of
two answers racing on two intake replicas (or the page and the CLI) exactly one wins, on SQLite and PostgreSQL
alike; the other is told the task was already answered. The answer's free text (legal basis, reason) is sealed,
bound to the request and system.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, Engine, String, Text, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from dsr.domain.model import AnswerStatus, OutsideAnswer
from dsr.errors import NotFoundError
from dsr.store.ledger import Sealer, UTCDateTime, prepare_schema

__all__ = ["OutsideTask", "OutsideTaskRow", "OutsideTasks", "UnknownTask"]

ANSWER_PURPOSE = "outside.answer"


class UnknownTask(NotFoundError, LookupError):
    """No task of that request and system (never asked, or a mistyped reference)."""


class OutsideTaskRow(SQLModel, table=True):
    """One system reached by a person, for one request."""

    __tablename__ = "outside_tasks"

    request_id: str = Field(primary_key=True, sa_type=String(100))
    system: str = Field(primary_key=True, sa_type=String(40))
    type: str = Field(sa_type=String(16))  # processor | manual
    asked_on: date
    answer_by: datetime = Field(sa_type=UTCDateTime)
    rounds: int = 1  # how often it was asked (an operator's retry after no answer asks again)
    status: str | None = Field(default=None, sa_type=String(16), index=True)  # AnswerStatus; None: open
    answer_sealed: str = Field(default="", sa_type=Text)
    answered_by: str = Field(default="", sa_type=Text)
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class OutsideTask:
    request_id: str
    system: str
    type: str
    asked_on: date
    answer_by: datetime
    rounds: int
    answer: OutsideAnswer | None


class OutsideTasks:
    """The tasks, on the ledger's database (``engine``), their answers sealed by ``sealer`` (the key ring)."""

    def __init__(self, engine: Engine, sealer: Sealer) -> None:
        prepare_schema(engine)
        self._engine = engine
        self._sealer = sealer

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as session:
            yield session

    def open(self, request_id: str, system: str, type_: str, *, answer_by: datetime, now: datetime,
             asked_on: date) -> OutsideTask:
        """The task, created if new; asked again (new answer-by date, one more round) if it is still open and
        ``answer_by`` is later than its own. An answered task is returned as it is. ``asked_on`` is the day of
        ``now`` in the controller's time zone (not UTC's: the letters compare it with the request's receipt day)."""
        try:
            with self._session() as session:
                session.add(OutsideTaskRow(request_id=request_id, system=system, type=type_, asked_on=asked_on,
                                           answer_by=answer_by, created_at=now))
                session.commit()
        except IntegrityError:
            with self._session() as session:
                session.exec(update(OutsideTaskRow)
                             .where(col(OutsideTaskRow.request_id) == request_id,
                                    col(OutsideTaskRow.system) == system,
                                    col(OutsideTaskRow.status).is_(None),
                                    col(OutsideTaskRow.answer_by) < answer_by)
                             .values(answer_by=answer_by, rounds=OutsideTaskRow.rounds + 1))
                session.commit()
        task = self.get(request_id, system)
        assert task is not None
        return task

    def record_answer(self, request_id: str, system: str, answer: OutsideAnswer) -> bool:
        """Record the answer, once: False when the task was already answered; :class:`UnknownTask` when there is
        no such task. An operator's ``no_answer`` (the request went on without it) is no answer: the system's
        own answer may still replace it, once."""
        assert answer.answered_at is not None
        sealed = self._sealer.seal_text(json.dumps({
            "legal_basis": answer.legal_basis, "reason": answer.reason,
            "kept_until": answer.kept_until.isoformat() if answer.kept_until else None,
            "export_records": answer.export_records,
        }), purpose=ANSWER_PURPOSE, context=f"{request_id}/{system}")
        open_: ColumnElement[bool] = col(OutsideTaskRow.status).is_(None)
        if answer.status != AnswerStatus.NO_ANSWER:
            open_ = or_(open_, col(OutsideTaskRow.status) == AnswerStatus.NO_ANSWER.value)
        with self._session() as session:
            result = session.exec(update(OutsideTaskRow)
                                  .where(col(OutsideTaskRow.request_id) == request_id,
                                         col(OutsideTaskRow.system) == system,
                                         open_)
                                  .values(status=answer.status.value, answer_sealed=sealed,
                                          answered_by=answer.answered_by, answered_at=answer.answered_at))
            session.commit()
            if result.rowcount == 1:
                return True
        if self.get(request_id, system) is None:
            raise UnknownTask(f"no task for system {system!r} in request {request_id}")
        return False

    def get(self, request_id: str, system: str) -> OutsideTask | None:
        with self._session() as session:
            row = session.get(OutsideTaskRow, (request_id, system))
            return None if row is None else self._view(row)

    def tasks(self, *, open_only: bool = False, request_id: str | None = None) -> list[OutsideTask]:
        """Tasks by answer-by date (the most urgent first)."""
        query = select(OutsideTaskRow)
        if open_only:
            query = query.where(col(OutsideTaskRow.status).is_(None))
        if request_id is not None:
            query = query.where(col(OutsideTaskRow.request_id) == request_id)
        with self._session() as session:
            rows = session.exec(query.order_by(col(OutsideTaskRow.answer_by), col(OutsideTaskRow.request_id),
                                               col(OutsideTaskRow.system))).all()
            return [self._view(row) for row in rows]

    def _view(self, row: OutsideTaskRow) -> OutsideTask:
        answer = None
        if row.status is not None:
            opened = json.loads(self._sealer.open_text(row.answer_sealed, purpose=ANSWER_PURPOSE,
                                                       context=f"{row.request_id}/{row.system}"))
            answer = OutsideAnswer(
                status=AnswerStatus(row.status), legal_basis=opened["legal_basis"], reason=opened["reason"],
                kept_until=date.fromisoformat(opened["kept_until"]) if opened["kept_until"] else None,
                export_records=int(opened["export_records"]), answered_by=row.answered_by,
                answered_at=row.answered_at, asked_on=row.asked_on)
        return OutsideTask(request_id=row.request_id, system=row.system, type=row.type, asked_on=row.asked_on,
                           answer_by=row.answer_by, rounds=row.rounds, answer=answer)

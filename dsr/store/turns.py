"""One subject, one thing at a time: each person's line for their systems, in the ledger's database.

A request works in a person's systems (its connectors) only while it holds that person's turn, so an export never
races an erasure of the same person. Among the requests waiting, the earliest received goes first (ties: the
request id). A request still waiting for identity is not in the line, and does not hold back a later one that is
ready: the line orders the requests that want the systems, not those that may want them one day. Restriction lifts
(``restriction-<reference>``) take the turn too.

Table ``subject_turns`` (made by the ledger's migrations): one row per person in line, keyed by the subject's queue
id (:func:`dsr.domain.model.subject_queue_id`: a blind index, nothing about who they are), holding who holds the
turn and who waits (request ids, times of receipt, rounds), and deleted when nobody holds and nobody waits. Every
change is one transaction on that row, locked as :mod:`dsr.store.guards` locks its counters (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL and MariaDB: the row made to exist, then ``SELECT ... FOR UPDATE``): N workers on N machines
decide exactly as one would, the second seeing what the first recorded.

Why a row and not a workflow: the turn is asked once by every request of a known person, and nobody else of that
person is there nearly every time. A queue workflow made that ask a round trip through another workflow's task
(update-with-start: about 40 ms before any connector could start) and a third workflow run per request; a row makes
it one transaction in the activity that writes the request's ledger events anyway (``bench/throughput.py``).

Who tells whom: each change answers the requests whose answer it changed (:class:`Tell`): a request granted the
turn, and every request still waiting (who they wait for, which ``dsr status`` shows). The activity that made the
change signals them once it is committed (``activities.subjects``); a request that is gone (its signal refused) is
taken out of the line like a release, and whom that changes is told in turn. Rounds (:class:`TurnAsk`) tell a
request's asks apart: a release or an answer of an earlier round changes nothing.

Synchronous, like the ledger: the activities call it in a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, String, Text, delete, select, update
from sqlmodel import Field, SQLModel

from dsr.domain.model import SubjectQueueStatus, SubjectTurn, TurnAsk
from dsr.store.guards import insert_if_missing
from dsr.store.ledger import UTCDateTime, prepare_schema


class SubjectTurnRow(SQLModel, table=True):
    """A person's line: ``line`` is the JSON of :class:`SubjectLine` (request ids, times of receipt, rounds)."""

    __tablename__ = "subject_turns"

    key: str = Field(primary_key=True, sa_type=String(200))
    line: str = Field(default="{}", sa_type=Text)
    updated_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class Tell:
    """What a request is to be told (signal ``subject_turn``): who holds the turn, for its ask of ``turn.round``."""

    request_id: str
    turn: SubjectTurn


@dataclass
class SubjectLine:
    """Who holds a person's turn and who waits for it. The rules, apart from any storage: each change answers the
    requests to tell."""

    holder: TurnAsk | None = None
    waiting: list[TurnAsk] = field(default_factory=list)

    def ask(self, ask: TurnAsk) -> tuple[SubjectTurn, list[Tell]]:
        """``ask`` in line: the turn is granted now if nobody holds it (to the earliest received among those
        waiting, the asker or not). Answers the asker's answer and whom else the change concerns. Asking again (a
        retried activity, a new round) keeps the place held: a holder asking again still holds. An ask of an earlier
        round than the request's place in line (a late retry) changes nothing. An ask already in line (a retry
        whose first attempt committed, a local activity run again after a lost workflow task, the hourly check)
        tells everyone in line where they stand: what the first attempt changed may not have been told."""
        placed = [e for e in (self.holder, *self.waiting) if e is not None and e.request_id == ask.request_id]
        if placed and placed[0].round > ask.round:
            return self.answer(ask), []
        again = bool(placed) and placed[0].round == ask.round
        if self.holder is not None and self.holder.request_id == ask.request_id:
            self.holder = ask
        else:
            self.waiting = [w for w in self.waiting if w.request_id != ask.request_id] + [ask]
        tell = self._grant_next() if self.holder is None else []
        if again:
            tell += self.everyone()
        return self.answer(ask), [t for t in tell if t.request_id != ask.request_id]

    def release(self, request_id: str, turn_round: int) -> list[Tell]:
        """The request's ask of ``turn_round`` leaves the line (done, withdrawn, waiting for an operator, or gone);
        a later round of it, or another request, is left as it is. Answers whom the change concerns; a release
        that finds nothing to take out (a retry, a local activity run again after a lost workflow task: its first
        run may have committed and not told the next holder) answers everyone in line."""
        placed = (self.holder, *self.waiting)
        if not any(e is not None and (e.request_id, e.round) == (request_id, turn_round) for e in placed):
            return self.everyone()
        if self.holder is not None and (self.holder.request_id, self.holder.round) == (request_id, turn_round):
            self.holder = None
        self.waiting = [w for w in self.waiting if (w.request_id, w.round) != (request_id, turn_round)]
        return self._grant_next() if self.holder is None else []

    def answer(self, ask: TurnAsk) -> SubjectTurn:
        return SubjectTurn(holder=self.holder.request_id if self.holder else "", round=ask.round)

    def everyone(self) -> list[Tell]:
        """Every request in line, told where it stands: the holder that it holds, the others whom they wait for."""
        holder = self.holder.request_id if self.holder else ""
        return [Tell(ask.request_id, SubjectTurn(holder=holder, round=ask.round))
                for ask in ([self.holder] if self.holder else []) + sorted(self.waiting, key=_order)]

    def status(self) -> SubjectQueueStatus:
        return SubjectQueueStatus(holder=self.holder.request_id if self.holder else "",
                                  waiting=[w.request_id for w in sorted(self.waiting, key=_order)])

    @property
    def idle(self) -> bool:
        return self.holder is None and not self.waiting

    def _grant_next(self) -> list[Tell]:
        """The earliest received of those waiting holds the turn; it is told so, every other one whom it now waits
        for."""
        if not self.waiting:
            return []
        self.waiting.sort(key=_order)
        self.holder = self.waiting.pop(0)
        holder = self.holder.request_id
        return [Tell(ask.request_id, SubjectTurn(holder=holder, round=ask.round))
                for ask in (self.holder, *self.waiting)]

    # --- storage -------------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"holder": _ask_json(self.holder) if self.holder else None,
                           "waiting": [_ask_json(w) for w in self.waiting]})

    @classmethod
    def from_json(cls, text: str) -> SubjectLine:
        data = json.loads(text or "{}")
        holder = data.get("holder")
        return cls(holder=_ask_from(holder) if holder else None,
                   waiting=[_ask_from(w) for w in data.get("waiting", [])])


def _order(ask: TurnAsk) -> tuple[datetime, str]:
    return (ask.received_at, ask.request_id)


def _ask_json(ask: TurnAsk) -> dict[str, Any]:
    return {"request_id": ask.request_id, "received_at": ask.received_at.astimezone(UTC).isoformat(),
            "round": ask.round}


def _ask_from(data: dict[str, Any]) -> TurnAsk:
    return TurnAsk(request_id=data["request_id"], received_at=datetime.fromisoformat(data["received_at"]),
                   round=int(data["round"]))


class SubjectTurns:
    """The persons' lines, on the ledger's engine. Thread-safe; each method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # On the ledger's SQLite engine this option makes writes BEGIN IMMEDIATE (see dsr.store.ledger).
        self._write_engine = engine.execution_options(dsr_write=True)
        prepare_schema(engine)

    def ask(self, queue_id: str, ask: TurnAsk) -> tuple[SubjectTurn, list[Tell]]:
        """Put ``ask`` in the person's line (see :meth:`SubjectLine.ask`); the asker's answer, and whom to tell."""
        with self._changing(queue_id) as line:
            return line.ask(ask)

    def release(self, queue_id: str, request_id: str, turn_round: int) -> list[Tell]:
        """Take the request's ask of ``turn_round`` out of the line (see :meth:`SubjectLine.release`); whom to
        tell. Releasing what is not there (a retried release) changes nothing and answers everyone in line."""
        with self._changing(queue_id) as line:
            return line.release(request_id, turn_round)

    def line(self, queue_id: str) -> SubjectLine:
        """The person's line as committed (empty when nobody is in it); not locked."""
        table = SubjectTurnRow.__table__  # type: ignore[attr-defined]
        with self._engine.connect() as connection:
            text = connection.execute(select(table.c.line).where(table.c.key == queue_id)).scalar()
        return SubjectLine.from_json(text or "{}")

    def status(self, queue_id: str) -> SubjectQueueStatus:
        return self.line(queue_id).status()

    @contextmanager
    def _changing(self, queue_id: str) -> Iterator[SubjectLine]:
        """The person's line, locked until the block ends; what the block leaves is written (the row deleted when
        nobody holds and nobody waits), in the same transaction."""
        table = SubjectTurnRow.__table__  # type: ignore[attr-defined]
        locking = select(table.c.line).where(table.c.key == queue_id).with_for_update()
        now = datetime.now(UTC)
        with self._write_engine.begin() as connection:
            text = _read(connection, locking)
            while text is None:
                # Made to exist, then locked. Again if another transaction deleted it between the two (PostgreSQL's
                # locking read skips a row deleted meanwhile): an empty line read without its lock decides nothing.
                insert_if_missing(connection, SubjectTurnRow, queue_id, {"line": "{}", "updated_at": now})
                text = _read(connection, locking)
            line = SubjectLine.from_json(text or "{}")
            yield line
            if line.idle:
                connection.execute(delete(table).where(table.c.key == queue_id))
            else:
                connection.execute(update(table).where(table.c.key == queue_id)
                                   .values(line=line.to_json(), updated_at=now))


def _read(connection: Connection, locking: Any) -> str | None:
    value: str | None = connection.execute(locking).scalar()
    return value

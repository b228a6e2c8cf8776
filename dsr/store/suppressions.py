"""The suppression list: people who objected to direct marketing (Art. 21(2)-(3)), remembered without their address.

An objection to marketing is absolute and lasting: a later import, a new newsletter sign-up by a colleague, or
an erasure that deletes the contact must not bring the person back into a campaign. The minimum needed to
honour it is one fact, "this address objected", so that is all that is kept: the ledger's blind index of the
address (a keyed HMAC, the same as :meth:`dsr.store.ledger.Ledger.subject_key`), the day it was recorded and
until when (CNIL: three years from the objection, ``DSR_SUPPRESSION_YEARS``). No address, no name, no request id.

An erasure deletes the person's data and the exports of earlier requests, but never this row: keeping it is the
legal reason (honouring the objection) and it holds nothing that identifies the person to whoever reads the
table without the key. A new objection of the same address extends the entry (the period runs from the
latest objection); expired entries are purged when the list is next written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import String, delete
from sqlmodel import Field, Session, SQLModel, col, select

from dsr.store.ledger import Ledger, UTCDateTime


class SuppressionRow(SQLModel, table=True):
    """One address that objected to marketing, as its blind index only."""

    __tablename__ = "suppressions"

    subject_index: str = Field(primary_key=True, sa_type=String(128))
    since: datetime = Field(sa_type=UTCDateTime)  # the latest objection
    until: datetime = Field(sa_type=UTCDateTime, index=True)  # then the entry is purged


class ConsentWithdrawalRow(SQLModel, table=True):
    """One purpose an address withdrew its consent to (Art. 7(3)), as the address's blind index only. Like the
    suppression list it outlives an erasure: it is what keeps a later import or sync from treating the person as
    consenting again, and it holds nothing that identifies them without the key."""

    __tablename__ = "consent_withdrawals"

    subject_index: str = Field(primary_key=True, sa_type=String(128))
    purpose: str = Field(primary_key=True, sa_type=String(40))  # the profile's key, e.g. newsletter
    withdrawn_at: datetime = Field(sa_type=UTCDateTime)  # the first withdrawal


@dataclass(frozen=True)
class SuppressionEntry:
    """What may be shown of an entry: its dates (never the index, which a key holder could test addresses with)."""

    since: datetime
    until: datetime


def _years_later(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


class SuppressionList:
    """The suppression list, on the ledger's database and key ring. Thread-safe like the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._write_engine = ledger.engine.execution_options(dsr_write=True)

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        engine = self._write_engine if write else self._ledger.engine
        with Session(engine) as session, session.begin():
            yield session

    def suppress(self, email: str, *, years: int, now: datetime) -> SuppressionEntry:
        """Put the address on the list for ``years`` from ``now`` (or keep a longer entry); idempotent."""
        if years < 1:
            raise ValueError("a suppression lasts at least one year")
        now = now.astimezone(UTC)
        index = self._ledger.subject_key(email)
        until = _years_later(now, years)
        with self._session(write=True) as session:
            session.execute(delete(SuppressionRow).where(col(SuppressionRow.until) <= now))
            row = session.get(SuppressionRow, index)
            if row is None:
                row = SuppressionRow(subject_index=index, since=now, until=until)
            elif row.until < until:
                row.since, row.until = now, until
            session.add(row)
            session.flush()
            return SuppressionEntry(since=row.since, until=row.until)

    def entry(self, email: str, *, now: datetime | None = None) -> SuppressionEntry | None:
        """The address's current entry, if it is suppressed."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        with self._session(write=False) as session:
            row = session.get(SuppressionRow, self._ledger.subject_key(email))
            if row is None or row.until <= now:
                return None
            return SuppressionEntry(since=row.since, until=row.until)

    def is_suppressed(self, email: str, *, now: datetime | None = None) -> bool:
        """Whether marketing must not reach this address (any case): for connectors, exports and campaign tools."""
        return self.entry(email, now=now) is not None

    def withdraw(self, email: str, purposes: list[str], *, now: datetime) -> dict[str, datetime]:
        """Record the address's withdrawal of consent to ``purposes``; idempotent (a purpose already withdrawn keeps
        its first date). Answers each purpose's date."""
        index = self._ledger.subject_key(email)
        out: dict[str, datetime] = {}
        with self._session(write=True) as session:
            for purpose in sorted(set(purposes)):
                row = session.get(ConsentWithdrawalRow, (index, purpose))
                if row is None:
                    row = ConsentWithdrawalRow(subject_index=index, purpose=purpose, withdrawn_at=now.astimezone(UTC))
                    session.add(row)
                    session.flush()
                out[purpose] = row.withdrawn_at
        return out

    def withdrawn(self, email: str) -> dict[str, datetime]:
        """The purposes the address withdrew its consent to, with their dates (for the one-click page and
        connectors: "already withdrawn")."""
        with self._session(write=False) as session:
            rows = session.exec(select(ConsentWithdrawalRow).where(
                col(ConsentWithdrawalRow.subject_index) == self._ledger.subject_key(email))).all()
            return {row.purpose: row.withdrawn_at for row in rows}

    def entries(self, *, now: datetime | None = None) -> list[SuppressionEntry]:
        """Every current entry's dates, oldest first (for ``dsr suppression list``)."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        with self._session(write=False) as session:
            rows = session.exec(select(SuppressionRow).where(col(SuppressionRow.until) > now)
                                .order_by(col(SuppressionRow.since))).all()
            return [SuppressionEntry(since=row.since, until=row.until) for row in rows]

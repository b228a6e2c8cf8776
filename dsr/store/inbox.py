"""What the mailbox poller remembers about each email it has taken in: the ``inbound_messages`` table.

One row per inbound message, keyed by a keyed hash (:meth:`dsr.store.crypto.KeyRing.blind_index`) of its
Message-ID and sender address -- Message-IDs often embed the sender's address, so they are never stored
in plaintext, and binding the sender means a stranger who learnt someone's Message-ID cannot make their
message look like an already-handled duplicate. The row holds the request id reserved for the message
before anything is started, and how far processing got:

``reserved`` -> ``submitted`` | ``triaged`` | ``rejected`` -> ``moved``

A reply about a request is decided while ``reserved``: ``reason`` becomes ``correspondence`` (an open
request, ``reference``; then ``submitted`` once the request was told) or ``closed_reply`` (a closed one; then
``triaged``), before its attachments are stored, so every retry takes the same path.

The table lives in the ledger's database (SQLite or PostgreSQL); :class:`Inbox` creates it on the ledger's
engine if it is missing. The mailbox poller (``intake.email.taking_in``) builds its exactly-once protocol on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Engine, String
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel

from dsr.store.ledger import Sealer, UTCDateTime, prepare_schema

MESSAGE_KEY_PURPOSE = "inbound.message-id"


class MessageState(StrEnum):
    RESERVED = "reserved"  # a request id is reserved; nothing may have been started yet
    SUBMITTED = "submitted"  # the request exists (the service answered)
    TRIAGED = "triaged"  # handed to the operators' triage
    REJECTED = "rejected"  # the service refused it; goes to the rejected folder
    MOVED = "moved"  # out of the inbox: done


class InboundMessageRow(SQLModel, table=True):
    """One email taken in. No personal data: the key is a keyed hash, the rest are ids and codes."""

    __tablename__ = "inbound_messages"

    message_key: str = Field(primary_key=True, sa_type=String(64))
    request_id: str = Field(sa_type=String(100), index=True)
    state: str = Field(sa_type=String(16))
    outcome: str | None = Field(default=None, sa_type=String(16))  # submitted / triaged / rejected
    reference: str | None = Field(default=None, sa_type=String(100))  # the request it joined or answers
    # A code: "invalid_submission" (rejected), "correspondence" / "closed_reply" (a reply about `reference`).
    reason: str | None = Field(default=None, sa_type=String(64))
    attachments_stored: bool = False
    received_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class InboundMessage:
    message_key: str
    request_id: str
    state: MessageState
    outcome: MessageState | None
    reference: str | None
    reason: str | None
    attachments_stored: bool
    received_at: datetime

    @staticmethod
    def of(row: InboundMessageRow) -> InboundMessage:
        return InboundMessage(
            message_key=row.message_key,
            request_id=row.request_id,
            state=MessageState(row.state),
            outcome=MessageState(row.outcome) if row.outcome else None,
            reference=row.reference,
            reason=row.reason,
            attachments_stored=row.attachments_stored,
            received_at=row.received_at,
        )


class Inbox:
    """The ``inbound_messages`` table on the ledger's engine. Synchronous, like the ledger."""

    def __init__(self, engine: Engine, indexer: Sealer) -> None:
        self._engine = engine
        # On the ledger's SQLite engine this option makes writes BEGIN IMMEDIATE (see dsr.store.ledger), so two
        # pollers queue on the lock instead of failing; other engines ignore it.
        self._write_engine = engine.execution_options(dsr_write=True)
        self._indexer = indexer
        prepare_schema(engine)

    def key_for(self, message_id: str, sender: str) -> str:
        """The row key of a message: keyed hash of its Message-ID and lower-cased sender address."""
        return self._indexer.blind_index(f"{message_id.strip()}\n{sender.strip().lower()}", purpose=MESSAGE_KEY_PURPOSE)

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        with Session(self._write_engine if write else self._engine) as session, session.begin():
            yield session

    def get(self, key: str) -> InboundMessage | None:
        with self._session(write=False) as session:
            row = session.get(InboundMessageRow, key)
            return InboundMessage.of(row) if row is not None else None

    def reserve(self, key: str, *, request_id: str, received_at: datetime) -> InboundMessage:
        """Record the message with ``request_id`` reserved, committed; if it exists, the existing row wins."""
        now = datetime.now(UTC)
        try:
            with self._session(write=True) as session:
                existing = session.get(InboundMessageRow, key)
                if existing is not None:
                    return InboundMessage.of(existing)
                row = InboundMessageRow(
                    message_key=key,
                    request_id=request_id,
                    state=MessageState.RESERVED.value,
                    received_at=received_at,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                return InboundMessage.of(row)
        except IntegrityError:  # another poller reserved it between our read and our insert
            found = self.get(key)
            if found is None:  # pragma: no cover - the row that conflicted cannot vanish
                raise
            return found

    def mark(
        self,
        key: str,
        state: MessageState,
        *,
        reason: str | None = None,
        reference: str | None = None,
    ) -> InboundMessage:
        """Move the row to ``state``; submitted/triaged/rejected are also kept as the outcome."""
        with self._session(write=True) as session:
            row = session.get(InboundMessageRow, key)
            if row is None:
                raise LookupError("no inbound message with this key")
            row.state = state.value
            if state in (MessageState.SUBMITTED, MessageState.TRIAGED, MessageState.REJECTED):
                row.outcome = state.value
            if reason is not None:
                row.reason = reason
            if reference is not None:
                row.reference = reference
            row.updated_at = datetime.now(UTC)
            session.add(row)
            session.flush()
            return InboundMessage.of(row)

    def mark_attachments_stored(self, key: str) -> None:
        with self._session(write=True) as session:
            row = session.get(InboundMessageRow, key)
            if row is None:
                raise LookupError("no inbound message with this key")
            row.attachments_stored = True
            row.updated_at = datetime.now(UTC)
            session.add(row)

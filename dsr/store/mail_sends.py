"""Send intents: an email is written down as *being sent* before its SMTP transaction, and as sent or not after.

The sent-log (a ``notice_sent`` event in the ledger) is written after the SMTP server answers 250. A worker that
dies between that answer and that write leaves no trace of the send, and the retry would send again believing it
the first time. SMTP gives no way to close that window (the server's 250 and our write cannot be one atomic
step), so it is made visible instead: one row per email (its idempotency key), written durably *before* the
transaction, with the Message-ID and a digest of what is sent.

* ``begin`` before each SMTP transaction: a row found still ``sending`` means an earlier attempt of this email
  may have been accepted by the server (the worker died, or the connection broke, after the DATA went out); the
  retry sends again with the same Message-ID (mail clients thread and de-duplicate on it) and the row is marked
  ``possible_duplicate`` for the operator (unless the relay's Sent folder, when configured, shows the earlier
  attempt was accepted: then nothing is sent again).
* ``end(sent=False)`` when the server certainly did not take the message (connection refused, a 4xx/5xx answer
  before or to the DATA): the next attempt is an ordinary one, not a possible duplicate.
* ``end(sent=True)`` after the sent-log write.

Rows hold no personal data: keys, Message-IDs (derived from keys), a template name and a digest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, String
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from dsr.store.ledger import UTCDateTime, _utc

SENDING = "sending"
SENT = "sent"
UNSENT = "unsent"


class MailSendRow(SQLModel, table=True):
    """One email the engine sends (a notice, an Art. 19 notice, a final reply), by its idempotency key."""

    __tablename__ = "mail_sends"

    send_key: str = Field(primary_key=True, sa_type=String(100))
    request_id: str = Field(sa_type=String(100), index=True)
    template: str = Field(sa_type=String(64))
    message_id: str = Field(sa_type=String(300))
    digest: str = Field(sa_type=String(64))  # SHA-256 of subject and bodies as last handed to the server
    state: str = Field(sa_type=String(16))  # sending | sent | unsent
    attempts: int = 0  # SMTP transactions begun
    possible_duplicate: bool = False  # a transaction began while an earlier one's outcome was unknown
    updated_at: datetime = Field(sa_type=UTCDateTime)


@dataclass(frozen=True)
class SendIntent:
    """What ``begin`` found and did: whether this transaction may duplicate an earlier accepted one."""

    attempts: int
    possible_duplicate: bool  # an earlier transaction of this email ended in an unknown state
    same_content: bool  # ... and its digest equals this one's (only meaningful when possible_duplicate)
    already_sent: bool = False  # the row says sent: nothing to do


class MailSends:
    """The send intents, on the ledger's engine. Thread-safe; every call is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # On the ledger's SQLite engine this option makes writes BEGIN IMMEDIATE (see dsr.store.ledger).
        self._write_engine = engine.execution_options(dsr_write=True)

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        with Session(self._write_engine if write else self._engine) as session, session.begin():
            yield session

    def begin(self, key: str, *, request_id: str, template: str, message_id: str, digest: str,
              now: datetime) -> SendIntent:
        """Record that a transaction of ``key`` is about to start (durable when this returns)."""
        now = _utc(now, "now")
        for _ in range(3):
            try:
                with self._session(write=True) as session:
                    row = session.scalars(
                        select(MailSendRow).where(col(MailSendRow.send_key) == key).with_for_update()
                    ).first()
                    if row is None:
                        session.add(MailSendRow(send_key=key, request_id=request_id, template=template,
                                                message_id=message_id, digest=digest, state=SENDING, attempts=1,
                                                updated_at=now))
                        return SendIntent(attempts=1, possible_duplicate=False, same_content=True)
                    if row.state == SENT:
                        return SendIntent(attempts=row.attempts, possible_duplicate=row.possible_duplicate,
                                          same_content=row.digest == digest, already_sent=True)
                    unknown = row.state == SENDING
                    same = row.digest == digest
                    row.attempts += 1
                    row.state = SENDING
                    row.digest = digest
                    row.updated_at = now
                    session.add(row)
                    return SendIntent(attempts=row.attempts, possible_duplicate=unknown, same_content=same)
            except IntegrityError:
                continue  # a concurrent first attempt inserted the row between our look and our insert: read it
        raise RuntimeError(f"the send intent {key} keeps changing; try again")

    def end(self, key: str, *, sent: bool, now: datetime, possible_duplicate: bool = False) -> None:
        """The transaction ended: accepted (``sent``; ``possible_duplicate`` when an earlier transaction may have
        been accepted too) or certainly not accepted."""
        now = _utc(now, "now")
        with self._session(write=True) as session:
            row = session.get(MailSendRow, key)
            if row is None or row.state == SENT:
                return
            row.state = SENT if sent else UNSENT
            row.possible_duplicate = row.possible_duplicate or (sent and possible_duplicate)
            row.updated_at = now
            session.add(row)

    def get(self, key: str) -> MailSendRow | None:
        with self._session(write=False) as session:
            row = session.get(MailSendRow, key)
            if row is not None:
                session.expunge(row)
            return row

    def possible_duplicates(self, request_id: str) -> list[MailSendRow]:
        """The request's emails that may have reached their recipient twice (same Message-ID)."""
        with self._session(write=False) as session:
            rows = list(session.scalars(select(MailSendRow).where(
                col(MailSendRow.request_id) == request_id, col(MailSendRow.possible_duplicate))))
            for row in rows:
                session.expunge(row)
            return rows

"""The audit ledger: one row per request and an append-only list of events, kept after Temporal forgets.

Temporal's history is deleted after its retention period; the ledger is what proves, years later, that a
request was received, answered and closed in time. It is a plain SQL database (SQLite under ``DSR_HOME``
locally, PostgreSQL in production) reached through SQLModel, with a synchronous API: activities call it
from the worker's thread pool, and the CLI reads it directly.

Rules:

* The subject's email and name are stored sealed (encrypted) by a :class:`Sealer`, bound to the request id
  (rows written before that binding hold ``v1`` tokens, which still open); a keyed blind index of the
  lower-cased email lets duplicates be found without decrypting anything.
* Every write is idempotent. :meth:`Ledger.record_request` is keyed by the request id and
  :meth:`Ledger.append_event` by a caller-chosen idempotency key (an activity's retries re-use the key),
  so a retried activity never writes twice. Both survive a race of concurrent calls.
* Events are append-only: the API has no way to change or delete one. An event may also move the
  request row (stage, outcome, deadline, extended) in the same transaction.
* Event details never hold the subject's email or name in plaintext; the ledger refuses them.
* Datetimes are stored and returned as timezone-aware UTC on every backend.
* One open request per subject and kind: :meth:`Ledger.claim_subject` inserts a claim keyed by the subject's
  blind index and the kind, and the database's primary key lets only one submission win it, on any number of
  machines; the event that closes the request releases its claim in the same transaction.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, DateTime, Engine, String, Text, delete, event, insert, make_url, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, create_engine

from dsr import migrations
from dsr.domain.model import AuditEvent, Channel, Language, Outcome, RequestKind, RequestRecordInput, Stage, Subject
from dsr.errors import NotFoundError, StoreError

EMAIL_PURPOSE = "subject.email"
NAME_PURPOSE = "subject.name"
DISMISSAL_PURPOSE = "triage.dismissal_reason"
NOTE_PURPOSE = "event.note"
EMAIL_INDEX_PURPOSE = "subject.email"

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0


class Sealer(Protocol):
    """Encrypts personal data at rest; ``dsr.store.crypto.KeyRing`` implements it."""

    def seal_text(self, plaintext: str, *, purpose: str, context: str | None = None) -> str: ...

    def open_text(self, token: str, *, purpose: str, context: str | None = None) -> str: ...

    def blind_index(self, value: str, *, purpose: str) -> str: ...


class LedgerUnavailableError(StoreError, RuntimeError):
    """The ledger's database cannot be reached or prepared; the message carries no password."""


class UnknownRequestError(NotFoundError, LookupError):
    """An event names a request that has no row in the ledger (``record_request`` was not called)."""


# --- tables ----------------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always written and read as an aware UTC ``datetime``.

    PostgreSQL keeps the instant (``timestamptz``) but answers in the session's time zone; SQLite keeps
    no zone at all. Values are converted to UTC before they are written and tagged/converted on read.
    Naive datetimes are refused: whose local time would they be?
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return _utc(value, "timestamp")

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class RequestRow(SQLModel, table=True):
    """One data-subject request; the stage and outcome follow its events."""

    __tablename__ = "requests"

    request_id: str = Field(primary_key=True, sa_type=String(100))
    kind: str = Field(sa_type=String(32))
    channel: str = Field(sa_type=String(32))
    language: str = Field(sa_type=String(8))
    received_at: datetime = Field(sa_type=UTCDateTime)
    deadline: date
    extended: bool = False
    stage: str = Field(sa_type=String(32), index=True)
    outcome: str | None = Field(default=None, sa_type=String(32))
    subject_email_sealed: str = Field(sa_type=Text)
    subject_name_sealed: str = Field(sa_type=Text)
    subject_index: str = Field(sa_type=String(128), index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class EventRow(SQLModel, table=True):
    """One audit event. Append-only: nothing in this module updates or deletes these rows."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(sa_type=Text, unique=True)
    request_id: str = Field(sa_type=String(100), foreign_key="requests.request_id", index=True)
    at: datetime = Field(sa_type=UTCDateTime)
    event: str = Field(sa_type=String(64))
    actor: str = Field(sa_type=Text)
    details: str = Field(sa_type=Text, default="{}")  # JSON object of strings


class EventNoteRow(SQLModel, table=True):
    """The sealed note of one event (:attr:`dsr.domain.model.AuditEvent.note`), beside the append-only events table
    so ledgers created before notes existed gain it as a new table."""

    __tablename__ = "event_notes"

    event_key: str = Field(primary_key=True, sa_type=String(400))
    note_sealed: str = Field(sa_type=Text)


_REQUESTS = RequestRow.__table__  # type: ignore[attr-defined]
_EVENTS = EventRow.__table__  # type: ignore[attr-defined]
_EVENT_NOTES = EventNoteRow.__table__  # type: ignore[attr-defined]


@dataclass
class _RequestChange:
    """What a batch of events changes in its request's row: the columns to set, and whether it closes."""

    request_id: str
    kind: str
    subject_index: str
    updated_at: datetime
    subject: Subject  # opened once per batch, to refuse details that hold the subject's email or name
    values: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def take(self, event: AuditEvent, at: datetime) -> None:
        """The row takes the event's stage, outcome, deadline and extended flag, those it gives."""
        given: dict[str, Any] = {}
        if event.stage is not None:
            given["stage"] = Stage(event.stage).value
            self.closed = self.closed or given["stage"] == Stage.CLOSED.value
        if event.outcome is not None:
            given["outcome"] = Outcome(event.outcome).value
        if event.deadline is not None:
            given["deadline"] = event.deadline
        if event.extended is not None:
            given["extended"] = bool(event.extended)
        if given:
            self.updated_at = max(self.updated_at, at)
            self.values.update(given, updated_at=self.updated_at)


class SubjectClaimRow(SQLModel, table=True):
    """The open request of a subject (blind index) and kind: at most one, by the primary key.

    Inserted before the request's workflow starts (so the row may name a request not recorded yet), deleted
    when that request closes (:meth:`Ledger.append_event`) or by compare-and-delete when its holder is found
    closed or abandoned (:meth:`Ledger.release_claim`)."""

    __tablename__ = "subject_claims"

    subject_index: str = Field(primary_key=True, sa_type=String(128))
    kind: str = Field(primary_key=True, sa_type=String(32))
    request_id: str = Field(sa_type=String(100))
    claimed_at: datetime = Field(sa_type=UTCDateTime)


class TriageDismissalRow(SQLModel, table=True):
    """An email dismissed in triage: not a request, and the record of why nothing was done, kept after
    Temporal forgets the triage workflow. The operator's reason is sealed (it may quote the message)."""

    __tablename__ = "triage_dismissals"

    triage_id: str = Field(primary_key=True, sa_type=String(100))
    received_at: datetime = Field(sa_type=UTCDateTime)
    deadline: date
    classifier_reason: str = Field(sa_type=Text)  # why it was not classified; no personal data
    reason_sealed: str = Field(sa_type=Text)
    decided_by: str = Field(sa_type=Text)
    attachments_deleted: int = 0
    dismissed_at: datetime = Field(sa_type=UTCDateTime)
    refused_as: str = Field(default="", sa_type=String(32))  # a request refused (sender told); "": none
    ground: str = Field(default="", sa_type=String(32))


# --- views -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRequest:
    """A request as the ledger knows it, subject decrypted. Personal data: keep it out of Temporal."""

    request_id: str
    kind: RequestKind
    channel: Channel
    language: Language
    received_at: datetime  # aware, UTC
    deadline: date
    extended: bool
    stage: Stage
    outcome: Outcome | None
    subject: Subject
    created_at: datetime  # aware, UTC
    updated_at: datetime  # aware, UTC


@dataclass(frozen=True)
class SubjectClaim:
    """Who holds the subject and kind: the request and when it claimed them."""

    request_id: str
    claimed_at: datetime  # aware, UTC


@dataclass(frozen=True)
class TriageDismissalRecord:
    """A triage dismissal as the ledger keeps it; ``reason`` is the operator's, opened (personal data maybe)."""

    triage_id: str
    received_at: datetime  # aware, UTC
    deadline: date
    classifier_reason: str
    reason: str
    decided_by: str
    attachments_deleted: int
    dismissed_at: datetime  # aware, UTC
    refused_as: str = ""
    ground: str = ""


@dataclass(frozen=True)
class LedgerEvent:
    at: datetime  # aware, UTC
    event: str
    actor: str
    details: dict[str, str]
    note: str = ""  # opened; may hold personal data (an operator's reason): for operators' eyes only


# --- helpers ---------------------------------------------------------------------------------------


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got a naive datetime")
    return value.astimezone(UTC)


def _normalise_url(url: str | URL) -> URL:
    """``postgresql://`` / ``postgres://`` mean psycopg 3 here (psycopg2 is not a dependency)."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def _email_index_value(email: str) -> str:
    return email.strip().lower()


def _contains_email(text: str, email: str) -> bool:
    return bool(email) and email.casefold() in text.casefold()


def _contains_name(text: str, name: str) -> bool:
    """Whole-word, case-insensitive match so a short name does not trip on ordinary words."""
    words = name.split()
    if not words or len(" ".join(words)) < 2:
        return False
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def _check_details(details: Any) -> dict[str, str]:
    if not isinstance(details, dict):
        raise ValueError(f"event details must be a dict of strings, got {type(details).__name__}")
    for key, value in details.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("event details must map strings to strings")
    return dict(details)


def _refuse_personal_data(event: AuditEvent, details: dict[str, str], subject: Subject) -> None:
    """Defence in depth: the subject's email or name never reaches the audit trail in plaintext.

    The error names where the value was found, never the value itself.
    """
    email = subject.email.strip()
    for where, text in (("event", event.event), ("actor", event.actor)):
        if _contains_email(text, email):
            raise ValueError(f"{where} contains the subject's email address in plaintext; refusing to log it")
    for key, value in details.items():
        for where, text in (("a details key", key), (f"details[{key!r}]", value)):
            if _contains_email(text, email):
                raise ValueError(
                    f"{where} contains the subject's email address in plaintext; refusing to log it"
                )
            if _contains_name(text, subject.name):
                raise ValueError(f"{where} contains the subject's name in plaintext; refusing to log it")


# --- schema --------------------------------------------------------------------------------------------


def prepare_schema(engine: Engine) -> None:
    """Bring the database behind ``engine`` to this release's schema (:func:`dsr.migrations.upgrade`).

    Every table of the ledger's database is made by the migrations, so the ledger, :class:`dsr.store.guards.Guards`
    and the intake's inbox each call this on the engine they are given; on an engine already at head (this
    process did it, or another process did) it costs one short transaction.
    """
    if engine in _UPGRADED:
        return
    try:
        migrations.upgrade(engine)
    except migrations.SchemaError as exc:
        raise LedgerUnavailableError(str(exc)) from None
    _UPGRADED.add(engine)


_UPGRADED: weakref.WeakSet[Engine] = weakref.WeakSet()
"""Engines this process has brought to head: a schema does not go back while the engine lives."""


def schema_revision(url: str | URL) -> str | None:
    """The schema revision of the database at ``url``, read without upgrading it; ``None`` before any.

    Raises ``ValueError`` for an unusable URL and :class:`LedgerUnavailableError` when it cannot be reached.
    """
    try:
        parsed = _normalise_url(url)
        engine = create_engine(parsed)
    except ArgumentError as exc:
        raise ValueError(f"database URL is not usable: {exc}") from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and not _is_sqlite_memory(parsed) and not database.startswith("file:") \
            and not Path(database).expanduser().exists():
        return None  # not created yet (and not created by looking)
    try:
        with engine.connect() as connection:
            return migrations.current(connection)
    except OperationalError as exc:
        raise _unavailable(engine, exc) from None
    finally:
        engine.dispose()


def _sqlite_engine(url: URL) -> Engine:
    if _is_sqlite_memory(url):
        # One shared in-memory database, so every thread sees the same tables; the ledger serialises them.
        engine = create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        database = url.database or ""
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of sqlite3's legacy transaction control.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not _is_sqlite_memory(url):
                # WAL: readers never block the writer, so the worker's threads and the CLI can share it.
                _enable_wal(cursor)
        finally:
            cursor.close()

    # This process's writers queue here before SQLite's write lock: SQLite's busy handler retries a locked database
    # after sleeps of 1, 2, 5, 10, 15, 20, 25, then 25 to 100 ms, so a writer arriving just after another (the
    # ledger's events, the vendors' shared rate windows, from 16 activity threads) slept tens of milliseconds
    # after the lock was free; the queue wakes the next writer as soon as the turn is given back. Other processes
    # still meet at SQLite's lock, on the busy timeout.
    writers = _WriterQueue()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A write transaction that starts deferred and upgrades later fails at once with
        # SQLITE_BUSY if another connection wrote meanwhile (the busy timeout does not apply);
        # taking the write lock at BEGIN makes writers queue on the busy timeout instead.
        if not conn.get_execution_options().get("dsr_write", False):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_connection = conn.connection.dbapi_connection
        # Past the busy timeout without the turn (a writer of this process stuck), SQLite decides alone.
        queued = writers.enter(dbapi_connection, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if queued:
                writers.leave(dbapi_connection)
            raise

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(conn: Any) -> None:
        # Both fire before the database's COMMIT or ROLLBACK: the next writer of this process then waits for it
        # at SQLite's lock, a moment, as any writer of another process does.
        if not conn.invalidated:
            writers.leave(conn.connection.dbapi_connection)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, _record: Any) -> None:
        # Back in the pool (its transaction, if any, rolled back by the pool): whatever path it took, its turn ends.
        writers.leave(dbapi_connection)

    return engine


class _WriterQueue:
    """One process's SQLite writers, one at a time: the turn, and which DB-API connection holds it.

    A plain lock would do if every writer that takes it gave it back. The worker's activities run in threads, and
    the Temporal SDK cancels a threaded activity by raising ``CancelledError`` inside its thread, wherever it
    is: a writer woken with the lock just acquired raised before recording it, and the lock stayed taken for
    the life of the process (every later write then waited the busy timeout, 30 s, longer than a ledger
    activity's own timeout: the worker's requests stood still). So a writer waiting for the turn looks, every
    ``poll`` seconds, at its holder: a holder whose connection has no open transaction at two looks in a row (it
    ended, or never began) has lost its turn, and the waiter takes it over. Taking over a writer that is just
    about to BEGIN is harmless: SQLite's own lock still lets one write at a time; the queue only spares the busy
    handler's sleeps.
    """

    def __init__(self, *, poll: float = 0.05) -> None:
        # The turn is a flag under a condition, not a lock handed from thread to thread: it is taken, taken over and
        # given back only while the condition's lock is held, so a writer can never give back a turn that another
        # took (a lock acquired outside the state's guard could be taken over before its taker recorded itself, then
        # released twice: "release unlocked lock" under load). The lock is entered with ``with`` on the lock itself,
        # not on the condition: the condition's ``__enter__`` is Python code, and a cancellation raised in the thread
        # just after it acquired would leave the lock held for good (re-entrant: a cancellation landing in
        # ``wait()`` then fails to release what it does not hold, instead of releasing another thread's hold).
        self._mutex = threading.RLock()
        self._changed = threading.Condition(self._mutex)
        self._taken = False  # held from BEGIN IMMEDIATE to COMMIT / ROLLBACK
        self._holder: Any = None  # the DB-API connection whose write holds the turn (None: not recorded)
        self._poll = poll

    def enter(self, connection: Any, *, timeout: float) -> bool:
        """Wait for the turn for ``connection``; False after ``timeout`` seconds (its holder is still writing)."""
        deadline = time.monotonic() + timeout
        suspect: Any = _NOBODY  # a holder (None: one not yet recorded) seen without a transaction at the last look
        with self._mutex:
            while True:
                if not self._taken:
                    self._taken, self._holder = True, connection
                    return True
                holder = self._holder
                if holder is connection:
                    return True
                # Between taking the turn and its BEGIN a holder has no transaction yet, for a moment: only one
                # seen so at two looks a poll apart has lost the turn.
                if _in_transaction(holder):
                    suspect = _NOBODY
                elif holder is suspect:
                    self._holder = connection  # the turn stays taken, now by this writer
                    return True
                else:
                    suspect = holder
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Woken as soon as the turn is given back, or at the next look at its holder.
                self._changed.wait(timeout=min(self._poll, remaining))

    def leave(self, connection: Any) -> None:
        """Give the turn back, if ``connection`` holds it (a no-op otherwise: called on every end of a transaction,
        and on every return of a connection to the pool)."""
        with self._mutex:
            if connection is None or not self._taken or self._holder is not connection:  # None: an invalidated
                return  # connection's checkin
            self._taken, self._holder = False, None
            # Every waiter looks: one woken alone may be past its deadline, and the others would sleep a poll.
            self._changed.notify_all()


_NOBODY = object()


def _in_transaction(connection: Any) -> bool:
    try:
        return connection is not None and bool(connection.in_transaction)
    except sqlite3.Error:  # closed
        return False


def _enable_wal(cursor: Any) -> None:
    """Switch the database to WAL, waiting while another connection holds it locked.

    A new database is switched by the first connection; one opening it while another process migrates it (the
    write lock held) is refused at once, without SQLite's busy handler: retried here for the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _open_engine(url: str | URL) -> Engine:
    """The engine of the ledger's database at ``url``; ``ValueError`` for a malformed URL or unknown driver."""
    try:
        parsed = _normalise_url(url)
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True)
    except ArgumentError as exc:
        raise ValueError(f"database URL is not usable: {exc}") from None


def _unavailable(engine: Engine, exc: OperationalError) -> LedgerUnavailableError:
    where = engine.url.render_as_string(hide_password=True)
    reason = " ".join(str(exc.orig or exc).split())  # one line
    return LedgerUnavailableError(f"cannot open the ledger database {where}: {reason}")


def upgrade_database(url: str | URL) -> str:
    """Upgrade the database at ``url`` to this release's schema (``dsr db upgrade``); answer its revision.

    Needs no keys: the schema holds no personal data. Raises ``ValueError`` for an unusable URL and
    :class:`LedgerUnavailableError` when the database cannot be reached or its schema is not usable.
    """
    engine = _open_engine(url)
    try:
        return migrations.upgrade(engine)
    except OperationalError as exc:
        raise _unavailable(engine, exc) from None
    except migrations.SchemaError as exc:
        raise LedgerUnavailableError(str(exc)) from None
    finally:
        engine.dispose()


# --- the ledger ------------------------------------------------------------------------------------


class Ledger:
    """The audit ledger. Thread-safe: one instance is shared by the worker's activity threads.

    Several processes (the worker, the CLI) may open the same database, SQLite file included.
    """

    def __init__(self, url: str | URL, sealer: Sealer, *, upgrade: bool = True) -> None:
        """Open the ledger at a SQLAlchemy ``url`` and upgrade its schema to this release's (see
        :mod:`dsr.migrations`); with ``upgrade=False`` a database not at that schema is refused instead.

        Raises ``ValueError`` for a malformed URL or an unknown driver and
        :class:`LedgerUnavailableError` when the database cannot be reached or its schema is not usable.
        """
        self._sealer = sealer
        self._lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._engine = _open_engine(url)
        self._url = self._engine.url
        if self._url.get_backend_name() == "sqlite" and _is_sqlite_memory(self._url):
            self._lock = threading.RLock()  # one shared connection: one thread at a time
        # SQLite: writes take the write lock up front (BEGIN IMMEDIATE), see _sqlite_engine.
        self._write_engine = self._engine.execution_options(dsr_write=True)
        try:
            if upgrade:
                prepare_schema(self._engine)
            else:
                self._require_head()
        except OperationalError as exc:
            self._engine.dispose()
            raise _unavailable(self._engine, exc) from None
        except LedgerUnavailableError:
            self._engine.dispose()
            raise

    def _require_head(self) -> None:
        with self._engine.connect() as connection:
            found = migrations.current(connection)
        if found != migrations.head():
            where = self._url.render_as_string(hide_password=True)
            raise LedgerUnavailableError(
                f"the ledger database {where} is at schema revision {found or 'none'}, this release needs "
                f"{migrations.head()}: run `dsr db upgrade`")


    @property
    def url(self) -> URL:
        return self._url

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def sealer(self) -> Sealer:
        """The key ring behind the blind indexes (``dsr.store.guards`` hashes client addresses with it)."""
        return self._sealer

    def close(self) -> None:
        """Release pooled connections; the instance must not be used afterwards."""
        self._engine.dispose()

    dispose = close

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        engine = self._write_engine if write else self._engine
        with self._lock, Session(engine) as session, session.begin():
            yield session

    # --- writes ------------------------------------------------------------------------------------

    def record_request(self, rec: RequestRecordInput, *, now: datetime) -> bool:
        """Create the request's row. False (and nothing changed) when it exists already."""
        now = _utc(now, "now")
        row = RequestRow(
            request_id=rec.request_id,
            kind=RequestKind(rec.kind).value,
            channel=Channel(rec.channel).value,
            language=Language(rec.language).value,
            received_at=_utc(rec.received_at, "received_at"),
            deadline=rec.deadline,
            extended=False,
            stage=Stage.RECEIVED.value,
            outcome=None,
            # Bound to the request id: a sealed address copied into another request's row does not open there.
            subject_email_sealed=self._sealer.seal_text(rec.subject.email, purpose=EMAIL_PURPOSE,
                                                        context=rec.request_id),
            subject_name_sealed=self._sealer.seal_text(rec.subject.name, purpose=NAME_PURPOSE,
                                                       context=rec.request_id),
            subject_index=self._email_index(rec.subject.email),
            created_at=now,
            updated_at=now,
        )
        try:
            with self._session(write=True) as session:
                if session.get(RequestRow, rec.request_id) is not None:
                    return False
                session.add(row)
        except IntegrityError:
            # A concurrent call inserted the same request between our check and our insert.
            if self._request_exists(rec.request_id):
                return False
            raise
        return True

    def record_triage_dismissal(self, record: TriageDismissalRecord) -> bool:
        """Keep the dismissal of ``record.triage_id``; False (and nothing changed) when it is kept already."""
        row = TriageDismissalRow(
            triage_id=record.triage_id,
            received_at=_utc(record.received_at, "received_at"),
            deadline=record.deadline,
            classifier_reason=record.classifier_reason,
            reason_sealed=self._sealer.seal_text(record.reason, purpose=DISMISSAL_PURPOSE,
                                                context=record.triage_id),
            decided_by=record.decided_by,
            attachments_deleted=record.attachments_deleted,
            dismissed_at=_utc(record.dismissed_at, "dismissed_at"),
            refused_as=record.refused_as,
            ground=record.ground,
        )
        try:
            with self._session(write=True) as session:
                if session.get(TriageDismissalRow, record.triage_id) is not None:
                    return False
                session.add(row)
        except IntegrityError:
            if self.triage_dismissal(record.triage_id) is not None:
                return False  # a concurrent retry kept it first
            raise
        return True

    def triage_dismissal(self, triage_id: str) -> TriageDismissalRecord | None:
        """The kept dismissal of ``triage_id``, its reason opened, or None."""
        with self._session(write=False) as session:
            row = session.get(TriageDismissalRow, triage_id)
            if row is None:
                return None
            return TriageDismissalRecord(
                triage_id=row.triage_id, received_at=_utc(row.received_at, "received_at"), deadline=row.deadline,
                classifier_reason=row.classifier_reason,
                reason=self._sealer.open_text(row.reason_sealed, purpose=DISMISSAL_PURPOSE, context=row.triage_id),
                decided_by=row.decided_by, attachments_deleted=row.attachments_deleted,
                dismissed_at=_utc(row.dismissed_at, "dismissed_at"), refused_as=row.refused_as, ground=row.ground)

    def append_event(self, event: AuditEvent, *, key: str, at: datetime) -> bool:
        """Append one event under an idempotency key; False (nothing written) when the key is known.

        In the same transaction, the request row takes the event's stage, outcome, deadline and
        extended flag when they are given. Raises :class:`UnknownRequestError` for an unknown request
        and ``ValueError`` when the details are not strings or hold the subject's email or name.
        """
        return self.append_events([(event, key)], at=at) == 1

    def append_events(self, events: Sequence[tuple[AuditEvent, str]], *, at: datetime) -> int:
        """Append events (each with its idempotency key), in order, in one transaction; answer how many were
        written (those whose key is known are skipped). What :meth:`append_event` says of one holds for each."""
        if any(not key for _, key in events):
            raise ValueError("an event needs a non-empty idempotency key")
        at = _utc(at, "at")
        checked = [(event, key, _check_details(event.details)) for event, key in events]
        written = 0
        try:
            # Core, not the ORM's unit of work: a flush per event (so that the next one saw it) was most of a batch's
            # CPU, and a request's activities write a batch every few of its steps.
            with self._lock, self._write_engine.begin() as connection:
                # One query for the batch's known keys (a retried batch finds them all), not one per event.
                known = set(connection.scalars(select(_EVENTS.c.event_key).where(
                    _EVENTS.c.event_key.in_([key for _, key, _ in checked]))))
                requests: dict[str, _RequestChange] = {}
                new_events: list[dict[str, Any]] = []
                new_notes: list[dict[str, Any]] = []
                for event, key, details in checked:
                    if key in known:
                        continue
                    change = requests.get(event.request_id) or self._request_change(connection, event.request_id)
                    requests[event.request_id] = change
                    _refuse_personal_data(event, details, change.subject)
                    new_events.append({"event_key": key, "request_id": event.request_id, "at": at,
                                       "event": event.event, "actor": event.actor,
                                       "details": json.dumps(details, ensure_ascii=False)})
                    if event.note.strip():
                        # Bound to its event (key names the request's workflow): it opens there and nowhere else.
                        new_notes.append({"event_key": key, "note_sealed": self._sealer.seal_text(
                            event.note.strip(), purpose=NOTE_PURPOSE, context=key)})
                    change.take(event, at)
                    known.add(key)
                    written += 1
                if new_events:  # in the order noted: the events' ids follow it
                    connection.execute(insert(_EVENTS), new_events)
                if new_notes:
                    connection.execute(insert(_EVENT_NOTES), new_notes)
                for change in requests.values():
                    if change.values:
                        connection.execute(update(_REQUESTS).where(
                            _REQUESTS.c.request_id == change.request_id).values(change.values))
                    if change.closed:
                        # Closed: the subject may make a new request of this kind (same transaction as the close).
                        connection.execute(self._claim_of(change.subject_index, change.kind, change.request_id))
        except IntegrityError:
            # A concurrent call with the same key won the race; its transaction holds the whole change. One by one,
            # each event is then either found written or written now.
            if len(events) == 1:
                if self.has_event(events[0][1]):
                    return 0
                raise
            return sum(self.append_event(event, key=key, at=at) for event, key in events)
        return written

    def _request_change(self, connection: Connection, request_id: str) -> _RequestChange:
        found = connection.execute(select(
            _REQUESTS.c.request_id, _REQUESTS.c.kind, _REQUESTS.c.subject_index, _REQUESTS.c.updated_at,
            _REQUESTS.c.subject_email_sealed, _REQUESTS.c.subject_name_sealed,
        ).where(_REQUESTS.c.request_id == request_id)).one_or_none()
        if found is None:
            raise UnknownRequestError(f"request {request_id!r} is not in the ledger; record it before its events")
        return _RequestChange(
            request_id=request_id, kind=found.kind, subject_index=found.subject_index,
            updated_at=_utc(found.updated_at, "updated_at"),
            subject=self._open_subject(request_id, found.subject_email_sealed, found.subject_name_sealed))

    def claim_subject(self, email: str, kind: RequestKind, request_id: str, *, now: datetime) -> SubjectClaim:
        """Claim the subject (any case) and kind for ``request_id``, unless another request holds them: the
        claim that holds them afterwards (``request_id`` is ours only if we won). Atomic on every backend: of
        two concurrent claims, whatever process makes them, one wins and the other reads the winner."""
        now = _utc(now, "now")
        index, kind_value = self._email_index(email), RequestKind(kind).value
        for _ in range(3):
            try:
                with self._session(write=True) as session:
                    held = session.get(SubjectClaimRow, (index, kind_value))
                    if held is not None:
                        return SubjectClaim(held.request_id, held.claimed_at)
                    session.add(SubjectClaimRow(subject_index=index, kind=kind_value, request_id=request_id,
                                                claimed_at=now))
                return SubjectClaim(request_id, now)
            except IntegrityError:
                continue  # PostgreSQL: a concurrent claim committed between our look and our insert: read it
        raise LedgerUnavailableError("the subject claim keeps changing; try again")

    def release_claim(self, email: str, kind: RequestKind, request_id: str) -> bool:
        """Compare-and-delete: release the subject and kind only if ``request_id`` still holds them."""
        statement = self._claim_of(self._email_index(email), RequestKind(kind).value, request_id)
        with self._session(write=True) as session:
            return (session.execute(statement).rowcount or 0) > 0  # type: ignore[attr-defined]

    def claim_of(self, email: str, kind: RequestKind) -> SubjectClaim | None:
        """Who holds the subject and kind now, if anyone."""
        with self._session(write=False) as session:
            held = session.get(SubjectClaimRow, (self._email_index(email), RequestKind(kind).value))
            return None if held is None else SubjectClaim(held.request_id, held.claimed_at)

    @staticmethod
    def _claim_of(subject_index: str, kind: str, request_id: str) -> Any:
        return delete(SubjectClaimRow).where(
            SubjectClaimRow.subject_index == subject_index,  # type: ignore[arg-type]
            SubjectClaimRow.kind == kind,  # type: ignore[arg-type]
            SubjectClaimRow.request_id == request_id,  # type: ignore[arg-type]
        )

    # --- reads -------------------------------------------------------------------------------------

    def has_request(self, request_id: str) -> bool:
        """Whether the ledger knows the request (no decryption)."""
        return self._request_exists(request_id)

    def has_event(self, key: str) -> bool:
        with self._session(write=False) as session:
            return self._event_exists(session, key)

    def get_request(self, request_id: str) -> LedgerRequest | None:
        with self._session(write=False) as session:
            row = session.get(RequestRow, request_id)
            return None if row is None else self._view(row)

    def request_of_sent_email(self, keys: Iterable[str]) -> str | None:
        """The request an email we sent belongs to, found by the idempotency key of its ``notice_sent`` event.

        Our Message-IDs are derived from those keys (``activities.notices``, ``activities.replies``), so a reply's
        In-Reply-To leads back to its request through the unique index on ``event_key``, without a scan.
        """
        wanted = [key for key in keys if key]
        if not wanted:
            return None
        statement = (
            select(col(EventRow.request_id))
            .where(col(EventRow.event_key).in_(wanted), col(EventRow.event) == "notice_sent")
            .limit(1)
        )
        with self._session(write=False) as session:
            return session.scalar(statement)

    def request_of_subject(self, request_id: str, email: str) -> LedgerRequest | None:
        """The request, only when ``email`` (any case) is its subject's address, compared by blind index.

        None when there is no such request or it is someone else's: a caller that only knows a reference
        (quoted in a Subject line, say) learns nothing about requests that are not the sender's.
        """
        with self._session(write=False) as session:
            row = session.get(RequestRow, request_id)
            if row is None or not hmac.compare_digest(row.subject_index, self._email_index(email)):
                return None
            return self._view(row)

    def events(self, request_id: str) -> list[LedgerEvent]:
        """The request's events in time order (ties: the order they were appended)."""
        statement = (
            select(EventRow, col(EventNoteRow.note_sealed))
            .join(EventNoteRow, col(EventNoteRow.event_key) == col(EventRow.event_key), isouter=True)
            .where(col(EventRow.request_id) == request_id)
            .order_by(col(EventRow.at), col(EventRow.id))
        )
        with self._session(write=False) as session:
            return [
                LedgerEvent(at=row.at, event=row.event, actor=row.actor, details=json.loads(row.details),
                            note=self._sealer.open_text(sealed, purpose=NOTE_PURPOSE, context=row.event_key)
                            if sealed else "")
                for row, sealed in session.execute(statement)
            ]

    def requests(self, stage: Stage | None = None) -> list[LedgerRequest]:
        """Every request (or those in ``stage``), oldest first."""
        statement = select(RequestRow)
        if stage is not None:
            statement = statement.where(col(RequestRow.stage) == Stage(stage).value)
        statement = statement.order_by(col(RequestRow.received_at), col(RequestRow.request_id))
        with self._session(write=False) as session:
            return [self._view(row) for row in session.scalars(statement)]

    def earlier_of_same_subject(self, request_id: str, kinds: Iterable[RequestKind]) -> list[str]:
        """Ids of the requests of ``kinds`` by the same subject (blind index) received no later than
        ``request_id``, oldest first, without it: what an erasure must clean up after (their exports)."""
        with self._session(write=False) as session:
            row = session.get(RequestRow, request_id)
            if row is None:
                return []
            statement = select(col(RequestRow.request_id)).where(
                col(RequestRow.subject_index) == row.subject_index,
                col(RequestRow.kind).in_([RequestKind(k).value for k in kinds]),
                col(RequestRow.received_at) <= row.received_at,
                col(RequestRow.request_id) != request_id,
            ).order_by(col(RequestRow.received_at), col(RequestRow.request_id))
            return list(session.scalars(statement))

    def of_same_subject(self, request_id: str, kinds: Iterable[RequestKind]) -> list[str]:
        """Ids of every request of ``kinds`` by the same subject (blind index) as ``request_id``, whenever received,
        oldest first, without it: the restrictions a rectification or an objection may end (Art. 18(1)(a), (d))."""
        with self._session(write=False) as session:
            row = session.get(RequestRow, request_id)
            if row is None:
                return []
            statement = select(col(RequestRow.request_id)).where(
                col(RequestRow.subject_index) == row.subject_index,
                col(RequestRow.kind).in_([RequestKind(k).value for k in kinds]),
                col(RequestRow.request_id) != request_id,
            ).order_by(col(RequestRow.received_at), col(RequestRow.request_id))
            return list(session.scalars(statement))

    def ground_ended_for(self, request_id: str, ground: str) -> tuple[str, datetime] | None:
        """The first ``restriction_ground_end`` event of ``ground`` written by another request of the same subject
        (blind index) no earlier than ``request_id`` (a restriction) was received: which request and when. An end
        of ground recorded before the restriction was received is no end of it."""
        with self._session(write=False) as session:
            row = session.get(RequestRow, request_id)
            if row is None:
                return None
            statement = (
                select(col(EventRow.request_id), col(EventRow.at), col(EventRow.details))
                .join(RequestRow, col(RequestRow.request_id) == col(EventRow.request_id))
                .where(col(RequestRow.subject_index) == row.subject_index,
                       col(EventRow.event) == "restriction_ground_end",
                       col(EventRow.request_id) != request_id,
                       col(EventRow.at) >= row.received_at)
                .order_by(col(EventRow.at), col(EventRow.id))
            )
            for ended_by, at, details in session.execute(statement):
                if json.loads(details).get("ground") == ground:
                    return ended_by, at
            return None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session, for reports that select many rows in one query (``dsr.dpo.register``) instead of
        one call per request."""
        with self._session(write=False) as session:
            yield session

    def subject_of(self, row: RequestRow) -> Subject:
        """The subject of a request row read through :meth:`reading`, decrypted (personal data)."""
        return self._subject(row)

    # --- internals ---------------------------------------------------------------------------------

    def subject_key(self, email: str) -> str:
        """The blind index of an address (any case): a key for per-subject counters, never the address."""
        return self._email_index(email)

    def _email_index(self, email: str) -> str:
        return self._sealer.blind_index(_email_index_value(email), purpose=EMAIL_INDEX_PURPOSE)

    def _request_exists(self, request_id: str) -> bool:
        with self._session(write=False) as session:
            return session.get(RequestRow, request_id) is not None

    @staticmethod
    def _event_exists(session: Session, key: str) -> bool:
        return session.scalar(select(col(EventRow.id)).where(col(EventRow.event_key) == key)) is not None

    def _subject(self, row: RequestRow) -> Subject:
        return self._open_subject(row.request_id, row.subject_email_sealed, row.subject_name_sealed)

    def _open_subject(self, request_id: str, email_sealed: str, name_sealed: str) -> Subject:
        return Subject(
            email=self._sealer.open_text(email_sealed, purpose=EMAIL_PURPOSE, context=request_id),
            name=self._sealer.open_text(name_sealed, purpose=NAME_PURPOSE, context=request_id),
        )

    def _view(self, row: RequestRow) -> LedgerRequest:
        return LedgerRequest(
            request_id=row.request_id,
            kind=RequestKind(row.kind),
            channel=Channel(row.channel),
            language=Language(row.language),
            received_at=row.received_at,
            deadline=row.deadline,
            extended=bool(row.extended),
            stage=Stage(row.stage),
            outcome=Outcome(row.outcome) if row.outcome is not None else None,
            subject=self._subject(row),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

"""Counters and guards every intake replica shares, in the ledger's database (SQLite or PostgreSQL).

N intake replicas on N machines must allow exactly what one does, so nothing the intake counts lives in a
process: each decision is one transaction that reads *and* records, on rows locked for that transaction
(SQLite: the write transaction takes the database's write lock at ``BEGIN IMMEDIATE``, see
:mod:`dsr.store.ledger`; PostgreSQL: ``INSERT ... ON CONFLICT DO NOTHING`` makes the row exist, ``SELECT ... FOR
UPDATE`` locks it), so two replicas deciding at the same instant queue on the row, the second seeing what
the first recorded.

Tables (made by the ledger's migrations, :mod:`dsr.migrations`, like the ledger's own):

``rate_limits``
    Submissions per client address and per subject in a sliding window: the times of the last hits (at most
    the limit). :meth:`Guards.hit` checks every window and records the hit in all of them in one step, or
    records nothing and answers the seconds to wait (``Retry-After``).
``attempt_limits``
    Wrong answers on ``/verify`` and ``/exports``: ``max_attempts`` failures within ``lockout`` lock for
    ``lockout``. Counted per request only for requests that exist (a reference the ledger knows; an
    ``/exports`` token is signed, so its request exists); per client address for every wrong answer (at
    most ``max_client_attempts`` per window); and, for a made-up reference, per client *and* reference, so
    the one who typed it sees the same lock as for a real one while nobody else is affected. A flood of
    made-up references therefore never locks a real request, nor anyone but the client sending them.
``answer_caps``
    Wrong answers of one request on ``/verify`` or ``/exports``, for good (never reset by a right answer, kept
    :attr:`AttemptLimits.cap_keep`): at ``max_wrong`` the code path of that request is closed (every answer,
    the right one included, is then ``closed``), and the one wrong answer that closed it says so
    (:attr:`Verdict.capped_now`) so that the operator is told once. The lockouts above slow guessing down;
    this cap bounds it, however slow.
``seen_signatures``
    Webhook signatures accepted within the replay window: the second delivery of one is a replay.

Keys are hashes (client addresses through the key ring's blind index, signatures through SHA-256) or
request references (no personal data); never an address or an email in plaintext. Rows carry an
``expires_at`` after which they mean nothing; each :class:`Guards` deletes a bounded batch of expired rows
at most once a minute (:meth:`Guards.purge`), so the tables stay as small as the traffic of one window.

Synchronous, like the ledger: the intake runs these calls in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, String, Text, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col

from dsr.store.ledger import UTCDateTime, prepare_schema

CLIENT_PURPOSE = "intake.client-address"
PURGE_EVERY = timedelta(minutes=1)
PURGE_BATCH = 500


class Indexer(Protocol):
    """A keyed hash (``dsr.store.crypto.KeyRing`` implements it)."""

    def blind_index(self, value: str, *, purpose: str) -> str: ...


# --- tables ------------------------------------------------------------------------------------------------


class RateLimitRow(SQLModel, table=True):
    """One rate-limited key (``address:<hash>`` or ``subject:<blind index>``) and its recent hits."""

    __tablename__ = "rate_limits"

    key: str = Field(primary_key=True, sa_type=String(200))
    hits: str = Field(default="[]", sa_type=Text)  # JSON list of Unix times, oldest first
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class AttemptLimitRow(SQLModel, table=True):
    """Wrong answers of one key: ``<scope>:ref:<request id>``, ``<scope>:client:<hash>`` or
    ``<scope>:guess:<hash of client and reference>``."""

    __tablename__ = "attempt_limits"

    key: str = Field(primary_key=True, sa_type=String(200))
    failures: int = 0
    first_failed: datetime | None = Field(default=None, sa_type=UTCDateTime)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class SeenSignatureRow(SQLModel, table=True):
    """A webhook signature already accepted (SHA-256 of it), until its replay window is over."""

    __tablename__ = "seen_signatures"

    key: str = Field(primary_key=True, sa_type=String(100))
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class AnswerCapRow(SQLModel, table=True):
    """Wrong answers of one request, for good: ``<scope>:<request id>``; ``closed_at`` once the cap is reached."""

    __tablename__ = "answer_caps"

    key: str = Field(primary_key=True, sa_type=String(200))
    wrong: int = 0
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


_Row = TypeVar("_Row", RateLimitRow, AttemptLimitRow, AnswerCapRow)
_Locked = TypeVar("_Locked")  # what a locking read answers per key: an ORM row, or a column of it


# --- values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateWindow:
    """At most ``limit`` hits of ``key`` per ``window``; ``scope`` names it in the refusal ("address")."""

    scope: str
    key: str
    limit: int
    window: timedelta


@dataclass(frozen=True)
class RateRefusal:
    scope: str
    retry_after: int  # whole seconds, at least 1


MAX_WRONG_ANSWERS = 10
"""Wrong answers a request's code takes in all (``DSR_CODE_MAX_WRONG``), then its code path is closed."""
CAP_KEEP = timedelta(days=400)
"""How long a request's count of wrong answers is kept after the last one: longer than any code lives."""


@dataclass(frozen=True)
class AttemptLimits:
    """``max_attempts`` wrong answers per request within ``lockout`` lock it for ``lockout``; a client address
    gets ``max_client_attempts`` wrong answers per ``lockout`` window, whatever the references; a request
    takes ``max_wrong`` wrong answers in all (None: no lasting cap), then its code path is closed."""

    max_attempts: int = 5
    lockout: timedelta = timedelta(minutes=15)
    max_client_attempts: int = 30
    max_wrong: int | None = None
    cap_keep: timedelta = CAP_KEEP


@dataclass(frozen=True)
class AnswerThrottle:
    """Answers (right or wrong) to one page: ``per_client`` per client address and ``overall`` from everyone,
    per ``window``; beyond, 429. Bounds guessing spread over many requests and many addresses."""

    per_client: int = 30
    overall: int = 1000
    window: timedelta = timedelta(hours=1)

    def windows(self, scope: str, client_hash: str) -> list[RateWindow]:
        return [RateWindow("address", f"{scope}-answers:client:{client_hash}", self.per_client, self.window),
                RateWindow("everyone", f"{scope}-answers:all", self.overall, self.window)]


DEFAULT_THROTTLE = AnswerThrottle()


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Guards.judge` decided: ``locked`` (``wait`` left), ``right``, ``wrong`` or ``closed`` (the
    request's lasting cap is reached: no answer counts any more). ``capped_now``: this wrong answer reached it."""

    outcome: str
    wait: timedelta | None = None
    capped_now: bool = False

    @property
    def locked(self) -> bool:
        return self.outcome == "locked"


# --- the guards --------------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("guards need timezone-aware times")
    return value.astimezone(UTC)


class Guards:
    """Rate limits, attempt counters and the replay guard, on the ledger's engine. Thread-safe."""

    def __init__(self, engine: Engine, indexer: Indexer, *, purge_every: timedelta = PURGE_EVERY,
                 purge_batch: int = PURGE_BATCH) -> None:
        self._engine = engine
        # On the ledger's SQLite engine this option makes writes BEGIN IMMEDIATE (see dsr.store.ledger).
        self._write_engine = engine.execution_options(dsr_write=True)
        self._indexer = indexer
        self._purge_every = purge_every
        self._purge_batch = purge_batch
        self._purged_at: datetime | None = None
        self._purge_lock = threading.Lock()
        prepare_schema(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- keys ----------------------------------------------------------------------------------------------

    def client_key(self, address: str | None) -> str:
        """A keyed hash of a client address (``-`` when unknown): never the address itself."""
        return self._indexer.blind_index((address or "-").strip().lower(), purpose=CLIENT_PURPOSE)

    # --- rate limits ---------------------------------------------------------------------------------------

    def hit(self, windows: Sequence[RateWindow], now: datetime) -> RateRefusal | None:
        """Check every window and record one hit in all of them, in one transaction; or, when one is full,
        record nothing and answer the first full one (in the order given) with the seconds to wait."""
        now = _utc(now)
        moment = now.timestamp()
        with self._session(write=True) as session:
            rows = self._lock_rows(session, RateLimitRow, [w.key for w in windows], {"hits": "[]", "expires_at": now})
            recent: dict[str, list[float]] = {}
            for window in windows:
                span = window.window.total_seconds()
                hits = sorted(h for h in json.loads(rows[window.key].hits) if h > moment - span)
                if len(hits) >= window.limit:
                    # Replicas' clocks differ a little: a hit "from the future" never makes the wait exceed the window.
                    wait = min(span, hits[len(hits) - window.limit] + span - moment)
                    return RateRefusal(window.scope, max(1, math.ceil(wait)))
                recent[window.key] = hits
            for window in windows:
                hits = sorted([*recent[window.key], moment])[-window.limit:]
                row = rows[window.key]
                row.hits = json.dumps(hits)
                row.expires_at = now + window.window
                session.add(row)
        self._maybe_purge(now)
        return None

    # --- vendors' rate limits --------------------------------------------------------------------------------

    def reserve(self, key: str, limit: int, span: float, *, lead: float = 0.0, now: float | None = None) -> float:
        """Take the earliest slot of the window ``key`` that keeps at most ``limit`` slots in any ``span``
        seconds and is at least ``lead`` seconds away, record it, and answer its time (Unix seconds).

        ``lead``: how long the caller expects to take to get the answer (the commit, the thread's return): a
        free slot taken at the instant the clock is read would be left that much late.

        The connectors' shared rate limits (``connectors.http.RateLimiter(shared=...)``): every worker reserves
        in the same row, so N workers together make no more calls than one may. A slot is a reservation, taken
        whether or not the caller then sends (a cancelled call wastes one: the safe side). Times are the
        callers' clocks, which NTP keeps within milliseconds; the connectors' margin covers that.

        The time, not the wait: the caller measures how late it is for the slot itself. A wait from "now" hid the
        time between reading the clock and the caller getting the answer (the commit, the thread's return: up to
        half a second under load), and a call leaving that much after its slot crowded the next window (429s)."""
        return self.reserve_together([(key, limit, span)], lead=lead, now=now)

    def reserve_together(self, windows: Sequence[tuple[str, int, float]], *, lead: float = 0.0,
                         now: float | None = None) -> float:
        """One slot in every window of ``windows`` (``(key, limit, span)`` each), in one transaction: the earliest
        time free in all of them, at least ``lead`` seconds away, recorded in each (see :meth:`reserve`).

        A call that counts against two limits (HubSpot's search: its search limit and the account's general one)
        leaves once, so it takes one time in both. Reserved one after the other, the second slot could be seconds
        after the first (the search window full), and the call, leaving at the second, left that late for the
        first: the general window, kept on the first, let the calls reserved after it crowd the vendor's."""
        keys = [f"vendor:{key}" for key, _, _ in windows]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError("a reservation needs one or more windows, each once")
        when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        # SQLAlchemy Core, not the ORM: paid on every vendor call, and the ORM's unit of work (loading the rows as
        # objects, flushing their changes) was a third of the reservation's CPU (bench/rate_reservations.py).
        table = RateLimitRow.__table__  # type: ignore[attr-defined]
        locking = (select(table.c.key, table.c.hits).where(table.c.key.in_(sorted(keys)))
                   .order_by(table.c.key).with_for_update())  # key order: two reservations cannot deadlock
        with self._write_engine.begin() as connection:
            hits: dict[str, str] = self._locked(
                lambda: {key: value for key, value in connection.execute(locking)}, connection, RateLimitRow, keys,
                {"hits": "[]", "expires_at": when})
            # The time is read once the rows are ours: a reservation that queued behind others for the lock must
            # not take a slot in the past, or its call would leave late and crowd the next window.
            moment = time.time() if now is None else now
            slot = moment + max(0.0, lead)
            recent: list[list[float]] = []
            for key, (_, limit, span) in zip(keys, windows, strict=True):
                slots = sorted(t for t in json.loads(hits[key]) if t > moment - span)  # later: reservations
                if len(slots) >= limit:
                    slot = max(slot, slots[-limit] + span)
                recent.append(slots)
            # Any time at or after each window's own earliest keeps that window valid: at most limit - 1 of its
            # slots lie within a span of it (they all follow its limit-th last one by less than a span).
            for key, (_, limit, span), slots in zip(keys, windows, recent, strict=True):
                kept = sorted([*slots, slot])[-limit:]
                connection.execute(update(table).where(table.c.key == key).values(
                    hits=json.dumps(kept), expires_at=datetime.fromtimestamp(max(kept) + span, UTC)))
        self._maybe_purge(when)
        return slot

    # --- wrong answers -------------------------------------------------------------------------------------

    def _attempt_keys(self, scope: str, reference: str, client: str | None, tracked: bool) -> tuple[str, str]:
        client_hash = self.client_key(client)
        if tracked:
            subject = f"{scope}:ref:{reference}"
        else:
            guess = self._indexer.blind_index(f"{client_hash}\n{reference}", purpose=CLIENT_PURPOSE)
            subject = f"{scope}:guess:{guess}"
        return subject, f"{scope}:client:{client_hash}"

    def wait(self, scope: str, reference: str, client: str | None, now: datetime, *, tracked: bool = True
             ) -> timedelta | None:
        """The time left on a lock of this reference or this client, or None. Reads only (a cheap early check:
        :meth:`judge` decides)."""
        now = _utc(now)
        keys = self._attempt_keys(scope, reference, client, tracked)
        with self._session(write=False) as session:
            rows = session.scalars(select(AttemptLimitRow).where(AttemptLimitRow.key.in_(keys)))  # type: ignore[attr-defined]
            return _longest([_left(row, now) for row in rows])

    def judge(self, scope: str, reference: str, client: str | None, now: datetime, *, right: bool,
              limits: AttemptLimits, tracked: bool = True) -> Verdict:
        """Decide one answer, checked beforehand (``right``), in one transaction: ``locked`` if the reference or
        the client is locked (nothing counted; even a right answer waits); ``closed`` if the reference's lasting
        cap is reached (counted for the lockouts; even a right answer is refused); else ``right`` (the
        reference's lockout count starts again, its lasting count does not) or ``wrong`` (counted for the
        reference, for good too, and the client; the last allowed one locks, the ``max_wrong``-th closes).
        ``tracked``: the reference exists (else it is counted per client and reference, never capped)."""
        now = _utc(now)
        subject_key, client_key = self._attempt_keys(scope, reference, client, tracked)
        capped_now = False
        with self._session(write=True) as session:
            rows = self._lock_rows(session, AttemptLimitRow, [subject_key, client_key],
                                   {"failures": 0, "first_failed": None, "locked_until": None, "expires_at": now})
            subject, by_client = rows[subject_key], rows[client_key]
            cap: AnswerCapRow | None = None
            if tracked and limits.max_wrong is not None:
                cap_key = f"{scope}:{reference}"
                cap = self._lock_rows(session, AnswerCapRow, [cap_key],
                                      {"wrong": 0, "closed_at": None, "expires_at": now + limits.cap_keep})[cap_key]
            for row in (subject, by_client):
                if row.failures and _expired(row, now, limits.lockout):
                    _reset(row, now)  # lock served, or no failure for a whole window: a fresh set of attempts
                    session.add(row)
            wait = _longest([_left(subject, now), _left(by_client, now)])
            if wait is not None:
                return Verdict("locked", wait)
            if cap is not None and cap.closed_at is not None:
                # Closed for good: whatever is typed is refused, and still counts for the lockouts (of the request
                # and the client), so that hammering a closed code stays as slow as hammering an open one.
                _fail(subject, now, limits.max_attempts, limits.lockout)
                _fail(by_client, now, limits.max_client_attempts, limits.lockout)
                session.add_all([subject, by_client])
                return Verdict("closed")
            if right:
                _reset(subject, now)
                session.add(subject)
                return Verdict("right")
            _fail(subject, now, limits.max_attempts, limits.lockout)
            _fail(by_client, now, limits.max_client_attempts, limits.lockout)
            session.add_all([subject, by_client])
            if cap is not None and limits.max_wrong is not None:
                cap.wrong += 1
                cap.expires_at = now + limits.cap_keep
                if cap.wrong >= limits.max_wrong:
                    cap.closed_at, capped_now = now, True
                session.add(cap)
        self._maybe_purge(now)
        return Verdict("wrong", capped_now=capped_now)

    def wrong_answers(self, scope: str, reference: str) -> tuple[int, bool]:
        """The lasting count of wrong answers of ``reference`` on ``scope``, and whether its code path is closed."""
        with self._session(write=False) as session:
            row = session.get(AnswerCapRow, f"{scope}:{reference}")
            return (0, False) if row is None else (row.wrong, row.closed_at is not None)

    # --- replays -------------------------------------------------------------------------------------------

    def first_delivery(self, signature: bytes, now: datetime, *, keep: timedelta) -> bool:
        """True the first time ``signature`` is seen within ``keep``; False for a replay. One transaction."""
        now = _utc(now)
        key = hashlib.sha256(signature).hexdigest()
        with self._session(write=True) as session:
            session.execute(delete(SeenSignatureRow).where(
                SeenSignatureRow.key == key, SeenSignatureRow.expires_at <= now))  # type: ignore[arg-type]
            first = insert_if_missing(session, SeenSignatureRow, key, {"expires_at": now + keep})
        self._maybe_purge(now)
        return first

    # --- expiry --------------------------------------------------------------------------------------------

    def purge(self, now: datetime, *, batch: int | None = None) -> int:
        """Delete up to ``batch`` expired rows of each table; the number deleted."""
        now = _utc(now)
        batch = batch or self._purge_batch
        deleted = 0
        for model in (RateLimitRow, AttemptLimitRow, AnswerCapRow, SeenSignatureRow):
            expired = (
                select(col(model.key)).where(col(model.expires_at) < now).limit(batch)
                .with_for_update(skip_locked=True)  # PostgreSQL: rows another replica holds are left for later
            )
            with self._session(write=True) as session:
                result = session.execute(delete(model).where(
                    col(model.key).in_(expired.scalar_subquery()),
                    col(model.expires_at) < now,  # again: a row renewed meanwhile is kept
                ).execution_options(synchronize_session=False))
                deleted += max(0, result.rowcount or 0)  # type: ignore[attr-defined]
        return deleted

    def _maybe_purge(self, now: datetime) -> None:
        with self._purge_lock:
            last = self._purged_at
            if last is not None and last <= now < last + self._purge_every:
                return
            self._purged_at = now
        self.purge(now)

    # --- internals -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        with Session(self._write_engine if write else self._engine) as session, session.begin():
            yield session

    def _lock_rows(self, session: Session, model: type[_Row], keys: Sequence[str], new: dict[str, Any]
                   ) -> dict[str, _Row]:
        """The rows of ``keys``, created (with the values ``new``) if missing, and locked until the transaction
        ends. Always in key order, so two transactions locking the same rows cannot deadlock."""
        statement = (
            select(model).where(col(model.key).in_(sorted(set(keys))))
            .order_by(col(model.key)).with_for_update()
        )
        return self._locked(lambda: {row.key: row for row in session.scalars(statement)}, session, model, keys, new)

    def _locked(self, read: Callable[[], dict[str, _Locked]], session: Session | Connection, model: type[SQLModel],
                keys: Sequence[str], new: dict[str, Any]) -> dict[str, _Locked]:
        """What ``read`` (a locking SELECT of ``keys``, in key order) answers, once the rows missing from its first
        answer are inserted (with the values ``new``). Read first: a row exists after its key's first use (a
        vendor's window after its first call), and an insert built and sent at every use was a quarter of a rate
        reservation's CPU."""
        rows = read()
        missing = sorted(set(keys) - set(rows))
        if not missing:
            return rows
        for key in missing:
            insert_if_missing(session, model, key, new)
        return read()


def insert_if_missing(session: Session | Connection, model: type[SQLModel], key: str, values: dict[str, Any]) -> bool:
    """Insert the row ``key`` (primary key column ``key``) of ``model`` unless it exists (committed by another
    transaction included); True if inserted. Then a locking read of it sees it, whoever inserted it."""
    table = model.__table__  # type: ignore[attr-defined]
    dialect = (session.engine if isinstance(session, Connection) else session.get_bind()).dialect.name
    if dialect in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        # Both dialects' INSERT ... ON CONFLICT DO NOTHING, with the same methods but unrelated types.
        insert: Callable[[Any], Any] = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            insert(table).values(key=key, **values).on_conflict_do_nothing(index_elements=["key"])
            .returning(table.c.key)  # psycopg reports no rowcount here: the returned row says it
        )
        return session.execute(statement).first() is not None
    try:  # another database: a savepoint absorbs the duplicate key
        with session.begin_nested():
            session.execute(table.insert().values(key=key, **values))
    except IntegrityError:
        return False
    return True


def _expired(row: AttemptLimitRow, now: datetime, lockout: timedelta) -> bool:
    if row.locked_until is not None:
        return now >= row.locked_until
    return row.first_failed is None or now >= row.first_failed + lockout


def _left(row: AttemptLimitRow, now: datetime) -> timedelta | None:
    if row.locked_until is None or now >= row.locked_until:
        return None
    return row.locked_until - now


def _longest(waits: Sequence[timedelta | None]) -> timedelta | None:
    found = [w for w in waits if w is not None]
    return max(found) if found else None


def _reset(row: AttemptLimitRow, now: datetime) -> None:
    row.failures, row.first_failed, row.locked_until, row.expires_at = 0, None, None, now


def _fail(row: AttemptLimitRow, now: datetime, limit: int, lockout: timedelta) -> None:
    if row.failures == 0 or row.first_failed is None:
        row.failures, row.first_failed, row.locked_until = 0, now, None
    row.failures += 1
    row.expires_at = row.first_failed + lockout
    if row.failures >= limit:
        row.locked_until = now + lockout
        row.expires_at = row.locked_until

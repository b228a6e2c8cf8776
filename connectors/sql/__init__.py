"""The company's own application database (PostgreSQL, MySQL/MariaDB, SQLite), through SQLAlchemy Core.

Driven by the map of ``dsr.toml`` (:mod:`connectors.sql.map`): the subject is the row of the subject's table whose
email column equals the request's address (case-insensitively); every other table's rows are those reached from it
by the map's links, written as nested ``IN`` sub-queries, so the database does the joining.

* Export: one dataset per table, streamed with a server-side cursor (``stream_results``/``yield_per``: a batch of
  rows in memory at a time), in primary-key order; a checkpoint after each batch (table index, last key, records
  written), so a resumed export continues after the last key without duplicates.
* Erasure: every row to change is planned first and journaled (intents) before the first write, so a retry after
  a killed worker finds even the rows no longer reachable (their parent already changed). Rows are changed in
  transactions of ``batch_size`` rows, deepest table first and the subject's row last (children before parents),
  and each transaction's lines are recorded once it committed. A retry redoes nothing: a row whose intent it
  finds is re-read, and is done when it is gone (deleted) or already holds its erased values (NULL, the masked
  form, a 64-hex-digit hash). Kept rows are reported with their legal basis and date.
* Database errors never carry their text (it may quote a row): only the table and the kind of error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Engine,
    Select,
    String,
    and_,
    bindparam,
    cast,
    column,
    create_engine,
    delete,
    func,
    inspect,
    or_,
    select,
    table,
    tuple_,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.sql.expression import TableClause

from connectors.base import (
    CONSENT,
    ConnectorError,
    DatasetWriter,
    ExportJob,
    JournalEntry,
    JournalState,
    Located,
    OperationJob,
    PermanentConnectorError,
    TransientConnectorError,
    close_datasets,
    no_marketing_control,
    no_restriction_control,
    open_datasets,
    tally,
    truncate_datasets,
)
from connectors.sql.map import MODIFYING, SqlMap, Table
from dsr.domain.model import (
    ConnectorOutcome,
    ConsentAction,
    DatasetSummary,
    RecordAction,
    RecordReport,
    RequestKind,
    Subject,
)

CURSOR_VERSION = 1
HASH_LENGTH = 64
_HASHED = re.compile(r"^[0-9a-f]{64}$")
ALREADY_ANONYMISED = "already anonymised"
RETENTION_OVER = "retention period over"
_T = TypeVar("_T")

# --- erased values ------------------------------------------------------------------------------------------


def _mask_word(word: str) -> str:
    return word[:1] + "*" * (len(word) - 1)


def mask(value: str) -> str:
    """The first character kept, the rest starred; an email keeps its top-level domain
    (``camille@example.org`` -> ``c******@*******.org``). Masking a masked value changes nothing."""
    if "@" in value:
        local, _, domain = value.rpartition("@")
        labels = domain.split(".")
        masked = ".".join([*("*" * len(label) for label in labels[:-1]), labels[-1]]) if len(labels) > 1 \
            else "*" * len(domain)
        return f"{_mask_word(local)}@{masked}"
    return _mask_word(value)


def keyed_hash(key: str, value: Any) -> str:
    """HMAC-SHA256 of the trimmed, case-folded value: the same address gives the same hash (to recognise a
    returning person without holding their address), and no one without the key can compute it."""
    return hmac.new(key.encode(), str(value).strip().casefold().encode(), hashlib.sha256).hexdigest()


def is_erased(strategy: str, value: Any) -> bool:
    """Whether ``value`` already is what ``strategy`` leaves (so a retry knows the write took effect)."""
    if value is None:
        return True
    if strategy == "mask":
        return isinstance(value, str) and mask(value) == value
    if strategy == "hash":
        return isinstance(value, str) and bool(_HASHED.match(value))
    return False  # null: only None


def _erased_value(strategy: str, value: Any, key: str) -> Any:
    if value is None or strategy == "null":
        return None
    if strategy == "mask":
        return mask(str(value))
    return keyed_hash(key, value)


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def jsonable(value: Any) -> Any:
    """A column's value as the export writes it (JSON)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID | timedelta):
        return str(value)
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _key_order(record_id: str) -> tuple[int, int, str]:
    return (0, int(record_id), "") if record_id.lstrip("-").isdigit() else (1, 0, record_id)


_PHONE_NOISE = (" ", "-", ".", "(", ")", "/", "\u00a0")
_NATIONAL_TRUNK = "0"


def phone_forms(value: str, prefix: str = "") -> set[str]:
    """The forms a telephone number may be stored in, formatting removed (E.164-ish): ``+33 6 12 34 56 78`` ->
    ``+33612345678``, ``0033612345678``, ``33612345678`` and, with ``prefix`` +33, the national ``0612345678``;
    a national ``06 12 34 56 78`` with ``prefix`` +33 gives the same set. Nothing for too few digits (a request's
    stray "0" never matches every row with an empty-ish number)."""
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) < 6:
        return set()
    stripped = value.strip()
    if stripped.startswith("+"):
        international = digits
    elif digits.startswith("00"):
        international = digits[2:]
    elif digits.startswith(_NATIONAL_TRUNK) and prefix:
        international = prefix.lstrip("+") + digits[1:]
    else:
        return {digits}  # national without a known calling code: only as given
    forms = {f"+{international}", f"00{international}", international}
    code = prefix.lstrip("+")
    if code and international.startswith(code):
        forms.add(_NATIONAL_TRUNK + international[len(code):])
    return forms


def _digits_of(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The column with spaces, dashes, dots, brackets and slashes removed, in SQL (``replace`` exists in
    PostgreSQL, MySQL/MariaDB and SQLite): compared with :func:`phone_forms`."""
    expression: ColumnElement[Any] = cast(column, String)
    for noise in _PHONE_NOISE:
        expression = func.replace(expression, noise, "")
    return expression


def engine_url(url: str) -> str:
    """The URL with the driver this project ships: psycopg for PostgreSQL, PyMySQL for MySQL/MariaDB."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    return parsed.render_as_string(hide_password=False)


class SqlConnector:
    """One application database, reached through its map."""

    def __init__(
        self,
        name: str = "app",
        *,
        url: str,
        sql_map: SqlMap,
        hash_key: str = "",
        kinds: frozenset[RequestKind] = frozenset(RequestKind),
        batch_size: int = 500,
        marketing: ConsentAction | None = None,
        restriction: str | None = None,
    ) -> None:
        if sql_map.uses_hash and not hash_key:
            raise ValueError(f"connector {name}: a column is hashed but no hash key was given")
        self.name = name
        self.kinds = frozenset(kinds)
        self.map = sql_map
        self._hash_key = hash_key
        self._batch = batch_size
        self.marketing = marketing  # [connectors.marketing]: how an objection to direct marketing stops it here
        try:
            target = engine_url(url)
            connect_args = {"check_same_thread": False} if target.startswith("sqlite") else {}
            self._engine: Engine = create_engine(target, pool_pre_ping=True, connect_args=connect_args)
        except (ArgumentError, NoSuchModuleError, ValueError):
            raise ValueError(f"connector {name}: the database URL is not a SQLAlchemy URL of a known database"
                             ) from None
        self._tables: dict[str, TableClause] = {
            t.name: table(t.name, *(column(c.name) for c in t.columns)) for t in sql_map.tables}
        # Art. 18: ``table.column`` of a nullable timestamp the application reads as "restricted since" (NULL: not
        # restricted); set on every row of the subject in that table, cleared when the restriction is lifted.
        self._restriction: tuple[Table, TableClause, str] | None = None
        if restriction:
            table_name, _, column_name = restriction.partition(".")
            if table_name not in self._tables or not column_name:
                raise ValueError(f"connector {name}: restriction must be table.column of a mapped table")
            mapped = self.map.table(table_name)
            if mapped.column(column_name) is not None:
                raise ValueError(f"connector {name}: the restriction column {restriction} is mapped as data; "
                                 "leave it out of the table's columns")
            # The same clause as the table's own (its subject filter refers to it), with the mark's column.
            self._tables[table_name] = table(table_name, *(column(c.name) for c in mapped.columns),
                                             column(column_name, DateTime()))
            self._restriction = (mapped, self._tables[table_name], column_name)

    # --- database access --------------------------------------------------------------------------------

    async def _db(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking database work in a thread; its errors become connector errors without their text."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ConnectorError:
            raise
        except IntegrityError:
            raise PermanentConnectorError(f"{self.name}: the database refused to {what} (an integrity constraint: "
                                          "a foreign key from a table the map does not cover?)") from None
        except OperationalError as err:
            if getattr(err, "connection_invalidated", False) or _transient(err):
                raise TransientConnectorError(f"{self.name}: database unavailable while trying to {what}") from None
            raise PermanentConnectorError(f"{self.name}: the database refused to {what} "
                                          f"({type(err.orig).__name__}); check the map against the schema "
                                          "(dsr connectors check)") from None
        except DBAPIError as err:
            if err.connection_invalidated:
                raise TransientConnectorError(f"{self.name}: connection lost while trying to {what}") from None
            raise PermanentConnectorError(f"{self.name}: the database refused to {what} "
                                          f"({type(err.orig).__name__}); check the map against the schema "
                                          "(dsr connectors check)") from None

    def _t(self, t: Table) -> TableClause:
        return self._tables[t.name]

    def _where(self, t: Table, subject: Subject) -> ColumnElement[bool]:
        """The rows of ``t`` that belong to the subject: the subject's row by email (and by the customer id and
        the telephone number, when the map names their columns and the request carries them), the others along
        the links."""
        clause = self._t(t)
        if t.link is None:
            found = [func.lower(clause.c[self.map.email_column]) == subject.email.strip().lower()]
            if self.map.customer_id_column and subject.customer_id.strip():
                found.append(cast(clause.c[self.map.customer_id_column], String) == subject.customer_id.strip())
            forms = phone_forms(subject.phone, self.map.phone_prefix) if self.map.phone_column else set()
            if forms:
                found.append(_digits_of(clause.c[self.map.phone_column]).in_(sorted(forms)))
            return or_(*found) if len(found) > 1 else found[0]
        other = self.map.table(t.link.other)
        through = select(*(self._t(other).c[c] for c in t.link.other_columns)).where(self._where(other, subject))
        if t.link.composite:  # a row value: (a, b) IN (SELECT c, d ...), on PostgreSQL, MariaDB and SQLite
            return tuple_(*(clause.c[c] for c in t.link.columns)).in_(through)
        return clause.c[t.link.columns[0]].in_(through)

    def _select(self, t: Table, subject: Subject, columns: Sequence[str]) -> Select[Any]:
        clause = self._t(t)
        return select(*(clause.c[c] for c in columns)).where(self._where(t, subject)).order_by(clause.c[t.key])

    # --- locate -----------------------------------------------------------------------------------------

    async def locate(self, subject: Subject) -> list[Located]:
        def run() -> list[Located]:
            found: list[Located] = []
            with self._engine.connect() as conn:
                for t in self.map.tables:
                    if t.personal:
                        found.extend(Located(t.name, str(row[0]))
                                     for row in conn.execute(self._select(t, subject, [t.key])))
            return found

        return await self._db("find the subject's rows", run)

    # --- export (Art. 15, 20) ---------------------------------------------------------------------------

    async def _stream(self, stmt: Select[Any]) -> AsyncGenerator[Sequence[Any]]:
        """Batches of rows from a server-side cursor: at most ``batch_size`` rows are held at a time."""
        conn = await self._db("connect", self._engine.connect)
        try:
            result = await self._db("read rows", lambda: conn.execution_options(
                stream_results=True, yield_per=self._batch).execute(stmt))
            while True:
                rows = await self._db("read rows", result.fetchmany, self._batch)
                if not rows:
                    break
                yield rows
        finally:
            await asyncio.to_thread(conn.close)

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        tables = [t for t in self.map.tables if t.provided or not job.provided_only]
        writers: dict[str, DatasetWriter] = {}
        try:
            writers = await open_datasets(job.sink, self.name, [t.name for t in tables],
                                          {t.name for t in tables if t.provided})
            await self._export(job, tables, writers)
            total = sum(w.count for w in writers.values())
            held = sorted({c.category for t in tables for c in t.personal if c.category})
            return ConnectorOutcome(
                connector=self.name, found=total, counts={"exported": total},
                datasets=[DatasetSummary(t.name, writers[t.name].count, provided=bool(t.provided)) for t in tables],
                notes=[f"categories of data: {', '.join(held)}"] if held else [])
        finally:
            await close_datasets(writers)

    @staticmethod
    async def _resumable(resume: Mapping[str, Any] | None, writers: dict[str, DatasetWriter]) -> dict[str, Any] | None:
        if not resume or resume.get("v") != CURSOR_VERSION:
            return None
        try:
            written = {name: int(resume["written"][name]) for name in writers}
            cursor = {"v": CURSOR_VERSION, "table": int(resume["table"]), "last": resume["last"],
                      "written": written}
        except (KeyError, TypeError, ValueError):
            return None
        if cursor["last"] is not None and not isinstance(cursor["last"], int | str):
            return None
        if not all(0 <= written[name] <= w.count for name, w in writers.items()):
            return None  # the store lost records since the checkpoint: start again
        await truncate_datasets(writers, written)  # drop what was written after the checkpoint
        return cursor

    @staticmethod
    async def _checkpoint(job: ExportJob, cursor: dict[str, Any], writers: dict[str, DatasetWriter]) -> None:
        for w in writers.values():
            await w.flush()  # records durable before the cursor that counts them is heartbeated
        cursor["written"] = {name: w.count for name, w in writers.items()}
        job.checkpoint(dict(cursor, written=dict(cursor["written"])))

    async def _export(self, job: ExportJob, tables: list[Table], writers: dict[str, DatasetWriter]) -> None:
        cursor = await self._resumable(job.resume, writers)
        if cursor is None:
            await truncate_datasets(writers, {})  # records of an attempt that died before its first checkpoint
            cursor = {"v": CURSOR_VERSION, "table": 0, "last": None, "written": {}}
        for index in range(cursor["table"], len(tables)):
            t = tables[index]
            if index != cursor["table"]:
                cursor.update(table=index, last=None)
            columns = [c.name for c in t.columns if c.provided or not job.provided_only]
            key_at = None
            if t.key not in columns:  # the key orders and resumes the stream; it is not exported then
                key_at = len(columns)
                columns = [*columns, t.key]
            stmt = self._select(t, job.subject, columns)
            if cursor["last"] is not None:
                stmt = stmt.where(self._t(t).c[t.key] > cursor["last"])
            writer = writers[t.name]
            key_index = columns.index(t.key)
            # Closed as soon as the export stops (a failed checkpoint, a cancelled attempt), not whenever the event
            # loop finalizes the generator: its connection, with an unread server-side result, goes back at once.
            async with contextlib.aclosing(self._stream(stmt)) as batches:
                async for rows in batches:
                    for row in rows:
                        values = row[:key_at] if key_at is not None else row
                        writer.write({name: jsonable(value) for name, value in zip(columns, values, strict=False)})
                    last = rows[-1][key_index]
                    cursor["last"] = last if isinstance(last, int | str) else str(last)
                    await self._checkpoint(job, cursor, writers)
            cursor.update(table=index + 1, last=None)
            await self._checkpoint(job, cursor, writers)

    # --- erasure (Art. 17) ------------------------------------------------------------------------------

    def _read(self, t: Table, subject: Subject, keys: Iterable[str],
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(rows reached from the subject, rows with these keys), each with its key and the columns erasure reads."""
        names = list(dict.fromkeys([t.key, *(c.name for c in t.personal), *([t.date_column] if t.date_column
                                                                            else [])]))
        clause = self._t(t)
        wanted = list(keys)
        with self._engine.connect() as conn:
            reached = [dict(row._mapping) for row in conn.execute(self._select(t, subject, names))]
            by_key: list[Any] = []
            for start in range(0, len(wanted), self._batch):
                chunk = [_key_value(k) for k in wanted[start:start + self._batch]]
                by_key.extend(dict(row._mapping) for row in conn.execute(
                    select(*(clause.c[n] for n in names)).where(clause.c[t.key].in_(chunk))))
        return reached, by_key

    def _decide(self, t: Table, row: Mapping[str, Any], today: date) -> tuple[RecordReport, date | None, str | None]:
        """The row's line, its date, and what to do: "delete", "update" or None (nothing to write)."""
        record_id = str(row[t.key])
        created = _as_date(row.get(t.date_column)) if t.date_column else None
        kept = [c for c in t.personal if c.strategy == "keep"]
        in_force = False
        until = None
        if kept and t.retention is not None:
            until = t.retention.until(created) if created else None
            in_force = until is None or until >= today  # no date: kept (the safe side), said in the line
        strategies = {c.name: (c.strategy if c.strategy != "keep" else (None if in_force else t.then))
                      for c in t.personal}
        expired = bool(kept) and not in_force
        if "delete" in strategies.values():
            return (RecordReport(t.name, record_id, RecordAction.DELETED, note=RETENTION_OVER if expired else ""),
                    created, "delete")
        changing = [n for n, s in strategies.items() if s in MODIFYING and not is_erased(s, row.get(n))]
        modifying = any(s in MODIFYING for s in strategies.values())
        action = "update" if changing else None
        if in_force and t.retention is not None:
            line = RecordReport(t.name, record_id, RecordAction.ANONYMISED if modifying else RecordAction.RETAINED,
                                legal_basis=t.retention.legal_basis, retained_until=until,
                                fields=sorted(c.name for c in kept),
                                note="" if created else "kept: the row has no date to count the period from")
            return line, created, action
        note = RETENTION_OVER if expired else ("" if changing else ALREADY_ANONYMISED)
        return RecordReport(t.name, record_id, RecordAction.ANONYMISED, note=note), created, action

    def _plan(self, subject: Subject, journal: JournalState, today: date,
              ) -> tuple[list[tuple[Table, JournalEntry, str | None, bool]], list[JournalEntry]]:
        """Per row still to settle: (table, entry, action, intended before); and the intents whose row is gone."""
        plan: list[tuple[Table, JournalEntry, str | None, bool]] = []
        gone: list[JournalEntry] = []
        for t in self.map.erase_order:
            if not t.personal:
                continue
            pending = {e.line.record_id: e for e in journal.pending_in(t.name)}
            reached, again = self._read(t, subject, pending)
            rows = {str(r[t.key]): r for r in (*reached, *again)}
            for record_id, row in rows.items():
                if journal.is_done(t.name, record_id):
                    continue
                line, created, action = self._decide(t, row, today)
                intent = pending.get(record_id)
                if intent is not None:
                    # Asked by an earlier attempt: if nothing is left to write, that write took effect.
                    entry = intent if action is None else JournalEntry(line, created=created)
                    plan.append((t, entry, action, True))
                else:
                    plan.append((t, JournalEntry(line, created=created), action, False))
            for record_id, intent in pending.items():
                if record_id not in rows:
                    # An earlier attempt of this request set out to erase this row and it is gone now: erased by
                    # this request (deleted by that attempt, or with the row it belonged to), not "gone before
                    # the request reached it", which is only for rows this request never touched.
                    gone.append(intent if intent.line.action == RecordAction.DELETED else JournalEntry(
                        RecordReport(t.name, record_id, RecordAction.DELETED,
                                     note="gone after an earlier attempt of this request erased it"),
                        created=intent.created))
        return plan, gone

    def _apply(self, t: Table, batch: list[tuple[JournalEntry, str]]) -> None:
        """One transaction: the batch's deletions and updates, values recomputed from the rows as locked."""
        clause = self._t(t)
        key = clause.c[t.key]
        deleting = [_key_value(e.line.record_id) for e, action in batch if action == "delete"]
        updating = [_key_value(e.line.record_id) for e, action in batch if action == "update"]
        today = date.today()
        with self._engine.begin() as conn:
            if deleting:
                conn.execute(delete(clause).where(key.in_(deleting)))
            if updating:
                names = [t.key, *(c.name for c in t.personal), *([t.date_column] if t.date_column else [])]
                rows = conn.execute(select(*(clause.c[n] for n in dict.fromkeys(names))).where(key.in_(updating))
                                    .with_for_update()).mappings().all()
                groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for row in rows:
                    values = self._erased(t, dict(row), today)
                    if values:
                        groups.setdefault(tuple(sorted(values)), []).append({"_key": row[t.key], **values})
                for names_changed, params in groups.items():
                    stmt = update(clause).where(key == bindparam("_key")).values(
                        {n: bindparam(n) for n in names_changed})
                    conn.execute(stmt, params)

    def _erased(self, t: Table, row: Mapping[str, Any], today: date) -> dict[str, Any]:
        """The new values of the row's columns that an erasure changes (nothing when already erased)."""
        created = _as_date(row.get(t.date_column)) if t.date_column else None
        in_force = True
        if t.retention is not None and created is not None:
            in_force = t.retention.until(created) >= today
        values: dict[str, Any] = {}
        for c in t.personal:
            strategy = c.strategy if c.strategy != "keep" else (None if in_force else t.then)
            if strategy in MODIFYING and not is_erased(strategy, row[c.name]):
                values[c.name] = _erased_value(strategy, row[c.name], self._hash_key)
        return values

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        journal = await job.journal.state()
        today = date.today()
        plan, gone = await self._db("find the subject's rows", self._plan, job.subject, journal, today)
        # Before the first write, every row to change is an intent (so a retry finds rows whose parent is gone by
        # then) and every row to leave as it is (kept, already anonymised) is recorded.
        settled = [*gone, *(e for _, e, action, before in plan if action is None)]
        await job.journal.record(settled)
        await job.journal.intend(e for _, e, action, before in plan if action is not None and not before)
        for t in self.map.erase_order:
            todo = [(e, action) for table_, e, action, _ in plan if table_ is t and action is not None]
            for start in range(0, len(todo), self._batch):
                batch = todo[start:start + self._batch]
                await self._db(f"erase rows of {t.name}", self._apply, t, batch)
                await job.journal.record(e for e, _ in batch)
        final = await job.journal.state()
        order = {t.name: i for i, t in enumerate(self.map.tables)}
        entries = sorted(final.done.values(), key=lambda e: (order.get(e.line.dataset, len(order)),
                                                             _key_order(e.line.record_id)))
        report = [e.line for e in entries]
        notes: list[str] = []
        if not report:
            report.append(RecordReport(self.map.subject_table, "", RecordAction.ALREADY_GONE,
                                       note="no row with this email (already erased)"))
        kept = [line for line in report if line.legal_basis]
        if kept:
            bases = sorted({line.legal_basis for line in kept})
            notes.append(f"{len(kept)} row(s) kept under a legal obligation ({'; '.join(bases)})")
        return ConnectorOutcome(connector=self.name, found=len(entries), counts=tally(report), notes=notes,
                                report=report)

    # --- rectification (Art. 16) ------------------------------------------------------------------------

    def _rectify(self, subject: Subject, changes: Mapping[str, str], journal: JournalState,
                 intend: Callable[[list[JournalEntry]], None], record: Callable[[list[JournalEntry]], None],
                 ) -> list[RecordReport]:
        targets: dict[str, dict[str, tuple[str, str]]] = {}  # table -> column -> (canonical, value)
        for canonical, value in changes.items():
            for table_name, column_name in self.map.rectify.get(canonical, ()):
                targets.setdefault(table_name, {})[column_name] = (canonical, value)
        anchor = self.map.table(self.map.subject_table)
        with self._engine.connect() as conn:
            found = conn.execute(self._select(anchor, subject, [anchor.key])).first()
        if found is None and changes.get("email"):
            subject = dataclasses.replace(subject, email=changes["email"])  # an earlier attempt changed the address
        report: list[RecordReport] = []
        for t in self.map.erase_order:  # the subject's row last: it is how the others are found
            if t.name not in targets:
                continue
            columns = targets[t.name]
            clause = self._t(t)
            with self._engine.connect() as conn:
                rows = conn.execute(self._select(t, subject, [t.key, *columns])).mappings().all()
            for row in rows:
                record_id = str(row[t.key])
                if journal.is_done(t.name, record_id):
                    report.append(journal.done[(t.name, record_id)].line)
                    continue
                differ = {name: value for name, (_, value) in columns.items()
                          if row[name] is None or str(row[name]) != value}
                intent = journal.pending.get((t.name, record_id))
                if differ:
                    fields = sorted({columns[n][0] for n in differ} | set(intent.line.fields if intent else ()))
                    entry = JournalEntry(RecordReport(t.name, record_id, RecordAction.CHANGED, fields=fields))
                    intend([entry])
                    with self._engine.begin() as conn:
                        conn.execute(update(clause).where(clause.c[t.key] == row[t.key]).values(differ))
                    record([entry])
                    report.append(entry.line)
                elif intent is not None:  # the earlier attempt's write took effect, its record was lost
                    record([intent])
                    report.append(intent.line)
                else:
                    report.append(RecordReport(t.name, record_id, RecordAction.UNCHANGED,
                                               fields=sorted(c for c, _ in columns.values()),
                                               note="already up to date"))
        return report

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        journal = await job.journal.state()
        loop = asyncio.get_running_loop()

        def sync(step: Callable[[list[JournalEntry]], Any]) -> Callable[[list[JournalEntry]], None]:
            # The journal is async; the rectification runs in a thread: each write waits for its durable record.
            return lambda entries: asyncio.run_coroutine_threadsafe(step(entries), loop).result()

        report = await self._db("rectify the subject's rows", self._rectify, job.subject, job.changes,
                                journal, sync(job.journal.intend), sync(job.journal.record))
        notes = []
        ignored = sorted(set(job.changes) - set(self.map.rectify))
        if ignored:
            notes.append(f"ignored field(s) this database does not hold: {', '.join(ignored)}")
        if not report:
            notes.append("no row with this email: nothing to rectify")
        return ConnectorOutcome(connector=self.name, found=len(report), counts=tally(report), notes=notes,
                                report=report)

    # --- objection to direct marketing, withdrawal of consent ----------------------------------------------

    async def stop_marketing(self, job: OperationJob) -> ConnectorOutcome:
        """Art. 21(3): the map's ``[connectors.marketing]`` action (rows deleted, or given values), verified by
        reading again; without one, a residual line for the operator, as for a system with no opt-out."""
        if self.marketing is None:
            return no_marketing_control(self.name)
        line = await self._db("stop marketing", self._switch_off, self.marketing, job.subject.email, "marketing")
        return ConnectorOutcome(connector=self.name, found=1, report=[line], counts=tally([line]))

    async def withdraw_consent(self, job: OperationJob) -> ConnectorOutcome:
        """Art. 7(3): each purpose's table action from the controller profile, verified by reading again."""
        report = [await self._db("withdraw consent", self._switch_off, action, job.subject.email, CONSENT)
                  for action in job.consent]
        return ConnectorOutcome(connector=self.name, found=len(report), report=report, counts=tally(report))

    def _switch_off(self, action: ConsentAction, email: str, dataset: str) -> RecordReport:
        """Delete the rows of ``action.table`` holding the address (any case), or write ``action.set_values`` into
        them, in one transaction; then count what still holds the address un-switched: anything left is an
        error, never a success. No row, or rows already switched: ``unchanged``."""
        values = self._typed_values(action, dataset) if action.set_values else {}
        clause = table(action.table, column(action.email_column), *(column(name) for name in values))
        mine = func.lower(clause.c[action.email_column]) == email.strip().lower()
        pending = mine if not values else mine & ~and_(*(clause.c[n] == v for n, v in values.items()))
        what = "deleted" if not values else "set " + ", ".join(f"{n} = {action.set_values[n]}" for n in values)
        with self._engine.begin() as conn:
            count = conn.execute(select(func.count()).select_from(clause).where(pending)).scalar_one()
            if count:
                conn.execute(delete(clause).where(mine) if not values else update(clause).where(mine).values(values))
        with self._engine.connect() as conn:
            left = conn.execute(select(func.count()).select_from(clause).where(pending)).scalar_one()
        if left:
            raise PermanentConnectorError(f"{self.name}: {left} row(s) of {action.table} still hold the address "
                                          f"after the {dataset} action")
        record = action.purpose or dataset
        if not count:
            return RecordReport(dataset, record, RecordAction.UNCHANGED,
                                note=f"{action.table}: no row to change (already done, or never held)")
        return RecordReport(dataset, record, RecordAction.WITHDRAWN if dataset == CONSENT
                            else RecordAction.UNSUBSCRIBED, note=f"{action.table}: {count} row(s) {what}")

    def _typed_values(self, action: ConsentAction, dataset: str) -> dict[str, Any]:
        """The map's ``set`` values as the columns' own types hold them, read from the database's schema
        (SQLite, PostgreSQL, MariaDB alike): ``false`` is a boolean in a BOOLEAN column, 0 in MariaDB's TINYINT(1),
        and the text "false" in a VARCHAR; ``007`` stays "007" in a text column. A missing table or column, or a
        value the column cannot hold, is an error for the operator (the profile or the map is wrong)."""
        with self._engine.connect() as conn:
            inspector = inspect(conn)
            if not inspector.has_table(action.table):
                raise PermanentConnectorError(f"{self.name}: the {dataset} action's table {action.table} does not "
                                              "exist")
            live = {c["name"]: c["type"] for c in inspector.get_columns(action.table)}
        missing = sorted(set(action.set_values) - set(live))
        if missing:
            raise PermanentConnectorError(f"{self.name}: the {dataset} action sets {', '.join(missing)}, which "
                                          f"{action.table} does not have")
        values: dict[str, Any] = {}
        for name, raw in action.set_values.items():
            try:
                values[name] = _column_value(raw, live[name])
            except ValueError:
                raise PermanentConnectorError(
                    f"{self.name}: the {dataset} action sets {action.table}.{name} = {raw!r}, which its type "
                    f"({live[name]}) cannot hold") from None
        return values

    # --- restriction (Art. 18) --------------------------------------------------------------------------

    def _mark(self, subject: Subject, restrict: bool) -> list[RecordReport]:
        assert self._restriction is not None
        t, clause, name = self._restriction
        key = clause.c[t.key]
        subject_rows = self._where(t, subject)
        with self._engine.begin() as conn:
            rows = conn.execute(select(key, clause.c[name]).where(subject_rows).order_by(key)).all()
            to_change = [row[0] for row in rows if (row[1] is None) == restrict]
            if to_change:
                # Naive UTC: every database takes it (MariaDB's DATETIME has no zone).
                value = datetime.now(UTC).replace(tzinfo=None, microsecond=0) if restrict else None
                conn.execute(update(clause).where(key.in_(to_change)).values({name: value}))
        with self._engine.connect() as conn:  # verified by reading again, after the commit
            after = {str(row[0]): row[1] for row in
                     conn.execute(select(key, clause.c[name]).where(subject_rows).order_by(key)).all()}
        wrong = [rid for rid, value in after.items() if (value is None) == restrict]
        if wrong:
            raise PermanentConnectorError(f"{self.name}: {len(wrong)} row(s) of {t.name} kept their restriction "
                                          f"mark as it was ({name} {'still NULL' if restrict else 'still set'})")
        changed = {str(v) for v in to_change}
        return [RecordReport(t.name, rid, (RecordAction.RESTRICTED if restrict else RecordAction.LIFTED)
                             if rid in changed else RecordAction.UNCHANGED, fields=[name],
                             note="" if rid in changed else
                             ("already marked restricted" if restrict else "not marked restricted"))
                for rid in after]

    async def _restriction_outcome(self, job: OperationJob, restrict: bool) -> ConnectorOutcome:
        if self._restriction is None:
            return no_restriction_control(self.name, lift=not restrict)
        report = await self._db("mark the subject's rows restricted" if restrict else "lift the restriction mark",
                                self._mark, job.subject, restrict)
        notes = [] if report else ["no row with this email"]
        return ConnectorOutcome(connector=self.name, found=len(report), counts=tally(report), notes=notes,
                                report=report)

    async def restrict(self, job: OperationJob) -> ConnectorOutcome:
        """Set the map's restriction column on the subject's rows (verified by re-query); without one, a residual
        line for the operator."""
        return await self._restriction_outcome(job, True)

    async def lift_restriction(self, job: OperationJob) -> ConnectorOutcome:
        return await self._restriction_outcome(job, False)

    # --- the rest ---------------------------------------------------------------------------------------

    def _check(self) -> str:
        inspector = inspect(self._engine)
        problems: list[str] = []
        mapped = 0
        for t in self.map.tables:
            if not inspector.has_table(t.name):
                problems.append(f"table {t.name} does not exist")
                continue
            live = {c["name"]: c for c in inspector.get_columns(t.name)}
            for c in t.columns:
                if c.name not in live:
                    problems.append(f"column {t.name}.{c.name} does not exist")
                    continue
                mapped += 1
                strategies = {c.strategy, t.then if c.strategy == "keep" else None}
                kind = live[c.name]["type"]
                python_type = _python_type(kind)
                if strategies & {"mask", "hash"} and python_type is not str:
                    problems.append(f"column {t.name}.{c.name} is masked or hashed but does not hold text")
                length = getattr(kind, "length", None)
                if "hash" in strategies and length is not None and length < HASH_LENGTH:
                    problems.append(f"column {t.name}.{c.name} is hashed but holds {length} characters "
                                    f"(a hash needs {HASH_LENGTH})")
                if strategies & {"null"} and not live[c.name].get("nullable", True):
                    problems.append(f"column {t.name}.{c.name} is set NULL by an erasure but is NOT NULL")
            restriction = {self._restriction[2]} if self._restriction and self._restriction[0] is t else set()
            if restriction - set(live):
                problems.append(f"column {t.name}.{next(iter(restriction))} (the restriction mark) does not exist")
            unmapped = sorted(set(live) - {c.name for c in t.columns} - restriction)
            if unmapped:
                problems.append(f"table {t.name}: column(s) not in the map: {', '.join(unmapped)} (map each one; "
                                "personal = false if it is not personal)")
        if problems:
            raise PermanentConnectorError(f"{self.name}: the map does not match the database: "
                                          + "; ".join(problems[:10])
                                          + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
        return f"connected ({self._engine.dialect.name}), {len(self.map.tables)} tables and {mapped} columns mapped"

    async def check(self) -> str:
        return await self._db("read the schema", self._check)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.dispose)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _column_value(raw: str, kind: Any) -> Any:
    """``raw`` (a ``set`` value of the map) as a column of type ``kind`` (reflected) holds it; ValueError when it
    cannot. Text, and types SQLAlchemy cannot map to Python (a SQLite column declared without a type), take the
    value as written."""
    python_type = _python_type(kind)
    text = raw.strip()
    if python_type is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(raw)
    if python_type is int:  # MariaDB and MySQL hold BOOLEAN as TINYINT(1)
        if text.lower() in ("true", "false", "yes", "no"):
            return int(text.lower() in _TRUE)
        return int(text)
    if python_type is float:
        return float(text)
    if python_type is Decimal:
        try:
            return Decimal(text)
        except ArithmeticError:
            raise ValueError(raw) from None
    if python_type is datetime:
        return datetime.fromisoformat(text)
    if python_type is date:
        return date.fromisoformat(text)
    return raw


def _python_type(kind: Any) -> type | None:
    try:
        return kind.python_type
    except NotImplementedError:
        return None


def _transient(err: OperationalError) -> bool:
    """Lost or refused connections, timeouts, deadlocks: worth retrying; anything else (no such table) is not."""
    orig = err.orig
    code = getattr(orig, "sqlstate", None) or ""
    if code.startswith(("08", "40", "57P", "53")):
        return True  # PostgreSQL: connection exception, rollback (serialization, deadlock), shutdown, resources
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # MySQL/MariaDB error numbers
        return args[0] in {1205, 1213, 2002, 2003, 2006, 2013, 1040, 1053}
    text = type(orig).__name__
    return text in ("OperationalError",) and "locked" in str(orig).lower()  # SQLite: database is locked


def _key_value(record_id: str) -> Any:
    return int(record_id) if record_id.lstrip("-").isdigit() else record_id


__all__ = ["SqlConnector", "engine_url", "is_erased", "jsonable", "keyed_hash", "mask", "phone_forms"]

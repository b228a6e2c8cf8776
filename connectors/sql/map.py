"""The declarative map of an application database, as written in ``dsr.toml`` (``type = "sql"``).

It says where the subject is (a table and its email column), how every other table reaches that row (one
``link`` per table towards a table already linked, so paths of several hops, in both directions), and per
column: personal or not, its Art. 15 category, whether the subject provided it (Art. 20), and what an erasure
does to it. Everything here is checked when ``dsr.toml`` is loaded, without connecting: a table with no path
to the subject or a personal column without an erasure strategy stops ``dsr up``, ``dsr worker`` and
``dsr config check`` with one line naming the key. ``check()`` of the connector then compares the map with
the live schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import RECORD_DATE, RetentionRule, month_day
from dsr.domain.model import CANONICAL_FIELDS
from dsr.errors import ConfigurationError

Strategy = Literal["delete", "null", "mask", "hash", "keep"]
"""What an erasure does to a personal column: delete the whole row, set it NULL, mask it (first character
kept, the rest starred; an email keeps its top-level domain), replace it by a keyed hash (HMAC-SHA256 of the
trimmed, case-folded value, 64 hex digits), or keep it under the table's retention rule."""

MODIFYING: frozenset[str] = frozenset({"null", "mask", "hash"})
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"
_IDENT = re.compile(IDENTIFIER)
_NAME = r"[A-Za-z_][A-Za-z0-9_$]*"
_LINK = re.compile(rf"^\s*({_NAME})\s*=\s*({_NAME})\.({_NAME})\s*$")
_COLUMNS = rf"\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\)"
_COMPOSITE_LINK = re.compile(rf"^\s*({_COLUMNS})\s*=\s*({_NAME})\s*\.\s*({_COLUMNS})\s*$")
_TARGET = re.compile(r"^([A-Za-z_][A-Za-z0-9_$]*)\.([A-Za-z_][A-Za-z0-9_$]*)$")


class SqlMapError(ConfigurationError, ValueError):
    """A map that cannot work; ``key`` is where in the connector's entry (``tables[2].link``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class ColumnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    personal: bool = Field(default=True, description="Whether the column holds personal data.")
    category: str = Field(default="", max_length=60,
                          description="Art. 15(1)(b) category: identity, contact, content, connection data...")
    provided: bool = Field(default=False, description="Provided by the subject (Art. 20 portability).")
    erase: Strategy | None = Field(default=None, description="Erasure strategy; default: the table's.")


class TableRetentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    legal_basis: str = Field(min_length=1, description="Why the kept columns are kept (told to the subject).")
    years: int = Field(default=10, ge=1, le=100)
    date_column: str = Field(pattern=IDENTIFIER, description="The row's date the duration runs from.")
    counted_from: Literal["record", "financial_year_end"] = "record"
    financial_year_end: str = "12-31"
    then: Literal["delete", "null", "mask", "hash"] = Field(
        default="delete", description="What becomes of the kept columns once the duration is over.")

    @field_validator("financial_year_end")
    @classmethod
    def _a_day_of_the_year(cls, value: str) -> str:
        month_day(value)
        return value


class TableConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=IDENTIFIER)
    key: str = Field(default="id", pattern=IDENTIFIER, description="The single-column primary key.")
    link: str | None = Field(default=None, description="'this_column = other_table.column' (or over several "
                                                       "columns, '(a, b) = other_table.(c, d)'): the hop "
                                                       "towards the subject's table.")
    erase: Strategy | None = Field(default=None, description="Default strategy of its personal columns.")
    retention: TableRetentionConfig | None = None
    columns: dict[str, ColumnConfig] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnConfig]) -> dict[str, ColumnConfig]:
        for name in value:
            if not _IDENT.match(name):
                raise ValueError(f"{name!r} is not a column name")
        return value


class SubjectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str = Field(pattern=IDENTIFIER)
    email: str = Field(pattern=IDENTIFIER, description="The email column, compared case-insensitively.")
    customer_id: str | None = Field(default=None, pattern=IDENTIFIER,
                                    description="A column holding the customer id a request may carry (compared "
                                                "as text, exactly).")
    phone: str | None = Field(default=None, pattern=IDENTIFIER,
                              description="A column holding a telephone number, compared by its digits.")
    phone_prefix: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{0,2}$",
                                     description="The calling code of national numbers (0…) in this database and "
                                                 "in requests, e.g. +33.")


def _parse_link(text: str, where: str) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """(columns, other table, its columns) of ``"a = t.b"`` or ``"(a, b) = t.(c, d)"``."""
    match = _LINK.match(text)
    if match:
        return (match[1],), match[2], (match[3],)
    match = _COMPOSITE_LINK.match(text)
    if not match:
        raise SqlMapError(f"{where}.link", "expected \"column = other_table.column\" (or \"(a, b) = "
                                           "other_table.(c, d)\" over several columns)")
    columns = tuple(c.strip() for c in match[1].strip("()").split(","))
    other_columns = tuple(c.strip() for c in match[3].strip("()").split(","))
    if len(columns) != len(other_columns):
        raise SqlMapError(f"{where}.link", f"{len(columns)} column(s) on the left, {len(other_columns)} on the "
                                           "right: a composite link pairs them one to one")
    if len(set(columns)) != len(columns) or len(set(other_columns)) != len(other_columns):
        raise SqlMapError(f"{where}.link", "a column is named twice in the link")
    return columns, match[2], other_columns


# --- the map, resolved --------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    personal: bool
    category: str
    provided: bool
    strategy: str | None  # None for a column that is not personal


@dataclass(frozen=True)
class Link:
    """``table.columns = other.other_columns`` (one column each, or a composite key: ``(org_id, user_id) =
    memberships.(org_id, user_id)``, compared as a row value); ``child`` is True when this table holds the
    reference."""

    columns: tuple[str, ...]
    other: str
    other_columns: tuple[str, ...]
    child: bool

    @property
    def composite(self) -> bool:
        return len(self.columns) > 1


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    columns: tuple[Column, ...]
    link: Link | None  # None for the subject's table
    retention: RetentionRule | None = None
    date_column: str = ""
    then: str = "delete"
    depth: int = 0  # hops from the subject's table

    @property
    def personal(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.personal)

    @property
    def provided(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.provided)

    @property
    def always_deleted(self) -> bool:
        """Every row of this table is deleted by an erasure."""
        return any(c.strategy == "delete" for c in self.personal)

    @property
    def deletes(self) -> bool:
        """Rows of this table may be deleted (a column says so, or kept columns once their time is over)."""
        return any(c.strategy == "delete" for c in self.personal) or (
            any(c.strategy == "keep" for c in self.personal) and self.then == "delete")

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class SqlMap:
    subject_table: str
    email_column: str
    tables: tuple[Table, ...]  # in path order: the subject's table first, each after the one it links to
    # canonical field -> the (table, column) pairs holding it (an address may sit in several tables)
    rectify: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    customer_id_column: str = ""  # other identifiers of the subject's row, when the request carries them
    phone_column: str = ""
    phone_prefix: str = ""

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    @property
    def erase_order(self) -> tuple[Table, ...]:
        """Deepest first, the subject's table last: a row is changed only after every row reached through it,
        so a retry still finds, through the subject's row, everything not yet done (children before parents)."""
        return tuple(sorted(self.tables, key=lambda t: -t.depth))

    @property
    def uses_hash(self) -> bool:
        return any(c.strategy == "hash" for t in self.tables for c in t.personal) or any(
            t.then == "hash" and any(c.strategy == "keep" for c in t.personal) for t in self.tables)


def resolve(subject: SubjectConfig, tables: list[TableConfig], rectify: Mapping[str, str | list[str]]) -> SqlMap:
    """The map checked and resolved; :class:`SqlMapError` names the first problem and where it is."""
    by_name: dict[str, int] = {}
    for index, table in enumerate(tables):
        if table.name in by_name:
            raise SqlMapError(f"tables[{index}].name", f"table {table.name!r} is mapped twice")
        by_name[table.name] = index
    if subject.table not in by_name:
        raise SqlMapError("subject.table", f"table {subject.table!r} is not mapped in tables")
    links: dict[str, Link] = {}
    for index, table in enumerate(tables):
        where = f"tables[{index}]"
        if table.name == subject.table:
            if table.link:
                raise SqlMapError(f"{where}.link", "the subject's table has no link: the others link to it")
            continue
        if not table.link:
            raise SqlMapError(f"{where}.link", f"table {table.name!r} has no path to the subject's table "
                                              f"{subject.table!r}: give link = \"column = other_table.column\"")
        own, target, target_columns = _parse_link(table.link, where)
        if target not in by_name:
            raise SqlMapError(f"{where}.link", f"table {target!r} is not mapped")
        if target == table.name:
            raise SqlMapError(f"{where}.link", "a table cannot link to itself")
        other_key = tables[by_name[target]].key
        # The side whose column is not its own key holds the reference (the child); a key-to-key link
        # (a one-to-one extension table) makes the linking table the child. A composite link is always the
        # child's: a table's key is one column.
        parent = own == (table.key,) and target_columns != (other_key,)
        links[table.name] = Link(own, target, target_columns, child=not parent)
    depth: dict[str, int] = {subject.table: 0}
    for index, table in enumerate(tables):  # follow each table's links to the subject: no cycle, no dead end
        seen = [table.name]
        current = table.name
        while current != subject.table:
            current = links[current].other
            if current in seen:
                raise SqlMapError(f"tables[{index}].link", f"table {table.name!r} has no path to the subject's "
                                                          f"table: its links go round ({' -> '.join(seen)})")
            seen.append(current)
        depth[table.name] = len(seen) - 1

    resolved: dict[str, Table] = {}
    for index, table in enumerate(tables):
        where = f"tables[{index}]"
        link = links.get(table.name)
        columns = []
        for name, spec in table.columns.items():
            if not spec.personal:
                if spec.erase is not None:
                    raise SqlMapError(f"{where}.columns.{name}.erase", "a column that is not personal is left as "
                                                                      "it is: remove erase, or personal = false")
                columns.append(Column(name, False, spec.category, spec.provided, None))
                continue
            strategy = spec.erase or table.erase
            if strategy is None:
                raise SqlMapError(f"{where}.columns.{name}", f"personal column {table.name}.{name} has no "
                                  "erasure strategy: give erase = delete | null | mask | hash | keep (or the "
                                  "table's erase)")
            if not spec.category:
                raise SqlMapError(f"{where}.columns.{name}.category", f"personal column {table.name}.{name} "
                                  "needs its Art. 15 category (identity, contact, content, connection data...)")
            columns.append(Column(name, True, spec.category, spec.provided, strategy))
        names = {c.name for c in columns}
        needed = {table.key} | (set(link.columns) if link else set())
        if table.name == subject.table:
            needed |= {subject.email} | {c for c in (subject.customer_id, subject.phone) if c}
        for name in sorted(needed - names):
            raise SqlMapError(f"{where}.columns", f"column {table.name}.{name} is used by the map but not mapped "
                                                  "(map it, personal = false if it is not personal)")
        strategies = {c.strategy for c in columns if c.personal}
        if "keep" in strategies and table.retention is None:
            raise SqlMapError(f"{where}.retention", f"table {table.name} keeps columns: give its retention "
                              "(legal_basis, years, date_column)")
        if "keep" in strategies and "delete" in strategies:
            raise SqlMapError(f"{where}.columns", f"table {table.name}: a row cannot be both deleted and kept")
        rule = None
        if table.retention is not None:
            r = table.retention
            if r.date_column not in names:
                raise SqlMapError(f"{where}.retention.date_column", f"column {table.name}.{r.date_column} is "
                                  "not mapped")
            rule = RetentionRule(table.name, r.legal_basis, r.years, r.counted_from, r.financial_year_end)
        key_column = next(c for c in columns if c.name == table.key)
        if key_column.personal and key_column.strategy in MODIFYING:
            raise SqlMapError(f"{where}.columns.{table.key}.erase", "the primary key identifies the row: it can "
                                                                    "only be kept or deleted with it")
        resolved[table.name] = Table(
            table.name, table.key, tuple(columns), link, rule,
            table.retention.date_column if table.retention else "", table.retention.then if table.retention
            else "delete", depth[table.name])

    for index, table in enumerate(tables):
        t = resolved[table.name]
        if t.link is None:
            continue
        other = resolved[t.link.other]
        if not t.link.child and t.deletes:
            raise SqlMapError(f"tables[{index}].erase", f"table {t.name} is reached through {other.name}, which "
                              "references its rows: they may be shared with other people and are never deleted "
                              "with one subject (use null, mask, hash or keep)")
        # A foreign key must be set NULL; a link by value (an email) may also be hashed or masked. A composite
        # one is undone by setting one of its columns NULL (a row value with a NULL matches nothing, and a
        # composite foreign key with a NULL column is not checked).
        if t.link.child and other.deletes and not t.always_deleted and not any(
                (c := t.column(name)) is not None and c.strategy in MODIFYING for name in t.link.columns):
            first = t.link.columns[0]
            raise SqlMapError(f"tables[{index}].columns.{first}", f"rows of {t.name} outlive the "
                              f"{other.name} rows they reference, which are deleted: give "
                              f"{t.name}.{first} erase = \"null\" (or delete {t.name}'s rows too)")

    targets: dict[str, tuple[tuple[str, str], ...]] = {}
    for canonical, given in rectify.items():
        if canonical not in CANONICAL_FIELDS:
            raise SqlMapError(f"rectify.{canonical}", f"not a field a rectification names; expected one of "
                                                      f"{', '.join(sorted(CANONICAL_FIELDS))}")
        found = []
        for target in [given] if isinstance(given, str) else given:
            match = _TARGET.match(target)
            if not match or match[1] not in resolved or resolved[match[1]].column(match[2]) is None:
                raise SqlMapError(f"rectify.{canonical}", "expected \"table.column\" of a mapped column (or a "
                                                          "list of them)")
            if match[2] == resolved[match[1]].key:
                raise SqlMapError(f"rectify.{canonical}", "a primary key is not rectified")
            found.append((match[1], match[2]))
        targets[canonical] = tuple(found)
    ordered = tuple(sorted(resolved.values(), key=lambda t: (t.depth, by_name[t.name])))
    if subject.phone_prefix and not subject.phone:
        raise SqlMapError("subject.phone_prefix", "goes with subject.phone (the column it is about)")
    return SqlMap(subject.table, subject.email, ordered, targets, subject.customer_id or "", subject.phone or "",
                  subject.phone_prefix or "")


__all__ = ["RECORD_DATE", "ColumnConfig", "SqlMap", "SqlMapError", "SubjectConfig", "Table", "TableConfig",
           "TableRetentionConfig", "resolve"]

"""A draft map of an application database, reflected from its schema, for a person to review
(``dsr connectors map sql --url …``).

What it guesses, and how (every guess a person must confirm carries a ``# REVIEW`` comment):

* **The subject's table**: among the tables with an email-like column, the one most referenced by foreign keys
  (a table named like users, customers, accounts… wins a tie).
* **Paths**: a breadth-first walk from the subject's table over foreign keys, in both directions. Tables that
  reference a reached table are the subject's own rows (``link = "user_id = users.id"``, children); a table a
  reached row references is shared with other people (``link = "id = memberships.organisation_id"``): it is
  exported with the subject's rows but never erased with them, and the walk does not go down from it into its
  other children (the projects of an organisation are not one member's). A table reached by no foreign key but
  holding an email-like column is linked by value (``link = "email = users.email"``). Tables reached by nothing
  are listed at the end as comments.
* **Columns**: named like email, name, phone, address, IP, birth date, content… → personal with a category;
  the key and other columns → ``personal = false``; a foreign key to the subject's table → personal (it says
  whose row it is).
* **The restriction mark** (Art. 18): a nullable timestamp of the subject's table named like ``restricted_at``
  becomes the entry's ``restriction`` (not a data column); without one, a commented line proposes adding it.
* **Strategies**, conservatively: the subject's own rows deleted; tables named like invoices, orders or payments
  kept ten years (accounting records, Code de commerce L123-22) with their personal columns kept and their link
  to the subject set NULL; tables named like logins or sessions holding an IP address kept one year (connection
  data, LCEN art. 6-II); by-value tables named like newsletter or suppression lists hashed (the hash stays as a
  suppression list); shared tables not personal.

The draft parses (``connectors.config.parse_config``) as written; ``dsr connectors check`` then compares it with
the live schema (a column set NULL that is NOT NULL, a hash in too short a column).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from connectors.sql.map import IDENTIFIER
from dsr.errors import ConfigurationError

__all__ = ["DraftError", "Reflected", "draft_map", "reflect", "render"]

_IDENT = re.compile(IDENTIFIER)
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


class DraftError(ConfigurationError, ValueError):
    """The database cannot be reflected, or has nothing to map; the message is one line, without the URL."""


# --- the schema, as reflected -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_name: str
    nullable: bool
    is_date: bool
    is_text: bool
    length: int | None


@dataclass(frozen=True)
class ForeignKey:
    table: str  # the referencing table
    columns: tuple[str, ...]
    other: str  # the referenced table
    other_columns: tuple[str, ...]


@dataclass
class TableInfo:
    name: str
    columns: list[ColumnInfo]
    key: tuple[str, ...]

    def column(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass
class Reflected:
    dialect: str
    tables: dict[str, TableInfo]
    foreign_keys: list[ForeignKey] = field(default_factory=list)


def _engine(url: str) -> Engine:
    from connectors.sql import engine_url

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DraftError("not a database URL (expected e.g. postgresql://user@host/db, mysql://…, "
                         "sqlite:///path)") from None
    if parsed.get_backend_name() not in ("postgresql", "mysql", "mariadb", "sqlite"):
        raise DraftError("not a URL of a database this engine reaches (PostgreSQL, MySQL/MariaDB, SQLite)")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise DraftError("a SQLite URL must name an existing database file (sqlite:///path/to/app.db)")
        if not Path(database).is_file():
            raise DraftError(f"no SQLite database file at {database}")
    try:
        return create_engine(engine_url(url))
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError):
        raise DraftError("not a URL of a database this engine reaches (PostgreSQL, MySQL/MariaDB, SQLite)") from None


def reflect(url: str) -> Reflected:
    """Tables, columns, primary keys and foreign keys of the database's default schema."""
    engine = _engine(url)
    try:
        inspector = inspect(engine)
        tables: dict[str, TableInfo] = {}
        foreign_keys: list[ForeignKey] = []
        for name in sorted(inspector.get_table_names()):
            columns = []
            for c in inspector.get_columns(name):
                kind = c["type"]
                try:
                    python_type: Any = kind.python_type
                except NotImplementedError:
                    python_type = None
                type_name = type(kind).__name__.upper()
                columns.append(ColumnInfo(
                    c["name"], type_name, bool(c.get("nullable", True)),
                    is_date=python_type is not None and python_type.__name__ in ("date", "datetime"),
                    is_text=python_type is str, length=getattr(kind, "length", None)))
            key = tuple(inspector.get_pk_constraint(name).get("constrained_columns") or ())
            tables[name] = TableInfo(name, columns, key)
            for fk in inspector.get_foreign_keys(name):
                if fk.get("referred_schema") not in (None, inspector.default_schema_name):
                    continue
                foreign_keys.append(ForeignKey(name, tuple(fk["constrained_columns"]), fk["referred_table"],
                                               tuple(fk["referred_columns"])))
        return Reflected(engine.dialect.name, tables, foreign_keys)
    except SQLAlchemyError as err:
        # The driver's text may quote the URL (with its password): only the kind of error.
        raise DraftError(f"cannot read the database's schema ({type(getattr(err, 'orig', None) or err).__name__}); "
                         "check the URL, that the server is up and the user may read the schema") from None
    finally:
        engine.dispose()


# --- guessing ---------------------------------------------------------------------------------------------

_SUBJECT_NAMES = ("users", "user", "customers", "customer", "accounts", "account", "members", "member", "people",
                  "persons", "person", "contacts", "contact", "clients", "client", "profiles", "subscribers")
_EMAIL = re.compile(r"^(e_?mail|mail|email_?address|e_?mail_?addr|courriel)$", re.IGNORECASE)
# (pattern on the column's name, category, provided by the subject)
_PERSONAL: tuple[tuple[re.Pattern[str], str, bool], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), category, provided) for pattern, category, provided in (
        (r"(^|_)(ip|ip_?address|ip_?addr|remote_?addr|user_?agent|device|fingerprint)(_|$)",
         "connection data", False),
        (r"(^|_)(e_?mail|mail|courriel)(_|$)", "contact", True),
        (r"(^|_)(phone|mobile|telephone|tel|fax|cell|portable)(_|$)", "contact", True),
        (r"(^|_)(address|addr|street|city|zip|zipcode|postcode|postal_code|town|adresse|ville)(_|$)",
         "contact", True),
        (r"(^|_)(first_?name|last_?name|given_?name|family_?name|surname|full_?name|display_?name|nickname|"
         r"user_?name|login|name|nom|prenom|maiden_?name)(_|$)", "identity", True),
        (r"(^|_)(birth|birthday|birthdate|dob|date_of_birth|born|naissance)(_|$)", "identity", True),
        (r"(^|_)(gender|sex|civility|title_of_address|nationality)(_|$)", "identity", True),
        (r"(^|_)(latitude|longitude|lat|lng|lon|geo|location|geolocation)(_|$)", "location", False),
        (r"(^|_)(iban|bic|card|pan|card_?last4|last4|account_?number|vat_?number|tax_?id|ssn|nir|passport|"
         r"id_?number)(_|$)", "financial and identity numbers", True),
        (r"(^|_)(role|job|job_?title|position|occupation|company|employer|department|team)(_|$)",
         "professional life", True),
        (r"(^|_)(password|password_?hash|passwd|secret|token|otp)(_|$)", "authentication", False),
        (r"(^|_)(body|content|message|comment|comments|note|notes|text|bio|about|description|title|subject|"
         r"avatar|photo|picture)(_|$)", "content", True),
    ))
_RETAINED = re.compile(r"(invoice|bill|payment|order|transaction|receipt|credit_?note|refund|accounting|ledger|"
                       r"facture|commande)", re.IGNORECASE)
_CONNECTION_LOG = re.compile(r"(login|logon|signin|sign_in|session|access|connection|auth|audit|visit|event|log)",
                             re.IGNORECASE)
_SUPPRESSION = re.compile(r"(newsletter|subscription|subscriber|mailing|suppress|unsubscribe|opt_?out|blocklist)",
                          re.IGNORECASE)
_RECTIFY = (  # canonical field -> column names, in order of preference
    ("email", ("email", "e_mail", "mail", "email_address")),
    ("first_name", ("first_name", "firstname", "given_name", "prenom")),
    ("last_name", ("last_name", "lastname", "family_name", "surname", "nom")),
    ("phone", ("phone", "phone_number", "telephone", "mobile", "tel")),
    ("address_line1", ("address_line1", "address1", "address", "street")),
    ("address_line2", ("address_line2", "address2")),
    ("city", ("city", "town", "ville")),
    ("postcode", ("postcode", "postal_code", "zip", "zipcode", "zip_code")),
    ("state", ("state", "region")),
    ("country", ("country",)),
)
ACCOUNTING = "Art. 17(3)(b) GDPR; Code de commerce L123-22 (accounting records, 10 years)"
CONNECTION = "LCEN art. 6-II; décret 2021-1362 (connection data, 1 year)"


def _email_column(t: TableInfo) -> str | None:
    return next((c.name for c in t.columns if _EMAIL.match(c.name) and c.is_text), None)


def _personal(name: str) -> tuple[str, bool] | None:
    for pattern, category, provided in _PERSONAL:
        if pattern.search(name):
            return category, provided
    return None


def guess_subject(schema: Reflected) -> tuple[str, str]:
    """(table, email column) of the subject: the most referenced table with an email-like column."""
    referenced: dict[str, int] = {}
    for fk in schema.foreign_keys:
        if fk.table != fk.other:
            referenced[fk.other] = referenced.get(fk.other, 0) + 1
    candidates = []
    for t in schema.tables.values():
        email = _email_column(t)
        if email and len(t.key) == 1:
            named = t.name.lower() in _SUBJECT_NAMES
            candidates.append((referenced.get(t.name, 0), named, -len(t.name), t.name, email))
    if not candidates:
        raise DraftError("no table with a primary key and an email-like column (email, mail…): the subject's table "
                         "cannot be guessed")
    best = max(candidates)
    return best[3], best[4]


@dataclass(frozen=True)
class Hop:
    """How a table reaches the subject: ``columns`` of this table equal ``other_columns`` of ``other``."""

    columns: tuple[str, ...]
    other: str
    other_columns: tuple[str, ...]
    child: bool  # this table holds the reference (its rows are the subject's own)
    by_value: bool = False


def paths(schema: Reflected, subject: str, email: str) -> dict[str, Hop | None]:
    """Each reachable table's hop towards the subject (``None`` for the subject's table), breadth first, the
    subject's own rows (children) before shared ones; nothing is reached down from a shared table."""
    reached: dict[str, Hop | None] = {subject: None}
    shared: set[str] = set()
    queue = deque([subject])
    while queue:
        current = queue.popleft()
        # Children first: tables whose foreign key references the current table's key.
        for fk in schema.foreign_keys:
            if fk.other == current and fk.table not in reached and current not in shared \
                    and _usable(schema, fk.table):
                reached[fk.table] = Hop(fk.columns, current, fk.other_columns, child=True)
                queue.append(fk.table)
        for fk in schema.foreign_keys:
            if fk.table == current and fk.other not in reached and _usable(schema, fk.other) \
                    and tuple(schema.tables[fk.other].key) == fk.other_columns:
                reached[fk.other] = Hop(fk.other_columns, current, fk.columns, child=False)
                shared.add(fk.other)
                queue.append(fk.other)
    for t in schema.tables.values():  # by value: an email column, no foreign key path
        column = _email_column(t)
        if t.name not in reached and column and _usable(schema, t.name):
            reached[t.name] = Hop((column,), subject, (email,), child=True, by_value=True)
    return reached


def _usable(schema: Reflected, table: str) -> bool:
    t = schema.tables[table]
    return bool(t.key) and all(_IDENT.match(n) for n in (t.name, *(c.name for c in t.columns)))


def _depth(reached: Mapping[str, Hop | None], table: str) -> int:
    depth = 0
    hop = reached[table]
    while hop is not None:
        depth += 1
        hop = reached[hop.other]
    return depth


def _unsupported(schema: Reflected, table: str) -> str:
    t = schema.tables[table]
    if not t.key:
        return "no primary key: the map needs one to follow and resume its rows"
    if not _usable(schema, table):
        return "a table or column name the map cannot hold (letters, digits, _ and $ only)"
    return ("no path to the subject's table (no foreign key reaches it, no email-like column), or only through a "
            "shared table (its rows are other people's too)")


# --- rendering --------------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name if _BARE.match(name) else f'"{name}"'


def _str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _link(hop: Hop) -> str:
    if len(hop.columns) == 1:
        return f"{hop.columns[0]} = {hop.other}.{hop.other_columns[0]}"
    return f"({', '.join(hop.columns)}) = {hop.other}.({', '.join(hop.other_columns)})"


def _date_column(t: TableInfo) -> str | None:
    dates = [c.name for c in t.columns if c.is_date]
    for preferred in ("issued_on", "issued_at", "invoice_date", "date", "created_at", "created_on", "at",
                      "occurred_at", "logged_at"):
        if preferred in dates:
            return preferred
    return dates[0] if dates else None


@dataclass
class _Plan:
    """What the draft says of one table."""

    name: str
    hop: Hop | None
    shared: bool
    lines: list[str] = field(default_factory=list)


_RESTRICTION_NAMES = ("restricted_at", "restricted_since", "restricted_on", "processing_restricted_at",
                      "restriction_at")
"""Names of a subject's column marking a restriction of processing (Art. 18), as a nullable timestamp."""


def _restriction_column(t: TableInfo) -> str | None:
    """The subject table's nullable date/time column named like a restriction mark, if any."""
    for preferred in _RESTRICTION_NAMES:
        c = t.column(preferred)
        if c is not None and c.is_date and c.nullable and c.name not in t.key:
            return c.name
    return None


def render(schema: Reflected, *, name: str = "app", url_env: str = "APP_DATABASE_URL",
           hash_key_env: str = "APP_HASH_KEY") -> str:
    subject, email = guess_subject(schema)
    restriction = _restriction_column(schema.tables[subject])
    reached = paths(schema, subject, email)
    order = sorted(reached, key=lambda n: (_depth(reached, n), n != subject, n))
    shared = {n for n, hop in reached.items() if hop is not None and not hop.child}
    shared |= {n for n in reached if _through_shared(reached, n, shared)}
    retained: dict[str, tuple[str, int, str, str]] = {}  # table -> (basis, years, date column, counted from)
    blocks: list[str] = []
    uses_hash = False
    for table_name in order:
        t = schema.tables[table_name]
        hop = reached[table_name]
        lines = ["[[connectors.tables]]", f"name = {_str(table_name)}"]
        if len(t.key) == 1 and t.key[0] != "id":
            lines.append(f"key = {_str(t.key[0])}")
        elif len(t.key) > 1:
            lines.append(f"key = {_str(t.key[0])}  # REVIEW: the primary key is ({', '.join(t.key)}); the map "
                         "follows rows by one column: give a unique one")
        comments: list[str] = []
        if hop is not None:
            comment = ""
            if hop.by_value:
                comment = "  # REVIEW: by value (no foreign key): the same address in both tables"
            elif not hop.child:
                comment = "  # shared with other people: exported with the subject's rows, never erased with them"
            lines.append(f"link = {_str(_link(hop))}{comment}")
            others = [fk for fk in schema.foreign_keys if fk.table == table_name and fk.other == hop.other
                      and fk.columns != hop.columns] if hop.child else []
            for fk in others:  # e.g. documents.owner_id and documents.editor_id, both to users
                comments.append(f"# REVIEW: {table_name} also references {fk.other} through "
                                f"{', '.join(fk.columns)}: only the link below is followed")
        link_columns = set(hop.columns) if hop is not None else set()
        refs_subject = {c for fk in schema.foreign_keys if fk.table == table_name and fk.other == subject
                        for c in fk.columns}
        # The table's erasure, conservatively.
        keep: tuple[str, int, str, str] | None = None
        table_erase: str | None = None
        if table_name in shared:
            table_erase = None
        elif table_name == subject:
            table_erase = "delete"
        else:
            date_column = _date_column(t)
            parent_kept = hop is not None and hop.other in retained
            has_ip = any(_personal(c.name) == ("connection data", False) for c in t.columns)
            if (_RETAINED.search(table_name) or parent_kept) and date_column:
                basis, years, _, counted = retained.get(hop.other, (ACCOUNTING, 10, "", "financial_year_end")) \
                    if parent_kept and hop is not None else (ACCOUNTING, 10, "", "financial_year_end")
                keep = (basis, years, date_column, counted)
            elif _CONNECTION_LOG.search(table_name) and has_ip and date_column:
                keep = (CONNECTION, 1, date_column, "record")
            elif hop is not None and hop.by_value and _SUPPRESSION.search(table_name):
                table_erase = "hash"
            else:
                table_erase = "delete"
                if parent_kept:
                    comments.append("# REVIEW: its rows belong to a kept table's rows, and no date column was "
                                    "found to keep them for as long: deleted here")
        if keep is not None:
            retained[table_name] = keep
        elif table_erase is not None:
            lines.append(f"erase = {_str(table_erase)}"
                         + ("  # REVIEW: the keyed hash stays, as a suppression list" if table_erase == "hash"
                            else "  # REVIEW: every row deleted" if table_name != subject
                            else "  # REVIEW: the subject's row deleted (its children first)"))
        specs: list[tuple[ColumnInfo, dict[str, Any], str]] = []
        fk_columns = {col for fk in schema.foreign_keys if fk.table == table_name for col in fk.columns}
        for c in t.columns:
            if table_name == subject and c.name == restriction:
                continue  # the restriction mark (the entry's ``restriction``), never data
            spec: dict[str, Any] = {}
            note = ""
            guessed = _personal(c.name)
            is_link = c.name in link_columns
            if table_name in shared:
                spec["personal"] = False
                if guessed and not is_link and c.name not in t.key:
                    note = f"REVIEW: looks like {guessed[0]}; shared with other people, so not erased with one"
            elif hop is not None and hop.by_value and is_link:
                spec.update(category="contact", provided=True)
            elif c.name in refs_subject or (is_link and keep is not None):
                spec["category"] = "identity"
                if keep is not None:
                    spec["erase"] = "null"  # the row outlives the row it references
                    note = "REVIEW: set NULL when the row it references goes"
                    if not c.nullable:
                        note = (f"REVIEW: NOT NULL in the schema, but set NULL when the {hop.other if hop else ''} "
                                "row it references goes: make it nullable")
            elif c.name in t.key or is_link or c.name in fk_columns:
                spec["personal"] = False
            elif guessed and not (c.is_date and guessed[0] != "identity"):
                category, provided = guessed
                spec["category"] = category
                if provided:
                    spec["provided"] = True
                if keep is not None:
                    spec["erase"] = "keep"
                note = "REVIEW"
            else:
                spec["personal"] = False
            specs.append((c, spec, note))
        personal_here = sum(1 for _, spec, _ in specs if spec.get("personal", True))
        if not personal_here and hop is not None and hop.child and table_erase == "delete":
            # Rows with nothing personal but the subject's: the link marks them, so they go with their parent.
            for index, (c, _, _) in enumerate(specs):
                if c.name in link_columns:
                    specs[index] = (c, {"category": "identity"}, "REVIEW: personal so that the rows go with "
                                    f"the {hop.other} rows they belong to")
        for c, spec, note in specs:
            if table_erase == "hash" and spec.get("personal", True):
                uses_hash = True
                if c.length is not None and c.length < 64:
                    note = f"REVIEW: hashed, but holds {c.length} characters (a hash needs 64)"
            body = ", ".join(f"{k} = {_value(v)}" for k, v in spec.items())
            lines.append(f"columns.{_key(c.name)} = {{ {body} }}" + (f"  # {note}" if note else ""))
        if keep is not None:
            basis, years, date_column, counted = keep
            kept_any = any("erase = \"keep\"" in line for line in lines)
            if not kept_any:  # nothing personal to keep: the rows are the subject's, deleted
                retained.pop(table_name)
                lines.insert(3 if hop is not None else 2, 'erase = "delete"  # REVIEW: every row deleted')
            else:
                lines.append("[connectors.tables.retention]  # REVIEW: of the kept columns; then deleted")
                lines.append(f"legal_basis = {_str(basis)}")
                lines.append(f"years = {years}")
                lines.append(f"date_column = {_str(date_column)}")
                if counted != "record":
                    lines.append(f"counted_from = {_str(counted)}")
        blocks.append("\n".join([*comments, *lines]))

    subject_table = schema.tables[subject]
    rectify = []
    for canonical, names in _RECTIFY:
        found = next((n for n in names if subject_table.column(n) is not None and n not in subject_table.key), None)
        if found is None:
            continue
        targets = [f"{subject}.{found}"]
        if canonical == "email":
            targets += [f"{n}.{reached_hop.columns[0]}" for n, reached_hop in reached.items()
                        if reached_hop is not None and reached_hop.by_value]
        rectify.append(f"{canonical} = " + (_str(targets[0]) if len(targets) == 1
                                            else "[" + ", ".join(_str(x) for x in targets) + "]"))

    unreached = sorted(set(schema.tables) - set(reached))
    head = [
        f"# Draft map of a {schema.dialect} database, written by `dsr connectors map sql`: {len(reached)} table(s) "
        f"mapped, {len(unreached)} without a path.",
        "# Every guess is marked REVIEW: check each column's category, what the subject provided, each table's",
        "# erasure and retention, then run `dsr config check` and `dsr connectors check`.",
        "",
        "[[connectors]]",
        'type = "sql"',
        f"name = {_str(name)}",
        f"url_env = {_str(url_env)}                # the environment variable holding the database URL",
        (f"hash_key_env = {_str(hash_key_env)}" if uses_hash
         else f"# hash_key_env = {_str(hash_key_env)}  # needed once a column is hashed"),
        f"subject = {{ table = {_str(subject)}, email = {_str(email)} }}  # REVIEW: the subject's table, guessed",
        (f"restriction = {_str(f'{subject}.{restriction}')}  # REVIEW: Art. 18: set on the subject's rows while "
         "restricted, NULL once lifted; the application must read it" if restriction
         else f"# restriction = {_str(f'{subject}.restricted_at')}  # Art. 18: add a nullable timestamp column the "
              "application reads as \"restricted since\", then uncomment; without one, a restriction is a line "
              "for the operator"),
    ]
    if rectify:
        head += ["", "[connectors.rectify]  # REVIEW: canonical field -> table.column", *rectify]
    tail = []
    if unreached:
        tail = ["", "# Not mapped (REVIEW: map by hand, or leave out if no personal data is there):",
                *(f"# - {n}: {_unsupported(schema, n)}" for n in unreached)]
    return "\n".join(head) + "\n\n" + "\n\n".join(blocks) + "\n" + ("\n".join(tail) + "\n" if tail else "")


def _through_shared(reached: Mapping[str, Hop | None], table: str, shared: set[str]) -> bool:
    hop = reached[table]
    while hop is not None:
        if hop.other in shared:
            return True
        hop = reached[hop.other]
    return False


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _str(str(value))


def draft_map(url: str, **names: str) -> tuple[str, Reflected]:
    """The draft map of the database at ``url``, and what was reflected."""
    schema = reflect(url)
    if not schema.tables:
        raise DraftError("the database has no tables")
    return render(schema, **names), schema

"""The application database of a small SaaS, like the seed companies' own: the ``sql`` connector's demo and test
schema, with its ``dsr.toml`` map.

Users, organisations and their memberships, documents and their versions, invoices (accounting records kept ten
years from the close of their financial year), login events with IP addresses (connection data kept one year,
LCEN art. 6 and décret 2021-1362) and newsletter subscriptions (by email, no foreign key: on erasure the address
is replaced by its keyed hash, a suppression list). ``users.restricted_at`` marks a user whose processing is
restricted (Art. 18): the connector sets it and clears it at the lift. :func:`seed` fills it with bulk inserts:
the sample people, one heavy subject and as many filler users as asked (about 20 rows each), on SQLite,
PostgreSQL or MariaDB.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
)

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(255), nullable=False, index=True),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("phone", String(40)),
    Column("created_at", DateTime, nullable=False),
    # Art. 18: set while the person's processing is restricted ("restricted since"); the application reads it and
    # only stores such a user's data. The map names it (``restriction``), never as data.
    Column("restricted_at", DateTime, nullable=True),
)
organisations = Table(
    "organisations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("plan", String(20), nullable=False),
)
memberships = Table(
    "memberships", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("organisation_id", Integer, ForeignKey("organisations.id"), nullable=False, index=True),
    Column("role", String(20), nullable=False),
)
documents = Table(
    "documents", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("owner_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)
document_versions = Table(
    "document_versions", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("document_id", Integer, ForeignKey("documents.id"), nullable=False, index=True),
    Column("body", Text, nullable=False),
    Column("saved_at", DateTime, nullable=False),
)
invoices = Table(
    "invoices", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=True, index=True),
    Column("billing_name", String(200), nullable=False),
    Column("billing_address", String(300), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("issued_on", Date, nullable=False),
)
login_events = Table(
    "login_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=True, index=True),
    Column("ip_address", String(45), nullable=False),
    Column("user_agent", String(300), nullable=False),
    Column("at", DateTime, nullable=False),
)
newsletter_subscriptions = Table(
    "newsletter_subscriptions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(255), nullable=False, index=True),
    Column("subscribed_at", DateTime, nullable=False),
)

HASH_KEY_ENV = "APP_HASH_KEY"
URL_ENV = "APP_DATABASE_URL"


def app_map(url_env: str = URL_ENV, hash_key_env: str = HASH_KEY_ENV) -> str:
    """The map of this schema, one ``[[connectors]]`` entry of ``dsr.toml`` naming these environment variables."""
    return _MAP.replace("{URL_ENV}", url_env).replace("{HASH_KEY_ENV}", hash_key_env)


_MAP = '''
[[connectors]]
type = "sql"
name = "app"
url_env = "{URL_ENV}"
hash_key_env = "{HASH_KEY_ENV}"
subject = { table = "users", email = "email" }
restriction = "users.restricted_at"        # Art. 18: set on the subject's row while restricted, NULL once lifted

[connectors.rectify]                       # canonical field -> table.column (or several)
email = ["users.email", "newsletter_subscriptions.email"]
first_name = "users.first_name"
last_name = "users.last_name"
phone = "users.phone"

[connectors.marketing]                     # an objection to direct marketing: the subscription row is deleted
table = "newsletter_subscriptions"
email = "email"

[[connectors.tables]]
name = "users"
erase = "delete"
columns.id = { personal = false }
columns.email = { category = "contact", provided = true }
columns.first_name = { category = "identity", provided = true }
columns.last_name = { category = "identity", provided = true }
columns.phone = { category = "contact", provided = true }
columns.created_at = { personal = false }

[[connectors.tables]]
name = "memberships"
link = "user_id = users.id"
erase = "delete"
columns.id = { personal = false }
columns.user_id = { category = "identity" }
columns.organisation_id = { personal = false }
columns.role = { category = "professional life" }

[[connectors.tables]]
name = "organisations"                    # reached through the memberships: shared, never deleted
link = "id = memberships.organisation_id"
columns.id = { personal = false }
columns.name = { personal = false }
columns.plan = { personal = false }

[[connectors.tables]]
name = "documents"
link = "owner_id = users.id"
erase = "delete"
columns.id = { personal = false }
columns.owner_id = { category = "identity" }
columns.title = { category = "content", provided = true }
columns.body = { category = "content", provided = true }
columns.created_at = { personal = false }

[[connectors.tables]]
name = "document_versions"
link = "document_id = documents.id"
erase = "delete"
columns.id = { personal = false }
columns.document_id = { personal = false }
columns.body = { category = "content", provided = true }
columns.saved_at = { personal = false }

[[connectors.tables]]
name = "invoices"
link = "user_id = users.id"
columns.id = { personal = false }
columns.user_id = { category = "identity", erase = "null" }
columns.billing_name = { category = "identity", erase = "keep" }
columns.billing_address = { category = "contact", erase = "keep" }
columns.amount_cents = { personal = false }
columns.issued_on = { personal = false }
[connectors.tables.retention]              # of the kept columns
legal_basis = "Art. 17(3)(b) GDPR; Code de commerce L123-22 (accounting records, 10 years)"
years = 10
date_column = "issued_on"
counted_from = "financial_year_end"

[[connectors.tables]]
name = "login_events"
link = "user_id = users.id"
columns.id = { personal = false }
columns.user_id = { category = "identity", erase = "null" }
columns.ip_address = { category = "connection data", erase = "keep" }
columns.user_agent = { category = "connection data", erase = "keep" }
columns.at = { personal = false }
[connectors.tables.retention]              # then (once over): delete, the default
legal_basis = "LCEN art. 6-II; décret 2021-1362 (connection data, 1 year)"
years = 1
date_column = "at"

[[connectors.tables]]
name = "newsletter_subscriptions"          # by address, no foreign key: the hash stays as a suppression list
link = "email = users.email"
columns.id = { personal = false }
columns.email = { category = "contact", provided = true, erase = "hash" }
columns.subscribed_at = { personal = false }
'''
DEMO_MAP = app_map()
"""The map of this schema, one ``[[connectors]]`` entry of ``dsr.toml``."""


@dataclass(frozen=True)
class Person:
    email: str
    first_name: str
    last_name: str
    documents: int = 2
    versions_per_document: int = 1
    invoices: int = 2
    logins: int = 3
    newsletter: bool = True
    body_size: int = 1  # times BODY


PEOPLE = (
    Person("camille.durand@example.org", "Camille", "Durand"),
    Person("Lucas.Petit@example.org", "Lucas", "Petit", documents=1, invoices=0, newsletter=False),
)
HEAVY = Person("marie.lefevre@example.com", "Marie", "Lefèvre", documents=2000, versions_per_document=2,
               invoices=998, logins=3000, body_size=6)
"""The heavy subject: 1 user, 2 memberships, 2,000 documents, 4,000 versions, 998 invoices, 3,000 login events,
a subscription: 10,002 rows, about 20 MB of document text."""

BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
        "dolore magna aliqua. ") * 12  # about 1.4 kB, so a heavy export is tens of megabytes


def datasets_of(person: Person) -> dict[str, int]:
    """Rows per table of one person (the organisations they belong to are not theirs)."""
    counts = {"users": 1, "memberships": 2, "documents": person.documents,
              "document_versions": person.documents * person.versions_per_document, "invoices": person.invoices,
              "login_events": person.logins, "newsletter_subscriptions": 1 if person.newsletter else 0}
    return {table_name: rows for table_name, rows in counts.items() if rows}


def rows_of(person: Person) -> int:
    return (1 + 2 + person.documents * (1 + person.versions_per_document) + person.invoices + person.logins
            + (1 if person.newsletter else 0))


class _Ids:
    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def __call__(self, table: str) -> int:
        value = self.next.get(table, 1)
        self.next[table] = value + 1
        return value


def _rows(people: list[Person], today: date, rng: random.Random, organisations_count: int,
          ) -> Iterator[tuple[Table, dict[str, Any]]]:
    ids = _Ids()
    now = datetime.combine(today, datetime.min.time())
    for number in range(1, organisations_count + 1):
        yield organisations, {"id": ids("organisations"), "name": f"Organisation {number}",
                              "plan": rng.choice(("free", "team", "business"))}
    for person in people:
        user_id = ids("users")
        created = now - timedelta(days=rng.randint(400, 3000))
        yield users, {"id": user_id, "email": person.email, "first_name": person.first_name,
                      "last_name": person.last_name, "phone": f"+33 6 {rng.randint(10_000_000, 99_999_999)}",
                      "created_at": created}
        for _ in range(2):
            yield memberships, {"id": ids("memberships"), "user_id": user_id,
                                "organisation_id": rng.randint(1, organisations_count),
                                "role": rng.choice(("owner", "member"))}
        for number in range(person.documents):
            document_id = ids("documents")
            written = now - timedelta(days=rng.randint(1, 900), minutes=number)
            yield documents, {"id": document_id, "owner_id": user_id, "title": f"Document {number}",
                              "body": BODY * person.body_size, "created_at": written}
            for version in range(person.versions_per_document):
                yield document_versions, {"id": ids("document_versions"), "document_id": document_id,
                                          "body": BODY[: 200 + version], "saved_at": written + timedelta(hours=1)}
        for number in range(person.invoices):
            # Spread over 15 years: the oldest are past their ten years and go, the others (the first always) are
            # kept.
            yield invoices, {"id": ids("invoices"), "user_id": user_id,
                             "billing_name": f"{person.first_name} {person.last_name}",
                             "billing_address": f"{number % 90 + 1} rue de la Paix, 75002 Paris",
                             "amount_cents": rng.randint(500, 50_000),
                             "issued_on": today - timedelta(days=rng.randint(30, 300) if number == 0
                                                            else rng.randint(30, 15 * 365))}
        for number in range(person.logins):
            # Over two years: those older than one year go, the others are kept (each person has both).
            yield login_events, {"id": ids("login_events"), "user_id": user_id,
                                 "ip_address": f"203.0.113.{number % 250 + 1}",
                                 "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                                 "at": now - timedelta(days=rng.randint(*(1, 300) if number == 0 else (400, 730)
                                                                        if number == 1 else (1, 730)), seconds=number)}
        if person.newsletter:
            yield newsletter_subscriptions, {"id": ids("newsletter_subscriptions"), "email": person.email.lower(),
                                             "subscribed_at": created}


def seed(engine: Engine, *, fillers: int = 0, heavy: bool = True, today: date | None = None,
         chunk: int = 5000) -> dict[str, int]:
    """Create the schema and fill it with bulk inserts; returns rows per table. ``fillers`` other users have
    about 21 rows each (so 4,300 of them and the heavy subject make more than 100,000 rows)."""
    today = today or datetime.now(UTC).date()
    rng = random.Random(16)  # the same data every time
    metadata.drop_all(engine)
    metadata.create_all(engine)
    people = [*PEOPLE, *([HEAVY] if heavy else [])]
    people += [Person(f"user{number}@example.net", "Filler", f"User{number}", documents=4, invoices=3, logins=8,
                      newsletter=number % 3 == 0) for number in range(fillers)]
    pending: dict[str, list[dict[str, Any]]] = {t.name: [] for t in metadata.sorted_tables}
    counts: dict[str, int] = dict.fromkeys(pending, 0)
    with engine.begin() as conn:
        def flush(name: str) -> None:
            if pending[name]:
                conn.execute(insert(metadata.tables[name]), pending[name])
                counts[name] += len(pending[name])
                pending[name] = []

        order = [t.name for t in metadata.sorted_tables]  # parents before the rows referencing them
        for table_, row in _rows(people, today, rng, max(3, len(people) // 10)):
            pending[table_.name].append(row)
            if len(pending[table_.name]) >= chunk:
                for name in order[: order.index(table_.name) + 1]:
                    flush(name)
        for name in order:
            flush(name)
    return counts


__all__ = ["DEMO_MAP", "HASH_KEY_ENV", "HEAVY", "PEOPLE", "URL_ENV", "app_map", "datasets_of", "metadata", "rows_of",
           "seed"]

"""Schema migrations of the ledger's database (Alembic), on SQLite and PostgreSQL.

Every table of the ledger's database (the ledger's own, :mod:`dsr.store.guards`' counters, the intake's inbox) is
created and changed here, by the revisions of ``versions/``, never by ``create_all``. :func:`upgrade` brings a
database to the newest revision (``head``); the ledger calls it when it opens a database, and ``dsr db upgrade``
runs it on its own (before a rollout, say).

* Replicas starting together on one database migrate one at a time: the upgrade runs in one transaction holding
  PostgreSQL's advisory lock :data:`SCHEMA_LOCK` (DDL is transactional there), or SQLite's write lock (``BEGIN
  IMMEDIATE``); whoever gets it second finds the database at head and does nothing.
* A database made by a release before migrations (0.1.0, ``create_all``: tables, no ``alembic_version``) is
  recognised: the baseline revision creates only the tables it lacks, so its rows stay where they are, and the
  database is stamped at the baseline, then upgraded like any other.
* A database at a revision this release does not know (written by a newer release) is refused, not touched.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Engine, MetaData, inspect, text

from dsr.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only to migrate (or to compare models and revisions): a process opening a database already
# at head reads its revision with one SELECT and the head from the revision files' headers, without Alembic (about
# half a second of imports, most of a short CLI command such as `dsr due`).

SCRIPTS = Path(__file__).resolve().parent
BASELINE = "0001"
"""The schema of release 0.1.0 (the last made by ``create_all``)."""

SCHEMA_LOCK = 0x64737200
"""PostgreSQL advisory lock held while the schema is upgraded: machines starting together on one database."""

MODEL_MODULES = ("dsr.store.ledger", "dsr.store.guards", "dsr.store.inbox", "dsr.store.mail_sends",
                 "dsr.store.suppressions", "dsr.store.tasks", "dsr.store.directives", "dsr.store.turns")
"""The modules declaring tables of this database. Imported by name only when models and migrations are compared
(``make migration``, the test that they agree), never when the engine runs."""

log = logging.getLogger(__name__)


class SchemaError(StoreError, RuntimeError):
    """The database's schema cannot be brought to this release's head (unknown or newer revision)."""


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: no ``alembic.ini`` to find, whatever the working directory."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this release knows."""
    return _listed_head() or _alembic_head()


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None, "dsr/migrations/versions holds no revision"
    return revision


_HEADER = re.compile(r'^(revision|down_revision)\s*(?::[^=]*)?=\s*(None|"[^"]*"|\'[^\']*\')\s*$', re.MULTILINE)


@functools.cache
def _listed_head() -> str | None:
    """The head read from the revision files' ``revision`` / ``down_revision`` lines: the one revision that no
    other names as its parent. ``None`` (Alembic decides) for anything but one plain chain of such lines: a merge
    revision (a tuple), a header written otherwise, two heads."""
    revisions: dict[str, str | None] = {}
    for path in sorted((SCRIPTS / "versions").glob("*.py")):
        if path.name == "__init__.py":
            continue
        found = dict(_HEADER.findall(path.read_text(encoding="utf-8")))
        if set(found) != {"revision", "down_revision"} or found["revision"] == "None":
            return None
        parent = found["down_revision"]
        revisions[found["revision"][1:-1]] = None if parent == "None" else parent[1:-1]
    heads = set(revisions) - {parent for parent in revisions.values() if parent is not None}
    return heads.pop() if len(heads) == 1 else None


def current(connection: Connection) -> str | None:
    """The database's revision; ``None`` when it has none (new, or made by a release before migrations)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    found = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(found) > 1:  # several heads (never written by this engine): Alembic says what it makes of them
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(connection).get_current_revision()
    return found[0] if found else None


def models_metadata() -> MetaData:
    """SQLModel's metadata with every table of this database declared (see :data:`MODEL_MODULES`)."""
    from sqlmodel import SQLModel

    for name in MODEL_MODULES:
        importlib.import_module(name)
    return SQLModel.metadata


def upgrade(engine: Engine, *, revision: str = "heads") -> str:
    """Bring the database to ``revision`` (the newest by default), one process at a time; answer the revision.

    Raises :class:`SchemaError` when the database holds a revision this release does not know.
    """
    target = head()
    # Already at head (every start but the first after a release): one read, no write lock, no Alembic.
    with engine.connect() as connection:
        if current(connection) == target:
            return target
    from alembic import command
    from alembic.util.exc import CommandError

    # The ledger's SQLite engine takes the write lock at BEGIN with this option (see dsr.store.ledger); others
    # ignore it.
    with engine.execution_options(dsr_write=True).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        found = current(connection)
        if found == target:
            return found
        if found is None and _holds_tables(connection):
            log.info("the ledger's database predates migrations: stamping it at the baseline %s", BASELINE)
        try:
            command.upgrade(config(connection), revision)
        except CommandError as exc:
            raise SchemaError(
                f"the ledger's database is at schema revision {found!r}, which this release does not know "
                f"(its newest is {target!r}): it was upgraded by a newer release; run that release ({exc})"
            ) from None
        return current(connection) or target


def _holds_tables(connection: Connection) -> bool:
    return bool(set(inspect(connection).get_table_names()) - {"alembic_version"})


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes the engine's own column types as their SQL types: a migration must not import the
    models it migrates (they change after it is written)."""
    if type_ == "type" and obj.__class__.__name__ == "UTCDateTime":
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and obj.__class__.__name__ == "AutoString":
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False

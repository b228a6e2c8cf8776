"""The ledger database's migrations (dsr/migrations): a database of the previous release is upgraded with its
rows, the migrations' head is exactly the models' schema, and replicas starting together migrate once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, make_url, text

from dsr import migrations
from dsr.domain.model import RequestKind
from dsr.store.guards import Guards
from dsr.store.ledger import Ledger, LedgerUnavailableError, schema_revision, upgrade_database
from tests.harness import TEST_KEYRING

SCHEMAS = Path(__file__).parent / "schemas"
BIN = Path(sys.executable).parent
EMAIL = "jeanne.martin@example.org"
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
EVERY_TABLE = {"requests", "events", "event_notes", "subject_claims", "triage_dismissals", "rate_limits",
               "attempt_limits", "answer_caps", "seen_signatures", "inbound_messages", "outside_tasks",
               "suppressions", "mail_sends",
               "consent_withdrawals", "directives", "subject_turns"}


def plain_engine(url: str) -> Engine:
    return create_engine(make_url(url).set(drivername="postgresql+psycopg") if "postgresql" in url else url)


def build_previous_release(url: str, *, only: set[str] | None = None) -> None:
    """A database as release 0.1.0 (c7316df) left it: its frozen DDL, no alembic_version, rows in it."""
    engine = plain_engine(url)
    dialect = engine.dialect.name
    ddl = (SCHEMAS / f"0.1.0.{dialect}.sql").read_text()
    sql = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    with engine.begin() as conn:
        for body in filter(None, (statement.strip() for statement in sql.split(";"))):
            table = body.split("(")[0].split()[-1] if body.startswith("CREATE TABLE") else \
                body.split(" ON ")[1].split()[0]
            if only is None or table in only:
                conn.exec_driver_sql(body)
        sealed_email = TEST_KEYRING.seal_text(EMAIL, purpose="subject.email", context="dsr-2026-11-OLDREQ")
        sealed_name = TEST_KEYRING.seal_text("Jeanne Martin", purpose="subject.name", context="dsr-2026-11-OLDREQ")
        index = TEST_KEYRING.blind_index(EMAIL, purpose="subject.email")
        conn.execute(text(
            "INSERT INTO requests (request_id, kind, channel, language, received_at, deadline, extended, stage, "
            "outcome, subject_email_sealed, subject_name_sealed, subject_index, created_at, updated_at) VALUES "
            "('dsr-2026-11-OLDREQ', 'erasure', 'form', 'fr', :t, :d, false, 'processing', NULL, :e, :n, :i, :t, :t)"),
            {"t": T0, "d": date(2026, 12, 2), "e": sealed_email, "n": sealed_name, "i": index})
        conn.execute(text("INSERT INTO events (event_key, request_id, at, event, actor, details) VALUES "
                          "('received:1', 'dsr-2026-11-OLDREQ', :t, 'received', 'intake', '{\"channel\": \"form\"}')"),
                     {"t": T0})
        if only is None or "subject_claims" in only:
            conn.execute(text("INSERT INTO subject_claims VALUES (:i, 'erasure', 'dsr-2026-11-OLDREQ', :t)"),
                         {"i": index, "t": T0})
        if only is None or "rate_limits" in only:
            conn.execute(text("INSERT INTO rate_limits (key, hits, expires_at) VALUES ('address:x', '[1]', :t)"),
                         {"t": T0})
    engine.dispose()


def tables(url: str) -> set[str]:
    engine = plain_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_database_of_the_previous_release_is_stamped_and_upgraded_with_its_rows(database_url: str) -> None:
    build_previous_release(database_url)
    assert schema_revision(database_url) is None

    with Ledger(database_url, TEST_KEYRING) as ledger:
        stored = ledger.get_request("dsr-2026-11-OLDREQ")
        assert stored is not None and stored.subject.email == EMAIL and stored.subject.name == "Jeanne Martin"
        assert stored.received_at == T0 and stored.kind is RequestKind.ERASURE
        assert [(e.event, e.details) for e in ledger.events("dsr-2026-11-OLDREQ")] == \
            [("received", {"channel": "form"})]
        held = ledger.claim_of(EMAIL, RequestKind.ERASURE)
        assert held is not None and held.request_id == "dsr-2026-11-OLDREQ" and held.claimed_at == T0
    assert schema_revision(database_url) == migrations.head()
    engine = plain_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT key, hits FROM rate_limits")).all() == [("address:x", "[1]")]
    engine.dispose()


def test_a_previous_release_database_missing_some_tables_gains_them(database_url: str) -> None:
    """0.1.0 created a table when a process first imported its model: a ledger may lack the intake's tables,
    and one from before claims lacks subject_claims, whose open requests then claim their subjects."""
    build_previous_release(database_url, only={"requests", "events", "event_notes", "triage_dismissals"})
    with Ledger(database_url, TEST_KEYRING) as ledger:
        held = ledger.claim_of(EMAIL, RequestKind.ERASURE)
        assert held is not None and held.request_id == "dsr-2026-11-OLDREQ"
        assert ledger.get_request("dsr-2026-11-OLDREQ") is not None
        guards = Guards(ledger.engine, TEST_KEYRING)  # its tables exist: it works at once
        assert guards.first_delivery(b"signature", T0, keep=timedelta(minutes=5)) is True
    assert EVERY_TABLE | {"alembic_version"} == tables(database_url)


def test_the_migrations_head_is_the_models_schema(database_url: str) -> None:
    """A model changed without a migration fails here: autogenerate finds a difference."""
    upgrade_database(database_url)
    metadata = migrations.models_metadata()
    engine = plain_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == []
    assert set(metadata.tables) == EVERY_TABLE


def test_the_comparison_does_see_a_model_without_its_migration(database_url: str) -> None:
    """The test above can fail: a column missing from the database is found."""
    upgrade_database(database_url)
    engine = plain_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_requests_stage"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), migrations.models_metadata())
    engine.dispose()
    assert [op[0] for op in diff] == ["add_index"]


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    """Several processes opening a new database at the same instant: one migrates, the others find it done."""
    starting = threading.Barrier(4)

    def start_replica() -> str | None:
        starting.wait()
        with Ledger(database_url, TEST_KEYRING) as ledger, ledger.engine.connect() as conn:
            return migrations.current(conn)

    with ThreadPoolExecutor(4) as pool:
        revisions = list(pool.map(lambda _: start_replica(), range(4)))
    assert revisions == [migrations.head()] * 4
    engine = plain_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [migrations.head()]
    engine.dispose()


def test_a_database_of_a_newer_release_is_refused_untouched(database_url: str) -> None:
    upgrade_database(database_url)
    engine = plain_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(LedgerUnavailableError, match="revision '9999', which this release does not know"):
        Ledger(database_url, TEST_KEYRING)
    assert schema_revision(database_url) == "9999"


def test_opening_without_upgrading_refuses_an_old_schema(database_url: str) -> None:
    build_previous_release(database_url)
    with pytest.raises(LedgerUnavailableError, match="run `dsr db upgrade`"):
        Ledger(database_url, TEST_KEYRING, upgrade=False)
    assert schema_revision(database_url) is None  # not touched
    upgrade_database(database_url)
    with Ledger(database_url, TEST_KEYRING, upgrade=False) as ledger:
        assert ledger.get_request("dsr-2026-11-OLDREQ") is not None


def test_the_baseline_goes_down_and_up_again(database_url: str) -> None:
    upgrade_database(database_url)
    engine = plain_engine(database_url)
    with engine.begin() as conn:
        from alembic import command

        command.downgrade(migrations.config(conn), "base")
    engine.dispose()
    assert tables(database_url) <= {"alembic_version"}
    assert upgrade_database(database_url) == migrations.head()
    assert tables(database_url) >= EVERY_TABLE


def dsr(home: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSR_HOME": str(home)}
    env.pop("DSR_DATABASE_URL", None)
    if url is not None:
        env["DSR_DATABASE_URL"] = url
    return subprocess.run([str(BIN / "dsr"), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dsr_db_status_and_upgrade(tmp_path: Path, database_url: str) -> None:
    build_previous_release(database_url)
    status = dsr(tmp_path, "db", "status", "--json", url=database_url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"current": None, "head": migrations.head(), "up_to_date": False}

    upgraded = dsr(tmp_path, "db", "upgrade", url=database_url)  # needs no keys: none exist in this home
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"upgraded the ledger database from no revision to {migrations.head()}"
    again = dsr(tmp_path, "db", "upgrade", "--json", url=database_url)
    assert json.loads(again.stdout) == {"from": migrations.head(), "to": migrations.head()}

    bad = dsr(tmp_path, "db", "upgrade", url="postgresql://dsr:hunter2@127.0.0.1:1/ledger")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: cannot open the ledger database") and "hunter2" not in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_head_read_from_the_revision_files_is_alembics() -> None:
    """Opening a database at head needs no Alembic: the head comes from the revision files' headers, which must
    name the same revision as Alembic's own reading of them (a new revision, a re-chained one)."""
    listed = migrations._listed_head()
    assert listed is not None, "the revision files' headers could not be read: Alembic would be imported each time"
    assert listed == migrations._alembic_head() == migrations.head()


def test_a_process_opening_a_database_at_head_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    assert upgrade_database(url) == migrations.head()
    script = ("import sys\nfrom dsr.store.ledger import Ledger\nfrom tests.harness import TEST_KEYRING\n"
              f"Ledger({url!r}, TEST_KEYRING).close()\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n")
    at_head = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2])
    assert at_head.stdout.strip() == "[]"
    # A new database is migrated: Alembic is loaded then, and only then.
    fresh = script.replace(str(tmp_path / "ledger.sqlite3"), str(tmp_path / "new.sqlite3"))
    migrated = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert "alembic" in migrated.stdout

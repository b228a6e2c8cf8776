"""The ``sql`` connector on real SQLite, PostgreSQL and MariaDB, on the demo SaaS schema of ``sandbox/appdb.py``.

The big schema (more than 100,000 rows, one subject with 10,002) is seeded once per database; tests that change
data seed their own copies. A worker killed mid-erasure is a real process, SIGKILLed while it erases, its journal
on file storage; the retry's report and the database it leaves are compared with a clean run's on an identical
database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import URL

from connectors.base import ExportJob, OperationJob, PermanentConnectorError, unexpected_remains
from connectors.config import ConfigFileError, build_connector, parse_config
from connectors.sql import SqlConnector, is_erased, keyed_hash, mask
from dsr.domain.model import RecordAction, Subject
from dsr.store import store_at
from dsr.store.journals import Journal, JournalStore
from sandbox import appdb
from sandbox.appdb import DEMO_MAP, HEAVY, PEOPLE, seed
from tests.harness import TEST_KEYRING
from tests.mariadb import mariadb_admin_url, mariadb_url  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
HASH_KEY = "test-hash-key"
BIG_FILLERS = 4300  # with the heavy subject: more than 100,000 rows
CAMILLE = Subject(PEOPLE[0].email)


def connector(url: str, *, batch_size: int = 500, name: str = "app") -> SqlConnector:
    config = parse_config(DEMO_MAP.replace('name = "app"', f'name = "{name}"\nbatch_size = {batch_size}'))
    built = build_connector(config.connectors[0], {appdb.URL_ENV: url, appdb.HASH_KEY_ENV: HASH_KEY})
    assert isinstance(built, SqlConnector)
    return built


# --- databases ----------------------------------------------------------------------------------------------


def _fresh(request: pytest.FixtureRequest, backend: str, tmp: Path) -> Iterator[str]:
    """A new empty database on ``backend``, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'app-{uuid.uuid4().hex[:8]}.sqlite3'}"
        return
    admin_url: URL = request.getfixturevalue("postgres_admin_url" if backend == "postgresql"
                                             else "mariadb_admin_url")
    name = f"dsr_app_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    quoted = f'"{name}"' if backend == "postgresql" else f"`{name}`"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quoted}"))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}" + (" WITH (FORCE)" if backend == "postgresql"
                                                                      else "")))
        admin.dispose()


BACKENDS = ["sqlite", "postgresql", "mariadb"]


@pytest.fixture(scope="module", params=BACKENDS)
def big_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The big schema, seeded once per database (read-only for the tests using it)."""
    for url in _fresh(request, request.param, tmp_path_factory.mktemp("big")):
        engine = create_engine(url)
        counts = seed(engine, fillers=BIG_FILLERS)
        engine.dispose()
        assert sum(counts.values()) > 100_000
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fresh_db(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Any]:
    """A factory of new empty databases on the test's backend."""
    made: list[Iterator[str]] = []

    def make() -> str:
        gen = _fresh(request, backend, tmp_path)
        made.append(gen)
        return next(gen)

    yield make
    for gen in made:
        for _ in gen:
            pass


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order: two databases that went through the same erasure compare equal."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
                    for t in appdb.metadata.sorted_tables}
    finally:
        engine.dispose()


# --- a sink that keeps what the export wrote, or only counts it ----------------------------------------------


class Writer:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.records: list[Mapping[str, Any]] = []
        self.written = 0
        self.bytes = 0

    @property
    def count(self) -> int:
        return len(self.records) if self.keep else self.written

    def write(self, record: Mapping[str, Any]) -> None:
        self.bytes += len(json.dumps(record))
        if self.keep:
            self.records.append(record)
        else:
            self.written += 1

    async def truncate(self, count: int) -> None:
        if self.keep:
            del self.records[count:]
        else:
            self.written = min(self.written, count)

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Sink:
    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.writers: dict[str, Writer] = {}
        self.provided: dict[str, bool] = {}

    async def open(self, system: str, dataset: str, *, provided: bool) -> Writer:
        self.provided[dataset] = provided
        return self.writers.setdefault(dataset, Writer(self.keep))


class Killed(Exception):
    """The worker dies here."""


# --- the map, when dsr.toml is loaded ------------------------------------------------------------------------


def _map_with(*replacements: tuple[str, str]) -> str:
    text_ = DEMO_MAP
    for old, new in replacements:
        assert old in text_, old
        text_ = text_.replace(old, new)
    return text_


@pytest.mark.parametrize(("replacements", "where", "says"), [
    ((('link = "document_id = documents.id"\n', ""),), "connectors[0].tables[4].link",
     "document_versions' has no path to the subject's table"),
    ((('link = "document_id = documents.id"', 'link = "document_id = ghosts.id"'),), "tables[4].link",
     "'ghosts' is not mapped"),
    ((('link = "user_id = users.id"\nerase = "delete"\ncolumns.id = { personal = false }\ncolumns.user_id',
       'link = "user_id = documents.id"\nerase = "delete"\ncolumns.id = { personal = false }\ncolumns.user_id'),
      ('link = "owner_id = users.id"', 'link = "owner_id = memberships.id"')),
     "tables[1].link", "links go round"),
    ((('columns.role = { category = "professional life" }', 'columns.role = { personal = true, category = "x", '
       'erase = "delete" }\ncolumns.extra = { category = "contact" }'), ('name = "memberships"\nlink = "user_id = '
       'users.id"\nerase = "delete"', 'name = "memberships"\nlink = "user_id = users.id"')),
     "tables[1].columns.user_id", "has no erasure strategy"),
    ((('columns.phone = { category = "contact", provided = true }', 'columns.phone = { provided = true }'),),
     "tables[0].columns.phone.category", "Art. 15 category"),
    ((('[connectors.tables.retention]              # then (once over): delete, the default\n', ""),
      ('legal_basis = "LCEN art. 6-II; décret 2021-1362 (connection data, 1 year)"\nyears = 1\ndate_column = "at"\n',
       "")), "tables[6].retention", "keeps columns: give its retention"),
    ((('columns.plan = { personal = false }', 'columns.plan = { category = "x", erase = "delete" }'),),
     "tables[2].erase", "never deleted with one subject"),
    ((('columns.user_id = { category = "identity", erase = "null" }\ncolumns.billing_name',
       'columns.user_id = { category = "identity", erase = "keep" }\ncolumns.billing_name'),),
     "tables[5].columns.user_id", "outlive the users rows"),
    ((('phone = "users.phone"', 'phone = "users.mobile"'),), "rectify.phone", "table.column"),
    ((('hash_key_env = "APP_HASH_KEY"\n', ""),), "connectors[0].hash_key_env", "required when a column is hashed"),
    ((('columns.created_at = { personal = false }\n\n[[connectors.tables]]\nname = "memberships"',
       'columns.created_at = { personal = false }\n\n[[connectors.tables]]\nname = "users"'),),
     "tables[1].name", "mapped twice"),
])
def test_a_map_that_cannot_work_stops_the_load_with_where_and_why(
        replacements: tuple[tuple[str, str], ...], where: str, says: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        parse_config(_map_with(*replacements), source="/etc/dsr/dsr.toml")
    message = str(err.value)
    assert message.startswith("/etc/dsr/dsr.toml: ") and where in message and says in message, message
    assert "\n" not in message


def test_sql_keys_belong_to_sql_connectors_and_the_url_comes_from_the_environment() -> None:
    with pytest.raises(ConfigFileError, match=r"connectors\[0\]\.url_env: only for type = \"sql\""):
        parse_config('[[connectors]]\ntype = "stripe"\ncredentials = { api_key = "K" }\nurl_env = "X"\n')
    with pytest.raises(ConfigFileError, match=r"connectors\[0\]\.url_env: missing"):
        parse_config(DEMO_MAP.replace('url_env = "APP_DATABASE_URL"\n', ""))
    config = parse_config(DEMO_MAP)
    with pytest.raises(ConfigFileError, match=r"APP_DATABASE_URL \(the database URL\) is not set"):
        build_connector(config.connectors[0], {appdb.HASH_KEY_ENV: HASH_KEY})
    with pytest.raises(ConfigFileError, match=r"APP_HASH_KEY \(the hash key\) is not set"):
        build_connector(config.connectors[0], {appdb.URL_ENV: "sqlite://"})


def test_dsr_config_check_stops_on_a_bad_map_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "dsr.toml"
    path.write_text(_map_with(('link = "document_id = documents.id"\n', "")))
    dsr = str(Path(sys.executable).with_name("dsr"))
    result = subprocess.run([dsr, "config", "check"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False,
                            env={**os.environ, "DSR_HOME": str(tmp_path), "DSR_CONFIG": str(path)})
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "no path to the subject" in lines[0] and "Traceback" not in lines[0], lines


def test_erased_values_are_recognised_so_a_retry_never_erases_twice() -> None:
    assert mask("camille.durand@example.org") == "c*************@*******.org"
    assert mask(mask("camille.durand@example.org")) == mask("camille.durand@example.org")
    assert mask("Camille") == "C******" and is_erased("mask", "C******") and not is_erased("mask", "Camille")
    digest = keyed_hash("k", " Camille.Durand@Example.org ")
    assert digest == keyed_hash("k", "camille.durand@example.org") != keyed_hash("other", "camille.durand@example.org")
    assert is_erased("hash", digest) and not is_erased("hash", "camille.durand@example.org")
    assert is_erased("null", None) and not is_erased("null", "x")


# --- check() against the live schema -------------------------------------------------------------------------


async def test_check_compares_the_map_with_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    engine = create_engine(url)
    seed(engine, heavy=False)
    app = connector(url)
    try:
        assert await app.check() == "connected (sqlite), 8 tables and 36 columns mapped"
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE users ADD COLUMN birth_date DATE"))
            conn.execute(text("ALTER TABLE newsletter_subscriptions RENAME COLUMN email TO address"))
        with pytest.raises(PermanentConnectorError) as err:
            await app.check()
        assert "column newsletter_subscriptions.email does not exist" in str(err.value)
        assert "table users: column(s) not in the map: birth_date" in str(err.value)
    finally:
        await app.aclose()
        engine.dispose()
    unreachable = connector(f"sqlite:///{tmp_path / 'missing' / 'app.sqlite3'}")
    with pytest.raises(PermanentConnectorError, match="app: the database refused to read the schema"):
        await unreachable.check()


# --- the big schema: locate, export ---------------------------------------------------------------------------


async def test_locate_finds_every_row_of_the_subject_by_email_in_any_case(big_db: str) -> None:
    app = connector(big_db)
    try:
        found = await app.locate(Subject(HEAVY.email.upper()))
        assert len(found) == appdb.rows_of(HEAVY)
        by_table: dict[str, int] = {}
        for loc in found:
            by_table[loc.dataset] = by_table.get(loc.dataset, 0) + 1
        assert by_table == {"users": 1, "memberships": 2, "documents": 2000, "document_versions": 4000,
                            "invoices": 998, "login_events": 3000, "newsletter_subscriptions": 1}
        assert await app.locate(Subject("nobody@example.org")) == []
    finally:
        await app.aclose()


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


async def test_the_heavy_export_streams_in_batches_in_bounded_memory(big_db: str) -> None:
    app = connector(big_db, batch_size=100)
    server_side: list[bool] = []

    @event.listens_for(app._engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            server_side.append(bool(getattr(context, "_is_server_side", False)))  # SQLAlchemy sets it per cursor

    sink = Sink(keep=False)
    checkpoints: list[dict[str, Any]] = []
    tracemalloc.start()
    rss_before = _rss()
    try:
        outcome = await app.export(ExportJob("dsr-2026-12-SQLEXP", Subject(HEAVY.email), sink,
                                             checkpoint=lambda c: checkpoints.append(dict(c))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await app.aclose()
    rss_growth = _rss() - rss_before
    exported = sum(w.bytes for w in sink.writers.values())
    assert outcome.counts == {"exported": appdb.rows_of(HEAVY) + 2}  # and the two organisations
    assert exported > 15_000_000
    # Python holds one batch at a time: far less than the export (all rows at once would exceed it).
    assert peak < exported / 4, (peak, exported)
    # The process's RSS also carries tracemalloc's own bookkeeping and SQLite's page cache (10.2 MB of growth for a
    # 19.8 MB export in one CI run): bounded by the export's size, which all rows held at once as Python objects
    # would exceed several times over.
    assert rss_growth < exported, (rss_growth, exported)
    # A checkpoint after every batch of 100 rows, and one at each table's end.
    assert len(checkpoints) == sum(-(-w.count // 100) for w in sink.writers.values()) + len(sink.writers)
    if app._engine.dialect.supports_server_side_cursors:  # PostgreSQL, MariaDB: a server-side cursor
        assert server_side and all(server_side)


async def test_an_export_resumed_from_its_checkpoint_writes_each_row_once(big_db: str) -> None:
    subject = Subject(HEAVY.email)
    clean = Sink()
    app = connector(big_db, batch_size=700)
    try:
        await app.export(ExportJob("dsr-2026-12-SQLRES", subject, clean))
        sink = Sink()
        checkpoints: list[dict[str, Any]] = []

        def dies_at_the_ninth(cursor: Mapping[str, Any]) -> None:
            checkpoints.append(json.loads(json.dumps(cursor)))  # as Temporal's heartbeat details carry it
            if len(checkpoints) == 9:
                sink.writers["document_versions"].write({"half": "written after the checkpoint"})
                raise Killed

        with pytest.raises(Killed):
            await app.export(ExportJob("dsr-2026-12-SQLRES", subject, sink, checkpoint=dies_at_the_ninth))
        resumed = await app.export(ExportJob("dsr-2026-12-SQLRES", subject, sink, resume=checkpoints[-1]))
    finally:
        await app.aclose()
    assert {name: w.records for name, w in sink.writers.items()} == {
        name: w.records for name, w in clean.writers.items()}
    assert resumed.counts == {"exported": appdb.rows_of(HEAVY) + 2}
    ids = [r["id"] for r in sink.writers["document_versions"].records]
    assert len(ids) == len(set(ids)) == 4000


async def test_portability_exports_only_what_the_subject_provided(big_db: str) -> None:
    sink = Sink()
    app = connector(big_db)
    try:
        outcome = await app.export(ExportJob("dsr-2026-12-SQLPOR", CAMILLE, sink, provided_only=True))
    finally:
        await app.aclose()
    assert set(sink.writers) == {"users", "documents", "document_versions", "newsletter_subscriptions"}
    [user] = sink.writers["users"].records
    assert user == {"email": CAMILLE.email, "first_name": "Camille", "last_name": "Durand", "phone": user["phone"]}
    assert set(sink.writers["documents"].records[0]) == {"title", "body"}
    assert all(sink.provided.values())
    assert [d.dataset for d in outcome.datasets] == ["users", "documents", "newsletter_subscriptions",
                                                     "document_versions"]


# --- erasure ------------------------------------------------------------------------------------------------


async def test_erasure_deletes_anonymises_keeps_and_verifies(fresh_db: Any) -> None:
    url = fresh_db()
    engine = create_engine(url)
    seed(engine, fillers=30, heavy=False)
    before = dump(url)
    app = connector(url)
    try:
        outcome = await app.erase(OperationJob("dsr-2026-12-SQLERA", CAMILLE))
        remains = await app.locate(CAMILLE)
        assert unexpected_remains(outcome, remains) == []
        again = await app.erase(OperationJob("dsr-2026-12-SQLER2", CAMILLE))  # a later request: nothing left
    finally:
        await app.aclose()
    after = dump(url)
    actions = {(line.dataset, line.record_id): line for line in outcome.report}
    assert {line.action for line in outcome.report} <= {RecordAction.DELETED, RecordAction.ANONYMISED}
    assert actions[("users", "1")].action == RecordAction.DELETED and after["users"][0][0] != 1
    # Invoices: unlinked, the billing name and address kept under their legal basis, until the year's close + 10.
    invoice = before["invoices"][0]  # of this year: kept
    line = actions[("invoices", str(invoice[0]))]
    row = next(r for r in after["invoices"] if r[0] == invoice[0])
    assert row[1] is None and row[2:] == invoice[2:]
    assert line.action == RecordAction.ANONYMISED and "L123-22" in line.legal_basis
    assert line.retained_until is not None and (line.retained_until.month, line.retained_until.day) == (12, 31)
    assert line.retained_until.year >= date.today().year + 9
    # Login events: those of the last year kept unlinked, the older ones deleted (their year is over).
    recent, old = before["login_events"][:2]
    line = actions[("login_events", str(recent[0]))]
    assert line.action == RecordAction.ANONYMISED and line.legal_basis.startswith("LCEN")
    assert line.retained_until is not None and line.retained_until > date.today()
    assert next(r for r in after["login_events"] if r[0] == recent[0])[1:] == (None, *recent[2:])
    line = actions[("login_events", str(old[0]))]
    assert (line.action, line.note) == (RecordAction.DELETED, "retention period over")
    assert all(r[0] != old[0] for r in after["login_events"])
    # The subscription stays as a keyed hash (a suppression list).
    assert after["newsletter_subscriptions"][0][1] == keyed_hash(HASH_KEY, CAMILLE.email)
    assert actions[("newsletter_subscriptions", "1")].action == RecordAction.ANONYMISED
    assert after["organisations"] == before["organisations"]
    others = [r for r in before["documents"] if r[1] != 1]
    assert [r for r in after["documents"] if r[1] != 1] == others  # nobody else's rows touched
    assert again.counts == {"already_gone": 1}
    engine.dispose()


@pytest.mark.slow  # two whole erasures of the heavy subject, batch by batch
async def test_an_erasure_whose_journal_record_is_lost_after_the_commit_redoes_nothing(
        fresh_db: Any, tmp_path: Path) -> None:
    """Each transaction commits, then the worker dies before journaling it (here at the third batch): the retry
    sees the rows gone or already erased and reports them as this request's, as a clean run does."""
    clean_url, url = fresh_db(), fresh_db()
    for target in (clean_url, url):
        engine = create_engine(target)
        seed(engine, fillers=10)
        engine.dispose()
    subject = Subject(HEAVY.email)
    clean_app = connector(clean_url, batch_size=1000)
    clean = await clean_app.erase(OperationJob("dsr-2026-12-SQLJNL", subject))
    await clean_app.aclose()

    journals = JournalStore(store_at(f"file://{tmp_path / 'storage'}"), TEST_KEYRING)
    applied: list[int] = []

    class DiesAfterTheThirdCommit(SqlConnector):
        def _apply(self, t: Any, batch: Any) -> None:
            super()._apply(t, batch)
            applied.append(len(batch))
            if len(applied) == 3:
                raise Killed

    first = connector(url, batch_size=1000)
    first.__class__ = DiesAfterTheThirdCommit
    with pytest.raises(Killed):
        await first.erase(OperationJob("dsr-2026-12-SQLJNL", subject,
                                       journal=journals.journal("dsr-2026-12-SQLJNL", "app")))
    await first.aclose()
    state = await journals.journal("dsr-2026-12-SQLJNL", "app").state()
    assert len(state.done) < appdb.rows_of(HEAVY) and len(state.pending) > 1000  # died half-way

    retry = connector(url, batch_size=1000)
    retried = await retry.erase(OperationJob("dsr-2026-12-SQLJNL", subject,
                                             journal=journals.journal("dsr-2026-12-SQLJNL", "app")))
    assert unexpected_remains(retried, await retry.locate(subject)) == []
    await retry.aclose()
    assert retried.report == clean.report and retried.counts == clean.counts
    assert "already_gone" not in retried.counts
    assert dump(url) == dump(clean_url)  # nothing hashed twice, nothing left half-erased


KILLED_WORKER = """
import asyncio, sys
from connectors.base import OperationJob
from dsr.domain.model import Subject
from dsr.store import store_at
from dsr.store.journals import JournalStore
from tests.connectors.test_sql import connector
from tests.harness import TEST_KEYRING

url, storage, email = sys.argv[1:4]
journal = JournalStore(store_at(storage), TEST_KEYRING).journal("dsr-2026-12-SQLKIL", "app")
asyncio.run(connector(url, batch_size=100).erase(OperationJob("dsr-2026-12-SQLKIL", Subject(email), journal=journal)))
print("finished")
"""


@pytest.mark.slow  # a worker process killed mid-erasure, and the two whole erasures around it
async def test_a_worker_killed_mid_erasure_leaves_nothing_half_erased_after_the_retry(
        fresh_db: Any, tmp_path: Path) -> None:
    clean_url, url = fresh_db(), fresh_db()
    for target in (clean_url, url):
        engine = create_engine(target)
        seed(engine, fillers=10)
        engine.dispose()
    subject = Subject(HEAVY.email)
    clean_app = connector(clean_url, batch_size=100)
    clean = await clean_app.erase(OperationJob("dsr-2026-12-SQLKIL", subject))
    await clean_app.aclose()

    storage = f"file://{tmp_path / 'storage'}"
    folder = tmp_path / "storage" / "journals" / "dsr-2026-12-sqlkil" / "app"
    worker = await asyncio.create_subprocess_exec(sys.executable, "-c", KILLED_WORKER, url, storage, subject.email,
                                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.returncode is None:  # the plan, then some 20 batches
        if folder.is_dir() and len(list(folder.glob("*.entry"))) >= 22:
            break
        await asyncio.sleep(0.005)
    assert worker.returncode is None, await worker.communicate()  # still erasing: killed in the middle
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    journals = JournalStore(store_at(storage), TEST_KEYRING)
    state = await journals.journal("dsr-2026-12-SQLKIL", "app").state()
    assert state.pending and state.done  # part done, part still to do

    retry = connector(url, batch_size=100)
    retried = await retry.erase(OperationJob("dsr-2026-12-SQLKIL", subject,
                                             journal=journals.journal("dsr-2026-12-SQLKIL", "app")))
    assert unexpected_remains(retried, await retry.locate(subject)) == []
    await retry.aclose()
    assert retried.report == clean.report and retried.counts == clean.counts
    assert dump(url) == dump(clean_url)


# --- rectification ------------------------------------------------------------------------------------------


async def test_rectification_changes_the_mapped_columns_once(fresh_db: Any) -> None:
    url = fresh_db()
    engine = create_engine(url)
    seed(engine, heavy=False)
    engine.dispose()
    app = connector(url)
    journal = Journal()
    changes = {"email": "camille.martin@example.org", "last_name": "Martin", "postcode": "75002"}
    try:
        done = await app.rectify(OperationJob("dsr-2026-12-SQLREC", CAMILLE, changes=changes, journal=journal))
        retried = await app.rectify(OperationJob("dsr-2026-12-SQLREC", CAMILLE, changes=changes, journal=journal))
        later = await app.rectify(OperationJob("dsr-2026-12-SQLRE2", Subject("camille.martin@example.org"),
                                               changes=changes))
        found = await app.locate(Subject("CAMILLE.MARTIN@example.org"))
    finally:
        await app.aclose()
    assert [(line.dataset, line.record_id, line.action, line.fields) for line in done.report] == [
        ("newsletter_subscriptions", "1", RecordAction.CHANGED, ["email"]),
        ("users", "1", RecordAction.CHANGED, ["email", "last_name"])]
    assert retried.report == done.report  # the journal: reported as changed by this request
    assert later.counts == {"unchanged": 2}
    assert done.notes == ["ignored field(s) this database does not hold: postcode"]
    assert len(found) == appdb.rows_of(PEOPLE[0])
    assert dump(url)["users"][0][1:4] == ("camille.martin@example.org", "Camille", "Martin")


async def test_already_up_to_date_only_when_the_row_holds_exactly_the_new_value(fresh_db: Any) -> None:
    url = fresh_db()
    engine = create_engine(url)
    seed(engine, heavy=False)
    with engine.begin() as conn:  # a stray space kept by the application
        conn.execute(text("UPDATE users SET last_name = 'Durand ' WHERE email = 'camille.durand@example.org'"))
    engine.dispose()
    app = connector(url)
    try:
        spaced = await app.rectify(OperationJob("dsr-2026-12-SQLSP1", CAMILLE, changes={"last_name": "Durand"}))
        equal = await app.rectify(OperationJob("dsr-2026-12-SQLSP2", CAMILLE,
                                               changes={"last_name": "Durand", "first_name": "Camille"}))
        cased = await app.rectify(OperationJob("dsr-2026-12-SQLSP3", CAMILLE, changes={"first_name": "CAMILLE"}))
    finally:
        await app.aclose()
    assert [(line.dataset, line.action, line.fields) for line in spaced.report] == [
        ("users", RecordAction.CHANGED, ["last_name"])]
    assert [(line.dataset, line.action, line.fields) for line in equal.report] == [
        ("users", RecordAction.UNCHANGED, ["first_name", "last_name"])]
    assert [(line.dataset, line.action, line.fields) for line in cased.report] == [
        ("users", RecordAction.CHANGED, ["first_name"])]
    assert dump(url)["users"][0][1:4] == ("camille.durand@example.org", "CAMILLE", "Durand")


async def test_a_row_an_earlier_attempt_erased_and_now_gone_is_reported_erased_by_this_request(
    fresh_db: Any, storage_url: str
) -> None:
    from temporalio.testing import ActivityEnvironment

    from activities.connectors import ConnectorActivities
    from dsr.domain.model import ConnectorTask, RecordReport, RequestKind
    from dsr.store.exports import ExportStore
    from dsr.store.journals import JournalEntry

    url = fresh_db()
    engine = create_engine(url)
    seed(engine, heavy=False)
    request = "dsr-2026-12-SQLJRN"
    # The journal of an earlier attempt of this request: it set out to anonymise Camille's invoice 1, and died.
    journals = JournalStore(store_at(storage_url), TEST_KEYRING)
    await journals.journal(request, "app").intend([JournalEntry(RecordReport(
        "invoices", "1", RecordAction.ANONYMISED, legal_basis="Code de commerce L123-22"))])
    with engine.begin() as conn:  # since then the row went; invoice 2 went without this request ever touching it
        conn.execute(text("DELETE FROM invoices WHERE id IN (1, 2)"))
    engine.dispose()
    activities = ConnectorActivities([connector(url)], ExportStore(store_at(storage_url), TEST_KEYRING))
    outcome = await ActivityEnvironment().run(activities.run_connector, ConnectorTask(
        request_id=request, connector="app", kind=RequestKind.ERASURE, subject=CAMILLE))
    invoices = [(line.record_id, line.action) for line in outcome.report if line.dataset == "invoices"]
    assert invoices == [("1", RecordAction.DELETED)]  # erased by this request; invoice 2 was never its business
    assert "already_gone" not in outcome.counts



# --- restriction (Art. 18) ----------------------------------------------------------------------------------


async def test_restriction_sets_the_mapped_column_verified_and_lifting_clears_it(fresh_db: Any) -> None:
    url = fresh_db()
    engine = create_engine(url)
    seed(engine, heavy=False)  # users.restricted_at: the application's "restricted since", NULL when not restricted
    engine.dispose()
    app = connector(url)  # the demo map names it: restriction = "users.restricted_at"
    job = OperationJob("dsr-2026-12-SQLRST", Subject(CAMILLE.email.upper()))
    try:
        assert "restriction mark" not in await app.check()  # the column is the mark, not an unmapped column
        marked = await app.restrict(job)
        again = await app.restrict(job)
        with create_engine(url).connect() as conn:
            rows = conn.execute(text("SELECT email, restricted_at FROM users ORDER BY id")).all()
        exported = await app.locate(CAMILLE)  # storage goes on: the engine still finds and exports the data
        lifted = await app.lift_restriction(job)
        with create_engine(url).connect() as conn:
            after = conn.execute(text("SELECT restricted_at FROM users WHERE id = 1")).scalar()
    finally:
        await app.aclose()
    assert [(r.dataset, r.record_id, r.action, r.fields) for r in marked.report] == [
        ("users", "1", RecordAction.RESTRICTED, ["restricted_at"])]
    assert again.counts == {"unchanged": 1}
    assert rows[0][1] is not None and all(value is None for _, value in rows[1:])  # only the subject's row
    assert len(exported) == appdb.rows_of(PEOPLE[0])
    assert [(r.record_id, r.action) for r in lifted.report] == [("1", RecordAction.LIFTED)] and after is None


async def test_without_a_restriction_column_the_operator_restricts_by_hand(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    unmarked = "\n".join(line for line in DEMO_MAP.splitlines() if not line.startswith("restriction = "))
    app = build_connector(parse_config(unmarked).connectors[0], {appdb.URL_ENV: url, appdb.HASH_KEY_ENV: HASH_KEY})
    assert isinstance(app, SqlConnector)
    try:
        outcome = await app.restrict(OperationJob("dsr-2026-12-SQLRS2", CAMILLE))
    finally:
        await app.aclose()
    assert [(r.action, r.record_id) for r in outcome.report] == [(RecordAction.RESIDUAL, "*")]
    assert "cannot mark a record restricted" in outcome.report[0].note


async def test_set_values_take_the_types_the_database_gives_its_columns(fresh_db: Any) -> None:
    """A withdrawal's ``set`` values are typed from the schema the database reports, not guessed from the text:
    "false" is a boolean in a BOOLEAN column (0 in MariaDB's TINYINT(1)) and stays the text "false" in a VARCHAR,
    "007" stays "007" in a VARCHAR, a number in an INTEGER column; a value a column cannot hold, or a column the
    table lacks, is one error for the operator, with nothing written."""
    from dsr.domain.model import ConsentAction

    url = fresh_db()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE consent_flags (id INTEGER PRIMARY KEY, email VARCHAR(254) NOT NULL, "
                          "opt_in BOOLEAN NOT NULL, opt_in_text VARCHAR(10) NOT NULL, code VARCHAR(10) NOT NULL, "
                          "level INTEGER NOT NULL, since DATE NULL)"))
        conn.execute(text("INSERT INTO consent_flags (id, email, opt_in, opt_in_text, code, level) VALUES "
                          "(1, :camille, TRUE, 'true', 'A1', 3), (2, 'someone@example.org', TRUE, 'true', 'A1', 3)"),
                     {"camille": CAMILLE.email.upper()})
    app = connector(url)
    action = ConsentAction(purpose="newsletter", table="consent_flags", email_column="email",
                           set_values={"opt_in": "false", "opt_in_text": "false", "code": "007", "level": "0",
                                       "since": "2026-12-05"})
    job = OperationJob("dsr-2026-12-SQLSET", CAMILLE, consent=[action])
    try:
        done = await app.withdraw_consent(job)
        again = await app.withdraw_consent(job)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT opt_in, opt_in_text, code, level, since FROM consent_flags "
                                     "ORDER BY id")).all()
        for bad, said in (({"level": "none"}, "consent_flags.level = 'none', which its type"),
                          ({"opt_in": "maybe"}, "consent_flags.opt_in = 'maybe', which its type"),
                          ({"opted": "false"}, "sets opted, which consent_flags does not have")):
            wrong = ConsentAction(purpose="newsletter", table="consent_flags", set_values=bad)
            with pytest.raises(PermanentConnectorError, match=said):
                await app.withdraw_consent(OperationJob("dsr-2026-12-SQLSET", CAMILLE, consent=[wrong]))
        with pytest.raises(PermanentConnectorError, match="table nope does not exist"):
            await app.withdraw_consent(OperationJob("dsr-2026-12-SQLSET", CAMILLE, consent=[
                ConsentAction(purpose="newsletter", table="nope", set_values={"a": "1"})]))
        with engine.connect() as conn:
            unchanged = conn.execute(text("SELECT opt_in, level FROM consent_flags WHERE id = 1")).one()
    finally:
        await app.aclose()
        engine.dispose()
    assert [(r.record_id, r.action) for r in done.report] == [("newsletter", RecordAction.WITHDRAWN)]
    assert [r.action for r in again.report] == [RecordAction.UNCHANGED]  # compared as the columns hold them
    # As each database gives them back to plain SQL (SQLite: 0 and the ISO text; MariaDB: 0 from its TINYINT).
    opt_in, opt_in_text, code, level, since = rows[0]
    assert (bool(opt_in), opt_in_text, code, level, str(since)) == (False, "false", "007", 0, "2026-12-05")
    assert opt_in in (False, 0) and not isinstance(opt_in, str)
    assert (bool(rows[1][0]), *rows[1][1:4]) == (True, "true", "A1", 3)  # another person's row untouched
    assert (bool(unchanged[0]), unchanged[1]) == (False, 0)  # the refused actions wrote nothing

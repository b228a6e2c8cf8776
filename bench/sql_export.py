"""Benchmark: the ``sql`` connector on PostgreSQL, with the demo SaaS schema (``sandbox/appdb.py``).

Prints:
- the export of the heavy subject (10,002 rows, about 20 MB of document text) into the encrypted export store,
  against a bare ``SELECT`` of the same rows (the same statements, fetched and dropped): the ratio, medians of
  several runs (the machine is shared and noisy);
- the erasure of the same subject (its journal on file storage, as the worker keeps it): seconds per 10,000 rows.

PostgreSQL: ``DSR_BENCH_POSTGRES_URL`` (a server where databases may be created), else a throwaway cluster as the
tests start it (``scripts/ensure-postgres``). Run: ``.venv/bin/python bench/sql_export.py [--runs 3]
[--fillers 4300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, make_url, text  # noqa: E402
from sqlalchemy.engine import URL  # noqa: E402

from connectors.base import ExportJob, OperationJob  # noqa: E402
from connectors.config import build_connector, parse_config  # noqa: E402
from connectors.sql import SqlConnector  # noqa: E402
from dsr.domain.model import Subject  # noqa: E402
from dsr.store import store_at  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.exports import ExportStore  # noqa: E402
from dsr.store.journals import JournalStore  # noqa: E402
from sandbox import appdb  # noqa: E402


@contextmanager
def postgres() -> Iterator[URL]:
    given = os.environ.get("DSR_BENCH_POSTGRES_URL")
    if given:
        url = make_url(given)
        yield url.set(drivername="postgresql+psycopg") if url.drivername in ("postgresql", "postgres") else url
        return
    from tests.conftest import _Cluster, _postgres_bindir
    from tests.harness import wait_for_database

    bindir = _postgres_bindir()
    if bindir is None:
        sys.exit("error: PostgreSQL is not installed (scripts/ensure-postgres) and DSR_BENCH_POSTGRES_URL is not set")
    cluster = _Cluster(bindir)
    try:
        cluster.start()
        wait_for_database(cluster.url())
        yield cluster.url()
    finally:
        cluster.stop()


@contextmanager
def database(admin_url: URL, fillers: int) -> Iterator[str]:
    name = f"dsr_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(url)
        counts = appdb.seed(engine, fillers=fillers)
        engine.dispose()
        print(f"seeded {sum(counts.values()):,} rows ({name})")
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def connector(url: str) -> SqlConnector:
    config = parse_config(appdb.DEMO_MAP)
    built = build_connector(config.connectors[0], {appdb.URL_ENV: url, appdb.HASH_KEY_ENV: "bench-hash-key"})
    assert isinstance(built, SqlConnector)
    return built


def bare_select(app: SqlConnector, email: str) -> int:
    """The connector's own statements, each row fetched and dropped: what the database and driver cost."""
    rows = 0
    with app._engine.connect() as conn:
        for t in app.map.tables:
            result = conn.execution_options(stream_results=True, yield_per=500).execute(
                app._select(t, Subject(email), [c.name for c in t.columns]))
            for partition in result.partitions(500):
                rows += len(partition)
    return rows


class _Discard:
    """A dataset writer that drops records: the connector's own cost, without the export store's."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, record: object) -> None:
        self.count += 1

    async def truncate(self, count: int) -> None:
        self.count = min(self.count, count)

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _DiscardSink:
    async def open(self, system: str, dataset: str, *, provided: bool) -> _Discard:
        return _Discard()


async def export_once(app: SqlConnector, store: ExportStore | None, email: str) -> int:
    request = f"dsr-2026-12-B{uuid.uuid4().hex[:5].upper()}"
    sink = store.sink(request) if store is not None else _DiscardSink()
    outcome = await app.export(ExportJob(request, Subject(email), sink))
    if store is not None:
        store.delete(request)
    return outcome.counts["exported"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fillers", type=int, default=4300)
    args = parser.parse_args()
    email = appdb.HEAVY.email
    with postgres() as admin_url, tempfile.TemporaryDirectory() as tmp:
        keyring = KeyRing.load_or_create(Path(tmp) / "keys.json")
        objects = store_at(f"file://{tmp}/storage")
        store = ExportStore(objects, keyring)
        with database(admin_url, args.fillers) as url:
            app = connector(url)
            bare_times, export_times, discard_times = [], [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                bare_rows = await asyncio.to_thread(bare_select, app, email)
                bare_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                exported = await export_once(app, store, email)
                export_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                await export_once(app, None, email)
                discard_times.append(time.perf_counter() - start)
            await app.aclose()
            bare, export = statistics.median(bare_times), statistics.median(export_times)
            discard = statistics.median(discard_times)
            print(f"export of the heavy subject: {exported:,} rows in {export:.2f} s; bare SELECT of the same "
                  f"{bare_rows:,} rows: {bare:.2f} s; ratio {export / bare:.1f}x (medians of {args.runs})")
            print(f"  of which the connector (records dropped instead of sealed and stored): {discard:.2f} s, "
                  f"ratio {discard / bare:.1f}x")
        with database(admin_url, 0) as url:
            app = connector(url)
            journal = JournalStore(objects, keyring).journal("dsr-2026-12-BERASE", "app")
            start = time.perf_counter()
            outcome = await app.erase(OperationJob("dsr-2026-12-BERASE", Subject(email), journal=journal))
            took = time.perf_counter() - start
            await app.aclose()
            rows = outcome.found
            print(f"erasure of the heavy subject: {rows:,} rows ({outcome.counts}) in {took:.2f} s: "
                  f"{took * 10_000 / rows:.2f} s per 10,000 rows")


if __name__ == "__main__":
    asyncio.run(main())

"""A SQLite ledger's writers of one process queue on a thread lock before SQLite's write lock
(``dsr.store.ledger._sqlite_engine``): whatever way a write transaction ends, the next writer gets through."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dsr.store.ledger import Ledger
from tests.harness import TEST_KEYRING

# Far below the busy timeout (30 s), after which a writer goes to SQLite's lock without the thread lock: a writer
# still waiting then means a lock that was never released.
PROMPTLY = 10.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING) as ledger:
        with ledger.engine.begin() as connection:
            connection.execute(text("CREATE TABLE tally (n INTEGER)"))
        yield ledger.engine.execution_options(dsr_write=True)


def write(engine: Engine, n: int) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO tally VALUES (:n)"), {"n": n})


def written(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT n FROM tally")).scalars())


def test_a_writer_waits_for_the_open_write_and_goes_once_it_commits(engine: Engine) -> None:
    holding = engine.connect()
    transaction = holding.begin()
    holding.execute(text("INSERT INTO tally VALUES (1)"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        second = pool.submit(write, engine, 2)
        with pytest.raises(concurrent.futures.TimeoutError):
            second.result(timeout=0.3)  # queued behind the open write
        transaction.commit()
        holding.close()
        second.result(timeout=PROMPTLY)
    assert written(engine) == [1, 2]


def test_a_write_that_fails_or_is_rolled_back_lets_the_next_writer_through(engine: Engine) -> None:
    for _ in range(3):
        with pytest.raises(ZeroDivisionError), engine.begin() as connection:
            connection.execute(text("INSERT INTO tally VALUES (9)"))
            raise ZeroDivisionError
        with engine.connect() as connection:
            transaction = connection.begin()
            connection.execute(text("INSERT INTO tally VALUES (8)"))
            transaction.rollback()
        with engine.connect() as connection:  # closed with its transaction open: rolled back
            connection.begin()
            connection.execute(text("INSERT INTO tally VALUES (7)"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(write, engine, 1).result(timeout=PROMPTLY)
    assert written(engine) == [1]


def test_many_threads_writing_at_once_each_write_once(engine: Engine) -> None:
    start = threading.Barrier(16)

    def writer(n: int) -> None:
        start.wait()
        for k in range(10):
            write(engine, n * 100 + k)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for done in [pool.submit(writer, n) for n in range(16)]:
            done.result(timeout=60)
    assert written(engine) == sorted(n * 100 + k for n in range(16) for k in range(10))

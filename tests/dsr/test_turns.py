"""Each person's line for their systems, in the ledger's database (dsr.store.turns): the rules, and two workers
deciding at the same instant on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from dsr.domain.model import SubjectQueueStatus, SubjectTurn, TurnAsk
from dsr.store.ledger import Ledger
from dsr.store.turns import SubjectLine, SubjectTurns, Tell
from tests.harness import TEST_KEYRING

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
QUEUE = "subject-0123456789abcdef0123456789abcdef"


def asked(request_id: str, minutes: int = 0, turn_round: int = 1) -> TurnAsk:
    return TurnAsk(request_id=request_id, received_at=T0 + timedelta(minutes=minutes), round=turn_round)


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[SubjectTurns, SubjectTurns]]:
    """Two workers' views of one database, each with its own engine (as on two machines)."""
    with Ledger(database_url, TEST_KEYRING) as one, Ledger(database_url, TEST_KEYRING) as other:
        yield SubjectTurns(one.engine), SubjectTurns(other.engine)


# --- the rules ---------------------------------------------------------------------------------------------


def test_a_request_alone_is_granted_at_once_and_nobody_else_is_told() -> None:
    line = SubjectLine()
    assert line.ask(asked("a")) == (SubjectTurn(holder="a", round=1), [])
    assert line.status() == SubjectQueueStatus(holder="a", waiting=[])


def test_the_earliest_received_goes_next_whatever_asked_first_and_the_others_are_told_whom_they_wait_for() -> None:
    line = SubjectLine()
    line.ask(asked("holder", 0))
    assert line.ask(asked("late", 30)) == (SubjectTurn(holder="holder", round=1), [])
    assert line.ask(asked("early", 10, turn_round=2)) == (SubjectTurn(holder="holder", round=2), [])
    assert line.release("holder", 1) == [Tell("early", SubjectTurn(holder="early", round=2)),
                                         Tell("late", SubjectTurn(holder="early", round=1))]
    assert line.status() == SubjectQueueStatus(holder="early", waiting=["late"])


def test_a_release_of_an_earlier_round_changes_nothing_and_a_holder_asking_again_still_holds() -> None:
    line = SubjectLine()
    line.ask(asked("a", turn_round=1))
    line.ask(asked("b", 5))
    assert line.ask(asked("a", turn_round=2)) == (SubjectTurn(holder="a", round=2), [])
    # The first round's release, arriving late: nothing taken out, everyone told where they stand.
    assert line.release("a", 1) == [Tell("a", SubjectTurn(holder="a", round=2)),
                                    Tell("b", SubjectTurn(holder="a", round=1))]
    assert line.status() == SubjectQueueStatus(holder="a", waiting=["b"])
    assert line.release("b", 1) == []  # a waiting request withdrawn: nobody's answer changed
    assert line.release("a", 2) == []
    assert line.idle


def test_a_release_run_again_tells_the_next_holder_again() -> None:
    """A give-back run again (a local activity after a lost workflow task: its attempt is 1 again) finds its
    change made: the request it granted may never have been told, so everyone in line is."""
    line = SubjectLine()
    line.ask(asked("a"))
    line.ask(asked("b", 5))
    line.ask(asked("c", 10))
    granted = line.release("a", 1)
    assert granted[0] == Tell("b", SubjectTurn(holder="b", round=1))
    assert line.release("a", 1) == granted  # the same answers, to the same requests


def test_a_late_ask_of_an_earlier_round_changes_nothing_and_an_ask_already_in_line_tells_everyone() -> None:
    line = SubjectLine()
    line.ask(asked("a", turn_round=2))
    line.ask(asked("b", 5))
    line.ask(asked("c", 10))
    assert line.ask(asked("a", turn_round=1)) == (SubjectTurn(holder="a", round=1), [])  # a late retry of round 1
    assert line.holder == asked("a", turn_round=2)
    # The same ask again (a retry whose first attempt committed): everyone else hears where they stand.
    assert line.ask(asked("b", 5)) == (SubjectTurn(holder="a", round=1), [
        Tell("a", SubjectTurn(holder="a", round=2)), Tell("c", SubjectTurn(holder="a", round=1))])


def test_a_line_survives_its_storage() -> None:
    line = SubjectLine()
    line.ask(asked("a"))
    line.ask(asked("b", 5, turn_round=3))
    again = SubjectLine.from_json(line.to_json())
    assert again == line
    assert again.waiting[0].received_at == T0 + timedelta(minutes=5)


# --- stored, shared by workers ----------------------------------------------------------------------------


def test_two_workers_asking_at_the_same_instant_grant_the_turn_once(
        replicas: tuple[SubjectTurns, SubjectTurns]) -> None:
    count = 8
    barrier = threading.Barrier(count)

    def ask(i: int) -> str:
        barrier.wait()
        answer, _ = replicas[i % 2].ask(QUEUE, asked(f"req-{i}", i))
        return answer.holder

    with ThreadPoolExecutor(count) as pool:
        holders = list(pool.map(ask, range(count)))
    granted = [f"req-{i}" for i, holder in enumerate(holders) if holder == f"req-{i}"]
    assert len(granted) == 1, holders
    assert set(holders) == set(granted)  # every other one was told who holds it
    status = replicas[1].status(QUEUE)
    assert status.holder == granted[0] and len(status.waiting) == count - 1
    # Releases go through the other worker: each grants the earliest received of those left.
    order = [status.holder]
    while True:
        current = replicas[0].status(QUEUE).holder
        if not current:
            break
        tells = replicas[len(order) % 2].release(QUEUE, current, 1)
        if tells:
            assert tells[0].turn.holder == tells[0].request_id  # the new holder is told first
            order.append(tells[0].request_id)
    assert order[1:] == sorted(order[1:], key=lambda r: int(r.split("-")[1]))


def test_workers_taking_and_giving_back_one_person_s_turn_never_hold_it_together(
        replicas: tuple[SubjectTurns, SubjectTurns]) -> None:
    """Asks, re-asks and releases from two workers at once, the row deleted and made again as the line empties and
    fills: at no time do two requests believe they hold the turn."""
    holding: set[str] = set()
    lock = threading.Lock()
    clashes: list[tuple[str, set[str]]] = []

    def request(n: int) -> int:
        turns = replicas[n % 2]
        taken = 0
        for turn_round in range(1, 6):
            me = TurnAsk(request_id=f"req-{n}", received_at=T0 + timedelta(seconds=n), round=turn_round)
            while turns.ask(QUEUE, me)[0].holder != me.request_id:
                pass  # asked again until granted (the signal's stand-in): an ask already in line
            with lock:
                if holding:
                    clashes.append((me.request_id, set(holding)))
                holding.add(me.request_id)
            time.sleep(0.001)  # in the systems
            with lock:
                holding.discard(me.request_id)
            turns.release(QUEUE, me.request_id, turn_round)
            taken += 1
        return taken

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(request, range(6))) == 30
    assert clashes == []
    assert replicas[0].status(QUEUE) == SubjectQueueStatus(holder="", waiting=[])


def test_an_empty_line_leaves_no_row(replicas: tuple[SubjectTurns, SubjectTurns], database_url: str) -> None:
    one, other = replicas
    one.ask(QUEUE, asked("a"))
    one.ask("subject-other", asked("x"))
    assert other.release(QUEUE, "a", 1) == []
    assert other.release(QUEUE, "a", 1) == []  # a retried release: nothing left to do
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            keys = [row[0] for row in connection.execute(text("SELECT key FROM subject_turns"))]
    finally:
        engine.dispose()
    assert keys == ["subject-other"]
    assert one.status(QUEUE) == SubjectQueueStatus(holder="", waiting=[])

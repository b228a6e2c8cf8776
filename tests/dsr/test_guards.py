"""The intake's shared counters (``dsr.store.guards``) on SQLite (a file) and PostgreSQL (a real server): two
``Guards``, each on its own ``Ledger`` engine like two intake replicas, decide concurrently and allow exactly
what one would."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, make_url, text

from dsr.store.crypto import KeyRing
from dsr.store.guards import AttemptLimits, Guards, RateWindow
from dsr.store.ledger import Ledger

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
LIMITS = AttemptLimits(max_attempts=5, lockout=timedelta(minutes=15), max_client_attempts=30)
T = TypeVar("T")


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def replicas(database_url: str, ring: KeyRing) -> Iterator[tuple[Guards, Guards]]:
    """Two replicas' guards: two ledgers (two engines, two connection pools) on one database."""
    with Ledger(database_url, ring) as one, Ledger(database_url, ring) as other:
        yield Guards(one.engine, ring), Guards(other.engine, ring)


@pytest.fixture
def raw(database_url: str) -> Iterator[Callable[..., list[Any]]]:
    url = make_url(database_url)
    engine = create_engine(url.set(drivername="postgresql+psycopg") if url.drivername.startswith("postgres") else url)

    def query(sql: str) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))

    yield query
    engine.dispose()


def together(count: int, call: Callable[[int], T]) -> list[T]:
    """``call(i)`` for ``count`` threads released at the same instant."""
    barrier = threading.Barrier(count)

    def run(i: int) -> T:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_a_rate_limit_allows_exactly_its_limit_under_concurrency(replicas: tuple[Guards, Guards]) -> None:
    key = f"address:{replicas[0].client_key('203.0.113.7')}"
    window = [RateWindow("address", key, 20, timedelta(hours=1))]
    answers = together(35, lambda i: replicas[i % 2].hit(window, T0 + timedelta(milliseconds=i)))
    assert sum(answer is None for answer in answers) == 20
    refused = [answer for answer in answers if answer is not None]
    assert len(refused) == 15 and all(r.scope == "address" and 0 < r.retry_after <= 3600 for r in refused)
    # The window slides: the first hits leave it an hour later, one slot each.
    assert replicas[1].hit(window, T0 + timedelta(minutes=59)) is not None
    assert replicas[1].hit(window, T0 + timedelta(hours=1, milliseconds=40)) is None


def test_a_full_window_records_nothing_in_the_others(replicas: tuple[Guards, Guards]) -> None:
    one, other = replicas
    client = RateWindow("address", "address:a", 2, timedelta(hours=1))
    subject = RateWindow("subject", "subject:s", 5, timedelta(days=1))
    assert one.hit([client, subject], T0) is None
    assert other.hit([client, subject], T0 + timedelta(seconds=1)) is None
    refused = one.hit([client, subject], T0 + timedelta(seconds=10))
    assert refused is not None and refused.scope == "address" and refused.retry_after == 3600 - 10
    # The refused submission did not count for the subject: 3 more fit in its window of 5.
    others = [RateWindow("address", f"address:{i}", 2, timedelta(hours=1)) for i in range(4)]
    assert [other.hit([w, subject], T0 + timedelta(seconds=20)) is None for w in others] == [True, True, True, False]


def test_wrong_answers_split_over_two_replicas_lock_after_exactly_the_limit(replicas: tuple[Guards, Guards]) -> None:
    verdicts = together(20, lambda i: replicas[i % 2].judge(
        "verify", "dsr-2026-11-7KQ3FJ", f"198.51.100.{i}", T0, right=False, limits=LIMITS))
    assert Counter(v.outcome for v in verdicts) == {"wrong": 5, "locked": 15}
    # Locked for everyone, even with the right answer, for exactly the lockout; then a fresh set of attempts.
    right = replicas[0].judge("verify", "dsr-2026-11-7KQ3FJ", "192.0.2.1", T0 + timedelta(minutes=5), right=True,
                              limits=LIMITS)
    assert right.locked and right.wait == timedelta(minutes=10)
    assert replicas[1].wait("verify", "dsr-2026-11-7KQ3FJ", "192.0.2.9", T0) == timedelta(minutes=15)
    assert replicas[1].judge("verify", "dsr-2026-11-7KQ3FJ", "192.0.2.1", T0 + timedelta(minutes=15), right=True,
                             limits=LIMITS).outcome == "right"
    # Another scope is another counter.
    assert replicas[0].judge("exports", "dsr-2026-11-7KQ3FJ", "192.0.2.1", T0, right=False,
                             limits=LIMITS).outcome == "wrong"


def test_a_made_up_reference_is_counted_for_its_client_only(replicas: tuple[Guards, Guards],
                                                            raw: Callable[..., list[Any]]) -> None:
    one, other = replicas

    def guess(guards: Guards, client: str) -> str:
        return guards.judge("verify", "dsr-2026-11-ZZZZZZ", client, T0, right=False, limits=LIMITS,
                            tracked=False).outcome

    assert [guess((one, other)[i % 2], "192.0.2.7") for i in range(6)] == ["wrong"] * 5 + ["locked"]
    assert guess(other, "192.0.2.8") == "wrong"  # someone else typing it is not locked out
    keys = [row[0] for row in raw("SELECT key FROM attempt_limits")]
    assert not any("ZZZZZZ" in key or "192.0.2" in key for key in keys), keys  # hashed, never the reference or address
    assert sum(key.startswith("verify:guess:") for key in keys) == 2


def test_a_client_gets_a_bounded_number_of_wrong_answers_whatever_the_references(
    replicas: tuple[Guards, Guards],
) -> None:
    outcomes = [replicas[i % 2].judge("verify", f"dsr-2026-11-Y{i:05d}", "192.0.2.66", T0, right=False,
                                      limits=LIMITS, tracked=i % 3 == 0).outcome for i in range(31)]
    assert outcomes == ["wrong"] * 30 + ["locked"]
    assert replicas[0].wait("verify", "dsr-2026-11-AAAAAA", "192.0.2.66", T0) == LIMITS.lockout


def test_a_replayed_signature_is_refused_by_the_other_replica(replicas: tuple[Guards, Guards]) -> None:
    keep = timedelta(minutes=10)
    firsts = together(12, lambda i: replicas[i % 2].first_delivery(b"sig-1", T0, keep=keep))
    assert firsts.count(True) == 1
    assert replicas[0].first_delivery(b"sig-2", T0, keep=keep) is True
    assert replicas[1].first_delivery(b"sig-1", T0 + keep - timedelta(seconds=1), keep=keep) is False
    assert replicas[1].first_delivery(b"sig-1", T0 + keep, keep=keep) is True  # remembered as long as needed only


def test_expired_rows_are_purged_in_bounded_batches_and_live_ones_kept(
    database_url: str, ring: KeyRing, raw: Callable[..., list[Any]]
) -> None:
    ledger = Ledger(database_url, ring)
    one = Guards(ledger.engine, ring, purge_every=timedelta(days=365))  # only the purges this test asks for
    for i in range(7):
        one.first_delivery(f"old-{i}".encode(), T0, keep=timedelta(minutes=1))
    one.hit([RateWindow("address", "address:x", 5, timedelta(minutes=30))], T0)
    one.judge("exports", "dsr-2026-11-AAAAAA", "192.0.2.1", T0, right=False, limits=LIMITS)
    later = T0 + timedelta(minutes=20)  # signatures and the attempt window are over; the rate window is not
    one.first_delivery(b"fresh", later, keep=timedelta(minutes=10))
    assert one.purge(later, batch=3) == 3 + 2  # at most 3 a table: 3 signatures, the 2 attempt rows
    assert one.purge(later, batch=3) == 3
    assert one.purge(later, batch=3) == 1
    assert one.purge(later, batch=3) == 0
    assert [row[0] for row in raw("SELECT key FROM rate_limits")] == ["address:x"]
    assert len(raw("SELECT key FROM seen_signatures")) == 1
    assert raw("SELECT key FROM attempt_limits") == []
    ledger.close()


def test_rows_are_purged_as_the_guards_are_used(replicas: tuple[Guards, Guards],
                                                raw: Callable[..., list[Any]]) -> None:
    one, other = replicas
    for i in range(5):
        other.first_delivery(f"old-{i}".encode(), T0, keep=timedelta(minutes=1))
    assert len(raw("SELECT key FROM seen_signatures")) == 5
    one.hit([RateWindow("address", "address:y", 5, timedelta(hours=1))], T0 + timedelta(minutes=5))
    assert len(raw("SELECT key FROM seen_signatures")) == 0  # no purge call: the hit did it


def test_client_addresses_are_stored_hashed(ring: KeyRing, tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}", ring) as ledger:
        guards = Guards(ledger.engine, ring)
        key = guards.client_key("203.0.113.7")
        assert "203.0.113" not in key and key == guards.client_key(" 203.0.113.7 ")
        assert key != Guards(ledger.engine, KeyRing.generate()).client_key("203.0.113.7")  # keyed


def test_the_lasting_cap_closes_a_request_once_under_concurrency_whatever_the_lockouts(
    replicas: tuple[Guards, Guards],
) -> None:
    """Issue 12: 20 wrong answers at once on two replicas, from many clients, with a cap of 10: exactly 10 are
    judged (the others wait on the lockout or find the request closed), exactly one of them closes it, and from
    then on even the right answer is refused, days later, on either replica; a right answer never resets it."""
    limits = AttemptLimits(max_attempts=1000, lockout=timedelta(minutes=15), max_client_attempts=1000, max_wrong=10)
    verdicts = together(20, lambda i: replicas[i % 2].judge(
        "verify", "dsr-2026-11-CAPPED", f"192.0.2.{i}", T0, right=False, limits=limits))
    outcomes = Counter(v.outcome for v in verdicts)
    assert outcomes == {"wrong": 10, "closed": 10}, outcomes
    assert sum(v.capped_now for v in verdicts) == 1
    assert replicas[0].wrong_answers("verify", "dsr-2026-11-CAPPED") == (10, True)
    later = T0 + timedelta(days=20)
    for guards in replicas:
        verdict = guards.judge("verify", "dsr-2026-11-CAPPED", "198.51.100.1", later, right=True, limits=limits)
        assert verdict.outcome == "closed" and not verdict.capped_now
    # Another page of the same request, and another request, are not affected; a right answer does not reset.
    assert replicas[1].wrong_answers("exports", "dsr-2026-11-CAPPED") == (0, False)
    for _ in range(9):
        replicas[0].judge("verify", "dsr-2026-11-OTHERR", "198.51.100.2", T0, right=False, limits=limits)
    assert replicas[0].judge("verify", "dsr-2026-11-OTHERR", "198.51.100.2", T0, right=True,
                             limits=limits).outcome == "right"
    last = replicas[1].judge("verify", "dsr-2026-11-OTHERR", "198.51.100.3", T0, right=False, limits=limits)
    assert last.outcome == "wrong" and last.capped_now


def test_the_throttle_bounds_answers_per_client_and_overall(replicas: tuple[Guards, Guards]) -> None:
    from dsr.store.guards import AnswerThrottle

    throttle = AnswerThrottle(per_client=3, overall=5, window=timedelta(hours=1))
    client = [replicas[0].client_key(f"192.0.2.{n}") for n in range(3)]
    let = [replicas[n % 2].hit(throttle.windows("verify", client[0]), T0) is None for n in range(5)]
    assert let == [True, True, True, False, False]  # per client
    others = [replicas[n % 2].hit(throttle.windows("verify", client[1 + n % 2]), T0) for n in range(4)]
    assert [o is None for o in others] == [True, True, False, False]  # overall: 3 + 2 = 5
    refused = others[2]
    assert refused is not None and refused.scope == "everyone"
    assert replicas[0].hit(throttle.windows("exports", client[0]), T0) is None  # each page counted apart
    assert replicas[1].hit(throttle.windows("verify", client[2]), T0 + timedelta(hours=1, seconds=1)) is None


# --- vendors' rate limits, shared by every worker ----------------------------------------------------------


def test_vendor_slots_are_shared_by_two_workers_and_never_exceed_the_limit(replicas: tuple[Guards, Guards]) -> None:
    # 5 calls per 10 s; 12 callers on two workers at the same instant: 5 go now, 5 at +10 s, 2 at +20 s.
    now = 1_000_000.0
    slots = sorted(together(12, lambda i: replicas[i % 2].reserve("hubspot", 5, 10.0, now=now)))
    assert [slot - now for slot in slots] == [0.0] * 5 + [10.0] * 5 + [20.0] * 2
    # Whatever the order, no 10-second window holds more than 5 slots.
    assert all(sum(1 for s in slots if start <= s < start + 10.0) <= 5 for start in slots)


def test_vendor_slots_slide_and_keys_are_separate(replicas: tuple[Guards, Guards]) -> None:
    one, other = replicas
    now = 2_000_000.0
    assert [one.reserve("woo", 2, 1.0, now=now) for _ in range(2)] == [now, now]
    assert other.reserve("woo", 2, 1.0, now=now + 0.25) == pytest.approx(now + 1.0)  # the first slot leaves at +1 s
    assert other.reserve("woo:search", 2, 1.0, now=now + 0.25) == now + 0.25  # another limit of the same account
    assert one.reserve("woo", 2, 1.0, now=now + 5.0) == now + 5.0  # the window has slid past every slot


def test_a_vendor_slot_is_taken_at_least_the_callers_lead_away(replicas: tuple[Guards, Guards]) -> None:
    """A caller that takes 0.2 s to get its answer would leave a slot taken at the instant of the reservation 0.2 s
    late: a free slot is taken that far ahead; a slot already further away than the lead is not moved."""
    one, other = replicas
    now = 2_500_000.0
    assert one.reserve("shop", 2, 1.0, lead=0.2, now=now) == now + 0.2
    assert other.reserve("shop", 2, 1.0, lead=0.2, now=now) == now + 0.2
    assert one.reserve("shop", 2, 1.0, lead=0.2, now=now) == pytest.approx(now + 1.2)  # one window after the first


def test_vendor_windows_are_kept_by_key_only(replicas: tuple[Guards, Guards], raw: Callable[..., list[Any]]) -> None:
    replicas[0].reserve("stripe-eu", 3, 1.0, now=3_000_000.0)
    rows = raw("SELECT key, hits FROM rate_limits WHERE key LIKE 'vendor:%'")
    assert [row[0] for row in rows] == ["vendor:stripe-eu"] and "3000000" in rows[0][1]


def test_one_slot_in_two_windows_is_free_in_both_and_recorded_in_both(replicas: tuple[Guards, Guards]) -> None:
    """A HubSpot search counts against the search limit and the account's: one time, the first free in both."""
    one, other = replicas
    now = 4_000_000.0
    general, search = ("crm", 3, 1.0), ("crm:search", 1, 0.5)
    assert one.reserve_together([general, search], now=now) == now
    # The search window is full until +0.5 s: the general window, with room, records +0.5 s too.
    assert other.reserve_together([general, search], now=now) == now + 0.5
    assert one.reserve("crm", 3, 1.0, now=now) == now  # a plain call fills the general window's third place now
    assert other.reserve_together([general, search], now=now) == now + 1.0  # the general one, full till +1 s
    # Twelve searches and twelve plain calls from two workers at once: every window holds its limit, at most.
    slots = together(24, lambda i: (i % 4 < 2, replicas[i % 2].reserve_together(
        [general, search] if i % 4 < 2 else [general], now=now + 10.0)))
    both = sorted(slot for joint, slot in slots if joint)
    every = sorted(slot for _, slot in slots)
    assert all(later - earlier >= 0.5 - 1e-6 for earlier, later in itertools.pairwise(both))
    assert all(later - earlier >= 1.0 - 1e-6 for earlier, later in zip(every, every[3:], strict=False))
    with pytest.raises(ValueError, match="each once"):
        one.reserve_together([general, general], now=now)

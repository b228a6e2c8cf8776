"""The audit ledger, on SQLite (a file) and on PostgreSQL (a real server; see tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from dsr.domain.model import (
    AuditEvent,
    Channel,
    Language,
    Outcome,
    RequestKind,
    RequestRecordInput,
    Stage,
    Subject,
)
from dsr.store.crypto import KeyRing
from dsr.store.ledger import Ledger, LedgerEvent, LedgerUnavailableError, Sealer, UnknownRequestError

EMAIL = "Jeanne.Martin@Example.org"
NAME = "Jeanne Martin"
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def sealer() -> Sealer:
    return KeyRing.generate()


@pytest.fixture
def url(database_url: str, tmp_path: Path) -> str:
    """The shared backend fixture; SQLite goes in a directory that does not exist yet (the ledger makes it)."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'dsr-home' / 'state' / 'ledger.sqlite3'}"
    return database_url


@pytest.fixture
def ledger(url: str, sealer: Sealer) -> Iterator[Ledger]:
    with Ledger(url, sealer) as ledger:
        yield ledger


@pytest.fixture
def raw(url: str) -> Iterator[Callable[..., list[Any]]]:
    """Plain SQL on the same database, bypassing the ledger."""
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg") if "postgresql" in url else url)

    def query(sql: str, **params: Any) -> list[Any]:
        with engine.begin() as conn:  # committed: tests also tamper with rows
            result = conn.execute(text(sql), params)
            return list(result) if result.returns_rows else []

    yield query
    engine.dispose()


def record(request_id: str = "dsr-2026-11-AAAAAA", *, email: str = EMAIL, name: str = NAME,
           kind: RequestKind = RequestKind.ACCESS, received_at: datetime = T0) -> RequestRecordInput:
    return RequestRecordInput(
        request_id=request_id,
        kind=kind,
        channel=Channel.FORM,
        subject=Subject(email=email, name=name),
        received_at=received_at,
        deadline=date(2026, 12, 2),
        language=Language.FR,
    )


# --- record_request --------------------------------------------------------------------------------


def test_record_request_is_idempotent(ledger: Ledger, raw: Callable[..., list[Any]]) -> None:
    assert ledger.record_request(record(), now=T0) is True
    again = record(email="someone.else@example.org", name="Someone Else", kind=RequestKind.ERASURE)
    assert ledger.record_request(again, now=T0 + timedelta(hours=1)) is False

    assert raw("SELECT count(*) FROM requests")[0][0] == 1
    stored = ledger.get_request("dsr-2026-11-AAAAAA")
    assert stored is not None
    assert stored.subject == Subject(email=EMAIL, name=NAME)
    assert stored.kind is RequestKind.ACCESS
    assert stored.channel is Channel.FORM
    assert stored.language is Language.FR
    assert stored.stage is Stage.RECEIVED
    assert stored.outcome is None
    assert stored.extended is False
    assert stored.deadline == date(2026, 12, 2)
    assert stored.received_at == T0
    assert stored.created_at == stored.updated_at == T0
    assert ledger.get_request("dsr-unknown") is None


def test_concurrent_record_request_writes_one_row(ledger: Ledger, raw: Callable[..., list[Any]]) -> None:
    threads = 8
    barrier = threading.Barrier(threads)

    def attempt(i: int) -> bool:
        barrier.wait()
        return ledger.record_request(record(name=f"Attempt {i}"), now=T0)

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(attempt, range(threads)))
    assert results.count(True) == 1
    assert raw("SELECT count(*) FROM requests")[0][0] == 1

    # Many different requests at once: all land.
    barrier = threading.Barrier(threads)

    def distinct(i: int) -> bool:
        barrier.wait()
        return ledger.record_request(record(f"dsr-2026-11-B{i:05d}"), now=T0)

    with ThreadPoolExecutor(threads) as pool:
        assert all(pool.map(distinct, range(threads)))
    assert raw("SELECT count(*) FROM requests")[0][0] == threads + 1


# --- append_event ----------------------------------------------------------------------------------


def test_append_event_is_idempotent_by_key(ledger: Ledger, raw: Callable[..., list[Any]]) -> None:
    ledger.record_request(record(), now=T0)
    event = AuditEvent("dsr-2026-11-AAAAAA", "acknowledged", details={"template": "acknowledgement"})
    assert ledger.has_event("wf/run/1") is False
    assert ledger.append_event(event, key="wf/run/1", at=T0 + timedelta(minutes=1)) is True
    assert ledger.has_event("wf/run/1") is True

    retried = AuditEvent("dsr-2026-11-AAAAAA", "acknowledged", details={"template": "changed"},
                         stage=Stage.CLOSED, outcome=Outcome.WITHDRAWN)
    assert ledger.append_event(retried, key="wf/run/1", at=T0 + timedelta(minutes=5)) is False

    assert raw("SELECT count(*) FROM events")[0][0] == 1
    assert ledger.events("dsr-2026-11-AAAAAA") == [
        LedgerEvent(at=T0 + timedelta(minutes=1), event="acknowledged", actor="engine",
                    details={"template": "acknowledgement"})
    ]
    stored = ledger.get_request("dsr-2026-11-AAAAAA")
    assert stored is not None
    assert (stored.stage, stored.outcome) == (Stage.RECEIVED, None)  # the retry changed nothing


def test_event_moves_the_request_row_in_the_same_transaction(ledger: Ledger) -> None:
    rid = "dsr-2026-11-AAAAAA"
    ledger.record_request(record(rid), now=T0)

    ledger.append_event(AuditEvent(rid, "note", details={"k": "v"}), key="k0", at=T0 + timedelta(minutes=1))
    stored = ledger.get_request(rid)
    assert stored is not None
    assert (stored.stage, stored.updated_at) == (Stage.RECEIVED, T0)  # nothing to move: row untouched

    at = T0 + timedelta(days=3)
    extended = AuditEvent(rid, "extended", actor="operator:alice", details={"reason": "complexity"},
                          stage=Stage.PROCESSING, deadline=date(2027, 2, 2), extended=True)
    assert ledger.append_event(extended, key="k1", at=at)
    stored = ledger.get_request(rid)
    assert stored is not None
    assert stored.stage is Stage.PROCESSING
    assert stored.deadline == date(2027, 2, 2)
    assert stored.extended is True
    assert stored.outcome is None
    assert stored.updated_at == at

    closed_at = T0 + timedelta(days=20)
    ledger.append_event(AuditEvent(rid, "closed", stage=Stage.CLOSED, outcome=Outcome.FULFILLED),
                        key="k2", at=closed_at)
    stored = ledger.get_request(rid)
    assert stored is not None
    assert (stored.stage, stored.outcome, stored.extended) == (Stage.CLOSED, Outcome.FULFILLED, True)
    assert stored.deadline == date(2027, 2, 2)  # not given: kept
    assert stored.updated_at == closed_at
    assert [r.request_id for r in ledger.requests(Stage.CLOSED)] == [rid]
    assert ledger.requests(Stage.PROCESSING) == []


def test_racing_events_with_one_key_write_one_event_and_its_row_change(ledger: Ledger) -> None:
    """Same key, different stages, at once: one wins, and the row holds exactly the winner's change."""
    rid = "dsr-2026-11-AAAAAA"
    ledger.record_request(record(rid), now=T0)
    stages = [Stage.AWAITING_IDENTITY, Stage.PROCESSING, Stage.NEEDS_ATTENTION, Stage.REPLYING] * 2
    barrier = threading.Barrier(len(stages))

    def attempt(stage: Stage) -> bool:
        barrier.wait()
        event = AuditEvent(rid, "moved", details={"to": stage.value}, stage=stage)
        return ledger.append_event(event, key="same-key", at=T0 + timedelta(minutes=1))

    with ThreadPoolExecutor(len(stages)) as pool:
        results = list(pool.map(attempt, stages))
    assert results.count(True) == 1
    [event] = ledger.events(rid)
    stored = ledger.get_request(rid)
    assert stored is not None
    assert stored.stage.value == event.details["to"]


def test_a_batch_is_written_in_order_in_one_transaction(ledger: Ledger, raw: Callable[..., list[Any]]) -> None:
    """``append_events``, as a workflow's batched events come: two requests, stages moving more than once, a note,
    a key repeated within the batch, a close releasing its claim; then the whole batch retried."""
    first, second = "dsr-2026-11-AAAAAA", "dsr-2026-11-BBBBBB"
    ledger.record_request(record(first, kind=RequestKind.ERASURE), now=T0)
    ledger.record_request(record(second, email="other@example.org", name="Paul Durand"), now=T0)
    assert ledger.claim_subject(EMAIL, RequestKind.ERASURE, first, now=T0).request_id == first
    at = T0 + timedelta(hours=2)
    batch = [
        (AuditEvent(first, "processing", stage=Stage.PROCESSING), "wf/1/0"),
        (AuditEvent(second, "extended", actor="operator:alice", stage=Stage.PROCESSING, deadline=date(2027, 2, 2),
                    extended=True, note="complex: three systems"), "wf/2/0"),
        (AuditEvent(first, "connector_done", details={"connector": "hubspot"}), "wf/1/1"),
        (AuditEvent(first, "connector_done", details={"connector": "again"}), "wf/1/1"),  # same key: skipped
        (AuditEvent(first, "replying", stage=Stage.REPLYING), "wf/1/2"),
        (AuditEvent(first, "closed", stage=Stage.CLOSED, outcome=Outcome.FULFILLED), "wf/1/3"),
    ]
    assert ledger.append_events(batch, at=at) == 5

    assert [(e.event, e.details) for e in ledger.events(first)] == [
        ("processing", {}), ("connector_done", {"connector": "hubspot"}), ("replying", {}), ("closed", {})]
    [extended] = ledger.events(second)
    assert (extended.event, extended.actor, extended.note) == ("extended", "operator:alice", "complex: three systems")
    closed, moved = ledger.get_request(first), ledger.get_request(second)
    assert closed is not None and moved is not None
    assert (closed.stage, closed.outcome, closed.updated_at) == (Stage.CLOSED, Outcome.FULFILLED, at)
    assert (moved.stage, moved.deadline, moved.extended, moved.updated_at) == (
        Stage.PROCESSING, date(2027, 2, 2), True, at)
    assert ledger.claim_of(EMAIL, RequestKind.ERASURE) is None  # the close released it, in the same transaction

    assert ledger.append_events(batch, at=at + timedelta(minutes=1)) == 0  # the activity retried
    assert raw("SELECT count(*) FROM events")[0][0] == 5
    retried = ledger.get_request(first)
    assert retried is not None and retried.updated_at == at


def test_a_batch_with_one_refused_event_writes_none(ledger: Ledger, raw: Callable[..., list[Any]]) -> None:
    rid = "dsr-2026-11-AAAAAA"
    ledger.record_request(record(rid), now=T0)
    batch = [
        (AuditEvent(rid, "processing", stage=Stage.PROCESSING), "wf/0"),
        (AuditEvent(rid, "reply_sent", details={"to": EMAIL}, stage=Stage.CLOSED), "wf/1"),
    ]
    with pytest.raises(ValueError, match="in plaintext"):
        ledger.append_events(batch, at=T0 + timedelta(hours=1))
    with pytest.raises(UnknownRequestError):
        ledger.append_events([(AuditEvent(rid, "processing"), "wf/2"), (AuditEvent("dsr-nope", "x"), "wf/3")],
                             at=T0 + timedelta(hours=1))
    assert raw("SELECT count(*) FROM events")[0][0] == 0
    stored = ledger.get_request(rid)
    assert stored is not None
    assert (stored.stage, stored.updated_at) == (Stage.RECEIVED, T0)


def test_event_for_unknown_request_is_refused(ledger: Ledger, raw: Callable[..., list[Any]]) -> None:
    with pytest.raises(UnknownRequestError):
        ledger.append_event(AuditEvent("dsr-nope", "received"), key="k", at=T0)
    assert raw("SELECT count(*) FROM events")[0][0] == 0
    assert ledger.has_event("k") is False


def test_events_are_in_order_and_in_utc(ledger: Ledger) -> None:
    rid = "dsr-2026-11-AAAAAA"
    ledger.record_request(record(rid), now=T0)
    ledger.record_request(record("dsr-2026-11-OTHER1"), now=T0)
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 2, 11, 0, tzinfo=paris)  # 10:00 UTC
    ledger.append_event(AuditEvent(rid, "received"), key="a", at=local)
    ledger.append_event(AuditEvent(rid, "acknowledged"), key="b", at=local + timedelta(seconds=1))
    ledger.append_event(AuditEvent(rid, "identity_requested"), key="c", at=local + timedelta(seconds=1))
    ledger.append_event(AuditEvent("dsr-2026-11-OTHER1", "received"), key="d", at=local)
    ledger.append_event(AuditEvent(rid, "identity_confirmed", actor="subject"), key="e",
                        at=datetime(2026, 11, 3, 8, 0, 0, 123456, tzinfo=UTC))

    events = ledger.events(rid)
    assert [e.event for e in events] == ["received", "acknowledged", "identity_requested",
                                         "identity_confirmed"]
    for e in events:
        assert e.at.tzinfo is not None and e.at.utcoffset() == timedelta(0)
    assert events[0].at == datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    assert events[-1].at == datetime(2026, 11, 3, 8, 0, 0, 123456, tzinfo=UTC)  # microseconds kept
    assert events[-1].actor == "subject"

    stored = ledger.get_request(rid)
    assert stored is not None
    for value in (stored.received_at, stored.created_at, stored.updated_at):
        assert value.utcoffset() == timedelta(0)

    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.append_event(AuditEvent(rid, "naive"), key="f", at=datetime(2026, 11, 3, 8, 0))
    assert ledger.has_event("f") is False


# --- personal data ---------------------------------------------------------------------------------


def test_subject_is_sealed_at_rest(ledger: Ledger, sealer: Sealer, raw: Callable[..., list[Any]]) -> None:
    ledger.record_request(record(), now=T0)
    ledger.append_event(AuditEvent("dsr-2026-11-AAAAAA", "received", details={"channel": "form"}),
                        key="k", at=T0)

    [row] = raw("SELECT * FROM requests")
    dump = " ".join(str(v) for v in row).lower()
    for secret in (EMAIL.lower(), NAME.lower(), "jeanne", "example.org"):
        assert secret not in dump
    assert "jeanne" not in " ".join(str(v) for r in raw("SELECT * FROM events") for v in r).lower()

    [(email_sealed, name_sealed, index)] = raw(
        "SELECT subject_email_sealed, subject_name_sealed, subject_index FROM requests"
    )
    assert sealer.open_text(email_sealed, purpose="subject.email", context="dsr-2026-11-AAAAAA") == EMAIL
    assert sealer.open_text(name_sealed, purpose="subject.name", context="dsr-2026-11-AAAAAA") == NAME
    assert index == sealer.blind_index(EMAIL.lower(), purpose="subject.email")


def test_sealed_fields_are_bound_to_their_request(ledger: Ledger, sealer: Sealer,
                                                  raw: Callable[..., list[Any]]) -> None:
    """Issue 12 finding 9: whoever can write the database cannot move a sealed address to another request."""
    from dsr.store.crypto import DecryptionError

    ledger.record_request(record("dsr-2026-11-AAAAAA"), now=T0)
    ledger.record_request(record("dsr-2026-11-BBBBBB", email="someone.else@example.net", name="Someone Else"),
                          now=T0)
    [(email_sealed, name_sealed)] = raw(
        "SELECT subject_email_sealed, subject_name_sealed FROM requests WHERE request_id = :r",
        r="dsr-2026-11-AAAAAA")
    with pytest.raises(DecryptionError):
        sealer.open_text(email_sealed, purpose="subject.email", context="dsr-2026-11-BBBBBB")
    with pytest.raises(DecryptionError):
        sealer.open_text(email_sealed, purpose="subject.email")  # the context is needed
    raw("UPDATE requests SET subject_email_sealed = :e, subject_name_sealed = :n WHERE request_id = :r",
        e=email_sealed, n=name_sealed, r="dsr-2026-11-BBBBBB")
    with pytest.raises(DecryptionError):
        ledger.get_request("dsr-2026-11-BBBBBB")
    assert ledger.get_request("dsr-2026-11-AAAAAA").subject.email == EMAIL  # type: ignore[union-attr]


def test_rows_sealed_before_the_binding_still_open(ledger: Ledger, sealer: Sealer,
                                                   raw: Callable[..., list[Any]]) -> None:
    ledger.record_request(record("dsr-2026-11-OLD000"), now=T0)
    raw("UPDATE requests SET subject_email_sealed = :e, subject_name_sealed = :n",
        e=sealer.seal_text(EMAIL, purpose="subject.email"), n=sealer.seal_text(NAME, purpose="subject.name"))
    assert raw("SELECT subject_email_sealed FROM requests")[0][0].startswith("v1.")
    assert ledger.get_request("dsr-2026-11-OLD000").subject == Subject(EMAIL, NAME)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("details", "actor"),
    [
        ({"note": f"reply sent to {EMAIL}"}, "engine"),
        ({"note": f"reply sent to {EMAIL.upper()}"}, "engine"),
        ({"to": EMAIL.lower()}, "engine"),
        ({EMAIL: "key holds it"}, "engine"),
        ({"note": "called jeanne MARTIN back"}, "engine"),
        ({"template": "completed"}, EMAIL.lower()),
    ],
    ids=["email", "email-upper", "email-lower", "email-as-key", "name", "email-as-actor"],
)
def test_personal_data_in_an_event_is_refused_and_nothing_is_written(
    ledger: Ledger, raw: Callable[..., list[Any]], details: dict[str, str], actor: str
) -> None:
    rid = "dsr-2026-11-AAAAAA"
    ledger.record_request(record(rid), now=T0)
    event = AuditEvent(rid, "reply_sent", actor=actor, details=details, stage=Stage.CLOSED,
                       outcome=Outcome.FULFILLED)
    with pytest.raises(ValueError, match="in plaintext") as refused:
        ledger.append_event(event, key="k", at=T0 + timedelta(hours=1))
    message = str(refused.value).lower()
    assert EMAIL.lower() not in message and "jeanne" not in message and "martin" not in message

    assert raw("SELECT count(*) FROM events")[0][0] == 0
    assert ledger.has_event("k") is False
    stored = ledger.get_request(rid)
    assert stored is not None
    assert (stored.stage, stored.outcome, stored.updated_at) == (Stage.RECEIVED, None, T0)


def test_details_without_personal_data_are_accepted(ledger: Ledger) -> None:
    ledger.record_request(record(name="Li"), now=T0)
    details = {"connector": "hubspot", "note": "limited processing; Martin Luther King day", "found": "2"}
    assert ledger.append_event(AuditEvent("dsr-2026-11-AAAAAA", "connector_done", details=details),
                               key="k", at=T0)
    assert ledger.events("dsr-2026-11-AAAAAA")[0].details == details
    with pytest.raises(ValueError, match="strings"):
        ledger.append_event(AuditEvent("dsr-2026-11-AAAAAA", "bad", details={"found": 2}),  # type: ignore[dict-item]
                            key="k2", at=T0)


# --- sharing the database --------------------------------------------------------------------------


def test_two_ledgers_share_one_database(url: str, sealer: Sealer) -> None:
    """The worker and the CLI each open the ledger: writes of one are seen by the other, also at once."""
    with Ledger(url, sealer) as worker, Ledger(url, sealer) as cli:
        assert worker.record_request(record("dsr-shared"), now=T0)
        assert cli.record_request(record("dsr-shared"), now=T0) is False
        assert cli.append_event(AuditEvent("dsr-shared", "identity_confirmed", actor="operator:bob",
                                           stage=Stage.PROCESSING), key="cli-1", at=T0)
        stored = worker.get_request("dsr-shared")
        assert stored is not None and stored.stage is Stage.PROCESSING
        assert worker.append_event(AuditEvent("dsr-shared", "identity_confirmed"), key="cli-1", at=T0) is False

        per_side = 25

        def write(ledger: Ledger, side: str) -> None:
            for i in range(per_side):
                ledger.append_event(AuditEvent("dsr-shared", f"{side}-{i}"), key=f"{side}-{i}",
                                    at=T0 + timedelta(seconds=i))
                ledger.requests()

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(write, worker, "w1"), pool.submit(write, worker, "w2"),
                       pool.submit(write, cli, "c1"), pool.submit(write, cli, "c2")]
            for future in futures:
                future.result()
        assert len(worker.events("dsr-shared")) == len(cli.events("dsr-shared")) == 1 + 4 * per_side


def test_machines_starting_together_on_a_new_database_all_open_it(url: str, sealer: Sealer) -> None:
    """Workers and intake replicas of a new deployment start at once: each creates the missing tables, and none
    fails on another's half-created catalogue (PostgreSQL's unique index on type names, SQLite's lock)."""
    from dsr.store.guards import Guards
    from dsr.store.inbox import Inbox

    starting = threading.Barrier(6)

    def start() -> None:
        starting.wait()
        with Ledger(url, sealer) as ledger:
            Guards(ledger.engine, sealer)
            Inbox(ledger.engine, sealer)

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(start) for _ in range(6)]:
            future.result()
    with Ledger(url, sealer) as ledger:
        assert ledger.record_request(record("dsr-2026-11-NEWDB1"), now=T0)


# --- one open request per subject and kind ---------------------------------------------------------


def test_concurrent_claims_from_two_ledgers_have_one_winner(url: str, sealer: Sealer,
                                                            raw: Callable[..., list[Any]]) -> None:
    """Two intake replicas, each with its own Ledger on the same database, claim the same subject and kind at the
    same instant: one wins, and every one of them reads that winner."""
    threads = 16
    barrier = threading.Barrier(threads)
    with Ledger(url, sealer) as one, Ledger(url, sealer) as other:
        def claim(i: int) -> str:
            ledger = one if i % 2 else other
            barrier.wait()
            email = EMAIL.upper() if i % 3 else EMAIL  # any case: the same subject
            return ledger.claim_subject(email, RequestKind.ERASURE, f"dsr-2026-11-CLM{i:03d}", now=T0).request_id

        with ThreadPoolExecutor(threads) as pool:
            holders = set(pool.map(claim, range(threads)))
        assert len(holders) == 1
        [winner] = holders
        assert one.claim_of(EMAIL, RequestKind.ERASURE) == other.claim_of(EMAIL, RequestKind.ERASURE)
        assert one.claim_of(EMAIL, RequestKind.ACCESS) is None  # another kind is another claim
        # The subject is kept as its blind index only.
        rows = raw("SELECT subject_index, kind, request_id FROM subject_claims")
        assert rows == [(sealer.blind_index(EMAIL.lower(), purpose="subject.email"), "erasure", winner)]


def test_a_claim_is_released_by_its_request_closing_and_only_by_its_holder(ledger: Ledger) -> None:
    ledger.record_request(record("dsr-2026-11-HOLDER", kind=RequestKind.ERASURE), now=T0)
    assert ledger.claim_subject(EMAIL, RequestKind.ERASURE, "dsr-2026-11-HOLDER", now=T0).request_id \
        == "dsr-2026-11-HOLDER"
    # Compare-and-delete: a stale view (another request id) releases nothing.
    assert ledger.release_claim(EMAIL, RequestKind.ERASURE, "dsr-2026-11-OTHERR") is False
    ledger.append_event(AuditEvent("dsr-2026-11-HOLDER", "identity_confirmed", stage=Stage.PROCESSING),
                        key="k1", at=T0)
    assert ledger.claim_of(EMAIL, RequestKind.ERASURE) is not None
    ledger.append_event(AuditEvent("dsr-2026-11-HOLDER", "closed", stage=Stage.CLOSED, outcome=Outcome.FULFILLED),
                        key="k2", at=T0)
    assert ledger.claim_of(EMAIL, RequestKind.ERASURE) is None  # released with the close, same transaction
    # The next request of the subject claims at once; the old one closing again (a retry) does not free it.
    later = T0 + timedelta(days=1)
    assert ledger.claim_subject(EMAIL, RequestKind.ERASURE, "dsr-2026-11-NEXTTT", now=later).request_id \
        == "dsr-2026-11-NEXTTT"
    ledger.append_event(AuditEvent("dsr-2026-11-HOLDER", "closed", stage=Stage.CLOSED), key="k3", at=later)
    held = ledger.claim_of(EMAIL, RequestKind.ERASURE)
    assert held is not None and held.request_id == "dsr-2026-11-NEXTTT" and held.claimed_at == later
    assert ledger.release_claim(EMAIL, RequestKind.ERASURE, "dsr-2026-11-NEXTTT") is True
    assert ledger.claim_of(EMAIL, RequestKind.ERASURE) is None


def test_a_ledger_from_before_claims_gets_its_open_requests_claimed(url: str, sealer: Sealer) -> None:
    with Ledger(url, sealer) as old:
        old.record_request(record("dsr-2026-11-OLDEST", kind=RequestKind.ACCESS), now=T0)
        old.record_request(record("dsr-2026-11-NEWERR", kind=RequestKind.ACCESS,
                                  received_at=T0 + timedelta(hours=1)), now=T0)
        old.record_request(record("dsr-2026-11-CLOSED", kind=RequestKind.ERASURE), now=T0)
        old.append_event(AuditEvent("dsr-2026-11-CLOSED", "closed", stage=Stage.CLOSED), key="c", at=T0)
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg") if "postgresql" in url else url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE subject_claims"))  # as a ledger was before claims existed
        conn.execute(text("DROP TABLE alembic_version"))  # and before migrations
        conn.execute(text("DROP TABLE suppressions"))  # and so before the tables of later revisions
    engine.dispose()
    with Ledger(url, sealer) as upgraded:
        held = upgraded.claim_of(EMAIL, RequestKind.ACCESS)
        assert held is not None and held.request_id == "dsr-2026-11-OLDEST"
        assert upgraded.claim_of(EMAIL, RequestKind.ERASURE) is None
    with Ledger(url, sealer) as again:  # the table exists now: nothing is claimed twice
        assert again.claim_of(EMAIL, RequestKind.ACCESS).request_id == "dsr-2026-11-OLDEST"  # type: ignore[union-attr]


def test_backend_configuration(url: str, sealer: Sealer, raw: Callable[..., list[Any]]) -> None:
    """SQLite: directory made, WAL, busy timeout. PostgreSQL: UTC out even when the session zone is not."""
    if url.startswith("sqlite"):
        with Ledger(url, sealer) as ledger:
            assert Path(make_url(url).database or "").parent.is_dir()
            with ledger.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 5000
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        return
    tokyo = make_url(url).update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    with Ledger(tokyo.render_as_string(hide_password=False), sealer) as ledger:
        ledger.record_request(record(), now=T0)
        ledger.append_event(AuditEvent("dsr-2026-11-AAAAAA", "received"), key="k", at=T0)
        stored = ledger.get_request("dsr-2026-11-AAAAAA")
        assert stored is not None
        assert stored.received_at == T0 and stored.received_at.tzinfo is UTC
        assert ledger.events("dsr-2026-11-AAAAAA")[0].at.tzinfo is UTC
    assert raw("SELECT data_type FROM information_schema.columns "
               "WHERE table_name = 'events' AND column_name = 'at'")[0][0] == "timestamp with time zone"
    # Plain postgresql:// URLs mean psycopg 3 (psycopg2 is not installed).
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with Ledger(plain, sealer) as ledger:
        assert ledger.get_request("dsr-2026-11-AAAAAA") is not None


def test_unusable_databases_fail_with_one_clear_line(url: str, sealer: Sealer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="database URL is not usable"):
        Ledger("not a url", sealer)
    if url.startswith("sqlite"):
        (tmp_path / "a-directory").mkdir()
        broken = f"sqlite:///{tmp_path / 'a-directory'}"
    else:
        parsed = make_url(url)
        broken = parsed.set(port=1).render_as_string(hide_password=False)
    with pytest.raises(LedgerUnavailableError) as failed:
        Ledger(broken, sealer)
    message = str(failed.value)
    assert "\n" not in message
    password = make_url(url).password
    assert password is None or str(password) not in message

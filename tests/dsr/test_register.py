"""Issue 18, points 1 and 2: the register of requests (`dsr list`) and its statistics (`dsr report`), from the
ledger alone, on SQLite and PostgreSQL; the CLI run as the operator runs it (the installed `dsr`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time as clock
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event

from dsr.domain.model import (
    AuditEvent,
    Channel,
    Language,
    Outcome,
    RefusalGround,
    RequestKind,
    RequestRecordInput,
    Stage,
    Subject,
)
from dsr.dpo.register import (
    DirectiveCounts,
    RegisterEntry,
    RegisterFilter,
    RequestState,
    compute_statistics,
    percentile,
    read_register,
)
from dsr.dpo.report import render_html, statistics_json, summary_lines
from dsr.store.crypto import KeyRing
from dsr.store.directives import DirectivesRegister
from dsr.store.ledger import Ledger
from tests.dsr.simulated_register import TIMEZONE, Planned, fill, plan_year

pytestmark = pytest.mark.slow  # a simulated year, and the verbs as processes

PARIS = ZoneInfo(TIMEZONE)
TODAY = date(2026, 6, 1)
BIN = Path(sys.executable).parent


def local(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=PARIS)


class Book:
    """A ledger filled by hand, request by request, with the events the engine writes."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def request(self, ref: str, kind: RequestKind, received: datetime, deadline: date, *,
                channel: Channel = Channel.FORM, email: str = "", name: str = "", scope: str = "") -> str:
        self.ledger.record_request(RequestRecordInput(
            request_id=ref, kind=kind, channel=channel,
            subject=Subject(email or f"{ref}@example.org", name or "Camille Durand"),
            received_at=received.astimezone(UTC), deadline=deadline, language=Language.FR),
            now=received.astimezone(UTC))
        self.event(ref, "received", received, stage=Stage.RECEIVED,
                   details={"channel": channel.value, **({"scope": scope} if scope else {})})
        return ref

    def event(self, ref: str, name: str, at: datetime, **fields: Any) -> None:
        self.ledger.append_event(AuditEvent(ref, name, **fields), key=f"{ref}/{name}", at=at)

    def close(self, ref: str, at: datetime, outcome: Outcome) -> None:
        self.event(ref, "closed", at, stage=Stage.CLOSED, outcome=outcome)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with Ledger(database_url, KeyRing.generate()) as opened:
        yield opened


@pytest.fixture
def book(ledger: Ledger) -> Book:
    """Seven requests covering every case of the register."""
    b = Book(ledger)
    # Received 00:30 on 1 January in Paris: 23:30 UTC on 31 December. Answered in time.
    b.request("dsr-2026-01-AAAAAA", RequestKind.ACCESS, local(2026, 1, 1, 0, 30), date(2026, 2, 2),
              email="jeanne.martin@example.org", name="Jeanne Martin")
    b.close("dsr-2026-01-AAAAAA", local(2026, 1, 11), Outcome.FULFILLED)
    # Extended, then refused (Art. 17(3)) after the first month but before the extended deadline: on time.
    b.request("dsr-2026-01-BBBBBB", RequestKind.ERASURE, local(2026, 1, 5), date(2026, 2, 5),
              channel=Channel.EMAIL)
    b.event("dsr-2026-01-BBBBBB", "extended", local(2026, 1, 20), deadline=date(2026, 4, 7), extended=True,
            actor="alice", note="Ten years of orders.")
    b.event("dsr-2026-01-BBBBBB", "refused", local(2026, 3, 2, 9), actor="bob", note="Accounting records.",
            details={"reason_length": "19", "ground": RefusalGround.ERASURE_EXCEPTION.value})
    b.close("dsr-2026-01-BBBBBB", local(2026, 3, 2, 9, 1), Outcome.REFUSED)
    # Answered at 00:30 the day after its deadline, Paris time: 23:30 UTC on the deadline. Late.
    b.request("dsr-2026-01-CCCCCC", RequestKind.PORTABILITY, local(2026, 1, 10), date(2026, 2, 10),
              channel=Channel.API)
    b.close("dsr-2026-01-CCCCCC", local(2026, 2, 11, 0, 30), Outcome.FULFILLED)
    # Open, past its deadline: overdue.
    b.request("dsr-2026-03-DDDDDD", RequestKind.ERASURE, local(2026, 3, 2), date(2026, 4, 2))
    b.event("dsr-2026-03-DDDDDD", "processing", local(2026, 3, 3), stage=Stage.PROCESSING)
    # Open, in time.
    b.request("dsr-2026-05-EEEEEE", RequestKind.RECTIFICATION, local(2026, 5, 20), date(2026, 6, 22),
              channel=Channel.OPERATOR)
    # Withdrawn by the subject.
    b.request("dsr-2026-04-FFFFFF", RequestKind.ACCESS, local(2026, 4, 1), date(2026, 5, 4))
    b.close("dsr-2026-04-FFFFFF", local(2026, 4, 3), Outcome.WITHDRAWN)
    # Refused before refusals had grounds (no ``ground`` in the event): Art. 12(5).
    b.request("dsr-2026-04-GGGGGG", RequestKind.ACCESS, local(2026, 4, 2), date(2026, 5, 4))
    b.event("dsr-2026-04-GGGGGG", "refused", local(2026, 4, 6), details={"reason_length": "5"})
    b.close("dsr-2026-04-GGGGGG", local(2026, 4, 6, 10, 1), Outcome.REFUSED)
    return b


def by_ref(entries: list[RegisterEntry]) -> dict[str, RegisterEntry]:
    return {e.reference: e for e in entries}


def test_the_register_says_for_each_request_when_it_came_when_it_was_answered_and_whether_in_time(
        book: Book) -> None:
    entries = read_register(book.ledger, timezone=TIMEZONE, today=TODAY)
    assert [e.reference for e in entries] == [  # oldest receipt first
        "dsr-2026-01-AAAAAA", "dsr-2026-01-BBBBBB", "dsr-2026-01-CCCCCC", "dsr-2026-03-DDDDDD",
        "dsr-2026-04-FFFFFF", "dsr-2026-04-GGGGGG", "dsr-2026-05-EEEEEE"]
    e = by_ref(entries)
    a = e["dsr-2026-01-AAAAAA"]
    assert (a.kind, a.channel, a.received, a.deadline, a.stage, a.outcome) == (
        "access", "form", date(2026, 1, 1), date(2026, 2, 2), "closed", "fulfilled")
    assert (a.closed_on, a.days_taken, a.on_time, a.overdue, a.extended) == (date(2026, 1, 11), 10, True, False, False)
    assert a.email is None and a.name is None  # not asked for

    b = e["dsr-2026-01-BBBBBB"]
    assert (b.extended, b.deadline, b.refusal_ground, b.closed_on, b.days_taken, b.on_time) == (
        True, date(2026, 4, 7), "erasure_exception", date(2026, 3, 2), 56, True)
    c = e["dsr-2026-01-CCCCCC"]
    assert (c.closed_on, c.days_taken, c.on_time) == (date(2026, 2, 11), 32, False)  # late by the local date
    d = e["dsr-2026-03-DDDDDD"]
    assert (d.stage, d.outcome, d.closed_on, d.days_taken, d.on_time, d.overdue) == (
        "processing", None, None, None, None, True)
    assert e["dsr-2026-05-EEEEEE"].overdue is False
    assert (e["dsr-2026-04-FFFFFF"].outcome, e["dsr-2026-04-FFFFFF"].answered) == ("withdrawn", False)
    assert e["dsr-2026-04-GGGGGG"].refusal_ground == "excessive"


def test_the_register_filters_by_state_kind_receipt_day_in_the_controllers_zone_and_overdue(book: Book) -> None:
    def refs(**filters: Any) -> list[str]:
        return [e.reference[-6:] for e in read_register(book.ledger, timezone=TIMEZONE, today=TODAY,
                                                         filters=RegisterFilter(**filters))]

    assert refs(state=RequestState.OPEN) == ["DDDDDD", "EEEEEE"]
    assert refs(state=RequestState.CLOSED) == ["AAAAAA", "BBBBBB", "CCCCCC", "FFFFFF", "GGGGGG"]
    assert refs(kind=RequestKind.ERASURE) == ["BBBBBB", "DDDDDD"]
    assert refs(overdue=True) == ["DDDDDD"]
    # 00:30 on 1 January in Paris is in 2026 although it is 31 December in UTC.
    assert refs(since=date(2026, 1, 1), until=date(2026, 1, 1)) == ["AAAAAA"]
    assert refs(until=date(2025, 12, 31)) == []
    assert refs(since=date(2026, 4, 2), until=date(2026, 5, 20)) == ["GGGGGG", "EEEEEE"]
    assert refs(state=RequestState.CLOSED, kind=RequestKind.ACCESS, since=date(2026, 4, 1)) == ["FFFFFF", "GGGGGG"]
    # Another zone moves the boundary: in UTC that first request was received in 2025.
    utc = read_register(book.ledger, timezone="UTC", today=TODAY, filters=RegisterFilter(until=date(2025, 12, 31)))
    assert [e.reference for e in utc] == ["dsr-2026-01-AAAAAA"]


def test_a_period_that_stands_still_is_neither_overdue_nor_late(ledger: Ledger) -> None:
    """Décret 2019-536 (DSR_CLOCK=suspend_during_identity): from a doubt or a document policy's identity request
    to the subject's answer, the period stands still; the ledger's deadline moves only when it resumes."""
    b = Book(ledger)
    # A doubt that stopped the clock before the deadline; no answer from the subject by June: not overdue.
    b.request("dsr-2026-03-HHHHHH", RequestKind.ACCESS, local(2026, 3, 2), date(2026, 4, 2))
    b.event("dsr-2026-03-HHHHHH", "identity_doubt", local(2026, 3, 20), details={"clock_suspended": "true"})
    # Stopped, resumed (the deadline moved ten days), answered before the new deadline.
    b.request("dsr-2026-02-IIIIII", RequestKind.ACCESS, local(2026, 2, 2), date(2026, 3, 2))
    b.event("dsr-2026-02-IIIIII", "clock_suspended", local(2026, 2, 10), details={"why": "document policy"})
    b.event("dsr-2026-02-IIIIII", "clock_resumed", local(2026, 2, 20), deadline=date(2026, 3, 12),
            details={"suspended_days": "10", "previous_deadline": "2026-03-02"})
    b.close("dsr-2026-02-IIIIII", local(2026, 3, 10), Outcome.FULFILLED)
    # A doubt under the receipt clock stops nothing: overdue.
    b.request("dsr-2026-03-JJJJJJ", RequestKind.ERASURE, local(2026, 3, 3), date(2026, 4, 3))
    b.event("dsr-2026-03-JJJJJJ", "identity_doubt", local(2026, 3, 4), details={"clock_suspended": "false"})
    # Closed as unverified while the clock stood still, after the deadline it had when it stopped: on time.
    b.request("dsr-2026-01-KKKKKK", RequestKind.ACCESS, local(2026, 1, 15), date(2026, 2, 16))
    b.event("dsr-2026-01-KKKKKK", "clock_suspended", local(2026, 1, 16))
    b.close("dsr-2026-01-KKKKKK", local(2026, 2, 20), Outcome.UNVERIFIED)
    # Stopped only after its deadline had passed: late all the same.
    b.request("dsr-2026-01-LLLLLL", RequestKind.ACCESS, local(2026, 1, 5), date(2026, 2, 5))
    b.event("dsr-2026-01-LLLLLL", "identity_doubt", local(2026, 2, 9), details={"clock_suspended": "true"})

    e = by_ref(read_register(ledger, timezone=TIMEZONE, today=TODAY))
    h, i, j, k, late = (e[f"dsr-2026-0{m}-{c * 6}"] for m, c in
                        (("3", "H"), ("2", "I"), ("3", "J"), ("1", "K"), ("1", "L")))
    assert (h.overdue, h.suspended_since, h.on_time) == (False, date(2026, 3, 20), None)
    assert (i.deadline, i.on_time, i.suspended_since, i.days_taken) == (date(2026, 3, 12), True, None, 36)
    assert (j.overdue, j.suspended_since) == (True, None)
    assert (k.on_time, k.suspended_since, k.outcome) == (True, date(2026, 1, 16), "unverified")
    assert (late.overdue, late.suspended_since) == (True, date(2026, 2, 9))
    assert [x.reference for x in read_register(ledger, timezone=TIMEZONE, today=TODAY,
                                               filters=RegisterFilter(overdue=True))] == [
        "dsr-2026-01-LLLLLL", "dsr-2026-03-JJJJJJ"]


def test_the_subject_is_decrypted_only_when_asked(book: Book) -> None:
    entries = by_ref(read_register(book.ledger, timezone=TIMEZONE, today=TODAY, with_subject=True))
    assert (entries["dsr-2026-01-AAAAAA"].email, entries["dsr-2026-01-AAAAAA"].name) == (
        "jeanne.martin@example.org", "Jeanne Martin")
    assert entries["dsr-2026-01-BBBBBB"].email == "dsr-2026-01-BBBBBB@example.org"
    plain = read_register(book.ledger, timezone=TIMEZONE, today=TODAY)
    assert all(e.email is None and e.name is None for e in plain)


@pytest.mark.parametrize("with_subject", [False, True])
def test_the_register_is_two_queries_whatever_the_number_of_requests(ledger: Ledger, with_subject: bool) -> None:
    book = Book(ledger)
    for i in range(40):
        ref = book.request(f"dsr-2026-02-{i:06d}", RequestKind.ACCESS, local(2026, 2, 1 + i % 20), date(2026, 3, 2))
        if i % 2:
            book.close(ref, local(2026, 2, 25), Outcome.FULFILLED)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        entries = read_register(ledger, timezone=TIMEZONE, today=TODAY, with_subject=with_subject,
                                filters=RegisterFilter(kind=RequestKind.ACCESS))
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)
    assert len(entries) == 40 and sum(e.closed_on is not None for e in entries) == 20
    assert len(statements) == 2, statements


def entry(ref: str, kind: str, received: date, *, days: int | None, deadline_days: int = 31,
          outcome: str | None = "fulfilled", channel: str = "form", extended: bool = False,
          ground: str | None = None) -> RegisterEntry:
    closed = received + timedelta(days=days) if days is not None else None
    deadline = received + timedelta(days=deadline_days)
    return RegisterEntry(
        reference=ref, kind=kind, channel=channel, language="fr", received=received, deadline=deadline,
        extended=extended, stage="closed" if closed else "processing", outcome=outcome if closed else None,
        refusal_ground=ground, closed_on=closed, days_taken=days,
        on_time=None if days is None else days <= deadline_days,
        overdue=closed is None and date(2026, 6, 1) > deadline)


def post_mortem_book(ledger: Ledger) -> Book:
    """Requests about a deceased person (art. 85 loi 78-17), one per way their case is known, and an access."""
    b = Book(ledger)
    pm = RequestKind.POST_MORTEM
    b.request("dsr-2026-02-PM0001", pm, local(2026, 2, 2), date(2026, 3, 2), scope="closure")  # 85-II 2°
    b.request("dsr-2026-02-PM0002", pm, local(2026, 2, 3), date(2026, 3, 3), scope="estate")  # 85-II 1°
    b.request("dsr-2026-02-PM0003", pm, local(2026, 2, 4), date(2026, 3, 4))  # an engine that kept no aim
    for ref, day, scope, instruction in (("dsr-2026-02-PM0004", 5, "closure", "keep"),
                                         ("dsr-2026-02-PM0005", 6, "estate", "hand_over"),  # the directives win
                                         ("dsr-2026-02-PM0006", 7, "closure", "erase")):
        b.request(ref, pm, local(2026, 2, day), date(2026, 3, day), scope=scope)
        b.event(ref, "directives_found", local(2026, 2, day, 11), details={
            "instruction": instruction, "designates": "true", "sender_designated": "true"})
    b.close("dsr-2026-02-PM0006", local(2026, 2, 20), Outcome.FULFILLED)
    b.request("dsr-2026-02-AC0001", RequestKind.ACCESS, local(2026, 2, 8), date(2026, 3, 9), scope="")
    return b


def test_a_post_mortem_request_has_the_case_of_its_directives_or_else_of_its_aim(ledger: Ledger) -> None:
    post_mortem_book(ledger)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        entries = by_ref(read_register(ledger, timezone=TIMEZONE, today=TODAY))
    finally:
        event.remove(ledger.engine, "before_cursor_execute", count)
    assert len(statements) == 2  # still two queries: the cases come with the register's events
    assert {ref: e.case for ref, e in entries.items()} == {
        "dsr-2026-02-PM0001": "erase", "dsr-2026-02-PM0002": "estate", "dsr-2026-02-PM0003": "erase",
        "dsr-2026-02-PM0004": "keep", "dsr-2026-02-PM0005": "hand_over", "dsr-2026-02-PM0006": "erase",
        "dsr-2026-02-AC0001": None}
    assert entries["dsr-2026-02-PM0006"].closed_on == date(2026, 2, 20)  # the other events still read
    only = read_register(ledger, timezone=TIMEZONE, today=TODAY, filters=RegisterFilter(kind=RequestKind.ACCESS))
    assert [(e.reference, e.case) for e in only] == [("dsr-2026-02-AC0001", None)]
    stats = compute_statistics(entries.values(), since=date(2026, 1, 1), until=date(2026, 12, 31), as_of=TODAY)
    assert stats.by_case == {"erase": 3, "keep": 1, "hand_over": 1, "estate": 1}


def test_the_report_counts_post_mortem_cases_and_directives_in_force_in_text_json_and_html() -> None:
    feb = date(2026, 2, 1)
    entries = [entry("a", "post_mortem", feb, days=10), entry("b", "post_mortem", feb, days=None),
               entry("c", "access", feb, days=3)]
    entries = [replace_case(entries[0], "estate"), replace_case(entries[1], "keep"), entries[2]]
    counts = DirectiveCounts(in_force={"erase": 2, "keep": 1, "hand_over": 0}, applied={"erase": 1, "keep": 0})
    stats = compute_statistics(entries, since=date(2026, 1, 1), until=date(2026, 3, 31), as_of=TODAY,
                               directives=counts)
    assert stats.by_case == {"erase": 0, "keep": 1, "hand_over": 0, "estate": 1}
    data = statistics_json(stats)
    assert data["post_mortem_by_case"] == {"erase": 0, "keep": 1, "hand_over": 0, "estate": 1}
    assert data["directives"] == {"in_force": {"erase": 2, "keep": 1, "hand_over": 0},
                                  "applied": {"erase": 1, "keep": 0}, "total_in_force": 3, "total_applied": 1}
    french = summary_lines(stats, Language.FR)
    assert "Demandes relatives à une personne décédée, par cas:" in french
    assert "  conserver: 1" in french and "  informations utiles à la succession: 1" in french
    assert "Directives en vigueur (enregistrées, non révoquées) à ce jour: 3 (appliquées: 1)" in french
    assert "  effacer: 2 (appliquées: 1)" in french
    english = summary_lines(stats, Language.EN)
    assert "  keep: 1" in english and "  erase: 2 (applied: 1)" in english
    page = render_html(stats, Language.EN, timezone=TIMEZONE, generated_at=datetime(2026, 6, 1, tzinfo=UTC))
    assert '<table id="by-case">' in page and "<td>information for the estate</td><td class=\"n\">1</td>" in page
    assert '<table id="directives">' in page
    assert "<td>erase</td><td class=\"n\">2</td><td class=\"n\">1</td>" in page
    assert "<td>Total</td><td class=\"n\">3</td><td class=\"n\">1</td>" in page
    # Without any post_mortem request: a sentence, not an empty table.
    plain = compute_statistics(entries[2:], since=date(2026, 1, 1), until=date(2026, 3, 31), as_of=TODAY)
    page = render_html(plain, Language.FR, timezone=TIMEZONE, generated_at=datetime(2026, 6, 1, tzinfo=UTC))
    assert "Aucune demande relative à une personne décédée sur la période." in page
    assert '<table id="by-case">' not in page and '<table id="directives">' not in page


def replace_case(e: RegisterEntry, case: str) -> RegisterEntry:
    return dataclasses.replace(e, case=case)


def test_dsr_list_and_report_show_the_cases_and_the_directives(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", KeyRing.load_or_create(tmp_path / "keys.json")) as ledger:
        post_mortem_book(ledger)
        directives = DirectivesRegister(ledger)
        applied = directives.record("henri.dupont@example.org", instruction="erase")
        directives.record("louise.petit@example.org", instruction="keep")
        directives.record("paul.roux@example.org", instruction="hand_over", designee_email="ana.roux@example.org")
        directives.record("marc.blanc@example.org", instruction="erase")
        directives.revoke("marc.blanc@example.org")  # revoked: not in force
        assert directives.mark_applied(applied, "dsr-2026-02-PM0006")
    listed = json.loads(dsr(tmp_path, "list", "--json", "--kind", "post_mortem").stdout)
    assert [(r["reference"], r["case"]) for r in listed] == [
        ("dsr-2026-02-PM0001", "erase"), ("dsr-2026-02-PM0002", "estate"), ("dsr-2026-02-PM0003", "erase"),
        ("dsr-2026-02-PM0004", "keep"), ("dsr-2026-02-PM0005", "hand_over"), ("dsr-2026-02-PM0006", "erase")]
    _, rows = csv_rows(dsr(tmp_path, "list", "--csv").stdout)
    assert rows[0][2] == "cas (art. 85)"
    assert {r[0]: r[2] for r in rows[1:]} == {
        "dsr-2026-02-PM0001": "effacer", "dsr-2026-02-PM0002": "informations utiles à la succession",
        "dsr-2026-02-PM0003": "effacer", "dsr-2026-02-PM0004": "conserver",
        "dsr-2026-02-PM0005": "communiquer à la personne désignée", "dsr-2026-02-PM0006": "effacer",
        "dsr-2026-02-AC0001": ""}
    report = dsr(tmp_path, "report", "--year", "2026", "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["post_mortem_by_case"] == {"erase": 3, "keep": 1, "hand_over": 1, "estate": 1}
    assert data["directives"]["in_force"] == {"erase": 1, "keep": 1, "hand_over": 1}
    assert data["directives"]["applied"] == {"erase": 1, "keep": 0, "hand_over": 0}
    text = dsr(tmp_path, "report", "--year", "2026", "--language", "en").stdout.decode()
    assert "Directives in force (recorded, not revoked) today: 3 (applied: 1)" in text
    html_file = tmp_path / "report.html"
    assert dsr(tmp_path, "report", "--year", "2026", "--html", str(html_file)).returncode == 0
    page = html_file.read_text(encoding="utf-8")
    assert '<table id="by-case">' in page and "<td>conserver</td>" in page and '<table id="directives">' in page


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile(list(range(1, 11)), 0.9) == 9
    assert percentile([7], 0.9) == 7
    assert percentile([3, 1], 0.9) == 3
    assert percentile(list(range(1, 21)), 0.9) == 18
    with pytest.raises(ValueError):
        percentile([], 0.9)


def test_statistics_count_answers_on_time_extensions_refusals_and_months() -> None:
    jan, feb = date(2026, 1, 10), date(2026, 2, 3)
    entries = [
        entry("a", "access", jan, days=5),
        entry("b", "access", jan, days=20, channel="email"),
        entry("c", "erasure", jan, days=40),  # late
        entry("d", "erasure", feb, days=60, deadline_days=92, extended=True, outcome="refused",
              ground="erasure_exception"),
        entry("e", "portability", feb, days=2, outcome="withdrawn"),  # not an answer
        entry("f", "rectification", feb, days=None, deadline_days=20),  # open, overdue on 1 June
        entry("g", "complaint", feb, days=10, channel="letter", outcome="cancelled"),  # words a newer engine has
        entry("h", "access", date(2025, 12, 31), days=1),  # outside the period
        entry("i", "objection", feb, days=12, outcome="declined"),  # answered, not upheld (Art. 21(1))
    ]
    stats = compute_statistics(entries, since=date(2026, 1, 1), until=date(2026, 3, 31), as_of=date(2026, 6, 1))
    assert stats.received == 8
    assert stats.by_kind == {"access": 2, "rectification": 1, "erasure": 2, "portability": 1, "objection": 1,
                             "consent_withdrawal": 0, "post_mortem": 0, "restriction": 0, "complaint": 1}
    assert stats.by_channel == {"form": 6, "email": 1, "letter": 1}
    # A declined objection is an answer, in time or not, but neither a right satisfied nor a refusal.
    assert stats.by_outcome == {"fulfilled": 3, "refused": 1, "declined": 1, "unverified": 0, "withdrawn": 1,
                                "terminated": 0, "open": 1, "cancelled": 1}
    assert (stats.answered, stats.answered_on_time, stats.answered_late) == (6, 5, 1)  # a b c d g i
    assert stats.on_time_share == pytest.approx(5 / 6)
    assert stats.days_taken == [5, 10, 12, 20, 40, 60] and stats.days_taken_late == [40]
    assert (stats.median_days, stats.p90_days) == (16.0, 60)
    assert (stats.open, stats.overdue, stats.extended) == (1, 1, 1)
    assert stats.refusals == {"excessive": 0, "identity": 0, "others_rights": 0, "erasure_exception": 1,
                              "legal_restriction": 0, "quality": 0}
    assert [m.month for m in stats.months] == ["2026-01", "2026-02", "2026-03"]
    january, february, march = stats.months
    assert january.received == {"access": 2, "rectification": 0, "erasure": 1, "portability": 0, "objection": 0,
                                "consent_withdrawal": 0, "post_mortem": 0, "restriction": 0}
    assert (january.total, january.answered, january.on_time) == (3, 3, 2)
    assert (february.total, february.answered, february.on_time, february.extended, february.refused) == (
        5, 3, 3, 1, 1)
    assert march.total == 0


def test_statistics_of_a_period_without_answers_have_no_median() -> None:
    stats = compute_statistics([entry("f", "access", date(2026, 5, 2), days=None)], since=date(2026, 1, 1),
                               until=date(2026, 12, 31), as_of=date(2026, 6, 1))
    assert (stats.answered, stats.on_time_share, stats.median_days, stats.p90_days) == (0, None, None, None)
    html = render_html(stats, Language.EN, timezone=TIMEZONE, generated_at=datetime(2026, 6, 1, tzinfo=UTC))
    assert "No request of the period has been answered yet." in html and 'id="chart-days"' not in html
    assert 'id="chart-months"' in html
    nothing = compute_statistics([], since=date(2026, 1, 1), until=date(2026, 12, 31), as_of=date(2026, 6, 1))
    html = render_html(nothing, Language.FR, timezone=TIMEZONE, generated_at=datetime(2026, 6, 1, tzinfo=UTC))
    assert "Aucune demande reçue sur la période." in html and "<svg" not in html
    assert html.count('<tr><td>') >= 12  # the months are still listed, at zero


def test_statistics_from_the_ledger_on_every_backend(book: Book) -> None:
    entries = read_register(book.ledger, timezone=TIMEZONE, today=TODAY)
    stats = compute_statistics(entries, since=date(2026, 1, 1), until=date(2026, 12, 31), as_of=TODAY)
    assert stats.received == 7 and stats.by_outcome["open"] == 2
    assert (stats.answered, stats.answered_on_time, stats.answered_late) == (4, 3, 1)  # A B C G
    assert stats.days_taken == [4, 10, 32, 56]
    assert stats.refusals["erasure_exception"] == 1 and stats.refusals["excessive"] == 1
    assert stats.extended == 1 and stats.overdue == 1


# --- the command line --------------------------------------------------------------------------------


def dsr(home: Path, *args: str, language: str = "fr") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DSR_HOME": str(home), "DSR_LANGUAGE": language, "DSR_TIMEZONE": TIMEZONE,
           "DSR_DATABASE_URL": f"sqlite:///{home / 'ledger.sqlite3'}"}
    for name in ("DSR_KEYS", "DSR_CONTROLLER_NAME", "DSR_CONFIG"):
        env.pop(name, None)
    return subprocess.run([str(BIN / "dsr"), *args], env=env, capture_output=True, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A DSR_HOME with its key file and a small ledger: two requests, one with a name made to look like a formula."""
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", KeyRing.load_or_create(tmp_path / "keys.json")) as ledger:
        b = Book(ledger)
        b.request("dsr-2026-01-AAAAAA", RequestKind.ACCESS, local(2026, 1, 5), date(2026, 2, 5),
                  email="jeanne.martin@example.org", name='=HYPERLINK("http://evil.example","x")')
        b.close("dsr-2026-01-AAAAAA", local(2026, 1, 20), Outcome.FULFILLED)
        b.request("dsr-2026-02-BBBBBB", RequestKind.ERASURE, local(2026, 2, 5), date(2026, 3, 5),
                  email="hugo.bernard@example.net", name="Hugo Bernard")
    return tmp_path


def csv_rows(output: bytes) -> tuple[str, list[list[str]]]:
    assert output.startswith(b"\xef\xbb\xbf")  # the BOM: spreadsheets read UTF-8 as UTF-8
    text = output.decode("utf-8-sig")
    delimiter = csv.Sniffer().sniff(text.splitlines()[0], delimiters=";,\t").delimiter
    return delimiter, list(csv.reader(io.StringIO(text), delimiter=delimiter))


def test_list_as_csv_for_a_french_spreadsheet_without_the_subject_unless_asked(home: Path) -> None:
    plain = dsr(home, "list", "--csv")
    assert plain.returncode == 0, plain.stderr
    delimiter, rows = csv_rows(plain.stdout)
    assert delimiter == ";"
    assert rows[0][:5] == ["référence", "type", "cas (art. 85)", "canal", "reçue le"]
    assert [r[0] for r in rows[1:]] == ["dsr-2026-01-AAAAAA", "dsr-2026-02-BBBBBB"]
    assert rows[1][1] == "accès" and rows[2][1] == "effacement"
    assert b"example.org" not in plain.stdout and b"Hugo" not in plain.stdout and b"HYPERLINK" not in plain.stdout

    with_subject = dsr(home, "list", "--csv", "--with-subject")
    _, rows = csv_rows(with_subject.stdout)
    assert rows[0][-2:] == ["e-mail", "nom"]
    assert rows[1][-2:] == ["jeanne.martin@example.org", '\'=HYPERLINK("http://evil.example","x")']  # formula guard
    assert rows[2][-2:] == ["hugo.bernard@example.net", "Hugo Bernard"]


def test_list_csv_separator_follows_the_language_or_sep(home: Path) -> None:
    english = dsr(home, "list", "--csv", language="en")
    delimiter, rows = csv_rows(english.stdout)
    assert delimiter == "," and rows[0][:2] == ["reference", "kind"] and rows[1][1] == "access"
    tabbed = dsr(home, "list", "--csv", "--sep", "tab", "--language", "en")
    delimiter, rows = csv_rows(tabbed.stdout)
    assert delimiter == "\t" and len(rows) == 3 and rows[0][0] == "reference"


def test_list_as_json_and_as_a_table(home: Path) -> None:
    listed = dsr(home, "list", "--json", "--open")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["reference"], r["kind"], r["stage"], r["overdue"]) for r in rows] == [
        ("dsr-2026-02-BBBBBB", "erasure", "received", True)]
    assert "email" not in rows[0]
    closed = json.loads(dsr(home, "list", "--json", "--closed", "--with-subject").stdout)
    assert [(r["reference"], r["days_taken"], r["on_time"], r["email"]) for r in closed] == [
        ("dsr-2026-01-AAAAAA", 15, True, "jeanne.martin@example.org")]
    table = dsr(home, "list", "--kind", "erasure", "--language", "en").stdout.decode().splitlines()
    assert table[0].split()[:5] == ["reference", "kind", "case", "(Art.", "85)"]
    assert table[1].startswith("dsr-2026-02-BBBBBB  erasure") and len(table) == 2
    assert dsr(home, "list", "--since", "2027-01-01").stdout.decode().strip() == "no request matches"


@pytest.mark.parametrize("args", [
    ["list", "--since", "2026-13-01"],
    ["list", "--until", "yesterday"],
    ["list", "--kind", "complaint"],
    ["list", "--open", "--closed"],
    ["list", "--csv", "--json"],
    ["list", "--sep", ";"],
    ["list", "--csv", "--sep", "|"],
    ["list", "--since", "2026-05-01", "--until", "2026-04-01"],
    ["list", "--language", "de"],
    ["report", "--year", "20x6"],
    ["report", "--year", "2026", "--since", "2026-01-01"],
    ["report", "--since", "2026-02-30"],
    ["report", "--language", "es"],
    ["report", "--html", "/nonexistent-dir/report.html"],
])
def test_bad_input_is_one_line_and_a_non_zero_exit(home: Path, args: list[str]) -> None:
    result = dsr(home, *args)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and result.stdout == b""


def test_report_without_a_key_file_is_one_line(tmp_path: Path) -> None:
    result = dsr(tmp_path, "report")
    assert result.returncode != 0 and result.stderr.decode().startswith("error: no key file")


# --- a simulated year of 1,000 requests ------------------------------------------------------------


YEAR = 2025  # in the past whatever day the tests run: every deadline of the year has passed
AS_OF = date(2026, 2, 15)


@pytest.fixture(scope="module")
def year_home() -> Iterator[tuple[Path, list[Planned]]]:
    """1,000 requests of 2026 (and a few on its edges) in a DSR_HOME, written once for the module.

    On a tmpfs when the machine has one: 4,000 ledger transactions, each synced to disk elsewhere."""
    base = Path(tempfile.mkdtemp(prefix="dsr-register-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    plans = plan_year(1000, YEAR, as_of=AS_OF)
    # Outside the year in the controller's zone, though not in UTC: 00:30 on 1 January 2026 (23:30 UTC on
    # 31 December 2025). Inside in UTC too, and not in Paris: none (Paris is ahead of UTC). The plan's own first
    # two requests are its edges inside: 00:30 on 1 January, 23:45 on 31 December.
    before = Planned("dsr-2024-12-ZZZZZZ", RequestKind.ACCESS, Channel.FORM, local(2024, 12, 31, 23, 30),
                     date(2025, 1, 31), False, Outcome.FULFILLED, None, local(2025, 1, 5))
    after = Planned("dsr-2026-01-ZZZZZZ", RequestKind.ERASURE, Channel.FORM, local(2026, 1, 1, 0, 30),
                    date(2026, 2, 2), False, None, None, None)
    with Ledger(f"sqlite:///{base / 'ledger.sqlite3'}", KeyRing.load_or_create(base / "keys.json")) as ledger:
        fill(ledger, [*plans, before, after])
    try:
        yield base, plans
    finally:
        shutil.rmtree(base, ignore_errors=True)


def expected(plans: list[Planned]) -> dict[str, Any]:
    """The statistics computed from the plan, in the plan's own (local) terms."""
    answered = [p for p in plans if p.outcome is not None and p.outcome != Outcome.WITHDRAWN]
    days = sorted((p.closed - p.received).days for p in answered)  # type: ignore[operator]
    late = [p for p in answered if p.closed > p.deadline]  # type: ignore[operator]
    ranked = days[int(len(days) * 0.9 + 0.999999) - 1]
    middle = len(days) // 2
    median = days[middle] if len(days) % 2 else (days[middle - 1] + days[middle]) / 2
    months: dict[str, Counter[str]] = {}
    for p in plans:
        months.setdefault(f"{p.received:%Y-%m}", Counter())[p.kind.value] += 1
    return {
        "received": len(plans),
        "by_kind": Counter(p.kind.value for p in plans),
        "by_channel": Counter(p.channel.value for p in plans),
        "by_outcome": Counter(p.outcome.value if p.outcome else "open" for p in plans),
        "answered": len(answered), "late": len(late), "median": median, "p90": ranked,
        "extended": sum(p.extended for p in plans),
        "refusals": Counter(p.ground.value for p in plans if p.ground),
        "overdue": sum(p.outcome is None and p.deadline < datetime.now(PARIS).date() for p in plans),
        "months": months,
    }


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def test_report_of_a_simulated_year_matches_counts_made_from_the_plan(
        year_home: tuple[Path, list[Planned]]) -> None:
    home, plans = year_home
    want = expected(plans)
    assert want["late"] > 50 and want["extended"] > 50 and sum(want["refusals"].values()) > 50  # a real test

    started = clock.monotonic()
    result = dsr(home, "report", "--year", str(YEAR), "--json")
    elapsed = clock.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30, f"dsr report took {elapsed:.1f} s"  # a few seconds, most of it starting Python
    got = json.loads(result.stdout)
    assert got["since"] == "2025-01-01" and got["until"] == "2025-12-31"
    assert got["received"] == want["received"] == 1000
    assert nonzero(got["by_kind"]) == want["by_kind"]
    assert nonzero(got["by_channel"]) == want["by_channel"]
    assert nonzero(got["by_outcome"]) == want["by_outcome"]
    assert got["answered"] == want["answered"]
    assert got["answered_late"] == want["late"]
    assert got["answered_on_time"] == want["answered"] - want["late"]
    assert got["median_days"] == want["median"] and got["p90_days"] == want["p90"]
    assert got["extended"] == want["extended"]
    assert nonzero(got["refusals"]) == want["refusals"]
    # "today" is the real date for the CLI: every open request of 2025 is past its deadline by now.
    assert got["open"] == got["overdue"] == want["by_outcome"]["open"] == want["overdue"]
    assert [m["month"] for m in got["months"]] == [f"2025-{m:02d}" for m in range(1, 13)]
    for month in got["months"]:
        assert nonzero(month["received"]) == want["months"][month["month"]], month["month"]


def test_list_of_a_simulated_year_by_kind_state_and_period(year_home: tuple[Path, list[Planned]]) -> None:
    home, plans = year_home
    listed = dsr(home, "list", "--json", "--kind", "erasure", "--closed", "--since", "2025-01-01",
                 "--until", "2025-12-31")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    want = [p for p in plans if p.kind == RequestKind.ERASURE and p.outcome is not None]
    assert sorted(r["reference"] for r in rows) == sorted(p.reference for p in want)
    plan = {p.reference: p for p in want}
    for row in rows:
        p = plan[row["reference"]]
        assert row["received"] == p.received.isoformat() and row["closed_on"] == p.closed.isoformat()  # type: ignore[union-attr]
        assert row["on_time"] == (p.closed <= p.deadline)  # type: ignore[operator]
        assert row["deadline"] == p.deadline.isoformat() and row["extended"] == p.extended
        assert row["refusal_ground"] == (p.ground.value if p.ground else None)
    every = json.loads(dsr(home, "list", "--json").stdout)
    assert len(every) == 1002  # the year and its two neighbours


def test_report_html_of_a_simulated_year(year_home: tuple[Path, list[Planned]], tmp_path: Path) -> None:
    home, plans = year_home
    page = tmp_path / "report.html"
    result = dsr(home, "report", "--year", str(YEAR), "--html", str(page), "--language", "en")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip().endswith(f"report written to {page}")
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 2
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/", "")  # nothing fetched
    assert "Requests received per month, by kind" in html and "Days from receipt to answer" in html
    assert "<td>Total</td>" in html and f'<td class="n">{len(plans)}</td>' in html


def test_due_lists_open_requests_from_the_ledger_soonest_first_without_temporal(tmp_path: Path) -> None:
    """`dsr due` reads the ledger: it answers with Temporal unreachable (the address below is a closed port), and
    lists open requests whose deadline falls within the window, overdue first; a period standing still is due
    but not overdue; closed requests and later deadlines are left out."""
    today = datetime.now(PARIS).date()
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", KeyRing.load_or_create(tmp_path / "keys.json")) as ledger:
        b = Book(ledger)
        now = datetime.now(PARIS) - timedelta(days=40)
        b.request("dsr-2026-01-OVERDU", RequestKind.ERASURE, now, today - timedelta(days=3))
        b.event("dsr-2026-01-OVERDU", "processing", now, stage=Stage.PROCESSING)
        b.request("dsr-2026-01-STILLS", RequestKind.ACCESS, now, today - timedelta(days=1))
        b.event("dsr-2026-01-STILLS", "clock_suspended", now + timedelta(days=2))
        b.request("dsr-2026-01-SOONAA", RequestKind.ACCESS, now, today + timedelta(days=5))
        b.event("dsr-2026-01-SOONAA", "extended", now + timedelta(days=1), deadline=today + timedelta(days=5),
                extended=True)
        b.request("dsr-2026-01-LATERA", RequestKind.ACCESS, now, today + timedelta(days=20))
        b.request("dsr-2026-01-CLOSED", RequestKind.ACCESS, now, today + timedelta(days=2))
        b.close("dsr-2026-01-CLOSED", now + timedelta(days=3), Outcome.FULFILLED)
    env = {**os.environ, "DSR_HOME": str(tmp_path), "DSR_TIMEZONE": TIMEZONE, "TEMPORAL_ADDRESS": "127.0.0.1:9",
           "DSR_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}
    for name in ("DSR_KEYS", "DSR_CONFIG"):
        env.pop(name, None)
    listed = subprocess.run([str(BIN / "dsr"), "due", "--within", "7", "--json"], env=env, capture_output=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["stage"], r["overdue"], r["extended"]) for r in rows] == [
        ("dsr-2026-01-OVERDU", "processing", True, False),
        ("dsr-2026-01-STILLS", "received", False, False),
        ("dsr-2026-01-SOONAA", "received", False, True),
    ]
    assert rows[1]["suspended_since"] == (now + timedelta(days=2)).date().isoformat()
    table = subprocess.run([str(BIN / "dsr"), "due", "--within", "0"], env=env, capture_output=True, timeout=120)
    lines = table.stdout.decode().splitlines()
    assert len(lines) == 2 and "dsr-2026-01-OVERDU" in lines[0] and "OVERDUE" in lines[0]
    assert "clock stopped since" in lines[1] and "OVERDUE" not in lines[1]

"""A simulated year of requests written straight into a ledger, with the plan kept beside it.

The plan is in the controller's terms (local receipt and closing dates, the deadline in force, the outcome), so
a test can count what the register should say without going through the code under test; the ledger gets what
the engine would write: UTC instants, a ``received`` event, ``extended`` with its new deadline, ``refused`` with
its ground, ``closed`` with the outcome. Used by tests/dsr/test_register.py and bench/register.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dsr.domain.deadlines import DeadlineInput, deadline_schedule
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
from dsr.store.ledger import Ledger

TIMEZONE = "Europe/Paris"
ZONE = ZoneInfo(TIMEZONE)

GROUNDS_FOR = {
    RequestKind.ACCESS: [RefusalGround.EXCESSIVE, RefusalGround.IDENTITY, RefusalGround.OTHERS_RIGHTS],
    RequestKind.PORTABILITY: [RefusalGround.EXCESSIVE, RefusalGround.OTHERS_RIGHTS],
    RequestKind.ERASURE: [RefusalGround.EXCESSIVE, RefusalGround.ERASURE_EXCEPTION, RefusalGround.LEGAL_RESTRICTION],
    RequestKind.RECTIFICATION: [RefusalGround.EXCESSIVE, RefusalGround.IDENTITY],
}


@dataclass(frozen=True)
class Planned:
    """One request as the simulation meant it, in local dates."""

    reference: str
    kind: RequestKind
    channel: Channel
    received_at: datetime  # aware, local
    deadline: date  # in force at the end (extended if it was)
    extended: bool
    outcome: Outcome | None  # None: still open
    ground: RefusalGround | None
    closed_at: datetime | None  # aware, local

    @property
    def received(self) -> date:
        return self.received_at.date()

    @property
    def closed(self) -> date | None:
        return self.closed_at.date() if self.closed_at else None


def reference(i: int, year: int) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    code = "".join(alphabet[(i >> (5 * k)) & 31] for k in range(6))
    return f"dsr-{year}-01-{code}"


def plan_year(n: int, year: int, *, seed: int = 18, as_of: date | None = None) -> list[Planned]:
    """``n`` requests received over ``year`` (local time), a few on the year's edges at night."""
    rng = random.Random(seed)
    as_of = as_of or date(year + 1, 3, 31)
    start = datetime(year, 1, 1, tzinfo=ZONE)
    seconds = int((datetime(year + 1, 1, 1, tzinfo=ZONE) - start).total_seconds())
    kinds = [RequestKind.ACCESS, RequestKind.RECTIFICATION, RequestKind.ERASURE, RequestKind.PORTABILITY]
    channels = [Channel.FORM, Channel.EMAIL, Channel.API, Channel.SUPPORT_DESK, Channel.OPERATOR]
    plans: list[Planned] = []
    for i in range(n):
        if i == 0:  # 00:30 on 1 January, local: 23:30 UTC the day before, inside the year
            received_at = datetime(year, 1, 1, 0, 30, tzinfo=ZONE)
        elif i == 1:  # 23:45 on 31 December, local: inside the year, though 22:45 UTC
            received_at = datetime(year, 12, 31, 23, 45, tzinfo=ZONE)
        else:
            received_at = start + timedelta(seconds=rng.randrange(seconds))
            received_at = received_at.astimezone(ZONE)
        kind = rng.choices(kinds, weights=[45, 10, 35, 10])[0]
        channel = rng.choices(channels, weights=[40, 30, 10, 15, 5])[0]
        deadlines = deadline_schedule(DeadlineInput(start=received_at.date(), timezone=TIMEZONE))
        extended = rng.random() < 0.1
        deadline = (deadlines.extended if extended else deadlines.normal).due
        roll = rng.random()
        outcome: Outcome | None
        if roll < 0.70:
            outcome = Outcome.FULFILLED
        elif roll < 0.78:
            outcome = Outcome.REFUSED
        elif roll < 0.86:
            outcome = Outcome.UNVERIFIED
        elif roll < 0.90:
            outcome = Outcome.WITHDRAWN
        else:  # still open: mostly the year's last weeks, a few forgotten ones
            outcome = None if received_at.month == 12 or rng.random() < 0.2 else Outcome.FULFILLED
        ground = rng.choice(GROUNDS_FOR[kind]) if outcome == Outcome.REFUSED else None
        closed_at = None
        if outcome is not None:
            limit = (deadline - received_at.date()).days
            days = rng.randint(0, limit) if rng.random() < 0.9 else limit + rng.randint(1, 20)  # a tenth late
            day = received_at.date() + timedelta(days=days)
            # Some close just after midnight: the UTC date is then the day before; the local one is what counts.
            closed_at = datetime.combine(day, time(0, 30) if i % 7 == 0 else time(10, 15), ZONE)
            if closed_at <= received_at:
                closed_at = received_at + timedelta(minutes=5)
            if closed_at.date() > as_of:
                outcome, ground, closed_at = None, None, None
        plans.append(Planned(reference(i, year), kind, channel, received_at, deadline, extended, outcome, ground,
                             closed_at))
    return plans


def fill(ledger: Ledger, plans: list[Planned]) -> None:
    """Write the plans as the engine would: the row, then its events, each with its own key and instant."""
    for i, p in enumerate(plans):
        normal = deadline_schedule(DeadlineInput(start=p.received, timezone=TIMEZONE)).normal.due
        ledger.record_request(RequestRecordInput(
            request_id=p.reference, kind=p.kind, channel=p.channel,
            subject=Subject(email=f"person{i}@example.org", name=f"Person {i}"),
            received_at=p.received_at.astimezone(UTC), deadline=normal,
            language=Language.FR if i % 3 else Language.EN), now=p.received_at.astimezone(UTC))
        ledger.append_event(AuditEvent(p.reference, "received", stage=Stage.RECEIVED,
                                       details={"channel": p.channel.value}),
                            key=f"{p.reference}/received", at=p.received_at)
        if p.extended:
            ledger.append_event(AuditEvent(p.reference, "extended", actor="alice", deadline=p.deadline,
                                           extended=True, details={"previous_deadline": normal.isoformat()},
                                           note="Many systems."),
                                key=f"{p.reference}/extended", at=p.received_at + timedelta(days=3))
        if p.outcome is None:
            ledger.append_event(AuditEvent(p.reference, "processing", stage=Stage.PROCESSING),
                                key=f"{p.reference}/processing", at=p.received_at + timedelta(hours=1))
            continue
        assert p.closed_at is not None
        if p.ground is not None:
            ledger.append_event(AuditEvent(p.reference, "refused", actor="bob",
                                           details={"reason_length": "12", "ground": p.ground.value},
                                           note="Third request."),
                                key=f"{p.reference}/refused", at=p.closed_at - timedelta(minutes=1))
        ledger.append_event(AuditEvent(p.reference, "closed", stage=Stage.CLOSED, outcome=p.outcome),
                            key=f"{p.reference}/closed", at=p.closed_at)

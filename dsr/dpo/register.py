"""The register of requests and its statistics, read from the ledger alone.

Temporal forgets a workflow after its retention period; the ledger does not, so the register a DPO shows the
supervisory authority (every request, when it came, when it was answered, whether in time) is built from the
``requests`` and ``events`` tables only, on SQLite and PostgreSQL alike, in two queries whatever the number of
requests: the request rows that pass the filters, and the events that matter for the register (``closed`` for
the closing date, ``refused`` for the ground) of those same rows.

Definitions (the README says the same):

* dates are taken in the controller's time zone (``DSR_TIMEZONE``);
* *closed on* is the date of the request's ``closed`` event, the day the subject was answered (the reply,
  refusal or closure notice goes out just before it);
* *days taken* counts calendar days from the receipt date to the closing date;
* *on time*: closed on or before the deadline in force (the ledger's, so an extension or a suspended clock
  is already in it);
* an open request whose deadline has passed is *overdue*, unless its period stands still (``DSR_CLOCK=
  suspend_during_identity``: the deadline moves when the subject answers, ``clock_resumed``) and stood still before
  the deadline passed; a request closed while its period stood still, stopped in time, is on time;
* *answered* requests are the closed ones except those the subject withdrew: the share on time, the median
  and the 90th percentile of days are computed over them (a withdrawal calls for no answer);
* the *case* of a request about a deceased person (``post_mortem``, art. 85 loi 78-17) is what it does with the
  deceased person's data: the instruction of the directives found in the ledger (``directives_found``: erase,
  keep, hand_over; 85-I), else the sender's aim recorded on receipt (``received``: ``scope``; 85-II: closure is
  ``erase``, the accounts closed and the data erased, estate is ``estate``); a request of an engine that recorded
  neither is ``erase``, the default aim. Only post_mortem requests' ``received`` and ``directives_found`` events
  are read for it.

Nothing here decrypts the subject unless asked (``with_subject``: the DPO's register, never a default).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, or_, select
from sqlmodel import Session, col

from dsr.domain.model import (
    DirectiveInstruction,
    Language,
    Outcome,
    PostMortemAim,
    RefusalGround,
    RequestKind,
    Stage,
    Subject,
)
from dsr.store.ledger import EventRow, Ledger, RequestRow

REGISTER_EVENTS = ("closed", "refused", "clock_suspended", "identity_doubt", "clock_resumed")
"""The only events the register reads: when a request closed, on what ground it was refused, and when its period
stood still (décret 2019-536: from a document policy's identity request or a reasonable doubt, to the subject's
answer)."""

POST_MORTEM_EVENTS = ("received", "directives_found")
"""Read for post_mortem requests only: the sender's aim (``scope``) and the directives' instruction, their case."""

CASES = ("erase", "keep", "hand_over", "estate")
"""What a post_mortem request does with the deceased person's data: erased (the directives, or the heirs' closure of
the accounts), kept (the directives), handed over to the person they designated, or the estate's information sent
to the heirs (85-II 1°)."""


def post_mortem_case(instruction: str | None, scope: str | None) -> str:
    """The case of a post_mortem request: the directives' instruction when some were found, else the sender's aim."""
    if instruction in {i.value for i in DirectiveInstruction}:
        return str(instruction)
    return "estate" if scope == PostMortemAim.ESTATE.value else "erase"


ANSWERED_BUT = frozenset({Outcome.WITHDRAWN.value, Outcome.TERMINATED.value})
"""Closed requests that were not answered: the subject withdrew (no answer was due), or the workflow was terminated
in Temporal (recorded by ``dsr reconcile``: closed in the ledger, never answered)."""


class RequestState(StrEnum):
    ALL = "all"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class RegisterFilter:
    """Which requests to list; dates are receipt dates in the controller's time zone, both ends included."""

    state: RequestState = RequestState.ALL
    kind: RequestKind | None = None
    since: date | None = None
    until: date | None = None
    overdue: bool = False  # open requests past their deadline only
    due_by: date | None = None  # open requests whose deadline is this day or earlier (`dsr due`)


@dataclass(frozen=True)
class RegisterEntry:
    """One line of the register. ``email`` and ``name`` are filled only when the subject was asked for."""

    reference: str
    kind: str
    channel: str
    language: str
    received: date
    deadline: date
    extended: bool
    stage: str
    outcome: str | None
    refusal_ground: str | None
    closed_on: date | None
    days_taken: int | None
    on_time: bool | None  # None while open
    overdue: bool  # open and past its deadline
    suspended_since: date | None = None  # open, or closed, while its period stands still: since that day
    case: str | None = None  # post_mortem only: one of CASES
    email: str | None = None
    name: str | None = None

    @property
    def answered(self) -> bool:
        return self.closed_on is not None and self.outcome not in ANSWERED_BUT


def _start_of(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def read_register(ledger: Ledger, *, timezone: str, today: date, filters: RegisterFilter | None = None,
                  with_subject: bool = False) -> list[RegisterEntry]:
    """The register, oldest receipt first: one query for the requests, one for the events of
    :data:`REGISTER_EVENTS` of those requests (their close, refusal ground and any period standing still)."""
    filters = filters or RegisterFilter()
    zone = ZoneInfo(timezone)
    conditions: list[ColumnElement[bool]] = []
    if filters.kind is not None:
        conditions.append(col(RequestRow.kind) == RequestKind(filters.kind).value)
    if filters.since is not None:
        conditions.append(col(RequestRow.received_at) >= _start_of(filters.since, zone))
    if filters.until is not None:
        conditions.append(col(RequestRow.received_at) < _start_of(filters.until + timedelta(days=1), zone))
    if filters.state == RequestState.OPEN or filters.overdue or filters.due_by is not None:
        conditions.append(col(RequestRow.stage) != Stage.CLOSED.value)
    elif filters.state == RequestState.CLOSED:
        conditions.append(col(RequestRow.stage) == Stage.CLOSED.value)
    if filters.overdue:
        conditions.append(col(RequestRow.deadline) < today)
    if filters.due_by is not None:
        conditions.append(col(RequestRow.deadline) <= filters.due_by)

    names = ("request_id", "kind", "channel", "language", "received_at", "deadline", "extended", "stage", "outcome",
             "updated_at")
    columns = [col(getattr(RequestRow, name)) for name in names]
    wanted = select(col(RequestRow.request_id)).where(*conditions)
    post_mortem = select(col(RequestRow.request_id)).where(
        *conditions, col(RequestRow.kind) == RequestKind.POST_MORTEM.value)
    events = (
        select(col(EventRow.request_id), col(EventRow.event), col(EventRow.at), col(EventRow.details))
        .where(or_(
            and_(col(EventRow.event).in_(REGISTER_EVENTS), col(EventRow.request_id).in_(wanted)),
            # A post_mortem request's case: its aim on receipt, its directives' instruction (a few rows a year).
            and_(col(EventRow.event).in_(POST_MORTEM_EVENTS), col(EventRow.request_id).in_(post_mortem)),
        ))
        .order_by(col(EventRow.at), col(EventRow.id))
    )
    ordering = (col(RequestRow.received_at), col(RequestRow.request_id))

    def request_values(session: Session) -> Iterator[tuple[Subject | None, list[Any]]]:
        """Each request's subject (only ``with_subject``) and the values of ``columns``, in the register's order."""
        if with_subject:
            # The sealed subject columns are read only when asked for: nothing else decrypts them.
            for (row,) in session.execute(select(RequestRow).where(*conditions).order_by(*ordering)):
                yield ledger.subject_of(row), [getattr(row, name) for name in names]
        else:
            for found in session.execute(select(*columns).where(*conditions).order_by(*ordering)):
                yield None, list(found)

    closed_at: dict[str, datetime] = {}
    grounds: dict[str, str] = {}
    suspended: dict[str, datetime] = {}  # the request's period stands still since then
    scopes: dict[str, str] = {}  # post_mortem: the sender's aim
    instructions: dict[str, str] = {}  # post_mortem: the directives' instruction
    entries: list[RegisterEntry] = []
    with ledger.reading() as session:
        for request_id, event, at, details in session.execute(events):
            if event == "closed":
                closed_at.setdefault(request_id, at)  # the first close; a replayed activity cannot add a second
            elif event == "clock_resumed":
                suspended.pop(request_id, None)
            elif event == "clock_suspended" or (
                    event == "identity_doubt" and json.loads(details).get("clock_suspended") == "true"):
                suspended.setdefault(request_id, at)
            elif event == "refused":
                # Refusals recorded before grounds existed were all Art. 12(5) (manifestly unfounded or excessive).
                grounds[request_id] = json.loads(details).get("ground") or RefusalGround.EXCESSIVE.value
            elif event == "received":
                scopes[request_id] = json.loads(details).get("scope", "")
            elif event == "directives_found":
                instructions[request_id] = json.loads(details).get("instruction", "")
        for subject, values in request_values(session):
            request_id, kind, channel, language, received_at, deadline, extended, stage, outcome, updated = values
            received = _local(received_at, zone)
            closed = None
            stood_still = _local(suspended[request_id], zone) if request_id in suspended else None
            # Stopped before the deadline passed, the period cannot run out while it stands still.
            stopped_in_time = stood_still is not None and stood_still <= deadline
            if stage == Stage.CLOSED.value:
                # A ledger row closed without its event (written by hand, or by a very old engine): its last change.
                closed = _local(closed_at.get(request_id, updated), zone)
            entries.append(RegisterEntry(
                reference=request_id, kind=kind, channel=channel, language=language, received=received,
                deadline=deadline, extended=bool(extended), stage=stage, outcome=outcome,
                refusal_ground=grounds.get(request_id) if outcome == Outcome.REFUSED.value else None,
                closed_on=closed,
                days_taken=(closed - received).days if closed is not None else None,
                on_time=(closed <= deadline or stopped_in_time) if closed is not None else None,
                overdue=closed is None and today > deadline and not stopped_in_time,
                suspended_since=stood_still,
                case=post_mortem_case(instructions.get(request_id), scopes.get(request_id))
                if kind == RequestKind.POST_MORTEM.value else None,
                email=subject.email if subject else None,
                name=subject.name if subject else None,
            ))
    if filters.overdue:  # the query keeps open requests past their deadline; some of them stand still
        entries = [e for e in entries if e.overdue]
    return entries


def _local(instant: datetime, zone: ZoneInfo) -> date:
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(zone).date()


# --- statistics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthStatistics:
    month: str  # YYYY-MM, the month of receipt
    received: dict[str, int]  # per kind
    answered: int
    on_time: int
    extended: int
    refused: int

    @property
    def total(self) -> int:
        return sum(self.received.values())


@dataclass(frozen=True)
class Statistics:
    """What a DPO reports for a period: the requests received in it, and what became of them by ``as_of``."""

    since: date
    until: date
    as_of: date
    received: int
    by_kind: dict[str, int]
    by_channel: dict[str, int]
    by_outcome: dict[str, int]  # closed requests per outcome, and "open" for the others
    open: int
    overdue: int  # open past their deadline on ``as_of``
    answered: int  # closed, not withdrawn
    answered_on_time: int
    answered_late: int
    on_time_share: float | None  # answered_on_time / answered; None when nothing was answered
    median_days: float | None
    p90_days: int | None  # nearest rank: 90 % of the answers took this many days or fewer
    extended: int
    refusals: dict[str, int]  # per ground
    months: list[MonthStatistics]
    days_taken: list[int] = field(repr=False)  # per answered request (the distribution's chart), sorted
    days_taken_late: list[int] = field(repr=False)  # those of the late ones, sorted
    by_case: dict[str, int] = field(default_factory=dict)  # post_mortem requests per case (CASES)
    directives: DirectiveCounts | None = None  # the directives table now (not of the period); None: not read


@dataclass(frozen=True)
class DirectiveCounts:
    """Directives on the fate of data after death (85-I) in force on the day of the report (recorded, not revoked),
    per instruction, and how many of them a post_mortem request applied."""

    in_force: dict[str, int]
    applied: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.in_force.values())

    @property
    def total_applied(self) -> int:
        return sum(self.applied.values())


def percentile(values: Sequence[int], share: float) -> int:
    """The nearest-rank percentile: the smallest value that at least ``share`` of ``values`` do not exceed."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def months_between(since: date, until: date) -> list[str]:
    months, year, month = [], since.year, since.month
    while (year, month) <= (until.year, until.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def compute_statistics(entries: Iterable[RegisterEntry], *, since: date, until: date, as_of: date,
                       directives: DirectiveCounts | None = None) -> Statistics:
    """Statistics of the requests received from ``since`` to ``until`` (both included) among ``entries``;
    ``directives``, the directives table's counts, are passed through."""
    chosen = [e for e in entries if since <= e.received <= until]
    answered = [e for e in chosen if e.answered]
    days = sorted(e.days_taken for e in answered if e.days_taken is not None)
    late = [e for e in answered if not e.on_time]
    outcomes = Counter(e.outcome if e.closed_on is not None and e.outcome else "open" for e in chosen)
    months: list[MonthStatistics] = []
    for month in months_between(since, until):
        of_month = [e for e in chosen if f"{e.received:%Y-%m}" == month]
        months.append(MonthStatistics(
            month=month,
            received=_ordered(Counter(e.kind for e in of_month), [k.value for k in RequestKind]),
            answered=sum(e.answered for e in of_month),
            on_time=sum(bool(e.answered and e.on_time) for e in of_month),
            extended=sum(e.extended for e in of_month),
            refused=sum(e.outcome == Outcome.REFUSED.value for e in of_month),
        ))
    return Statistics(
        since=since, until=until, as_of=as_of,
        received=len(chosen),
        by_kind=_ordered(Counter(e.kind for e in chosen), [k.value for k in RequestKind]),
        by_channel=_ordered(Counter(e.channel for e in chosen), []),
        by_outcome=_ordered(outcomes, [o.value for o in Outcome] + ["open"]),
        open=sum(e.closed_on is None for e in chosen),
        overdue=sum(e.overdue for e in chosen),
        answered=len(answered),
        answered_on_time=len(answered) - len(late),
        answered_late=len(late),
        on_time_share=(len(answered) - len(late)) / len(answered) if answered else None,
        median_days=float(statistics.median(days)) if days else None,
        p90_days=percentile(days, 0.9) if days else None,
        extended=sum(e.extended for e in chosen),
        refusals=_ordered(Counter(e.refusal_ground for e in chosen if e.refusal_ground),
                          [g.value for g in RefusalGround]),
        months=months,
        days_taken=days,
        days_taken_late=sorted(e.days_taken for e in late if e.days_taken is not None),
        by_case=_ordered(Counter(e.case for e in chosen if e.kind == RequestKind.POST_MORTEM.value and e.case),
                         list(CASES)),
        directives=directives,
    )


def _ordered(counts: Counter[str], order: list[str]) -> dict[str, int]:
    """Every value of ``order`` (at zero too, in the domain's order), then any other by count: a kind, outcome or
    channel the engine does not know yet (a newer worker's) is counted, not dropped."""
    known = {value: counts.get(value, 0) for value in order}
    rest = sorted((v for v in counts if v not in known), key=lambda v: (-counts[v], v))
    return {**known, **{v: counts[v] for v in rest}}


# --- words --------------------------------------------------------------------------------------------

LABELS: dict[Language, dict[str, str]] = {
    Language.FR: {
        "access": "accès", "rectification": "rectification", "erasure": "effacement",
        "portability": "portabilité", "objection": "opposition",
        "consent_withdrawal": "retrait du consentement",
        "post_mortem": "personne décédée (art. 85 LIL)",
        "restriction": "limitation",
        "api": "API", "email": "e-mail", "form": "formulaire", "support_desk": "service client",
        "operator": "saisie par l'équipe", "letter": "courrier",
        "received": "reçue", "awaiting_identity": "identité en attente", "processing": "en traitement",
        "needs_attention": "intervention requise", "replying": "réponse en cours", "closed": "close",
        "fulfilled": "satisfaite", "declined": "opposition non retenue (art. 21.1)",
        "refused": "refusée", "unverified": "identité non vérifiée",
        "withdrawn": "retirée", "terminated": "arrêtée sans réponse", "open": "en cours",
        "excessive": "manifestement infondée ou excessive (art. 12.5)",
        "identity": "identité non établie (art. 11.2)",
        "others_rights": "droits d'autrui (art. 15.4 / 20.4)",
        "erasure_exception": "exception à l'effacement (art. 17.3)",
        "legal_restriction": "limitation légale (art. 23)",
        "quality": "qualité pour agir non établie (art. 85 LIL)",
        "erase": "effacer", "keep": "conserver", "hand_over": "communiquer à la personne désignée",
        "estate": "informations utiles à la succession",
        "yes": "oui", "no": "non",
    },
    Language.EN: {
        "access": "access", "rectification": "rectification", "erasure": "erasure", "portability": "portability",
        "objection": "objection",
        "consent_withdrawal": "withdrawal of consent",
        "post_mortem": "deceased person (Art. 85 LIL)",
        "restriction": "restriction",
        "api": "API", "email": "email", "form": "web form", "support_desk": "support desk",
        "operator": "entered by staff", "letter": "letter",
        "received": "received", "awaiting_identity": "awaiting identity", "processing": "processing",
        "needs_attention": "needs attention", "replying": "replying", "closed": "closed",
        "fulfilled": "fulfilled", "declined": "objection not upheld (Art. 21(1))",
        "refused": "refused", "unverified": "identity not verified",
        "withdrawn": "withdrawn", "terminated": "terminated, unanswered", "open": "open",
        "excessive": "manifestly unfounded or excessive (Art. 12(5))",
        "identity": "identity not established (Art. 11(2))",
        "others_rights": "rights of others (Art. 15(4) / 20(4))",
        "erasure_exception": "erasure exception (Art. 17(3))",
        "legal_restriction": "legal restriction (Art. 23)",
        "quality": "standing to act not established (Art. 85 LIL)",
        "erase": "erase", "keep": "keep", "hand_over": "hand over to the designated person",
        "estate": "information for the estate",
        "yes": "yes", "no": "no",
    },
}


def label(value: str | None, language: Language) -> str:
    """The word for a code in ``language``; a code the engine has no word for yet is shown as it is."""
    if value is None:
        return ""
    return LABELS[Language(language)].get(value, value)


COLUMNS = ("reference", "kind", "case", "channel", "received", "deadline", "extended", "suspended_since", "stage",
           "outcome", "refusal_ground", "closed_on", "days_taken", "on_time", "overdue")
SUBJECT_COLUMNS = ("email", "name")

HEADERS: dict[Language, dict[str, str]] = {
    Language.FR: {
        "reference": "référence", "kind": "type", "case": "cas (art. 85)", "channel": "canal", "received": "reçue le",
        "deadline": "échéance", "extended": "prolongée", "suspended_since": "délai suspendu depuis",
        "stage": "étape", "outcome": "issue",
        "refusal_ground": "motif du refus", "closed_on": "close le", "days_taken": "jours",
        "on_time": "dans les délais", "overdue": "en retard", "email": "e-mail", "name": "nom",
    },
    Language.EN: {
        "reference": "reference", "kind": "kind", "case": "case (Art. 85)", "channel": "channel",
        "received": "received",
        "deadline": "deadline", "extended": "extended", "suspended_since": "clock stopped since",
        "stage": "stage", "outcome": "outcome",
        "refusal_ground": "refusal ground", "closed_on": "closed on", "days_taken": "days taken",
        "on_time": "on time", "overdue": "overdue", "email": "email", "name": "name",
    },
}


def entry_cells(entry: RegisterEntry, language: Language, *, with_subject: bool = False) -> list[str]:
    """One register line as words of ``language`` (codes become words, yes/no, dates ISO)."""
    language = Language(language)

    def flag(value: bool | None) -> str:
        return "" if value is None else label("yes" if value else "no", language)

    cells = [
        entry.reference, label(entry.kind, language), label(entry.case, language), label(entry.channel, language),
        entry.received.isoformat(),
        entry.deadline.isoformat(), flag(entry.extended),
        entry.suspended_since.isoformat() if entry.suspended_since else "", label(entry.stage, language),
        label(entry.outcome, language), label(entry.refusal_ground, language),
        entry.closed_on.isoformat() if entry.closed_on else "",
        "" if entry.days_taken is None else str(entry.days_taken), flag(entry.on_time),
        flag(entry.overdue),
    ]
    if with_subject:
        cells += [entry.email or "", entry.name or ""]
    return cells


def entry_json(entry: RegisterEntry, *, with_subject: bool = False) -> dict[str, object]:
    """One register line with codes, for scripts."""
    out: dict[str, object] = {
        "reference": entry.reference, "kind": entry.kind, "case": entry.case, "channel": entry.channel,
        "language": entry.language,
        "received": entry.received.isoformat(), "deadline": entry.deadline.isoformat(),
        "extended": entry.extended,
        "suspended_since": entry.suspended_since.isoformat() if entry.suspended_since else None,
        "stage": entry.stage, "outcome": entry.outcome,
        "refusal_ground": entry.refusal_ground,
        "closed_on": entry.closed_on.isoformat() if entry.closed_on else None,
        "days_taken": entry.days_taken, "on_time": entry.on_time, "overdue": entry.overdue,
    }
    if with_subject:
        out["email"], out["name"] = entry.email, entry.name
    return out

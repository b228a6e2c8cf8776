"""The one protocol every system holding personal data is reached through.

Connectors know HTTP and the vendor's API, nothing of Temporal: the activities in
``activities/connectors.py`` run them, heartbeat their progress and turn their errors into retry
decisions. Error messages must never contain the subject's email, name or address — they end up in
Temporal failures, logs and the UI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol, TypeVar, runtime_checkable

from dsr.domain.model import (
    CANONICAL_FIELDS,
    ConnectorOutcome,
    ConsentAction,
    RecordAction,
    RecordReport,
    RequestKind,
    Subject,
)

# The connector errors are part of the engine's one exception tree (dsr.errors); re-exported here.
from dsr.errors import ConnectorError, PermanentConnectorError, TransientConnectorError
from dsr.store.journals import Journal, JournalEntry, JournalState

T = TypeVar("T")

# --- the export store, as connectors see it ----------------------------------------------------


class DatasetWriter(Protocol):
    """Appends records of one dataset to the request's export store (encrypted at rest).

    A connector runs on the worker's event loop with every other activity and workflow task of the worker, so
    whatever waits on the store (an object store's round trips, a slow store catching up) is awaited: ``write``
    never waits, ``flush``, ``truncate`` and ``close`` are coroutines (``dsr.store.exports.DatasetStream``)."""

    @property
    def count(self) -> int:
        """Records currently in the dataset."""
        ...

    def write(self, record: Mapping[str, Any]) -> None:
        """Add a record (never waits on the store; call ``flush`` at least once per page)."""
        ...

    async def truncate(self, count: int) -> None:
        """Keep the first ``count`` records: on resume, drop what was written after the last checkpoint."""
        ...

    async def flush(self) -> None:
        """Hand what was written to the store, in order: call before the checkpoint that counts it (the activity
        heartbeats that checkpoint only once those records are stored). Waits while the store is behind."""
        ...

    async def close(self) -> None: ...


class ExportSink(Protocol):
    async def open(self, system: str, dataset: str, *, provided: bool) -> DatasetWriter:
        """Open (creating or appending to) one dataset of one system for the current request."""
        ...


async def open_datasets(sink: ExportSink, system: str, datasets: Sequence[str],
                        provided: Collection[str]) -> dict[str, DatasetWriter]:
    """Open every dataset of ``system`` at once, in ``datasets``' order. Each opening is a round trip or two to the
    object store (S3: tens of milliseconds): a connector with a dozen datasets (Stripe's) used to wait for them one
    after the other before its first call to the vendor."""
    writers = await asyncio.gather(*(sink.open(system, name, provided=name in provided) for name in datasets))
    return dict(zip(datasets, writers, strict=True))


async def truncate_datasets(writers: Mapping[str, DatasetWriter], counts: Mapping[str, int]) -> None:
    """Rewind every dataset to its count in ``counts`` (0 when absent), at once (see :func:`open_datasets`)."""
    await asyncio.gather(*(writer.truncate(counts.get(name, 0)) for name, writer in writers.items()))


async def close_datasets(writers: Mapping[str, DatasetWriter]) -> None:
    """Close every dataset, at once; each is closed even when another fails (the first failure is raised)."""
    results = await asyncio.gather(*(writer.close() for writer in writers.values()), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def together(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once and answer their results in order. A failure cancels the others and is raised as it
    is, not in an exception group: the activity tells a transient failure from a permanent one by its type (of two
    that failed before the others were cancelled, the one earlier in ``calls``). Cancelled, this cancels them all;
    nothing is left running when it returns or raises."""
    if not calls:
        return []
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:  # in their order: the earliest one's failure, if two failed
            failure = task.exception() if task.done() and not task.cancelled() else None
            if failure is not None:
                raise failure
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def side_by_side(runs: Sequence[Callable[[], Awaitable[T]]], *, at_once: int) -> list[T]:
    """:func:`together`, at most ``at_once`` of ``runs`` at a time, started in their order, their results in that
    order: an export's datasets (each one's pages in order, so its count in the cursor means what it meant), or the
    listings an erasure or a count reads, paged side by side. A run waiting for its turn when another fails may
    still start before the cancellation reaches it (one call at most)."""
    gate = asyncio.Semaphore(at_once)

    async def gated(run: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await run()

    return await together([gated(run) for run in runs])


Places = dict[str, tuple[int, str | None]]
"""Where an export paged side by side left each dataset: the listing it is at, and the last record id (or page
token) it read there; None: from the listing's start."""


def lane_places(cursor: Mapping[str, Any], datasets: Sequence[str]) -> tuple[Places, dict[str, int]] | None:
    """Each dataset's place (the cursor's ``lanes``) and record count (``written``), or None unless every dataset
    has both, well formed: a dataset kept at its count but paged again from its start would hold its first records
    twice, and one emptied but resumed mid-way would lose them."""
    lanes, written = cursor.get("lanes"), cursor.get("written")
    if not isinstance(lanes, Mapping) or not isinstance(written, Mapping):
        return None
    places: Places = {}
    counts: dict[str, int] = {}
    for dataset in datasets:
        match lanes.get(dataset), written.get(dataset):
            case [int() as listing, str() | None as after], int() as count if listing >= 0 and count >= 0:
                places[dataset], counts[dataset] = (listing, after), count
            case _:
                return None
    return places, counts


def noted_when_found(cursor: Mapping[str, Any]) -> list[str]:
    """The notes finding the subject made, as the cursor carries them (``found``): a resumed export, which does not
    look the subject up again, says them as the first attempt did. Notes hold no personal data."""
    return [note for note in cursor.get("found") or [] if isinstance(note, str)]


@dataclass
class ExportJob:
    """Everything an export needs. Never returns record contents: they stream into ``sink``."""

    request_id: str
    subject: Subject
    sink: ExportSink
    provided_only: bool = False  # portability (Art. 20): only data the subject provided
    resume: Mapping[str, Any] | None = None  # the last checkpoint of a previous attempt, if any
    checkpoint: Callable[[Mapping[str, Any]], None] = lambda cursor: None
    """Call after each page is fully written, with a JSON-able cursor that lets ``resume`` continue
    exactly after it (e.g. ``{"dataset": "orders", "page": 7, "written": {"orders": 700}}``); the
    activity heartbeats it to Temporal, so a crashed worker's retry starts from there."""


RECORD_DATE = "record"
FINANCIAL_YEAR_END = "financial_year_end"


@dataclass
class RetentionRule:
    """A dataset kept (anonymised or as is) under a legal obligation instead of being deleted.

    Accounting records (Code de commerce L123-22) are kept ten years from the close of the financial year
    they belong to, not from their own date: an order of March 2024 in a year closing on 31 December is kept
    until 31 December 2034. ``counted_from`` says which; ``financial_year_end`` is the closing day (MM-DD).
    """

    dataset: str  # e.g. "charges", "invoices", "orders"
    legal_basis: str  # e.g. "Art. 17(3)(b) GDPR; Code de commerce L123-22 (accounting, 10 years)"
    years: int = 10
    counted_from: str = RECORD_DATE  # or FINANCIAL_YEAR_END
    financial_year_end: str = "12-31"

    def __post_init__(self) -> None:
        if self.counted_from not in (RECORD_DATE, FINANCIAL_YEAR_END):
            raise ValueError(f"counted_from must be {RECORD_DATE} or {FINANCIAL_YEAR_END}")
        month_day(self.financial_year_end)  # fails early on a malformed closing day

    def until(self, created: date) -> date:
        """The last day a record created on ``created`` is kept: ``years`` after its date, or after the close
        of its financial year."""
        start = created if self.counted_from == RECORD_DATE else self.year_closing(created)
        return _same_day(start, start.year + self.years)

    def year_closing(self, day: date) -> date:
        """The last day of the financial year that ``day`` belongs to."""
        month, closing_day = month_day(self.financial_year_end)
        canonical = date(2000, month, closing_day)  # 2000: a leap year, so a 29 February closing is allowed
        closing = _same_day(canonical, day.year)
        return closing if day <= closing else _same_day(canonical, day.year + 1)


def month_day(value: str) -> tuple[int, int]:
    """``MM-DD`` as (month, day); ValueError unless it is a day of some year (29 February included)."""
    try:
        month, day = (int(part) for part in value.split("-"))
        date(2000, month, day)
    except ValueError:
        raise ValueError(f"financial_year_end must be a day of the year as MM-DD, got {value!r}") from None
    return month, day


def _same_day(day: date, year: int) -> date:
    """``day`` in ``year``; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=year)
    except ValueError:
        return day.replace(year=year, day=28)


@dataclass
class OperationJob:
    """Input of erase and rectify: who, for which request (idempotency keys derive from it).

    ``journal`` remembers, across attempts and machines, what this request already did in the system:
    a connector writes an intent (:meth:`Journal.intend`) before each mutating call and the line the reply
    will show (:meth:`Journal.record`) once the vendor confirmed it, then starts every attempt from
    :meth:`Journal.state`: what is done is not redone and is reported as done by this request; an intent
    whose record is gone now is done too (the vendor acted, its answer was lost). "Already gone" is left
    for records gone before this request. The activity gives a journal on the object store; the default
    lives in memory (a connector called outside an activity).
    """

    request_id: str
    subject: Subject
    changes: dict[str, str] = field(default_factory=dict)  # rectification, canonical fields below
    consent: list[ConsentAction] = field(default_factory=list)  # consent withdrawal: this system's actions
    journal: Journal = field(default_factory=Journal)


@dataclass
class Located:
    """One record of the subject found in a system (ids only)."""

    dataset: str
    record_id: str


@runtime_checkable
class Connector(Protocol):
    """A system that holds personal data: a CRM, a payment processor, a shop."""

    name: str
    """Unique, stable, shown to operators (e.g. "hubspot", "stripe-eu")."""

    kinds: frozenset[RequestKind]
    """The request kinds this system takes part in."""

    async def check(self) -> str:
        """Call the system once: returns a short description (e.g. "auth OK, 3 scopes"); raises
        :class:`ConnectorError` when it is unreachable or the credentials are refused."""
        ...

    async def locate(self, subject: Subject) -> list[Located]:
        """Every record of the subject (email matched case-insensitively), ids only."""
        ...

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        """Stream every record (or, for portability, every provided record) into the sink (Art. 15, 20)."""
        ...

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        """Delete, anonymise or retain (with legal basis and date) every record (Art. 17). Idempotent: run again
        for the same request (its ``job.journal``) it reports what the earlier runs did, asking nothing twice;
        what was erased before this request reports ``already_gone``."""
        ...

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        """Apply ``job.changes`` (canonical fields) to the system's own fields (Art. 16). Idempotent: a retry
        reports the fields earlier runs of the request changed (``job.journal``), not "unchanged"."""
        ...

    async def aclose(self) -> None:
        """Release HTTP clients."""
        ...


@runtime_checkable
class StopsMarketing(Protocol):
    """A system that sends (or feeds) direct marketing and can stop it for one person through its API."""

    async def stop_marketing(self, job: OperationJob) -> ConnectorOutcome:
        """Art. 21(3): stop every marketing communication to the subject (unsubscribe from every type), the
        vendor's own opt-out, never an edited property. Idempotent: what is already stopped is reported
        ``unchanged``."""
        ...


CONSENT = "consent"
"""The dataset of a consent withdrawal's report lines: one per purpose and system (record id: the purpose key)."""


@runtime_checkable
class WithdrawsConsent(Protocol):
    """A system that can stop processing for a purpose based on consent (Art. 7(3)) through its API or schema."""

    async def withdraw_consent(self, job: OperationJob) -> ConnectorOutcome:
        """Carry out each of ``job.consent`` (a subscription or table action; residual actions are reported by
        the caller) and verify it by reading again. Idempotent: what is already withdrawn is ``unchanged``."""
        ...


def residual_withdrawal(action: ConsentAction) -> RecordReport:
    """The line of a withdrawal this system cannot carry out itself: the operator does it (followed up)."""
    return RecordReport(CONSENT, action.purpose, RecordAction.RESIDUAL,
                        note=action.residual or "this system offers no switch the engine can turn for this "
                                                "purpose: stop using the person's data for it by hand")


def no_consent_control(connector: str, actions: list[ConsentAction]) -> ConnectorOutcome:
    """A system mapped with residual actions only, or one that has no ``withdraw_consent``."""
    report = [residual_withdrawal(action) for action in actions]
    return ConnectorOutcome(connector=connector, report=report, counts=tally(report))


def no_marketing_control(connector: str) -> ConnectorOutcome:
    """The outcome of an objection to marketing in a system whose API offers no opt-out: one residual line for
    the operator (the workflow follows it up until someone confirms), said as it is."""
    line = RecordReport(
        "marketing", "*", RecordAction.RESIDUAL,
        note="this system's API offers no marketing opt-out to set: check that no campaign or export to a "
             "marketing tool uses its data for this person (the suppression list holds the objection)",
    )
    return ConnectorOutcome(connector=connector, report=[line], counts=tally([line]))


@runtime_checkable
class MarksRestriction(Protocol):
    """A system where a record can be marked restricted (Art. 18) in a way its operators' tools respect (a contact
    property, customer metadata, a column), and unmarked when the restriction is lifted."""

    async def restrict(self, job: OperationJob) -> ConnectorOutcome:
        """Mark every record of the subject restricted (``restricted`` lines), verified by reading it back.
        Idempotent: a record already marked is reported ``unchanged``."""
        ...

    async def lift_restriction(self, job: OperationJob) -> ConnectorOutcome:
        """Remove the mark (``lifted`` lines); a record without it is reported ``unchanged``."""
        ...


RESTRICTION_MARK = "dsr_restricted"
"""The name of the mark in systems that take a named one (HubSpot contact property, Stripe metadata key,
WooCommerce customer meta): its value is the reference of the restriction request."""


def no_restriction_control(connector: str, *, lift: bool = False) -> ConnectorOutcome:
    """A system whose API offers no way to mark a record restricted: one residual line for the operator (the
    reply says our team restricts it by hand)."""
    note = ("this system cannot mark a record restricted through its API: lift the restriction set by hand"
            if lift else
            "this system cannot mark a record restricted through its API: make sure its data on this person is "
            "only stored, not otherwise used (no campaign, export or change), until the restriction is lifted")
    line = RecordReport("restriction", "*", RecordAction.RESIDUAL, note=note)
    return ConnectorOutcome(connector=connector, report=[line], counts=tally([line]))


def unexpected_remains(outcome: ConnectorOutcome, found_again: list[Located]) -> list[Located]:
    """Records found after an erasure that the erasure report did not declare kept."""
    kept = {(r.dataset, r.record_id) for r in outcome.report
            if r.action in {"retained", "anonymised", "residual"}}
    return [loc for loc in found_again if (loc.dataset, loc.record_id) not in kept]


def tally(report: list[RecordReport]) -> dict[str, int]:
    """Lines per action, the outcome's ``counts``."""
    counts: dict[str, int] = {}
    for line in report:
        counts[line.action.value] = counts.get(line.action.value, 0) + 1
    return counts


__all__ = [
    "CANONICAL_FIELDS",
    "CONSENT",
    "RESTRICTION_MARK",
    "Connector",
    "ConnectorError",
    "DatasetWriter",
    "ExportJob",
    "ExportSink",
    "Journal",
    "JournalEntry",
    "JournalState",
    "Located",
    "MarksRestriction",
    "OperationJob",
    "PermanentConnectorError",
    "RecordReport",
    "RetentionRule",
    "StopsMarketing",
    "TransientConnectorError",
    "WithdrawsConsent",
    "no_consent_control",
    "no_marketing_control",
    "no_restriction_control",
    "residual_withdrawal",
    "tally",
    "unexpected_remains",
]

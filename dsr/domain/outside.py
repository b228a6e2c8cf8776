"""Systems reached by a person: a processor answering by email (``processor``), an internal owner (``manual``).

The engine cannot act in them; it asks, waits and records what it is told. Each request's part in one such system
is an ``OutsideSystemTask`` workflow (``workflows/outside.py``), whose id is derived from the request's reference and
the system's name (no personal data). This module holds what crosses its boundaries, and the one mapping of an
answer to the report the reply reads (:func:`answer_outcome`). Pure: imported by workflow code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime

from dsr.domain.model import (
    AnswerStatus,
    ConnectorOutcome,
    ConsentPurpose,
    DatasetSummary,
    OutsideAnswer,
    RecordAction,
    RecordReport,
    RequestKind,
    Subject,
)
from dsr.errors import InvalidInputError

__all__ = [
    "ANSWER_UPDATE",
    "LATE_ANSWER_SIGNAL",
    "NO_ANSWER_ERROR",
    "OUTSIDE_DATASET",
    "OUTSIDE_TYPES",
    "UPLOAD_DATASET",
    "AnswerRefused",
    "OutsideMail",
    "OutsideTaskInput",
    "OutsideTaskOpened",
    "answer_outcome",
    "outside_workflow_id",
]

OUTSIDE_TYPES = ("processor", "manual")
"""Connector types reached by a person rather than an API."""
ANSWER_UPDATE = "answer"
"""The update by which the answer page and ``dsr tasks complete`` hand an answer to the waiting workflow."""
LATE_ANSWER_SIGNAL = "outside_answered"
"""The signal (the system's name) by which the answer's door tells the request that an answer came after its task
stopped waiting: a request waiting for attention only because of such systems goes on with it."""
NO_ANSWER_ERROR = "OutsideNoAnswer"
"""Failure type of a task with no answer by its date: the request goes to needs_attention."""
OUTSIDE_DATASET = "answer"
"""The dataset name of the report line an answer makes (the reply names the system, not a dataset)."""
UPLOAD_DATASET = "upload"
"""The dataset an uploaded export file is stored in (encrypted, with the request's other exports)."""

_SYSTEM = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class AnswerRefused(InvalidInputError, ValueError):
    """An answer that cannot be recorded as given (kept without basis or date, cannot without reason)."""


def outside_workflow_id(request_id: str, system: str) -> str:
    """``<reference>--<system>``: the request's reference and the system's configured name, nothing personal."""
    if not _SYSTEM.match(system):
        raise ValueError("a system name is lower-case letters, digits, - and _")
    return f"{request_id}--{system}"


@dataclass
class OutsideTaskInput:
    """Input of ``OutsideSystemTask``: what to ask, of which system, for which request."""

    request_id: str
    system: str
    kind: RequestKind
    subject: Subject
    deadline: date  # the request's own deadline: the answer-by date comes before it
    changes: dict[str, str] = field(default_factory=dict)  # rectification: the corrected values
    now: datetime | None = None  # the workflow's time when it asked: the answer-by date counts from it
    # consent_withdrawal: the purposes withdrawn that map this system (each with this system's action only)
    purposes: list[ConsentPurpose] = field(default_factory=list)
    told: bool = False  # the first email went already (a withdrawal tells the system before its reply)


@dataclass
class OutsideTaskOpened:
    """What opening the task found or decided: the answer already recorded (a retry after a late answer), or the
    date the answer is needed by and when to remind (computed by the activity, never in workflow code)."""

    answer: OutsideAnswer | None
    system_type: str = ""  # processor | manual
    answer_by: datetime | None = None
    reminders: list[datetime] = field(default_factory=list)
    asked_on: date | None = None
    answer_by_day: date | None = None  # answer_by's day where the controller is (answer_by is the instant it ends)


@dataclass
class OutsideMail:
    """One email of a task: the first request (``reminder`` 0) or the n-th reminder."""

    request_id: str
    system: str
    kind: RequestKind
    subject: Subject
    answer_by: datetime
    reminder: int = 0
    changes: dict[str, str] = field(default_factory=dict)
    purposes: list[ConsentPurpose] = field(default_factory=list)  # consent_withdrawal: what to stop processing for


def check_answer(answer: OutsideAnswer) -> None:
    """:class:`AnswerRefused` unless the answer says what the reply needs: kept -> basis and date, cannot ->
    reason."""
    if answer.status == AnswerStatus.KEPT:
        if not answer.legal_basis.strip():
            raise AnswerRefused("kept: the legal basis is required")
        if answer.kept_until is None:
            raise AnswerRefused("kept: the date until which it is kept is required")
    if answer.status == AnswerStatus.CANNOT and not answer.reason.strip():
        raise AnswerRefused("cannot: the reason is required")
    if len(answer.legal_basis) > 300 or len(answer.reason) > 2000:
        raise AnswerRefused("the legal basis (300 characters) or the reason (2,000) is too long")


_DONE_ACTION = {
    RequestKind.ERASURE: RecordAction.DELETED,
    RequestKind.RECTIFICATION: RecordAction.CHANGED,
    RequestKind.ACCESS: RecordAction.EXPORTED,
    RequestKind.PORTABILITY: RecordAction.EXPORTED,
    RequestKind.RESTRICTION: RecordAction.RESTRICTED,
    RequestKind.OBJECTION: RecordAction.UNSUBSCRIBED,  # only a marketing objection reaches a system (Art. 21(3))
}


def answer_outcome(system: str, kind: RequestKind, answer: OutsideAnswer, *,
                   changes: dict[str, str] | None = None, purposes: list[str] | None = None) -> ConnectorOutcome:
    """The report of one system from its answer: what the reply tells and the residual follow-up reads.

    ``cannot`` and ``no_answer`` are residual lines: the operator is told and reminded until the data is dealt
    with by other means, and the reply says so. An export file uploaded with the answer is its ``upload``
    dataset. A withdrawal of consent has one line per purpose (``purposes``, their keys), as connectors report
    it."""
    if kind == RequestKind.CONSENT_WITHDRAWAL:
        return _consent_outcome(system, answer, purposes or [])
    report: list[RecordReport] = []
    datasets: list[DatasetSummary] = []
    notes: list[str] = []
    match answer.status:
        case AnswerStatus.DONE:
            fields = sorted(changes or {}) if kind == RequestKind.RECTIFICATION else []
            report.append(RecordReport(dataset=OUTSIDE_DATASET, record_id="-", action=_DONE_ACTION[kind],
                                       fields=fields, note="done by them"))
        case AnswerStatus.KEPT:
            report.append(RecordReport(dataset=OUTSIDE_DATASET, record_id="-", action=RecordAction.RETAINED,
                                       legal_basis=answer.legal_basis, retained_until=answer.kept_until,
                                       note="kept by them"))
        case AnswerStatus.CANNOT:
            report.append(RecordReport(dataset=OUTSIDE_DATASET, record_id="*", action=RecordAction.RESIDUAL,
                                       note="they cannot carry it out"))
        case AnswerStatus.NO_ANSWER:
            report.append(RecordReport(dataset=OUTSIDE_DATASET, record_id="*", action=RecordAction.RESIDUAL,
                                       note="no answer yet"))
        case AnswerStatus.NO_DATA:
            notes.append("no data about the subject")
    if answer.export_records:
        datasets.append(DatasetSummary(dataset=UPLOAD_DATASET, records=answer.export_records, provided=False))
    found = answer.export_records or (0 if answer.status == AnswerStatus.NO_DATA else 1)
    return ConnectorOutcome(connector=system, found=found,
                            counts={line.action.value: 1 for line in report}, notes=notes, report=report,
                            datasets=datasets, answer=answer)


CONSENT_DATASET = "consent"
"""The dataset of a withdrawal's lines (``connectors.base.CONSENT``; the domain does not import connectors)."""

_CONSENT_ACTION = {
    AnswerStatus.DONE: (RecordAction.WITHDRAWN, "confirmed by them"),
    # Kept on a legal basis: the data stays, but no longer for the purpose whose consent was withdrawn.
    AnswerStatus.KEPT: (RecordAction.WITHDRAWN, "confirmed by them (data kept on another basis)"),
    AnswerStatus.NO_DATA: (RecordAction.UNCHANGED, "they hold no data about the person"),
    AnswerStatus.CANNOT: (RecordAction.RESIDUAL, "they cannot carry it out: stop it by other means"),
    AnswerStatus.NO_ANSWER: (RecordAction.RESIDUAL, "told, not confirmed yet: check they stopped (dsr tasks)"),
}


def _consent_outcome(system: str, answer: OutsideAnswer, purposes: list[str]) -> ConnectorOutcome:
    action, note = _CONSENT_ACTION[answer.status]
    if answer.status == AnswerStatus.NO_ANSWER and answer.asked_on is not None:
        note = f"told on {answer.asked_on.isoformat()}, not confirmed yet: check they stopped (dsr tasks)"
    report = [RecordReport(dataset=CONSENT_DATASET, record_id=key, action=action, note=note) for key in purposes]
    counts: dict[str, int] = {}
    for line in report:
        counts[line.action.value] = counts.get(line.action.value, 0) + 1
    return ConnectorOutcome(connector=system, found=0 if answer.status == AnswerStatus.NO_DATA else len(report),
                            counts=counts, report=report, answer=answer)

"""What outlives the answer to a request: the download link until it expires, residual data until an operator
clears it. The request's workflow ends when the request is answered; these run in ``RequestAftercare``, a short
workflow of their own (id :func:`aftercare_id`), so the Temporal UI shows Running only for open requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from dsr.domain.model import AuditEvent, ConsentPurpose, Language, QueueRelease, RequestKind, Subject

AFTERCARE_PREFIX = "aftercare-"
AFTERCARE_WORKFLOW = "RequestAftercare"
"""The aftercare's workflow type, by which the closing's activity starts it (activities do not import workflows)."""


def aftercare_id(request_id: str) -> str:
    """Workflow id of a request's aftercare: derived from the reference alone (no personal data)."""
    return AFTERCARE_PREFIX + request_id


@dataclass
class AftercareInput:
    """What the answered request hands over. ``notice_context`` is the request's context for operator notices
    (reference, kind, dates, stage: no personal data)."""

    request_id: str
    operator_email: str
    language: Language
    escalation_repeat_days: int
    deadline: date
    extended: bool = False
    link_expires_at: datetime | None = None
    residuals: list[str] = field(default_factory=list)
    notice_context: dict[str, str] = field(default_factory=dict)
    # Systems reached by a person that the reply told as not answered yet (``no_answer``): once each has answered
    # (or the follow-up gives up on it), the subject gets one supplementary letter (``supplement``), in the
    # reply's thread. The subject (encrypted payload) and the reply's Message-ID are what that letter needs.
    supplement: SupplementPlan | None = None


@dataclass
class AftercareStart:
    """Input of the ``start_aftercare`` activity, the request's closing step when something outlives its answer: the
    person's turn given back first when the request still holds it (``release``: the line and its signals), the
    aftercare started, once (``workflow_id``, derived from the reference), then the ledger events noted before
    (``closed``, ``aftercare_started``...) written under ``events_key`` (none twice), once the start is true.
    ``keywords`` and ``flags`` are the aftercare's search attributes by name: never personal data."""

    workflow_id: str
    task_queue: str
    care: AftercareInput
    summary: str
    keywords: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    release: QueueRelease | None = None
    events: list[AuditEvent] = field(default_factory=list)
    events_key: str = ""


SUPPLEMENT_SIGNAL = "outside_settled"
"""The aftercare's signal (an :class:`OutsideSettled`) by which the answer's door says a system was answered."""


@dataclass
class OutsideSettled:
    """A system's answer was recorded in the ledger (its status, nothing the person typed)."""

    system: str
    status: str


@dataclass
class SupplementPlan:
    """What the supplementary letter is about: the request, its subject, the systems pending at the reply."""

    kind: RequestKind
    subject: Subject
    systems: list[str]
    received: date
    reply_message_id: str = ""  # the letter answers in the reply's thread
    purposes: list[ConsentPurpose] = field(default_factory=list)  # consent_withdrawal: the purposes withdrawn


@dataclass
class PendingAnswers:
    """Input of ``pending_answers``: which of the systems still have no answer in the ledger."""

    request_id: str
    systems: list[str]


@dataclass
class PendingFound:
    """What the ledger holds: the systems answered already, and when to stop waiting for the others (the answer
    page's last day: the task's answer-by date and its grace, never sooner than the grace after now)."""

    answered: list[str] = field(default_factory=list)
    give_up_at: datetime | None = None


@dataclass
class SupplementInput:
    """Input of ``send_supplement``: the letter is written from the ledger's answers when it is sent."""

    request_id: str
    language: Language
    plan: SupplementPlan
    cleared: bool = False  # the operator confirmed the residual data dealt with (``dsr clear-residuals``)


@dataclass
class SupplementSent:
    message_id: str
    # Per system: done, no_data, kept, cannot, no_answer (gave up), staff (cleared by our team): no personal data.
    told: dict[str, str] = field(default_factory=dict)


@dataclass
class AftercareStatus:
    """Answer of the aftercare's ``status`` query (no personal data)."""

    request_id: str
    link_expires_at: datetime | None = None
    exports_deleted: bool = False
    residuals: list[str] = field(default_factory=list)
    residuals_cleared: bool = False
    cancellation_refused: str = ""
    supplement_pending: list[str] = field(default_factory=list)  # systems the supplementary letter waits for
    supplement: str = ""  # "", "waiting", "sent", "failed" (refused by the mail server)

"""What outlives the answer to a request: the download link until it expires, residual data until an operator
clears it. The request's workflow ends when the request is answered; these run in ``RequestAftercare``, a short
workflow of their own (id :func:`aftercare_id`), so the Temporal UI shows Running only for open requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from dsr.domain.model import Language

AFTERCARE_PREFIX = "aftercare-"


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


@dataclass
class AftercareStatus:
    """Answer of the aftercare's ``status`` query (no personal data)."""

    request_id: str
    link_expires_at: datetime | None = None
    exports_deleted: bool = False
    residuals: list[str] = field(default_factory=list)
    residuals_cleared: bool = False
    cancellation_refused: str = ""

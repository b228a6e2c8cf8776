"""Activities of the intake side: submitting a triaged email, deleting identity documents.

``submit_triaged`` goes through :class:`intake.service.IntakeService`, like every other channel, so a
message classified by hand is validated, de-duplicated and recorded exactly as if the classifier had
been sure. ``delete_identity_documents`` removes the files stored with a request (an ID copy that came with
the email request, or by a later reply about any request) once identity is confirmed, as the CNIL asks; it
answers 0 when there are none, so every channel may call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from dsr.domain.model import TriageDecision, TriageInput, TriageSubmitted
from intake.service import IntakeService, IntakeUnavailable
from intake.submission import Submission, SubmissionError

SUBMISSION_ERROR = "SubmissionError"
"""Failure type of a triaged email the intake refuses as a request (not retried: the operator is told why)."""
INTAKE_UNAVAILABLE = "IntakeUnavailable"


class IntakeActivities:
    def __init__(
        self,
        service: Callable[[Client], IntakeService],
        delete_documents: Callable[[str], int] | None = None,
    ) -> None:
        """``service(client)`` builds the intake service on the worker's client; ``delete_documents``
        removes a request's stored attachments and returns how many there were."""
        self._service = service
        self._delete_documents = delete_documents

    @activity.defn(name="submit_triaged")
    async def submit_triaged(self, item: TriageInput, decision: TriageDecision) -> TriageSubmitted:
        """The request the message became (a new one, or the open request it was attached to)."""
        submission = Submission(
            kind=decision.kind.value,
            email=item.email,
            name=item.name,
            channel="email",
            language=(decision.language or item.language).value,
            details=item.body,
            received_at=item.received_at,
            changes=dict(decision.changes),
            scope=decision.scope,
            in_reply_to=item.in_reply_to,
            request_id=item.request_id,
        )
        try:
            accepted = await self._service(activity.client()).submit(submission, rate_limit=False)
        except SubmissionError as err:
            raise ApplicationError(str(err), type=SUBMISSION_ERROR, non_retryable=True) from None
        except IntakeUnavailable as err:
            raise ApplicationError(str(err), type=INTAKE_UNAVAILABLE) from None
        return TriageSubmitted(request_id=accepted.reference, attached=accepted.attached)

    @activity.defn(name="delete_identity_documents")
    async def delete_identity_documents(self, request_id: str) -> int:
        if self._delete_documents is None:
            return 0
        return await asyncio.to_thread(self._delete_documents, request_id)

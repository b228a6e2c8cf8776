"""Activities of the intake side: submitting a triaged email, deleting identity documents.

``submit_triaged`` goes through the intake's one door (``intake.service.TriagedSubmission``, handed in by
the worker as a :class:`TriagedSubmitter`), like every other channel, so a message classified by hand is
validated, de-duplicated and recorded exactly as if the classifier had been sure. The door is passed in,
not imported: the intake starts workflows, so it sits above the activities in the house.
``delete_identity_documents`` removes the files stored with a request (an ID copy that came with the email
request, or by a later reply about any request) once identity is confirmed, as the CNIL asks; it answers 0
when there are none, so every channel may call it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from dsr.domain.model import TriageDecision, TriageInput, TriageSubmitted
from dsr.errors import InvalidInputError, UnavailableError

SUBMISSION_ERROR = "SubmissionError"
"""Failure type of a triaged email the intake refuses as a request (not retried: the operator is told why)."""
INTAKE_UNAVAILABLE = "IntakeUnavailable"


class TriagedSubmitter(Protocol):
    """Submits a triaged email as a request, on the worker's Temporal client.

    Raises :class:`~dsr.errors.InvalidInputError` when the intake refuses it as a request, and
    :class:`~dsr.errors.UnavailableError` when Temporal cannot be reached (retried).
    """

    async def __call__(
        self, client: Client, item: TriageInput, decision: TriageDecision
    ) -> TriageSubmitted: ...


class IntakeActivities:
    def __init__(
        self,
        submit: TriagedSubmitter,
        delete_documents: Callable[[str], int] | None = None,
    ) -> None:
        """``submit`` is the intake's door (``intake.service.TriagedSubmission``); ``delete_documents``
        removes a request's stored attachments and returns how many there were."""
        self._submit = submit
        self._delete_documents = delete_documents

    @activity.defn(name="submit_triaged")
    async def submit_triaged(self, item: TriageInput, decision: TriageDecision) -> TriageSubmitted:
        """The request the message became (a new one, or the open request it was attached to)."""
        try:
            return await self._submit(activity.client(), item, decision)
        except InvalidInputError as err:
            raise ApplicationError(str(err), type=SUBMISSION_ERROR, non_retryable=True) from None
        except UnavailableError as err:
            raise ApplicationError(str(err), type=INTAKE_UNAVAILABLE) from None

    @activity.defn(name="delete_identity_documents")
    async def delete_identity_documents(self, request_id: str) -> int:
        if self._delete_documents is None:
            return 0
        return await asyncio.to_thread(self._delete_documents, request_id)

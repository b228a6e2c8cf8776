"""The one door every channel goes through: validate, de-duplicate, rate-limit, start, record.

The API, the web form, the support-desk webhooks and the mailbox all hand a :class:`Submission` to
:meth:`IntakeService.submit`. It validates everything first (:func:`intake.submission.prepare`), then:

* **rate limits**: per subject and per client address (sliding windows in the ledger's database, shared by
  every replica, checked and recorded in one transaction: :mod:`dsr.store.guards`): :class:`RateLimited`, which
  the HTTP layer turns into 429 with ``Retry-After``;
* **one open request per subject and kind**, whatever replica receives it: the submission claims the subject
  (blind index of the email) and kind in the ledger (:meth:`dsr.store.ledger.Ledger.claim_subject`, a primary key)
  before it starts anything. The winner starts its workflow; a submission finding the claim held attaches to
  that request with the ``attach_duplicate`` update, which records the event and tells the subject that
  their new message was attached to the request already under way. A holder found closed (the update is
  refused), or never started after :data:`ABANDONED_CLAIM` (its intake crashed), is released by
  compare-and-delete and the submission claims again. Closing a request releases its claim;
* **start**: idempotent by request id (a retried start after a crash, e.g. by the mailbox, answers with the
  request already started), then recorded in the ledger; the workflow records it too, as its first step, so an
  intake that dies between the two loses nothing.

Messages that cannot be classified (email intake) go to :meth:`IntakeService.triage` instead: a
``TriageMessage`` workflow waits, in stage ``needs_attention``, for an operator to give the kind.

Emails that answer one of ours about a request (:class:`ReplySink`) are not submissions at all:
:meth:`IntakeService.find_replied_request` recognises them (a reference in the Subject, or a Message-ID we sent
in In-Reply-To/References, *and* the sender being the request's subject), and
:meth:`IntakeService.record_correspondence` tells the request's workflow (update ``record_correspondence``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Protocol, runtime_checkable

from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dsr.config.settings import Settings
from dsr.domain.deadlines import deadline_schedule, receipt_date
from dsr.domain.model import (
    TRIAGE_PREFIX,
    Channel,
    Correspondence,
    DeadlineInput,
    DuplicateAttached,
    Language,
    ObjectionScope,
    RequestInput,
    RequestKind,
    RequestRecordInput,
    Stage,
    TriageDecision,
    TriageInput,
    TriageSubmitted,
    is_valid_email,
    objection_scope,
)
from dsr.errors import ConflictError, UnavailableError
from dsr.store.guards import Guards, RateWindow
from dsr.store.ledger import Ledger, SubjectClaim
from intake.submission import MAX_DETAILS, MAX_NAME, Submission, SubmissionError, prepare, start
from workflows import search_attributes as sa


@dataclass(frozen=True)
class Accepted:
    """A submission taken: ``reference`` is the request that holds it (a new one, or the open request of the same
    subject and kind it was ``attached`` to) for the engine's own use (mailbox, staff CLI); the dates are this
    submission's own either way. The public channels show only :func:`receipt` (no reference, no ``attached``):
    someone typing another person's address must not learn whether that person has a request under way."""

    reference: str
    kind: RequestKind
    received_on: date
    deadline: date
    extended_deadline: date
    attached: bool = False  # an open request of the same subject and kind existed: attached to it


def receipt(accepted: Accepted) -> dict[str, str]:
    """What a public channel answers to any submission: the same fields whatever happened (new request or
    attached to one under way), with this submission's own dates; the reference goes to the subject by email."""
    return {
        "status": "received",
        "kind": accepted.kind.value,
        "received": accepted.received_on.isoformat(),
        "deadline": accepted.deadline.isoformat(),
        "extended_deadline": accepted.extended_deadline.isoformat(),
    }


@dataclass(frozen=True)
class TriageItem:
    """A message the classifier was not sure about. Personal data: encrypted payload only."""

    request_id: str  # reserved by the caller (exactly-once); the request gets it once classified
    received_at: datetime
    email: str  # the sender's claimed address
    name: str = ""
    language: Language | None = None
    subject_line: str = ""
    body: str = ""
    in_reply_to: str | None = None  # the message's Message-ID, so the acknowledgement is threaded
    reason: str = ""  # why it was not classified (no personal data): e.g. "no kind recognised"


class RateLimited(ConflictError):
    """Too many submissions from one subject or one client address."""

    def __init__(self, scope: str, retry_after: int) -> None:
        super().__init__(f"too many requests from this {scope}; try again in {retry_after} s")
        self.scope = scope
        self.retry_after = retry_after


class IntakeSink(Protocol):
    """What a channel needs from the engine (``IntakeService`` implements it)."""

    async def submit(self, submission: Submission, *, client: str | None = None) -> Accepted: ...

    async def triage(self, item: TriageItem) -> str:
        """Hand an unclassified message to the operators; returns the triage workflow's id."""
        ...


@dataclass(frozen=True)
class RepliedRequest:
    """The request an email answers, its sender being that request's subject. No personal data."""

    request_id: str
    closed: bool  # the ledger says closed: the reply goes to triage, never reopening anything


class RequestClosed(ConflictError):
    """The request refused the correspondence: closed meanwhile, or its history is gone. The message is a
    reason for the operators (a reference, never personal data)."""


@runtime_checkable
class ReplySink(Protocol):
    """What email intake needs, besides :class:`IntakeSink`, for replies about a request."""

    async def find_replied_request(
        self, sender: str, subject_line: str, thread_ids: Sequence[str]
    ) -> RepliedRequest | None:
        """The request the email is about, only if ``sender`` is its subject; None: not a reply (normal path)."""
        ...

    async def record_correspondence(self, request_id: str, correspondence: Correspondence) -> None:
        """Tell the request; idempotent by ``correspondence.message_key``. Raises :class:`RequestClosed`, or
        :class:`IntakeUnavailable` (try again later)."""
        ...


# A reference as the subject may type it back (any case), e.g. "Re: Your request dsr-2026-11-7kq3fj".
_REFERENCE = re.compile(r"(?<![A-Za-z0-9])dsr-(\d{4})-(\d{2})-([0-9A-HJKMNP-TV-Z]{6})(?![A-Za-z0-9])", re.IGNORECASE)
# Our own Message-IDs: <32 hex digits of a notice_sent event's key @ the mail domain> (activities.notices).
_OUR_MESSAGE_ID = re.compile(r"<([0-9a-f]{32})@([A-Za-z0-9.-]+)>")
_SENT_KEY_PREFIXES = ("notice-", "reply-")  # send_notice and send_reply keys: the same hex, another prefix
MAX_REPLY_CLUES = 10  # per kind of clue: a hostile References header cannot make a poll query without end
CORRESPONDENCE_WAIT_SECONDS = 20.0
"""How long the mailbox waits for ``record_correspondence`` to finish (its operator notice may wait on a slow
mail server); past that it moves on, the update being durable in the request's history once accepted."""


def reply_clues(subject_line: str, thread_ids: Sequence[str], mail_domain: str) -> tuple[list[str], list[str]]:
    """(sent-email keys, request ids) a reply points at, strongest first: In-Reply-To, then References from
    the most recent, then references quoted in the Subject."""
    keys: list[str] = []
    for message_id in list(thread_ids)[: MAX_REPLY_CLUES * 3]:
        found = _OUR_MESSAGE_ID.fullmatch(message_id.strip())
        if found is None or found.group(2).lower() != mail_domain.lower():
            continue
        for prefix in _SENT_KEY_PREFIXES:
            key = prefix + found.group(1)
            if key not in keys:
                keys.append(key)
        if len(keys) >= MAX_REPLY_CLUES * len(_SENT_KEY_PREFIXES):
            break
    references: list[str] = []
    for year, month, code in _REFERENCE.findall(subject_line):
        reference = f"dsr-{year}-{month}-{code.upper()}"
        if reference not in references:
            references.append(reference)
        if len(references) >= MAX_REPLY_CLUES:
            break
    return keys, references


# --- the implementation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimits:
    """Submissions allowed per window; generous for people, tight for scripts filling the form."""

    per_client: int = 20
    client_window: timedelta = timedelta(hours=1)
    per_subject: int = 5
    subject_window: timedelta = timedelta(days=1)


ABANDONED_CLAIM = timedelta(minutes=1)
"""A claim whose workflow is still not started after this long was left by an intake that crashed between
claiming and starting: the next submission takes it over."""
CLAIM_WAIT_SECONDS = 10.0
"""How long a submission waits for the workflow of a fresh claim held by another submission to start."""
_CLAIM_POLL_SECONDS = 0.2


class IntakeService:
    """:class:`IntakeSink` on a Temporal client and the ledger; any number of them, on any number of machines,
    behave as one (duplicates and rate limits are decided in the ledger's database)."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        ledger: Ledger,
        *,
        guards: Guards | None = None,
        limits: RateLimits | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``guards``: the shared rate limits (default: on the ledger's engine, made when first needed)."""
        self._client = client
        self._settings = settings
        self._ledger = ledger
        self._guards = guards
        self._limits = limits or RateLimits()
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def guards(self) -> Guards:
        if self._guards is None:
            self._guards = Guards(self._ledger.engine, self._ledger.sealer)
        return self._guards

    async def submit(
        self, submission: Submission, *, client: str | None = None, rate_limit: bool = True
    ) -> Accepted:
        """Validate, then attach to an open duplicate or start a new request.

        ``rate_limit=False`` is for staff (``dsr submit``) and for messages an operator classified: they go
        through the same duplicate check, without the limits meant for the public.

        Raises :class:`SubmissionError` (nothing created), :class:`RateLimited`, or
        :class:`IntakeUnavailable` when Temporal cannot be reached (nothing created, try again).
        """
        now = self._clock()
        request = prepare(submission, self._settings, now=now)  # everything is validated first
        # Names the subject's queue (per-subject order) and keys the per-subject counter: a blind index.
        # A post_mortem request queues behind (and before) the deceased person's own requests: it changes their data.
        queued = request.deceased.email if request.deceased is not None else request.subject.email
        request = replace(request, subject_key=await asyncio.to_thread(self._ledger.subject_key, queued))
        if rate_limit:
            await self._count(request, client, now)
        if await asyncio.to_thread(self._ledger.has_request, request.request_id):
            # A retried submission of a reserved id (mailbox, ticket): the request is this one, started or not.
            await self._start(request)
            return self._accepted(request)
        if (objection_scope(request.kind, request.scope) == ObjectionScope.MARKETING
                or request.kind == RequestKind.CONSENT_WITHDRAWAL):  # the same for a withdrawal of consent
            # Never attached to an open objection to other processing, whose decision may take weeks: this one
            # is absolute and immediate. A repeated one is harmless (opt-outs and the suppression list are
            # idempotent), and the per-subject rate limit bounds them.
            await self._start(request)
            return self._accepted(request)
        return await self._claim_or_attach(request)

    async def _count(self, request: RequestInput, client: str | None, now: datetime) -> None:
        limits, guards = self._limits, self.guards
        windows = [RateWindow("subject", f"subject:{request.subject_key}", limits.per_subject, limits.subject_window)]
        if client is not None:
            windows.insert(0, RateWindow("address", f"address:{guards.client_key(client)}", limits.per_client,
                                         limits.client_window))
        refused = await asyncio.to_thread(guards.hit, windows, now)
        if refused is not None:
            raise RateLimited(refused.scope, refused.retry_after)

    async def _claim_or_attach(self, request: RequestInput) -> Accepted:
        """Claim the subject and kind and start, or attach to the request holding them (see the module)."""
        email, kind = request.subject.email, request.kind
        waiting_until = time.monotonic() + CLAIM_WAIT_SECONDS
        for _ in range(50):  # each turn either decides, or releases a dead claim, or waits a moment
            claim: SubjectClaim = await asyncio.to_thread(
                self._ledger.claim_subject, email, kind, request.request_id, now=self._clock())
            if claim.request_id == request.request_id:
                await self._start(request, claimed=True)
                return self._accepted(request)
            attached = await self._attach(claim.request_id, request)
            if isinstance(attached, Accepted):
                return attached
            holder = await asyncio.to_thread(self._ledger.get_request, claim.request_id)
            closed = attached == "closed" or (holder is not None and holder.stage == Stage.CLOSED)
            abandoned = attached == "absent" and self._clock() - claim.claimed_at >= ABANDONED_CLAIM
            if closed or abandoned:
                await asyncio.to_thread(self._ledger.release_claim, email, kind, claim.request_id)
                continue  # and claim again
            if time.monotonic() >= waiting_until:
                break
            await asyncio.sleep(_CLAIM_POLL_SECONDS)  # the holder's workflow is about to start
        raise IntakeUnavailable("the request engine is unavailable; try again in a minute")

    async def _attach(self, request_id: str, request: RequestInput) -> Accepted | str:
        """Attach ``request`` to the open request ``request_id``: the answer, or ``closed`` (it refused: closed or
        closing) or ``absent`` (no such workflow: not started yet, or its history is gone)."""
        from workflows.request import DataSubjectRequest

        handle = self._client.get_workflow_handle_for(DataSubjectRequest.run, request_id)
        try:
            await handle.execute_update(
                DataSubjectRequest.attach_duplicate,
                DuplicateAttached(
                    channel=request.channel,
                    received_at=request.received_at,
                    in_reply_to=request.in_reply_to,
                    ticket=request.ticket,
                    documents=request.documents,  # the form moves them under this request once attached
                ),
            )
        except WorkflowUpdateFailedError:
            return "closed"
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return "absent"
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
        # The subject is told by email (the workflow's duplicate notice); the submitter gets the receipt of their
        # own submission, exactly as for a new request: not the other request's reference nor its deadline.
        return replace(self._accepted(request), reference=request_id, attached=True)

    @staticmethod
    def _accepted(request: RequestInput) -> Accepted:
        return Accepted(
            reference=request.request_id,
            kind=request.kind,
            received_on=request.received_on,
            deadline=request.deadlines.normal.due,
            extended_deadline=request.deadlines.extended.due,
        )

    async def _start(self, request: RequestInput, *, claimed: bool = False) -> None:
        try:
            await start(self._client, request, task_queue=self._settings.task_queue)
        except WorkflowAlreadyStartedError:
            pass  # a retried submission (same reserved id): the request exists, which is what was asked
        except RPCError as err:
            if claimed and await self._never_started(request.request_id):
                # Nothing was created: let the next submission of this subject and kind claim at once.
                await asyncio.to_thread(self._ledger.release_claim, request.subject.email, request.kind,
                                        request.request_id)
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
        # Recorded here as well as by the workflow, so the ledger knows it from the first instant.
        await asyncio.to_thread(
            self._ledger.record_request,
            RequestRecordInput(
                request_id=request.request_id,
                kind=request.kind,
                channel=request.channel,
                subject=request.subject,
                received_at=request.received_at,
                deadline=request.deadlines.normal.due,
                language=request.language,
            ),
            now=self._clock(),
        )

    async def _never_started(self, request_id: str) -> bool:
        """True only when Temporal says so (a failed start may still have started it: then keep the claim)."""
        try:
            await self._client.get_workflow_handle(request_id).describe()
        except RPCError as err:
            return err.status == RPCStatusCode.NOT_FOUND
        return False

    async def find_replied_request(
        self, sender: str, subject_line: str, thread_ids: Sequence[str]
    ) -> RepliedRequest | None:
        """See :meth:`ReplySink.find_replied_request`. The reference alone is never enough: otherwise anyone
        who saw a reference could add files to someone else's request."""
        sender = sender.strip()
        if not is_valid_email(sender):
            return None
        keys, references = reply_clues(subject_line, thread_ids, self._settings.mail_domain)
        return await asyncio.to_thread(self._replied_request, sender, keys, references)

    def _replied_request(self, sender: str, keys: list[str], references: list[str]) -> RepliedRequest | None:
        candidates: list[str] = []
        # One key pair (notice-/reply-) per Message-ID, in the order of the thread: the closest answer first.
        for index in range(0, len(keys), len(_SENT_KEY_PREFIXES)):
            found = self._ledger.request_of_sent_email(keys[index:index + len(_SENT_KEY_PREFIXES)])
            if found is not None and found not in candidates:
                candidates.append(found)
        candidates += [r for r in references if r not in candidates]
        for request_id in candidates:
            request = self._ledger.request_of_subject(request_id, sender)
            if request is not None:
                return RepliedRequest(request_id=request_id, closed=request.stage == Stage.CLOSED)
        return None

    async def record_correspondence(self, request_id: str, correspondence: Correspondence) -> None:
        """See :meth:`ReplySink.record_correspondence`.

        Returns once the update is accepted (durable in the request's history) or done, whichever the wait
        allows: the operator notice it sends may wait on a slow mail server, the mailbox should not.
        """
        from workflows.request import DataSubjectRequest

        handle = self._client.get_workflow_handle_for(DataSubjectRequest.run, request_id)
        try:
            update = await handle.start_update(
                DataSubjectRequest.record_correspondence,
                correspondence,
                # The same message always makes the same update id: the server answers a retry with the first.
                # Hashed again so the id Temporal shows in clear is not the inbox table's key.
                id="correspondence-" + hashlib.sha256(correspondence.message_key.encode()).hexdigest()[:32],
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            # A rejection (closed) is known at once; an accepted update is durable even if this wait ends first.
            await asyncio.wait_for(update.result(), timeout=CORRESPONDENCE_WAIT_SECONDS)
        except TimeoutError:
            return
        except WorkflowUpdateFailedError:
            raise RequestClosed(f"reply about closed request {request_id}") from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # finished, and its history deleted
                raise RequestClosed(f"reply about closed request {request_id}") from None
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
        except WorkflowUpdateRPCTimeoutOrCancelledError as err:  # not known to be durable: the mailbox retries
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None  # the SDK turns a cancellation into this: keep it one
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err

    async def triage(self, item: TriageItem) -> str:
        """Start (idempotently) the triage workflow of an unclassified message; returns its id."""
        email = item.email.strip()
        if not is_valid_email(email):
            raise SubmissionError("email is not a valid address")
        if item.received_at.tzinfo is None:
            raise SubmissionError("received time must include a time zone")
        policy = self._settings.policy
        received_at = item.received_at.astimezone(UTC)
        received_on = receipt_date(received_at, policy.timezone)
        deadline = deadline_schedule(DeadlineInput(
            start=received_on, country=policy.country, subdiv=policy.subdiv, timezone=policy.timezone
        )).normal.due
        triage_id = f"{TRIAGE_PREFIX}{item.request_id}"
        triage_input = TriageInput(
            triage_id=triage_id,
            request_id=item.request_id,
            received_at=received_at,
            received_on=received_on,
            deadline=deadline,
            email=email,
            name=" ".join(item.name.split())[:MAX_NAME],
            language=item.language or self._settings.default_language,
            subject_line=item.subject_line[:1000],
            body=item.body[:MAX_DETAILS],
            in_reply_to=item.in_reply_to,
            reason=item.reason,
            policy=policy,
        )
        from workflows.triage import TriageMessageWorkflow

        try:
            await self._client.start_workflow(
                TriageMessageWorkflow.run,
                triage_input,
                id=triage_id,
                task_queue=self._settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                static_summary=f"triage · received {received_on.isoformat()} · due {deadline.isoformat()}",
                search_attributes=TypedSearchAttributes(sa.dashboard(Stage.NEEDS_ATTENTION, Channel.EMAIL, deadline)),
            )
        except WorkflowAlreadyStartedError:
            pass  # a retried poll: the message is already waiting for a human
        except RPCError as err:
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
        return triage_id


class TriagedSubmission:
    """The door for an email an operator has classified (the ``submit_triaged`` activity's
    :class:`activities.intake.TriagedSubmitter`): the same validation, de-duplication and record as every
    other channel, without the rate limit (the message was already counted when it arrived)."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self._settings = settings
        self._ledger = ledger

    async def __call__(self, client: Client, item: TriageInput, decision: TriageDecision) -> TriageSubmitted:
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
            deceased_email=decision.deceased_email,
            deceased_name=decision.deceased_name,
            quality=decision.quality,
            ground=decision.ground,
            purposes=list(decision.purposes),
            in_reply_to=item.in_reply_to,
            request_id=item.request_id,
        )
        accepted = await IntakeService(client, self._settings, self._ledger).submit(submission, rate_limit=False)
        return TriageSubmitted(request_id=accepted.reference, attached=accepted.attached)


class IntakeUnavailable(UnavailableError, RuntimeError):
    """Temporal could not be reached; nothing was created (HTTP 503, the mailbox retries next poll)."""


@dataclass(frozen=True)
class IdentityOutcome:
    """What ``/verify`` tells the subject: ``confirmed``, ``already`` (confirmed before), ``closed``,
    ``unknown`` (no such request, or its history is gone) or ``refused`` (the request's identity policy does
    not take this proof: ``/verify`` answers it like a wrong code)."""

    state: str
    deadline: date | None = None


async def confirm_identity(client: Client, request_id: str, *, proof: str) -> IdentityOutcome:
    """Send the ``confirm_identity`` update for a subject who proved control of their address (``proof`` is
    ``link`` or ``code``); the workflow checks that the request's policy takes that proof."""
    from dsr.domain.model import IdentityConfirmation, IdentityMethod, IdentityProof
    from workflows.contract import IDENTITY_NOT_ALLOWED
    from workflows.request import DataSubjectRequest

    handle = client.get_workflow_handle_for(DataSubjectRequest.run, request_id)
    try:
        result = await handle.execute_update(
            DataSubjectRequest.confirm_identity,
            IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject", note=f"email {proof}",
                                 proof=IdentityProof(proof)),
        )
    except WorkflowUpdateFailedError as err:
        if getattr(err.cause, "type", None) == IDENTITY_NOT_ALLOWED:
            return IdentityOutcome("refused")
        message = str(getattr(err.cause, "message", "") or err.cause or "")
        return IdentityOutcome("already" if "already confirmed" in message else "closed")
    except RPCError as err:
        from temporalio.service import RPCStatusCode

        if err.status == RPCStatusCode.NOT_FOUND:
            return IdentityOutcome("unknown")
        raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
    return IdentityOutcome("confirmed", result.deadline)


async def resend_identity_email(client: Client, request_id: str) -> bool:
    """Send the ``resend_identity_email`` update (the subject asked on their status page); False when the request
    takes none now (identity confirmed, checked on a document, closed). Raises :class:`IntakeUnavailable`."""
    from dsr.domain.model import IdentityResend
    from workflows.request import DataSubjectRequest

    handle = client.get_workflow_handle_for(DataSubjectRequest.run, request_id)
    try:
        await handle.execute_update(DataSubjectRequest.resend_identity_email, IdentityResend(via="status_page"))
    except WorkflowUpdateFailedError:
        return False
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # closed and forgotten: nothing to send
            return False
        raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
    return True

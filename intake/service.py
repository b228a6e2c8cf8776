"""The one door every channel goes through: validate, de-duplicate, rate-limit, record, start.

The API, the web form, the support-desk webhooks and the mailbox all hand a :class:`Submission` to
:meth:`IntakeService.submit`. It validates everything first (:func:`intake.submission.prepare`), then:

* **duplicates**: an open request of the same subject (blind index of the email) and kind already exists:
  nothing new is started; the open request gets the ``attach_duplicate`` update, which records the event
  and tells the subject that their new message was attached to the request already under way;
* **rate limits**: per subject and per client address (sliding window, in memory, per process):
  :class:`RateLimited`, which the HTTP layer turns into 429 with ``Retry-After``;
* **record, then start**: the request is written to the ledger before its workflow starts, so a second
  submission arriving a millisecond later finds it; the start is idempotent by request id (a retried
  start after a crash, e.g. by the mailbox, answers with the request already started).

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
import math
import re
from collections import deque
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
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dsr import search_attributes as sa
from dsr.config import Settings
from dsr.deadlines import deadline_as_search_value, deadline_schedule, receipt_date
from dsr.ledger import Ledger
from dsr.model import (
    TRIAGE_PREFIX,
    Correspondence,
    DeadlineInput,
    DuplicateAttached,
    Language,
    RequestInput,
    RequestKind,
    RequestRecordInput,
    Stage,
    TriageInput,
    UpdateResult,
    is_valid_email,
)
from intake.submission import MAX_DETAILS, MAX_NAME, Submission, SubmissionError, prepare, start


@dataclass(frozen=True)
class Accepted:
    """What the submitter is told: the reference and deadline (of the open request, when attached)."""

    reference: str
    kind: RequestKind
    received_on: date
    deadline: date
    extended_deadline: date
    attached: bool = False  # an open request of the same subject and kind existed: attached to it


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


class RateLimited(Exception):
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


class RequestClosed(Exception):
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


class _SlidingWindow:
    """Hits per key over a window, in memory (per process: see the README's deployment notes)."""

    MAX_KEYS = 50_000

    def __init__(self, limit: int, window: timedelta) -> None:
        self._limit = limit
        self._window = window.total_seconds()
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> int | None:
        """Seconds until ``key`` may submit again, or None when it may now."""
        hits = self._hits.get(key)
        if not hits:
            return None
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        if len(hits) < self._limit:
            return None
        return max(1, math.ceil(hits[0] + self._window - now))

    def hit(self, key: str, now: float) -> None:
        if key not in self._hits and len(self._hits) >= self.MAX_KEYS:
            # Forget the keys with no recent hit; a flood of new keys cannot grow memory without bound.
            for stale in [k for k, h in self._hits.items() if not h or h[-1] <= now - self._window]:
                del self._hits[stale]
            while len(self._hits) >= self.MAX_KEYS:
                del self._hits[next(iter(self._hits))]
        self._hits.setdefault(key, deque()).append(now)


class IntakeService:
    """:class:`IntakeSink` on a Temporal client and the ledger; one per intake process."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        ledger: Ledger,
        *,
        limits: RateLimits | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._ledger = ledger
        limits = limits or RateLimits()
        self._per_client = _SlidingWindow(limits.per_client, limits.client_window)
        self._per_subject = _SlidingWindow(limits.per_subject, limits.subject_window)
        self._clock = clock or (lambda: datetime.now(UTC))
        # One submission at a time per process, so two copies of one email sent together still meet as
        # duplicates (check, start and record are not one transaction otherwise).
        self._lock = asyncio.Lock()

    async def submit(
        self, submission: Submission, *, client: str | None = None, rate_limit: bool = True
    ) -> Accepted:
        """Validate, then attach to an open duplicate or start a new request.

        Raises :class:`SubmissionError` (nothing created), :class:`RateLimited`, or
        :class:`IntakeUnavailable` when Temporal cannot be reached (nothing created, try again).
        """
        now = self._clock()
        request = prepare(submission, self._settings, now=now)  # everything is validated first
        subject_key = await asyncio.to_thread(self._ledger.subject_key, request.subject.email)
        # Names the subject's queue (per-subject order); a blind index, never the address.
        request = replace(request, subject_key=subject_key)
        moment = now.timestamp()
        if rate_limit:
            for scope, window, key in (("address", self._per_client, client), ("subject", self._per_subject,
                                                                                subject_key)):
                if key is None:
                    continue
                wait = window.retry_after(key, moment)
                if wait is not None:
                    raise RateLimited(scope, wait)

        async with self._lock:
            if rate_limit:
                if client is not None:
                    self._per_client.hit(client, moment)
                self._per_subject.hit(subject_key, moment)
            known = await asyncio.to_thread(self._ledger.get_request, request.request_id)
            if known is None:
                attached = await self._attach_to_open(request, submission)
                if attached is not None:
                    return attached
            await self._start(request)
        return Accepted(
            reference=request.request_id,
            kind=request.kind,
            received_on=request.received_on,
            deadline=request.deadlines.normal.due,
            extended_deadline=request.deadlines.extended.due,
        )

    async def _attach_to_open(self, request: RequestInput, submission: Submission) -> Accepted | None:
        open_ids = await asyncio.to_thread(self._ledger.find_open_by_subject, request.subject.email, request.kind)
        for request_id in open_ids:
            handle = self._client.get_workflow_handle(request_id)
            try:
                result: UpdateResult = await handle.execute_update(
                    "attach_duplicate",
                    DuplicateAttached(
                        channel=request.channel,
                        received_at=request.received_at,
                        in_reply_to=request.in_reply_to,
                        ticket=request.ticket,
                    ),
                    result_type=UpdateResult,
                )
            except (WorkflowUpdateFailedError, RPCError):
                # Closed meanwhile (or its history is gone): this submission is a new request.
                continue
            open_request = await asyncio.to_thread(self._ledger.get_request, request_id)
            received_on = (
                receipt_date(open_request.received_at, self._settings.policy.timezone)
                if open_request is not None else request.received_on
            )
            policy = self._settings.policy
            extended_due = deadline_schedule(DeadlineInput(
                start=received_on, country=policy.country, subdiv=policy.subdiv, timezone=policy.timezone
            )).extended.due
            return Accepted(
                reference=request_id,
                kind=request.kind,
                received_on=received_on,
                deadline=result.deadline,
                extended_deadline=result.deadline if result.extended else extended_due,
                attached=True,
            )
        return None

    async def _start(self, request: RequestInput) -> None:
        try:
            await start(self._client, request, task_queue=self._settings.task_queue)
        except WorkflowAlreadyStartedError:
            pass  # a retried submission (same reserved id): the request exists, which is what was asked
        except RPCError as err:
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
        # Recorded here as well as by the workflow, so a duplicate a moment later finds it in the ledger.
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
        handle = self._client.get_workflow_handle(request_id)
        try:
            update = await handle.start_update(
                "record_correspondence",
                correspondence,
                # The same message always makes the same update id: the server answers a retry with the first.
                # Hashed again so the id Temporal shows in clear is not the inbox table's key.
                id="correspondence-" + hashlib.sha256(correspondence.message_key.encode()).hexdigest()[:32],
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                result_type=UpdateResult,
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
        try:
            await self._client.start_workflow(
                "TriageMessage",
                triage_input,
                id=triage_id,
                task_queue=self._settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                static_summary=f"triage · received {received_on.isoformat()} · due {deadline.isoformat()}",
                search_attributes=TypedSearchAttributes([
                    SearchAttributePair(sa.DSR_STAGE, "needs_attention"),
                    SearchAttributePair(sa.DSR_CHANNEL, "email"),
                    SearchAttributePair(sa.DSR_DEADLINE, deadline_as_search_value(deadline)),
                    SearchAttributePair(sa.DSR_OVERDUE, False),
                ]),
            )
        except WorkflowAlreadyStartedError:
            pass  # a retried poll: the message is already waiting for a human
        except RPCError as err:
            raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
        return triage_id


class IntakeUnavailable(RuntimeError):
    """Temporal could not be reached; nothing was created (HTTP 503, the mailbox retries next poll)."""


@dataclass(frozen=True)
class IdentityOutcome:
    """What ``/verify`` tells the subject: ``confirmed``, ``already`` (confirmed before), ``closed`` or
    ``unknown`` (no such request, or its history is gone)."""

    state: str
    deadline: date | None = None


async def confirm_identity(client: Client, request_id: str, *, proof: str) -> IdentityOutcome:
    """Send the ``confirm_identity`` update for a subject who proved control of their address."""
    from dsr.model import IdentityConfirmation, IdentityMethod

    handle = client.get_workflow_handle(request_id)
    try:
        result: UpdateResult = await handle.execute_update(
            "confirm_identity",
            IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="subject", note=f"email {proof}"),
            result_type=UpdateResult,
        )
    except WorkflowUpdateFailedError as err:
        message = str(getattr(err.cause, "message", "") or err.cause or "")
        return IdentityOutcome("already" if "already confirmed" in message else "closed")
    except RPCError as err:
        from temporalio.service import RPCStatusCode

        if err.status == RPCStatusCode.NOT_FOUND:
            return IdentityOutcome("unknown")
        raise IntakeUnavailable("the request engine is unavailable; try again in a minute") from err
    return IdentityOutcome("confirmed", result.deadline)

"""The lifecycle of one data-subject request, as a durable workflow.

Deterministic orchestration only: every side effect is an activity, every date comes from the
request's input or from a local activity. Stages: received -> awaiting_identity -> processing ->
(needs_attention) -> replying -> closed. A deadline watcher runs beside the main flow for the whole
life of the request, so no reminder or escalation can be forgotten, whatever the main flow waits on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    RetryState,
)

with workflow.unsafe.imports_passed_through():
    import workflows.search_attributes as sa
    from dsr.domain.aftercare import AftercareInput, AftercareStart, SupplementPlan, aftercare_id
    from dsr.domain.deadlines import days_left, deadline_as_search_value
    from dsr.domain.model import (
        CANONICAL_FIELDS,
        AnswerStatus,
        AuditEvent,
        ClockPolicy,
        ClockResume,
        CodeLocked,
        ConnectorHealth,
        ConnectorOutcome,
        ConnectorProgress,
        ConnectorState,
        ConnectorTask,
        Correspondence,
        Deadline,
        Deadlines,
        DirectivesFound,
        Doubt,
        DuplicateAttached,
        EventBatch,
        ExportsDeletion,
        Extension,
        FanOutPlan,
        IdentityConfirmation,
        IdentityMethod,
        IdentityResend,
        Notice,
        NoticeTemplate,
        ObjectionDecision,
        Outcome,
        PlanInput,
        Quality,
        QualityConfirmation,
        QueueAsk,
        QueueRelease,
        RecordAction,
        Rectification,
        Refusal,
        RefusalGround,
        ReplyInput,
        ReplyResult,
        RequestInput,
        RequestKind,
        RequestRecordInput,
        RequestStatus,
        RestrictionGround,
        Retry,
        Stage,
        SubjectTurn,
        TurnAsk,
        TurnRelease,
        UpdateResult,
        Withdrawal,
        confirmation_refused,
        post_mortem_aim,
        subject_queue_id,
    )
    from dsr.domain.outside import LATE_ANSWER_SIGNAL, OutsideTaskInput
    from workflows.contract import (
        CHECK,
        CONNECTOR,
        DEADLINES,
        HEALTH_SIGNAL,
        HOLDER_CHECK_EVERY,
        IDENTITY_NOT_ALLOWED,
        LEDGER,
        LEDGER_LOCAL,
        NOTICE,
        NOTICE_FIRST_TRY,
        PLAN,
        PROGRESSED,
        REPLY,
        REPLY_FIRST_TRY,
        REPLY_HELD_TYPES,
        REPLY_UNDELIVERABLE_TYPES,
        REQUEST_REJECTED,
        STORAGE,
        SUBJECT_TURN_SIGNAL,
        TURN_ASK,
        TURN_ASK_LOCAL,
        ConnectorActivities,
        IntakeActivities,
        LedgerActivities,
        NoticeActivities,
        ReplyActivities,
        StorageActivities,
        SubjectActivities,
        deadlines_resumed,
        summarised,
    )
from workflows import children, consent, details, objection, postmortem
from workflows.audit import changes_note, correspondence_details, duplicate_details, message_note
from workflows.cancellation import shielded_from_cancellation

UNVERIFIED_LEAD = timedelta(hours=15)
"""How long before the end of the due day the unverified closure goes: 09:00 local, a working hour."""
ACK_LEAD = timedelta(minutes=10)
"""How long a later email to the subject (identity request, reply, ...) waits for the acknowledgement to go
first; past that it goes on its own, so an acknowledgement that cannot be sent never holds the others."""

BATCHED_WITH_FAN_OUT = frozenset({"turn_taken", "connector_done"})
"""The ledger events that may wait, while the request's own systems work, for the event ending the fan-out
(``_batch_may_wait``)."""


def _batch_summary(events: list[AuditEvent]) -> str:
    """How a batch of ledger events shows in the UI: their names, no personal data."""
    return f"ledger: {', '.join(e.event for e in events)}"


async def _local_first(step: Callable[..., Any], arg: Any, *, local: workflow.LocalActivityConfig,
                       remote: workflow.ActivityConfig) -> Any:
    """``step`` as a local activity (in the workflow task that needs it: no round trip to the server), five tries at
    most (``LEDGER_LOCAL``, ``TURN_ASK_LOCAL``), then as an activity the server retries and the UI shows pending: a
    ledger the worker cannot reach is not retried inside a workflow task held open. Only for steps whose effects are
    keyed by their input, so that the local tries and the activity write once between them."""
    try:
        return await workflow.execute_local_activity_method(step, arg, **local)
    except (ActivityError, ApplicationError):  # its last exception, or its last timeout (an ActivityError)
        return await workflow.execute_activity_method(step, arg, **remote)


RESUMES_MAX = 1000
"""At most this many fresh schedules after progress in one run of a connector (until it ends or an operator
retries it), so a connector that progresses forever cannot loop without bound; past it, an operator is asked."""
RESUME_WINDOW = timedelta(days=1)
"""No fresh schedule after progress once a connector's run has lasted this long: the last schedule's own retry
budget (CONNECTOR, about a day) then runs out and an operator is asked."""

LATE_ANSWER_ACTOR = "late-answer"
"""The actor of the ``retried`` event when a late answer of a system reached by a person resumed the request."""

CANCELLED_BY = "temporal-cancel"
"""The actor of a cancellation requested through Temporal (the UI's button, ``temporal workflow cancel``)."""


class RequestRejected(ApplicationError):
    """An update that the request's state does not allow; the message is shown to the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type=REQUEST_REJECTED, non_retryable=True)


class IdentityNotAllowed(ApplicationError):
    """A confirmation of identity whose method or proof the request's policy does not allow. Its own type, so
    that ``/verify`` can answer it exactly like a wrong code (no oracle)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type=IDENTITY_NOT_ALLOWED, non_retryable=True)


@workflow.defn(name="DataSubjectRequest")
class DataSubjectRequest:
    @workflow.init
    def __init__(self, request: RequestInput) -> None:
        if request.kind == RequestKind.POST_MORTEM:
            # Art. 85 loi 78-17: whatever the channel or the policy, the sender proves their quality (and the death)
            # by a document an operator reviews: an authenticated account proves neither (workflows/postmortem.py).
            request = dataclasses.replace(
                request, policy=dataclasses.replace(request.policy, identity=IdentityMethod.DOCUMENT))
        self._request = request
        self._stage = Stage.RECEIVED
        self._outcome: Outcome | None = None
        self._deadlines: Deadlines = request.deadlines
        self._deadline: Deadline = request.deadlines.normal
        self._deadline_version = 0  # bumped when the deadline moves, so the watcher re-plans
        self._extended = False
        self._extension_reason = ""
        self._overdue = False
        self._identity_confirmed = request.policy.identity == IdentityMethod.TRUSTED
        self._codes_locked: set[str] = set()  # pages ("verify", "exports") whose code the intake closed
        # Décret 2019-536 suspends the period only while the controller waits for what it asked, on a reasonable
        # doubt: not for a mere link, and not for its own review time. From the start, only for a document policy
        # that says why; later, from a recorded ``doubt``, until the subject provides what was asked.
        policy = request.policy
        self._clock_suspended = (
            policy.clock == ClockPolicy.SUSPEND_DURING_IDENTITY and not self._identity_confirmed
            and policy.identity == IdentityMethod.DOCUMENT and bool(policy.document_reason)
            and not request.documents  # what would be asked came with the request: nothing to wait for
        )
        self._refusal: Refusal | None = None
        self._withdrawal: Withdrawal | None = None
        self._retry_requested = False
        self._retry_by = "operator"
        self._awaiting_changes = False
        self._rectification: Rectification | None = None
        self._identity_waited_days = 0
        self._progress: dict[str, ConnectorProgress] = {}
        self._link_expires_at: datetime | None = None
        self._reply_message_id = ""  # the reply's Message-ID: a supplementary letter answers in its thread
        self._recipients_notified: list[str] = []  # named in the reply (Art. 19): told of a restriction's lift
        self._reply_held = ""
        self._residuals: list[str] = []  # residual lines still to be cleared by hand
        self._correspondence: set[str] = set()  # message keys already recorded: each message counts once
        self._thread_id: str | None = None  # the subject's latest Message-ID: our notices answer in its thread
        self._correspondence_files = False  # attachments came by correspondence since the last deletion
        self._letters: list[str] = []  # each recorded reply, for the status and the UI (no personal data)
        self._aftercare = ""  # the id of the aftercare started at the end (download link, residual data)
        self._cancelled_by_staff = False  # withdrawn by a cancellation from the Temporal UI
        self._cancellation_refused = ""  # why a cancellation from the Temporal UI was refused
        # The subject's turn (per-subject order): the current ask's number, whether it is out, granted, and
        # which request of the same person holds the turn while this one waits.
        self._turn_round = 0
        self._turn_asked = False
        self._turn_granted = False
        self._awaiting_turn = False
        self._turn_holder = ""
        self._plan_at_turn: FanOutPlan | None = None  # the fan-out's plan, answered with a turn granted at once
        # Mail: the acknowledgement's task, the notices being retried after a failed first try (templates), and a
        # counter naming each notice's idempotency key.
        self._acknowledgement: asyncio.Task[None] | None = None
        self._suspended_since: datetime | None = None
        self._suspended_days = 0
        self._side_mail: list[asyncio.Task[None]] = []  # notices sent from update handlers, awaited at the end
        self._releases: list[asyncio.Task[None]] = []  # releases of the subject's turn, awaited at the end
        self._mail_pending: list[str] = []
        self._mail_count = 0
        # Connectors: each connector's latest schedule number (signals of an
        # earlier schedule are stale) and the checkpoint a fresh schedule resumes from.
        self._schedules: dict[str, int] = {}
        self._cursors: dict[str, dict | None] = {}
        self._outside: set[str] = set()  # systems answered by a person: a child workflow each (workflows/outside.py)
        self._answered_late: set[str] = set()  # of those, answered after their task stopped waiting (in the ledger)
        # Objections (workflows/objection.py): the operator's decision on one to other processing, whether it
        # is awaited, and until when a marketing objection is on the suppression list.
        self._decision: ObjectionDecision | None = None
        self._awaiting_decision = False
        self._suppressed_until: datetime | None = None
        # Withdrawals of consent (workflows/consent.py): the purposes an earlier request had already withdrawn.
        self._consent_earlier: list[str] = []
        # Post-mortem requests (workflows/postmortem.py): the deceased person's directives found in the ledger,
        # the sender's confirmed quality, and what was done ("closed", "kept", "staff").
        self._directives: DirectivesFound | None = None
        self._quality: Quality | None = None
        self._post_mortem_action = ""
        # The ledger's events: noted in order, written in batches by one task at a time (see _note).
        self._events: list[AuditEvent] = []
        self._events_noted = 0
        self._events_written = 0
        self._ledger_writer: asyncio.Task[None] | None = None
        self._batch_in_flight = False  # a batch on its way to the ledger (the writer's, the turn's ask or give-back's)
        self._ledger_awaited = 0  # coroutines waiting for the ledger to hold what was noted: no batch waits then
        self._fanning_out = False  # from the plan to the last connector's end (see _batch_may_wait)
        self._reply_awaits_ack = False  # the reply waits for the acknowledgement to go first (see _batch_may_wait)
        self._run_ending = False  # closed, the aftercare's start on its way: the last batches (see _write_events)
        self._ending_batches = 0  # the last batches written so far (each under a key of its own)
        self._give_backs = 0  # the turn's give-backs so far (each one's events under a key of its own)
        self._give_backs_waiting = 0  # give-backs commanded whose coroutine has not run yet (see _start_aftercare)
        self._aftercare_to_start: AftercareStart | None = None  # left to the give-back about to run
        self._aftercare_starts: list[asyncio.Task[None]] = []  # the aftercare's start when no give-back carries it
        self._aftercare_starting = False  # until it is started: the events it could not carry wait (_write_events)
        self._events_handed_back: list[EventBatch] = []  # carried by a first try that failed: written next
        self._carried: EventBatch | None = None  # carried by the reply's first try, not known written (_write_events)
        self._restriction = ""  # an answered restriction: the id of the workflow holding it in force

    # --- main flow ----------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: RequestInput) -> RequestStatus:
        # A cancellation from the UI is caught and decided (withdrawn by staff, or refused): see _cancel_requested.
        return await shielded_from_cancellation(self._lifecycle(request), self._cancel_requested)

    async def _lifecycle(self, request: RequestInput) -> RequestStatus:
        if self._clock_suspended:
            self._suspended_since = workflow.now()
        self._publish()
        record = RequestRecordInput(
            request_id=request.request_id,
            kind=request.kind,
            channel=request.channel,
            subject=request.subject,
            received_at=request.received_at,
            deadline=self._deadline.due,
            language=request.language,
            # The register counts post_mortem requests by case: the sender's aim is one of its two sources.
            scope=aim.value if (aim := post_mortem_aim(request.kind, request.scope)) else "",
            documents=request.documents,
        )
        # In this first workflow task, a local activity: a request whose identity is settled from the start (trusted,
        # an authenticated account) asks for its person's turn and starts its connectors in the same task, with no
        # activity task and workflow task in between (six history events fewer). A ledger the worker cannot reach
        # for 15 s is then retried by the server, as an activity; both are idempotent: the row and its ``received``
        # are written once.
        await _local_first(LedgerActivities.record_request, record,
                           local={**LEDGER_LOCAL, "summary": "ledger: request recorded"},
                           remote=summarised(LEDGER, "ledger: request recorded"))
        # record_request wrote ``received`` with the row (one transaction, first in the ledger).
        # An SMTP outage must not hold every new request at `received`: identity and the fan-out go on while the
        # acknowledgement is retried; later emails to the subject let it go first (ACK_LEAD).
        self._acknowledgement = asyncio.create_task(
            self._notify_subject(NoticeTemplate.ACKNOWLEDGEMENT, **self._acknowledgement_context()))

        watcher = asyncio.create_task(self._watch_deadline())
        if await self._verify_identity() and not self._ending() and await self._changes_known():
            await self._carry_out()
        await self._close()
        # The request ends here, answered; the download link and residual data outlive it, in its aftercare, started
        # in this workflow task by a local activity (the turn's give-back when there is one, see _given_back), which
        # also writes ``closed`` and ``aftercare_started`` (noted right after it) unless a batch is on its way or the
        # close waited for something (files deleted, a notice).
        self._start_aftercare()
        self._run_ending = True
        await watcher  # it ends once it sees the request closed (or once the deadline notice on its way has gone)
        await children.hold(self)  # a restriction stays in force, in its own workflow, until lifted
        if self._acknowledgement is not None:
            await self._acknowledgement  # sent, or recorded as failed, before the run ends
        for mail in self._side_mail:
            await mail
        for release in self._releases:
            await release  # the turn given back, the next request of the person told
        # Updates still running (e.g. a refusal waiting for closure) finish before the run does.
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._ledger_written()  # the events noted without waiting (closed, aftercare_started...)
        while pending := [step for step in (*self._releases, *self._aftercare_starts) if not step.done()]:
            await asyncio.gather(*pending)  # also a turn granted after its release, given back by a late signal
        return self.status()

    async def _verify_identity(self) -> bool:
        """Art. 12(6): ask only as much as the policy requires; close as unverified after the wait."""
        if postmortem.is_post_mortem(self):
            # 85-I: the directives decide who may act, so they are known before the sender's quality is reviewed.
            await postmortem.find_directives(self)
        if self._identity_confirmed:
            self._note("identity_confirmed", details={"method": IdentityMethod.TRUSTED.value})
            return True
        if objection.is_marketing_objection(self):
            # Art. 21(3): whoever asks, marketing to this address stops; asking for proof first would only let
            # campaigns go on meanwhile. Nothing is disclosed (the reply lists opt-outs, no data), and the subject
            # is greeted without the name, as before any confirmation.
            self._note("identity_not_required", details={"why": "objection to direct marketing"})
            return True
        if consent.is_consent_withdrawal(self):
            # Art. 7(3): as easy to withdraw as to give; consent is given with an address, so control of the address
            # (the request came from it) is all that is asked. Nothing is disclosed; no name in the greeting.
            await self._audit("identity_not_required", details={"why": "withdrawal of consent"})
            return True
        policy = self._request.policy
        self._set_stage(Stage.AWAITING_IDENTITY)
        await self._audit(
            "identity_requested", stage=Stage.AWAITING_IDENTITY, details={"method": policy.identity.value}
        )
        identity = self._identity_word()
        reminder_after = timedelta(days=policy.identity_reminder_after_days)
        limit = timedelta(days=policy.identity_timeout_days)
        if not self._clock_suspended:
            # Art. 12(3)-(4): the answer, even "not verified, closed", reaches the subject by the deadline: the
            # wait ends on the due day at 09:00 local (overdue_at is the end of that day) if that comes first.
            by_deadline = self._deadline.overdue_at - UNVERIFIED_LEAD - workflow.now()
            limit = max(timedelta(0), min(limit, by_deadline))
            reminder_after = min(reminder_after, limit / 2)
        if self._clock_suspended:
            await self._audit("clock_suspended", details={"why": "document policy"}, note=policy.document_reason)
        # The subject is told how long they have (whole days, never more than they are given) and, if the
        # period stands still meanwhile, that it does.
        await self._notify_subject(
            NoticeTemplate.IDENTITY_REQUEST, identity=identity,
            days=str(max(1, limit // timedelta(days=1))), document_reason=policy.document_reason,
            suspended="yes" if self._clock_suspended else "",
            **({"documents": str(self._request.documents)} if self._request.documents else {}),
        )
        if self._request.documents:  # the form's documents are there to review: the operator is told now
            await self._notify_operator(NoticeTemplate.OPERATOR_CORRESPONDENCE,
                                        attachments=str(self._request.documents), source="form")

        def settled() -> bool:
            return self._identity_confirmed or self._ending()

        started = workflow.now()
        if not await self._wait(settled, reminder_after, "identity reminder"):
            if not self._request.documents:  # documents came with the form: nothing to remind the sender of
                await self._notify_subject(NoticeTemplate.IDENTITY_REMINDER, identity=identity)
                await self._audit("identity_reminder_sent")
            remaining = limit - reminder_after
            if self._request.documents:
                # The sender sent what was asked with the form: the wait is now on our review, never theirs to
                # lose (the deadline's own reminders and escalation follow the request meanwhile).
                await workflow.wait_condition(settled)
            elif not await self._wait(settled, remaining, "identity timeout"):
                self._outcome = Outcome.UNVERIFIED
                self._identity_waited_days = max(1, round((workflow.now() - started) / timedelta(days=1)))
                return False
        if self._ending():
            return False
        # CNIL: a copy of an ID document is kept only as long as needed to check identity. Whatever the channel:
        # a form or API request may hold an ID copy too, sent later by email (``record_correspondence``).
        await self._delete_attachments("identity_documents_deleted")
        return True

    async def _delete_attachments(self, event: str) -> None:
        """Delete the files stored with the request (the activity answers 0 when there are none)."""
        # Cleared first: files recorded while the activity runs may come after it looked, so they keep the flag.
        self._correspondence_files = False
        deleted = await workflow.execute_activity_method(
            IntakeActivities.delete_identity_documents, self._request.request_id,
            **summarised(STORAGE, "delete identity documents"),
        )
        if deleted:
            await self._audit(event, details={"count": str(deleted)})

    async def _changes_known(self) -> bool:
        """A rectification names the fields and their new values before any system is touched. One that came
        as free text (the web form, an API call without ``changes``) waits in needs_attention for an operator
        to read it and give them (``rectify``): otherwise every system would be found "already up to date"
        and the reply would say so, having corrected nothing."""
        if self._request.kind != RequestKind.RECTIFICATION or self._request.changes:
            return True
        self._awaiting_changes = True
        self._set_stage(Stage.NEEDS_ATTENTION)
        await self._audit("changes_needed", stage=Stage.NEEDS_ATTENTION)
        await self._notify_operator(NoticeTemplate.OPERATOR_CHANGES_NEEDED)
        await workflow.wait_condition(lambda: self._rectification is not None or self._ending())
        self._awaiting_changes = False
        if self._ending() or self._rectification is None:
            return False
        self._request = dataclasses.replace(self._request, changes=dict(self._rectification.changes))
        await self._audit("changes_given", actor=self._rectification.requested_by,
                          details={"fields": ",".join(sorted(self._request.changes))},
                          note=changes_note(self._request.changes))  # the new values: personal, sealed
        return True

    async def _carry_out(self) -> None:
        """Fan out to every configured system; permanent failures wait for an operator's retry."""
        if self._request.kind == RequestKind.OBJECTION:
            await objection.carry_out(self)
            return
        if self._request.kind == RequestKind.CONSENT_WITHDRAWAL:
            await consent.carry_out(self)
            return
        if self._request.kind == RequestKind.POST_MORTEM:
            await postmortem.carry_out(self)
            return
        await self._carry_out_in_systems()

    async def _carry_out_in_systems(self) -> None:
        """The fan-out and the reply, in the person's turn (a post_mortem request: the deceased person's)."""
        self._set_stage(Stage.PROCESSING)
        self._note("processing", stage=Stage.PROCESSING)
        # One subject, one thing at a time: the fan-out and the reply run only while this request holds the
        # person's turn. The reply too: an access bundle is built from what was exported, which a later erasure of
        # the same person deletes (with the bundle) when it closes; in turn, the erasure never races the bundle.
        # Requests without a ``subject_key`` (inputs made without the ledger's blind index) do not queue.
        ordered = bool(self._request.subject_key)
        evicted = False
        try:
            if ordered and not await self._take_turn():
                return
            if await self._fan_out(ordered):
                await self._reply()
                if self._request.kind == RequestKind.RECTIFICATION and self._outcome == Outcome.FULFILLED:
                    # Art. 18(1)(a): the accuracy is verified once the rectification is done; restrictions of the
                    # person on that ground are told, and lift after telling the subject.
                    await children.end_grounds(self, RestrictionGround.ACCURACY)
                if self._request.kind == RequestKind.ERASURE:
                    # While this erasure still holds the person's turn, so that no access request of theirs is
                    # exporting (or building its bundle) while its files are deleted.
                    await self._delete_earlier_exports()
        except GeneratorExit:
            # The worker dropped this run from its cache: nothing happened in the history, and outside the workflow's
            # event loop no signal can be sent anyway. The run that replays it later still holds the turn.
            evicted = True
            raise
        finally:
            if ordered and not evicted:  # whatever happens (withdrawn while waiting, cancelled), the turn goes back
                self._release_turn()

    async def _reply(self) -> None:
        self._set_stage(Stage.REPLYING)
        self._note("replying", stage=Stage.REPLYING)
        self._reply_awaits_ack = True  # the events noted so far wait for the reply's first try (_batch_may_wait)
        try:
            await self._after_acknowledgement()
        finally:
            self._reply_awaits_ack = False
        reply = await self._send_reply()
        if reply is not None:
            self._reply_message_id = reply.message_id
            self._link_expires_at = reply.link_expires_at
            self._recipients_notified = list(reply.recipients_notified)
            self._note("reply_sent", details={
                "no_data": str(reply.no_data).lower(),
                "recipients_notified": str(len(reply.recipients_notified)),
                "link_expires": reply.link_expires_at.isoformat() if reply.link_expires_at else "",
                "bundle_sha256": reply.bundle_sha256,
            })
        self._residuals = self._residual_lines()
        rejected = self._decision is not None and not self._decision.uphold
        self._outcome = Outcome.DECLINED if rejected else Outcome.FULFILLED

    async def _fan_out(self, ordered: bool) -> bool:
        """Every connector done (True), or the request withdrawn or refused meanwhile (False)."""
        self._fanning_out = True
        try:
            return await self._fan_out_in_turn(ordered)
        finally:
            self._fanning_out = False

    async def _fan_out_in_turn(self, ordered: bool) -> bool:
        plan, self._plan_at_turn = self._plan_at_turn, None
        if plan is None:  # no turn asked, or not granted at once: the plan as the configuration says now
            options: workflow.LocalActivityConfig = {**PLAN, "summary": f"plan {self._request.kind.value}"}
            plan = await workflow.execute_local_activity_method(
                ConnectorActivities.plan_fanout, PlanInput(kind=postmortem.work_kind(self)), **options)
        if consent.is_consent_withdrawal(self):
            # Systems reached by a person (processor, manual) a purpose maps are told first, the same day, and their
            # answer followed up by their own task, which outlives this request; the reply says they were told.
            told = consent.mapped(self, plan.outside)
            plan = dataclasses.replace(plan, outside=[], connectors=[
                n for n in consent.mapped(self, plan.connectors) if n not in plan.outside])
            await consent.tell_outside(self, told)
        for name in plan.connectors:
            self._progress.setdefault(name, ConnectorProgress(connector=name))
        self._outside = set(plan.outside)
        self._update_details()

        while True:
            pending = [p for p in self._progress.values() if p.state != ConnectorState.DONE]
            await asyncio.gather(*(self._run_connector(p) for p in pending))
            failed = [p for p in self._progress.values() if p.state == ConnectorState.FAILED]
            if not failed:
                break
            released = ordered and postmortem.work_kind(self) in (RequestKind.ERASURE, RequestKind.RECTIFICATION)
            if released:
                # An operator may take days: the person's other requests go on meanwhile (this one asks again
                # on retry, and takes its place by receipt among those then waiting). An access or portability
                # request keeps the turn: a later erasure would delete what it exported before its reply is built.
                self._release_turn()
            self._set_stage(Stage.NEEDS_ATTENTION)
            await self._audit(
                "needs_attention",
                stage=Stage.NEEDS_ATTENTION,
                details={"connectors": ",".join(p.connector for p in failed)},
            )
            await self._notify_operator(
                NoticeTemplate.OPERATOR_ATTENTION,
                connector=", ".join(p.connector for p in failed),
                error="; ".join(f"{p.connector}: {p.error}" for p in failed),
            )
            names = {p.connector for p in failed}

            def answered_late(names: set[str] = names) -> bool:
                # Failed only for want of an answer that has come since (the ledger has it): no one need retry.
                return names <= self._answered_late

            await workflow.wait_condition(lambda: self._retry_requested or self._ending() or answered_late())
            if self._ending():
                return False
            actor = self._retry_by if self._retry_requested else LATE_ANSWER_ACTOR
            self._retry_requested = False
            self._set_stage(Stage.PROCESSING)
            await self._audit("retried", stage=Stage.PROCESSING, actor=actor)
            if released and not await self._take_turn():
                return False
        return True

    async def _take_turn(self) -> bool:
        """Ask for the subject's turn and wait for it (the deadline watcher runs meanwhile); False when the request
        is withdrawn or refused while it waits."""
        for release in self._releases:
            await release  # an earlier round given back first: the new ask takes its place by receipt
        self._turn_round += 1
        self._turn_asked = True
        self._turn_granted = False
        self._turn_holder = ""
        self._awaiting_turn = True  # nothing changed yet: a withdrawal or refusal is still welcome
        self._update_details()
        # The events noted before the ask (``identity_confirmed``, ``processing``) go with it, unless a batch is on
        # its way (they come after it): one activity and one workflow task less than a batch of their own.
        events = self._taken_for_line()
        summary = "subject's turn: ask" + (f"; {_batch_summary(events)}" if events else "")
        ask = QueueAsk(queue_id=subject_queue_id(self._request.subject_key), ask=TurnAsk(
            request_id=self._request.request_id, received_at=self._request.received_at, round=self._turn_round,
        ), events_key=self._events_key(f"turn-{self._turn_round}"))
        # The first ask brings the fan-out's plan when granted at once: the connectors start in the task reading it.
        planned = self._turn_round == 1 and not self._progress
        try:
            # The ask answers at once who holds the turn: granted (the usual case) goes on from here, in the same
            # workflow task (a local activity); otherwise a signal says when.
            answer = await self._in_line(
                SubjectActivities.ask_subject_turn,
                dataclasses.replace(ask, events=events,
                                    plan=PlanInput(kind=postmortem.work_kind(self)) if planned else None),
                events, ask.events_key, summary)
            self.subject_turn(answer.turn)
            self._plan_at_turn = answer.plan
            await self._wait_for_turn(ask)
        finally:
            self._awaiting_turn = False
        waited_for, self._turn_holder = self._turn_holder, ""
        self._update_details()
        if self._ending():
            return False
        self._note("turn_taken", details={"waited_for": waited_for})
        return True

    async def _wait_for_turn(self, ask: QueueAsk) -> None:
        """Until the turn is granted, or the request ends; hourly, whether the holder still runs (one terminated
        by hand never gives the turn back: the check takes it out of the line)."""
        while not (self._turn_granted or self._ending()):
            try:
                await workflow.wait_condition(lambda: self._turn_granted or self._ending(),
                                              timeout=HOLDER_CHECK_EVERY, timeout_summary="holder check")
            except TimeoutError:
                self.subject_turn(await workflow.execute_activity_method(
                    SubjectActivities.check_subject_turn, ask,
                    **summarised(CHECK, f"is {self._turn_holder or 'the holder'} still running")))

    def _release_turn(self) -> None:
        """Give the subject's turn back (or leave the line, when still waiting); no-op when not asked. The request
        goes on without waiting for it (one workflow task less at the end of every request); the run ends only once
        it is done."""
        if not self._turn_asked:
            return
        self._turn_asked = self._turn_granted = False
        self._give_back(self._turn_round)

    def _give_back(self, turn_round: int) -> None:
        self._give_backs_waiting += 1
        self._releases.append(asyncio.create_task(self._given_back(turn_round)))

    async def _given_back(self, turn_round: int) -> None:
        """A local activity, like the ask: a transaction and the signal to the next request, in the workflow task that
        gives the turn back (no activity task on the server). Releasing twice changes nothing. It carries the events
        noted by then, under a key of the request's, as the ask does, and writes them after the line and its signals
        (a ledger refusing them holds this request, never the person's next one): at the answer, it runs as soon as
        the run's code waits for something, so with ``reply_sent``, ``closed`` and ``aftercare_started`` (one local
        activity for the closing, not two side by side), which then also starts the aftercare (``start_aftercare``)."""
        events = self._taken_for_line()
        self._give_backs += 1
        self._give_backs_waiting -= 1
        aftercare, self._aftercare_to_start = self._aftercare_to_start, None
        key = self._events_key(f"give-back-{self._give_backs}")
        release = QueueRelease(queue_id=subject_queue_id(self._request.subject_key), release=TurnRelease(
            request_id=self._request.request_id, round=turn_round))
        summary = "subject's turn: give back" + (f"; {_batch_summary(events)}" if events else "")
        if aftercare is None:
            await self._in_line(SubjectActivities.release_subject_turn,
                                dataclasses.replace(release, events=events, events_key=key), events, key, summary)
        else:  # the closing: the line, the aftercare's start, then the events
            await self._aftercare_with(dataclasses.replace(aftercare, release=release), events, key,
                                       f"{summary}; start aftercare")

    def _taken_for_line(self) -> list[AuditEvent]:
        """The noted events the turn's ask or give-back about to run carries (``_carry_noted``); while it runs, the
        writer waits (a millisecond or two): ``_in_line`` lets it go on."""
        events = self._carry_noted()
        if events:
            self._batch_in_flight = True
        return events

    async def _in_line(self, step: Callable[..., Any], arg: Any, events: list[AuditEvent], key: str,
                       summary: str) -> Any:
        """The turn's ask or give-back, or the aftercare's start (``TURN_ASK_LOCAL``, then ``TURN_ASK``), writing
        ``events`` (taken from the writer by ``_taken_for_line``) under ``key``. The activity is retried without
        limit and refused nothing: a failure is one not foreseen; should the run go on, the events go to the writer
        rather than nowhere, under the same key (written once)."""
        try:
            answer = await _local_first(step, arg, local={**TURN_ASK_LOCAL, "summary": summary},
                                        remote=summarised(TURN_ASK, summary))
        except Exception:
            if events:
                self._events_handed_back.append(EventBatch(key=key, events=events))
                self._ensure_ledger_writer()
            raise
        finally:
            if events:
                self._batch_in_flight = False  # set by _taken_for_line
        self._events_written += len(events)
        return answer

    @workflow.signal(name=SUBJECT_TURN_SIGNAL)
    def subject_turn(self, turn: SubjectTurn) -> None:
        """Who holds the subject's turn: this request (granted) or the one it waits for (the answer of the ask or
        of the holder check, which may come after the signal granting it, or a signal once another's release or
        ask changed it)."""
        if turn.holder == self._request.request_id and self._turn_asked and turn.round > self._turn_round:
            # The line keeps this request's place under a later round than this run has asked: only an earlier run
            # of the same request asks that often (a run reset to before its asks). The place is this request's.
            self._turn_round = turn.round
        if turn.holder == self._request.request_id and (not self._turn_asked or turn.round != self._turn_round):
            # Granted a turn this request no longer asks for (an ask's late retry, committed after its release):
            # given back, or the person's other requests would wait for a turn nobody uses.
            self._give_back(turn.round)
            return
        if not self._turn_asked or turn.round != self._turn_round or self._turn_granted:
            return  # an answer to an earlier ask, or one older than the grant
        if turn.holder == self._request.request_id:
            self._turn_granted = True
        else:
            self._turn_holder = turn.holder
            self._update_details()

    async def _send_reply(self) -> ReplyResult | None:
        """The final reply. A reply only an operator can unblock (an access reply missing an Art. 15(1) item
        of the controller profile) puts the request in needs_attention until ``retry``; an address the mail
        server refuses for good is recorded and the request still closes (None)."""
        reply_input = ReplyInput(
            request_id=self._request.request_id,
            kind=self._request.kind,
            language=self._request.language,
            # A reply sent without confirmed identity (an objection to marketing) greets without the name.
            subject=dataclasses.replace(self._request.subject, name=self._greeting_name()),
            received=self._request.received_on,
            deadline=self._deadline.due,
            extended=self._extended,
            extension_reason=self._extension_reason,
            outcomes=[p.outcome for p in self._progress.values() if p.outcome is not None],
            in_reply_to=self._thread(),
            scope=self._request.scope,
            decision=("upheld" if self._decision.uphold else "rejected") if self._decision else "",
            grounds=self._decision.grounds if self._decision else "",
            suppressed_until=self._suppressed_until.date() if self._suppressed_until else None,
            purposes=list(self._request.purposes),
            consent_earlier=list(self._consent_earlier),
            quality=self._quality.value if self._quality else "",
            action=self._post_mortem_action,
            directives=self._directives.instruction if self._directives else "",
            ground=self._request.ground,
            lift_notice_days=self._request.policy.restriction_lift_notice_days,
            key="final-reply",
        )
        # The events noted before the reply (``turn_taken``, ``connector_done``..., ``replying``) go with its first
        # try, written before anything else it does, under a key of their own (see _send_reply_tracked).
        carried: EventBatch | None = None
        if events := self._carry_noted():
            # Keyed like the reply's emails: one final reply per run, so one carried batch.
            carried = EventBatch(key=self._events_key(reply_input.key), events=events)
            self._carried = carried
        while True:
            try:
                first_try, carried = carried, None  # carried by the first call only (a held reply is tried again)
                return await self._send_reply_tracked(reply_input, first_try)
            except ActivityError as err:
                cause = err.cause
                if not isinstance(cause, ApplicationError):
                    raise
                if cause.type in REPLY_UNDELIVERABLE_TYPES:
                    await self._audit("notice_failed", details={"template": f"reply_{self._request.kind.value}",
                                                                "error_type": cause.type})
                    return None
                if cause.type not in REPLY_HELD_TYPES:
                    raise
                self._reply_held = f"{cause.type}: {cause.message}"
                self._set_stage(Stage.NEEDS_ATTENTION)
                await self._audit("reply_held", stage=Stage.NEEDS_ATTENTION, details={"error_type": cause.type})
                await self._notify_operator(NoticeTemplate.OPERATOR_REPLY_HELD, error=cause.message)
                await workflow.wait_condition(lambda: self._retry_requested)
                self._retry_requested = False
                self._reply_held = ""
                self._set_stage(Stage.REPLYING)
                await self._audit("retried", stage=Stage.REPLYING, actor=self._retry_by)

    async def _send_reply_tracked(self, reply_input: ReplyInput, carried: EventBatch | None) -> ReplyResult:
        """One try; if the mail server did not take the reply (down, 4xx, a lost worker), it counts as pending mail
        (status, UI, ``DsrMailPending``) like a notice, while it is retried under the same key (one Message-ID).

        ``carried``: ledger events the first try writes before anything else. It succeeded: they are written. It
        failed, whether before or after writing them: the request's writer writes them next, under the same key (so
        once), before any event noted since; the retried activity carries none. An event noted while the try runs
        (a bundle may take minutes) does not wait for it: the writer writes the carried batch first, under its key
        (``_write_events``)."""
        summary = f"reply: {self._request.kind.value}"
        try:
            result = await workflow.execute_activity_method(
                ReplyActivities.send_reply, dataclasses.replace(reply_input, events=carried),
                **summarised(REPLY_FIRST_TRY, summary + (f"; {_batch_summary(carried.events)}" if carried else "")))
        except Exception as err:
            if carried is not None and self._carried is carried:  # (else the writer took it meanwhile)
                self._carried = None
                self._events_handed_back.append(carried)
                self._ensure_ledger_writer()
            if not isinstance(err, ActivityError) or err.retry_state == RetryState.NON_RETRYABLE_FAILURE:
                raise  # refused for good, or held for an operator: the caller decides
        else:
            if carried is not None and self._carried is carried:
                self._carried = None
                self._events_written += len(carried.events)
            return result
        template = f"reply_{self._request.kind.value}"
        self._mail_pending.append(template)
        self._mail_changed()
        await self._audit("notice_deferred", details={"template": template})
        try:
            result = await workflow.execute_activity_method(ReplyActivities.send_reply, reply_input,
                                                            **summarised(REPLY, summary + " (retried)"))
        except ActivityError:
            self._mail_done(template)
            raise
        self._mail_done(template)
        return result

    def _residual_lines(self) -> list[str]:
        """One line per residual report line: system, dataset, record, fields and note; no personal data."""
        lines = []
        for progress in self._progress.values():
            for line in progress.outcome.report if progress.outcome else []:
                if line.action != RecordAction.RESIDUAL:
                    continue
                where = f"{progress.connector}: {line.dataset}"
                if line.record_id and line.record_id != "*":
                    where += f" {line.record_id}"
                if line.fields:
                    where += f" ({', '.join(line.fields)})"
                lines.append(where + (f" - {line.note}" if line.note else ""))
        return lines

    async def _run_connector(self, progress: ConnectorProgress) -> None:
        self._answered_late.discard(progress.connector)
        progress.state = ConnectorState.RUNNING
        progress.error = ""
        progress.attempts += 1
        progress.failing_since = None  # an operator's retry starts a new run: no failing episode yet
        self._update_details()
        # Beside the activity: a connector failing too long (the activity tells when it starts failing) is
        # shown as degraded and the operator told, until it succeeds, progresses or an operator is asked.
        watcher = asyncio.create_task(self._watch_failing(progress))
        try:
            outcome = await self._run_resuming(progress)
        except (ActivityError, ChildWorkflowError) as err:
            cause = err.cause
            progress.state = ConnectorState.FAILED
            progress.error = str(cause.message if isinstance(cause, ApplicationError) else err.message)
            if isinstance(cause, ApplicationError) and cause.type == PROGRESSED:
                progress.error += f"; resumed {progress.resumed} times and still failing"
            progress.failing_since = None
            await watcher
            await self._audit(
                "connector_failed",
                details={
                    "connector": progress.connector,
                    "error_type": cause.type if isinstance(cause, ApplicationError) and cause.type else "",
                },
            )
        else:
            progress.state = ConnectorState.DONE
            progress.outcome = outcome
            progress.error = ""
            progress.failing_since = None
            await watcher
            details = {"connector": progress.connector, "found": str(outcome.found)}
            details.update({k: str(v) for k, v in sorted(outcome.counts.items())})
            self._note("connector_done", details=details)
        self._update_details()

    def _connector_task(self, connector: str, *, schedule: int = 0) -> ConnectorTask:
        return ConnectorTask(
            request_id=self._request.request_id,
            connector=connector,
            kind=postmortem.work_kind(self),
            subject=postmortem.deceased(self),
            changes=self._request.changes,
            consent=consent.actions_for(self, connector),
            resume=self._cursors.get(connector) if schedule else None,
            schedule=schedule,
        )

    async def _run_resuming(self, progress: ConnectorProgress) -> ConnectorOutcome:
        """Schedule the connector until it succeeds; an attempt that failed after advancing its checkpoint comes
        back as ``ConnectorProgressed`` and is followed at once (after the vendor's Retry-After, if any) by a
        fresh activity from that checkpoint, with attempts and backoff reset. Within bounds: RESUMES_MAX and
        RESUME_WINDOW; a connector that never progresses keeps CONNECTOR' budget (about a day)."""
        name = progress.connector
        if name in self._outside:
            return await children.run_outside_task(OutsideTaskInput(
                request_id=self._request.request_id, system=name, kind=postmortem.work_kind(self),
                subject=postmortem.deceased(self), deadline=self._deadline.due, changes=dict(self._request.changes),
                now=workflow.now()))
        started = workflow.now()
        resumed = 0
        while True:
            self._schedules[name] = schedule = self._schedules.get(name, 0) + 1
            try:
                return await workflow.execute_activity_method(
                    ConnectorActivities.run_connector,
                    self._connector_task(name, schedule=schedule),
                    **summarised(CONNECTOR,
                                 f"{name}: {self._request.kind.value}" + (f" (resumed {resumed})" if resumed else ""),
                                 heartbeat_timeout=timedelta(seconds=self._request.policy.connector_heartbeat_seconds)),
                )
            except ActivityError as err:
                cause = err.cause
                if not isinstance(cause, ApplicationError) or cause.type != PROGRESSED:
                    raise
                details = list(cause.details)
                cursor = details[0] if details else None
                retry_after = details[1] if len(details) > 1 else None
                if isinstance(cursor, dict):
                    self._cursors[name] = cursor
                if resumed >= RESUMES_MAX or workflow.now() - started >= RESUME_WINDOW:
                    raise
                resumed += 1
                progress.resumed += 1
                progress.failing_since = None  # it progressed: a failing episode, if any, is over
                progress.error = ""
                self._update_details()
                if isinstance(retry_after, int | float) and retry_after > 0:
                    await workflow.sleep(timedelta(seconds=retry_after), summary=f"{name}: Retry-After")

    @workflow.signal(name=LATE_ANSWER_SIGNAL)
    def outside_answered(self, system: str) -> None:
        """A system reached by a person was answered after its task stopped waiting (no answer by its date): the
        answer is in the ledger, and the task's next run takes it. Only a failed system's answer counts."""
        progress = self._progress.get(system)
        if system in self._outside and progress is not None and progress.state == ConnectorState.FAILED:
            self._answered_late.add(system)

    @workflow.signal(name=HEALTH_SIGNAL)
    def connector_health(self, health: ConnectorHealth) -> None:
        """A connector's activity says its schedule began failing (Temporal retries it, unseen here), or that it
        advanced its checkpoint again. Signals of an earlier schedule are stale and ignored."""
        progress = self._progress.get(health.connector)
        if (progress is None or progress.state != ConnectorState.RUNNING
                or health.schedule != self._schedules.get(health.connector)):
            return
        if health.failing:
            if progress.failing_since is None:
                progress.failing_since = workflow.now()
                progress.error = health.error
        else:
            progress.failing_since = None
            progress.error = ""
        self._update_details()

    async def _watch_failing(self, progress: ConnectorProgress) -> None:
        """Degraded: failing (no success, no progress) for longer than the policy allows. Told once per episode:
        status, UI details, ``DsrDegraded``, a ledger event and an operator alert; cleared when the connector
        succeeds or progresses, or when it fails for good (the operator is then asked anyway)."""
        limit = timedelta(minutes=self._request.policy.connector_degraded_minutes)

        def running() -> bool:
            return progress.state == ConnectorState.RUNNING

        while True:
            await workflow.wait_condition(lambda: progress.failing_since is not None or not running())
            since = progress.failing_since
            if not running() or since is None:
                return

            def episode_over(since: datetime = since) -> bool:
                return progress.failing_since != since or not running()

            if await self._wait(episode_over, since + limit - workflow.now(), f"{progress.connector}: degraded?"):
                continue
            progress.degraded = True
            self._degraded_changed()
            await self._audit("connector_degraded", details={
                "connector": progress.connector, "failing_since": since.isoformat(),
                "minutes": str(self._request.policy.connector_degraded_minutes),
            })
            await self._notify_operator(
                NoticeTemplate.OPERATOR_DEGRADED, connector=progress.connector, error=progress.error,
                failing_minutes=str(self._request.policy.connector_degraded_minutes),
            )
            await workflow.wait_condition(episode_over)
            progress.degraded = False
            self._degraded_changed()
            cleared_by = {ConnectorState.DONE: "success", ConnectorState.FAILED: "needs_attention"}.get(
                progress.state, "progress")
            await self._audit("connector_degraded_cleared",
                              details={"connector": progress.connector, "by": cleared_by})

    def _degraded_changed(self) -> None:
        """The search attribute counts the connectors degraded."""
        count = sum(1 for p in self._progress.values() if p.degraded)
        workflow.upsert_search_attributes([sa.DSR_DEGRADED.value_set(count)])
        self._update_details()

    async def _close(self) -> None:
        if self._refusal is not None:
            self._outcome = Outcome.REFUSED
            self._set_stage(Stage.REPLYING)
            await self._notify_subject(NoticeTemplate.REFUSAL, reason=self._refusal.reason,
                                       ground=RefusalGround(self._refusal.ground).value)
        elif self._withdrawal is not None:
            self._outcome = Outcome.WITHDRAWN
            await self._notify_subject(NoticeTemplate.WITHDRAWN, by_staff="yes" if self._cancelled_by_staff else "")
        elif self._outcome == Outcome.UNVERIFIED:
            # The wait the subject was actually given (the deadline may have cut the policy's short).
            await self._notify_subject(
                NoticeTemplate.UNVERIFIED,
                days=str(self._identity_waited_days or self._request.policy.identity_timeout_days),
            )
        assert self._outcome is not None
        await self._delete_stored_objects()
        self._set_stage(Stage.CLOSED)
        self._note("closed", stage=Stage.CLOSED, outcome=self._outcome)
        if self._correspondence_files:
            # Files the subject sent after identity was settled (or that nobody confirmed) have no purpose
            # once the request is closed. Only requests that took correspondence get here, so histories
            # from before ``record_correspondence`` replay unchanged.
            await self._delete_attachments("attachments_deleted")

    async def _delete_stored_objects(self) -> None:
        """What closing without a reply makes pointless to keep on the object store (idempotent)."""
        if self._outcome in (Outcome.REFUSED, Outcome.WITHDRAWN, Outcome.UNVERIFIED):
            # No reply will deliver them: a half-finished export and the files sent with the request go now.
            if await workflow.execute_activity_method(ReplyActivities.delete_exports,
                                                      ExportsDeletion(self._request.request_id),
                                                      **summarised(STORAGE, "delete partial exports")):
                await self._audit("exports_deleted")
            await self._delete_attachments("attachments_deleted")

    async def _delete_earlier_exports(self) -> None:
        """Erased everywhere else: the copies made for the subject's earlier access requests go too."""
        deleted = await workflow.execute_activity_method(
            StorageActivities.delete_earlier_exports, ExportsDeletion(self._request.request_id),
            **summarised(STORAGE, "delete the subject's earlier exports"),
        )
        if deleted:
            await self._audit("earlier_exports_deleted", details={"requests": str(deleted)})

    # --- the end of the request: its aftercare, a cancellation from the UI ------------------------------

    def _start_aftercare(self) -> None:
        """What outlives the answer (the download link until it expires, residual data until an operator clears
        it) goes to the request's aftercare, a workflow of its own (id ``aftercare-<reference>``), started by the
        closing's local activity (``start_aftercare``): the turn's give-back when one is about to run (commanded at
        the answer, it runs at the run's next wait, with ``reply_sent``, ``closed`` and ``aftercare_started``), else
        one of its own. Either way the run ends in the workflow task that closes it: a child's start would be answered
        by the server in a task more (measured with bench/throughput.py as the largest step left between the answer
        and the run's end), and an abandoned child outlives its parent only once that answer has come. What is lost:
        the UI's parent-child link (the details name the aftercare; its id is the reference's).

        ``aftercare_started`` is noted now and written with (or after) the start. The subject's turn was released at
        the answer: a later request of the person never waits for the aftercare. Nothing when nothing outlives the
        answer."""
        if not self._aftercare_needed():
            return
        policy = self._request.policy
        care = AftercareInput(
            request_id=self._request.request_id, operator_email=policy.operator_email,
            language=self._request.language, escalation_repeat_days=policy.escalation_repeat_days,
            deadline=self._deadline.due, extended=self._extended, link_expires_at=self._link_expires_at,
            residuals=list(self._residuals), notice_context=self._notice_context(),
            supplement=self._supplement_plan(),
        )
        what = [*(["download link"] if self._link_expires_at else []), *(["residual data"] if self._residuals else [])]
        keywords = {sa.DSR_KIND.name: self._request.kind.value, sa.DSR_STAGE.name: Stage.CLOSED.value}
        if self._outcome is not None:
            keywords[sa.DSR_OUTCOME.name] = self._outcome.value
        care_id = aftercare_id(self._request.request_id)
        start = AftercareStart(
            workflow_id=care_id, task_queue=workflow.info().task_queue, care=care,
            summary=f"aftercare · {self._request.kind.value} · {', '.join(what)}",
            keywords=keywords, flags={sa.DSR_RESIDUAL.name: bool(self._residuals)},
        )
        self._aftercare = care_id
        self._aftercare_starting = True
        self._update_details()
        self._note("aftercare_started", details={"workflow": care_id, "for": ",".join(what)})
        if self._give_backs_waiting:
            self._aftercare_to_start = start  # the give-back about to run starts it (_given_back)
        else:
            self._aftercare_starts.append(asyncio.create_task(self._aftercare_started(start)))

    async def _aftercare_started(self, start: AftercareStart) -> None:
        """The aftercare's start when no give-back carries it (the turn given back earlier, or never asked), with
        the events noted by then (``closed``, ``aftercare_started``), as the give-back would."""
        events = self._taken_for_line()
        await self._aftercare_with(start, events, self._events_key("aftercare"),
                                   "start aftercare" + (f"; {_batch_summary(events)}" if events else ""))

    async def _aftercare_with(self, start: AftercareStart, events: list[AuditEvent], key: str, summary: str) -> None:
        """``start_aftercare`` carrying ``events`` under ``key``, written once the aftercare is started. Retried without
        limit (``_in_line``): a failure fails the run, as a give-back's would. Once it is done, the events it could not
        carry may go (``_write_events``)."""
        try:
            await self._in_line(SubjectActivities.start_aftercare,
                                dataclasses.replace(start, events=events, events_key=key), events, key, summary)
        finally:
            self._aftercare_starting = False

    def _aftercare_needed(self) -> bool:
        return self._link_expires_at is not None or bool(self._residuals)

    def _supplement_plan(self) -> SupplementPlan | None:
        """The systems reached by a person that the reply told as not answered yet: once they answer (or the
        follow-up gives up), the aftercare writes to the subject again, as the reply promised. None when the reply
        named none (or was never sent: nothing was promised)."""
        pending = [p.connector for p in self._progress.values()
                   if p.outcome is not None and p.outcome.answer is not None
                   and p.outcome.answer.status == AnswerStatus.NO_ANSWER]
        if not pending or not self._reply_message_id:
            return None
        request = self._request
        return SupplementPlan(kind=request.kind, subject=dataclasses.replace(request.subject,
                                                                              name=self._greeting_name()),
                              systems=pending, received=request.received_on, reply_message_id=self._reply_message_id,
                              purposes=list(request.purposes))

    def _cancel_requested(self, reason: str) -> Coroutine[Any, Any, None]:
        """A cancellation from the Temporal UI (or ``temporal workflow cancel``): taken as a withdrawal by staff
        when a withdrawal would be (the subject is told, the ledger records it, the request closes as withdrawn),
        else refused, with the reason in the details, the ledger and the operator's notice."""
        try:
            self._reject_if_closed()
            if self._outcome is not None:  # the closing is decided (e.g. unverified): not turned into a withdrawal
                raise RequestRejected(f"{self._request.request_id} is already being closed ({self._outcome.value})")
            self._reject_if_busy("withdrawn")
        except RequestRejected as err:
            self._cancellation_refused = str(err.message)
        else:
            self._cancelled_by_staff = True
            self._withdrawal = Withdrawal(requested_by=CANCELLED_BY, reason=reason)
        self._update_details()
        return self._record_cancellation(reason)

    async def _record_cancellation(self, reason: str) -> None:
        refused = self._cancellation_refused
        if refused:
            await self._audit("cancellation_refused", actor=CANCELLED_BY, details={"why": refused[:300]},
                              note=reason)
        else:
            await self._audit("withdrawn", actor=CANCELLED_BY, details={"via": "cancellation"}, note=reason)
        await self._notify_operator(NoticeTemplate.OPERATOR_CANCELLATION, refused=refused)

    # --- the deadline watcher -------------------------------------------------------------------

    async def _watch_deadline(self) -> None:
        """Operator reminders at D-7 and D-2, then overdue and escalation, until the request closes.

        Re-plans whenever the deadline moves (extension, clock started after identity).
        """
        policy = self._request.policy
        reminded: set[tuple[int, str]] = set()
        last_escalation: datetime | None = None
        while self._stage != Stage.CLOSED:
            if self._clock_suspended:
                await workflow.wait_condition(lambda: not self._clock_suspended or self._stage == Stage.CLOSED)
                continue
            version, deadline, now = self._deadline_version, self._deadline, workflow.now()
            next_at: datetime
            if now < deadline.overdue_at:
                due_reminders = [r for r in deadline.reminders if (version, r.label) not in reminded]
                passed = [r for r in due_reminders if r.at <= now]
                if passed:
                    # Catch up with the latest reminder only (e.g. a request entered late).
                    for reminder in passed:
                        reminded.add((version, reminder.label))
                    latest = passed[-1]
                    await self._notify_operator(
                        NoticeTemplate.OPERATOR_REMINDER,
                        label=latest.label,
                        days_left=str(days_left(deadline, workflow.now())),
                    )
                    await self._audit("deadline_reminder", details={"label": latest.label})
                    continue
                upcoming = [r.at for r in due_reminders if r.at > now]
                next_at = min([*upcoming, deadline.overdue_at])
            elif not self._overdue:
                self._overdue = True
                workflow.upsert_search_attributes([sa.DSR_OVERDUE.value_set(True)])
                self._update_details()
                await self._audit("overdue", details={"deadline": deadline.due.isoformat()})
                await self._notify_operator(NoticeTemplate.OPERATOR_ESCALATION)
                last_escalation = workflow.now()
                continue
            else:
                assert last_escalation is not None
                next_at = last_escalation + timedelta(days=policy.escalation_repeat_days)
                if next_at <= now:
                    await self._notify_operator(NoticeTemplate.OPERATOR_ESCALATION)
                    await self._audit("escalated")
                    last_escalation = workflow.now()
                    continue
            await self._wait(
                functools.partial(self._closed_or_deadline_moved, version),
                next_at - now,
                "deadline watch",
            )

    # --- updates and queries --------------------------------------------------------------------

    @workflow.update
    async def confirm_identity(self, confirmation: IdentityConfirmation) -> UpdateResult:
        # What was asked is provided (the link followed, or the document the operator now accepts): the time
        # left resumes from now, before anything else can read the deadline.
        await self._resume_clock()
        self._identity_confirmed = True
        await self._audit(
            "identity_confirmed",
            actor=confirmation.confirmed_by,
            details={"method": confirmation.method.value, "proof": confirmation.proof.value},
            note=confirmation.note,  # what was checked: the operator's words, sealed
        )
        # The caller is told the stage the confirmation led to (processing, closed...), not the one it ended.
        await workflow.wait_condition(lambda: self._stage not in (Stage.RECEIVED, Stage.AWAITING_IDENTITY))
        return self._result()

    @confirm_identity.validator
    def _validate_confirm_identity(self, confirmation: IdentityConfirmation) -> None:
        # Validators do not run on replay: a stricter check here changes no saved history.
        self._reject_if_closed()
        if self._identity_confirmed:
            raise RequestRejected(f"identity of {self._request.request_id} is already confirmed")
        if self._ending():
            raise RequestRejected(f"{self._request.request_id} is being closed")
        if postmortem.is_post_mortem(self):
            raise RequestRejected(f"{self._request.request_id} is about a deceased person: confirm the sender's "
                                  "quality instead (dsr confirm-quality ID --quality heir|executor|designated)")
        # The policy frozen into the request decides which proofs count: a document request is never confirmed
        # by a link or a code (none was sent), an erasure or rectification never by a code.
        refused = confirmation_refused(self._request.policy.identity, self._request.kind, confirmation)
        if refused is not None:
            raise IdentityNotAllowed(f"{self._request.request_id} cannot be confirmed this way: {refused}")

    @workflow.update
    async def confirm_quality(self, confirmation: QualityConfirmation) -> UpdateResult:
        """An operator reviewed the sender's document (the death, and their quality as heir, executor or the person
        designated in the directives): the request runs on the deceased person's data (workflows/postmortem.py)."""
        await self._resume_clock()
        self._quality = Quality(confirmation.quality)
        self._identity_confirmed = True
        await self._audit("quality_confirmed", actor=confirmation.confirmed_by,
                          details={"quality": self._quality.value}, note=confirmation.note)
        await workflow.wait_condition(lambda: self._stage not in (Stage.RECEIVED, Stage.AWAITING_IDENTITY))
        return self._result()

    @confirm_quality.validator
    def _validate_confirm_quality(self, confirmation: QualityConfirmation) -> None:
        self._reject_if_closed()
        if self._ending():
            raise RequestRejected(f"{self._request.request_id} is being closed")
        refused = postmortem.quality_refused(self, confirmation.quality)
        if refused is not None:
            raise RequestRejected(refused)

    @workflow.signal
    async def code_locked(self, locked: CodeLocked) -> None:
        """The intake closed this request's code after too many wrong answers (and recorded it in the ledger):
        the operator is told, once per page (the intake signals only the answer that reached the cap)."""
        if locked.page in self._codes_locked:
            return
        self._codes_locked.add(locked.page)
        await self._notify_operator(NoticeTemplate.OPERATOR_CODE_LOCKED, page=locked.page, wrong=str(locked.wrong))

    @workflow.update
    async def resend_identity_email(self, resend: IdentityResend) -> UpdateResult:
        """The subject, on their status page, asked for the identity email again (lost, or its link expired): the
        reminder goes out with a fresh link; the page's rate limits bound how often."""
        await self._audit("identity_email_resent", actor="subject", details={"via": resend.via[:40]})
        await self._notify_subject(NoticeTemplate.IDENTITY_REMINDER, identity=self._request.policy.identity.value)
        return self._result()

    @resend_identity_email.validator
    def _validate_resend_identity_email(self, resend: IdentityResend) -> None:
        self._reject_if_closed()
        if self._identity_confirmed or self._stage != Stage.AWAITING_IDENTITY or self._ending():
            raise RequestRejected(f"{self._request.request_id} is not waiting for its identity to be confirmed")
        if self._request.policy.identity != IdentityMethod.EMAIL:
            raise RequestRejected(f"the identity of {self._request.request_id} is checked on a document: "
                                  "there is no email to send again")

    @workflow.update
    async def attach_duplicate(self, duplicate: DuplicateAttached) -> UpdateResult:
        """A second submission of the same request: recorded and acknowledged, never a second workflow."""
        await self._audit("duplicate_attached", actor="subject", details=duplicate_details(duplicate),
                          note=message_note(duplicate.in_reply_to))
        if duplicate.documents > 0:
            # Files that came with it (the form's documents) are filed under this request: deleted with its others.
            self._correspondence_files = True
            self._letters.append(f"{duplicate.received_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC, "
                                 f"{duplicate.documents} file(s) sent with the form")
            self._update_details()
            if not self._identity_confirmed:
                await self._resume_clock()  # what was asked came: the suspension ends on receipt
            await self._notify_operator(NoticeTemplate.OPERATOR_CORRESPONDENCE,
                                        attachments=str(duplicate.documents), source="form")
        context = self._notice_context()
        if name := self._greeting_name():
            context["subject_name"] = name
        await self._send(Notice(
            request_id=self._request.request_id,
            template=NoticeTemplate.DUPLICATE,
            to=self._request.subject.email,
            language=self._request.language,
            context=context,
            in_reply_to=duplicate.in_reply_to or self._request.in_reply_to,
        ))
        return self._result()

    @attach_duplicate.validator
    def _validate_attach_duplicate(self, duplicate: DuplicateAttached) -> None:
        self._reject_if_closed()
        if self._ending():
            raise RequestRejected(f"{self._request.request_id} is being closed")

    @workflow.update
    async def record_correspondence(self, letter: Correspondence) -> UpdateResult:
        """The subject wrote again about this request (a reply to one of our emails), perhaps with an ID copy
        the mailbox stored under the request: recorded, and the operator told to read it.

        Applied once per message (``message_key``): a mailbox retrying after a crash may send it again.
        """
        if letter.message_key in self._correspondence:
            return self._result()
        self._correspondence.add(letter.message_key)  # before any await: a concurrent copy sees it
        if letter.message_id:
            self._thread_id = letter.message_id
        if letter.attachments > 0:
            self._correspondence_files = True
        details = {"attachments": str(letter.attachments), **correspondence_details(letter)}
        extra = {"attachments": str(letter.attachments)}
        if letter.sender_check:  # only mailboxes that record it: older updates replay with the same inputs
            details["sender_check"] = extra["sender_check"] = letter.sender_check[:300]
        self._letters.append(
            f"{letter.received_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC, {letter.attachments} file(s) kept"
            + (f"; {letter.sender_check[:300]}" if letter.sender_check else "")
        )
        self._update_details()
        await self._audit("subject_wrote", actor="subject", details=details, note=message_note(letter.message_id))
        if letter.attachments > 0 and not self._identity_confirmed:
            # The subject sent what was asked: the suspension ends on receipt, not when staff review it.
            await self._resume_clock()
        await self._notify_operator(NoticeTemplate.OPERATOR_CORRESPONDENCE, **extra)
        return self._result()

    @record_correspondence.validator
    def _validate_record_correspondence(self, letter: Correspondence) -> None:
        if letter.message_key in self._correspondence:
            return  # a redelivery of a recorded message: accepted, and it changes nothing
        if not letter.message_key:
            raise RequestRejected("correspondence needs the key of its message")
        if letter.attachments < 0:
            raise RequestRejected("the attachment count cannot be negative")
        self._reject_if_closed()

    @workflow.update
    async def doubt(self, doubt: Doubt) -> UpdateResult:
        """Art. 12(6): an operator has a reasonable doubt about who made the request. The subject is told what
        to provide and why; under ``suspend_during_identity`` the period stands still until they provide it."""
        suspend = (self._request.policy.clock == ClockPolicy.SUSPEND_DURING_IDENTITY
                   and not self._clock_suspended)
        if suspend:
            self._clock_suspended = True
            self._suspended_since = workflow.now()
            self._deadline_version += 1  # the watcher stops alarms while suspended
        await self._audit("identity_doubt", actor=doubt.requested_by,
                          details={"clock_suspended": str(self._clock_suspended).lower()}, note=doubt.reason)
        self._side_mail.append(asyncio.create_task(self._notify_subject(
            NoticeTemplate.IDENTITY_DOUBT, reason=doubt.reason.strip(),
            suspended="yes" if self._clock_suspended else "")))
        self._update_details()
        return self._result()

    @doubt.validator
    def _validate_doubt(self, doubt: Doubt) -> None:
        self._reject_if_closed()
        if not doubt.reason.strip():
            raise RequestRejected("a doubt needs a reason: what the subject must provide, and why (Art. 12(6))")
        if self._identity_confirmed:
            raise RequestRejected(f"identity of {self._request.request_id} is already confirmed")
        if self._ending():
            raise RequestRejected(f"{self._request.request_id} is being closed")

    async def _resume_clock(self) -> None:
        """The subject provided what was asked: the days the period stood still are added to its end (the
        time left resumes; nothing restarts), and the subject is told the new due date."""
        if not (self._clock_suspended and self._suspended_since is not None):
            return
        policy = self._request.policy
        resumed = await workflow.execute_local_activity(
            deadlines_resumed,
            ClockResume(received_on=self._request.received_on, suspended_at=self._suspended_since,
                        resumed_at=workflow.now(), suspended_days_before=self._suspended_days,
                        country=policy.country, subdiv=policy.subdiv, timezone=policy.timezone),
            **DEADLINES,
        )
        previous = self._deadline.due
        self._suspended_days = resumed.suspended_days
        self._deadlines = resumed.deadlines
        self._clock_suspended, self._suspended_since = False, None
        self._move_deadline(self._deadlines.extended if self._extended else self._deadlines.normal)
        await self._audit("clock_resumed", deadline=self._deadline.due, details={
            "suspended_days": str(resumed.suspended_days), "previous_deadline": previous.isoformat()})
        self._side_mail.append(asyncio.create_task(self._notify_subject(
            NoticeTemplate.CLOCK_RESUMED, previous_deadline=previous.isoformat(),
            suspended_on=resumed.suspended_on.isoformat(), resumed_on=resumed.resumed_on.isoformat())))

    @workflow.update
    async def extend_deadline(self, extension: Extension) -> UpdateResult:
        previous = self._deadline.due
        self._extended = True
        self._extension_reason = extension.reason.strip()
        self._move_deadline(self._deadlines.extended)
        await self._audit(
            "extended",
            actor=extension.requested_by,
            deadline=self._deadline.due,
            extended=True,
            details={"previous_deadline": previous.isoformat(), "deadline": self._deadline.due.isoformat()},
            note=self._extension_reason,
        )
        # Art. 12(3): the subject is told of the extension and its reasons within the first month.
        await self._notify_subject(
            NoticeTemplate.EXTENSION, reason=self._extension_reason, previous_deadline=previous.isoformat()
        )
        return self._result()

    @extend_deadline.validator
    def _validate_extend_deadline(self, extension: Extension) -> None:
        self._reject_if_closed()
        if not extension.reason.strip():
            raise RequestRejected("an extension needs a reason: Art. 12(3) requires telling the subject why")
        if self._extended:
            raise RequestRejected(
                f"{self._request.request_id} was already extended to {self._deadline.due.isoformat()}; "
                "Art. 12(3) allows one extension only"
            )
        if self._clock_suspended:
            raise RequestRejected(
                f"the clock of {self._request.request_id} has not started yet (identity outstanding)"
            )
        if workflow.now() >= self._deadlines.normal.overdue_at:
            raise RequestRejected(
                f"the first month of {self._request.request_id} ended on "
                f"{self._deadlines.normal.due.isoformat()}; an extension must be notified within it"
            )

    @workflow.update
    async def refuse(self, refusal: Refusal) -> UpdateResult:
        self._refusal = Refusal(reason=refusal.reason.strip(), requested_by=refusal.requested_by,
                                ground=RefusalGround(refusal.ground))
        await self._audit("refused", actor=refusal.requested_by,
                          details={"reason_length": str(len(refusal.reason)), "ground": self._refusal.ground.value},
                          note=refusal.reason)
        await workflow.wait_condition(lambda: self._stage == Stage.CLOSED)
        return self._result()

    @refuse.validator
    def _validate_refuse(self, refusal: Refusal) -> None:
        self._reject_if_closed()
        if not refusal.reason.strip():
            raise RequestRejected("a refusal needs a reason: Art. 12(4) requires telling the subject why")
        try:
            ground = RefusalGround(refusal.ground)
        except ValueError:
            raise RequestRejected(f"unknown ground {refusal.ground!r}; grounds are "
                                  + ", ".join(g.value for g in RefusalGround)) from None
        kind = self._request.kind
        if ground == RefusalGround.OTHERS_RIGHTS and kind not in (RequestKind.ACCESS, RequestKind.PORTABILITY):
            raise RequestRejected("the rights of others (Art. 15(4), 20(4)) limit a copy: access or portability only")
        if ground == RefusalGround.ERASURE_EXCEPTION and kind != RequestKind.ERASURE:
            raise RequestRejected("the exceptions of Art. 17(3) apply to erasure requests only")
        if ground == RefusalGround.QUALITY and kind != RequestKind.POST_MORTEM:
            raise RequestRejected("the sender's quality (art. 85 loi 78-17) is a ground for post_mortem requests only")
        self._reject_if_busy("refused")

    @workflow.update
    async def withdraw(self, withdrawal: Withdrawal) -> UpdateResult:
        self._withdrawal = withdrawal
        await self._audit("withdrawn", actor=withdrawal.requested_by, note=withdrawal.reason)
        await workflow.wait_condition(lambda: self._stage == Stage.CLOSED)
        return self._result()

    @withdraw.validator
    def _validate_withdraw(self, withdrawal: Withdrawal) -> None:
        self._reject_if_closed()
        self._reject_if_busy("withdrawn")

    @workflow.update
    async def retry(self, retry: Retry) -> UpdateResult:
        self._retry_requested = True
        self._retry_by = retry.requested_by  # the actor of the `retried` event the run records
        await workflow.wait_condition(lambda: self._stage != Stage.NEEDS_ATTENTION)
        return self._result()

    @retry.validator
    def _validate_retry(self, retry: Retry) -> None:
        self._reject_if_closed()
        if self._awaiting_changes:
            raise RequestRejected(f"{self._request.request_id} waits for the corrections to make: "
                                  "give them with rectify (dsr rectify ID --change field=value)")
        if self._awaiting_decision:
            raise RequestRejected(f"{self._request.request_id} waits for a decision on the objection: "
                                  "dsr decide ID --uphold, or --reject --grounds")
        if self._stage != Stage.NEEDS_ATTENTION:
            raise RequestRejected(
                f"{self._request.request_id} is {self._stage.value}, not needs_attention: nothing to retry"
            )

    @workflow.update
    async def rectify(self, rectification: Rectification) -> UpdateResult:
        self._rectification = Rectification(changes=dict(rectification.changes),
                                             requested_by=rectification.requested_by)
        await workflow.wait_condition(lambda: not self._awaiting_changes)
        return self._result()

    @rectify.validator
    def _validate_rectify(self, rectification: Rectification) -> None:
        self._reject_if_closed()
        if not self._awaiting_changes:
            raise RequestRejected(f"{self._request.request_id} is not waiting for corrections")
        if not rectification.changes:
            raise RequestRejected("give at least one correction (field=value)")
        unknown = sorted(set(rectification.changes) - CANONICAL_FIELDS)
        if unknown:
            fields = ", ".join(sorted(CANONICAL_FIELDS))
            raise RequestRejected(f"cannot rectify {', '.join(unknown)}; fields are {fields}")
        if any(not str(value).strip() for value in rectification.changes.values()):
            raise RequestRejected("a new value cannot be empty (an erasure of one field is an erasure request)")

    @workflow.update
    async def decide(self, decision: ObjectionDecision) -> UpdateResult:
        """An operator's decision on an objection to processing other than marketing (Art. 21(1))."""
        self._decision = ObjectionDecision(uphold=decision.uphold, grounds=decision.grounds.strip(),
                                           decided_by=decision.decided_by)
        await workflow.wait_condition(lambda: self._stage != Stage.NEEDS_ATTENTION)
        return self._result()

    @decide.validator
    def _validate_decide(self, decision: ObjectionDecision) -> None:
        self._reject_if_closed()
        if self._ending():
            raise RequestRejected(f"{self._request.request_id} is being closed")
        refused = objection.decision_refused(self, decision.uphold, decision.grounds)
        if refused is not None:
            raise RequestRejected(refused)

    @workflow.query
    def subject_text(self) -> str:
        """What the subject wrote with the request (personal data: for the operator, through the codec)."""
        return self._request.details

    @workflow.query
    def status(self) -> RequestStatus:
        return RequestStatus(
            request_id=self._request.request_id,
            kind=self._request.kind,
            stage=self._stage,
            outcome=self._outcome if self._stage == Stage.CLOSED else None,
            channel=self._request.channel,
            received=self._request.received_on,
            deadline=self._deadline.due,
            extended=self._extended,
            overdue=self._overdue,
            identity=self._request.policy.identity,
            identity_confirmed=self._identity_confirmed,
            language=self._request.language,
            connectors=list(self._progress.values()),
            extension_reason=self._extension_reason,
            refusal_reason=self._refusal.reason if self._refusal else "",
            clock_suspended=self._clock_suspended,
            link_expires_at=self._link_expires_at,
            reply_held=self._reply_held,
            residuals=list(self._residuals),
            waiting_for=self._turn_holder if self._awaiting_turn else "",
            mail_pending=list(self._mail_pending),
            awaiting_changes=self._awaiting_changes,
            correspondence=list(self._letters),
            degraded=[p.connector for p in self._progress.values() if p.degraded],
            scope=self._request.scope,
            awaiting_decision=self._awaiting_decision,
            decision=("upheld" if self._decision.uphold else "rejected") if self._decision else "",
            purposes=[purpose.key for purpose in self._request.purposes],
            aftercare=self._aftercare,
            cancellation_refused=self._cancellation_refused,
            quality=self._quality.value if self._quality else "",
            directives=self._directives.instruction if self._directives else "",
            ground=self._request.ground,
            restriction=self._restriction,
        )

    # --- helpers ----------------------------------------------------------------------------------

    def _ending(self) -> bool:
        return self._refusal is not None or self._withdrawal is not None

    def _reject_if_closed(self) -> None:
        if self._stage == Stage.CLOSED:
            outcome = self._outcome.value if self._outcome else "closed"
            raise RequestRejected(f"{self._request.request_id} is closed ({outcome})")

    def _reject_if_busy(self, verb: str) -> None:
        if self._ending():
            raise RequestRejected(f"{self._request.request_id} is already being closed")
        # While connectors run, stopping would leave systems half-changed; wait for the outcome. Once the
        # systems have been changed (a held reply), the request can only be answered, not refused. Waiting
        # for the subject's turn, nothing has changed yet.
        if (self._stage in (Stage.PROCESSING, Stage.REPLYING) and not self._awaiting_turn) or self._reply_held:
            raise RequestRejected(
                f"{self._request.request_id} is {self._stage.value}; it can be {verb} only before processing "
                "starts or while it needs attention"
            )

    def _result(self) -> UpdateResult:
        return UpdateResult(stage=self._stage, deadline=self._deadline.due, extended=self._extended)

    def _closed_or_deadline_moved(self, version: int) -> bool:
        """The deadline watch's wake-up: the request closed, or its deadline moved since ``version``."""
        return self._stage == Stage.CLOSED or self._deadline_version != version

    async def _wait(self, condition: Callable[[], bool], timeout: timedelta, summary: str) -> bool:
        """Wait for ``condition`` at most ``timeout`` (a durable timer); True if it became true."""
        if timeout <= timedelta(0):
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=timeout, timeout_summary=summary)
        except TimeoutError:
            return False
        return True

    def _set_stage(self, stage: Stage) -> None:
        self._stage = stage
        updates = [sa.DSR_STAGE.value_set(stage.value)]
        if stage == Stage.CLOSED and self._outcome is not None:
            updates.append(sa.DSR_OUTCOME.value_set(self._outcome.value))
        workflow.upsert_search_attributes(updates)
        self._update_details()

    def _move_deadline(self, deadline: Deadline) -> None:
        self._deadline = deadline
        self._deadline_version += 1
        workflow.upsert_search_attributes(
            [
                sa.DSR_DEADLINE.value_set(deadline_as_search_value(deadline.due)),
                sa.DSR_EXTENDED.value_set(self._extended),
            ]
        )
        self._update_details()

    def _publish(self) -> None:
        """Search attributes for the dashboard: those the run does not already have (the intake sets them all at
        start; a run started otherwise, or with other values, gets them here). Upserting what the run already has
        costs a history event and a write to the server's visibility store, for nothing."""
        updates = sa.changes(sa.dashboard(
            self._stage, self._request.channel, self._deadline.due, kind=self._request.kind,
            extended=self._extended, overdue=self._overdue), workflow.info().typed_search_attributes)
        if updates:
            workflow.upsert_search_attributes(updates)
        self._update_details()

    def _update_details(self) -> None:
        """Markdown for the UI's "current details" (encrypted by the codec, decoded for staff)."""
        flags = []
        if self._extended:
            flags.append("extended")
        if self._overdue:
            flags.append("**OVERDUE**")
        if self._clock_suspended:
            flags.append("clock suspended until identity is confirmed")
        lines = [
            f"**{self._request.kind.value}**" + (f" ({self._request.scope})" if self._request.scope else "")
            + f" · stage `{self._stage.value}`"
            + (f" · outcome `{self._outcome.value}`" if self._stage == Stage.CLOSED and self._outcome else ""),
            f"received {self._request.received_on.isoformat()} · due **{self._deadline.due.isoformat()}**"
            + (f" ({', '.join(flags)})" if flags else ""),
            f"identity: {self._request.policy.identity.value}"
            + (" ✓" if self._identity_confirmed else " (waiting)"),
        ]
        if postmortem.is_post_mortem(self):
            lines.append("about a deceased person (art. 85): sender's quality "
                         + (f"**{self._quality.value}** ✓" if self._quality else
                            "(waiting: `dsr confirm-quality ID --quality heir|executor|designated` or `dsr refuse "
                            "ID --ground quality`)")
                         + (f" · directives: {self._directives.instruction}" if self._directives
                            and self._directives.found else " · no directives"))
        if self._progress:
            rows: list[list[str]] = []
            for p in self._progress.values():
                note = p.error or (", ".join(f"{k} {v}" for k, v in p.outcome.counts.items()) if p.outcome else "")
                if p.failing_since is not None and p.state == ConnectorState.RUNNING:
                    note = f"failing since {p.failing_since:%Y-%m-%d %H:%M} UTC, retried: {note}"
                if p.resumed:
                    note = f"{note} (resumed {p.resumed}× after progress)".strip()
                state = "**degraded**" if p.degraded else p.state.value
                if p.connector in self._outside and p.state == ConnectorState.RUNNING:
                    state = "waiting for an answer"  # a person answers (dsr tasks list has the date)
                rows.append([p.connector, state, str(p.attempts), note])
            lines += ["", *details.table(["system", "state", "attempts", "note"], rows, right=[2])]
        if self._awaiting_turn:
            whom = f"**waiting for {self._turn_holder}** of the same person" if self._turn_holder else \
                "**waiting for its turn**"
            lines += ["", f"{whom}: one request at a time in the person's systems"]
        degraded = [p.connector for p in self._progress.values() if p.degraded]
        if degraded:
            lines += ["", f"**connector degraded** (failing for over "
                          f"{self._request.policy.connector_degraded_minutes} min, still retried; the operator was "
                          f"told): {', '.join(degraded)}"]
        if self._mail_pending:
            lines += ["", f"**mail not delivered yet** (retried until the SMTP server takes it): "
                          f"{', '.join(self._mail_pending)}"]
        if self._request.documents and not self._identity_confirmed:
            lines += ["", f"**{self._request.documents} document(s) sent with the form** to review "
                          "(`dsr attachments list`), then `dsr confirm-quality ID` or `dsr refuse ID --ground quality`"]
        if self._letters:
            lines += ["", "**the subject wrote** (files: `dsr attachments list`; sender as our mail server "
                          "checked it):", *(f"- {line}" for line in self._letters)]
        if self._awaiting_decision:
            lines += ["", "**objection waiting for a decision**: `dsr decide ID --uphold` or "
                          "`--reject --grounds \"…\"` (Art. 21(1))"]
        if self._reply_held:
            lines += ["", f"**reply held** until an operator fixes the cause and retries: {self._reply_held}"]
        if self._residuals:
            lines += ["", "**residual data to clear by hand** (then `dsr clear-residuals`, in the aftercare):",
                      *(f"- {line}" for line in self._residuals)]
        if self._aftercare:
            lines += ["", f"answered: the download link and residual data are followed in `{self._aftercare}`"]
        if self._cancelled_by_staff:
            lines += ["", "**withdrawn by staff** (cancelled from the Temporal UI); the subject is told"]
        if self._cancellation_refused:
            lines += ["", f"**cancellation refused**: {self._cancellation_refused}"]
        workflow.set_current_details("\n".join(lines))

    async def _audit(self, event: str, *, actor: str = "engine", details: dict[str, str] | None = None,
                     stage: Stage | None = None, outcome: Outcome | None = None,
                     deadline: date | None = None, extended: bool | None = None, note: str = "") -> None:
        """Record an event and wait until the ledger holds it (with whatever was noted before it)."""
        self._note(event, actor=actor, details=details, stage=stage, outcome=outcome, deadline=deadline,
                   extended=extended, note=note)
        await self._ledger_written()

    def _note(self, event: str, *, actor: str = "engine", details: dict[str, str] | None = None,
              stage: Stage | None = None, outcome: Outcome | None = None,
              deadline: date | None = None, extended: bool | None = None, note: str = "") -> None:
        """Record an event without waiting for the ledger: the events noted meanwhile go in one activity (one
        transaction, in order) beside the request's next steps, instead of one activity each in its way. Every
        event is written before the run ends (``_ledger_written``).

        Not by local activities of their own in the middle of a request: measured with 12 requests at once
        (bench/throughput.py), batches written in the workflow task that noted them cost the engine a tenth of its
        throughput, for a third fewer events. (The local activities that run anyway carry them: the turn's ask and
        give-back; and the last batches, once the run is ending.)"""
        self._events.append(AuditEvent(
            request_id=self._request.request_id, event=event, actor=actor, details=details or {}, stage=stage,
            outcome=outcome, deadline=deadline, extended=extended, note=note,
        ))
        self._events_noted += 1
        self._ensure_ledger_writer()

    def _ensure_ledger_writer(self) -> None:
        if self._ledger_writer is None or self._ledger_writer.done():
            self._ledger_writer = asyncio.create_task(self._write_events())

    async def _write_events(self) -> None:
        """One batch at a time, in the order noted, until none is left. A batch waits for the workflow task's other
        coroutines to settle first, so that it holds every event the task notes (a connector's ``connector_done``
        and the ``replying`` that follows it go together: one write, not two)."""
        while self._events or self._events_handed_back:
            # True once nothing else in this task can run, unless the batch may wait for more (_batch_may_wait),
            # and once the batch before it is written (the turn's ask may be writing one: _take_turn).
            await workflow.wait_condition(lambda: not self._batch_in_flight and (
                bool(self._events_handed_back) or not self._batch_may_wait()))
            if self._batch_in_flight:
                continue  # the turn's ask or give-back took the events in the same pass: its batch goes first
            # A batch under its own key before the events noted since: one a failed first try of the reply handed
            # back, or, only when events were noted after it, the one the reply's first try is still carrying (it may
            # take minutes; whichever writes it first writes it, the other finds it written).
            keyed = self._events_handed_back.pop(0) if self._events_handed_back else (
                self._carried if self._events else None)
            if keyed is not None:
                if keyed is self._carried:
                    self._carried = None
                self._batch_in_flight = True
                try:
                    await workflow.execute_activity_method(
                        LedgerActivities.record_event_batch, keyed,
                        **summarised(LEDGER, _batch_summary(keyed.events)))
                finally:
                    self._batch_in_flight = False
                self._events_written += len(keyed.events)
                continue
            batch, self._events = self._events, []
            if not batch:
                continue  # the turn's ask or the reply took them
            self._batch_in_flight = True
            try:
                if self._run_ending:
                    # The request is closed (its closing events went with the give-back, if any, else come here):
                    # a local activity, not an activity task and another workflow task of its own; also what is
                    # noted later (a deadline notice's events, an update's). Under a key of its own: its local tries
                    # and the activity that may follow them write it once.
                    # What the aftercare's start could not carry (a batch was on its way) waits for it: the ledger
                    # says ``aftercare_started`` once it is.
                    await workflow.wait_condition(lambda: not self._aftercare_starting)
                    self._ending_batches += 1
                    keyed = EventBatch(key=self._events_key(f"ending-{self._ending_batches}"), events=batch)
                    summary = _batch_summary(batch)
                    await _local_first(LedgerActivities.record_event_batch, keyed,
                                       local={**LEDGER_LOCAL, "summary": summary}, remote=summarised(LEDGER, summary))
                else:
                    await workflow.execute_activity_method(
                        LedgerActivities.record_events, batch,
                        **summarised(LEDGER, _batch_summary(batch)),
                    )
                self._events_written += len(batch)
            finally:
                self._batch_in_flight = False

    @staticmethod
    def _events_key(name: str) -> str:
        """The key of a batch the request gives its writer (``record_batch`` adds each event's place): ``name`` is
        unique in the run, so any activity, local or not, writing it writes it once."""
        info = workflow.info()
        return f"{info.workflow_id}/{info.run_id}/{name}/events"

    def _carry_noted(self) -> list[AuditEvent]:
        """The events noted and not written yet, for the activity about to run (the turn's ask or give-back, the
        reply) to write: one activity and one workflow task less than a batch of their own. None while a batch is on
        its way or waits to be written (they come after it)."""
        if self._batch_in_flight or self._events_handed_back or self._carried is not None or not self._events:
            return []
        events, self._events = self._events, []
        return events

    def _batch_may_wait(self) -> bool:
        """Whether the events noted so far may wait for the next ones: while connectors of the request's own
        systems (API, database: seconds to minutes) are working, none of them failing, the turn's and the
        connectors' events go to the ledger together, with the event that follows the fan-out (``replying``,
        ``needs_attention``), not in a batch each (the events keep their order; each one's time is when the batch
        is written, as before, a few seconds later). A system reached by a person (days) or a connector failing
        does not hold them back, nor does anyone waiting for the ledger. (The closing events need no wait: ``closed``
        and ``aftercare_started`` are noted in one stretch of the run's code.) Measured with bench/throughput.py: a
        light access request wrote six batches, each an activity and a workflow task more; now three."""
        if self._ledger_awaited:
            return False
        if self._reply_awaits_ack:
            # The reply lets the acknowledgement on its way go first (a second or so): the events wait for the reply's
            # first try, which writes them; not behind an acknowledgement failing (an SMTP outage: up to ACK_LEAD).
            return NoticeTemplate.ACKNOWLEDGEMENT.value not in self._mail_pending
        if not self._fanning_out or any(e.event not in BATCHED_WITH_FAN_OUT for e in self._events):
            return False
        return all(p.connector not in self._outside and p.failing_since is None
                   for p in self._progress.values() if p.state == ConnectorState.RUNNING)

    async def _ledger_written(self) -> None:
        """Every event noted so far is in the ledger."""
        noted = self._events_noted
        self._ledger_awaited += 1
        try:
            await workflow.wait_condition(lambda: self._events_written >= noted)
        finally:
            self._ledger_awaited -= 1

    def _notice_context(self, **extra: str) -> dict[str, str]:
        context = {
            "reference": self._request.request_id,
            "kind": self._request.kind.value,
            "received": self._request.received_on.isoformat(),
            "deadline": self._deadline.due.isoformat(),
            "stage": self._stage.value,
        }
        context.update(extra)
        return context

    async def _after_acknowledgement(self) -> None:
        """Let the acknowledgement reach the subject before a later email, waiting at most ACK_LEAD."""
        ack = self._acknowledgement
        if ack is None or ack.done():
            return
        await self._wait(ack.done, ACK_LEAD, "acknowledgement first")

    def _greeting_name(self) -> str:
        """The name to greet the subject by: the one given with the request, once identity is confirmed."""
        name = self._request.subject.name
        if not name or self._identity_confirmed:
            return name
        # Before that, anyone could have typed that name beside someone else's address.
        return ""

    async def _notify_subject(self, template: NoticeTemplate, **extra: str) -> None:
        if template != NoticeTemplate.ACKNOWLEDGEMENT:
            await self._after_acknowledgement()
        context = self._notice_context(**extra)
        if name := self._greeting_name():
            context["subject_name"] = name
        await self._send(
            Notice(
                request_id=self._request.request_id,
                template=template,
                to=self._request.subject.email,
                language=self._request.language,
                context=context,
                in_reply_to=self._thread(),
            )
        )

    def _acknowledgement_context(self) -> dict[str, str]:
        """What makes the acknowledgement true: how identity will be checked, and whether the month is already
        over (a letter recorded late with ``--received``), in which case no date in the future is promised."""
        identity = self._identity_word()
        if objection.is_marketing_objection(self):
            identity = "none"  # no check is asked: see _verify_identity
        elif consent.is_consent_withdrawal(self):
            identity = "consent"  # none either, and said with its own reason (Art. 7(3))
        context = {"identity": identity}
        if self._request.documents:  # post_mortem: the documents came with the form, nothing more is asked
            context["documents"] = str(self._request.documents)
        if workflow.now() >= self._deadline.overdue_at:
            context["late"] = "yes"
        return context

    def _identity_word(self) -> str:
        """What the subject's notices say is checked: the policy's method, or, for a post_mortem request, the
        sender's quality ("quality": a document proving the death and their quality, reviewed by staff)."""
        if postmortem.is_post_mortem(self):
            return "quality"
        return IdentityMethod(self._request.policy.identity).value

    def _thread(self) -> str | None:
        """The Message-ID our next email to the subject answers: their latest message, else their first."""
        return self._thread_id or self._request.in_reply_to

    async def _notify_operator(self, template: NoticeTemplate, **extra: str) -> None:
        await self._send(
            Notice(
                request_id=self._request.request_id,
                template=template,
                to=self._request.policy.operator_email,
                language=self._request.language,
                context=self._notice_context(**extra),
            )
        )

    async def _send(self, notice: Notice) -> None:
        try:
            await self._send_until_taken(notice)
        except ActivityError:
            # The mail server refused the address for good; the request goes on and the ledger says so.
            await self._audit("notice_failed", details={"template": notice.template.value})

    async def _send_until_taken(self, notice: Notice) -> None:
        """One try; if the mail server did not take it (down, 4xx, a lost worker), the notice shows as pending
        in the status, the UI and ``DsrMailPending`` while it is retried under the same key."""
        self._mail_count += 1
        notice = dataclasses.replace(notice, key=f"mail-{self._mail_count}")
        summary = f"notice: {notice.template.value}"
        try:
            await workflow.execute_activity_method(NoticeActivities.send_notice, notice,
                                                   **summarised(NOTICE_FIRST_TRY, summary))
            return
        except ActivityError as err:
            if err.retry_state == RetryState.NON_RETRYABLE_FAILURE:
                raise  # refused for good: recorded as failed, not pending
        template = notice.template.value
        self._mail_pending.append(template)
        self._mail_changed()
        await self._audit("notice_deferred", details={"template": template})
        try:
            await workflow.execute_activity_method(NoticeActivities.send_notice, notice,
                                                   **summarised(NOTICE, summary + " (retried)"))
        except ActivityError:
            self._mail_done(template)  # refused for good (recorded by the caller)
            raise
        self._mail_done(template)

    def _mail_done(self, template: str) -> None:
        # Not in a ``finally``: a workflow evicted from the worker's cache must not touch its state.
        self._mail_pending.remove(template)
        self._mail_changed()

    def _mail_changed(self) -> None:
        """The search attribute counts the notices pending."""
        workflow.upsert_search_attributes([sa.DSR_MAIL_PENDING.value_set(len(self._mail_pending))])
        self._update_details()


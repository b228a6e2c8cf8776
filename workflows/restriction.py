"""Restriction of processing (Art. 18): the part that outlives the answer, as ``RestrictionInForce``.

A restriction request runs like the other kinds up to its reply: identity (as for a rectification: the signed
link), the subject's turn, a fan-out where each system marks the person restricted (or leaves a residual line for
the operator), the reply within the month, Art. 19 notices to recipients. Its workflow then ends, answered, and
starts this child workflow (id ``restriction-<reference>``, ``ParentClosePolicy.ABANDON``) which holds the
restriction in force until it is lifted:

- by an operator: the ``lift`` update (``dsr lift REF --reason``), the reason sealed in the ledger;
- at the end of its ground: the ``ground_ended`` signal, sent when a rectification of the same person is
  answered (ground a: the accuracy is verified) or their objection decided (ground d); see
  ``activities/restrictions.py``. Grounds b and c end only by an operator's decision.

Art. 18(3): the subject is told **before** the lift, in their language, with its day; a durable timer of at least
``notice_days`` days then runs before the marks are removed, in the person's turn (``dsr.store.turns``: an access
request of theirs exporting finishes first), system by system (``lift`` connector tasks); a system
whose mark cannot be removed waits for the operator's ``retry``. Once the marks are off, the Art. 19 recipients
the reply named and the processors and manual systems that did not answer "no data" are told of the lift, each
once, in its own language (``tell_restriction_lifted``, ledger ``restriction_lift_told``). Systems restricted by a
person and not told by letter, and whoever could not be told, are listed to the operator at the lift. A
cancellation from the UI is refused: lifting without telling the subject is what 18(3) forbids.

Deterministic workflow code; the request workflow's side of it (``hold``, ``end_grounds``) is in
``workflows/children.py``.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import (
        ConnectorTask,
        GroundEnd,
        GroundEnded,
        Lift,
        LiftTelling,
        LocalMoment,
        Notice,
        NoticeTemplate,
        QueueAsk,
        QueueRelease,
        RecordAction,
        RequestKind,
        RestrictionGround,
        RestrictionInput,
        RestrictionStatus,
        Retry,
        SubjectInformed,
        SubjectTurn,
        TurnAsk,
        TurnRelease,
        subject_queue_id,
        told_words,
    )
    from workflows.contract import (
        CHECK,
        CONNECTOR,
        DEADLINES,
        GROUND_ENDED_SIGNAL,
        HOLDER_CHECK_EVERY,
        LEDGER,
        NOTICE,
        REQUEST_REJECTED,
        SUBJECT_TURN_SIGNAL,
        TURN_ASK,
        ConnectorActivities,
        RestrictionActivities,
        SubjectActivities,
        local_instant,
        summarised,
    )
from workflows.follow_up import FollowUp

IN_FORCE = "in force"
LIFT_SCHEDULED = "lift scheduled"
LIFTED = "lifted"

LIFT_HOUR = 9
"""The lift happens at 09:00 in the controller's zone, a working hour, on the day the notice names."""

_ENDED_BY = {RestrictionGround.ACCURACY.value: "rectification", RestrictionGround.OBJECTION.value: "objection"}
"""Grounds that end with another request of the person, and the word the lift notice uses for it."""
_GROUND_LETTER = {RestrictionGround.ACCURACY.value: RestrictionGround.ACCURACY.value,
                  RestrictionGround.OBJECTION.value: RestrictionGround.OBJECTION.value}
"""The ground an ending request names (``GroundEnded.ground``) for each ground that ends with one."""


def _rejected(message: str) -> ApplicationError:
    return ApplicationError(message, type=REQUEST_REJECTED, non_retryable=True)


@workflow.defn(name="RestrictionInForce")
class RestrictionInForce(FollowUp):
    @workflow.init
    def __init__(self, held: RestrictionInput) -> None:
        self._follow_up(request_id=held.request_id, operator_email=held.operator_email, language=held.language,
                        notice_context=held.notice_context)
        self._held = held
        self._state = IN_FORCE
        self._lift: Lift | None = None
        self._ended: GroundEnded | None = None
        self._lift_at: datetime | None = None
        self._lift_on: date | None = None  # the controller's local day of _lift_at, as the notice named it
        self._lifted_by = ""
        self._scheduled_recorded = False  # the lift is in the ledger and the subject told: the update answers then
        self._failed: list[str] = []
        self._retry: Retry | None = None
        self._retrying = False  # a retried round runs: the update answers when it ends
        self._retried_rounds = 0
        self._told: list[str] = []  # told of the lift (Art. 19): recipients' and systems' names
        self._turn_round = 0  # the person's turn (dsr.store.turns), asked before the marks come off
        self._turn_asked = False
        self._turn_granted = False
        self._waiting_for = ""  # the request holding the turn while the lift waits for it
        self._strays: list[asyncio.Task[None]] = []  # turns granted after this workflow gave them back
        self._untold: list[str] = []
        self._subject_told: bool | None = None  # the lift's notice to the subject (Art. 18(3))
        self._informed: SubjectInformed | None = None  # staff told them by other means, the notice refused

    @workflow.run
    async def run(self, held: RestrictionInput) -> RestrictionStatus:
        self._update_details()
        await self._run_follow_up(self._work, workflow_name="restriction", refusal=(
            "cancellation refused: a restriction is lifted only after the subject is told (Art. 18(3)); "
            "use dsr lift REF --reason"))
        while strays := [stray for stray in self._strays if not stray.done()]:
            await asyncio.gather(*strays)  # turns granted after their release, given back
        return self.status()

    async def _work(self) -> None:
        self._note("restriction_in_force", details={
            "ground": self._held.ground, "marked": ",".join(self._held.marked),
            "by_hand": ",".join(self._held.by_hand)})
        await self._ended_while_answered()
        await workflow.wait_condition(lambda: self._lift is not None or self._ended is not None)
        await self._schedule_lift()
        if not self._subject_told:
            # Art. 18(3): no lift before the subject knows. Staff tell them by other means and record it.
            await workflow.wait_condition(lambda: self._informed is not None)
            await self._informed_otherwise()
        assert self._lift_at is not None
        # Art. 18(3): the subject was told; the marks stay until the day the notice named.
        await workflow.sleep(max(self._lift_at - workflow.now(), timedelta(0)),
                             summary="restriction: lift after the notice (Art. 18(3))")
        await self._unmark()
        self._state = LIFTED
        self._update_details()
        await self._audit("restriction_lifted", details={"connectors": ",".join(self._held.marked),
                                                         "by_hand": ",".join(self._held.by_hand)})
        told, untold = await self._tell_lift()
        lines = [f"- {system}: restriction - lift it by hand"
                 for system in self._held.by_hand if system not in told]
        lines += [f"- {name}: could not be told that the restriction is lifted - tell them by hand (Art. 19)"
                  for name in untold]
        if lines:
            await self._notify_operator(NoticeTemplate.OPERATOR_RESIDUAL, residuals="\n".join(lines))

    async def _ended_while_answered(self) -> None:
        """A rectification answered, or an objection decided, while this restriction was still being answered ended
        its ground too: no workflow was there to signal, the ledger has it (``restriction_ground_end``)."""
        expected = _GROUND_LETTER.get(self._held.ground)
        if expected is None or self._ended is not None or self._lift is not None:
            return
        ended = await workflow.execute_activity_method(
            RestrictionActivities.ground_ended_already, GroundEnd(request_id=self._held.request_id, ground=expected),
            **summarised(LEDGER, "restrictions: ground ended already?"))
        if ended is not None and self._ended is None and self._lift is None:
            self._ended = ended

    async def _schedule_lift(self) -> None:
        lift, ended = self._lift, self._ended
        if lift is not None:
            actor, why, reason, by_request = lift.requested_by, "operator", lift.reason, ""
        else:
            assert ended is not None
            actor, why, reason, by_request = "engine", _ENDED_BY[self._held.ground], "", ended.by_request
        day, self._lift_at = await self._lift_moment()
        self._lift_on = day
        self._state = LIFT_SCHEDULED
        self._lifted_by = actor if lift is not None else f"ground_ended:{by_request}"
        self._update_details()
        await self._audit("restriction_lift_scheduled", actor=actor, details={
            "why": why, "by_request": by_request, "lift_on": day.isoformat(), "reason_length": str(len(reason))},
            note=reason)
        self._subject_told = await self._notify_subject(NoticeTemplate.RESTRICTION_LIFT, lift_on=day.isoformat(),
                                                        lift_why=why, reason=reason)
        self._scheduled_recorded = True
        self._update_details()
        if not self._subject_told:
            # The mail server refused the notice for good: no one may claim the subject was told. The operator
            # tells them by other means (letter, telephone) before the lift; the day stays as the notice named it.
            await self._notify_operator(NoticeTemplate.OPERATOR_RESIDUAL, residuals=(
                f"- the subject could not be told by email that the restriction is lifted on {day.isoformat()}: "
                "tell them by other means (Art. 18(3)), then record it with "
                f"`dsr lift {self._held.request_id} --subject-told \"how\"`; the marks stay until then"))

    async def _lift_moment(self) -> tuple[date, datetime]:
        """The earliest lift a notice sent now allows: 09:00 local on the day after now + ``notice_days``, at least
        ``notice_days`` whole days away; the controller's day and its instant (UTC).

        The day is counted from now's UTC date (workflow code has no zone rules), and checked against the instant:
        where the UTC date is still the day before the controller's (Sydney before 11:00), 09:00 on that day could
        come less than ``notice_days`` after the notice, and a day is added."""
        notice = timedelta(days=max(1, self._held.notice_days))
        day = (workflow.now() + notice + timedelta(days=1)).date()
        at = await workflow.execute_local_activity(
            local_instant, LocalMoment(day=day, hour=LIFT_HOUR, timezone=self._held.timezone), **DEADLINES)
        if at - workflow.now() < notice:
            day += timedelta(days=1)
            at = await workflow.execute_local_activity(
                local_instant, LocalMoment(day=day, hour=LIFT_HOUR, timezone=self._held.timezone), **DEADLINES)
        return day, at

    async def _informed_otherwise(self) -> None:
        """The subject was told by other means: the lift keeps the day the notice named, and comes no sooner than
        the notice period after this record."""
        informed, first = self._informed, self._lift_at
        assert informed is not None and first is not None
        day, earliest = await self._lift_moment()
        if earliest > first:
            self._lift_at, self._lift_on = earliest, day
        self._subject_told = True
        self._update_details()
        # The local day, not the UTC date of 09:00 local (east of UTC+9, the day before).
        lift_on = self._lift_on or first.date()
        await self._audit("restriction_subject_informed", actor=informed.informed_by, details={
            "lift_on": lift_on.isoformat(), "how_length": str(len(informed.how))}, note=informed.how)

    async def _unmark(self) -> None:
        """Remove the marks this request set, in the person's turn (an export of theirs in progress finishes
        first); a system that refuses waits for the operator's ``retry``, the turn given back meanwhile."""
        pending = list(self._held.marked)
        while pending:
            await self._take_turn()
            # Each system's failure is caught (False): nothing raises between the turn's taking and its release.
            # (No ``finally``: a run the worker evicts from its cache must not give the turn back on its way out.)
            results = await asyncio.gather(*(self._unmark_one(name) for name in pending))
            await self._release_turn()
            self._failed = [name for name, ok in zip(pending, results, strict=True) if not ok]
            pending = list(self._failed)
            if not pending:
                self._state = LIFTED
            if self._retrying:  # the operator's ``retry`` answers now, with this round's result
                self._retrying = False
                self._retried_rounds += 1
            self._update_details()
            if not pending:
                return
            await self._audit("restriction_lift_failed", details={"connectors": ",".join(pending)})
            await self._notify_operator(NoticeTemplate.OPERATOR_ATTENTION, connector=", ".join(pending),
                                        error="the restriction mark could not be removed; retry with "
                                              f"dsr lift {self._held.request_id} --retry")
            await workflow.wait_condition(lambda: self._retry is not None)
            retry, self._retry = self._retry, None
            assert retry is not None
            self._retrying = True
            await self._audit("retried", actor=retry.requested_by)

    async def _take_turn(self) -> None:
        """Ask for the person's turn (``dsr.store.turns``), as ``restriction-<reference>``, and wait for it; the
        request holding it meanwhile shows in the status and the details. Hourly, whether the holder still runs."""
        if not self._held.subject_key:
            return
        self._turn_round += 1
        self._turn_asked, self._turn_granted, self._waiting_for = True, False, ""
        ask = QueueAsk(queue_id=subject_queue_id(self._held.subject_key), ask=TurnAsk(
            request_id=workflow.info().workflow_id, received_at=workflow.now(), round=self._turn_round))
        self.subject_turn((await workflow.execute_activity_method(
            SubjectActivities.ask_subject_turn, ask, **summarised(TURN_ASK, "subject's turn: ask (lift)"))).turn)
        while not self._turn_granted:
            try:
                await workflow.wait_condition(lambda: self._turn_granted, timeout=HOLDER_CHECK_EVERY,
                                              timeout_summary="holder check")
            except TimeoutError:
                self.subject_turn(await workflow.execute_activity_method(
                    SubjectActivities.check_subject_turn, ask,
                    **summarised(CHECK, f"is {self._waiting_for or 'the holder'} still running")))
        if self._waiting_for:
            self._note("turn_taken", details={"waited_for": self._waiting_for})
        self._waiting_for = ""
        self._update_details()

    async def _release_turn(self) -> None:
        if not self._turn_asked:
            return
        self._turn_asked = self._turn_granted = False
        await self._give_back(self._turn_round)

    async def _give_back(self, turn_round: int) -> None:
        await workflow.execute_activity_method(
            SubjectActivities.release_subject_turn,
            QueueRelease(queue_id=subject_queue_id(self._held.subject_key),
                         release=TurnRelease(request_id=workflow.info().workflow_id, round=turn_round)),
            **summarised(TURN_ASK, "subject's turn: give back (lift)"))

    @workflow.signal(name=SUBJECT_TURN_SIGNAL)
    def subject_turn(self, turn: SubjectTurn) -> None:
        """Who holds the person's turn: this workflow (granted) or the request it waits for (the answer of the ask
        or of the holder check, which may come after the signal granting it, or a signal once it changed)."""
        if turn.holder == workflow.info().workflow_id and self._turn_asked and turn.round > self._turn_round:
            # A later round than this run asked: an earlier run of the same workflow (reset) holds the place.
            self._turn_round = turn.round
        if turn.holder == workflow.info().workflow_id and (not self._turn_asked or turn.round != self._turn_round):
            # Granted a turn it no longer asks for (an ask's late retry, committed after its release): given back.
            self._strays.append(asyncio.create_task(self._give_back(turn.round)))
            return
        if not self._turn_asked or turn.round != self._turn_round or self._turn_granted:
            return
        if turn.holder == workflow.info().workflow_id:
            self._turn_granted = True
        else:
            self._waiting_for = turn.holder
            self._update_details()

    async def _tell_lift(self) -> tuple[list[str], list[str]]:
        """Art. 19, once the marks are off: the recipients the reply named, and the processors and manual systems
        that did not answer "no data", are told of the lift, each once, in its own language. Answers who was told
        and who could not be (the operator is told to do it by hand)."""
        held = self._held
        targets = [("recipient", name) for name in held.recipients] + [("system", name) for name in held.outside]
        if not targets:
            return [], []
        lifted_at = workflow.now()
        results = await asyncio.gather(*(self._tell_one(to, name, lifted_at) for to, name in targets))
        told = [name for (_, name), ok in zip(targets, results, strict=True) if ok]
        untold = [name for (_, name), ok in zip(targets, results, strict=True) if not ok]
        self._told, self._untold = told, untold
        self._update_details()
        await self._audit("restriction_lift_told", details={"told": str(len(told)), "not_told": str(len(untold))},
                          note=f"told: {', '.join(told) or '-'}; not told: {', '.join(untold) or '-'}")
        return told, untold

    async def _tell_one(self, to: str, name: str, lifted_at: datetime) -> bool:
        telling = LiftTelling(request_id=self._held.request_id, subject=self._held.subject, to=to, name=name,
                              lifted_at=lifted_at, timezone=self._held.timezone)
        try:
            await workflow.execute_activity_method(
                RestrictionActivities.tell_restriction_lifted, telling,
                **summarised(NOTICE, f"notice: restriction lifted, to a {to}"))
        except ActivityError:
            return False
        return True

    async def _unmark_one(self, name: str) -> bool:
        task = ConnectorTask(request_id=self._held.request_id, connector=name, kind=RequestKind.RESTRICTION,
                             subject=self._held.subject, lift=True)
        try:
            outcome = await workflow.execute_activity_method(
                ConnectorActivities.run_connector, task, **summarised(CONNECTOR, f"{name}: lift restriction"))
        except ActivityError:
            self._note("connector_failed", details={"connector": name, "lift": "true"})
            return False
        lifted = sum(1 for line in outcome.report if line.action == RecordAction.LIFTED)
        self._note("connector_done", details={"connector": name, "lifted": str(lifted),
                                                     "found": str(outcome.found)})
        return True

    # --- updates, signals, queries ----------------------------------------------------------------------

    @workflow.update
    async def lift(self, lift: Lift) -> RestrictionStatus:
        """An operator lifts the restriction (``dsr lift``): answered once the subject is told and the lift's day
        recorded; the marks go on that day."""
        self._lift = Lift(reason=lift.reason.strip(), requested_by=lift.requested_by)
        await workflow.wait_condition(lambda: self._scheduled_recorded)
        return self.status()

    @lift.validator
    def _validate_lift(self, lift: Lift) -> None:
        if self._state != IN_FORCE or self._lift is not None or self._ended is not None:
            raise _rejected(f"{self._held.request_id}: the restriction's lift is already scheduled")
        if not lift.reason.strip():
            raise _rejected("a lift needs its reason (--reason): it is kept in the ledger and told to the subject")

    @workflow.update
    async def subject_informed(self, informed: SubjectInformed) -> RestrictionStatus:
        """``dsr lift REF --subject-told HOW``: the email notice of the lift was refused, and staff told the subject
        by other means; answered with the lift's day (kept, or later to leave the notice period)."""
        self._informed = SubjectInformed(how=informed.how.strip(), informed_by=informed.informed_by)
        await workflow.wait_condition(lambda: self._subject_told is True)
        return self.status()

    @subject_informed.validator
    def _validate_subject_informed(self, informed: SubjectInformed) -> None:
        if self._subject_told is not False or self._informed is not None:
            raise _rejected(f"{self._held.request_id}: no refused notice of the lift waits to be replaced")
        if not informed.how.strip():
            raise _rejected("say how the subject was told (--subject-told \"registered letter of 7 December\")")

    @workflow.signal(name=GROUND_ENDED_SIGNAL)
    def ground_ended(self, ended: GroundEnded) -> None:
        """Another request of the person ended this restriction's ground (a rectification for ground a, an
        objection's decision for ground d); other grounds, or a lift already scheduled, ignore it."""
        expected = _GROUND_LETTER.get(self._held.ground)
        if expected is None or self._state != IN_FORCE or self._lift is not None:
            return
        if ended.ground == expected and self._ended is None:
            self._ended = ended

    @workflow.update
    async def retry(self, retry: Retry) -> RestrictionStatus:
        """``dsr lift REF --retry``: the marks a system refused are removed again; answered after that round, with
        what it left (``failed``)."""
        self._retry = retry
        target = self._retried_rounds + 1
        await workflow.wait_condition(lambda: self._retried_rounds >= target)
        return self.status()

    @retry.validator
    def _validate_retry(self, retry: Retry) -> None:
        if not self._failed or self._retry is not None or self._retrying:
            raise _rejected(f"{self._held.request_id}: no restriction mark waits for a retry")

    @workflow.query
    def status(self) -> RestrictionStatus:
        return RestrictionStatus(request_id=self._held.request_id, ground=self._held.ground, state=self._state,
                                 lift_at=self._lift_at, lifted_by=self._lifted_by, failed=list(self._failed),
                                 waiting_for=self._waiting_for, subject_told=self._subject_told)

    # --- helpers -----------------------------------------------------------------------------------------

    def _update_details(self) -> None:
        held = self._held
        lines = [f"restriction of **{held.request_id}** (Art. 18(1)({held.ground})): **{self._state}**"]
        if self._lift_at is not None and self._state == LIFT_SCHEDULED:
            lines.append(f"- lift on {self._lift_at:%Y-%m-%d %H:%M} UTC ({told_words(self._subject_told)})")
            if self._subject_told is False:
                lines.append("- **the marks stay until staff tell the subject by other means**: "
                             "`dsr lift REF --subject-told \"how\"`")
        if held.marked:
            lines.append(f"- marked in: {', '.join(held.marked)}")
        if held.by_hand:
            lines.append(f"- restricted by hand in: {', '.join(held.by_hand)}")
        if self._state == IN_FORCE:
            lines.append("- lift with `dsr lift REF --reason \"...\"`")
        if self._waiting_for:
            lines.append(f"- the lift waits for the person's turn, held by **{self._waiting_for}**")
        if self._failed:
            lines.append(f"- **mark not removed in {', '.join(self._failed)}**: `dsr lift REF --retry`")
        if self._told:
            lines.append(f"- told of the lift: {', '.join(self._told)}")
        if self._untold:
            lines.append(f"- **could not be told of the lift: {', '.join(self._untold)}** (tell them by hand)")
        if self._cancellation_refused:
            lines += ["", f"**{self._cancellation_refused}**"]
        workflow.set_current_details("\n".join(lines))

    async def _notify_subject(self, template: NoticeTemplate, **extra: str) -> bool:
        context = {**self._held.notice_context, **extra}
        if self._held.subject.name:
            context["subject_name"] = self._held.subject.name
        return await self._send(Notice(request_id=self._held.request_id, template=template, to=self._held.subject.email,
                                language=self._held.language, context=context, in_reply_to=self._held.in_reply_to,
                                key=f"restriction-{template.value}"))

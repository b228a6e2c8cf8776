"""Activities of per-subject order: taking a person's turn, giving it back, checking that its holder lives; and
the closing's give-back that also starts the request's aftercare (``start_aftercare``).

The person's line is a row of the ledger's database (:mod:`dsr.store.turns`), changed in one transaction by the
activity that asks or releases, the same activity that writes the request's ledger events noted before it (in a
transaction of their own: before the ask, after the release); the request runs the ask and the give-back as local
activities, so a turn granted at once starts its connectors in the workflow task that asked, with no other
workflow's task on its path.
Whom a change concerns (a request granted the turn after another's release, those waiting, who they now wait for)
is told by signal ``subject_turn`` once the change is committed; a request that is gone (its signal refused) is
taken out of the line, and whom that changes is told in turn.

A retried attempt (or a local activity run again after a lost workflow task, at attempt 1) may find its change
already committed and not told: an ask already in line, and a release finding nothing to take out, answer everyone
in line (:class:`dsr.store.turns.SubjectLine`), who are then told where they stand. Telling twice is harmless: a
request ignores an answer it has (``DataSubjectRequest.subject_turn``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger import record_batch
from dsr.domain.aftercare import AFTERCARE_WORKFLOW, AftercareStart
from dsr.domain.model import (
    SUBJECT_TURN_SIGNAL,
    FanOutPlan,
    PlanInput,
    QueueAsk,
    QueueRelease,
    SubjectTurn,
    TurnAnswer,
    TurnAsk,
)
from dsr.store.ledger import Ledger
from dsr.store.turns import SubjectTurns, Tell


class SubjectActivities:
    """The persons' lines in the ledger's database, and the signals telling requests where they stand."""

    def __init__(self, ledger: Ledger, turns: SubjectTurns, plan: Callable[[PlanInput], FanOutPlan]) -> None:
        self._ledger = ledger
        self._turns = turns
        self._plan = plan  # the fan-out's plan (ConnectorActivities.plan), answered with a turn granted at once

    @activity.defn(name="ask_subject_turn")
    async def ask_subject_turn(self, ask: QueueAsk) -> TurnAnswer:
        """Put the request in its person's line and answer who holds the turn (itself: granted), with the fan-out's
        plan for ``ask.plan`` when granted; write ``ask.events`` to the ledger first. Idempotent: a request asking
        again keeps its place (a holder still holds), and a retry writes no event twice (their keys are
        ``ask.events_key``, the same for the request's local tries and the activity after them, or else the
        activity's, as ``record_events``'s are: ``record_batch``)."""
        def in_the_ledger() -> tuple[SubjectTurn, list[Tell]]:
            if ask.events:
                record_batch(self._ledger, ask.events, key=ask.events_key)
            return self._turns.ask(ask.queue_id, ask.ask)

        answer, tells = await asyncio.to_thread(in_the_ledger)
        await self._tell(ask.queue_id, tells)
        if answer.holder not in ("", ask.ask.request_id) and await self._freed_if_gone(ask.queue_id, ask.ask,
                                                                                      remind=True):
            # Someone of the person held the turn (rare) and no longer runs (terminated by hand): taken out of the
            # line now rather than at the asker's first hourly check; the ask answered again.
            answer, tells = await asyncio.to_thread(self._turns.ask, ask.queue_id, ask.ask)
            await self._tell(ask.queue_id, tells)
        granted = answer.holder == ask.ask.request_id
        return TurnAnswer(turn=answer, plan=self._plan(ask.plan) if granted and ask.plan is not None else None)

    @activity.defn(name="release_subject_turn")
    async def release_subject_turn(self, release: QueueRelease) -> None:
        """Take the request's ask out of its person's line (done with the systems, withdrawn, refused, cancelled,
        or waiting for an operator); the next one is granted the turn and told. Then write ``release.events`` to the
        ledger (under ``release.events_key``: none twice), after the line and its signals: a ledger refusing them holds
        this request (retried), never the person's next one. Releasing twice changes nothing."""
        await self._released(release)
        if release.events:
            await asyncio.to_thread(record_batch, self._ledger, release.events, key=release.events_key)

    @activity.defn(name="start_aftercare")
    async def start_aftercare(self, start: AftercareStart) -> None:
        """The request's closing when something outlives its answer (a download link, residual data): the turn given
        back as ``release_subject_turn`` does (when the request still holds it), the aftercare started, then the
        events noted before written (so ``aftercare_started`` is in the ledger once it is true). A workflow of its
        own rather than the request's child: started here, in the local activity that closes the request, the run
        ends in that workflow task (a child's start is answered in a task more). Started once: its id is the
        reference's; an aftercare of that id that runs, or has run, is this one (a retried attempt, a run reset after
        its start)."""
        if start.release is not None:
            await self._released(start.release)
        attributes: list[SearchAttributePair[Any]] = [
            *(SearchAttributePair(SearchAttributeKey.for_keyword(key), v) for key, v in start.keywords.items()),
            *(SearchAttributePair(SearchAttributeKey.for_bool(key), v) for key, v in start.flags.items()),
        ]
        # Started by an earlier attempt (running, or already done): once is enough.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await activity.client().start_workflow(
                AFTERCARE_WORKFLOW, start.care, id=start.workflow_id, task_queue=start.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, static_summary=start.summary,
                search_attributes=TypedSearchAttributes(attributes))
        if start.events:
            await asyncio.to_thread(record_batch, self._ledger, start.events, key=start.events_key)

    async def _released(self, release: QueueRelease) -> None:
        tells = await asyncio.to_thread(self._turns.release, release.queue_id, release.release.request_id,
                                        release.release.round)
        await self._tell(release.queue_id, tells)

    @activity.defn(name="check_subject_turn")
    async def check_subject_turn(self, ask: QueueAsk) -> SubjectTurn:
        """For a request waiting for its turn (hourly): a holder that no longer runs (a workflow terminated by hand
        never releases) is taken out of the line; answers who holds the turn now, as the ask does."""
        await self._freed_if_gone(ask.queue_id, ask.ask)
        answer, tells = await asyncio.to_thread(self._turns.ask, ask.queue_id, ask.ask)
        await self._tell(ask.queue_id, tells)
        return answer

    async def _freed_if_gone(self, queue_id: str, asker: TurnAsk, *, remind: bool = False) -> bool:
        """Take the line's holder, another request than ``asker``, out of the line if it no longer runs (telling
        whom that concerns); True if it did. ``remind`` (an ask): a holder still running is told that it holds, so
        that one no longer asking for that round (its ask's attempt timed out, and its transaction committed after
        the request gave the turn back, telling nobody) gives it back now, not at the asker's next hourly check.
        Once per ask: the hourly checks do not, or a holder kept for weeks would gain a signal an hour per waiter."""
        holder = (await asyncio.to_thread(self._turns.line, queue_id)).holder
        if holder is None or holder.request_id == asker.request_id:
            return False
        if await request_running(holder.request_id):
            if remind:
                await self._tell(queue_id, [Tell(holder.request_id, SubjectTurn(holder=holder.request_id,
                                                                                round=holder.round))])
            return False
        activity.logger.warning("turn freed: %s ended without releasing it", holder.request_id)
        await self._tell(queue_id, await asyncio.to_thread(
            self._turns.release, queue_id, holder.request_id, holder.round))
        return True

    async def _tell(self, queue_id: str, tells: list[Tell]) -> None:
        """Signal each request its answer; a request that is gone leaves the line, and whom that changes is told."""
        pending, told = list(tells), set[tuple[str, str, int]]()
        client = activity.client()
        while pending:
            tell = pending.pop(0)
            said = (tell.request_id, tell.turn.holder, tell.turn.round)
            if said in told:
                continue
            told.add(said)
            try:
                await client.get_workflow_handle(tell.request_id).signal(SUBJECT_TURN_SIGNAL, tell.turn)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                # The request has ended (or was terminated): it neither holds nor waits any longer. What its leaving
                # changed replaces what was still to be said to the same requests.
                changed = await asyncio.to_thread(self._turns.release, queue_id, tell.request_id, tell.turn.round)
                again = {t.request_id for t in changed}
                pending = [t for t in pending if t.request_id not in again] + changed


async def request_running(request_id: str) -> bool:
    """Whether the workflow ``request_id`` (a request, a restriction's lift) still runs."""
    try:
        described = await activity.client().get_workflow_handle(request_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING

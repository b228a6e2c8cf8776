"""One subject, one thing at a time: the queue of a person's requests wanting their systems.

``SubjectQueue`` (id ``subject-<blind index of the email>``, see :func:`dsr.domain.model.subject_queue_id`) grants
the turn to one request at a time; a request runs its fan-out (connector work) only while it holds it, so an
export never races an erasure of the same person. Among the requests waiting, the earliest received goes
first (ties: the request id). A request still waiting for identity is not waiting here, and does not hold
back a later one that is ready: the queue orders the requests that want the systems, not those that may
want them one day.

Update in: ``ask_turn`` (:class:`TurnAsk`, by update-with-start from the ``ask_subject_turn`` activity), answered
at once with who holds the turn (:class:`SubjectTurn`): the asker itself when granted, so that a request whose
person is idle starts its work as soon as the activity returns, without a signal back and a workflow task of its
own to read it. Signals in: ``ask`` (the same ask, answered by signal only) and ``release`` (:class:`TurnRelease`,
from the request: done, withdrawn, refused, cancelled, or waiting for an operator). Signal out: ``subject_turn``
(:class:`SubjectTurn`) to a request whose answer changed since it asked, naming the holder: itself when granted,
another request while it waits (what ``dsr status`` shows).

A holder that ends without releasing (a workflow terminated by hand) must not block the person forever:
while a turn is held, the queue checks on a durable timer (hourly) that the holder still runs, and frees the
turn if not. A grant that cannot be delivered (the request is gone) frees it at once. The queue continues as
new when its history grows, and ends when idle: nobody holds, nobody waits. An ask arriving after the end
starts a new run (update-with-start); one arriving while it ends fails the closing task, which runs again
with it (or fails the ask, which the activity retries: a new run then answers it).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import SubjectQueueState, SubjectQueueStatus, SubjectTurn, TurnAsk, TurnRelease
from workflows.contract import CHECK, SUBJECT_TURN_SIGNAL, subject_request_running, summarised


@workflow.defn(name="SubjectQueue")
class SubjectQueue:
    @workflow.init
    def __init__(self, state: SubjectQueueState) -> None:
        self._state = state
        self._holder: TurnAsk | None = state.holder
        self._waiting: list[TurnAsk] = list(state.waiting)
        # Requests to tell who holds the turn; a list, never a set: the order of the signals sent must be the
        # same on every replay. Empty when a run continues as new (it does so only once everyone was told).
        self._tell: list[str] = []

    @workflow.run
    async def run(self, state: SubjectQueueState) -> None:
        check_every = timedelta(seconds=state.check_every_seconds)
        while True:
            if self._holder is None and self._waiting:
                self._grant_next()
            if self._tell:
                await self._tell_requests()
                continue
            if self._holder is None:
                if self._waiting:
                    continue
                # Idle: end. Handlers are plain state changes; an ask in the closing task re-runs the task.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._holder is None and not self._waiting and not self._tell:
                    return
                continue
            if self._history_too_long():
                # Everyone was told (above); an ask arriving with the closing task fails it, and the task runs
                # again with the ask, which is then told before the next attempt to continue.
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(SubjectQueueState(
                    holder=self._holder, waiting=list(self._waiting),
                    check_every_seconds=state.check_every_seconds, history_limit=state.history_limit,
                ))
            holder = self._holder

            def changed(holder: TurnAsk = holder) -> bool:
                return self._holder is not holder or bool(self._tell)

            try:
                await workflow.wait_condition(changed, timeout=check_every, timeout_summary="holder check")
            except TimeoutError:
                running = await workflow.execute_activity(
                    subject_request_running, holder.request_id, **summarised(CHECK, f"is {holder.request_id} running"),
                )
                if not running and self._holder is holder:
                    workflow.logger.warning("turn freed: %s ended without releasing it", holder.request_id)
                    self._holder = None

    @workflow.signal
    def ask(self, ask: TurnAsk) -> None:
        if self._holder is not None and self._holder.request_id == ask.request_id:
            # The holder asking again (a retried activity, a reset request): it holds, it is told so again.
            self._holder = ask
        else:
            self._waiting = [w for w in self._waiting if w.request_id != ask.request_id] + [ask]
        self._tell_later(ask.request_id)

    @workflow.update
    def ask_turn(self, ask: TurnAsk) -> SubjectTurn:
        """``ask``, answered at once: the turn is granted now if nobody holds it (the earliest received among those
        waiting, as the main loop would); the answer tells the asker, which is then not signalled for this ask."""
        self.ask(ask)
        if self._holder is None:
            self._grant_next()
        if ask.request_id in self._tell:
            self._tell.remove(ask.request_id)
        return SubjectTurn(holder=self._holder.request_id if self._holder else "", round=ask.round)

    @workflow.signal
    def release(self, release: TurnRelease) -> None:
        holder = self._holder
        if holder is not None and holder.request_id == release.request_id and holder.round == release.round:
            self._holder = None
        self._waiting = [w for w in self._waiting
                         if not (w.request_id == release.request_id and w.round == release.round)]

    @workflow.query
    def status(self) -> SubjectQueueStatus:
        return SubjectQueueStatus(
            holder=self._holder.request_id if self._holder else "",
            waiting=[ask.request_id for ask in sorted(self._waiting, key=_order)],
        )

    # --- helpers ----------------------------------------------------------------------------------

    def _grant_next(self) -> None:
        chosen = min(self._waiting, key=_order)
        self._waiting.remove(chosen)
        self._holder = chosen
        # The new holder learns it is its turn, every other waiting request whom it now waits for.
        for request_id in [chosen.request_id, *(ask.request_id for ask in sorted(self._waiting, key=_order))]:
            self._tell_later(request_id)

    def _tell_later(self, request_id: str) -> None:
        if request_id not in self._tell:
            self._tell.append(request_id)

    async def _tell_requests(self) -> None:
        while self._tell:
            request_id = self._tell.pop(0)
            entry: TurnAsk | None
            if self._holder is not None and self._holder.request_id == request_id:
                entry = self._holder
            else:
                entry = next((w for w in self._waiting if w.request_id == request_id), None)
            if entry is None:
                continue  # released meanwhile
            turn = SubjectTurn(holder=self._holder.request_id if self._holder else "", round=entry.round)
            try:
                await workflow.get_external_workflow_handle(request_id).signal(SUBJECT_TURN_SIGNAL, turn)
            except FailureError:
                # The request is gone (ended, terminated): it neither holds nor waits any longer.
                if self._holder is entry:
                    self._holder = None
                self._waiting = [w for w in self._waiting if w is not entry]
                if self._holder is None and self._waiting:
                    self._grant_next()

    def _history_too_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._state.history_limit


def _order(ask: TurnAsk) -> tuple:
    return (ask.received_at, ask.request_id)

"""Fan-out: run one connector for one request, and turn its errors into retry decisions."""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.base import (
    Connector,
    ConnectorError,
    ExportJob,
    MarksRestriction,
    OperationJob,
    PermanentConnectorError,
    StopsMarketing,
    TransientConnectorError,
    WithdrawsConsent,
    no_consent_control,
    no_marketing_control,
    no_restriction_control,
    residual_withdrawal,
    tally,
    unexpected_remains,
)
from connectors.outside import OutsideSystem
from dsr.domain.model import (
    ConnectorHealth,
    ConnectorOutcome,
    ConnectorTask,
    FanOutPlan,
    PlanInput,
    RecordAction,
    RecordReport,
    RequestKind,
)
from dsr.store.exports import ChunkStorer, ExportStore
from dsr.store.journals import Journal, JournalEntry, JournalState, JournalStore

PERMANENT_ERROR = "PermanentConnectorError"
"""Failure type the workflow's retry policy never retries: an operator must act first."""
TRANSIENT_ERROR = "TransientConnectorError"
"""Failure type of a vendor's 429 or 5xx: retried with backoff, after the vendor's Retry-After if it gave one."""
CONNECTOR_ERROR = "ConnectorError"
"""Failure type of any other connector failure (a network error, an unexpected answer): retried with backoff."""


class ConnectorActivities:
    """Holds the configured connectors; the worker builds it once from configuration."""

    def __init__(self, connectors: Iterable[Connector], exports: ExportStore,
                 journals: JournalStore | None = None) -> None:
        self._exports = exports
        # Erasure and rectification journals: on the same object store and key ring as the exports, so a
        # retry on any worker reads what an earlier attempt did.
        self._journals = journals or JournalStore(exports.objects, exports.sealer)
        self._connectors: dict[str, Connector] = {}
        for connector in connectors:
            if connector.name in self._connectors:
                raise ValueError(f"two connectors are named {connector.name!r}; names must be unique")
            self._connectors[connector.name] = connector

    @activity.defn(name="plan_fanout")
    async def plan_fanout(self, plan: PlanInput) -> FanOutPlan:
        """Which connectors take part in a request of this kind, in a stable order."""
        return self.plan(plan)

    def plan(self, plan: PlanInput) -> FanOutPlan:
        """:meth:`plan_fanout`, for the activity answering a turn granted at once (``ask_subject_turn``)."""
        names = sorted(n for n, c in self._connectors.items() if plan.kind in c.kinds)
        return FanOutPlan(connectors=names,
                          outside=[n for n in names if isinstance(self._connectors[n], OutsideSystem)])

    @activity.defn(name="run_connector")
    async def run_connector(self, task: ConnectorTask) -> ConnectorOutcome:
        connector = self._connectors.get(task.connector)
        if connector is None:
            raise ApplicationError(
                f"connector {task.connector!r} is not configured on this worker",
                type=PERMANENT_ERROR,
                non_retryable=True,
            )
        info = activity.info()
        watched = task.schedule > 0  # the workflow resumes progressed failures and watches for degraded
        # A crashed worker is noticed within the heartbeat timeout, however long the connector runs;
        # connectors that page through large exports heartbeat their own cursor on top of this.
        progress = _Progress(info.heartbeat_details, task.resume)
        if watched and info.attempt > 1:
            if progress.predecessor_advanced:
                # The previous attempt advanced its checkpoint, then its worker died: resume at once, with
                # attempts and backoff reset, rather than after a backoff grown by failures before the progress.
                raise _progressed(task, "the previous attempt's worker was lost", progress.cursor, None)
            if info.attempt == 2:  # the first attempt told, unless its worker was lost: tell again, once
                await _tell(task, failing=True, error="the previous attempt failed")
        beating = asyncio.create_task(progress.beat_while_running())
        if watched and info.attempt > 1:
            progress.on_first_advance = lambda: _tell_soon(task, failing=False)
        try:
            outcome = await self._run(connector, task, progress)
            if len(outcome.report) <= REPORT_LINES_IN_HISTORY:
                return outcome
            # A long report goes to the object store, chunk by chunk: in a thread, not on the worker's event loop.
            return await asyncio.to_thread(self._compact, task, outcome)
        except TransientConnectorError as err:
            retry_after = None if err.retry_after is None else max(0.0, err.retry_after)
            if watched and progress.advanced:
                raise _progressed(task, str(err), progress.cursor, retry_after) from None
            if watched and info.attempt == 1:
                await _tell(task, failing=True, error=f"{task.connector}: {err}")
            # Retry-After from the vendor wins over the workflow's backoff.
            raise ApplicationError(
                f"{task.connector}: {err}",
                type=TRANSIENT_ERROR,
                next_retry_delay=None if retry_after is None else timedelta(seconds=retry_after),
            ) from None
        except PermanentConnectorError as err:
            raise ApplicationError(f"{task.connector}: {err}", type=PERMANENT_ERROR, non_retryable=True) from None
        except ConnectorError as err:
            if watched and progress.advanced:
                raise _progressed(task, str(err), progress.cursor, None) from None
            if watched and info.attempt == 1:
                await _tell(task, failing=True, error=f"{task.connector}: {err}")
            raise ApplicationError(f"{task.connector}: {err}", type=CONNECTOR_ERROR) from None
        except Exception as err:
            # An unexpected error's text may quote a URL or a record (personal data): keep its type only.
            message = f"unexpected {type(err).__name__}"
            if watched and progress.advanced:
                raise _progressed(task, message, progress.cursor, None) from None
            if watched and info.attempt == 1:
                await _tell(task, failing=True, error=f"{task.connector}: {message}")
            raise ApplicationError(f"{task.connector}: {message}", type=CONNECTOR_ERROR) from None
        finally:
            beating.cancel()

    async def _run(self, connector: Connector, task: ConnectorTask, progress: _Progress) -> ConnectorOutcome:
        journal = self._journals.journal(task.request_id, task.connector)
        if task.schedule > 0:
            # Each confirmed write is progress: an erasure of thousands of records that fails after some is
            # resumed at once (from its journal), like an export from its checkpoint.
            journal = _ProgressJournal(journal, progress)
        operation = OperationJob(request_id=task.request_id, subject=task.subject, changes=dict(task.changes),
                                 consent=list(task.consent), journal=journal)
        match task.kind:
            case RequestKind.ACCESS | RequestKind.PORTABILITY:
                # Chunks are sealed and stored behind the connector, which fetches its next page meanwhile; each
                # checkpoint is heartbeated once the chunks it counts are stored.
                storer = ChunkStorer()
                try:
                    return await connector.export(ExportJob(
                        request_id=task.request_id,
                        subject=task.subject,
                        sink=self._exports.sink(task.request_id, storer=storer),
                        provided_only=task.kind == RequestKind.PORTABILITY,
                        resume=progress.cursor,
                        checkpoint=lambda cursor: progress.checkpoint_once_stored(storer, cursor),
                    ))
                finally:
                    # Nothing is stored, nor a checkpoint heartbeated, after the attempt ends: a retry (maybe on
                    # this worker) scans the datasets afresh, and the failure reports the last stored checkpoint.
                    await asyncio.to_thread(storer.close)
            case RequestKind.ERASURE:
                # The outcome merges every attempt (the journal), so it is the same however often this ran.
                outcome = await connector.erase(operation)
                # Verify: locate again; anything found that the report does not declare kept is a failure
                # an operator must see, not a silent success. A failure here (a 429) leaves the journal:
                # the retry reports what this attempt did.
                remains = unexpected_remains(outcome, await connector.locate(task.subject))
                if remains:
                    datasets = ", ".join(sorted({r.dataset for r in remains}))
                    raise PermanentConnectorError(
                        f"erasure verification failed: {len(remains)} record(s) still present ({datasets})"
                    )
                return outcome
            case RequestKind.RECTIFICATION:
                return await connector.rectify(operation)
            case RequestKind.OBJECTION:
                # Only objections to direct marketing reach the systems (one to other processing is decided by
                # an operator); a system with no opt-out of its own leaves a residual line for the operator.
                if isinstance(connector, StopsMarketing):
                    return await connector.stop_marketing(operation)
                return no_marketing_control(connector.name)
            case RequestKind.CONSENT_WITHDRAWAL:
                # Art. 7(3): each purpose as the profile maps it here; what the system cannot switch itself (a
                # residual mapping, or no withdraw_consent at all) is a line for the operator, followed up.
                done = [a for a in operation.consent if not a.residual]
                residual = [a for a in operation.consent if a.residual]
                if not done or not isinstance(connector, WithdrawsConsent):
                    return no_consent_control(connector.name, operation.consent)
                outcome = await connector.withdraw_consent(replace(operation, consent=done))
                outcome.report.extend(residual_withdrawal(a) for a in residual)
                outcome.counts = tally(outcome.report)
                return outcome
            case RequestKind.RESTRICTION:
                # Art. 18: the records are marked (or unmarked, once the subject was told) where the system allows;
                # elsewhere a residual line asks the operator to restrict by hand.
                if isinstance(connector, MarksRestriction):
                    if task.lift:
                        return await connector.lift_restriction(operation)
                    return await connector.restrict(operation)
                return no_restriction_control(connector.name, lift=task.lift)
        raise PermanentConnectorError(f"connector {connector.name} cannot handle requests of kind {task.kind}")


    def _compact(self, task: ConnectorTask, outcome: ConnectorOutcome) -> ConnectorOutcome:
        """Keep workflow history small: a report longer than ``REPORT_LINES_IN_HISTORY`` goes to the object store,
        sealed (blocking: run in a thread).

        Temporal refuses payloads over ~2 MB; 10,000 anonymised orders would pass it. The history keeps
        one line per (dataset, action, legal basis) with the count and the latest retention date.
        """
        writer = self._exports.for_request(task.request_id).open(task.connector, "report", provided=False)
        try:
            writer.truncate(0)  # a retried attempt rewrites the whole report
            for line in outcome.report:
                writer.write(asdict(line))
        finally:
            writer.close()
        groups: dict[tuple[str, str, str], list[RecordReport]] = {}
        for line in outcome.report:
            groups.setdefault((line.dataset, line.action, line.legal_basis), []).append(line)
        summary = []
        for (dataset, action, basis), lines in groups.items():
            until = [line.retained_until for line in lines if line.retained_until]
            fields = sorted({f for line in lines for f in line.fields})
            notes = sorted({line.note for line in lines if line.note})
            # A summary line ("*") leads its note with the records it stands for: the replies count them from it
            # (dsr/mail/replies.py); an id such as "110 records" was counted as one record.
            summary.append(RecordReport(
                dataset=dataset, record_id="*", action=RecordAction(action),
                legal_basis=basis, retained_until=max(until) if until else None, fields=fields,
                note="; ".join([f"{_records(lines)} records", *notes])[:500],
            ))
        return replace(outcome, report=summary,
                       notes=[*outcome.notes, f"full report of {len(outcome.report)} records in the export store"])


def _records(lines: list[RecordReport]) -> int:
    """The records report lines stand for: one each, or the count leading a summary line's note."""
    total = 0
    for line in lines:
        count = re.match(r"\s*(\d+)\b", line.note) if line.record_id == "*" else None
        total += int(count.group(1)) if count else 1
    return total


REPORT_LINES_IN_HISTORY = 200
"""Above this many report lines, the per-record report is stored encrypted and summarised in history."""

HEARTBEAT_EVERY = 2.0
"""Seconds between liveness heartbeats; the SDK throttles what it sends to a fraction of the timeout."""


PROGRESSED = "ConnectorProgressed"
"""Failure type of an attempt that failed after advancing its checkpoint: not
retried by Temporal; the workflow schedules a fresh activity from the checkpoint (its details) at once, so
attempts and backoff start again. Details: the checkpoint, and the vendor's Retry-After in seconds or None."""


def _progressed(task: ConnectorTask, error: str, cursor: Mapping[str, Any] | None,
                retry_after: float | None) -> ApplicationError:
    return ApplicationError(f"{task.connector}: {error} (after progress)", dict(cursor) if cursor else None,
                            retry_after, type=PROGRESSED, non_retryable=True)


HEALTH_SIGNAL = "connector_health"
TELL_TIMEOUT = 10.0
"""Seconds a connector attempt spends at most telling its request that it fails (best effort)."""


async def _tell(task: ConnectorTask, *, failing: bool, error: str = "") -> None:
    """Signal the request that this schedule of the connector began failing, or progressed again: the workflow
    cannot see attempt failures Temporal retries, and shows a connector failing too long as degraded. Best
    effort: a lost signal is sent again by the next attempt (``failing``) or ends with the schedule."""
    info = activity.info()
    if info.workflow_id is None:
        return  # not run by a workflow (a standalone activity): nobody to tell
    try:
        handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        await asyncio.wait_for(handle.signal(HEALTH_SIGNAL, ConnectorHealth(
            connector=task.connector, schedule=task.schedule, failing=failing, error=error[:300])),
            timeout=TELL_TIMEOUT)
    except Exception as err:  # never fail a connector for its report
        activity.logger.warning("could not tell the request that %s %s: %s", task.connector,
                                "fails" if failing else "progresses", type(err).__name__)


def _tell_soon(task: ConnectorTask, *, failing: bool) -> None:
    # Called from a checkpoint (synchronous code): the signal goes beside the connector's work.
    telling = asyncio.create_task(_tell(task, failing=failing))
    _telling.add(telling)
    telling.add_done_callback(_telling.discard)


_telling: set[asyncio.Task[None]] = set()  # a task only weakly referenced by the loop could be collected


class _Progress:
    """The connector's latest checkpoint, heartbeated to Temporal so a retry resumes from it.

    Heartbeat details: ``[cursor, started_from]``, the second being where the attempt began, so that the next
    attempt knows whether its predecessor advanced before its worker died.
    """

    def __init__(self, details: Sequence[Any], resume: Mapping[str, Any] | None = None) -> None:
        # A retried attempt (e.g. after a worker crash) starts from the last heartbeated cursor; a fresh
        # schedule from the checkpoint the workflow passed.
        self.cursor: Mapping[str, Any] | None = details[0] if details else resume
        self.predecessor_advanced = (
            len(details) > 1 and details[0] is not None and details[0] != details[1]
        )
        self.started_from = self.cursor
        self.on_first_advance: Callable[[], None] | None = None

    @property
    def advanced(self) -> bool:
        """Whether this attempt moved the checkpoint on."""
        return self.cursor is not None and self.cursor != self.started_from

    def checkpoint_once_stored(self, storer: ChunkStorer, cursor: Mapping[str, Any]) -> None:
        """Heartbeat ``cursor`` once the chunks handed to ``storer`` before it are stored (never if one failed).

        Called by the connector on the event loop; the heartbeat runs there too, in the activity's context."""
        loop, context, cursor = asyncio.get_running_loop(), contextvars.copy_context(), dict(cursor)
        storer.after_stored(lambda: loop.call_soon_threadsafe(self.checkpoint, cursor, context=context))

    def checkpoint(self, cursor: Mapping[str, Any]) -> None:
        self.cursor = dict(cursor)
        activity.heartbeat(self.cursor, self.started_from)
        if self.on_first_advance is not None and self.advanced:
            callback, self.on_first_advance = self.on_first_advance, None
            callback()

    async def beat_while_running(self) -> None:
        # Liveness between checkpoints; always re-sends the cursor, since a heartbeat replaces details.
        while True:
            if self.cursor is None:
                activity.heartbeat()
            else:
                activity.heartbeat(self.cursor, self.started_from)
            await asyncio.sleep(HEARTBEAT_EVERY)


class _ProgressJournal(Journal):
    """A journal whose confirmed writes of records not confirmed before count as the attempt's progress
    (cursor ``{"journaled": n}``); what earlier attempts did is read back by the connector through ``state``."""

    def __init__(self, journal: Journal, progress: _Progress) -> None:
        super().__init__(journal.backend)
        self._progress = progress
        self._known: set[tuple[str, str]] = set()

    async def state(self) -> JournalState:
        state = await super().state()
        self._known.update(state.done)
        return state

    async def record(self, entries: Iterable[JournalEntry]) -> None:
        entries = list(entries)
        await super().record(entries)
        new = {e.key for e in entries} - self._known
        if new:
            self._known |= new
            done = int((self._progress.cursor or {}).get("journaled", 0))
            self._progress.checkpoint({"journaled": done + len(new)})

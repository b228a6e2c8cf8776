"""Fan-out: run one connector for one request, and turn its errors into retry decisions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.base import (
    Connector,
    ConnectorError,
    ExportJob,
    OperationJob,
    PermanentConnectorError,
    TransientConnectorError,
    unexpected_remains,
)
from dsr.model import (
    ConnectorOutcome,
    ConnectorTask,
    FanOutPlan,
    PlanInput,
    RecordAction,
    RecordReport,
    RequestKind,
)
from dsr.store.exports import ExportStore
from dsr.store.journals import JournalStore

PERMANENT_ERROR = "PermanentConnectorError"
"""Failure type the workflow's retry policy never retries: an operator must act first."""


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
        return FanOutPlan(connectors=sorted(n for n, c in self._connectors.items() if plan.kind in c.kinds))

    @activity.defn(name="run_connector")
    async def run_connector(self, task: ConnectorTask) -> ConnectorOutcome:
        connector = self._connectors.get(task.connector)
        if connector is None:
            raise ApplicationError(
                f"connector {task.connector!r} is not configured on this worker",
                type=PERMANENT_ERROR,
                non_retryable=True,
            )
        # A crashed worker is noticed within the heartbeat timeout, however long the connector runs;
        # connectors that page through large exports heartbeat their own cursor on top of this.
        progress = _Progress(activity.info().heartbeat_details)
        beating = asyncio.create_task(progress.beat_while_running())
        try:
            outcome = await self._run(connector, task, progress)
            return self._compact(task, outcome)
        except TransientConnectorError as err:
            # Retry-After from the vendor wins over the workflow's backoff.
            raise ApplicationError(
                f"{task.connector}: {err}",
                type="TransientConnectorError",
                next_retry_delay=None if err.retry_after is None else timedelta(seconds=max(0.0, err.retry_after)),
            ) from None
        except PermanentConnectorError as err:
            raise ApplicationError(f"{task.connector}: {err}", type=PERMANENT_ERROR, non_retryable=True) from None
        except ConnectorError as err:
            raise ApplicationError(f"{task.connector}: {err}", type="ConnectorError") from None
        except Exception as err:
            # An unexpected error's text may quote a URL or a record (personal data): keep its type only.
            raise ApplicationError(
                f"{task.connector}: unexpected {type(err).__name__}", type="ConnectorError"
            ) from None
        finally:
            beating.cancel()


    async def _run(self, connector: Connector, task: ConnectorTask, progress: _Progress) -> ConnectorOutcome:
        operation = OperationJob(request_id=task.request_id, subject=task.subject, changes=dict(task.changes),
                                 journal=self._journals.journal(task.request_id, task.connector))
        match task.kind:
            case RequestKind.ACCESS | RequestKind.PORTABILITY:
                return await connector.export(ExportJob(
                    request_id=task.request_id,
                    subject=task.subject,
                    sink=self._exports.for_request(task.request_id),
                    provided_only=task.kind == RequestKind.PORTABILITY,
                    resume=progress.cursor,
                    checkpoint=progress.checkpoint,
                ))
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
        raise PermanentConnectorError(f"connector {connector.name} cannot handle requests of kind {task.kind}")


    def _compact(self, task: ConnectorTask, outcome: ConnectorOutcome) -> ConnectorOutcome:
        """Keep workflow history small: a long per-record report goes to the object store, sealed.

        Temporal refuses payloads over ~2 MB; 10,000 anonymised orders would pass it. The history keeps
        one line per (dataset, action, legal basis) with the count and the latest retention date.
        """
        if len(outcome.report) <= REPORT_LINES_IN_HISTORY:
            return outcome
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
            summary.append(RecordReport(
                dataset=dataset, record_id=f"{len(lines)} records", action=RecordAction(action),
                legal_basis=basis, retained_until=max(until) if until else None, fields=fields,
                note="; ".join(notes)[:500],
            ))
        return replace(outcome, report=summary,
                       notes=[*outcome.notes, f"full report of {len(outcome.report)} records in the export store"])


REPORT_LINES_IN_HISTORY = 200
"""Above this many report lines, the per-record report is stored encrypted and summarised in history."""

HEARTBEAT_EVERY = 2.0
"""Seconds between liveness heartbeats; the SDK throttles what it sends to a fraction of the timeout."""


class _Progress:
    """The connector's latest checkpoint, heartbeated to Temporal so a retry resumes from it."""

    def __init__(self, details: Sequence[Any]) -> None:
        # A retried attempt (e.g. after a worker crash) starts from the last heartbeated cursor.
        self.cursor: Mapping[str, Any] | None = details[0] if details else None

    def checkpoint(self, cursor: Mapping[str, Any]) -> None:
        self.cursor = dict(cursor)
        activity.heartbeat(self.cursor)

    async def beat_while_running(self) -> None:
        # Liveness between checkpoints; always re-sends the cursor, since a heartbeat replaces details.
        while True:
            if self.cursor is None:
                activity.heartbeat()
            else:
                activity.heartbeat(self.cursor)
            await asyncio.sleep(HEARTBEAT_EVERY)

"""Fan-out: run one connector for one request, and turn its errors into retry decisions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.base import (
    Connector,
    ConnectorError,
    PermanentConnectorError,
    TransientConnectorError,
    run_connector,
)
from dsr.model import ConnectorOutcome, ConnectorTask, FanOutPlan, PlanInput

PERMANENT_ERROR = "PermanentConnectorError"
"""Failure type the workflow's retry policy never retries: an operator must act first."""


class ConnectorActivities:
    """Holds the configured connectors; the worker builds it once from configuration."""

    def __init__(self, connectors: Iterable[Connector]) -> None:
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
        beating = asyncio.create_task(_heartbeat_while_running())
        try:
            return await run_connector(connector, task.kind, task.request_id, task.subject, task.changes)
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


HEARTBEAT_EVERY = 20.0
"""Seconds between liveness heartbeats; well under the workflow's two-minute heartbeat timeout."""


async def _heartbeat_while_running() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY)

"""A cancellation requested from outside (the Temporal UI's "Request Cancellation", ``temporal workflow cancel``)
is a request, not an order: the workflow decides.

Without this, the SDK raises ``CancelledError`` wherever the run happens to wait, the run ends as CANCELED, and
nothing is recorded, nobody told, the ledger left at its last stage. Here the run's body works in a task of its
own, shielded: a cancellation reaches only the waiting wrapper, which asks the workflow what to do
(``on_cancel``, synchronous: it changes state, e.g. "withdrawn by staff" or "refused, and why") and may hand back
a coroutine that records the decision (ledger, operator); the body goes on, sees the new state and ends as it
would for any other withdrawal, or not at all. The run then completes normally (never CANCELED), after the
recording is done.

Temporal delivers one cancellation per run (the server ignores later requests), so only the first is handled; a
``CancelledError`` after that, or without a request from the server (the worker evicting the run from its cache)
goes through unchanged. Termination cannot be caught: it ends the run at once, without running any code (see
``dsr reconcile``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from temporalio import workflow

T = TypeVar("T")

CancelHandler = Callable[[str], Coroutine[Any, Any, None] | None]
"""Called with the cancellation's reason (empty when none was given); returns what records the decision, if any."""


async def shielded_from_cancellation(body: Coroutine[Any, Any, T], on_cancel: CancelHandler) -> T:
    """Run ``body`` to its end whatever cancellation is requested; ``on_cancel`` decides what it means."""
    task = asyncio.create_task(body)
    recording: list[asyncio.Task[None]] = []
    handled = False
    while True:
        try:
            result = await asyncio.shield(task)
            for record in recording:
                await asyncio.shield(record)
            return result
        except asyncio.CancelledError:
            reason = workflow.cancellation_reason()
            if handled or reason is None:
                raise  # the worker evicting the run, or a cancellation already decided: not ours to swallow
            handled = True
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # the next await must not raise again
            follow_up = on_cancel(reason)
            if follow_up is not None:
                recording.append(asyncio.create_task(follow_up))

"""What the workflows that outlive a request's answer share: ``FollowUp``, the base of ``RequestAftercare``
(download link, residual data) and ``RestrictionInForce`` (a restriction held until lifted).

Both are children of an answered request (``ParentClosePolicy.ABANDON``), hold obligations nobody may skip, and so:

- run their work shielded from cancellation (:func:`workflows.cancellation.shielded_from_cancellation`): a
  cancellation from the UI is refused, the reason shown in the details and sealed in the ledger
  (``cancellation_refused``, actor ``temporal``);
- record their events the way the request does: noted in order and written in batches (``record_events``, one
  transaction per batch, one task at a time), every event written before the run ends;
- tell the operator through one notice activity, a failed notice recorded as ``notice_failed``.

Deterministic workflow code; subclasses call :meth:`FollowUp._follow_up` in their ``@workflow.init``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import AuditEvent, Language, Notice, NoticeTemplate
    from workflows.contract import LEDGER, NOTICE, LedgerActivities, NoticeActivities, summarised
from workflows.cancellation import shielded_from_cancellation

__all__ = ["FollowUp"]


class FollowUp:
    """The shared part of a follow-up workflow: its ledger events, its operator notices, its refusal of a
    cancellation. Subclasses set what they follow with :meth:`_follow_up` and render their own details."""

    _request_id: str
    _operator_email: str
    _language: Language
    _context: dict[str, str]
    _cancellation_refused: str

    def _follow_up(self, *, request_id: str, operator_email: str, language: Language,
                   notice_context: dict[str, str]) -> None:
        self._request_id = request_id
        self._operator_email = operator_email
        self._language = language
        self._context = dict(notice_context)
        self._cancellation_refused = ""
        self._events: list[AuditEvent] = []
        self._events_noted = 0
        self._events_written = 0
        self._ledger_writer: asyncio.Task[None] | None = None

    # --- the run -----------------------------------------------------------------------------------------

    async def _run_follow_up(self, work: Callable[[], Coroutine[Any, Any, None]], *, workflow_name: str,
                             refusal: str) -> None:
        """``work`` to its end whatever cancellation is requested (refused with ``refusal``, recorded as
        ``cancellation_refused`` with ``workflow_name``); then every event written, every handler finished."""

        def refuse(reason: str) -> Coroutine[Any, Any, None]:
            self._cancellation_refused = refusal
            self._update_details()
            return self._audit("cancellation_refused", actor="temporal", details={"workflow": workflow_name},
                               note=reason)

        async def body() -> None:
            await work()
            await workflow.wait_condition(workflow.all_handlers_finished)
            await self._ledger_written()

        await shielded_from_cancellation(body(), refuse)
        await self._ledger_written()  # what the refusal recorded, if it came last

    def _update_details(self) -> None:
        raise NotImplementedError

    # --- the ledger --------------------------------------------------------------------------------------

    async def _audit(self, event: str, *, actor: str = "engine", details: dict[str, str] | None = None,
                     note: str = "") -> None:
        """Record an event and wait until the ledger holds it (with whatever was noted before it)."""
        self._note(event, actor=actor, details=details, note=note)
        await self._ledger_written()

    def _note(self, event: str, *, actor: str = "engine", details: dict[str, str] | None = None,
              note: str = "") -> None:
        """Record an event without waiting: the events noted meanwhile go in one ``record_events`` activity."""
        self._events.append(AuditEvent(request_id=self._request_id, event=event, actor=actor, details=details or {},
                                       note=note))
        self._events_noted += 1
        if self._ledger_writer is None or self._ledger_writer.done():
            self._ledger_writer = asyncio.create_task(self._write_events())

    async def _write_events(self) -> None:
        while self._events:
            batch, self._events = self._events, []
            await workflow.execute_activity_method(
                LedgerActivities.record_events, batch,
                **summarised(LEDGER, f"ledger: {', '.join(e.event for e in batch)}"))
            self._events_written += len(batch)

    async def _ledger_written(self) -> None:
        noted = self._events_noted
        await workflow.wait_condition(lambda: self._events_written >= noted)

    # --- notices -----------------------------------------------------------------------------------------

    async def _notify_operator(self, template: NoticeTemplate, **extra: str) -> None:
        await self._send(Notice(request_id=self._request_id, template=template, to=self._operator_email,
                                language=self._language, context={**self._context, **extra}))

    async def _send(self, notice: Notice) -> bool:
        """Sent (True), or refused for good by the mail server (False, recorded as ``notice_failed``)."""
        try:
            await workflow.execute_activity_method(NoticeActivities.send_notice, notice,
                                                   **summarised(NOTICE, f"notice: {notice.template.value}"))
        except ActivityError:
            await self._audit("notice_failed", details={"template": notice.template.value})
            return False
        return True

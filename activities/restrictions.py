"""Restrictions (Art. 18) whose ground ends with another request of the same person: telling them so.

A restriction on ground (a) lasts while the accuracy of the data is verified, one on ground (d) while an objection
is weighed. When a rectification of the same person is answered, or their objection decided, the request's
workflow calls ``end_restriction_grounds``: it writes ``restriction_ground_end`` on that request in the ledger,
then the ledger names the person's restriction requests (blind index, no address), and each one's
``RestrictionInForce`` gets the ``ground_ended`` signal; one on another ground, or no longer running, ignores it or
is not there. One still being answered has no workflow to signal yet: when it comes into force it asks
``ground_ended_already``, which finds the event (if written no earlier than the restriction was received).

Once a restriction is lifted and its marks are off, ``tell_restriction_lifted`` tells each recipient the reply
named (Art. 19) and each processor or manual system that did not answer "no data", one email each, in its own
language, sent once whatever the retries (its key in the sent-log).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.notices import Mailer, SentCopies, SentLog, content_digest, deliver_once
from connectors.base import Connector
from connectors.outside import OutsideSystem
from dsr.config.profile import ControllerProfile
from dsr.domain.model import AuditEvent, GroundEnd, GroundEnded, Language, LiftTelling, RequestKind, restriction_id
from dsr.mail.lifted import Audience, render_restriction_lifted
from dsr.store.ledger import Ledger

GROUND_ENDED_SIGNAL = "ground_ended"
LIFT_UNTOLD = "LiftUntold"
"""Failure type of ``tell_restriction_lifted`` when no one can be written to (a recipient no longer in the
profile, a system no longer configured, no mailer): not retried, the operator is told instead."""


class RestrictionActivities:
    """The ledger (the person's other restrictions); for the lift letters, the mailer and sent-log, the controller
    profile (Art. 19 recipients) and the configured ``processor`` / ``manual`` systems."""

    def __init__(self, ledger: Ledger, *, mailer: Mailer | None = None, sent_log: SentLog | None = None,
                 profile: Callable[[], ControllerProfile | None] | None = None, connectors: Iterable[Connector] = (),
                 controller_name: str = "", sent_copies: SentCopies | None = None) -> None:
        self._ledger = ledger
        self._mailer = mailer
        self._sent_log = sent_log
        self._profile = profile or (lambda: None)
        self._systems = {c.name: c for c in connectors if isinstance(c, OutsideSystem)}
        self._controller = controller_name
        self._sent_copies = sent_copies

    @activity.defn(name="end_restriction_grounds")
    async def end_restriction_grounds(self, end: GroundEnd) -> int:
        """Signal every restriction of the same person that its ground may have ended; answers how many were
        running. Idempotent: a restriction already lifting ignores a second signal."""
        # In the ledger first: a restriction still being answered (no workflow to signal yet) reads it when it
        # comes into force (``ground_ended_already``).
        await asyncio.to_thread(
            self._ledger.append_event,
            AuditEvent(request_id=end.request_id, event="restriction_ground_end", details={"ground": end.ground}),
            key=f"{end.request_id}/restriction_ground_end/{end.ground}", at=end.at or datetime.now(UTC))
        ids = await asyncio.to_thread(self._ledger.of_same_subject, end.request_id, [RequestKind.RESTRICTION])
        told = 0
        for request_id in ids:
            handle = activity.client().get_workflow_handle(restriction_id(request_id))
            try:
                await handle.signal(GROUND_ENDED_SIGNAL, GroundEnded(ground=end.ground, by_request=end.request_id))
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:  # not in force (not yet answered, or lifted): nothing
                    continue
                raise
            told += 1
        return told

    @activity.defn(name="ground_ended_already")
    async def ground_ended_already(self, end: GroundEnd) -> GroundEnded | None:
        """For a restriction coming into force (``end.request_id``): the request of the same person that ended its
        ground (``end.ground``) while it was being answered, if any (its ``restriction_ground_end`` event, written
        no earlier than the restriction was received)."""
        found = await asyncio.to_thread(self._ledger.ground_ended_for, end.request_id, end.ground)
        if found is None:
            return None
        return GroundEnded(ground=end.ground, by_request=found[0])

    @activity.defn(name="tell_restriction_lifted")
    async def tell_restriction_lifted(self, telling: LiftTelling) -> None:
        """One lift letter to one recipient or system, in its language; sent once per request and addressee."""
        if self._mailer is None:
            raise ApplicationError("no mailer is configured for the lift letters", type=LIFT_UNTOLD,
                                   non_retryable=True)
        if telling.to == "recipient":
            profile = await asyncio.to_thread(self._profile)
            recipient = next((r for r in (profile.art19_recipients if profile else []) if r.name == telling.name),
                             None)
            if recipient is None:
                raise ApplicationError("this Art. 19 recipient is no longer in the controller profile",
                                       type=LIFT_UNTOLD, non_retryable=True)
            to, language, label = str(recipient.email), Language(recipient.language), recipient.name
            audience: Audience = "recipient"
            whose = "the address of an Art. 19 recipient"
        else:
            system = self._systems.get(telling.name)
            if system is None:
                raise ApplicationError(f"system {telling.name!r} is no longer configured", type=LIFT_UNTOLD,
                                       non_retryable=True)
            to, language, label = system.contact, Language(system.language), system.label or system.name
            audience = "processor" if system.type == "processor" else "manual"
            whose = f"the contact of {telling.name}"
        lifted_on = telling.lifted_at.astimezone(ZoneInfo(telling.timezone)).date()
        rendered = render_restriction_lifted(language, audience=audience, reference=telling.request_id,
                                             subject_email=telling.subject.email, label=label,
                                             controller=self._controller, lifted_on=lifted_on)
        # One key per request and addressee: a retried activity, or a workflow reset, never writes twice.
        seed = f"{telling.request_id}\n{telling.to}\n{telling.name}"
        key = "lift-" + hashlib.sha256(seed.encode()).hexdigest()[:32]
        message = self._mailer.compose(to, language, rendered, message_id=self._mailer.message_id(key), whose=whose)
        await deliver_once(self._mailer, self._sent_log, message, to=to, key=key, request_id=telling.request_id,
                           template=f"restriction_lifted:{telling.to}", digest=content_digest(rendered),
                           whose=whose, where=f"restriction lift letter for request {telling.request_id}",
                           sent_copies=self._sent_copies)

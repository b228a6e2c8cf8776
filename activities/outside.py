"""Systems reached by a person: open the task in the ledger, email the processor or the owner, remind them.

The dates come from here, never from workflow code: the answer-by date is ``answer_within_days`` after the
first email, and never later than two days before the request's own deadline (at least one day after today).
The email carries a signed link to the answer page (``/answer/{token}``; the token names the request and the
system, encrypted) which works until :data:`LINK_GRACE` after the answer-by date, so a late answer is still taken.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.notices import NOTICE_INVALID_ADDRESS, Mailer, SentLog, is_deliverable_address
from connectors.base import Connector
from connectors.outside import OutsideSystem
from dsr.domain.outside import OutsideMail, OutsideTaskInput, OutsideTaskOpened
from dsr.mail.outside import render_outside_request
from dsr.store.links import DownloadLinks
from dsr.store.tasks import OutsideTasks

__all__ = ["ANSWER_LINK_PURPOSE", "LINK_GRACE", "OutsideActivities", "answer_url", "task_token_id"]

ANSWER_LINK_PURPOSE = "outside-answer"
"""Key-derivation purpose of answer-page links: a download link is no answer link, nor the reverse."""
LINK_GRACE = timedelta(days=14)
"""How long after the answer-by date the answer page still takes an answer."""
DEADLINE_MARGIN = timedelta(days=2)
"""The answer is needed this long before the request's own deadline, to write the reply."""


def task_token_id(request_id: str, system: str) -> str:
    """What an answer link carries (encrypted): ``<request>.<system>`` (system names hold no dot)."""
    return f"{request_id}.{system}"


def answer_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/answer/{token}"


def answer_by_date(today: date, within_days: int, deadline: date) -> date:
    """``within_days`` after today, but at the latest :data:`DEADLINE_MARGIN` before the deadline, and at the
    earliest tomorrow."""
    return max(today + timedelta(days=1), min(today + timedelta(days=within_days), deadline - DEADLINE_MARGIN))


def _end_of(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


class OutsideActivities:
    """Bound to the configured ``processor`` / ``manual`` systems, the ledger's tasks and the mailer."""

    def __init__(self, connectors: Iterable[Connector], tasks: OutsideTasks, mailer: Mailer, links: DownloadLinks,
                 *, public_url: str, controller_name: str, sent_log: SentLog) -> None:
        self._systems = {c.name: c for c in connectors if isinstance(c, OutsideSystem)}
        self._tasks = tasks
        self._mailer = mailer
        self._links = links
        self._public_url = public_url
        self._controller = controller_name
        self._sent_log = sent_log

    def _system(self, name: str) -> OutsideSystem:
        system = self._systems.get(name)
        if system is None:
            raise ApplicationError(f"system {name!r} is not configured on this worker", type="OutsideUnknown",
                                   non_retryable=True)
        return system

    @activity.defn(name="open_outside_task")
    async def open_outside_task(self, task: OutsideTaskInput) -> OutsideTaskOpened:
        """The task in the ledger, created or asked again; its answer if one was recorded already (a retry after
        a late answer), else the answer-by instant and the reminders still ahead."""
        system = self._system(task.system)
        now = task.now or datetime.now(UTC)
        answer_by = _end_of(answer_by_date(now.date(), system.answer_within_days, task.deadline))
        opened = await asyncio.to_thread(self._tasks.open, task.request_id, task.system, system.type,
                                         answer_by=answer_by, now=now)
        if opened.answer is not None:
            return OutsideTaskOpened(answer=opened.answer, asked_on=opened.asked_on, system_type=system.type)
        reminders = sorted(at for at in (opened.answer_by - timedelta(days=d) for d in system.reminder_days)
                           if at > now)
        return OutsideTaskOpened(answer=None, answer_by=opened.answer_by, reminders=reminders,
                                 asked_on=opened.asked_on, system_type=system.type)

    @activity.defn(name="send_outside_mail")
    async def send_outside_mail(self, mail: OutsideMail) -> None:
        """The request (or its ``reminder``-th reminder) to the system's contact, with a fresh signed link. Sent
        once per activity (its key in the ledger), whatever the retries."""
        system = self._system(mail.system)
        info = activity.info()
        seed = "\n".join((info.workflow_id or "", info.workflow_run_id or "", info.activity_id))
        key = "outside-" + hashlib.sha256(seed.encode()).hexdigest()[:32]
        if await asyncio.to_thread(self._sent_log.has_event, key):
            return
        if not is_deliverable_address(system.contact):
            raise ApplicationError(f"the contact of {mail.system} is not a single valid email address",
                                   type=NOTICE_INVALID_ADDRESS, non_retryable=True)
        now = datetime.now(UTC)
        expires = mail.answer_by + LINK_GRACE
        link = self._links.issue(task_token_id(mail.request_id, mail.system), now=now, ttl=expires - now)
        rendered = render_outside_request(
            system.language, reference=mail.request_id, kind=mail.kind, subject=mail.subject,
            label=system.label or system.name, controller=self._controller,
            processor=system.type == "processor", answer_by=(mail.answer_by - timedelta(seconds=1)).date(),
            answer_url=answer_url(self._public_url, link.token), link_expires=link.expires_at.date(),
            reminder=mail.reminder, changes=mail.changes, purposes=mail.purposes)
        message_id = self._mailer.message_id(key)
        message = self._mailer.compose(system.contact, system.language, rendered, message_id=message_id,
                                       whose=f"the contact of {mail.system}")
        await self._mailer.send(message, system.contact, whose=f"the contact of {mail.system}",
                                where=f"{mail.system} request")
        await asyncio.to_thread(self._sent_log.record_sent, mail.request_id, key,
                                f"outside_{'reminder' if mail.reminder else 'request'}:{mail.system}", message_id)

"""Systems reached by a person: open the task in the ledger, email the processor or the owner, remind them.

The dates come from here, never from workflow code: the answer-by date is ``answer_within_days`` after the
first email, and never later than two days before the request's own deadline (at least one day after today).
The email carries a signed link to the answer page (``/answer/{token}``; the token names the request and the
system, encrypted) which works until :data:`LINK_GRACE` after the answer-by date, so a late answer is still taken.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.notices import (
    NOTICE_INVALID_ADDRESS,
    Mailer,
    SentCopies,
    SentLog,
    content_digest,
    deliver_once,
    is_deliverable_address,
)
from connectors.base import Connector
from connectors.outside import OutsideSystem
from dsr.config.profile import ControllerProfile
from dsr.domain.aftercare import PendingAnswers, PendingFound, SupplementInput, SupplementSent
from dsr.domain.deadlines import end_of_day, receipt_date
from dsr.domain.model import AnswerStatus, RequestKind
from dsr.domain.outside import OutsideMail, OutsideTaskInput, OutsideTaskOpened
from dsr.mail.outside import render_outside_request
from dsr.mail.supplement import SupplementLine, render_supplement
from dsr.store.links import DownloadLinks, last_valid_day
from dsr.store.tasks import OutsideTasks

__all__ = ["ANSWER_LINK_PURPOSE", "LINK_GRACE", "SUPPLEMENT_TEMPLATE", "OutsideActivities", "answer_url",
           "supplement_key", "task_token_id"]

ANSWER_LINK_PURPOSE = "outside-answer"
"""Key-derivation purpose of answer-page links: a download link is no answer link, nor the reverse."""
LINK_GRACE = timedelta(days=14)
"""How long after the answer-by date the answer page still takes an answer."""
DEADLINE_MARGIN = timedelta(days=2)
"""The answer is needed this long before the request's own deadline, to write the reply."""


SUPPLEMENT_TEMPLATE = "supplement"
"""The supplementary letter's name in the sent-log and the ledger (``templates/<lang>/supplement.*``)."""


def supplement_key(request_id: str) -> str:
    """The letter's idempotency key: from the reference alone, so that a retry, a second worker or a reset
    aftercare finds it in the sent-log and never sends a second letter (one Message-ID)."""
    return "supplement-" + hashlib.sha256(f"supplement/{request_id}".encode()).hexdigest()[:32]


def task_token_id(request_id: str, system: str) -> str:
    """What an answer link carries (encrypted): ``<request>.<system>`` (system names hold no dot)."""
    return f"{request_id}.{system}"


def answer_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/answer/{token}"


def answer_by_date(today: date, within_days: int, deadline: date) -> date:
    """``within_days`` after today, but at the latest :data:`DEADLINE_MARGIN` before the deadline, and at the
    earliest tomorrow."""
    return max(today + timedelta(days=1), min(today + timedelta(days=within_days), deadline - DEADLINE_MARGIN))


class OutsideActivities:
    """Bound to the configured ``processor`` / ``manual`` systems, the ledger's tasks and the mailer."""

    def __init__(self, connectors: Iterable[Connector], tasks: OutsideTasks, mailer: Mailer, links: DownloadLinks,
                 *, public_url: str, controller_name: str, sent_log: SentLog,
                 profile: Callable[[], ControllerProfile | None] | None = None,
                 subject_mailer: Mailer | None = None, sent_copies: SentCopies | None = None,
                 timezone: str = "UTC") -> None:
        # The controller's (DSR_TIMEZONE): the day a system is asked, its answer-by day and when that day ends,
        # as the request's own receipt day and deadline are counted.
        self._timezone = timezone
        self._systems = {c.name: c for c in connectors if isinstance(c, OutsideSystem)}
        # The supplementary letter to the subject: labels and remedies from the profile, sent like the reply.
        self._profile = profile or (lambda: None)
        self._subject_mailer = subject_mailer or mailer
        self._sent_copies = sent_copies
        self._tasks = tasks
        self._mailer = mailer
        self._links = links
        self._public_url = public_url
        self._controller = controller_name
        self._sent_log = sent_log

    def _answers_taken_until(self, answer_by: datetime) -> datetime:
        """The end of the answer page's last day: :data:`LINK_GRACE` days after the answer-by day, counted in
        days of the controller's calendar (a daylight-saving change between them moves no day's end)."""
        return end_of_day(last_valid_day(answer_by, self._timezone) + LINK_GRACE, self._timezone)

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
        today = receipt_date(now, self._timezone)
        answer_by = end_of_day(answer_by_date(today, system.answer_within_days, task.deadline), self._timezone)
        opened = await asyncio.to_thread(self._tasks.open, task.request_id, task.system, system.type,
                                         answer_by=answer_by, now=now, asked_on=today)
        if opened.answer is not None:
            return OutsideTaskOpened(answer=opened.answer, asked_on=opened.asked_on, system_type=system.type)
        reminders = sorted(at for at in (opened.answer_by - timedelta(days=d) for d in system.reminder_days)
                           if at > now)
        return OutsideTaskOpened(answer=None, answer_by=opened.answer_by, reminders=reminders,
                                 asked_on=opened.asked_on, system_type=system.type,
                                 answer_by_day=last_valid_day(opened.answer_by, self._timezone))

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
        expires = self._answers_taken_until(mail.answer_by)
        link = self._links.issue(task_token_id(mail.request_id, mail.system), now=now, ttl=expires - now)
        rendered = render_outside_request(
            system.language, reference=mail.request_id, kind=mail.kind, subject=mail.subject,
            label=system.label or system.name, controller=self._controller,
            processor=system.type == "processor", answer_by=last_valid_day(mail.answer_by, self._timezone),
            answer_url=answer_url(self._public_url, link.token),
            link_expires=last_valid_day(link.expires_at, self._timezone),
            reminder=mail.reminder, changes=mail.changes, purposes=mail.purposes)
        message_id = self._mailer.message_id(key)
        message = self._mailer.compose(system.contact, system.language, rendered, message_id=message_id,
                                       whose=f"the contact of {mail.system}")
        await self._mailer.send(message, system.contact, whose=f"the contact of {mail.system}",
                                where=f"{mail.system} request")
        await asyncio.to_thread(self._sent_log.record_sent, mail.request_id, key,
                                f"outside_{'reminder' if mail.reminder else 'request'}:{mail.system}", message_id)

    @activity.defn(name="pending_answers")
    async def pending_answers(self, pending: PendingAnswers) -> PendingFound:
        """Of the systems the reply told as not answered yet, those the ledger holds an answer for now (a
        ``no_answer`` an operator recorded is none), and when to stop waiting for the others: the last day their
        answer page takes an answer, and never sooner than that grace after now."""
        now = datetime.now(UTC)
        tasks = {t.system: t for t in await asyncio.to_thread(self._tasks.tasks, request_id=pending.request_id)}
        answered = [name for name in pending.systems
                    if (task := tasks.get(name)) is not None and task.answer is not None
                    and task.answer.status != AnswerStatus.NO_ANSWER]
        waiting = [tasks[name].answer_by for name in pending.systems if name in tasks and name not in answered]
        give_up_at = max([now + LINK_GRACE, *(self._answers_taken_until(at) for at in waiting)]) if waiting else None
        return PendingFound(answered=answered, give_up_at=give_up_at)

    @activity.defn(name="send_supplement")
    async def send_supplement(self, letter: SupplementInput) -> SupplementSent:
        """The supplementary letter, written from what the ledger holds now, in the reply's language and thread;
        sent once whatever the retries, workers or resets (:func:`supplement_key`)."""
        plan = letter.plan
        profile = await asyncio.to_thread(self._profile)
        tasks = {t.system: t for t in await asyncio.to_thread(self._tasks.tasks, request_id=letter.request_id)}
        lang = letter.language.value
        lines: list[SupplementLine] = []
        for name in plan.systems:
            task = tasks.get(name)
            answer = task.answer if task is not None else None
            status = answer.status.value if answer is not None else AnswerStatus.NO_ANSWER.value
            if letter.cleared and status in (AnswerStatus.NO_ANSWER.value, AnswerStatus.CANNOT.value):
                status = "staff"  # the operator confirmed the residual data dealt with by other means
            system = self._systems.get(name)
            processor = (task.type if task is not None else (system.type if system else "processor")) == "processor"
            purposes = [p.name(lang) for p in plan.purposes if name in p.actions] \
                if plan.kind == RequestKind.CONSENT_WITHDRAWAL else []
            lines.append(SupplementLine(
                system=name, status=status, processor=processor, asked_on=task.asked_on if task else None,
                legal_basis=answer.legal_basis if answer else "", kept_until=answer.kept_until if answer else None,
                purposes=purposes))
        try:
            rendered = render_supplement(letter.language, reference=letter.request_id, kind=plan.kind,
                                         received=plan.received, lines=lines, profile=profile,
                                         subject_name=plan.subject.name, controller_name=self._controller)
        except ValueError as err:
            raise ApplicationError(f"{letter.request_id}: the supplementary letter cannot be written ({err})",
                                   type="SupplementInvalid", non_retryable=True) from None
        to = plan.subject.email
        if not is_deliverable_address(to):
            raise ApplicationError("the subject's address is not a single valid email address",
                                   type=NOTICE_INVALID_ADDRESS, non_retryable=True)
        key = supplement_key(letter.request_id)
        message_id = self._subject_mailer.message_id(key)
        message = self._subject_mailer.compose(to, letter.language, rendered, message_id=message_id,
                                               in_reply_to=plan.reply_message_id or None)
        await deliver_once(self._subject_mailer, self._sent_log, message, to=to, key=key,
                           request_id=letter.request_id, template=SUPPLEMENT_TEMPLATE,
                           digest=content_digest(rendered), whose="the subject's address",
                           where=f"supplementary letter for request {letter.request_id}",
                           sent_copies=self._sent_copies)
        return SupplementSent(message_id=message_id, told={line.system: line.status for line in lines})
